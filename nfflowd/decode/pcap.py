"""A small pure-Python reader for packet captures: pcap and pcapng, down to UDP.

Enough to pull NetFlow datagrams out of what ``tcpdump -w`` / ``tshark -w`` /
``dumpcap`` write; used by :mod:`nfflowd.decode`.  Sources of the layouts:

* pcap: draft-ietf-opsawg-pcap ("PCAP Capture File Format"): a 24-byte file
  header, then per packet a 16-byte record header and the captured bytes.  The
  magic gives byte order and timestamp resolution (0xA1B2C3D4 microseconds,
  0xA1B23C4D nanoseconds; byte-swapped when written on the other endianness).
* pcapng: draft-ietf-opsawg-pcapng ("PCAP Now Generic"): blocks of
  ``type(4) length(4) body length(4)``; the Section Header Block (0x0A0D0D0A)
  carries a byte-order magic 0x1A2B3C4D; Interface Description Blocks give each
  interface's link type and timestamp resolution (option if_tsresol); packets come
  in Enhanced (6), Simple (3) or obsolete Packet (2) Blocks.
* link types (https://www.tcpdump.org/linktypes.html): NULL 0 (BSD loopback,
  host-order family), ETHERNET 1 (802.1Q/802.1ad tags skipped), RAW 101 / IPV4
  228 / IPV6 229, LINUX_SLL 113 (16-byte header, protocol at offset 14),
  LINUX_SLL2 276 (20-byte header, protocol at offset 0).
* IPv4 RFC 791, IPv6 RFC 8200 (extension headers §4), UDP RFC 768.

Fragmented datagrams are not reassembled: a first fragment is an error, later
fragments are skipped.  Every malformed structure raises ValueError naming the
offset; a packet that is simply not UDP raises :class:`NotUdp` (a skip).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import NamedTuple

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER = 0x1A2B3C4D
#: magic(4) version_major(2) version_minor(2) thiszone(4) sigfigs(4) snaplen(4) linktype(4)
PCAP_HEADER_FORMAT = "IHHiIII"
#: ts_sec(4) ts_frac(4) captured_len(4) original_len(4)
PCAP_RECORD_FORMAT = "IIII"
#: block type(4) block total length(4)
PCAPNG_BLOCK_FORMAT = "II"
#: linktype(2) reserved(2) snaplen(4) (Interface Description Block body)
PCAPNG_IDB_FORMAT = "HHI"
#: interface id(4) ts_high(4) ts_low(4) captured_len(4) original_len(4) (Enhanced Packet Block)
PCAPNG_EPB_FORMAT = "IIIII"
#: interface id(2) drops(2) ts_high(4) ts_low(4) captured_len(4) original_len(4) (Packet Block)
PCAPNG_PB_FORMAT = "HHIIII"
#: option code(2) option length(2)
PCAPNG_OPTION_FORMAT = "HH"
PCAPNG_IDB, PCAPNG_PB, PCAPNG_SPB, PCAPNG_EPB = 1, 2, 3, 6
OPT_IF_TSRESOL = 9

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLAN = (0x8100, 0x88A8, 0x9100)
#: version/IHL(1) tos(1) total length(2) id(2) flags/fragment(2) ttl(1) protocol(1)
#: checksum(2) source(4) destination(4) (RFC 791 §3.1)
IPV4_HEADER_FORMAT = "!BBHHHBBH4s4s"
#: version/class/label(4) payload length(2) next header(1) hop limit(1) source(16)
#: destination(16) (RFC 8200 §3)
IPV6_HEADER_FORMAT = "!IHBB16s16s"
#: source port(2) destination port(2) length(2) checksum(2) (RFC 768)
UDP_HEADER_FORMAT = "!HHHH"
IPV4_HEADER = struct.Struct(IPV4_HEADER_FORMAT)
IPV6_HEADER = struct.Struct(IPV6_HEADER_FORMAT)
UDP_HEADER = struct.Struct(UDP_HEADER_FORMAT)
IPPROTO_UDP = 17
IPPROTO_FRAGMENT = 44
#: IPv6 extension headers that are skipped by their length field (RFC 8200 §4).
IPV6_EXTENSIONS = frozenset({0, 43, 60, 135, 139, 140})
_SLL_SIZE, _SLL2_SIZE = 16, 20
_SHB_BYTES = PCAPNG_SHB.to_bytes(4, "big")
_BOM = {PCAPNG_BYTE_ORDER.to_bytes(4, "little"): "<", PCAPNG_BYTE_ORDER.to_bytes(4, "big"): ">"}
_PCAP_MAGICS = {m.to_bytes(4, o) for m in (PCAP_MAGIC_US, PCAP_MAGIC_NS) for o in ("big", "little")}


class NotUdp(Exception):
    """A packet that carries no UDP datagram (the reason is the message)."""


class Packet(NamedTuple):
    number: int  # 1-based, as Wireshark numbers frames
    offset: int  # of its record / block in the file
    time_ns: int
    linktype: int
    data: bytes


class Udp(NamedTuple):
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


def is_capture(data: bytes) -> bool:
    """Whether ``data`` starts like a pcap or pcapng file."""
    return data[:4] == _SHB_BYTES or data[:4] in _PCAP_MAGICS


def read_packets(data: bytes) -> Iterator[Packet]:
    """The packets of a pcap or pcapng file, in file order; ValueError (with the
    file offset) when the file structure is broken — after the packets before it."""
    if data[:4] == _SHB_BYTES:
        yield from _read_pcapng(data)
    else:
        yield from _read_pcap(data)


def _read_pcap(data: bytes) -> Iterator[Packet]:
    if data[:4] not in _PCAP_MAGICS:
        raise ValueError("offset 0: not a pcap file")
    order = "<" if int.from_bytes(data[:4], "little") in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
    magic = struct.unpack_from(order + "I", data)[0]
    header = struct.Struct(order + PCAP_HEADER_FORMAT)
    record = struct.Struct(order + PCAP_RECORD_FORMAT)
    if len(data) < header.size:
        raise ValueError(f"offset 0: truncated pcap header, {len(data)} of {header.size} bytes")
    linktype = header.unpack_from(data)[6] & 0xFFFF
    scale = 1 if magic == PCAP_MAGIC_NS else 1000
    off, number = header.size, 0
    while off < len(data):
        if len(data) - off < record.size:
            raise ValueError(f"offset {off}: truncated packet record header")
        secs, frac, caplen, _wire = record.unpack_from(data, off)
        if len(data) - off - record.size < caplen:
            raise ValueError(f"offset {off}: packet record of {caplen} bytes runs past the end")
        number += 1
        start = off + record.size
        yield Packet(
            number, off, secs * 1_000_000_000 + frac * scale, linktype, data[start : start + caplen]
        )
        off = start + caplen


class _Interface(NamedTuple):
    linktype: int
    snaplen: int
    tsresol: int  # the option's byte: 10**-v, or 2**-(v & 0x7F) when the top bit is set


def _ns(ts: int, tsresol: int) -> int:
    if tsresol & 0x80:
        return ts * 1_000_000_000 >> (tsresol & 0x7F)
    unit: int = 10**tsresol
    return ts * 1_000_000_000 // unit


def _tsresol(data: bytes, off: int, end: int, order: str) -> int:
    option = struct.Struct(order + PCAPNG_OPTION_FORMAT)
    while end - off >= option.size:
        code, length = option.unpack_from(data, off)
        if code == 0:
            break
        if code == OPT_IF_TSRESOL and length >= 1:
            return data[off + option.size]
        off += option.size + length + (-length & 3)
    return 6


def _read_pcapng(data: bytes) -> Iterator[Packet]:
    order = "<"
    interfaces: list[_Interface] = []
    off, number = 0, 0
    while off < len(data):
        if len(data) - off < 12:
            raise ValueError(f"offset {off}: truncated pcapng block header")
        if data[off : off + 4] == _SHB_BYTES:  # a palindrome: the same in either order
            bom = data[off + 8 : off + 12]
            if bom not in _BOM:
                raise ValueError(f"offset {off + 8}: bad pcapng byte-order magic {bom.hex()}")
            order = _BOM[bom]
            interfaces = []  # interface ids are per section
        btype = struct.unpack_from(order + "I", data, off)[0]
        blen = struct.unpack_from(order + "I", data, off + 4)[0]
        if blen < 12 or blen % 4 or off + blen > len(data):
            raise ValueError(f"offset {off}: pcapng block type {btype:#x}: bad length {blen}")
        body, end = off + 8, off + blen - 4
        if btype == PCAPNG_IDB:
            if end - body < 8:
                raise ValueError(f"offset {off}: truncated interface description block")
            linktype, _res, snaplen = struct.unpack_from(order + PCAPNG_IDB_FORMAT, data, body)
            interfaces.append(_Interface(linktype, snaplen, _tsresol(data, body + 8, end, order)))
        elif btype in (PCAPNG_EPB, PCAPNG_PB, PCAPNG_SPB):
            number += 1
            yield _packet(data, btype, body, end, order, interfaces, number, off)
        off += blen


def _packet(
    data: bytes,
    btype: int,
    body: int,
    end: int,
    order: str,
    interfaces: list[_Interface],
    number: int,
    off: int,
) -> Packet:
    if btype == PCAPNG_SPB:
        iface, ts, fixed = 0, 0, 4
        caplen = min(struct.unpack_from(order + "I", data, body)[0], end - body - fixed)
    else:
        fmt = PCAPNG_EPB_FORMAT if btype == PCAPNG_EPB else PCAPNG_PB_FORMAT
        st = struct.Struct(order + fmt)
        if end - body < st.size:
            raise ValueError(f"offset {off}: truncated packet block")
        iface, *rest = st.unpack_from(data, body)
        high, low, caplen = rest[-4:-1]
        ts, fixed = high << 32 | low, st.size
    if iface >= len(interfaces):
        raise ValueError(f"offset {off}: packet on undeclared interface {iface}")
    if caplen > end - body - fixed:
        raise ValueError(f"offset {off}: packet of {caplen} bytes runs past its block")
    info = interfaces[iface]
    start = body + fixed
    return Packet(number, off, _ns(ts, info.tsresol), info.linktype, data[start : start + caplen])


def _network(linktype: int, frame: bytes) -> tuple[int, int]:
    """(ethertype, offset of the IP header) of a link-layer frame."""
    if linktype == LINKTYPE_ETHERNET:
        off = 12
        etype = int.from_bytes(frame[off : off + 2], "big")
        while etype in ETHERTYPE_VLAN:
            off += 4
            etype = int.from_bytes(frame[off : off + 2], "big")
        return etype, off + 2
    if linktype == LINKTYPE_LINUX_SLL:
        return int.from_bytes(frame[14:16], "big"), _SLL_SIZE
    if linktype == LINKTYPE_LINUX_SLL2:
        return int.from_bytes(frame[0:2], "big"), _SLL2_SIZE
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        version = frame[0] >> 4 if frame else 0
        return {4: ETHERTYPE_IPV4, 6: ETHERTYPE_IPV6}.get(version, version), 0
    if linktype == LINKTYPE_NULL:
        family = int.from_bytes(frame[:4], "little")
        if family > 0xFFFF:
            family = int.from_bytes(frame[:4], "big")
        # AF_INET 2; AF_INET6 24 (NetBSD/OpenBSD), 28 (FreeBSD), 30 (macOS), 10 (Linux)
        etype = ETHERTYPE_IPV4 if family == 2 else family
        return (ETHERTYPE_IPV6 if family in (10, 24, 28, 30) else etype), 4
    raise NotUdp(f"link type {linktype} not supported")


def udp_datagram(linktype: int, frame: bytes) -> Udp:
    """The UDP datagram in a captured frame.  Raises NotUdp for other traffic and
    ValueError (offset within the frame) for truncated or malformed headers."""
    etype, off = _network(linktype, frame)
    if len(frame) < off:
        raise ValueError(f"offset 0: truncated link-layer header ({len(frame)} bytes)")
    if etype == ETHERTYPE_IPV4:
        if len(frame) - off < IPV4_HEADER.size:
            raise ValueError(f"offset {off}: truncated IPv4 header")
        vihl, _tos, total, ident, frag, _ttl, proto, _sum, src, dst = IPV4_HEADER.unpack_from(
            frame, off
        )
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < IPV4_HEADER.size or total < ihl:
            raise ValueError(
                f"offset {off}: bad IPv4 header (version/IHL {vihl:#04x}, total length {total})"
            )
        if proto != IPPROTO_UDP:
            raise NotUdp(f"IPv4 protocol {proto}")
        if frag & 0x1FFF:
            raise NotUdp(f"IPv4 fragment (id {ident:#06x}) after the first")
        if frag & 0x2000:
            raise ValueError(
                f"offset {off}: IPv4 fragmented UDP datagram (id {ident:#06x}): "
                "reassembly not supported"
            )
        end, off = off + total, off + ihl
    elif etype == ETHERTYPE_IPV6:
        if len(frame) - off < IPV6_HEADER.size:
            raise ValueError(f"offset {off}: truncated IPv6 header")
        _vcl, plen, proto, _hop, src, dst = IPV6_HEADER.unpack_from(frame, off)
        off += IPV6_HEADER.size
        end = off + plen
        _captured(frame, end)  # before its extension headers are read
        while proto in IPV6_EXTENSIONS and end - off >= 8:
            proto, off = frame[off], off + (frame[off + 1] + 1) * 8
        if proto == IPPROTO_FRAGMENT:
            raise ValueError(f"offset {off}: IPv6 fragment: reassembly not supported")
        if proto != IPPROTO_UDP:
            raise NotUdp(f"IPv6 next header {proto}")
    else:
        raise NotUdp(f"ethertype {etype:#06x}")
    _captured(frame, end)
    if end - off < UDP_HEADER.size:
        raise ValueError(f"offset {off}: truncated UDP header")
    sport, dport, length, _csum = UDP_HEADER.unpack_from(frame, off)
    if not UDP_HEADER.size <= length <= end - off:
        raise ValueError(f"offset {off + 4}: UDP length {length}, IP payload {end - off} bytes")
    payload = frame[off + UDP_HEADER.size : off + length]
    family = socket.AF_INET if etype == ETHERTYPE_IPV4 else socket.AF_INET6
    return Udp(socket.inet_ntop(family, src), sport, socket.inet_ntop(family, dst), dport, payload)


def _captured(frame: bytes, end: int) -> None:
    """ValueError when the IP packet ending at *end* was not captured whole."""
    if end > len(frame):
        raise ValueError(
            f"offset {len(frame)}: frame captured up to byte {len(frame)}, its IP "
            f"packet ends at {end} (snaplen too small?)"
        )
