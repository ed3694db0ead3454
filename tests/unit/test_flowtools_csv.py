"""The flow-tools CSV mirror line: the seed's example, semantics, and the parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfflowd.formats import flowtools_csv
from nfflowd.formats.flowtools_csv import FIELDS, format_block, format_line, parse_line
from nfflowd.messages import FlowRecord, pack_flows
from tests.flow_records import FLOWS, NOW, snat_record
from tests.flow_records import plain_record as rec

DAY = 86_400_000

# nfflowd-perl.txt, "Flow Output": one HTTP connection through source NAT.
SEED_LINES = [
    "1248952480,737235000,279737,172.16.1.1,720,38052,136315,279737,10.0.195.106,74.125.6.225,0.0.0.0,0,0,62380,80,6,0,0",
    "1248952480,737235000,279737,172.16.1.1,720,38052,136315,279737,192.76.7.154,74.125.6.225,0.0.0.0,0,0,62380,80,6,0,0",
    "1248952480,737235000,279737,172.16.1.1,1432,2027040,136315,279737,74.125.6.225,192.76.7.154,0.0.0.0,0,0,80,62380,6,0,0",
]  # fmt: skip
SEED_END_MS = 1248952480737  # unix_secs.unix_nsecs at ms resolution
SEED_BOOT_MS = SEED_END_MS - 279737  # sysuptime 279737 at the flow's end
SEED_START_MS = SEED_BOOT_MS + 136315


SEED_RECORDS = [
    rec(SEED_START_MS, SEED_END_MS, "10.0.195.106", "74.125.6.225", 62380, 80, 720, 38052),
    rec(SEED_START_MS, SEED_END_MS, "192.76.7.154", "74.125.6.225", 62380, 80, 720, 38052),
    rec(SEED_START_MS, SEED_END_MS, "74.125.6.225", "192.76.7.154", 80, 62380, 1432, 2027040),
]


def test_fields() -> None:
    assert len(FIELDS) == 18
    assert FIELDS[:4] == ("unix_secs", "unix_nsecs", "sysuptime", "exaddr")


@pytest.mark.parametrize("i", range(3))
def test_seed_example_lines(i: int) -> None:
    """The seed's lines, except unix_nsecs: 737235000 has µs precision the
    Perl tool took from conntrack's timestamp; a FlowRecord holds ms, so the
    closest we can write is 737000000.  Every other field is reproduced."""
    line = format_line(SEED_RECORDS[i], exaddr="172.16.1.1", boot_ms=SEED_BOOT_MS)
    assert line == SEED_LINES[i].replace(",737235000,", ",737000000,", 1)
    ours, seed = parse_line(line), parse_line(SEED_LINES[i])
    assert seed["unix_nsecs"] == 737_235_000 and ours["unix_nsecs"] == 737_000_000
    assert {k: v for k, v in ours.items() if k != "unix_nsecs"} == {
        k: v for k, v in seed.items() if k != "unix_nsecs"
    }


def test_ipv6_line() -> None:
    t = 1_700_000_000_000
    r = rec(t, t + 250, "2001:db8:0:0:0:0:0:1", "fd00:0:0:1::5", 443, 50000, 3, 300, proto=17)
    line = format_line(r, exaddr="2001:db8::ff", boot_ms=1_699_000_000_000)
    assert line == (
        "1700000000,250000000,1000000250,2001:db8::ff,3,300,1000000000,1000000250,"
        "2001:db8::1,fd00:0:0:1::5,::,0,0,443,50000,17,0,0"
    )


def test_icmp_line_follows_the_v5_convention() -> None:
    r = rec(2_000, 3_000, "10.0.0.1", "203.0.113.1", 4660, 8 * 256, 1, 84, proto=1)
    f = parse_line(format_line(r, exaddr="192.0.2.1", boot_ms=0))
    assert (f["srcport"], f["dstport"], f["prot"]) == (0, 2048, 1)


def test_flow_started_before_boot_uses_its_own_start_as_base() -> None:
    boot = 1_800_000_000_000
    r = rec(boot - 7 * DAY, boot + 5_000, "10.0.0.1", "203.0.113.1", 1, 2, 1, 1)
    f = parse_line(format_line(r, exaddr="192.0.2.1", boot_ms=boot))
    assert (f["first"], f["last"], f["sysuptime"]) == (0, 7 * DAY + 5_000, 7 * DAY + 5_000)


@given(
    st.integers(1_000_000_000_000, 3_000_000_000_000),
    st.integers(0, 200 * DAY),
    st.integers(-100 * DAY, 100 * DAY),
    st.integers(0, 2**64 - 1),
)
def test_times_decode_exactly(last: int, dur: int, boot_off: int, octets: int) -> None:
    r = rec(last - dur, last, "10.9.8.7", "203.0.113.77", 1, 2, 3, octets)
    f = parse_line(format_line(r, exaddr="192.0.2.1", boot_ms=last + boot_off))
    now = int(f["unix_secs"]) * 1000 + int(f["unix_nsecs"]) // 1_000_000
    assert now == last
    assert now - int(f["sysuptime"]) + int(f["last"]) == last
    assert now - int(f["sysuptime"]) + int(f["first"]) == max(last - dur, last - (2**32 - 1))
    assert f["doctets"] == octets


def test_format_rejects_bad_records() -> None:
    good = SEED_RECORDS[0]
    with pytest.raises(ValueError, match="family"):
        format_line(good._replace(family=5), exaddr="x", boot_ms=0)
    with pytest.raises(ValueError, match="src/dst"):
        format_line(good._replace(family=6), exaddr="x", boot_ms=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ((2, "-5"), "field sysuptime: '-5' is not an unsigned integer"),
        ((4, "1e3"), "field dpkts"),
        ((8, "10.0.195.256"), "field srcaddr: '10.0.195.256' is not an IP address"),
        ((3, "gateway"), "field exaddr"),
        ((10, "::"), "field nexthop: srcaddr, dstaddr and nexthop mix"),
        ((13, "65536"), "field srcport: 65536 exceeds 65535"),
        ((1, "1000000000"), "field unix_nsecs"),
        ((15, "٦"), "field prot"),  # a non-ASCII digit
    ],
)
def test_parse_errors_name_the_field(change: tuple[int, str], message: str) -> None:
    parts = SEED_LINES[0].split(",")
    parts[change[0]] = change[1]
    with pytest.raises(ValueError, match=message):
        parse_line(",".join(parts))


def test_parse_wrong_field_count() -> None:
    with pytest.raises(ValueError, match="expected 18 fields, got 17"):
        parse_line(SEED_LINES[0].rsplit(",", 1)[0])
    assert parse_line(SEED_LINES[0] + "\n")["tcp_flags"] == 0


# -- the block path (schema 5): format_block == format_line -----------------------------------


def block_lines(recs: list[FlowRecord], *, exaddr: str, boot_ms: int) -> list[str]:
    """format_block of the records' block, checked equal to format_line of each record."""
    lines = format_block(pack_flows(recs), exaddr=exaddr, boot_ms=boot_ms)
    assert lines == [format_line(r, exaddr=exaddr, boot_ms=boot_ms) for r in recs]
    return lines


