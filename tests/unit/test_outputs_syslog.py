"""Screen and syslog dispatchers against in-process sockets (unix, UDP, TCP).

The real-rsyslogd tests are in tests/integration/test_rsyslog.py.
"""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import syslog
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nfflowd import config
from nfflowd.messages import FlowRecord, pack_flows
from nfflowd.outputs import prometheus
from nfflowd.outputs.mirror import Mirror
from nfflowd.outputs.syslog import (
    FACILITIES,
    LEVELS,
    ScreenDispatcher,
    SyslogDispatcher,
    clean_line,
    message_prefix,
    parse_address,
    rfc3164_timestamp,
)
from tests.addresses import a

LOCAL_MSG = re.compile(rb"<(\d+)>([A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d) ([^ :]+): (.*)\Z")
REMOTE_MSG = re.compile(rb"<(\d+)>([A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d) (\S+) ([^ :]+): (.*)\Z")
# workers/ is installed as nfflowd.workers; mypy checks it as `workers`, not under that name


def poll(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def unix_server(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(5)
    return s


def recv_all(s: socket.socket, n: int) -> list[bytes]:
    return [s.recv(65536) for _ in range(n)]


def payloads(msgs: list[bytes]) -> list[str]:
    out = []
    for m in msgs:
        match = LOCAL_MSG.match(m)
        assert match, m
        out.append(match.group(4).decode())
    return out


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "log.sock"


# -- tables and message format ------------------------------------------------------


def test_facility_and_severity_codes_match_the_c_library() -> None:
    for name, code in FACILITIES.items():
        const = {"security": "AUTH", "audit": None, "alert": None, "clock": None}.get(
            name, name.upper()
        )
        if const is not None and hasattr(syslog, f"LOG_{const}"):
            assert getattr(syslog, f"LOG_{const}") >> 3 == code, name
    assert sorted(set(FACILITIES.values())) == list(range(24))
    for name, sev in LEVELS.items():
        const = {"emergency": "EMERG", "critical": "CRIT", "error": "ERR", "warn": "WARNING"}.get(
            name, name.upper()
        )
        assert getattr(syslog, f"LOG_{const}") == sev, name
    assert FACILITIES["local6"] * 8 + LEVELS["info"] == 182


def test_timestamp_is_glibc_style_in_c_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        assert rfc3164_timestamp(1248952480.7) == "Jul 30 11:14:40"
        assert rfc3164_timestamp(1246792000) == "Jul  5 11:06:40"  # day space-padded
        assert message_prefix(182, "nfflowd", 1248952480) == b"<182>Jul 30 11:14:40 nfflowd: "
        assert message_prefix(12, "x", 1248952480, "fw1") == b"<12>Jul 30 11:14:40 fw1 x: "
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_clean_line_keeps_one_message_per_line() -> None:
    assert clean_line("a,b\n") == "a,b"
    assert clean_line("a\nb\r\n") == "a b"
    assert clean_line("a\0b") == "a b"


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("/dev/log", ("unix", "/dev/log", 0)),
        ("udp://127.0.0.1:5140", ("udp", "127.0.0.1", 5140)),
        ("tcp://[::1]:6514", ("tcp", "::1", 6514)),
        ("udp://loghost", ("udp", "loghost", 514)),
    ],
)
def test_parse_address(address: str, parsed: tuple[str, str, int]) -> None:
    assert parse_address(address) == parsed


