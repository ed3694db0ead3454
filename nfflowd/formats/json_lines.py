"""The mirror's JSON line: one JSON object per flow record, every field of it.

Chosen per dispatcher with ``format json`` in its ``<ptee><conf>`` block (the
default, ``csv``, is :mod:`nfflowd.formats.flowtools_csv`).  Unlike the
flow-tools CSV line, which is limited to what NetFlow v5 carries, this line
holds the whole :class:`~nfflowd.messages.FlowRecord`: the post-NAT side, the
direction, the end reason, mark, zone and conntrack id, IPv4 and IPv6 alike.

One line, no whitespace, keys always present and always in the order of
:data:`KEYS` (a stable contract: keys may be added at the end in a later
version, never renamed, reordered or removed)::

    {"first":"2026-11-26T17:35:22.608Z","last":"2026-11-26T17:35:25.646Z",
     "first_ms":1795714522608,"last_ms":1795714525646,"family":4,"proto":6,
     "src":"10.0.1.2","dst":"203.0.113.2","sport":42995,"dport":5001,
     "packets":6,"bytes":1320,"post_src":"203.0.113.1","post_dst":"203.0.113.2",
     "post_sport":42995,"post_dport":5001,"direction":"original_in",
     "end_reason":"end_of_flow","mark":0,"zone":0,"ct_id":3113394753,
     "exaddr":"127.0.0.1"}

(shown wrapped; it is one line).  The keys:

============== ========================================================================
key            value
============== ========================================================================
first, last    start / end of the flow, ISO 8601 UTC with milliseconds
               (``YYYY-MM-DDTHH:MM:SS.mmmZ``)
first_ms,      the same instants as integers: milliseconds since the Unix epoch
last_ms        (exact; ``first``/``last`` are derived from them)
family         4 or 6
proto          IP protocol number
src, dst       addresses as seen in this direction, text (IPv6 compressed, RFC 5952)
sport, dport   ports; ICMP/ICMPv6: sport 0, dport type*256+code; portless 0/0
packets,       the flow's counters, exact (up to 2**64-1)
bytes
post_src,      the same flow on the other side of the firewall (what v9/IPFIX put
post_dst,      in postNAT*/postNAPT*, IEs 225-228 and 281/282): the flow as it left
post_sport,    for ``original_in``, itself for ``original_out``, the reply as it left
post_dport     (towards the original source) for ``reply_in``
direction      ``original_in`` | ``original_out`` | ``reply_in``
               (:class:`~nfflowd.messages.Direction`, lower case)
end_reason     ``idle_timeout`` | ``active_timeout`` | ``end_of_flow`` | ``forced_end``
               | ``lack_of_resources`` (IPFIX flowEndReason, IE 136)
mark, zone     the connection's firewall mark and conntrack zone
ct_id          the conntrack id, 0 when unknown
exaddr         the configured export address (``<export> exaddr``), as in the CSV line
============== ========================================================================

:func:`parse_line` reads a line back and checks it (every key, its type and
range, addresses of the stated family, the ISO times agreeing with the integers).
"""

from __future__ import annotations

import functools
import json
import re
import socket
import time
from typing import Any, TypeGuard

from nfflowd.messages import Direction, EndReason, FlowRecord

#: Every key of a line, in the order it is written.
KEYS = (
    "first",
    "last",
    "first_ms",
    "last_ms",
    "family",
    "proto",
    "src",
    "dst",
    "sport",
    "dport",
    "packets",
    "bytes",
    "post_src",
    "post_dst",
    "post_sport",
    "post_dport",
    "direction",
    "end_reason",
    "mark",
    "zone",
    "ct_id",
    "exaddr",
)

#: Keys holding addresses of the record's family (``exaddr`` is any address).
ADDRESS_KEYS = ("src", "dst", "post_src", "post_dst")
#: Keys holding text timestamps, and the integer each must agree with.
TIME_KEYS = {"first": "first_ms", "last": "last_ms"}
#: Integer keys and their upper bound (all are >= 0; times up to year 9999).
INT_MAX: dict[str, int] = {
    "first_ms": 253_402_300_799_999,
    "last_ms": 253_402_300_799_999,
    "family": 6,
    "proto": 0xFF,
    "sport": 0xFFFF,
    "dport": 0xFFFF,
    "packets": 2**64 - 1,
    "bytes": 2**64 - 1,
    "post_sport": 0xFFFF,
    "post_dport": 0xFFFF,
    "mark": 2**32 - 1,
    "zone": 0xFFFF,
    "ct_id": 2**32 - 1,
}
#: (index in FlowRecord, field name, upper bound) of each integer written straight from it.
_INT_FIELDS = tuple(
    (FlowRecord._fields.index(attr), attr, INT_MAX[key])
    for key, attr in (
        ("first_ms", "first_ms"), ("last_ms", "last_ms"), ("proto", "proto"),
        ("sport", "sport"), ("dport", "dport"), ("packets", "packets"), ("bytes", "octets"),
        ("post_sport", "post_sport"), ("post_dport", "post_dport"), ("mark", "mark"),
        ("zone", "zone"), ("ct_id", "ct_id"),
    )
)  # fmt: skip

DIRECTIONS: dict[int, str] = {d.value: d.name.lower() for d in Direction}
#: (Not OPENED: a notice for the NAT event encoders, never a flow the mirror writes.)
END_REASONS: dict[int, str] = {
    e.value: e.name.lower() for e in EndReason if e is not EndReason.OPENED
}

