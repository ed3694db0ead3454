"""The export stage with several NetFlow v9 / IPFIX collectors at once, judged by nfdump.

1. ``nfflowd replay`` of the lab's captured conntrack log through the real supervised
   pipeline into a v9 nfcapd, an IPFIX nfcapd and an IPFIX nfcapd with ``records
   triplet`` at the same time, in a namespace of their own (their default socket
   buffers; ``Udp: RcvbufErrors`` there stays 0): the first two store one record per
   direction, every record of tests/data/golden/lab-expected.csv but the original
   direction as it left the firewall (its translation is in the postNAT* fields of
   the original as it arrived), the third every record (IPv6 included, which v5
   cannot carry), all with the NAT translations the golden README promises; the JSON
   mirror has every record.
2. A collector restart in mid-stream, through :class:`Exporter` (workers/export.py)
   with ``template_refresh_packets 2``: while the collectors are down the first
   datagram is refused (counted) and kept, with every later one (``pending``: their
   records are not acknowledged); once the collectors are back the exporter sends
   them, oldest first, at its next retry, and the new collectors decode every
   record from the first held datagram on (it carries templates, as every second
   datagram does): nothing is lost to a local collector's restart.

Needs nfcapd and nfdump, and root for the namespace (test 1).  Outside CI the
tests skip when they are missing; under ``CI=true`` a missing program fails.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from nfflowd.config import Collector, ExportSettings
from nfflowd.conntrack.text import parse_line
from nfflowd.correlate.correlator import Correlator
from nfflowd.formats import json_lines
from nfflowd.lab.nfcapd import CollectorNetns, Nfcapd, free_udp_port, parse_nfdump_line
from nfflowd.messages import Direction, FlowRecord, pack_flows, unpack_flows
from nfflowd.outputs.collector import SENT
from nfflowd.outputs.exporter import Exporter
from tests.needs import needs, needs_root
from tests.pipeline_harness import (
    GOLDEN,
    csv_key,
    export_block,
    nfdump_key,
    replay,
    write_config,
)

# workers/ is installed as nfflowd.workers; mypy checks it as `workers`, not under that name

LOG = GOLDEN / "lab-events.log"
EXPECTED = GOLDEN / "lab-expected.csv"
VERSIONS = {"v9": 9, "ipfix": 10}
#: The firewall's public addresses and the port forward's inside host (golden README).
PUBLIC, FORWARDED_TO = ("203.0.113.1", "2001:db8:1::1"), ("203.0.113.2", "10.0.1.2")
#: nfdump output: the base fields, then the post-NAT fields and the direction.
NFDUMP_FMT = "fmt:%ts|%te|%pr|%sa|%da|%sp|%dp|%pkt|%byt|%xsa|%xda|%xsp|%xdp|%dir"

pytestmark = needs("nfcapd", "nfdump")


def nat_rows(cap: Nfcapd) -> list[tuple[Any, ...]]:
    """(nfdump_key..., post src, post dst, post sport, post dport, direction) per record."""
    rows = []
    for cols in cap.rows(NFDUMP_FMT):
        base = nfdump_key(parse_nfdump_line("|".join(cols[:9])))
        rows.append((*base, cols[9], cols[10], int(cols[11]), int(cols[12]), cols[13]))
    return rows


def golden_nat(fmt: str) -> list[tuple[tuple[str, str, int, int], tuple[Any, ...], str]]:
    """(record, its post-NAT side, direction) for connections of tests/data/golden/README.txt.

    tcp4-snat, tcp4-dnat (the port forward), tcp4-nonat, tcp6-snat (NAT66); ``fmt`` v9,
    ipfix or json.  nfdump 1.7's IPFIX table has no 281/282, so there an IPv6 post-NAT
    address shows as 0.0.0.0.
    """
    c, s, pub, n = "10.0.1.2", "203.0.113.2", "203.0.113.1", "10.0.1.3"
    c6, s6, pub6 = "fd00:1::2", "2001:db8:1::2", "2001:db8:1::1"

    def v6(src: str, dst: str) -> tuple[str, str]:
        return (src, dst) if fmt != "ipfix" else ("0.0.0.0", "0.0.0.0")

    return [
        ((c, s, 42995, 5001), (pub, s, 42995, 5001), "I"),  # SNAT: leaves as the fw
        ((pub, s, 42995, 5001), (pub, s, 42995, 5001), "E"),
        ((s, pub, 5001, 42995), (s, c, 5001, 42995), "I"),  # the reply goes back to c
        ((s, pub, 60689, 8080), (s, c, 60689, 80), "I"),  # DNAT: forwarded to c:80
        ((s, c, 60689, 80), (s, c, 60689, 80), "E"),
        ((c, s, 80, 60689), (pub, s, 8080, 60689), "I"),  # the answer leaves as pub:8080
        ((n, s, 53761, 5001), (n, s, 53761, 5001), "I"),  # no NAT
        ((c6, s6, 33755, 5001), (*v6(pub6, s6), 33755, 5001), "I"),  # NAT66
        ((s6, pub6, 5001, 33755), (*v6(s6, c6), 5001, 33755), "I"),
    ]


def left_the_firewall(key: tuple[Any, ...]) -> bool:
    """Whether the record ``key`` (csv_key / nfdump_key) is a NATed connection's original
    direction as it left the firewall: from the public address (SNAT, NAT66), or the port
    forward's towards its inside host (golden README's table)."""
    src, dst = key[2], key[3]
    return src in PUBLIC or (src, dst) == FORWARDED_TO


@needs_root()
@pytest.mark.timeout(180)
def test_replay_into_v9_and_ipfix_collectors_at_once(tmp_path: Path) -> None:
    rundir = tmp_path / "run"
    with (
        CollectorNetns("nfcx") as ns,
        Nfcapd(host=ns.address, netns=ns.name, port=2055) as v9cap,
        Nfcapd(host=ns.address, netns=ns.name, port=4739) as ipfixcap,
        Nfcapd(host=ns.address, netns=ns.name, port=4740) as tripletcap,
    ):
        collectors = (v9cap.port, 9), (ipfixcap.port, 10), (tripletcap.port, 10, "records triplet")
        export = export_block("127.0.0.1", *collectors, address=ns.address)
        conf = write_config(rundir, export, screen_format="json")
        res = replay(conf, rundir, LOG)
        got = {
            "v9": nat_rows(v9cap),
            "ipfix": nat_rows(ipfixcap),
            "ipfix triplet": nat_rows(tripletcap),
        }
        assert ns.rcvbuf_errors() == 0
    expected = [csv_key(x) for x in EXPECTED.read_text().splitlines() if x.strip()]
    assert len(expected) == 27
    want = Counter(k[:9] for k in expected)
    per_direction = Counter(k[:9] for k in expected if not left_the_firewall(k))
    assert sum(per_direction.values()) == 27 - 8  # 8 NATed connections of 10
    for name, rows in got.items():
        fmt, triplet = name.split()[0], name.endswith("triplet")
        # every record (triplet) or all but the original as it left, IPv4 and IPv6,
        # times to the ms
        assert Counter(r[:9] for r in rows) == (want if triplet else per_direction), name
        assert len(rows) == (27 if triplet else 19), name
        # a few records of the golden README's table, their post-NAT side included
        for (src, dst, sport, dport), post, direction in golden_nat(fmt):
            mine = [r for r in rows if r[2:6] == (src, dst, sport, dport)]
            sent = triplet or direction == "I"
            assert [r[9:] for r in mine] == [(*post, direction)] * sent, (name, src, dst, sport)
    assert "export" in res.stdout
    # the JSON mirror has every record too, and every post-NAT address (281/282 included)
    lines = [json_lines.parse_line(x) for x in (rundir / "mirror.out").read_text().splitlines()]
    assert Counter(nfdump_key(j) for j in lines) == want
    assert {j["exaddr"] for j in lines} == {"127.0.0.1"}
    for (src, dst, sport, dport), post, direction in golden_nat("json"):
        (j,) = [
            j
            for j in lines
            if (j["src"], j["dst"], j["sport"], j["dport"]) == (src, dst, sport, dport)
        ]
        assert (j["post_src"], j["post_dst"], j["post_sport"], j["post_dport"]) == post
        assert (j["direction"] == "original_out") == (direction == "E")


# -- 2. a collector restart in mid-stream -----------------------------------------------------


def golden_records() -> list[FlowRecord]:
    """The flow records of the captured lab log (27: IPv4 and IPv6)."""
    corr = Correlator()
    out = bytearray()
    for line in LOG.read_text().splitlines():
        ev = parse_line(line)
        if ev is not None:
            corr.feed(ev, out)
    return unpack_flows(bytes(out))


def record_key(r: FlowRecord) -> tuple[Any, ...]:
    """A record as nfdump_key() shows it."""
    return (
        r.first_ms,
        r.last_ms,
        str(ipaddress.ip_address(r.src)),
        str(ipaddress.ip_address(r.dst)),
        r.sport,
        r.dport,
        r.proto,
        r.packets,
        r.octets,
    )


def has_templates(fmt: str, datagram: bytes) -> bool:
    """Whether the first set is a template set (v9: flowset id 0 after the 20-byte header,
    RFC 3954 section 5.1; IPFIX: set id 2 after the 16-byte header, RFC 7011 section 3.3)."""
    return bool(struct.unpack_from("!H", datagram, 20 if fmt == "v9" else 16)[0] in (0, 2))


@pytest.mark.timeout(120)
def test_restarted_collectors_decode_again_after_the_template_refresh() -> None:
    # one datagram per record: only records a v9/IPFIX collector is sent (by default
    # records per_direction: not the original direction as it left)
    records = [r for r in golden_records() if r.direction != Direction.ORIGINAL_OUT]
    assert len(records) == 19
    ports = {fmt: free_udp_port() for fmt in VERSIONS}
    settings = ExportSettings(
        collectors=tuple(Collector("127.0.0.1", ports[f], v) for f, v in VERSIONS.items()),
        template_refresh_packets=2,
        template_refresh_seconds=0,
    )
    exporter = Exporter(settings)
    sent: dict[str, list[bytes]] = {fmt: [] for fmt in VERSIONS}  # what the kernel took
    for fmt, (_enc, coll) in zip(VERSIONS, exporter.targets, strict=True):
        real_send = coll.send

        def send(datagram: bytes, fmt: str = fmt, real_send: Any = real_send) -> str:
            result = str(real_send(datagram))
            if result == SENT:
                sent[fmt].append(datagram)
            return result

        coll.send = send  # type: ignore[method-assign]  # this collector's, counting

    def run(batch: list[FlowRecord]) -> None:
        for r in batch:  # one record per call: one datagram per collector
            exporter.handle(pack_flows([r]))

    def delivered() -> None:
        """What the stage's loop does while datagrams are held: wait, flush, until none is."""
        deadline = time.monotonic() + 30
        while exporter.pending():
            assert time.monotonic() < deadline, exporter.counters()
            time.sleep(exporter.wait() or 0.0)
            exporter.flush()

    up, down = 8, 3  # records sent before the restart, and while the collectors are down
    with ExitStack() as stack:
        first = {f: stack.enter_context(Nfcapd(port=p)) for f, p in ports.items()}
        run(records[:up])
        delivered()
        before = {f: [nfdump_key(r) for r in cap.records()] for f, cap in first.items()}
    run(records[up : up + down])  # nobody listens: the first is refused, all are held
    held = exporter.counters()
    assert exporter.pending() == down
    with ExitStack() as stack:
        second = {f: stack.enter_context(Nfcapd(port=p)) for f, p in ports.items()}
        delivered()  # the held datagrams go at the next retry, oldest first
        run(records[up + down :])
        delivered()
        after = {f: [nfdump_key(r) for r in cap.records()] for f, cap in second.items()}

    keys = [record_key(r) for r in records]
    for i, fmt in enumerate(VERSIONS):
        assert before[fmt] == keys[:up], fmt  # the first datagram carries the templates
        assert held[f"c{i}_refused"] >= 1, (fmt, held)
        assert held[f"c{i}_held"] == down, (fmt, held)
        # every datagram reached a collector once, in order; `template_refresh_packets
        # 2`: templates in datagrams 0, 2, 4, ...
        assert len(sent[fmt]) == len(records), fmt
        templates = [has_templates(fmt, d) for d in sent[fmt]]
        assert templates == [i % 2 == 0 for i in range(len(records))], fmt
        assert templates[up], fmt  # the first the new collector gets carries templates
        # so the new collectors decode every record from the first held one on
        assert after[fmt] == keys[up:], fmt
        assert exporter.counters()[f"c{i}_datagrams_sent"] == len(records), fmt
