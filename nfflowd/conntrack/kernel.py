"""ctnetlink sockets: the event listener, table dumps, network namespaces, sysctls.

Decoding is :mod:`nfflowd.conntrack.netlink` (pure); this module only moves bytes.

Network namespaces: a socket stays bound to the namespace it was *created* in, so
to listen inside another namespace we create the socket there and use it from here.
:func:`run_in_netns` does that in a short-lived dedicated thread that calls
``setns(fd, CLONE_NEWNET)`` through ctypes (Python 3.11 has no ``os.setns``).
setns() changes only the calling thread's namespace, the thread exits right after
(so nothing else ever runs in the foreign namespace), and file descriptors belong
to the whole process, so the socket needs no passing back.  Calling setns() in the
main thread would move the whole rest of the process; forking a child and
returning the fd with ``socket.send_fds`` would also work but forking a process
that already runs other threads (ZeroMQ I/O threads) is unsafe and much slower.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from nfflowd.conntrack.netlink import (
    NFNLGRP_CONNTRACK_DESTROY,
    NFNLGRP_CONNTRACK_NEW,
    NFNLGRP_CONNTRACK_UPDATE,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_MIN_TYPE,
    DecodeCounters,
    decode_messages,
    dump_request,
    error_of,
    message_types,
    strerror,
)
from nfflowd.messages import DATAGRAM_FRAME as FRAME
from nfflowd.messages import ConntrackEvent

T = TypeVar("T")

NETLINK_NETFILTER = 12  # include/uapi/linux/netlink.h
SOL_NETLINK = 270  # include/linux/socket.h
NETLINK_ADD_MEMBERSHIP = 1  # include/uapi/linux/netlink.h
NETLINK_BROADCAST_ERROR = 4
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33  # include/uapi/asm-generic/socket.h
CLONE_NEWNET = 0x40000000  # include/uapi/linux/sched.h
NETNS_RUN_DIR = "/run/netns"  # where `ip netns add` keeps its bind mounts

DEFAULT_RCVBUF = 64 << 20
DEFAULT_RCVBUF_MAX = 512 << 20
#: One netlink datagram: an event is < 1 KiB, a dump chunk at most 32 KiB.
RECV_BUFSIZE = 128 << 10

SYSCTLS = (
    "net.netfilter.nf_conntrack_acct",
    "net.netfilter.nf_conntrack_timestamp",
    "net.netfilter.nf_conntrack_events",
)


def _netns_path(name: str) -> str:
    return name if "/" in name else os.path.join(NETNS_RUN_DIR, name)


def run_in_netns(name: str, fn: Callable[[], T], timeout: float = 30.0) -> T:
    """Run ``fn`` in a fresh thread that first enters network namespace ``name``.

    ``name`` is an `ip netns` name or a path such as /proc/PID/ns/net.  Exceptions
    from ``fn`` or from setns() are re-raised here.
    """
    box: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(_netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({name!r}, CLONE_NEWNET): {os.strerror(err)}")
            finally:
                os.close(fd)
            box.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=body, name=f"netns:{name}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"netns {name!r}: no result within {timeout}s")
    if failure:
        raise failure[0]
    return box[0]


def open_in_netns(
    name: str,
    family: int = socket.AF_NETLINK,
    sock_type: int = socket.SOCK_RAW,
    proto: int = NETLINK_NETFILTER,
) -> socket.socket:
    """A socket created inside network namespace ``name`` (it stays bound to it)."""
    return run_in_netns(name, lambda: socket.socket(family, sock_type | socket.SOCK_CLOEXEC, proto))


def _netfilter_socket(netns: str | None) -> socket.socket:
    if netns is None:
        return socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER
        )
    return open_in_netns(netns)


def _set_rcvbuf(sock: socket.socket, size: int) -> int:
    """SO_RCVBUFFORCE (root, ignores rmem_max), else SO_RCVBUF; returns what took effect."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


