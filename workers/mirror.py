"""Stage 4, mirror: ``flows.mirror`` link -> flow lines -> screen / syslog.

The work is :class:`nfflowd.outputs.mirror.Mirror`; the loop is
:func:`nfflowd.pipeline.sink.consume`.
"""

from __future__ import annotations

from nfflowd import topology
from nfflowd.outputs.mirror import Mirror, make_dispatchers
from nfflowd.pipeline.sink import consume
from nfflowd.pipeline.stage import Stage


def main(argv: list[str] | None = None) -> int:
    stage = Stage("mirror", argv)
    try:
        # a screen dispatcher writes <rundir>/mirror.out itself (no relay by supervisord)
        mirror = Mirror(stage.settings, make_dispatchers(stage.settings, stage.rundir))
        n = stage.settings.daemon.correlators
        consume(stage, [topology.link("flows.mirror", i) for i in range(n)], mirror)
        for d in mirror.dispatchers:
            d.close()
    finally:
        stage.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
