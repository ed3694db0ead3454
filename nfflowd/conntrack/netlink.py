"""ctnetlink wire format: netlink messages <-> :class:`~nfflowd.messages.ConntrackEvent`.

Pure functions, no I/O.  The socket side lives in :mod:`nfflowd.conntrack.kernel`.
This module is the decoder (with its fixed-layout fast paths); the kernel-header
constants, payload formats and the message builders (:func:`dump_request`,
:func:`encode_event`) are :mod:`nfflowd.conntrack.netlink_wire`, re-exported here
(``__all__``) where other modules import them from this one.

Layout of one conntrack message (NETLINK_NETFILTER, subsystem NFNL_SUBSYS_CTNETLINK)::

    struct nlmsghdr   (include/uapi/linux/netlink.h, host byte order)
    struct nfgenmsg   (include/uapi/linux/netfilter/nfnetlink.h)
    struct nlattr...  (netlink.h; CTA_* from linux/netfilter/nfnetlink_conntrack.h,
                       payloads in network byte order, nests flagged NLA_F_NESTED)

L4 tuple attributes follow linux/netfilter/nf_conntrack_tuple_common.h: ports for
TCP/UDP/UDP-Lite/SCTP/DCCP and the GRE keys travel in CTA_PROTO_SRC_PORT /
CTA_PROTO_DST_PORT; ICMP and ICMPv6 use their own id/type/code attributes.

Bad input never raises out of :func:`decode_messages`: it is counted in
:class:`DecodeCounters` (``last_error`` names the offset and attribute) and skipped.
"""

from __future__ import annotations

import operator
import os
import struct
from dataclasses import dataclass
from socket import AF_INET, AF_INET6, AF_UNSPEC

from nfflowd.conntrack.netlink_layouts import Layouts
from nfflowd.conntrack.netlink_wire import (
    BE16,
    BE32,
    BE64,
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
    CTA_TUPLE_ZONE,
    CTA_ZONE,
    IPCTNL_MSG_CT_DELETE,
    IPCTNL_MSG_CT_GET,
    IPCTNL_MSG_CT_NEW,
    NEW_FLAGS,
    NFGENMSG,
    NFNL_SUBSYS_CTNETLINK,
    NFNLGRP_CONNTRACK_DESTROY,
    NFNLGRP_CONNTRACK_NEW,
    NFNLGRP_CONNTRACK_UPDATE,
    NLA_F_NESTED,
    NLA_TYPE_MASK,
    NLATTR,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_EXCL,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_ALIGNTO,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_MIN_TYPE,
    NLMSG_NOOP,
    NLMSG_OVERRUN,
    NLMSGERR,
    NLMSGHDR,
    PORT_PROTOS,
    U8,
    dump_request,
    encode_event,
)
from nfflowd.messages import ConntrackEvent, EventType

#: The decoder, plus the netlink_wire names other modules import from here.
__all__ = ["CTA_COUNTERS_ORIG", "CTA_MARK", "CTA_TUPLE_IP", "CTA_TUPLE_PROTO", "CTA_ZONE"]
__all__ += ["IPCTNL_MSG_CT_DELETE", "IPCTNL_MSG_CT_GET", "IPCTNL_MSG_CT_NEW", "DecodeCounters"]
__all__ += ["NFGENMSG", "NFNLGRP_CONNTRACK_DESTROY", "NFNLGRP_CONNTRACK_NEW"]
__all__ += ["NFNLGRP_CONNTRACK_UPDATE", "NFNL_SUBSYS_CTNETLINK", "NLATTR", "NLA_F_NESTED"]
__all__ += ["NLMSGHDR", "NLMSG_DONE", "NLMSG_ERROR", "NLMSG_NOOP", "NLMSG_OVERRUN", "NLM_F_ACK"]
__all__ += ["NLM_F_CREATE", "NLM_F_DUMP", "NLM_F_EXCL", "NLM_F_MULTI", "NLM_F_REQUEST"]
__all__ += ["PORT_PROTOS", "decode_messages", "dump_request", "encode_event"]
__all__ += ["NLMSG_MIN_TYPE", "error_of", "message_types"]


