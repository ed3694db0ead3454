"""Every ZeroMQ endpoint of the pipeline and every socket's role, in one table.

The links themselves (who sends, who receives) are :mod:`nfflowd.topology`.
By default every endpoint is an ``ipc://`` file inside the run directory, which
is created mode 0700 (with ``<daemon> user``: root and that user's group only)
and checked before use (:mod:`nfflowd.pipeline.rundir`), so no other local user
can connect to them, inject flow data or read it.  A data link can instead be
a ``tcp://HOST:PORT`` address (``<links><NAME> address``), so its two stages run
on different hosts; such a link is always CURVE-encrypted and its receiver admits
only known sender keys (:mod:`nfflowd.pipeline.curve`).  The notices stay
``ipc://``: they are local to a host.
The three data links are DEALER <-> DEALER pairs: batches go one way,
acknowledgements (``Ack``) come back on the same connection (see
nfflowd.pipeline.delivery).  Receivers bind; senders connect, so a restarted stage on
either side is reconnected by ZeroMQ by itself.  The notices socket is bound
by whoever listens (``nfflowd replay``); stages connect a PUB socket to it and
a notice with no listener is dropped, by design.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import zmq

from nfflowd import topology
from nfflowd.pipeline import curve

if TYPE_CHECKING:
    from nfflowd.config.settings import LinkSettings


@dataclass(frozen=True)
class Endpoint:
    name: str
    filename: str
    sender: str  # stage that sends ("*" = every stage)
    sender_type: int
    receiver: str  # stage that receives
    receiver_type: int
    bound_by: str  # "sender" | "receiver"
    carries: str


#: Socket types, ipc file and binding side of every link of :data:`nfflowd.topology.DATA_LINKS`:
#: DEALER pairs, bound by the receiver.
_DATA_FILES: Final = {"events": "events.ipc", "flows.export": "flows-export.ipc",
                      "flows.mirror": "flows-mirror.ipc"}  # fmt: skip
TABLE: Final[tuple[Endpoint, ...]] = (
    *(Endpoint(link.name, _DATA_FILES[link.name], link.sender, zmq.DEALER, link.receiver,
               zmq.DEALER, "receiver", f"{'EventBatch' if link.name == 'events' else 'FlowBatch'}"
               " ->, <- Ack")
      for link in topology.DATA_LINKS),
    Endpoint(topology.NOTICES, "notices.ipc", "*", zmq.PUB, "listener", zmq.SUB, "receiver",
             "Notice"),
)  # fmt: skip

BY_NAME: Final[dict[str, Endpoint]] = {e.name: e for e in TABLE}


def endpoint(name: str) -> Endpoint:
    """The table entry of *name*; a shard's link (``events.1``, nfflowd.pipeline.shards) is its
    base endpoint with its own ipc file (``events-1.ipc``)."""
    base, _, num = name.rpartition(".")
    if base in BY_NAME and num.isdigit() and int(num) > 0:
        ep = BY_NAME[base]
        stem, dot, ext = ep.filename.rpartition(".")
        return dataclasses.replace(ep, name=name, filename=f"{stem}-{int(num)}{dot}{ext}")
    return BY_NAME[name]


def address(rundir: str, name: str, links: LinkSettings | None = None) -> str:
    """The address of endpoint *name*: its ``<links>`` tcp:// address, else its ``ipc://``
    file in *rundir*."""
    tcp = links.address(name) if links is not None else None
    return tcp or "ipc://" + os.path.join(os.path.abspath(rundir), endpoint(name).filename)


#: A run directory shared with ``<daemon> user``'s group: root:G, sticky (nfflowd.ops.privileges).
SHARED_RUNDIR_MODE: Final = 0o1770


def share_socket(path: str, gid: int) -> None:
    """Let group *gid* connect to the unix socket *path* that root bound (0660)."""
    os.chown(path, -1, gid)
    os.chmod(path, 0o660)


def _share_if_shared(addr: str, rundir: str) -> None:
    """An ipc socket root binds in a shared run directory goes to its group (a listener's
    notices socket: the unprivileged stages publish to it)."""
    if os.geteuid() != 0 or not addr.startswith("ipc://"):
        return
    st = os.stat(rundir)
    if stat.S_IMODE(st.st_mode) == SHARED_RUNDIR_MODE and st.st_gid != os.getegid():
        share_socket(addr[len("ipc://") :], st.st_gid)


class EndpointError(OSError):
    """A stage cannot open one of its endpoints (the message names it and the cause)."""


def open_socket(
    ctx: zmq.Context[zmq.Socket[bytes]],
    rundir: str,
    name: str,
    side: str,
    *,
    hwm: int = 1000,
    links: LinkSettings | None = None,
) -> zmq.Socket[bytes]:
    """Create, configure and bind/connect the *side* ("sender"/"receiver") socket of *name*.

    With *links* (the settings' ``<links>``), a link given a tcp:// address is
    opened there, with CURVE keys from ``curve_dir`` (:func:`nfflowd.pipeline.curve.secure`).
    """
    ep = endpoint(name)
    sock = ctx.socket(ep.sender_type if side == "sender" else ep.receiver_type)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if sock.socket_type == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    addr = address(rundir, name, links)
    if addr.startswith("tcp://"):
        try:
            _tcp_options(sock, addr)
            if links is None or links.curve_dir is None:  # config validation refuses this
                raise curve.CurveError(f"{name}: {addr} without CURVE keys (<links> curve_dir)")
            curve.secure(ctx, sock, links.curve_dir, name, side, rundir)
        except BaseException:
            sock.close(linger=0)
            raise
    if ep.bound_by == side:
        old_umask = os.umask(0o077)
        try:
            sock.bind(addr)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise EndpointError(f"{name}: cannot bind {addr}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        _share_if_shared(addr, rundir)
    else:
        sock.connect(addr)
    return sock


def _tcp_options(sock: zmq.Socket[bytes], addr: str) -> None:
    """A link across hosts: IPv6 when the address is, and dead peers noticed.

    ZMTP heartbeats close a connection whose peer stopped answering (a rebooted or
    unreachable host) within 15 s rather than the kernel's TCP timeout of minutes,
    and ZeroMQ reconnects.
    """
    host = addr[len("tcp://") :].rsplit(":", 1)[0]
    sock.setsockopt(zmq.IPV6, int(":" in host))  # [v6]: IP literals only (config_links)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 5000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15000)
