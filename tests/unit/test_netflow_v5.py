"""NetFlow v5 pack/unpack, the uptime time basis, the stateful encoder, golden bytes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfflowd.formats import netflow_v5 as v5
from nfflowd.formats.uptime import UPTIME_MAX, clamp_span, host_boot_ms, uptime_base
from nfflowd.messages import FLOW_RECORD, FlowRecord, pack_flows
from tests.addresses import a
from tests.flow_records import BOOT, FLOWS, NOW, NOW_NS, load_records
from tests.flow_records import plain_record as rec

GOLDEN = Path(__file__).parent.parent / "data" / "v5"
DAY = 86_400_000


def nfdump_times(h: v5.V5Header, r: v5.V5Record) -> tuple[int, int]:
    """Absolute first/last as nfdump 1.7 computes them (netflow_v5_v7.c, Process_v5)."""
    boot = h.unix_secs * 1000 + h.unix_nsecs // 1_000_000 - h.sys_uptime
    start = boot - 2**32 + r.first if r.first > r.last else boot + r.first
    end = boot + r.last
    if r.last > h.sys_uptime and r.last - h.sys_uptime > 100_000:
        start -= 2**32
        end -= 2**32
    return start, end


def decoded(datagrams: list[bytes]) -> list[tuple[v5.V5Header, v5.V5Record]]:
    out: list[tuple[v5.V5Header, v5.V5Record]] = []
    for d in datagrams:
        h, rs = v5.unpack_datagram(d)
        out.extend((h, r) for r in rs)
    return out


# -- layout -------------------------------------------------------------------------


def test_sizes_and_constants() -> None:
    assert (v5.HEADER_SIZE, v5.RECORD_SIZE, v5.MAX_RECORDS, v5.VERSION) == (24, 48, 30, 5)
    assert v5.HEADER_SIZE + v5.MAX_RECORDS * v5.RECORD_SIZE == 1464  # fits a 1500 MTU with IP/UDP


def test_pack_layout_by_hand() -> None:
    r = v5.V5Record(
        a("10.0.195.106"),
        a("74.125.6.225"),
        a("0.0.0.0"),
        3,
        4,
        720,
        38052,
        136315,
        279737,
        62380,
        80,
        0x1B,
        6,
        0x10,
        64512,
        15169,
        24,
        16,
    )
    d = v5.pack_datagram(
        [r],
        sys_uptime=279737,
        unix_secs=1248952480,
        unix_nsecs=737235000,
        flow_sequence=7,
        engine_type=1,
        engine_id=2,
    )
    expected = (
        "0005"
        "0001"
        "000444b9"
        "4a7180a0"
        "2bf15038"
        "00000007"
        "01"
        "02"
        "0000"  # header
        "0a00c36a"
        "4a7d06e1"
        "00000000"
        "0003"
        "0004"
        "000002d0"
        "000094a4"  # addrs, if, counters
        "0002147b"
        "000444b9"
        "f3ac"
        "0050"
        "00"
        "1b"
        "06"
        "10"  # first, last, ports, pad, flags...
        "fc00"
        "3b41"
        "18"
        "10"
        "0000"  # AS, masks, pad
    )
    assert d.hex() == expected
    h, rs = v5.unpack_datagram(d)
    assert h == v5.V5Header(5, 1, 279737, 1248952480, 737235000, 7, 1, 2, 0)
    assert rs == [r]


V5_RECORDS = st.builds(
    v5.V5Record,
    *(st.binary(min_size=4, max_size=4) for _ in range(3)),
    *(st.integers(0, 0xFFFF) for _ in range(2)),
    *(st.integers(0, UPTIME_MAX) for _ in range(4)),
    *(st.integers(0, 0xFFFF) for _ in range(2)),
    *(st.integers(0, 0xFF) for _ in range(3)),
    *(st.integers(0, 0xFFFF) for _ in range(2)),
    *(st.integers(0, 0xFF) for _ in range(2)),
)


@given(st.lists(V5_RECORDS, max_size=30), st.integers(0, UPTIME_MAX), st.integers(0, 0xFF))
def test_pack_unpack_roundtrip(records: list[v5.V5Record], up: int, eng: int) -> None:
    d = v5.pack_datagram(
        records,
        sys_uptime=up,
        unix_secs=up ^ 0x55,
        unix_nsecs=999_999_999,
        flow_sequence=up,
        engine_type=eng,
        engine_id=255 - eng,
    )
    assert len(d) == 24 + 48 * len(records)
    h, rs = v5.unpack_datagram(d)
    assert h == v5.V5Header(5, len(records), up, up ^ 0x55, 999_999_999, up, eng, 255 - eng, 0)
    assert rs == records


def test_pack_rejects() -> None:
    r = v5.to_v5_records(rec(NOW - 10, NOW), NOW - 100)[0]
    kw: dict[str, Any] = dict(
        sys_uptime=1, unix_secs=1, unix_nsecs=0, flow_sequence=0, engine_type=0, engine_id=0
    )
    with pytest.raises(ValueError, match="at most 30"):
        v5.pack_datagram([r] * 31, **kw)
    with pytest.raises(ValueError, match="record 1"):
        v5.pack_datagram([r, r._replace(srcport=70000)], **kw)
    with pytest.raises(ValueError, match="record 0: addresses"):
        v5.pack_datagram([r._replace(srcaddr=b"\1\2\3")], **kw)
    with pytest.raises(ValueError, match="header"):
        v5.pack_datagram([r], **{**kw, "engine_id": 256})


def test_unpack_errors_name_the_offset() -> None:
    r = v5.to_v5_records(rec(NOW - 10, NOW), NOW - 100)[0]
    d = v5.pack_datagram(
        [r, r],
        sys_uptime=100,
        unix_secs=1,
        unix_nsecs=0,
        flow_sequence=0,
        engine_type=0,
        engine_id=0,
    )
    with pytest.raises(ValueError, match="offset 0: truncated header, 10 of 24"):
        v5.unpack_datagram(d[:10])
    with pytest.raises(ValueError, match="offset 0: version 9"):
        v5.unpack_datagram(b"\0\x09" + d[2:])
    with pytest.raises(ValueError, match="offset 2: count 31"):
        v5.unpack_datagram(d[:2] + b"\0\x1f" + d[4:])
    with pytest.raises(ValueError, match="offset 72: truncated record 1"):
        v5.unpack_datagram(d[:-1])
    with pytest.raises(ValueError, match="offset 120: 3 bytes after"):
        v5.unpack_datagram(d + b"xyz")
    assert v5.unpack_datagram(d)[1] == [r, r]


# -- time basis ---------------------------------------------------------------------


def test_uptime_base_prefers_host_boot() -> None:
    assert uptime_base(BOOT + 5, NOW, BOOT) == BOOT
    assert uptime_base(BOOT, BOOT + UPTIME_MAX, BOOT) == BOOT


def test_uptime_base_falls_back_for_flows_before_boot() -> None:
    assert uptime_base(BOOT - 1, NOW, BOOT) == BOOT - 1
    assert uptime_base(NOW - 7 * DAY, NOW, BOOT) == NOW - 7 * DAY


def test_uptime_base_wraps_with_long_host_uptime() -> None:
    boot = NOW - 60 * DAY  # up 60 days: sysUptime = uptime mod 2**32, as on a router
    assert uptime_base(NOW - 1000, NOW, boot) == boot + 2**32
    assert (NOW - uptime_base(NOW - 1000, NOW, boot)) == (NOW - boot) % 2**32
    # a connection older than the last wrap falls back to its own start
    assert uptime_base(boot + 2**32 - 5, NOW, boot) == boot + 2**32 - 5
    # clock stepped behind the boot time: not usable
    assert uptime_base(NOW - 10, NOW, NOW + 10) == NOW - 10


@given(st.integers(-200 * DAY, 200 * DAY), st.integers(0, UPTIME_MAX), st.integers(0, 200 * DAY))
def test_uptime_base_invariant(boot_off: int, span: int, age: int) -> None:
    now = NOW
    first = now - min(span, age)
    base = uptime_base(first, now, now + boot_off)
    assert base <= first
    assert 0 <= now - base <= UPTIME_MAX


def test_clamp_span() -> None:
    assert clamp_span(5, 10) == 5
    assert clamp_span(11, 10) == 10
    assert clamp_span(0, UPTIME_MAX + 7) == 7


def test_host_boot_ms_is_btime_and_stable_across_processes() -> None:
    with open("/proc/stat") as f:
        btime = next(int(ln.split()[1]) for ln in f if ln.startswith("btime "))
    assert host_boot_ms() == btime * 1000
    code = "from nfflowd.formats.uptime import host_boot_ms; print(host_boot_ms())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(other.stdout) == host_boot_ms()


# -- FlowRecord -> V5Record -------------------------------------------------------------


def test_to_v5_records_fields() -> None:
    (r,) = v5.to_v5_records(rec(BOOT + 136315, BOOT + 279737, packets=720, octets=38052), BOOT)
    assert r == v5.V5Record(
        a("10.0.0.1"),
        a("203.0.113.5"),
        b"\0\0\0\0",
        0,
        0,
        720,
        38052,
        136315,
        279737,
        1234,
        80,
        0,
        6,
        0,
        0,
        0,
        0,
        0,
    )


def test_to_v5_records_icmp_has_no_srcport() -> None:
    (r,) = v5.to_v5_records(rec(NOW - 5, NOW, sport=4660, dport=0x0800, proto=1), NOW - 5)
    assert (r.srcport, r.dstport, r.prot) == (0, 0x0800, 1)


@given(st.integers(0, 2**40), st.integers(0, v5.MAX_SPLIT * (2**32 - 1)))
def test_split_counters_exact(packets: int, octets: int) -> None:
    recs = v5.to_v5_records(rec(NOW - 5, NOW, packets=packets, octets=octets), NOW - 5)
    assert sum(r.dpkts for r in recs) == packets
    assert sum(r.doctets for r in recs) == octets
    assert all(r.dpkts <= 2**32 - 1 and r.doctets <= 2**32 - 1 for r in recs)
    assert len({r._replace(dpkts=0, doctets=0) for r in recs}) == 1
    assert len(recs) == max(1, -(-max(packets, octets) // (2**32 - 1)))


def test_to_v5_records_rejects() -> None:
    with pytest.raises(ValueError, match="IPv4 only"):
        v5.to_v5_records(rec(NOW - 5, NOW, "fd00::1", "2001:db8::1"), NOW - 5)
    with pytest.raises(ValueError, match="first_ms/last_ms"):
        v5.to_v5_records(rec(NOW - 5, NOW), NOW - 4)  # starts before the base
    with pytest.raises(ValueError, match="first_ms/last_ms"):
        v5.to_v5_records(rec(NOW - 5, NOW), NOW - 2**32)  # too far from the base
    with pytest.raises(ValueError, match="first_ms/last_ms"):
        v5.to_v5_records(rec(NOW, NOW - 5), NOW - 10)  # ends before it starts
    with pytest.raises(ValueError, match="dport"):
        v5.to_v5_records(rec(NOW - 5, NOW, dport=65536), NOW - 5)
    with pytest.raises(ValueError, match="proto"):
        v5.to_v5_records(rec(NOW - 5, NOW, proto=256), NOW - 5)
    with pytest.raises(ValueError, match="negative"):
        v5.to_v5_records(rec(NOW - 5, NOW, packets=-1), NOW - 5)
    with pytest.raises(ValueError, match="would need 65537 records"):
        v5.to_v5_records(rec(NOW - 5, NOW, octets=v5.MAX_SPLIT * (2**32 - 1) + 1), NOW - 5)


# -- encoder ------------------------------------------------------------------------------


def test_encoder_splits_and_sequences() -> None:
    enc = v5.V5Encoder(boot_ms=BOOT, sequence=2**32 - 40, engine_type=3, engine_id=4)
    recs = [rec(NOW - 100 - i, NOW - i, sport=1000 + i) for i in range(65)]
    dgs = enc.encode(recs, NOW_NS)
    headers = [v5.unpack_datagram(d)[0] for d in dgs]
    assert [h.count for h in headers] == [30, 30, 5]
    assert [h.flow_sequence for h in headers] == [2**32 - 40, 2**32 - 10, 20]
    assert all((h.engine_type, h.engine_id, h.sampling_interval) == (3, 4, 0) for h in headers)
    assert all(h.sys_uptime == NOW - BOOT for h in headers)  # live flows: the host's uptime
    assert all((h.unix_secs, h.unix_nsecs) == divmod(NOW_NS, 10**9) for h in headers)
    assert enc.sequence == 25 and (enc.datagrams, enc.records) == (3, 65)
    assert [r.srcport for _, r in decoded(dgs)] == [1000 + i for i in range(65)]
    assert v5.unpack_datagram(enc.encode(recs[:1], NOW_NS)[0])[0].flow_sequence == 25


def test_encoder_counts_what_it_cannot_send() -> None:
    enc = v5.V5Encoder(boot_ms=BOOT)
    recs = [
        rec(NOW - 5, NOW, "fd00::1", "2001:db8::1"),
        rec(NOW - 5, NOW, sport=70000),  # out of range: dropped, not a crash
        rec(NOW - 5, NOW, packets=-3),
        rec(NOW - 5, NOW, octets=2**64 - 1),  # garbage counter: not 2**32 records
        rec(NOW, NOW - 5),  # ends before it starts: clamped to a zero-length flow
        rec(NOW - 2**32 - 9, NOW),  # longer than 49.7 days: start clamped
        rec(NOW - 5, NOW, sport=7),
    ]
    got = decoded(enc.encode(recs, NOW_NS))
    assert (enc.skipped_ipv6, enc.invalid, enc.clamped) == (1, 3, 2)
    assert [nfdump_times(h, r) for h, r in got] == [
        (NOW - 5, NOW - 5),
        (NOW - UPTIME_MAX, NOW),
        (NOW - 5, NOW),
    ]
    assert enc.records == 3 and enc.sequence == 3
    assert enc.encode([recs[0]], NOW_NS) == [] and enc.skipped_ipv6 == 2


def test_encoder_matches_pack_datagram() -> None:
    recs = [rec(NOW - 100 - i, NOW - i, sport=i, proto=(1, 6, 17)[i % 3]) for i in range(20)]
    recs.append(rec(NOW - 9, NOW, packets=2**33, octets=2**36))  # 17 records
    dgs = v5.V5Encoder(boot_ms=BOOT, engine_id=9).encode(recs, NOW_NS)
    pieces = [p for r in recs for p in v5.to_v5_records(r, BOOT)]
    secs, nsecs = divmod(NOW_NS, 10**9)
    header = dict(sys_uptime=NOW - BOOT, unix_secs=secs, unix_nsecs=nsecs, engine_type=0)
    assert dgs == [
        v5.pack_datagram(pieces[:30], flow_sequence=0, engine_id=9, **header),
        v5.pack_datagram(pieces[30:], flow_sequence=30, engine_id=9, **header),
    ]


TIMES = st.integers(-120 * DAY, 2 * DAY)


@settings(max_examples=300)
@given(
    st.lists(st.tuples(TIMES, st.integers(0, 100 * DAY)), min_size=1, max_size=70),
    st.integers(-100 * DAY, 60 * DAY),
    st.integers(0, 999_999),
)
def test_nfdump_decodes_exact_times(spans: list[tuple[int, int]], boot_off: int, ns: int) -> None:
    """Whatever the flows' age and the host's uptime, nfdump's arithmetic gets them back."""
    now_ns = NOW_NS + ns
    recs = [rec(NOW + end - dur, NOW + end, sport=i) for i, (end, dur) in enumerate(spans)]
    enc = v5.V5Encoder(boot_ms=NOW - boot_off)
    got = decoded(enc.encode(recs, now_ns))
    assert len(got) == len(recs)
    for (h, r), flow in zip(got, recs, strict=True):
        assert nfdump_times(h, r) == (clamp_span(flow.first_ms, flow.last_ms), flow.last_ms)
        assert 0 <= r.first <= r.last <= h.sys_uptime


