"""What the active timeout has reported of each long connection, kept across a correlate crash.

Without it, a restarted correlate would report a long connection's counters from
zero again: the kernel's counters are cumulative, and what was already sent in
interim records (end reason active timeout) would be counted twice.

Each connection with an interim report has an entry in ``<rundir>/correlate[-i].reports``
(a shared file mapping, :mod:`nfflowd.pipeline.persist`'s reasoning: a store is a memory
write that survives SIGKILL), keyed by conntrack id, holding the reported state
*after* and *before* the event batch that last changed it, and that batch's
origin (:meth:`nfflowd.messages.EventBatch.origin`):

* after a restart, every entry's *after* state is put back into the table;
* an event batch is only acknowledged once its records have left nfflowd, so an
  unacknowledged batch is resent to the successor, which must recompute the same
  records: before feeding a batch, the entries it had changed go back to their
  *before* state (:meth:`ReportJournal.revert`);
* a DESTROY leaves a closed entry (its *before* state) in place, in case its batch
  comes again; closed entries are reused, oldest first, when the file is full.

Limit: two reports of one connection within the resend window (an active timeout
of a few seconds) keep only the newer *before*; the older report, if it had not
left, is then lost from the sum.
"""

from __future__ import annotations

import array
import mmap
import os
from collections import deque
from typing import Final

MAGIC: Final = b"NFFLRPT1"
#: Entries (connections with interim reports) the file holds: 8 MiB, allocated as used.
CAPACITY: Final = 65536
#: u64 fields of an entry: key (ct id + 1; 0 free), status, origin (2), after (6), before (6).
_KEY, _STATUS, _ORIGIN_A, _ORIGIN_B, _AFTER, _BEFORE = 0, 1, 2, 3, 4, 10
_FIELDS: Final = 16
_OPEN, _CLOSED = 1, 2
#: A report state: [start_ns, last_report_ns, orig_packets, orig_bytes, reply_packets,
#: reply_bytes]; "before the first report" is stored with last_report_ns 0.
State = list[int]

Origin = tuple[int, int]


class ReportJournal:
    """The persisted report states of one correlator (see the module docstring)."""

    def __init__(self, path: str, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        size = len(MAGIC) + capacity * _FIELDS * 8
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            st = os.fstat(fd)
            if st.st_size != size or os.pread(fd, len(MAGIC), 0) != MAGIC:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, size)  # sparse: pages are allocated as entries are used
                os.pwrite(fd, MAGIC, 0)
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._u64 = memoryview(self._map)[len(MAGIC) :].cast("Q")
        self.origin: Origin = (0, 0)  # of the event batch being fed (set by the worker)
        self.slot: dict[int, int] = {}  # ct id -> entry
        self.free: list[int] = []
        self.closed: deque[int] = deque()  # entries of closed connections, oldest first
        self.full = 0  # reports not persisted: no entry left
        self._revert: dict[Origin, list[tuple[int, int | State]]] = {}

    def load(self) -> dict[int, int | State]:
        """The table entries to restore (ct id -> state); prepares :meth:`revert`."""
        fields = array.array("Q", self._map[len(MAGIC) :])
        table: dict[int, int | State] = {}
        for i in reversed(range(self.capacity)):
            at = i * _FIELDS
            key, status = fields[at + _KEY], fields[at + _STATUS]
            if not key or status not in (_OPEN, _CLOSED):
                self.free.append(i)
                continue
            ct_id = key - 1
            self.slot[ct_id] = i
            origin = (fields[at + _ORIGIN_A], fields[at + _ORIGIN_B])
            before = _state(fields[at + _BEFORE : at + _BEFORE + 6])
            self._revert.setdefault(origin, []).append((ct_id, before))
            if status == _OPEN:
                table[ct_id] = list(fields[at + _AFTER : at + _AFTER + 6])
            else:
                self.closed.append(i)
        return table

    def revert(self, origin: Origin) -> list[tuple[int, int | State]]:
        """The states to put back before the event batch *origin* is fed again."""
        return self._revert.pop(origin, [])

    # -- the Correlator's journal protocol ---------------------------------------------

    def reported(self, ct_id: int, before: int | State, after: State) -> None:
        i = self.slot.get(ct_id)
        if i is None:
            i = self._allocate()
            if i is None:
                self.full += 1
                return
            self.slot[ct_id] = i
        self._write(i, ct_id, _OPEN, before, after)

    def closed_conn(self, ct_id: int, before: State) -> None:
        i = self.slot.pop(ct_id, None)
        if i is not None:
            self._write(i, ct_id, _CLOSED, before, before)
            self.closed.append(i)

    def forgotten(self, ct_id: int) -> None:
        i = self.slot.pop(ct_id, None)
        if i is not None:
            self._u64[i * _FIELDS + _KEY] = 0
            self.free.append(i)

    def _allocate(self) -> int | None:
        if self.free:
            return self.free.pop()
        while self.closed:
            i = self.closed.popleft()
            ct = self._u64[i * _FIELDS + _KEY] - 1
            if self.slot.get(ct) != i:  # (not reopened under the same id)
                return i
        return None

    def _write(self, i: int, ct_id: int, status: int, before: int | State, after: State) -> None:
        u, at = self._u64, i * _FIELDS
        u[at + _STATUS] = 0  # invalid while the fields change: a kill now loses this entry
        u[at + _KEY] = ct_id + 1
        u[at + _ORIGIN_A], u[at + _ORIGIN_B] = self.origin
        u[at + _AFTER : at + _AFTER + 6] = array.array("Q", after)
        b = before if isinstance(before, list) else [before, 0, 0, 0, 0, 0]
        u[at + _BEFORE : at + _BEFORE + 6] = array.array("Q", b)
        u[at + _STATUS] = status

    def close(self) -> None:
        self._u64.release()
        self._map.close()


def _state(fields: array.array[int]) -> int | State:
    """A stored *before* state: the start time alone when nothing was reported yet."""
    values = list(fields)
    return values[0] if values[1] == 0 else values
