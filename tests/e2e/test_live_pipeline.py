"""nfflowd reading the real kernel (ctnetlink) of the lab's firewall, end to end.

nfflowd runs in the root namespace and reads the firewall namespace's conntrack
(`<source> netns`), started with the real `nfflowd start` verb while every
connection of the lab's mix is already open (so their start times come from
the kernel, not from nfflowd having seen the NEW).  Independent witnesses:
conntrack-tools' own `conntrack -E -o timestamp,id` listening in the firewall,
the lab's promised tuples and exact datagram byte counts, and nfdump reading
what the collector stored.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from nfflowd import lab as labmod
from nfflowd.conntrack.text import parse_line
from nfflowd.correlate.correlator import Correlator
from nfflowd.lab.nfcapd import Nfcapd
from nfflowd.messages import FlowRecord
from nfflowd.ops import control
from tests.kernel_times import TIME_SLACK_MS, kernel_seconds
from tests.lab_names import end_connections, lab_prefix
from tests.pipeline_harness import (
    csv_key,
    netlink_source,
    nfflowd,
    wait_all_running,
    write_config,
)


def witness_records(log: Path) -> list[FlowRecord]:
    events = [ev for line in log.read_text().splitlines() if (ev := parse_line(line)) is not None]
    return Correlator().feed_all(events)


def text(addr: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(addr) == 16 else socket.AF_INET, addr)


def key(
    src: str, sport: int, dst: str, dport: int, proto: int, pk: int, by: int
) -> tuple[Any, ...]:
    return (src, sport, dst, dport, proto, pk, by)


@pytest.mark.root
@pytest.mark.timeout(120)
def test_live_lab_through_the_kernel(
    tmp_path: Path, lab_ready: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "UTC")  # conntrack -o ktimestamp prints local time
    rundir = tmp_path / "run"
    events = tmp_path / "conntrack-E.log"
    with labmod.running(lab_prefix("live")) as lab, Nfcapd() as cap:
        source = netlink_source(lab.fw, "set_sysctls 1")
        conf = write_config(rundir, source, collector_port=cap.port)
        started_ms: list[int] = []

        def start_nfflowd() -> None:
            started_ms.append(time.time_ns() // 1_000_000)
            nfflowd("-c", str(conf), "start")
            wait_all_running(rundir)

        try:
            with open(events, "wb") as fh, labmod.capture(lab, fh, "timestamp,ktimestamp,id"):
                flows = labmod.traffic(lab, before_close=start_nfflowd)
                end_connections(lab)  # natural ends: TIME_WAIT, the 3 s datagram timeouts
            check = nfflowd("-c", str(conf), "check")
            for stage in ("ingest", "correlate", "export", "mirror"):
                assert f"stage    {stage}" in check.stdout and "RUNNING" in check.stdout
        finally:
            nfflowd("-c", str(conf), "stop", check=False)
        assert not control.is_running(str(rundir))
        stored = cap.records()

    witness = witness_records(events)
    kernel_s = kernel_seconds(events)
    assert witness, "conntrack -E saw the mix"
    # 1. NetFlow v5 at the collector == what conntrack-tools saw, for every IPv4 record
    want = Counter(
        key(text(r.src), r.sport, text(r.dst), r.dport, r.proto, r.packets, r.octets)
        for r in witness
        if r.family == 4
    )
    got = Counter(
        key(r["src"], r["sport"], r["dst"], r["dport"], r["proto"], r["packets"], r["bytes"])
        for r in stored
    )
    assert got == want
    # 2. times: the kernel's start/stop, within conntrack -E's reading delay; every
    #    connection was open before nfflowd started, so its start predates the start
    by_key = {
        key(text(r.src), r.sport, text(r.dst), r.dport, r.proto, r.packets, r.octets): r
        for r in witness
    }
    for r in stored:
        w = by_key[
            key(r["src"], r["sport"], r["dst"], r["dport"], r["proto"], r["packets"], r["bytes"])
        ]
        # the kernel's start timestamp is taken with the first packet, which conntrack -E
        # reports as NEW a moment later; its stop timestamp is when the entry ended, which
        # is before (a timeout that expired earlier) or at the DESTROY conntrack -E read
        assert 0 <= w.first_ms - r["first_ms"] <= TIME_SLACK_MS, (r, w)
        assert r["first_ms"] <= r["last_ms"] <= w.last_ms + TIME_SLACK_MS, (r, w)
        assert (r["first_ms"] // 1000, r["last_ms"] // 1000) == kernel_s[w.ct_id], (r, w)
        assert r["first_ms"] <= started_ms[0]
    # 3. the lab's promises: NAT translations and exact datagram byte counts
    for f in flows:
        if f.family != 4:
            continue
        proto_ports = f.proto in (6, 17)
        sport = f.orig_sport if proto_ports else 0
        dport = f.orig_dport if proto_ports else (f.orig_dport if f.proto == 1 else 0)
        mine = [
            r
            for r in stored
            if r["src"] == f.orig_src
            and r["dst"] == f.orig_dst
            and r["sport"] == sport
            and r["dport"] == dport
            and r["proto"] == f.proto
        ]
        assert len(mine) == 1, (f, stored)
        exact = f.wire_bytes()
        if exact is not None:
            assert mine[0]["bytes"] == exact[0], f
        if f.nat != "none":
            out_src, out_dst = f.reply_dst, f.reply_src
            assert any(
                r["src"] == out_src and r["dst"] == out_dst and r["proto"] == f.proto
                for r in stored
            ), f"{f.name}: no post-NAT record"
        if f.replied:
            assert any(r["src"] == f.reply_src and r["dst"] == f.reply_dst for r in stored), f.name
    # 4. the mirror has every record, IPv6 included
    lines = (rundir / "mirror.out").read_text().splitlines()
    mirrored = Counter(csv_key(x)[2:9] for x in lines)
    assert mirrored == Counter(
        (text(r.src), text(r.dst), r.sport, r.dport, r.proto, r.packets, r.octets) for r in witness
    )
    assert any(":" in str(k[0]) for k in mirrored)