class CtnetlinkListener:
    """Conntrack events from the kernel (groups NEW and DESTROY, optionally UPDATE).

    Default mode: when the socket overflows the kernel drops events and reports
    ENOBUFS once; we count it (``enobufs``), double the buffer up to ``rcvbuf_max``
    and set ``resync_needed`` (the caller should :meth:`dump` and reconcile).
    Reliable mode (``reliable=True``): NETLINK_BROADCAST_ERROR + NETLINK_NO_ENOBUFS;
    the kernel keeps undelivered DESTROY events and re-delivers them later instead
    of reporting ENOBUFS.  NEW/UPDATE events can still be lost, silently (measured:
    2000-flow burst into an 8 KiB buffer: all 2000 DESTROY arrived, 6 NEW), which
    is fine for flow export: a DESTROY carries tuples, counters and start/stop.
    """

    def __init__(
        self,
        *,
        netns: str | None = None,
        rcvbuf: int = DEFAULT_RCVBUF,
        rcvbuf_max: int = DEFAULT_RCVBUF_MAX,
        reliable: bool = False,
        updates: bool = False,
        kernel_time: bool = False,
        destroy_only: bool = False,
    ) -> None:
        self.netns = netns
        self.kernel_time = kernel_time  # time_ns from CTA_TIMESTAMP_EVENT when present
        self.reliable = reliable
        self.rcvbuf_max = max(rcvbuf, rcvbuf_max)
        self.counters = DecodeCounters()
        self.enobufs = 0  # overruns reported by the kernel (events were lost)
        self.truncated_reads = 0  # datagrams larger than our receive buffer
        self.resync_needed = False
        self._requested = rcvbuf
        self._buf = bytearray(RECV_BUFSIZE)
        self._view = memoryview(self._buf)
        self._sock = _netfilter_socket(netns)
        try:
            self._sock.bind((0, 0))
            groups = [NFNLGRP_CONNTRACK_DESTROY]
            if not destroy_only:
                groups.append(NFNLGRP_CONNTRACK_NEW)
            if updates:
                groups.append(NFNLGRP_CONNTRACK_UPDATE)
            for group in groups:
                self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            if reliable:
                self._sock.setsockopt(SOL_NETLINK, NETLINK_BROADCAST_ERROR, 1)
                self._sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
            self.rcvbuf = _set_rcvbuf(self._sock, rcvbuf)
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise

    def fileno(self) -> int:
        """Non-blocking descriptor for poll()/select()."""
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> CtnetlinkListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def take_resync(self) -> bool:
        """True once after events were lost (then dump the table to reconcile)."""
        needed, self.resync_needed = self.resync_needed, False
        return needed

    def _overrun(self) -> None:
        self.enobufs += 1
        self.resync_needed = True
        if self._requested < self.rcvbuf_max:
            self._requested = min(self._requested * 2, self.rcvbuf_max)
            self.rcvbuf = _set_rcvbuf(self._sock, self._requested)

    def recv_events(self, max_reads: int = 100_000) -> list[ConntrackEvent]:
        """Decode everything readable now (at most ``max_reads`` datagrams); never blocks."""
        events: list[ConntrackEvent] = []
        flags = socket.MSG_DONTWAIT | socket.MSG_TRUNC
        size = len(self._buf)
        for _ in range(max_reads):
            try:
                n = self._sock.recv_into(self._buf, size, flags)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._overrun()
                continue
            if n > size:
                self.truncated_reads += 1
                n = size
            now = time.time_ns()
            events += decode_messages(
                self._view[:n], now, self.counters, kernel_time=self.kernel_time
            )
        return events

    def recv_frames(self, out: bytearray, max_reads: int = 100_000) -> int:
        """Append every datagram readable now (at most *max_reads*) to *out*, framed with
        its receive time (a NETLINK payload, nfflowd.conntrack.payloads); never blocks.
        Returns how many were appended.  Nothing is decoded here: ingest moves bytes."""
        flags = socket.MSG_DONTWAIT | socket.MSG_TRUNC
        size = len(self._buf)
        recv_into, view, pack, now = self._sock.recv_into, self._view, FRAME.pack, time.time_ns
        got = 0
        for _ in range(max_reads):
            try:
                n = recv_into(self._buf, size, flags)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self._overrun()
                continue
            if n > size:
                self.truncated_reads += 1
                n = size
            out += pack(now(), n)
            out += view[:n]
            got += 1
        return got

    def dump(self, timeout: float = 30.0, family: int = socket.AF_UNSPEC) -> list[ConntrackEvent]:
        """The whole conntrack table (type NEW, start_ns from the kernel), separate socket."""
        return dump_table(self.netns, family=family, timeout=timeout)


