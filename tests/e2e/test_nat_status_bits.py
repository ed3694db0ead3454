"""The kernel's NAT status bits (CTA_STATUS) as nfflowd decodes them, in the NAT lab.

Every connection of the lab's mix, read straight from a ctnetlink listener and a
table dump in the firewall namespace: the source-NATed ones (masquerade, IPv4 and
NAT66) carry IPS_SRC_NAT, the port forward IPS_DST_NAT, the routed ones neither.
The decoder's tuples already say which NAT happened; these bits are the kernel's
own word for it, checked here against the lab's hand-written expectations.

Needs the lab (root, namespaces, nftables, conntrack); runs whenever CI=true.  The
lab's namespaces get the prefix ``h3x-nat<pid>-`` and are removed on exit.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from nfflowd import lab as labmod
from nfflowd.conntrack.kernel import CtnetlinkListener, dump_table
from nfflowd.messages import (
    IPS_CONFIRMED,
    IPS_DST_NAT,
    IPS_SRC_NAT,
    ConntrackEvent,
    EventType,
)
from tests.addresses import a

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

NAT_BITS = {"snat": IPS_SRC_NAT, "dnat": IPS_DST_NAT, "none": 0}


@pytest.fixture(scope="module")
def lab(lab_ready: None) -> Iterator[labmod.Lab]:
    with labmod.running(f"h3x-nat{os.getpid()}-") as running:
        yield running


def key_of(e: labmod.Expected) -> tuple[int, int, bytes, bytes, int, int]:
    return (e.family, e.proto, a(e.orig_src), a(e.orig_dst), e.orig_sport, e.orig_dport)


def event_key(ev: ConntrackEvent) -> tuple[int, int, bytes, bytes, int, int]:
    return (ev.family, ev.proto, ev.orig_src, ev.orig_dst, ev.orig_sport, ev.orig_dport)


def test_destroy_and_dump_carry_the_nat_status_bits(lab: labmod.Lab) -> None:
    dumped: list[ConntrackEvent] = []
    with CtnetlinkListener(netns=lab.fw) as listener:
        # the table while every connection is alive, then the mix's own end
        expected = labmod.traffic(lab, lambda: dumped.extend(dump_table(lab.fw, timeout=10)))
        assert {e.nat for e in expected} == set(NAT_BITS)  # the mix has all three kinds
        wanted = {key_of(e): e for e in expected}
        labmod.flush(lab)  # every entry left ends now, with a DESTROY
        destroyed: dict[tuple[int, int, bytes, bytes, int, int], ConntrackEvent] = {}
        deadline = time.monotonic() + 20
        while set(wanted) - set(destroyed) and time.monotonic() < deadline:
            for ev in listener.recv_events():
                if ev.type == EventType.DESTROY and event_key(ev) in wanted:
                    destroyed[event_key(ev)] = ev
            time.sleep(0.05)
    missing = sorted(wanted[k].name for k in set(wanted) - set(destroyed))
    assert not missing, f"no DESTROY for {missing}"
    for key, e in wanted.items():
        status = destroyed[key].status
        assert status & IPS_CONFIRMED, (e.name, hex(status))  # CTA_STATUS was decoded at all
        assert status & (IPS_SRC_NAT | IPS_DST_NAT) == NAT_BITS[e.nat], (e.name, e.nat, hex(status))
    # the dump (connections open, before any close) says the same of each it lists
    listed = {event_key(ev): ev for ev in dumped if event_key(ev) in wanted}
    tcp = {k for k, e in wanted.items() if e.proto == 6}
    assert tcp <= set(listed), "a TCP connection of the mix missing from the dump"
    for key, ev in listed.items():
        e = wanted[key]
        assert ev.status & (IPS_SRC_NAT | IPS_DST_NAT) == NAT_BITS[e.nat], (e.name, hex(ev.status))
