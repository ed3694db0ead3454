"""Correlation semantics: one destroyed connection -> its flow records."""

from __future__ import annotations

import socket

from nfflowd.correlate.correlator import Correlator, flow_records, is_natted
from nfflowd.messages import Direction, EventType, FlowRecord
from tests.addresses import a
from tests.conntrack_events import SNAT_ORIG, SNAT_REPLY, ev, feed

S = 1_000_000_000


def view(r: FlowRecord) -> tuple[object, ...]:
    fam = socket.AF_INET6 if r.family == 6 else socket.AF_INET
    return (
        socket.inet_ntop(fam, r.src),
        r.sport,
        socket.inet_ntop(fam, r.dst),
        r.dport,
        r.packets,
        r.octets,
        Direction(r.direction).name,
    )


def test_seed_example_snat_triplet() -> None:
    c = Correlator()
    out: list[FlowRecord] = []
    feed(c, ev(EventType.NEW, 1248952336.422, SNAT_ORIG, SNAT_REPLY, counters=None), out)
    assert out == []
    feed(
        c,
        ev(
            EventType.DESTROY,
            1248952480.737,
            SNAT_ORIG,
            SNAT_REPLY,
            counters=(720, 38052, 1432, 2027040),
        ),
        out,
    )
    assert [view(r) for r in out] == [
        ("10.0.195.106", 62380, "74.125.6.225", 80, 720, 38052, "ORIGINAL_IN"),
        ("192.76.7.154", 62380, "74.125.6.225", 80, 720, 38052, "ORIGINAL_OUT"),
        ("74.125.6.225", 80, "192.76.7.154", 62380, 1432, 2027040, "REPLY_IN"),
    ]
    assert {(r.first_ms, r.last_ms) for r in out} == {(1248952336422, 1248952480737)}
    # post-NAT fields: the original flow as it left, the reply as it left
    assert out[0].post_src == a("192.76.7.154") and out[0].post_sport == 62380
    assert out[2].post_dst == a("10.0.195.106") and out[2].post_dport == 62380
    assert c.open == {}


def test_dnat_port_forward() -> None:
    # server 203.0.113.2 connects to the firewall's 203.0.113.1:8080, forwarded to 10.0.1.2:80
    orig = ("203.0.113.2", "203.0.113.1", 40000, 8080)
    reply = ("10.0.1.2", "203.0.113.2", 80, 40000)
    out = flow_records(ev(EventType.DESTROY, 100, orig, reply), 99 * S, 100 * S)
    assert [view(r) for r in out] == [
        ("203.0.113.2", 40000, "203.0.113.1", 8080, 10, 1000, "ORIGINAL_IN"),
        ("203.0.113.2", 40000, "10.0.1.2", 80, 10, 1000, "ORIGINAL_OUT"),
        ("10.0.1.2", 80, "203.0.113.2", 40000, 8, 5000, "REPLY_IN"),
    ]


def test_snat_and_dnat_at_once() -> None:
    orig = ("10.0.1.2", "198.51.100.9", 5555, 53)
    reply = ("10.9.9.9", "203.0.113.1", 53, 61000)
    out = flow_records(ev(EventType.DESTROY, 5, orig, reply, proto=17), 4 * S, 5 * S)
    assert [view(r)[:4] for r in out] == [
        ("10.0.1.2", 5555, "198.51.100.9", 53),
        ("203.0.113.1", 61000, "10.9.9.9", 53),
        ("10.9.9.9", 53, "203.0.113.1", 61000),
    ]


def test_no_nat_gives_two_records() -> None:
    orig = ("10.0.1.3", "203.0.113.2", 40001, 22)
    reply = ("203.0.113.2", "10.0.1.3", 22, 40001)
    e = ev(EventType.DESTROY, 5, orig, reply)
    assert not is_natted(e)
    out = flow_records(e, 4 * S, 5 * S)
    assert [view(r)[-1] for r in out] == ["ORIGINAL_IN", "REPLY_IN"]
    assert out[0].post_src == out[0].src and out[0].post_dport == out[0].dport


