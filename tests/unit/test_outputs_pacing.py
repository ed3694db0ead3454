"""Pacing: the token bucket alone, then the exporter and the UDP syslog paced over real sockets.

The bucket is driven with explicit clock values (``now``), so its arithmetic is
checked exactly; the exporter and the syslog dispatcher run against loopback
sockets with their real clock, and what is asserted is what arrived, in which
order, and what stayed held (never how fast anything ran, beyond the lower
bound the pace imposes).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nfflowd import config
from nfflowd.config import Collector, ExportSettings
from nfflowd.config.settings import DEFAULT_MAX_RATE
from nfflowd.formats import coverage_options, ipfix
from nfflowd.formats.coverage_options import GapRow
from nfflowd.messages import FlowRecord, pack_flows
from nfflowd.outputs import exporter as exporter_mod
from nfflowd.outputs.exporter import Exporter
from nfflowd.outputs.mirror import Mirror
from nfflowd.outputs.pacing import BURST_S, Pace
from nfflowd.outputs.syslog import SyslogDispatcher
from tests.udp_ports import closed_udp_port, udp_receiver

# --------------------------------------------------------------------------- the bucket


def test_no_limit_lets_everything_go() -> None:
    pace = Pace(0)
    assert pace.unlimited
    now = pace.stamp
    assert all(pace.take(65000, now) for _ in range(10_000))
    assert pace.wait(now) == 0.0


def test_negative_rates_are_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        Pace(-1)
    with pytest.raises(ValueError, match="must not be negative"):
        Pace(10, -5)


def test_a_burst_is_the_bucket_then_one_per_interval() -> None:
    pace = Pace(1000)  # a bucket of BURST_S worth: 4 datagrams
    assert pace.capacity == 1000 * BURST_S == 4
    t = pace.stamp
    assert [pace.take(100, t) for _ in range(5)] == [True] * 4 + [False]
    assert pace.wait(t) == pytest.approx(0.001)  # one token more in 1 ms
    assert not pace.take(100, t + 0.0009)
    assert pace.take(100, t + 0.001)
    assert not pace.take(100, t + 0.001)


def test_a_datagram_due_exactly_on_time_goes_whatever_the_clock_reads() -> None:
    # CI failed once: at monotonic 32845.467319381, (t + 0.001) - t is 0.000999999...,
    # one token short by 1e-13, and the datagram waited a turn it did not owe.
    for stamp in (32845.467319381, 1e6 + 0.1, 0.3, 123456.789):
        for rate in (1000, 4000, 100_000):
            pace = Pace(rate)
            pace.stamp, pace.tokens = stamp, 0.0
            assert not pace.take(1, stamp)
            assert pace.take(1, stamp + 1.0 / rate), (stamp, rate)
            assert pace.wait(stamp + 1.0 / rate) > 0.0


def test_a_slow_rate_still_has_a_bucket_of_one() -> None:
    pace = Pace(10)  # 10 * BURST_S < 1: one datagram may always go after a pause
    t = pace.stamp
    assert pace.capacity == 1.0
    assert pace.take(1, t) and not pace.take(1, t)
    assert pace.wait(t) == pytest.approx(0.1)


def test_a_pause_refills_no_more_than_the_bucket() -> None:
    pace = Pace(1000)
    t = pace.stamp
    while pace.take(1, t):
        pass
    later = t + 60.0  # a minute idle: still only a bucket's worth at once
    sent = 0
    while pace.take(1, later):
        sent += 1
    assert sent == 4


@pytest.mark.parametrize("rate", [500, 8000, 40_000])
def test_the_rate_over_a_second_is_the_rate_plus_one_bucket(rate: int) -> None:
    pace = Pace(rate)
    t0 = pace.stamp
    sent = 0
    for step in range(20_001):  # every 50 us for one second
        now = t0 + step * 50e-6
        while pace.take(1464, now):
            sent += 1
    assert rate <= sent <= rate + pace.capacity + 1


def test_the_byte_bucket_goes_into_debt_by_one_datagram() -> None:
    pace = Pace(0, 100_000)  # 100 kB/s: a bucket of 400 bytes, smaller than a datagram
    t = pace.stamp
    assert pace.byte_capacity == 400
    assert pace.take(1464, t)  # any size can leave when the bucket is not in debt
    assert pace.byte_tokens == 400 - 1464
    assert not pace.take(1, t)
    assert pace.wait(t) == pytest.approx(1064 / 100_000)
    assert not pace.take(1, t + 0.010)
    assert pace.take(1464, t + 1064 / 100_000)


def test_the_stricter_bucket_decides() -> None:
    pace = Pace(1000, 1_000_000)  # 4 datagrams or 4000 bytes per 4 ms
    t = pace.stamp
    assert [pace.take(1500, t) for _ in range(4)] == [True, True, True, False]  # bytes
    pace = Pace(1000, 1_000_000)
    t = pace.stamp
    assert [pace.take(10, t) for _ in range(5)] == [True] * 4 + [False]  # datagrams
    assert pace.wait(t) == pytest.approx(0.001)


# --------------------------------------------------------------------------- the exporter


def flow_block(count: int, base: int = 0) -> bytes:
    """*count* IPv4 TCP records (30 to a v5 datagram), source ports base + 1, base + 2..."""
    now_ms = int(time.time() * 1000)
    src, dst = bytes((10, 0, 0, 1)), bytes((203, 0, 113, 2))
    return pack_flows(
        FlowRecord(
            now_ms - 5000,
            now_ms,
            4,
            6,
            src,
            dst,
            base + i + 1,
            443,
            10,
            15000,
            src,
            dst,
            base + i + 1,
            443,
            1,
            3,
            0,
            0,
            base + i,
        )
        for i in range(count)
    )


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    yield from udp_receiver()


def exporter_to(*collectors: tuple[int, int]) -> Exporter:
    """An exporter to local collectors, each ``(port, max_rate)``."""
    return Exporter(
        ExportSettings(
            collectors=tuple(Collector("127.0.0.1", p, 5, max_rate=r) for p, r in collectors)
        )
    )


def run_loop(exp: Exporter | Mirror, until: Callable[[], bool], timeout: float = 20) -> None:
    """What the terminal stage's loop does while records are held: sleep as long as
    ``wait()`` says, then ``flush()``."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "held records did not leave"
        wait = exp.wait()
        time.sleep(0.1 if wait is None else wait)
        exp.flush()


