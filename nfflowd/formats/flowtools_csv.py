"""The syslog mirror line: flow-tools CSV for NetFlow v5, as the 2009 tool wrote it.

Eighteen comma-separated fields, in the order of :data:`FIELDS` (the
``flow-export -f2`` column set the Perl nfflowd fed to ``flow-import``; see
"Flow Output" in its documentation)::

    1248952480,737235000,279737,172.16.1.1,720,38052,136315,279737,10.0.195.106,74.125.6.225,0.0.0.0,0,0,62380,80,6,0,0

Semantics, per flow:

* ``unix_secs``/``unix_nsecs``: the flow's end (``last_ms``); nsecs is the
  millisecond part times 1_000_000 (records have ms resolution);
* ``sysuptime``, ``first``, ``last``: ms relative to one base,
  ``uptime_base(first_ms, last_ms, boot_ms)`` (see :mod:`nfflowd.formats.uptime`),
  so ``sysuptime == last`` and ``unix time - sysuptime + first`` is the exact
  start.  A flow longer than 2**32-1 ms has its start clamped
  (:func:`~nfflowd.formats.uptime.clamp_span`);
* ``exaddr``: the configured export address, verbatim;
* ``dpkts``/``doctets``: the flow's counters, exact (not split at 32 bits);
* ``nexthop`` 0.0.0.0 (IPv4) or ``::`` (IPv6); input, output, tos, tcp_flags 0;
* addresses in standard text form (IPv6 compressed per RFC 5952);
* ICMP/ICMPv6: srcport 0 and dstport type*256+code, as in the v5 datagram
  (:mod:`nfflowd.formats.netflow_v5`); the ICMP id is not carried.

Moving bytes, not objects (schema 5).  The mirror gets its flows as a FlowBatch's
block of :data:`~nfflowd.messages.FLOW_RECORD` structs, and :func:`format_block`
writes a block's lines without a FlowRecord per record: one ``struct`` read of the
fields the line shows per record, the rules of :func:`format_line` inlined (no call
per record), one %-format per line, address texts from a bounded cache (a
connection's records share their addresses).  Same lines as :func:`format_line`,
which stays for FlowRecord objects; about two thirds of its CPU per line, and no
decoding into objects first (``bench/bench_mirror_format.py``).  Formatting a run
of 30 a column at a time (``zip`` into one %-format, as the v5 encoder does) was
measured too: no faster than this loop, where the formatting dominates.
"""

from __future__ import annotations

import functools
import socket
import struct

from nfflowd.formats.uptime import UPTIME_MAX, clamp_span, uptime_base
from nfflowd.messages import FLOW_RECORD, FlowRecord

FIELDS = (
    "unix_secs",
    "unix_nsecs",
    "sysuptime",
    "exaddr",
    "dpkts",
    "doctets",
    "first",
    "last",
    "srcaddr",
    "dstaddr",
    "nexthop",
    "input",
    "output",
    "srcport",
    "dstport",
    "prot",
    "tos",
    "tcp_flags",
)

#: Fields holding addresses; every other field is an unsigned integer.
ADDRESS_FIELDS = frozenset({"exaddr", "srcaddr", "dstaddr", "nexthop"})
#: Upper bound of each integer field (flow-tools' C types; counters may exceed
#: 32 bits because the mirror does not split them).
FIELD_MAX: dict[str, int] = {
    "unix_secs": 2**32 - 1,
    "unix_nsecs": 999_999_999,
    "sysuptime": UPTIME_MAX,
    "dpkts": 2**64 - 1,
    "doctets": 2**64 - 1,
    "first": UPTIME_MAX,
    "last": UPTIME_MAX,
    "input": 0xFFFF,
    "output": 0xFFFF,
    "srcport": 0xFFFF,
    "dstport": 0xFFFF,
    "prot": 0xFF,
    "tos": 0xFF,
    "tcp_flags": 0xFF,
}

_NEXTHOP = {4: "0.0.0.0", 6: "::"}
_ICMP = frozenset({1, 58})  # srcport 0, dstport type*256+code: the v5 convention
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}


def format_line(rec: FlowRecord, *, exaddr: str, boot_ms: int) -> str:
    """The CSV line (no newline) for one flow; ValueError on a bad family/address."""
    af = _AF.get(rec.family)
    if af is None:
        raise ValueError(f"family: {rec.family} is neither 4 nor 6")
    try:
        src = socket.inet_ntop(af, rec.src)
        dst = socket.inet_ntop(af, rec.dst)
    except ValueError:
        raise ValueError(
            f"src/dst: not IPv{rec.family} addresses ({rec.src!r}, {rec.dst!r})"
        ) from None
    last_ms = rec.last_ms
    first_ms = clamp_span(rec.first_ms, last_ms)
    base = uptime_base(first_ms, last_ms, boot_ms)
    secs, ms = divmod(last_ms, 1000)
    up = last_ms - base
    return (
        f"{secs},{ms * 1_000_000},{up},{exaddr},{rec.packets},{rec.octets},"
        f"{first_ms - base},{up},{src},{dst},{_NEXTHOP[rec.family]},0,0,"
        f"{0 if rec.proto in _ICMP else rec.sport},{rec.dport},{rec.proto},0,0"
    )


