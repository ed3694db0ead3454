"""The Prometheus endpoint (``<metrics> listen HOST:PORT``): stats files -> ``/metrics``
(:class:`nfflowd.outputs.prometheus.StatsCollector`).

Not a pipeline stage: it reads what the stages leave in ``<rundir>/stats/``
(see :meth:`nfflowd.pipeline.stage.Stage.notify`) on each scrape, asks supervisord
which stages run, and lets :mod:`nfflowd.outputs.prometheus` name it all.  Nothing is kept
between scrapes, so this process may die and restart without losing a count,
and a scrape costs the pipeline nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from prometheus_client import CollectorRegistry, start_http_server

from nfflowd.config import load_resolved
from nfflowd.outputs import prometheus
from nfflowd.pipeline.stage import SETTINGS_FILE

log = logging.getLogger("nfflowd.outputs.prometheus")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nfflowd.workers.metrics")
    parser.add_argument("--rundir", required=True, help="nfflowd run directory")
    rundir: str = parser.parse_args(argv).rundir
    logging.basicConfig(
        level=os.environ.get("NFFLOWD_LOGLEVEL", "INFO"),
        stream=sys.stderr,
        format="%(asctime)s metrics[%(process)d] %(levelname)s %(message)s",
    )
    settings = load_resolved(os.path.join(rundir, SETTINGS_FILE))
    address, port = settings.metrics.address, settings.metrics.port
    if address is None:
        log.error("no <metrics> listen in the settings: nothing to serve")
        return 2
    registry = CollectorRegistry(auto_describe=False)
    registry.register(prometheus.StatsCollector(rundir))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server, thread = start_http_server(port, address, registry)
    except OSError as exc:
        log.error("cannot listen on %s: %s", settings.metrics.listen, exc.strerror or exc)
        return 1
    log.info("serving metrics on http://%s/metrics (rundir %s)", settings.metrics.listen, rundir)
    while not stop.wait(1.0):
        pass
    server.shutdown()
    server.server_close()
    thread.join(5)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
