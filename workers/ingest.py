"""Stage 1, ingest: conntrack events from a source -> ``events`` link.

Batches are sent as soon as a read returns (so live latency stays low) and
are at most one read's worth (so memory stays bounded).  A finite source (a
saved log) ends with a ``Marker`` that is re-sent every second, so a marker
lost in a restarted downstream stage is still delivered.
"""

from __future__ import annotations

import logging
import time

from nfflowd import codec
from nfflowd.config import Settings
from nfflowd.conntrack.sources import FileSource, NetlinkSource, ProgramSource, Source
from nfflowd.messages import EventBatch, Marker
from nfflowd.stage import Stage

log = logging.getLogger("nfflowd.ingest")

#: The marker token a finished saved log produces; ``replay`` waits for it.
EOF_TOKEN = "eof"
MARKER_INTERVAL_S = 1.0


def dump_interval(active_timeout_s: int) -> float:
    """How often to dump the kernel table for the active timeout (0: never).

    A long connection is reported at the first dump after its active timeout has
    passed, so reports come at most this late; a dump of N connections costs
    about N / 146,000 s of CPU (measured decode rate).
    """
    if active_timeout_s <= 0:
        return 0.0
    return float(min(60, max(1, active_timeout_s // 4)))


def make_source(settings: Settings) -> Source:
    src = settings.source
    if src.type == "file":
        return FileSource(src.path)
    if src.type == "conntrack":
        ct = settings.conntrack
        return ProgramSource(ct.progname, ct.init_format, ct.format)
    if src.type == "netlink":
        return NetlinkSource(src, dump_interval_s=dump_interval(settings.export.active_timeout))
    raise ValueError(f"unknown source type {src.type!r}")


def main(argv: list[str] | None = None) -> int:
    stage = Stage("ingest", argv)
    source = make_source(stage.settings)
    out = stage.socket("events", "sender")
    seq = 0
    sent_events = 0
    next_marker = 0.0
    try:
        while not stage.stopping:
            events = source.read(0.2)
            if events:
                seq += 1
                sent_events += len(events)
                stage.send(out, codec.encode(EventBatch("ingest", stage.incarnation, seq, events)))
            elif source.exhausted and time.monotonic() >= next_marker:
                stage.send(out, codec.encode(Marker(EOF_TOKEN)))
                stage.notify(EOF_TOKEN, {"events": sent_events, **source.counters})
                next_marker = time.monotonic() + MARKER_INTERVAL_S
                time.sleep(0.05)
        # Stopping: whatever was read is already sent; tell downstream to drain.
        stage.send(out, codec.encode(Marker("drain")))
        log.info("stopped after %d events; %s", sent_events, source.counters)
    finally:
        source.close()
        out.close(linger=5000)
        stage.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
