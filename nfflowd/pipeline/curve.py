"""CURVE on links that cross hosts: the key directory, the ZAP handler that admits
senders, and the monitor that logs and counts the peers a link refused.

A ``tcp://`` link (``<links>`` in the configuration) carries flow data over a
network, so it is always encrypted and both ends are authenticated.  The key
directory (``<links> curve_dir``, written by ``nfflowd keygen DIR``) holds
ZeroMQ certificate files (:func:`zmq.auth.create_certificates`)::

    server.key          the receivers' public key        hosts running a sender of a tcp link
    server.key_secret   the receivers' secret key (0600) hosts running a receiver
    client.key_secret   the senders' secret key (0600)   hosts running a sender
    clients/*.key       public keys allowed to send      hosts running a receiver

The stage that binds a link (its receiver) is the CURVE server.  A peer must know
the server's public key (else the handshake fails cryptographically), speak CURVE
at all (else: mechanism mismatch) and present a client key whose public half is a
file in ``clients/`` (else ZAP answers 400).  Every such refusal is logged (the
first few, then at powers of two, so a scanner cannot flood the log) and counted
in ``<rundir>/<link>.refused``, which ``nfflowd check`` reports.  ``clients/`` is
read again at every handshake: adding or removing a sender needs no restart.

Why not :class:`zmq.auth.thread.ThreadAuthenticator`: its sockets are registered
with the stage's context, whose ``destroy()`` at exit closes them from the main
thread while its thread polls them, and its thread does not end when the context
terminates.  The two threads here block in ``recv``, end on ``ContextTerminated``
(or when the watched socket closes) and close their own sockets, which are not
registered with the context; so a stage's shutdown needs no extra step.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import threading
import weakref
from typing import Final

import zmq
import zmq.auth
from zmq.utils import z85

log = logging.getLogger("nfflowd.pipeline.curve")

SERVER_PUBLIC: Final = "server.key"
SERVER_SECRET: Final = "server.key_secret"
CLIENT_PUBLIC: Final = "client.key"
CLIENT_SECRET: Final = "client.key_secret"
CLIENTS: Final = "clients"
#: What each side of a link needs in the key directory.
NEEDS: Final[dict[str, tuple[str, ...]]] = {
    "receiver": (SERVER_SECRET, CLIENTS),
    "sender": (SERVER_PUBLIC, CLIENT_SECRET),
}
ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
REFUSED_SUFFIX: Final = ".refused"

_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_WATCHED = (
    _FAILED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_MONITOR_STOPPED
    | zmq.EVENT_CONNECTED
    | zmq.EVENT_DISCONNECTED
)
_PROTOCOL_ERRORS: dict[int, str] = {
    int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH): "the peer does not speak CURVE",
    int(zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC): "bad CURVE handshake (wrong server key?)",
    int(zmq.PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE): "bad CURVE key exchange",
}


class CurveError(RuntimeError):
    """Key files missing or unusable."""


def _should_log(n: int) -> bool:
    return n <= 5 or n & (n - 1) == 0


# ---------------------------------------------------------------- key files


def keygen(directory: str) -> list[str]:
    """Write a server and a client keypair and ``clients/client.key`` into *directory*.

    Secret files are created mode 0600 (under umask 077, never readable by others
    even for an instant).  Refuses to overwrite any existing key.  Returns the
    paths written.
    """
    directory = os.path.abspath(directory)
    clients = os.path.join(directory, CLIENTS)
    wanted = [
        SERVER_PUBLIC,
        SERVER_SECRET,
        CLIENT_PUBLIC,
        CLIENT_SECRET,
        os.path.join(CLIENTS, CLIENT_PUBLIC),
    ]
    existing = [w for w in wanted if os.path.exists(os.path.join(directory, w))]
    if existing:
        raise CurveError(f"{directory}: {', '.join(existing)} exist already; not overwriting keys")
    old_umask = os.umask(0o077)
    try:
        os.makedirs(clients, mode=0o700, exist_ok=True)
        written: list[str] = []
        for name in ("server", "client"):
            public, secret = zmq.auth.create_certificates(directory, name)
            written += [public, secret]
        with open(os.path.join(directory, CLIENT_PUBLIC), "rb") as src:
            data = src.read()
        copy = os.path.join(clients, CLIENT_PUBLIC)
        with open(copy, "wb") as dst:
            dst.write(data)
        written.append(copy)
    finally:
        os.umask(old_umask)
    for path in written:
        os.chmod(path, 0o600 if path.endswith("_secret") else 0o644)
    os.chmod(clients, 0o755)
    return written


def _keypair(path: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveError(f"{path}: {exc}") from None
    if len(public) != 40 or (secret and (secret_key is None or len(secret_key) != 40)):
        raise CurveError(f"{path}: not a CURVE {'secret ' if secret else ''}certificate")
    return public, secret_key


def client_keys(directory: str) -> set[bytes]:
    """The public keys (Z85) in ``*.key`` files of *directory* (CurveError if unreadable)."""
    try:
        return set(zmq.auth.load_certificates(directory))
    except (OSError, ValueError) as exc:
        raise CurveError(f"{directory}: {exc}") from None


def problems(curve_dir: str, side: str) -> list[str]:
    """What keeps *side* ("sender"/"receiver") of a tcp link from working with *curve_dir*."""
    out: list[str] = []
    for name in NEEDS[side]:
        path = os.path.join(curve_dir, name)
        try:
            if name == CLIENTS:
                if not client_keys(path):
                    out.append(f"{path}: no *.key files: every sender would be refused")
            else:
                _keypair(path, secret=name.endswith("_secret"))
        except CurveError as exc:
            out.append(str(exc))
            continue
        if name.endswith("_secret") and os.stat(path).st_mode & 0o077:
            out.append(f"{path}: readable by others (chmod 600)")
    return out


# ---------------------------------------------------------------- sockets


def secure(
    ctx: zmq.Context[zmq.Socket[bytes]],
    sock: zmq.Socket[bytes],
    curve_dir: str,
    name: str,
    side: str,
    rundir: str,
) -> None:
    """Make *sock* (the *side* socket of link *name*, not yet bound/connected) CURVE.

    The receiver becomes the CURVE server, with the ZAP handler of *ctx* admitting
    the keys in ``clients/``; the sender a CURVE client.  Both are monitored so a
    failed handshake is logged, and on the receiver counted.
    """
    if side == "receiver":
        public, secret = _keypair(os.path.join(curve_dir, SERVER_SECRET), secret=True)
        clients = os.path.join(curve_dir, CLIENTS)
        client_keys(clients)  # unreadable: fail now, not at the first handshake
        _zap_handler(ctx).admit(name, clients)
        sock.setsockopt(zmq.ZAP_DOMAIN, name.encode())
        sock.setsockopt(zmq.CURVE_SERVER, 1)
    else:
        server_public, _ = _keypair(os.path.join(curve_dir, SERVER_PUBLIC), secret=False)
        public, secret = _keypair(os.path.join(curve_dir, CLIENT_SECRET), secret=True)
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    assert secret is not None  # _keypair(secret=True) checked it
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    _watch(ctx, sock, name, side, rundir)


def refused_count(rundir: str, name: str) -> int:
    """How many peers the receiver of link *name* refused (0 if none or unknown)."""
    try:
        with open(os.path.join(rundir, name + REFUSED_SUFFIX)) as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


class _Refusals:
    """Refused handshakes of one bound link: logged (rate-limited) and kept in a file."""

    def __init__(self, rundir: str, name: str) -> None:
        self.path = os.path.join(rundir, name + REFUSED_SUFFIX)
        self.name = name
        self.count = refused_count(rundir, name)  # a restarted stage keeps counting

    def add(self, reason: str) -> None:
        self.count += 1
        tmp = f"{self.path}.{os.getpid()}"
        with open(tmp, "w") as fh:
            fh.write(f"{self.count}\n")
        os.replace(tmp, self.path)
        if _should_log(self.count):
            log.warning("%s: refused a peer: %s [%d refused so far]", self.name, reason, self.count)


class _ZapHandler:
    """Answers the ZAP requests of one context: CURVE client keys listed in ``clients/``."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.ctx = ctx
        self.domains: dict[bytes, str] = {}  # ZAP domain (link name) -> clients directory
        self.denied = 0
        # not ctx.socket(): a socket the context does not track is not closed by
        # ctx.destroy() from another thread; this thread closes it on termination
        self.sock: zmq.Socket[bytes] = zmq.Socket(ctx, zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(ZAP_ENDPOINT)  # bound before any link socket binds
        self.thread = threading.Thread(target=self._serve, name="nfflowd-zap", daemon=True)
        self.thread.start()

    def admit(self, domain: str, clients: str) -> None:
        self.domains[domain.encode()] = clients

    def _serve(self) -> None:
        try:
            while True:
                frames = self.sock.recv_multipart()
                self.sock.send_multipart(self.reply(frames))
        except zmq.ContextTerminated:
            pass
        finally:
            self.sock.close(linger=0)

    def reply(self, frames: list[bytes]) -> list[bytes]:
        """The ZAP 1.0 reply (RFC 27) to one request."""
        if len(frames) < 6 or frames[0] != b"1.0":
            return [b"1.0", frames[1] if len(frames) > 1 else b"", b"400", b"bad request", b"", b""]
        request_id, domain, address, mechanism = frames[1], frames[2], frames[3], frames[5]
        where = f"{domain.decode(errors='replace')}: peer {address.decode(errors='replace')}"
        if mechanism != b"CURVE" or len(frames) != 7 or len(frames[6]) != 32:
            return self._deny(request_id, where, "not CURVE")
        key = z85.encode(frames[6])
        clients = self.domains.get(domain)
        if clients is None:
            return self._deny(request_id, where, "unknown ZAP domain")
        try:
            allowed = key in client_keys(clients)
        except CurveError as exc:
            return self._deny(request_id, where, str(exc))
        if not allowed:
            return self._deny(request_id, where, f"client key {key.decode()} not in {clients}")
        log.info("%s: client key %s admitted", where, key.decode())
        return [b"1.0", request_id, b"200", b"OK", key, b""]

    def _deny(self, request_id: bytes, where: str, why: str) -> list[bytes]:
        self.denied += 1
        if _should_log(self.denied):
            log.warning("%s: refused: %s", where, why)
        return [b"1.0", request_id, b"400", why.encode()[:255], b"", b""]


_handlers: dict[int, _ZapHandler] = {}
_lock = threading.Lock()


def _zap_handler(ctx: zmq.Context[zmq.Socket[bytes]]) -> _ZapHandler:
    """The ZAP handler of *ctx* (one per context; started on first use)."""
    with _lock:
        handler = _handlers.get(ctx.underlying)
        if handler is None or handler.ctx is not ctx or not handler.thread.is_alive():
            handler = _handlers[ctx.underlying] = _ZapHandler(ctx)
        return handler


class Reconnects:
    """What the monitor thread saw of a sender's connection (a socket has one monitor
    only, so nfflowd.pipeline.links.Outlet reads this instead of monitoring a tcp link itself)."""

    def __init__(self) -> None:
        self.disconnected = False
        self.pending = False  # connected again after a disconnect; the Outlet clears it


_reconnects: dict[int, tuple[weakref.ref[zmq.Socket[bytes]], Reconnects]] = {}


def reconnects_of(sock: zmq.Socket[bytes]) -> Reconnects | None:
    """The reconnection flag of a socket this module monitors (None: not monitored)."""
    ref, state = _reconnects.get(id(sock), (None, None))
    return state if ref is not None and ref() is sock else None


def _watch(
    ctx: zmq.Context[zmq.Socket[bytes]], sock: zmq.Socket[bytes], name: str, side: str, rundir: str
) -> None:
    """Log (and on a receiver count) the handshakes of *sock*, from a thread of its own."""
    state = Reconnects()
    _reconnects[id(sock)] = (weakref.ref(sock), state)
    addr = f"inproc://nfflowd-monitor-{name}-{side}-{id(sock)}"
    sock.monitor(addr, _WATCHED)
    pair: zmq.Socket[bytes] = zmq.Socket(ctx, zmq.PAIR)  # untracked, as in _ZapHandler
    pair.setsockopt(zmq.LINGER, 0)
    pair.connect(addr)  # before bind/connect: no event is missed
    refusals = _Refusals(rundir, name) if side == "receiver" else None
    thread = threading.Thread(
        target=_monitor,
        args=(pair, name, refusals, state),
        name=f"nfflowd-monitor-{name}",
        daemon=True,
    )
    thread.start()


def _why(event: int, value: int) -> str:
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"client key not admitted (ZAP status {value})"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return _PROTOCOL_ERRORS.get(value, f"protocol error 0x{value:x}")
    if value in (errno.EPIPE, errno.ECONNRESET):  # e.g. a peer without CURVE that saw ours
        return "the peer hung up during the handshake (no CURVE?)"
    return f"handshake failed (errno {value}: {os.strerror(value)})"


def _monitor(
    pair: zmq.Socket[bytes], name: str, refusals: _Refusals | None, state: Reconnects
) -> None:
    failures = 0
    try:
        while True:
            frames = pair.recv_multipart()
            if len(frames) != 2 or len(frames[0]) != 6:
                continue
            event, value = struct.unpack("=HI", frames[0])
            if event == zmq.EVENT_MONITOR_STOPPED:
                return
            if event == zmq.EVENT_DISCONNECTED:
                state.disconnected = True
            elif event == zmq.EVENT_CONNECTED:
                if state.disconnected:
                    state.disconnected, state.pending = False, True
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                peer = "a sender" if refusals is not None else "the receiver"
                log.info("%s: CURVE handshake with %s succeeded", name, peer)
            elif event & _FAILED and refusals is not None:
                refusals.add(_why(event, value))
            elif event & _FAILED:
                failures += 1
                if _should_log(failures):
                    log.warning(
                        "%s: the receiver refused this sender: %s [%d so far]",
                        name,
                        _why(event, value),
                        failures,
                    )
    except zmq.ContextTerminated:
        pass
    finally:
        with contextlib.suppress(zmq.ZMQError):
            pair.close(linger=0)
