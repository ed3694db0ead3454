"""NAT event records (templates 258/259) as independent decoders read them.

1. nfdump: nfcapd collects over loopback UDP, ``nfdump -r FILE -o json`` gives each
   event's natEvent (``nat_event_id``), its time (``t_event``, to the ms), protocol,
   pre-NAT addresses and ports and the translated ones (``*_xlt_*``), the conntrack
   zone (``ingress_vrf``); no sequence failures (v9 counts packets, IPFIX data
   records, events included).  Known nfdump 1.7 gaps, asserted as such: its IPFIX
   table has no postNAT*IPv6Address (281/282) and no flowId (148: no
   ``connect_id``), and from v9 it shows an ICMP event's type/code as 0/0 (the event
   template has no ICMP_TYPE element; the translated ports still say ``0`` /
   ``type*256+code``).  v9 sends no flowId (nfdump would take it for an NSEL
   connection id and lose the natEvent: see nfflowd.formats.nat_events).
2. tshark's cflow dissector, from a pcap written here: every field of every event
   record (flowId = the conntrack id in IPFIX; ingressVRFID = the zone), the
   headers' sequence numbers.

Both formats with both numberings (1/2 and RFC 8158's 4/5), and the golden
datagrams of tests/data/nat_events.

3. The export stage's Exporter sends them to the collectors configured with
   ``nat_events``, and only to those; ``records per_direction`` (the default: no
   flow record of the original direction as it left) changes no event.

Outside CI each test skips when its program is missing; under ``CI=true`` a
missing program fails.
"""

from __future__ import annotations

import calendar
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from nfflowd.config import Collector, ExportSettings
from nfflowd.formats import ipfix, netflow_v9
from nfflowd.lab.nfcapd import Nfcapd
from nfflowd.messages import FlowRecord, pack_flows
from nfflowd.outputs.exporter import Exporter
from tests.addresses import txt
from tests.flow_records import NOW_NS
from tests.nat_mix import PAIRS, encoder, mix
from tests.needs import needs
from tests.tshark_cflow import abs_ms, tshark_packets

GOLDEN = Path(__file__).parent.parent / "data" / "nat_events"
CASES = [("v9", 1), ("v9", 4), ("ipfix", 1), ("ipfix", 4)]
#: One event as compared here: time ms, natEvent, protocol, pre-NAT source, destination,
#: ports, post-NAT source, destination, ports (addresses as text), flowId (the conntrack
#: id; None: not decoded), ingressVRFID (the conntrack zone).
Event = tuple[int, int, int, str, str, int, int, str | None, str | None, int, int, int | None, int]


def events_of(records: list[FlowRecord], numbering: int, fmt: str) -> list[Event]:
    """What the NAT events of ``records`` must say (ORIGINAL_IN records NAT changed); v9
    sends no flowId."""
    create, delete = PAIRS[numbering]
    out: list[Event] = []
    for r in records:
        pre = (txt(r.src), txt(r.dst), r.sport, r.dport)
        post = (txt(r.post_src), txt(r.post_dst), r.post_sport, r.post_dport)
        if r.direction != 1 or pre == post:
            continue
        ctx = (r.ct_id if fmt == "ipfix" else None, r.zone)
        out.append((r.first_ms, create, r.proto, *pre, *post, *ctx))
        out.append((r.last_ms, delete, r.proto, *pre, *post, *ctx))
    return out


def golden_cases() -> list[tuple[str, str, list[bytes], list[Event]]]:
    out = []
    for path in sorted(GOLDEN.glob("*.json")):
        case = json.loads(path.read_text())
        create, delete = PAIRS[case["encoder"]["nat_event_numbering"]]
        dgs, want = [], []
        for batch in case["batches"]:
            dgs += [bytes.fromhex(x) for x in batch["datagrams"]]
            for e in batch["events"]:
                kind = create if e["event"] == "create" else delete
                want.append(
                    (
                        e["time_ms"],
                        kind,
                        e["proto"],
                        e["src"],
                        e["dst"],
                        e["sport"],
                        e["dport"],
                        e["post_src"],
                        e["post_dst"],
                        e["post_sport"],
                        e["post_dport"],
                        e["ct_id"] if case["format"] == "ipfix" else None,
                        e["zone"],
                    )
                )
        out.append((case["format"], path.stem, dgs, want))
    assert {fmt for fmt, *_ in out} == {"v9", "ipfix"}
    return out