def _word(length: int, typ: int) -> int:
    """An nlattr header read as one host-order u32 (to check a whole layout at once)."""
    word: int = struct.unpack("=I", NLATTR.pack(length, typ))[0]
    return word


_N = NLA_F_NESTED
_PORTS = operator.itemgetter(0, 1, 3, 5, 6, 8, 10)
_ICMP = operator.itemgetter(0, 1, 3, 5, 6, 8, 10, 12)
#: Fast paths: the exact tuple-nest layouts ctnetlink_dump_tuples() emits, keyed by
#: payload length -> (format, header-word picker, expected words, family, is_icmp).
#: Fields: IP nest, src attr+addr, dst attr+addr, PROTO nest, CTA_PROTO_NUM u8, then
#: ports (raw __be16) or ICMP id (raw __be16) / type u8 / code u8, each 4-byte aligned.
_FAST_TUPLES = {
    48: (struct.Struct("=II4sI4sIIB3xI2s2xI2s2x"), _PORTS,
         (_word(20, 1 | _N), _word(8, 1), _word(8, 2), _word(28, 2 | _N), _word(5, 1),
          _word(6, 2), _word(6, 3)), 4, False),
    72: (struct.Struct("=II16sI16sIIB3xI2s2xI2s2x"), _PORTS,
         (_word(44, 1 | _N), _word(20, 3), _word(20, 4), _word(28, 2 | _N), _word(5, 1),
          _word(6, 2), _word(6, 3)), 6, False),
    56: (struct.Struct("=II4sI4sIIB3xI2s2xIB3xIB3x"), _ICMP,
         (_word(20, 1 | _N), _word(8, 1), _word(8, 2), _word(36, 2 | _N), _word(5, 1),
          _word(6, 4), _word(5, 5), _word(5, 6)), 4, True),
    80: (struct.Struct("=II16sI16sIIB3xI2s2xIB3xIB3x"), _ICMP,
         (_word(44, 1 | _N), _word(20, 3), _word(20, 4), _word(36, 2 | _N), _word(5, 1),
          _word(6, 7), _word(5, 8), _word(5, 9)), 6, True),
}  # fmt: skip
#: Fast path for a CTA_COUNTERS_* / CTA_TIMESTAMP nest of two __be64 (types 1 and 2).
_FAST_PAIR = struct.Struct("=I8sI8s")
_FAST_PAIR_WORDS = (_word(12, 1), _word(12, 2))

_ADDR_LEN = {CTA_IP_V4_SRC: 4, CTA_IP_V4_DST: 4, CTA_IP_V6_SRC: 16, CTA_IP_V6_DST: 16}
_PROTO_LEN = {1: 1, 2: 2, 3: 2, 4: 2, 5: 1, 6: 1, 7: 2, 8: 1, 9: 1}


@dataclass
class DecodeCounters:
    """What :func:`decode_messages` met besides good events (cumulative)."""

    buffers: int = 0  # calls / recv() buffers decoded
    # Every message lands in exactly one of: events, done, acks, errors, overruns,
    # truncated, malformed, unknown_msgs (their sum equals ``messages``).
    messages: int = 0  # netlink messages (or trailing fragments) met
    events: int = 0  # ConntrackEvents produced
    done: int = 0  # NLMSG_DONE (end of a dump)
    acks: int = 0  # NLMSG_ERROR with error 0
    errors: int = 0  # NLMSG_ERROR with a negative errno
    overruns: int = 0  # NLMSG_OVERRUN
    dump_interrupted: int = 0  # messages flagged NLM_F_DUMP_INTR (table changed mid-dump)
    truncated: int = 0  # message or attribute running past its container (skipped)
    malformed: int = 0  # messages skipped: bad length, missing or inconsistent tuple
    bad_attrs: int = 0  # attributes of the wrong size (ignored, event kept)
    unknown_msgs: int = 0  # NLMSG_NOOP, other subsystems / message types (skipped)
    unknown_attrs: int = 0  # attribute types this kernel header does not define (ignored)
    last_errno: int = 0  # errno of the last NLMSG_ERROR
    last_error: str = ""  # "offset N: ..." for the last problem
    notes: int = 0  # problems noted (every counter above but events/done/acks/messages)