def received(rx: socket.socket, count: int) -> list[bytes]:
    return [rx.recv(65536) for _ in range(count)]


def test_unpaced_exporter_sends_everything_at_once(receiver: socket.socket) -> None:
    exp = exporter_to((receiver.getsockname()[1], 0))
    exp.handle(flow_block(300))
    assert exp.pending() == 0 and exp.wait() is None
    assert len(received(receiver, 10)) == 10
    c = exp.counters()
    assert (c["c0_datagrams_sent"], c["c0_paced"], c["c0_held"]) == (10, 0, 0)


def test_paced_exporter_holds_the_rest_and_sends_it_in_order(receiver: socket.socket) -> None:
    exp = exporter_to((receiver.getsockname()[1], 1000))  # a bucket of 4 datagrams
    started = time.monotonic()
    exp.handle(flow_block(300))  # 10 datagrams
    c = exp.counters()
    assert (c["c0_datagrams_sent"], c["c0_held"], c["c0_paced"]) == (4, 6, 6)
    assert exp.pending() == 300  # the block is not delivered until its last datagram left
    wait = exp.wait()
    assert wait is not None and 0 <= wait <= 0.001
    run_loop(exp, lambda: exp.pending() == 0)
    elapsed = time.monotonic() - started
    got = received(receiver, 10)
    sequences = [int.from_bytes(d[16:20], "big") for d in got]  # flow_sequence
    assert sequences == [30 * i for i in range(10)]  # in order, none lost
    assert elapsed >= 6 / 1000  # 6 datagrams beyond the bucket, at 1000/s
    assert exp.counters()["c0_held"] == 0 and exp.wait() is None


