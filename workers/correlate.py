"""Stage 2, correlate: ``events`` link -> open-connection table -> ``flows.*`` links.

The pure work is :class:`nfflowd.correlate.correlator.Correlator`; this loop moves batches
and acknowledgements.  Each event batch yields at most one flow batch, sent to
export and mirror with the same seq; the :class:`~nfflowd.pipeline.delivery.Ledger`
acknowledges an event batch to ingest once both have acknowledged its flow
batch (and every earlier one).  While either output holds ``max_unacked``
unacknowledged batches, correlate stops reading events (backpressure).
"""

from __future__ import annotations

import logging
import os
import time

import zmq

from nfflowd import topology
from nfflowd.correlate.correlator import Correlator
from nfflowd.correlate.report_state import ReportJournal
from nfflowd.messages import EventBatch, FlowBatch
from nfflowd.pipeline import codec
from nfflowd.pipeline.delivery import Ledger, Recent
from nfflowd.pipeline.links import Inlet, Outlet
from nfflowd.pipeline.stage import Stage

log = logging.getLogger("nfflowd.correlate.correlator")

PURGE_INTERVAL_S = 60.0
NOTICE_INTERVAL_S = 1.0


def main(argv: list[str] | None = None) -> int:
    stage = Stage("correlate", argv)
    settings = stage.settings
    corr = Correlator(ttl_s=settings.ct2ft.ttl, active_timeout_s=settings.export.active_timeout)
    shard = stage.shard or 0
    journal = None
    if settings.export.active_timeout:
        # what the active timeout reported survives a crash (see nfflowd.correlate.report_state)
        name = "correlate.reports" if stage.shard is None else f"correlate-{shard}.reports"
        journal = ReportJournal(os.path.join(stage.rundir, name))
        restored = journal.load()
        if restored:
            log.info("restored the report state of %d long connections", len(restored))
        for ct_id, state in restored.items():
            corr.open[ct_id] = state
        corr.journal = journal
    inlet = Inlet(stage, topology.link("events", shard))
    limit = settings.daemon.max_unacked
    outs = {
        "export": Outlet(stage, topology.link("flows.export", shard), limit),
        "mirror": Outlet(stage, topology.link("flows.mirror", shard), limit),
    }
    ledger = Ledger(outputs=tuple(outs))
    # origins of the event batches fed to the table lately: a restarted ingest
    # re-reads at most max_unacked batches of a saved log
    processed = Recent(size=max(16384, 4 * limit))
    reread_events = 0
    poller = zmq.Poller()
    poller.register(inlet.sock, zmq.POLLIN)
    for out in outs.values():
        poller.register(out.sock, zmq.POLLIN)
    next_purge = time.monotonic() + PURGE_INTERVAL_S
    next_notice = 0.0
    last_input = time.monotonic()

    def ack_ingest() -> None:
        inlet.ack(min(ledger.ackable(), inlet.inbox.contiguous))

    def counters() -> dict[str, int]:
        c = corr.counters
        merged = {
            "new": c.new,
            "destroy": c.destroy,
            "update": c.update,
            "records": c.records,
            "open": len(corr.open),
            "purged": c.purged,
            "destroy_without_new": c.destroy_without_new,
            "interim_reports": c.interim_reports,
            "new_duplicate": c.new_duplicate,
            "replayed": c.replayed,
            "reread_events": reread_events,
            "newest_event_ms": corr.clock_ns // 1_000_000,
            "pending_batches": len(ledger.entries),
            "report_state_full": journal.full if journal else 0,
            **inlet.counters(),
        }
        for out in outs.values():
            merged.update(out.counters())
        return merged

    try:
        while True:
            idle = all(out.idle() for out in outs.values())
            if stage.done_draining(last_input) and (idle or time.monotonic() > stage.stop_deadline):
                break
            inlet.heartbeat()
            now = time.monotonic()
            if now >= next_notice:
                stage.notify("stats", counters())
                next_notice = now + NOTICE_INTERVAL_S
            if now >= next_purge:
                if n := corr.purge():
                    log.info("purged %d unfinished connections older than the ttl", n)
                next_purge = now + PURGE_INTERVAL_S
            # backpressure: while an output is full, events wait (only acks are read)
            blocked = any(out.full() for out in outs.values())
            poller.modify(inlet.sock, 0 if blocked else zmq.POLLIN)
            ready = dict(poller.poll(100))
            acked = False
            for name, out in outs.items():
                if out.sock in ready:
                    newest = out.poll_acks()
                    if newest is not None:
                        ledger.output_acked(name, newest)
                        acked = True
            if acked:
                ack_ingest()
            if inlet.sock not in ready:
                continue
            before = inlet.inbox.incarnation
            msg = inlet.receive()
            if msg is None:
                continue
            last_input = time.monotonic()
            if inlet.inbox.incarnation != before:
                ledger.reset()  # ingest restarted: its old batches will not be acknowledged
            if not isinstance(msg, EventBatch):
                stage.count_malformed("unexpected_kind", type(msg).__name__, "events link")
                continue
            origin = msg.origin()
            if not processed.add(origin):
                # re-read by a restarted ingest (same saved-log position): its records
                # were made already (the ledger's barrier waits for their acks)
                reread_events += len(msg.events)
                records = []
            else:
                if journal is not None:
                    journal.origin = origin
                    for ct_id, state in journal.revert(origin):  # fed again: as it was before
                        corr.open[ct_id] = state
                try:
                    records = corr.feed_all(msg.events)
                except (TypeError, ValueError, AttributeError) as exc:
                    stage.count_malformed("bad_event", repr(exc), f"batch {msg.seq}")
                    records = []
            flow_seq = 0
            if records:
                flow_seq = outs["export"].outbox.reserve()
                floor = min(out.outbox.acked_upto for out in outs.values())
                batch = FlowBatch("correlate", stage.incarnation, flow_seq, floor, *origin, records)
                data = codec.encode(batch)
                for out in outs.values():
                    out.send_encoded(flow_seq, data)
            ledger.record(msg.seq, flow_seq)
            ack_ingest()
        stage.notify("final", counters())
        log.info("stopped; %s", counters())
    finally:
        if journal is not None:
            journal.close()
        inlet.sock.close(linger=0)
        for out in outs.values():
            out.sock.close(linger=1000)
        stage.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
