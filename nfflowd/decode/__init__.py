"""``nfflowd decode``: NetFlow v5 / v9 / IPFIX datagrams as readable records.

For when a collector shows something odd: reads what was on the wire — a pcap or
pcapng capture (``tcpdump -w``, ``tshark -w``; told by its magic, see
:mod:`nfflowd.decode.pcap`) or hex text (one datagram per line, whitespace anywhere,
``#`` comments) — and prints each record: times in UTC, addresses and ports, the
post-NAT ones (v9/IPFIX elements 225-228, 281/282), counters, end reason,
direction; ``--json`` prints JSON lines.  Each datagram's version is its first
two bytes (5, 9, 10).

v9/IPFIX templates are kept per exporter address and version, and inside per
source id / observation domain (RFC 3954 §5.1, RFC 7011 §3.1); hex input is one
exporter.  A datagram's header line shows the templates it announced and how
many are known, data sets skipped for want of a template, and a sequence gap
when its sequence is not what the previous datagram of that exporter and source
predicted (v5: + records, v9: + 1, IPFIX: + data records).

Times: v5 FIRST/LAST as a collector reads them, ``unix_secs*1000 +
unix_nsecs/10**6 - sysUptime + FIRST`` (:mod:`nfflowd.formats.uptime`; no wrap
heuristics); v9/IPFIX flowStart/EndMilliseconds (152/153), else ...Seconds
(150/151), else (v9) FIRST/LAST_SWITCHED (22/21) against the header's sysUptime.

An undecodable datagram yields an error naming it (hex line, or capture frame
and file offset) and the offset inside it; decoding goes on; exit status 1 when
any error occurred.  Captured packets without a UDP datagram are counted.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import string
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from nfflowd.decode import pcap
from nfflowd.formats import ipfix, netflow_v5, netflow_v9
from nfflowd.formats.ipfix_ies import Templates
from nfflowd.messages import EndReason

PROTOCOLS = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 33: "dccp", 47: "gre", 50: "esp",
             51: "ah", 58: "icmp6", 132: "sctp", 136: "udplite"}  # fmt: skip
ICMP = frozenset({1, 58})
END_REASONS = {
    int(r): r.name.lower().replace("_", "-") for r in EndReason if r is not EndReason.OPENED
}
#: flowDirection (IANA IE 61)
DIRECTIONS = {0: "in", 1: "out"}
#: set id (2) and length (2) open every v9 flowset and IPFIX set
_SET_HEADER = netflow_v9.FLOWSET_HEADER
_U32 = 0xFFFFFFFF
_FAMILIES = {4: socket.AF_INET, 16: socket.AF_INET6}


class Flow(NamedTuple):
    """One decoded record; None where the datagram does not carry the field."""

    first_ms: int | None
    last_ms: int | None
    proto: int | None
    src: str | None
    sport: int | None
    dst: str | None
    dport: int | None  # ICMP: type*256+code
    post_src: str | None
    post_sport: int | None
    post_dst: str | None
    post_dport: int | None
    packets: int | None
    octets: int | None
    end_reason: int | None
    direction: int | None  # flowDirection: 0 ingress, 1 egress
    fields: dict[str, Any]  # every field of the record, JSON-ready (addresses as text)


class Decoded(NamedTuple):
    """One datagram (or an error, or a skipped captured packet) of the input."""

    number: int  # datagram number in hex input; frame number in a capture (as Wireshark's)
    where: str  # "line 4", "frame 7 (offset 1234)"
    error: str | None = None  # undecodable: what and at which offset
    skipped: str | None = None  # a captured packet without a UDP datagram, and why
    version: int = 0
    exporter: str = ""  # "addr:port" of the UDP source; "" for hex input
    collector: str = ""
    captured_ns: int | None = None
    length: int = 0
    export_ms: int | None = None
    sequence: int | None = None
    expected_sequence: int | None = None  # set when it differs from ``sequence`` (a gap)
    header_count: int | None = None  # the header's record count (v5, v9); IPFIX has none
    source_id: int | None = None  # v9 source id; IPFIX domain; v5 engine_type*256+engine_id
    templates_announced: int = 0
    templates_known: int = 0
    no_template: tuple[int, ...] = ()  # data set ids skipped: template not known yet
    flows: tuple[Flow, ...] = ()


def _addr(raw: bytes) -> str:
    family = _FAMILIES.get(len(raw))
    return socket.inet_ntop(family, raw) if family else "0x" + raw.hex()


def _json_value(name: str, v: Any) -> Any:
    if not isinstance(v, bytes):
        return v
    return _addr(v) if name.endswith(("Address", "addr")) else v.hex()


def _int(f: dict[str, Any], *names: str) -> int | None:
    for name in names:
        v = f.get(name)
        if isinstance(v, int):
            return v
        if isinstance(v, bytes) and 0 < len(v) <= 8:
            return int.from_bytes(v, "big")
    return None


def _ip(fields: dict[str, Any], v4: str, v6: str) -> str | None:
    v = fields.get(v4, fields.get(v6))
    return v if isinstance(v, str) else None


def _time(f: dict[str, Any], ms: str, secs: str, uptime: str, boot_ms: int | None) -> int | None:
    t = _int(f, ms)
    if t is None and (s := _int(f, secs)) is not None:
        t = s * 1000
    if t is None and boot_ms is not None and (u := _int(f, uptime)) is not None:
        t = boot_ms + u
    return t


def _v5_flow(r: netflow_v5.V5Record, boot_ms: int) -> Flow:
    fields = {k: _json_value(k, v) for k, v in r._asdict().items()}
    return Flow(
        boot_ms + r.first,
        boot_ms + r.last,
        r.prot,
        _addr(r.srcaddr),
        r.srcport,
        _addr(r.dstaddr),
        r.dstport,
        None,
        None,
        None,
        None,
        r.dpkts,
        r.doctets,
        None,
        None,
        fields,
    )


def _template_flow(f: dict[str, Any], boot_ms: int | None) -> Flow:
    fields = {k: _json_value(k, v) for k, v in f.items()}
    proto = _int(f, "protocolIdentifier")
    dport = _int(f, "destinationTransportPort")
    if proto in ICMP and not dport:
        dport = _int(f, "icmpTypeCodeIPv4", "icmpTypeCodeIPv6", "ie32", "ie139") or dport
    return Flow(
        _time(f, "flowStartMilliseconds", "ie150", "ie22", boot_ms),
        _time(f, "flowEndMilliseconds", "ie151", "ie21", boot_ms),
        proto,
        _ip(fields, "sourceIPv4Address", "sourceIPv6Address"),
        _int(f, "sourceTransportPort"),
        _ip(fields, "destinationIPv4Address", "destinationIPv6Address"),
        dport,
        _ip(fields, "postNATSourceIPv4Address", "postNATSourceIPv6Address"),
        _int(f, "postNAPTSourceTransportPort"),
        _ip(fields, "postNATDestinationIPv4Address", "postNATDestinationIPv6Address"),
        _int(f, "postNAPTDestinationTransportPort"),
        _int(f, "packetDeltaCount", "ie86"),
        _int(f, "octetDeltaCount", "ie85"),
        _int(f, "flowEndReason"),
        _int(f, "flowDirection"),
        fields,
    )


def _unknown_sets(data: bytes, start: int, source: int, templates: Templates) -> tuple[int, ...]:
    """Data set ids in ``data`` whose template is not in ``templates``."""
    out: list[int] = []
    off = start
    while len(data) - off >= _SET_HEADER.size:
        sid, slen = _SET_HEADER.unpack_from(data, off)
        if slen < _SET_HEADER.size:
            break
        if sid >= ipfix.MIN_DATA_SET_ID and (source, sid) not in templates and sid not in out:
            out.append(sid)
        off += slen
    return tuple(out)


class _Session:
    """What carries over between datagrams: templates and expected sequence numbers."""

    def __init__(self) -> None:
        self.templates: dict[tuple[str, int], Templates] = {}
        self.next_sequence: dict[tuple[str, int, int], int] = {}

    def decode(self, base: Decoded, payload: bytes, host: str) -> Decoded:
        """``base`` (position, exporter) completed with the datagram's content."""
        base = base._replace(length=len(payload))
        version = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else -1
        try:
            if version == netflow_v5.VERSION:
                d = self._v5(base, payload)
            elif version in (netflow_v9.VERSION, ipfix.VERSION):
                d = self._templated(base, payload, version, host)
            else:
                raise ValueError(f"not NetFlow v5/v9/IPFIX: starts with {payload[:2].hex() or '-'}")
        except ValueError as e:
            name = {5: "v5", 9: "v9", 10: "IPFIX"}.get(version)
            return base._replace(version=max(version, 0), error=f"{name}: {e}" if name else str(e))
        return self._sequence(d, host)

    def _v5(self, base: Decoded, payload: bytes) -> Decoded:
        h, records = netflow_v5.unpack_datagram(payload)
        export_ms = h.unix_secs * 1000 + h.unix_nsecs // 1_000_000
        boot_ms = export_ms - h.sys_uptime
        return base._replace(
            version=5,
            export_ms=export_ms,
            sequence=h.flow_sequence,
            header_count=h.count,
            source_id=h.engine_type << 8 | h.engine_id,
            flows=tuple(_v5_flow(r, boot_ms) for r in records),
        )

    def _templated(self, base: Decoded, payload: bytes, version: int, host: str) -> Decoded:
        templates = self.templates.setdefault((host, version), {})
        before = dict(templates)
        if version == netflow_v9.VERSION:
            h9, records = netflow_v9.unpack_datagram(payload, templates)
            source, start, count = h9.source_id, netflow_v9.HEADER_SIZE, h9.count
            export_ms, sequence = h9.unix_secs * 1000, h9.sequence
            boot_ms: int | None = export_ms - h9.sys_uptime
        else:
            hx, records = ipfix.unpack_datagram(payload, templates)
            source, start, count = hx.observation_domain, ipfix.HEADER_SIZE, None
            export_ms, sequence, boot_ms = hx.export_time * 1000, hx.sequence, None
        announced = sum(1 for k, t in templates.items() if before.get(k) is not t)
        return base._replace(
            version=version,
            export_ms=export_ms,
            sequence=sequence,
            header_count=count,
            source_id=source,
            templates_announced=announced,
            templates_known=sum(1 for k in templates if k[0] == source),
            no_template=_unknown_sets(payload, start, source, templates),
            flows=tuple(_template_flow(f, boot_ms) for f in records),
        )

    def _sequence(self, d: Decoded, host: str) -> Decoded:
        assert d.sequence is not None and d.source_id is not None
        key = (host, d.version, d.source_id)
        expected = self.next_sequence.pop(key, None)
        # v9 counts packets; v5 and IPFIX count records (unknown when a set was not decoded)
        step = 1 if d.version == 9 else None if d.no_template else len(d.flows)
        if step is not None:
            self.next_sequence[key] = (d.sequence + step) & _U32
        return d._replace(expected_sequence=expected if expected != d.sequence else None)


