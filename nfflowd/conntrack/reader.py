"""What ingest does between its sockets: a source read into event batches, cut where they must be.

Events accumulate in a :class:`~nfflowd.pipeline.batcher.Batcher` as the source
gives them (bytes: it decodes nothing).  A batch leaves (:meth:`Reader.due`):

* live sources (the kernel, the conntrack program): when full or when its oldest
  event has waited ``<source> linger_ms``, and whatever is held at a stop;
* a saved log: only where a successor re-reading from the checkpoint would cut
  it: full, or at a file's end (a batch never spans two files).  Never by time,
  never at a stop (a partial batch is dropped: it was not acknowledged, so the
  checkpoint is before it and the successor reads it again).  So a re-read batch
  has the origin it had the first time (its file and starting offset,
  :mod:`nfflowd.conntrack.checkpoint`), and the correlators and terminal stages
  recognise it (issue 4's duplicates).

A batch goes to one correlator when every event is self-contained (one correlator,
or a DESTROY-only source: the least loaded one), else each event to the
correlator of its connection (:func:`~nfflowd.conntrack.payloads.split`).  For a
saved log the reader also remembers, per batch, the position after it and the seq
each correlator gave its part: :meth:`Reader.checkpoint` says how far every
correlator has acknowledged.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

from nfflowd.conntrack import checkpoint as ckpt
from nfflowd.conntrack.payloads import split
from nfflowd.conntrack.sources import FileSource, Source
from nfflowd.pipeline.batcher import Batcher

#: How long a read waits for the first event of a batch (a live source wakes at once).
IDLE_READ_S = 1.0


class Part(NamedTuple):
    """One correlator's part of a batch, with what its EventBatch says of it."""

    shard: int
    data: bytes
    events: int
    where: str
    first_line: int  # 0: the lines are not in a row (split among correlators)
    origin_stream: int
    origin_pos: int


class Reader:
    """Reads *source* into batches for *correlators* (see the module docstring)."""

    def __init__(
        self, source: Source, correlators: int, linger_s: float, paths: Sequence[str] = ()
    ) -> None:
        self.source = source
        self.n = correlators
        self.batch = Batcher(linger_s=linger_s)
        self.log_file = source if isinstance(source, FileSource) else None
        self.streams = [
            ckpt.origin_stream(tuple(paths), i) if self.log_file else 0 for i in range(self.n)
        ]
        self.sent = 0  # events that left in batches
        self._start, self._line = (0, 0), 0  # where the batch being built starts (saved log)
        self._reads: deque[tuple[tuple[int, int], list[int]]] = deque()

    @property
    def holding(self) -> bool:
        """Events read and not sent yet."""
        return bool(self.batch.count)

    def read(self) -> int:
        """Append what the source has (waiting at most until the batch is due); the count."""
        batch, log_file = self.batch, self.log_file
        before = log_file.position() if log_file and not batch.count else None
        wait = batch.wait_s() if batch.count else IDLE_READ_S
        got = self.source.read(batch.data, wait, batch.room())
        if before is not None and got and log_file:
            self._start, self._line = before, log_file.read_line  # a new batch starts here
        batch.added(got)
        return got

    def due(self, stopping: bool = False) -> bool:
        """Whether the batch held must leave now (see the module docstring)."""
        batch = self.batch
        if not batch.count:
            return False
        if self.log_file:
            return batch.full() or (self.source.exhausted or not self.log_file.open)
        return batch.due() or stopping

    def drop(self) -> None:
        """Forget a saved log's partial batch (at a stop: the successor reads it again)."""
        self.batch.take()

    def take(self, loads: Sequence[int]) -> list[Part]:
        """The batch held, as parts for the correlators (*loads*: each one's batches not yet
        acknowledged, for a self-contained batch to go to the least loaded)."""
        data, count = self.batch.take()
        self.sent += count
        src = self.source
        pos = ckpt.origin_pos(self._start)
        if self.n == 1 or src.stateless:
            i = min(range(self.n), key=loads.__getitem__)
            return [Part(i, data, count, src.where, self._line, self.streams[i], pos)]
        return [
            Part(i, part, k, src.where, 0, self.streams[i], pos)
            for i, (part, k) in enumerate(split(src.payload, data, self.n))
            if k
        ]

    def sent_as(self, seqs: list[int]) -> None:
        """The seq each correlator gave its part of the batch just taken (0: no part)."""
        if self.log_file:
            self._reads.append((self.log_file.position(), seqs))

    def checkpoint(self, acked: Sequence[int]) -> tuple[int, int] | None:
        """The saved log's position after the last batch every correlator acknowledged
        (*acked*: each one's acknowledged seq), when it moved; else None."""
        done = None
        reads = self._reads
        while reads and all(s <= a for s, a in zip(reads[0][1], acked, strict=True)):
            done = reads.popleft()[0]
        return done