def test_pending_counts_from_the_oldest_block_held(receiver: socket.socket) -> None:
    exp = exporter_to((receiver.getsockname()[1], 100))  # a bucket of 1 datagram
    exp.handle(flow_block(30))  # one datagram: leaves at once
    assert exp.pending() == 0
    exp.handle(flow_block(60, 30))  # two: both wait (the bucket is empty)
    exp.handle(flow_block(30, 90))
    assert exp.pending() == 90
    run_loop(exp, lambda: exp.counters()["c0_held"] <= 2)  # the 2nd block's first left
    assert exp.pending() == 90  # the 2nd block is not all out yet
    run_loop(exp, lambda: exp.counters()["c0_held"] <= 1)  # the 2nd block is out
    assert exp.pending() == 30
    run_loop(exp, lambda: exp.counters()["c0_held"] == 0)
    assert exp.pending() == 0
    assert len(received(receiver, 4)) == 4


def test_the_slowest_collector_decides_what_is_pending(receiver: socket.socket) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as slow_rx:
        slow_rx.bind(("127.0.0.1", 0))
        slow_rx.settimeout(5)
        exp = exporter_to((receiver.getsockname()[1], 0), (slow_rx.getsockname()[1], 250))
        exp.handle(flow_block(300))
        c = exp.counters()
        assert (c["c0_held"], c["c1_held"]) == (0, 9)
        assert exp.pending() == 300
        run_loop(exp, lambda: exp.pending() == 0)
        assert len(received(receiver, 10)) == 10
        assert len(received(slow_rx, 10)) == 10


def test_a_refused_datagram_is_kept_and_retried(
    receiver: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exporter_mod, "REFUSED_RETRY_S", 0.05)
    port = closed_udp_port()
    exp = exporter_to((port, 0))
    exp.handle(flow_block(90))  # the first of 3 datagrams is refused, the others wait
    c = exp.counters()
    assert c["c0_refused"] >= 1 and c["c0_held"] == 3 and c["c0_datagrams_sent"] == 0
    assert exp.pending() == 90
    wait = exp.wait()
    assert wait is not None and 0 < wait <= 0.05
    exp.flush()  # too early: nothing is tried
    assert exp.counters()["c0_refused"] == c["c0_refused"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", port))  # the collector is back
        rx.settimeout(5)
        run_loop(exp, lambda: exp.pending() == 0)
        got = received(rx, 3)
    assert [int.from_bytes(d[16:20], "big") for d in got] == [0, 30, 60]
    assert exp.counters()["c0_datagrams_sent"] == 3


def test_a_collector_refusing_too_long_is_given_up_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exporter_mod, "REFUSED_RETRY_S", 0.01)
    port = closed_udp_port()
    exp = exporter_to((port, 0))
    exp.hold_s = 0.2  # <export> refused_hold (whole seconds)
    started = time.monotonic()
    exp.handle(flow_block(90))  # 3 datagrams, held while the collector refuses
    assert exp.pending() == 90
    run_loop(exp, lambda: exp.pending() == 0)  # given up on: the pipeline goes on
    assert time.monotonic() - started >= 0.2
    c = exp.counters()
    assert (c["c0_dropped"], c["c0_held"], c["c0_datagrams_sent"]) == (3, 0, 0)
    exp.handle(flow_block(30, 90))  # still refused: dropped at once, not held
    assert exp.pending() == 0 and exp.counters()["c0_dropped"] == 4
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", port))  # back: sent, and held again at the next refusal
        rx.settimeout(5)
        exp.handle(flow_block(30, 120))
        assert int.from_bytes(rx.recv(65536)[16:20], "big") == 120
    assert exp.counters()["c0_dropped"] == 4
    exp.handle(flow_block(30, 150))
    assert exp.pending() == 30  # refused again: held, for refused_hold


def test_default_pace_of_a_collector() -> None:
    exp = exporter_to((closed_udp_port(), DEFAULT_MAX_RATE))
    assert exp.paces[0].rate == DEFAULT_MAX_RATE
    assert Collector("127.0.0.1", 2055).max_rate == DEFAULT_MAX_RATE


# --------------------------------------------------------------------------- UDP syslog


@pytest.fixture
def syslog_rx() -> Iterator[socket.socket]:
    yield from udp_receiver()


