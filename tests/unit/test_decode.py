"""nfflowd decode: golden datagrams (hex), captures written here (pcap/pcapng, every
link type), a real tshark capture on loopback, and garbage that must not crash."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfflowd import decode
from nfflowd.decode import Decoded, decode_stream, pcap
from nfflowd.formats import ipfix, netflow_v9
from nfflowd.formats import ipfix_ies as ies
from nfflowd.formats.ipfix_ies import IE
from tests.addresses import a
from tests.needs import skip_outside_ci

DATA = Path(__file__).parent.parent / "data"
ICMP = (1, 58)


# -- golden data ----------------------------------------------------------------------------


def golden(name: str) -> tuple[list[bytes], list[dict[str, Any]]]:
    """(datagrams, the flow records they were made from) of tests/data/<name>.json."""
    d = json.loads((DATA / f"{name}.json").read_text())
    if "datagrams" in d:
        return [bytes.fromhex(x) for x in d["datagrams"]], d["records"]
    batches = d["batches"]
    return (
        [bytes.fromhex(x) for b in batches for x in b["datagrams"]],
        [r for b in batches for r in b["records"]],
    )


def encodable(r: dict[str, Any]) -> bool:
    """What the v9/IPFIX encoders send (the refresh goldens carry 3 invalid records)."""
    fam = r["family"]
    addrs = ("src", "dst", "post_src", "post_dst")
    ports = ("sport", "dport", "post_sport", "post_dport")
    return (
        fam in (4, 6)
        and all((":" in r[k]) == (fam == 6) for k in addrs)
        and all(0 <= r[k] <= 0xFFFF for k in ports)
    )


def expected_tuple(r: dict[str, Any], sport: int) -> tuple[Any, ...]:
    """The first fields of a decoded Flow: times, protocol, source (port *sport*), destination."""
    return (r["first_ms"], r["last_ms"], r["proto"], r["src"], sport, r["dst"], r["dport"])


def expected_v9(r: dict[str, Any]) -> tuple[Any, ...]:
    """The decoded Flow (without ``fields``) of a v9/IPFIX record."""
    icmp = r["proto"] in ICMP
    return (
        *expected_tuple(r, 0 if icmp else r["sport"]),
        r["post_src"],
        r["post_sport"],
        r["post_dst"],
        r["post_dport"],
        r["packets"],
        r["octets"],
        r["end_reason"],
        1 if r["direction"] == 2 else 0,
    )


def expected_v5(r: dict[str, Any]) -> tuple[Any, ...]:
    """The decoded Flow of a v5 record: no post-NAT fields, end reason or direction."""
    post_nat = (None, None, None, None)
    counters = (r["packets"], r["octets"])
    head = expected_tuple(r, 0 if r["proto"] == 1 else r["sport"])
    return (*head, *post_nat, *counters, None, None)


def flows(items: list[Decoded]) -> list[tuple[Any, ...]]:
    return [tuple(f)[:-1] for d in items for f in d.flows]


def hex_text(datagrams: list[bytes]) -> bytes:
    return "".join(d.hex() + "\n" for d in datagrams).encode()


def ok(items: list[Decoded]) -> list[Decoded]:
    assert [d.error for d in items if d.error] == []
    return items


# -- hex input: golden datagrams ---------------------------------------------------------------


def test_lab_v5_hex_matches_the_flow_tools_csv() -> None:
    """The lab's golden v5 datagram against the CSV lines made from the same flows."""
    text = (DATA / "golden" / "lab-expected-v5.hex").read_bytes()
    [d] = ok(list(decode_stream(text)))
    assert (d.version, d.sequence, d.header_count, len(d.flows)) == (5, 0, 19, 19)
    rows = list(csv.reader((DATA / "golden" / "lab-expected.csv").read_text().splitlines()))
    rows = [r for r in rows if ":" not in r[8]]  # the mirror's IPv6 lines: v5 cannot carry them
    want = []
    for secs, nsecs, up, _ex, pk, oc, first, last, src, dst, *_, sp, dp, proto, _tos, _fl in rows:
        boot = int(secs) * 1000 + int(nsecs) // 1_000_000 - int(up)
        want.append(
            (
                boot + int(first),
                boot + int(last),
                int(proto),
                src,
                int(sp),
                dst,
                int(dp),
                None,
                None,
                None,
                None,
                int(pk),
                int(oc),
                None,
                None,
            )
        )
    assert flows([d]) == want
    f = d.flows[0]
    assert (decode.utc_ms(f.first_ms), f.src, f.dport, f.octets) == (
        "2026-11-26 17:35:22.609",
        "10.0.1.2",
        5999,
        228,
    )
    assert decode.format_flow(f) == (
        "  2026-11-26 17:35:22.609 -> 17:35:25.646  udp          10.0.1.2:52361 -> "
        "203.0.113.2:5999       1 pkts 228 bytes"
    )


