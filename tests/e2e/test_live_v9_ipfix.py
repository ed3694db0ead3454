"""NetFlow v9 and IPFIX from the live lab's kernel, to three nfcapds at once, plus a dead one.

nfflowd is started with the real ``nfflowd start`` verb, reading the lab
firewall's conntrack over netlink (``<source> netns``), with four collectors:
an nfcapd speaking v9 and one speaking IPFIX, both getting one record per
direction (``records per_direction``, the default), a v5 collector on a closed
loopback port (nothing listens: its datagrams are refused, and with ``refused_hold 0``
dropped at once rather than held), and an
nfcapd speaking v9 with ``records triplet`` (the v5 triplet, as before), and a
plain UDP socket getting IPFIX (read by tshark).  The firewall puts every
connection in conntrack zone :data:`ZONE` (nftables ``ct zone set``).  The
mirror writes JSON lines to the screen (``mirror.out``).  Then the lab's mix runs
twice (so that the dead collector is sent more than one v5 datagram and its
refusals show), every connection ending by its timeout or, at the very end, by a
flush.

Judges, all independent of nfflowd's code:

* the lab's promises (:class:`nfflowd.lab.Expected`): each connection's tuples
  (SNAT, NAT66, DNAT, no NAT) and, for datagram flows, exact byte counts;
* conntrack-tools' own ``conntrack -E -o timestamp,ktimestamp,id`` in the firewall,
  read by the test-side parser (tests/e2e/conftest.py): tuples, TCP counters,
  conntrack ids, and the kernel's own start/stop of each connection (tests/kernel_times.py);
* nfdump (``nfdump -r``) for what each collector stored, post-NAT fields included
  (``%xsa %xda %xsp %xdp``), with its known 1.7 gaps asserted as such: no
  flowEndReason (136) in v9, no postNAT*IPv6Address (281/282) in IPFIX; how many
  records each connection got (per direction: 2 when replied, 1 when not); and
  nfdump's own statistics (``-s``): per direction (a filter of the kernel's tuples)
  and in total, the kernel's counters exactly, where the triplet counts the
  original direction of NATed connections twice; the zone as ingress and egress
  VRF id (``%ivrf %evrf``) in every record;
* tshark, for the IPFIX datagrams the socket got: each record's flowId is the
  conntrack id conntrack-tools reported for its connection (nfdump 1.7 does not
  decode flowId from IPFIX; v9 does not send it), its VRF ids the zone.

The expected records are derived here from the README's "Flow records" rules,
not by nfflowd's correlator.
"""

from __future__ import annotations

import ast
import calendar
import ipaddress
import os
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from nfflowd import lab as labmod
from nfflowd.formats import ipfix, json_lines
from nfflowd.lab.nfcapd import Nfcapd, free_udp_port, parse_nfdump_line
from nfflowd.ops import control
from tests.kernel_times import TIME_SLACK_MS, kernel_seconds
from tests.needs import needs
from tests.pipeline_harness import (
    export_block,
    flow_fields,
    netlink_source,
    nfflowd,
    wait_all_running,
    wait_lines,
    write_config,
)
from tests.tshark_cflow import data_records, tshark_packets

#: nfdump output: the base fields, the NAT fields, direction, end reason, time received,
#: ingress and egress VRF id.
NFDUMP_FMT = (
    "fmt:%ts|%te|%pr|%sa|%da|%sp|%dp|%pkt|%byt|%xsa|%xda|%xsp|%xdp|%dir|%end|%tr|%ivrf|%evrf"
)
#: The conntrack zone the firewall puts every connection in, before conntrack sees its
#: first packet (priority raw), both ways and for its own packets.
ZONE = 7
ZONE_RULESET = f"""\
table inet nfflowd_zone {{
    chain pre {{ type filter hook prerouting priority raw; ct zone set {ZONE}; }}
    chain out {{ type filter hook output priority raw; ct zone set {ZONE}; }}
}}
"""
EXADDR = "192.0.2.1"
#: From a connection's DESTROY (as conntrack -E stamped it) to nfcapd receiving its records
#: (nfdump %tr): measured 2-6 ms here.  A collector blocking the others would add up to
#: SEND_TIMEOUT_S (1 s, outputs/collector.py) per datagram.
MAX_LATENCY_MS = 500

