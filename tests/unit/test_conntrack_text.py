"""The conntrack text parser, on real captured output (tests/data/conntrack-text/).

Every expected value below was read from the captured files (see their README.txt):
addresses, ports, counters, conntrack ids and timestamps are those the kernel reported.
"""

from __future__ import annotations

import os
import queue
import random
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfflowd.conntrack.text import IPS_HW_OFFLOAD, IPS_OFFLOAD, ParseError, new_line_key, parse_line
from nfflowd.correlate.correlator import pack_records
from nfflowd.messages import IPS_ASSURED, IPS_SEEN_REPLY, ConntrackEvent, EventType

DATA = Path(__file__).resolve().parents[1] / "data" / "conntrack-text"
CAPTURED = sorted(
    p.name for p in DATA.glob("*.txt") if p.name not in ("handmade.txt", "README.txt")
)
LO4 = socket.inet_pton(socket.AF_INET, "127.0.0.1")
LO6 = socket.inet_pton(socket.AF_INET6, "::1")
NOW = 1_111_111_111_222_333_444  # the now_ns given to lines without a timestamp
SEEN = IPS_SEEN_REPLY
NEW, UPDATE, DESTROY = EventType.NEW, EventType.UPDATE, EventType.DESTROY


def ip(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def lines(name: str) -> list[str]:
    return [ln for ln in (DATA / name).read_text().splitlines() if not ln.startswith("#")]


def line_with(name: str, *needles: str) -> str:
    found = [ln for ln in lines(name) if all(n in ln for n in needles)]
    assert len(found) == 1, (name, needles, found)
    return found[0]


def parse(line: str, default_type: int = NEW) -> ConntrackEvent:
    ev = parse_line(line, default_type=default_type, now_ns=NOW)
    assert ev is not None
    return ev


#: conntrack's usual values of the fields an expected event does not give.
USUAL: dict[str, object] = dict(
    type=NEW, time_ns=NOW, family=4, proto=6, orig_src=LO4, orig_dst=LO4,
    reply_src=LO4, reply_dst=LO4, orig_packets=None, orig_bytes=None, reply_packets=None,
    reply_bytes=None, ct_id=None, start_ns=None, stop_ns=None, delta_time=None, mark=0,
    zone=0, status=SEEN,
)  # fmt: skip


def event(**fields: object) -> ConntrackEvent:
    """An event with conntrack's usual values (USUAL) for the fields not given."""
    return ConntrackEvent(**{**USUAL, **fields})  # type: ignore[arg-type]


# --- real events, field by field ---------------------------------------------------------

EXT = "events-acct-ts-ext-id.txt"


def test_tcp_destroy_with_timestamp_extended_id() -> None:
    ev = parse(line_with(EXT, "[DESTROY]", "dport=5001 packets"))
    assert ev == event(
        type=DESTROY,
        time_ns=1_795_714_273_762_413_000,
        proto=6,
        orig_sport=34998,
        orig_dport=5001,
        reply_sport=5001,
        reply_dport=34998,
        orig_packets=5,
        orig_bytes=1268,
        reply_packets=5,
        reply_bytes=2268,
        ct_id=3383701959,
        delta_time=2,
        status=SEEN | IPS_ASSURED,
    )


def test_tcp6_destroy() -> None:
    ev = parse(line_with(EXT, "[DESTROY]", "dport=5002 packets"))
    assert ev == event(
        type=DESTROY,
        time_ns=1_795_714_273_763_877_000,
        family=6,
        proto=6,
        orig_src=LO6,
        orig_dst=LO6,
        reply_src=LO6,
        reply_dst=LO6,
        orig_sport=46964,
        orig_dport=5002,
        reply_sport=5002,
        reply_dport=46964,
        orig_packets=5,
        orig_bytes=1368,
        reply_packets=5,
        reply_bytes=2368,
        ct_id=2786131770,
        delta_time=2,
        status=SEEN | IPS_ASSURED,
    )


def test_new_and_update_events_carry_no_counters() -> None:
    new = parse(line_with(EXT, "[NEW]", "dport=5001 [UNREPLIED]"))
    assert new == event(
        type=NEW,
        time_ns=1_795_714_270_269_247_000,
        orig_sport=34998,
        orig_dport=5001,
        reply_sport=5001,
        reply_dport=34998,
        ct_id=3383701959,
        status=0,
    )
    upd = parse(line_with(EXT, "ESTABLISHED", "dport=5001 src"))
    assert upd == new._replace(
        type=UPDATE, time_ns=1_795_714_270_269_271_000, status=SEEN | IPS_ASSURED
    )


def test_icmp_ports_are_id_and_type_code_and_the_last_id_is_the_conntrack_id() -> None:
    ev = parse(line_with(EXT, "[DESTROY]", "icmp "))
    assert ev == event(
        type=DESTROY,
        time_ns=1_795_714_273_761_914_000,
        proto=1,
        orig_sport=0x1234,
        orig_dport=8 << 8,
        reply_sport=0x1234,
        reply_dport=0,
        orig_packets=1,
        orig_bytes=84,
        reply_packets=1,
        reply_bytes=84,
        ct_id=338820935,
        delta_time=2,
    )


def test_icmpv6() -> None:
    ev = parse(line_with(EXT, "[DESTROY]", "icmpv6"))
    assert ev == event(
        type=DESTROY,
        time_ns=1_795_714_273_767_316_000,
        family=6,
        proto=58,
        orig_src=LO6,
        orig_dst=LO6,
        reply_src=LO6,
        reply_dst=LO6,
        orig_sport=0x4321,
        orig_dport=128 << 8,
        reply_sport=0x4321,
        reply_dport=129 << 8,
        orig_packets=1,
        orig_bytes=104,
        reply_packets=1,
        reply_bytes=104,
        ct_id=1477551068,
        delta_time=2,
    )


def test_gre_keys_are_the_ports() -> None:
    ev = parse(line_with(EXT, "[DESTROY]", "gre "))
    assert ev == event(
        type=DESTROY,
        time_ns=1_795_714_273_763_450_000,
        proto=47,
        orig_sport=0,
        orig_dport=0x1A2B,
        reply_sport=0x1A2B,
        reply_dport=0,
        orig_packets=1,
        orig_bytes=28,
        reply_packets=0,
        reply_bytes=0,
        ct_id=2574255933,
        delta_time=3,
        status=0,
    )


@pytest.mark.parametrize(
    ("needle", "family", "addr", "counters", "ct_id", "time_ns"),
    [
        ("src=127.0.0.1", 4, LO4, (1, 32, 0, 0), 710227005, 1_795_714_273_761_871_000),
        ("src=::1", 6, LO6, (1, 52, 0, 0), 1017918291, 1_795_714_273_765_937_000),
    ],
)
def test_unknown_protocol_has_no_ports(
    needle: str, family: int, addr: bytes, counters: tuple[int, ...], ct_id: int, time_ns: int
) -> None:
    ev = parse(line_with(EXT, "[DESTROY]", "unknown  253", needle))
    assert ev == event(
        type=DESTROY,
        time_ns=time_ns,
        family=family,
        proto=253,
        orig_src=addr,
        orig_dst=addr,
        reply_src=addr,
        reply_dst=addr,
        orig_sport=0,
        orig_dport=0,
        reply_sport=0,
        reply_dport=0,
        orig_packets=counters[0],
        orig_bytes=counters[1],
        reply_packets=counters[2],
        reply_bytes=counters[3],
        ct_id=ct_id,
        delta_time=3,
        status=0,
    )


@pytest.mark.parametrize(
    ("needle", "proto", "ports", "counters", "ct_id", "status"),
    [
        ("sctp", 132, (40000, 5015), (1, 52, 0, 0), 3976259774, 0),
        ("dccp", 33, (0, 0), (1, 40, 0, 0), 988799027, 0),  # tracked generically by 6.18
        ("udplite", 136, (38600, 5012), (1, 128, 1, 328), 3348174226, SEEN),
    ],
)
def test_other_port_protocols(
    needle: str,
    proto: int,
    ports: tuple[int, int],
    counters: tuple[int, ...],
    ct_id: int,
    status: int,
) -> None:
    ev = parse(line_with(EXT, "[DESTROY]", needle))
    assert (ev.proto, ev.orig_sport, ev.orig_dport, ev.reply_sport, ev.reply_dport) == (
        proto,
        *ports,
        *reversed(ports),
    )
    assert (ev.orig_packets, ev.orig_bytes, ev.reply_packets, ev.reply_bytes) == counters
    assert (ev.ct_id, ev.status, ev.family) == (ct_id, status, 4)


def test_mark_zone_and_zone_orig() -> None:
    marked = parse(line_with(EXT, "[DESTROY]", "dport=5006 packets"))
    assert (marked.mark, marked.zone, marked.orig_sport, marked.ct_id) == (42, 0, 43291, 1590115934)
    zoned = parse(line_with(EXT, "[DESTROY]", "dport=5007 packets"))
    assert (zoned.mark, zoned.zone, zoned.orig_sport, zoned.ct_id) == (0, 5, 42079, 2940864905)
    # zone-orig= sits between the original ports and counters; the counters stay the tuple's
    orig = parse(line_with(EXT, "[DESTROY]", "dport=5011 zone-orig=9"))
    assert (orig.zone, orig.orig_packets, orig.orig_bytes, orig.reply_packets) == (9, 1, 128, 0)
    assert (orig.orig_sport, orig.orig_dport, orig.status) == (41657, 5011, 0)


def test_nat_shows_in_the_reply_tuple() -> None:
    dnat = parse(line_with(EXT, "[DESTROY]", "dport=5008 packets"))
    assert (dnat.orig_dport, dnat.reply_sport, dnat.reply_dport) == (5008, 5009, 41998)
    assert (dnat.orig_bytes, dnat.reply_bytes) == (278, 278)
    snat = parse(line_with(EXT, "[DESTROY]", "dport=5010 packets"))
    assert (snat.orig_src, snat.orig_dst, snat.reply_src, snat.reply_dst) == (
        LO4,
        LO4,
        LO4,
        ip("127.0.0.5"),
    )
    assert (snat.orig_sport, snat.reply_dport, snat.ct_id) == (57423, 57423, 2146695935)


def test_destroy_by_userspace_keeps_its_timeout_and_is_parsed_up_to_userspace() -> None:
    ev = parse(line_with(EXT, "[DESTROY]", "[USERSPACE] portid=3310365655"))
    assert ev == event(
        type=DESTROY,
        time_ns=1_795_714_270_378_222_000,
        proto=17,
        orig_sport=42231,
        orig_dport=5003,
        reply_sport=5003,
        reply_dport=42231,
        orig_packets=1,
        orig_bytes=128,
        reply_packets=1,
        reply_bytes=328,
        ct_id=868246856,
        delta_time=0,
    )
    # the same event seen with -o id,ktimestamp,labels,userspace: "[start=...] [stop=...]"
    other = parse(
        line_with(
            "events-acct-id-ktimestamp-labels-userspace.txt", "[DESTROY]", "dport=5003 packets"
        )
    )
    assert other == ev._replace(time_ns=NOW)


def test_labels_are_ignored() -> None:
    ev = parse(line_with("events-acct-id-ktimestamp-labels-userspace.txt", "labels=blue,green"))
    assert (ev.type, ev.orig_sport, ev.orig_dport, ev.ct_id, ev.status) == (
        NEW,
        43161,
        5013,
        1533521922,
        0,
    )


def test_without_accounting_and_timestamps() -> None:
    ev = parse(line_with("events-noacct-ts-ext-id.txt", "[DESTROY]", "dport=5001 src"))
    assert ev == event(
        type=DESTROY,
        time_ns=1_795_714_283_527_296_000,
        orig_sport=40052,
        orig_dport=5001,
        reply_sport=5001,
        reply_dport=40052,
        ct_id=2009950448,
        status=SEEN | IPS_ASSURED,
    )


def test_listing_lines_get_the_default_type() -> None:
    ln = line_with("list-acct-ext-id.txt", "dport=5014 packets")
    ev = parse(ln, default_type=DESTROY)
    assert ev == event(
        type=DESTROY,
        orig_sport=44482,
        orig_dport=5014,
        reply_sport=5014,
        reply_dport=44482,
        orig_packets=5,
        orig_bytes=568,
        reply_packets=4,
        reply_bytes=816,
        ct_id=1880015161,
        delta_time=1,
        status=SEEN | IPS_ASSURED,
    )
    plain = parse(line_with("list-acct-plain.txt", "dport=5014 packets"))
    assert plain == ev._replace(type=NEW, ct_id=None)
    listed = parse(line_with("list-acct-ktimestamp-labels.txt", "dport=5013 packets"))
    assert (listed.orig_sport, listed.reply_bytes, listed.delta_time) == (43161, 328, 0)
    zoned = parse(line_with("list-noacct-ext-id.txt", "dport=5001 src"))
    assert (zoned.ct_id, zoned.orig_packets, zoned.status) == (2009950448, None, SEEN | IPS_ASSURED)


def test_without_timestamp_the_clock_is_used() -> None:
    ln = line_with("events-acct-plain.txt", "[DESTROY]", "dport=5001 packets")
    assert parse(ln).time_ns == NOW
    before = time.time_ns()
    ev = parse_line(ln)
    after = time.time_ns()
    assert ev is not None and before <= ev.time_ns <= after


@pytest.mark.parametrize("name", CAPTURED)
def test_every_captured_line_is_an_entry_or_a_conntrack_message(name: str) -> None:
    for ln in lines(name):
        ev = parse_line(ln, now_ns=NOW)
        assert (ev is None) == ln.startswith("conntrack v1.4.7 (conntrack-tools): "), ln
        if ev is not None:
            check_valid(ev)


def test_blank_lines_are_not_entries() -> None:
    assert [parse_line(s) for s in ("", "\n", "  \t \r\n")] == [None, None, None]


def test_line_endings_are_ignored() -> None:
    ln = line_with(EXT, "[DESTROY]", "dport=5001 packets")
    assert parse(ln + "\n") == parse(ln + "\r\n") == parse(ln + "  ") == parse(ln)


def test_the_four_listeners_agree() -> None:
    """Phase 1 ran four -E listeners at once: same events, whatever the -o options."""
    names = [n for n in CAPTURED if n.startswith("events-acct-")]
    parsed = {n: [parse(ln) for ln in lines(n)] for n in names}
    assert {len(v) for v in parsed.values()} == {70}
    for i in range(70):
        seen = {n: parsed[n][i] for n in names}
        assert len({ev._replace(time_ns=0, ct_id=0) for ev in seen.values()}) == 1, seen
        assert len({ev.ct_id for n, ev in seen.items() if "id" in n}) == 1
        for n, ev in seen.items():
            if "-ts" in n:  # the exact microseconds of its own prefix
                sec, usec = re.match(r"\[(\d+)\.(\d{6})\]", lines(n)[i]).groups()  # type: ignore[union-attr]
                assert ev.time_ns == int(sec) * 10**9 + int(usec) * 1000
            else:
                assert ev.time_ns == NOW and ("id" in n) == (ev.ct_id is not None)


# --- timestamps ----------------------------------------------------------------------------

TCP = "tcp 6 src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2 src=10.0.0.2 dst=10.0.0.1 sport=2 dport=1"


@pytest.mark.parametrize(
    ("prefix", "time_ns"),
    [
        ("[1795714273.762413]\t", 1_795_714_273_762_413_000),  # float would give ...413056
        ("[1248952480.737235]\t", 1_248_952_480_737_235_000),
        ("[1795714273.000001]\t", 1_795_714_273_000_001_000),
        ("[1248952480.1234  ]\t", 1_248_952_480_001_234_000),  # conntrack < 1.4.5: "%-6ld" us
        ("[1248952480.5     ]\t", 1_248_952_480_000_005_000),
        ("[1700000000.123456789]\t", 1_700_000_000_123_456_789),
        ("[1700000000.1]\t", 1_700_000_000_100_000_000),
        ("[1700000000] ", 1_700_000_000_000_000_000),
    ],
)
def test_timestamp_prefix_is_converted_exactly(prefix: str, time_ns: int) -> None:
    assert parse(prefix + "[DESTROY] " + TCP).time_ns == time_ns
    assert parse(prefix + TCP).type == NEW


# --- hand-made variants (see handmade.txt) ------------------------------------------------


def handmade(n: int) -> ConntrackEvent:
    return parse(lines("handmade.txt")[n - 1])


def test_handmade_offload_flags() -> None:
    off = handmade(1)
    assert off.status == SEEN | IPS_OFFLOAD and off.ct_id == 2961414157
    assert (off.orig_src, off.orig_dst, off.reply_dst) == (
        ip("10.0.1.2"),
        ip("203.0.113.7"),
        ip("203.0.113.1"),
    )
    assert (off.orig_packets, off.orig_bytes, off.reply_packets, off.reply_bytes) == (
        12,
        1840,
        10,
        9120,
    )
    hw = handmade(2)
    assert hw.status == SEEN | IPS_OFFLOAD | IPS_HW_OFFLOAD
    assert (hw.orig_sport, hw.orig_dport, hw.zone, hw.orig_packets) == (56394, 5001, 0, None)


def test_handmade_tail_fields() -> None:
    selinux = handmade(3)
    assert (selinux.type, selinux.proto, selinux.orig_dport, selinux.reply_bytes) == (
        DESTROY,
        17,
        53,
        87,
    )
    assert (selinux.ct_id, selinux.delta_time, selinux.time_ns) == (
        3428664541,
        0,
        1_795_714_273_770_980_000,
    )
    helper = handmade(4)  # zone-reply= alone leaves the original tuple in zone 0
    assert (helper.zone, helper.ct_id, helper.orig_dport, helper.status) == (0, 1234567890, 21, 0)
    userspace = handmade(9)
    assert (userspace.type, userspace.mark, userspace.ct_id) == (UPDATE, 7, 1880015161)
    proc = handmade(11)  # /proc/net/nf_conntrack, ICMP timestamp request/reply
    assert (proc.orig_sport, proc.orig_dport, proc.reply_dport) == (512, 13 << 8, 14 << 8)
    assert (proc.zone, proc.delta_time, proc.orig_bytes) == (3, 1, 40)


def test_handmade_protocols() -> None:
    sctp = handmade(5)
    assert (sctp.type, sctp.proto, sctp.status, sctp.time_ns) == (
        UPDATE,
        132,
        SEEN | IPS_ASSURED,
        1_795_714_280_548_633_000,
    )
    dccp = handmade(6)
    assert (dccp.proto, dccp.orig_sport, dccp.orig_dport, dccp.ct_id) == (33, 40001, 5016, 77)
    gre6 = handmade(10)
    assert (gre6.family, gre6.proto, gre6.orig_src, gre6.orig_dst) == (
        6,
        47,
        ip("2001:db8::2"),
        ip("2001:db8:1::7"),
    )
    assert (gre6.orig_sport, gre6.orig_dport, gre6.reply_sport, gre6.reply_dport) == (
        0x4D2,
        0xBEEF,
        0xBEEF,
        0x4D2,
    )


def test_handmade_gre_printed_as_unknown_has_no_ports() -> None:
    ev = handmade(12)  # "unknown  47": GRE without keys (old conntrack, or generic tracking)
    assert ev == event(
        type=DESTROY,
        time_ns=1_248_952_480_812_345_000,
        proto=47,
        orig_src=ip("10.0.195.106"),
        orig_dst=ip("74.125.6.226"),
        orig_sport=0,
        orig_dport=0,
        reply_src=ip("74.125.6.226"),
        reply_dst=ip("192.76.7.154"),
        reply_sport=0,
        reply_dport=0,
        orig_packets=14,
        orig_bytes=1288,
        reply_packets=12,
        reply_bytes=1104,
    )


def test_handmade_2009_example_of_the_perl_tool() -> None:
    ev = handmade(7)
    assert ev == event(
        type=DESTROY,
        time_ns=1_248_952_480_737_235_000,
        orig_src=ip("10.0.195.106"),
        orig_dst=ip("74.125.6.225"),
        orig_sport=62380,
        orig_dport=80,
        reply_src=ip("74.125.6.225"),
        reply_dst=ip("192.76.7.154"),
        reply_sport=80,
        reply_dport=62380,
        orig_packets=720,
        orig_bytes=38052,
        reply_packets=1432,
        reply_bytes=2027040,
        status=SEEN | IPS_ASSURED,
    )
    assert handmade(8).time_ns == 1_248_952_480_001_234_000


# --- errors -----------------------------------------------------------------------------------

REAL = line_with(EXT, "[DESTROY]", "dport=5001 packets")


@pytest.mark.parametrize(
    ("line", "reason", "field", "column"),
    [
        ("hello world", "expected protocol", None, 1),
        (REAL[:60], "line ends early: expected original tuple 'src=ADDRESS'", None, 61),
        (REAL[:75], "line ends early: expected original tuple 'dst=ADDRESS'", None, 76),
        (REAL[:77], "expected original tuple 'dst=ADDRESS', found 'd'", None, 77),
        (REAL[:150], "expected reply tuple 'dst=ADDRESS', found 'ds'", None, 149),
        (REAL[:147], "line ends early: expected reply tuple 'dst=ADDRESS'", None, 148),
        (REAL.replace("dst=127.0.0.1", "dst=127.0.0.256", 1), "bad IPv4 address", "dst", 77),
        (REAL.replace("src=127.0.0.1", "src=::1", 1), "bad IPv4 address", "src", 63),
        (REAL.replace("sport=34998", "sport=3499x"), "bad value '3499x'", "sport", 91),
        (REAL.replace("sport=34998", "sport=99999"), "out of range 0-65535", "sport", 91),
        (REAL.replace("dport=34998", "dport=-1"), "bad value '-1'", "dport", 174),
        (REAL.replace(" bytes=2268", ""), "misplaced tuple field", "packets", 186),
        (REAL.replace("id=3383701959", "id=4294967296"), "bad value '4294967296'", "id", 230),
        (REAL.replace("id=3383701959", "id=1 id=2"), "duplicate field", "id", 235),
        (REAL + " [NEW] tcp 6", "unexpected '[NEW]'", None, 244),
        (REAL.replace("ipv4     2", "ipv4     10"), "bad layer-3 protocol", "layer 3 protocol", 31),
        (REAL.replace("tcp      6", "udp      6"), "bad protocol 'udp' 6", "protocol", 42),
        (REAL.replace("tcp      6", "icmp     1"), "ports missing", "src", 63),
        (REAL.replace("[ASSURED]", "[ASSURED] [start=Thu"), "unterminated date", "start", 217),
        ('<?xml version="1.0" encoding="utf-8"?>', "XML", None, 1),
        ("-A -t 119 -u SEEN_REPLY -s 10.0.0.1", "-o save", None, 1),
        ("cpu=0   \tfound=0 invalid=12 insert=0", "expected protocol", None, 1),
        (REAL + "\n" + REAL + "\n", "line break inside the line", None, len(REAL) + 1),
    ],
)
def test_malformed_lines_say_what_and_where(
    line: str, reason: str, field: str | None, column: int
) -> None:
    with pytest.raises(ParseError) as info:
        parse_line(line, now_ns=NOW)
    err = info.value
    assert reason in str(err) and (err.field, err.column) == (field, column), str(err)
    assert f"column {column}" in str(err) and (field is None or repr(field) in str(err))


def test_parse_error_is_a_value_error() -> None:
    assert issubclass(ParseError, ValueError)


# --- fuzzing ----------------------------------------------------------------------------------

ALL_REAL = sorted(
    {ln for n in CAPTURED for ln in lines(n) if "src=" in ln} | set(lines("handmade.txt"))
)


def check_valid(ev: ConntrackEvent) -> None:
    """Everything a parsed event promises to the rest of the pipeline."""
    assert isinstance(ev, ConntrackEvent) and ev.type in (NEW, UPDATE, DESTROY)
    assert ev.family in (4, 6) and 0 <= ev.proto <= 255
    size = 4 if ev.family == 4 else 16
    for a in (ev.orig_src, ev.orig_dst, ev.reply_src, ev.reply_dst):
        assert isinstance(a, bytes) and len(a) == size
    for p in (ev.orig_sport, ev.orig_dport, ev.reply_sport, ev.reply_dport):
        assert type(p) is int and 0 <= p <= 0xFFFF
    counters = (ev.orig_packets, ev.orig_bytes, ev.reply_packets, ev.reply_bytes)
    assert counters == (None,) * 4 or all(type(c) is int and 0 <= c < 2**64 for c in counters)
    assert ev.ct_id is None or 0 <= ev.ct_id < 2**32
    assert ev.start_ns is None and ev.stop_ns is None
    assert ev.delta_time is None or 0 <= ev.delta_time < 2**64
    assert 0 <= ev.mark < 2**32 and 0 <= ev.zone <= 0xFFFF and 0 <= ev.time_ns < 2**64
    assert ev.status & ~(IPS_SEEN_REPLY | IPS_ASSURED | IPS_OFFLOAD | IPS_HW_OFFLOAD) == 0
    # every value fits the records the correlator makes of it (nothing raises)
    pack_records(ev, 0, 0, bytearray())


def parse_or_reject(line: str) -> None:
    try:
        ev = parse_line(line, now_ns=NOW)
    except ParseError as err:
        assert str(err) and (err.column is None or 1 <= err.column <= len(line) + 1), err
        return
    if ev is not None:
        check_valid(ev)


def test_every_truncation_of_real_lines() -> None:
    for ln in ALL_REAL:
        for end in range(len(ln) + 1):
            parse_or_reject(ln[:end])


FUZZ = settings(max_examples=400, deadline=None)


@FUZZ
@given(st.text())
def test_random_text(text: str) -> None:
    parse_or_reject(text)


@FUZZ
@given(st.text(alphabet=st.sampled_from(sorted(set("".join(ALL_REAL)) | {"\n", "\x00", "é"}))))
def test_random_text_of_conntrack_characters(text: str) -> None:
    parse_or_reject(text)


@FUZZ
@given(st.sampled_from(ALL_REAL), st.data())
def test_mutated_real_lines(line: str, data: st.DataObject) -> None:
    start = data.draw(st.integers(0, len(line)))
    end = data.draw(st.integers(start, min(len(line), start + 12)))
    insert = data.draw(st.text(alphabet=st.sampled_from("0123456789 =.:[]x\t-aAfF"), max_size=6))
    parse_or_reject(line[:start] + insert + line[end:])


@FUZZ
@given(st.sampled_from(ALL_REAL), st.data())
def test_shuffled_tokens_of_real_lines(line: str, data: st.DataObject) -> None:
    tokens = line.split()
    i = data.draw(st.integers(0, len(tokens) - 1))
    j = data.draw(st.integers(0, len(tokens) - 1))
    tokens[i], tokens[j] = tokens[j], tokens[i]
    if data.draw(st.booleans()):
        tokens.insert(j, tokens[i])
    parse_or_reject(" ".join(tokens))


def test_tail_fields_in_any_order_give_the_same_event() -> None:
    """Out-of-order tails take the slow tokenising path; it must agree with the fast one."""
    rng = random.Random(1)
    in_tuple = {
        "dst",
        "sport",
        "dport",
        "type",
        "code",
        "srckey",
        "dstkey",
        "zone-reply",
        "packets",
        "bytes",
    }
    checked = 0
    for ln in ALL_REAL:
        tokens = ln.split()
        j = [i for i, t in enumerate(tokens) if t.startswith("src=")][1] + 1  # reply tuple
        while j < len(tokens) and (
            tokens[j].split("=")[0] in in_tuple
            or (tokens[j].startswith("id=") and tokens[j - 1].startswith("code="))
        ):
            j += 1
        head, tail = tokens[:j], tokens[j:]
        if len(tail) < 2 or any(t.startswith(("[start=", "[USERSPACE]")) for t in tail):
            continue
        expected = parse(ln)
        for _ in range(3):
            rng.shuffle(tail)
            assert parse(" ".join(head + tail)) == expected, (ln, tail)
        checked += 1
    assert checked > 100


# --- against the kernel, live -------------------------------------------------------------

TRAFFIC = """
import socket, sys
srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
srv.bind(("127.0.0.1", 5099))
cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
cli.bind(("127.0.0.1", int(sys.argv[1])))
cli.sendto(b"q" * 100, ("127.0.0.1", 5099))
data, peer = srv.recvfrom(1000)
srv.sendto(b"r" * 300, peer)
cli.recv(1000)
"""


@pytest.mark.root
@pytest.mark.timeout(60)
def test_live_conntrack_events_parse() -> None:
    """A UDP exchange in a fresh namespace, as `conntrack -E -o timestamp,extended,id` shows it."""
    ns = f"nfa-t{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    proc: subprocess.Popen[str] | None = None
    try:

        def nsrun(*cmd: str) -> None:
            subprocess.run(
                ["ip", "netns", "exec", ns, *cmd], check=True, timeout=10, capture_output=True
            )

        nsrun("ip", "link", "set", "lo", "up")
        nsrun(
            "sysctl",
            "-q",
            "-w",
            "net.netfilter.nf_conntrack_acct=1",
            "net.netfilter.nf_conntrack_timestamp=1",
        )
        # conntrack hooks are registered in a namespace only once a rule needs them
        nsrun(
            "nft",
            "add table ip nfa; add chain ip nfa out { type filter hook output priority 0;"
            " }; add rule ip nfa out ct state new counter",
        )
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "conntrack", "-E", "-o", "timestamp,extended,id"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        out: queue.Queue[str] = queue.Queue()
        stdout = proc.stdout
        assert stdout is not None

        def pump() -> None:
            for ln in stdout:
                out.put(ln)

        threading.Thread(target=pump, daemon=True).start()

        def wait_for(*needles: str, seconds: float) -> str | None:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                try:
                    ln = out.get(timeout=left)
                except queue.Empty:
                    break
                if all(n in ln for n in needles):
                    return ln
            return None

        t0 = time.time_ns()
        new = None
        for sport in range(40100, 40120):  # the listener subscribes asynchronously: retry
            nsrun(sys.executable, "-c", TRAFFIC, str(sport))
            new = wait_for("[NEW]", f"sport={sport} ", seconds=1.0)
            if new is not None:
                break
        assert new is not None, "conntrack -E showed no event"
        nsrun("conntrack", "-D", "-p", "udp", "--sport", str(sport))
        destroy = wait_for("[DESTROY]", f"sport={sport} ", seconds=10.0)
        t1 = time.time_ns()
        assert destroy is not None
        first, last = parse(new), parse(destroy)
        assert first.ct_id == last.ct_id and first.ct_id is not None
        assert last == event(
            type=DESTROY,
            time_ns=last.time_ns,
            proto=17,
            orig_sport=sport,
            orig_dport=5099,
            reply_sport=5099,
            reply_dport=sport,
            orig_packets=1,
            orig_bytes=128,
            reply_packets=1,
            reply_bytes=328,
            ct_id=first.ct_id,
            delta_time=last.delta_time,
        )
        assert t0 <= first.time_ns <= last.time_ns <= t1
        assert last.delta_time is not None and 0 <= last.delta_time <= (t1 - t0) // 10**9 + 1
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", ns], timeout=10)


def test_new_line_key_agrees_with_the_whole_parse() -> None:
    """The correlator's fast path for NEW lines reads the time and id parse_line reads, and
    takes only lines whose event carries nothing else it would use."""
    taken = 0
    for ln in ALL_REAL:
        key = new_line_key(ln)
        if key is None:
            continue
        taken += 1
        ev = parse_line(ln)
        assert ev is not None and ev.type == NEW and (ev.time_ns, ev.ct_id) == key, ln
        assert ev.orig_packets is None and ev.start_ns is None, ln
    assert taken  # the captures with -o id have such lines
    icmp = "[1795714273.762413]\t [NEW] icmp     1 30 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=7 "
    assert new_line_key(icmp + "[UNREPLIED] src=10.0.0.2 dst=10.0.0.1 type=0 code=0 id=7") is None
    assert new_line_key(icmp + "[UNREPLIED] src=10.0.0.2 dst=10.0.0.1 type=0 code=0 id=7 id=9")
    destroy = line_with(EXT, "[DESTROY]", "dport=5001 packets")
    assert new_line_key(destroy) is None
    assert new_line_key("[1795714273.762413]\t[NEW] tcp 6 src=1.2.3.4 id=99999999999") is None
