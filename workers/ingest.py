"""Stage 1, ingest: conntrack events from a source -> ``events`` link(s), as bytes.

Ingest reads and forwards; it decodes nothing (the correlators do,
:mod:`nfflowd.conntrack.payloads`).  Events accumulate in a
:class:`~nfflowd.pipeline.batcher.Batcher` until the batch is full or its oldest
event has waited ``<source> linger_ms``; then it goes to a correlator: the least
loaded when every event is self-contained (DESTROY-only netlink), else each event
to the correlator of its connection (:func:`~nfflowd.conntrack.payloads.split`).
A saved log's batches are cut only where a successor re-reading from the
checkpoint would cut them (full, or a file's end), so a re-read batch has the
origin it had the first time (a partial one is dropped at a stop and read again
from the checkpoint).  Every batch is kept until correlate acknowledges it, which
it does only once the batch's records have left nfflowd (end to end); while
``max_unacked`` batches wait, ingest stops reading (backpressure: the kernel socket
buffer, reliable mode and resync dumps take over).  For a saved log the position after the last
acknowledged batch is checkpointed (:mod:`nfflowd.conntrack.checkpoint`); when the
log is exhausted and everything is acknowledged, ingest publishes an ``eof``
notice (``nfflowd replay`` waits for it).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque

import zmq

from nfflowd import topology
from nfflowd.conntrack import checkpoint as ckpt
from nfflowd.conntrack.payloads import split
from nfflowd.conntrack.sources import FileSource, make_source
from nfflowd.messages import EOF_TOKEN
from nfflowd.pipeline import persist
from nfflowd.pipeline.batcher import Batcher
from nfflowd.pipeline.links import Outlet, event_batch, least_loaded
from nfflowd.pipeline.stage import Stage

log = logging.getLogger("nfflowd.ingest")
NOTICE_INTERVAL_S = 1.0
#: How long a read waits for the first event of a batch (a live source wakes at once).
IDLE_READ_S = 1.0


def main(argv: list[str] | None = None) -> int:
    stage = Stage("ingest", argv)
    settings = stage.settings
    checkpoint = ckpt.open_checkpoint(stage.rundir)
    alive = persist.Slots(os.path.join(stage.rundir, ckpt.ALIVE), 1)  # survives SIGKILL
    blind_ms = ckpt.blind_time(alive, settings.source.type != "file", time.time_ns())
    if blind_ms:
        log.warning(
            "no ingest listened for %.1f s before this start: connections that began "
            "and ended in that time were not seen",
            blind_ms / 1000,
        )
    source = make_source(settings, checkpoint)
    log_file = source if isinstance(source, FileSource) else None
    n, limit, paths = settings.daemon.correlators, settings.daemon.max_unacked, settings.source.path
    outs = [Outlet(stage, topology.link("events", i), limit) for i in range(n)]
    streams = [ckpt.origin_stream(paths, i) if log_file else 0 for i in range(n)]
    batch = Batcher(linger_s=settings.source.linger_ms / 1000)
    poller = zmq.Poller()
    for out in outs:
        poller.register(out.sock, zmq.POLLIN)
    # a saved log: the position after each batch, with the seq it got per correlator
    reads: deque[tuple[tuple[int, int], list[int]]] = deque()
    start, line = (0, 0), 0  # where the batch being built starts (a saved log)
    sent, next_notice = 0, 0.0

    def counters() -> dict[str, int]:
        merged: dict[str, int] = {"events": sent, "blind_ms": blind_ms, **source.counters}
        for out in outs:
            for k, v in out.counters().items():
                merged[k] = merged.get(k, 0) + v
        return merged

    def flush() -> None:
        nonlocal sent
        data, count = batch.take()
        sent += count
        if n == 1 or source.stateless:
            parts = [(b"", 0)] * n
            parts[least_loaded(outs)] = (data, count)
        else:
            parts = split(source.payload, data, n)  # its lines are no longer in a row: line 0
        seqs = [0] * n
        first = line if n == 1 or source.stateless else 0
        for i, (part, k) in enumerate(parts):
            if k:
                at = (streams[i], ckpt.origin_pos(start))
                build = event_batch(stage, source.payload, part, k, source.where, first, *at)
                seqs[i] = outs[i].send(build)
        if log_file:
            reads.append((log_file.position(), seqs))

    try:
        while True:
            alive[0] = time.time_ns()
            for out in outs:
                out.poll_acks()
            done = None
            while reads and all(
                s <= o.outbox.acked_upto for s, o in zip(reads[0][1], outs, strict=True)
            ):
                done = reads.popleft()[0]
            if done is not None:
                ckpt.save_checkpoint(checkpoint, paths, done)
            idle = not batch.count and all(out.idle() for out in outs)
            if stage.stopping and (idle or time.monotonic() > stage.stop_deadline):
                break
            if time.monotonic() >= next_notice:
                stage.notify(EOF_TOKEN if source.exhausted and idle else "stats", counters())
                next_notice = time.monotonic() + NOTICE_INTERVAL_S
            full = any(out.full() for out in outs)
            if log_file:
                # a saved log's batches are cut where a re-read cuts them: full, or a
                # file's end (never by time, never at a stop: a partial batch is
                # dropped and read again by the successor, from the checkpoint)
                if not full and batch.full():
                    flush()
                elif stage.stopping:
                    batch.take()
            elif not full and (batch.due() or (batch.count and stage.stopping)):
                flush()
            if full or stage.stopping or source.exhausted:
                poller.poll(100)  # wait for acknowledgements
                continue
            before = log_file.position() if log_file and not batch.count else None
            got = source.read(
                batch.data, batch.wait_s() if batch.count else IDLE_READ_S, batch.room()
            )
            if before is not None and got and log_file:
                start, line = before, log_file.read_line  # a new batch: where it starts
            batch.added(got)
            if log_file and not got and batch.count:
                flush()  # the end of a file: a batch never spans two (one `where`)
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