Row = tuple[Any, ...]  # src, dst, sport, dport, proto, packets, bytes, psrc, pdst, psp, pdp, dir


def prefix() -> str:
    return f"nfv-{os.getpid() % 100_000}-"


# -- what the README's "Flow records" rules make of each connection -----------------------


def promised(f: labmod.Expected, counters: tuple[int, int, int, int]) -> list[Row]:
    """The flow records of connection ``f`` (orig/reply packets and bytes ``counters``).

    1. original as it arrived, post = as it left (reply.dst:reply.dport -> reply.src:sport);
    2. original as it left, only when NAT changed it (post = itself; direction egress):
       only with ``records triplet`` (and in the mirror);
    3. reply as it arrived (only when replied), post = as it left (orig.dst -> orig.src).
    ICMP/ICMPv6: source port 0, destination port type*256+code of that direction.
    """
    opk, oby, rpk, rby = counters
    if f.proto in (6, 17):
        o_ports, left_ports = (f.orig_sport, f.orig_dport), (f.reply_dport, f.reply_sport)
        r_ports, back_ports = (f.reply_sport, f.reply_dport), (f.orig_dport, f.orig_sport)
    elif f.proto in (1, 58):  # the Expected tuples hold sport = echo id, dport = type<<8|code
        o_ports = left_ports = (0, f.orig_dport)
        r_ports = back_ports = (0, f.reply_dport)
    else:
        o_ports = left_ports = r_ports = back_ports = (0, 0)
    left = (f.reply_dst, f.reply_src, *left_ports)
    back = (f.orig_dst, f.orig_src, *back_ports)
    rows = [(f.orig_src, f.orig_dst, *o_ports, f.proto, opk, oby, *left, "I")]
    if f.nat != "none":
        rows.append((*left[:4], f.proto, opk, oby, *left, "E"))
    else:
        assert left == (f.orig_src, f.orig_dst, *o_ports), f"{f.name}: no NAT, yet translated"
    if f.replied:
        rows.append((f.reply_src, f.reply_dst, *r_ports, f.proto, rpk, rby, *back, "I"))
    return rows


def utc_ms(text: str) -> int:
    """nfdump's 'YYYY-mm-dd HH:MM:SS.mmm' (TZ=UTC) -> epoch ms."""
    stamp, ms = text.split(".")
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) * 1000 + int(ms)


def addr(text: str) -> str:
    return str(ipaddress.ip_address(text.strip()))


def nfdump_rows(cap: Nfcapd) -> list[dict[str, Any]]:
    out = []
    for cols in cap.rows(NFDUMP_FMT):
        rec = parse_nfdump_line("|".join(cols[:9]))
        rec["row"] = (
            *flow_fields(rec),
            addr(cols[9]),
            addr(cols[10]),
            int(cols[11]),
            int(cols[12]),
            cols[13],
        )
        rec["end"] = int(cols[14])
        rec["received_ms"] = utc_ms(cols[15])
        rec["vrf"] = (int(cols[16]), int(cols[17]))
        out.append(rec)
    return out


def decoded(fmt: str, row: Row) -> Row:
    """``row`` as nfdump 1.7 shows it: IPFIX IPv6 records lack 281/282 there."""
    if fmt == "ipfix" and ":" in row[0]:
        return (*row[:7], "0.0.0.0", "0.0.0.0", *row[9:])
    return row


def export_counters(rundir: Path) -> dict[str, int]:
    """The export stage's last ``stopped; {...}`` log line."""
    found: dict[str, int] = {}
    for line in (rundir / "export.log").read_text().splitlines():
        if " stopped; {" in line:
            found = ast.literal_eval(line.split(" stopped; ", 1)[1])
    return found


