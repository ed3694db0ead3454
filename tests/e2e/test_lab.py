"""The built-in NAT lab against the real kernel: topology, NAT, events, counters, CLI.

Root tests need namespaces + nftables + conntrack (see conftest.py: they run under
CI=true, elsewhere they skip with the reason nfflowd.lab.available() gives).  The
golden-data checks at the end need nothing.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from nfflowd import lab as labmod
from nfflowd.lab.traffic import Expected, expected, listeners, mix
from tests.lab_names import lab_prefix

if TYPE_CHECKING:  # fixtures' types (pytest loads conftest.py itself)
    from tests.e2e.conftest import ConntrackText, Event, MixRun

root = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "golden"
MIX_NAMES = [f.name for f in mix(labmod.Lab.named())]


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _sysctl(ns: str, name: str) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-n", name],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return out.stdout.strip()


def _key(e: Expected) -> tuple[int, str, str, int, int]:
    return (e.proto, e.orig_src, e.orig_dst, e.orig_sport, e.orig_dport)


def _find(events: list[Event], e: Expected, typ: str) -> list[Event]:
    def same(a: str, b: str) -> bool:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)

    return [
        ev
        for ev in events
        if ev.type == typ
        and ev.proto == e.proto
        and same(ev.orig.src, e.orig_src)
        and same(ev.orig.dst, e.orig_dst)
        and (ev.orig.sport, ev.orig.dport) == (e.orig_sport, e.orig_dport)
    ]


# --- lifecycle ---------------------------------------------------------------------------


@root
@pytest.mark.timeout(60)
def test_running_removes_namespaces_even_when_the_body_fails(lab_ready: None) -> None:
    prefix = lab_prefix("u")
    names = {prefix + r for r in labmod.ROLES}
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="inside the lab"), labmod.running(prefix) as lab:
        assert names <= _namespaces()
        assert set(lab.namespaces) == names
        up_s = time.monotonic() - t0
        raise RuntimeError("failure inside the lab")
    assert not names & _namespaces()
    assert up_s < 5.0, f"lab up took {up_s:.1f}s"
    labmod.down(prefix)  # again: nothing to do, no error
    labmod.down(labmod.Lab.named(prefix))


@root
@pytest.mark.timeout(60)
def test_up_replaces_leftovers_and_down_cleans(lab_ready: None) -> None:
    prefix = lab_prefix("r")
    try:
        subprocess.run(["ip", "netns", "add", prefix + "fw"], check=True, timeout=10)
        lab = labmod.up(prefix)  # a stale fw namespace of the same prefix is replaced
        lab = labmod.up(prefix)  # and so is a whole lab
        assert set(lab.namespaces) <= _namespaces()
        assert _sysctl(lab.fw, "net.netfilter.nf_conntrack_acct") == "1"
    finally:
        labmod.down(prefix)
    assert not {prefix + r for r in labmod.ROLES} & _namespaces()


@root
@pytest.mark.timeout(60)
def test_fw_settings_are_per_namespace(nat_lab: labmod.Lab) -> None:
    fw, client = nat_lab.fw, nat_lab.client
    for name, value in labmod.FW_SYSCTLS.items():
        assert _sysctl(fw, name) == value, name
    # The same switches in a sibling namespace keep the kernel defaults.
    assert _sysctl(client, "net.netfilter.nf_conntrack_acct") == "0"
    assert _sysctl(client, "net.netfilter.nf_conntrack_tcp_timeout_time_wait") == "120"
    rules = subprocess.run(
        ["ip", "netns", "exec", fw, "nft", "list", "ruleset"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    assert "masquerade" in rules
    assert f"dnat ip to {nat_lab.client4}:{nat_lab.fwd_to_port}" in rules


# --- the traffic mix, seen by the firewall's conntrack -----------------------------------


@root
@pytest.mark.timeout(90)
def test_every_connection_has_new_and_destroy(mix_run: MixRun) -> None:
    assert [e.name for e in mix_run.expected] == MIX_NAMES
    for capture in (mix_run.events, mix_run.extended):
        for e in mix_run.expected:
            assert len(_find(capture, e, "NEW")) == 1, f"{e.name}: NEW"
            assert len(_find(capture, e, "DESTROY")) == 1, f"{e.name}: DESTROY"
        # nothing but the mix crosses the firewall
        assert len(capture) == 2 * len(mix_run.expected), [ev.key() for ev in capture]
    kinds = {(e.family, e.proto, e.nat) for e in mix_run.expected}
    assert {
        (4, 6, "snat"),
        (4, 6, "none"),
        (4, 6, "dnat"),
        (6, 6, "snat"),
        (6, 6, "none"),
        (4, 17, "snat"),
        (4, 1, "snat"),
        (6, 58, "snat"),
        (4, 47, "snat"),
    } <= kinds


@root
@pytest.mark.timeout(90)
def test_nat_tuples_are_what_the_lab_promises(mix_run: MixRun, nat_lab: labmod.Lab) -> None:
    public = {4: nat_lab.fw_pub4, 6: nat_lab.fw_pub6}
    for e in mix_run.expected:
        (new,) = _find(mix_run.events, e, "NEW")
        got = (new.reply.src, new.reply.dst, new.reply.sport, new.reply.dport)
        want = (e.reply_src, e.reply_dst, e.reply_sport, e.reply_dport)
        assert tuple(map(str, got)) == tuple(map(str, want)), e.name
        if e.nat == "snat":
            assert ipaddress.ip_address(new.reply.dst) == ipaddress.ip_address(public[e.family])
            assert ipaddress.ip_address(new.orig.src).is_private
        elif e.nat == "dnat":
            assert (new.orig.dst, new.orig.dport) == (nat_lab.fw_pub4, nat_lab.fwd_port)
            assert (new.reply.src, new.reply.sport) == (nat_lab.client4, nat_lab.fwd_to_port)
        else:
            assert (new.reply.src, new.reply.dst) == (new.orig.dst, new.orig.src), e.name
        (gone,) = _find(mix_run.events, e, "DESTROY")
        assert gone.ct_id == new.ct_id
        assert ("UNREPLIED" in gone.flags) == (not e.replied), e.name


@root
@pytest.mark.timeout(90)
def test_counters_are_exact_or_plausible(mix_run: MixRun) -> None:
    for e in mix_run.expected:
        (gone,) = _find(mix_run.extended, e, "DESTROY")
        o, r = gone.orig, gone.reply
        assert o.packets and o.bytes, e.name
        wire = e.wire_bytes()
        if wire is not None:  # datagrams: every byte is known
            assert (o.packets, r.packets) == (e.packets_orig, e.packets_reply), e.name
            assert (o.bytes, r.bytes) == wire, e.name
            continue
        header = 40 if e.family == 4 else 60  # IP + TCP without options
        assert o.bytes is not None and r.bytes is not None and r.packets is not None
        assert o.bytes >= e.payload_orig + o.packets * header, e.name
        assert r.bytes >= e.payload_reply + r.packets * header, e.name
        assert o.bytes < e.payload_orig + o.packets * (header + 40) + 1, e.name
        assert 4 <= o.packets <= 16 and 3 <= r.packets <= 16, (e.name, o.packets, r.packets)


@root
@pytest.mark.timeout(90)
def test_listing_before_close_agrees_with_destroy(mix_run: MixRun) -> None:
    assert len(mix_run.listing) == len(mix_run.expected)
    for e in mix_run.expected:
        (row,) = _find(mix_run.listing, e, "LIST")
        (gone,) = _find(mix_run.events, e, "DESTROY")
        assert row.ct_id == gone.ct_id, e.name
        assert row.orig.bytes is not None and gone.orig.bytes is not None
        assert e.payload_orig <= row.orig.bytes <= gone.orig.bytes, e.name
        assert row.orig.packets is not None and gone.orig.packets is not None
        if e.proto == 6:  # the FIN/ACK exchange came after the listing
            assert row.orig.packets < gone.orig.packets, e.name
            assert row.state == "ESTABLISHED" and gone.state == "TIME_WAIT", e.name
        else:
            assert (row.orig.packets, row.orig.bytes) == (gone.orig.packets, gone.orig.bytes)


@root
@pytest.mark.timeout(90)
def test_destroy_follows_the_lab_timeouts(mix_run: MixRun) -> None:
    assert not mix_run.flushed, "DESTROY events needed a flush"
    assert mix_run.traffic_s < 5.0, f"traffic took {mix_run.traffic_s:.1f}s"
    assert mix_run.destroyed_after_s < 10.0
    for ev in mix_run.events:
        if ev.type == "DESTROY":
            # TIME_WAIT 2 s, UDP/ICMP/GRE 3 s: nothing dies before its timeout
            assert ev.time >= mix_run.traffic_end + 1.5, ev
            if ev.proto == 6:
                assert ev.state == "TIME_WAIT", ev


@root
@pytest.mark.timeout(90)
def test_flush_destroys_everything_at_once(
    nat_lab: labmod.Lab, mix_run: MixRun, capture_mix: Callable[..., MixRun]
) -> None:
    run = capture_mix(nat_lab, settle=3.0, use_flush=True)
    assert run.flushed
    assert run.destroyed_after_s < 2.0
    for e in run.expected:
        assert len(_find(run.events, e, "DESTROY")) == 1, e.name


@root
@pytest.mark.timeout(60)
def test_cli_up_traffic_flush_down(lab_ready: None, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = lab_prefix("c")
    try:
        assert labmod.main(["traffic", "--prefix", prefix]) == 1
        assert "not up" in capsys.readouterr().err
        assert labmod.main(["up", "--prefix", prefix]) == 0
        assert labmod.main(["traffic", "--prefix", prefix]) == 0
        out = capsys.readouterr().out
        for name in MIX_NAMES:
            assert name in out
        assert labmod.main(["flush", "--prefix", prefix]) == 0
        assert labmod.main(["down", "--prefix", prefix]) == 0
        assert not {prefix + r for r in labmod.ROLES} & _namespaces()
    finally:
        labmod.down(prefix)


# --- pure parts and the golden data (no root needed) -------------------------------------


def test_mix_listeners_and_expectations() -> None:
    lab = labmod.Lab.named("x-")
    flows = mix(lab)
    served = {(k, fam, addr, port): n for k, fam, addr, port, n in listeners(flows, "server")}
    assert served[("tcp", 4, lab.server4, 5001)] == 2
    assert served[("tcp", 6, lab.server6, 5001)] == 2
    assert listeners(flows, "client") == [("tcp", 4, lab.client4, lab.fwd_to_port, 1)]
    by_name = {f.name: expected(f, 4242) for f in flows}
    icmp6 = by_name["icmp6-snat"]
    assert (icmp6.orig_sport, icmp6.orig_dport, icmp6.reply_dport) == (4242, 128 << 8, 129 << 8)
    assert by_name["gre4-snat"].wire_bytes() == (2 * (20 + 4 + 64), 2 * (20 + 4 + 128))
    assert by_name["udp4-unreplied"].wire_bytes() == (20 + 8 + 200, 0)
    dnat = by_name["tcp4-dnat"]
    assert (dnat.reply_src, dnat.reply_sport, dnat.reply_dst) == (lab.client4, 80, lab.server4)


def test_golden_capture_is_complete(ct_text: ConntrackText) -> None:
    events = ct_text.events((GOLDEN / "lab-events.log").read_text())
    extended = ct_text.events((GOLDEN / "lab-events-extended.log").read_text())
    listing = ct_text.listing((GOLDEN / "lab-listing.txt").read_text())
    assert len(listing) == len(MIX_NAMES)
    for capture in (events, extended):
        assert len(capture) == 2 * len(MIX_NAMES)
        news = {ev.ct_id: ev for ev in capture if ev.type == "NEW"}
        gones = {ev.ct_id: ev for ev in capture if ev.type == "DESTROY"}
        assert news.keys() == gones.keys() == {ev.ct_id for ev in listing}
        for ct_id, gone in gones.items():
            assert gone.orig.bytes, ct_id
            assert gone.time >= news[ct_id].time
    assert {ev.proto for ev in events} == {1, 6, 17, 47, 58}
    bundled = ROOT / "nfflowd" / "data" / "demo-events.log"
    assert bundled.read_bytes() == (GOLDEN / "lab-events.log").read_bytes()


def test_golden_readme_table_names_every_connection() -> None:
    readme = (GOLDEN / "README.txt").read_text()
    for name in MIX_NAMES:
        assert name in readme
    assert os.path.getsize(GOLDEN / "lab-events.log") > 0
