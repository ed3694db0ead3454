"""Two correlators and two exporters: every record once, each exporter its own stream.

`<daemon> correlators 2 exporters 2` through the real supervised pipeline
(numprocs) into a real nfcapd: the collector sees two exporters (engine ids 0
and 1, each with gap-free sequence numbers) whose records together are exactly
the IPv4 records the mirror lines carry, and the mirror has exactly what an
unsharded replay of the same log produces.  Then one correlator shard and one
exporter shard are SIGKILLed mid-replay: nothing is lost.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from nfflowd.lab.nfcapd import Nfcapd
from tests.pipeline_harness import (
    csv_key,
    end_replay,
    event_log,
    is_ipv4,
    nfdump_key,
    replay,
    start_replay,
    working_pid,
    write_config,
)

SHARDS = "    correlators 2\n    exporters 2\n</daemon>"


def sharded_config(rundir: Path, port: int | None) -> Path:
    conf = write_config(rundir, collector_port=port)
    conf.write_text(conf.read_text().replace("</daemon>", SHARDS))
    return conf


def mirror_keys(rundir: Path) -> Counter[tuple[object, ...]]:
    paths = [*sorted(rundir.glob("mirror.out.*"), reverse=True), rundir / "mirror.out"]
    text = "".join(p.read_text() for p in paths if p.exists())
    return Counter(csv_key(line)[:9] for line in text.splitlines() if line.strip())


@pytest.mark.timeout(300)
def test_two_correlators_two_exporters_deliver_every_record_once(tmp_path: Path) -> None:
    log, expected = event_log(tmp_path, 40_000)
    plain = write_config(tmp_path / "plain")
    replay(plain, tmp_path / "plain", log)
    reference = mirror_keys(tmp_path / "plain")
    assert sum(reference.values()) == expected

    with Nfcapd(extra_args=["-B", "8388608"]) as cap:
        conf = sharded_config(tmp_path / "run", cap.port)
        res = replay(conf, tmp_path / "run", log)
        got = mirror_keys(tmp_path / "run")
        assert got == reference
        report = {ln.split()[0]: ln for ln in res.stdout.splitlines() if ln.strip()}
        assert {"correlate-0", "correlate-1", "export-0", "export-1"} <= set(report), report
        # each shard did a fair part of the work
        for name in ("correlate-0", "correlate-1"):
            records = int(report[name].split("records=")[1].split()[0])
            assert expected * 0.3 < records < expected * 0.7, report[name]
        v4 = Counter({k: n for k, n in reference.items() if is_ipv4(str(k[2]))})
        assert Counter(nfdump_key(r) for r in cap.records()) == v4
        engines = Counter(row[0] for row in cap.rows("fmt:%eng"))
        assert set(engines) == {"0/0", "0/1"}, engines
        assert cap.stats().get("Sequence failures", 0) == 0


def wait_for(check: object, timeout: float, what: str) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()  # type: ignore[operator]
        if value:
            return int(value)
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_shard_is_restarted_and_nothing_is_lost(tmp_path: Path) -> None:
    log, expected = event_log(tmp_path, 200_000)
    rundir = tmp_path / "run"
    conf = sharded_config(rundir, None)
    proc = start_replay(conf, rundir, log)
    try:
        pids = [
            wait_for(lambda v=v: working_pid(rundir, v), 30, f"{v} at work")
            for v in ("correlate-1", "export-0")
        ]
        time.sleep(0.5)  # in the middle of the replay
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
    finally:
        end_replay(proc, rundir)
    assert proc.returncode == 0, err
    report = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert "starts=2" in report["correlate-1"] and "starts=2" in report["export-0"], report
    got = mirror_keys(rundir)
    assert len(got) == expected, f"{len(got)} distinct records of {expected}"  # 0 missing
    duplicates = sum(got.values()) - len(got)
    print(
        f"shards, 2 kills: {sum(got.values())} lines for {expected} records, "
        f"{duplicates} duplicate keys"
    )
    assert sum(got.values()) <= expected + 2 * 1_500  # two kills: a chunk each, rarely a batch
