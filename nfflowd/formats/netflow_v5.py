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
* a flow ending after 2106 cannot be carried either (the export time, at or after
  its end, would overflow the header's 32-bit unix_secs): counted as invalid.  Up to
  schema 4 such a flow made the encoder raise (struct.error), losing its whole call.

Moving bytes, not objects (schema 5).  The export stage gets its flows as a
FlowBatch's block of :data:`~nfflowd.messages.FLOW_RECORD` structs, not as
FlowRecord objects, and :meth:`V5Encoder.encode_block` encodes that block as it
is.  A run of up to 30 records that makes one datagram unchanged (IPv4, no counter
to split, no start to clamp, within 49.7 days of each other: nearly every run of a
live exporter) goes a column at a time: one ``struct`` unpack reads the fields v5
needs from the whole run, list slices put them in the datagram's order, one
``struct`` pack writes the whole datagram; no Python step per record but the two
subtractions of the base.  Any other run goes record by record through the rules of
:meth:`V5Encoder.encode` (which takes FlowRecord objects, for tests and tools).
Both give the same bytes and counts.  About half the CPU per record of encoding
objects, a quarter of decoding the block into objects first
(``bench/bench_v5_encode.py``).
"""

from __future__ import annotations

import functools
import operator
import struct
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from nfflowd.formats.uptime import UPTIME_MAX, clamp_span, host_boot_ms, uptime_base
from nfflowd.messages import FLOW_RECORD, FlowRecord

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
# The fields of a flow v5 carries, in FlowRecord order: (first_ms, last_ms, family,
# proto, src, dst, sport, dport, packets, octets).
_Row = tuple[int, int, int, int, bytes, bytes, int, int, int, int]

#: Those fields of one FLOW_RECORD, read straight from a block: the same layout, the
#: addresses cut to their first 4 bytes (an IPv4 address; an IPv6 one is skipped anyway)
#: and the fields v5 has no place for skipped.
_ROW = struct.Struct("<QQBB4s12x4s12xHHQQ48x")
#: The first 10 fields of a FlowRecord: a _Row.
_ROW_OF = operator.itemgetter(*range(10))
#: Offset of ``family`` in a FLOW_RECORD, and what a run of IPv4 records has there.
_FAMILY_AT = 16
_IPV4_RUN = bytes([4]) * MAX_RECORDS
#: A flow ending after this (in 2106) cannot be carried: the export time, which is at
#: or after its end, would not fit the header's 32-bit unix_secs.
LAST_MS_MAX = 2**32 * 1000 - 1


def _check_layout() -> None:
    if _ROW.size != FLOW_RECORD.size:
        raise ImportError(f"_ROW is {_ROW.size} bytes, FLOW_RECORD {FLOW_RECORD.size}")


_check_layout()


@functools.cache
def _block_of(n: int) -> struct.Struct:
    """*n* FLOW_RECORDs read in one call: per record (first_ms, last_ms, proto, src, dst,
    sport, dport, packets, octets), the family skipped (the caller checked it)."""
    return struct.Struct("<" + "QQxB4s12x4s12xHHQQ48x" * n)


@functools.cache
def _datagram_of(n: int) -> struct.Struct:
    """A whole datagram of *n* records packed in one call: the header's fields, then per
    record (srcaddr, dstaddr, dPkts, dOctets, first, last, srcport, dstport, prot); the
    fields that are always 0 are pad bytes (RECORD_FORMAT, same layout)."""
    return struct.Struct(HEADER_FORMAT + "4s4s8xIIIIHH2xB9x" * n)


class V5Encoder:
    """Stateful v5 exporter: turns batches of flows into datagrams.

    ``flow_sequence`` in each header is the number of v5 records this encoder
    sent before that datagram (mod 2**32), as the Cisco format defines it.
    Counters (plain attributes): ``skipped_ipv6``, ``invalid`` (not IPv4/IPv6,
    malformed address, field out of range, a flow ending after 2106),
    ``clamped`` (start moved, see :func:`~nfflowd.formats.uptime.clamp_span`),
    ``split`` (extra records for 32-bit counter overflow), ``datagrams`` and
    ``records`` sent.

    :meth:`encode_block` is the export stage's path (a block of FLOW_RECORDs, as a
    FlowBatch carries them); :meth:`encode` takes FlowRecord objects.  Both give the
    same datagrams and counts for the same flows.
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
        out: list[bytes] = []
        self._encode_rows(map(_ROW_OF, records), now_ns, out)
        return out

    def encode_block(self, block: bytes, now_ns: int) -> list[bytes]:
        """Datagrams for a block of FLOW_RECORDs (:func:`~nfflowd.messages.pack_flows`),
        exactly those :meth:`encode` gives for its records; ValueError when the block's
        length is not a multiple of a record's.

        Each run of 30 records that fills one datagram as it is (IPv4, no counter to
        split, no start to clamp, within 49.7 days of each other: the usual case) is
        converted a column at a time, without a Python step per record; from the first
        run that is not, the rest goes record by record.  The same datagrams either
        way: record by record, a full chunk of 30 is sent as the next record comes (or
        at the end), and the next chunk starts empty, as it does after such a run."""
        size = FLOW_RECORD.size
        n, rest = divmod(len(block), size)
        if rest:
            raise ValueError(f"flow block of {len(block)} bytes: not a multiple of {size}")
        out: list[bytes] = []
        done = 0
        while done < n:
            m = n - done if n - done < MAX_RECORDS else MAX_RECORDS
            run = block if m == n else block[done * size : (done + m) * size]
            if not self._whole_datagram(run, m, now_ns, out):
                break
            done += m
        if done < n:
            rows = _ROW.iter_unpack(block[done * size :] if done else block)
            self._encode_rows(rows, now_ns, out)
        return out

    def _whole_datagram(self, run: bytes, n: int, now_ns: int, out: list[bytes]) -> bool:
        """The datagram of *n* FLOW_RECORDs when they make exactly one as they are; False
        (and nothing done) when they do not: the record-by-record path decides."""
        if run[_FAMILY_AT :: FLOW_RECORD.size] != _IPV4_RUN[:n]:
            return False
        t = _block_of(n).unpack(run)
        firsts = t[0::9]
        lasts = t[1::9]
        cmin = min(firsts)
        cmax = max(lasts)
        packets = t[7::9]
        octets = t[8::9]
        if (
            cmax - cmin > UPTIME_MAX
            or cmax > LAST_MS_MAX
            or max(packets) > COUNTER_MAX
            or max(octets) > COUNTER_MAX
            or not all(map(operator.le, firsts, lasts))
        ):
            return False
        now_ms = now_ns // 1_000_000
        export_ms, secs, nsecs = _export_time(cmin, cmax, now_ms, now_ns)
        base = uptime_base(cmin, export_ms, self.boot_ms)
        protos = t[2::9]
        args: list[int | bytes] = [0] * (9 * n + 9)
        args[:9] = (
            VERSION,
            n,
            export_ms - base,
            secs,
            nsecs,
            self.sequence,
            self.engine_type,
            self.engine_id,
            0,
        )
        args[9::9] = t[3::9]  # srcaddr
        args[10::9] = t[4::9]  # dstaddr
        args[11::9] = packets
        args[12::9] = octets
        args[13::9] = [first - base for first in firsts]
        args[14::9] = [last - base for last in lasts]
        if _IPPROTO_ICMP in protos:  # ICMP: srcport 0
            args[15::9] = [
                0 if proto == _IPPROTO_ICMP else sport
                for sport, proto in zip(t[5::9], protos, strict=True)
            ]
        else:
            args[15::9] = t[5::9]
        args[16::9] = t[6::9]  # dstport
        args[17::9] = protos
        out.append(_datagram_of(n).pack(*args))
        self.sequence = (self.sequence + n) & 0xFFFFFFFF
        self.datagrams += 1
        self.records += n
        return True

    def _encode_rows(self, rows: Iterable[_Row], now_ns: int, out: list[bytes]) -> None:
        """The record-by-record path: every rule, whatever the rows hold."""
        now_ms = now_ns // 1_000_000
        chunk: list[_Piece] = []
        cmin = cmax = 0
        for first, last, family, proto, src, dst, sport, dport, packets, octets in rows:
            if family != 4 or len(src) != 4 or len(dst) != 4:
                if family == 6:
                    self.skipped_ipv6 += 1
                else:
                    self.invalid += 1
                continue
            if last > LAST_MS_MAX:
                self.invalid += 1
                continue
            if first > last or last - first > UPTIME_MAX:
                first = clamp_span(first, last)
                self.clamped += 1
            if proto == _IPPROTO_ICMP:
                sport = 0
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
                chunk.append((src, dst, sport, dport, proto, packets, octets, first, last))
        if chunk:
            self._flush(chunk, cmin, cmax, now_ms, now_ns, out)

    def _flush(
        self, chunk: list[_Piece], cmin: int, cmax: int, now_ms: int, now_ns: int, out: list[bytes]
    ) -> None:
        export_ms, secs, nsecs = _export_time(cmin, cmax, now_ms, now_ns)
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


def _export_time(cmin: int, cmax: int, now_ms: int, now_ns: int) -> tuple[int, int, int]:
    """(export_ms, unix_secs, unix_nsecs) of a datagram whose flows span cmin..cmax."""
    export_ms = cmax if cmax > now_ms else now_ms
    if export_ms - cmin > UPTIME_MAX:
        export_ms = cmax  # a replay older than 49.7 days: "sent" when its newest flow ended
    if export_ms == now_ms:
        secs, nsecs = divmod(now_ns, 1_000_000_000)
    else:
        secs, ms = divmod(export_ms, 1000)
        nsecs = ms * 1_000_000
    return export_ms, secs, nsecs