@pytest.mark.parametrize("name", ["seed_triplet", "bulk"])
def test_v5_golden(name: str) -> None:
    dgs, recs = golden(f"v5/{name}")
    items = ok(list(decode_stream(hex_text(dgs))))
    assert flows(items) == [expected_v5(r) for r in recs]
    assert all(d.expected_sequence is None for d in items)


def test_v5_seed_triplet_as_the_2009_tool_saw_it() -> None:
    dgs, _ = golden("v5/seed_triplet")
    [d] = ok(list(decode_stream(hex_text(dgs))))
    assert d.export_ms == 1248952480737 and d.sequence == 0
    lines = decode.format_text(d)
    assert lines[0].startswith("# line 1  v5 engine 0/0  seq 0  count 3  exported 2009-07-30 ")
    assert "10.0.195.106:62380 -> 74.125.6.225:80" in lines[1]
    assert "720 pkts 38052 bytes" in lines[1]
    assert "74.125.6.225:80 -> 192.76.7.154:62380" in lines[3]


def test_v5_mixed_sequence_wraps_without_a_gap() -> None:
    dgs, recs = golden("v5/mixed")
    items = ok(list(decode_stream(hex_text(dgs))))
    assert [d.sequence for d in items] == [4294967292, 6]
    assert all(d.expected_sequence is None for d in items)
    # the split 64-bit counters add up; the IPv6 flow was not sent
    key = {(r["src"], r["dport"]): r["packets"] for r in recs if r["family"] == 4}
    got: dict[tuple[str | None, int | None], int] = {}
    for f in (f for d in items for f in d.flows):
        got[(f.src, f.dport)] = got.get((f.src, f.dport), 0) + (f.packets or 0)
    assert got == key


@pytest.mark.parametrize("fmt", ["v9", "ipfix"])
@pytest.mark.parametrize("name", ["nat_triplets", "refresh"])
def test_v9_ipfix_golden(fmt: str, name: str) -> None:
    dgs, recs = golden(f"{fmt}/{name}")
    items = ok(list(decode_stream(hex_text(dgs))))
    assert flows(items) == [expected_v9(r) for r in recs if encodable(r)]
    template_set = 0 if fmt == "v9" else 2
    carries = [
        struct.unpack_from("!H", d, 20 if fmt == "v9" else 16)[0] == template_set for d in dgs
    ]
    assert [d.templates_announced for d in items] == [2 if c else 0 for c in carries]
    assert {d.templates_known for d in items} == {2}
    assert all(d.expected_sequence is None and not d.no_template for d in items)
    assert {d.version for d in items} == {9 if fmt == "v9" else 10}


def test_nat_fields_in_the_table() -> None:
    dgs, _ = golden("v9/nat_triplets")
    items = ok(list(decode_stream(hex_text(dgs))))
    first = decode.format_text(items[0])
    assert first[0].startswith("# line 1  v9 source 7  seq 0  count 15  exported 2026-11-26 ")
    # 1400 bytes: header 20, templates 172, the 10 IPv4 records (4 + 10 * 77), 3 of IPv6
    # (4 + 3 * 125): 1345; a fourth IPv6 record would not fit
    assert first[0].endswith("templates 2 new, 2 known  13 records")
    line = first[1]
    assert "  2026-11-26 17:12:59.211 -> 17:13:04.317  tcp " in line
    assert "10.1.0.5:51000 -> 203.0.113.9:443" in line
    assert line.endswith(
        "nat 198.51.100.7:61000 -> 203.0.113.9:443  12 pkts 4800 bytes  end-of-flow  in"
    )
    assert "203.0.113.1:8.0" in first[7]  # ICMP echo request: type.code


