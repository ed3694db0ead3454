"""What every stage process shares: settings, logging, signals, notices, counters.

A worker (``nfflowd.workers.*``) is a loop around pure functions; this module
gives it the process plumbing so the loop stays short.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from types import FrameType

import zmq

from nfflowd import codec, endpoints
from nfflowd.config import Settings, load_resolved
from nfflowd.messages import Notice

SETTINGS_FILE = "settings.json"
#: A stopping stage keeps working until its input has been quiet this long.
QUIET_S = 0.5

log = logging.getLogger("nfflowd")


def peak_rss_kb() -> int:
    """This process's peak resident set size (VmHWM), in KiB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _count_start(rundir: str, name: str) -> int:
    """Increment <rundir>/<stage>.starts (how often supervisord started this stage)."""
    path = os.path.join(rundir, f"{name}.starts")
    try:
        with open(path) as fh:
            n = int(fh.read().strip() or 0) + 1
    except (OSError, ValueError):
        n = 1
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(f"{n}\n")
    os.replace(tmp, path)
    return n


class Stage:
    """Process-level state of one pipeline stage."""

    def __init__(self, name: str, argv: list[str] | None = None) -> None:
        parser = argparse.ArgumentParser(prog=f"nfflowd.workers.{name}")
        parser.add_argument("--rundir", required=True, help="nfflowd run directory")
        args = parser.parse_args(argv)
        self.name = name
        self.rundir: str = args.rundir
        logging.basicConfig(
            level=os.environ.get("NFFLOWD_LOGLEVEL", "INFO"),
            stream=sys.stderr,
            format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(message)s",
        )
        self.settings: Settings = load_resolved(os.path.join(self.rundir, SETTINGS_FILE))
        # A fresh number per start, so receivers can tell a restarted sender apart.
        self.incarnation = time.time_ns()
        self.stopping = False
        self.stop_deadline = 0.0
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._notices = endpoints.open_socket(self.ctx, self.rundir, "notices", "sender", hwm=100)
        self.malformed: dict[str, int] = {}
        self.starts = _count_start(self.rundir, name)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info("started (incarnation %d, rundir %s)", self.incarnation, self.rundir)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("signal %d: draining, then stopping", signum)
        self.stopping = True
        self.stop_deadline = time.monotonic() + float(os.environ.get("NFFLOWD_DRAIN_S", "10"))

    def done_draining(self, last_input: float) -> bool:
        """True once a stop was asked and input has been quiet (or the deadline passed).

        A stage that is told to stop keeps handling what still arrives, so what
        upstream sent before stopping is not lost.
        """
        if not self.stopping:
            return False
        now = time.monotonic()
        return now - last_input > QUIET_S or now > self.stop_deadline

    def socket(self, name: str, side: str, *, hwm: int = 1000) -> zmq.Socket[bytes]:
        return endpoints.open_socket(self.ctx, self.rundir, name, side, hwm=hwm)

    def count_malformed(self, reason: str, detail: str, where: str) -> None:
        """Count a message that could not be used; log the first few of each reason."""
        n = self.malformed.get(reason, 0) + 1
        self.malformed[reason] = n
        if n <= 5 or n & (n - 1) == 0:
            log.warning("%s: dropped message (%s): %s [%d so far]", where, reason, detail, n)

    def notify(self, token: str, counters: Mapping[str, int]) -> None:
        """Publish a notice (dropped when nobody listens)."""
        merged = dict(counters)
        for reason, n in self.malformed.items():
            merged[f"malformed_{reason}"] = n
        merged["peak_rss_kb"] = peak_rss_kb()
        merged["starts"] = self.starts
        with contextlib.suppress(zmq.Again):
            self._notices.send(codec.encode(Notice(self.name, token, merged)), zmq.NOBLOCK)

    def send(self, sock: zmq.Socket[bytes], data: bytes) -> None:
        """Blocking send that still notices a stop deadline (backpressure, not loss)."""
        while True:
            try:
                sock.send(data, zmq.NOBLOCK)
                return
            except zmq.Again:
                if self.stopping and time.monotonic() > self.stop_deadline:
                    raise TimeoutError(
                        "downstream did not accept data before the stop deadline"
                    ) from None
                zmq.select([], [sock], [], 0.2)

    def close(self) -> None:
        self._notices.close(linger=0)
        self.ctx.destroy(linger=2000)
