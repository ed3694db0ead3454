"""Information elements nfflowd exports, shared by NetFlow v9 and IPFIX.

Source of truth: the IANA "IP Flow Information Export (IPFIX) Entities"
registry (https://www.iana.org/assignments/ipfix/), which superseded RFC 5102;
ids below 128 are the NetFlow v9 field types of RFC 3954 §8 with the same
meaning.  The NAT elements 225-228 and 281/282 (postNAT*/postNAPT*) and natEvent
230 entered the registry from Cisco's NSEL/NEL work; RFC 8158 ("IPFIX
Information Elements for Logging NAT Events") defines their NAT-logging use and
the natEvent values; :mod:`nfflowd.formats.nat_events` sends natEvent and
observationTimeMilliseconds (323) in its NAT event templates.  Each element:
``IE(id, name, length, struct code, type)``, with the IANA name, its full
(non-reduced) length in bytes, the :mod:`struct` code of that length and the
IANA abstract data type.

The module also turns a received template into a record decoder
(:func:`compile_template`, :func:`decode_records`): v9 and IPFIX data records
are encoded alike (RFC 3954 §5.3, RFC 7011 §3.4.3 and §6).

The flow templates (one per address family) and how a
:class:`~nfflowd.messages.FlowRecord` fills them:

=========================================  =================================
element                                    value
=========================================  =================================
sourceIPv4Address 8 / sourceIPv6Address 27 ``src``
destinationIPv4Address 12 / ...IPv6 28     ``dst``
sourceTransportPort 7                      ``sport``; 0 for ICMP/ICMPv6
icmpTypeCodeIPv4 32 / icmpTypeCodeIPv6 139 ``dport`` for ICMP/ICMPv6, else 0
destinationTransportPort 11                ``dport`` (ICMP: type*256+code)
protocolIdentifier 4                       ``proto``
flowDirection 61                           0 ingress, 1 egress (ORIGINAL_OUT)
flowEndReason 136                          ``end_reason``
packetDeltaCount 2 / octetDeltaCount 1     ``packets`` / ``octets`` (u64)
flowStartMilliseconds 152 / ...End... 153  ``first_ms`` / ``last_ms`` (u64)
ingressInterface 10 / egressInterface 14   0 (unknown)
postNATSourceIPv4Address 225 / ...IPv6 281 ``post_src``
postNATDestinationIPv4Address 226 / 282    ``post_dst``
postNAPTSourceTransportPort 227            ``post_sport``
postNAPTDestinationTransportPort 228       ``post_dport``
flowId 148 (IPFIX only)                    ``ct_id`` (the conntrack id; 0: unknown)
ingressVRFID 234 / egressVRFID 235         ``zone`` (the conntrack zone), both
=========================================  =================================

The icmpTypeCode element precedes destinationTransportPort on purpose: nfdump
(1.7, ``src/netflow/ipfix.c``) stores both into the same slot, in template
order, and restores the port from the later one only for TCP and UDP; with this
order SCTP, DCCP, ... keep their destination port.

**Context fields.**  Conntrack zones are how Linux keeps the connections of
VRFs apart (a ruleset sets them, e.g. nftables ``ct zone set`` by input
interface, before conntrack sees the packet); a connection has one zone, so it
goes into both ingressVRFID and egressVRFID.  The conntrack id (what
``conntrack -L -o id`` prints and the JSON lines call ``ct_id``) goes into
flowId, which IPFIX's NAT event records carry too
(:mod:`nfflowd.formats.nat_events`): a collector joins a connection's events and
flow records by it.  NetFlow v9 leaves flowId out: nfdump 1.7's v9 table reads
148 as Cisco NSEL's connection id (``NF_F_CONN_ID``) and then stores a flow
record as an NSEL event (type EVENT, event "IGNORE", event time 0) and a NAT
event record without its natEvent (0, "INVALID" in ``-o nel``).  Decoders
(checked by tests/integration/test_v9_ipfix_decoders.py and
test_nat_events_decoders.py): nfdump 1.7 decodes 234/235 from v9 and IPFIX
(``%ivrf``/``%evrf``; ``ingress_vrf``/``egress_vrf`` in ``-o json``) but not 148
from IPFIX (its IPFIX table lacks it: no ``connect_id``, ``%nfc`` 0); tshark
decodes all three (``cflow.flow_id``, ``cflow.ingress_vrfid``,
``cflow.egress_vrfid``).  The firewall ``mark`` has no IANA element and nfdump
decodes no enterprise-specific one, so the templates leave it out: the JSON
lines carry it (:mod:`nfflowd.formats.json_lines`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from nfflowd.messages import Direction, FlowRecord


class IE(NamedTuple):
    """One information element: IANA id, name, full length, struct code, data type."""

    id: int
    name: str
    length: int
    code: str
    type: str


OCTET_DELTA_COUNT = IE(1, "octetDeltaCount", 8, "Q", "unsigned64")
PACKET_DELTA_COUNT = IE(2, "packetDeltaCount", 8, "Q", "unsigned64")
PROTOCOL_IDENTIFIER = IE(4, "protocolIdentifier", 1, "B", "unsigned8")
SOURCE_TRANSPORT_PORT = IE(7, "sourceTransportPort", 2, "H", "unsigned16")
SOURCE_IPV4_ADDRESS = IE(8, "sourceIPv4Address", 4, "4s", "ipv4Address")
INGRESS_INTERFACE = IE(10, "ingressInterface", 4, "I", "unsigned32")
DESTINATION_TRANSPORT_PORT = IE(11, "destinationTransportPort", 2, "H", "unsigned16")
DESTINATION_IPV4_ADDRESS = IE(12, "destinationIPv4Address", 4, "4s", "ipv4Address")
EGRESS_INTERFACE = IE(14, "egressInterface", 4, "I", "unsigned32")
SOURCE_IPV6_ADDRESS = IE(27, "sourceIPv6Address", 16, "16s", "ipv6Address")
DESTINATION_IPV6_ADDRESS = IE(28, "destinationIPv6Address", 16, "16s", "ipv6Address")
ICMP_TYPE_CODE_IPV4 = IE(32, "icmpTypeCodeIPv4", 2, "H", "unsigned16")
FLOW_DIRECTION = IE(61, "flowDirection", 1, "B", "unsigned8")
FLOW_END_REASON = IE(136, "flowEndReason", 1, "B", "unsigned8")
FLOW_ID = IE(148, "flowId", 8, "Q", "unsigned64")
ICMP_TYPE_CODE_IPV6 = IE(139, "icmpTypeCodeIPv6", 2, "H", "unsigned16")
OBSERVATION_DOMAIN_ID = IE(149, "observationDomainId", 4, "I", "unsigned32")
FLOW_START_MILLISECONDS = IE(152, "flowStartMilliseconds", 8, "Q", "dateTimeMilliseconds")
FLOW_END_MILLISECONDS = IE(153, "flowEndMilliseconds", 8, "Q", "dateTimeMilliseconds")
POST_NAT_SOURCE_IPV4_ADDRESS = IE(225, "postNATSourceIPv4Address", 4, "4s", "ipv4Address")
POST_NAT_DESTINATION_IPV4_ADDRESS = IE(226, "postNATDestinationIPv4Address", 4, "4s", "ipv4Address")
POST_NAPT_SOURCE_TRANSPORT_PORT = IE(227, "postNAPTSourceTransportPort", 2, "H", "unsigned16")
POST_NAPT_DESTINATION_TRANSPORT_PORT = IE(
    228, "postNAPTDestinationTransportPort", 2, "H", "unsigned16"
)
NAT_EVENT = IE(230, "natEvent", 1, "B", "unsigned8")
INGRESS_VRFID = IE(234, "ingressVRFID", 4, "I", "unsigned32")
EGRESS_VRFID = IE(235, "egressVRFID", 4, "I", "unsigned32")
POST_NAT_SOURCE_IPV6_ADDRESS = IE(281, "postNATSourceIPv6Address", 16, "16s", "ipv6Address")
POST_NAT_DESTINATION_IPV6_ADDRESS = IE(
    282, "postNATDestinationIPv6Address", 16, "16s", "ipv6Address"
)
OBSERVATION_TIME_MILLISECONDS = IE(
    323, "observationTimeMilliseconds", 8, "Q", "dateTimeMilliseconds"
)

#: Every element above, by id (what a decoder can name).
BY_ID: dict[int, IE] = {
    ie.id: ie
    for ie in (
        OCTET_DELTA_COUNT,
        PACKET_DELTA_COUNT,
        PROTOCOL_IDENTIFIER,
        SOURCE_TRANSPORT_PORT,
        SOURCE_IPV4_ADDRESS,
        INGRESS_INTERFACE,
        DESTINATION_TRANSPORT_PORT,
        DESTINATION_IPV4_ADDRESS,
        EGRESS_INTERFACE,
        SOURCE_IPV6_ADDRESS,
        DESTINATION_IPV6_ADDRESS,
        ICMP_TYPE_CODE_IPV4,
        FLOW_DIRECTION,
        FLOW_END_REASON,
        FLOW_ID,
        ICMP_TYPE_CODE_IPV6,
        OBSERVATION_DOMAIN_ID,
        FLOW_START_MILLISECONDS,
        FLOW_END_MILLISECONDS,
        POST_NAT_SOURCE_IPV4_ADDRESS,
        POST_NAT_DESTINATION_IPV4_ADDRESS,
        POST_NAPT_SOURCE_TRANSPORT_PORT,
        POST_NAPT_DESTINATION_TRANSPORT_PORT,
        NAT_EVENT,
        INGRESS_VRFID,
        EGRESS_VRFID,
        POST_NAT_SOURCE_IPV6_ADDRESS,
        POST_NAT_DESTINATION_IPV6_ADDRESS,
        OBSERVATION_TIME_MILLISECONDS,
    )
}
BY_NAME: dict[str, IE] = {ie.name: ie for ie in BY_ID.values()}

#: flowDirection values (IANA IE 61).
FLOW_DIRECTION_INGRESS = 0
FLOW_DIRECTION_EGRESS = 1


def _flow_fields(src: IE, dst: IE, icmp: IE, post_src: IE, post_dst: IE) -> tuple[IE, ...]:
    return (
        src,
        dst,
        SOURCE_TRANSPORT_PORT,
        icmp,
        DESTINATION_TRANSPORT_PORT,
        PROTOCOL_IDENTIFIER,
        FLOW_DIRECTION,
        FLOW_END_REASON,
        PACKET_DELTA_COUNT,
        OCTET_DELTA_COUNT,
        FLOW_START_MILLISECONDS,
        FLOW_END_MILLISECONDS,
        INGRESS_INTERFACE,
        EGRESS_INTERFACE,
        post_src,
        post_dst,
        POST_NAPT_SOURCE_TRANSPORT_PORT,
        POST_NAPT_DESTINATION_TRANSPORT_PORT,
        FLOW_ID,
        INGRESS_VRFID,
        EGRESS_VRFID,
    )


#: The IPv4 flow template's fields, in wire order.
FLOW_FIELDS_V4 = _flow_fields(
    SOURCE_IPV4_ADDRESS, DESTINATION_IPV4_ADDRESS, ICMP_TYPE_CODE_IPV4,
    POST_NAT_SOURCE_IPV4_ADDRESS, POST_NAT_DESTINATION_IPV4_ADDRESS,
)  # fmt: skip
#: The IPv6 flow template's fields, in wire order (IPFIX; v9 swaps the ICMP element).
FLOW_FIELDS_V6 = _flow_fields(
    SOURCE_IPV6_ADDRESS, DESTINATION_IPV6_ADDRESS, ICMP_TYPE_CODE_IPV6,
    POST_NAT_SOURCE_IPV6_ADDRESS, POST_NAT_DESTINATION_IPV6_ADDRESS,
)  # fmt: skip

#: Protocols whose FlowRecord ports are ICMP id / type*256+code (messages.py).
ICMP_PROTOCOLS = frozenset({1, 58})


def record_format(fields: Sequence[IE]) -> str:
    """The big-endian struct format of a data record with ``fields`` at full length."""
    return "!" + "".join(ie.code for ie in fields)


def flow_values(rec: FlowRecord) -> tuple[object, ...]:
    """The values of ``rec`` in :data:`FLOW_FIELDS_V4`/``_V6`` order (IPFIX's templates;
    v9's: :func:`nfflowd.formats.netflow_v9.flow_values`).

    Does not validate; packing into the family's record struct does (addresses
    must be checked for length by the caller: ``4s`` pads and truncates).
    """
    proto = rec.proto
    icmp = proto in ICMP_PROTOCOLS
    return (
        rec.src,
        rec.dst,
        0 if icmp else rec.sport,
        rec.dport if icmp else 0,
        rec.dport,
        proto,
        FLOW_DIRECTION_EGRESS
        if rec.direction == Direction.ORIGINAL_OUT
        else FLOW_DIRECTION_INGRESS,
        rec.end_reason,
        rec.packets,
        rec.octets,
        rec.first_ms,
        rec.last_ms,
        0,
        0,
        rec.post_src,
        rec.post_dst,
        rec.post_sport,
        rec.post_dport,
        rec.ct_id,
        rec.zone,
        rec.zone,
    )


# -- decoding data records by a received template ---------------------------------

#: Field length meaning "variable" (RFC 7011 §7): 1-byte length, or 255 + 2 bytes.
VARIABLE_LENGTH = 65535
#: the 2-byte length that follows a 255 variable-length prefix (RFC 7011 §7)
VARLEN_LONG_FORMAT = "!H"
VARLEN_LONG = struct.Struct(VARLEN_LONG_FORMAT)
_UINT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


class Field(NamedTuple):
    """A field specifier as received: element id, length, enterprise number (0: IANA)."""

    id: int
    length: int
    enterprise: int = 0


class Template(NamedTuple):
    """A received template, ready to decode data records (see :func:`compile_template`)."""

    template_id: int
    fields: tuple[Field, ...]
    scope_count: int
    names: tuple[str, ...]
    struct: struct.Struct | None  # None when a field has variable length
    to_int: tuple[int, ...]  # indexes of unsigned fields of odd reduced size (bytes -> int)
    numeric: frozenset[int]  # indexes of fixed-length numeric fields (variable-length path)


#: Received templates by (observation domain / source id, template id).
Templates = dict[tuple[int, int], Template]


def field_name(f: Field) -> str:
    """The IANA name of a known element, else ``ie<id>`` / ``ie<enterprise>.<id>``."""
    if f.enterprise:
        return f"ie{f.enterprise}.{f.id}"
    ie = BY_ID.get(f.id)
    return ie.name if ie is not None else f"ie{f.id}"


def distinct(names: Sequence[str]) -> tuple[str, ...]:
    """*names* with the n-th repetition of a name called ``name#n`` (a template may carry
    an element twice, RFC 7011 §8: e.g. the first and last observationTimeMilliseconds
    of a reliability options record, :mod:`nfflowd.formats.coverage_options`)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        n = seen[name] = seen.get(name, 0) + 1
        out.append(name if n == 1 else f"{name}#{n}")
    return tuple(out)