def test_unknown_template_and_sequence_gap() -> None:
    dgs, _ = golden("ipfix/refresh")
    # without the first datagram (templates) the next ones cannot be decoded
    items = ok(list(decode_stream(hex_text(dgs[1:]))))
    assert items[0].no_template and items[0].flows == ()
    assert "NO TEMPLATE for set(s) " in decode.format_text(items[0])[0]
    # dropping one data datagram: the next header shows the gap
    v9dgs, _ = golden("v9/refresh")
    items = ok(list(decode_stream(hex_text(v9dgs[:2] + v9dgs[3:]))))
    assert [d.expected_sequence for d in items][:3] == [None, None, 0]
    assert items[2].sequence == 1
    assert "(GAP: expected 0, 1 missing or reordered)" in decode.format_text(items[2])[0]


def test_foreign_exporter_elements() -> None:
    """Other exporters' choices: v9 FIRST/LAST_SWITCHED (sysUptime ms, reduced-size counters,
    ICMP only in icmpTypeCode); IPFIX flowStart/EndSeconds and total counters."""
    u32 = {i: IE(i, f"ie{i}", 4, "I", "unsigned32") for i in (1, 2, 21, 22, 150, 151)}
    u64 = {i: IE(i, f"ie{i}", 8, "Q", "unsigned64") for i in (85, 86)}
    v9_fields = [
        ies.SOURCE_IPV4_ADDRESS,
        ies.DESTINATION_IPV4_ADDRESS,
        ies.PROTOCOL_IDENTIFIER,
        ies.ICMP_TYPE_CODE_IPV4,
        u32[2],
        u32[1],
        u32[22],
        u32[21],
    ]
    row = (a("10.0.0.1"), a("10.0.0.2"), 1, 0x0800, 3, 252, 1000, 4000)
    d9 = netflow_v9.pack_datagram(
        templates=[(300, v9_fields)],
        data=[(300, v9_fields, [row])],
        sys_uptime=10_000,
        unix_secs=1_795_713_184,
        sequence=5,
        source_id=1,
    )
    fx_fields = [
        ies.SOURCE_IPV6_ADDRESS,
        ies.DESTINATION_IPV6_ADDRESS,
        u32[150],
        u32[151],
        u64[86],
        u64[85],
    ]
    rowx = (a("2001:db8::1"), a("2001:db8::2"), 1_795_713_180, 1_795_713_181, 7, 700)
    sets = [
        ipfix.pack_template_set([(400, fx_fields)]),
        ipfix.pack_data_set(400, fx_fields, [rowx]),
    ]
    dx = ipfix.pack_message(sets, export_time=1_795_713_184, sequence=0, observation_domain=2)
    [i9, ix] = ok(list(decode_stream(hex_text([d9, dx]))))
    boot = 1_795_713_184_000 - 10_000
    assert flows([i9]) == [
        (
            boot + 1000,
            boot + 4000,
            1,
            "10.0.0.1",
            None,
            "10.0.0.2",
            2048,
            None,
            None,
            None,
            None,
            3,
            252,
            None,
            None,
        )
    ]
    assert i9.flows[0].fields["ie22"] == "000003e8"
    t0, t1 = 1_795_713_180_000, 1_795_713_181_000
    assert flows([ix]) == [
        (
            t0,
            t1,
            None,
            "2001:db8::1",
            None,
            "2001:db8::2",
            None,
            None,
            None,
            None,
            None,
            7,
            700,
            None,
            None,
        )
    ]
    assert decode.format_flow(ix.flows[0]) == (
        "  2026-11-26 17:13:00.000 -> 17:13:01.000  -             [2001:db8::1] -> "
        "[2001:db8::2]          7 pkts 700 bytes"
    )


def test_hex_text_tolerates_whitespace_and_comments() -> None:
    dgs, recs = golden("v5/seed_triplet")
    h = dgs[0].hex()
    text = f"# captured by hand\n\n  {h[:40]} {h[40:80]}\t{h[80:]}  # the triplet\n".encode()
    [d] = ok(list(decode_stream(text)))
    assert (d.number, d.where) == (1, "line 3")
    assert flows([d]) == [expected_v5(r) for r in recs]


# -- garbage ---------------------------------------------------------------------------------


