"""NetFlow version 5 export datagrams: pack and unpack.

Format: Cisco, "NetFlow Export Datagram Format", NetFlow Collection Engine 3.6
User Guide, appendix (https://www.cisco.com/c/en/us/td/docs/net_mgmt/
netflow_collection-engine/3-6/user/guide/format.html).  A datagram is a 24-byte
header followed by 1..30 fixed 48-byte flow records, all fields big-endian::

    header: version(2) count(2) sys_uptime(4) unix_secs(4) unix_nsecs(4)
            flow_sequence(4) engine_type(1) engine_id(1) sampling_interval(2)
    record: srcaddr(4) dstaddr(4) nexthop(4) input(2) output(2) dPkts(4)
            dOctets(4) first(4) last(4) srcport(2) dstport(2) pad1(1)
            tcp_flags(1) prot(1) tos(1) src_as(2) dst_as(2) src_mask(1)
            dst_mask(1) pad2(2)

Mapping from :class:`~nfflowd.messages.FlowRecord`:

* times: FIRST/LAST are sysUptime ms relative to a per-datagram base chosen by
  :func:`nfflowd.formats.uptime.uptime_base`; see that module for why the
  absolute times decode exactly (nfdump's wrap heuristics never fire).  The
  header's export time is the encode time, or — when a flow ended after it —
  that flow's end; for flows older than 49.7 days (replays) it is the end of the
  datagram's newest flow, the moment a live exporter would have sent it.
* ICMP (protocol 1): srcport 0, dstport = type*256+code.  The ICMP id that the
  FlowRecord keeps in ``sport`` has no place in v5, and collectors (nfdump)
  rewrite a non-zero ICMP srcport into dstport.
* counters above 2**32-1 are split over several records with the same key and
  times whose packet and octet sums are exact.
* nexthop, input/output, tcp_flags, tos, AS numbers and masks are 0.
* IPv6 cannot be carried: :func:`to_v5_records` refuses it; :class:`V5Encoder`
  skips and counts it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

from nfflowd.formats.uptime import UPTIME_MAX, clamp_span, host_boot_ms, uptime_base
from nfflowd.messages import FlowRecord

VERSION = 5
MAX_RECORDS = 30
#: version, count, sys_uptime, unix_secs, unix_nsecs, flow_sequence,
#: engine_type, engine_id, sampling_interval
HEADER_FORMAT = "!HHIIIIBBH"
#: srcaddr, dstaddr, nexthop, input, output, dPkts, dOctets, first, last,
#: srcport, dstport, pad1, tcp_flags, prot, tos, src_as, dst_as, src_mask,
#: dst_mask, pad2
RECORD_FORMAT = "!4s4s4sHHIIIIHHxBBBHHBBxx"
HEADER = struct.Struct(HEADER_FORMAT)
RECORD = struct.Struct(RECORD_FORMAT)
HEADER_SIZE = HEADER.size
RECORD_SIZE = RECORD.size
DATAGRAM_MAX = HEADER_SIZE + MAX_RECORDS * RECORD_SIZE
COUNTER_MAX = 2**32 - 1
#: Most records one flow may be split into (2**16 * 2**32 octets ~ 281 TB); a
#: larger counter is taken for garbage rather than sent as a flood of records.
MAX_SPLIT = 2**16

_NEXTHOP = b"\0\0\0\0"
_IPPROTO_ICMP = 1


class V5Header(NamedTuple):
    version: int
    count: int  # type: ignore[assignment]  # the Cisco field name; shadows tuple.count
    sys_uptime: int
    unix_secs: int
    unix_nsecs: int
    flow_sequence: int
    engine_type: int
    engine_id: int
    sampling_interval: int


class V5Record(NamedTuple):
    srcaddr: bytes
    dstaddr: bytes
    nexthop: bytes
    input: int
    output: int
    dpkts: int
    doctets: int
    first: int
    last: int
    srcport: int
    dstport: int
    tcp_flags: int
    prot: int
    tos: int
    src_as: int
    dst_as: int
    src_mask: int
    dst_mask: int


def split_counters(packets: int, octets: int) -> list[tuple[int, int]]:
    """(packets, octets) pairs, each within 32 bits, summing exactly to the inputs."""
    if packets < 0 or octets < 0:
        raise ValueError(f"negative counter: packets={packets} octets={octets}")
    n = max(-(-packets // COUNTER_MAX), -(-octets // COUNTER_MAX), 1)
    if n > MAX_SPLIT:
        raise ValueError(f"packets/octets: {packets}/{octets} would need {n} records")
    if n == 1:
        return [(packets, octets)]
    pq, pr = divmod(packets, n)
    oq, orem = divmod(octets, n)
    return [(pq + (i < pr), oq + (i < orem)) for i in range(n)]


def to_v5_records(rec: FlowRecord, base_ms: int) -> list[V5Record]:
    """The v5 record(s) for one flow, times relative to ``base_ms``.

    Raises ValueError naming the field when the flow cannot be carried: IPv6,
    malformed addresses, times outside ``[base_ms, base_ms + 2**32 - 1]`` or
    ending before they start, ports/protocol out of range.
    """
    if rec.family != 4:
        raise ValueError(f"family {rec.family}: NetFlow v5 carries IPv4 only")
    if len(rec.src) != 4 or len(rec.dst) != 4:
        raise ValueError(
            f"src/dst: IPv4 addresses must be 4 bytes, got {len(rec.src)}/{len(rec.dst)}"
        )
    first = rec.first_ms - base_ms
    last = rec.last_ms - base_ms
    if not 0 <= first <= last <= UPTIME_MAX:
        raise ValueError(
            f"first_ms/last_ms: {rec.first_ms}/{rec.last_ms} not within 32-bit ms of base {base_ms}"
        )
    for name, value, top in (("sport", rec.sport, 0xFFFF), ("dport", rec.dport, 0xFFFF)):
        if not 0 <= value <= top:
            raise ValueError(f"{name}: {value} out of range 0..{top}")
    if not 0 <= rec.proto <= 0xFF:
        raise ValueError(f"proto: {rec.proto} out of range 0..255")
    sport = 0 if rec.proto == _IPPROTO_ICMP else rec.sport
    return [
        V5Record(
            rec.src,
            rec.dst,
            _NEXTHOP,
            0,
            0,
            pk,
            oc,
            first,
            last,
            sport,
            rec.dport,
            0,
            rec.proto,
            0,
            0,
            0,
            0,
            0,
        )
        for pk, oc in split_counters(rec.packets, rec.octets)
    ]


def pack_datagram(
    records: Sequence[V5Record],
    *,
    sys_uptime: int,
    unix_secs: int,
    unix_nsecs: int,
    flow_sequence: int,
    engine_type: int,
    engine_id: int,
) -> bytes:
    """One export datagram: header plus ``records`` (at most 30)."""
    if len(records) > MAX_RECORDS:
        raise ValueError(f"{len(records)} records: a v5 datagram holds at most {MAX_RECORDS}")
    buf = bytearray(HEADER_SIZE + RECORD_SIZE * len(records))
    try:
        HEADER.pack_into(
            buf,
            0,
            VERSION,
            len(records),
            sys_uptime,
            unix_secs,
            unix_nsecs,
            flow_sequence,
            engine_type,
            engine_id,
            0,
        )
    except struct.error as e:
        raise ValueError(f"header: {e}") from None
    off = HEADER_SIZE
    for i, r in enumerate(records):
        if len(r.srcaddr) != 4 or len(r.dstaddr) != 4 or len(r.nexthop) != 4:
            raise ValueError(f"record {i}: addresses must be 4 bytes")
        try:
            RECORD.pack_into(buf, off, *r)
        except struct.error as e:
            raise ValueError(f"record {i}: {e}") from None
        off += RECORD_SIZE
    return bytes(buf)


def unpack_datagram(data: bytes) -> tuple[V5Header, list[V5Record]]:
    """Parse one datagram; ValueError with the byte offset on anything malformed."""
    if len(data) < HEADER_SIZE:
        raise ValueError(f"offset 0: truncated header, {len(data)} of {HEADER_SIZE} bytes")
    header = V5Header(*HEADER.unpack_from(data, 0))
    if header.version != VERSION:
        raise ValueError(f"offset 0: version {header.version}, expected {VERSION}")
    if header.count > MAX_RECORDS:
        raise ValueError(f"offset 2: count {header.count} exceeds {MAX_RECORDS}")
    end = HEADER_SIZE + header.count * RECORD_SIZE
    if len(data) < end:
        off = HEADER_SIZE + (len(data) - HEADER_SIZE) // RECORD_SIZE * RECORD_SIZE
        raise ValueError(
            f"offset {off}: truncated record {(off - HEADER_SIZE) // RECORD_SIZE}, "
            f"datagram has {len(data)} of {end} bytes"
        )
    if len(data) > end:
        raise ValueError(f"offset {end}: {len(data) - end} bytes after the last record")
    records = [
        V5Record(*RECORD.unpack_from(data, off)) for off in range(HEADER_SIZE, end, RECORD_SIZE)
    ]
    return header, records


# A record on its way into a datagram: (src, dst, sport, dport, proto, packets,
# octets, first_ms, last_ms).
_Piece = tuple[bytes, bytes, int, int, int, int, int, int, int]


class V5Encoder:
    """Stateful v5 exporter: turns batches of flows into datagrams.

    ``flow_sequence`` in each header is the number of v5 records this encoder
    sent before that datagram (mod 2**32), as the Cisco format defines it.
    Counters (plain attributes): ``skipped_ipv6``, ``invalid`` (not IPv4/IPv6,
    malformed address, field out of range), ``clamped`` (start moved, see
    :func:`~nfflowd.formats.uptime.clamp_span`), ``split`` (extra records for
    32-bit counter overflow), ``datagrams`` and ``records`` sent.
    """

    def __init__(
        self,
        *,
        engine_type: int = 0,
        engine_id: int = 0,
        boot_ms: int | None = None,
        sequence: int = 0,
    ) -> None:
        if not (0 <= engine_type <= 0xFF and 0 <= engine_id <= 0xFF):
            raise ValueError(f"engine_type/engine_id {engine_type}/{engine_id} out of range 0..255")
        self.engine_type = engine_type
        self.engine_id = engine_id
        self.boot_ms = host_boot_ms() if boot_ms is None else boot_ms
        self.sequence = sequence & 0xFFFFFFFF
        self.skipped_ipv6 = 0
        self.invalid = 0
        self.clamped = 0
        self.split = 0
        self.datagrams = 0
        self.records = 0
        self._buf = bytearray(DATAGRAM_MAX)

    def encode(self, records: Sequence[FlowRecord], now_ns: int) -> list[bytes]:
        """Datagrams (≤ 30 records each) for ``records``, exported at ``now_ns``."""
        now_ms = now_ns // 1_000_000
        out: list[bytes] = []
        chunk: list[_Piece] = []
        cmin = cmax = 0
        for rec in records:
            src = rec.src
            dst = rec.dst
            if rec.family != 4 or len(src) != 4 or len(dst) != 4:
                if rec.family == 6:
                    self.skipped_ipv6 += 1
                else:
                    self.invalid += 1
                continue
            first = rec.first_ms
            last = rec.last_ms
            if first > last or last - first > UPTIME_MAX:
                first = clamp_span(first, last)
                self.clamped += 1
            proto = rec.proto
            sport = 0 if proto == _IPPROTO_ICMP else rec.sport
            packets = rec.packets
            octets = rec.octets
            if packets > COUNTER_MAX or octets > COUNTER_MAX or packets < 0 or octets < 0:
                try:
                    parts = split_counters(packets, octets)
                except ValueError:
                    self.invalid += 1
                    continue
                self.split += len(parts) - 1
            else:
                parts = [(packets, octets)]
            for packets, octets in parts:
                if chunk:
                    lo = first if first < cmin else cmin
                    hi = last if last > cmax else cmax
                    if len(chunk) == MAX_RECORDS or hi - lo > UPTIME_MAX:
                        self._flush(chunk, cmin, cmax, now_ms, now_ns, out)
                        chunk = []
                        lo, hi = first, last
                    cmin, cmax = lo, hi
                else:
                    cmin, cmax = first, last
                chunk.append((src, dst, sport, rec.dport, proto, packets, octets, first, last))
        if chunk:
            self._flush(chunk, cmin, cmax, now_ms, now_ns, out)
        return out

    def _flush(
        self, chunk: list[_Piece], cmin: int, cmax: int, now_ms: int, now_ns: int, out: list[bytes]
    ) -> None:
        export_ms = cmax if cmax > now_ms else now_ms
        if export_ms - cmin > UPTIME_MAX:
            export_ms = cmax  # a replay older than 49.7 days: "sent" when its newest flow ended
        if export_ms == now_ms:
            secs, nsecs = divmod(now_ns, 1_000_000_000)
        else:
            secs, ms = divmod(export_ms, 1000)
            nsecs = ms * 1_000_000
        base = uptime_base(cmin, export_ms, self.boot_ms)
        buf = self._buf
        pack = RECORD.pack_into
        off = HEADER_SIZE
        for src, dst, sport, dport, proto, packets, octets, first, last in chunk:
            try:
                pack(
                    buf,
                    off,
                    src,
                    dst,
                    _NEXTHOP,
                    0,
                    0,
                    packets,
                    octets,
                    first - base,
                    last - base,
                    sport,
                    dport,
                    0,
                    proto,
                    0,
                    0,
                    0,
                    0,
                    0,
                )
            except struct.error:
                self.invalid += 1
                continue
            off += RECORD_SIZE
        count = (off - HEADER_SIZE) // RECORD_SIZE
        if count == 0:
            return
        HEADER.pack_into(
            buf,
            0,
            VERSION,
            count,
            export_ms - base,
            secs,
            nsecs,
            self.sequence,
            self.engine_type,
            self.engine_id,
            0,
        )
        self.sequence = (self.sequence + count) & 0xFFFFFFFF
        self.datagrams += 1
        self.records += count
        out.append(bytes(buf[:off]))