class _Skip(Exception):
    """Internal: abandon the current message (never escapes this module)."""

    def __init__(self, kind: str, offset: int, what: str) -> None:
        super().__init__(what)
        self.kind = kind
        self.offset = offset
        self.what = what


def _attrs(data: bytes, pos: int, end: int, where: str) -> dict[int, tuple[int, int]]:
    """Map attribute type -> (payload offset, payload length) for data[pos:end]."""
    out: dict[int, tuple[int, int]] = {}
    while end - pos >= 4:
        nla_len, nla_type = NLATTR.unpack_from(data, pos)
        if nla_len < 4:
            raise _Skip("malformed", pos, f"{where} attribute type {nla_type} nla_len {nla_len}")
        if pos + nla_len > end:
            raise _Skip("truncated", pos, f"{where} attribute type {nla_type} runs past its end")
        out[nla_type & NLA_TYPE_MASK] = (pos + 4, nla_len - 4)
        pos += (nla_len + 3) & ~3
    return out


class _Decoder:
    """One buffer's decoding state (keeps counters and the recv time at hand)."""

    __slots__ = ("c", "data", "kernel_time")

    def __init__(self, data: bytes, counters: DecodeCounters, kernel_time: bool) -> None:
        self.data = data
        self.c = counters
        self.kernel_time = kernel_time

    def note(self, kind: str, offset: int, what: str) -> None:
        setattr(self.c, kind, getattr(self.c, kind) + 1)
        self.c.notes += 1
        self.c.last_error = f"offset {offset}: {what}"

    def scalar(
        self, attrs: dict[int, tuple[int, int]], typ: int, fmt: struct.Struct, where: str
    ) -> int | None:
        loc = attrs.get(typ)
        if loc is None:
            return None
        if loc[1] != fmt.size:
            self.note("bad_attrs", loc[0] - 4, f"{where} length {loc[1]} != {fmt.size}")
            return None
        value: int = fmt.unpack_from(self.data, loc[0])[0]
        return value

    def unknown(self, attrs: dict[int, tuple[int, int]], highest: int, where: str) -> None:
        for typ, (pos, _) in attrs.items():
            if typ == 0 or typ > highest:
                self.note("unknown_attrs", pos - 4, f"{where} unknown attribute type {typ}")

    def tuple_(self, loc: tuple[int, int], where: str) -> tuple[int, int, bytes, bytes, int, int]:
        """CTA_TUPLE_* nest -> (family, proto, src, dst, sport, dport)."""
        data = self.data
        fast = _FAST_TUPLES.get(loc[1])
        if fast is not None:
            v = fast[0].unpack_from(data, loc[0])
            if fast[1](v) == fast[2]:
                if fast[4]:
                    return fast[3], v[7], v[2], v[4], int.from_bytes(v[9]), v[11] << 8 | v[13]
                return fast[3], v[7], v[2], v[4], int.from_bytes(v[9]), int.from_bytes(v[11])
        return self.tuple_slow(loc, where)

    def tuple_slow(
        self, loc: tuple[int, int], where: str
    ) -> tuple[int, int, bytes, bytes, int, int]:
        """General path of :meth:`tuple_`: any attribute order, checks and counts."""
        data = self.data
        top = _attrs(data, loc[0], loc[0] + loc[1], where)
        self.unknown(top, CTA_TUPLE_ZONE, where)
        ip_loc, l4_loc = top.get(CTA_TUPLE_IP), top.get(CTA_TUPLE_PROTO)
        if ip_loc is None or l4_loc is None:
            raise _Skip("malformed", loc[0] - 4, f"{where} lacks CTA_TUPLE_IP or CTA_TUPLE_PROTO")
        ip = _attrs(data, ip_loc[0], ip_loc[0] + ip_loc[1], where + ".CTA_TUPLE_IP")
        for typ, (pos, size) in ip.items():
            want = _ADDR_LEN.get(typ)
            if want is None:
                self.note("unknown_attrs", pos - 4, f"{where}.CTA_TUPLE_IP unknown type {typ}")
            elif size != want:
                raise _Skip("malformed", pos - 4, f"{where}.CTA_TUPLE_IP type {typ} length {size}")
        if CTA_IP_V4_SRC in ip and CTA_IP_V4_DST in ip:
            family, s, d = 4, ip[CTA_IP_V4_SRC][0], ip[CTA_IP_V4_DST][0]
            src, dst = data[s : s + 4], data[d : d + 4]
        elif CTA_IP_V6_SRC in ip and CTA_IP_V6_DST in ip:
            family, s, d = 6, ip[CTA_IP_V6_SRC][0], ip[CTA_IP_V6_DST][0]
            src, dst = data[s : s + 16], data[d : d + 16]
        else:
            raise _Skip("malformed", ip_loc[0] - 4, f"{where}.CTA_TUPLE_IP lacks src/dst pair")
        l4 = _attrs(data, l4_loc[0], l4_loc[0] + l4_loc[1], where + ".CTA_TUPLE_PROTO")
        val: dict[int, int] = {}
        for typ, (pos, size) in l4.items():
            want = _PROTO_LEN.get(typ)
            if want is None:
                self.note("unknown_attrs", pos - 4, f"{where}.CTA_TUPLE_PROTO unknown type {typ}")
            elif size != want:
                self.note("bad_attrs", pos - 4, f"{where}.CTA_TUPLE_PROTO type {typ} len {size}")
            else:
                val[typ] = (U8 if want == 1 else BE16).unpack_from(data, pos)[0]
        proto = val.get(CTA_PROTO_NUM)
        if proto is None:
            raise _Skip("malformed", l4_loc[0] - 4, f"{where} lacks CTA_PROTO_NUM")
        if CTA_PROTO_SRC_PORT in val or CTA_PROTO_DST_PORT in val:
            sport, dport = val.get(CTA_PROTO_SRC_PORT, 0), val.get(CTA_PROTO_DST_PORT, 0)
        elif CTA_PROTO_ICMP_ID in val or CTA_PROTO_ICMP_TYPE in val:
            sport = val.get(CTA_PROTO_ICMP_ID, 0)
            dport = val.get(CTA_PROTO_ICMP_TYPE, 0) << 8 | val.get(CTA_PROTO_ICMP_CODE, 0)
        elif CTA_PROTO_ICMPV6_ID in val or CTA_PROTO_ICMPV6_TYPE in val:
            sport = val.get(CTA_PROTO_ICMPV6_ID, 0)
            dport = val.get(CTA_PROTO_ICMPV6_TYPE, 0) << 8 | val.get(CTA_PROTO_ICMPV6_CODE, 0)
        else:
            sport = dport = 0
        return family, proto, src, dst, sport, dport

    def pair(
        self,
        attrs: dict[int, tuple[int, int]],
        typ: int,
        first: int,
        second: int,
        alt: tuple[int, int],
        where: str,
    ) -> tuple[int | None, int | None]:
        """A nest of two u64 (or, for counters, old u32 ``alt``) values."""
        loc = attrs.get(typ)
        if loc is None:
            return None, None
        if loc[1] == _FAST_PAIR.size:
            w1, a1, w2, a2 = _FAST_PAIR.unpack_from(self.data, loc[0])
            if (w1, w2) == _FAST_PAIR_WORDS:
                return int.from_bytes(a1), int.from_bytes(a2)
        nest = _attrs(self.data, loc[0], loc[0] + loc[1], where)
        self.unknown(nest, max(second, *alt) + 1, where)
        a = self.scalar(nest, first, BE64, f"{where} type {first}")
        b = self.scalar(nest, second, BE64, f"{where} type {second}")
        if alt[0]:
            if a is None:
                a = self.scalar(nest, alt[0], BE32, f"{where} type {alt[0]}")
            if b is None:
                b = self.scalar(nest, alt[1], BE32, f"{where} type {alt[1]}")
        return a, b

    def event(self, off: int, mtype: int, flags: int, end: int, now: int) -> ConntrackEvent:
        data = self.data
        body = off + NLMSGHDR.size
        if end - body < NFGENMSG.size:
            raise _Skip("truncated", off, "message shorter than struct nfgenmsg")
        nfamily = data[body]
        attrs = _attrs(data, body + NFGENMSG.size, end, "ctnetlink")
        self.unknown(attrs, CTA_MAX, "ctnetlink")
        orig_loc, reply_loc = attrs.get(CTA_TUPLE_ORIG), attrs.get(CTA_TUPLE_REPLY)
        if orig_loc is None or reply_loc is None:
            raise _Skip("malformed", off, "message lacks CTA_TUPLE_ORIG or CTA_TUPLE_REPLY")
        fam, proto, osrc, odst, osp, odp = self.tuple_(orig_loc, "CTA_TUPLE_ORIG")
        rfam, rproto, rsrc, rdst, rsp, rdp = self.tuple_(reply_loc, "CTA_TUPLE_REPLY")
        if rfam != fam or rproto != proto or (nfamily, fam) not in _FAMILIES:
            raise _Skip("malformed", off, f"tuples disagree (nfgen_family {nfamily})")
        opk, oby = self.pair(attrs, CTA_COUNTERS_ORIG, 1, 2, (3, 4), "CTA_COUNTERS_ORIG")
        rpk, rby = self.pair(attrs, CTA_COUNTERS_REPLY, 1, 2, (3, 4), "CTA_COUNTERS_REPLY")
        start, stop = self.pair(attrs, CTA_TIMESTAMP, 1, 2, (0, 0), "CTA_TIMESTAMP")
        if mtype == IPCTNL_MSG_CT_DELETE:
            etype = EventType.DESTROY
        elif flags & NEW_FLAGS == NEW_FLAGS or flags & NLM_F_MULTI:
            etype = EventType.NEW
        else:
            etype = EventType.UPDATE
        delta = None
        if start is not None and stop is not None and stop >= start:
            delta = stop // 1_000_000_000 - start // 1_000_000_000  # as conntrack's delta-time=
        if self.kernel_time:
            now = self.scalar(attrs, CTA_TIMESTAMP_EVENT, BE64, "CTA_TIMESTAMP_EVENT") or now
        return ConntrackEvent(
            int(etype),
            now,
            fam,
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
            self.scalar(attrs, CTA_ID, BE32, "CTA_ID"),
            start,
            stop,
            delta,
            self.scalar(attrs, CTA_MARK, BE32, "CTA_MARK") or 0,
            self.scalar(attrs, CTA_ZONE, BE16, "CTA_ZONE") or 0,
            self.scalar(attrs, CTA_STATUS, BE32, "CTA_STATUS") or 0,
        )