class _Texts(dict[bytes, str]):
    """Text of the addresses of one family met lately, by their 16 bytes in a block."""

    def __init__(self, family: int) -> None:
        super().__init__()
        self.af = _AF[family]
        self.size = 4 if family == 4 else 16

    def __missing__(self, key: bytes) -> str:
        text = self[key] = socket.inet_ntop(self.af, key[: self.size])
        return text


#: Most addresses of a family whose text is kept (cleared when full: a connection's
#: records share their addresses, and most connections the firewall's and a few
#: servers').
TEXTS_MAX = 4096
_TEXTS = {4: _Texts(4), 6: _Texts(6)}
#: The fields of one FLOW_RECORD the line shows, in order: first_ms, last_ms, family,
#: proto, src, dst (16 bytes), sport, dport, packets, octets (the rest skipped).
_ROW = struct.Struct("<QQBB16s16sHHQQ48x")


def _check_layout() -> None:
    if _ROW.size != FLOW_RECORD.size:
        raise ImportError(f"_ROW is {_ROW.size} bytes, FLOW_RECORD {FLOW_RECORD.size}")


_check_layout()


@functools.lru_cache(maxsize=8)
def format_block(block: bytes, *, exaddr: str, boot_ms: int) -> list[str]:
    """The lines :func:`format_line` gives for each record of a FLOW_RECORD block
    (:func:`~nfflowd.messages.pack_flows`), without building a FlowRecord each.

    ValueError on a record whose family is neither 4 nor 6 (the caller formats
    record by record to skip it), or when the block's length is not a multiple of a
    record's.  The rules of :func:`format_line`, inlined: clamp_span, uptime_base.

    Cost: turning integers into text is most of a line's work, so what repeats is
    converted once: the time fields depend only on the flow's (first, last), the
    same for the two or three records of one connection (the last pair's text is
    kept); port and protocol numbers come from a table of small integers' text."""
    size = FLOW_RECORD.size
    if len(block) % size:
        raise ValueError(f"flow block of {len(block)} bytes: not a multiple of {size}")
    for cache in _TEXTS.values():
        if len(cache) > TEXTS_MAX:
            cache.clear()
    texts_of = _TEXTS.get
    small = _small_texts()
    exa = exaddr
    lines: list[str] = []
    append = lines.append
    key = None
    head = mid = ""
    for first, last, family, proto, src, dst, sport, dport, packets, octets in _ROW.iter_unpack(
        block
    ):
        texts = texts_of(family)
        if texts is None:
            raise ValueError(f"family: {family} is neither 4 nor 6")
        if (first, last) != key:
            key = (first, last)
            if first > last:  # clamp_span
                first = last
            elif last - first > UPTIME_MAX:
                first = last - UPTIME_MAX
            base = last - boot_ms  # uptime_base: the host's uptime at the flow's end ...
            if base < 0:
                base = first
            else:  # ... its last 2**32 ms period, unless the flow started before
                base = boot_ms + (base >> 32 << 32)
                if base > first:
                    base = first
            up = last - base
            head = f"{last // 1000},{last % 1000 * 1_000_000},{up},{exa},"
            mid = f",{first - base},{up},"
        append(
            f"{head}{packets},{octets}{mid}{texts[src]},{texts[dst]},{_NEXTHOP[family]},0,0,"
            f"{small[0] if proto in _ICMP else small[sport]},{small[dport]},{small[proto]},0,0"
        )
    return lines


_SMALL: list[str] = []


def _small_texts() -> list[str]:
    """The text of every integer a port or protocol field can hold (built on first use)."""
    if not _SMALL:
        _SMALL.extend(map(str, range(0x10000)))
    return _SMALL


def parse_line(line: str) -> dict[str, int | str]:
    """Fields of one CSV line by name; ValueError naming the field on bad input.

    Integer fields become ``int``; addresses are validated and returned in the
    same normalised text form :func:`format_line` writes.
    """
    parts = line.rstrip("\r\n").split(",")
    if len(parts) != len(FIELDS):
        raise ValueError(f"expected {len(FIELDS)} fields, got {len(parts)}")
    out: dict[str, int | str] = {}
    for name, text in zip(FIELDS, parts, strict=True):
        if name in ADDRESS_FIELDS:
            out[name] = _address(name, text)
            continue
        if not text.isascii() or not text.isdigit():
            raise ValueError(f"field {name}: {text!r} is not an unsigned integer")
        value = int(text)
        if value > FIELD_MAX[name]:
            raise ValueError(f"field {name}: {value} exceeds {FIELD_MAX[name]}")
        out[name] = value
    if len({":" in str(out[k]) for k in ("srcaddr", "dstaddr", "nexthop")}) != 1:
        raise ValueError("field nexthop: srcaddr, dstaddr and nexthop mix IPv4 and IPv6")
    return out


def _address(name: str, text: str) -> str:
    """``text`` as inet_ntop writes it (RFC 5952 for IPv6); ValueError naming ``name``."""
    af = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return socket.inet_ntop(af, socket.inet_pton(af, text))
    except (OSError, ValueError):
        raise ValueError(f"field {name}: {text!r} is not an IP address") from None
