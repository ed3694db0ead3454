"""IPFIX messages (RFC 7011): pack, unpack, and a stateful encoder.

Wire layout (RFC 7011 §3), all fields big-endian::

    message header (§3.1):   version=10(2) length(2) exportTime(4)
                             sequenceNumber(4) observationDomainId(4)
    set header (§3.3.2):     setId(2) length(2)   2 = templates, 3 = options
                                                  templates, >= 256 = data
    template record (§3.4.1): templateId(2) fieldCount(2), then per field
                             (§3.2) ieId(2, top bit = enterprise) length(2)
                             [enterpriseNumber(4)]
    options template (§3.4.2.2): templateId(2) fieldCount(2) scopeFieldCount(2) ...
    data record (§3.4.3):    the template's fields back to back; length 65535
                             = variable (§7: 1-byte length, or 255 + 2 bytes)

What :class:`IpfixEncoder` sends: two data templates, 256 for IPv4 and 257 for
IPv6 (fields in :mod:`nfflowd.formats.ipfix_ies`), no padding (optional in
IPFIX, §3.3.1), one data set per run of same-family records.  The sequence
number is the count of data records sent before the message, mod 2**32
(§3.1).  Over UDP templates must be re-sent periodically (§8.4): the templates
go into the first message after construction — an export restart — and again
in every ``template_refresh_packets``-th message or once
``template_refresh_seconds`` have passed, whichever comes first.

nfdump 1.7 (``src/netflow/ipfix.c``) decodes every element sent except
postNATSourceIPv6Address/postNATDestinationIPv6Address (281/282) and flowId
(148, the conntrack id), which its IPFIX table lacks (its v9 table has 281/282;
tshark decodes all); times are exact to the ms since flowStart/EndMilliseconds
are absolute.

With ``nat_events`` the encoder also sends NAT event records (templates 258/259,
:mod:`nfflowd.formats.nat_events`) after each batch's flow records; the sequence
number counts them too.

With ``coverage`` the encoder announces the coverage options template (260,
:mod:`nfflowd.formats.coverage_options`, an Options Template Set, id 3) with the data
templates, refreshed with them, and :meth:`IpfixEncoder.encode_gaps` sends coverage
gaps as its options data records, each message with the options template (a gap is
rare and a collector that has not seen the template since its restart would drop
it); the sequence number counts them as data records (§3.1).

With ``per_direction`` the encoder leaves out the ORIGINAL_OUT records (the
original direction as it left, flowDirection egress; counted in ``left_out``):
the ORIGINAL_IN record's postNAT* elements already say it, and collectors that
sum bytes or packets would count NATed traffic twice (see
:mod:`nfflowd.formats.netflow_v9`, which does the same).  The export stage sets
it for IPFIX collectors unless ``records triplet``; the encoder's own default
encodes every record it is given.  Left-out records take no sequence number.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from nfflowd.formats import coverage_options
from nfflowd.formats.ipfix_ies import (
    FLOW_FIELDS_V4,
    FLOW_FIELDS_V6,
    IE,
    Field,
    Templates,
    compile_template,
    decode_records,
    record_format,
)
from nfflowd.formats.nat_events import TEMPLATES as NAT_TEMPLATES
from nfflowd.formats.nat_events import Fill, NatEvents
from nfflowd.messages import Direction, FlowRecord

VERSION = 10
#: version, length, exportTime, sequenceNumber, observationDomainId (§3.1)
HEADER_FORMAT = "!HHIII"
#: setId, length (§3.3.2)
SET_HEADER_FORMAT = "!HH"
#: templateId, fieldCount (§3.4.1)
TEMPLATE_HEADER_FORMAT = "!HH"
#: templateId, fieldCount, scopeFieldCount (§3.4.2.2)
OPTIONS_TEMPLATE_HEADER_FORMAT = "!HHH"
#: informationElementId (top bit: enterprise), fieldLength (§3.2)
FIELD_SPECIFIER_FORMAT = "!HH"
#: enterpriseNumber, after a field specifier with the top bit set (§3.2)
ENTERPRISE_FORMAT = "!I"
HEADER = struct.Struct(HEADER_FORMAT)
SET_HEADER = struct.Struct(SET_HEADER_FORMAT)
TEMPLATE_HEADER = struct.Struct(TEMPLATE_HEADER_FORMAT)
OPTIONS_TEMPLATE_HEADER = struct.Struct(OPTIONS_TEMPLATE_HEADER_FORMAT)
FIELD_SPECIFIER = struct.Struct(FIELD_SPECIFIER_FORMAT)
ENTERPRISE = struct.Struct(ENTERPRISE_FORMAT)
HEADER_SIZE = HEADER.size
SET_HEADER_SIZE = SET_HEADER.size

TEMPLATE_SET_ID = 2
OPTIONS_TEMPLATE_SET_ID = 3
MIN_DATA_SET_ID = 256
ENTERPRISE_BIT = 0x8000
#: Template ids of the flow templates (data sets carry them as set id).
TEMPLATE_ID_V4 = 256
TEMPLATE_ID_V6 = 257
#: The data record structs of the two flow templates.
RECORD_V4 = struct.Struct(record_format(FLOW_FIELDS_V4))
RECORD_V6 = struct.Struct(record_format(FLOW_FIELDS_V6))
FLOW_TEMPLATES: tuple[tuple[int, tuple[IE, ...]], ...] = (
    (TEMPLATE_ID_V4, FLOW_FIELDS_V4),
    (TEMPLATE_ID_V6, FLOW_FIELDS_V6),
)
_U32 = 0xFFFFFFFF
_ORIGINAL_OUT = int(Direction.ORIGINAL_OUT)


class IpfixHeader(NamedTuple):
    version: int
    length: int
    export_time: int
    sequence: int
    observation_domain: int


def _parse_templates(
    data: bytes, off: int, end: int, options: bool, domain: int, templates: Templates
) -> int:
    """Store the template records of one (options) template set; returns how many."""
    n = 0
    set_id = OPTIONS_TEMPLATE_SET_ID if options else TEMPLATE_SET_ID
    while end - off >= TEMPLATE_HEADER.size and any(data[off:end]):
        tid, count = TEMPLATE_HEADER.unpack_from(data, off)
        if count == 0 and (tid == set_id or tid >= MIN_DATA_SET_ID):
            # withdrawal of one template, or of all (template id = set id), §8.1
            if tid == set_id:  # all data templates (2) or all options templates (3)
                for key, t in list(templates.items()):
                    if key[0] == domain and (t.scope_count > 0) == options:
                        del templates[key]
            templates.pop((domain, tid), None)
            off += TEMPLATE_HEADER.size
            n += 1
            continue
        if tid < MIN_DATA_SET_ID:
            raise ValueError(f"offset {off}: template id {tid} below {MIN_DATA_SET_ID}")
        scope_count = 0
        if options:
            if end - off < OPTIONS_TEMPLATE_HEADER.size:
                raise ValueError(f"offset {off}: options template {tid} truncated")
            scope_count = OPTIONS_TEMPLATE_HEADER.unpack_from(data, off)[2]
            off += OPTIONS_TEMPLATE_HEADER.size
        else:
            off += TEMPLATE_HEADER.size
        fields = []
        for _ in range(count):
            if end - off < FIELD_SPECIFIER.size:
                raise ValueError(f"offset {off}: template {tid} truncated")
            fid, flen = FIELD_SPECIFIER.unpack_from(data, off)
            off += FIELD_SPECIFIER.size
            pen = 0
            if fid & ENTERPRISE_BIT:
                if end - off < ENTERPRISE.size:
                    raise ValueError(f"offset {off}: template {tid} truncated enterprise number")
                pen = ENTERPRISE.unpack_from(data, off)[0]
                off += ENTERPRISE.size
                fid &= ~ENTERPRISE_BIT
            fields.append(Field(fid, flen, pen))
        if scope_count > count:
            raise ValueError(f"offset {off}: template {tid}: scope count {scope_count} > {count}")
        templates[(domain, tid)] = compile_template(tid, fields, scope_count)
        n += 1
    return n


def unpack_datagram(
    data: bytes, templates: Templates | None = None
) -> tuple[IpfixHeader, list[dict[str, Any]]]:
    """Parse one IPFIX message: store its templates into ``templates`` (keyed by
    observation domain and template id), decode its data sets with the templates
    known by then, skip data sets whose template is unknown.  Records are dicts
    keyed by element name.  ValueError with the byte offset on malformed input."""
    if templates is None:
        templates = {}
    n = len(data)
    if n < HEADER_SIZE:
        raise ValueError(f"offset 0: truncated header, {n} of {HEADER_SIZE} bytes")
    h = IpfixHeader(*HEADER.unpack_from(data, 0))
    if h.version != VERSION:
        raise ValueError(f"offset 0: version {h.version}, expected {VERSION}")
    if h.length != n:
        raise ValueError(f"offset 2: length {h.length}, datagram has {n} bytes")
    records: list[dict[str, Any]] = []
    off = HEADER_SIZE
    while off < n:
        if n - off < SET_HEADER_SIZE:
            raise ValueError(f"offset {off}: truncated set header, {n - off} bytes")
        sid, slen = SET_HEADER.unpack_from(data, off)
        end = off + slen
        if slen < SET_HEADER_SIZE:
            raise ValueError(f"offset {off}: set {sid}: length {slen} below {SET_HEADER_SIZE}")
        if end > n:
            raise ValueError(f"offset {off}: set {sid}: length {slen} runs past the end ({n})")
        body = off + SET_HEADER_SIZE
        if sid in (TEMPLATE_SET_ID, OPTIONS_TEMPLATE_SET_ID):
            _parse_templates(
                data, body, end, sid == OPTIONS_TEMPLATE_SET_ID, h.observation_domain, templates
            )
        elif sid >= MIN_DATA_SET_ID:
            tmpl = templates.get((h.observation_domain, sid))
            if tmpl is not None:
                records.extend(decode_records(tmpl, data, body, end))
        else:
            raise ValueError(f"offset {off}: reserved set id {sid}")
        off = end
    return h, records


def pack_template_set(templates: Sequence[tuple[int, Sequence[IE]]]) -> bytes:
    """A template set announcing ``(template id, fields)`` pairs (IANA elements only)."""
    parts = [b""]
    for tid, fields in templates:
        parts.append(TEMPLATE_HEADER.pack(tid, len(fields)))
        parts.extend(FIELD_SPECIFIER.pack(ie.id, ie.length) for ie in fields)
    body = b"".join(parts)
    return SET_HEADER.pack(TEMPLATE_SET_ID, SET_HEADER_SIZE + len(body)) + body


def pack_data_set(template_id: int, fields: Sequence[IE], rows: Sequence[Sequence[Any]]) -> bytes:
    """A data set of ``rows`` (values in ``fields`` order, full-length encoding)."""
    st = struct.Struct(record_format(fields))
    try:
        body = b"".join(st.pack(*row) for row in rows)
    except struct.error as e:
        raise ValueError(f"data set {template_id}: {e}") from None
    return SET_HEADER.pack(template_id, SET_HEADER_SIZE + len(body)) + body


def pack_message(
    sets: Sequence[bytes], *, export_time: int, sequence: int, observation_domain: int
) -> bytes:
    """One IPFIX message: header plus already packed ``sets``."""
    length = HEADER_SIZE + sum(len(s) for s in sets)
    if length > 0xFFFF:
        raise ValueError(f"message length {length} exceeds 65535")
    try:
        head = HEADER.pack(VERSION, length, export_time, sequence, observation_domain)
    except struct.error as e:
        raise ValueError(f"header: {e}") from None
    return head + b"".join(sets)


class IpfixEncoder:
    """Stateful IPFIX exporter: batches of flows -> messages of at most ``mtu`` bytes.

    Records that cannot be encoded (family not 4/6, address of the wrong length,
    value out of its field's range) are skipped and counted in ``invalid``.
    Other counters: ``datagrams``, ``records``, ``template_sends``.
    ``template_refresh_packets``/``template_refresh_seconds`` <= 0 disable that
    refresh trigger.  ``nat_events``: also send NAT event records, natEvent values
    by ``nat_event_numbering`` (1 or 4; see :mod:`nfflowd.formats.nat_events`).
    ``per_direction``: leave out ORIGINAL_OUT records, counted in ``left_out``.
    """

    def __init__(
        self,
        *,
        observation_domain: int = 0,
        template_refresh_packets: int = 20,
        template_refresh_seconds: float = 1800.0,
        mtu: int = 1400,
        sequence: int = 0,
        nat_events: bool = False,
        nat_event_numbering: int = 1,
        per_direction: bool = False,
        coverage: bool = False,
    ) -> None:
        if not 0 <= observation_domain <= _U32:
            raise ValueError(f"observation_domain {observation_domain} out of range 0..2**32-1")
        self.observation_domain = observation_domain
        self.template_refresh_packets = template_refresh_packets
        self.template_refresh_seconds = template_refresh_seconds
        self._refresh_ms = int(template_refresh_seconds * 1000)
        self.nat = NatEvents(nat_event_numbering) if nat_events else None
        self.per_direction = per_direction
        self.coverage = coverage
        self._options_set = coverage_options.ipfix_template_set() if coverage else b""
        self._template_set = (
            pack_template_set(FLOW_TEMPLATES + (NAT_TEMPLATES if nat_events else ()))
            + self._options_set
        )
        least = HEADER_SIZE + len(self._template_set) + SET_HEADER_SIZE + RECORD_V6.size
        if not least <= mtu <= 0xFFFF:
            raise ValueError(f"mtu {mtu}: must be within {least}..65535")
        self.mtu = mtu
        self.sequence = sequence & _U32
        self.invalid = 0
        self.datagrams = 0
        self.records = 0
        self.template_sends = 0
        self.left_out = 0  # ORIGINAL_OUT records not sent (per_direction)
        self.gaps = 0  # coverage gap records sent (encode_gaps)
        self._since_template: int | None = None  # messages since the last templates
        self._template_ms = 0
        self._buf = bytearray(mtu)

    def templates_due(self, now_ms: int) -> bool:
        """Whether the next message carries the templates."""
        since = self._since_template
        if since is None:
            return True
        if 0 < self.template_refresh_packets <= since:
            return True
        return 0 < self._refresh_ms <= now_ms - self._template_ms

    def encode(self, records: Sequence[FlowRecord], now_ns: int) -> list[bytes]:
        """Messages for ``records`` (in order), exported at ``now_ns``."""
        now_ms = now_ns // 1_000_000
        export_time = now_ns // 1_000_000_000 & _U32
        out: list[bytes] = []
        buf = self._buf
        limit = self.mtu
        pack4 = RECORD_V4.pack_into
        pack6 = RECORD_V6.pack_into
        size4 = RECORD_V4.size
        size6 = RECORD_V6.size
        set_header = SET_HEADER.pack_into
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
                ct_id,
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
            pos = off + SET_HEADER_SIZE if new_set else off
            if pos + size > limit:
                set_header(buf, set_start, set_id, off - set_start)
                out.append(self._finish(off, count, with_templates, now_ms, export_time))
                off, with_templates = self._open(now_ms)
                set_start = set_id = count = 0
                new_set = True
                pos = off + SET_HEADER_SIZE
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
                    ct_id,
                    zone,
                    zone,
                )
            except struct.error:
                self.invalid += 1
                continue
            if new_set:
                if set_id:
                    set_header(buf, set_start, set_id, off - set_start)
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
                1,
                lambda f: self._finish(f.off, f.count, f.templates, now_ms, export_time),
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
            set_header(buf, set_start, set_id, off - set_start)
            out.append(self._finish(off, count, with_templates, now_ms, export_time))
        return out

    def encode_gaps(self, gaps: Sequence[coverage_options.GapRow], now_ns: int) -> list[bytes]:
        """Messages of coverage gap options records, each with the options template (and
        the data templates when they are due); ValueError without ``coverage``, or for a
        gap that cannot be encoded (nothing sent then)."""
        if not self.coverage:
            raise ValueError("coverage gaps need an encoder made with coverage=True")
        now_ms = now_ns // 1_000_000
        export_time = now_ns // 1_000_000_000 & _U32
        size = coverage_options.RECORD.size
        coverage_options.pack_records(self.observation_domain, gaps)  # all or nothing
        out: list[bytes] = []
        at = 0
        while at < len(gaps):
            off, with_templates = self._open(now_ms)
            if not with_templates:
                end = off + len(self._options_set)
                self._buf[off:end] = self._options_set
                off = end
            room = max(1, (self.mtu - off - SET_HEADER_SIZE) // size)
            chunk = gaps[at : at + room]
            data = coverage_options.pack_data_set(self.observation_domain, chunk, pad=False)
            self._buf[off : off + len(data)] = data
            end = off + len(data)
            out.append(self._finish(end, len(chunk), with_templates, now_ms, export_time, False))
            self.gaps += len(chunk)
            at += len(chunk)
        return out

    def _open(self, now_ms: int) -> tuple[int, bool]:
        if self.templates_due(now_ms):
            end = HEADER_SIZE + len(self._template_set)
            self._buf[HEADER_SIZE:end] = self._template_set
            return end, True
        return HEADER_SIZE, False

    def _finish(
        self,
        off: int,
        count: int,
        with_templates: bool,
        now_ms: int,
        export_time: int,
        flows: bool = True,
    ) -> bytes:
        """Write the header of the message in the buffer; *count* data records (flows or,
        not *flows*, coverage gaps: both take sequence numbers)."""
        HEADER.pack_into(
            self._buf, 0, VERSION, off, export_time, self.sequence, self.observation_domain
        )
        self.sequence = (self.sequence + count) & _U32
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