def _hex_datagrams(data: bytes) -> Iterator[tuple[Decoded, bytes | None]]:
    if b"\0" in data:  # binary, and no capture either
        yield (
            Decoded(
                1,
                f"offset {data.index(0)}",
                f"neither a pcap/pcapng capture nor hex text (starts with {data[:4].hex()})",
            ),
            None,
        )
        return
    index = 0
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        digits = "".join(line.split("#", 1)[0].split())
        if not digits:
            continue
        index += 1
        where = f"line {number}"
        try:
            yield Decoded(index, where), bytes.fromhex(digits.removeprefix("0x"))
        except ValueError:
            bad = next((repr(c) for c in digits if c not in string.hexdigits), None)
            why = f"{bad} is no hex digit" if bad else f"odd number of hex digits ({len(digits)})"
            yield Decoded(index, where, f"not a hex datagram: {why}"), None


def _captured_datagrams(data: bytes) -> Iterator[tuple[Decoded, bytes | None, str]]:
    last = 0
    try:
        for p in pcap.read_packets(data):
            last = p.number
            base = Decoded(p.number, f"frame {p.number} (offset {p.offset})", captured_ns=p.time_ns)
            try:
                u = pcap.udp_datagram(p.linktype, p.data)
            except pcap.NotUdp as e:
                yield base._replace(skipped=str(e)), None, ""
                continue
            except ValueError as e:
                yield base._replace(error=f"frame: {e}"), None, ""
                continue
            yield (
                base._replace(
                    exporter=_hostport(u.src, u.sport), collector=_hostport(u.dst, u.dport)
                ),
                u.payload,
                u.src,
            )
    except ValueError as e:
        yield Decoded(last + 1, "capture file", f"broken capture, reading stops: {e}"), None, ""


