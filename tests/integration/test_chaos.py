"""Chaos: 1,000,000 connections, a stage SIGKILLed every 0.5 s, the collector and syslog down.

`nfflowd replay` feeds a generated log (2,000,000 events: 1,000,000 connections
of mixed protocols and NAT kinds, nfflowd.lab.events) through the real
supervised pipeline into a real nfcapd (NetFlow v5) and a syslog mirror.  The
nfcapd runs with its default socket buffer (no ``-B``: ``net.core.rmem_default``,
about 92 v5 datagrams) in a network namespace of its own
(nfflowd.lab.nfcapd.CollectorNetns) and at nice -10 (COLLECTOR_NICE: the CPU
a collector host would give it), so the namespace's ``Udp: RcvbufErrors``
counts exactly the datagrams its socket dropped: after every export restart
correlate resends up to ``max_unacked`` (64) batches, and only export's pace
(nfflowd.outputs.pacing; MAX_RATE, half the default ``max_rate``: see there)
keeps that burst within what nfcapd absorbs.  Meanwhile:

* a stage (seeded, the seed is printed) is SIGKILLed every KILL_INTERVAL s, in
  KILL_ROUNDS rounds of every stage once (80 kills: the issue's measurement that
  lost 10 % of the records into such an nfcapd had 77); then the rest of the log
  goes through unharmed;
* the collector is down OUTAGE_S s (its port answers "port unreachable":
  ``CollectorNetns.reject``; export holds the refused datagrams, backpressure);
* syslog is down OUTAGE_S s from half-way through the collector's outage (its
  socket refuses, EPIPE; the mirror holds the lines).

The judges are nfdump and the syslog socket's reader, compared with the records
the log must produce (computed by a Correlator in another process meanwhile),
by record identity (read fast: tests/replay_harness.py, checked against the
plain readers on a sample): none may be missing, duplicates (what was being
delivered at the instant of a kill) stay within 0.1 %, and RcvbufErrors stays
0.  The replay only ends once every batch is acknowledged end to end, so it ends
after the outages.  About 3 min on a 2-core machine (it replaces the 200,000-event
chaos test that took about 1 min).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from nfflowd import topology
from nfflowd.config.settings import DEFAULT_MAX_RATE
from nfflowd.lab.nfcapd import (
    NFDUMP_FMT,
    CollectorNetns,
    Nfcapd,
    NfcapdError,
    parse_nfdump_line,
    udp_counters,
)
from tests.needs import needs, needs_root
from tests.pipeline_harness import (
    Chaos,
    Ident,
    PacedSyslog,
    Tally,
    csv_idents,
    end_replay,
    event_log,
    expected_records,
    mirror_lines,
    nfdump_ident,
    record_ident,
    stage_counters,
    stage_token,
    start_replay,
    tally,
    write_config,
)
from tests.replay_harness import nfdump_idents, stage_pid, syslog_idents

TestFunction = TypeVar("TestFunction", bound=Callable[..., None])

SEED = 20240904
#: nfcapd's priority: on a collector host it has a CPU to itself; here it shares 2
#: cores with the four stages, the test (its judge computing the expected records
#: meanwhile) and whatever else runs, so it gets the scheduler's preference a host of
#: its own gives it (it did not prevent drops at 4000/s: MAX_RATE).
COLLECTOR_NICE = -10
#: Export's pace (datagrams/s): half the default (DEFAULT_MAX_RATE, 4000).  At the
#: default, five runs on this shared 2-core machine under CPU pressure from other
#: suites (/proc/pressure/cpu 30-94 %) lost 0, 2, 3, 0 and 5 datagrams of ~95,000;
#: the run with DropWatch lost them with no kill in the 3 s before: not a resend
#: burst, but nfcapd (or the softirq that fills its 92-datagram buffer) kept off the
#: CPU for more than the 19 ms that pace allows.  At 2000 (46 ms), none.
#: Duplicates at the collector grow as the pace slows: a paced export is nearly
#: always in the middle of a batch when it is killed.  At 2000/s runs had 1,658,
#: 2,805 and 2,767 (the bound is 2,692) until the origin of a batch whose records
#: have all left was remembered at once rather than at its acknowledgement
#: (nfflowd/pipeline/sink.py); then up to 4,395 at nfcapd and 5,538 at syslog, until
#: three more causes were fixed (README, "Crash isolation": progress per datagram,
#: per 64 lines of a burst, 64 partial batches kept); since, <= 0.003 %.
MAX_RATE = DEFAULT_MAX_RATE // 2
#: Where nfcapd writes: memory, as its own disk would be idle on a collector host
#: (here the suite writes logs of hundreds of MB meanwhile: a write stalled by the
#: page cache's writeback stalls nfcapd's reading too).
COLLECTOR_DIR = "/dev/shm"
#: 1,000,000 connections: each a NEW and a DESTROY.
EVENTS = 2_000_000
KILL_INTERVAL = 0.5
KILL_ROUNDS = 20
#: Duplicates allowed, as a fraction of the expected records.
DUPLICATE_BOUND = 0.001
#: How long the collector, and syslog, are down: the collector once it has received
#: COLLECTOR_DOWN_AFTER datagrams (within OUTAGE_DEADLINE_S), syslog from half-way
#: through the collector's outage; each until it has met the outage (a datagram
#: refused, a mirror send failed: at most MET_DEADLINE_S more): during an outage the
#: pipeline may only be re-reading, after ingest kills, batches delivered before
#: (dropped as such), and then has nothing new to send (CI runs: no syslog line in
#: 10 s once; no datagram for 15 s, 17:14:04-19, once).
OUTAGE_S = 10.0
COLLECTOR_DOWN_AFTER = 5_000
OUTAGE_DEADLINE_S = 240.0
MET_DEADLINE_S = 60.0


def syslog_refusals(mirror_log: str) -> list[str]:
    """The mirror's warnings that syslog refused a line (nfflowd.outputs.syslog): a
    socket shut down for reading (PacedSyslog.down) fails a send with EPIPE."""
    return [ln for ln in mirror_log.splitlines() if "holding lines" in ln and "Broken pipe" in ln]


def expected_idents(log: str) -> list[Ident]:
    """The identities of the records *log* must produce (run in another process)."""
    return [record_ident(r) for r in expected_records(Path(log))]


class Outages(threading.Thread):
    """The collector down OUTAGE_S s once it has received COLLECTOR_DOWN_AFTER
    datagrams (so it falls while records flow, whatever the machine's speed), and
    until it has refused a datagram; syslog down OUTAGE_S s from half-way through
    it, and until the mirror has met it; how many datagrams the collector's
    namespace refused meanwhile, and when each step happened (``timeline``)."""

    def __init__(self, ns: CollectorNetns, port: int, syslog: PacedSyslog, rundir: Path) -> None:
        super().__init__(daemon=True)
        self.ns, self.port, self.syslog, self.rundir = ns, port, syslog, rundir
        self.rejected = 0
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.stop = threading.Event()
        self.timeline: list[str] = []
        self._collector_down = self._syslog_down = False

    def _step(self, what: str) -> None:
        self.timeline.append(f"{datetime.now().strftime('%H:%M:%S.%f')[:-3]} {what}")

    def _mirror_met_the_outage(self) -> bool:
        with contextlib.suppress(FileNotFoundError):
            return bool(syslog_refusals((self.rundir / "mirror.log").read_text(errors="replace")))
        return False

    def _wait(
        self, what: str, reached: Callable[[], bool], within: float = OUTAGE_DEADLINE_S
    ) -> None:
        deadline = time.monotonic() + within
        while not reached():
            if self.stop.is_set() or time.monotonic() > deadline:
                raise AssertionError(f"no outage: {what} not reached")
            time.sleep(0.25)
        self._step(f"{what}: reached")

    def _collector_up(self) -> None:
        if self._collector_down:
            self._collector_down = False
            self.rejected = self.ns.accept()
            self._step(f"collector up ({self.rejected} datagrams refused)")

    def _syslog_up(self) -> None:
        if self._syslog_down:
            self._syslog_down = False
            self.syslog.up()
            self._step("syslog up")

    def _outages(self) -> None:
        self._wait(
            "collector datagrams", lambda: self.ns.snmp()["InDatagrams"] >= COLLECTOR_DOWN_AFTER
        )
        # overlapping: syslog goes down half-way through the collector's outage and
        # comes back half its outage after the collector, so records flow (to the
        # mirror) during both, and the run stalls 1.5 outages, not 2 (suite time)
        self.ns.reject(self.port)
        self._collector_down = True
        self._step("collector down")
        time.sleep(OUTAGE_S / 2)
        self.syslog.down()
        self._syslog_down = True
        self._step("syslog down")
        time.sleep(OUTAGE_S / 2)
        self._wait("a datagram refused", lambda: self.ns.refused() > 0, MET_DEADLINE_S)
        self._collector_up()
        time.sleep(OUTAGE_S / 2)
        self._wait("a mirror send to syslog", self._mirror_met_the_outage, MET_DEADLINE_S)
        self._syslog_up()

    def run(self) -> None:
        try:
            self._outages()
        except BaseException as exc:  # reported by the fixture
            self.error = exc
        finally:
            for end in (self._collector_up, self._syslog_up):
                try:
                    end()
                except BaseException as exc:
                    self.error = self.error or exc
            self.done.set()


class DropWatch(threading.Thread):
    """When the collector's socket dropped datagrams, if it did: its namespace's UDP
    counters every 0.5 s (read from ``/proc/<nfcapd>/net/snmp``, no process spawned),
    printed next to the kills around each rise, so a failure says what was going on."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.path = f"/proc/{pid}/net/snmp"
        self.rises: list[tuple[float, int, int]] = []  # (epoch s, InDatagrams, RcvbufErrors)
        self.stop = threading.Event()

    def run(self) -> None:
        last = 0
        while not self.stop.wait(0.5):
            try:
                with open(self.path) as fh:
                    udp = udp_counters(fh.read())
            except (OSError, NfcapdError):
                return
            if udp["RcvbufErrors"] > last:
                last = udp["RcvbufErrors"]
                self.rises.append((time.time(), udp["InDatagrams"], last))

    def report(self, kills: list[tuple[float, str]]) -> str:
        lines = []
        for at, received, errors in self.rises:
            near = [f"{victim} {at - t:.1f} s before" for t, victim in kills if 0 <= at - t < 3]
            lines.append(
                f"RcvbufErrors reached {errors} after {received} datagrams; kills in the 3 s "
                f"before: {', '.join(near) or 'none'}"
            )
        return "\n".join(lines)


@pytest.fixture(scope="module")
def chaos_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One chaos replay (3-5 min on a shared 2-core machine), judged by the tests below."""
    tmp_path = tmp_path_factory.mktemp("chaos")
    started = time.monotonic()
    log, records = event_log(tmp_path, EVENTS)
    rundir = tmp_path / "run"
    chaos = Chaos(rundir, SEED, interval=KILL_INTERVAL)
    print(f"chaos seed {SEED}: {EVENTS} events, {records} records")
    spawn = multiprocessing.get_context("spawn")
    with (
        spawn.Pool(1) as pool,  # terminated on exit, even half-way
        CollectorNetns("nfch") as ns,
        tempfile.TemporaryDirectory(prefix="nfch-", dir=COLLECTOR_DIR) as files,
        Nfcapd(files, host=ns.address, netns=ns.name, timeout=30, nice=COLLECTOR_NICE) as cap,
        PacedSyslog(tmp_path / "syslog.sock", 1 << 30) as syslog,
    ):
        want = pool.apply_async(expected_idents, (str(log),))  # meanwhile, in another process
        conf = write_config(
            rundir,
            f"<export>\n  max_rate {MAX_RATE}\n</export>\n",
            collector_port=cap.port,
            collector_address=ns.address,
            exaddr=ns.source,
            syslog_socket=syslog.path,
            screen=False,
        )
        outages = Outages(ns, cap.port, syslog, rundir)
        assert cap.proc is not None
        watch = DropWatch(cap.proc.pid)
        watch.start()
        proc = start_replay(conf, rundir, log)
        replay_started = time.monotonic()
        outages.start()
        try:
            chaos.run(
                lambda: proc.poll() is None and stage_token(rundir, "ingest") != "eof",
                rounds=KILL_ROUNDS,
            )
            killing = time.monotonic() - replay_started
            out, err = proc.communicate(timeout=300)
        finally:
            end_replay(proc, rundir)
            outages.stop.set()
            outages.done.wait(60)
        replayed = time.monotonic() - replay_started
        print(chaos.summary())
        print(f"kills for {killing:.1f} s; replay done after {replayed:.1f} s")
        print(out)
        print("\n".join(outages.timeline))
        assert outages.error is None, outages.error
        assert proc.returncode == 0, err
        syslog.drain()
        watch.stop.set()
        print(watch.report(chaos.log))
        expected = want.get(timeout=300)
        try:
            cap.stop()  # once all is processed: raises if its socket dropped any
        except NfcapdError as exc:
            print(exc)  # judged below, with the namespace's count
        rcvbuf_errors = ns.rcvbuf_errors()
        received = nfdump_idents(lines := list(cap.lines(NFDUMP_FMT)))
    sample = lines[:: max(1, len(lines) // 2000)]
    assert nfdump_idents(sample) == [nfdump_ident(parse_nfdump_line(ln)) for ln in sample]
    del lines
    sample = syslog.lines[:: max(1, len(syslog.lines) // 2000)]
    assert syslog_idents(sample) == csv_idents(sample)
    mirror_log = (rundir / "mirror.log").read_text()
    results = {
        "collector (nfdump)": tally([i for i in expected if ":" not in i[1]], received),
        "mirror (syslog)": tally(expected, *syslog_idents(syslog.lines)),
    }
    for where, t in results.items():
        print(t.line(where))
    print(
        f"collector down {OUTAGE_S:.0f} s: {outages.rejected} datagrams refused; RcvbufErrors "
        f"{rcvbuf_errors}; {time.monotonic() - started:.0f} s in all"
    )
    return {
        "chaos": chaos,
        "results": results,
        "rcvbuf_errors": rcvbuf_errors,
        "outages": outages,
        "mirror_log": mirror_log,
    }


def _chaos(test: TestFunction) -> TestFunction:
    """The marks of the tests that share the chaos run."""
    for mark in (needs("nfcapd", "nfdump", "nft"), needs_root(), pytest.mark.slow):
        test = mark(test)
    marked: TestFunction = pytest.mark.timeout(600)(test)
    return marked


@_chaos
def test_a_million_connections_with_kills_and_outages_lose_nothing(
    chaos_run: dict[str, Any],
) -> None:
    chaos: Chaos = chaos_run["chaos"]
    assert all(chaos.kills[s] == KILL_ROUNDS for s in topology.STAGES), chaos.summary()
    results: dict[str, Tally] = chaos_run["results"]
    for where, t in results.items():
        assert t.expected >= 2_000_000, t.line(where)
        assert t.clean, (t.line(where), t.sample)


@_chaos
def test_the_collector_socket_dropped_nothing(chaos_run: dict[str, Any]) -> None:
    """The paced resends after each export restart stayed within nfcapd's default buffer."""
    assert chaos_run["rcvbuf_errors"] == 0


@_chaos
def test_the_outages_happened(chaos_run: dict[str, Any]) -> None:
    """The collector refused datagrams and syslog refused lines while down: both
    outages hit the pipeline (which then lost nothing: the test above)."""
    outages: Outages = chaos_run["outages"]
    assert outages.rejected > 0
    assert syslog_refusals(chaos_run["mirror_log"])


@_chaos
def test_duplicates_stay_within_bound(chaos_run: dict[str, Any]) -> None:
    results: dict[str, Tally] = chaos_run["results"]
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