def live(fmt: str, numbering: int) -> tuple[list[bytes], list[Event], int]:
    """Datagrams of the connection mix (tests/nat_mix.py), its events, and its flow count."""
    recs = mix()
    enc = encoder(
        fmt, mtu=600, template_refresh_packets=3, nat_events=True, nat_event_numbering=numbering
    )
    dgs = enc.encode(recs, NOW_NS)
    assert len(dgs) > 1 and enc.invalid == 0
    return dgs, events_of(recs, numbering, fmt), len(recs)


# -- 1. nfdump ---------------------------------------------------------------------------------


def nfdump_ms(text: str) -> int:
    """nfdump 1.7's JSON time 'YYYY-mm-ddTHH:MM:SS.ms' (UTC; the ms are not zero-padded)."""
    stamp, ms = text.split(".")
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) * 1000 + int(ms)


def nfdump_json(cap: Nfcapd) -> list[dict[str, Any]]:
    """Every record nfcapd stored, as ``nfdump -r FILE -o json`` prints it."""
    cap.stop()
    out: list[dict[str, Any]] = []
    for path in cap.files():
        res = subprocess.run(
            ["nfdump", "-r", str(path), "-o", "json"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
            env=dict(os.environ, TZ="UTC", LC_ALL="C"),
        )
        if res.stdout.lstrip().startswith("["):
            out += json.loads(res.stdout)
    return out


def nfdump_event(fmt: str, r: dict[str, Any]) -> Event:
    v = "6" if "src6_addr" in r else "4"
    if r["proto"] in (1, 58):
        ports = (0, r["icmp_type"] << 8 | r["icmp_code"])
    else:
        ports = (r["src_port"], r["dst_port"])
    return (
        nfdump_ms(r["t_event"]),
        int(r["nat_event_id"]),
        r["proto"],
        r[f"src{v}_addr"],
        r[f"dst{v}_addr"],
        *ports,
        r.get(f"src{v}_xlt_ip"),
        r.get(f"dst{v}_xlt_ip"),
        int(r["src_xlt_port"]),
        int(r["dst_xlt_port"]),
        int(r["connect_id"]) if "connect_id" in r else None,
        int(r["ingress_vrf"]),
    )


def nfdump_view(fmt: str, e: Event) -> Event:
    """``e`` as nfdump 1.7 shows it (its known gaps, see the module docstring)."""
    e = (*e[:11], None, e[12])  # no flowId: not in its IPFIX table, not sent in v9
    if fmt == "ipfix" and ":" in e[3]:
        e = (*e[:7], None, None, *e[9:])
    if fmt == "v9" and e[2] in (1, 58):
        e = (*e[:6], 0, *e[7:])
    return e


def check_nfdump(fmt: str, dgs: list[bytes], want: list[Event], flows: int) -> None:
    with Nfcapd() as cap:
        cap.send(dgs)
        rows = nfdump_json(cap)
        stats = cap.stats()
    got = [nfdump_event(fmt, r) for r in rows if "nat_event_id" in r]
    assert sorted(got) == sorted(nfdump_view(fmt, e) for e in want)
    assert len(rows) - len(got) == flows
    assert stats["Sequence failures"] == 0


@needs("nfcapd", "nfdump")
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("fmt", "numbering"), CASES)
def test_nfdump_reads_nat_events(fmt: str, numbering: int) -> None:
    dgs, want, flows = live(fmt, numbering)
    assert {e[1] for e in want} == set(PAIRS[numbering])
    check_nfdump(fmt, dgs, want, flows)


@needs("nfcapd", "nfdump")
@pytest.mark.timeout(180)
def test_nfdump_reads_golden_nat_events() -> None:
    for fmt, name, dgs, want in golden_cases():
        case = json.loads((GOLDEN / f"{name}.json").read_text())
        check_nfdump(fmt, dgs, want, case["counters"]["records"] - case["nat_events"])


# -- 2. tshark ---------------------------------------------------------------------------------


#: tshark's names of the post-NAT addresses, by family suffix
TSHARK_POST = {
    "": ("cflow.post_natsource_ipv4_address", "cflow.post_natdestination_ipv4_address"),
    "v6": ("cflow.post_nat_source_ipv6_address", "cflow.post_nat_destination_ipv6_address"),
}


