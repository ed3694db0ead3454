"""What every stage process shares: settings, logging, signals, notices, counters.

A worker (``nfflowd.workers.*``) is a loop around pure functions; this module
gives it the process plumbing so the loop stays short.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any

import zmq

from nfflowd import topology
from nfflowd.config import Settings, load_resolved
from nfflowd.messages import Notice
from nfflowd.pipeline import codec, endpoints

SETTINGS_FILE = "settings.json"
#: <rundir>/stats/<stage>.json: each stage's latest published counters (see write_stats).
STATS_DIR = "stats"
#: A stopping stage keeps working until its input has been quiet this long.
QUIET_S = 0.5
#: While a stage's counters stand still, it reports only this often (see Stage.notify).
IDLE_NOTICE_S = 4.0
#: A stage whose input has been quiet this long polls once a second (Stage.poll_ms).
QUIET_POLL_AFTER_S = 5.0

log = logging.getLogger("nfflowd")


def _count_start(rundir: str, name: str) -> int:
    """Increment <rundir>/<stage>.starts (how often supervisord started this stage)."""
    path = os.path.join(rundir, f"{name}.starts")
    try:
        with open(path) as fh:
            n = int(fh.read().strip() or 0) + 1
    except (OSError, ValueError):
        n = 1
    tmp = f"{path}.{os.getpid()}"
    with os.fdopen(_new_file(tmp, 0o644), "w") as fh:
        fh.write(f"{n}\n")
    os.replace(tmp, path)
    return n


def _new_file(path: str, mode: int) -> int:
    """Open *path* for writing as a new file (a leftover of that name is removed first).

    ``O_EXCL | O_NOFOLLOW``: in a run directory shared with ``<daemon> user``
    (nfflowd.ops.privileges) ingest, as root, must not write through a name that an
    unprivileged stage planted (a symlink to a system file).
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)


def stats_path(rundir: str, name: str) -> str:
    return os.path.join(rundir, STATS_DIR, f"{name}.json")


def write_stats(path: str, record: Mapping[str, Any]) -> None:
    """Replace *path* with *record* as JSON, atomically (temp file + rename), mode 0600.

    Readers (``nfflowd status``, the metrics endpoint) never see a half-written
    file.  No fsync: the file is for live readers, and a crash's lost second
    is restated by the restarted stage.  Root writing into a directory of
    another group (``<daemon> user``'s: ingest) makes the file root:that group,
    0640, for the metrics endpoint, which runs as that user.
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    group = os.stat(os.path.dirname(path)).st_gid
    shared = os.geteuid() == 0 and group != os.getegid()
    fd = _new_file(tmp, 0o640 if shared else 0o600)
    try:
        if shared:
            os.fchown(fd, -1, group)
        os.fchmod(fd, 0o640 if shared else 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh, separators=(",", ":"), sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_stats(rundir: str) -> dict[str, dict[str, Any]]:
    """Every stage's stats file in *rundir* (by stage name); unreadable ones are left out.

    A record: ``stage``, ``pid``, ``incarnation``, ``starts``, ``time`` (epoch s of
    the notice), ``token`` (``stats``, ``eof`` or ``final``) and ``counters``
    (name -> int, as in the stage's notices).
    """
    out: dict[str, dict[str, Any]] = {}
    directory = os.path.join(rundir, STATS_DIR)
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    except OSError:
        return out
    for name in names:
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as fh:
                record = json.load(fh)
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("counters"), dict):
            out[name.removesuffix(".json")] = record
    return out


class Stage:
    """Process-level state of one pipeline stage."""

    def __init__(self, name: str, argv: list[str] | None = None) -> None:
        parser = argparse.ArgumentParser(prog=f"nfflowd.workers.{name}")
        parser.add_argument("--rundir", required=True, help="nfflowd run directory")
        parser.add_argument(
            "--shard", type=int, default=None, help="<daemon> correlators/exporters"
        )
        args = parser.parse_args(argv)
        self.shard: int | None = args.shard
        name = topology.process_name(name, self.shard)
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
        self._stats_path = stats_path(self.rundir, name)
        self._last_counters: dict[str, int] = {}
        self._next_idle_notice = 0.0
        self._stats_failed = False
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(self._stats_path), mode=0o700, exist_ok=True)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log.info("started (incarnation %d, rundir %s)", self.incarnation, self.rundir)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("signal %d: draining, then stopping", signum)
        self.stopping = True
        self.stop_deadline = time.monotonic() + float(os.environ.get("NFFLOWD_DRAIN_S", "10"))

    def poll_ms(self, last_input: float, *, busy: bool = False) -> int:
        """How long a loop may wait for input: 100 ms while it works, is asked to stop, or
        had input lately; once quiet for QUIET_POLL_AFTER_S, a second (an idle pipeline
        wakes once a second per stage: heartbeat and notice)."""
        if busy or self.stopping or time.monotonic() - last_input < QUIET_POLL_AFTER_S:
            return 100
        return 1000

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
        """The *side* socket of link *name*: ipc://, or tcp:// with CURVE per ``<links>``."""
        links = self.settings.links
        return endpoints.open_socket(self.ctx, self.rundir, name, side, hwm=hwm, links=links)

    def count_malformed(self, reason: str, detail: str, where: str) -> None:
        """Count a message that could not be used; log the first few of each reason."""
        n = self.malformed.get(reason, 0) + 1
        self.malformed[reason] = n
        if n <= 5 or n & (n - 1) == 0:
            log.warning("%s: dropped message (%s): %s [%d so far]", where, reason, detail, n)

    def notify(self, token: str, counters: Mapping[str, int]) -> None:
        """Publish a notice (dropped when nobody listens) and keep it in the stats file.

        Stages call this about once a second and at exit, which bounds the cost
        of the file (one small JSON write and a rename).  While nothing but the
        stage's own CPU time changed (an idle firewall), a ``stats`` notice goes out
        only every IDLE_NOTICE_S: readers take a report older than 5 s for a stage
        that is gone (nfflowd.outputs.prometheus), and an idle pipeline should cost
        next to nothing.
        """
        merged = dict(counters)
        for reason, n in self.malformed.items():
            merged[f"malformed_{reason}"] = n
        now = time.monotonic()
        if token == "stats" and merged == self._last_counters and now < self._next_idle_notice:
            return
        self._last_counters = dict(merged)
        self._next_idle_notice = now + IDLE_NOTICE_S
        usage = resource.getrusage(resource.RUSAGE_SELF)
        merged["peak_rss_kb"] = usage.ru_maxrss  # KiB on Linux: VmHWM
        merged["cpu_ms"] = int((usage.ru_utime + usage.ru_stime) * 1000)
        merged["starts"] = self.starts
        with contextlib.suppress(zmq.Again):
            self._notices.send(codec.encode(Notice(self.name, token, merged)), zmq.NOBLOCK)
        record = {
            "stage": self.name,
            "pid": os.getpid(),
            "incarnation": self.incarnation,
            "starts": self.starts,
            "time": time.time(),
            "token": token,
            "counters": merged,
        }
        try:
            write_stats(self._stats_path, record)
        except OSError as exc:
            if not self._stats_failed:  # once: the pipeline goes on without the file
                log.warning("cannot write %s: %s", self._stats_path, exc)
            self._stats_failed = True

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
