"""Export stopped for 30 s at full input rate: every stage's memory stays bounded.

Backpressure instead of buffering: correlate keeps at most ``<daemon>
max_unacked`` flow batches per output, then stops reading events; ingest keeps
at most ``max_unacked`` event batches, then stops reading its source.  So while
export is frozen (SIGSTOP) each stage's resident memory must stay under its
idle size plus what those batches can hold, whatever the input still waiting.
The bound is derived, not tuned: the largest encoded batch of this log times
``max_unacked`` times the copies a stage can hold (its outbox and ZeroMQ's
queues), plus correlate's connection table for this log, plus a fixed margin
for the interpreter's allocator.  After SIGCONT everything arrives, once.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
import tracemalloc
from pathlib import Path

import pytest

from nfflowd import topology
from nfflowd.conntrack.text import parse_line
from nfflowd.correlate.correlator import Correlator
from nfflowd.lab.nfcapd import Nfcapd
from nfflowd.messages import EventBatch, FlowBatch, Payload
from nfflowd.pipeline import codec
from nfflowd.pipeline.batcher import Batcher
from nfflowd.pipeline.delivery import Recent
from tests.needs import needs
from tests.pipeline_harness import (
    daemon,
    end_replay,
    event_log,
    expected_records,
    idle_source,
    mirror_lines,
    running_pid,
    stage_counters,
    start_replay,
    wait_all_running,
    wait_settled,
    write_config,
)
from tests.replay_harness import judge_delivery

EVENTS = 300_000
MAX_UNACKED = 16
STOP_S = 30  # backpressure reaches the source within the first 10 s (asserted)
#: The interpreter's own growth under load (pymalloc arenas kept after decoding a
#: batch, zmq's I/O buffers, lazily imported encoders): a constant, not per batch.
MARGIN_KB = 16 * 1024
#: gen_events keeps this many connections open (its ``open_conns`` default).
OPEN_CONNECTIONS = 20_000


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


#: The most events an event batch holds (ingest's Batcher).
MAX_EVENTS = Batcher().max_events


def batch_sizes(log: Path, batches: int = 100) -> tuple[int, int]:
    """The largest encoded event batch (a full batch of lines, as ingest sends
    it) and flow batch (what correlate makes of one) among the log's first batches."""
    corr, ev_max, flow_max = Correlator(), 0, 0
    with open(log) as fh:
        for _ in range(batches):
            lines = list(itertools.islice(fh, MAX_EVENTS))
            events = [e for ln in lines if (e := parse_line(ln))]
            if not events:
                break
            data = "".join(lines).encode()
            batch_in = EventBatch("ingest", 1, 1, 0, Payload.TEXT, data, len(lines), str(log), 1)
            ev_max = max(ev_max, len(codec.encode(batch_in)))
            if records := corr.feed_block(events):
                batch = FlowBatch("correlate", 1, 1, 0, 1, 1, records)
                flow_max = max(flow_max, len(codec.encode(batch)))
    return ev_max, flow_max


def correlate_state_kb(log: Path) -> int:
    """What correlate's state costs for this log: its open-connection table at
    OPEN_CONNECTIONS entries and its memory of closed ids (``Recent``, full)."""
    tracemalloc.start()
    try:
        corr = Correlator()
        with open(log) as fh:
            for ln in itertools.islice(fh, OPEN_CONNECTIONS):  # the first lines open them
                if (ev := parse_line(ln)) is not None:
                    corr.feed(ev, bytearray())
        table = tracemalloc.get_traced_memory()[0]
        recent = Recent()
        for i in range(recent.size):
            recent.add(i + (1 << 40))
        closed = tracemalloc.get_traced_memory()[0] - table
    finally:
        tracemalloc.stop()
    return (table + closed) // 1024


def idle_rss(tmp_path: Path) -> dict[str, int]:
    """Each stage's resident size in a daemon that has nothing to read."""
    rundir = tmp_path / "idle"
    with daemon(write_config(rundir, idle_source(tmp_path))):
        pids = wait_all_running(rundir)
        time.sleep(2)
        return {stage: rss_kb(pid) for stage, pid in pids.items()}


@needs("nfcapd", "nfdump")
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_export_stopped_for_half_a_minute_memory_stays_bounded(tmp_path: Path) -> None:
    log, _ = event_log(tmp_path, EVENTS)
    expected = expected_records(log)
    ev_kb, flow_kb = (n // 1024 + 1 for n in batch_sizes(log))
    base = idle_rss(tmp_path)
    m = MAX_UNACKED
    bound = {
        # its outbox, and a copy in ZeroMQ's queues
        "ingest": base["ingest"] + 2 * m * ev_kb,
        # event batches waiting in its socket; one encoded flow batch kept for both
        # outputs plus a copy in each output's queue; its connection table
        "correlate": base["correlate"] + m * ev_kb + 3 * m * flow_kb + correlate_state_kb(log),
        # a batch queued and one being delivered, at most max_unacked of them
        "export": base["export"] + 2 * m * flow_kb,
        "mirror": base["mirror"] + 2 * m * flow_kb,
    }
    bound = {stage: kb + MARGIN_KB for stage, kb in bound.items()}
    print(f"batches: events {ev_kb} KiB, flows {flow_kb} KiB; max_unacked {m}")
    rundir = tmp_path / "run"
    peak: dict[str, int] = dict.fromkeys(topology.STAGES, 0)
    with Nfcapd(extra_args=["-B", "8388608"]) as cap:
        conf = write_config(
            rundir, f"<daemon>\n  max_unacked {m}\n</daemon>\n", collector_port=cap.port
        )
        proc = start_replay(conf, rundir, log)
        export = 0
        try:
            pids = wait_all_running(rundir, timeout=60)
            wait_settled(
                lambda: int(stage_counters(rundir, "export").get("records", 0)),
                1,
                timeout=60,
                quiet=60,
            )
            export = pids["export"]
            os.kill(export, signal.SIGSTOP)
            stopped = time.monotonic()
            read_at: list[int] = []
            while time.monotonic() - stopped < STOP_S:
                for stage, pid in pids.items():
                    peak[stage] = max(peak[stage], rss_kb(pid))
                if time.monotonic() - stopped > 10 and not read_at:
                    read_at.append(int(stage_counters(rundir, "ingest")["events"]))
                time.sleep(0.5)
            ingest = stage_counters(rundir, "ingest")
            correlate = stage_counters(rundir, "correlate")
            assert running_pid(rundir, "correlate") == pids["correlate"]  # nobody restarted
            os.kill(export, signal.SIGCONT)
            export = 0
            out, err = proc.communicate(timeout=180)
        finally:
            if export:
                os.kill(export, signal.SIGCONT)
            end_replay(proc, rundir)
        print(out)
        assert proc.returncode == 0, err
        results = judge_delivery(expected, cap, mirror_lines(rundir), "mirror (screen)")
    for stage in topology.STAGES:
        print(
            f"{stage:<9} idle {base[stage]:>7} KiB  peak while export stopped "
            f"{peak[stage]:>7} KiB  bound {bound[stage]:>7} KiB"
        )
    for where, t in results.items():
        print(t.line(where))
    # backpressure reached the source: ingest stopped reading with max_unacked waiting
    assert ingest["events"] == read_at[0] < EVENTS, (read_at, ingest)
    assert ingest["events_unacked"] == m and correlate["flows.export_unacked"] == m
    for stage in topology.STAGES:
        assert peak[stage] <= bound[stage], (stage, peak[stage], bound[stage])
    for where, t in results.items():
        assert t.clean and t.duplicates == 0, (t.line(where), t.sample)
