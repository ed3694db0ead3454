"""nfflowd against the technique of the 2009 Perl tool it re-creates, on one generated log.

    .venv/bin/python bench/bench_vs_seed.py [--events 1000000] [--keep]

Generates one realistic `conntrack -E -o timestamp,id` log (nfflowd/lab/events.py) and
runs, one after the other:

1. ``bench/seed_ct2ft.pl``: the seed's ct2ft loop in Perl (regex substitution,
   positional fields, a hash of NEW times, three flow-tools CSV lines per
   DESTROY, to a file; see its header for what it does and does not do);
2. nfflowd in one process, one core: ``nfflowd.conntrack.text.parse_line`` +
   ``nfflowd.correlate.correlator.Correlator``, no IPC (the like-for-like figure), then the
   same plus the flow-tools CSV line of every record written to a file (what the
   Perl loop also does);
3. nfflowd's supervised pipeline (``nfflowd replay``, as bench/bench_pipeline.py):
   v5 into a private ``nfcapd -B 8388608``, mirror to the screen dispatcher.

Prints wall time, CPU time, events/s, records and the ratios against the seed,
and checks the seed's record count against what the generator says the seed
can produce: three records per IPv4 TCP, UDP and ICMP-echo connection, except
unreplied UDP, whose DESTROY line the seed's positional parser cannot match.
nfflowd also handles IPv6, GRE and unreplied flows and writes 1-3 records per
connection (two when there is no NAT).  Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_pipeline import replay_settings
from nfflowd.conntrack.text import ParseError, parse_line
from nfflowd.correlate.correlator import Correlator
from nfflowd.formats.flowtools_csv import format_block
from nfflowd.lab.events import generate
from nfflowd.lab.nfcapd import Nfcapd
from nfflowd.messages import FLOW_RECORD
from nfflowd.ops import replay

HERE = Path(__file__).resolve().parent
#: Connection kinds (nfflowd.lab.events tally) the seed turns into three records each.
SEED_KINDS = ("ipv4 tcp", "ipv4 udp", "ipv4 icmp")


@dataclasses.dataclass
class Run:
    name: str
    wall_s: float
    cpu_s: float
    records: int
    note: str = ""


def _cpu(who: int) -> float:
    u = resource.getrusage(who)
    return u.ru_utime + u.ru_stime


def _load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def run_seed(log: Path, out: Path) -> tuple[Run, str]:
    """The Perl loop, timed; its -s counters line (stderr) comes back too."""
    c0, t0 = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    with open(out, "wb") as fh:
        res = subprocess.run(
            ["perl", str(HERE / "seed_ct2ft.pl"), "-s", str(log)],
            stdout=fh,
            stderr=subprocess.PIPE,
            check=True,
        )
    wall, cpu = time.perf_counter() - t0, _cpu(resource.RUSAGE_CHILDREN) - c0
    with open(out, "rb") as fh:
        records = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
    return Run("seed ct2ft (perl, 1 process)", wall, cpu, records), res.stderr.decode().strip()


def run_in_process(log: Path, csv_path: Path | None) -> Run:
    """parse_line + Correlator.feed over the log in this process (+ CSV lines to a file)."""
    corr = Correlator()
    feed = corr.feed
    out = bytearray()
    records = malformed = 0
    boot_ms = time.time_ns() // 1_000_000
    c0, t0 = _cpu(resource.RUSAGE_SELF), time.perf_counter()
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(open(log))
        dst: TextIO | None = None
        if csv_path is not None:
            dst = stack.enter_context(open(csv_path, "w"))
        for line in src:
            try:
                ev = parse_line(line)
            except ParseError:
                malformed += 1
                continue
            if ev is None:
                continue
            feed(ev, out)
            if out:
                records += len(out) // FLOW_RECORD.size
                if dst is not None:
                    lines = format_block(bytes(out), exaddr="127.0.0.1", boot_ms=boot_ms)
                    dst.write("".join(f"{line}\n" for line in lines))
                out.clear()
    wall, cpu = time.perf_counter() - t0, _cpu(resource.RUSAGE_SELF) - c0
    name = "nfflowd parse+correlate" + (" + CSV to file" if csv_path else "") + " (1 process)"
    return Run(name, wall, cpu, records, f"{malformed} malformed" if malformed else "")


def run_pipeline(log: Path, rundir: Path, correlators: int = 1) -> Run:
    """``nfflowd replay`` into nfcapd, as bench_pipeline.py does; CPU = sum over the stages."""
    with Nfcapd(extra_args=["-B", "8388608"]) as cap:
        settings = replay_settings(cap.port, correlators)
        t0 = time.perf_counter()
        counters = replay.run(settings, [str(log)], rundir=str(rundir))
        wall = time.perf_counter() - t0
        stored = cap.stats().get("Flows", -1)
    mirrored = 0
    for name in os.listdir(rundir):  # supervisord rotates the screen output (mirror.out.N)
        if name.startswith("mirror.out"):
            with open(rundir / name, "rb") as fh:
                mirrored += fh.read().count(b"\n")
    cpu = sum(c.get("cpu_ms", 0) for c in counters.values()) / 1000
    records = sum(c.get("records", 0) for n, c in counters.items() if n.startswith("correlate"))
    exports = [c for n, c in counters.items() if n.startswith("export")]
    skipped = sum(c.get("c0_skipped_ipv6", 0) for c in exports)
    note = f"mirrored {mirrored}, nfcapd stored {stored} (+{skipped} IPv6 not in v5)"
    what = "4 stages" if correlators == 1 else f"{correlators} correlators"
    return Run(f"nfflowd pipeline ({what}, replay)", wall, cpu, records, note)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--no-pipeline", action="store_true", help="skip the supervised pipeline")
    ap.add_argument("--correlators", default="1", help="pipeline runs: correlator counts, e.g. 1,2")
    ns = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nfflowd-vs-seed-"))
    log = work / "events.log"
    tally: dict[str, int] = {}
    t0 = time.perf_counter()
    expected = generate(str(log), ns.events, tally=tally)
    seed_conns = sum(tally.get(k, 0) for k in SEED_KINDS)
    print(f"generated {ns.events:,} events in {time.perf_counter() - t0:.1f} s: {log}")
    print("destroyed connections: " + ", ".join(f"{k} {v:,}" for k, v in sorted(tally.items())))
    print(
        f"nfflowd must produce {expected:,} records; the seed 3 x {seed_conns:,} = "
        f"{3 * seed_conns:,} (IPv4 TCP, UDP, ICMP echo; not IPv6, GRE, unreplied UDP)"
    )
    print(
        f"{os.cpu_count()} cores, shared with other engineers' test runs: "
        "the load average before each run is shown"
    )

    runs: list[Run] = []
    print(f"[seed] {_load()}", flush=True)
    seed, seed_stats = run_seed(log, work / "seed.csv")
    runs.append(seed)
    print(f"[seed] counters: {seed_stats}")
    print(f"[in-process] {_load()}", flush=True)
    runs.append(run_in_process(log, None))
    print(f"[in-process + CSV] {_load()}", flush=True)
    runs.append(run_in_process(log, work / "nfflowd.csv"))
    if not ns.no_pipeline:
        print(f"[pipeline] {_load()}", flush=True)
        for n in (int(c) for c in ns.correlators.split(",")):
            runs.append(run_pipeline(log, work / f"run-{n}", n))

    print()
    print(
        f"{'run':50} {'wall s':>7} {'CPU s':>7} {'events/s':>9} {'ev/CPU-s':>9} "
        f"{'records':>10} {'vs seed':>8} {'per CPU':>8}"
    )
    for r in runs:
        rate, per_cpu = ns.events / r.wall_s, ns.events / max(r.cpu_s, 1e-9)
        ratio = seed.wall_s / r.wall_s
        ratio_cpu = seed.cpu_s / max(r.cpu_s, 1e-9)
        print(
            f"{r.name:50} {r.wall_s:7.2f} {r.cpu_s:7.2f} {rate:9,.0f} {per_cpu:9,.0f} "
            f"{r.records:10,} {ratio:7.2f}x {ratio_cpu:7.2f}x" + (f"  ({r.note})" if r.note else "")
        )
    print(
        "vs seed: events/s of the run / events/s of the seed (wall); per CPU: the same per "
        "CPU-second (the pipeline's CPU is the sum of its four stages)"
    )
    verdict = "equal" if seed.records == 3 * seed_conns else "DIFFERENT"
    print(
        f"check: seed wrote {seed.records:,} records, the generator expects "
        f"{3 * seed_conns:,} for what the seed handles: {verdict}"
    )
    nf = [r for r in runs[1:] if r.records != expected]
    print(
        "check: nfflowd runs wrote "
        + ("the expected " if not nf else "NOT all the expected ")
        + f"{expected:,} records"
    )
    if ns.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
