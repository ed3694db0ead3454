"""NetFlow v9 pack/unpack, the stateful encoder, golden bytes."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfflowd.formats import ipfix_ies as ies
from nfflowd.formats import netflow_v9 as v9
from nfflowd.formats.uptime import host_boot_ms
from nfflowd.messages import FlowRecord
from tests.addresses import a
from tests.flow_hex import SNAT_RECORD_V4_HEX_V9, TEMPLATE_V4_HEX_V9, hex_digits
from tests.flow_records import BOOT, FLOWS, NOW, NOW_NS, SECS, load_records
from tests.flow_records import snat_record as rec

GOLDEN = Path(__file__).parent.parent / "data" / "v9"


def expected(r: FlowRecord) -> dict[str, Any]:
    """The record dict unpack_datagram must return for ``r``."""
    fields = v9.FLOW_FIELDS_V4_V9 if r.family == 4 else v9.FLOW_FIELDS_V6_V9
    return {ie.name: v for ie, v in zip(fields, v9.flow_values(r), strict=True)}


def encoder(**kw: Any) -> v9.V9Encoder:
    return v9.V9Encoder(boot_ms=BOOT, **kw)


def has_templates(d: bytes) -> bool:
    set_id: int = struct.unpack_from("!H", d, v9.HEADER_SIZE)[0]
    return set_id == v9.TEMPLATE_FLOWSET_ID


# -- layout -----------------------------------------------------------------------------


def test_sizes() -> None:
    assert (v9.HEADER_SIZE, v9.FLOWSET_HEADER_SIZE) == (20, 4)
    # 69 / 117 bytes up to the post-NAT ports, then ingressVRFID and egressVRFID (4 + 4);
    # no flowId (148): nfdump 1.7 takes it for Cisco NSEL's connection id in v9
    assert (v9.RECORD_V4.size, v9.RECORD_V6.size) == (69 + 8, 117 + 8)
    ids = [ie.id for ie in v9.FLOW_FIELDS_V6_V9]
    assert ids == [
        *(27, 28, 7, 32, 11, 4, 61, 136, 2, 1, 152, 153, 10, 14, 281, 282, 227, 228),
        *(234, 235),  # ingressVRFID, egressVRFID
    ]
    assert [ie.id for ie in v9.FLOW_FIELDS_V4_V9][-4:] == [227, 228, 234, 235]
    assert v9.flow_values(rec(zone=9))[-4:] == (40000, 443, 9, 9)  # post-NAT ports, zone


def test_pack_layout_by_hand() -> None:
    r = rec(first=1795713179211, last=1795713184317, zone=9)  # conntrack id 77: not sent
    d = encoder(source_id=0x01020304).encode([r], NOW_NS)
    tmpl6 = (
        "0101 0014 001b0010 001c0010 00070002 00200002 000b0002 00040001 003d0001 00880001"
        " 00020008 00010008 00980008 00990008 000a0004 000e0004 01190010 011a0010"
        " 00e30002 00e40002 00ea0004 00eb0004"
    )
    header = "0009 0003 000f62ce 6b0868a0 00000000 01020304"  # 2 templates + 1 record
    templates = f"0000 00ac {TEMPLATE_V4_HEX_V9} {tmpl6}"  # flowset: 4 + 2 * (4 + 20 * 4)
    data = f"0100 0054 {SNAT_RECORD_V4_HEX_V9} 000000"  # template 256: 4 + 77 + 3 padding
    expected_hex = hex_digits(f"{header} {templates} {data}")
    assert [x.hex() for x in d] == [expected_hex]
    h, rs = v9.unpack_datagram(d[0])
    assert h == v9.V9Header(9, 3, NOW - BOOT, SECS, 0, 0x01020304)
    assert rs == [expected(r)]
    assert (rs[0]["ingressVRFID"], rs[0]["egressVRFID"]) == (9, 9) and "flowId" not in rs[0]


def test_icmpv6_uses_field_32() -> None:
    r = rec(src="fd00::1", proto=58, sport=9, dport=0x8100, direction=2)
    (d,) = encoder().encode([r], NOW_NS)
    (got,) = v9.unpack_datagram(d)[1]
    assert (got["icmpTypeCodeIPv4"], got["sourceTransportPort"]) == (0x8100, 0)
    assert got["destinationTransportPort"] == 0x8100 and got["flowDirection"] == 1
    assert "icmpTypeCodeIPv6" not in got


def test_pack_datagram_matches_encoder() -> None:
    recs = [rec(sport=i, src="fd00::1" if i % 4 == 3 else "10.0.0.1") for i in range(9)]
    dgs = encoder(source_id=3, sequence=11).encode(recs, NOW_NS)
    data = []
    i = 0
    while i < len(recs):
        j = i
        while j < len(recs) and recs[j].family == recs[i].family:
            j += 1
        tid, fields = v9.FLOW_TEMPLATES[0 if recs[i].family == 4 else 1]
        data.append((tid, fields, [v9.flow_values(r) for r in recs[i:j]]))
        i = j
    assert dgs == [
        v9.pack_datagram(
            templates=v9.FLOW_TEMPLATES,
            data=data,
            sys_uptime=NOW - BOOT,
            unix_secs=SECS,
            sequence=11,
            source_id=3,
        )
    ]
    assert all(len(fs) % 4 == 0 for fs in flowsets(dgs[0]))


def flowsets(d: bytes) -> list[bytes]:
    out, off = [], v9.HEADER_SIZE
    while off < len(d):
        n = struct.unpack_from("!H", d, off + 2)[0]
        out.append(d[off : off + n])
        off += n
    return out


@settings(max_examples=200)
@given(st.lists(FLOWS, max_size=60), st.integers(324, 3000), st.integers(0, 2**32 - 1))
def test_roundtrip_mtu_count_sequence(recs: list[FlowRecord], mtu: int, seq: int) -> None:
    enc = encoder(mtu=mtu, sequence=seq)
    dgs = enc.encode(recs, NOW_NS)
    templates: ies.Templates = {}
    got: list[dict[str, Any]] = []
    for i, d in enumerate(dgs):
        assert len(d) <= mtu and len(d) % 4 == 0
        assert all(len(fs) % 4 == 0 for fs in flowsets(d))
        h, rs = v9.unpack_datagram(d, templates)  # checks the header's count
        assert h.sequence == (seq + i) % 2**32 and rs
        got.extend(rs)
    assert got == [expected(r) for r in recs]
    assert enc.sequence == (seq + len(dgs)) % 2**32 and enc.records == len(recs)


def test_counts_what_it_cannot_send() -> None:
    good = rec()
    recs = [
        good._replace(family=0),
        good._replace(dst=b"\1\2\3\4\5"),
        good._replace(post_src=a("fd00::1")),
        good._replace(dport=-1),
        good._replace(packets=2**64),
        good._replace(proto=256),
        good._replace(direction=2, end_reason=-1),
        good,
    ]
    enc = encoder()
    dgs = enc.encode(recs, NOW_NS)
    assert [r for d in dgs for r in v9.unpack_datagram(d)[1]] == [expected(good)]
    assert enc.invalid == 7 and enc.sequence == 1 and enc.records == 1


def test_template_refresh() -> None:
    enc = encoder(template_refresh_packets=3, template_refresh_seconds=10)
    got = [
        has_templates(enc.encode([rec()], NOW_NS + ms * 10**6)[0])
        for ms in (0, 1, 2, 3, 10_002, 10_003, 10_004, 10_005, 10_006)
    ]
    assert got == [True, False, False, True, False, True, False, False, True]
    h = v9.unpack_datagram(encoder().encode([rec(), rec()], NOW_NS)[0])[0]
    assert h.count == 4  # 2 templates + 2 data records
    enc = encoder(template_refresh_packets=0, template_refresh_seconds=0)
    assert [has_templates(enc.encode([rec()], NOW_NS + i * 10**12)[0]) for i in range(9)] == [
        True
    ] + [False] * 8


def test_constructor() -> None:
    with pytest.raises(ValueError, match="mtu 323: must be within 324"):
        encoder(mtu=323)  # header 20 + templates 172 + one IPv6 record 4 + 125 + 3 padding
    assert encoder(mtu=327).mtu == 327
    with pytest.raises(ValueError, match="mtu 65536"):
        encoder(mtu=65536)
    with pytest.raises(ValueError, match="source_id"):
        encoder(source_id=-1)
    enc = v9.V9Encoder()
    assert enc.boot_ms == host_boot_ms()
    h = v9.unpack_datagram(enc.encode([rec()], NOW_NS)[0])[0]
    assert h.sys_uptime == (NOW - host_boot_ms()) % 2**32


# -- decoding what others send --------------------------------------------------------------


def packet(*flowsets: bytes, count: int, source: int = 0) -> bytes:
    return struct.pack("!HHIIII", 9, count, 1000, SECS, 0, source) + b"".join(flowsets)


def flowset(fid: int, body: bytes) -> bytes:
    return struct.pack("!HH", fid, 4 + len(body)) + body


def test_decodes_foreign_templates_and_options() -> None:
    # FIRST_SWITCHED/LAST_SWITCHED style template with a 3-byte counter and padding
    tmpl = flowset(0, struct.pack("!HHHHHHHH", 300, 3, 22, 4, 1, 3, 8, 4))
    data = flowset(300, struct.pack("!I", 5) + b"\0\0\x09" + a("10.0.0.9") + b"\0")
    opts = flowset(1, struct.pack("!HHHHHHHHH", 301, 4, 8, 1, 4, 34, 4, 35, 1))
    odata = flowset(301, struct.pack("!IIB", 7, 100, 2) + b"\0\0\0")
    templates: ies.Templates = {}
    _, rs = v9.unpack_datagram(packet(tmpl, data, opts, odata, count=4, source=5), templates)
    assert rs == [
        {"ie22": b"\0\0\0\x05", "octetDeltaCount": 9, "sourceIPv4Address": a("10.0.0.9")},
        {"scopeSystem": b"\0\0\0\x07", "ie34": b"\0\0\0\x64", "ie35": b"\x02"},
    ]
    assert templates[(5, 301)].scope_count == 1
    # later packets use the stored templates (count = data records only)
    assert v9.unpack_datagram(packet(data, count=1, source=5), templates)[1] == rs[:1]
    # unknown template: skipped, count not checked
    assert v9.unpack_datagram(packet(data, count=99, source=6), templates)[1] == []


def test_unpack_errors_name_the_offset() -> None:
    (d,) = encoder().encode([rec(), rec()], NOW_NS)
    cases = [
        (d[:19], "offset 0: truncated header, 19 of 20"),
        (b"\0\x0a" + d[2:], "offset 0: version 10"),
        (d[:2] + b"\0\x05" + d[4:], "offset 2: count 5, but the packet holds 4"),
        (d + b"\0\0", f"offset {len(d)}: 2 bytes after the last flowset"),
        (d[:22] + b"\0\x02" + d[24:], "offset 20: flowset 0: length 2 below 4"),
        (d[:-1], "offset 192: flowset 256: length 160 runs past the end"),  # 4 + 2 * 77 + 2
        (packet(flowset(7, b""), count=0), "offset 20: reserved flowset id 7"),
        (packet(flowset(0, struct.pack("!HHHH", 5, 1, 8, 4)), count=1), "template id 5"),
        (packet(flowset(0, struct.pack("!HHHH", 300, 2, 8, 4)), count=1), "2 fields do not fit"),
        (packet(flowset(1, struct.pack("!HHH", 300, 6, 0) + bytes(6)), count=1), "bad lengths"),
    ]
    for data, msg in cases:
        with pytest.raises(ValueError, match=msg):
            v9.unpack_datagram(data)
    assert len(v9.unpack_datagram(d)[1]) == 2


# -- golden datagrams ---------------------------------------------------------------------


def encodable(r: FlowRecord) -> bool:
    n = {4: 4, 6: 16}.get(r.family)
    return (
        n is not None
        and len(r.src) == len(r.post_src) == n
        and max(r.sport, r.dport, r.post_sport, r.post_dport) <= 0xFFFF
    )


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.stem)
def test_encode_equals_golden(path: Path) -> None:
    case = json.loads(path.read_text())
    enc = v9.V9Encoder(**case["encoder"])
    templates: ies.Templates = {}
    for batch in case["batches"]:
        recs = load_records(batch["records"])
        dgs = enc.encode(recs, batch["now_ns"])
        assert [d.hex() for d in dgs] == batch["datagrams"]
        got = [r for d in dgs for r in v9.unpack_datagram(d, templates)[1]]
        assert got == [expected(r) for r in recs if encodable(r)]
    assert {k: getattr(enc, k) for k in case["counters"]} == case["counters"]
    assert enc.sequence == case["final_sequence"]


def test_golden_cases_present() -> None:
    assert {p.stem for p in GOLDEN.glob("*.json")} >= {"nat_triplets", "refresh"}
