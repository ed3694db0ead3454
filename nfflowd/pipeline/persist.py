"""Small numbers a stage must find again after being killed: a shared file mapping.

A terminal stage (export, mirror) records which batches it has delivered, and
export records the sequence numbers of its NetFlow/IPFIX streams, after every
batch.  A store into a ``MAP_SHARED`` mapping is a plain memory write (no system
call), and the page cache keeps it when the process dies, even by SIGKILL —
which is the failure this protects against.  It is not a guard against a
machine crash (nothing is fsync'ed): after a reboot the kernel's conntrack table
is gone too, and every stage starts afresh.

File layout: an 8-byte magic, then *count* unsigned 64-bit little-endian slots.
A file with another magic or size (an older nfflowd, a changed configuration)
is not trusted: it is reset to zeros, and the caller learns so from
:attr:`Slots.fresh`.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from typing import Final

MAGIC: Final = b"NFFLSLT1"
#: One slot: an unsigned 64-bit little-endian integer.
SLOT: Final = struct.Struct("<Q")


class Slots:
    """A fixed array of u64 values backed by a file that outlives the process."""

    def __init__(self, path: str, count: int) -> None:
        self.path = path
        self.count = count
        size = len(MAGIC) + SLOT.size * count
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            st = os.fstat(fd)
            self.fresh = st.st_size != size or os.pread(fd, len(MAGIC), 0) != MAGIC
            if self.fresh:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, size)
                os.pwrite(fd, MAGIC, 0)
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)

    def _offset(self, i: int) -> int:
        if not 0 <= i < self.count:
            raise IndexError(f"{self.path}: slot {i} of {self.count}")
        return len(MAGIC) + SLOT.size * i

    def __getitem__(self, i: int) -> int:
        return int(SLOT.unpack_from(self._map, self._offset(i))[0])

    def __setitem__(self, i: int, value: int) -> None:
        SLOT.pack_into(self._map, self._offset(i), value)

    def close(self) -> None:
        self._map.close()


class Ring:
    """The last *size* pairs of u64 remembered across a SIGKILL (oldest overwritten).

    Slot 0 counts the pairs ever added; pair k lives in slots 1 + 2 * (k % size).
    A pair is written before the count moves, so a kill between the two stores
    loses at most the pair being added (it is then not remembered: the caller
    treats it as never added, which is the safe side for de-duplication).
    """

    def __init__(self, path: str, size: int) -> None:
        self.size = size
        self._slots = Slots(path, 1 + 2 * size)

    @property
    def fresh(self) -> bool:
        return self._slots.fresh

    def add(self, a: int, b: int) -> None:
        n = self._slots[0]
        at = 1 + 2 * (n % self.size)
        self._slots[at], self._slots[at + 1] = a, b
        self._slots[0] = n + 1

    def pairs(self) -> list[tuple[int, int]]:
        """Every remembered pair, oldest first."""
        n = self._slots[0]
        count = min(n, self.size)
        out = []
        for k in range(n - count, n):
            at = 1 + 2 * (k % self.size)
            out.append((self._slots[at], self._slots[at + 1]))
        return out

    def close(self) -> None:
        self._slots.close()


def identity(text: str) -> int:
    """A stable 32-bit tag for *text* (e.g. a collector's address and version), so a
    slot is only reused by the stream it was written for."""
    return zlib.crc32(text.encode()) or 1