def test_unreplied_flow_has_no_reply_record() -> None:
    orig = ("10.0.1.2", "203.0.113.2", 40002, 9999)
    reply = ("203.0.113.2", "203.0.113.1", 9999, 40002)
    out = flow_records(
        ev(EventType.DESTROY, 5, orig, reply, proto=17, counters=(3, 84, 0, 0)), 0, 0
    )
    assert [view(r)[-1] for r in out] == ["ORIGINAL_IN", "ORIGINAL_OUT"]


def test_without_accounting_every_direction_is_reported_with_zero() -> None:
    out = flow_records(ev(EventType.DESTROY, 5, SNAT_ORIG, SNAT_REPLY, counters=None), 0, 0)
    assert len(out) == 3 and all(r.packets == 0 and r.octets == 0 for r in out)


def test_icmp_ports_are_type_code() -> None:
    # echo request type 8 code 0 id 77 -> reply type 0; NAT kept the id
    orig = ("10.0.1.2", "203.0.113.2", 77, 8 << 8)
    reply = ("203.0.113.2", "203.0.113.1", 77, 0)
    e = ev(EventType.DESTROY, 5, orig, reply, proto=1, counters=(1, 84, 1, 84))
    out = flow_records(e, 0, 0)
    assert [(r.sport, r.dport) for r in out] == [(0, 2048), (0, 2048), (0, 0)]
    assert [view(r)[-1] for r in out] == ["ORIGINAL_IN", "ORIGINAL_OUT", "REPLY_IN"]
    no_nat = ev(
        EventType.DESTROY,
        5,
        ("10.0.1.3", "203.0.113.2", 5, 8 << 8),
        ("203.0.113.2", "10.0.1.3", 5, 0),
        proto=1,
    )
    assert not is_natted(no_nat)  # type 8 vs 0 is not a translation


def test_portless_protocol_gets_zero_ports() -> None:
    orig = ("10.0.1.2", "203.0.113.2", 0x1234, 0x5678)  # GRE keys
    reply = ("203.0.113.2", "203.0.113.1", 0x5678, 0x1234)
    out = flow_records(ev(EventType.DESTROY, 5, orig, reply, proto=47), 0, 0)
    assert all(r.sport == 0 and r.dport == 0 for r in out) and len(out) == 3


def test_ipv6() -> None:
    orig = ("fd00:1::2", "2001:db8:1::2", 40000, 443)
    reply = ("2001:db8:1::2", "2001:db8:1::1", 443, 40000)
    out = flow_records(ev(EventType.DESTROY, 5, orig, reply), 0, 0)
    assert view(out[1])[:4] == ("2001:db8:1::1", 40000, "2001:db8:1::2", 443)


def test_start_time_preference() -> None:
    c = Correlator()
    out: list[FlowRecord] = []
    # matched by id even when the tuple differs in the DESTROY (id is the identity)
    feed(c, ev(EventType.NEW, 10, SNAT_ORIG, SNAT_REPLY, counters=None, ct_id=7), out)
    feed(c, ev(EventType.DESTROY, 20, SNAT_ORIG, SNAT_REPLY, ct_id=7), out)
    assert out[0].first_ms == 10_000 and out[0].last_ms == 20_000
    # kernel timestamps beat event times
    out.clear()
    feed(c, ev(EventType.NEW, 30, SNAT_ORIG, SNAT_REPLY, counters=None, ct_id=8), out)
    feed(
        c,
        ev(
            EventType.DESTROY,
            90,
            SNAT_ORIG,
            SNAT_REPLY,
            ct_id=8,
            start_ns=29_500_000_123,
            stop_ns=61_250_999_999,
        ),
        out,
    )
    assert (out[0].first_ms, out[0].last_ms) == (29_500, 61_250)
    # no NEW seen: delta-time, else the DESTROY time
    out.clear()
    feed(c, ev(EventType.DESTROY, 100, SNAT_ORIG, SNAT_REPLY, delta=42), out)
    assert out[0].first_ms == 58_000
    out.clear()
    feed(c, ev(EventType.DESTROY, 100, SNAT_ORIG, SNAT_REPLY), out)
    assert out[0].first_ms == out[0].last_ms == 100_000
    assert c.counters.destroy_without_new == 2
    assert c.open == {}


