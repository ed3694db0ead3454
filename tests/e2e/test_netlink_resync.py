"""NetlinkSource (what the ingest stage runs) against the real kernel, in its own namespace.

The listener tests (test_netlink_kernel.py) show that a tiny buffer overflows and
that ENOBUFS is reported; here the source built on it is checked: it counts the
overrun, logs it, dumps the table again, and that dump brings back the connections
still open, with their current counters.  It also passes on the decoder's counters
of attributes it skipped.

Needs root, `ip` and `nft`; runs whenever CI=true.  Traffic stays on the lo of a
namespace created here (prefix ``h3x-rs-``), deleted even when a test fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from nfflowd.config.settings import SourceSettings
from nfflowd.conntrack import netlink as nl
from nfflowd.conntrack.kernel import open_in_netns, run_in_netns
from nfflowd.conntrack.sources import NetlinkSource
from nfflowd.messages import ConntrackEvent, EventType
from tests.addresses import a
from tests.needs import needs, needs_root
from tests.scratch_netns import scratch_netns
from tests.source_events import SourceEvents

pytestmark = [
    pytest.mark.root,
    needs("ip", "nft"),
    needs_root(),
    pytest.mark.timeout(180),
]

BURST = 2000  # one-packet UDP flows; into a 4 KiB buffer (see test_netlink_kernel.py)
TINY = 4096
OPEN = 3  # TCP connections kept open across the overrun
LO = a("127.0.0.1")


@pytest.fixture
def netns() -> Iterator[str]:
    with scratch_netns("h3x-rs") as name:
        yield name


@contextlib.contextmanager
def open_connections(ns: str, n: int) -> Iterator[list[tuple[socket.socket, int, int]]]:
    """``n`` established TCP connections on lo inside ``ns``: (client, its port, server port)."""
    with contextlib.ExitStack() as stack:
        out = []
        for _ in range(n):
            srv = stack.enter_context(open_in_netns(ns, socket.AF_INET, socket.SOCK_STREAM, 0))
            cli = stack.enter_context(open_in_netns(ns, socket.AF_INET, socket.SOCK_STREAM, 0))
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            cli.settimeout(5)
            cli.connect(srv.getsockname())
            conn = stack.enter_context(srv.accept()[0])
            cli.sendall(b"hello")
            assert conn.recv(10) == b"hello"
            out.append((cli, cli.getsockname()[1], srv.getsockname()[1]))
        yield out


def udp_burst(count: int) -> None:
    """``count`` one-packet UDP flows from distinct source ports to a closed port on lo."""
    for i in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 20000 + i))
            s.sendto(b"b", ("127.0.0.1", 9))


def tcp_entries(
    events: list[ConntrackEvent], ports: set[tuple[int, int]]
) -> dict[tuple[int, int], ConntrackEvent]:
    """The NEW (dump) entries of our TCP connections, by (client port, server port)."""
    return {
        (e.orig_sport, e.orig_dport): e
        for e in events
        if e.type == EventType.NEW
        and e.proto == 6
        and e.orig_src == LO
        and (e.orig_sport, e.orig_dport) in ports
    }


def test_overrun_is_counted_logged_and_resynced_by_a_dump(
    netns: str, caplog: pytest.LogCaptureFixture
) -> None:
    # NEW and DESTROY (with the kernel's stamps on, the source would read DESTROY only,
    # where a dump cannot bring anything back: see the test after this one)
    settings = SourceSettings("netlink", netns=netns, rcvbuf=TINY, subscribe="all")
    with open_connections(netns, OPEN) as conns:
        ports = {(sport, dport) for _, sport, dport in conns}
        src = NetlinkSource(settings)
        reader = SourceEvents(src)
        try:
            first = tcp_entries(reader.read(0), ports)  # the table dumped at start
            assert set(first) == ports
            assert src.counters["dumped"] >= OPEN and src.counters["resyncs"] == 0
            for cli, _, _ in conns:  # traffic the resync dump must show in the counters
                cli.sendall(b"x" * 1000)
            with caplog.at_level(logging.WARNING, logger="nfflowd.source"):
                run_in_netns(netns, lambda: udp_burst(BURST))
                dumped_before = src.counters["dumped"]
                resync_batch: list[ConntrackEvent] = []
                deadline = time.monotonic() + 30
                while not src.counters["resyncs"] and time.monotonic() < deadline:
                    resync_batch = reader.read(0.2)
            print(f"\nNetlinkSource, rcvbuf {TINY}: {BURST} flows, counters {src.counters}")
            assert src.counters["enobufs"] >= 1
            assert src.counters["resyncs"] >= 1
            # the resync's dump: the whole table again (the burst's entries and ours) ...
            assert src.counters["dumped"] - dumped_before >= OPEN + BURST // 2
            # ... and in it the open connections, the same ones (conntrack id), with the
            # kernel start time and their counters as they are now, not as at start
            again = tcp_entries(resync_batch, ports)
            assert set(again) == ports
            for key, ev in again.items():
                assert ev.ct_id == first[key].ct_id is not None
                assert ev.start_ns == first[key].start_ns is not None
                now, then = ev.orig_bytes, first[key].orig_bytes
                assert now is not None and then is not None and now >= then + 1000
            warned = [
                r
                for r in caplog.records
                if r.levelno == logging.WARNING and "kernel dropped conntrack events" in r.message
            ]
            assert warned and "resyncing" in warned[0].message
            assert "ENOBUFS #1" in warned[0].message
        finally:
            src.close()


def test_destroy_only_when_the_kernel_stamps_times(netns: str) -> None:
    """acct and timestamps on: DESTROY alone is read (no NEW, no dump at start), each one
    carrying the whole connection: both tuples, counters, the kernel's start and stop."""
    src = NetlinkSource(SourceSettings("netlink", netns=netns, set_sysctls=True))
    reader = SourceEvents(src)
    try:
        assert src.destroy_only and src.stateless
        assert src.counters["destroy_only"] == 1 and src.counters["dumped"] == 0
        with open_connections(netns, OPEN) as conns:
            ports = {(sport, dport) for _, sport, dport in conns}
        got: list[ConntrackEvent] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(got) < OPEN:
            run_in_netns(netns, lambda: os.system("conntrack -F >/dev/null 2>&1"))
            got += [
                e
                for e in reader.read(0.5)
                if e.proto == 6 and (e.orig_sport, e.orig_dport) in ports
            ]
        assert {(e.orig_sport, e.orig_dport) for e in got} == ports
        for e in got:
            assert e.type == EventType.DESTROY
            assert e.start_ns is not None and e.stop_ns is not None and e.stop_ns >= e.start_ns
            assert e.orig_packets and e.orig_bytes and e.reply_packets and e.reply_bytes
    finally:
        src.close()


