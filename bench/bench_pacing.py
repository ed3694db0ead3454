"""What an nfcapd with its default socket buffer absorbs: paced resends, RcvbufErrors per rate.

    python bench/bench_pacing.py [--rates 2000,4000,...,40000,0] [--repeats 3]
                                 [--batches 64] [--batch-records 1400] [--busy N]

Why.  After an export restart correlate resends every unacknowledged batch (up
to ``max_unacked`` of them, :class:`nfflowd.config.DaemonSettings`), and export
sends them to each collector as fast as its pace allows
(:mod:`nfflowd.outputs.pacing`).  The collector's socket buffer is all that
absorbs that burst: an nfcapd started without ``-B`` has
``net.core.rmem_default`` (208 KiB here: about 92 full v5 datagrams).  This
bench measures, on this machine, the pace below which such a burst costs that
nfcapd nothing, which is what ``<export> max_rate``'s default
(``nfflowd.config.settings.DEFAULT_MAX_RATE``) is chosen from.

How.  An nfcapd with its default buffer runs in a network namespace of its own
(:class:`nfflowd.lab.nfcapd.CollectorNetns`, reached over a veth pair), so that
namespace's ``Udp: RcvbufErrors`` counts exactly the datagrams its socket
dropped.  For each rate (datagrams/s; 0 = no pace, the exporter as fast as
Python goes) the real :class:`nfflowd.outputs.exporter.Exporter` is handed
``--batches`` blocks of ``--batch-records`` v5 records at once (a resend of a
full window: 64 x 1,400 records, about 3,000 datagrams, by default) and sent
the way the export stage's loop does (wake when :meth:`Exporter.wait` says,
``flush``); then nfcapd is let drain and the namespace's RcvbufErrors are read.
Each rate is repeated ``--repeats`` times, in rounds (every rate once per round),
so a busy moment of the machine spreads over the rates.  ``--busy N`` runs N
CPU-bound processes meanwhile: nfcapd then competes for the CPU as it does with
nfflowd's stages on one host (the chaos test's case), and is scheduled late.

Prints, per rate: datagrams sent, the rate reached, RcvbufErrors of each repeat;
then the highest rate with 0 errors in every repeat at it and every rate below
("safe collector rate"), the current default, the exporter's unpaced rate, and
the pipeline's peak output (the live lab maximum, bench/README.md: ~114,000
connections/s x 3 v5 records / 30 per datagram) for comparison.  The default
(README "Pacing") was chosen from a quiet run and a ``--busy 2`` run.  Asserts
nothing.  Needs root, iproute2, nfcapd.  ~1-2 min.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_v5_encode import make_records
from nfflowd.config.settings import (
    DEFAULT_MAX_RATE,
    Collector,
    DaemonSettings,
    ExportSettings,
)
from nfflowd.lab.nfcapd import CollectorNetns, Nfcapd
from nfflowd.messages import pack_flows
from nfflowd.outputs.exporter import Exporter

RATES = (2000, 4000, 6000, 8000, 10000, 12000, 16000, 20000, 30000, 40000, 0)
#: The pipeline's peak output towards one v5 collector, datagrams/s: the live lab's
#: maximum (bench/README.md, bench_live --rates max) of ~114,000 connections/s, each
#: closed connection 3 v5 records (the NAT triplet), 30 records per datagram.
PIPELINE_PEAK = 114_000 * 3 // 30


def resend(cap: Nfcapd, ns: CollectorNetns, rate: int, blocks: list[bytes]) -> tuple[int, float]:
    """Hand every block to a fresh exporter at once and send them as the export stage's
    loop does; (datagrams sent, seconds)."""
    exp = Exporter(
        ExportSettings(
            collectors=(Collector(ns.address, cap.port, 5, source=ns.source, max_rate=rate),)
        )
    )
    started = time.monotonic()
    for block in blocks:
        exp.handle(block)
    while (wait := exp.wait()) is not None:
        time.sleep(math.ceil(wait * 1000) / 1000)  # the loop's poll timeout, in ms
        exp.flush()
    elapsed = time.monotonic() - started
    sent = exp.counters()["c0_datagrams_sent"]
    for _, coll in exp.targets:
        coll.close()
    return sent, elapsed


@contextlib.contextmanager
def busy(n: int) -> Iterator[None]:
    """*n* processes spinning meanwhile: the CPU the pipeline's stages take from nfcapd
    when both run on the same host."""
    spin = [sys.executable, "-c", "while True: pass"]
    procs = [subprocess.Popen(spin) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default=",".join(map(str, RATES)), help="datagrams/s; 0: no pace")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, default=DaemonSettings.max_unacked)
    ap.add_argument("--batch-records", type=int, default=1400)
    ap.add_argument("--busy", type=int, default=0, help="CPU-bound processes meanwhile")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    now_ms = int(time.time() * 1000)
    records = make_records(args.batch_records, now_ms)
    blocks = [pack_flows(records)] * args.batches
    errors: dict[int, list[int]] = {r: [] for r in rates}
    reached: dict[int, list[float]] = {r: [] for r in rates}
    sent: dict[int, int] = {}
    with (
        CollectorNetns("nfbp") as ns,
        Nfcapd(host=ns.address, netns=ns.name) as cap,
        busy(args.busy),
    ):
        print(
            f"nfcapd (default buffer, no -B) in {ns.name}; a resend of {args.batches} batches "
            f"of {args.batch_records} v5 records per run, {args.repeats} rounds, "
            f"{args.busy} CPU-bound processes meanwhile"
        )
        for _ in range(args.repeats):
            for rate in rates:
                before = ns.rcvbuf_errors()
                n, elapsed = resend(cap, ns, rate, blocks)
                cap.wait_drained()
                errors[rate].append(ns.rcvbuf_errors() - before)
                reached[rate].append(n / elapsed)
                sent[rate] = n
    print(f"{'pace (dgram/s)':>15} {'sent':>6} {'reached/s':>10}  RcvbufErrors per repeat")
    for rate in rates:
        pace = str(rate) if rate else "none"
        got = min(reached[rate])
        print(f"{pace:>15} {sent[rate]:>6} {got:>10.0f}  {errors[rate]}")
    safe = 0
    for rate in sorted(r for r in rates if r):
        if any(errors[rate]):
            break
        safe = rate
    unpaced = min(reached[0]) if 0 in reached else float("nan")
    print(f"safe collector rate (0 RcvbufErrors at it and below): {safe} datagrams/s")
    print(f"current DEFAULT_MAX_RATE: {DEFAULT_MAX_RATE} datagrams/s")
    print(f"exporter unpaced (as fast as Python sends): {unpaced:.0f} datagrams/s")
    print(f"pipeline peak towards one v5 collector (live lab maximum): {PIPELINE_PEAK}/s")


if __name__ == "__main__":
    main()