def test_tuple_match_without_id_and_ttl_purge() -> None:
    c = Correlator(ttl_s=60)
    out: list[FlowRecord] = []
    feed(c, ev(EventType.NEW, 0, SNAT_ORIG, SNAT_REPLY, counters=None), out)
    other = ("10.0.0.9", "74.125.6.225", 1111, 80)
    feed(
        c,
        ev(EventType.NEW, 50, other, ("74.125.6.225", "192.76.7.154", 80, 1111), counters=None),
        out,
    )
    feed(
        c,
        ev(
            EventType.NEW,
            100,
            ("10.0.0.8", "1.1.1.1", 1, 2),
            ("1.1.1.1", "10.0.0.8", 2, 1),
            counters=None,
        ),
        out,
    )
    assert c.purge() == 1  # only the one older than 60 s on the events' clock
    assert len(c.open) == 2 and c.counters.purged == 1
    feed(c, ev(EventType.DESTROY, 110, other, ("74.125.6.225", "192.76.7.154", 80, 1111)), out)
    assert out[0].first_ms == 50_000 and len(c.open) == 1


def test_active_timeout_interim_records_add_up_to_the_final_counters() -> None:
    c = Correlator(active_timeout_s=5)
    out: list[FlowRecord] = []
    feed(c, ev(EventType.NEW, 0, SNAT_ORIG, SNAT_REPLY, counters=None, ct_id=9), out)
    # periodic kernel dumps: (orig pkts, orig bytes, reply pkts, reply bytes) so far
    for t, cnt in [
        (3, (5, 500, 4, 4000)),
        (6, (10, 1000, 8, 8000)),
        (9, (12, 1200, 8, 8000)),
        (12, (20, 2000, 15, 15000)),
    ]:
        feed(c, ev(EventType.NEW, t, SNAT_ORIG, SNAT_REPLY, counters=cnt, ct_id=9), out)
    interim = list(out)
    # reported at 6 s (>= 5 s since the start) and at 12 s (>= 5 s since 6 s), not at 3 or 9
    assert {(r.first_ms, r.last_ms) for r in interim} == {(0, 6000), (6000, 12000)}
    assert all(r.end_reason == 2 for r in interim)  # IPFIX flowEndReason: active timeout
    feed(
        c,
        ev(EventType.DESTROY, 14, SNAT_ORIG, SNAT_REPLY, counters=(21, 2100, 17, 17100), ct_id=9),
        out,
    )
    final = out[len(interim) :]
    assert {(r.first_ms, r.last_ms, r.end_reason) for r in final} == {(12000, 14000, 3)}
    for direction, (pk, by) in {1: (21, 2100), 2: (21, 2100), 3: (17, 17100)}.items():
        mine = [r for r in out if r.direction == direction]
        assert (sum(r.packets for r in mine), sum(r.octets for r in mine)) == (pk, by)
    assert c.open == {} and c.counters.interim_reports == 2


def test_active_timeout_skips_directions_without_new_traffic() -> None:
    c = Correlator(active_timeout_s=1)
    out: list[FlowRecord] = []
    feed(c, ev(EventType.NEW, 0, SNAT_ORIG, SNAT_REPLY, counters=None, ct_id=3), out)
    feed(c, ev(EventType.NEW, 2, SNAT_ORIG, SNAT_REPLY, counters=(4, 400, 0, 0), ct_id=3), out)
    assert [Direction(r.direction).name for r in out] == ["ORIGINAL_IN", "ORIGINAL_OUT"]
    out.clear()
    feed(c, ev(EventType.DESTROY, 3, SNAT_ORIG, SNAT_REPLY, counters=(4, 400, 0, 0), ct_id=3), out)
    assert out == []  # everything was reported already
