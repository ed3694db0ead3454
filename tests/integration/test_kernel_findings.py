"""What `check` and `start` say about the kernel switches a netlink source depends on,
and `<source> set_sysctls 1`, which turns two of them on, in a namespace made here.

net.netfilter.nf_conntrack_acct (counters), nf_conntrack_timestamp (exact times)
and nf_conntrack_events are per network namespace, so each test creates its own
(prefix ``h3x-kf-``), sets them as it needs and reads them back; the host's values
are never changed (checked).  Needs root, `ip`, `nft`, `sysctl`; runs whenever
CI=true.  The only traffic is one UDP exchange on the namespace's lo.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfflowd import config
from nfflowd.conntrack.kernel import SYSCTLS, dump_table, kernel_settings, run_in_netns
from nfflowd.conntrack.kernel import set_sysctls as write_sysctls
from nfflowd.conntrack.sources import NetlinkSource
from nfflowd.ops import control
from tests.needs import needs, needs_root
from tests.pipeline_harness import netlink_source, nfflowd, wait_all_running, write_config
from tests.scratch_netns import scratch_netns, track_connections

pytestmark = [
    pytest.mark.root,
    needs("ip", "nft", "sysctl"),
    needs_root(),
    pytest.mark.timeout(180),
]

ACCT, TIMESTAMP, EVENTS = SYSCTLS


@pytest.fixture
def netns() -> Iterator[str]:
    """Accounting and timestamps as a new namespace has them (off), nothing tracked yet."""
    with scratch_netns("h3x-kf", track=False, counters=False) as name:
        yield name


def sysctl_in(ns: str, key: str) -> str:
    """The value as the sysctl program sees it inside ``ns`` (independent of nfflowd)."""
    argv = ["ip", "netns", "exec", ns, "sysctl", "-n", key]
    return subprocess.run(
        argv, capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


def host_values() -> dict[str, str | None]:
    return kernel_settings(None)


def netlink_config(tmp_path: Path, ns: str, *settings: str) -> Path:
    return write_config(tmp_path / "run", netlink_source(ns, *settings))


def switch_lines(out: str, ns: str) -> dict[str, str]:
    """check's line for each switch in ``ns``, by sysctl name."""
    found = {}
    for line in out.splitlines():
        for key in SYSCTLS:
            if f" {key} (netns {ns}) = " in line:
                assert key not in found, f"{key} reported twice:\n{out}"
                found[key] = line
    return found


def test_check_reports_the_three_switches_where_the_source_reads(
    tmp_path: Path, netns: str
) -> None:
    before = host_values()
    write_sysctls(netns, acct=True, timestamp=False)
    events = sysctl_in(netns, EVENTS)
    conf = netlink_config(tmp_path, netns)
    res = nfflowd("-c", str(conf), "check", check=False)
    lines = switch_lines(res.stdout, netns)
    assert set(lines) == set(SYSCTLS), res.stdout
    assert lines[ACCT].startswith(f"ok       {ACCT} (netns {netns}) = 1: packet/byte counters")
    assert lines[TIMESTAMP].startswith(f"warning  {TIMESTAMP} (netns {netns}) = 0: exact kernel")
    level = "ok" if events in ("1", "2") else "warning"
    assert lines[EVENTS].startswith(f"{level:<8} {EVENTS} (netns {netns}) = {events}: "), lines
    # the other way round: the report follows the namespace's values, not a constant;
    # and a <source> with only netns is a netlink source too (the default type)
    write_sysctls(netns, acct=False, timestamp=True)
    conf.write_text(conf.read_text().replace("  type netlink\n", ""))
    assert config.load(str(conf)).source.type == "netlink"
    lines = switch_lines(nfflowd("-c", str(conf), "check", check=False).stdout, netns)
    assert lines[ACCT].startswith(f"warning  {ACCT} (netns {netns}) = 0: packet/byte counters")
    assert lines[TIMESTAMP].startswith(f"ok       {TIMESTAMP} (netns {netns}) = 1: exact kernel")
    assert host_values() == before


def test_start_warns_about_switches_that_are_off(tmp_path: Path, netns: str) -> None:
    write_sysctls(netns, acct=True, timestamp=False)
    conf = netlink_config(tmp_path, netns)
    run = tmp_path / "run"
    try:
        res = nfflowd("-c", str(conf), "start")
        assert f"nfflowd: warning: {TIMESTAMP} (netns {netns}) = 0: exact kernel" in res.stderr
        assert f"{ACCT} (netns {netns})" not in res.stderr  # on: nothing to warn about
        wait_all_running(run, timeout=60)
        # the ingest stage, reading that namespace, says it too (in its own log)
        log, deadline = run / "ingest.log", time.monotonic() + 30
        while "listening to conntrack" not in (text := log.read_text()):
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        assert f"{TIMESTAMP} = 0: see `nfflowd check`" in text
        # without the kernel's timestamps a DESTROY lacks the start: NEW is read too
        assert f"listening to conntrack NEW and DESTROY events in netns {netns}" in text
    finally:
        nfflowd("-c", str(conf), "stop", check=False)
    assert not control.is_running(str(run))


def udp_exchange() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as cli,
    ):
        srv.bind(("127.0.0.1", 0))
        srv.settimeout(5)
        cli.sendto(b"q" * 20, srv.getsockname())
        _, peer = srv.recvfrom(100)
        srv.sendto(b"a" * 50, peer)


def test_set_sysctls_turns_acct_and_timestamp_on_in_the_source_namespace(
    tmp_path: Path, netns: str
) -> None:
    before = host_values()
    write_sysctls(netns, acct=False, timestamp=False)  # off, whatever the module defaults
    assert (sysctl_in(netns, ACCT), sysctl_in(netns, TIMESTAMP)) == ("0", "0")
    conf = netlink_config(tmp_path, netns, "set_sysctls 1")
    settings = config.load(str(conf))
    assert settings.source.set_sysctls
    # check changes nothing, but says that start will turn them on
    lines = switch_lines(nfflowd("-c", str(conf), "check", check=False).stdout, netns)
    for key in (ACCT, TIMESTAMP):
        assert lines[key].startswith(f"note     {key} (netns {netns}) = 0: "), lines
        assert lines[key].endswith("; <source> set_sysctls 1 turns it on at start")
    assert (sysctl_in(netns, ACCT), sysctl_in(netns, TIMESTAMP)) == ("0", "0")
    src = NetlinkSource(settings.source)  # what the ingest stage builds at start
    try:
        assert (sysctl_in(netns, ACCT), sysctl_in(netns, TIMESTAMP)) == ("1", "1")
        assert host_values() == before  # the namespace's, not the host's
        # and they work: a connection made now has counters and a kernel start time
        track_connections(netns)
        t0 = time.time_ns()
        run_in_netns(netns, udp_exchange)
        (entry,) = [e for e in dump_table(netns, timeout=10) if e.proto == 17]
        assert (entry.orig_packets, entry.reply_packets) == (1, 1)
        assert (entry.orig_bytes, entry.reply_bytes) == (20 + 8 + 20, 20 + 8 + 50)
        assert entry.start_ns is not None and t0 - 10**9 < entry.start_ns <= time.time_ns()
    finally:
        src.close()
    lines = switch_lines(nfflowd("-c", str(conf), "check", check=False).stdout, netns)
    for key in (ACCT, TIMESTAMP):
        assert lines[key].startswith(f"ok       {key} (netns {netns}) = 1: "), lines