def compile_template(
    template_id: int,
    fields: Sequence[Field],
    scope_count: int = 0,
    names: Sequence[str] | None = None,
    *,
    opaque: int = 0,
) -> Template:
    """A decoder for records of ``fields``: known unsigned/time elements become ints
    (also in reduced-size encoding, RFC 7011 §6.2), everything else bytes, as are
    the first ``opaque`` fields (v9 option scopes, whose types are no elements)."""
    codes: list[str] = []
    to_int: list[int] = []
    numeric_at: set[int] = set()
    variable = False
    for i, f in enumerate(fields):
        if f.length == VARIABLE_LENGTH:
            variable = True
        ie = None if f.enterprise or i < opaque else BY_ID.get(f.id)
        numeric = ie is not None and not ie.type.endswith("Address")
        numeric = numeric and f.length != VARIABLE_LENGTH
        if numeric:
            numeric_at.add(i)
        code = _UINT_CODES.get(f.length) if numeric else None
        if code is None:
            code = f"{f.length}s"
            if numeric:
                to_int.append(i)
        codes.append(code)
    st = None if variable else struct.Struct("!" + "".join(codes))
    return Template(
        template_id,
        tuple(fields),
        scope_count,
        distinct(names if names is not None else [field_name(f) for f in fields]),
        st,
        tuple(to_int),
        frozenset(numeric_at),
    )