_FAMILIES = frozenset({(AF_INET, 4), (AF_INET6, 6), (AF_UNSPEC, 4), (AF_UNSPEC, 6)})


def strerror(err: int) -> str:
    """``os.strerror`` for any number a message can carry (INT_MIN included)."""
    try:
        return os.strerror(err)
    except (OverflowError, ValueError):
        return f"unknown error {err}"


def message_types(buf: bytes | bytearray | memoryview) -> list[int]:
    """The nlmsg_type of each whole message in one datagram (stops at a bad length):
    enough to see a dump's NLMSG_DONE / NLMSG_ERROR without decoding its entries."""
    out: list[int] = []
    off, n = 0, len(buf)
    while n - off >= NLMSGHDR.size:
        length, mtype, _, _, _ = NLMSGHDR.unpack_from(buf, off)
        if length < NLMSGHDR.size or off + length > n:
            break
        out.append(mtype)
        off += (length + NLMSG_ALIGNTO - 1) & ~(NLMSG_ALIGNTO - 1)
    return out


def error_of(buf: bytes | bytearray | memoryview) -> int:
    """The errno of the first NLMSG_ERROR in a datagram that reports one (0: none)."""
    off, n = 0, len(buf)
    while n - off >= NLMSGHDR.size:
        length, mtype, _, _, _ = NLMSGHDR.unpack_from(buf, off)
        if length < NLMSGHDR.size or off + length > n:
            break
        if mtype == NLMSG_ERROR and length >= NLMSGHDR.size + NLMSGERR.size:
            err = -NLMSGERR.unpack_from(buf, off + NLMSGHDR.size)[0]
            if err:
                return int(err)
        off += (length + NLMSG_ALIGNTO - 1) & ~(NLMSG_ALIGNTO - 1)
    return 0


