"""End-to-end replay benchmark: a large generated event log through the supervised pipeline.

    python bench/bench_pipeline.py [--events 1000000] [--syslog]

Generates a realistic `conntrack -E` log (nfflowd/lab/events.py), starts a private
nfcapd with a large socket buffer, runs `nfflowd replay` into it (mirror to a
file-backed screen dispatcher, or to a private rsyslogd with --syslog) and
prints events/s, records/s, records lost at the collector and in the mirror,
and the peak RSS of every stage.  Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nfflowd import topology
from nfflowd.config import Settings, load
from nfflowd.lab.events import generate
from nfflowd.lab.nfcapd import Nfcapd
from nfflowd.ops import replay
from nfflowd.ops.demo import demo_settings


def replay_settings(collector_port: int, correlators: int = 1, exporters: int = 1) -> Settings:
    """The built-in defaults, exporting v5 to nfcapd on loopback and mirroring to the screen
    (the demo's settings, its default run directory), with *correlators* and *exporters*."""
    base = demo_settings(collector_port, load(None).daemon.rundir)
    daemon = dataclasses.replace(base.daemon, correlators=correlators, exporters=exporters)
    return dataclasses.replace(base, daemon=daemon)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    ap.add_argument("--correlators", type=int, default=1, help="<daemon> correlators")
    ap.add_argument("--exporters", type=int, default=1, help="<daemon> exporters")
    ns = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nfflowd-bench-"))
    log = work / "events.log"
    t0 = time.perf_counter()
    expected = generate(str(log), ns.events)
    print(
        f"generated {ns.events} events ({expected} expected records, IPv6 included) "
        f"in {time.perf_counter() - t0:.1f} s: {log}"
    )
    rundir = str(work / "run")
    with Nfcapd(extra_args=["-B", "8388608"]) as cap:
        settings = replay_settings(cap.port, ns.correlators, ns.exporters)
        t1 = time.perf_counter()
        counters = replay.run(settings, [str(log)], rundir=rundir)
        elapsed = time.perf_counter() - t1
        stored = cap.stats().get("Flows", -1)
    mirrored = 0
    for name in os.listdir(rundir):  # supervisord rotates the screen output (mirror.out.N)
        if name.startswith("mirror.out"):
            with open(os.path.join(rundir, name), "rb") as fh:
                mirrored += fh.read().count(b"\n")  # a line split by rotation counts once
    exports = [c for name, c in counters.items() if name.split("-")[0] == "export"]
    v4_expected = sum(c.get("records", 0) - c.get("c0_skipped_ipv6", 0) for c in exports)
    skipped = sum(c.get("c0_skipped_ipv6", 0) for c in exports)
    correlated = sum(c.get("records", 0) for n, c in counters.items() if n.startswith("correlate"))
    print(f"replay wall time (incl. supervisord start/stop): {elapsed:.2f} s")
    print(f"events/s end to end: {ns.events / elapsed:,.0f}")
    print(f"records/s end to end: {expected / elapsed:,.0f}")
    print(f"shards: {ns.correlators} correlate, {ns.exporters} export")
    print(
        f"records: expected {expected}, correlated {correlated}, "
        f"mirrored {mirrored} (lost {expected - mirrored})"
    )
    print(
        f"collector: IPv4 records sent {v4_expected}, stored by nfcapd {stored} "
        f"(lost {v4_expected - stored}); IPv6 skipped by v5: {skipped}"
    )
    total_cpu = 0
    order = {s: i for i, s in enumerate(("ingest", "correlate", "export", "mirror"))}
    for name in sorted(counters, key=lambda n: (order.get(topology.stage_of(n), 9), n)):
        c = counters[name]
        total_cpu += c.get("cpu_ms", 0)
        print(
            f"{name:<12} peak RSS {c.get('peak_rss_kb', 0) / 1024:6.1f} MiB   "
            f"CPU {c.get('cpu_ms', 0) / 1000:6.2f} s   "
            f"{1000 * c.get('cpu_ms', 0) / ns.events:5.1f} us/event"
        )
    print(f"all stages: {1000 * total_cpu / ns.events:.1f} us of CPU per event")
    if not ns.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
