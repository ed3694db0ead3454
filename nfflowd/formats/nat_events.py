"""NAT event records (NAT Event Logging, "NEL") for NetFlow v9 and IPFIX collectors.

Some collectors (CGN/NAT logging systems, nfdump's ``-o nel``) look for NAT
*events* rather than flows: one record when a translation is created and one
when it is deleted, each stamped with the time of the event.  With
``<collector> nat_events 1`` the export stage derives them from the flow
records it already receives (no other process is involved) and sends them on
the same stream, in their own data templates:

==================================  ==========================================
template 258 (IPv4) / 259 (IPv6)    value, from the connection's ORIGINAL_IN
                                    flow record
==================================  ==========================================
observationTimeMilliseconds 323     create: ``first_ms``; delete: ``last_ms``
natEvent 230                        create/delete, numbering below
protocolIdentifier 4                ``proto``
sourceIPv4Address 8 / ...IPv6 27    ``src``: the source before NAT
destinationIPv4Address 12 / 28      ``dst``: the destination before NAT
sourceTransportPort 7               ``sport``
destinationTransportPort 11         ``dport`` (ICMP: type*256+code)
postNATSourceIPv4Address 225 / 281  ``post_src``: the source after NAT
postNATDestinationIPv4Address 226   ``post_dst`` (IPv6: 282)
postNAPTSourceTransportPort 227     ``post_sport``
postNAPTDestinationTransportPort    ``post_dport``
228
flowId 148 (IPFIX only)             ``ct_id``: the conntrack id (0: unknown)
ingressVRFID 234                    ``zone``: the conntrack zone
==================================  ==========================================

These are the elements RFC 8158 ("IPFIX Information Elements for Logging NAT
Events") uses for NAT44 session create/delete events (its ``timeStamp`` is
observationTimeMilliseconds; ingressVRFID is its VRF element), with the IANA ids
of the IPFIX registry (https://www.iana.org/assignments/ipfix/), plus flowId:
the connection's flow records carry the same conntrack id, so a collector joins
its events and its flows by it (:mod:`nfflowd.formats.ipfix_ies`, "Context
fields").  NetFlow v9 (RFC 3954 §8: field types are 16-bit numbers, the same
registry) carries the same templates without flowId (:data:`TEMPLATES_V9`):
nfdump 1.7 reads a v9 148 as Cisco NSEL's connection id and then stores the
record without its natEvent (0, "INVALID").  nfdump shows the zone as
``ingress_vrf`` (and ``egress_vrf`` 0, not sent), but no flowId from IPFIX;
tshark decodes both.

A connection gets events when NAT changed it, source and/or destination: its
ORIGINAL_IN record's ``post_*`` differ from its own addresses and ports (see
:mod:`nfflowd.correlate.correlator`; a rewrite of only the ICMP echo id is not visible
there and yields no events).

**When they are sent.**  The correlator emits a connection's records when the
connection ends (conntrack DESTROY), so both events go out together then: the
create event carries the true start time, but arrives late.  That is what
forensic NAT logging needs (who had which public address and port, when), not
real-time NEL.  With ``<export> active_timeout`` a long connection's first
interim report (which still carries its start) yields the create event and the
final record the delete event; the connections whose create went out are
remembered per collector, at most :data:`MAX_OPEN` of them (the oldest is
forgotten first).  After an export restart, or for a connection forgotten that
way, the final record yields a create event (stamped with the last report's
time) as well as the delete event, so the collector may see a second create.

**Real time** (``<collector> nat_events realtime``): the correlator also emits an
OPENED record (:class:`~nfflowd.messages.EndReason`) when a NATed connection
opens (its NEW event; the source then reads NEW events too), and the create
event goes out at once, stamped with the connection's start; its end yields the
delete event alone (remembered as above: a connection forgotten, or one whose
NEW nfflowd did not see, gets both at its end).  A long-lived mapping is thus on
record while it is open.

**natEvent numbering** (IANA "natEvent" value registry, RFC 8158 §4):
``nat_event_numbering 1`` sends 1/2 ("NAT translation create/delete", now
marked Historic), what ipt-netflow and Juniper send; ``4`` sends RFC 8158's
NAT44 session create/delete, 4/5.  RFC 8158 has no value for NAT66 sessions
(6/7 are NAT64, a change of family), so IPv6 connections get the same pair.

Sequence numbers are not special: in IPFIX (RFC 7011 §3.1) they count these
data records like any other; in v9 (RFC 3954 §5.1) they count packets, and the
header's count includes them.  The templates go out with the flow templates, at
the same refresh points.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from nfflowd.formats.ipfix_ies import (
    DESTINATION_IPV4_ADDRESS,
    DESTINATION_IPV6_ADDRESS,
    DESTINATION_TRANSPORT_PORT,
    FLOW_ID,
    IE,
    INGRESS_VRFID,
    NAT_EVENT,
    OBSERVATION_TIME_MILLISECONDS,
    POST_NAPT_DESTINATION_TRANSPORT_PORT,
    POST_NAPT_SOURCE_TRANSPORT_PORT,
    POST_NAT_DESTINATION_IPV4_ADDRESS,
    POST_NAT_DESTINATION_IPV6_ADDRESS,
    POST_NAT_SOURCE_IPV4_ADDRESS,
    POST_NAT_SOURCE_IPV6_ADDRESS,
    PROTOCOL_IDENTIFIER,
    SOURCE_IPV4_ADDRESS,
    SOURCE_IPV6_ADDRESS,
    SOURCE_TRANSPORT_PORT,
    record_format,
)
from nfflowd.messages import Direction, EndReason, FlowRecord

#: Template ids of the NAT event templates (after the flow templates 256/257).
TEMPLATE_ID_V4 = 258
TEMPLATE_ID_V6 = 259

#: natEvent values (IANA natEvent registry; RFC 8158 §4).
NAT_TRANSLATION_CREATE = 1  # Historic; ipt-netflow, Juniper
NAT_TRANSLATION_DELETE = 2
NAT44_SESSION_CREATE = 4
NAT44_SESSION_DELETE = 5
#: ``nat_event_numbering`` -> (create, delete)
NUMBERINGS: dict[int, tuple[int, int]] = {
    1: (NAT_TRANSLATION_CREATE, NAT_TRANSLATION_DELETE),
    4: (NAT44_SESSION_CREATE, NAT44_SESSION_DELETE),
}
#: Connections per collector whose create event went out with an interim report.
MAX_OPEN = 1 << 18


def _fields(src: IE, dst: IE, post_src: IE, post_dst: IE, flow_id: bool) -> tuple[IE, ...]:
    return (
        OBSERVATION_TIME_MILLISECONDS,
        NAT_EVENT,
        PROTOCOL_IDENTIFIER,
        src,
        dst,
        SOURCE_TRANSPORT_PORT,
        DESTINATION_TRANSPORT_PORT,
        post_src,
        post_dst,
        POST_NAPT_SOURCE_TRANSPORT_PORT,
        POST_NAPT_DESTINATION_TRANSPORT_PORT,
        *((FLOW_ID,) if flow_id else ()),
        INGRESS_VRFID,
    )


_V4 = (SOURCE_IPV4_ADDRESS, DESTINATION_IPV4_ADDRESS, POST_NAT_SOURCE_IPV4_ADDRESS,
       POST_NAT_DESTINATION_IPV4_ADDRESS)  # fmt: skip
_V6 = (SOURCE_IPV6_ADDRESS, DESTINATION_IPV6_ADDRESS, POST_NAT_SOURCE_IPV6_ADDRESS,
       POST_NAT_DESTINATION_IPV6_ADDRESS)  # fmt: skip
#: The IPFIX NAT event templates' fields, in wire order.
FIELDS_V4 = _fields(*_V4, flow_id=True)
FIELDS_V6 = _fields(*_V6, flow_id=True)
#: NetFlow v9's: the same without flowId (see the module docstring).
FIELDS_V4_V9 = _fields(*_V4, flow_id=False)
FIELDS_V6_V9 = _fields(*_V6, flow_id=False)
RECORD_V4 = struct.Struct(record_format(FIELDS_V4))
RECORD_V6 = struct.Struct(record_format(FIELDS_V6))
RECORD_V4_V9 = struct.Struct(record_format(FIELDS_V4_V9))
RECORD_V6_V9 = struct.Struct(record_format(FIELDS_V6_V9))
TEMPLATES: tuple[tuple[int, tuple[IE, ...]], ...] = (
    (TEMPLATE_ID_V4, FIELDS_V4),
    (TEMPLATE_ID_V6, FIELDS_V6),
)
TEMPLATES_V9: tuple[tuple[int, tuple[IE, ...]], ...] = (
    (TEMPLATE_ID_V4, FIELDS_V4_V9),
    (TEMPLATE_ID_V6, FIELDS_V6_V9),
)
#: set/flowset header: id, length (RFC 7011 §3.3.2, RFC 3954 §5.3)
SET_HEADER = struct.Struct("!HH")

#: One data record to send: template id, its record struct, its values.
Row = tuple[int, struct.Struct, tuple[object, ...]]
_ORIGINAL_IN = Direction.ORIGINAL_IN
_INTERIM = EndReason.ACTIVE_TIMEOUT
_OPENED = EndReason.OPENED
_BY_FAMILY = {4: (TEMPLATE_ID_V4, RECORD_V4, 4), 6: (TEMPLATE_ID_V6, RECORD_V6, 16)}
_BY_FAMILY_V9 = {4: (TEMPLATE_ID_V4, RECORD_V4_V9, 4), 6: (TEMPLATE_ID_V6, RECORD_V6_V9, 16)}


def is_translated(r: FlowRecord) -> bool:
    """Whether ``r`` is the ORIGINAL_IN record of a connection NAT changed."""
    return r.direction == _ORIGINAL_IN and (
        r.src != r.post_src
        or r.dst != r.post_dst
        or r.sport != r.post_sport
        or r.dport != r.post_dport
    )


@dataclass
class Fill:
    """The datagram an encoder is filling: next free byte, whether it carries the
    templates, its open data set (start, id; 0: none) and its data records so far."""

    off: int
    templates: bool
    set_start: int = 0
    set_id: int = 0
    count: int = 0


class NatEvents:
    """The NAT events of one collector's stream (see the module docstring)."""

    def __init__(self, numbering: int = 1, flow_id: bool = True) -> None:
        """``flow_id``: IPFIX's templates (:data:`TEMPLATES`), else v9's (:data:`TEMPLATES_V9`)."""
        if numbering not in NUMBERINGS:
            raise ValueError(f"nat_event_numbering {numbering}: expected 1 or 4")
        self.numbering = numbering
        self.flow_id = flow_id
        self._by_family = _BY_FAMILY if flow_id else _BY_FAMILY_V9
        self.create, self.delete = NUMBERINGS[numbering]
        #: connections whose create event went out with an interim report (insertion order)
        self.open: dict[object, None] = {}
        self.events = 0  # NAT event records sent

    def rows(self, records: Sequence[FlowRecord]) -> list[Row]:
        """The event records ``records`` yield, in order (records that cannot be
        encoded yield none: the flow encoder counts them as invalid)."""
        out: list[Row] = []
        for r in records:
            if not is_translated(r):
                continue
            spec = self._by_family.get(r.family)
            if spec is None:
                continue
            tid, st, alen = spec
            if not len(r.src) == len(r.dst) == len(r.post_src) == len(r.post_dst) == alen:
                continue
            key = r.ct_id or (r.family, r.proto, r.src, r.dst, r.sport, r.dport, r.zone)
            tail = (
                r.proto,
                r.src,
                r.dst,
                r.sport,
                r.dport,
                r.post_src,
                r.post_dst,
                r.post_sport,
                r.post_dport,
                *((r.ct_id, r.zone) if self.flow_id else (r.zone,)),
            )
            if r.end_reason == _INTERIM or r.end_reason == _OPENED:
                if key in self.open:
                    continue
                self.open[key] = None
                if len(self.open) > MAX_OPEN:
                    del self.open[next(iter(self.open))]
                out.append((tid, st, (r.first_ms, self.create, *tail)))
                continue
            if key in self.open:  # its create went out with an interim report
                del self.open[key]
            else:
                out.append((tid, st, (r.first_ms, self.create, *tail)))
            out.append((tid, st, (r.last_ms, self.delete, *tail)))
        return out

    def fill(
        self,
        records: Sequence[FlowRecord],
        f: Fill,
        buf: bytearray,
        limit: int,
        align: int,
        finish: Callable[[Fill], bytes],
        reopen: Callable[[], Fill],
        out: list[bytes],
    ) -> Fill:
        """Append the events of ``records`` to the datagram ``f`` being filled in
        ``buf`` (at most ``limit`` bytes; sets padded to ``align``: 4 for v9, 1 for
        IPFIX).  A full datagram is closed, ``finish``\\ ed into ``out`` and
        replaced by ``reopen()``.  Returns the datagram still open."""
        for tid, st, values in self.rows(records):
            size = st.size
            new_set = tid != f.set_id
            pos = f.off + (-f.off % align) + SET_HEADER.size if new_set else f.off
            if pos + size > limit:
                close_set(buf, f, align)
                out.append(finish(f))
                f = reopen()
                new_set = True
                pos = f.off + SET_HEADER.size
            try:
                st.pack_into(buf, pos, *values)
            except struct.error:
                continue
            if new_set:
                close_set(buf, f, align)
                f.set_start = f.off
                f.set_id = tid
            f.off = pos + size
            f.count += 1
            self.events += 1
        return f


def close_set(buf: bytearray, f: Fill, align: int) -> None:
    """Pad the open data set of ``f`` to ``align`` bytes and write its header."""
    if not f.set_id:
        return
    pad = -(f.off - f.set_start) % align
    buf[f.off : f.off + pad] = bytes(pad)
    f.off += pad
    SET_HEADER.pack_into(buf, f.set_start, f.set_id, f.off - f.set_start)
    f.set_id = 0
