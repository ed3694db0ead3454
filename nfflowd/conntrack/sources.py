"""Where conntrack events come from: a saved log, the conntrack program, the kernel.

Every source has the same shape, so the ingest worker is one loop::

    events = source.read(timeout_s)   # whatever is available now, maybe []
    source.exhausted                  # a finite source (a saved log) has ended
    source.counters                   # what it counted (lines, malformed, restarts…)

Bad input never stops a source: a malformed line is logged with its file and
line number (the first few of them, then powers of two), counted, and skipped.
"""

from __future__ import annotations

import logging
import os
import select
import shlex
import subprocess
import time
from collections.abc import Sequence
from typing import IO, Protocol

from nfflowd.config import Settings, SourceSettings
from nfflowd.conntrack import checkpoint as ckpt
from nfflowd.conntrack.text import ParseError, parse_line
from nfflowd.messages import ConntrackEvent, EventType
from nfflowd.pipeline import persist

log = logging.getLogger("nfflowd.source")

#: Lines parsed per read() call of a file source (one EventBatch, roughly).
FILE_CHUNK = 1000


class Source(Protocol):
    exhausted: bool
    counters: dict[str, int]

    def read(self, timeout_s: float) -> list[ConntrackEvent]: ...

    def close(self) -> None: ...


class LineParser:
    """Text lines -> events, with counting and located error messages."""

    def __init__(self, counters: dict[str, int]) -> None:
        self.counters = counters
        counters.setdefault("lines", 0)
        counters.setdefault("malformed_lines", 0)

    def parse(
        self, line: str, where: str, out: list[ConntrackEvent], default_type: int = EventType.NEW
    ) -> None:
        self.counters["lines"] += 1
        try:
            ev = parse_line(line, default_type=default_type)
        except ParseError as exc:
            n = self.counters["malformed_lines"] + 1
            self.counters["malformed_lines"] = n
            if n <= 10 or n & (n - 1) == 0:
                log.warning("%s: malformed event line skipped: %s [%d so far]", where, exc, n)
            return
        if ev is not None:
            out.append(ev)


def _count_lines(fh: IO[bytes], size: int) -> int:
    """Newlines in the next *size* bytes of *fh* (read 1 MiB at a time: a resumed
    replay of a large log must not hold its whole prefix in memory)."""
    lines = 0
    while size > 0:
        block = fh.read(min(size, 1 << 20))
        if not block:
            break
        lines += block.count(b"\n")
        size -= len(block)
    return lines


class FileSource:
    """One or more saved ``conntrack -E`` logs, read once, in order.

    :meth:`position` says where the next read starts (file index, byte offset);
    a source built with ``resume=`` such a position continues from there, which
    is how a restarted ingest resumes a replay after the last acknowledged batch.
    """

    def __init__(self, paths: Sequence[str], resume: tuple[int, int] | None = None) -> None:
        self.paths = list(paths)
        self.counters: dict[str, int] = {"files": 0}
        self.exhausted = not self.paths
        self._parser = LineParser(self.counters)
        self._index = 0
        self._fh: IO[bytes] | None = None
        self._lineno = 0
        if resume is not None:
            index, offset = resume
            self._index = index
            if index >= len(self.paths):
                self.exhausted = True
            elif self._open_next() and offset:
                assert self._fh is not None
                self._lineno = _count_lines(self._fh, offset)
                self.counters["resumed_at_line"] = self._lineno

    def position(self) -> tuple[int, int]:
        """(file index, byte offset) where the next read starts."""
        if self._fh is None:
            return (self._index, 0)
        return (self._index - 1, self._fh.tell())

    def _open_next(self) -> bool:
        while self._index < len(self.paths):
            path = self.paths[self._index]
            self._index += 1
            try:
                self._fh = open(path, "rb")  # noqa: SIM115 - kept open across reads
            except OSError as exc:
                self.counters["unreadable_files"] = self.counters.get("unreadable_files", 0) + 1
                log.error("%s: cannot read event log: %s", path, exc.strerror)
                continue
            self._lineno = 0
            self.counters["files"] += 1
            return True
        self.exhausted = True
        return False

    def read(self, timeout_s: float) -> list[ConntrackEvent]:
        out: list[ConntrackEvent] = []
        if self.exhausted:
            return out
        if self._fh is None and not self._open_next():
            return out
        fh = self._fh
        assert fh is not None
        path = self.paths[self._index - 1]
        parse = self._parser.parse
        for _ in range(FILE_CHUNK):
            line = fh.readline()
            if not line:
                fh.close()
                self._fh = None
                if self._index >= len(self.paths):
                    self.exhausted = True
                break
            self._lineno += 1
            parse(line.decode("utf-8", "replace"), f"{path}:{self._lineno}", out)
        return out

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


