"""ctnetlink decoder: golden kernel captures, an independent oracle, round trips, fuzzing."""

from __future__ import annotations

import calendar
import ipaddress
import json
import re
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfflowd.conntrack import netlink as nl
from nfflowd.conntrack.netlink import DecodeCounters, decode_messages, dump_request, encode_event
from nfflowd.conntrack.netlink_layouts import Layouts
from nfflowd.messages import ConntrackEvent, EventType

DATA = Path(__file__).resolve().parent.parent / "data" / "netlink"
NAMES = sorted(p.stem for p in DATA.glob("*.hex"))
BUCKETS = ("events", "done", "acks", "errors", "overruns", "truncated", "malformed", "unknown_msgs")


def load_hex(name: str) -> list[bytes]:
    """Datagrams of a .hex fixture: '# datagram' starts one, other lines are hex bytes."""
    grams: list[bytes] = []
    for line in (DATA / f"{name}.hex").read_text().splitlines():
        if line.startswith("# datagram"):
            grams.append(b"")
        elif line.strip() and not line.startswith("#"):
            grams[-1] += bytes.fromhex(line)
    return grams


def load_json(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return doc


def event_from_json(doc: dict[str, Any]) -> ConntrackEvent:
    values: list[Any] = [
        ipaddress.ip_address(doc[f]).packed if f.endswith(("_src", "_dst")) else doc[f]
        for f in ConntrackEvent._fields
    ]
    return ConntrackEvent(*values)


def decode_all(grams: list[bytes], now: int, counters: DecodeCounters) -> list[ConntrackEvent]:
    return [ev for g in grams for ev in decode_messages(g, now, counters)]


def check_accounting(counters: DecodeCounters) -> None:
    assert sum(getattr(counters, b) for b in BUCKETS) == counters.messages


def check_event(ev: ConntrackEvent) -> None:
    size = 4 if ev.family == 4 else 16
    assert ev.family in (4, 6)
    assert ev.type in (EventType.NEW, EventType.UPDATE, EventType.DESTROY)
    assert all(len(a) == size for a in (ev.orig_src, ev.orig_dst, ev.reply_src, ev.reply_dst))
    assert all(0 <= p <= 0xFFFF for p in ev[6:8] + ev[10:12])


EVENT_FIXTURES = [n for n in NAMES if n.split("_")[0] in ("new", "update", "destroy")]


def test_fixtures_cover_every_kind() -> None:
    kinds = ("new", "update", "destroy")
    wanted = {f"{t}_{p}{f}" for t in kinds for p in ("tcp", "udp", "icmp") for f in (4, 6)}
    assert wanted <= set(NAMES)
    assert {"dump", "error"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_golden(name: str) -> None:
    doc = load_json(name)
    counters = DecodeCounters()
    events = decode_all(load_hex(name), doc["recv_time_ns"], counters)
    assert events == [event_from_json(e) for e in doc["expected"]]
    # (notes: how many of the problem counters moved, for the decoder's own use)
    problems = {k: v for k, v in vars(counters).items() if k not in ("last_error", "notes")}
    assert problems == doc["counters"]
    assert counters.truncated == counters.malformed == counters.unknown_attrs == 0
    check_accounting(counters)


def test_golden_event_types_follow_nlmsg_flags() -> None:
    for name in EVENT_FIXTURES:
        (ev,) = decode_all(load_hex(name), 1, DecodeCounters())
        assert EventType(ev.type).name.lower() == name.split("_")[0]
        assert ev.time_ns == 1
    dumped = decode_all(load_hex("dump"), 1, DecodeCounters())
    assert dumped and all(ev.type == EventType.NEW for ev in dumped)


def parse_oracle(line: str) -> dict[str, list[str]]:
    """conntrack's text: key -> values in order (src/dst twice, id up to three times...)."""
    out: dict[str, list[str]] = {}
    for key, value in re.findall(r"(\w[\w-]*)=(\S+?)\]?(?=\s|$)", line):
        out.setdefault(key, []).append(value)
    for key, value in re.findall(r"\[(start|stop)=([^\]]+)\]", line):
        out[key] = [value]
    return out


def utc_seconds(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%a %b %d %H:%M:%S %Y"))


@pytest.mark.parametrize("name", [*EVENT_FIXTURES, "dump"])
def test_matches_conntrack_tool(name: str) -> None:
    """The conntrack program's view of the same entries (recorded at capture time)."""
    doc = load_json(name)
    events = decode_all(load_hex(name), 0, DecodeCounters())
    assert len(doc["conntrack"]) == len(events)
    for ev, line in zip(events, doc["conntrack"], strict=True):
        o = parse_oracle(line)
        assert [ipaddress.ip_address(a).packed for a in o["src"]] == [ev.orig_src, ev.reply_src]
        assert [ipaddress.ip_address(a).packed for a in o["dst"]] == [ev.orig_dst, ev.reply_dst]
        assert int(o["id"][-1]) == ev.ct_id
        if ev.proto in (1, 58):
            ports = [
                (int(i), int(t) << 8 | int(c))
                for i, t, c in zip(o["id"], o["type"], o["code"], strict=False)
            ]
            assert ports == [(ev.orig_sport, ev.orig_dport), (ev.reply_sport, ev.reply_dport)]
        else:
            assert [int(p) for p in o["sport"]] == [ev.orig_sport, ev.reply_sport]
            assert [int(p) for p in o["dport"]] == [ev.orig_dport, ev.reply_dport]
        if "packets" in o:
            assert [int(p) for p in o["packets"]] == [ev.orig_packets, ev.reply_packets]
            assert [int(b) for b in o["bytes"]] == [ev.orig_bytes, ev.reply_bytes]
        else:
            assert ev.orig_packets is ev.orig_bytes is ev.reply_packets is ev.reply_bytes is None
        if "start" in o:
            assert ev.start_ns is not None and ev.start_ns // 10**9 == utc_seconds(o["start"][0])
        if "stop" in o:
            assert ev.stop_ns is not None and ev.stop_ns // 10**9 == utc_seconds(o["stop"][0])
            assert [str(ev.delta_time)] == o["delta-time"]


def test_kernel_time_uses_cta_timestamp_event() -> None:
    (ev,) = decode_messages(load_hex("destroy_tcp4")[0], 5, DecodeCounters(), kernel_time=True)
    assert ev.stop_ns is not None and ev.start_ns is not None
    assert ev.start_ns < ev.time_ns and abs(ev.time_ns - ev.stop_ns) < 10**9


def test_error_fixture_names_errno() -> None:
    counters = DecodeCounters()
    assert decode_all(load_hex("error"), 0, counters) == []
    assert counters.errors == 1 and counters.last_errno > 0
    assert "offset 0: NLMSG_ERROR errno" in counters.last_error


def test_dump_request_layout() -> None:
    raw = dump_request(42, 10)
    length, mtype, flags, seq, pid = nl.NLMSGHDR.unpack_from(raw)
    assert (length, len(raw), seq, pid) == (20, 20, 42, 0)
    assert mtype == nl.NFNL_SUBSYS_CTNETLINK << 8 | nl.IPCTNL_MSG_CT_GET
    assert flags == nl.NLM_F_REQUEST | nl.NLM_F_DUMP
    assert nl.NFGENMSG.unpack_from(raw, 16) == (10, 0, 0)


# --- synthetic messages: round trips and what the kernel rarely sends --------------

PORT_PROTOS = sorted(nl.PORT_PROTOS)


@st.composite
def events(draw: st.DrawFn) -> ConntrackEvent:
    fam = draw(st.sampled_from([4, 6]))
    size = 4 if fam == 4 else 16
    proto = draw(st.sampled_from([*PORT_PROTOS, 1, 58, 2, 255]))
    port = st.integers(0, 0xFFFF) if proto in nl.PORT_PROTOS or proto in (1, 58) else st.just(0)
    addr = st.binary(min_size=size, max_size=size)
    opt64 = st.none() | st.integers(0, 2**64 - 1)
    start = draw(opt64)
    stop = draw(opt64) if start is not None else None
    delta = None
    if start is not None and stop is not None and stop >= start:
        delta = stop // 10**9 - start // 10**9
    return ConntrackEvent(
        draw(st.sampled_from([1, 2, 3])),
        77,
        fam,
        proto,
        draw(addr),
        draw(addr),
        draw(port),
        draw(port),
        draw(addr),
        draw(addr),
        draw(port),
        draw(port),
        draw(opt64),
        draw(opt64),
        draw(opt64),
        draw(opt64),
        draw(st.none() | st.integers(0, 2**32 - 1)),
        start,
        stop,
        delta,
        draw(st.integers(0, 2**32 - 1)),
        draw(st.integers(0, 0xFFFF)),
        draw(st.integers(0, 2**32 - 1)),
    )


@given(events())
def test_round_trip(ev: ConntrackEvent) -> None:
    counters = DecodeCounters()
    assert decode_messages(encode_event(ev), 77, counters) == [ev]
    assert counters.events == counters.messages == 1
    assert counters.unknown_attrs == counters.bad_attrs == 0


@given(st.lists(events(), min_size=1, max_size=5))
def test_dump_stream_of_many(evs: list[ConntrackEvent]) -> None:
    done = nl.NLMSGHDR.pack(20, nl.NLMSG_DONE, nl.NLM_F_MULTI, 1, 0) + b"\0" * 4
    buf = b"".join(encode_event(e, seq=1, dump=True) for e in evs) + done
    counters = DecodeCounters()
    out = decode_messages(memoryview(buf), 77, counters)
    assert out == [e._replace(type=EventType.NEW) for e in evs]
    assert counters.done == 1
    check_accounting(counters)


def attr(typ: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), typ) + payload
    return raw + b"\0" * (-len(raw) % 4)


def message(attrs: bytes, mtype: int = 0, flags: int = 0, family: int = 2) -> bytes:
    body = nl.NFGENMSG.pack(family, 0, 0) + attrs
    return nl.NLMSGHDR.pack(16 + len(body), 1 << 8 | mtype, flags, 0, 0) + body


def tuple_attr(
    typ: int, l4: bytes, src: bytes = b"\x0a\0\0\1", dst: bytes = b"\x0a\0\0\2"
) -> bytes:
    n = 1 if len(src) == 4 else 3
    ips = attr(nl.CTA_TUPLE_IP | nl.NLA_F_NESTED, attr(n, src) + attr(n + 1, dst))
    return attr(typ | nl.NLA_F_NESTED, ips + attr(nl.CTA_TUPLE_PROTO | nl.NLA_F_NESTED, l4))


def test_gre_keys_and_old_32bit_counters() -> None:
    l4 = attr(1, b"\x2f") + attr(2, b"\x12\x34") + attr(3, b"\xab\xcd")
    counters32 = attr(3, struct.pack("!I", 7)) + attr(4, struct.pack("!I", 900))
    raw = message(
        tuple_attr(1, l4)
        + tuple_attr(2, l4)
        + attr(nl.CTA_COUNTERS_ORIG | nl.NLA_F_NESTED, counters32)
        + attr(nl.CTA_ZONE, b"\0\x05")
        + attr(nl.CTA_MARK, b"\0\0\1\0"),
        flags=nl.NLM_F_CREATE | nl.NLM_F_EXCL,
    )
    counters = DecodeCounters()
    (ev,) = decode_messages(raw, 3, counters)
    assert (ev.proto, ev.orig_sport, ev.orig_dport) == (47, 0x1234, 0xABCD)
    assert (ev.orig_packets, ev.orig_bytes, ev.reply_packets, ev.reply_bytes) == (
        7,
        900,
        None,
        None,
    )
    assert (ev.zone, ev.mark, ev.type, ev.status, ev.ct_id) == (5, 256, EventType.NEW, 0, None)
    assert counters.unknown_attrs == 0


def test_bad_and_unknown_attributes_are_counted_not_fatal() -> None:
    l4 = attr(1, b"\x11") + attr(2, b"\0\x35") + attr(3, b"\0\x35")
    raw = message(
        tuple_attr(1, l4) + tuple_attr(2, l4) + attr(nl.CTA_MARK, b"\1\2") + attr(200, b"xxxx"),
        mtype=nl.IPCTNL_MSG_CT_DELETE,
    )
    counters = DecodeCounters()
    (ev,) = decode_messages(raw, 3, counters)
    assert (ev.type, ev.mark, ev.orig_dport) == (EventType.DESTROY, 0, 53)
    assert counters.bad_attrs == 1 and counters.unknown_attrs == 1
    assert re.match(r"offset \d+: CTA_MARK length 2 != 4", counters.last_error)


def test_missing_reply_tuple_is_malformed() -> None:
    counters = DecodeCounters()
    raw = message(tuple_attr(1, attr(1, b"\x11")))
    assert decode_messages(raw + raw, 0, counters) == []
    assert counters.malformed == 2 and counters.messages == 2
    assert "CTA_TUPLE_REPLY" in counters.last_error


def test_family_mismatch_is_malformed() -> None:
    v6 = b"\xfd" + b"\0" * 15
    raw = message(tuple_attr(1, attr(1, b"\x11")) + tuple_attr(2, attr(1, b"\x11"), v6, v6))
    counters = DecodeCounters()
    assert decode_messages(raw, 0, counters) == [] and counters.malformed == 1


def test_other_subsystems_and_control_messages() -> None:
    noop = nl.NLMSGHDR.pack(16, nl.NLMSG_NOOP, 0, 0, 0)
    exp = nl.NLMSGHDR.pack(20, 2 << 8, 0, 0, 0) + b"\2\0\0\0"
    ack = nl.NLMSGHDR.pack(36, nl.NLMSG_ERROR, 0, 0, 0) + b"\0" * 20
    overrun = nl.NLMSGHDR.pack(16, nl.NLMSG_OVERRUN, 0, 0, 0)
    counters = DecodeCounters()
    assert decode_messages(noop + exp + ack + overrun, 0, counters) == []
    assert (counters.unknown_msgs, counters.acks, counters.overruns) == (2, 1, 1)
    check_accounting(counters)


# --- fuzzing: truncation and mutation of real kernel messages, random bytes ---------

REAL = [g for n in NAMES for g in load_hex(n)]


def decode_checked(buf: bytes) -> tuple[list[ConntrackEvent], DecodeCounters]:
    counters = DecodeCounters()
    out = decode_messages(buf, 1, counters)
    assert counters.events == len(out) and counters.buffers == 1
    check_accounting(counters)
    for ev in out:
        check_event(ev)
    return out, counters


def boundaries(gram: bytes) -> set[int]:
    """Offsets where a netlink message starts or the datagram ends."""
    out, off = {0}, 0
    while off < len(gram):
        off += (nl.NLMSGHDR.unpack_from(gram, off)[0] + 3) & ~3
        out.add(off)
    return out


def test_every_truncation_of_real_messages() -> None:
    for gram in REAL:
        full, _ = decode_checked(gram)
        cuts = boundaries(gram)
        for cut in range(len(gram)):
            out, counters = decode_checked(gram[:cut])
            assert out == full[: len(out)]  # what was decoded is what the whole gives
            assert (counters.truncated == 1) == (cut not in cuts), (cut, counters)


def test_every_single_byte_mutation_of_real_messages() -> None:
    for gram in REAL:
        for pos in range(len(gram)):
            for value in {0, 0xFF, (gram[pos] + 1) & 0xFF, gram[pos] ^ 0x80}:
                decode_checked(gram[:pos] + bytes([value]) + gram[pos + 1 :])


@settings(max_examples=400)
@given(
    st.sampled_from(REAL),
    st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=8),
    st.integers(0, 4096),
)
def test_mutated_and_cut_real_messages(gram: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    buf = bytearray(gram)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    decode_checked(bytes(buf[:cut]))


@settings(max_examples=400)
@given(st.binary(max_size=600))
def test_random_bytes(buf: bytes) -> None:
    decode_checked(buf)


@given(st.binary(max_size=300))
def test_random_attributes_after_a_valid_header(attrs: bytes) -> None:
    for mtype in (nl.IPCTNL_MSG_CT_NEW, nl.IPCTNL_MSG_CT_DELETE):
        decode_checked(message(attrs, mtype=mtype))


# --- the fixed-layout fast paths must agree with the general attribute walk ---------


def decode_both(buf: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    fast_counters, slow_counters = DecodeCounters(), DecodeCounters()
    fast = decode_messages(buf, 1, fast_counters)
    with monkeypatch.context() as m:
        m.setattr(nl, "_FAST_TUPLES", {})
        m.setattr(nl, "_FAST_PAIR_WORDS", (-1, -1))
        slow = decode_messages(buf, 1, slow_counters)
    assert fast == slow
    assert fast_counters == slow_counters


def test_fast_paths_agree_on_real_and_mutated_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    for gram in REAL:
        decode_both(gram, monkeypatch)
        for pos in range(16, len(gram)):
            decode_both(gram[:pos] + bytes([gram[pos] ^ 0x04]) + gram[pos + 1 :], monkeypatch)


@given(events())
def test_fast_paths_agree_on_synthetic_events(ev: ConntrackEvent) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        decode_both(encode_event(ev), monkeypatch)


# --- compiled layouts (netlink_layouts) must agree with the general walk, byte for byte ---


def decode_with_layouts(buf: bytes, layouts: Layouts, kernel_time: bool = True) -> None:
    slow_counters, fast_counters = DecodeCounters(), DecodeCounters()
    slow = decode_messages(buf, 1, slow_counters, kernel_time=kernel_time)
    fast = decode_messages(buf, 1, fast_counters, kernel_time=kernel_time, layouts=layouts)
    assert fast == slow
    assert fast_counters == slow_counters


def test_layouts_are_learned_from_real_messages_and_reproduce_them() -> None:
    layouts = Layouts()
    for gram in REAL:
        decode_with_layouts(gram, layouts)  # learns
    hits = layouts.hits
    for gram in REAL:
        for kernel_time in (False, True):
            decode_with_layouts(gram, layouts, kernel_time)
    # every event of every capture (NEW, UPDATE, DESTROY, dumps; v4 and v6; tcp, udp,
    # icmp) was read by a compiled layout the second time
    events = sum(len(decode_messages(g, 1, DecodeCounters())) for g in REAL)
    assert layouts.hits - hits == 2 * events > 0


def test_layouts_never_apply_to_a_mutated_message() -> None:
    """A layout applies only when every header is what it expects: any other byte change
    gives the general path's event (a changed value), or its verdict (a changed header)."""
    layouts = Layouts()
    for gram in REAL:
        decode_with_layouts(gram, layouts)
    for gram in REAL:
        for pos in range(len(gram)):
            for value in {0, 0xFF, gram[pos] ^ 0x80}:
                decode_with_layouts(gram[:pos] + bytes([value]) + gram[pos + 1 :], layouts)


@given(st.lists(events(), min_size=1, max_size=4))
def test_layouts_agree_on_synthetic_events(evs: list[ConntrackEvent]) -> None:
    layouts = Layouts()
    for ev in evs + evs:  # the second round meets the layouts the first one taught
        decode_with_layouts(encode_event(ev), layouts)