def mirrored_row(j: dict[str, Any]) -> Row:
    """A JSON mirror line as a Row (direction: egress for the original as it left)."""
    return (
        *flow_fields(j),
        j["post_src"],
        j["post_dst"],
        j["post_sport"],
        j["post_dport"],
        "E" if j["direction"] == "original_out" else "I",
    )


def destroyed(flows: list[labmod.Expected], destroys: list[Any]) -> list[tuple[Any, Any]]:
    """Each connection of the mix with its DESTROY as conntrack -E reported it."""
    by_key = {e.key(): e for e in destroys}
    out = []
    for f in flows:
        e = by_key.get((f.proto, f.orig_src, f.orig_dst, f.orig_sport, f.orig_dport))
        assert e is not None, f"{f.name}: no DESTROY from conntrack -E"
        assert (e.reply.src, e.reply.dst, e.reply.sport, e.reply.dport) == (
            f.reply_src,
            f.reply_dst,
            f.reply_sport,
            f.reply_dport,
        ), f.name
        out.append((f, e))
    return out


def witnessed(flows: list[labmod.Expected], destroys: list[Any]) -> list[tuple[Row, Any]]:
    """Each promised record with its connection's DESTROY as conntrack -E reported it."""
    out = []
    for f, e in destroyed(flows, destroys):
        counters = (e.orig.packets, e.orig.bytes, e.reply.packets, e.reply.bytes)
        exact = f.wire_bytes()
        if exact is not None:  # datagram flows: the lab knows the bytes exactly
            assert counters == (f.packets_orig, exact[0], f.packets_reply, exact[1]), f.name
        out += [(row, e) for row in promised(f, counters)]
    return out


def as_arrived(proto: int, t: Any) -> str:
    """An nfdump filter for the records of tuple ``t`` as it arrived (ports: TCP/UDP only;
    ICMP's are type.code in nfdump, GRE has none)."""
    ports = f" and src port {t.sport} and dst port {t.dport}" if proto in (6, 17) else ""
    return f"(proto {proto} and src ip {t.src} and dst ip {t.dst}{ports})"


def kernel_totals(conns: list[tuple[Any, Any]]) -> dict[str, dict[str, int]]:
    """Per direction, what nfdump -s must count of one record per direction: the kernel's
    packets and bytes at DESTROY, one flow per connection (reply: per replied one)."""
    out = {}
    for name in ("original", "reply"):
        tuples = [getattr(e, "orig" if name == "original" else "reply") for _, e in conns]
        out[name] = {
            "flows": sum(t.packets > 0 for t in tuples),
            "packets": sum(t.packets for t in tuples),
            "bytes": sum(t.bytes for t in tuples),
        }
    out["all"] = {k: out["original"][k] + out["reply"][k] for k in out["original"]}
    return out


def nfdump_totals(cap: Nfcapd, conns: list[tuple[Any, Any]]) -> dict[str, dict[str, int]]:
    """``nfdump -s proto`` of everything and of each direction as it arrived."""
    original = " or ".join(as_arrived(e.proto, e.orig) for _, e in conns)
    reply = " or ".join(as_arrived(e.proto, e.reply) for _, e in conns if e.reply.packets)
    return {
        "all": cap.totals(),
        "original": cap.totals(original),
        "reply": cap.totals(reply),
    }