@pytest.mark.parametrize(
    ("address", "error"),
    [
        ("http://x:1", "scheme"),
        ("udp://:514", "no host"),
        ("udp://h:99999", "bad port"),
        ("", "empty"),
    ],
)
def test_bad_addresses_and_names_are_config_errors(address: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        SyslogDispatcher(address)


def test_unresolvable_host_is_an_outage_not_an_exception(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="nfflowd.mirror")
    d = SyslogDispatcher("udp://a..b:514")  # IDNA rejects it locally: no DNS query
    d.emit(["held"])
    d.close()
    assert d.counters["pending"] == 1
    assert d.counters["send_errors"] >= 1
    assert any("udp://a..b:514" in r.getMessage() for r in caplog.records)


def test_unknown_facility_or_severity_is_a_config_error(sock_path: Path) -> None:
    with pytest.raises(ValueError, match="facility 'local9'"):
        SyslogDispatcher(str(sock_path), facility="local9")
    with pytest.raises(ValueError, match="severity 'loud'"):
        SyslogDispatcher(str(sock_path), severity="loud")


# -- unix datagram socket -----------------------------------------------------------


@pytest.mark.parametrize(
    ("facility", "severity", "pri"),
    [
        ("local6", "info", 182),
        ("user", "warning", 12),
        ("local0", "debug", 135),
        ("kern", "emerg", 0),
    ],
)
def test_one_datagram_per_line_like_syslog3(
    sock_path: Path, facility: str, severity: str, pri: int
) -> None:
    with unix_server(sock_path) as srv:
        d = SyslogDispatcher(str(sock_path), facility=facility, severity=severity)
        d.emit(["1,2,3", "4,5,6\n"])
        msgs = recv_all(srv, 2)
        d.close()
    for m in msgs:
        match = LOCAL_MSG.match(m)
        assert match, m
        assert int(match.group(1)) == pri
        assert match.group(3) == b"nfflowd"
    assert payloads(msgs) == ["1,2,3", "4,5,6"]
    assert d.counters["lines_sent"] == 2
    assert d.counters["send_errors"] == 0


def test_missing_socket_is_reported_buffered_and_delivered_later(
    sock_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="nfflowd.mirror")
    d = SyslogDispatcher(str(sock_path))  # nobody there yet: no exception
    d.emit([f"line {i}" for i in range(5)])
    d.emit([f"line {i}" for i in range(5, 8)])
    assert d.counters["pending"] == 8
    assert d.counters["buffered"] == 8
    assert d.counters["send_errors"] >= 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(sock_path) in warnings[0].getMessage()
    assert "does not exist" in warnings[0].getMessage()
    with unix_server(sock_path) as srv:
        d.flush()
        assert payloads(recv_all(srv, 8)) == [f"line {i}" for i in range(8)]
        d.close()
    assert d.counters["lines_sent"] == 8
    assert d.counters["pending"] == 0


def server_and_dispatcher(sock_path: Path) -> tuple[socket.socket, SyslogDispatcher]:
    """A syslog server on *sock_path*, and a dispatcher to it retrying at most every 60 s."""
    return unix_server(sock_path), SyslogDispatcher(str(sock_path), retry_interval=60)


def server_gone(srv: socket.socket, sock_path: Path) -> None:
    """The syslog daemon stops: its socket closed and removed."""
    srv.close()
    os.unlink(sock_path)


def test_server_restart_reconnects_without_loss_or_duplicates(sock_path: Path) -> None:
    srv, d = server_and_dispatcher(sock_path)
    d.emit(["a", "b"])
    assert payloads(recv_all(srv, 2)) == ["a", "b"]
    server_gone(srv, sock_path)
    d.emit(["c", "d"])  # refused: held
    d.emit(["e"])  # within retry_interval: held without trying
    assert d.counters["pending"] == 3
    with unix_server(sock_path) as srv2:
        d.flush()  # flush always retries
        assert payloads(recv_all(srv2, 3)) == ["c", "d", "e"]
        srv2.settimeout(0.2)
        with pytest.raises(TimeoutError):
            srv2.recv(100)
        d.close()
    assert d.counters["reconnects"] == 1
    assert d.counters["lines_sent"] == 5


def test_restart_between_emits_costs_no_delay(sock_path: Path) -> None:
    """A dead connection gets one immediate reconnect; no outage, no warning."""
    srv, d = server_and_dispatcher(sock_path)
    d.emit(["before"])
    server_gone(srv, sock_path)
    with unix_server(sock_path) as srv2:
        d.emit(["after"])
        assert payloads(recv_all(srv2, 1)) == ["after"]
        d.close()
    assert d.counters["reconnects"] == 1
    assert d.counters["pending"] == 0


def test_buffer_is_bounded_and_drops_the_oldest(sock_path: Path) -> None:
    d = SyslogDispatcher(str(sock_path), max_buffer=10)
    d.emit([str(i) for i in range(25)])
    assert d.counters["dropped"] == 15
    assert d.pending == 10
    with unix_server(sock_path) as srv:
        d.flush()
        assert payloads(recv_all(srv, 10)) == [str(i) for i in range(15, 25)]
        d.close()


def test_full_socket_does_not_block_or_lose_lines(
    sock_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="nfflowd.mirror")
    srv = unix_server(sock_path)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    n = 3000
    d = SyslogDispatcher(str(sock_path), send_timeout=0.05)
    d.emit([f"{i:05d}" + "x" * 100 for i in range(n)])  # nobody reads: EAGAIN
    assert 0 < d.pending < n
    assert any("socket full" in r.getMessage() for r in caplog.records)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.extend(recv_all(srv, n)))
    reader.start()

    def delivered() -> bool:
        d.flush()
        return d.pending == 0

    poll(delivered, timeout=20)
    reader.join(10)
    srv.close()
    d.close()
    assert [p[:5] for p in payloads(received)] == [f"{i:05d}" for i in range(n)]
    assert d.counters["lines_sent"] == n
    assert d.counters["dropped"] == 0


