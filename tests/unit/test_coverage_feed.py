"""The coverage journal followed by export (nfflowd.outputs.coverage_feed): every new gap
once, across rotations, a restart (offsets in the state directory) and a reused inode."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from nfflowd.formats.coverage_options import GapRow
from nfflowd.outputs.coverage_feed import CoverageFeed, offsets_name
from nfflowd.pipeline import coverage

log = logging.getLogger("test")


class Sent:
    def __init__(self) -> None:
        self.gaps: list[GapRow] = []

    def send_gaps(self, gaps: Sequence[GapRow]) -> None:
        self.gaps += gaps
        self.held = self.keep

    keep = False  # the gaps sent stay held (a pace, a collector refusing)
    held = False

    def gaps_held(self) -> bool:
        return self.held


def gap(i: int, cause: str = "not_listening", stage: str = "ingest") -> coverage.Gap:
    return coverage.Gap(1000 * i, 1000 * i + 500, cause, stage, f"gap {i}")


def row(i: int, cause: str = "not_listening", stage: str = "ingest") -> GapRow:
    return GapRow(1000 * i, 1000 * i + 500, cause, stage)


def feed(statedir: Path, sent: Sent) -> CoverageFeed:
    return CoverageFeed(str(statedir), "export", sent)


def test_each_gap_once_across_stages_rotation_and_restart(tmp_path: Path) -> None:
    ingest = coverage.Journal(str(tmp_path), "ingest", log, max_bytes=600)
    mirror = coverage.Journal(str(tmp_path), "mirror", log)
    ingest.started(1, "netlink", ["no_counters"])  # not a gap: not sent
    ingest.gap(gap(1))
    mirror.gap(gap(2, "undelivered", "mirror"))
    sent = Sent()
    f = feed(tmp_path, sent)
    f.tick(force=True)
    assert sent.gaps == [row(1), row(2, "undelivered", "mirror")]
    f.tick(force=True)
    assert len(sent.gaps) == 2  # nothing new: nothing sent again
    for i in range(3, 9):  # past 600 bytes: ingest's file is rotated (.1, .2)
        ingest.gap(gap(i, "enobufs"))
    assert (tmp_path / "coverage.ingest.jsonl.1").exists()
    f.tick(force=True)
    assert sent.gaps[2:] == [row(i, "enobufs") for i in range(3, 9)]
    assert f.counters()["coverage_gaps_sent"] == 8
    f.close()  # a SIGKILL leaves the same file: the mapping is the file's pages

    ingest.gap(gap(9))  # journaled while export is down
    again = Sent()
    g = feed(tmp_path, again)
    assert not g.slots.fresh
    g.tick(force=True)
    assert again.gaps == [row(9)]  # not the whole journal, and not skipped
    g.close()


def test_offsets_are_stored_once_the_gaps_have_left_the_sender(tmp_path: Path) -> None:
    """Export holds gap datagrams behind its flow datagrams (a pace, a collector that
    refuses): a SIGKILL while they are held sends them again; no new gap is read while
    they are held; once they have left, the offsets move on."""
    j = coverage.Journal(str(tmp_path), "ingest", log)
    j.gap(gap(1))
    sent = Sent()
    sent.keep = True  # queued, not yet out
    f = feed(tmp_path, sent)
    f.tick(force=True)
    assert sent.gaps == [row(1)]
    j.gap(gap(2))
    f.tick(force=True)
    assert sent.gaps == [row(1)]  # held: nothing more is read
    f.close()  # killed meanwhile
    again = Sent()
    g = feed(tmp_path, again)
    g.tick(force=True)
    assert again.gaps == [row(1), row(2)]  # gap 1 had not left: it goes again
    g.tick(force=True)
    assert again.gaps == [row(1), row(2)]
    g.close()
    third = Sent()
    h = feed(tmp_path, third)
    h.tick(force=True)
    assert third.gaps == []  # both had left: stored
    h.close()


def test_a_fresh_offsets_file_sends_the_journal_once(tmp_path: Path) -> None:
    j = coverage.Journal(str(tmp_path), "export", log)
    j.gap(gap(1, "undelivered", "export"))
    sent = Sent()
    f = feed(tmp_path, sent)
    assert f.slots.fresh
    f.tick(force=True)
    f.tick()  # within POLL_S: not even looked at
    assert sent.gaps == [row(1, "undelivered", "export")]
    assert (tmp_path / offsets_name("export")).exists()
    assert coverage.journal_files(str(tmp_path)) == [str(tmp_path / "coverage.export.jsonl")]
    f.close()


def test_half_lines_wait_and_a_new_file_on_an_old_inode_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "coverage.ingest.jsonl"
    line = json.dumps(gap(1).record(5)).encode() + b"\n"
    path.write_bytes(line + line[:20])
    sent = Sent()
    f = feed(tmp_path, sent)
    f.tick(force=True)
    assert sent.gaps == [row(1)]
    with path.open("ab") as fh:
        fh.write(line[20:])
    f.tick(force=True)
    assert sent.gaps == [row(1), row(1)]  # the second record, once whole
    # the same inode, other contents (a removed file's inode reused): read from 0
    other = json.dumps(gap(7).record(6)).encode() + b"\n"
    with path.open("r+b") as fh:
        fh.write(other + b"\n" * (2 * len(line) - len(other)))
    os.truncate(path, 2 * len(line) + 1)
    f.tick(force=True)
    assert sent.gaps[2:] == [row(7)]
    assert f.counters()["coverage_feed_malformed"] == 0  # blank lines are skipped
    f.close()
