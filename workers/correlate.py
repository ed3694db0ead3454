"""Stage 2, correlate: ``events`` link -> decode, correlate -> ``flows.*`` links.

The work is :class:`nfflowd.correlate.batches.BatchCorrelator` (event batch bytes
in, flow block bytes out); this loop moves batches and acknowledgements.  Each
event batch yields at most one flow batch, sent to export and mirror with the
same seq; the :class:`~nfflowd.pipeline.delivery.Ledger` acknowledges an event
batch to ingest once both have acknowledged its flow batch (and every earlier
one).  While either output holds ``max_unacked`` unacknowledged batches,
correlate stops reading events (backpressure).
"""

from __future__ import annotations

import logging
import time

import zmq

from nfflowd import topology
from nfflowd.correlate.batches import BatchCorrelator, journal_path
from nfflowd.messages import EventBatch, FlowBatch, without_opened
from nfflowd.pipeline import codec
from nfflowd.pipeline.delivery import Ledger
from nfflowd.pipeline.links import Inlet, Outlet
from nfflowd.pipeline.stage import Stage

log = logging.getLogger("nfflowd.correlate")
PURGE_INTERVAL_S = 60.0
NOTICE_INTERVAL_S = 1.0


def main(argv: list[str] | None = None) -> int:
    stage = Stage("correlate", argv)
    settings, shard = stage.settings, stage.shard or 0
    limit = settings.daemon.max_unacked
    work = BatchCorrelator(
        settings.ct2ft.ttl,
        settings.export.active_timeout,
        journal_path=journal_path(stage.rundir, stage.shard),
        remembered=max(16384, 4 * limit),
        nat_starts=settings.export.nat_realtime,
    )
    inlet = Inlet(stage, topology.link("events", shard))
    outs = {
        name: Outlet(stage, topology.link(f"flows.{name}", shard), limit)
        for name in ("export", "mirror")
    }
    ledger = Ledger(outputs=tuple(outs))
    poller = zmq.Poller()
    for sock in [inlet.sock] + [out.sock for out in outs.values()]:
        poller.register(sock, zmq.POLLIN)
    next_purge, next_notice, last_input = time.monotonic() + PURGE_INTERVAL_S, 0.0, time.monotonic()

    def counters() -> dict[str, int]:
        merged = {**work.counters(), "pending_batches": len(ledger.entries), **inlet.counters()}
        for out in outs.values():
            merged.update(out.counters())
        return merged

    try:
        while True:
            idle = all(out.idle() for out in outs.values())
            if stage.done_draining(last_input) and (idle or time.monotonic() > stage.stop_deadline):
                break
            inlet.heartbeat()
            if (now := time.monotonic()) >= next_notice:
                stage.notify("stats", counters())
                next_notice = now + NOTICE_INTERVAL_S
            if now >= next_purge:
                if n := work.corr.purge():
                    log.info("purged %d unfinished connections older than the ttl", n)
                next_purge = now + PURGE_INTERVAL_S
            # backpressure: while an output is full, events wait (only acks are read)
            blocked = any(out.full() for out in outs.values())
            poller.modify(inlet.sock, 0 if blocked else zmq.POLLIN)
            ready = dict(poller.poll(stage.poll_ms(last_input, busy=not idle)))
            acked = {
                name: newest
                for name, out in outs.items()
                if out.sock in ready and (newest := out.poll_acks()) is not None
            }
            for name, newest in acked.items():
                ledger.output_acked(name, newest)
            if acked:
                inlet.ack(ledger.ackable(inlet.inbox.contiguous))
            if inlet.sock not in ready or (msg := inlet.receive()) is None:
                continue
            last_input = time.monotonic()
            if inlet.restarted:
                ledger.reset()  # ingest restarted: its old batches will not be acknowledged
            if not isinstance(msg, EventBatch):
                stage.count_malformed("unexpected_kind", type(msg).__name__, "events link")
                continue
            block, flow_seq = work.records(msg), 0
            if block:
                flow_seq = outs["export"].outbox.reserve()
                floor = min(out.outbox.acked_upto for out in outs.values())
                head = (stage.name, stage.incarnation, flow_seq, floor, *msg.origin())
                data = codec.encode(FlowBatch(*head, block))
                # OPENED records (real-time NAT events) are for export alone
                lines = without_opened(block) if work.corr.nat_starts else block
                mirror_data = data if lines is block else codec.encode(FlowBatch(*head, lines))
                for name, out in outs.items():
                    out.send_encoded(flow_seq, mirror_data if name == "mirror" else data)
            ledger.record(msg.seq, flow_seq)
            inlet.ack(ledger.ackable(inlet.inbox.contiguous))
        stage.notify("final", counters())
        log.info("stopped; %s", counters())
    finally:
        work.close()
        inlet.sock.close(linger=0)
        for out in outs.values():
            out.sock.close(linger=1000)
        stage.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