def decode_messages(
    buf: bytes | bytearray | memoryview,
    recv_time_ns: int,
    counters: DecodeCounters,
    *,
    kernel_time: bool = False,
    layouts: Layouts | None = None,
) -> list[ConntrackEvent]:
    """Decode every netlink message in one recv() buffer; problems go to ``counters``.

    ``time_ns`` of each event is ``recv_time_ns``, or with ``kernel_time`` the
    kernel's CTA_TIMESTAMP_EVENT when the message carries one.  With *layouts*
    (kept by the caller across calls), a message of a shape seen before is read
    with one compiled struct (:mod:`nfflowd.conntrack.netlink_layouts`): the same
    event, the same counters, a fraction of the cost.
    """
    data = bytes(buf)
    dec = _Decoder(data, counters, kernel_time)
    counters.buffers += 1
    events: list[ConntrackEvent] = []
    off, n = 0, len(data)
    while off < n:
        counters.messages += 1
        if n - off < NLMSGHDR.size:
            dec.note("truncated", off, f"{n - off} trailing bytes shorter than struct nlmsghdr")
            break
        length, mtype, flags, _seq, _pid = NLMSGHDR.unpack_from(data, off)
        if length < NLMSGHDR.size:
            dec.note("malformed", off, f"nlmsg_len {length} < header; rest of buffer dropped")
            return events
        if off + length > n:
            dec.note("truncated", off, f"nlmsg_len {length} exceeds the {n - off} bytes left")
            return events
        end = off + length
        if mtype < NLMSG_MIN_TYPE:
            if mtype == NLMSG_DONE:
                counters.done += 1
            elif mtype == NLMSG_ERROR:
                if end - off < NLMSGHDR.size + NLMSGERR.size:
                    dec.note("truncated", off, "NLMSG_ERROR shorter than struct nlmsgerr")
                else:
                    err = -NLMSGERR.unpack_from(data, off + NLMSGHDR.size)[0]
                    if err == 0:
                        counters.acks += 1
                    else:
                        counters.last_errno = err
                        dec.note("errors", off, f"NLMSG_ERROR errno {err} ({strerror(err)})")
            elif mtype == NLMSG_OVERRUN:
                dec.note("overruns", off, "NLMSG_OVERRUN")
            else:
                dec.note("unknown_msgs", off, f"netlink control type {mtype} ignored")
        elif mtype >> 8 != NFNL_SUBSYS_CTNETLINK or (mtype & 0xFF) not in (
            IPCTNL_MSG_CT_NEW,
            IPCTNL_MSG_CT_DELETE,
        ):
            dec.note("unknown_msgs", off, f"nlmsg_type {mtype:#06x} is not a ctnetlink event")
        else:
            fast = (
                None
                if layouts is None
                else layouts.decode(data, off, length, recv_time_ns, kernel_time)
            )
            if fast is not None:
                events.append(fast)
                counters.events += 1
            else:
                if flags & NLM_F_DUMP_INTR:
                    dec.note("dump_interrupted", off, "NLM_F_DUMP_INTR: dump inconsistent")
                noted = counters.notes
                try:
                    events.append(dec.event(off, mtype & 0xFF, flags, end, recv_time_ns))
                    counters.events += 1
                except _Skip as skip:
                    dec.note(skip.kind, skip.offset, skip.what)
                else:
                    if layouts is not None and counters.notes == noted:
                        layouts.learn(data, off, length)  # decoded without a complaint
        off += (length + NLMSG_ALIGNTO - 1) & ~(NLMSG_ALIGNTO - 1)
    return events