def test_bad_datagrams_are_errors_and_decoding_goes_on() -> None:
    dgs, recs = golden("v5/seed_triplet")
    good = dgs[0].hex()
    text = "\n".join([good[:100], "zz00", "abc", "1234" * 10, good[:48] + "00" * 48, good])
    items = list(decode_stream(text.encode()))
    assert [d.error for d in items] == [
        "v5: offset 24: truncated record 0, datagram has 50 of 168 bytes",
        "not a hex datagram: 'z' is no hex digit",
        "not a hex datagram: odd number of hex digits (3)",
        "not NetFlow v5/v9/IPFIX: starts with 1234",
        "v5: offset 72: truncated record 1, datagram has 72 of 168 bytes",
        None,
    ]
    assert [d.where for d in items][:2] == ["line 1", "line 2"]
    assert flows(items) == [expected_v5(r) for r in recs]
    assert decode.format_text(items[1]) == [
        "ERROR datagram 2 at line 2: not a hex datagram: 'z' is no hex digit"
    ]


def test_binary_input_that_is_no_capture() -> None:
    [d] = list(decode_stream(b"\x00\x05\xff\xfe garbage"))
    assert (d.where, d.error) == (
        "offset 0",
        "neither a pcap/pcapng capture nor hex text (starts with 0005fffe)",
    )
    items = list(decode_stream("# café\n00\u00e9\n".encode()))  # UTF-8 text: per line
    assert [d.error for d in items] == ["not a hex datagram: 'é' is no hex digit"]


def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    return st.tuples(
        st.integers(0, len(data)),
        st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=6),
    ).map(lambda a: bytes(_mutate(data, *a)))


def _mutate(data: bytes, cut: int, changes: list[tuple[int, int]]) -> bytearray:
    b = bytearray(data)
    for i, v in changes:
        b[i] = v
    return b[:cut] if cut else b


ALL = [
    d
    for n in ("v5/mixed", "v9/refresh", "ipfix/refresh", "v9/nat_triplets", "ipfix/nat_triplets")
    for d in golden(n)[0]
]


@settings(max_examples=300)
@given(st.lists(st.sampled_from(ALL).flatmap(mutations), min_size=1, max_size=4))
def test_mutated_datagrams_never_crash(datagrams: list[bytes]) -> None:
    items = list(decode_stream(hex_text(datagrams)))
    assert len(items) == len([d for d in datagrams if d])
    for d in items:
        assert (d.error is None) or d.flows == ()
        assert decode.format_text(d) and decode.format_json(d)


# -- captures written here -----------------------------------------------------------------


