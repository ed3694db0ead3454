"""Running the lab's traffic mix: endpoint programs in the client and server namespaces.

:func:`run_mix` starts one endpoint program per end namespace (``ip netns exec NS
python -m nfflowd.lab.traffic SPEC``); each binds its listeners, then on command
runs its flows, reports the ports it used, waits, and on a second command closes
its TCP connections with FIN.  Between the two the caller can look at the
firewall's conntrack table while every connection is still alive.

Payload sizes are exact at L4 level (TCP/UDP payload, ICMP echo data, bytes after
the GRE header).  A request starts with :data:`HEADER` (inside the counted bytes)
telling the responder how long it is and how much to answer.

What the mix is (its flows and the conntrack entries they must give) is
:mod:`nfflowd.lab.mix`, re-exported here; this module runs it.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from nfflowd.lab.mix import ECHO_TYPES, Flow
from nfflowd.lab.mix import Expected as Expected
from nfflowd.lab.mix import describe as describe
from nfflowd.lab.mix import expected as expected
from nfflowd.lab.mix import listeners as listeners
from nfflowd.lab.mix import mix as mix
from nfflowd.lab.plan import Lab

HEADER = b"NFL %08d %08d\n"  # request length, reply length (22 bytes, ASCII)
HEADER_LEN = 22
#: RFC 792 / RFC 4443 echo request/reply: type, code, checksum, identifier, sequence.
ICMP_ECHO = struct.Struct("!BBHHH")
#: RFC 2784 GRE header without options: C/reserved/version bits, protocol type.
GRE_HEADER = struct.Struct("!HH")
GRE_PROTO = 0x88B5  # IEEE 802 local experimental EtherType: nobody decapsulates it
STEP_TIMEOUT = 10.0  # the orchestrator's wait for each line of an endpoint
IO_TIMEOUT = 3.0  # an endpoint's wait for one answer (the lab answers in milliseconds)
LISTEN_TIMEOUT = 20.0  # a listener's wait for its next client


class LabError(RuntimeError):
    """Something in the lab failed; the message names the command or endpoint."""


# --- orchestrator (runs in the caller) -------------------------------------------------


class _Endpoint:
    """One endpoint program in a namespace, driven line by line."""

    def __init__(self, ns: str, spec: dict[str, object]) -> None:
        self.ns = ns
        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(
            os.environ, PYTHONPATH=pkg_parent + os.pathsep + os.environ.get("PYTHONPATH", "")
        )
        args = ["ip", "netns", "exec", ns, sys.executable, "-P", "-m", "nfflowd.lab.traffic"]
        pipe = subprocess.PIPE
        self.proc = subprocess.Popen(
            [*args, json.dumps(spec)], stdin=pipe, stdout=pipe, stderr=pipe, env=env
        )
        self.buf = b""

    def say(self, word: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(word.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise LabError(f"endpoint in {self.ns} exited before {word!r}: {self.err()}") from None

    def expect(self, word: str, timeout: float = STEP_TIMEOUT) -> str:
        assert self.proc.stdout is not None
        fd, deadline = self.proc.stdout.fileno(), time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.proc.kill()
                raise LabError(
                    f"endpoint in {self.ns}: no {word!r} within {timeout}s: {self.err()}"
                )
            chunk = os.read(fd, 65536)
            if not chunk:
                raise LabError(f"endpoint in {self.ns} failed (waiting for {word!r}): {self.err()}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        head, _, rest = line.decode().partition(" ")
        if head != word:
            raise LabError(f"endpoint in {self.ns}: expected {word!r}, got {line!r}")
        return rest

    def err(self) -> str:
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace").strip()[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def run_mix(lab: Lab, before_close: Callable[[], object] | None = None) -> list[Expected]:
    """Run the mix between ``lab``'s client and server; see :func:`nfflowd.lab.traffic`."""
    flows = mix(lab)
    roles = {"client": lab.client, "server": lab.server}
    eps: dict[str, _Endpoint] = {}
    try:
        for role, ns in roles.items():
            spec = {
                "listen": listeners(flows, role),
                "run": [asdict(f) for f in flows if f.initiator == role],
            }
            eps[role] = _Endpoint(ns, spec)
        for ep in eps.values():
            ep.expect("ready")
        idents: dict[str, int] = {}
        for ep in eps.values():
            ep.say("go")
            idents.update(json.loads(ep.expect("exchanged")))
        if before_close is not None:
            before_close()
        for ep in eps.values():
            ep.say("close")
        for ep in eps.values():
            ep.expect("done")
    finally:
        for ep in eps.values():
            ep.stop()
    return [expected(f, idents[f.name]) for f in flows]


