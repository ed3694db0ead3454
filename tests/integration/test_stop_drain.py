"""`nfflowd stop` and `restart` in the middle of a saved log lose nothing.

The daemon (real `nfflowd start`, `file` source) reads a large generated log
into a real nfcapd and the screen mirror.  `stop` stops the stages in pipeline
order: ingest stops reading and waits until everything it sent is
acknowledged, so every event it read before the stop (its final counters say
how many lines) must have been exported and mirrored — exactly once.  `restart`
mid-run resumes at ingest's checkpoint: over both runs every record of the log
arrives, none twice.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from nfflowd.lab.nfcapd import Nfcapd
from nfflowd.messages import FlowRecord
from nfflowd.ops import control
from tests.needs import needs
from tests.pipeline_harness import (
    Tally,
    event_log,
    expected_records,
    file_source,
    mirror_lines,
    nfflowd,
    stage_counters,
    stage_token,
    wait_all_running,
    write_config,
)
from tests.replay_harness import judge_delivery

pytestmark = [needs("nfcapd", "nfdump"), pytest.mark.slow, pytest.mark.timeout(240)]

EVENTS = 300_000
#: Events ingest has read when the test stops the daemon: well inside the log.
STOP_AFTER = 60_000


def start(tmp_path: Path, log: Path, cap: Nfcapd) -> tuple[Path, Path]:
    rundir = tmp_path / "run"
    conf = write_config(rundir, file_source(log), collector_port=cap.port)
    nfflowd("-c", str(conf), "start")
    wait_all_running(rundir)
    return conf, rundir


def wait_read(rundir: Path, events: int, timeout: float = 60) -> int:
    """Until ingest has read at least *events* (its published counter); that count."""
    deadline = time.monotonic() + timeout
    while (n := int(stage_counters(rundir, "ingest").get("events", 0))) < events:
        assert time.monotonic() < deadline, stage_counters(rundir, "ingest")
        time.sleep(0.05)
    return n


def judge(want: list[FlowRecord], cap: Nfcapd, rundir: Path) -> dict[str, Tally]:
    """The collector and the screen mirror against the records *want*, printed."""
    results = judge_delivery(want, cap, mirror_lines(rundir), "mirror (screen)")
    for where, t in results.items():
        print(t.line(where))
    return results


def test_stop_mid_run_delivers_everything_read(tmp_path: Path) -> None:
    log, _ = event_log(tmp_path, EVENTS)
    with Nfcapd(extra_args=["-B", "8388608"]) as cap:
        conf, rundir = start(tmp_path, log, cap)
        try:
            seen = wait_read(rundir, STOP_AFTER)
            assert stage_token(rundir, "ingest") != "eof", "the log ended before the stop"
            nfflowd("-c", str(conf), "stop")
        finally:
            if control.is_running(str(rundir)):
                nfflowd("-c", str(conf), "stop", check=False)
        assert stage_token(rundir, "ingest") == "final"
        final = stage_counters(rundir, "ingest")
        # what ingest sent (a partial batch of a saved log is left to the checkpoint)
        lines = final["events"]
        print(f"stopped after {seen}+ events; ingest's final counters: {final}")
        assert STOP_AFTER <= lines < EVENTS, final
        assert final["events_unacked"] == 0, final  # everything it read was acknowledged
        prefix = tmp_path / "read-before-stop.log"
        with open(log) as src, open(prefix, "w") as dst:
            dst.writelines(itertools.islice(src, lines))
        results = judge(expected_records(prefix), cap, rundir)
    for where, t in results.items():
        assert t.clean and t.duplicates == 0, (t.line(where), t.sample)


def test_restart_mid_run_resumes_and_loses_nothing(tmp_path: Path) -> None:
    log, _ = event_log(tmp_path, EVENTS)
    want = expected_records(log)
    with Nfcapd(extra_args=["-B", "8388608"]) as cap:
        conf, rundir = start(tmp_path, log, cap)
        try:
            wait_read(rundir, STOP_AFTER)
            assert stage_token(rundir, "ingest") != "eof", "the log ended before the restart"
            nfflowd("-c", str(conf), "restart")
            wait_all_running(rundir)
            deadline = time.monotonic() + 120
            while stage_token(rundir, "ingest") != "eof":
                assert time.monotonic() < deadline, stage_counters(rundir, "ingest")
                time.sleep(0.2)
            resumed = stage_counters(rundir, "ingest").get("resumed_at_line", 0)
            nfflowd("-c", str(conf), "stop")
        finally:
            if control.is_running(str(rundir)):
                nfflowd("-c", str(conf), "stop", check=False)
        print(f"the restarted ingest resumed at line {resumed}")
        assert STOP_AFTER <= resumed < EVENTS
        results = judge(want, cap, rundir)
    for where, t in results.items():
        assert t.clean and t.duplicates == 0, (t.line(where), t.sample)