def test_stream_socket_fallback_uses_nul_framing(sock_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(str(sock_path))
        srv.listen(1)
        srv.settimeout(5)
        d = SyslogDispatcher(str(sock_path))
        conn, _ = srv.accept()
        d.emit(["first", "second"])
        d.close()
        data = b""
        conn.settimeout(5)
        while chunk := conn.recv(4096):
            data += chunk
        conn.close()
    msgs = data.split(b"\0")
    assert msgs[-1] == b""
    assert payloads(msgs[:-1]) == ["first", "second"]


# -- network transports -------------------------------------------------------------


def test_udp_includes_hostname_and_survives_an_outage() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(5)
    port = rx.getsockname()[1]
    d = SyslogDispatcher(f"udp://127.0.0.1:{port}", facility="local6")
    d.emit(["u1"])
    m = REMOTE_MSG.match(rx.recv(1000))
    assert m
    assert (m.group(1), m.group(4), m.group(5)) == (b"182", b"nfflowd", b"u1")
    assert m.group(3).decode() == socket.gethostname().split(".")[0]
    rx.close()
    d.emit(["u2", "u3"])  # ICMP port unreachable: detected per datagram, held
    assert d.pending == 2
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx2:
        rx2.bind(("127.0.0.1", port))
        rx2.settimeout(5)
        d.flush()
        got = [REMOTE_MSG.match(rx2.recv(1000)) for _ in range(2)]
        rx2.settimeout(0.2)
        with pytest.raises(TimeoutError):
            rx2.recv(1000)
    d.close()
    assert [g.group(5) for g in got if g] == [b"u2", b"u3"]


def test_tcp_lf_framing_and_reconnect_after_server_closes() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(2)
        srv.settimeout(5)
        d = SyslogDispatcher(f"tcp://127.0.0.1:{srv.getsockname()[1]}")
        conn, _ = srv.accept()
        conn.settimeout(5)
        d.emit(["t1", "t2"])
        data = b""
        while data.count(b"\n") < 2:
            data += conn.recv(4096)
        conn.close()  # the server goes away: FIN
        d.emit(["t3"])  # sees EOF before sending, reconnects at once
        conn2, _ = srv.accept()
        conn2.settimeout(5)
        d.close()
        data2 = b""
        while chunk := conn2.recv(4096):
            data2 += chunk
        conn2.close()
    lines = data.split(b"\n")[:-1] + data2.split(b"\n")[:-1]
    got = [REMOTE_MSG.match(x) for x in lines]
    assert [g.group(5) for g in got if g] == [b"t1", b"t2", b"t3"]
    assert d.counters["reconnects"] == 1
    assert d.counters["lines_sent"] == 3


def test_close_reports_undelivered_lines(sock_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="nfflowd.mirror")
    d = SyslogDispatcher(str(sock_path))
    d.emit(["lost"])
    d.close()
    assert any("1 lines undelivered" in r.getMessage() for r in caplog.records)


# -- screen -------------------------------------------------------------------------


def test_screen_writes_lines_and_flushes() -> None:
    out = io.StringIO()
    d = ScreenDispatcher(out)
    d.emit(["a,b", "c,d"])
    d.emit([])
    d.flush()
    assert out.getvalue() == "a,b\nc,d\n"
    assert d.counters["lines_sent"] == 2


def test_screen_stderr_and_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    ScreenDispatcher(stderr=True).emit(["to stderr"])
    ScreenDispatcher().emit(["to stdout"])
    captured = capsys.readouterr()
    assert captured.err == "to stderr\n"
    assert captured.out == "to stdout\n"


def test_screen_on_a_broken_stream_counts_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="nfflowd.mirror")

    class BrokenPipe(io.StringIO):  # stdout piped into a reader that went away
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    d = ScreenDispatcher(BrokenPipe())
    d.emit(["x"])
    d.emit(["y", "z"])
    d.close()
    assert d.counters["send_errors"] == 3
    assert d.counters["dropped"] == 3
    assert len([r for r in caplog.records if "screen dispatcher" in r.getMessage()]) == 1

    closed = io.StringIO()
    closed.close()
    d2 = ScreenDispatcher(closed)
    d2.emit(["x"])  # ValueError: I/O operation on closed file
    assert (d2.counters["send_errors"], d2.counters["lines_sent"]) == (1, 0)