# --- endpoint program (runs inside a namespace) -----------------------------------------


def _request(send: int, recv: int) -> bytes:
    if send < HEADER_LEN:
        raise ValueError(f"request of {send} bytes cannot hold the {HEADER_LEN}-byte header")
    return (HEADER % (send, recv)).ljust(send, b"r")


def _header(data: bytes) -> tuple[int, int]:
    fields = data[:HEADER_LEN].split()
    if len(fields) != 3 or fields[0] != b"NFL":
        raise ValueError(f"bad request header {data[:HEADER_LEN]!r}")
    return int(fields[1]), int(fields[2])


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(min(65536, n - len(data)))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def _expect_eof(sock: socket.socket) -> None:
    extra = sock.recv(65536)
    if extra:
        raise ConnectionError(f"{len(extra)} unexpected bytes before FIN")


def _checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int(v) for v in struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _fam(family: int) -> socket.AddressFamily:
    return socket.AF_INET if family == 4 else socket.AF_INET6


def _serve(kind: str, family: int, addr: str, port: int, n: int) -> None:
    if kind == "gre":
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
    else:
        stype = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(_fam(family), stype)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((addr, port))
    sock.settimeout(LISTEN_TIMEOUT)
    if kind == "tcp":
        sock.listen(16)

    def one_tcp(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(LISTEN_TIMEOUT)
            size, reply = _header(_recv_exactly(conn, HEADER_LEN))
            _recv_exactly(conn, size - HEADER_LEN)
            conn.sendall(b"a" * reply)
            _expect_eof(conn)

    def loop() -> None:
        workers, handled = [], 0
        while handled < n:
            handled += 1
            if kind == "tcp":
                conn, _peer = sock.accept()
                workers.append(threading.Thread(target=_guard, args=(one_tcp, conn), daemon=True))
                workers[-1].start()
            elif kind == "udp":
                data, peer = sock.recvfrom(65536)
                sock.sendto(b"a" * _header(data)[1], peer)
            else:  # GRE over IPv4: the raw socket hands us the IP header too (RFC 791 IHL)
                data, peer = sock.recvfrom(65536)
                ihl = (data[0] & 0x0F) * 4
                _flags, proto = GRE_HEADER.unpack_from(data, ihl)
                if proto != GRE_PROTO:
                    handled -= 1
                    continue
                reply = _header(data[ihl + GRE_HEADER.size :])[1]
                sock.sendto(GRE_HEADER.pack(0, GRE_PROTO) + b"a" * reply, peer)
        for w in workers:
            w.join(LISTEN_TIMEOUT)
        sock.close()

    _THREADS.append(threading.Thread(target=_guard, args=(loop,), daemon=True))


def _run_flow(f: Flow, keep: list[socket.socket]) -> int:
    fam = _fam(f.family)
    if f.kind == "tcp":
        sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.settimeout(IO_TIMEOUT)
        sock.bind((f.src, 0))
        sock.connect((f.dst, f.dport))
        sock.sendall(_request(f.send, f.recv))
        _recv_exactly(sock, f.recv)
        keep.append(sock)
        return int(sock.getsockname()[1])
    if f.kind in ("udp", "udp-unreplied"):
        with socket.socket(fam, socket.SOCK_DGRAM) as sock:
            sock.settimeout(IO_TIMEOUT)
            sock.bind((f.src, 0))
            for _ in range(f.count):
                sock.sendto(_request(f.send, f.recv), (f.dst, f.dport))
                if f.kind == "udp" and len(sock.recv(65536)) != f.recv:
                    raise ConnectionError(f"{f.name}: reply of unexpected size")
            return int(sock.getsockname()[1])
    if f.kind == "gre":
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, 47) as sock:
            sock.settimeout(IO_TIMEOUT)
            sock.bind((f.src, 0))
            for _ in range(f.count):
                sock.sendto(GRE_HEADER.pack(0, GRE_PROTO) + _request(f.send, f.recv), (f.dst, 0))
                while True:
                    data, peer = sock.recvfrom(65536)
                    ihl = (data[0] & 0x0F) * 4
                    if peer[0] == f.dst and GRE_HEADER.unpack_from(data, ihl)[1] == GRE_PROTO:
                        break
                if len(data) - ihl - GRE_HEADER.size != f.recv:
                    raise ConnectionError(f"{f.name}: reply of unexpected size")
            return 0
    # ICMP / ICMPv6 echo on a raw socket (the kernel fills in the ICMPv6 checksum)
    req, rep = ECHO_TYPES[f.family]
    ident = random.randrange(1, 0xFFFF)
    with socket.socket(fam, socket.SOCK_RAW, 1 if f.family == 4 else 58) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.bind((f.src, 0))
        for seq in range(1, f.count + 1):
            data = b"p" * f.send
            csum = _checksum(ICMP_ECHO.pack(req, 0, 0, ident, seq) + data) if f.family == 4 else 0
            sock.sendto(ICMP_ECHO.pack(req, 0, csum, ident, seq) + data, (f.dst, 0))
            while True:
                pkt = sock.recv(65536)
                off = (pkt[0] & 0x0F) * 4 if f.family == 4 else 0
                typ, _code, _csum, rid, rseq = ICMP_ECHO.unpack_from(pkt, off)
                if (typ, rid, rseq) == (rep, ident, seq):
                    break
    return ident