def decode_stream(data: bytes) -> Iterator[Decoded]:
    """Every datagram of a capture or hex text, decoded in order (pure: no I/O)."""
    session = _Session()
    if pcap.is_capture(data):
        for base, payload, host in _captured_datagrams(data):
            yield base if payload is None else session.decode(base, payload, host)
    else:
        for base, raw in _hex_datagrams(data):
            yield base if raw is None else session.decode(base, raw, "")


# -- output ---------------------------------------------------------------------------------


def utc_ms(ms: int | None) -> str:
    """``2026-11-26 17:35:22.123`` (UTC) for epoch ms; ``@<ms>`` when out of range."""
    if ms is None:
        return "-"
    secs, frac = divmod(ms, 1000)
    try:
        return datetime.fromtimestamp(secs, tz=UTC).strftime("%Y-%m-%d %H:%M:%S") + f".{frac:03d}"
    except (OverflowError, OSError, ValueError):
        return f"@{ms}"


def _hostport(addr: str | None, port: int | None, icmp: bool = False) -> str:
    host = addr or "-"
    host = f"[{host}]" if ":" in host else host
    if port is None:
        return host
    return f"{host}:{port >> 8}.{port & 0xFF}" if icmp else f"{host}:{port}"


def format_flow(f: Flow) -> str:
    """One table line for a record (ICMP destination "port" as type.code)."""
    first, last = utc_ms(f.first_ms), utc_ms(f.last_ms)
    if first[:11] == last[:11] and len(last) > 11:
        last = last[11:]
    proto = "-" if f.proto is None else PROTOCOLS.get(f.proto, str(f.proto))
    line = (
        f"  {first} -> {last}  {proto:<5} {_hostport(f.src, f.sport):>21} -> "
        f"{_hostport(f.dst, f.dport, f.proto in ICMP):<21}"
    )
    if f.post_src is not None or f.post_dst is not None:
        line += (
            f"  nat {_hostport(f.post_src, f.post_sport)} -> {_hostport(f.post_dst, f.post_dport)}"
        )
    line += f"  {_dash(f.packets)} pkts {_dash(f.octets)} bytes"
    if f.end_reason is not None:
        line += "  " + END_REASONS.get(f.end_reason, f"end-reason-{f.end_reason}")
    if f.direction is not None:
        line += "  " + DIRECTIONS.get(f.direction, f"direction-{f.direction}")
    return line


