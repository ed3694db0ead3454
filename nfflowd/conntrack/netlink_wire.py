"""ctnetlink wire vocabulary: kernel-header constants, payload formats, message builders.

What lives here: the numbers and struct layouts of include/uapi/linux/netlink.h,
netfilter/nfnetlink.h and netfilter/nfnetlink_conntrack.h (each group cites its
header), and the builders that produce messages: :func:`dump_request` (the request
we send) and :func:`encode_event` (what the kernel would send, for tests and
benchmarks).  Decoding, the hot path with its fixed-layout fast paths, is
:mod:`nfflowd.conntrack.netlink`; it re-exports the names other modules import, so
importers need not know about this split.
"""

from __future__ import annotations

import struct
from socket import AF_INET, AF_INET6, AF_UNSPEC

from nfflowd.messages import ConntrackEvent, EventType

# --- include/uapi/linux/netlink.h ------------------------------------------------
#: struct nlmsghdr: nlmsg_len u32, nlmsg_type u16, nlmsg_flags u16, nlmsg_seq u32,
#: nlmsg_pid u32 -- host byte order.
NLMSGHDR = struct.Struct("=IHHII")
#: struct nlattr: nla_len u16, nla_type u16 -- host byte order.
NLATTR = struct.Struct("=HH")
#: struct nlmsgerr: int error (negative errno, 0 = ack), then the offending header.
NLMSGERR = struct.Struct("=i")
NLMSG_ALIGNTO = 4
NLA_ALIGNTO = 4
NLMSG_NOOP = 0x1
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLMSG_OVERRUN = 0x4
NLMSG_MIN_TYPE = 0x10
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLA_F_NESTED = 1 << 15
NLA_F_NET_BYTEORDER = 1 << 14
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF

# --- include/uapi/linux/netfilter/nfnetlink.h ------------------------------------
#: struct nfgenmsg: nfgen_family u8, version u8, res_id __be16.
NFGENMSG = struct.Struct("!BBH")
NFNETLINK_V0 = 0
NFNL_SUBSYS_CTNETLINK = 1
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_UPDATE = 2
NFNLGRP_CONNTRACK_DESTROY = 3

# --- include/uapi/linux/netfilter/nfnetlink_conntrack.h --------------------------
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
# enum ctattr_type
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_MARK = 8
CTA_COUNTERS_ORIG = 9
CTA_COUNTERS_REPLY = 10
CTA_ID = 12
CTA_ZONE = 18
CTA_TIMESTAMP = 20
CTA_TIMESTAMP_EVENT = 27  # __be64 ns, kernel >= 6.14 with nf_conntrack_timestamp on
CTA_MAX = 27  # types 1..CTA_MAX not decoded here are known and ignored
# enum ctattr_tuple
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_TUPLE_ZONE = 3
# enum ctattr_ip
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
# enum ctattr_l4proto
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
CTA_PROTO_ICMP_ID = 4
CTA_PROTO_ICMP_TYPE = 5
CTA_PROTO_ICMP_CODE = 6
CTA_PROTO_ICMPV6_ID = 7
CTA_PROTO_ICMPV6_TYPE = 8
CTA_PROTO_ICMPV6_CODE = 9
# enum ctattr_counters
CTA_COUNTERS_PACKETS = 1  # __be64
CTA_COUNTERS_BYTES = 2  # __be64
CTA_COUNTERS32_PACKETS = 3  # __be32 (old kernels)
CTA_COUNTERS32_BYTES = 4  # __be32 (old kernels)
CTA_COUNTERS_PAD = 5
# enum ctattr_tstamp
CTA_TIMESTAMP_START = 1  # __be64, ns since epoch
CTA_TIMESTAMP_STOP = 2  # __be64, ns since epoch
CTA_TIMESTAMP_PAD = 3

#: Attribute payload formats (network byte order, as ctnetlink puts them).
U8 = struct.Struct("B")
BE16 = struct.Struct("!H")
BE32 = struct.Struct("!I")
BE64 = struct.Struct("!Q")

IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
#: Protocols whose tuple carries CTA_PROTO_SRC_PORT/DST_PORT (nf_conntrack_tuple_common.h:
#: tcp, udp, dccp, gre keys, sctp, udplite).
PORT_PROTOS = frozenset({6, 17, 33, 47, 132, 136})

#: nlmsg_flags of an IPCTNL_MSG_CT_NEW event for a new entry (an update has neither).
NEW_FLAGS = NLM_F_CREATE | NLM_F_EXCL


# --- builders ----------------------------------------------------------------------