class ProgramSource:
    """The ``conntrack`` program: first its listing (init_format), then its event stream.

    The program is restarted (after a pause that grows to 30 s) when it exits;
    each restart is counted and logged with the program's last error output.
    """

    def __init__(
        self, progname: str, init_format: str, fmt: str, *, restart_delay_s: float = 1.0
    ) -> None:
        self.init_argv = [progname, *shlex.split(init_format)] if init_format else []
        self.argv = [progname, *shlex.split(fmt)]
        self.counters: dict[str, int] = {"program_starts": 0, "program_exits": 0}
        self.exhausted = False
        self._parser = LineParser(self.counters)
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._pending: list[ConntrackEvent] = []
        self._first_backoff = restart_delay_s
        self._backoff = restart_delay_s
        self._next_start = 0.0
        if self.init_argv:
            self._pending = self._listing()

    def _listing(self) -> list[ConntrackEvent]:
        out: list[ConntrackEvent] = []
        cmd = shlex.join(self.init_argv)
        try:
            res = subprocess.run(self.init_argv, capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("%s: cannot list open connections: %s", cmd, exc)
            return out
        if res.returncode != 0:
            log.warning("%s exited %d: %s", cmd, res.returncode, res.stderr.decode()[-300:])
        for n, line in enumerate(res.stdout.decode("utf-8", "replace").splitlines(), 1):
            self._parser.parse(line, f"{cmd} line {n}", out, EventType.NEW)
        log.info("%s: %d open connections", cmd, len(out))
        return out

    def _start(self) -> None:
        try:
            self._proc = subprocess.Popen(
                self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
            )
        except OSError as exc:
            log.error("%s: cannot start: %s", shlex.join(self.argv), exc.strerror)
            self._proc = None
            self._schedule_restart()
            return
        self.counters["program_starts"] += 1
        os.set_blocking(self._proc.stdout.fileno(), False)  # type: ignore[union-attr]
        log.info("reading events from %s (pid %d)", shlex.join(self.argv), self._proc.pid)

    def _schedule_restart(self) -> None:
        self._next_start = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 30.0)

    def read(self, timeout_s: float) -> list[ConntrackEvent]:
        out, self._pending = self._pending, []
        if self._proc is None:
            if time.monotonic() < self._next_start:
                time.sleep(min(timeout_s, max(0.0, self._next_start - time.monotonic())))
                return out
            self._start()
            if self._proc is None:
                return out
        proc = self._proc
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], 0 if out else timeout_s)
        if not ready:
            return out
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return out
        if not chunk:
            self._on_exit(proc)
            return out
        self._backoff = self._first_backoff
        data = self._buf + chunk
        lines = data.split(b"\n")
        self._buf = lines.pop()
        where = f"{self.argv[0]} output"
        for line in lines:
            self._parser.parse(line.decode("utf-8", "replace"), where, out)
        return out

    def _on_exit(self, proc: subprocess.Popen[bytes]) -> None:
        rc = proc.wait()
        err = proc.stderr.read().decode("utf-8", "replace")[-500:] if proc.stderr else ""
        self.counters["program_exits"] += 1
        log.error("%s exited with status %d: %s", shlex.join(self.argv), rc, err.strip())
        self._proc = None
        self._buf = b""
        self._schedule_restart()

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()


