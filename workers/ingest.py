"""Stage 1, ingest: conntrack events from a source -> ``events`` link.

A batch is what one read of the source returns (bounded), sent at once so live
latency stays low.  Every batch is kept until correlate acknowledges it, which
it does only once the batch's records have left nfflowd (end to end); while
``max_unacked`` batches wait, ingest stops reading (backpressure: the kernel
socket buffer, reliable mode and resync dumps take over).  For a saved log the
position after the last acknowledged batch is checkpointed in the run
directory, so a restarted ingest resumes there instead of starting over.  When
a saved log is exhausted and everything is acknowledged, ingest publishes an
``eof`` notice (``nfflowd replay`` waits for it).
"""

from __future__ import annotations

import logging
import os
import time

from nfflowd import persist
from nfflowd.config import Settings
from nfflowd.conntrack.sources import FileSource, NetlinkSource, ProgramSource, Source
from nfflowd.links import Outlet
from nfflowd.messages import EventBatch
from nfflowd.stage import Stage

log = logging.getLogger("nfflowd.ingest")

#: The notice token of a finished saved log; ``replay`` waits for it.
EOF_TOKEN = "eof"
CHECKPOINT = "ingest.checkpoint"
NOTICE_INTERVAL_S = 1.0


def dump_interval(active_timeout_s: int) -> float:
    """How often to dump the kernel table for the active timeout (0: never).

    A long connection is reported at the first dump after its active timeout has
    passed, so reports come at most this late; a dump of N connections costs
    about N / 146,000 s of CPU (measured decode rate).
    """
    if active_timeout_s <= 0:
        return 0.0
    return float(min(60, max(1, active_timeout_s // 4)))


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
    """Three memory stores (see nfflowd.persist); the identity last, so a torn update
    can only point at an older position of the same logs or at none."""
    slots[0] = 0
    slots[1], slots[2] = position
    slots[0] = persist.identity("\0".join(paths))


def make_source(settings: Settings, checkpoint: persist.Slots) -> Source:
    src = settings.source
    if src.type == "file":
        resume = load_checkpoint(checkpoint, src.path)
        if resume is not None:
            log.info("resuming the saved log(s) at file %d offset %d", *resume)
        return FileSource(src.path, resume=resume)
    if src.type == "conntrack":
        ct = settings.conntrack
        return ProgramSource(ct.progname, ct.init_format, ct.format)
    if src.type == "netlink":
        return NetlinkSource(src, dump_interval_s=dump_interval(settings.export.active_timeout))
    raise ValueError(f"unknown source type {src.type!r}")


def main(argv: list[str] | None = None) -> int:
    stage = Stage("ingest", argv)
    settings = stage.settings
    checkpoint = open_checkpoint(stage.rundir)
    source = make_source(settings, checkpoint)
    out = Outlet(stage, "events", settings.daemon.max_unacked)
    positions: dict[int, tuple[int, int]] = {}  # batch seq -> file position after it
    sent = 0
    next_notice = 0.0

    def counters() -> dict[str, int]:
        return {"events": sent, **source.counters, **out.counters()}

    try:
        while True:
            acked = out.poll_acks()
            if acked is not None and positions:
                done = [seq for seq in positions if seq <= acked]
                if done:
                    save_checkpoint(checkpoint, settings.source.path, positions[max(done)])
                    for seq in done:
                        del positions[seq]
            if stage.stopping and (out.idle() or time.monotonic() > stage.stop_deadline):
                break
            if time.monotonic() >= next_notice:
                finished = source.exhausted and out.idle()
                stage.notify(EOF_TOKEN if finished else "stats", counters())
                next_notice = time.monotonic() + NOTICE_INTERVAL_S
            if stage.stopping or out.full() or source.exhausted:
                out.sock.poll(100)  # wait for acknowledgements
                continue
            events = source.read(0.1)
            if not events:
                continue
            sent += len(events)
            inc = stage.incarnation
            seq = out.send(lambda seq, acked: EventBatch("ingest", inc, seq, acked, events))  # noqa: B023
            if isinstance(source, FileSource):
                positions[seq] = source.position()
        stage.notify("final", counters())
        log.info("stopped after %d events; %s", sent, counters())
    finally:
        source.close()
        checkpoint.close()
        out.sock.close(linger=1000)
        stage.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
