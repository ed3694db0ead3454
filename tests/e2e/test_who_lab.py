"""``nfflowd who`` on the lab: connections through the kernel's SNAT and a port forward.

nfflowd (``nfflowd start``, the lab firewall's conntrack over netlink) exports to a
v5 nfcapd and an IPFIX nfcapd and mirrors JSON lines to ``mirror.out``; the lab's mix
runs (SNAT TCP and UDP, an unreplied UDP flow, NAT66, the port forward
203.0.113.1:8080 -> 10.0.1.2:80, connections no NAT changed).  conntrack-tools'
``conntrack -E`` in the firewall is the judge of each connection's tuples and time.
Then, for every translated TCP/UDP connection, ``nfflowd who PUBLIC:PORT --at T``
with T its NEW as conntrack -E stamped it must find exactly that connection's private
host and port and its remote end, from each source: the v5 directory (triplets), the
IPFIX directory (post-NAT fields; IPv6 through the records' join, nfdump 1.7 storing
no IEs 281/282), and the JSON mirror, both named with ``--from`` and inferred from
the configuration.  A TCP connection no NAT changed is found by its own host (private =
public).  A minute before the lab existed nothing is found (exit 1); a source that
does not exist is exit 2.  Coverage: every connection is found in a window the
journal proves complete; the minute before is "not recorded"; ingest, killed on
purpose after the traffic, leaves a ``not_listening`` gap that ``who`` reports.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from nfflowd import lab as labmod
from nfflowd.lab.nfcapd import Nfcapd
from nfflowd.ops import cli
from nfflowd.pipeline import coverage
from tests.lab_names import end_connections, lab_prefix
from tests.needs import needs
from tests.pipeline_harness import (
    export_block,
    netlink_source,
    nfflowd,
    running_pid,
    wait_all_running,
    wait_lines,
    write_config,
)


def wait_listening(rundir: Path, timeout: float = 20) -> None:
    """Until ingest says it listens to the kernel (a stage RUNNING may still be starting)."""
    log = rundir / "ingest.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and "listening to conntrack" in log.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"ingest is not listening after {timeout}s")


def who(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    rc = cli.main([*args, "--json"])
    out = capsys.readouterr().out
    return rc, json.loads(out) if out.startswith("{") else {}


def journaled(rundir: Path, kind: str) -> list[dict[str, Any]]:
    """The coverage journal's records of *kind* (write_config: statedir <rundir>.state)."""
    found = coverage.read(str(rundir.with_suffix(".state")))
    return [r for r in found.records if r["kind"] == kind]


