"""SyslogDispatcher against a real, private rsyslogd (tests/rsyslog_harness.py).

Checks what rsyslog makes of our messages (facility local6, severity info, tag
``nfflowd:``, the line untouched) over its unix socket (imuxsock), UDP (imudp)
and TCP (imtcp), and that lines emitted while rsyslogd is down are delivered
once it is back: all of them, once each, in order.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nfflowd.outputs.syslog import SyslogDispatcher
from tests.needs import skip_outside_ci
from tests.rsyslog_harness import RsyslogHarness

pytestmark = skip_outside_ci(RsyslogHarness.available())

CSV = "1248952480,737235000,279737,172.16.1.1,720,38052,136315,279737,10.0.195.106,74.125.6.225,0.0.0.0,0,0,62380,80,6,0,0"  # noqa: E501


def csv(i: int) -> str:
    return f"{i}," + CSV


def test_unix_socket_lines_arrive_as_local6_info_nfflowd(tmp_path: Path) -> None:
    with RsyslogHarness(tmp_path) as rs:
        d = SyslogDispatcher(rs.socket_path)
        sent = [csv(i) for i in range(2000)]
        for i in range(0, len(sent), 100):
            d.emit(sent[i : i + 100])
        d.flush()
        other = SyslogDispatcher(rs.socket_path, ident="other", facility="user")
        other.emit(["not for local6"])
        other.close()
        assert rs.lines(len(sent)) == [f"nfflowd: {line}" for line in sent]
        d.close()
    assert d.counters["lines_sent"] == len(sent)
    ours = [x for x in rs.all_lines() if x.split("|", 1)[0].endswith(" nfflowd")]
    assert len(ours) == len(sent)
    assert all(x.startswith("182 local6.info ") for x in ours)
    assert ours[0].split("|", 1)[1] == " " + sent[0]
    # The facility filter: the user.info line went to other.log only.
    assert any(
        x.startswith("14 user.info ") and x.endswith("| not for local6") for x in rs.other_lines()
    )
    assert not any("not for local6" in x for x in rs.lines(len(sent)))
    assert not any("nfflowd|" in x for x in rs.other_lines())


def outage_and_recovery(
    rs: RsyslogHarness, address: str, caplog: pytest.LogCaptureFixture, expect_text: str
) -> SyslogDispatcher:
    caplog.set_level(logging.WARNING, logger="nfflowd.mirror")
    d = SyslogDispatcher(address)
    d.emit([csv(i) for i in range(10)])
    assert len(rs.lines(10)) == 10

    rs.stop()
    for start in range(10, 70, 20):  # three batches while rsyslogd is down
        d.emit([csv(i) for i in range(start, start + 20)])
    assert d.counters["pending"] == 60
    assert d.counters["buffered"] == 60
    assert d.counters["send_errors"] >= 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert address in warnings[0]
    assert expect_text in warnings[0]

    rs.start()  # same socket path, same ports
    d.flush()
    assert d.counters["pending"] == 0
    d.emit(["end"])  # a sentinel: once it is in, nothing sent before it is still on its way
    got = rs.lines(71)
    d.close()
    assert got == [f"nfflowd: {csv(i)}" for i in range(70)] + ["nfflowd: end"]
    assert d.counters["lines_sent"] == 71
    assert d.counters["dropped"] == 0
    return d


def test_unix_socket_outage_and_recovery(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with RsyslogHarness(tmp_path) as rs:
        d = outage_and_recovery(rs, rs.socket_path, caplog, "does not exist")
    assert d.counters["reconnects"] == 1


def test_udp_outage_and_recovery(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with RsyslogHarness(tmp_path, udp=True) as rs:
        outage_and_recovery(rs, rs.udp_address, caplog, "refused")


def test_tcp_outage_and_recovery(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with RsyslogHarness(tmp_path, tcp=True) as rs:
        d = outage_and_recovery(rs, rs.tcp_address, caplog, "refused")
    assert d.counters["reconnects"] == 1


def test_dispatcher_started_before_rsyslogd(tmp_path: Path) -> None:
    rs = RsyslogHarness(tmp_path)
    d = SyslogDispatcher(rs.socket_path)
    d.emit(["early 1", "early 2"])
    assert d.counters["pending"] == 2
    try:
        rs.start()
        d.flush()
        assert rs.lines(2) == ["nfflowd: early 1", "nfflowd: early 2"]
    finally:
        d.close()
        rs.stop()