# -- golden datagrams ---------------------------------------------------------------


def golden_cases() -> list[Path]:
    return sorted(GOLDEN.glob("*.json"))


def load_case(path: Path) -> tuple[dict[str, Any], list[FlowRecord]]:
    case = json.loads(path.read_text())
    return case, load_records(case["records"])


def case_encoder(case: dict[str, Any]) -> v5.V5Encoder:
    """An encoder in the state the golden case starts from."""
    keys = ("engine_type", "engine_id", "boot_ms", "sequence")
    return v5.V5Encoder(**{k: case[k] for k in keys})


def assert_golden(case: dict[str, Any], enc: v5.V5Encoder, dgs: list[bytes]) -> None:
    """The datagrams, counters and final sequence are the golden case's."""
    assert [d.hex() for d in dgs] == case["datagrams"]
    assert {k: getattr(enc, k) for k in case["counters"]} == case["counters"]
    assert enc.sequence == case["final_sequence"]


@pytest.mark.parametrize("path", golden_cases(), ids=lambda p: p.stem)
def test_encode_equals_golden(path: Path) -> None:
    case, recs = load_case(path)
    enc = case_encoder(case)
    assert_golden(case, enc, enc.encode(recs, case["now_ns"]))
    # and the golden bytes decode to the inputs (sums for split counters)
    want: dict[tuple[bytes, bytes, int, int], list[int]] = {}
    for f in recs:
        if f.family == 4:
            want[(f.src, f.dst, f.sport, f.dport)] = [f.first_ms, f.last_ms, f.packets, f.octets]
    have: dict[tuple[bytes, bytes, int, int], list[int]] = {}
    for h, r in decoded([bytes.fromhex(x) for x in case["datagrams"]]):
        sport = r.srcport
        key = next(k for k in want if k[:2] == (r.srcaddr, r.dstaddr) and k[3] == r.dstport)
        assert sport in (key[2], 0)
        t = have.setdefault(key, [*nfdump_times(h, r), 0, 0])
        assert t[:2] == list(nfdump_times(h, r))
        t[2] += r.dpkts
        t[3] += r.doctets
    assert have == want


