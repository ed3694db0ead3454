"""The coverage journal -> v9/IPFIX collectors, as options records (the export stage's).

Every gap any stage journals (:mod:`nfflowd.pipeline.coverage`: ``coverage.<stage>.jsonl``
in ``<daemon> statedir``) goes to every v9/IPFIX collector with ``coverage`` on (the
default for 9 and 10), as an options data record of template 260
(:mod:`nfflowd.formats.coverage_options`), in the collector's own stream.  Only
while the stages journal (a live source, :func:`nfflowd.pipeline.coverage.journaling`);
never to v5 collectors (v5 has no options records).

**Following the journal.**  :class:`Follower` lists the state directory and stats
every journal file once a second (:data:`POLL_S`; the export loop calls
:meth:`CoverageFeed.tick` with its once-a-second notice, never per record) and reads
only a file that grew.  A file is known by its inode, so a rotation (``.jsonl`` renamed
``.jsonl.1``, :class:`~nfflowd.pipeline.coverage.Journal`) changes nothing: the renamed
file's unread tail is read under its new name and the new file from its start.  The
inode is checked against the CRC-32 of the file's first line, so a removed file whose
inode a new one reuses is read from the start.  Only whole lines are taken (a record
is one ``write``; a line being written is read at the next poll); only ``gap`` records
are sent (a run's conditions, ``no_counters``/``no_timestamps`` in its ``started``
record, are not sent yet: their interval ends when the run does).

**Restart-safe, at least once.**  The read offset of each file (inode, head CRC, offset)
is kept in ``<statedir>/<stage>.coverage-sent`` (:class:`nfflowd.pipeline.persist.Slots`,
:data:`MAX_FILES` entries), stored *after* the datagrams have left (export paces
them and holds them while a collector refuses, behind its flow datagrams, so that
sequence numbers stay in order: :meth:`~nfflowd.outputs.exporter.Exporter.gaps_held`):
a SIGKILL before that sends those gaps again, nothing is skipped (a collector may see a gap twice;
it is the same interval and cause, an idempotent fact).  A restarted export goes on
where its predecessor stopped, and sends what was journaled while it was down.  It is
in the state directory, not the run directory: ``/run`` is emptied by a reboot, and
with it the offsets, so the journal's whole history (up to its rotation bound) would
go out again after every reboot.  The file is not fsync'ed (a power cut may send
some again).  A new file (first start, or another size: a changed
:data:`MAX_FILES`) sends every gap the journal still holds, once.  Offsets are per
export stage, not per collector: a collector added later gets the gaps from then on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
import zlib
from collections.abc import Sequence
from typing import Final, Protocol

from nfflowd.formats.coverage_options import GapRow
from nfflowd.pipeline import coverage, persist

log = logging.getLogger("nfflowd.export")

#: The journal is looked at no more often than this (seconds).
POLL_S: Final = 1.0
#: Journal files whose offsets are kept (a stage keeps KEEP + 1 = 4; 32 stages).
MAX_FILES: Final = 128
#: Per file: inode, CRC-32 of its first line, bytes read.
_INO, _HEAD, _OFFSET = range(3)
_ENTRY: Final = 3
#: A known file not found this many polls in a row is forgotten.
_MISSES: Final = 3
#: The first line of a journal file is looked for in this many bytes (records are short).
_HEAD_BYTES: Final = 4096


def offsets_name(stage: str) -> str:
    """The offsets file of export stage *stage* in the state directory (not a journal
    name: :func:`nfflowd.pipeline.coverage.journal_files` does not list it)."""
    return f"{stage}.coverage-sent"


class Follower:
    """New gap records of the journal files of *statedir*, each once (see the module
    docstring); *slots* keep the offsets across a restart (:meth:`commit`)."""

    def __init__(self, statedir: str, slots: persist.Slots) -> None:
        self.statedir = statedir
        self.slots = slots
        self.files = slots.count // _ENTRY
        # inode -> (head CRC, offset): what was read (and, after commit, stored)
        self.known: dict[int, tuple[int, int]] = {}
        for i in range(self.files):
            ino = slots[i * _ENTRY + _INO]
            if ino:
                self.known[ino] = (slots[i * _ENTRY + _HEAD], slots[i * _ENTRY + _OFFSET])
        self.malformed = 0  # lines that are no record of this version
        self.errors = 0  # directory or files that could not be read
        self._said: set[str] = set()
        self._misses: dict[int, int] = {}  # inode -> polls it was not found in

    def _error(self, what: str, exc: OSError) -> None:
        self.errors += 1
        if what not in self._said:
            self._said.add(what)
            log.error("coverage feed: %s: %s", what, exc.strerror or exc)

    def poll(self) -> list[GapRow]:
        """The gap records written since the last poll (by file, each stage's oldest
        rotation first, then in the order written)."""
        try:
            paths = coverage.journal_files(self.statedir)
        except OSError as exc:
            self._error(f"cannot list {self.statedir}", exc)
            return []
        seen: dict[int, tuple[int, int]] = {}
        gaps: list[GapRow] = []
        for path in paths:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # rotated away or removed meanwhile: the next poll finds it
            except OSError as exc:
                self._error(f"cannot stat {path}", exc)
                continue
            known = self.known.get(st.st_ino)
            if st.st_ino in seen:
                continue  # listed under two names (a rotation meanwhile): read once
            if not stat.S_ISREG(st.st_mode) or (known is not None and known[1] == st.st_size):
                if known is not None:
                    seen[st.st_ino] = known  # unchanged: a stat, nothing read
                continue
            try:
                got = self._read(path, gaps, seen)
                if got is not None:
                    seen[got[0]] = got[1:]
            except FileNotFoundError:
                pass  # rotated away meanwhile: the next poll finds it
            except OSError as exc:
                self._error(f"cannot read {path}", exc)
        # a file not seen: removed, or renamed between the listing and its stat (a
        # rotation); kept for a few polls so a renamed one is not read again from 0
        for ino, entry in self.known.items():
            if ino in seen:
                self._misses.pop(ino, None)
                continue
            misses = self._misses[ino] = self._misses.get(ino, 0) + 1
            if misses <= _MISSES:
                seen[ino] = entry
            else:
                del self._misses[ino]
        self.known = seen
        return gaps

    def _read(
        self, path: str, gaps: list[GapRow], seen: dict[int, tuple[int, int]]
    ) -> tuple[int, int, int] | None:
        """Append the new gaps of *path* to *gaps*; its inode, head CRC and new offset
        (None: that file was read in this poll already)."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)  # the file opened (a rotation may have renamed the one stat'ed)
            ino, size = st.st_ino, st.st_size
            if ino in seen:
                return None
            known = self.known.get(ino)
            first = os.pread(fd, min(size, _HEAD_BYTES), 0)
            end = first.find(b"\n")
            if end < 0:
                return ino, 0, 0  # no whole line yet
            head = zlib.crc32(first[: end + 1])
            offset = known[1] if known is not None and known[0] == head else 0
            if offset > size:
                offset = 0  # not the file that was read (replaced with the same inode)
            data = os.pread(fd, size - offset, offset)
        finally:
            os.close(fd)
        whole = data.rfind(b"\n") + 1
        for line in data[:whole].splitlines():
            if not line.strip():
                continue
            rec = coverage.parse(line)
            if rec is None:
                self.malformed += 1
            elif rec["kind"] == coverage.GAP:
                stage = rec["stage"].encode("ascii", "replace").decode()
                gaps.append(GapRow(rec["from_ms"], rec["to_ms"], rec["cause"], stage))
        return ino, head, offset + whole

    def commit(self) -> None:
        """Store the offsets read so far (call after the gaps polled were sent).  An entry
        that changes file is invalidated first: a kill in between re-reads that file."""
        entries = sorted(self.known.items())[: self.files]
        if len(self.known) > self.files and "full" not in self._said:
            self._said.add("full")
            log.error("coverage feed: more than %d journal files: some sent again", self.files)
        slots = self.slots
        for i in range(self.files):
            at = i * _ENTRY
            ino, (head, offset) = entries[i] if i < len(entries) else (0, (0, 0))
            if slots[at + _INO] != ino:
                slots[at + _INO] = 0
                slots[at + _HEAD], slots[at + _OFFSET] = head, offset
                slots[at + _INO] = ino
            elif ino:
                slots[at + _HEAD], slots[at + _OFFSET] = head, offset


