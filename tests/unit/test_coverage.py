"""The coverage journal (nfflowd.pipeline.coverage) and ``who``'s coverage lines.

Appends are whole lines, fsync'ed, rotated at a bound; the gap vocabulary is closed;
a window is complete only inside recording and clear of gaps; ``who`` says
complete, INCOMPLETE with the gaps, or unknown without a journal.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from nfflowd.ops.who import coverage as who_coverage
from nfflowd.pipeline import coverage, persist
from nfflowd.pipeline.coverage import Gap, Journal, Records, Undelivered

T = 1_796_551_200_000  # 2026-12-06T10:00:00Z
LOG = logging.getLogger("test.coverage")


def journal(tmp_path: Path, stage: str = "ingest", **kw: int) -> Journal:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return Journal(str(state), stage, LOG, **kw)


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_records_are_whole_fsynced_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    j = journal(tmp_path)
    j.started(T, "netlink", ["no_counters"])
    j.gap(Gap(T + 10, T + 500, "enobufs", "ingest", "ENOBUFS #1"))
    j.stopped(T + 1000)
    j.close()
    path = tmp_path / "state" / "coverage.ingest.jsonl"
    got = lines(path)
    assert [r["kind"] for r in got] == ["started", "gap", "stopped"]
    assert got[0] == {
        "v": 1, "kind": "started", "stage": "ingest", "at_ms": T, "source": "netlink",
        "conditions": ["no_counters"],
    }  # fmt: skip
    assert {k: got[1][k] for k in ("from_ms", "to_ms", "cause", "detail")} == {
        "from_ms": T + 10, "to_ms": T + 500, "cause": "enobufs", "detail": "ENOBUFS #1",
    }  # fmt: skip
    assert len(synced) == 3  # one fsync per record, before append returns
    assert j.counters["coverage_gaps"] == 1 and j.counters["coverage_gap_ms"] == 490
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_rotation_bounds_each_stage_journal(tmp_path: Path) -> None:
    j = journal(tmp_path, "export-1", max_bytes=600, keep=2)
    for i in range(40):
        j.gap(Gap(T + i, T + i + 1, "undelivered", "export-1", f"burst {i}"))
    j.close()
    state = tmp_path / "state"
    names = sorted(p.name for p in state.iterdir())
    assert names == [
        "coverage.export-1.jsonl", "coverage.export-1.jsonl.1", "coverage.export-1.jsonl.2",
    ]  # fmt: skip
    assert all((state / n).stat().st_size <= 600 for n in names)
    kept = coverage.read(str(state)).records
    details = [r["detail"] for r in kept]
    assert details == [f"burst {i}" for i in range(40 - len(details), 40)]  # the newest, in order
    assert len(details) < 40


def test_the_vocabulary_is_closed() -> None:
    assert coverage.CAUSES == (
        "not_listening", "enobufs", "no_counters", "no_timestamps", "undelivered",
    )  # fmt: skip
    with pytest.raises(ValueError, match="not one of"):
        Gap(T, T + 1, "cosmic_rays", "ingest")
    with pytest.raises(ValueError, match="ends"):
        Gap(T + 1, T, "enobufs", "ingest")
    line = Gap(T, T + 1500, "not_listening", "ingest", "a\nb").line()
    assert line == (
        "coverage gap from=2026-12-06T10:00:00.000Z to=2026-12-06T10:00:01.500Z ms=1500 "
        "cause=not_listening stage=ingest detail=a b"
    )
    # what a reader does not understand is left out and counted, never guessed
    good = Gap(T, T + 1, "enobufs", "ingest").record(T + 2)
    assert coverage.parse(json.dumps(good).encode()) is not None
    for bad in (
        {**good, "cause": "cosmic_rays"},
        {**good, "from_ms": "1"},
        {**good, "to_ms": T - 1},
        {**good, "v": 2},
        {**good, "kind": "paused"},
        {**good, "to_ms": 10**20},
    ):
        assert coverage.parse(json.dumps(bad).encode()) is None
    assert coverage.parse(b"{not json") is None


def test_a_journal_that_cannot_be_written_does_not_stop_the_stage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    j = Journal(str(tmp_path / "missing"), "ingest", LOG)
    with caplog.at_level(logging.WARNING):
        j.gap(Gap(T, T + 5, "enobufs", "ingest", "x"))
        j.gap(Gap(T, T + 5, "enobufs", "ingest", "y"))
    assert j.counters == {"coverage_gaps": 2, "coverage_gap_ms": 10, "coverage_journal_errors": 2}
    texts = [r.getMessage() for r in caplog.records]
    assert sum("coverage gap from=" in t for t in texts) == 2  # the log line still says it
    assert sum("cannot write" in t for t in texts) == 1  # said once


def test_a_planted_link_is_not_followed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (state / "coverage.ingest.jsonl").symlink_to(victim)
    j = Journal(str(state), "ingest", LOG)
    j.stopped(T)
    j.close()
    assert victim.read_text() == "precious\n"
    assert not (state / "coverage.ingest.jsonl").is_symlink()


def test_undelivered_bursts_are_one_gap_each() -> None:
    u = Undelivered("export", "datagrams to collector 127.0.0.1:2055 v9", quiet_ms=1000)
    assert u.observe(0, T) is None
    assert u.observe(3, T + 100) is None  # a burst opens
    assert u.observe(5, T + 400) is None
    assert u.observe(5, T + 900) is None  # quiet for 500 ms: still open
    gap = u.observe(5, T + 1400)
    assert gap == Gap(
        T + 100, T + 400, "undelivered", "export",
        "5 datagrams to collector 127.0.0.1:2055 v9 not delivered",
    )  # fmt: skip
    assert u.observe(5, T + 5000) is None and u.flush() is None
    assert u.observe(6, T + 6000) is None
    what = "1 datagrams to collector 127.0.0.1:2055 v9 not delivered"
    assert u.flush() == Gap(T + 6000, T + 6000, "undelivered", "export", what)


def rec(kind: str, at: int, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {"v": 1, "kind": kind, "stage": "ingest", "at_ms": at}
    if kind == "started":
        base.update(source="netlink", conditions=[])
    return {**base, **kw}


def found(*records: dict[str, object], alive: int | None = None) -> Records:
    return Records(records=[dict(r) for r in records], files=["j"], alive_ms=alive)


def test_complete_only_inside_recording_and_clear_of_gaps() -> None:
    crash = rec(
        "gap", T + 60_000, from_ms=T + 50_000, to_ms=T + 60_000, cause="not_listening", detail=""
    )
    j = found(
        rec("started", T),
        crash,
        rec("started", T + 60_000),
        rec("stopped", T + 100_000),
        rec("started", T + 200_000),
        alive=T + 250_000,
    )
    assert coverage.recording(j.records, j.alive_ms) == [
        (T, T + 60_000), (T + 60_000, T + 100_000), (T + 200_000, T + 250_000),
    ]  # fmt: skip
    assert coverage.assess(j, (T + 10_000, T + 20_000)).complete
    assert coverage.assess(j, (T + 70_000, T + 99_000)).complete  # after the restart
    assert coverage.assess(j, (T + 210_000, T + 250_000)).complete  # up to the heartbeat
    inside = coverage.assess(j, (T + 55_000, T + 55_000))
    assert not inside.complete and [g.cause for g in inside.gaps] == ["not_listening"]
    assert inside.unrecorded == ()
    # the ends of a gap are in it
    assert not coverage.assess(j, (T + 60_000, T + 61_000)).complete
    assert not coverage.assess(j, (T + 40_000, T + 50_000)).complete
    stopped = coverage.assess(j, (T + 90_000, T + 110_000))
    assert stopped.gaps == () and stopped.unrecorded == ((T + 100_001, T + 110_000),)
    before = coverage.assess(j, (T - 1, T - 1))
    assert before.unrecorded == ((T - 1, T - 1),) and not before.complete
    beyond = coverage.assess(j, (T + 240_000, T + 260_000))  # past the last heartbeat
    assert beyond.unrecorded == ((T + 250_001, T + 260_000),)
    # without a heartbeat, nothing proves the last run went on after its start
    assert not coverage.assess(found(rec("started", T)), (T + 1, T + 2)).complete
    assert coverage.assess(found(rec("started", T)), (T, T)).complete


def test_conditions_are_reported_but_keep_a_window_complete() -> None:
    j = found(rec("started", T, conditions=["no_counters"]), alive=T + 10_000)
    c = coverage.assess(j, (T + 1000, T + 2000))
    assert c.complete and [x.cause for x in c.conditions] == ["no_counters"]
    r = who_coverage.Report("/var/lib/nfflowd", (T + 1000, T + 2000), c)
    text = who_coverage.lines(r)
    assert text[0].startswith("coverage: complete for 2026-12-06T10:00:01.000Z .. ")
    assert "condition no_counters" in text[1] and "nf_conntrack_acct off" in text[1]


def test_who_says_complete_gaps_or_unknown(tmp_path: Path) -> None:
    state = tmp_path / "state"
    missing = who_coverage.read(str(state), (T, T))
    assert missing.found is None and missing.complete is None
    assert who_coverage.lines(missing)[0].startswith(
        f"coverage: unknown: no coverage journal in {state} (no such directory"
    )
    assert who_coverage.document(missing)["recorded"] is False
    state.mkdir()
    assert who_coverage.read(str(state), (T, T)).error == "no journal file in it"

    j = Journal(str(state), "ingest", LOG)
    j.started(T, "netlink")
    j.gap(Gap(T + 5000, T + 7000, "enobufs", "ingest", "ENOBUFS #1: events lost"))
    j.close()
    alive = persist.Slots(str(state / coverage.ALIVE), 1)
    alive[0] = (T + 60_000) * 1_000_000
    alive.close()
    (state / "coverage.ingest.jsonl").open("a").write("half a line\n")

    ok = who_coverage.read(str(state), (T + 1000, T + 2000))
    assert ok.complete is True and ok.malformed == 1
    text = who_coverage.lines(ok)
    assert text[-1].startswith(
        "coverage: complete for 2026-12-06T10:00:01.000Z .. 2026-12-06T10:00:02.000Z"
    )
    bad = who_coverage.read(str(state), (T + 6000, T + 6000))
    assert bad.complete is False
    text = who_coverage.lines(bad)
    assert (
        "coverage: INCOMPLETE for 2026-12-06T10:00:06.000Z .. 2026-12-06T10:00:06.000Z: 1 gap"
        in (text[1])
    )
    assert text[2] == (
        "  gap 2026-12-06T10:00:05.000Z .. 2026-12-06T10:00:07.000Z (2 s) cause enobufs "
        "(ingest): ENOBUFS #1: events lost"
    )
    doc = who_coverage.document(bad)
    assert doc["complete"] is False and doc["gaps"][0]["cause"] == "enobufs"
    late = who_coverage.lines(who_coverage.read(str(state), (T + 59_000, T + 61_000)))
    assert "not recorded throughout" in late[1]
    assert late[2].startswith("  not recorded 2026-12-06T10:01:00.001Z .. 2026-12-06T10:01:01.000Z")
    anytime = who_coverage.lines(who_coverage.read(str(state), None))
    assert "no window to prove" in anytime[1] and "1 gap" in anytime[1]


def test_the_state_directory_is_checked_like_the_run_directory(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    assert "is a symbolic link" in coverage.problems(str(link))[0]
    with pytest.raises(coverage.StatedirError, match="symbolic link"):
        coverage.ensure(str(link))
    full = tmp_path / "etc"
    full.mkdir()
    (full / "passwd").write_text("x")
    assert "not an nfflowd state directory" in coverage.problems(str(full))[0]
    made = coverage.ensure(str(tmp_path / "a" / "state"))
    assert os.stat(made).st_mode & 0o7777 == 0o700
    assert os.listdir(made) == [coverage.MARKER]
    assert coverage.problems(made) == []
    assert coverage.ensure(made) == made  # again: it is ours
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    found_ = coverage.problems(str(open_dir / "state"))
    assert found_ and "above the state directory" in found_[0]


def test_status_shows_the_last_gaps(tmp_path: Path) -> None:
    from nfflowd.ops import status

    state = tmp_path / "state"
    assert status.journal_lines(status.read_journal(str(state)), T) == [
        f"coverage journal {state}: no journal yet (only a live source journals)"
    ]
    j = journal(tmp_path)
    j.started(T, "netlink")
    for i in range(7):
        j.gap(Gap(T + i * 1000, T + i * 1000 + 250, "enobufs", "ingest", f"ENOBUFS #{i + 1}"))
    j.close()
    summary = status.read_journal(str(state))
    got = status.journal_lines(summary, T + 10_000)
    assert got[0] == (
        f"coverage journal {state}: 7 gaps; ingest recording since 2026-12-06T10:00:00.000Z; "
        "the last 5:"
    )
    assert got[1] == (
        "  2026-12-06T10:00:02.000Z .. 2026-12-06T10:00:02.250Z (0.25 s) enobufs (ingest): "
        "ENOBUFS #3"
    )
    assert len(got) == 6 and got[-1].endswith("ENOBUFS #7")
    doc = status.document("/run/x", False, [], {}, summary)
    assert doc["coverage"]["gaps"] == 7 and len(doc["coverage"]["last_gaps"]) == 5


class _OverrunListener:
    """A ctnetlink listener whose kernel dropped events once (ENOBUFS)."""

    def __init__(self) -> None:
        self.enobufs = 0
        self.truncated_reads = 0
        self.rcvbuf = 1 << 20
        self._r, self._w = os.pipe()
        self.overrun = False

    def fileno(self) -> int:
        return self._r

    def recv_frames(self, out: bytearray, max_reads: int) -> int:
        return 0

    def take_resync(self) -> bool:
        if not self.overrun:
            return False
        self.overrun = False
        self.enobufs += 1
        return True

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


@pytest.mark.parametrize("destroy_only", [True, False])
def test_an_overrun_is_an_enobufs_gap_from_the_read_before(destroy_only: bool) -> None:
    from nfflowd.conntrack import sources

    src = object.__new__(sources.NetlinkSource)  # the kernel part replaced by the stub
    listener = _OverrunListener()
    src.listener = listener  # type: ignore[assignment]
    src.destroy_only, src.gaps, src.dump_interval_s = destroy_only, [], 0.0
    src.counters = {"resyncs": 0, "dumped": 0, "datagrams": 0}
    src._pending, src._pending_n = bytearray(), 0
    src._dump = lambda out: 0  # type: ignore[method-assign]
    src._last_read_ms = coverage.now_ms()
    try:
        src.read(bytearray(), 0.0, 10)
        assert src.gaps == []
        before = src._last_read_ms
        listener.overrun = True
        src.read(bytearray(), 0.0, 10)
        (gap,) = src.gaps
        assert gap.cause == "enobufs" and gap.stage == "ingest"
        assert gap.from_ms == before <= gap.to_ms <= coverage.now_ms()
        assert gap.detail.startswith("ENOBUFS #1: the kernel dropped conntrack ")
        assert ("no resync" in gap.detail) is destroy_only
        assert src.counters["enobufs"] == 1
    finally:
        listener.close()


def test_conditions_follow_the_sysctls() -> None:
    from nfflowd.conntrack.sources import conditions

    on = {"net.netfilter.nf_conntrack_acct": "1", "net.netfilter.nf_conntrack_timestamp": "1"}
    assert conditions(on) == []
    off = {**on, "net.netfilter.nf_conntrack_acct": "0"}
    assert conditions(off) == ["no_counters"]
    both = {k: "0" for k in on}
    assert conditions(both) == ["no_counters", "no_timestamps"]
    assert conditions({}) == []  # unreadable: not known to be off
