"""Every record that crosses a process boundary, typed and versioned.

This module is the schema: it defines what the stages say to each other and
nothing else.  It does no I/O and imports no serialiser; :mod:`nfflowd.pipeline.codec`
turns these records into bytes and back.

Data flow::

    conntrack event (ConntrackEvent)      ingest    -> correlate   (in an EventBatch)
    correlated flow (FlowRecord)          correlate -> export, mirror (in a FlowBatch)
    acknowledgement (Ack)                 the reverse of each link (see nfflowd.pipeline.delivery)
    notice (Notice)                       any stage -> whoever listens (replay, tests)

Messages are ``NamedTuple``s: cheap to build, positional on the wire (a msgpack
array, not a map), and typed for mypy.  A message's wire form is
``[kind, version, *fields]``; a receiver that meets an unknown kind or version
counts it and drops it (see :mod:`nfflowd.pipeline.codec`).

Batches move bytes, not objects (schema 5): an :class:`EventBatch` carries the
events as its source gave them (text lines, or the kernel's ctnetlink datagrams),
decoded only by the correlator that needs them, so ingest does no per-event work
beyond reading; a :class:`FlowBatch` carries its records as one block of
fixed-size structs (:data:`FLOW_RECORD`) that the exporters and the mirror read
without building an object per record.  :class:`ConntrackEvent` and
:class:`FlowRecord` are the decoded forms, used inside a stage.

Conventions shared by every stage:

* addresses are packed bytes (4 bytes IPv4, 16 bytes IPv6); ``family`` is 4 or 6;
* times are integers: nanoseconds since the Unix epoch for events (exact, as the
  kernel and ``conntrack -o timestamp`` give them), milliseconds for flow records
  (the resolution of NetFlow v5/v9/IPFIX time fields);
* a tuple's ports: TCP/UDP/SCTP/DCCP/UDP-Lite carry their ports; ICMP and ICMPv6
  carry ``sport = id`` and ``dport = type << 8 | code`` (so the tuple stays unique
  and the NetFlow convention dstport = type*256+code falls out); GRE carries its
  keys; other protocols 0/0;
* counters are ``None`` when the kernel did not report them (nf_conntrack_acct off).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from enum import IntEnum
from typing import Final, NamedTuple

#: Version of the wire schema; bump when a record's fields change.
SCHEMA_VERSION = 5


class Kind(IntEnum):
    """Message kinds (first element of every wire message)."""

    EVENT_BATCH = 1
    FLOW_BATCH = 2
    ACK = 3
    NOTICE = 4


class EventType(IntEnum):
    """Conntrack event types, as ctnetlink and ``conntrack -E`` name them."""

    NEW = 1
    UPDATE = 2
    DESTROY = 3


class Direction(IntEnum):
    """Which of a connection's flows a record describes (see correlate.py)."""

    ORIGINAL_IN = 1  # original direction as it arrived at the firewall
    ORIGINAL_OUT = 2  # original direction as it left (only when NAT changed it)
    REPLY_IN = 3  # reply direction as it arrived


class EndReason(IntEnum):
    """IPFIX flowEndReason (IANA IE 136), and OPENED: not a flow's end but a notice.

    An OPENED record (real-time NAT events, ``<collector> nat_events realtime``) says
    that a NATed connection has just opened: its ORIGINAL_IN record with no counters,
    first = last = its start.  Only the NAT event encoders read it (the create
    event); every other consumer gets blocks without them (:func:`without_opened`)
    or skips them, so no flow record ever carries 0 as its end reason."""

    OPENED = 0
    IDLE_TIMEOUT = 1
    ACTIVE_TIMEOUT = 2
    END_OF_FLOW = 3
    FORCED_END = 4
    LACK_OF_RESOURCES = 5


#: ctnetlink status bits (include/uapi/linux/netfilter/nf_conntrack_common.h).
IPS_EXPECTED = 1 << 0
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_CONFIRMED = 1 << 3
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5


