"""Stage 3, export: ``flows.export`` link -> NetFlow v5/v9/IPFIX datagrams -> UDP collectors.

The work is :class:`nfflowd.outputs.exporter.Exporter`; the loop is
:func:`nfflowd.pipeline.sink.consume`.  While the stages journal coverage, the
journal's gaps go to the v9/IPFIX collectors too
(:class:`nfflowd.outputs.coverage_feed.CoverageFeed`, once a second).
"""

from __future__ import annotations

import logging
import os

from nfflowd import topology
from nfflowd.outputs.coverage_feed import CoverageFeed
from nfflowd.outputs.exporter import MAX_STREAMS, SEQUENCE_FILE, Exporter, shard_settings
from nfflowd.pipeline import coverage, persist
from nfflowd.pipeline.sink import consume
from nfflowd.pipeline.stage import Stage

log = logging.getLogger("nfflowd.export")


def main(argv: list[str] | None = None) -> int:
    stage = Stage("export", argv)
    shard = stage.shard or 0
    daemon = stage.settings.daemon
    feeds = topology.correlators_of(shard, daemon.correlators, daemon.exporters)
    seq_file = SEQUENCE_FILE if stage.shard is None else f"{stage.name}.sequence"
    sequences = persist.Slots(os.path.join(stage.rundir, seq_file), 2 * MAX_STREAMS)
    feed = None
    try:
        exp = shard_settings(stage.settings.export, shard)
        links = [topology.link("flows.export", i) for i in feeds]
        watch = None
        journaling = coverage.journaling(stage.settings)
        exporter = Exporter(exp, sequences, coverage=journaling)
        if journaling:
            journal = coverage.Journal(daemon.statedir, stage.name, log)
            watched: dict[str, str] = {}
            for i, c in enumerate(exp.collectors):
                target = f"collector {c.address}:{c.port} v{c.version}"
                watched[f"c{i}_send_errors"] = f"datagrams to {target}"
                # ICMP port unreachable for a datagram already gone (a remote collector:
                # the error comes back late); one known at once (this host) is held, no loss
                watched[f"c{i}_refused_lost"] = f"datagrams refused by {target} (port unreachable)"
                watched[f"c{i}_dropped"] = f"datagrams held for {target} and given up"
            watch = coverage.DeliveryWatch(journal, watched)
            if any(c.sends_coverage for c in exp.collectors):
                try:
                    feed = CoverageFeed(daemon.statedir, stage.name, exporter)
                except OSError as exc:  # as a journal that cannot be written: go on
                    log.error("coverage feed: %s: %s", daemon.statedir, exc.strerror or exc)
        consume(stage, links, exporter, watch, feed)
    finally:
        if feed is not None:
            feed.close()
        sequences.close()
        stage.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
