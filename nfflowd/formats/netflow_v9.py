"""NetFlow version 9 export packets (RFC 3954): pack, unpack, and a stateful encoder.

Wire layout (RFC 3954 §5), all fields big-endian::

    packet header (§5.1):     version=9(2) count(2) sysUptime(4) unix_secs(4)
                              sequence(4) sourceId(4)
    flowset header (§5.2/5.3): flowsetId(2) length(2)   0 = templates,
                              1 = options templates, >= 256 = data
    template record (§5.2):   templateId(2) fieldCount(2), (type(2) length(2))*
    options template (§6.1):  templateId(2) scopeLength(2) optionLength(2),
                              scope fields then option fields, (type, length)*
    data record (§5.3):       the template's fields back to back; the flowset is
                              padded with zeros to a 4-byte boundary

``count`` is the number of template and data records in the packet (§5.1),
``sequence`` the number of export packets sent before this one (§5.1: "of all
Export Packets"), mod 2**32.

Element choice (see :mod:`nfflowd.formats.ipfix_ies`): the same two templates
as IPFIX (256 IPv4, 257 IPv6) but for flowId (below), with absolute times:
flowStartMilliseconds 152 / flowEndMilliseconds 153 (u64 epoch ms) rather than
FIRST_SWITCHED 22 / LAST_SWITCHED 21.  nfdump 1.7 (``src/netflow/netflow_v9.c``) reads 152/153 as
the flow's times verbatim, so they decode exactly to the ms; with 21/22 it would
compute ``1000 * unix_secs - sysUptime + FIRST``, which needs the header's
sysUptime chosen to make up for the missing sub-second export time.  tshark
decodes 152/153 in v9 as well (the ``netflow`` package 0.12 knows 152 but not
153 in v9).  The header's sysUptime is the host's uptime (``now - boot``) mod
2**32, informational only.

IPv6 ICMP: v9 has no icmpTypeCodeIPv6 (139 is IPFIX-only and nfdump's v9 table
lacks it, so ICMPv6 would decode with port 0); RFC 3954's ICMP_TYPE (32) is
family-neutral ("ICMP Type * 256 + ICMP code"), and nfdump's v9 code uses it
for ICMP and ICMPv6 alike.  The v9 IPv6 template therefore carries 32, which
decodes under the IPFIX name ``icmpTypeCodeIPv4``.

No flowId (148): nfdump 1.7's v9 table reads it as Cisco NSEL's connection id
and then takes the records for NSEL events (a NAT event record loses its
natEvent), see :mod:`nfflowd.formats.ipfix_ies`; the conntrack zone is sent
(ingressVRFID/egressVRFID 234/235), as in IPFIX.

nfdump 1.7 decodes from v9 every element sent except flowEndReason 136 (not in
its v9 table), including postNATSource/DestinationIPv6Address (281/282).
With ``nat_events`` NAT event records follow each batch's flows (templates
258/259, :mod:`nfflowd.formats.nat_events`).

With ``coverage`` the templates also carry the coverage options template (260, an
Options Template FlowSet, id 1, :mod:`nfflowd.formats.coverage_options`), refreshed
with them, and :meth:`V9Encoder.encode_gaps` sends coverage gaps as its options data
records, each packet with the options template; ``count`` counts the options
template and records too (§5.1: "Template and Flow Records (both regular and
Options)").

One record per direction (``per_direction``): the correlator's ORIGINAL_OUT
record, the original direction as it left (the v5 triplet's second record,
flowDirection egress), says nothing the ORIGINAL_IN record's postNAT* elements
(225-228, 281/282) do not; a collector that sums bytes or packets (``nfdump -s``,
top talkers) would count NATed traffic twice.  With ``per_direction`` the
encoder leaves those records out and counts them in ``left_out`` (NAT events come
from ORIGINAL_IN records: unchanged).  The export stage sets it for every v9
collector but those configured with ``records triplet`` (:mod:`nfflowd.config`);
the encoder's own default encodes every record it is given.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from nfflowd.formats import coverage_options
from nfflowd.formats.ipfix_ies import (
    FLOW_FIELDS_V4,
    FLOW_FIELDS_V6,
    FLOW_ID,
    ICMP_TYPE_CODE_IPV4,
    ICMP_TYPE_CODE_IPV6,
    IE,
    Field,
    Templates,
    compile_template,
    decode_records,
    record_format,
)
from nfflowd.formats.ipfix_ies import flow_values as ipfix_flow_values
from nfflowd.formats.nat_events import TEMPLATES_V9 as NAT_TEMPLATES
from nfflowd.formats.nat_events import Fill, NatEvents
from nfflowd.formats.uptime import host_boot_ms
from nfflowd.messages import Direction, FlowRecord

VERSION = 9
#: version, count, sysUptime, unix_secs, sequence, sourceId (§5.1)
HEADER_FORMAT = "!HHIIII"
#: flowsetId, length (§5.2, §5.3)
FLOWSET_HEADER_FORMAT = "!HH"
#: templateId, fieldCount (§5.2)
TEMPLATE_HEADER_FORMAT = "!HH"
#: templateId, optionScopeLength, optionLength (§6.1)
OPTIONS_TEMPLATE_HEADER_FORMAT = "!HHH"
#: field type, field length (§5.2)
FIELD_FORMAT = "!HH"
HEADER = struct.Struct(HEADER_FORMAT)
FLOWSET_HEADER = struct.Struct(FLOWSET_HEADER_FORMAT)
TEMPLATE_HEADER = struct.Struct(TEMPLATE_HEADER_FORMAT)
OPTIONS_TEMPLATE_HEADER = struct.Struct(OPTIONS_TEMPLATE_HEADER_FORMAT)
FIELD = struct.Struct(FIELD_FORMAT)
HEADER_SIZE = HEADER.size
FLOWSET_HEADER_SIZE = FLOWSET_HEADER.size

TEMPLATE_FLOWSET_ID = 0
OPTIONS_TEMPLATE_FLOWSET_ID = 1
MIN_DATA_FLOWSET_ID = 256
TEMPLATE_ID_V4 = 256
TEMPLATE_ID_V6 = 257
#: v9's IPv4 flow template: the IPFIX one without flowId (see the module docstring).
FLOW_FIELDS_V4_V9 = tuple(ie for ie in FLOW_FIELDS_V4 if ie != FLOW_ID)
#: v9's IPv6 flow template: the IPFIX one without flowId, with ICMP_TYPE (32) for ICMPv6.
FLOW_FIELDS_V6_V9 = tuple(
    ICMP_TYPE_CODE_IPV4 if ie == ICMP_TYPE_CODE_IPV6 else ie
    for ie in FLOW_FIELDS_V6
    if ie != FLOW_ID
)
RECORD_V4 = struct.Struct(record_format(FLOW_FIELDS_V4_V9))
RECORD_V6 = struct.Struct(record_format(FLOW_FIELDS_V6_V9))
FLOW_TEMPLATES: tuple[tuple[int, tuple[IE, ...]], ...] = (
    (TEMPLATE_ID_V4, FLOW_FIELDS_V4_V9),
    (TEMPLATE_ID_V6, FLOW_FIELDS_V6_V9),
)
_FLOW_ID_AT = FLOW_FIELDS_V4.index(FLOW_ID)
_U32 = 0xFFFFFFFF
_ORIGINAL_OUT = int(Direction.ORIGINAL_OUT)
#: Names of the options template scope types (§6.1).
SCOPE_NAMES = {1: "scopeSystem", 2: "scopeInterface", 3: "scopeLineCard", 4: "scopeCache",
               5: "scopeTemplate"}  # fmt: skip


def flow_values(rec: FlowRecord) -> tuple[object, ...]:
    """The values of ``rec`` in :data:`FLOW_FIELDS_V4_V9`/``_V6_V9`` order (the IPFIX
    ones without flowId; not validated, see :func:`nfflowd.formats.ipfix_ies.flow_values`)."""
    values = ipfix_flow_values(rec)
    return values[:_FLOW_ID_AT] + values[_FLOW_ID_AT + 1 :]


class V9Header(NamedTuple):
    version: int
    count: int  # type: ignore[assignment]  # the RFC's field name; shadows tuple.count
    sys_uptime: int
    unix_secs: int
    sequence: int
    source_id: int


def _pad(n: int) -> int:
    return -n & 3


def _parse_templates(data: bytes, off: int, end: int, source: int, templates: Templates) -> int:
    n = 0
    while end - off >= TEMPLATE_HEADER.size and any(data[off:end]):
        tid, count = TEMPLATE_HEADER.unpack_from(data, off)
        if tid < MIN_DATA_FLOWSET_ID:
            raise ValueError(f"offset {off}: template id {tid} below {MIN_DATA_FLOWSET_ID}")
        off += TEMPLATE_HEADER.size
        if count == 0 or end - off < count * FIELD.size:
            raise ValueError(f"offset {off}: template {tid}: {count} fields do not fit")
        fields = [Field(*FIELD.unpack_from(data, off + 4 * i)) for i in range(count)]
        off += count * FIELD.size
        templates[(source, tid)] = compile_template(tid, fields)
        n += 1
    return n


def _parse_options(data: bytes, off: int, end: int, source: int, templates: Templates) -> int:
    n = 0
    while end - off >= OPTIONS_TEMPLATE_HEADER.size and any(data[off:end]):
        tid, scope_len, opt_len = OPTIONS_TEMPLATE_HEADER.unpack_from(data, off)
        if tid < MIN_DATA_FLOWSET_ID:
            raise ValueError(f"offset {off}: template id {tid} below {MIN_DATA_FLOWSET_ID}")
        off += OPTIONS_TEMPLATE_HEADER.size
        if scope_len % 4 or opt_len % 4 or end - off < scope_len + opt_len:
            raise ValueError(f"offset {off}: options template {tid}: bad lengths")
        fields = [Field(*FIELD.unpack_from(data, p)) for p in range(off, off + scope_len, 4)]
        names = [SCOPE_NAMES.get(f.id, f"scope{f.id}") for f in fields]
        opts = [
            Field(*FIELD.unpack_from(data, p))
            for p in range(off + scope_len, off + scope_len + opt_len, 4)
        ]
        off += scope_len + opt_len
        scoped = compile_template(tid, opts)
        templates[(source, tid)] = compile_template(
            tid, fields + opts, len(fields), names + list(scoped.names), opaque=len(fields)
        )
        n += 1
    return n


def unpack_datagram(
    data: bytes, templates: Templates | None = None
) -> tuple[V9Header, list[dict[str, Any]]]:
    """Parse one v9 export packet: store its templates into ``templates`` (keyed by
    source id and template id), decode data flowsets with the templates known by
    then, skip those whose template is unknown.  Records are dicts keyed by IPFIX
    element name.  ValueError with the byte offset on malformed input, including
    a header count that differs from the records found (checked when every
    flowset could be decoded)."""
    if templates is None:
        templates = {}
    n = len(data)
    if n < HEADER_SIZE:
        raise ValueError(f"offset 0: truncated header, {n} of {HEADER_SIZE} bytes")
    h = V9Header(*HEADER.unpack_from(data, 0))
    if h.version != VERSION:
        raise ValueError(f"offset 0: version {h.version}, expected {VERSION}")
    records: list[dict[str, Any]] = []
    found = 0
    complete = True
    off = HEADER_SIZE
    while off < n:
        if n - off < FLOWSET_HEADER_SIZE:
            raise ValueError(f"offset {off}: {n - off} bytes after the last flowset")
        fid, flen = FLOWSET_HEADER.unpack_from(data, off)
        end = off + flen
        if flen < FLOWSET_HEADER_SIZE:
            raise ValueError(f"offset {off}: flowset {fid}: length {flen} below 4")
        if end > n:
            raise ValueError(f"offset {off}: flowset {fid}: length {flen} runs past the end ({n})")
        body = off + FLOWSET_HEADER_SIZE
        if fid == TEMPLATE_FLOWSET_ID:
            found += _parse_templates(data, body, end, h.source_id, templates)
        elif fid == OPTIONS_TEMPLATE_FLOWSET_ID:
            found += _parse_options(data, body, end, h.source_id, templates)
        elif fid >= MIN_DATA_FLOWSET_ID:
            tmpl = templates.get((h.source_id, fid))
            if tmpl is None:
                complete = False
            else:
                got = decode_records(tmpl, data, body, end)
                found += len(got)
                records.extend(got)
        else:
            raise ValueError(f"offset {off}: reserved flowset id {fid}")
        off = end
    if complete and found != h.count:
        raise ValueError(f"offset 2: count {h.count}, but the packet holds {found} records")
    return h, records


def pack_datagram(
    *,
    templates: Sequence[tuple[int, Sequence[IE]]] = (),
    data: Sequence[tuple[int, Sequence[IE], Sequence[Sequence[Any]]]] = (),
    sys_uptime: int,
    unix_secs: int,
    sequence: int,
    source_id: int,
) -> bytes:
    """One export packet: a template flowset announcing ``templates`` (if any),
    then one data flowset per ``(template id, fields, rows)`` entry of ``data``."""
    parts = []
    count = len(templates)
    if templates:
        body = b"".join(
            TEMPLATE_HEADER.pack(tid, len(fields))
            + b"".join(FIELD.pack(ie.id, ie.length) for ie in fields)
            for tid, fields in templates
        )
        parts.append(FLOWSET_HEADER.pack(TEMPLATE_FLOWSET_ID, 4 + len(body)) + body)
    for tid, fields, rows in data:
        st = struct.Struct(record_format(fields))
        try:
            body = b"".join(st.pack(*row) for row in rows)
        except struct.error as e:
            raise ValueError(f"data flowset {tid}: {e}") from None
        body += bytes(_pad(4 + len(body)))
        parts.append(FLOWSET_HEADER.pack(tid, 4 + len(body)) + body)
        count += len(rows)
    try:
        head = HEADER.pack(VERSION, count, sys_uptime, unix_secs, sequence, source_id)
    except struct.error as e:
        raise ValueError(f"header: {e}") from None
    return head + b"".join(parts)


class V9Encoder:
    """Stateful v9 exporter: batches of flows -> export packets of at most ``mtu`` bytes.

    Templates go into the first packet after construction (an export restart)
    and again in every ``template_refresh_packets``-th packet or once
    ``template_refresh_seconds`` have passed, whichever comes first (RFC 3954
    §9: a Collector expires templates that are not refreshed in time, and over
    UDP it only ever learns them from such refreshes); a value <= 0 disables
    that trigger.  Records that cannot be encoded (family not 4/6, address of the
    wrong length, value out of range) are skipped and counted in ``invalid``.
    Other counters: ``datagrams``, ``records``, ``template_sends``.  ``nat_events``:
    NAT event records too, natEvent values by ``nat_event_numbering`` (1 or 4).
    ``per_direction``: leave out ORIGINAL_OUT records, counted in ``left_out`` (see
    the module docstring).
    """

    def __init__(
        self,
        *,
        source_id: int = 0,
        template_refresh_packets: int = 20,
        template_refresh_seconds: float = 1800.0,
        mtu: int = 1400,
        boot_ms: int | None = None,
        sequence: int = 0,
        nat_events: bool = False,
        nat_event_numbering: int = 1,
        per_direction: bool = False,
        coverage: bool = False,
    ) -> None:
        if not 0 <= source_id <= _U32:
            raise ValueError(f"source_id {source_id} out of range 0..2**32-1")
        self.source_id = source_id
        self.template_refresh_packets = template_refresh_packets
        self.template_refresh_seconds = template_refresh_seconds
        self._refresh_ms = int(template_refresh_seconds * 1000)
        self.boot_ms = host_boot_ms() if boot_ms is None else boot_ms
        self.nat = NatEvents(nat_event_numbering, flow_id=False) if nat_events else None
        self.per_direction = per_direction
        templates = FLOW_TEMPLATES + (NAT_TEMPLATES if nat_events else ())
        self.coverage = coverage
        self._options_flowset = coverage_options.v9_template_flowset() if coverage else b""
        self._template_count = len(templates) + (1 if coverage else 0)
        self._template_flowset = (
            pack_datagram(templates=templates, sys_uptime=0, unix_secs=0, sequence=0, source_id=0)[
                HEADER_SIZE:
            ]
            + self._options_flowset
        )
        limit = mtu & ~3  # flowsets end 4-byte aligned
        one = FLOWSET_HEADER_SIZE + RECORD_V6.size
        least = HEADER_SIZE + len(self._template_flowset) + one + _pad(one)
        if not least <= limit or mtu > 0xFFFF:
            raise ValueError(f"mtu {mtu}: must be within {least}..65535")
        self.mtu = mtu
        self._limit = limit
        self.sequence = sequence & _U32
        self.invalid = 0
        self.datagrams = 0
        self.records = 0
        self.template_sends = 0
        self.left_out = 0  # ORIGINAL_OUT records not sent (per_direction)
        self.gaps = 0  # coverage gap records sent (encode_gaps)
        self._since_template: int | None = None  # packets since the last templates
        self._template_ms = 0
        self._buf = bytearray(limit)

    def templates_due(self, now_ms: int) -> bool:
        """Whether the next packet carries the templates."""
        since = self._since_template
        if since is None:
            return True
        if 0 < self.template_refresh_packets <= since:
            return True
        return 0 < self._refresh_ms <= now_ms - self._template_ms

    def encode(self, records: Sequence[FlowRecord], now_ns: int) -> list[bytes]:
        """Export packets for ``records`` (in order), exported at ``now_ns``."""
        now_ms = now_ns // 1_000_000
        uptime = (now_ms - self.boot_ms) & _U32
        secs = now_ns // 1_000_000_000 & _U32
        out: list[bytes] = []
        buf = self._buf
        limit = self._limit
        pack4 = RECORD_V4.pack_into
        pack6 = RECORD_V6.pack_into
        size4 = RECORD_V4.size
        size6 = RECORD_V6.size
        omit = _ORIGINAL_OUT if self.per_direction else 0  # 0: no record's direction
        off, with_templates = self._open(now_ms)
        set_start = set_id = count = 0
        for rec in records:
            (
                first,
                last,
                fam,
                proto,
                src,
                dst,
                sport,
                dport,
                packets,
                octets,
                psrc,
                pdst,
                psport,
                pdport,
                direction,
                end_reason,
                _mark,
                zone,
                _ct_id,
            ) = rec
            if direction == omit:
                self.left_out += 1
                continue
            if not end_reason:  # OPENED: a NAT create event below, no flow record
                continue
            if fam == 4:
                sid, pack, size, alen = TEMPLATE_ID_V4, pack4, size4, 4
            elif fam == 6:
                sid, pack, size, alen = TEMPLATE_ID_V6, pack6, size6, 16
            else:
                self.invalid += 1
                continue
            if len(src) != alen or len(dst) != alen or len(psrc) != alen or len(pdst) != alen:
                self.invalid += 1
                continue
            new_set = sid != set_id
            pos = off + (-off & 3) + FLOWSET_HEADER_SIZE if new_set else off
            if pos + size > limit:
                off = self._close(set_start, set_id, off)
                out.append(self._finish(off, count, with_templates, now_ms, uptime, secs))
                off, with_templates = self._open(now_ms)
                set_start = set_id = count = 0
                new_set = True
                pos = off + FLOWSET_HEADER_SIZE
            icmp = proto == 1 or proto == 58
            try:
                pack(
                    buf,
                    pos,
                    src,
                    dst,
                    0 if icmp else sport,
                    dport if icmp else 0,
                    dport,
                    proto,
                    1 if direction == 2 else 0,
                    end_reason,
                    packets,
                    octets,
                    first,
                    last,
                    0,
                    0,
                    psrc,
                    pdst,
                    psport,
                    pdport,
                    zone,
                    zone,
                )
            except struct.error:
                self.invalid += 1
                continue
            if new_set:
                if set_id:
                    off = self._close(set_start, set_id, off)
                set_start = off
                set_id = sid
            off = pos + size
            count += 1
        if self.nat is not None:
            f = self.nat.fill(
                records,
                Fill(off, with_templates, set_start, set_id, count),
                buf,
                limit,
                4,
                lambda f: self._finish(f.off, f.count, f.templates, now_ms, uptime, secs),
                lambda: Fill(*self._open(now_ms)),
                out,
            )
            off, with_templates, set_start, set_id, count = (
                f.off,
                f.templates,
                f.set_start,
                f.set_id,
                f.count,
            )
        if count:
            off = self._close(set_start, set_id, off)
            out.append(self._finish(off, count, with_templates, now_ms, uptime, secs))
        return out

    def encode_gaps(self, gaps: Sequence[coverage_options.GapRow], now_ns: int) -> list[bytes]:
        """Packets of coverage gap options records, each with the options template (and
        the data templates when they are due); ValueError without ``coverage``, or for a
        gap that cannot be encoded (nothing sent then)."""
        if not self.coverage:
            raise ValueError("coverage gaps need an encoder made with coverage=True")
        now_ms = now_ns // 1_000_000
        uptime = (now_ms - self.boot_ms) & _U32
        secs = now_ns // 1_000_000_000 & _U32
        size = coverage_options.RECORD.size
        coverage_options.pack_records(self.source_id, gaps)  # all or nothing
        out: list[bytes] = []
        at = 0
        while at < len(gaps):
            off, with_templates = self._open(now_ms)
            extra = 0
            if not with_templates:
                end = off + len(self._options_flowset)
                self._buf[off:end] = self._options_flowset
                off, extra = end, 1
            room = max(1, (self._limit - off - FLOWSET_HEADER_SIZE - 3) // size)
            chunk = gaps[at : at + room]
            data = coverage_options.pack_data_set(self.source_id, chunk, pad=True)
            self._buf[off : off + len(data)] = data
            end = off + len(data)
            out.append(
                self._finish(end, len(chunk) + extra, with_templates, now_ms, uptime, secs, False)
            )
            self.gaps += len(chunk)
            at += len(chunk)
        return out

    def _close(self, start: int, set_id: int, off: int) -> int:
        """Pad the open data flowset to 4 bytes and write its header; returns its end."""
        pad = -(off - start) & 3
        if pad:
            self._buf[off : off + pad] = bytes(pad)
        FLOWSET_HEADER.pack_into(self._buf, start, set_id, off + pad - start)
        return off + pad

    def _open(self, now_ms: int) -> tuple[int, bool]:
        if self.templates_due(now_ms):
            end = HEADER_SIZE + len(self._template_flowset)
            self._buf[HEADER_SIZE:end] = self._template_flowset
            return end, True
        return HEADER_SIZE, False

    def _finish(
        self,
        off: int,
        count: int,
        with_templates: bool,
        now_ms: int,
        uptime: int,
        secs: int,
        flows: bool = True,
    ) -> bytes:
        """Write the header of the packet in the buffer: *count* records besides the data
        templates (flows or, not *flows*, coverage gaps and their options template)."""
        total = count + (self._template_count if with_templates else 0)
        HEADER.pack_into(self._buf, 0, VERSION, total, uptime, secs, self.sequence, self.source_id)
        self.sequence = (self.sequence + 1) & _U32
        self.datagrams += 1
        if flows:
            self.records += count
        if with_templates:
            self.template_sends += 1
            self._since_template = 1
            self._template_ms = now_ms
        else:
            assert self._since_template is not None
            self._since_template += 1
        return bytes(self._buf[:off])
