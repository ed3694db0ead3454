"""Compiled ctnetlink message layouts: one ``struct`` call per event instead of a walk.

The kernel builds every conntrack event of one kind the same way
(``ctnetlink_conntrack_event()`` in net/netfilter/nf_conntrack_netlink.c): the
same attributes, in the same order, with the same sizes.  A DESTROY of an IPv4
TCP or UDP connection with accounting and timestamps is always 244 bytes with
its tuples at the same offsets; only the values change.  Walking the attribute
tree in Python costs ~6 µs per message; matching it against a precompiled shape and
reading its values with one :class:`struct.Struct` call costs a fraction of that.

So the decoder (:func:`nfflowd.conntrack.netlink.decode_messages`) keeps a
:class:`Layouts` cache.  After the general path has decoded a message without
finding anything to complain about, :func:`compile_layout` walks that message
once and builds a layout of two halves:

* a **byte pattern** (a compiled ``re`` of bytes, anchored, fixed length) in
  which every netlink header of the message — length, type and flags, nfgenmsg
  family, each attribute's length and type — is a literal taken from the message
  itself (no byte-order reasoning: host-order headers are just bytes), and every
  value a wildcard of its size.  Matching it costs ~1,800 instructions for a
  244-byte message; unpacking the headers as integers and comparing them cost
  about six times that;
* a big-endian **struct** that reads only the values the event needs (headers
  skipped), and a picker that puts them in one order for every layout
  (:data:`PICKED`; missing attributes give None or 0, as the general path does).

A later message of the same length is matched against each candidate layout of
that length; the layout applies only when the whole pattern matches, otherwise the
next candidate, and finally the general path, decodes it.  A message whose shape
the compiler does not cover (unknown or nested attributes it does not read,
32-bit counters of old kernels, a dump marked inconsistent) never gets a layout,
so the fast path counts exactly what the general path would count: nothing.  The
only check left at run time is the one the general path makes on values: both
tuples carry the same protocol.
"""

from __future__ import annotations

import operator
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nfflowd.conntrack.netlink_wire import (
    CTA_COUNTERS_ORIG,
    CTA_COUNTERS_REPLY,
    CTA_ID,
    CTA_IP_V4_DST,
    CTA_IP_V4_SRC,
    CTA_IP_V6_DST,
    CTA_IP_V6_SRC,
    CTA_MARK,
    CTA_MAX,
    CTA_PROTO_DST_PORT,
    CTA_PROTO_ICMP_CODE,
    CTA_PROTO_ICMP_ID,
    CTA_PROTO_ICMP_TYPE,
    CTA_PROTO_ICMPV6_CODE,
    CTA_PROTO_ICMPV6_ID,
    CTA_PROTO_ICMPV6_TYPE,
    CTA_PROTO_NUM,
    CTA_PROTO_SRC_PORT,
    CTA_STATUS,
    CTA_TIMESTAMP,
    CTA_TIMESTAMP_EVENT,
    CTA_TUPLE_IP,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_PROTO,
    CTA_TUPLE_REPLY,
    CTA_ZONE,
    IPCTNL_MSG_CT_DELETE,
    NEW_FLAGS,
    NLA_TYPE_MASK,
    NLATTR,
    NLM_F_DUMP_INTR,
    NLM_F_MULTI,
    NLMSGHDR,
)
from nfflowd.messages import ConntrackEvent, EventType

_new = tuple.__new__  # what ConntrackEvent(...) does, without its argument handling

#: Most layouts kept (a handful per protocol family and event type in practice).
MAX_LAYOUTS = 64
#: A message length whose messages failed to compile this often is not tried again.
MAX_FAILURES = 4

