"""Outages downstream: nothing is lost, memory stays bounded, everything arrives after recovery.

The syslog daemon is down for 10 s in the middle of a replay: the mirror keeps
undelivered lines and does not acknowledge their batches, correlate stops at
``max_unacked`` batches (backpressure instead of unbounded memory), and once
rsyslogd is back every line arrives, none twice.  The only lines that can
miss are those already in rsyslogd's socket queue when it was killed (datagram
syslog has no acknowledgement): at most net.unix.max_dgram_qlen + 1.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from nfflowd import topology
from nfflowd.lab.nfcapd import Nfcapd
from tests.needs import needs
from tests.pipeline_harness import (
    end_replay,
    event_log,
    expected_records,
    nfdump_ident,
    record_ident,
    running_pid,
    stage_counters,
    start_replay,
    wait_settled,
    write_config,
)
from tests.rsyslog_harness import RsyslogHarness


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_syslog_down_for_ten_seconds_loses_nothing(tmp_path: Path) -> None:
    log, expected = event_log(tmp_path, 100_000)
    rundir = tmp_path / "run"
    with RsyslogHarness(tmp_path / "syslog") as syslog:
        conf = write_config(
            rundir,
            "<daemon>\n  max_unacked 8\n</daemon>\n",
            syslog_socket=syslog.socket_path,
            screen=False,
        )
        proc = start_replay(conf, rundir, log)
        try:
            deadline = time.monotonic() + 60
            while not (syslog.local6_log.exists() and syslog.local6_log.stat().st_size > 0):
                assert time.monotonic() < deadline, "no line reached syslog"
                time.sleep(0.05)
            syslog.stop()
            time.sleep(10)
            during = len(syslog.lines(0))
            assert proc.poll() is None, "the replay cannot finish while syslog is down"
            syslog.start()
            out, err = proc.communicate(timeout=180)
        finally:
            end_replay(proc, rundir)
        assert proc.returncode == 0, err
        queue = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
        syslog.lines(expected - queue - 1, timeout=60)
        time.sleep(1.0)  # anything still on its way
        lines = syslog.lines(0)
    assert during < expected
    counts = Counter(lines)
    assert max(counts.values()) == 1  # none twice
    assert expected - queue - 1 <= len(lines) <= expected
    report = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert "d0_dropped=0" in report["mirror"]


@needs("nfcapd", "nfdump")
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_collector_down_for_ten_seconds(tmp_path: Path) -> None:
    """A collector on this host that is down loses nothing: its refusals are known at once.

    UDP NetFlow has no acknowledgement, but a collector on this host that is down
    answers ICMP port unreachable before ``send`` returns (``SO_ERROR``): export
    keeps the refused datagram and every later one, does not acknowledge their
    batches (backpressure), and tries again every 0.5 s (README "Pacing").

    The test steers the pipeline with SIGSTOP/SIGCONT: correlate is paused while the
    collector is stopped (so everything sent before is in its files), then the
    mirror is paused and correlate resumed, so export gets at most ``max_unacked``
    batches during the outage and the rest waits for the mirror.  After 10 s a new
    nfcapd binds the same port and the mirror goes on.  Expected: the first
    collector holds an exact prefix of the records, the second exactly the rest;
    the refusals were counted, and export held datagrams meanwhile.  No stage
    restarts.
    """
    log, _ = event_log(tmp_path, 200_000)
    want = [record_ident(r) for r in expected_records(log) if r.family == 4]
    rundir = tmp_path / "run"
    big = ["-B", "8388608"]  # a receive buffer for bursts: nfcapd itself must not drop
    first = Nfcapd(tmp_path / "nfcapd-1", extra_args=big)
    first.start()
    second = Nfcapd(tmp_path / "nfcapd-2", port=first.port, extra_args=big)
    conf = write_config(rundir, "<daemon>\n  max_unacked 8\n</daemon>\n", collector_port=first.port)
    proc = start_replay(conf, rundir, log)
    paused: list[int] = []

    def sent() -> int:
        return int(stage_counters(rundir, "export").get("c0_datagrams_sent", 0))

    try:
        wait_settled(sent, 1, timeout=60, quiet=60)  # the collector has records
        correlate, mirror = running_pid(rundir, "correlate"), running_pid(rundir, "mirror")
        assert correlate and mirror and proc.poll() is None, "the replay ended too early"
        os.kill(correlate, signal.SIGSTOP)
        paused.append(correlate)
        wait_settled(sent, 1 << 62, timeout=30, quiet=2.5)  # export has sent all it got
        first.stop()  # everything sent so far is stored; then SIGTERM
        down = time.monotonic()
        os.kill(mirror, signal.SIGSTOP)
        paused.append(mirror)
        os.kill(correlate, signal.SIGCONT)  # export gets <= max_unacked batches more
        paused.remove(correlate)
        time.sleep(max(0.0, 10 - (time.monotonic() - down)))
        during = stage_counters(rundir, "export")
        second.start()
        os.kill(mirror, signal.SIGCONT)
        paused.remove(mirror)
        out, err = proc.communicate(timeout=180)
        before, after = first.records(), second.records()
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        end_replay(proc, rundir)
        first.close()
        second.close()
    print(out)
    assert proc.returncode == 0, err
    report = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    for stage in topology.STAGES:
        assert "starts=1" in report[stage].split(), report[stage]  # nothing crashed
    export = dict(kv.split("=") for kv in report["export"].split()[1:])
    refused, errors = int(export["c0_refused"]), int(export["c0_send_errors"])
    got_before, got_after = [nfdump_ident(r) for r in before], [nfdump_ident(r) for r in after]
    print(
        f"collector down 10 s: {len(got_before)} records before, {len(got_after)} after, "
        f"of {len(want)}; refused {refused} (during the outage: {during.get('c0_refused')}, "
        f"datagrams held then {during.get('c0_held')}), send errors {errors}"
    )
    assert got_before and got_after
    assert Counter(got_before) == Counter(want[: len(got_before)])  # an exact prefix
    assert Counter(got_after) == Counter(want[len(got_before) :])  # exactly the rest
    assert int(during.get("c0_refused", 0)) >= 1 and int(during.get("c0_held", 0)) >= 1
    assert errors == 0