class NetlinkSource:
    """The kernel's conntrack events over ctnetlink (see :mod:`nfflowd.conntrack.kernel`).

    The listener subscribes first, then the table is dumped, so a connection
    opened in between is seen at least once (the correlator counts the
    duplicate and keeps the first start).  After an overrun (ENOBUFS: the kernel
    dropped events) the table is dumped again: connections still open are
    re-learned with their kernel start time; those that ended during the
    overrun are lost (counted as ``enobufs``) unless reliable mode is on.
    """

    #: Datagrams read per call; each carries one event, so this bounds a batch.
    MAX_READS = 2000

    def __init__(self, settings: SourceSettings, *, dump_interval_s: float = 0.0) -> None:
        from nfflowd.conntrack import kernel
        from nfflowd.conntrack.netlink import DecodeCounters

        self._kernel = kernel
        # the dumps' decoder counters, kept across dumps: a kernel newer than our
        # headers shows its new attributes in dumps as much as in events
        self._dump_counters = DecodeCounters()
        if settings.set_sysctls:
            kernel.set_sysctls(settings.netns, acct=True, timestamp=True)
        found = kernel.kernel_settings(settings.netns)
        for key, value in found.items():
            if value != "1" and not key.endswith("events"):
                log.warning("%s = %s: see `nfflowd check`", key, value)
        self.listener = kernel.CtnetlinkListener(
            netns=settings.netns,
            rcvbuf=settings.rcvbuf,
            reliable=settings.reliable,
            kernel_time=True,  # CTA_TIMESTAMP_EVENT (kernel >= 6.14) when present
        )
        self.netns = settings.netns
        self.exhausted = False
        self.counters: dict[str, int] = {"resyncs": 0, "dumped": 0, "periodic_dumps": 0}
        self.dump_interval_s = dump_interval_s
        self._next_dump = time.monotonic() + dump_interval_s
        self._pending = self._dump()
        log.info(
            "listening to conntrack events%s (rcvbuf %d, %s mode); %d open connections",
            f" in netns {settings.netns}" if settings.netns else "",
            self.listener.rcvbuf,
            "reliable" if settings.reliable else "default",
            len(self._pending),
        )

    def _dump(self) -> list[ConntrackEvent]:
        try:
            events = self._kernel.dump_table(self.netns, counters=self._dump_counters)
        except (OSError, TimeoutError) as exc:
            log.error("conntrack table dump failed: %s", exc)
            return []
        self.counters["dumped"] += len(events)
        return events

    def read(self, timeout_s: float) -> list[ConntrackEvent]:
        out, self._pending = self._pending, []
        if not out:
            select.select([self.listener.fileno()], [], [], timeout_s)
        out += self.listener.recv_events(self.MAX_READS)
        if self.dump_interval_s and time.monotonic() >= self._next_dump:
            # the counters of open connections, for the active timeout (see correlate.py)
            self._next_dump = time.monotonic() + self.dump_interval_s
            self.counters["periodic_dumps"] += 1
            out += self._dump()
        if self.listener.take_resync():
            self.counters["resyncs"] += 1
            log.warning(
                "kernel dropped conntrack events (ENOBUFS #%d, rcvbuf now %d): resyncing",
                self.listener.enobufs,
                self.listener.rcvbuf,
            )
            out += self._dump()
        c = self.listener.counters
        self.counters["enobufs"] = self.listener.enobufs
        self.counters["malformed_messages"] = c.malformed + c.truncated
        self.counters["truncated_reads"] = self.listener.truncated_reads
        # attributes skipped in events kept (wrong size; types newer than our headers)
        d = self._dump_counters
        self.counters["bad_attrs"] = c.bad_attrs + d.bad_attrs
        self.counters["unknown_attrs"] = c.unknown_attrs + d.unknown_attrs
        return out

    def close(self) -> None:
        self.listener.close()


def dump_interval(active_timeout_s: int) -> float:
    """How often to dump the kernel table for the active timeout (0: never).

    A long connection is reported at the first dump after its active timeout has
    passed, so reports come at most this late; a dump of N connections costs
    about N / 146,000 s of CPU (measured decode rate).
    """
    if active_timeout_s <= 0:
        return 0.0
    return float(min(60, max(1, active_timeout_s // 4)))


def make_source(settings: Settings, checkpoint: persist.Slots) -> Source:
    """The configured source; a saved log resumes where *checkpoint* says."""
    src = settings.source
    if src.type == "file":
        resume = ckpt.load_checkpoint(checkpoint, src.path)
        if resume is not None:
            log.info("resuming the saved log(s) at file %d offset %d", *resume)
        return FileSource(src.path, resume=resume)
    if src.type == "conntrack":
        ct = settings.conntrack
        return ProgramSource(ct.progname, ct.init_format, ct.format)
    if src.type == "netlink":
        return NetlinkSource(src, dump_interval_s=dump_interval(settings.export.active_timeout))
    raise ValueError(f"unknown source type {src.type!r}")