#: Leaf attributes read from a tuple's CTA_TUPLE_IP nest: type -> (slot, format).
_IP_LEAVES = {
    CTA_IP_V4_SRC: ("src", "4s"),
    CTA_IP_V4_DST: ("dst", "4s"),
    CTA_IP_V6_SRC: ("src", "16s"),
    CTA_IP_V6_DST: ("dst", "16s"),
}
#: ... and from its CTA_TUPLE_PROTO nest (u8 payloads are padded to 4 bytes, u16 too).
_PROTO_LEAVES = {
    CTA_PROTO_NUM: ("proto", "B3x"),
    CTA_PROTO_SRC_PORT: ("sport", "H2x"),
    CTA_PROTO_DST_PORT: ("dport", "H2x"),
    CTA_PROTO_ICMP_ID: ("icmp_id", "H2x"),
    CTA_PROTO_ICMP_TYPE: ("icmp_type", "B3x"),
    CTA_PROTO_ICMP_CODE: ("icmp_code", "B3x"),
    CTA_PROTO_ICMPV6_ID: ("icmp_id", "H2x"),
    CTA_PROTO_ICMPV6_TYPE: ("icmp_type", "B3x"),
    CTA_PROTO_ICMPV6_CODE: ("icmp_code", "B3x"),
}
_PAYLOAD_SIZE = {"4s": 4, "16s": 16, "B3x": 1, "H2x": 2, "I": 4, "Q": 8}
#: Bytes each field format covers in the message (padding included).
_FIELD_SIZE = {"4s": 4, "16s": 16, "B3x": 4, "H2x": 4, "I": 4, "Q": 8, "H": 2, "B": 1}
#: Top-level scalar attributes read: type -> (slot, format).
_SCALARS = {
    CTA_STATUS: ("status", "I"),
    CTA_MARK: ("mark", "I"),
    CTA_ID: ("id", "I"),
    CTA_ZONE: ("zone", "H2x"),
    CTA_TIMESTAMP_EVENT: ("event_ns", "Q"),
}
#: Top-level nests of two u64: type -> (slot of type 1, slot of type 2).
_PAIRS = {
    CTA_COUNTERS_ORIG: ("opk", "oby"),
    CTA_COUNTERS_REPLY: ("rpk", "rby"),
    CTA_TIMESTAMP: ("start", "stop"),
}
#: The values a layout picks, in this order: a missing one is None, or 0 when it is
#: in _ZERO (what the general path gives for an absent attribute).
PICKED = _PICKED = (
    "oproto", "rproto", "osrc", "odst", "osport", "odport", "rsrc", "rdst", "rsport", "rdport",
    "opk", "oby", "rpk", "rby", "id", "start", "stop", "mark", "zone", "status", "event_ns",
    "ocode", "rcode",
)  # fmt: skip
_ZERO = frozenset({"mark", "zone", "status", "osport", "odport", "rsport", "rdport", "ocode",
                   "rcode"})  # fmt: skip
#: Where ICMP tuples keep what the other protocols keep in their ports.
_ICMP_SLOTS = {"osport": "oicmp_id", "odport": "oicmp_type", "ocode": "oicmp_code",
               "rsport": "ricmp_id", "rdport": "ricmp_type", "rcode": "ricmp_code"}  # fmt: skip


class _Unsupported(Exception):
    """The message has a shape the compiler does not cover (the general path decodes it)."""


class _Builder:
    """Collects, field by field as the message is walked, the two halves of a layout: a
    byte pattern that checks every header (its bytes must be these) and a struct format
    that reads every value (headers skipped)."""

    def __init__(self, data: bytes, off: int) -> None:
        self.data = data
        self.pos = off  # where the next field starts
        self.pattern: list[bytes] = []
        self.fmt: list[str] = []
        self.count = 0  # values so far
        self.slots: dict[str, int] = {}

    def check(self, fmt: str) -> None:
        """A header field: its bytes, as they are in this message, are part of the shape."""
        size = _FIELD_SIZE[fmt]
        self.pattern.append(re.escape(self.data[self.pos : self.pos + size]))
        self.fmt.append(f"{size}x")
        self.pos += size

    def value(self, slot: str, fmt: str) -> None:
        if slot in self.slots:
            raise _Unsupported(f"attribute {slot} twice")
        size = _FIELD_SIZE[fmt]
        self.pattern.append(b".{%d}" % size)
        self.fmt.append(fmt)
        self.slots[slot] = self.count
        self.count += 1
        self.pos += size

    def skip(self, n: int) -> None:
        if n:
            self.pattern.append(b".{%d}" % n)
            self.fmt.append(f"{n}x")
            self.pos += n


def _attrs(data: bytes, pos: int, end: int) -> list[tuple[int, int, int]]:
    """(type, payload offset, payload length) of each attribute in data[pos:end], exactly."""
    out = []
    while pos < end:
        if end - pos < 4:
            raise _Unsupported("trailing bytes")
        nla_len, nla_type = NLATTR.unpack_from(data, pos)
        if nla_len < 4 or pos + nla_len > end:
            raise _Unsupported("attribute length")
        out.append((nla_type & NLA_TYPE_MASK, pos + 4, nla_len - 4))
        pos += (nla_len + 3) & ~3
    if pos != end:
        raise _Unsupported("attributes overrun their container")
    return out