class ConntrackEvent(NamedTuple):
    """One conntrack event, from any source (text log, conntrack program, netlink)."""

    type: int  # EventType
    time_ns: int  # when it happened (timestamp prefix / receive time), ns since epoch
    family: int  # 4 or 6
    proto: int  # IP protocol number
    orig_src: bytes
    orig_dst: bytes
    orig_sport: int
    orig_dport: int
    reply_src: bytes
    reply_dst: bytes
    reply_sport: int
    reply_dport: int
    orig_packets: int | None
    orig_bytes: int | None
    reply_packets: int | None
    reply_bytes: int | None
    ct_id: int | None  # conntrack id (-o id / CTA_ID) when known
    start_ns: int | None  # kernel start timestamp (CTA_TIMESTAMP_START), ns since epoch
    stop_ns: int | None  # kernel stop timestamp (CTA_TIMESTAMP_STOP), ns since epoch
    delta_time: int | None  # seconds the connection lived (text ``delta-time=``)
    mark: int
    zone: int
    status: int  # IPS_* bits when known, else 0


class FlowRecord(NamedTuple):
    """One unidirectional flow, ready for any exporter or the syslog mirror."""

    first_ms: int  # ms since epoch, start of the flow
    last_ms: int  # ms since epoch, end of the flow
    family: int  # 4 or 6
    proto: int
    src: bytes  # as seen on the wire in this direction
    dst: bytes
    sport: int  # 0 for ICMP and portless protocols
    dport: int  # type*256+code for ICMP/ICMPv6
    packets: int
    octets: int
    post_src: bytes  # the same flow on the other side of the firewall (post-NAT)
    post_dst: bytes
    post_sport: int
    post_dport: int
    direction: int  # Direction
    end_reason: int  # EndReason
    mark: int
    zone: int
    ct_id: int  # 0 when unknown


class Payload(IntEnum):
    """How the events of an :class:`EventBatch` are encoded in its ``data``."""

    TEXT = 1  # ``conntrack -E``/``-L`` lines as read, each ending in "\n" (UTF-8)
    NETLINK = 2  # ctnetlink datagrams as the kernel sent them, each framed (DATAGRAM_FRAME)


#: Frame of one netlink datagram in a NETLINK payload: the time ingest received it
#: (ns since the epoch) and the length of the datagram that follows.
DATAGRAM_FRAME: Final = struct.Struct("<QI")


class EventBatch(NamedTuple):
    """A batch of events from one ingest incarnation, as bytes (see :class:`Payload`).

    *where* names the source and *first_line* the line number of the first text
    line in it, so that a correlator can say where a bad event came from.

    *origin_stream*/*origin_pos* say where the batch came from when its source
    can be read again (a saved log: the log files' identity and the batch's byte
    position): a restarted ingest that re-reads a batch gives it the same origin,
    so correlate and the terminal stages recognise the copy.  0/0 for live
    sources, whose events are never read twice: the origin is then the batch's
    own (incarnation, seq).
    """

    sender: str
    incarnation: int
    seq: int
    acked: int  # every seq <= acked is acknowledged already (a receiver's floor)
    payload: int  # Payload
    data: bytes
    n_events: int  # events in data: text lines, or netlink datagrams
    where: str = ""
    first_line: int = 0
    origin_stream: int = 0
    origin_pos: int = 0

    def origin(self) -> tuple[int, int]:
        """The identity of this batch's content (see the class docstring)."""
        if self.origin_stream:
            return (self.origin_stream, self.origin_pos)
        return (self.incarnation, self.seq)


