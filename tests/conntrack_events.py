"""ConntrackEvents for the correlate and shard tests, written with addresses as text.

:func:`ev` builds an event from its two tuples (the source NAT of the seed's
example in :data:`SNAT_ORIG` / :data:`SNAT_REPLY`); :func:`numbered_event` gives
connection number ``n`` of a run of distinct connections, as the shard tests
spread them (also imported by a subprocess of theirs, so it stays free of pytest).
"""

from __future__ import annotations

from nfflowd.correlate.correlator import Correlator
from nfflowd.messages import ConntrackEvent, FlowRecord, unpack_flows
from tests.addresses import a

#: The seed's example (nfflowd-perl.txt): an HTTP connection through source NAT.
SNAT_ORIG = ("10.0.195.106", "74.125.6.225", 62380, 80)
SNAT_REPLY = ("74.125.6.225", "192.76.7.154", 80, 62380)


def ev(
    etype: int,
    t_s: float,
    orig: tuple[str, str, int, int],
    reply: tuple[str, str, int, int],
    *,
    proto: int = 6,
    counters: tuple[int, int, int, int] | None = (10, 1000, 8, 5000),
    ct_id: int | None = None,
    start_ns: int | None = None,
    stop_ns: int | None = None,
    delta: int | None = None,
) -> ConntrackEvent:
    """An event at ``t_s`` seconds (to the ms) with the tuples (src, dst, sport, dport)
    and counters (orig packets, bytes, reply packets, bytes) or none."""
    fam = 6 if ":" in orig[0] else 4
    c: tuple[int | None, ...] = counters if counters is not None else (None, None, None, None)
    return ConntrackEvent(
        etype,
        round(t_s * 1000) * 1_000_000,
        fam,
        proto,
        a(orig[0]),
        a(orig[1]),
        orig[2],
        orig[3],
        a(reply[0]),
        a(reply[1]),
        reply[2],
        reply[3],
        c[0],
        c[1],
        c[2],
        c[3],
        ct_id,
        start_ns,
        stop_ns,
        delta,
        0,
        0,
        0,
    )


def numbered_event(n: int, ct_id: int | None, etype: int = 1) -> ConntrackEvent:
    """Connection ``n`` (10.0.x.y:1024+n -> 203.0.113.9:443, source-NATed to 203.0.113.1)
    at 10**18 + n ns, without counters."""
    return ConntrackEvent(
        etype,
        10**18 + n,
        4,
        6,
        a(f"10.0.{n // 250}.{n % 250 + 1}"),
        a("203.0.113.9"),
        1024 + n,
        443,
        a("203.0.113.9"),
        a("203.0.113.1"),
        443,
        1024 + n,
        None,
        None,
        None,
        None,
        ct_id,
        None,
        None,
        None,
        0,
        0,
        0,
    )


def feed(corr: Correlator, event: ConntrackEvent, out: list[FlowRecord]) -> None:
    """``corr.feed`` with the records it completes decoded into *out* (the correlator
    itself appends FLOW_RECORD structs to a bytearray)."""
    block = bytearray()
    corr.feed(event, block)
    out.extend(unpack_flows(bytes(block)))