def dump_table(
    netns: str | None = None,
    family: int = socket.AF_UNSPEC,
    timeout: float = 30.0,
    counters: DecodeCounters | None = None,
) -> list[ConntrackEvent]:
    """Dump the conntrack table over its own socket; raise OSError/TimeoutError on failure."""
    counters = DecodeCounters() if counters is None else counters
    done, errors = counters.done, counters.errors
    seq = time.monotonic_ns() & 0x7FFFFFFF or 1
    events: list[ConntrackEvent] = []
    buf = bytearray(RECV_BUFSIZE)
    deadline = time.monotonic() + timeout
    with _netfilter_socket(netns) as sock:
        sock.bind((0, 0))
        _set_rcvbuf(sock, 4 << 20)
        sock.setblocking(False)
        sock.send(dump_request(seq, family))
        while counters.done == done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"conntrack dump: no NLMSG_DONE within {timeout}s")
            readable, _, _ = select.select([sock], [], [], left)
            if not readable:
                continue
            try:
                n = sock.recv_into(buf, len(buf), socket.MSG_TRUNC)
            except BlockingIOError:
                continue
            events.extend(
                decode_messages(memoryview(buf)[: min(n, len(buf))], time.time_ns(), counters)
            )
            if counters.errors != errors:
                raise OSError(counters.last_errno, f"conntrack dump: {counters.last_error}")
    return events


def dump_frames(
    out: bytearray,
    netns: str | None = None,
    family: int = socket.AF_UNSPEC,
    timeout: float = 30.0,
) -> int:
    """Dump the conntrack table over its own socket into *out* as framed datagrams (a
    NETLINK payload: the correlator decodes the entries); return the entries appended.
    Raise OSError (the kernel's NLMSG_ERROR) or TimeoutError; *out* is then unchanged."""
    seq = time.monotonic_ns() & 0x7FFFFFFF or 1
    buf = bytearray(RECV_BUFSIZE)
    view = memoryview(buf)
    got = bytearray()
    entries = 0
    deadline = time.monotonic() + timeout
    with _netfilter_socket(netns) as sock:
        sock.bind((0, 0))
        _set_rcvbuf(sock, 4 << 20)
        sock.setblocking(False)
        sock.send(dump_request(seq, family))
        done = False
        while not done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"conntrack dump: no NLMSG_DONE within {timeout}s")
            readable, _, _ = select.select([sock], [], [], left)
            if not readable:
                continue
            try:
                n = min(sock.recv_into(buf, len(buf), socket.MSG_TRUNC), len(buf))
            except BlockingIOError:
                continue
            kinds = message_types(view[:n])
            if NLMSG_ERROR in kinds:
                err = error_of(view[:n])
                if err:
                    raise OSError(err, f"conntrack dump: {strerror(err)}")
            done = NLMSG_DONE in kinds
            entries += sum(1 for k in kinds if k >= NLMSG_MIN_TYPE)
            got += FRAME.pack(time.time_ns(), n)
            got += view[:n]
    out += got
    return entries


def _read_sysctls() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for key in SYSCTLS:
        try:
            with open("/proc/sys/" + key.replace(".", "/")) as fh:
                out[key] = fh.read().strip()
        except OSError:
            out[key] = None
    return out


def kernel_settings(netns: str | None) -> dict[str, str | None]:
    """nf_conntrack_acct / _timestamp / _events as seen in ``netns`` (None: missing)."""
    return _read_sysctls() if netns is None else run_in_netns(netns, _read_sysctls)


def set_sysctls(
    netns: str | None, acct: bool = True, timestamp: bool = True, events: bool | None = None
) -> None:
    """Switch per-namespace accounting/timestamps (and events when given) on or off."""
    wanted = {SYSCTLS[0]: acct, SYSCTLS[1]: timestamp}
    if events is not None:
        wanted[SYSCTLS[2]] = events

    def write() -> None:
        for key, on in wanted.items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as fh:
                fh.write("1\n" if on else "0\n")

    if netns is None:
        write()
    else:
        run_in_netns(netns, write)
