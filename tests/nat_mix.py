"""The connection mix the NAT-event tests encode, and the encoders they encode it with.

:func:`mix` holds SNAT, DNAT, both at once, NAT66, an ICMP SNAT and two
connections without NAT; the unit tests (tests/unit/test_nat_events.py) read it
back with our decoders, the integration tests (test_nat_events_decoders.py) with
nfdump and tshark.
"""

from __future__ import annotations

from typing import Any

from nfflowd.formats import ipfix, netflow_v9
from nfflowd.formats.ipfix_ies import Templates
from nfflowd.messages import FlowRecord
from tests.flow_records import BOOT, NOW, flow

#: The firewall's public address (the SNAT source, the DNAT destination).
PUB = "198.51.100.7"
#: natEvent (create, delete) by nat_event_numbering, as the IANA registry numbers them
PAIRS = {1: (1, 2), 4: (4, 5)}
Encoder = netflow_v9.V9Encoder | ipfix.IpfixEncoder


def encoder(fmt: str, **kw: Any) -> Encoder:
    """A v9 encoder (host booted at BOOT) or an IPFIX one."""
    if fmt == "v9":
        return netflow_v9.V9Encoder(boot_ms=BOOT, **kw)
    return ipfix.IpfixEncoder(**kw)


def snat(first: int, last: int, i: int, end: int = 3, ct: int = 0) -> list[FlowRecord]:
    """The three records of a source-NATed TCP connection number ``i``."""
    src, dst, port, nat_port = f"10.1.{i >> 8}.{i & 255}", "203.0.113.9", 20000 + i, 40000 + i
    return [
        flow(first, last, 6, src, dst, port, 443, 3, 300, PUB, dst, nat_port, 443, 1, end, ct),
        flow(first, last, 6, PUB, dst, nat_port, 443, 3, 300, PUB, dst, nat_port, 443, 2, end, ct),
        flow(first, last, 6, dst, PUB, 443, nat_port, 3, 300, dst, src, 443, port, 3, end, ct),
    ]


def mix() -> list[FlowRecord]:
    """SNAT, DNAT, both, NAT66, ICMP SNAT and two connections without NAT (conntrack ids
    11-17; the DNAT in zone 3, the NAT66 in zone 65535, the rest in zone 0)."""
    return [
        *snat(NOW - 5000, NOW - 10, 1, ct=11),
        flow(
            NOW - 4000,
            NOW - 3000,
            17,
            "203.0.113.20",
            PUB,
            5353,
            53,
            3,
            300,
            "203.0.113.20",
            "10.1.0.53",
            5353,
            5300,
            ct=12,
        )._replace(zone=3),  # DNAT, in conntrack zone 3
        flow(
            NOW - 3500,
            NOW - 3400,
            6,
            "10.1.0.7",
            "198.51.100.80",
            1234,
            8080,
            3,
            300,
            PUB,
            "10.2.0.80",
            40007,
            80,
            ct=13,
        ),  # both
        flow(
            NOW - 800,
            NOW - 300,
            17,
            "fd00::10",
            "2001:db8::53",
            40000,
            53,
            3,
            300,
            "2001:db8:ff::10",
            "2001:db8::53",
            40000,
            53,
            ct=14,
        )._replace(zone=65535),  # NAT66, in the largest conntrack zone
        flow(
            NOW - 3000,
            NOW - 1000,
            1,
            "10.1.0.6",
            "203.0.113.1",
            0,
            0x0800,
            3,
            300,
            PUB,
            "203.0.113.1",
            0,
            0x0800,
            ct=15,
        ),  # ICMP echo
        flow(
            NOW - 900,
            NOW - 100,
            6,
            "10.1.0.3",
            "203.0.113.2",
            40100,
            22,
            3,
            300,
            "10.1.0.3",
            "203.0.113.2",
            40100,
            22,
            ct=16,
        ),  # no NAT
        flow(
            NOW - 900,
            NOW - 100,
            6,
            "fd00::3",
            "2001:db8::2",
            40100,
            22,
            3,
            300,
            "fd00::3",
            "2001:db8::2",
            40100,
            22,
            ct=17,
        ),  # no NAT, IPv6
    ]


def decode_all_records(
    fmt: str, datagrams: list[bytes], templates: Templates
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(flow records, NAT event records) of *datagrams*, decoded by our decoders with
    *templates* carried over."""
    unpack = netflow_v9.unpack_datagram if fmt == "v9" else ipfix.unpack_datagram
    got = [r for d in datagrams for r in unpack(d, templates)[1]]
    return [r for r in got if "natEvent" not in r], [r for r in got if "natEvent" in r]