class GapSender(Protocol):
    def send_gaps(self, gaps: Sequence[GapRow]) -> None: ...

    def gaps_held(self) -> bool:
        """Whether datagrams of the gaps given are still waiting to leave (a pace, a
        collector that refuses)."""
        ...


class CoverageFeed:
    """The journal's new gaps to *sender* (:meth:`nfflowd.outputs.exporter.Exporter.send_gaps`)
    at most every :data:`POLL_S`; :meth:`tick` is called by the export loop."""

    def __init__(self, statedir: str, stage: str, sender: GapSender) -> None:
        path = coverage.own_file(statedir, offsets_name(stage))
        self.slots = persist.Slots(path, MAX_FILES * _ENTRY)
        if self.slots.fresh:
            log.info("coverage feed: no offsets in %s: every gap in the journal goes out", path)
        self.follower = Follower(statedir, self.slots)
        self.sender = sender
        self.sent = 0
        self._next = 0.0

    def tick(self, force: bool = False, now: float | None = None) -> None:
        """Poll the journal (if :data:`POLL_S` has passed, or *force*) and send; the
        offsets are stored once the datagrams sent have left (the sender paces and holds
        them like flow datagrams: until then a SIGKILL sends them again)."""
        now = time.monotonic() if now is None else now
        if now < self._next and not force:
            return
        self._next = now + POLL_S
        if self.sender.gaps_held():
            return
        self.follower.commit()  # what the last poll read has left
        gaps = self.follower.poll()
        if gaps:
            try:
                self.sender.send_gaps(gaps)
            except ValueError as exc:  # not encodable: sending it again cannot help
                log.error("coverage feed: %d gaps not sent: %s", len(gaps), exc)
                self.follower.errors += 1
            else:
                self.sent += len(gaps)
        if not self.sender.gaps_held():
            self.follower.commit()

    def counters(self) -> dict[str, int]:
        return {
            "coverage_gaps_sent": self.sent,
            "coverage_feed_malformed": self.follower.malformed,
            "coverage_feed_errors": self.follower.errors,
        }

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.slots.close()