_THREADS: list[threading.Thread] = []
_ERRORS: list[str] = []


def _guard(fn: Callable[..., None], *args: object) -> None:
    try:
        fn(*args)
    except Exception as exc:
        _ERRORS.append(f"{type(exc).__name__}: {exc}")


def _line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _await(word: str) -> None:
    got = sys.stdin.readline().strip()
    if got != word:
        raise SystemExit(f"endpoint: expected {word!r} on stdin, got {got!r}")


def endpoint(spec: dict[str, Any]) -> int:
    """The program ``run_mix`` starts in a namespace (protocol: see the module docstring)."""
    for kind, family, addr, port, n in spec["listen"]:
        _serve(str(kind), int(family), str(addr), int(port), int(n))
    for t in _THREADS:
        t.start()
    _line("ready")
    _await("go")
    keep: list[socket.socket] = []
    idents: dict[str, int] = {}
    for item in spec["run"]:
        f = Flow(**item)
        try:
            idents[f.name] = _run_flow(f, keep)
        except OSError as exc:
            raise SystemExit(f"{f.name}: {f.src} -> {f.dst} {f.kind}: {exc!r}") from exc
    _line("exchanged " + json.dumps(idents))
    _await("close")
    for sock in keep:
        with sock:
            sock.shutdown(socket.SHUT_WR)
            _expect_eof(sock)
    for t in _THREADS:
        t.join(IO_TIMEOUT)
        if t.is_alive():
            _ERRORS.append(f"listener {t.name} still waiting after {IO_TIMEOUT}s")
    if _ERRORS:
        sys.stderr.write("\n".join(_ERRORS) + "\n")
        return 1
    _line("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(endpoint(json.loads(sys.argv[1])))
