"""Correlation: conntrack events -> flow records.  Pure; no I/O.

One destroyed connection becomes up to three unidirectional flow records
(``orig``/``reply`` are the tuples conntrack reports):

1. ORIGINAL_IN  -- the original direction *as it arrived*:
   ``orig.src:orig.sport -> orig.dst:orig.dport`` with the original counters;
2. ORIGINAL_OUT -- the original direction *as it left*, only when NAT changed it:
   ``reply.dst:reply.dport -> reply.src:reply.sport`` with the original counters;
3. REPLY_IN     -- the reply direction *as it arrived*:
   ``reply.src:reply.sport -> reply.dst:reply.dport`` with the reply counters.

For source NAT this is exactly the 2009 tool's triplet; it is equally right for
destination NAT, for both at once, and for no NAT (then two records).  A
direction whose counters are present and zero yields no record (the reply of
an unreplied flow); without accounting (counters absent) every direction is
reported with 0/0.  ICMP/ICMPv6 records carry source port 0 and destination
port ``type*256+code``; protocols without ports carry 0/0.

Each record also carries the other side of the firewall (``post_*``): for
ORIGINAL_IN the same packets as they left, for REPLY_IN the reply as it left
(towards the original source), for ORIGINAL_OUT itself.  NetFlow v9/IPFIX put
these into postNAT* information elements.

Start time of a connection, in order of preference: the kernel's own start
timestamp (CTA_TIMESTAMP); the time of the NEW event (matched by conntrack id
when the source gives one, else by original tuple and zone); ``delta-time``
seconds before the DESTROY; the DESTROY time itself.  End time: the kernel's
stop timestamp, else the DESTROY time.

Real-time NAT events (*nat_starts*): a NEW that opens a NATed connection also
yields an OPENED record (:attr:`~nfflowd.messages.EndReason.OPENED`), its
ORIGINAL_IN record with no counters and first = last = its start, from which
export sends the NAT create event while the connection is still open.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Protocol

from nfflowd.messages import (
    FLOW_RECORD,
    ConntrackEvent,
    Direction,
    EndReason,
    EventType,
    FlowRecord,
    unpack_flows,
)
from nfflowd.pipeline.delivery import Recent

#: Protocols whose tuples carry real ports (tcp, udp, dccp, sctp, udplite).
PORT_PROTOCOLS = frozenset({6, 17, 33, 132, 136})
#: ICMP and ICMPv6: ports are id / type<<8|code (see messages.py).
ICMP_PROTOCOLS = frozenset({1, 58})

_NEW = EventType.NEW
_DESTROY = EventType.DESTROY
_ORIGINAL_IN, _ORIGINAL_OUT, _REPLY_IN = (
    Direction.ORIGINAL_IN,
    Direction.ORIGINAL_OUT,
    Direction.REPLY_IN,
)
_RECORD_SIZE = FLOW_RECORD.size
_END_OF_FLOW = EndReason.END_OF_FLOW
_NS_PER_MS = 1_000_000
_NS_PER_S = 1_000_000_000

#: protocol, source port, destination port, zone after the two addresses of a tuple key
_KEY_TAIL = struct.Struct("!BHHH")

TupleKey = bytes | tuple[int, int, bytes, bytes, int, int, int]


def tuple_key(ev: ConntrackEvent) -> TupleKey:
    """The identity of a connection when no conntrack id is known.

    One packed ``bytes`` (addresses, then protocol, ports, zone): 15 bytes for
    IPv4, 39 for IPv6 (the length tells the family), ~140 bytes per open
    connection in the table against ~336 for a 7-tuple (bench_open_connections).
    A value that does not fit (never from the kernel) falls back to a tuple.
    """
    try:
        return (
            ev.orig_src
            + ev.orig_dst
            + _KEY_TAIL.pack(ev.proto, ev.orig_sport, ev.orig_dport, ev.zone)
        )
    except struct.error:
        return (
            ev.family,
            ev.proto,
            ev.orig_src,
            ev.orig_dst,
            ev.orig_sport,
            ev.orig_dport,
            ev.zone,
        )


def is_natted(ev: ConntrackEvent) -> bool:
    """True when the connection left the firewall with a different tuple than it arrived."""
    if ev.orig_src != ev.reply_dst or ev.orig_dst != ev.reply_src:
        return True
    proto = ev.proto
    if proto in PORT_PROTOCOLS:
        return ev.orig_sport != ev.reply_dport or ev.orig_dport != ev.reply_sport
    if proto in ICMP_PROTOCOLS:
        return ev.orig_sport != ev.reply_sport  # the echo id, rewritten by NAT when needed
    return False


Counters = tuple[int | None, int | None, int | None, int | None]


def flow_records(
    ev: ConntrackEvent,
    start_ns: int,
    end_ns: int,
    counters: Counters | None = None,
    end: int = EndReason.END_OF_FLOW,
) -> list[FlowRecord]:
    """The flow records of one connection (see the module docstring), decoded."""
    out = bytearray()
    pack_records(ev, start_ns, end_ns, out, counters, end)
    return unpack_flows(bytes(out))


def pack_records(
    ev: ConntrackEvent,
    start_ns: int,
    end_ns: int,
    out: bytearray,
    counters: Counters | None = None,
    end: int = EndReason.END_OF_FLOW,
) -> int:
    """Append the flow records of one connection to *out* as FLOW_RECORD structs (the
    form a FlowBatch carries: no record object is built); return how many.

    *counters* (orig packets, orig bytes, reply packets, reply bytes) replace the
    event's own, e.g. the deltas of an active-timeout report.  Raises struct.error
    (nothing appended) when a value does not fit its field (never from the kernel).
    """
    o_pkts, o_bytes, r_pkts, r_bytes = counters or (
        ev.orig_packets,
        ev.orig_bytes,
        ev.reply_packets,
        ev.reply_bytes,
    )
    return _pack(
        out,
        start_ns,
        end_ns,
        end,
        ev.family,
        ev.proto,
        ev.orig_src,
        ev.orig_dst,
        ev.orig_sport,
        ev.orig_dport,
        ev.reply_src,
        ev.reply_dst,
        ev.reply_sport,
        ev.reply_dport,
        o_pkts,
        o_bytes,
        r_pkts,
        r_bytes,
        ev.mark,
        ev.zone,
        ev.ct_id or 0,
    )


def _pack(
    out: bytearray,
    start_ns: int,
    end_ns: int,
    end: int,
    fam: int,
    proto: int,
    osrc: bytes,
    odst: bytes,
    osp: int,
    odp: int,
    rsrc: bytes,
    rdst: bytes,
    rsp: int,
    rdp: int,
    o_pkts: int | None,
    o_bytes: int | None,
    r_pkts: int | None,
    r_bytes: int | None,
    mark: int,
    zone: int,
    ctid: int,
) -> int:
    """:func:`pack_records` on plain values (what :meth:`Correlator.destroyed` has)."""
    first = start_ns // _NS_PER_MS
    last = end_ns // _NS_PER_MS
    if last < first:
        last = first
    if proto in PORT_PROTOCOLS:
        o_sport, o_dport, r_sport, r_dport = osp, odp, rsp, rdp
        out_sport, out_dport, back_sport, back_dport = rdp, rsp, odp, osp
        natted = osrc != rdst or odst != rsrc or osp != rdp or odp != rsp
    elif proto in ICMP_PROTOCOLS:
        o_sport, o_dport, r_sport, r_dport = 0, odp, 0, rdp
        out_sport, out_dport, back_sport, back_dport = 0, odp, 0, rdp
        natted = osrc != rdst or odst != rsrc or osp != rsp  # the echo id, rewritten by NAT
    else:
        o_sport = o_dport = r_sport = r_dport = out_sport = out_dport = 0
        back_sport = back_dport = 0
        natted = osrc != rdst or odst != rsrc
    pack = FLOW_RECORD.pack
    n = 0
    orig = o_pkts is None or o_pkts or o_bytes
    reply = r_pkts is None or r_pkts or r_bytes
    # packed first, appended after: a value that does not fit appends nothing
    a = b = c = b""
    if orig:
        pk, by = o_pkts or 0, o_bytes or 0
        a = pack(
            first,
            last,
            fam,
            proto,
            osrc,
            odst,
            o_sport,
            o_dport,
            pk,
            by,
            rdst,
            rsrc,
            out_sport,
            out_dport,
            _ORIGINAL_IN,
            end,
            mark,
            zone,
            ctid,
        )
        n = 1
        if natted:
            b = pack(
                first,
                last,
                fam,
                proto,
                rdst,
                rsrc,
                out_sport,
                out_dport,
                pk,
                by,
                rdst,
                rsrc,
                out_sport,
                out_dport,
                _ORIGINAL_OUT,
                end,
                mark,
                zone,
                ctid,
            )
            n = 2
    if reply:
        c = pack(
            first,
            last,
            fam,
            proto,
            rsrc,
            rdst,
            r_sport,
            r_dport,
            r_pkts or 0,
            r_bytes or 0,
            odst,
            osrc,
            back_sport,
            back_dport,
            _REPLY_IN,
            end,
            mark,
            zone,
            ctid,
        )
        n += 1
    out += a
    out += b
    out += c
    return n


def _deltas(ev: ConntrackEvent, reported: list[int]) -> Counters:
    """The event's counters minus what was already reported (None stays None)."""
    if ev.orig_packets is None:
        return (None, None, None, None)
    return (
        ev.orig_packets - reported[2],
        (ev.orig_bytes or 0) - reported[3],
        (ev.reply_packets or 0) - reported[4],
        (ev.reply_bytes or 0) - reported[5],
    )