_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def iso_ms(ms: int) -> str:
    """Epoch milliseconds -> ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC); ValueError outside 1970..9999."""
    if not 0 <= ms <= INT_MAX["last_ms"]:
        raise ValueError(f"{ms} ms is outside 1970-01-01..9999-12-31")
    secs, milli = divmod(ms, 1000)
    return f"{_iso_seconds(secs)}.{milli:03d}Z"


@functools.lru_cache(maxsize=256)
def _iso_seconds(secs: int) -> str:
    """The date and time of day; cached, as a batch's records share a few seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))


@functools.lru_cache(maxsize=16)
def _quoted(text: str) -> str:
    return json.dumps(text)


def format_line(rec: FlowRecord, *, exaddr: str) -> str:
    """The JSON line (no newline) for one flow; ValueError naming the field on a bad record."""
    for i, attr, bound in _INT_FIELDS:
        value = rec[i]
        if not (_is_int(value) and 0 <= value <= bound):
            raise ValueError(f"field {attr}: {value!r} is not an integer in 0..{bound}")
    af = _AF.get(rec.family) if _is_int(rec.family) else None
    if af is None:
        raise ValueError(f"field family: {rec.family!r} is neither 4 nor 6")
    addrs = []
    for attr in ADDRESS_KEYS:
        value = getattr(rec, attr)
        try:
            addrs.append(socket.inet_ntop(af, value))
        except (ValueError, TypeError):
            raise ValueError(f"field {attr}: {value!r} is not an IPv{rec.family} address") from None
    direction = DIRECTIONS.get(rec.direction) if _is_int(rec.direction) else None
    if direction is None:
        raise ValueError(f"field direction: {rec.direction!r} is not a Direction")
    end = END_REASONS.get(rec.end_reason) if _is_int(rec.end_reason) else None
    if end is None:
        raise ValueError(f"field end_reason: {rec.end_reason!r} is not an EndReason")
    src, dst, psrc, pdst = addrs
    # Every value is an int, a plain ASCII token or a JSON-quoted string: no escaping needed
    # except for exaddr, which comes from the configuration.
    return (
        f'{{"first":"{iso_ms(rec.first_ms)}","last":"{iso_ms(rec.last_ms)}",'
        f'"first_ms":{rec.first_ms},"last_ms":{rec.last_ms},"family":{rec.family},'
        f'"proto":{rec.proto},"src":"{src}","dst":"{dst}","sport":{rec.sport},'
        f'"dport":{rec.dport},"packets":{rec.packets},"bytes":{rec.octets},'
        f'"post_src":"{psrc}","post_dst":"{pdst}","post_sport":{rec.post_sport},'
        f'"post_dport":{rec.post_dport},"direction":"{direction}","end_reason":"{end}",'
        f'"mark":{rec.mark},"zone":{rec.zone},"ct_id":{rec.ct_id},'
        f'"exaddr":{_quoted(exaddr)}}}'
    )


def parse_line(line: str) -> dict[str, int | str]:
    """Fields of one JSON line by key; ValueError naming the key (or the offset) on bad input.

    Integers stay ``int``; addresses are returned in the normalised text form
    :func:`format_line` writes; ``first``/``last`` must equal what ``first_ms``/``last_ms``
    give.
    """
    try:
        obj: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON at offset {exc.pos}: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in KEYS if k not in obj]
    if missing:
        raise ValueError(f"key {missing[0]}: missing")
    extra = [k for k in obj if k not in KEYS]
    if extra:
        raise ValueError(f"key {extra[0]}: unknown (valid: {', '.join(KEYS)})")
    out: dict[str, int | str] = {}
    for key, bound in INT_MAX.items():
        value = obj[key]
        if not _is_int(value) or not 0 <= value <= bound:
            raise ValueError(f"key {key}: {value!r} is not an integer in 0..{bound}")
        out[key] = value
    if out["family"] not in _AF:
        raise ValueError(f"key family: {out['family']} is neither 4 nor 6")
    af = _AF[int(out["family"])]
    for key in (*ADDRESS_KEYS, "exaddr"):
        value = obj[key]
        fam = af if key != "exaddr" else None
        out[key] = _address(key, value, fam)
    for key, ms_key in TIME_KEYS.items():
        value = obj[key]
        if not isinstance(value, str) or not _ISO.fullmatch(value):
            raise ValueError(f"key {key}: {value!r} is not YYYY-MM-DDTHH:MM:SS.mmmZ")
        if value != iso_ms(int(out[ms_key])):
            raise ValueError(f"key {key}: {value} disagrees with {ms_key} {out[ms_key]}")
        out[key] = value
    for key, names in (("direction", DIRECTIONS), ("end_reason", END_REASONS)):
        value = obj[key]
        if value not in names.values():
            raise ValueError(f"key {key}: {value!r} is not one of {', '.join(names.values())}")
        out[key] = value
    return {k: out[k] for k in KEYS}


def _is_int(value: object) -> TypeGuard[int]:
    """An int (or IntEnum), not a bool."""
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def _address(key: str, value: Any, af: int | None) -> str:
    """``value`` as inet_ntop writes it; ValueError naming ``key`` (wrong type or family)."""
    if not isinstance(value, str):
        raise ValueError(f"key {key}: {value!r} is not an address string")
    fam = af if af is not None else socket.AF_INET6 if ":" in value else socket.AF_INET
    try:
        return socket.inet_ntop(fam, socket.inet_pton(fam, value))
    except (OSError, ValueError):
        what = "an IPv4" if fam == socket.AF_INET else "an IPv6"
        raise ValueError(f"key {key}: {value!r} is not {what} address") from None