@pytest.mark.root
@needs("nfcapd", "nfdump", "tshark")
@pytest.mark.timeout(180)
def test_live_lab_to_v9_ipfix_and_a_dead_collector(
    tmp_path: Path, lab_ready: None, ct_text: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "UTC")  # conntrack -o ktimestamp prints local time
    rundir = tmp_path / "run"
    dead = free_udp_port()  # bound and released: nothing listens there
    # Two rounds of the mix: a v5 datagram holds the IPv4 records of one round, and the
    # dead collector's refusal (ICMP port unreachable) shows on the send after the first.
    rounds: list[tuple[list[labmod.Expected], Path]] = []
    with (
        labmod.running(prefix()) as lab,
        Nfcapd() as v9cap,
        Nfcapd() as ipfixcap,
        Nfcapd() as tripletcap,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw,
    ):
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        raw.bind(("127.0.0.1", 0))
        subprocess.run(
            ["ip", "netns", "exec", lab.fw, "nft", "-f", "-"],
            input=ZONE_RULESET,
            text=True,
            check=True,
            timeout=30,
        )
        source = netlink_source(lab.fw, "set_sysctls 1")
        export = export_block(
            EXADDR,
            (v9cap.port, 9),
            (ipfixcap.port, 10),
            (dead, 5),
            (tripletcap.port, 9, "records triplet"),
            (raw.getsockname()[1], 10),
        )
        # the dead collector is not held (README "Pacing"): dropped at once, it costs the
        # others nothing (held, it would hold them all for refused_hold s)
        export = export.replace("<export>\n", "<export>\n  refused_hold 0\n")
        conf = write_config(rundir, source + export, screen_format="json")
        try:
            nfflowd("-c", str(conf), "start")
            wait_all_running(rundir)
            n = 0
            for i in range(2):
                events = tmp_path / f"conntrack-E-{i}.log"
                with open(events, "wb") as fh, labmod.capture(lab, fh, "timestamp,ktimestamp,id"):
                    flows = labmod.traffic(lab)
                    time.sleep(3.5)  # natural ends: TIME_WAIT and the 3 s datagram timeouts
                    labmod.expire(lab)
                    if i == 1:
                        labmod.flush(lab)
                    n += sum(1 + (f.nat != "none") + f.replied for f in flows)
                    wait_lines(rundir / "mirror.out", n)
                rounds.append((flows, events))
        finally:
            nfflowd("-c", str(conf), "stop", check=False)
        assert not control.is_running(str(rundir))
        raw.setblocking(False)
        ipfix_datagrams = []
        while True:
            try:
                ipfix_datagrams.append(raw.recv(65535))
            except BlockingIOError:
                break
        caps = {"v9": v9cap, "ipfix": ipfixcap, "v9 triplet": tripletcap}
        got = {name: nfdump_rows(cap) for name, cap in caps.items()}
        # each connection of both rounds with its DESTROY (conntrack -E): nfdump's statistics
        conns = [
            conn
            for flows, events in rounds
            for conn in destroyed(
                flows, [e for e in ct_text.events(events.read_text()) if e.type == "DESTROY"]
            )
        ]
        totals = {name: nfdump_totals(cap, conns) for name, cap in caps.items()}

    # 1. conntrack-tools saw each connection with the tuples the lab promises, and the
    #    kernel's start/stop of each (to the second) with its NEW and DESTROY (to the ms)
    witness: list[tuple[Row, Any]] = []
    kernel: list[tuple[Row, int, int, int, int]] = []  # row, start s, stop s, NEW ms, DESTROY ms
    connection: dict[tuple[Row, int], tuple[int, int]] = {}  # (row, start s) -> round, ct id
    per_connection: dict[tuple[int, int], tuple[int, int]] = {}  # records: per direction, triplet
    for i, (flows, events) in enumerate(rounds):
        assert {f.nat for f in flows} == {"snat", "dnat", "none"}
        assert {f.family for f in flows} == {4, 6}
        seen = ct_text.events(events.read_text())
        destroys = [e for e in seen if e.type == "DESTROY"]
        news = {e.key(): e for e in seen if e.type == "NEW"}
        kernel_s = kernel_seconds(events)  # conntrack ids are unique within one round
        round_witness = witnessed(flows, destroys)
        for row, e in round_witness:
            assert e.ct_id in kernel_s, f"{row}: no [start=] [stop=] on its DESTROY"
            assert e.key() in news, f"{row}: no NEW from conntrack -E"
            seen_ms = round(news[e.key()].time * 1000), round(e.time * 1000)
            kernel.append((row, *kernel_s[e.ct_id], *seen_ms))
            connection[(row, kernel_s[e.ct_id][0])] = (i, e.ct_id)
        for f, e in destroyed(flows, destroys):  # the README's rules, by connection
            per_connection[(i, e.ct_id)] = (1 + f.replied, 1 + (f.nat != "none") + f.replied)
        witness += round_witness
    want = [row for row, _ in witness]
    assert len(want) == n and len(connection) == n  # no two records alike
    # one record per direction: the original as it left (egress, "E") is not sent
    per_direction = [w for w in want if w[11] != "E"]
    assert len(per_direction) == sum(1 + f.replied for flows, _ in rounds for f in flows)

    # 2. each collector stored exactly those records, post-NAT side included, in time
    for name, recs in got.items():
        fmt, triplet = name.split()[0], name.endswith("triplet")
        sent = want if triplet else per_direction
        assert Counter(r["row"] for r in recs) == Counter(decoded(fmt, w) for w in sent), name
        assert {":" in r["src"] for r in recs} == {True, False}, name
        assert {r["end"] for r in recs} == ({0} if fmt == "v9" else {3}), name  # v9: no IE 136
        # from the DESTROY (as conntrack -E stamped it) to the collector
        destroy_ms: dict[Row, list[int]] = {}
        for w, e in witness:
            destroy_ms.setdefault(decoded(fmt, w), []).append(round(e.time * 1000))
        late = sorted(min(abs(r["received_ms"] - d) for d in destroy_ms[r["row"]]) for r in recs)
        assert late[-1] <= MAX_LATENCY_MS, (name, late)
    assert any(":" in r["row"][7] and r["row"][7] != r["src"] for r in got["v9"])  # v9: 281

    # 2b. times: each record's first/last are its connection's kernel start/stop, to the
    #     second as conntrack-tools prints them; and to the ms, the kernel's start is taken
    #     with the first packet, which conntrack -E reports as NEW a moment later, and its
    #     stop is before (a timeout that expired earlier) or at the DESTROY conntrack -E read
    for name, recs in got.items():
        fmt, triplet = name.split()[0], name.endswith("triplet")
        sent = [k for k in kernel if triplet or k[0][11] != "E"]
        assert Counter((r["row"], r["first_ms"] // 1000, r["last_ms"] // 1000) for r in recs) == (
            Counter((decoded(fmt, w), start, stop) for w, start, stop, _, _ in sent)
        ), name
        stamps: dict[tuple[Any, ...], list[tuple[int, int]]] = {}
        for w, start, stop, new_at, destroy_at in sent:
            stamps.setdefault((decoded(fmt, w), start, stop), []).append((new_at, destroy_at))
        for r in recs:
            first, last = r["first_ms"], r["last_ms"]
            assert any(
                0 <= new_at - first <= TIME_SLACK_MS and first <= last <= destroy_at + TIME_SLACK_MS
                for new_at, destroy_at in stamps[(r["row"], first // 1000, last // 1000)]
            ), (name, r, stamps[(r["row"], first // 1000, last // 1000)])

    # 2c. records per connection at each collector: 2 when replied, 1 when not (per
    #     direction), 3 / 2 for a NATed one with the triplet (records matched to their
    #     connection by their tuple and the kernel's start second, checked above)
    for name, recs in got.items():
        fmt, triplet = name.split()[0], name.endswith("triplet")
        conn_of = {(decoded(fmt, row), start): c for (row, start), c in connection.items()}
        assert len(conn_of) == len(connection), name
        count = Counter(conn_of[(r["row"], r["first_ms"] // 1000)] for r in recs)
        assert count == {c: both[triplet] for c, both in per_connection.items()}, name
    # 2 rounds of the mix: 9 replied connections and 1 unreplied each (udp4-unreplied)
    assert Counter(pd for pd, _ in per_connection.values()) == {2: 18, 1: 2}

    # 2d. nfdump's statistics (-s) are the kernel's counters, direction by direction and
    #     in total; with the triplet the total counts NATed originals twice
    kernel_sum = kernel_totals(conns)
    nated = [e.orig for f, e in conns if f.nat != "none"]
    twice = {
        "flows": len(nated),
        "packets": sum(t.packets for t in nated),
        "bytes": sum(t.bytes for t in nated),
    }
    for name, total in totals.items():
        assert total["original"] == kernel_sum["original"], (name, total)
        assert total["reply"] == kernel_sum["reply"], (name, total)
        if name.endswith("triplet"):
            assert total["all"] == {k: v + twice[k] for k, v in kernel_sum["all"].items()}, total
        else:
            assert total["all"] == kernel_sum["all"], (name, total)

    # 3. both decoders got the same records, times to the ms included (281/282 aside)
    def comparable(r: dict[str, Any]) -> Row:
        return (*decoded("ipfix", r["row"]), r["first_ms"], r["last_ms"])

    assert Counter(map(comparable, got["v9"])) == Counter(map(comparable, got["ipfix"]))

    # 4. the dead collector refused its datagrams and cost the others nothing: they got
    #    every record (above), in time (above), without a send error
    c = export_counters(rundir)
    assert c, "the export stage logged no counters when it stopped"
    assert c["c0_send_errors"] == c["c1_send_errors"] == c["c3_send_errors"] == 0, c
    assert c["c0_datagrams_sent"] >= 2 and c["c1_datagrams_sent"] >= 2, c
    assert c["c2_refused"] > 0 and c["c2_dropped"] > 0, c  # refused, not held: dropped
    # records per direction: the originals as they left counted, not sent
    assert c["c0_left_out"] == c["c1_left_out"] == len(nated) and c["c3_left_out"] == 0, c
    assert (c["c0_records"], c["c1_records"], c["c3_records"]) == (
        len(per_direction),
        len(per_direction),
        n,
    ), c

    # 5. the JSON mirror: every record with every field, the IPv6 post-NAT side too
    lines = [json_lines.parse_line(x) for x in (rundir / "mirror.out").read_text().splitlines()]
    assert Counter(map(mirrored_row, lines)) == Counter(want)
    assert Counter((mirrored_row(j), j["ct_id"]) for j in lines) == Counter(
        (w, e.ct_id) for w, e in witness
    )
    assert Counter((mirrored_row(j), j["first_ms"], j["last_ms"]) for j in lines) == Counter(
        (r["row"], r["first_ms"], r["last_ms"]) for r in got["v9 triplet"]
    )
    for j in lines:
        assert (j["exaddr"], j["end_reason"], j["mark"], j["zone"]) == (
            EXADDR,
            "end_of_flow",
            0,
            ZONE,
        ), j
        egress = j["direction"] == "original_out"
        assert egress or j["direction"] in ("original_in", "reply_in"), j
    v6 = [j for j in lines if j["family"] == 6]
    # NAT66: the original leaves as 2001:db8:1::1, the reply goes back to fd00:1::2
    assert {j["direction"] for j in v6 if j["post_src"] != j["src"]} == {"original_in"}
    assert {j["direction"] for j in v6 if j["post_dst"] != j["dst"]} == {"reply_in"}

    # 6. context: every record at every nfcapd has the zone as its ingress and egress VRF id;
    #    tshark reads the IPFIX datagrams the socket got: each record's flowId is its
    #    connection's conntrack id as conntrack-tools reported it (-o id), its VRF ids the zone
    for name, recs in got.items():
        assert {r["vrf"] for r in recs} == {(ZONE, ZONE)}, name
    flow_sets = range(ipfix.TEMPLATE_ID_V4, ipfix.TEMPLATE_ID_V6 + 1)  # not options (260)
    records = [
        r
        for layer in tshark_packets(ipfix_datagrams, tmp_path)
        for r in data_records(layer, flow_sets)
    ]

    def with_id(r: dict[str, Any]) -> tuple[Any, ...]:
        v6 = "v6" if "cflow.srcaddrv6" in r else ""
        return (
            r[f"cflow.srcaddr{v6}"],
            r[f"cflow.dstaddr{v6}"],
            int(r["cflow.srcport"]),
            int(r["cflow.dstport"]),
            int(r["cflow.protocol"]),
            int(r["cflow.flow_id"]),
        )

    assert Counter(map(with_id, records)) == Counter(
        (*w[:5], e.ct_id) for w, e in witness if w[11] != "E"
    )
    assert {(r["cflow.ingress_vrfid"], r["cflow.egress_vrfid"]) for r in records} == {
        (str(ZONE), str(ZONE))
    }
