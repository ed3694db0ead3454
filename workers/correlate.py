"""Stage 2, correlate: ``events`` link -> open-connection table -> ``flows.*`` links.

The pure work is :class:`nfflowd.correlate.Correlator`; this loop only moves
batches.  Markers are forwarded to both outputs after the records before
them, so a terminal stage that sees a marker has seen all of its data.
"""

from __future__ import annotations

import logging
import time

import zmq

from nfflowd import codec
from nfflowd.correlate import Correlator
from nfflowd.messages import EventBatch, FlowBatch, Marker
from nfflowd.stage import Stage

log = logging.getLogger("nfflowd.correlate")

PURGE_INTERVAL_S = 60.0


def main(argv: list[str] | None = None) -> int:
    stage = Stage("correlate", argv)
    corr = Correlator(
        ttl_s=stage.settings.ct2ft.ttl, active_timeout_s=stage.settings.export.active_timeout
    )
    inp = stage.socket("events", "receiver")
    outs = [stage.socket("flows.export", "sender"), stage.socket("flows.mirror", "sender")]
    seq = 0
    next_purge = time.monotonic() + PURGE_INTERVAL_S
    last_input = time.monotonic()
    try:
        while True:
            if stage.done_draining(last_input):
                break
            if not inp.poll(200, zmq.POLLIN):
                if time.monotonic() >= next_purge:
                    n = corr.purge()
                    if n:
                        log.info("purged %d unfinished connections older than the ttl", n)
                    next_purge = time.monotonic() + PURGE_INTERVAL_S
                continue
            last_input = time.monotonic()
            data = inp.recv()
            try:
                msg = codec.decode(data)
            except codec.DecodeError as exc:
                stage.count_malformed(exc.reason, str(exc), "events link")
                continue
            if isinstance(msg, EventBatch):
                try:
                    records = corr.feed_all(msg.events)
                except (TypeError, ValueError, AttributeError) as exc:
                    stage.count_malformed("bad_event", repr(exc), f"batch {msg.seq}")
                    continue
                if records:
                    seq += 1
                    payload = codec.encode(FlowBatch("correlate", stage.incarnation, seq, records))
                    for sock in outs:
                        stage.send(sock, payload)
            elif isinstance(msg, Marker):
                payload = codec.encode(msg)
                for sock in outs:
                    stage.send(sock, payload)
                c = corr.counters
                stage.notify(
                    msg.token,
                    {"new": c.new, "destroy": c.destroy, "records": c.records,
                     "open": len(corr.open), "destroy_without_new": c.destroy_without_new},
                )  # fmt: skip
                if msg.token == "drain" and stage.stopping:
                    break
            else:
                stage.count_malformed("unexpected_kind", type(msg).__name__, "events link")
        log.info("stopped; %s, %d still open", corr.counters, len(corr.open))
    finally:
        inp.close(linger=0)
        for sock in outs:
            sock.close(linger=5000)
        stage.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
