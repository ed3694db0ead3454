"""Our NetFlow v9 and IPFIX datagrams as independent decoders read them.

1. nfdump: nfcapd collects over loopback UDP, ``nfdump -r`` reads back addresses,
   ports, protocol, packets, bytes, absolute first/last to the ms, direction,
   interfaces, the post-NAT fields (``%xsa %xda %xsp %xdp``) and the conntrack
   zone as ingress/egress VRF id (``%ivrf %evrf``), IPv4 and IPv6; no sequence
   failures.  Known nfdump 1.7 gaps, asserted as such: its v9 table has no
   flowEndReason (136) and its IPFIX table no postNAT*IPv6Address (281/282) and
   no flowId (148: ``%nfc``, its NSEL connection id, stays 0).  v9 does not send
   flowId (see nfflowd.formats.ipfix_ies).
2. tshark's cflow dissector, from a pcap written here: every field of every
   data record (flowId = the conntrack id in IPFIX, ingress/egress VRF id = the
   zone in both), and the headers; for IPFIX also the PyPI ``netflow`` package.
3. Template refresh: an nfcapd restarted mid-run decodes data again from the
   next template refresh on (by packet count and by time).

The golden datagrams under tests/data/{v9,ipfix} go through 1 and 2 as well.
The encoders here are fed explicit records and encode every one, ORIGINAL_OUT
(flowDirection egress) included, as they do for a collector with ``records
triplet``; ``per_direction`` (the collectors' default) only leaves those out, the
rest byte for byte the same (tests/unit/test_collector_records.py).
Outside CI each test skips when its program is missing; under ``CI=true`` a
missing program fails.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from netflow.ipfix import IPFIXExportPacket  # type: ignore[import-untyped]

from nfflowd.formats import ipfix, netflow_v9
from nfflowd.formats import ipfix_ies as ies
from nfflowd.formats.uptime import host_boot_ms
from nfflowd.lab.nfcapd import Nfcapd, free_udp_port, parse_nfdump_line
from nfflowd.messages import FlowRecord
from tests.addresses import a, txt
from tests.flow_records import flow
from tests.needs import needs
from tests.tshark_cflow import abs_ms, data_records, tshark_packets

DATA = Path(__file__).parent.parent / "data"
DAY = 86_400_000
FORMATS = ["v9", "ipfix"]
#: nfdump output with the NAT, direction, end-reason and interface fields, the VRF ids
#: and the (NSEL) connection id.
NFDUMP_FMT = (
    "fmt:%ts|%te|%pr|%sa|%da|%sp|%dp|%pkt|%byt|%xsa|%xda|%xsp|%xdp|%dir|%end|%in|%out"
    "|%ivrf|%evrf|%nfc"
)
Encoder = netflow_v9.V9Encoder | ipfix.IpfixEncoder


def make_encoder(fmt: str, **kw: Any) -> Encoder:
    if fmt == "v9":
        return netflow_v9.V9Encoder(boot_ms=host_boot_ms(), **kw)
    return ipfix.IpfixEncoder(**kw)


def unpacker(fmt: str) -> Callable[..., tuple[Any, list[dict[str, Any]]]]:
    return netflow_v9.unpack_datagram if fmt == "v9" else ipfix.unpack_datagram


def triplet(
    first: int,
    last: int,
    proto: int,
    o: tuple[str, str, int, int],
    r: tuple[str, str, int, int],
    counts: tuple[int, int, int, int],
    end: int = 3,
    ct: int = 0,
    zone: int = 0,
) -> list[FlowRecord]:
    """The records correlate.py makes of orig tuple ``o`` and reply tuple ``r`` (conntrack
    id ``ct``, zone ``zone``)."""
    (os_, od, osp, odp), (rs, rd, rsp, rdp), (opk, oby, rpk, rby) = o, r, counts
    out = [flow(first, last, proto, os_, od, osp, odp, opk, oby, rd, rs, rdp, rsp, 1, end, ct)]
    if (os_, od, osp, odp) != (rd, rs, rdp, rsp):
        out.append(
            flow(first, last, proto, rd, rs, rdp, rsp, opk, oby, rd, rs, rdp, rsp, 2, end, ct)
        )
    out.append(flow(first, last, proto, rs, rd, rsp, rdp, rpk, rby, od, os_, odp, osp, 3, end, ct))
    return [x._replace(zone=zone) for x in out]


def live_records(now: int) -> list[FlowRecord]:
    pub = "198.51.100.7"
    recs = [
        *triplet(
            now - 5123,
            now - 17,
            6,
            ("10.1.0.5", "203.0.113.9", 51000, 443),
            ("203.0.113.9", pub, 443, 61000),
            (12, 4800, 9, 12000),
            ct=2**32 - 1,  # the largest conntrack id and zone
            zone=65535,
        ),
        *triplet(
            now - 2000,
            now - 1999,
            17,
            ("203.0.113.20", pub, 5353, 53),
            ("10.1.0.53", "203.0.113.20", 5300, 5353),
            (1, 61, 1, 120),
            end=1,
            ct=1,
            zone=3,
        ),
        *triplet(
            now - 3000,
            now - 1000,
            1,
            ("10.1.0.6", "203.0.113.1", 0, 0x0800),
            ("203.0.113.1", pub, 0, 0),
            (3, 252, 3, 252),
            end=2,
            ct=123456789,
        ),
        flow(
            now - 900,
            now - 899,
            1,
            "203.0.113.66",
            "10.1.0.6",
            0,
            0x0303,
            1,
            576,
            "203.0.113.66",
            "10.1.0.6",
            0,
            0x0303,
            3,
            end=4,
        ),
        *triplet(
            now - 500,
            now - 400,
            58,
            ("fd00::10", "2001:db8::1", 0, 0x8000),
            ("2001:db8::1", "fd00::10", 0, 0x8100),
            (4, 416, 4, 416),
        ),
        *triplet(
            now - 800,
            now - 300,
            17,
            ("fd00::10", "2001:db8::53", 40000, 53),
            ("2001:db8::53", "2001:db8:ff::10", 53, 40000),
            (1, 80, 1, 200),
            end=5,
            ct=40000,
            zone=1,
        ),
        *triplet(
            now - 70 * DAY,
            now - 69 * DAY + 7,
            132,
            ("10.1.0.11", "203.0.113.83", 3868, 3868),
            ("203.0.113.83", pub, 3868, 3868),
            (2**40 + 3, 2**50 + 7, 5, 500),
            end=2,
        ),
        *triplet(
            now - 60_000,
            now - 10,
            47,
            ("10.1.0.12", "203.0.113.84", 0, 0),
            ("203.0.113.84", pub, 0, 0),
            (2**32 + 5, 3 * 2**32, 2**63, 2**64 - 1),
        ),
    ]
    for i in range(60):  # several datagrams, families interleaved; ids 5000-5059, zones 0-2
        if i % 5 == 4:
            recs.append(
                flow(
                    now - 1000 - i,
                    now - i,
                    6,
                    f"fd00::2:{i:x}",
                    "2001:db8::200",
                    20000 + i,
                    443,
                    i + 1,
                    100 * i,
                    "2001:db8:ff::2",
                    "2001:db8::200",
                    30000 + i,
                    443,
                    1,
                    ct=5000 + i,
                )._replace(zone=i % 3)
            )
        else:
            recs.append(
                flow(
                    now - 1000 - i,
                    now - i,
                    17,
                    f"10.2.0.{i + 1}",
                    "203.0.113.200",
                    20000 + i,
                    443,
                    i + 1,
                    100 * i,
                    pub,
                    "203.0.113.200",
                    30000 + i,
                    443,
                    1,
                    ct=5000 + i,
                )._replace(zone=i % 3)
            )
    return recs


def encodable(r: FlowRecord) -> bool:
    n = {4: 4, 6: 16}.get(r.family)
    return n is not None and len(r.src) == len(r.post_src) == n and r.sport <= 0xFFFF


@pytest.fixture(scope="module", params=FORMATS)
def live(request: pytest.FixtureRequest) -> tuple[str, list[FlowRecord], list[bytes]]:
    fmt: str = request.param
    now_ns = time.time_ns()
    recs = live_records(now_ns // 1_000_000)
    enc = make_encoder(fmt, mtu=1400, template_refresh_packets=2)
    dgs = enc.encode(recs, now_ns)
    assert len(dgs) >= 4 and enc.invalid == 0
    return fmt, recs, dgs


def golden() -> list[tuple[str, str, list[FlowRecord], list[bytes]]]:
    out = []
    for fmt in FORMATS:
        for path in sorted((DATA / fmt).glob("*.json")):
            case = json.loads(path.read_text())
            recs, dgs = [], []
            for batch in case["batches"]:
                for row in batch["records"]:
                    row = {**row, **{k: a(row[k]) for k in ("src", "dst", "post_src", "post_dst")}}
                    recs.append(FlowRecord(**row))
                dgs += [bytes.fromhex(x) for x in batch["datagrams"]]
            out.append((fmt, path.stem, [r for r in recs if encodable(r)], dgs))
    assert len(out) >= 4
    return out


# -- 1. nfdump ---------------------------------------------------------------------------


def nfdump_expected(fmt: str, r: FlowRecord) -> tuple[Any, ...]:
    icmp = r.proto in (1, 58)
    end = r.end_reason if fmt == "ipfix" else 0  # nfdump 1.7's v9 table lacks IE 136
    return (
        txt(r.src),
        txt(r.dst),
        0 if icmp else r.sport,
        r.dport,
        r.proto,
        r.packets,
        r.octets,
        r.first_ms,
        r.last_ms,
        txt(r.post_src),
        txt(r.post_dst),
        r.post_sport,
        r.post_dport,
        "E" if r.direction == 2 else "I",
        end,
        0,
        0,
        r.zone,  # ingressVRFID
        r.zone,  # egressVRFID
        0,  # flowId: IPFIX has it, nfdump 1.7's IPFIX table not; v9 leaves it out
    )


def nfdump_rows(cap: Nfcapd) -> list[tuple[Any, ...]]:
    rows = []
    for cols in cap.rows(NFDUMP_FMT):
        b = parse_nfdump_line("|".join(cols[:9]))
        rows.append(
            (
                b["src"],
                b["dst"],
                b["sport"],
                b["dport"],
                b["proto"],
                b["packets"],
                b["bytes"],
                b["first_ms"],
                b["last_ms"],
                cols[9],
                cols[10],
                int(cols[11]),
                int(cols[12]),
                cols[13],
                int(cols[14]),
                int(cols[15]),
                int(cols[16]),
                int(cols[17]),
                int(cols[18]),
                int(cols[19]),
            )
        )
    return rows


def check_nfdump(fmt: str, recs: list[FlowRecord], dgs: list[bytes]) -> None:
    with Nfcapd() as cap:
        cap.send(dgs)
        rows = nfdump_rows(cap)
        stats = cap.stats()
    want = [nfdump_expected(fmt, r) for r in recs]
    if fmt == "ipfix":  # nfdump 1.7's IPFIX table lacks postNAT*IPv6Address (281/282)
        want = [(*w[:9], "0.0.0.0", "0.0.0.0", *w[11:]) if ":" in w[0] else w for w in want]
    assert sorted(rows, key=repr) == sorted(want, key=repr)
    assert stats["Sequence failures"] == 0


@needs("nfcapd", "nfdump")
@pytest.mark.timeout(120)
def test_nfdump_decodes_every_field(live: tuple[str, list[FlowRecord], list[bytes]]) -> None:
    fmt, recs, dgs = live
    check_nfdump(fmt, recs, dgs)


@needs("nfcapd", "nfdump")
@pytest.mark.timeout(120)
def test_nfdump_decodes_golden_datagrams() -> None:
    for fmt, _name, recs, dgs in golden():
        check_nfdump(fmt, recs, dgs)


# -- 2. tshark ---------------------------------------------------------------------------------


def tshark_expected(fmt: str, r: FlowRecord) -> dict[str, Any]:
    v6 = "v6" if r.family == 6 else ""
    icmp = r.dport if r.proto in (1, 58) else 0
    out = {
        f"cflow.srcaddr{v6}": txt(r.src),
        f"cflow.dstaddr{v6}": txt(r.dst),
        "cflow.srcport": str(0 if r.proto in (1, 58) else r.sport),
        "cflow.dstport": str(r.dport),
        "cflow.protocol": str(r.proto),
        "cflow.direction": str(1 if r.direction == 2 else 0),
        "cflow.flow_end_reason": str(r.end_reason),
        "cflow.packets": str(r.packets),
        "cflow.octets": str(r.octets),
        "start": r.first_ms,
        "end": r.last_ms,
        "cflow.inputint": "0",
        "cflow.outputint": "0",
        "cflow.post_naptsource_transport_port": str(r.post_sport),
        "cflow.post_naptdestination_transport_port": str(r.post_dport),
        **({"cflow.flow_id": str(r.ct_id)} if fmt == "ipfix" else {}),  # v9: left out
        "cflow.ingress_vrfid": str(r.zone),
        "cflow.egress_vrfid": str(r.zone),
    }
    if r.family == 4:
        out["cflow.post_natsource_ipv4_address"] = txt(r.post_src)
        out["cflow.post_natdestination_ipv4_address"] = txt(r.post_dst)
    else:
        out["cflow.post_nat_source_ipv6_address"] = txt(r.post_src)
        out["cflow.post_nat_destination_ipv6_address"] = txt(r.post_dst)
    if r.family == 6 and fmt == "ipfix":
        out["cflow.icmp_ipv6_type"] = str(icmp >> 8)
        out["cflow.icmp_ipv6_code"] = str(icmp & 0xFF)
    else:  # v9 carries ICMPv6 in ICMP_TYPE (32) too
        out["cflow.icmp_type_code_ipv4"] = f"0x{icmp:04x}"
    return out


def check_tshark(fmt: str, recs: list[FlowRecord], dgs: list[bytes], tmp_path: Path) -> None:
    packets = tshark_packets(dgs, tmp_path)
    assert len(packets) == len(dgs)
    got = []
    templates: dict[Any, Any] = {}
    for layer, d in zip(packets, dgs, strict=True):
        h, ours = unpacker(fmt)(d, templates)
        assert layer["cflow.version"] == str(h.version)
        assert layer["cflow.sequence"] == str(h.sequence)
        if fmt == "v9":
            assert (layer["cflow.count"], layer["cflow.source_id"]) == (
                str(h.count),
                str(h.source_id),
            )
            assert layer["cflow.timestamp_tree"]["cflow.unix_secs"] == str(h.unix_secs)
            assert Decimal(layer["cflow.sysuptime"]) * 1000 == h.sys_uptime
        else:
            assert layer["cflow.len"] == str(h.length)
            assert layer["cflow.od_id"] == str(h.observation_domain)
            assert layer["cflow.timestamp_tree"]["cflow.exporttime"] == str(h.export_time)
        flows = data_records(layer)
        assert len(flows) == len(ours)
        for f in flows:
            times = f.pop("cflow.timedelta_tree")
            f.pop("cflow.timedelta")
            f["start"] = abs_ms(times["cflow.abstimestart"])
            f["end"] = abs_ms(times["cflow.abstimeend"])
            got.append(f)
    assert got == [tshark_expected(fmt, r) for r in recs]


@needs("tshark")
def test_tshark_reads_every_field(
    live: tuple[str, list[FlowRecord], list[bytes]], tmp_path: Path
) -> None:
    fmt, recs, dgs = live
    check_tshark(fmt, recs, dgs, tmp_path)


@needs("tshark")
def test_tshark_reads_golden_datagrams(tmp_path: Path) -> None:
    for fmt, _name, recs, dgs in golden():
        check_tshark(fmt, recs, dgs, tmp_path)


def test_netflow_package_reads_ipfix() -> None:
    """A third decoder, for IPFIX (its v9 table lacks 136 and 153)."""
    now_ns = time.time_ns()
    recs = live_records(now_ns // 1_000_000)
    dgs = ipfix.IpfixEncoder(mtu=1400).encode(recs, now_ns)
    templates: dict[Any, Any] = {}
    got = []
    for d in dgs:
        pkt = IPFIXExportPacket(d, templates)
        got += [f.data for f in pkt.flows]
    want = []
    for r in recs:
        fields = ies.FLOW_FIELDS_V4 if r.family == 4 else ies.FLOW_FIELDS_V6
        row = dict(zip((ie.name for ie in fields), ies.flow_values(r), strict=True))
        want.append(
            {k: int.from_bytes(v, "big") if isinstance(v, bytes) else v for k, v in row.items()}
        )
    assert got == want


# -- 3. template refresh after a collector restart -----------------------------------------------


@needs("nfcapd", "nfdump")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("trigger", ["packets", "seconds"])
def test_restarted_collector_decodes_after_refresh(fmt: str, trigger: str) -> None:
    refresh = 5
    if trigger == "packets":
        enc = make_encoder(fmt, template_refresh_packets=refresh, template_refresh_seconds=0)
    else:
        enc = make_encoder(fmt, template_refresh_packets=0, template_refresh_seconds=2.0)
    now_ns = time.time_ns()
    now = now_ns // 1_000_000

    def datagram(i: int) -> bytes:
        """One datagram with one flow whose source port is ``i``, sent 0.5 s * i later."""
        r = flow(
            now - 100,
            now,
            17,
            "10.9.0.1",
            "203.0.113.9",
            1000 + i,
            53,
            1,
            60,
            "198.51.100.7",
            "203.0.113.9",
            2000 + i,
            53,
            1,
        )
        (d,) = enc.encode([r], now_ns + i * 500_000_000)
        return d

    port = free_udp_port()
    with Nfcapd(port=port) as first:
        first.send([datagram(i) for i in range(7)])
        before = [r["sport"] for r in first.records()]
    assert before == [1000 + i for i in range(7)]
    with Nfcapd(port=port) as second:  # the collector restarted: it knows no template
        sent = [datagram(i) for i in range(7, 20)]
        second.send(sent)
        after = [r["sport"] for r in second.records()]
    has_templates = [
        struct.unpack_from("!H", d, 20 if fmt == "v9" else 16)[0] in (0, 2) for d in sent
    ]
    first_refresh = 7 + has_templates.index(True)
    assert after == [1000 + i for i in range(first_refresh, 20)]
    # bounded loss: packets -> fewer than `refresh` datagrams; seconds -> under 2 s of them
    lost = first_refresh - 7
    assert 1 <= lost <= (refresh - 1 if trigger == "packets" else 3)
