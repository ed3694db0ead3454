"""UDP sender for NetFlow datagrams (one collector per instance).

Socket choice: a *connected* UDP socket.  On Linux an unconnected socket that
uses ``sendto`` never learns about ICMP errors (unless ``IP_RECVERR`` is read
from the error queue), so a collector that is down would be invisible.  A
connected socket records the ICMP port unreachable a datagram brings back as a
pending error: ``SO_ERROR`` reads (and clears) it, and otherwise the next send
fails with ``ECONNREFUSED`` (transmitting nothing).  We read ``SO_ERROR`` after
every send: to a collector on this host (loopback, a local namespace) the ICMP
error has come back before ``send`` returns, so a refusal is known for the very
datagram that was refused, and :meth:`UdpCollector.send` says so (``REFUSED``):
the exporter keeps that datagram and tries it again later (the collector is
down; its batch is not acknowledged meanwhile).  To a remote collector the
error comes back a round trip later, so the datagrams in flight meanwhile are
lost (counted as ``refused``, once each refusal).  Nothing here raises for a
network error: every failure is counted and kept in ``last_error``.

``connect`` on UDP sends nothing; it only fixes the peer (and the source
address, from the route or from the ``source`` we bound to).  The socket has a
send timeout: a full send buffer is waited for (backpressure), not forever.
"""

from __future__ import annotations

import errno
import logging
import socket
import time

log = logging.getLogger("nfflowd.export")

#: Requested SO_SNDBUF: room for bursts of ~2800 full v5 datagrams (1464 bytes).
#: The kernel caps it at net.core.wmem_max (and reports twice the value it keeps).
SNDBUF_BYTES = 4 * 1024 * 1024
#: A send waits at most this long for buffer space before the datagram is dropped.
SEND_TIMEOUT_S = 1.0
#: At most one warning per collector in this many seconds; the rest are counted.
WARN_INTERVAL_S = 60.0
#: A collector whose name did not resolve is looked up again at most this often.
REOPEN_INTERVAL_S = 5.0

#: What :meth:`UdpCollector.send` returns: the kernel took the datagram (SENT), the
#: collector refused it (REFUSED: keep it, try again later), or it is dropped and
#: counted (DROPPED: a send error no retry is expected to cure).
SENT, REFUSED, DROPPED = "sent", "refused", "dropped"

COUNTER_NAMES = (
    "datagrams_sent",
    "bytes_sent",
    "send_errors",
    "refused",
    "refused_lost",
    "unbound_source",
    "resolve_errors",
)


class UdpCollector:
    """Sends NetFlow datagrams to one collector; never raises for network errors."""

    def __init__(self, address: str, port: int, *, source: str | None = None) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"collector {address}: port {port} is out of range 1-65535")
        self.address = address
        self.port = port
        self.source = source
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.last_error: str | None = None
        #: Effective SO_SNDBUF as the kernel reports it (0 until the socket exists).
        self.sndbuf = 0
        self._sock: socket.socket | None = None
        self._closed = False
        self._last_warning = -WARN_INTERVAL_S
        self._next_open = 0.0
        self._open()

    @property
    def target(self) -> str:
        return (
            f"[{self.address}]:{self.port}"
            if ":" in self.address
            else f"{self.address}:{self.port}"
        )

    def _open(self) -> bool:
        """Resolve, create, bind (optionally) and connect; False (counted) on failure."""
        now = time.monotonic()
        if now < self._next_open:
            return False
        self._next_open = now + REOPEN_INTERVAL_S
        try:
            infos = socket.getaddrinfo(self.address, self.port, type=socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError) as exc:
            self.counters["resolve_errors"] += 1
            self._error(f"cannot resolve collector {self.address!r}: {exc}")
            return False
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF_BYTES)
            self.sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            sock.settimeout(SEND_TIMEOUT_S)
            if self.source:
                self._bind_source(sock, family)
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            self._error(f"cannot open a socket to collector {self.target}: {exc}")
            return False
        self._sock = sock
        return True

    def _bind_source(self, sock: socket.socket, family: int) -> None:
        """Bind to the configured source address (port 0), or warn once and stay unbound."""
        src = self.source
        assert src is not None
        try:
            infos = socket.getaddrinfo(src, 0, family, socket.SOCK_DGRAM, 0, socket.AI_NUMERICHOST)
        except (socket.gaierror, UnicodeError):
            self.counters["unbound_source"] += 1
            log.warning(
                "collector %s: source address %s is not a literal address of the collector's "
                "family (IPv%d); sending from the address the route chooses",
                self.target,
                src,
                4 if family == socket.AF_INET else 6,
            )
            return
        try:
            sock.bind(infos[0][4])
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL:
                raise
            self.counters["unbound_source"] += 1
            log.warning(
                "collector %s: source address %s is not an address of this host "
                "(EADDRNOTAVAIL); sending from the address the route chooses.  The 2009 "
                "configuration's first <flow_send> arg is the firewall's interface address, "
                "which does not exist on a test machine; fix it or remove it",
                self.target,
                src,
            )

    def send(self, datagram: bytes) -> str:
        """Send one datagram: SENT, REFUSED (the collector's host said port unreachable:
        not delivered, send it again later) or DROPPED.  Counted, never raised."""
        if self._sock is None and (self._closed or not self._open()):
            self.counters["send_errors"] += 1
            if self._closed:
                self.last_error = f"collector {self.target}: send after close"
            return DROPPED
        sock = self._sock
        assert sock is not None
        for attempt in (1, 2):
            try:
                sent = sock.send(datagram)
                refused = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
            except ConnectionRefusedError:
                # a refusal of an earlier datagram (a remote collector: the ICMP error came
                # back late): that one was lost; this one was not sent: once more at once
                self._refused()
                if attempt == 1:
                    self.counters["refused_lost"] += 1
                if attempt == 1:
                    continue
                return REFUSED
            except TimeoutError:
                self._error(f"collector {self.target}: send buffer full for {SEND_TIMEOUT_S}s")
            except OSError as exc:
                self._error(f"collector {self.target}: send of {len(datagram)} bytes: {exc}")
            else:
                if refused:
                    self._refused()
                    return REFUSED
                self.counters["datagrams_sent"] += 1
                self.counters["bytes_sent"] += sent
                return SENT
            break
        self.counters["send_errors"] += 1
        return DROPPED

    def _refused(self) -> None:
        self.counters["refused"] += 1
        self._error(
            f"collector {self.target} refused datagrams (ICMP port unreachable): "
            "is the collector running?  Holding them and trying again"
        )

    def _error(self, text: str) -> None:
        self.last_error = text
        now = time.monotonic()
        if now - self._last_warning >= WARN_INTERVAL_S:
            self._last_warning = now
            log.warning("%s (counters so far: %s)", text, self.counters)

    def close(self) -> None:
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None
