"""Our v5 datagrams as three independent decoders read them.

1. the PyPI ``netflow`` package (every field);
2. tshark's cflow dissector, from a pcap written here (every field);
3. nfdump: nfcapd collects over loopback UDP, ``nfdump -r`` reads back — absolute
   first/last to the millisecond, including a flow that began before the host
   booted, a 7-day-old and a 70-day-old replayed flow, and no sequence failures.

Outside CI each decoder's test skips when its program is missing; under
``CI=true`` a missing program fails.
"""

from __future__ import annotations

import json
import struct
import subprocess
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from netflow.v5 import V5ExportPacket  # type: ignore[import-untyped]

from nfflowd.formats import netflow_v5 as v5
from nfflowd.formats.uptime import host_boot_ms
from nfflowd.lab.nfcapd import Nfcapd, NfcapdError
from nfflowd.messages import FlowRecord
from tests.addresses import a, txt
from tests.flow_records import plain_record as rec
from tests.needs import needs
from tests.pcap_writer import write_pcap

GOLDEN = Path(__file__).parent.parent / "data" / "v5"
DAY = 86_400_000


def live_records(now_ms: int, boot_ms: int) -> list[FlowRecord]:
    out = [
        rec(now_ms - 5123, now_ms - 17, "10.1.0.5", "203.0.113.9", 51000, 443, 12, 4800),
        rec(now_ms - 2000, now_ms - 1999, "10.1.0.5", "203.0.113.53", 40000, 53, 1, 61, proto=17),
        rec(now_ms - 3000, now_ms - 1000, "10.1.0.6", "203.0.113.1", 4660, 0x0800, 3, 252, proto=1),
        rec(boot_ms - 3_600_001, now_ms - 1, "10.1.0.7", "203.0.113.22", 52000, 22, 5000, 900000),
        rec(
            now_ms - 7 * DAY - 3,
            now_ms - 7 * DAY + 999,
            "10.1.0.8",
            "203.0.113.80",
            53000,
            80,
            7,
            700,
        ),
        rec(
            now_ms - 70 * DAY, now_ms - 69 * DAY + 7, "10.1.0.11", "203.0.113.83", 53003, 80, 4, 400
        ),
        rec(
            now_ms - 60_000,
            now_ms - 10,
            "10.1.0.10",
            "203.0.113.82",
            53002,
            80,
            2**32 + 5,
            3 * 2**32,
        ),
        rec(now_ms - 500, now_ms - 400, "fd00::10", "2001:db8::1", 54000, 443, 9, 900),
        rec(now_ms - 120, now_ms, "0.0.0.0", "255.255.255.255", 65535, 0, 0, 0, proto=255),
    ]
    out += [
        rec(
            now_ms - 1000 - i,
            now_ms - i,
            f"10.2.{i // 250}.{i % 250 + 1}",
            "203.0.113.200",
            20000 + i,
            443,
            i + 1,
            100 * (i + 1),
        )
        for i in range(70)
    ]
    return out


def golden_sets() -> list[tuple[str, list[FlowRecord], list[bytes]]]:
    sets = []
    for path in sorted(GOLDEN.glob("*.json")):
        case = json.loads(path.read_text())
        recs = []
        for row in case["records"]:
            for k in ("src", "dst", "post_src", "post_dst"):
                row[k] = a(row[k])
            recs.append(FlowRecord(**row))
        sets.append((path.stem, recs, [bytes.fromhex(x) for x in case["datagrams"]]))
    return sets


