"""Stage 1, ingest: conntrack events from a source -> ``events`` link(s), as bytes.

The work is :class:`nfflowd.conntrack.reader.Reader`: read the source (decoding
nothing), cut batches (by size and ``<source> linger_ms``; a saved log's only where
a re-read would cut them), split them among correlators.  This loop sends them and
keeps each until correlate acknowledges it, which it does only once the batch's
records have left nfflowd (end to end); while ``max_unacked`` batches wait, ingest
stops reading (backpressure: the kernel socket buffer, reliable mode and resync
dumps take over).  A saved log's checkpoint follows the acknowledgements
(:mod:`nfflowd.conntrack.checkpoint`); when the log is exhausted and everything is
acknowledged, ingest publishes an ``eof`` notice (``nfflowd replay`` waits for it).
"""

from __future__ import annotations

import logging
import os
import time

import zmq

from nfflowd import topology
from nfflowd.conntrack import checkpoint as ckpt
from nfflowd.conntrack.reader import Reader
from nfflowd.conntrack.sources import make_source
from nfflowd.messages import EOF_TOKEN
from nfflowd.pipeline import persist
from nfflowd.pipeline.links import Outlet, event_batch
from nfflowd.pipeline.stage import Stage

log = logging.getLogger("nfflowd.ingest")
NOTICE_INTERVAL_S = 1.0


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
    n, limit, paths = settings.daemon.correlators, settings.daemon.max_unacked, settings.source.path
    reader = Reader(source, n, settings.source.linger_ms / 1000, paths)
    outs = [Outlet(stage, topology.link("events", i), limit) for i in range(n)]
    poller = zmq.Poller()
    for out in outs:
        poller.register(out.sock, zmq.POLLIN)
    next_notice = 0.0

    def counters() -> dict[str, int]:
        merged: dict[str, int] = {"events": reader.sent, "blind_ms": blind_ms, **source.counters}
        for out in outs:
            for k, v in out.counters().items():
                merged[k] = merged.get(k, 0) + v
        return merged

    try:
        while True:
            alive[0] = time.time_ns()
            for out in outs:
                out.poll_acks()
            if (done := reader.checkpoint([o.outbox.acked_upto for o in outs])) is not None:
                ckpt.save_checkpoint(checkpoint, paths, done)
            idle = not reader.holding and all(out.idle() for out in outs)
            if stage.stopping and (idle or time.monotonic() > stage.stop_deadline):
                break
            if time.monotonic() >= next_notice:
                stage.notify(EOF_TOKEN if source.exhausted and idle else "stats", counters())
                next_notice = time.monotonic() + NOTICE_INTERVAL_S
            full = any(out.full() for out in outs)
            if not full and reader.due(stage.stopping):
                seqs = [0] * n
                for p in reader.take([len(o.outbox.unacked) for o in outs]):
                    build = event_batch(
                        stage,
                        source.payload,
                        p.data,
                        p.events,
                        p.where,
                        p.first_line,
                        p.origin_stream,
                        p.origin_pos,
                    )
                    seqs[p.shard] = outs[p.shard].send(build)
                reader.sent_as(seqs)
            elif stage.stopping and reader.log_file and reader.holding:
                reader.drop()  # a saved log's partial batch: the successor reads it again
            if full or stage.stopping or source.exhausted:
                poller.poll(100)  # wait for acknowledgements
                continue
            reader.read()
        stage.notify("final", counters())
        log.info("stopped after %d events; %s", reader.sent, counters())
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
