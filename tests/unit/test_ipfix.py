"""IPFIX pack/unpack, the information-element table, the stateful encoder, golden bytes."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfflowd.formats import ipfix
from nfflowd.formats import ipfix_ies as ies
from nfflowd.messages import FlowRecord
from tests.addresses import a
from tests.flow_hex import SNAT_RECORD_V4_HEX, TEMPLATE_V4_HEX, hex_digits
from tests.flow_records import FLOWS, NOW_NS, SECS, load_records
from tests.flow_records import snat_record as rec

GOLDEN = Path(__file__).parent.parent / "data" / "ipfix"


def expected(r: FlowRecord) -> dict[str, Any]:
    """The record dict unpack_datagram must return for ``r`` (IPFIX names)."""
    fields = ies.FLOW_FIELDS_V4 if r.family == 4 else ies.FLOW_FIELDS_V6
    return {ie.name: v for ie, v in zip(fields, ies.flow_values(r), strict=True)}


def decode_all(dgs: list[bytes]) -> tuple[list[ipfix.IpfixHeader], list[dict[str, Any]]]:
    templates: ies.Templates = {}
    headers, out = [], []
    for d in dgs:
        h, rs = ipfix.unpack_datagram(d, templates)
        headers.append(h)
        out.extend(rs)
    return headers, out


# -- layout -----------------------------------------------------------------------------


def test_sizes_and_table() -> None:
    assert (ipfix.HEADER_SIZE, ipfix.SET_HEADER_SIZE) == (16, 4)
    assert (ipfix.RECORD_V4.size, ipfix.RECORD_V6.size) == (85, 133)
    # 69 bytes up to the post-NAT ports, then flowId (8), ingressVRFID and egressVRFID (4 + 4)
    assert (ipfix.RECORD_V4.size - 16, ipfix.RECORD_V6.size - 16) == (69, 117)
    assert len(ipfix.pack_template_set(ipfix.FLOW_TEMPLATES)) == 4 + 2 * (4 + 21 * 4)
    assert all(struct.calcsize("!" + ie.code) == ie.length for ie in ies.BY_ID.values())
    assert all(ies.BY_NAME[ie.name] is ie for ie in ies.BY_ID.values())
    ids = [ie.id for ie in ies.FLOW_FIELDS_V6]
    assert ids == [
        *(27, 28, 7, 139, 11, 4, 61, 136, 2, 1, 152, 153, 10, 14, 281, 282, 227, 228),
        *(148, 234, 235),  # flowId, ingressVRFID, egressVRFID
    ]
    assert [ie.name for ie in ies.FLOW_FIELDS_V4[-3:]] == ["flowId", "ingressVRFID", "egressVRFID"]
    # nfdump stores icmpTypeCode and destinationTransportPort in one slot: port last
    assert ids.index(139) < ids.index(11)


def test_pack_layout_by_hand() -> None:
    r = rec(first=1795713179211, last=1795713184317, zone=9)  # conntrack id 77
    d = ipfix.IpfixEncoder(observation_domain=0x01020304).encode([r], NOW_NS)
    tmpl6 = (
        "0101 0015 001b0010 001c0010 00070002 008b0002 000b0002 00040001 003d0001 00880001"
        " 00020008 00010008 00980008 00990008 000a0004 000e0004 01190010 011a0010"
        " 00e30002 00e40002 00940008 00ea0004 00eb0004"
    )
    header = "000a 011d 6b0868a0 00000000 01020304"  # 16 + 180 + 89 = 285 bytes, seq 0
    templates = f"0002 00b4 {TEMPLATE_V4_HEX} {tmpl6}"  # template set: 4 + 2 * (4 + 21 * 4)
    data = f"0100 0059 {SNAT_RECORD_V4_HEX}"  # data set for template 256, 4 + 85 bytes
    expected_hex = hex_digits(f"{header} {templates} {data}")
    assert [x.hex() for x in d] == [expected_hex]
    h, rs = ipfix.unpack_datagram(d[0])
    assert h == ipfix.IpfixHeader(10, 285, SECS, 0, 0x01020304)
    assert rs == [expected(r)]
    assert (rs[0]["flowId"], rs[0]["ingressVRFID"], rs[0]["egressVRFID"]) == (77, 9, 9)


def test_icmp_and_direction_mapping() -> None:
    recs = [
        rec(proto=1, sport=4660, dport=0x0303, direction=2),
        rec(src="fd00::1", dst="2001:db8::1", proto=58, sport=9, dport=0x8000, direction=3),
        rec(proto=132, sport=3868, dport=3868),
    ]
    _, got = decode_all(ipfix.IpfixEncoder().encode(recs, NOW_NS))
    assert [(g["sourceTransportPort"], g["destinationTransportPort"]) for g in got] == [
        (0, 0x0303),
        (0, 0x8000),
        (3868, 3868),
    ]
    assert got[0]["icmpTypeCodeIPv4"] == 0x0303 and got[1]["icmpTypeCodeIPv6"] == 0x8000
    assert got[2]["icmpTypeCodeIPv4"] == 0
    assert [g["flowDirection"] for g in got] == [1, 0, 0]


def test_pack_functions_match_encoder() -> None:
    recs = [rec(sport=i, src="fd00::1" if i % 4 == 3 else "10.0.0.1") for i in range(9)]
    dgs = ipfix.IpfixEncoder(observation_domain=3, sequence=11).encode(recs, NOW_NS)
    runs: list[bytes] = [ipfix.pack_template_set(ipfix.FLOW_TEMPLATES)]
    i = 0
    while i < len(recs):
        fam = recs[i].family
        j = i
        while j < len(recs) and recs[j].family == fam:
            j += 1
        tid, fields = ipfix.FLOW_TEMPLATES[0 if fam == 4 else 1]
        runs.append(ipfix.pack_data_set(tid, fields, [ies.flow_values(r) for r in recs[i:j]]))
        i = j
    assert dgs == [ipfix.pack_message(runs, export_time=SECS, sequence=11, observation_domain=3)]


@settings(max_examples=200)
@given(st.lists(FLOWS, max_size=60), st.integers(333, 3000), st.integers(0, 2**32 - 1))
def test_roundtrip_mtu_and_sequence(recs: list[FlowRecord], mtu: int, seq: int) -> None:
    enc = ipfix.IpfixEncoder(mtu=mtu, sequence=seq)
    dgs = enc.encode(recs, NOW_NS)
    assert all(len(d) <= mtu for d in dgs)
    templates: ies.Templates = {}
    got: list[dict[str, Any]] = []
    for d in dgs:
        h, rs = ipfix.unpack_datagram(d, templates)
        assert h.sequence == (seq + len(got)) % 2**32  # data records sent before it
        assert rs
        got.extend(rs)
    assert got == [expected(r) for r in recs]
    assert enc.sequence == (seq + len(recs)) % 2**32 and enc.records == len(recs)


def test_counts_what_it_cannot_send() -> None:
    good = rec()
    recs = [
        good._replace(family=5),
        good._replace(src=b"\1\2\3"),
        good._replace(post_dst=a("fd00::1")),
        good._replace(sport=70000),
        good._replace(packets=-1),
        good._replace(octets=2**64),
        good._replace(end_reason=256),
        good._replace(first_ms=-1),
        good,
    ]
    enc = ipfix.IpfixEncoder()
    _, got = decode_all(enc.encode(recs, NOW_NS))
    assert got == [expected(good)] and enc.invalid == 8 and enc.sequence == 1
    assert enc.encode(recs[:3], NOW_NS) == [] and enc.invalid == 11


# -- template refresh ---------------------------------------------------------------------


def has_templates(d: bytes) -> bool:
    set_id: int = struct.unpack_from("!H", d, ipfix.HEADER_SIZE)[0]
    return set_id == ipfix.TEMPLATE_SET_ID


def flags(enc: ipfix.IpfixEncoder, offsets_ms: list[int]) -> list[bool]:
    """Whether each single-record message, sent ``offset`` ms after NOW, has templates."""
    out = []
    for ms in offsets_ms:
        (d,) = enc.encode([rec()], NOW_NS + ms * 1_000_000)
        out.append(has_templates(d))
    return out


def test_template_refresh_by_packets() -> None:
    enc = ipfix.IpfixEncoder(template_refresh_packets=3, template_refresh_seconds=0)
    assert flags(enc, [0] * 10) == [True, False, False] * 3 + [True]
    # within one batch too: every 3rd message of a long batch
    enc = ipfix.IpfixEncoder(template_refresh_packets=3, mtu=400)
    dgs = enc.encode([rec(sport=i) for i in range(40)], NOW_NS)
    assert [has_templates(d) for d in dgs] == [i % 3 == 0 for i in range(len(dgs))]
    assert enc.template_sends == sum(map(has_templates, dgs)) and len(dgs) >= 7


def test_template_refresh_by_time() -> None:
    enc = ipfix.IpfixEncoder(template_refresh_packets=0, template_refresh_seconds=10)
    assert flags(enc, [0, 9_999, 9_999, 10_000, 10_001, 19_999, 20_000]) == [
        True,
        False,
        False,
        True,
        False,
        False,
        True,
    ]
    # whichever comes first
    enc = ipfix.IpfixEncoder(template_refresh_packets=3, template_refresh_seconds=10)
    assert flags(enc, [0, 1_000, 10_000, 10_001, 10_002, 10_003]) == [
        True,
        False,
        True,
        False,
        False,
        True,
    ]


def test_template_refresh_disabled_and_restart() -> None:
    enc = ipfix.IpfixEncoder(template_refresh_packets=0, template_refresh_seconds=0)
    flags = [has_templates(enc.encode([rec()], NOW_NS + i * 10**12)[0]) for i in range(50)]
    assert flags == [True] + [False] * 49
    # a new encoder (an export restart) sends them again at once
    assert has_templates(ipfix.IpfixEncoder().encode([rec()], NOW_NS)[0])
    every = ipfix.IpfixEncoder(template_refresh_packets=1)
    assert all(has_templates(every.encode([rec()], NOW_NS)[0]) for _ in range(5))


def test_constructor_rejects() -> None:
    # header 16 + templates 180 + set header 4 + one IPv6 record 133 = 333
    with pytest.raises(ValueError, match="mtu 332: must be within 333"):
        ipfix.IpfixEncoder(mtu=332)
    ipfix.IpfixEncoder(mtu=333)
    with pytest.raises(ValueError, match="mtu 65536"):
        ipfix.IpfixEncoder(mtu=65536)
    with pytest.raises(ValueError, match="observation_domain"):
        ipfix.IpfixEncoder(observation_domain=2**32)


# -- decoding what others send --------------------------------------------------------------


def message(*sets: bytes, domain: int = 0, seq: int = 0) -> bytes:
    return ipfix.pack_message(sets, export_time=SECS, sequence=seq, observation_domain=domain)


def a_set(set_id: int, body: bytes) -> bytes:
    return struct.pack("!HH", set_id, 4 + len(body)) + body


def test_decodes_foreign_templates() -> None:
    # enterprise element, reduced-size counter (3 bytes), variable-length string
    tmpl = a_set(
        2, struct.pack("!HHHHIHHHHHH", 300, 4, 0x8000 | 42, 4, 29305, 1, 3, 8, 4, 82, 65535)
    )
    first = b"\xde\xad\xbe\xef\x01\x00\x01\x0a\x00\x00\x01\x04eth0"
    second = b"\0\0\0\0\0\0\x02\x0a\x00\x00\x02\xff\x00\x03abc"
    data = a_set(300, first + second + b"\0")  # one byte of padding
    templates: ies.Templates = {}
    h, rs = ipfix.unpack_datagram(message(tmpl, data, domain=9), templates)
    assert h.observation_domain == 9 and (9, 300) in templates
    assert rs == [
        {
            "ie29305.42": b"\xde\xad\xbe\xef",
            "octetDeltaCount": 65537,
            "sourceIPv4Address": a("10.0.0.1"),
            "ie82": b"eth0",
        },
        {
            "ie29305.42": b"\0\0\0\0",
            "octetDeltaCount": 2,
            "sourceIPv4Address": a("10.0.0.2"),
            "ie82": b"abc",
        },
    ]
    # the same data in a later message uses the stored template; another domain does not
    assert ipfix.unpack_datagram(message(data, domain=9), templates)[1] == rs
    assert ipfix.unpack_datagram(message(data, domain=8), templates)[1] == []
    # withdrawal (field count 0) removes it
    ipfix.unpack_datagram(message(a_set(2, struct.pack("!HH", 300, 0)), domain=9), templates)
    assert (9, 300) not in templates
    # options template withdrawal (4 bytes) and "withdraw all" (template id = set id)
    opts = a_set(3, struct.pack("!HHHHH", 400, 1, 1, 149, 4))
    ipfix.unpack_datagram(message(tmpl, opts, domain=9), templates)
    ipfix.unpack_datagram(message(tmpl, opts, domain=8), templates)
    assert set(templates) == {(9, 300), (9, 400), (8, 300), (8, 400)}
    ipfix.unpack_datagram(message(a_set(3, struct.pack("!HH", 400, 0)), domain=9), templates)
    assert set(templates) == {(9, 300), (8, 300), (8, 400)}
    ipfix.unpack_datagram(message(a_set(2, struct.pack("!HH", 2, 0)), domain=8), templates)
    assert set(templates) == {(9, 300), (8, 400)}
    ipfix.unpack_datagram(message(a_set(3, struct.pack("!HH", 3, 0)), domain=8), templates)
    assert set(templates) == {(9, 300)}


def test_options_template_is_stored() -> None:
    tmpl = a_set(3, struct.pack("!HHHHHHH", 400, 2, 1, 149, 4, 41, 8))
    data = a_set(400, struct.pack("!IQ", 7, 12345))
    templates: ies.Templates = {}
    _, rs = ipfix.unpack_datagram(message(tmpl, data), templates)
    assert templates[(0, 400)].scope_count == 1
    assert rs == [{"observationDomainId": 7, "ie41": struct.pack("!Q", 12345)}]


def test_unpack_errors_name_the_offset() -> None:
    d = ipfix.IpfixEncoder().encode([rec(), rec()], NOW_NS)[0]
    cases = [
        (d[:10], "offset 0: truncated header, 10 of 16"),
        (b"\0\x09" + d[2:], "offset 0: version 9"),
        (d[:-1], r"offset 2: length 370, datagram has 369"),  # 16 + 180 + 4 + 2 * 85
        (d[:2] + struct.pack("!H", len(d) + 2) + d[4:] + b"\0\0", "offset 370: truncated set"),
        (d[:18] + b"\0\x03" + d[20:], "offset 16: set 2: length 3 below 4"),
        (d[:18] + b"\xff\xff" + d[20:], "offset 16: set 2: length 65535 runs past"),
        (message(a_set(5, b"")), "offset 16: reserved set id 5"),
        (message(a_set(2, struct.pack("!HH", 17, 1) + b"\0\x08\0\x04")), "template id 17"),
        (message(a_set(2, struct.pack("!HHHH", 300, 2, 8, 4))), "offset 28: template 300 trunc"),
        (message(a_set(2, struct.pack("!HHHH", 300, 1, 0x8008, 4))), "enterprise number"),
        (message(a_set(3, struct.pack("!HHHHH", 300, 1, 2, 8, 4))), "scope count 2 > 1"),
    ]
    for data, msg in cases:
        with pytest.raises(ValueError, match=msg):
            ipfix.unpack_datagram(data)
    tmpl = a_set(2, struct.pack("!HHHH", 300, 1, 82, 65535))
    with pytest.raises(ValueError, match="ie82: 5 bytes run past"):
        ipfix.unpack_datagram(message(tmpl, a_set(300, b"\x05ab")))
    assert len(ipfix.unpack_datagram(d)[1]) == 2


# -- golden datagrams ---------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.stem)
def test_encode_equals_golden(path: Path) -> None:
    case = json.loads(path.read_text())
    enc = ipfix.IpfixEncoder(**case["encoder"])
    templates: ies.Templates = {}
    for batch in case["batches"]:
        recs = load_records(batch["records"])
        dgs = enc.encode(recs, batch["now_ns"])
        assert [d.hex() for d in dgs] == batch["datagrams"]
        got = [r for d in dgs for r in ipfix.unpack_datagram(d, templates)[1]]
        assert got == [
            expected(r)
            for r in recs
            if r.family in (4, 6)
            and len(r.src) in (4, 16)
            and r.sport <= 0xFFFF
            and len(r.post_src) == len(r.src)
        ]
    assert {k: getattr(enc, k) for k in case["counters"]} == case["counters"]
    assert enc.sequence == case["final_sequence"]


def test_golden_cases_present() -> None:
    assert {p.stem for p in GOLDEN.glob("*.json")} >= {"nat_triplets", "refresh"}