@pytest.fixture(scope="module")
def live() -> tuple[list[FlowRecord], list[bytes]]:
    now_ns = time.time_ns()
    boot = host_boot_ms()
    recs = live_records(now_ns // 1_000_000, boot)
    enc = v5.V5Encoder(engine_type=7, engine_id=42, boot_ms=boot, sequence=123)
    dgs = enc.encode(recs, now_ns)
    assert enc.skipped_ipv6 == 1 and enc.split == 3  # 3 * 2**32 octets: 4 records
    return recs, dgs


def expected_flows(recs: list[FlowRecord]) -> dict[tuple[Any, ...], list[int]]:
    """key -> [first_ms, last_ms, packets, octets]: what a collector must report."""
    out: dict[tuple[Any, ...], list[int]] = {}
    for r in recs:
        if r.family == 4:
            sport = 0 if r.proto == 1 else r.sport
            key = (txt(r.src), txt(r.dst), sport, r.dport, r.proto, r.first_ms, r.last_ms)
            out[key] = [r.packets, r.octets]
    return out


def summed(rows: list[tuple[tuple[Any, ...], int, int]]) -> dict[tuple[Any, ...], list[int]]:
    out: dict[tuple[Any, ...], list[int]] = {}
    for key, packets, octets in rows:
        s = out.setdefault(key, [0, 0])
        s[0] += packets
        s[1] += octets
    return out


# -- 1. the netflow package -------------------------------------------------------------


def test_netflow_package_reads_every_field(live: tuple[list[FlowRecord], list[bytes]]) -> None:
    recs, dgs = live
    rows = []
    for d in dgs:
        pkt = V5ExportPacket(d)
        h, ours = v5.unpack_datagram(d)
        ph = pkt.header
        assert (
            ph.version,
            ph.count,
            ph.uptime,
            ph.timestamp,
            ph.timestamp_nano,
            ph.sequence,
            ph.engine_type,
            ph.engine_id,
            ph.sampling_interval,
        ) == tuple(h)
        assert (h.engine_type, h.engine_id) == (7, 42)
        boot = ph.timestamp * 1000 + ph.timestamp_nano // 1_000_000 - ph.uptime
        for f, r in zip(pkt.flows, ours, strict=True):
            assert (
                int.from_bytes(r.srcaddr, "big"),
                int.from_bytes(r.dstaddr, "big"),
                0,
                0,
                0,
                r.dpkts,
                r.doctets,
                r.first,
                r.last,
                r.srcport,
                r.dstport,
                0,
                r.prot,
                0,
                0,
                0,
                0,
                0,
            ) == (
                f.IPV4_SRC_ADDR,
                f.IPV4_DST_ADDR,
                f.NEXT_HOP,
                f.INPUT,
                f.OUTPUT,
                f.IN_PACKETS,
                f.IN_OCTETS,
                f.FIRST_SWITCHED,
                f.LAST_SWITCHED,
                f.SRC_PORT,
                f.DST_PORT,
                f.TCP_FLAGS,
                f.PROTO,
                f.TOS,
                f.SRC_AS,
                f.DST_AS,
                f.SRC_MASK,
                f.DST_MASK,
            )
            key = (
                txt(struct.pack("!I", f.IPV4_SRC_ADDR)),
                txt(struct.pack("!I", f.IPV4_DST_ADDR)),
                f.SRC_PORT,
                f.DST_PORT,
                f.PROTO,
                boot + f.FIRST_SWITCHED,
                boot + f.LAST_SWITCHED,
            )
            rows.append((key, f.IN_PACKETS, f.IN_OCTETS))
    assert summed(rows) == expected_flows(recs)


# -- 2. tshark -------------------------------------------------------------------------------


TSHARK_FIELDS = (
    "cflow.version", "cflow.count", "cflow.sysuptime", "cflow.unix_secs", "cflow.unix_nsecs",
    "cflow.sequence", "cflow.engine_type", "cflow.engine_id", "cflow.srcaddr", "cflow.dstaddr",
    "cflow.nexthop", "cflow.inputint", "cflow.outputint", "cflow.packets", "cflow.octets",
    "cflow.timestart", "cflow.timeend", "cflow.srcport", "cflow.dstport", "cflow.tcpflags",
    "cflow.protocol", "cflow.tos", "cflow.srcas", "cflow.dstas", "cflow.srcmask", "cflow.dstmask",
)  # fmt: skip


def rel_ms(text: str) -> int:
    """tshark's relative time ('279.737000000' seconds) -> ms, exactly."""
    ms = Decimal(text) * 1000
    assert ms == ms.to_integral_value(), text
    return int(ms)


@needs("tshark")
def test_tshark_reads_every_field(
    live: tuple[list[FlowRecord], list[bytes]], tmp_path: Path
) -> None:
    recs, dgs = live
    pcap = tmp_path / "nfb-v5.pcap"
    write_pcap(pcap, dgs, 9995)
    fields = [x for f in TSHARK_FIELDS for x in ("-e", f)]
    res = subprocess.run(
        [
            "tshark",
            "-n",
            "-r",
            str(pcap),
            "-d",
            "udp.port==9995,cflow",
            "-T",
            "fields",
            "-E",
            "separator=/t",
            "-E",
            "aggregator=,",
            *fields,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = res.stdout.splitlines()
    assert len(lines) == len(dgs)
    rows = []
    for line, d in zip(lines, dgs, strict=True):
        col = dict(zip(TSHARK_FIELDS, line.split("\t"), strict=True))
        h, ours = v5.unpack_datagram(d)
        header = [col[f] for f in TSHARK_FIELDS[:8]]
        assert header == [
            str(h.version),
            str(h.count),
            header[2],
            str(h.unix_secs),
            str(h.unix_nsecs),
            str(h.flow_sequence),
            "7",
            "42",
        ]
        assert rel_ms(header[2]) == h.sys_uptime
        per = {f: col[f].split(",") for f in TSHARK_FIELDS[8:]}
        assert all(len(v) == h.count for v in per.values()), per
        boot = h.unix_secs * 1000 + h.unix_nsecs // 1_000_000 - h.sys_uptime
        for i, r in enumerate(ours):
            got = [per[f][i] for f in TSHARK_FIELDS[8:]]
            addrs, nums = got[:3], [int(x, 0) for x in got[3:7] + got[9:]]
            assert addrs == [txt(r.srcaddr), txt(r.dstaddr), "0.0.0.0"]
            assert nums == [
                0,
                0,
                r.dpkts,
                r.doctets,
                r.srcport,
                r.dstport,
                0,
                r.prot,
                0,
                0,
                0,
                0,
                0,
            ]
            assert (rel_ms(got[7]), rel_ms(got[8])) == (r.first, r.last)
            key = (
                got[0],
                got[1],
                int(got[9]),
                int(got[10]),
                int(got[12]),
                boot + rel_ms(got[7]),
                boot + rel_ms(got[8]),
            )
            rows.append((key, int(got[5]), int(got[6])))
    assert summed(rows) == expected_flows(recs)


# -- 3. nfdump ---------------------------------------------------------------------------------


def nfdump_flows(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], list[int]]:
    return summed(
        [
            (
                (
                    r["src"],
                    r["dst"],
                    r["sport"],
                    r["dport"],
                    r["proto"],
                    r["first_ms"],
                    r["last_ms"],
                ),
                r["packets"],
                r["bytes"],
            )
            for r in rows
        ]
    )


@needs("nfcapd", "nfdump")
@pytest.mark.timeout(120)
def test_nfdump_decodes_exact_absolute_times(live: tuple[list[FlowRecord], list[bytes]]) -> None:
    recs, dgs = live
    with Nfcapd() as cap:
        cap.send(dgs)
        rows = cap.records()
        stats = cap.stats()
    assert len(rows) == sum(v5.unpack_datagram(d)[0].count for d in dgs)
    assert nfdump_flows(rows) == expected_flows(recs)
    assert stats["Sequence failures"] == 0
    # the cases the time basis exists for, spelled out
    by_src = {r["src"]: r for r in rows}
    boot = host_boot_ms()
    assert by_src["10.1.0.7"]["first_ms"] == boot - 3_600_001  # began before the host booted
    assert by_src["10.1.0.8"]["last_ms"] == recs[4].last_ms  # 7 days old
    assert by_src["10.1.0.11"]["first_ms"] == recs[5].first_ms  # 70 days old


@needs("nfcapd", "nfdump")
@pytest.mark.timeout(120)
def test_nfdump_decodes_golden_datagrams() -> None:
    sets = golden_sets()
    assert {name for name, _, _ in sets} >= {"seed_triplet", "mixed", "bulk"}
    for _name, recs, dgs in sets:
        with Nfcapd() as cap:
            cap.send(dgs)
            rows = cap.records()
            stats = cap.stats()
        assert nfdump_flows(rows) == expected_flows(recs)
        assert stats["Sequence failures"] == 0


@needs("nfcapd", "nfdump")
@pytest.mark.timeout(120)
def test_harness_sees_a_burst_without_losses() -> None:
    now_ns = time.time_ns()
    now = now_ns // 1_000_000
    recs = [
        rec(now - 50, now - 1, f"10.3.{i // 200}.{i % 200 + 1}", "203.0.113.7", 1024 + i, 80, 1, 40)
        for i in range(3000)
    ]
    dgs = v5.V5Encoder(boot_ms=host_boot_ms()).encode(recs, now_ns)
    with Nfcapd() as cap:
        cap.send(dgs)
        rows = cap.records()
    assert len(rows) == 3000
    assert nfdump_flows(rows) == expected_flows(recs)


@needs("nfcapd", "nfdump")
@pytest.mark.timeout(60)
def test_harness_ipv6_loopback_and_busy_port() -> None:
    now_ns = time.time_ns()
    now = now_ns // 1_000_000
    flow = rec(now - 5, now, "10.0.0.1", "203.0.113.1", 5, 6, 7, 8, proto=17)
    with Nfcapd(host="::1") as cap:
        cap.send(v5.V5Encoder(boot_ms=host_boot_ms()).encode([flow], now_ns))
        assert cap.records() == [
            {
                "src": "10.0.0.1",
                "dst": "203.0.113.1",
                "sport": 5,
                "dport": 6,
                "proto": 17,
                "packets": 7,
                "bytes": 8,
                "first_ms": now - 5,
                "last_ms": now,
            }
        ]
        assert not cap.running
    with Nfcapd() as first:
        busy = Nfcapd(port=first.port)
        with pytest.raises(NfcapdError, match="Address already in use"), busy:
            pass
        assert busy.proc is not None and busy.proc.poll() is not None
        assert not busy.directory.exists()
        assert first.running