def decode_records(tmpl: Template, data: bytes, off: int, end: int) -> list[dict[str, Any]]:
    """The data records of one set body ``data[off:end]``; a tail too short for a
    record is padding.  ValueError with the offset when a variable field overruns."""
    out: list[dict[str, Any]] = []
    names = tmpl.names
    st = tmpl.struct
    if st is not None:
        size = st.size
        if size == 0:
            raise ValueError(f"offset {off}: template {tmpl.template_id} has zero-length records")
        for pos in range(off, end - size + 1, size):
            vals: Any = st.unpack_from(data, pos)
            if tmpl.to_int:
                vals = list(vals)
                for i in tmpl.to_int:
                    vals[i] = int.from_bytes(vals[i], "big")
            out.append(dict(zip(names, vals, strict=True)))
        return out
    minimum = sum(1 if f.length == VARIABLE_LENGTH else f.length for f in tmpl.fields)
    while end - off >= max(minimum, 1):
        rec: dict[str, Any] = {}
        for i, (f, name) in enumerate(zip(tmpl.fields, names, strict=True)):
            n = f.length
            if n == VARIABLE_LENGTH:
                if off >= end:
                    raise ValueError(f"offset {off}: {name}: missing variable length")
                n = data[off]
                off += 1
                if n == 255:
                    if end - off < 2:
                        raise ValueError(f"offset {off}: {name}: truncated variable length")
                    n = VARLEN_LONG.unpack_from(data, off)[0]
                    off += 2
            if off + n > end:
                raise ValueError(f"offset {off}: {name}: {n} bytes run past the set end {end}")
            raw = data[off : off + n]
            off += n
            rec[name] = int.from_bytes(raw, "big") if i in tmpl.numeric else raw
        out.append(rec)
    return out