def test_golden_seed_triplet_matches_the_perl_example() -> None:
    case, _ = load_case(GOLDEN / "seed_triplet.json")
    h, rs = v5.unpack_datagram(bytes.fromhex(case["datagrams"][0]))
    # "1248952480,737235000,279737,...,136315,279737,..." from nfflowd-perl.txt
    assert (h.unix_secs, h.unix_nsecs, h.sys_uptime) == (1248952480, 737235000, 279737)
    assert [(r.first, r.last, r.dpkts, r.doctets) for r in rs] == [
        (136315, 279737, 720, 38052),
        (136315, 279737, 720, 38052),
        (136315, 279737, 1432, 2027040),
    ]


# -- the block path (schema 5): encode_block == encode ----------------------------------------

COUNTERS = ("skipped_ipv6", "invalid", "clamped", "split", "datagrams", "records", "sequence")


def both_paths(
    recs: list[FlowRecord], now_ns: int = NOW_NS, **kw: Any
) -> tuple[list[bytes], dict[str, int]]:
    """The datagrams and counters of encode(recs) and of encode_block(pack_flows(recs)),
    checked equal."""
    objects, block = v5.V5Encoder(**kw), v5.V5Encoder(**kw)
    dgs = objects.encode(recs, now_ns)
    assert block.encode_block(pack_flows(recs), now_ns) == dgs
    counters = {k: getattr(objects, k) for k in COUNTERS}
    assert {k: getattr(block, k) for k in COUNTERS} == counters
    return dgs, counters