def test_block_gives_the_seed_lines() -> None:
    lines = block_lines(SEED_RECORDS, exaddr="172.16.1.1", boot_ms=SEED_BOOT_MS)
    assert lines == [x.replace(",737235000,", ",737000000,", 1) for x in SEED_LINES]


#: Recent flows, IPv4 and IPv6, ICMP among them.
RECENT = st.builds(
    snat_record,
    first=st.integers(NOW - 40 * DAY, NOW),
    last=st.integers(NOW - 1000, NOW + 1000),
    src=st.sampled_from(["10.0.0.1", "192.0.2.77", "fd00::1", "2001:db8::"]),
    sport=st.integers(0, 0xFFFF),
    packets=st.integers(0, 2**64 - 1),
    proto=st.sampled_from([1, 6, 17, 58]),
)


@st.composite
def recent_and_any(draw: st.DrawFn) -> list[FlowRecord]:
    """Recent flows with a few of any kind (FLOWS: every time and counter to 64 bits) put
    among them."""
    recs = draw(st.lists(RECENT, max_size=70))
    for at, r in draw(st.lists(st.tuples(st.integers(0, 70), FLOWS), max_size=2)):
        recs.insert(at, r)
    return recs


@settings(max_examples=300)
@given(
    recent_and_any(),
    st.sampled_from([-DAY, 0, 1000, DAY, 50 * DAY, 120 * DAY]),
    st.integers(-DAY, DAY),
    st.sampled_from(["192.0.2.1", "2001:db8::ff", "100%"]),
)
def test_format_block_equals_format_line(
    recs: list[FlowRecord], boot_age: int, jitter: int, exaddr: str
) -> None:
    """Whatever the flows and the host's boot (before them, after them: a replay, or more
    than 49.7 days ago), the block gives the lines format_line gives."""
    block_lines(recs, exaddr=exaddr, boot_ms=NOW - boot_age + jitter)


@pytest.mark.parametrize(
    "boot", [NOW - DAY, NOW + DAY, NOW - 60 * DAY], ids=["live", "replay", "up-60-days"]
)
def test_block_follows_every_base_rule(boot: int) -> None:
    """Mixed families, ICMP, a host booted before the flows, after them, or long enough ago
    that some flows started before its last 2**32 ms period."""
    recs = [
        snat_record(NOW - 20 * DAY + i, NOW - i, src=("10.0.0.1", "fd00::1")[i % 2], proto=p)
        for i, p in enumerate([1, 6, 17, 58] * 16)
    ]
    lines = block_lines(recs, exaddr="192.0.2.1", boot_ms=boot)
    assert {parse_line(x)["srcport"] for x in lines[0::2]} == {0, 1234}  # ICMP: srcport 0


def test_format_block_rejects_a_bad_family_and_a_partial_record() -> None:
    good = SEED_RECORDS[0]
    block = pack_flows([good, good._replace(family=5), good])
    with pytest.raises(ValueError, match="family: 5 is neither 4 nor 6"):
        format_block(block, exaddr="x", boot_ms=0)
    with pytest.raises(ValueError, match="not a multiple of 118"):
        format_block(block[:-1], exaddr="x", boot_ms=0)
    assert format_block(b"", exaddr="x", boot_ms=0) == []


def test_address_texts_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flowtools_csv, "TEXTS_MAX", 10)
    for n in range(20):
        recs = [
            rec(NOW - 5, NOW, f"10.{n}.0.{i}", f"203.0.{n}.{i}")
            if i % 2
            else rec(NOW - 5, NOW, f"fd00::{n}:{i}", f"2001:db8::{n}:{i}")
            for i in range(30)
        ]
        block_lines(recs, exaddr="192.0.2.1", boot_ms=NOW - DAY)
        block_lines(recs[:1], exaddr="192.0.2.1", boot_ms=NOW - DAY)
        assert all(len(texts) <= 10 + 2 * 30 for texts in flowtools_csv._TEXTS.values())