def _nlmsg(mtype: int, flags: int, seq: int, payload: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(payload), mtype, flags, seq, 0) + payload


def _attr(typ: int, payload: bytes) -> bytes:
    raw = NLATTR.pack(4 + len(payload), typ) + payload
    return raw + b"\0" * (-len(raw) % NLA_ALIGNTO)


def _nest(typ: int, *parts: bytes) -> bytes:
    return _attr(typ | NLA_F_NESTED, b"".join(parts))


def dump_request(seq: int, family: int = AF_UNSPEC) -> bytes:
    """IPCTNL_MSG_CT_GET with NLM_F_DUMP: ask for the whole table (``family`` AF_*)."""
    mtype = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
    return _nlmsg(mtype, NLM_F_REQUEST | NLM_F_DUMP, seq, NFGENMSG.pack(family, NFNETLINK_V0, 0))


def _encode_tuple(
    typ: int, fam: int, proto: int, src: bytes, dst: bytes, sp: int, dp: int
) -> bytes:
    ips = (CTA_IP_V4_SRC, CTA_IP_V4_DST) if fam == 4 else (CTA_IP_V6_SRC, CTA_IP_V6_DST)
    l4 = [_attr(CTA_PROTO_NUM, U8.pack(proto))]
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        first = CTA_PROTO_ICMP_ID if proto == IPPROTO_ICMP else CTA_PROTO_ICMPV6_ID
        l4 += [
            _attr(first, BE16.pack(sp)),
            _attr(first + 1, U8.pack(dp >> 8)),
            _attr(first + 2, U8.pack(dp & 0xFF)),
        ]
    elif proto in PORT_PROTOS:
        l4 += [_attr(CTA_PROTO_SRC_PORT, BE16.pack(sp)), _attr(CTA_PROTO_DST_PORT, BE16.pack(dp))]
    return _nest(
        typ,
        _nest(CTA_TUPLE_IP, _attr(ips[0], src), _attr(ips[1], dst)),
        _nest(CTA_TUPLE_PROTO, *l4),
    )


def encode_event(ev: ConntrackEvent, seq: int = 0, dump: bool = False) -> bytes:
    """Build the message the kernel would send for ``ev`` (inverse of the decoder).

    ``dump`` gives a table-dump entry (NLM_F_MULTI).  ``time_ns`` and ``delta_time``
    are not carried (the decoder takes the receive time and derives delta-time).
    """
    parts = [
        _encode_tuple(
            CTA_TUPLE_ORIG,
            ev.family,
            ev.proto,
            ev.orig_src,
            ev.orig_dst,
            ev.orig_sport,
            ev.orig_dport,
        ),
        _encode_tuple(
            CTA_TUPLE_REPLY,
            ev.family,
            ev.proto,
            ev.reply_src,
            ev.reply_dst,
            ev.reply_sport,
            ev.reply_dport,
        ),
        _attr(CTA_STATUS, BE32.pack(ev.status)),
    ]
    if ev.mark:
        parts.append(_attr(CTA_MARK, BE32.pack(ev.mark)))
    for typ, pk, by in (
        (CTA_COUNTERS_ORIG, ev.orig_packets, ev.orig_bytes),
        (CTA_COUNTERS_REPLY, ev.reply_packets, ev.reply_bytes),
        (CTA_TIMESTAMP, ev.start_ns, ev.stop_ns),
    ):
        inner = [_attr(i, BE64.pack(v)) for i, v in ((1, pk), (2, by)) if v is not None]
        if inner:
            parts.append(_nest(typ, *inner))
    if ev.ct_id is not None:
        parts.append(_attr(CTA_ID, BE32.pack(ev.ct_id)))
    if ev.zone:
        parts.append(_attr(CTA_ZONE, BE16.pack(ev.zone)))
    if ev.type == EventType.DESTROY:
        mtype, flags = IPCTNL_MSG_CT_DELETE, 0
    else:
        mtype, flags = IPCTNL_MSG_CT_NEW, NEW_FLAGS if ev.type == EventType.NEW else 0
    if dump:  # table dumps send every entry as IPCTNL_MSG_CT_NEW | NLM_F_MULTI
        mtype, flags = IPCTNL_MSG_CT_NEW, NLM_F_MULTI
    family = AF_INET if ev.family == 4 else AF_INET6
    head = NFGENMSG.pack(family, NFNETLINK_V0, 0)
    return _nlmsg(NFNL_SUBSYS_CTNETLINK << 8 | mtype, flags, seq, head + b"".join(parts))