@pytest.mark.parametrize("path", golden_cases(), ids=lambda p: p.stem)
def test_encode_block_equals_golden(path: Path) -> None:
    case, recs = load_case(path)
    enc = case_encoder(case)
    assert_golden(case, enc, enc.encode_block(pack_flows(recs), case["now_ns"]))


#: Flows a live exporter sees: IPv4, recent, counters within 32 bits.
LIVE = st.builds(
    rec,
    st.integers(NOW - 10 * DAY, NOW - 1000),
    st.integers(NOW - 999, NOW + 5000),
    sport=st.integers(0, 0xFFFF),
    dport=st.integers(0, 0xFFFF),
    packets=st.integers(0, 2**32 - 1),
    octets=st.integers(0, 2**32 - 1),
    proto=st.sampled_from([1, 6, 17, 58]),
)


@st.composite
def live_and_any(draw: st.DrawFn) -> list[FlowRecord]:
    """Live flows with a few of any kind (FLOWS: IPv4 and IPv6, every time and counter to
    64 bits) put among them: runs of 30 take the column path, the record-by-record one,
    or the one and then the other."""
    recs = draw(st.lists(LIVE, max_size=100))
    for at, r in draw(st.lists(st.tuples(st.integers(0, 100), FLOWS), max_size=3)):
        recs.insert(at, r)
    return recs


