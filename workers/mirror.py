"""Stage 4, mirror: ``flows.mirror`` link -> flow lines -> screen / syslog.

The work is :class:`nfflowd.outputs.mirror.Mirror`; the loop is
:func:`nfflowd.pipeline.sink.consume`.
"""

from __future__ import annotations

import logging

from nfflowd import topology
from nfflowd.outputs.mirror import Mirror, gets_flow_lines, make_dispatchers
from nfflowd.pipeline import coverage
from nfflowd.pipeline.sink import consume
from nfflowd.pipeline.stage import Stage

log = logging.getLogger("nfflowd.mirror")


def main(argv: list[str] | None = None) -> int:
    stage = Stage("mirror", argv)
    try:
        # a screen dispatcher writes <rundir>/mirror.out itself (no relay by supervisord)
        mirror = Mirror(stage.settings, make_dispatchers(stage.settings, stage.rundir))
        n = stage.settings.daemon.correlators
        watch = None
        if coverage.journaling(stage.settings):
            journal = coverage.Journal(stage.settings.daemon.statedir, stage.name, log)
            names = [d.name for d in stage.settings.mirror.dispatchers if gets_flow_lines(d)]
            watch = coverage.DeliveryWatch(
                journal, {f"d{i}_dropped": f"lines of dispatcher {d}" for i, d in enumerate(names)}
            )
        consume(stage, [topology.link("flows.mirror", i) for i in range(n)], mirror, watch)
        for d in mirror.dispatchers:
            d.close()
    finally:
        stage.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