def point(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@pytest.mark.root
@needs("nfcapd", "nfdump")
@pytest.mark.timeout(180)
def test_who_finds_each_lab_connection_from_every_source(
    tmp_path: Path,
    lab_ready: None,
    ct_text: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rundir = tmp_path / "run"
    events = tmp_path / "conntrack-E.log"
    with (
        labmod.running(lab_prefix("w")) as lab,
        Nfcapd(tmp_path / "v5") as v5cap,
        Nfcapd(tmp_path / "ipfix") as ipfixcap,
    ):
        source = netlink_source(lab.fw, "set_sysctls 1")
        export = export_block("192.0.2.1", (v5cap.port, 5), (ipfixcap.port, 10))
        conf = write_config(rundir, source + export, screen_format="json")
        try:
            nfflowd("-c", str(conf), "start")
            wait_all_running(rundir)
            wait_listening(rundir)
            with open(events, "wb") as fh, labmod.capture(lab, fh, "timestamp,id"):
                flows = labmod.traffic(lab)
                end_connections(lab)
            n = sum(1 + (f.nat != "none") + f.replied for f in flows)
            wait_lines(rundir / "mirror.out", n)
            # ingest killed on purpose: a not_listening gap until supervisord's restart listens
            traffic_done = coverage.now_ms()
            pid = running_pid(rundir, "ingest")
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while len(journaled(rundir, "started")) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            nfflowd("-c", str(conf), "stop", check=False)
        v5cap.stop()
        ipfixcap.stop()

        seen = ct_text.events(events.read_text())
        news = {e.key(): e for e in seen if e.type == "NEW"}
        asked = [f for f in flows if f.nat in ("snat", "dnat") and f.proto in (6, 17)]
        assert {f.nat for f in asked} == {"snat", "dnat"} and {f.family for f in asked} == {4, 6}
        sources = {
            "v5": ["--from", str(tmp_path / "v5")],
            "ipfix": ["--from", str(tmp_path / "ipfix")],
            "json": ["--from", str(rundir / "mirror.out")],
            "configuration": [],  # <rundir>/mirror.out, from the format json dispatcher
        }
        first_start = journaled(rundir, "started")[0]["at_ms"]
        stopped_at = journaled(rundir, "stopped")[-1]["at_ms"]
        for f in asked:
            new = news[(f.proto, f.orig_src, f.orig_dst, f.orig_sport, f.orig_dport)]
            at = f"{new.time:.3f}"
            if f.nat == "snat":  # the kernel's tuples: public = where the reply went
                public, private = (f.reply_dst, f.reply_dport), (f.orig_src, f.orig_sport)
                remote = (f.orig_dst, f.orig_dport)
            else:  # the port forward: public = where the original went
                public, private = (f.orig_dst, f.orig_dport), (f.reply_src, f.reply_sport)
                remote = (f.orig_src, f.orig_sport)
            assert public != private, f.name
            for name, args in sources.items():
                if name == "v5" and f.family == 6:
                    continue  # v5 carries no IPv6
                rc, doc = who(capsys, "-c", str(conf), "who", point(*public), "--at", at, *args)
                assert rc == 0, (f.name, name, doc)
                # the lab ran inside one recorded ingest run: the only gap a 5 s window can
                # overlap is the kill after the traffic, and the only unrecorded parts are
                # before ingest first listened and after the stop
                cov = doc["coverage"]
                assert cov["recorded"] is True, (f.name, name, cov)
                # (from the idle ingest's last heartbeat: stored about once a second)
                assert all(g["from_ms"] >= traffic_done - 1500 for g in cov["gaps"]), cov
                assert all(
                    u["until_ms"] < first_start or u["from_ms"] > stopped_at
                    for u in cov["unrecorded"]
                ), cov
                got = [
                    (
                        (m["private"]["address"], m["private"]["port"]),
                        (m["remote"]["address"], m["remote"]["port"]),
                    )
                    for m in doc["matches"]
                ]
                assert got == [(private, remote)], (f.name, name, doc)
                (m,) = doc["matches"]
                assert m["first_ms"] <= new.time * 1000 + 5000 and m["records"], (f.name, name)
                assert m["from_private"] is not None or m["to_private"] is not None

        # a connection no NAT changed: its own host, on every source that carries it
        for f in (f for f in flows if f.nat == "none" and f.proto == 6):
            new = news[(f.proto, f.orig_src, f.orig_dst, f.orig_sport, f.orig_dport)]
            host = (f.orig_src, f.orig_sport)
            for name, args in sources.items():
                if name == "v5" and f.family == 6:
                    continue
                at = f"{new.time:.3f}"
                rc, doc = who(capsys, "-c", str(conf), "who", point(*host), "--at", at, *args)
                (m,) = doc["matches"]
                assert rc == 0 and m["translated"] is False, (f.name, name, doc)
                assert (m["private"]["address"], m["private"]["port"]) == host, (f.name, name)
                assert (m["remote"]["address"], m["remote"]["port"]) == (f.orig_dst, f.orig_dport)

        # a minute before the lab existed: nothing, exit 1
        f = next(f for f in asked if f.nat == "snat")
        new = news[(f.proto, f.orig_src, f.orig_dst, f.orig_sport, f.orig_dport)]
        before = f"{new.time - 60:.3f}"
        for name, args in sources.items():
            asked_for = point(f.reply_dst, f.reply_dport)
            rc, doc = who(capsys, "-c", str(conf), "who", asked_for, "--at", before, *args)
            assert rc == 1 and doc["matches"] == [], (name, doc)
            # before the first start: not recorded, so not found is no proof
            cov = doc["coverage"]
            assert cov["recorded"] is True and cov["complete"] is False and cov["unrecorded"]
        (gap,) = [g for g in journaled(rundir, "gap") if g["cause"] == "not_listening"]
        starts = journaled(rundir, "started")
        assert len(starts) == 2 and gap["to_ms"] == starts[1]["at_ms"]
        assert gap["from_ms"] >= traffic_done - 1500  # the heartbeat of an idle ingest: ~1 s
        inside = f"{(gap['from_ms'] + gap['to_ms']) // 2 / 1000:.3f}"
        rc, doc = who(
            capsys, "-c", str(conf), "who", "203.0.113.1:8080", "--at", inside, "--window", "0"
        )
        assert rc == 1 and doc["coverage"]["complete"] is False, doc
        assert [g["cause"] for g in doc["coverage"]["gaps"]] == ["not_listening"], doc
        rc = cli.main(["-c", str(conf), "who", "203.0.113.1", "--from", str(tmp_path / "nope")])
        assert rc == 2
        assert f"{tmp_path}/nope: no such file or directory" in capsys.readouterr().err