@settings(max_examples=300)
@given(live_and_any(), st.integers(-100 * DAY, 60 * DAY), st.integers(0, 2**32 - 1))
def test_encode_block_equals_encode(recs: list[FlowRecord], boot_off: int, seq: int) -> None:
    both_paths(recs, boot_ms=NOW - boot_off, sequence=seq, engine_id=7)


@settings(max_examples=300)
@given(
    st.lists(st.tuples(TIMES, st.integers(0, 100 * DAY)), min_size=1, max_size=70),
    st.integers(-100 * DAY, 60 * DAY),
)
def test_encode_block_equals_encode_any_age(spans: list[tuple[int, int]], boot_off: int) -> None:
    """The inputs of test_nfdump_decodes_exact_times, through both paths."""
    recs = [rec(NOW + end - dur, NOW + end, sport=i) for i, (end, dur) in enumerate(spans)]
    both_paths(recs, boot_ms=NOW - boot_off)


def test_block_counts_what_it_cannot_send() -> None:
    """What a block can hold and v5 cannot carry is counted the same by both paths."""
    recs = [
        rec(NOW - 5, NOW, "fd00::1", "2001:db8::1"),  # IPv6: skipped
        rec(NOW - 5, NOW)._replace(family=5),  # neither 4 nor 6: invalid
        rec(NOW - 5, NOW, octets=2**64 - 1),  # garbage counter: invalid, not 2**32 records
        rec(NOW - 5, 2**64 - 1),  # ends after 2106: invalid (unix_secs has 32 bits)
        rec(NOW, NOW - 5),  # ends before it starts: clamped
        rec(NOW - 5, NOW, packets=2**33),  # split in 3
        *(rec(NOW - 5, NOW, sport=i) for i in range(40)),
    ]
    dgs, counters = both_paths(recs, boot_ms=BOOT)
    assert counters == {
        "skipped_ipv6": 1,
        "invalid": 3,
        "clamped": 1,
        "split": 2,
        "datagrams": 2,
        "records": 44,
        "sequence": 44,
    }
    assert [v5.unpack_datagram(d)[0].count for d in dgs] == [30, 14]