def test_udp_syslog_is_paced_and_holds_the_rest(syslog_rx: socket.socket) -> None:
    port = syslog_rx.getsockname()[1]
    d = SyslogDispatcher(f"udp://127.0.0.1:{port}", max_rate=1000)
    lines = [f"line {i}" for i in range(20)]
    d.emit(lines)
    assert d.counters["lines_sent"] == 4  # a bucket of 4
    assert d.pending == 16 and d.counters["paced"] == 16 and d.counters["buffered"] == 0
    wait = d.wait()
    assert wait is not None and 0 <= wait <= 0.001
    deadline = time.monotonic() + 20
    while d.pending:
        assert time.monotonic() < deadline
        time.sleep(d.wait() or 0)
        d.flush()
    got = [syslog_rx.recv(1000).decode() for _ in lines]
    assert [g.rsplit(": ", 1)[1] for g in got] == lines
    assert d.counters["dropped"] == 0 and d.wait() is None
    d.close()


def test_mirror_wakes_for_its_paced_dispatcher(syslog_rx: socket.socket) -> None:
    port = syslog_rx.getsockname()[1]
    d = SyslogDispatcher(f"udp://127.0.0.1:{port}", max_rate=500)
    mirror = Mirror(config.load(None), [("csv", d)])
    d.emit([f"x{i}" for i in range(10)])
    assert mirror.pending() == 8
    wait = mirror.wait()
    assert wait is not None and 0 < wait <= 0.002
    run_loop(mirror, lambda: mirror.pending() == 0)
    assert len([syslog_rx.recv(100) for _ in range(10)]) == 10
    d.close()


def test_unix_syslog_is_not_paced() -> None:
    d = SyslogDispatcher("/nonexistent/log", max_rate=5)
    assert d.pace.unlimited
    d.close()


def test_coverage_gaps_queue_behind_flow_datagrams_in_sequence(receiver: socket.socket) -> None:
    """Gap records (options, template 260) wait behind the flow datagrams already held,
    so the stream's sequence numbers stay in order, and are paced like them;
    ``gaps_held`` says when they have left (the feed then stores its offsets)."""
    coll = Collector("127.0.0.1", receiver.getsockname()[1], 10, max_rate=1000)
    exp = Exporter(ExportSettings(collectors=(coll,)), coverage=True)
    exp.handle(flow_block(300))  # more datagrams than the bucket holds: some held
    assert exp.pending() and not exp.gaps_held()
    gap = GapRow(1_764_000_000_000, 1_764_000_002_000, "not_listening", "ingest")
    exp.send_gaps([gap])
    assert exp.gaps_held()
    run_loop(exp, lambda: not exp.gaps_held())
    assert exp.pending() == 0
    receiver.settimeout(0.5)
    templates: dict[Any, Any] = {}
    got = []
    with contextlib.suppress(TimeoutError):
        while True:
            got.append(ipfix.unpack_datagram(receiver.recv(65536), templates))
    sequences = [h.sequence for h, _ in got]
    assert sequences == sorted(sequences)
    gaps = [g for _, recs in got for r in recs if (g := coverage_options.unpack(r)) is not None]
    assert [g for _, g in gaps] == [gap]
    assert coverage_options.unpack(got[-1][1][-1]) is not None  # the gap came last


def test_lost_gap_datagrams_are_counted_apart() -> None:
    """A gap record that cannot be delivered is no missed connection: counted as
    ``gaps_dropped``, not as ``dropped`` (which the coverage watch journals: a gap about
    it would be sent to the same collector, lost, journaled...)."""
    coll = Collector("127.0.0.1", closed_udp_port(), 10, max_rate=0)
    exp = Exporter(ExportSettings(collectors=(coll,), refused_hold=0), coverage=True)
    exp.handle(flow_block(30))  # refused, not held (refused_hold 0): dropped
    c = exp.counters()
    flows = c["c0_datagrams"]  # the templates' and the records'
    assert (c["c0_dropped"], c["c0_gaps_dropped"], c["c0_refused"]) == (flows, 0, 1), c
    exp.send_gaps([GapRow(1_764_000_000_000, 1_764_000_001_000, "enobufs", "ingest")])
    c = exp.counters()
    assert (c["c0_dropped"], c["c0_gaps_dropped"], c["c0_send_errors"]) == (flows, 1, 0), c
    assert not exp.gaps_held() and exp.pending() == 0