# -- the level gate: which dispatchers get flow lines ------------------------------------


def test_min_level_notice_gets_flow_lines_and_above_is_noted(
    sock_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The 2009 tool's ptee logged every line with ``->notice``: min_level notice gets them."""
    conf = tmp_path / "levels.conf"
    conf.write_text(
        "<ptee>\n <conf>\n  dispatchers syslog\n  dispatchers quiet\n"
        "  <syslog>\n   class Log::Dispatch::Syslog\n   facility local6\n"
        f"   min_level notice\n   address {sock_path}\n  </syslog>\n"
        "  <quiet>\n   class Log::Dispatch::Screen\n   stderr 1\n   min_level warning\n"
        "  </quiet>\n </conf>\n</ptee>\n"
    )
    settings = config.load(str(conf))
    # `check` prints these notes: the one that drops lines is named, the notice one is not
    dropping = [n for n in settings.notes if "gets no flow lines" in n]
    assert len(dropping) == 1 and "dispatcher quiet: min_level warning" in dropping[0]
    assert not any("dispatcher syslog: min_level" in n for n in settings.notes)
    assert prometheus.target_labels(settings)["d"] == [{"dispatcher": "syslog", "kind": "syslog"}]

    server = unix_server(sock_path)
    try:
        mirror = Mirror(settings)
        assert len(mirror.dispatchers) == 1
        record = FlowRecord(
            1248952344422,
            1248952480737,
            4,
            6,
            a("10.0.195.106"),
            a("74.125.6.225"),
            62380,
            80,
            720,
            38052,
            a("192.76.7.154"),
            a("74.125.6.225"),
            62380,
            80,
            1,
            3,
            0,
            0,
            0,
        )
        mirror.handle(pack_flows([record]))
        mirror.flush()
        (msg,) = recv_all(server, 1)
        for d in mirror.dispatchers:
            d.close()
    finally:
        server.close()
    match = LOCAL_MSG.match(msg)
    assert match, msg
    # the syslog priority stays local6.info; the line is the flow's CSV
    assert int(match.group(1)) == FACILITIES["local6"] * 8 + LEVELS["info"]
    assert match.group(4).decode().split(",")[8:10] == ["10.0.195.106", "74.125.6.225"]
    assert mirror.counters()["lines"] == 1
    assert "10.0.195.106" not in capsys.readouterr().err  # the warning-level screen got none
