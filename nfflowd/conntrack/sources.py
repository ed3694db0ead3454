"""Where conntrack events come from: a saved log, the conntrack program, the kernel.

Every source has the same shape, so the ingest worker is one loop::

    n = source.read(buf, timeout_s, max_events)  # appends what is available now
    source.payload                    # how buf encodes events (nfflowd.messages.Payload)
    source.exhausted                  # a finite source (a saved log) has ended
    source.stateless                  # every event is self-contained (any correlator)
    source.counters                   # what it counted (lines, restarts, overruns…)
    source.conditions                 # coverage causes that hold while it reads (no_counters…)
    source.gaps                       # coverage gaps it noticed, for ingest to journal and clear

A source moves bytes: it appends the events as it got them (text lines, or the
kernel's datagrams framed with their receive time) to the batch being built,
and decodes nothing; the correlator that receives the batch does
(:mod:`nfflowd.conntrack.payloads`).  So ingest's work per event is a read and a
copy, and nothing it reads can make it fail: a malformed line or message is the
correlator's to count.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import IO, Protocol

from nfflowd.config import Settings, SourceSettings
from nfflowd.conntrack import checkpoint as ckpt
from nfflowd.messages import Payload
from nfflowd.pipeline import persist
from nfflowd.pipeline.coverage import Gap, now_ms

log = logging.getLogger("nfflowd.source")

#: Bytes a file source reads per call (its batch ends at the last whole line).
FILE_BLOCK = 256 << 10
#: Most bytes of the conntrack program's error output kept for its exit message.
STDERR_TAIL = 2000
#: At most one log line of the program's error output per this many seconds.
STDERR_LOG_INTERVAL_S = 10.0


class Source(Protocol):
    payload: int
    where: str
    exhausted: bool
    stateless: bool
    counters: dict[str, int]
    conditions: list[str]
    gaps: list[Gap]

    def read(self, out: bytearray, timeout_s: float, max_events: int) -> int: ...

    def close(self) -> None: ...


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
    """One or more saved ``conntrack -E`` logs, read once, in order, in blocks of lines.

    :meth:`position` says where the next read starts (file index, byte offset);
    a source built with ``resume=`` such a position continues from there, which
    is how a restarted ingest resumes a replay after the last acknowledged batch.
    After a read, ``where`` and :attr:`read_line` name the file and the number of
    the first line it returned (for the correlator's messages about a bad line).
    A read returns lines of one file; at the end of a file it returns none.
    """

    payload: int = Payload.TEXT
    stateless: bool = False

    def __init__(self, paths: Sequence[str], resume: tuple[int, int] | None = None) -> None:
        self.paths = list(paths)
        self.counters: dict[str, int] = {"files": 0, "lines": 0}
        self.conditions: list[str] = []
        self.gaps: list[Gap] = []
        self.exhausted = not self.paths
        self.where = ""
        self.line = 1  # number of the next line in the current file
        self.read_line = 1  # number of the first line the last read returned
        self._index = 0
        self._fh: IO[bytes] | None = None
        if resume is not None:
            index, offset = resume
            self._index = index
            if index >= len(self.paths):
                self.exhausted = True
            elif self._open_next() and offset:
                assert self._fh is not None
                self.line = 1 + _count_lines(self._fh, offset)
                self.counters["resumed_at_line"] = self.line - 1

    @property
    def open(self) -> bool:
        """A file is being read (False between two files, and at the end)."""
        return self._fh is not None

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
            self.where = path
            self.line = 1
            self.counters["files"] += 1
            return True
        self.exhausted = True
        return False

    def read(self, out: bytearray, timeout_s: float, max_events: int) -> int:
        """Append whole lines of the current file (a block, at most *max_events*) to *out*.

        A read never spans two files, so a batch's lines have one ``where``."""
        if self.exhausted or (self._fh is None and not self._open_next()):
            return 0
        fh = self._fh
        assert fh is not None
        block = fh.read(FILE_BLOCK)
        if len(block) == FILE_BLOCK:
            cut = block.rfind(b"\n") + 1
            if cut:  # the partial last line is read again next time
                fh.seek(cut - len(block), os.SEEK_CUR)
                block = block[:cut]
        n = block.count(b"\n")
        if n > max_events:
            cut = _nth_newline(block, max_events) + 1
            fh.seek(cut - len(block), os.SEEK_CUR)
            block, n = block[:cut], max_events
        if not block:
            fh.close()
            self._fh = None
            if self._index >= len(self.paths):
                self.exhausted = True
            return 0
        if not block.endswith(b"\n"):  # the file's last line lacks its newline
            block += b"\n"
            n += 1
        out += block
        self.read_line = self.line
        self.line += n
        self.counters["lines"] += n
        return n

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


def _nth_newline(block: bytes, n: int) -> int:
    """The offset of the *n*-th newline (1-based) of *block*."""
    pos = -1
    for _ in range(n):
        pos = block.index(b"\n", pos + 1)
    return pos


class ProgramSource:
    """The ``conntrack`` program: first its listing (init_format), then its event stream.

    The program is restarted (after a pause that grows to 30 s) when it exits;
    each restart is counted and logged with the program's last error output.
    Its error output is read as it comes (conntrack-tools reports ENOBUFS there,
    exactly under load: a pipe nobody reads would block it after 64 KiB and stop
    the events), counted (``program_stderr_lines``) and logged, rate-limited.
    """

    payload: int = Payload.TEXT
    stateless: bool = False

    def __init__(
        self, progname: str, init_format: str, fmt: str, *, restart_delay_s: float = 1.0
    ) -> None:
        self.init_argv = [progname, *shlex.split(init_format)] if init_format else []
        self.argv = [progname, *shlex.split(fmt)]
        self.where = f"{progname} output"
        self.counters: dict[str, int] = {
            "program_starts": 0,
            "program_exits": 0,
            "program_stderr_lines": 0,
            "lines": 0,
        }
        # its lines carry counters only with accounting on; times are its own (not the kernel's)
        self.conditions = [c for c in kernel_conditions(None) if c == "no_counters"]
        self.gaps: list[Gap] = []
        self._exited: tuple[int, str] | None = None  # when and how the program last exited
        self.exhausted = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._err_tail = b""
        self._next_err_log = 0.0
        self._pending = b""
        self._first_backoff = restart_delay_s
        self._backoff = restart_delay_s
        self._next_start = 0.0
        if self.init_argv:
            self._pending = self._listing()

    def _listing(self) -> bytes:
        cmd = shlex.join(self.init_argv)
        try:
            res = subprocess.run(self.init_argv, capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("%s: cannot list open connections: %s", cmd, exc)
            return b""
        if res.returncode != 0:
            err = res.stderr.decode("utf-8", "replace")[-300:]
            log.warning("%s exited %d: %s", cmd, res.returncode, err)
        out = res.stdout if res.stdout.endswith(b"\n") or not res.stdout else res.stdout + b"\n"
        log.info("%s: %d lines of open connections", cmd, out.count(b"\n"))
        return out

    def _start(self) -> None:
        try:
            self._proc = subprocess.Popen(
                self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
            )
        except OSError as exc:
            log.error("%s: cannot start: %s", shlex.join(self.argv), exc.strerror)
            if self._exited is None:
                self._exited = (now_ms(), f"could not start ({exc.strerror})")
            self._proc = None
            self._schedule_restart()
            return
        self.counters["program_starts"] += 1
        if self._exited is not None:
            since, how = self._exited
            self._exited = None
            detail = f"the conntrack program {how}; restarted"
            self.gaps.append(Gap(since, max(since, now_ms()), "not_listening", "ingest", detail))
        os.set_blocking(self._proc.stdout.fileno(), False)  # type: ignore[union-attr]
        os.set_blocking(self._proc.stderr.fileno(), False)  # type: ignore[union-attr]
        self._err_tail = b""
        log.info("reading events from %s (pid %d)", shlex.join(self.argv), self._proc.pid)

    def _schedule_restart(self) -> None:
        self._next_start = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 30.0)

    def read(self, out: bytearray, timeout_s: float, max_events: int) -> int:
        n = 0
        if self._pending:
            n = self._append(out, self._pending)
            self._pending = b""
        if self._proc is None:
            if time.monotonic() < self._next_start:
                time.sleep(min(timeout_s, max(0.0, self._next_start - time.monotonic())))
                return n
            self._start()
            if self._proc is None:
                return n
        proc = self._proc
        assert proc.stdout is not None and proc.stderr is not None
        fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
        ready, _, _ = select.select([fd, err_fd], [], [], 0 if n else timeout_s)
        if err_fd in ready:
            self._read_stderr(err_fd)
        if fd not in ready:
            return n
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return n
        if not chunk:
            self._on_exit(proc)
            return n
        self._backoff = self._first_backoff
        data = self._buf + chunk
        cut = data.rfind(b"\n") + 1
        self._buf = data[cut:]
        return n + self._append(out, data[:cut])

    def _append(self, out: bytearray, lines: bytes) -> int:
        out += lines
        n = lines.count(b"\n")
        self.counters["lines"] += n
        return n

    def _read_stderr(self, fd: int) -> None:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        if not chunk:
            return
        self.counters["program_stderr_lines"] += chunk.count(b"\n")
        self._err_tail = (self._err_tail + chunk)[-STDERR_TAIL:]
        now = time.monotonic()
        if now >= self._next_err_log:
            self._next_err_log = now + STDERR_LOG_INTERVAL_S
            last = chunk.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode("utf-8", "replace")
            log.warning(
                "%s says: %s [%d lines of error output so far]",
                self.argv[0],
                last[-300:],
                self.counters["program_stderr_lines"],
            )

    def _on_exit(self, proc: subprocess.Popen[bytes]) -> None:
        rc = proc.wait()
        if proc.stderr is not None:
            with contextlib.suppress(OSError):  # non-blocking: read() may give None
                self._err_tail = (self._err_tail + (proc.stderr.read() or b""))[-STDERR_TAIL:]
        err = self._err_tail.decode("utf-8", "replace")[-500:]
        self.counters["program_exits"] += 1
        self._exited = (now_ms(), f"exited with status {rc}")
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

    **DESTROY only when the kernel stamps times.**  With ``nf_conntrack_acct`` and
    ``nf_conntrack_timestamp`` on where the source reads, a DESTROY carries all a
    flow record needs (both tuples, counters, the kernel's start and stop), so the
    source subscribes to the DESTROY group alone: half the events, and every one
    self-contained (:attr:`stateless`: batches may go to any correlator).  Without
    them (or with ``<source> subscribe all``, or for real-time NAT events:
    ``<collector> nat_events realtime``) it also subscribes to NEW (the start
    time comes from there) and dumps the table at start, so connections opened
    before are known; ``nfflowd check`` says what that costs.  The active timeout
    dumps the table periodically: its entries carry the counters of long connections.

    After an overrun (ENOBUFS: the kernel dropped events) the table is dumped
    again in NEW+DESTROY mode (connections still open are re-learned with their
    kernel start time); those that ended during the overrun are lost (counted as
    ``enobufs``) unless reliable mode is on.  In DESTROY-only mode a dump cannot
    bring a lost DESTROY back, so none is made: the overrun is counted and logged.
    """

    payload: int = Payload.NETLINK
    where: str = "ctnetlink"

    def __init__(
        self, settings: SourceSettings, *, dump_interval_s: float = 0.0, new_events: bool = False
    ) -> None:
        """*new_events*: NEW events are wanted whatever the kernel stamps (real-time NAT
        events: the create event when a connection opens)."""
        from nfflowd.conntrack import kernel

        self._kernel = kernel
        if settings.set_sysctls:
            kernel.set_sysctls(settings.netns, acct=True, timestamp=True)
        found = kernel.kernel_settings(settings.netns)
        self.conditions = conditions(found)
        self.gaps: list[Gap] = []
        for key, value in found.items():
            if value != "1" and not key.endswith("events"):
                log.warning("%s = %s: see `nfflowd check`", key, value)
        self.destroy_only = settings.subscribe == "auto" and destroy_only(found) and not new_events
        self.stateless = self.destroy_only and not dump_interval_s
        self.listener = kernel.CtnetlinkListener(
            netns=settings.netns,
            rcvbuf=settings.rcvbuf,
            reliable=settings.reliable,
            kernel_time=True,  # CTA_TIMESTAMP_EVENT (kernel >= 6.14) when present
            destroy_only=self.destroy_only,
        )
        self.netns = settings.netns
        self.exhausted = False
        self.counters: dict[str, int] = {
            "resyncs": 0,
            "dumped": 0,
            "periodic_dumps": 0,
            "datagrams": 0,
            "enobufs": 0,
            "truncated_reads": 0,
            "destroy_only": int(self.destroy_only),
        }
        self.dump_interval_s = dump_interval_s
        self._next_dump = time.monotonic() + dump_interval_s
        self._pending = bytearray()
        self._pending_n = 0 if self.destroy_only else self._dump(self._pending)
        self._last_read_ms = now_ms()
        log.info(
            "listening to conntrack %s%s (rcvbuf %d, %s mode)%s",
            "DESTROY events (the kernel stamps start and stop)"
            if self.destroy_only
            else "NEW and DESTROY events",
            f" in netns {settings.netns}" if settings.netns else "",
            self.listener.rcvbuf,
            "reliable" if settings.reliable else "default",
            "" if self.destroy_only else f"; {self._pending_n} open connections",
        )

    def _dump(self, out: bytearray) -> int:
        try:
            n = self._kernel.dump_frames(out, self.netns)
        except (OSError, TimeoutError) as exc:
            log.error("conntrack table dump failed: %s", exc)
            return 0
        self.counters["dumped"] += n
        return n

    def read(self, out: bytearray, timeout_s: float, max_events: int) -> int:
        n = self._pending_n
        if n:
            out += self._pending
            self._pending, self._pending_n = bytearray(), 0
        else:
            select.select([self.listener.fileno()], [], [], timeout_s)
        got = self.listener.recv_frames(out, max(1, max_events - n))
        self.counters["datagrams"] += got
        n += got
        if self.dump_interval_s and time.monotonic() >= self._next_dump:
            # the counters of open connections, for the active timeout (see correlate/)
            self._next_dump = time.monotonic() + self.dump_interval_s
            self.counters["periodic_dumps"] += 1
            n += self._dump(out)
        if self.listener.take_resync():
            self.counters["resyncs"] += not self.destroy_only
            log.warning(
                "kernel dropped conntrack events (ENOBUFS #%d, rcvbuf now %d)%s",
                self.listener.enobufs,
                self.listener.rcvbuf,
                ": those DESTROYs are lost" if self.destroy_only else ": resyncing",
            )
            if not self.destroy_only:
                n += self._dump(out)
            lost = (
                "DESTROY events lost (DESTROY-only mode: no resync can bring them back)"
                if self.destroy_only
                else "events lost; connections that ended meanwhile are lost, open ones "
                "re-learned by the resync dump"
            )
            detail = f"ENOBUFS #{self.listener.enobufs}: the kernel dropped conntrack {lost}"
            end = now_ms()
            self.gaps.append(Gap(min(self._last_read_ms, end), end, "enobufs", "ingest", detail))
        self._last_read_ms = now_ms()
        self.counters["enobufs"] = self.listener.enobufs
        self.counters["truncated_reads"] = self.listener.truncated_reads
        return n

    def close(self) -> None:
        self.listener.close()


#: Coverage conditions (nfflowd.pipeline.coverage.CAUSES) by the sysctl whose absence makes them.
CONDITIONS = {"acct": "no_counters", "timestamp": "no_timestamps"}


def conditions(sysctls: Mapping[str, str | None]) -> list[str]:
    """The coverage conditions of these kernel settings: the accounting and timestamp
    sysctls that are not on (an unreadable one: not known to be off, not listed)."""
    out = []
    for key, cause in CONDITIONS.items():
        value = sysctls.get(f"net.netfilter.nf_conntrack_{key}")
        if value is not None and value != "1":
            out.append(cause)
    return out


def kernel_conditions(netns: str | None) -> list[str]:
    """:func:`conditions` of the kernel's settings where the conntrack program reads."""
    from nfflowd.conntrack import kernel

    try:
        return conditions(kernel.kernel_settings(netns))
    except OSError:
        return []


def destroy_only(sysctls: dict[str, str | None]) -> bool:
    """True when a DESTROY carries everything (counters and the kernel's start and stop)."""
    return all(sysctls.get(f"net.netfilter.nf_conntrack_{k}") == "1" for k in ("acct", "timestamp"))


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
        return NetlinkSource(
            src,
            dump_interval_s=dump_interval(settings.export.active_timeout),
            new_events=settings.export.nat_realtime,
        )
    raise ValueError(f"unknown source type {src.type!r}")