def udp_ip(src: str, dst: str, sport: int, dport: int, payload: bytes) -> tuple[int, bytes]:
    """(ethertype, IPv4 or IPv6 packet) of one UDP datagram."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if ":" in src:
        return 0x86DD, struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, a(src), a(dst)) + udp
    return 0x0800, struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0x4000, 64, 17, 0, a(src), a(dst)
    ) + udp


def tcp_ip() -> tuple[int, bytes]:
    return 0x0800, struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, a("10.9.9.9"), a("10.9.9.8")
    ) + bytes(20)


def frame(linktype: int, etype: int, packet: bytes) -> bytes:
    if linktype == pcap.LINKTYPE_ETHERNET:  # with an 802.1Q tag on IPv6
        tag = struct.pack("!HH", 0x8100, 42) if etype == 0x86DD else b""
        return b"\x02" * 6 + b"\x04" * 6 + tag + struct.pack("!H", etype) + packet
    if linktype == pcap.LINKTYPE_LINUX_SLL:
        return struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 6, etype) + packet
    if linktype == pcap.LINKTYPE_LINUX_SLL2:
        return struct.pack("!HHIHBB8s", etype, 0, 3, 1, 4, 6, b"\x02" * 6) + packet
    if linktype == pcap.LINKTYPE_NULL:
        return struct.pack("<I", 2 if etype == 0x0800 else 30) + packet
    return packet  # RAW


def write_pcap(frames: list[bytes], linktype: int, *, ns: bool, order: str) -> bytes:
    magic = pcap.PCAP_MAGIC_NS if ns else pcap.PCAP_MAGIC_US
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for i, f in enumerate(frames):
        frac = 5_000_000 + i if ns else 5000 + i
        out.append(struct.pack(order + "IIII", 1_795_713_190 + i, frac, len(f), len(f)) + f)
    return b"".join(out)


def block(order: str, btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) & 3)
    n = struct.pack(order + "I", 12 + len(body))
    return struct.pack(order + "I", btype) + n + body + n


def write_pcapng(frames: list[bytes], linktype: int, *, order: str, tsresol: int = 6) -> bytes:
    """SHB, an unrelated interface, ours (if_tsresol), a comment block, EPBs on ours."""
    shb = block(order, pcap.PCAPNG_SHB, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))
    other = block(order, 1, struct.pack(order + "HHI", 147, 0, 0))
    opts = struct.pack(order + "HHB3x", 9, 1, tsresol) + bytes(4)
    ours = block(order, 1, struct.pack(order + "HHI", linktype, 0, 262144) + opts)
    out = [shb, other, ours, block(order, 5, bytes(12))]  # 5: an interface statistics block
    unit = 10**tsresol if tsresol < 0x80 else 2 ** (tsresol & 0x7F)
    for i, f in enumerate(frames):
        ts = (1_795_713_190 + i) * unit + i
        out.append(
            block(
                order,
                6,
                struct.pack(order + "IIIII", 1, ts >> 32, ts & 0xFFFFFFFF, len(f), len(f)) + f,
            )
        )
    return b"".join(out)


def mixed_capture_frames(linktype: int) -> tuple[list[bytes], list[tuple[Any, ...]]]:
    """v5 from 10.0.0.1, v9 (template + data) from 2001:db8::1, IPFIX from 10.0.0.2, a TCP
    segment, and the IPFIX data datagram again from another exporter (no template there)."""
    v5, r5 = golden("v5/seed_triplet")
    v9, r9 = golden("v9/nat_triplets")
    fx, rx = golden("ipfix/nat_triplets")
    packets = [udp_ip("10.0.0.1", "10.0.0.9", 40001, 2055, v5[0]), tcp_ip()]
    packets += [udp_ip("2001:db8::1", "2001:db8::9", 40002, 2055, d) for d in v9]
    packets += [udp_ip("10.0.0.2", "10.0.0.9", 40003, 2055, d) for d in fx]
    packets.append(udp_ip("10.0.0.3", "10.0.0.9", 40003, 2055, fx[1]))
    want = [expected_v5(r) for r in r5] + [expected_v9(r) for r in r9 + rx]
    return [frame(linktype, *p) for p in packets], want


def check_mixed(items: list[Decoded], want: list[tuple[Any, ...]], first_ns: int) -> None:
    ok(items)
    assert [d.skipped for d in items] == [None, "IPv4 protocol 6", None, None, None, None, None]
    assert flows(items) == want
    assert [d.number for d in items] == list(range(1, 8))
    assert items[0].captured_ns == first_ns
    assert (items[0].exporter, items[0].collector) == ("10.0.0.1:40001", "10.0.0.9:2055")
    assert items[2].exporter == "[2001:db8::1]:40002"
    assert [d.version for d in items] == [5, 0, 9, 9, 10, 10, 10]
    assert [d.templates_announced for d in items] == [0, 0, 2, 0, 2, 0, 0]
    assert items[6].no_template and items[6].flows == ()  # templates are per exporter
    head = decode.format_text(items[2])[0]
    assert head.startswith("# frame 3 (offset ") and " captured 2026-11-26 17:13:12." in head
    assert "  [2001:db8::1]:40002 -> [2001:db8::9]:2055  v9 source 7  seq 0  " in head


LINKTYPES = [pcap.LINKTYPE_ETHERNET, pcap.LINKTYPE_LINUX_SLL, pcap.LINKTYPE_LINUX_SLL2,
             pcap.LINKTYPE_RAW, pcap.LINKTYPE_NULL]  # fmt: skip


@pytest.mark.parametrize("linktype", LINKTYPES)
@pytest.mark.parametrize(("ns", "order"), [(False, "<"), (True, ">")])
def test_pcap(linktype: int, ns: bool, order: str) -> None:
    frames, want = mixed_capture_frames(linktype)
    data = write_pcap(frames, linktype, ns=ns, order=order)
    check_mixed(list(decode_stream(data)), want, 1_795_713_190_005_000_000)


@pytest.mark.parametrize("linktype", [pcap.LINKTYPE_ETHERNET, pcap.LINKTYPE_LINUX_SLL2])
@pytest.mark.parametrize(("order", "tsresol"), [("<", 6), (">", 9), ("<", 0x80 | 10)])
def test_pcapng(linktype: int, order: str, tsresol: int) -> None:
    frames, want = mixed_capture_frames(linktype)
    data = write_pcapng(frames, linktype, order=order, tsresol=tsresol)
    unit = 10**tsresol if tsresol < 0x80 else 1024  # ticks per second
    check_mixed(list(decode_stream(data)), want, 1_795_713_190 * 10**9)
    items = list(decode_stream(data))
    assert items[1].captured_ns == 1_795_713_191 * 10**9 + 10**9 // unit


def test_broken_captures() -> None:
    frames, want = mixed_capture_frames(pcap.LINKTYPE_ETHERNET)
    whole = write_pcap(frames, pcap.LINKTYPE_ETHERNET, ns=False, order="<")
    items = list(decode_stream(whole[:-10]))  # the capture was cut short in the last packet
    assert len(items) == 7 and flows(items) == want
    assert items[-1].error is not None and items[-1].error.startswith(
        "broken capture, reading stops: offset "
    )
    # a frame captured with a small snaplen
    snapped = [f[:100] if i == 0 else f for i, f in enumerate(frames)]
    items = list(decode_stream(write_pcap(snapped, 1, ns=False, order="<")))
    assert items[0].error == (
        "frame: offset 100: frame captured up to byte 100, its IP packet "
        "ends at 210 (snaplen too small?)"
    )
    assert flows(items) == want[3:]


@settings(max_examples=300)
@given(
    st.sampled_from(
        [
            write_pcap(mixed_capture_frames(1)[0], 1, ns=False, order="<"),
            write_pcapng(mixed_capture_frames(276)[0], 276, order=">"),
        ]
    ).flatmap(mutations)
)
def test_mutated_captures_never_crash(data: bytes) -> None:
    for d in decode_stream(data):
        assert decode.format_text(d) is not None and decode.format_json(d)


# -- the command -----------------------------------------------------------------------------


def test_main_table_json_and_exit_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames, want = mixed_capture_frames(pcap.LINKTYPE_ETHERNET)
    cap = tmp_path / "mixed.pcap"
    cap.write_bytes(write_pcap(frames, 1, ns=False, order="<"))
    assert decode.main([str(cap)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 6 + len(want)  # 6 datagram headers (the TCP segment is not shown)
    assert err.strip() == (
        f"6 datagrams, {len(want)} records, 0 errors, 0 sequence gaps, "
        "1 captured packets skipped (not UDP)"
    )
    assert decode.main([str(cap), "--json"]) == 0
    objs = [json.loads(x) for x in capsys.readouterr()[0].splitlines()]
    assert [o["type"] for o in objs].count("flow") == len(want)
    assert [o["type"] for o in objs].count("skipped") == 1
    f = next(o for o in objs if o["type"] == "flow" and o["post_src"] == "198.51.100.7")
    assert (f["src"], f["sport"], f["post_sport"], f["fields"]["postNATSourceIPv4Address"]) == (
        "10.1.0.5",
        51000,
        61000,
        "198.51.100.7",
    )
    bad = tmp_path / "bad.hex"
    bad.write_text("0005\n" + golden("v5/seed_triplet")[0][0].hex() + "\n")
    assert decode.main([str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == (
        "ERROR datagram 1 at line 1: v5: offset 0: truncated header, 2 of 24 bytes"
    )
    assert "1 datagrams, 3 records, 1 errors" in err
    assert decode.main([str(tmp_path / "missing")]) == 1
    assert "missing: No such file or directory" in capsys.readouterr()[1]


def test_python_dash_m_reads_stdin() -> None:
    dgs, _ = golden("v5/seed_triplet")
    r = subprocess.run(
        [sys.executable, "-m", "nfflowd.decode", "-"],
        input=hex_text(dgs),
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert b"10.0.195.106:62380 -> 74.125.6.225:80" in r.stdout


# -- a real capture ------------------------------------------------------------------------


def capture_missing() -> str | None:
    if shutil.which("tshark") is None and shutil.which("dumpcap") is None:
        return "needs tshark or dumpcap (make test installs tshark)"
    if os.geteuid() != 0:
        return "needs root to capture on lo"
    return None


def free_udp_port() -> tuple[socket.socket, socket.socket]:
    """Receivers on 127.0.0.1:N and [::1]:N (N free on both)."""
    for _ in range(20):
        rx4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx4.bind(("127.0.0.1", 0))
        rx6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            rx6.bind(("::1", rx4.getsockname()[1]))
        except OSError:
            rx4.close()
            rx6.close()
            continue
        return rx4, rx6
    raise RuntimeError("no UDP port free on both 127.0.0.1 and ::1")


#: A v5 header without records: decodes cleanly to nothing.
PROBE = struct.pack("!HHIIIIBBH", 5, 0, 0, 1_795_713_190, 0, 0, 0, 0, 0)


def captured(path: Path) -> list[Decoded]:
    """What the capture file holds so far (a block being written is left out)."""
    data = path.read_bytes() if path.exists() else b""
    return [d for d in decode_stream(data) if d.error is None] if pcap.is_capture(data) else []


def poll(what: str, check: Any, deadline: float, send: Any = None) -> None:
    """Until ``check()``, calling ``send()`` between tries; fails at ``deadline``."""
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if send is not None:
            send()
        time.sleep(0.1)


@skip_outside_ci(capture_missing())
@pytest.mark.timeout(90)
@pytest.mark.parametrize(("iface", "fmt", "magic", "linktypes"), [
    ("lo", "pcapng", b"\x0a\x0d\x0d\x0a", {pcap.LINKTYPE_ETHERNET}),
    ("any", "pcapng", b"\x0a\x0d\x0d\x0a", {pcap.LINKTYPE_LINUX_SLL, pcap.LINKTYPE_LINUX_SLL2}),
    ("lo", "pcap", b"\xd4\xc3\xb2\xa1", {pcap.LINKTYPE_ETHERNET}),
])  # fmt: skip
def test_real_capture_with_tshark(
    tmp_path: Path, iface: str, fmt: str, magic: bytes, linktypes: set[int]
) -> None:
    """Golden datagrams sent over loopback (IPv4 and IPv6) while tshark captures them:
    the file it writes decodes to the golden flows."""
    v5, r5 = golden("v5/seed_triplet")
    lab = bytes.fromhex((DATA / "golden" / "lab-expected-v5.hex").read_text())
    v9, r9 = golden("v9/nat_triplets")
    fx, rx = golden("ipfix/nat_triplets")
    rx4, rx6 = free_udp_port()
    port = rx4.getsockname()[1]
    sends = [(d, "127.0.0.1") for d in [v5[0], lab, *v9, *fx]] + [(d, "::1") for d in fx]
    out = tmp_path / f"{iface}.{fmt}"
    tool = "tshark" if shutil.which("tshark") else "dumpcap"
    fmt_option = [] if fmt == "pcapng" else ["-F", "pcap"] if tool == "tshark" else ["-P"]
    proc = subprocess.Popen(
        [tool, "-i", iface, "-f", f"udp port {port}", "-w", str(out), *fmt_option],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tx4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        tx4.bind(("127.0.0.1", 0))
        tx6.bind(("::1", 0))
        tx4_port, tx6_port = tx4.getsockname()[1], tx6.getsockname()[1]
        deadline = time.monotonic() + 60
        # the tool reports "Capturing on" before its filter sees packets: probe until it does
        poll(
            "the capture to start",
            lambda: captured(out),
            deadline,
            lambda: tx4.sendto(PROBE, ("127.0.0.1", port)),
        )
        for data, dst in sends:
            (tx6 if ":" in dst else tx4).sendto(data, (dst, port))

        def all_there() -> bool:
            return sum(d.header_count != 0 for d in captured(out)) == len(sends)

        poll("every datagram in the file", all_there, deadline)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for s in (tx4, tx6, rx4, rx6):
            s.close()
    data = out.read_bytes()
    assert data[:4] == magic  # what the real tool wrote: pcapng or pcap
    [linktype] = {p.linktype for p in pcap.read_packets(data)}  # Ethernet on lo; SLL(2) on any
    assert linktype in linktypes
    items = [d for d in ok(list(decode_stream(data))) if d.header_count != 0]  # no probes
    assert [d.skipped for d in items] == [None] * len(sends)
    exporters = [f"127.0.0.1:{tx4_port}"] * 6 + [f"[::1]:{tx6_port}"] * 2
    assert [d.exporter for d in items] == exporters
    assert len(items[1].flows) == 19 and items[1].flows[0].src == "10.0.1.2"
    want9 = [expected_v9(r) for r in r9 + rx + rx]
    assert flows(items[:1]) == [expected_v5(r) for r in r5]
    assert flows(items[2:]) == want9
    assert all(d.collector.endswith(f":{port}") for d in items)
    assert [d.templates_announced for d in items] == [0, 0, 2, 0, 2, 0, 2, 0]
    now = time.time_ns()
    assert all(now - 120 * 10**9 < (d.captured_ns or 0) <= now for d in items)
