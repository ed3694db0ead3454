"""The ctnetlink listener against the real kernel, inside a throwaway network namespace.

Needs root (CAP_NET_ADMIN), `ip`, `nft`, `conntrack`.  Runs whenever CI=true; elsewhere
it skips only when those are missing.  Traffic stays on lo inside the namespace.
Loss figures of the burst tests are printed (``pytest -s``) and kept as user properties.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from nfflowd.conntrack.kernel import (
    CtnetlinkListener,
    dump_table,
    kernel_settings,
    open_in_netns,
    run_in_netns,
    set_sysctls,
)
from nfflowd.messages import ConntrackEvent, EventType
from tests.needs import needs, needs_root, skip_outside_ci
from tests.scratch_netns import scratch_netns

#: Present once the nf_conntrack module is loaded.
ACCT_SWITCH = "/proc/sys/net/netfilter/nf_conntrack_acct"
pytestmark = [
    pytest.mark.root,
    needs_root(),
    needs("ip", "nft", "conntrack"),
    skip_outside_ci(None if os.path.exists(ACCT_SWITCH) else "needs the nf_conntrack module"),
    pytest.mark.timeout(120),
]


@pytest.fixture
def netns() -> Iterator[str]:
    """Fresh namespace with lo up, accounting + timestamps on, conntrack hooks active."""
    with scratch_netns("nfn-e2e") as name:
        yield name


def ns_exec(ns: str, *cmd: str, data: str | None = None) -> str:
    argv = ["ip", "netns", "exec", ns, *cmd]
    done = subprocess.run(argv, input=data, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, (argv, done.stderr)
    return done.stdout


def collect(
    listener: CtnetlinkListener,
    until: Callable[[list[ConntrackEvent]], bool],
    timeout: float = 10.0,
    pause: float = 0.0,
) -> list[ConntrackEvent]:
    """Read events until ``until(all so far)`` holds or the deadline passes."""
    got: list[ConntrackEvent] = []
    deadline = time.monotonic() + timeout
    while not until(got) and time.monotonic() < deadline:
        got += listener.recv_events(max_reads=50 if pause else 100_000)
        time.sleep(pause or 0.02)
    return got


def test_run_in_netns_leaves_the_caller_where_it_was(netns: str) -> None:
    here = os.readlink("/proc/thread-self/ns/net")
    there = run_in_netns(netns, lambda: os.readlink("/proc/thread-self/ns/net"))
    assert there != here == os.readlink("/proc/thread-self/ns/net")
    assert there == f"net:[{os.stat(f'/run/netns/{netns}').st_ino}]"
    with pytest.raises(FileNotFoundError):
        run_in_netns("nfn-no-such-namespace", lambda: None)


def test_settings_helpers(netns: str) -> None:
    assert kernel_settings(netns)["net.netfilter.nf_conntrack_acct"] == "1"
    set_sysctls(netns, acct=False, timestamp=False)
    got = kernel_settings(netns)
    assert got["net.netfilter.nf_conntrack_acct"] == got["net.netfilter.nf_conntrack_timestamp"]
    assert got["net.netfilter.nf_conntrack_acct"] == "0"
    text = ns_exec(netns, "sysctl", "-n", "net.netfilter.nf_conntrack_events")
    assert got["net.netfilter.nf_conntrack_events"] == text.strip()


def parse_listing(text: str, dport: int) -> dict[str, list[int]]:
    for line in text.splitlines():
        if f"dport={dport} " in line:
            return {
                k: [int(v) for v in re.findall(rf"\b{k}=(\d+)", line)]
                for k in ("packets", "bytes", "id")
            }
    raise AssertionError(f"no entry for dport {dport} in {text!r}")


def test_tcp_new_and_destroy_on_lo(netns: str) -> None:
    t0 = time.time_ns()
    with CtnetlinkListener(netns=netns, kernel_time=True) as listener:
        srv = open_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM, 0)
        cli = open_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM, 0)
        with srv, cli:
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            port = srv.getsockname()[1]
            cli.settimeout(5)
            cli.connect(("127.0.0.1", port))
            conn, _ = srv.accept()
            with conn:
                cli.sendall(b"x" * 1000)
                conn.recv(2000)
                conn.sendall(b"y" * 300)
                cli.recv(2000)
                sport = cli.getsockname()[1]

                def mine(e: ConntrackEvent) -> bool:
                    return e.proto == 6 and (e.orig_sport, e.orig_dport) == (sport, port)

                got = collect(
                    listener, lambda g: any(e.type == EventType.NEW and mine(e) for e in g)
                )
                (new,) = [e for e in got if e.type == EventType.NEW and mine(e)]
                assert (new.family, new.orig_src, new.orig_dst) == (4, b"\x7f\0\0\1", b"\x7f\0\0\1")
                assert (new.reply_sport, new.reply_dport) == (port, sport)
                listing, before = "", ""
                for _ in range(20):  # wait for delayed ACKs to settle
                    before, listing = (
                        listing,
                        ns_exec(netns, "conntrack", "-L", "-p", "tcp", "-o", "id"),
                    )
                    if listing == before:
                        break
                    time.sleep(0.2)
                want = parse_listing(listing, port)
                ns_exec(netns, "conntrack", "-D", "-p", "tcp", "--dport", str(port))
                got = collect(
                    listener, lambda g: any(e.type == EventType.DESTROY and mine(e) for e in g)
                )
                (gone,) = [e for e in got if e.type == EventType.DESTROY and mine(e)]
    assert gone.ct_id == new.ct_id == want["id"][-1]
    assert [gone.orig_packets, gone.reply_packets] == want["packets"]
    assert [gone.orig_bytes, gone.reply_bytes] == want["bytes"]
    assert gone.orig_bytes is not None and gone.orig_bytes > 1000
    assert gone.start_ns is not None and gone.stop_ns is not None
    assert t0 - 10**9 < gone.start_ns <= gone.stop_ns <= gone.time_ns < gone.stop_ns + 10**9
    assert listener.enobufs == 0 and listener.counters.malformed == 0


def udp_exchange(host: str) -> tuple[int, int]:
    """One UDP request/answer on lo; returns (client port, server port)."""
    af = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(af, socket.SOCK_DGRAM) as srv, socket.socket(af, socket.SOCK_DGRAM) as cli:
        srv.bind((host, 0))
        srv.settimeout(5)
        cli.sendto(b"q" * 20, srv.getsockname())
        _, peer = srv.recvfrom(100)
        srv.sendto(b"a" * 50, peer)
        return cli.getsockname()[1], srv.getsockname()[1]


def test_dump_lists_existing_connection(netns: str) -> None:
    t0 = time.time_ns()
    sport, dport = run_in_netns(netns, lambda: udp_exchange("::1"))
    t1 = time.time_ns()
    with CtnetlinkListener(netns=netns) as listener:
        table = listener.dump(timeout=10)
    (ev,) = [e for e in table if e.proto == 17 and (e.orig_sport, e.orig_dport) == (sport, dport)]
    assert (ev.type, ev.family, ev.orig_src) == (EventType.NEW, 6, b"\0" * 15 + b"\1")
    assert ev.start_ns is not None and t0 - 10**9 < ev.start_ns < t1 + 10**9
    assert ev.stop_ns is None and ev.ct_id is not None
    assert (ev.orig_packets, ev.reply_packets) == (1, 1)
    assert (ev.orig_bytes, ev.reply_bytes) == (40 + 8 + 20, 40 + 8 + 50)  # IPv6 + UDP + data


def udp_burst(count: int) -> None:
    """``count`` one-packet UDP flows from distinct source ports to a closed port on lo."""
    for i in range(count):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 20000 + i))  # ephemeral ports would repeat (birthday)
            s.sendto(b"b", ("127.0.0.1", 9))


BURST = 2000
TINY = 4096


def flows(events: list[ConntrackEvent], kind: int) -> set[int | None]:
    return {e.ct_id for e in events if e.type == kind and e.proto == 17 and e.orig_dport == 9}


def burst(listener: CtnetlinkListener, netns: str) -> list[ConntrackEvent]:
    """BURST UDP flows in *netns*, and what *listener* reads in the second after."""
    run_in_netns(netns, lambda: udp_burst(BURST))
    return collect(listener, lambda g: False, timeout=1.0)


def test_burst_default_mode_counts_enobufs(
    netns: str, record_property: Callable[..., None]
) -> None:
    with CtnetlinkListener(netns=netns, rcvbuf=TINY, rcvbuf_max=TINY) as listener:
        got = burst(listener, netns)
        ns_exec(netns, "conntrack", "-F")
        got += collect(listener, lambda g: False, timeout=1.0)
        new, destroy = flows(got, EventType.NEW), flows(got, EventType.DESTROY)
        print(
            f"\ndefault mode, rcvbuf {listener.rcvbuf}: {BURST} flows, NEW {len(new)}, "
            f"DESTROY {len(destroy)}, ENOBUFS reported {listener.enobufs}"
        )
        record_property("default_lost_destroy", BURST - len(destroy))
        assert listener.enobufs >= 1
        assert listener.take_resync() and not listener.take_resync()
        assert len(new) < BURST and len(destroy) < BURST


def test_enobufs_grows_the_buffer(netns: str) -> None:
    with CtnetlinkListener(netns=netns, rcvbuf=TINY, rcvbuf_max=1 << 20) as listener:
        small = listener.rcvbuf
        run_in_netns(netns, lambda: udp_burst(500))
        collect(listener, lambda g: False, timeout=0.5)
        assert listener.enobufs >= 1
        assert small < listener.rcvbuf <= 2 << 20  # the kernel reports twice what was set


def test_burst_reliable_mode_loses_no_destroy(
    netns: str, record_property: Callable[..., None]
) -> None:
    with CtnetlinkListener(netns=netns, rcvbuf=TINY, reliable=True) as listener:
        got = burst(listener, netns)
        entries = len(ns_exec(netns, "conntrack", "-L", "-p", "udp").splitlines())
        assert entries == BURST
        t0 = time.monotonic()
        ns_exec(netns, "conntrack", "-F")
        # read slowly (50 datagrams every 10 ms) so the tiny buffer keeps overflowing
        got += collect(listener, lambda g: len(flows(g, EventType.DESTROY)) >= BURST, 60, 0.01)
        took = time.monotonic() - t0
        new, destroy = flows(got, EventType.NEW), flows(got, EventType.DESTROY)
        print(
            f"\nreliable mode, rcvbuf {listener.rcvbuf}: {BURST} flows, NEW {len(new)}, "
            f"DESTROY {len(destroy)} in {took:.1f}s, ENOBUFS {listener.enobufs}"
        )
        record_property("reliable_lost_destroy", BURST - len(destroy))
        assert len(destroy) == BURST
        assert listener.enobufs == 0


def test_dump_table_outside_any_listener(netns: str) -> None:
    run_in_netns(netns, lambda: udp_exchange("127.0.0.1"))
    table = dump_table(netns, family=socket.AF_INET6, timeout=10)
    assert table == []
    table = dump_table(netns, family=socket.AF_INET, timeout=10)
    assert [e.orig_dst for e in table] == [b"\x7f\0\0\1"]