class FlowBatch(NamedTuple):
    """A batch of flow records from one correlate incarnation.

    *origin_incarnation*/*origin_seq* name the event batch it was computed from
    (:meth:`EventBatch.origin`; each event batch yields at most one flow batch): a
    batch recomputed from the same events — by a restarted correlate, or from a
    saved log re-read by a restarted ingest — is recognised by the receivers,
    which drop the copy (record identity: see the README, "Crash isolation").
    """

    sender: str
    incarnation: int
    seq: int
    acked: int  # every seq <= acked is acknowledged already (a receiver's floor)
    origin_incarnation: int  # EventBatch.origin() of the event batch: its stream ...
    origin_seq: int  # ... and its position in that stream
    records: bytes  # FLOW_RECORD structs, back to back (pack_flows / unpack_flows)


class Ack(NamedTuple):
    """Receiver -> sender on the same link: "batches of yours up to *upto* are durable".

    Sent after batches and every second, so it doubles as a hello and a
    heartbeat: a sender that hears from a receiver incarnation it did not know
    resends every batch still unacknowledged (see :mod:`nfflowd.pipeline.delivery`).
    """

    stage: str  # the receiving stage
    incarnation: int  # the receiver's incarnation
    sender_incarnation: int  # whose batches are acknowledged (0: none seen yet)
    upto: int  # every batch with seq <= upto is durable downstream


class Notice(NamedTuple):
    """Out-of-band report from a stage (published, may be dropped)."""

    stage: str
    token: str
    counters: dict[str, int]


#: Notice tokens: a stage's counters once a second, and when it stops; ingest's
#: ``eof`` once a saved log is read and acknowledged (``nfflowd replay`` waits for it).
STATS_TOKEN = "stats"
FINAL_TOKEN = "final"
EOF_TOKEN = "eof"

Message = EventBatch | FlowBatch | Ack | Notice

#: Number of fields of a decoded event and record.
EVENT_FIELDS = len(ConntrackEvent._fields)
FLOW_FIELDS = len(FlowRecord._fields)

#: One :class:`FlowRecord` in a :class:`FlowBatch`: its fields in order, little-endian,
#: each address in 16 bytes (an IPv4 address in the first 4, zeros after).  Counters
#: and times are 64-bit, ``mark`` and ``ct_id`` 32-bit, ``zone`` 16-bit (as the kernel
#: has them); a reader slices IPv4 addresses back to 4 bytes by ``family``.
FLOW_RECORD: Final = struct.Struct("<QQBB16s16sHHQQ16s16sHHBBIHI")
_ADDRESS_BYTES: Final = {4: 4, 6: 16}
#: Where a FLOW_RECORD holds its end reason (after direction, before mark).
END_REASON_OFFSET: Final = struct.calcsize("<QQBB16s16sHHQQ16s16sHHB")


def without_opened(block: bytes) -> bytes:
    """*block* without its :attr:`EndReason.OPENED` records (itself when it has none)."""
    size, at = FLOW_RECORD.size, END_REASON_OFFSET
    if all(block[i + at] for i in range(0, len(block), size)):
        return block
    return b"".join(block[i : i + size] for i in range(0, len(block), size) if block[i + at])


def pack_flows(records: Iterable[FlowRecord]) -> bytes:
    """The FLOW_RECORD block of *records* (struct.error on a value that does not fit)."""
    pack = FLOW_RECORD.pack
    return b"".join(pack(*r) for r in records)


def unpack_flows(block: bytes) -> list[FlowRecord]:
    """The records of a FLOW_RECORD block; ValueError when its length is not a multiple.

    Addresses of a family other than 4 or 6 are returned as the 16 bytes they are
    (readers count such records as invalid)."""
    if len(block) % FLOW_RECORD.size:
        raise ValueError(f"flow block of {len(block)} bytes: not a multiple of {FLOW_RECORD.size}")
    out = []
    for r in FLOW_RECORD.iter_unpack(block):
        n = _ADDRESS_BYTES.get(r[2], 16)
        out.append(
            FlowRecord(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4][:n],
                r[5][:n],
                r[6],
                r[7],
                r[8],
                r[9],
                r[10][:n],
                r[11][:n],
                *r[12:],
            )
        )
    return out
