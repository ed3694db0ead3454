"""What survives an ingest restart: where it got to in a saved log, and when it last listened.

Both are shared file mappings (:mod:`nfflowd.pipeline.persist`), updated with plain
memory stores, so a SIGKILL loses nothing that was stored:

* ``ingest.checkpoint``: (identity of the log paths, file index, byte offset) after
  the last batch every correlator acknowledged; a restarted ingest resumes there;
* ``ingest.alive``: when ingest last listened to the kernel; a restarted ingest
  knows how long nobody listened (``blind_ms``, and the ``not_listening`` gap of the
  coverage journal, :mod:`nfflowd.pipeline.coverage`).  For a live source it is in
  ``<daemon> statedir``, so a reboot is counted too; else in the run directory, as
  the checkpoint.

The origin of a saved-log batch (:meth:`nfflowd.messages.EventBatch.origin`) is
derived from the same position, so a batch re-read after a restart has the
origin it had the first time.
"""

from __future__ import annotations

import os

from nfflowd.pipeline import persist

CHECKPOINT = "ingest.checkpoint"
ALIVE = "ingest.alive"


def open_checkpoint(rundir: str) -> persist.Slots:
    """Slots: (identity of the log paths, file index, byte offset)."""
    return persist.Slots(os.path.join(rundir, CHECKPOINT), 3)


def load_checkpoint(slots: persist.Slots, paths: tuple[str, ...]) -> tuple[int, int] | None:
    """Where a previous incarnation got to in these logs (None: start from the beginning)."""
    if slots[0] != persist.identity("\0".join(paths)):
        return None
    return (slots[1], slots[2])


def save_checkpoint(
    slots: persist.Slots, paths: tuple[str, ...], position: tuple[int, int]
) -> None:
    """Three memory stores (see nfflowd.pipeline.persist); the identity last, so a torn update
    can only point at an older position of the same logs or at none."""
    slots[0] = 0
    slots[1], slots[2] = position
    slots[0] = persist.identity("\0".join(paths))


def origin_stream(paths: tuple[str, ...], shard: int) -> int:
    """The stable origin stream of saved-log batches for correlator *shard* (nonzero)."""
    return persist.identity("\0".join(paths)) << 8 | shard


def origin_pos(position: tuple[int, int]) -> int:
    """A saved-log position (file index, byte offset) as one number (files < 16 TiB)."""
    index, offset = position
    return index << 44 | offset


def blind_time(alive: persist.Slots, live: bool, now_ns: int) -> int:
    """Milliseconds no ingest listened to the kernel before this start (0: first start,
    or a saved log, which resumes at its checkpoint instead)."""
    last = alive[0]
    if not live or not last or last > now_ns:
        return 0
    return (now_ns - last) // 1_000_000