def tshark_event(f: dict[str, Any]) -> Event:
    v = "v6" if "cflow.srcaddrv6" in f else ""
    post = TSHARK_POST[v]
    return (
        abs_ms(f["cflow.observation_time_milliseconds"]),
        int(f["cflow.nat_event"]),
        int(f["cflow.protocol"]),
        f[f"cflow.srcaddr{v}"],
        f[f"cflow.dstaddr{v}"],
        int(f["cflow.srcport"]),
        int(f["cflow.dstport"]),
        f[post[0]],
        f[post[1]],
        int(f["cflow.post_naptsource_transport_port"]),
        int(f["cflow.post_naptdestination_transport_port"]),
        int(f["cflow.flow_id"]) if "cflow.flow_id" in f else None,
        int(f["cflow.ingress_vrfid"]),
    )


def check_tshark(fmt: str, dgs: list[bytes], want: list[Event], tmp_path: Path) -> None:
    packets = tshark_packets(dgs, tmp_path)
    assert len(packets) == len(dgs)
    unpack = netflow_v9.unpack_datagram if fmt == "v9" else ipfix.unpack_datagram
    templates: dict[Any, Any] = {}
    got = []
    for layer, d in zip(packets, dgs, strict=True):
        h, _ = unpack(d, templates)
        assert layer["cflow.sequence"] == str(h.sequence)
        for key, fset in layer.items():
            if key.startswith(("Set ", "FlowSet ")) and fset["cflow.flowset_id"] in ("258", "259"):
                got += [tshark_event(v) for k, v in fset.items() if k.startswith("Flow ")]
    assert got == want


@needs("tshark")
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("fmt", "numbering"), CASES)
def test_tshark_reads_nat_events(fmt: str, numbering: int, tmp_path: Path) -> None:
    dgs, want, _ = live(fmt, numbering)
    check_tshark(fmt, dgs, want, tmp_path)


@needs("tshark")
@pytest.mark.timeout(120)
def test_tshark_reads_golden_nat_events(tmp_path: Path) -> None:
    for fmt, _name, dgs, want in golden_cases():
        check_tshark(fmt, dgs, want, tmp_path)


# -- 3. the export stage -----------------------------------------------------------------------


@needs("nfcapd", "nfdump")
@pytest.mark.timeout(180)
def test_export_stage_sends_nat_events_only_where_configured() -> None:
    """The export stage's Exporter (nfflowd.outputs.exporter), three collectors over
    loopback: v9 with 1/2, IPFIX with RFC 8158's 4/5, IPFIX without nat_events (flows only)."""
    recs = mix()
    with Nfcapd() as v9, Nfcapd() as fx4, Nfcapd() as plain:
        exp = ExportSettings(
            collectors=(
                Collector("127.0.0.1", v9.port, 9, nat_events=True, nat_event_numbering=1),
                Collector("127.0.0.1", fx4.port, 10, nat_events=True, nat_event_numbering=4),
                Collector("127.0.0.1", plain.port, 10),
            )
        )
        exporter = Exporter(exp)
        try:
            exporter.handle(pack_flows(recs[:5]))
            exporter.handle(pack_flows(recs[5:]))
            counters = exporter.counters()
        finally:
            for _, coll in exporter.targets:
                coll.close()
        got = [[r for r in nfdump_json(cap) if "nat_event_id" in r] for cap in (v9, fx4, plain)]
    assert [nfdump_event("v9", r) for r in got[0]] == [
        nfdump_view("v9", e) for e in events_of(recs, 1, "v9")
    ]
    assert [nfdump_event("ipfix", r) for r in got[1]] == [
        nfdump_view("ipfix", e) for e in events_of(recs, 4, "ipfix")
    ]
    assert got[2] == []
    left_out = sum(r.direction == 2 for r in recs)  # the SNAT connection's ORIGINAL_OUT
    assert [counters[f"c{i}_left_out"] for i in range(3)] == [left_out] * 3 == [1] * 3
    flows = len(recs) - left_out
    assert counters["c0_records"] == counters["c1_records"] == flows + 10
    assert counters["c2_records"] == flows
