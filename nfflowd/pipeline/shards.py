"""Horizontal split: which correlator a connection belongs to, and the supervisord programs
of the sharded stages.

``<daemon> correlators N exporters M`` runs N correlate and M export processes
(supervisord ``numprocs``).  Ingest sends each event to correlator
``shard_of(event)``: the conntrack id when the source knows it (netlink, or
``conntrack -o id``), else a CRC-32 of the original tuple and zone — both stable
across processes and restarts (Python's ``hash()`` is salted per process, so it
would send a restarted ingest's DESTROY to another shard than its NEW).
Correlator *i* feeds exporter ``i % M`` and the single mirror, each over a link
of its own, so every link keeps exactly one sender and one receiver and the
acknowledgement protocol of :mod:`nfflowd.pipeline.delivery` holds per shard unchanged.

How shards and their links are named: :mod:`nfflowd.topology`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import Final

from nfflowd.messages import ConntrackEvent

#: Ports, protocol and zone of the original tuple, as hashed when there is no id.
_TUPLE: Final = struct.Struct("!HHBH")


def shard_of(ev: ConntrackEvent, n: int) -> int:
    """The correlator (0..n-1) for the connection of *ev*."""
    if ev.ct_id:
        return ev.ct_id % n
    key = (
        ev.orig_src
        + ev.orig_dst
        + _TUPLE.pack(ev.orig_sport, ev.orig_dport, ev.proto & 0xFF, ev.zone & 0xFFFF)
    )
    return zlib.crc32(key) % n


def split(events: Sequence[ConntrackEvent], n: int) -> list[list[ConntrackEvent]]:
    """*events* per correlator, each in its original order."""
    parts: list[list[ConntrackEvent]] = [[] for _ in range(n)]
    for ev in events:
        parts[shard_of(ev, n)].append(ev)
    return parts


def programs(conf: str, correlators: int, exporters: int) -> str:
    """*conf* (a rendered supervisord.conf) with ``numprocs`` for the sharded stages.

    ``[program:correlate]`` gets ``numprocs=N``, processes named ``correlate-0`` ...
    started with ``--shard %(process_num)d``, each with its own log file; likewise
    ``[program:export]`` with M.  A stage with one process is left exactly as is.
    """
    counts = {"correlate": correlators, "export": exporters}
    out: list[str] = []
    current = None
    for line in conf.splitlines(keepends=True):
        if line.startswith("["):
            name = line.strip()[len("[program:") : -1] if line.startswith("[program:") else None
            current = name if counts.get(name or "", 1) > 1 else None
            out.append(line)
            if current is not None:
                out.append(f"numprocs={counts[current]}\n")
                out.append("process_name=%(program_name)s-%(process_num)d\n")
            continue
        if current is not None:
            if line.startswith("command="):
                line = line.rstrip("\n") + " --shard %(process_num)d\n"
            elif "logfile=" in line and line.rstrip().endswith(".log"):
                line = line.rstrip()[: -len(".log")] + "-%(process_num)d.log\n"
        out.append(line)
    return "".join(out)
