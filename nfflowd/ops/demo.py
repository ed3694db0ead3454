"""``nfflowd demo`` (the README's first command): nfflowd on the embedded default.

With root and network namespaces: the built-in NAT lab (client -> firewall with
SNAT/DNAT/no NAT -> server, IPv4 and IPv6), nfflowd reading the firewall's
conntrack over ctnetlink from outside its namespace, a local nfcapd as the
collector.  Without them: the bundled conntrack log captured from that lab,
replayed through the same four stages.  Either way it prints what the
collector stored (``nfdump -r``) next to nfflowd's own CSV lines.

``--log-only`` replays the bundled log even where the lab could run (quick, no
namespaces); ``--prefix P`` names the lab's namespaces (so a test's lab cannot
collide with another one's).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from nfflowd import lab
from nfflowd.config import Collector, Dispatcher, Settings, load
from nfflowd.lab.nfcapd import Nfcapd
from nfflowd.ops import control, replay

BUNDLED_LOG = "demo-events.log"


def demo_settings(port: int, rundir: str, source: dict[str, Any] | None = None) -> Settings:
    base = load(None)
    export = dataclasses.replace(
        base.export,
        exaddr="127.0.0.1",
        collectors=(Collector(address="127.0.0.1", port=port, version=5),),
    )
    mirror = dataclasses.replace(
        base.mirror, dispatchers=(Dispatcher(name="screen", kind="screen"),)
    )
    settings = dataclasses.replace(
        base,
        export=export,
        mirror=mirror,
        # the demo's coverage journal is the demo's: never the host's /var/lib/nfflowd
        daemon=dataclasses.replace(
            base.daemon, rundir=rundir, statedir=os.path.join(rundir, "state")
        ),
    )
    if source:
        settings = dataclasses.replace(
            settings, source=dataclasses.replace(settings.source, **source)
        )
    return settings


def show(cap: Nfcapd, rundir: str) -> None:
    rows = cap.records()
    print(f"\n== what the collector (nfcapd) stored: {len(rows)} NetFlow v5 records ==")
    print(
        f"{'first (UTC)':<23} {'proto':>5}  {'source':>22} -> {'destination':<22} "
        f"{'packets':>7} {'bytes':>8}"
    )
    for r in rows:
        first = time.strftime("%H:%M:%S", time.gmtime(r["first_ms"] / 1000))
        first += f".{r['first_ms'] % 1000:03d}"
        src = f"{r['src']}:{r['sport']}"
        dst = f"{r['dst']}:{r['dport']}"
        print(
            f"{first:<23} {r['proto']:>5}  {src:>22} -> {dst:<22} {r['packets']:>7} {r['bytes']:>8}"
        )
    out = os.path.join(rundir, "mirror.out")
    lines = Path(out).read_text().splitlines() if os.path.exists(out) else []
    print(f"\n== nfflowd's own flow-tools CSV lines (what syslog gets): {len(lines)} ==")
    print(
        "unix_secs,unix_nsecs,sysuptime,exaddr,dpkts,doctets,first,last,srcaddr,dstaddr,"
        "nexthop,input,output,srcport,dstport,prot,tos,tcp_flags"
    )
    for line in lines:
        print(line)
    print(
        "\nOne NATed connection gives three records: as it arrived, as it left the firewall "
        "(post-NAT), and the reply; an un-NATed one gives two.  IPv6 flows are in the CSV "
        "only: NetFlow v5 cannot carry them."
    )


def log_demo(rundir: str) -> int:
    path = str(resources.files("nfflowd.data").joinpath(BUNDLED_LOG))
    with Nfcapd() as cap:
        settings = demo_settings(cap.port, rundir)
        print(f"replaying the bundled conntrack log {path}")
        replay.run(settings, [path], rundir=rundir, out=None)
        show(cap, rundir)
    return 0


def lab_demo(rundir: str, prefix: str = lab.DEFAULT_PREFIX) -> int:
    with lab.running(prefix) as the_lab, Nfcapd() as cap:
        settings = demo_settings(
            cap.port, rundir, {"type": "netlink", "netns": the_lab.fw, "set_sysctls": True}
        )
        print(
            f"lab up: {the_lab.client} -> {the_lab.fw} (NAT) -> {the_lab.server}; "
            f"nfflowd reads {the_lab.fw}'s conntrack over ctnetlink"
        )
        proc = control.launch_foreground(settings, rundir, silent=True)
        try:
            time.sleep(1.0)  # the ingest stage subscribes and dumps the table
            flows = lab.traffic(the_lab)
            print(f"traffic: {len(flows)} connections ({', '.join(f.name for f in flows)})")
            # let the connections end by themselves (TIME_WAIT, UDP/ICMP/GRE timeouts: 3 s)
            time.sleep(3.5)
            lab.expire(the_lab)
            lab.flush(the_lab)  # anything still open
            time.sleep(1.0)
        finally:
            control.stop(rundir)
            proc.wait(60)
        show(cap, rundir)
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="nfflowd demo")
    p.add_argument("--log-only", action="store_true", help="replay the bundled log, no lab")
    p.add_argument("--prefix", default=lab.DEFAULT_PREFIX, help="the lab's namespace prefix")
    ns = p.parse_args(argv)
    rundir = tempfile.mkdtemp(prefix="nfflowd-demo-")
    if ns.log_only:
        return log_demo(rundir)
    reason = lab.available()
    if reason is None:
        return lab_demo(rundir, ns.prefix)
    print(f"the NAT lab cannot run here ({reason}): falling back to the bundled log")
    return log_demo(rundir)