def with_bad_and_unknown_attributes(msg: bytes) -> bytes:
    """``msg`` with a CTA_MARK of 2 bytes (wrong size) and an attribute type no header has."""
    extra = nl.NLATTR.pack(6, nl.CTA_MARK) + b"\1\2\0\0" + nl.NLATTR.pack(8, 200) + b"xxxx"
    out = bytearray(msg + extra)
    struct.pack_into("=I", out, 0, len(out))  # nlmsg_len
    return bytes(out)


def test_decoder_attribute_counters_reach_the_correlator_counters(netns: str) -> None:
    src = NetlinkSource(SourceSettings("netlink", netns=netns))
    reader = SourceEvents(src)  # the correlator decodes, and counts
    try:
        reader.read(0)
        assert (reader.counters()["bad_attrs"], reader.counters()["unknown_attrs"]) == (0, 0)
        fake = ConntrackEvent(
            EventType.DESTROY,
            0,
            4,
            17,
            LO,
            LO,
            40000,
            53,
            LO,
            LO,
            53,
            40000,
            None,
            None,
            None,
            None,
            77,
            None,
            None,
            None,
            0,
            0,
            0,
        )
        raw = with_bad_and_unknown_attributes(nl.encode_event(fake))
        # a root process may unicast to the listener's netlink port (as the kernel does)
        with socket.socket(fileno=os.dup(src.listener.fileno())) as mine:
            port = mine.getsockname()[0]
        with open_in_netns(netns) as sender:
            sender.bind((0, 0))
            sender.sendto(raw, (port, 0))
        got: list[ConntrackEvent] = []
        deadline = time.monotonic() + 10
        while not any(e.ct_id == 77 for e in got) and time.monotonic() < deadline:
            got += reader.read(0.2)
        (ev,) = [e for e in got if e.ct_id == 77]
        assert (ev.type, ev.orig_sport, ev.orig_dport, ev.mark) == (EventType.DESTROY, 40000, 53, 0)
        assert (reader.counters()["bad_attrs"], reader.counters()["unknown_attrs"]) == (1, 1)
        assert reader.counters()["malformed_messages"] == 0
    finally:
        src.close()