def _leaf(b: _Builder, slot: str, fmt: str, size: int) -> None:
    if size != _PAYLOAD_SIZE[fmt]:
        raise _Unsupported(f"{slot} of {size} bytes")
    b.check("I")  # its nlattr header
    b.value(slot, fmt)


def _tuple(b: _Builder, data: bytes, pos: int, end: int, prefix: str) -> tuple[int, bool]:
    """Walk a CTA_TUPLE_* nest; return its family (4 or 6) and whether it is ICMP-shaped."""
    family = 0
    for typ, at, size in _attrs(data, pos, end):
        b.check("I")
        if typ == CTA_TUPLE_IP:
            for ip_typ, _, ip_size in _attrs(data, at, at + size):
                leaf = _IP_LEAVES.get(ip_typ)
                if leaf is None:
                    raise _Unsupported(f"CTA_TUPLE_IP type {ip_typ}")
                _leaf(b, prefix + leaf[0], leaf[1], ip_size)
                family = 4 if leaf[1] == "4s" else 6
        elif typ == CTA_TUPLE_PROTO:
            for l4_typ, _, l4_size in _attrs(data, at, at + size):
                leaf = _PROTO_LEAVES.get(l4_typ)
                if leaf is None:
                    raise _Unsupported(f"CTA_TUPLE_PROTO type {l4_typ}")
                _leaf(b, prefix + leaf[0], leaf[1], l4_size)
        else:
            raise _Unsupported(f"tuple attribute {typ}")  # e.g. CTA_TUPLE_ZONE
    names = {n[len(prefix) :] for n in b.slots if n.startswith(prefix)}
    if not family or not {"src", "dst", "proto"} <= names:
        raise _Unsupported("incomplete tuple")
    ports = bool(names & {"sport", "dport"})
    icmp = bool(names & {"icmp_id", "icmp_type", "icmp_code"})
    if ports and icmp:
        raise _Unsupported("ports and ICMP fields in one tuple")
    return family, icmp


@dataclass(frozen=True)
class Layout:
    """How to read every message of one shape (see the module docstring)."""

    match: Callable[[bytes, int], object]  # the shape's byte pattern: None when not this shape
    struct: struct.Struct  # its values, headers skipped
    pick: Callable[[tuple[Any, ...]], tuple[Any, ...]]  # the PICKED values (+ _TAIL)
    etype: int
    family: int
    icmp: bool  # the ports are (id, type << 8 | code)

    def values(self, data: bytes, off: int) -> tuple[Any, ...] | None:
        """The picked values of the message at data[off:] (in the order of ``PICKED``), or
        None when it is not of this layout.  For a reader that needs no event object (the
        correlator's DESTROY path); ICMP ports are left as (id, type) with the codes last."""
        if self.match(data, off) is None:
            return None
        p = self.pick(self.struct.unpack_from(data, off) + _TAIL)
        return p if p[0] == p[1] else None  # the tuples disagree: the general path says so

    def decode(self, data: bytes, off: int, now: int, kernel_time: bool) -> ConntrackEvent | None:
        """The event at data[off:], or None when the message is not of this layout."""
        p = self.values(data, off)
        if p is None:
            return None
        (
            proto,
            _,
            osrc,
            odst,
            osp,
            odp,
            rsrc,
            rdst,
            rsp,
            rdp,
            opk,
            oby,
            rpk,
            rby,
            ct_id,
            start,
            stop,
            mark,
            zone,
            status,
            event_ns,
            ocode,
            rcode,
        ) = p
        if self.icmp:
            odp = odp << 8 | ocode
            rdp = rdp << 8 | rcode
        delta = None
        if start is not None and stop is not None and stop >= start:
            delta = stop // 1_000_000_000 - start // 1_000_000_000
        t = (event_ns or now) if kernel_time else now
        fields = (
            self.etype,
            t,
            self.family,
            proto,
            osrc,
            odst,
            osp,
            odp,
            rsrc,
            rdst,
            rsp,
            rdp,
            opk,
            oby,
            rpk,
            rby,
            ct_id,
            start,
            stop,
            delta,
            mark,
            zone,
            status,
        )
        return _new(ConntrackEvent, fields)


#: Appended to an unpacked message so that a picker can take None or 0 for a missing value.
_TAIL: tuple[Any, ...] = (None, 0)