def test_flow_ending_after_2106_is_invalid_not_an_exception() -> None:
    enc = v5.V5Encoder(boot_ms=BOOT)
    recs = [rec(NOW - 5, NOW), rec(NOW - 5, v5.LAST_MS_MAX + 1), rec(NOW - 5, v5.LAST_MS_MAX)]
    got = decoded(enc.encode(recs, NOW_NS))
    assert enc.invalid == 1
    assert [nfdump_times(h, r)[1] for h, r in got] == [NOW, v5.LAST_MS_MAX]


def test_live_runs_take_the_column_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs of IPv4 flows as a live exporter sees them (ICMP too) never go record by record."""

    def by_record(*args: Any) -> None:
        raise AssertionError("record by record")

    recs = [rec(NOW - 100 - i, NOW - i, sport=i, proto=(1, 6, 17)[i % 3]) for i in range(65)]
    want = v5.V5Encoder(boot_ms=BOOT).encode(recs, NOW_NS)
    monkeypatch.setattr(v5.V5Encoder, "_encode_rows", by_record)
    enc = v5.V5Encoder(boot_ms=BOOT)
    assert enc.encode_block(pack_flows(recs), NOW_NS) == want
    assert [r.srcport for _, r in decoded(want)] == [0 if i % 3 == 0 else i for i in range(65)]
    assert (enc.datagrams, enc.records, enc.sequence) == (3, 65, 65)


def test_block_of_partial_record_is_refused() -> None:
    block = pack_flows([rec(NOW - 5, NOW)])
    with pytest.raises(ValueError, match="not a multiple of 118"):
        v5.V5Encoder(boot_ms=BOOT).encode_block(block[:-1], NOW_NS)
    assert v5.V5Encoder(boot_ms=BOOT).encode_block(b"", NOW_NS) == []
    assert FLOW_RECORD.size == 118
