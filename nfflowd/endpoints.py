"""Every ZeroMQ endpoint of the pipeline and every socket's role, in one table.

::

    ingest --events--> correlate --flows.export--> export --> UDP collectors
                                 \\-flows.mirror--> mirror --> screen / syslog
    every stage --notices--> (replay / tests, when listening)

All endpoints are ``ipc://`` files inside the run directory, which is created
mode 0700 so no other local user can connect to them, inject flow data or read
it.  The three data links are DEALER <-> DEALER pairs: batches go one way,
acknowledgements (``Ack``) come back on the same connection (see
nfflowd.delivery).  Receivers bind; senders connect, so a restarted stage on
either side is reconnected by ZeroMQ by itself.  The notices socket is bound
by whoever listens (``nfflowd replay``); stages connect a PUB socket to it and
a notice with no listener is dropped, by design.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

import zmq


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


TABLE: Final[tuple[Endpoint, ...]] = (
    Endpoint("events", "events.ipc", "ingest", zmq.DEALER, "correlate", zmq.DEALER, "receiver",
             "EventBatch ->, <- Ack"),
    Endpoint("flows.export", "flows-export.ipc", "correlate", zmq.DEALER, "export", zmq.DEALER,
             "receiver", "FlowBatch ->, <- Ack"),
    Endpoint("flows.mirror", "flows-mirror.ipc", "correlate", zmq.DEALER, "mirror", zmq.DEALER,
             "receiver", "FlowBatch ->, <- Ack"),
    Endpoint("notices", "notices.ipc", "*", zmq.PUB, "listener", zmq.SUB, "receiver", "Notice"),
)  # fmt: skip

BY_NAME: Final[dict[str, Endpoint]] = {e.name: e for e in TABLE}


def address(rundir: str, name: str) -> str:
    """The ``ipc://`` address of endpoint *name* in *rundir*."""
    return "ipc://" + os.path.join(os.path.abspath(rundir), BY_NAME[name].filename)


def ensure_rundir(rundir: str) -> str:
    """Create the run directory (mode 0700) if needed and return its absolute path."""
    path = os.path.abspath(rundir)
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def open_socket(
    ctx: zmq.Context[zmq.Socket[bytes]], rundir: str, name: str, side: str, *, hwm: int = 1000
) -> zmq.Socket[bytes]:
    """Create, configure and bind/connect the *side* ("sender"/"receiver") socket of *name*."""
    ep = BY_NAME[name]
    sock = ctx.socket(ep.sender_type if side == "sender" else ep.receiver_type)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if sock.socket_type == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    addr = address(rundir, name)
    if ep.bound_by == side:
        old_umask = os.umask(0o077)
        try:
            sock.bind(addr)
        finally:
            os.umask(old_umask)
    else:
        sock.connect(addr)
    return sock