def compile_layout(data: bytes, off: int, length: int) -> Layout | None:
    """The layout of the ctnetlink event message at data[off:off + length] (already decoded
    without complaint by the general path), or None when its shape is not covered."""
    try:
        return _compile(data, off, length)
    except (_Unsupported, struct.error):
        return None


def _compile(data: bytes, off: int, length: int) -> Layout:
    _, mtype, flags, _, _ = NLMSGHDR.unpack_from(data, off)
    if flags & NLM_F_DUMP_INTR:
        raise _Unsupported("NLM_F_DUMP_INTR")
    b = _Builder(data, off)
    b.check("I")  # nlmsg_len
    b.check("H")  # nlmsg_type
    b.check("H")  # nlmsg_flags
    b.skip(8)  # nlmsg_seq, nlmsg_pid
    b.check("B")  # nfgen_family
    b.skip(3)  # version, res_id
    families = set()
    icmps = set()
    for typ, at, size in _attrs(data, off + 20, off + length):
        if typ in (CTA_TUPLE_ORIG, CTA_TUPLE_REPLY):
            b.check("I")
            family, icmp = _tuple(b, data, at, at + size, "o" if typ == CTA_TUPLE_ORIG else "r")
            families.add(family)
            icmps.add(icmp)
        elif typ in _PAIRS:
            b.check("I")
            pair = _attrs(data, at, at + size)
            if [t for t, _, _ in pair] not in ([1, 2], [1]):  # a dump's timestamp: start only
                raise _Unsupported(f"nest {typ} is not (u64 type 1[, u64 type 2])")
            for sub_typ, _, sub_size in pair:
                _leaf(b, _PAIRS[typ][sub_typ - 1], "Q", sub_size)
        elif typ in _SCALARS:
            _leaf(b, *_SCALARS[typ], size)
        elif 0 < typ <= CTA_MAX:
            b.check("I")  # known, not read (CTA_USE, CTA_TIMEOUT, CTA_PROTOINFO ...)
            b.skip((size + 3) & ~3)
        else:
            raise _Unsupported(f"attribute type {typ}")  # the general path counts it
    if {"osrc", "rsrc"} - set(b.slots) or len(families) != 1 or len(icmps) != 1:
        raise _Unsupported("tuples missing or of different families")
    st = struct.Struct("!" + "".join(b.fmt))
    if st.size != length or b.pos != off + length:
        raise _Unsupported(f"layout of {st.size} bytes for a message of {length}")
    icmp = icmps.pop()
    names = [(_ICMP_SLOTS.get(n, n) if icmp else n) for n in _PICKED]
    none_at, zero_at = b.count, b.count + 1
    picks = [
        b.slots.get(n, zero_at if p in _ZERO else none_at)
        for n, p in zip(names, _PICKED, strict=True)
    ]
    if mtype & 0xFF == IPCTNL_MSG_CT_DELETE:
        etype = EventType.DESTROY
    elif flags & NEW_FLAGS == NEW_FLAGS or flags & NLM_F_MULTI:
        etype = EventType.NEW
    else:
        etype = EventType.UPDATE
    return Layout(
        re.compile(b"".join(b.pattern), re.DOTALL).match,
        st,
        operator.itemgetter(*picks),
        int(etype),
        families.pop(),
        icmp,
    )


@dataclass
class Layouts:
    """The compiled layouts of one decoder, by message length (see the module docstring)."""

    by_length: dict[int, list[Layout]] = field(default_factory=dict)
    destroys: dict[int, list[Layout]] = field(default_factory=dict)  # DESTROY layouts only
    failures: dict[int, int] = field(default_factory=dict)
    count: int = 0
    hits: int = 0  # messages decoded by a layout

    def decode(
        self, data: bytes, off: int, length: int, now: int, kernel_time: bool
    ) -> ConntrackEvent | None:
        for layout in self.by_length.get(length, ()):
            ev = layout.decode(data, off, now, kernel_time)
            if ev is not None:
                self.hits += 1
                return ev
        return None

    def learn(self, data: bytes, off: int, length: int) -> None:
        """Compile the message at data[off:] (decoded cleanly by the general path)."""
        if self.count >= MAX_LAYOUTS or self.failures.get(length, 0) >= MAX_FAILURES:
            return
        layout = compile_layout(data, off, length)
        if layout is None:
            self.failures[length] = self.failures.get(length, 0) + 1
            return
        self.by_length.setdefault(length, []).append(layout)
        if layout.etype == EventType.DESTROY:
            self.destroys.setdefault(length, []).append(layout)
        self.count += 1
