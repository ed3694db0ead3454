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

A live source's coverage is journaled (:mod:`nfflowd.pipeline.coverage`): its
heartbeat (``ingest.alive``) lives in ``<daemon> statedir``, so a restart — after a
crash, a stop or a reboot — knows how long nobody listened and journals that
``not_listening`` gap, then ``started`` (with the run's conditions); a clean stop
journals ``stopped``; the source's own gaps (ENOBUFS, a conntrack program that
exited) are journaled as they come.
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
from nfflowd.pipeline import coverage, persist
from nfflowd.pipeline.links import Outlet, event_batch
from nfflowd.pipeline.stage import Stage

log = logging.getLogger("nfflowd.ingest")
NOTICE_INTERVAL_S = 1.0


def main(argv: list[str] | None = None) -> int:
    stage = Stage("ingest", argv)
    settings = stage.settings
    checkpoint = ckpt.open_checkpoint(stage.rundir)
    journal = (
        coverage.Journal(settings.daemon.statedir, stage.name, log)
        if coverage.journaling(settings)
        else None
    )
    alive = open_alive(stage.rundir if journal is None else settings.daemon.statedir, stage.rundir)
    last_alive_ms = alive[0] // 1_000_000
    blind_ms = ckpt.blind_time(alive, settings.source.type != "file", time.time_ns())
    if blind_ms:
        log.warning(
            "no ingest listened for %.1f s before this start: connections that began "
            "and ended in that time were not seen",
            blind_ms / 1000,
        )
    source = make_source(settings, checkpoint)
    if journal is not None:
        listening_ms = coverage.now_ms()
        if blind_ms:
            detail = (
                f"no ingest listened for {(listening_ms - last_alive_ms) / 1000:.1f} s (ingest "
                "stopped, killed or crashed, or the host down) until this start"
            )
            gap = coverage.Gap(
                min(last_alive_ms, listening_ms), listening_ms, "not_listening", stage.name, detail
            )
            journal.gap(gap)
        for cause in source.conditions:
            log.warning(
                "coverage condition %s: connections are seen but recorded incompletely while "
                "this ingest runs (see `nfflowd check`)",
                cause,
            )
        journal.started(listening_ms, settings.source.type, source.conditions)
        alive[0] = listening_ms * 1_000_000  # listening: a crash from here is a new gap
    n, limit, paths = settings.daemon.correlators, settings.daemon.max_unacked, settings.source.path
    reader = Reader(source, n, settings.source.linger_ms / 1000, paths)
    outs = [Outlet(stage, topology.link("events", i), limit) for i in range(n)]
    poller = zmq.Poller()
    for out in outs:
        poller.register(out.sock, zmq.POLLIN)
    next_notice = 0.0

    def counters() -> dict[str, int]:
        merged: dict[str, int] = {"events": reader.sent, "blind_ms": blind_ms, **source.counters}
        if journal is not None:
            merged.update(journal.counters)
        for out in outs:
            for k, v in out.counters().items():
                merged[k] = merged.get(k, 0) + v
        return merged

    try:
        while True:
            alive[0] = time.time_ns()
            while source.gaps and journal is not None:
                journal.gap(source.gaps.pop(0))
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
        alive[0] = time.time_ns()  # the last read was before this
        if journal is not None:
            journal.stopped(alive[0] // 1_000_000)
        stage.notify("final", counters())
        log.info("stopped after %d events; %s", reader.sent, counters())
    finally:
        source.close()
        alive[0] = time.time_ns()
        alive.close()
        if journal is not None:
            journal.close()
        checkpoint.close()
        for out in outs:
            out.sock.close(linger=1000)
        stage.close()
    return 0


def open_alive(directory: str, fallback: str) -> persist.Slots:
    """The heartbeat slot in *directory* (the state directory for a live source), or in
    *fallback* (the run directory) when that cannot be opened."""
    try:
        return persist.Slots(coverage.own_file(directory, ckpt.ALIVE), 1)  # survives SIGKILL
    except OSError as exc:
        log.error("%s: cannot keep the heartbeat there: %s", directory, exc.strerror)
        return persist.Slots(os.path.join(fallback, ckpt.ALIVE), 1)


if __name__ == "__main__":
    raise SystemExit(main())
