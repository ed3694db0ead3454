"""The golden chain, captured from the real kernel: event -> flow -> packet bytes -> syslog line.

tests/data/golden/lab-events.log was captured with `conntrack -E -o timestamp,id`
in the NAT lab's firewall namespace (see its README.txt).  lab-expected.csv holds
the flow-tools CSV lines it must produce (uptime base 1795714000000 ms, exaddr
127.0.0.1), checked by hand against the README's table of connections and NAT
translations; lab-expected-v5.hex the NetFlow v5 datagram they make.
"""

from __future__ import annotations

from pathlib import Path

import netflow.v5  # type: ignore[import-untyped]

from nfflowd.conntrack.text import parse_line
from nfflowd.correlate.correlator import Correlator
from nfflowd.formats import netflow_v5
from nfflowd.formats.flowtools_csv import format_line
from nfflowd.messages import FlowRecord
from tests.conntrack_events import feed

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden"
BOOT_MS = 1_795_714_000_000
EXPORT_NS = 1_795_714_530_000_000_000  # "now" when the datagram is sent


def records(log: str) -> list[FlowRecord]:
    corr = Correlator()
    out: list[FlowRecord] = []
    for line in (GOLDEN / log).read_text().splitlines():
        ev = parse_line(line)
        if ev is not None:
            feed(corr, ev, out)
    assert corr.open == {}, "every NEW of the capture has its DESTROY"
    return out


def test_events_to_syslog_lines() -> None:
    lines = [format_line(r, exaddr="127.0.0.1", boot_ms=BOOT_MS) for r in records("lab-events.log")]
    assert lines == (GOLDEN / "lab-expected.csv").read_text().splitlines()


def without_times(line: str) -> list[str]:
    fields = line.split(",")
    return [f for i, f in enumerate(fields) if i not in (0, 1, 2, 6, 7)]


def test_extended_capture_gives_the_same_flows() -> None:
    """A second listener with `-o timestamp,extended,id` (its own receive times)."""
    got = [
        format_line(r, exaddr="127.0.0.1", boot_ms=BOOT_MS)
        for r in records("lab-events-extended.log")
    ]
    want = (GOLDEN / "lab-expected.csv").read_text().splitlines()
    assert sorted(map(without_times, got)) == sorted(map(without_times, want))


def test_flows_to_v5_datagram_bytes() -> None:
    enc = netflow_v5.V5Encoder(engine_type=0, engine_id=0, boot_ms=BOOT_MS)
    datagrams = enc.encode(records("lab-events.log"), EXPORT_NS)
    golden = (GOLDEN / "lab-expected-v5.hex").read_text().split()
    assert [d.hex() for d in datagrams] == golden
    assert enc.skipped_ipv6 == 8  # tcp6-snat 3 + icmp6-snat 3 + tcp6-nonat 2: v5 is IPv4 only
    # an independent decoder (the `netflow` package) reads the same 19 IPv4 flows
    packet = netflow.v5.V5ExportPacket(datagrams[0])
    assert packet.header.count == 19 == len(packet.flows)
    first = packet.flows[0].data
    assert (first["IPV4_SRC_ADDR"], first["SRC_PORT"], first["DST_PORT"]) == (
        0x0A000102,
        52361,
        5999,
    )
    assert (first["IN_PACKETS"], first["IN_OCTETS"]) == (1, 228)