class Journal(Protocol):
    """Where the active timeout's report states are kept across a crash
    (:class:`nfflowd.correlate.report_state.ReportJournal`); only conntrack-id keys are
    journaled."""

    def reported(self, ct_id: int, before: int | list[int], after: list[int]) -> None: ...

    def closed_conn(self, ct_id: int, before: list[int]) -> None: ...

    def forgotten(self, ct_id: int) -> None: ...


@dataclass
class CorrelatorCounters:
    new: int = 0
    destroy: int = 0
    update: int = 0
    destroy_without_new: int = 0
    new_duplicate: int = 0
    purged: int = 0
    records: int = 0
    interim_reports: int = 0
    replayed: int = 0  # events of connections already closed (a re-read after a restart)
    invalid: int = 0  # events with a value no flow record can carry (text logs only)
    opened: int = 0  # OPENED records of NATed connections (real-time NAT events)


@dataclass
class Correlator:
    """The open-connection table and the DESTROY -> records step.

    Open connections are keyed by conntrack id when the source reports one,
    else by :func:`tuple_key`; the value is the start time in ns (an int: the
    common case stays small), or, once a long connection has been reported by
    the active timeout, a list ``[start_ns, last_report_ns, orig_packets,
    orig_bytes, reply_packets, reply_bytes]`` of what was reported so far.
    Entries older than *ttl_s* (measured on the events' own clock, so replays
    of old logs purge as live runs do) are dropped by :meth:`purge`.

    Active timeout (*active_timeout_s* > 0): an event that carries counters for
    an open connection (an entry of a periodic kernel dump, an UPDATE) whose
    last report is at least that old yields records with the counter deltas
    since then (end reason ACTIVE_TIMEOUT); the DESTROY yields the remainder.
    The records of one connection add up exactly to the kernel's final counters.
    """

    ttl_s: int = 604800
    active_timeout_s: int = 0
    open: dict[object, int | list[int]] = field(default_factory=dict)
    counters: CorrelatorCounters = field(default_factory=CorrelatorCounters)
    clock_ns: int = 0  # the newest event time seen
    closed: Recent = field(default_factory=Recent)  # conntrack ids lately destroyed
    journal: Journal | None = None  # report states kept across a crash (active timeout)
    nat_starts: bool = False  # an OPENED record for each NATed connection's NEW

    def feed(self, ev: ConntrackEvent, out: bytearray) -> None:
        """Apply one event; append the records it completes to *out* (FLOW_RECORD structs)."""
        t = ev.time_ns
        if t > self.clock_ns:
            self.clock_ns = t
        etype = ev.type
        table = self.open
        if ev.ct_id is not None and ev.ct_id in self.closed:
            self.counters.replayed += 1  # ids are not reused while in this window
            return
        if etype != _DESTROY:
            key: object = ev.ct_id if ev.ct_id is not None else tuple_key(ev)
            entry = table.get(key)
            if etype == _NEW:
                self.counters.new += 1
                if entry is None:
                    entry = table[key] = ev.start_ns if ev.start_ns is not None else t
                    if self.nat_starts and is_natted(ev):
                        self._opened(ev, entry, out)
                    if ev.orig_packets is None:
                        return
                    # first seen in a dump (started before us, or a restarted correlate
                    # whose NEW was acknowledged): it may be due for a report already
                else:
                    self.counters.new_duplicate += 1
            else:
                self.counters.update += 1
                if entry is None:
                    return
            if self.active_timeout_s and ev.orig_packets is not None:
                self._maybe_report(key, entry, ev, out)
            return
        self.counters.destroy += 1
        entry = None
        if ev.ct_id is not None:
            self.closed.add(ev.ct_id)
            if table:
                entry = table.pop(ev.ct_id, None)
        if entry is None and table:  # (DESTROY only: the table stays empty)
            entry = table.pop(tuple_key(ev), None)
        end = ev.stop_ns if ev.stop_ns is not None else t
        if isinstance(entry, list):  # reported before: the remainder since the last report
            self._pack(ev, entry[1], end, out, _deltas(ev, entry))
            if self.journal is not None and ev.ct_id is not None:
                self.journal.closed_conn(ev.ct_id, entry)
        else:
            start = entry
            if ev.start_ns is not None:
                start = ev.start_ns
            elif start is None:
                self.counters.destroy_without_new += 1
                start = t - ev.delta_time * _NS_PER_S if ev.delta_time is not None else t
            self._pack(ev, start, end, out)

    def _pack(
        self,
        ev: ConntrackEvent,
        start: int,
        end: int,
        out: bytearray,
        counters: Counters | None = None,
        reason: int = EndReason.END_OF_FLOW,
    ) -> None:
        try:
            self.counters.records += pack_records(ev, start, end, out, counters, reason)
        except (struct.error, TypeError):  # a value no record can carry (never the kernel's)
            self.counters.invalid += 1

    def _opened(self, ev: ConntrackEvent, start: int, out: bytearray) -> None:
        """The OPENED record of *ev*'s connection: its ORIGINAL_IN record, no counters."""
        one = bytearray()
        try:
            pack_records(ev, start, start, one, (None, None, 0, 0), EndReason.OPENED)
        except (struct.error, TypeError):
            self.counters.invalid += 1
            return
        out += one[:_RECORD_SIZE]
        self.counters.opened += 1

    def _maybe_report(
        self, key: object, entry: int | list[int], ev: ConntrackEvent, out: bytearray
    ) -> None:
        """Active timeout: report a long connection's counter deltas since its last report."""
        now = ev.time_ns
        if isinstance(entry, list):
            start, since = entry[0], entry[1]
        else:
            start = since = ev.start_ns if ev.start_ns is not None else entry
        if now - since < self.active_timeout_s * _NS_PER_S:
            return
        base = entry if isinstance(entry, list) else [start, since, 0, 0, 0, 0]
        self._pack(ev, since, now, out, _deltas(ev, base), EndReason.ACTIVE_TIMEOUT)
        after = [
            start,
            now,
            ev.orig_packets or 0,
            ev.orig_bytes or 0,
            ev.reply_packets or 0,
            ev.reply_bytes or 0,
        ]
        self.open[key] = after
        if self.journal is not None and isinstance(key, int):
            self.journal.reported(key, entry, after)
        self.counters.interim_reports += 1

    def destroyed(
        self, v: tuple[Any, ...], family: int, icmp: bool, recv_ns: int, out: bytearray
    ) -> None:
        """What :meth:`feed` does with a DESTROY while the table is empty, from the values a
        compiled layout picked (:meth:`nfflowd.conntrack.netlink_layouts.Layout.values`):
        no event object, no table lookup.  The stateless path: with the kernel's stamps a
        DESTROY is all a connection's records need."""
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
            _status,
            event_ns,
            ocode,
            rcode,
        ) = v
        t = event_ns or recv_ns
        if t > self.clock_ns:
            self.clock_ns = t
        # (no memory of closed ids here: without a table nothing can reopen a connection,
        # and a live DESTROY is read once; saved logs take the text path)
        self.counters.destroy += 1
        if icmp:
            odp = odp << 8 | ocode
            rdp = rdp << 8 | rcode
        if start is None:
            self.counters.destroy_without_new += 1
            start = t
        try:
            self.counters.records += _pack(
                out,
                start,
                t if stop is None else stop,
                _END_OF_FLOW,
                family,
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
                mark,
                zone,
                ct_id or 0,
            )
        except (struct.error, TypeError):
            self.counters.invalid += 1

    def opened(self, time_ns: int, ct_id: int) -> None:
        """What :meth:`feed` does with a NEW that has a conntrack id and no counters or
        start time (from :func:`nfflowd.conntrack.text.new_line_key`: no event built)."""
        if time_ns > self.clock_ns:
            self.clock_ns = time_ns
        if ct_id in self.closed:
            self.counters.replayed += 1
            return
        self.counters.new += 1
        if ct_id in self.open:
            self.counters.new_duplicate += 1
        else:
            self.open[ct_id] = time_ns

    def feed_block(self, events: list[ConntrackEvent]) -> bytes:
        """Apply *events*; the records they complete as one FLOW_RECORD block."""
        out = bytearray()
        feed = self.feed
        for ev in events:
            feed(ev, out)
        return bytes(out)

    def feed_all(self, events: list[ConntrackEvent]) -> list[FlowRecord]:
        """:meth:`feed_block`, decoded (tests, tools)."""
        return unpack_flows(self.feed_block(events))

    def purge(self, now_ns: int | None = None) -> int:
        """Forget unfinished connections that started more than ttl_s ago."""
        now = self.clock_ns if now_ns is None else now_ns
        limit = now - self.ttl_s * _NS_PER_S
        stale = [k for k, v in self.open.items() if (v if isinstance(v, int) else v[1]) < limit]
        for k in stale:
            del self.open[k]
            if self.journal is not None and isinstance(k, int):
                self.journal.forgotten(k)
        self.counters.purged += len(stale)
        return len(stale)
