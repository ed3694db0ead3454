"""The mirror's dispatchers: ``screen`` (stdout/stderr) and ``syslog``.

These replace the 2009 tool's Log::Dispatch configuration (``<ptee><conf>``):
``Log::Dispatch::Screen`` and ``Log::Dispatch::Syslog`` with ``ident nfflowd``,
``facility local6``.  Every dispatcher takes whole lines (flow-tools CSV, no
trailing newline) and never raises from ``emit``/``flush``: failures are
counted in ``counters`` and reported once in the ``nfflowd.mirror`` log.

The message format (RFC 3164, priorities, facility and level names, address
parsing) is :mod:`nfflowd.formats.syslog`, re-exported here.

Framing: a unix datagram socket carries one message per datagram, like
syslog(3).  When the path is a SOCK_STREAM socket (connect fails with
EPROTOTYPE, as glibc detects it) each message ends with a NUL byte, as glibc
writes it.  ``udp://host:port`` sends one message per datagram.
``tcp://host:port`` uses RFC 6587 section 3.4.2 non-transparent framing with LF
as the trailer: it is what rsyslog's omfwd sends by default and what every
receiver (rsyslog imtcp/imptcp, syslog-ng) accepts without configuration,
and our lines never contain an LF (an embedded LF or NUL becomes a space).

Delivery: every line goes through a bounded FIFO (``max_buffer`` lines; beyond
that the oldest are dropped and counted; the mirror sizes it,
:func:`nfflowd.outputs.mirror.held_bound`, to every line of the batches its
inputs may leave unacknowledged, so that during an outage backpressure stops
the pipeline before the FIFO drops anything).  A send that fails (no socket,
refused, peer gone, socket full for ``send_timeout`` seconds) leaves the rest in
the FIFO; the next ``emit`` (at most every ``retry_interval`` seconds) or any
``flush`` reconnects and delivers them in order, each exactly once as far as
the sender can know.  Limits: a datagram a unix socket accepted is delivered;
over UDP an ICMP port unreachable is checked after every datagram (SO_ERROR),
which is exact on loopback but can lose the datagrams already in flight to a
remote server; over TCP a line the kernel accepted after the server died
without closing is lost, and a line cut by a broken connection is sent again
whole (the receiver may log the fragment).

Pacing (``udp://`` only, :mod:`nfflowd.outputs.pacing`): ``max_rate`` messages/s
and ``max_byte_rate`` bytes/s.  A line the pace holds back stays in the FIFO like
a line held during an outage (``pending``: its batch is not acknowledged yet),
and :meth:`SyslogDispatcher.wait` tells the mirror's loop when the next may go.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TextIO

from nfflowd.formats.syslog import FACILITIES as FACILITIES
from nfflowd.formats.syslog import FLOW_LINE_LEVEL as FLOW_LINE_LEVEL
from nfflowd.formats.syslog import LEVELS as LEVELS
from nfflowd.formats.syslog import clean_line as clean_line
from nfflowd.formats.syslog import message_prefix as message_prefix
from nfflowd.formats.syslog import parse_address as parse_address
from nfflowd.formats.syslog import rfc3164_timestamp as rfc3164_timestamp
from nfflowd.outputs.pacing import Pace

log = logging.getLogger("nfflowd.mirror")

#: At most one outage warning per dispatcher in this many seconds.
WARN_INTERVAL_S = 60.0

COUNTER_NAMES = (
    "lines_sent",
    "send_errors",
    "buffered",
    "dropped",
    "reconnects",
    "pending",
    "paced",
)


class Dispatcher(Protocol):
    """What the mirror stage hands its lines to."""

    counters: dict[str, int]

    def emit(self, lines: Sequence[str]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class ScreenDispatcher:
    """Writes lines to stdout (or stderr); the stream buffers, ``flush`` pushes them out."""

    def __init__(self, stream: TextIO | None = None, *, stderr: bool = False) -> None:
        self.stream: TextIO = (
            stream if stream is not None else (sys.stderr if stderr else sys.stdout)
        )
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._warned = False

    def emit(self, lines: Sequence[str]) -> None:
        if not lines:
            return
        try:
            self.stream.write("".join(f"{line}\n" for line in lines))
        except (OSError, ValueError) as exc:  # ValueError: I/O on a closed file
            self.counters["send_errors"] += 1
            self.counters["dropped"] += len(lines)
            self._failed(exc)
        else:
            self.counters["lines_sent"] += len(lines)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError) as exc:
            self.counters["send_errors"] += 1
            self._failed(exc)

    def close(self) -> None:
        """Flushes; the stream belongs to the caller (or is stdout) and stays open."""
        self.flush()

    def _failed(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            name = getattr(self.stream, "name", repr(self.stream))
            log.warning("screen dispatcher: cannot write to %s: %s; lines are dropped", name, exc)


def connected(
    family: int, stype: int, address: str | tuple[Any, ...], timeout: float
) -> socket.socket:
    """A socket connected to *address* (waiting at most *timeout*), or the error."""
    sock = socket.socket(family, stype)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


#: A dispatcher sending held lines tells the terminal stage this often (lines).
PROGRESS_EVERY = 64


class SyslogDispatcher:
    """Sends each line as one BSD-syslog message; holds lines while syslog is unreachable."""

    def __init__(
        self,
        address: str = "/dev/log",
        *,
        ident: str = "nfflowd",
        facility: str = "local6",
        severity: str = "info",
        max_buffer: int = 100_000,
        send_timeout: float = 0.5,
        retry_interval: float = 1.0,
        max_rate: int = 0,
        max_byte_rate: int = 0,
    ) -> None:
        """*max_rate*, *max_byte_rate*: the pace of a ``udp://`` address (0: no limit)."""
        fac, sev = facility.lower(), severity.lower()
        if fac not in FACILITIES:
            raise ValueError(f"syslog facility {facility!r} unknown; one of {sorted(FACILITIES)}")
        if sev not in LEVELS:
            raise ValueError(f"syslog severity {severity!r} unknown; one of {sorted(LEVELS)}")
        if max_buffer < 1:
            raise ValueError(f"syslog max_buffer must be at least 1, not {max_buffer}")
        self.address = address
        self.kind, self._host, self._port = parse_address(address)
        self.pace = Pace(max_rate, max_byte_rate) if self.kind == "udp" else Pace(0)
        self.ident = ident
        self.pri = FACILITIES[fac] * 8 + LEVELS[sev]
        self.max_buffer = max_buffer
        self.send_timeout = send_timeout
        self.retry_interval = retry_interval
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._hostname = (
            None if self.kind == "unix" else (socket.gethostname().split(".")[0] or "-")
        )
        self._queue: deque[bytes] = deque()  # unframed messages, oldest first
        self._sock: socket.socket | None = None
        self._stream = False  # framing: NUL (unix stream) or LF (tcp) after each message
        self._partial: tuple[bytes, int] | None = None  # (framed message, bytes already sent)
        # called every PROGRESS_EVERY lines sent (the terminal stage records its progress:
        # after an outage the held lines go in one burst, and a kill in it must not repeat
        # the lines of the whole burst, only those since the last call)
        self.on_sent: Callable[[], None] | None = None
        self._ever_connected = False
        self._retry_at = 0.0
        self._outage_since: float | None = None
        self._last_warning = -WARN_INTERVAL_S
        self._connect()

    @property
    def pending(self) -> int:
        """Lines held for delivery right now."""
        return len(self._queue) + (self._partial is not None)

    def emit(self, lines: Sequence[str]) -> None:
        if lines:
            prefix = message_prefix(self.pri, self.ident, time.time(), self._hostname)
            self._queue.extend(prefix + clean_line(line).encode() for line in lines)
            excess = self.pending - self.max_buffer
            for _ in range(max(0, excess)):
                self._queue.popleft()
            self.counters["dropped"] += max(0, excess)
        self._drain(force=False)
        held = min(len(lines), self.pending)
        if self._outage_since is None:  # held by the pace
            self.counters["paced"] += held
        else:
            self.counters["buffered"] += held
        self.counters["pending"] = self.pending

    def wait(self) -> float | None:
        """Seconds until the pace lets the next held line go (None: nothing held, or held
        by an outage: retried when the loop polls)."""
        if not self.pending or self._outage_since is not None:
            return None
        return self.pace.wait(time.monotonic())

    def flush(self) -> None:
        """Try to deliver everything held now (reconnecting if need be)."""
        self._drain(force=True)
        self.counters["pending"] = self.pending

    def close(self) -> None:
        self.flush()
        if self.pending:
            log.warning(
                "syslog %s: closing with %d lines undelivered (%s)",
                self.address,
                self.pending,
                self.counters,
            )
        self._disconnect()

    # -- connection ---------------------------------------------------------------------

    def _connect(self) -> bool:
        try:
            sock = self._open_socket()
        except (OSError, UnicodeError) as exc:  # UnicodeError: a host name IDNA rejects
            self.counters["send_errors"] += 1
            self._outage(self._describe(exc))
            return False
        sock.setblocking(False)
        self._sock = sock
        if self._ever_connected:
            self.counters["reconnects"] += 1
        self._ever_connected = True
        return True

    def _open_socket(self) -> socket.socket:
        timeout = self.send_timeout
        if self.kind == "unix":
            try:
                self._stream = False
                return connected(socket.AF_UNIX, socket.SOCK_DGRAM, self._host, timeout)
            except OSError as exc:
                if exc.errno != errno.EPROTOTYPE:  # EPROTOTYPE: the path is a stream socket
                    raise
            self._stream = True
            return connected(socket.AF_UNIX, socket.SOCK_STREAM, self._host, timeout)
        self._stream = self.kind == "tcp"
        stype = socket.SOCK_STREAM if self._stream else socket.SOCK_DGRAM
        family, _, _, _, sockaddr = socket.getaddrinfo(self._host, self._port, type=stype)[0]
        return connected(family, stype, sockaddr, timeout)

    def _disconnect(self) -> None:
        if self._partial is not None:  # resend the cut message whole on the next connection
            framed, _ = self._partial
            self._queue.appendleft(framed[:-1])
            self._partial = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _peer_alive(self, sock: socket.socket) -> bool:
        """Stream sockets: has the server closed its end (EOF or reset) since we last sent?"""
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    # -- delivery -----------------------------------------------------------------------

    def _drain(self, *, force: bool) -> None:
        if not self.pending:
            return
        now = time.monotonic()
        if not force and now < self._retry_at:
            return
        deadline = now + self.send_timeout
        for attempt in (1, 2):  # a dead connection gets one immediate reconnect
            if self._sock is None and not self._connect():
                break
            assert self._sock is not None
            if self._stream and not self._peer_alive(self._sock):
                self._disconnect()
                if attempt == 1:
                    continue
                self._outage("the server closed the connection")
                break
            error = self._send_queue(self._sock, deadline)
            if error is None:
                self._recovered()
                break
            self.counters["send_errors"] += 1
            if isinstance(error, TimeoutError):
                self._outage(str(error))
                break
            self._disconnect()
            if attempt == 2:
                self._outage(self._describe(error))

    def _send_queue(self, sock: socket.socket, deadline: float) -> OSError | None:
        """Send held messages oldest first until none is left or one fails (returned)."""
        terminator = b"\0" if self.kind == "unix" else b"\n"
        check_icmp = self.kind == "udp"
        now = time.monotonic()
        while self.pending:
            if self._partial is None:
                msg = self._queue[0]
                if not self.pace.take(len(msg), now):
                    return None  # the rest waits for the pace
                framed, done = (msg + terminator, 0) if self._stream else (msg, 0)
            else:
                framed, done = self._partial
            try:
                sent = sock.send(framed[done:] if done else framed, socket.MSG_NOSIGNAL)
                if check_icmp:
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, f"{os.strerror(err)} (ICMP error report)")
            except (BlockingIOError, InterruptedError):
                if not self._wait_writable(sock, deadline):
                    return TimeoutError(f"socket full for {self.send_timeout}s")
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    if not self._wait_writable(sock, deadline):
                        return TimeoutError(f"no buffer space (ENOBUFS) for {self.send_timeout}s")
                    continue
                if exc.errno == errno.EMSGSIZE and not self._stream:
                    self._queue.popleft()
                    self.counters["dropped"] += 1
                    self.counters["send_errors"] += 1
                    log.warning(
                        "syslog %s: a %d-byte message is too long; dropped",
                        self.address,
                        len(framed),
                    )
                    continue
                return exc
            if self._partial is None:
                self._queue.popleft()
            if done + sent < len(framed):
                self._partial = (framed, done + sent)
                continue
            self._partial = None
            self.counters["lines_sent"] += 1
            if self.on_sent is not None and not self.counters["lines_sent"] % PROGRESS_EVERY:
                self.on_sent()
        return None

    @staticmethod
    def _wait_writable(sock: socket.socket, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        _, writable, _ = select.select([], [sock], [], remaining)
        return bool(writable)

    # -- reporting ----------------------------------------------------------------------

    def _describe(self, exc: OSError | UnicodeError) -> str:
        if self.kind == "unix":
            if isinstance(exc, FileNotFoundError):
                return f"syslog socket {self._host} does not exist (is a syslog daemon running?)"
            if isinstance(exc, ConnectionRefusedError):
                return f"nobody receives on syslog socket {self._host} (syslog daemon stopped?)"
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror
        return str(exc)

    def _outage(self, reason: str) -> None:
        now = time.monotonic()
        self._retry_at = now + self.retry_interval
        if self._outage_since is None:
            self._outage_since = now
            if now - self._last_warning >= WARN_INTERVAL_S:
                self._last_warning = now
                log.warning(
                    "syslog %s: %s; holding lines (up to %d, oldest dropped beyond) and retrying",
                    self.address,
                    reason,
                    self.max_buffer,
                )

    def _recovered(self) -> None:
        if self._outage_since is not None:
            log.info(
                "syslog %s: delivering again after %.1fs (%s)",
                self.address,
                time.monotonic() - self._outage_since,
                self.counters,
            )
            self._outage_since = None
        self._retry_at = 0.0
