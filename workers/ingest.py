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
from collections import deque
from collections.abc import Callable

import zmq

from nfflowd import topology
from nfflowd.conntrack.checkpoint import (
    ALIVE,
    blind_time,
    open_checkpoint,
    origin_pos,
    origin_stream,
    save_checkpoint,
)
from nfflowd.conntrack.sources import FileSource, make_source
from nfflowd.messages import EOF_TOKEN, ConntrackEvent, EventBatch
from nfflowd.pipeline import persist, shards
from nfflowd.pipeline.links import Outlet
from nfflowd.pipeline.stage import Stage

log = logging.getLogger("nfflowd.ingest")

NOTICE_INTERVAL_S = 1.0


def batch_of(
    inc: int, events: list[ConntrackEvent], stream: int, pos: int
) -> Callable[[int, int], EventBatch]:
    """How to build the batch of *events* once the link has given it a seq."""
    return lambda seq, acked: EventBatch("ingest", inc, seq, acked, events, stream, pos)


def main(argv: list[str] | None = None) -> int:
    stage = Stage("ingest", argv)
    settings = stage.settings
    checkpoint = open_checkpoint(stage.rundir)
    # when this process last listened (a shared mapping: survives SIGKILL, see persist)
    alive = persist.Slots(os.path.join(stage.rundir, ALIVE), 1)
    blind_ms = blind_time(alive, settings.source.type != "file", time.time_ns())
    if blind_ms:
        log.warning(
            "no ingest listened for %.1f s before this start: connections that began "
            "and ended in that time were not seen (the dump brings back those still "
            "open)",
            blind_ms / 1000,
        )
    source = make_source(settings, checkpoint)
    n = settings.daemon.correlators
    limit = settings.daemon.max_unacked
    outs = [Outlet(stage, topology.link("events", i), limit) for i in range(n)]
    poller = zmq.Poller()
    for out in outs:
        poller.register(out.sock, zmq.POLLIN)
    # file position after each read, with the seq of the batch it gave each correlator
    # (0: none); the checkpoint moves once every one of them is acknowledged
    reads: deque[tuple[tuple[int, int], list[int]]] = deque()
    streams = [
        origin_stream(settings.source.path, i) if isinstance(source, FileSource) else 0
        for i in range(n)
    ]
    sent = 0
    next_notice = 0.0

    def counters() -> dict[str, int]:
        merged: dict[str, int] = {"events": sent, "blind_ms": blind_ms, **source.counters}
        for out in outs:
            for k, v in out.counters().items():
                merged[k] = merged.get(k, 0) + v
        return merged

    def acknowledged(seqs: list[int]) -> bool:
        return all(seq <= out.outbox.acked_upto for seq, out in zip(seqs, outs, strict=True))

    try:
        while True:
            alive[0] = time.time_ns()
            for out in outs:
                out.poll_acks()
            done = None
            while reads and acknowledged(reads[0][1]):
                done = reads.popleft()[0]
            if done is not None:
                save_checkpoint(checkpoint, settings.source.path, done)
            idle = all(out.idle() for out in outs)
            if stage.stopping and (idle or time.monotonic() > stage.stop_deadline):
                break
            if time.monotonic() >= next_notice:
                finished = source.exhausted and idle
                stage.notify(EOF_TOKEN if finished else "stats", counters())
                next_notice = time.monotonic() + NOTICE_INTERVAL_S
            if stage.stopping or source.exhausted or any(out.full() for out in outs):
                poller.poll(100)  # wait for acknowledgements
                continue
            # a saved log's batch is named by where it starts: a successor re-reading
            # it from the checkpoint gives it the same origin (see EventBatch)
            pos = origin_pos(source.position()) if isinstance(source, FileSource) else 0
            events = source.read(0.1)
            if not events:
                continue
            sent += len(events)
            inc = stage.incarnation
            seqs = [0] * n
            for i, part in enumerate([events] if n == 1 else shards.split(events, n)):
                if part:
                    seqs[i] = outs[i].send(batch_of(inc, part, streams[i], pos))
            if isinstance(source, FileSource):
                reads.append((source.position(), seqs))
        stage.notify("final", counters())
        log.info("stopped after %d events; %s", sent, counters())
    finally:
        source.close()
        alive[0] = time.time_ns()
        alive.close()
        checkpoint.close()
        for out in outs:
            out.sock.close(linger=1000)
        stage.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