def _dash(v: int | None) -> str:
    return "-" if v is None else str(v)


def format_text(d: Decoded) -> list[str]:
    """Table lines for one item: a header line and one line per record, an error
    line, or nothing for a skipped packet."""
    if d.error is not None:
        return [f"ERROR datagram {d.number} at {d.where}: {d.error}"]
    if d.skipped is not None:
        return []
    head = f"# {d.where}"
    if d.captured_ns is not None:
        head += f" captured {utc_ms(d.captured_ns // 1_000_000)}"
    if d.exporter:
        head += f"  {d.exporter} -> {d.collector}"
    sid = d.source_id or 0
    head += {
        5: f"  v5 engine {sid >> 8}/{sid & 0xFF}",
        9: f"  v9 source {sid}",
        10: f"  IPFIX domain {sid}",
    }[d.version] + f"  seq {d.sequence}"
    if d.expected_sequence is not None:
        lost = (d.sequence or 0) - d.expected_sequence & _U32
        head += f" (GAP: expected {d.expected_sequence}, {lost} missing or reordered)"
    head += f"  count {_dash(d.header_count)}  exported {utc_ms(d.export_ms)}"
    if d.version != 5:
        head += f"  templates {d.templates_announced} new, {d.templates_known} known"
    if d.no_template:
        head += f"  NO TEMPLATE for set(s) {', '.join(map(str, d.no_template))}: skipped"
    return [f"{head}  {len(d.flows)} records"] + [format_flow(f) for f in d.flows]


def format_json(d: Decoded) -> list[str]:
    """JSON lines for one item: the datagram (error, skipped packet), then its flows."""
    kind = "error" if d.error is not None else "skipped" if d.skipped is not None else "datagram"
    head = {"type": kind, **d._asdict(), "flows": len(d.flows)}
    flows = ({"type": "flow", "datagram": d.number, **f._asdict()} for f in d.flows)
    return [json.dumps(head), *map(json.dumps, flows)]


def main(argv: list[str]) -> int:
    """``nfflowd decode FILE|- [--json]``: 0 when everything decoded, 1 on any error."""
    parser = argparse.ArgumentParser(
        prog="nfflowd decode",
        description="Decode NetFlow v5/v9/IPFIX datagrams from a pcap/pcapng capture "
        "or hex text (one datagram per line, '#' comments).",
    )
    parser.add_argument("input", metavar="FILE|-", help="capture or hex file; - for stdin")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    try:
        data = sys.stdin.buffer.read() if args.input == "-" else Path(args.input).read_bytes()
    except OSError as e:
        print(f"nfflowd decode: {args.input}: {e.strerror or e}", file=sys.stderr)
        return 1
    fmt = format_json if args.json else format_text
    counts: Counter[str] = Counter()
    try:
        for d in decode_stream(data):
            counts["errors" if d.error else "skipped" if d.skipped else "datagrams"] += 1
            counts["records"] += len(d.flows)
            counts["gaps"] += d.expected_sequence is not None
            lines = fmt(d)
            if lines:
                sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. | head: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    print(
        f"{counts['datagrams']} datagrams, {counts['records']} records, "
        f"{counts['errors']} errors, {counts['gaps']} sequence gaps, "
        f"{counts['skipped']} captured packets skipped (not UDP)",
        file=sys.stderr,
    )
    return 1 if counts["errors"] else 0
