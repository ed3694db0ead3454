"""Chaos: a stage SIGKILLed about every second, all through a replay, loses nothing.

`nfflowd replay` feeds a generated log through the real supervised pipeline
into a real nfcapd (NetFlow v5) and a syslog mirror.  Meanwhile a random stage
(seeded, the seed is printed) is killed about once a second, every stage at
least MIN_KILLS times.  The judges are nfdump and the syslog socket's reader,
compared with the records the log must produce, by record identity: none may
be missing; duplicates a crash makes unavoidable (what was being delivered at
the instant of a kill) are counted and stay within 0.1 %.  The replay only ends
once every batch is acknowledged end to end, so it ends after the kills stop.

The syslog reader takes SYSLOG_RATE lines/s; acknowledgements being end to end,
that paces the whole pipeline, so the replay lasts long enough for the kills on
any machine (and every link runs full, at ``max_unacked``, all along).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from nfflowd import topology
from nfflowd.lab.nfcapd import Nfcapd
from tests.needs import needs
from tests.pipeline_harness import (
    Chaos,
    PacedSyslog,
    csv_idents,
    end_replay,
    event_log,
    expected_records,
    mirror_lines,
    record_ident,
    stage_counters,
    stage_token,
    start_replay,
    tally,
    write_config,
)
from tests.replay_harness import judge_delivery, stage_pid

SEED = 20240904
EVENTS = 200_000
#: Lines/s the syslog reader takes: the log's ~283,000 records last about 25 s.
SYSLOG_RATE = 11_000
#: Batches in flight per link.  The syslog dispatcher holds at most 100,000 undelivered
#: lines (then drops, counted); 16 batches of ~1,400 records stay far below.
MAX_UNACKED = 16
MIN_KILLS = 5
#: Duplicates allowed, as a fraction of the expected records.
DUPLICATE_BOUND = 0.001


@pytest.fixture(scope="module")
def chaos_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Chaos, dict[str, Any]]:
    """One chaos replay (~50 s), judged by the tests below."""
    tmp_path = tmp_path_factory.mktemp("chaos")
    log, _ = event_log(tmp_path, EVENTS)
    expected = expected_records(log)
    rundir = tmp_path / "run"
    chaos = Chaos(rundir, SEED, interval=1.0)
    print(f"chaos seed {SEED}: {EVENTS} events, {len(expected)} records")
    with (
        Nfcapd(extra_args=["-B", "8388608"]) as cap,
        PacedSyslog(tmp_path / "syslog.sock", SYSLOG_RATE) as syslog,
    ):
        daemon = f"<daemon>\n  max_unacked {MAX_UNACKED}\n</daemon>\n"
        conf = write_config(
            rundir, daemon, collector_port=cap.port, syslog_socket=syslog.path, screen=False
        )
        proc = start_replay(conf, rundir, log)
        started = time.monotonic()
        try:
            chaos.run(lambda: proc.poll() is None and stage_token(rundir, "ingest") != "eof")
            killing = time.monotonic() - started
            out, err = proc.communicate(timeout=300)
        finally:
            end_replay(proc, rundir)
        print(chaos.summary())
        print(f"kills for {killing:.1f} s; replay done after {time.monotonic() - started:.1f} s")
        print(out)
        assert proc.returncode == 0, err
        syslog.drain()
        results = judge_delivery(expected, cap, syslog.lines, "mirror (syslog)")
    for where, t in results.items():
        print(t.line(where))
    return chaos, results


@needs("nfcapd", "nfdump")
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stages_killed_every_second_lose_nothing(chaos_run: tuple[Chaos, dict[str, Any]]) -> None:
    chaos, results = chaos_run
    assert min(chaos.kills[s] for s in topology.STAGES) >= MIN_KILLS, chaos.summary()
    for where, t in results.items():
        assert t.clean, (t.line(where), t.sample)


@needs("nfcapd", "nfdump")
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stages_killed_every_second_duplicates_stay_within_bound(
    chaos_run: tuple[Chaos, dict[str, Any]],
) -> None:
    _, results = chaos_run
    for where, t in results.items():
        assert t.duplicates <= DUPLICATE_BOUND * t.expected, t.line(where)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ingest_restarted_while_the_mirror_lags_loses_nothing(tmp_path: Path) -> None:
    """A deterministic sequence behind losses the chaos above can show.

    The mirror is stopped (SIGSTOP) from its start, so every flow batch waits in
    correlate for the mirror's acknowledgement, and so does every event batch
    that produced records (ingest's checkpoint stays before them).  Ingest is
    then killed: the new one re-reads the log from its checkpoint, and correlate,
    which already closed those connections, makes no record of the re-read
    events.  Those events must still not be acknowledged while their records wait
    for the mirror: if they were, ingest would consider the log done (``eof``),
    and a correlate crash at that point loses the records for good.
    """
    log, _ = event_log(tmp_path, 60_000)  # 60 batches of 1000 events: fewer than max_unacked (64)
    expected = [record_ident(r) for r in expected_records(log)]
    rundir = tmp_path / "run"
    conf = write_config(rundir)
    proc = start_replay(conf, rundir, log)
    mirror = 0
    try:
        deadline = time.monotonic() + 30
        while not (mirror := stage_pid(rundir, "mirror")):
            assert time.monotonic() < deadline and proc.poll() is None, "no mirror started"
            time.sleep(0.01)
        os.kill(mirror, signal.SIGSTOP)
        deadline = time.monotonic() + 60
        while stage_counters(rundir, "ingest").get("events", 0) < 60_000:  # all read, none acked
            assert time.monotonic() < deadline, stage_counters(rundir, "ingest")
            time.sleep(0.1)
        os.kill(stage_pid(rundir, "ingest"), signal.SIGKILL)
        time.sleep(5)  # the new ingest re-reads the log and waits for acknowledgements
        premature = stage_token(rundir, "ingest") in ("eof", "final")
        print(f"ingest acknowledged the whole log while the mirror was stopped: {premature}")
        os.kill(stage_pid(rundir, "correlate"), signal.SIGKILL)
        os.kill(mirror, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        if mirror:
            with contextlib.suppress(ProcessLookupError):
                os.kill(mirror, signal.SIGCONT)
        end_replay(proc, rundir)
    print(out)
    assert proc.returncode == 0, err
    result = tally(expected, *csv_idents(mirror_lines(rundir)))
    print(result.line("mirror (screen)"))
    assert result.clean, (result.line("mirror"), result.sample, f"premature eof: {premature}")
    assert not premature, "ingest's log was acknowledged before the mirror delivered it"
