"""Memory per open connection: what correlate's open-connection table costs.

    .venv/bin/python bench/bench_open_connections.py [--conns 1000000] [--profile 200000]
                                                      [--no-pipeline]

Generates a log of NEW events only (nfflowd/lab/events.py ``new_only``: distinct
connections, none ends; 95 % IPv4, 5 % IPv6, TCP/UDP/ICMP/GRE), once as written
(``-o timestamp,id``: the table is keyed by conntrack id, as with netlink) and once
without the ids (``-o timestamp``, the default ``<conntrack> format``: keyed by
the original tuple), then measures:

(a) in process: a fresh interpreter parses the log with ``nfflowd.conntrack.text``
    and feeds a real ``nfflowd.correlate.correlator.Correlator``; VmRSS (and VmHWM) before
    and after, divided by the connections open at the end;
(b) in the pipeline: ``nfflowd replay`` of the same logs, ``peak_rss_kb`` of the
    correlate stage with --conns connections minus that with --small, divided by
    the difference (the stage's own baseline cancels out);
(c) the 2009 tool's technique (bench/seed_ct2ft.pl, a Perl hash of NEW times) on
    the id-less log, the same way (its VmHWM, big minus small);
and, because tuple keys cost the most, a profile (tracemalloc, --profile
connections: which source lines allocated what stays) and an experiment with key
representations in a plain dict: the 7-tuple the Correlator used first (336 B per
connection), the packed ``bytes`` it uses now (nfflowd.correlate.correlator.tuple_key), the
conntrack id; their memory per connection and the time to build a key, insert it
and pop it.

The issue's target: at most 300 bytes per open connection.  Prints figures;
asserts nothing.  Each in-process figure comes from its own interpreter, so
memory freed by an earlier measurement cannot hide in the next one.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nfflowd.config import load
from nfflowd.conntrack.text import parse_line
from nfflowd.correlate.correlator import Correlator, tuple_key
from nfflowd.lab.events import generate
from nfflowd.messages import ConntrackEvent
from nfflowd.ops import replay

HERE = Path(__file__).resolve().parent
TARGET = 300  # bytes per open connection (the issue)
_CT_ID = re.compile(r" id=\d+$")
#: orig src, orig dst, proto, sport, dport, zone: 15 bytes for IPv4, 39 for IPv6


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _events(path: str, limit: int | None = None) -> Iterator[ConntrackEvent]:
    """Parse the log line by line (each event is garbage once fed: only the table stays)."""
    with open(path) as fh:
        for n, line in enumerate(fh):
            if limit is not None and n >= limit:
                return
            ev = parse_line(line)
            if ev is not None:
                yield ev


def seven_tuple(ev: ConntrackEvent) -> object:
    """The key the Correlator used before it packed it (for comparison)."""
    return (ev.family, ev.proto, ev.orig_src, ev.orig_dst, ev.orig_sport, ev.orig_dport, ev.zone)


KEYS: dict[str, Callable[[ConntrackEvent], object]] = {
    "7-tuple": seven_tuple,
    "packed": tuple_key,  # the Correlator's key today
    "ct_id": lambda ev: ev.ct_id,
}
#: The start time as the table keeps it: an int of ns today (3 digits: 40 bytes), or a
#: float of ms (24 bytes; exact, records carry ms and a double holds 2**53).
VALUES: dict[str, Callable[[ConntrackEvent], object]] = {
    "int ns": lambda ev: ev.time_ns,
    "float ms": lambda ev: float(ev.time_ns // 1_000_000),
}


# ---- children: one measurement per fresh interpreter -------------------------------------


def child_correlator(path: str) -> dict[str, float]:
    """(a): a real Correlator fed every NEW of *path*."""
    for _ in _events(path, 2000):  # warm up the parser (regex, caches) before the baseline
        pass
    gc.collect()
    rss0, hwm0 = _status_kb("VmRSS"), _status_kb("VmHWM")
    corr = Correlator()
    out = bytearray()
    t0 = time.perf_counter()
    for ev in _events(path):
        corr.feed(ev, out)  # NEWs yield no records
    elapsed = time.perf_counter() - t0
    gc.collect()
    n = len(corr.open)
    return {
        "open": n,
        "rss_b": (_status_kb("VmRSS") - rss0) * 1024 / n,
        "hwm_b": (_status_kb("VmHWM") - hwm0) * 1024 / n,
        "dict_b": sys.getsizeof(corr.open) / n,
        "feed_us": elapsed / n * 1e6,
    }


def child_table(path: str, kind: str, value_kind: str) -> dict[str, float]:
    """Experiment: a plain dict key -> start, with the representations *kind*, *value_kind*."""
    key, value = KEYS[kind], VALUES[value_kind]
    for _ in _events(path, 2000):
        pass
    gc.collect()
    rss0 = _status_kb("VmRSS")
    table: dict[object, object] = {}
    for ev in _events(path):
        table[key(ev)] = value(ev)
    gc.collect()
    rss1, n = _status_kb("VmRSS"), len(table)
    sample = list(itertools.islice(table.items(), 0, None, max(1, n // 1000)))
    key_b = sum(_deep_size(k) for k, _ in sample) / len(sample)
    return {
        "open": n,
        "rss_b": (rss1 - rss0) * 1024 / n,
        "dict_b": sys.getsizeof(table) / n,
        "key_b": key_b,
        "value_b": sum(sys.getsizeof(v) for _, v in sample) / len(sample),
    }


def _deep_size(obj: object) -> int:
    """Bytes of a key and what it alone keeps alive (small ints are shared: not counted)."""
    if isinstance(obj, tuple):
        inner = sum(_deep_size(x) for x in obj if not (isinstance(x, int) and -5 <= x <= 256))
        return sys.getsizeof(obj) + inner  # getsizeof counts the tuple's GC header
    return sys.getsizeof(obj)


def child_profile(path: str, n: int) -> dict[str, object]:
    """tracemalloc: which source lines allocated the memory a Correlator keeps."""
    corr = Correlator()
    out = bytearray()
    for _ in _events(path, 2000):
        pass
    tracemalloc.start()
    for ev in _events(path, n):
        corr.feed(ev, out)
    gc.collect()
    snap = tracemalloc.take_snapshot()
    tracemalloc.stop()
    n_open = len(corr.open)
    top = [
        {
            "where": f"{Path(s.traceback[0].filename).name}:{s.traceback[0].lineno}",
            "bytes_per_conn": s.size / n_open,
            "blocks_per_conn": s.count / n_open,
            "code": _source(s.traceback[0].filename, s.traceback[0].lineno),
        }
        for s in snap.statistics("lineno")[:6]
    ]
    return {"open": n_open, "top": top}


def _source(filename: str, lineno: int) -> str:
    try:
        return Path(filename).read_text().splitlines()[lineno - 1].strip()[:70]
    except (OSError, IndexError):
        return "?"


def child_key_cost(path: str, n: int) -> dict[str, float]:
    """ns per connection to build a key, insert it and pop it (NEW + DESTROY), per kind."""
    evs = list(_events(path, n))
    res = {}
    for kind, key in KEYS.items():
        best = float("inf")
        for _ in range(3):
            table: dict[object, int] = {}
            t0 = time.perf_counter()
            for ev in evs:
                table[key(ev)] = ev.time_ns
            for ev in evs:
                table.pop(key(ev), None)
            best = min(best, time.perf_counter() - t0)
        res[kind] = best / len(evs) * 1e9
    return res


# ---- the parent -------------------------------------------------------------------------


def _child(*args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def _strip_ids(src: Path, dst: Path) -> None:
    """The same log as `conntrack -E -o timestamp` (no -o id) would print it."""
    with open(src) as fin, open(dst, "w") as fout:
        for line in fin:
            fout.write(_CT_ID.sub("", line.rstrip("\n")) + "\n")


def pipeline_peak_kb(log: Path, work: Path) -> tuple[int, int]:
    """(correlate peak RSS KiB, connections open in correlate) after replaying *log*."""
    settings = load(None)
    rundir = work / f"run-{log.stem}"
    counters = replay.run(settings, [str(log)], rundir=str(rundir))
    shutil.rmtree(rundir, ignore_errors=True)
    corr = counters.get("correlate", {})
    return corr.get("peak_rss_kb", 0), corr.get("open", 0)


def seed_hwm_kb(log: Path) -> tuple[int, int]:
    """(VmHWM KiB, connections tracked) of seed_ct2ft.pl after reading *log*."""
    argv = ["perl", str(HERE / "seed_ct2ft.pl"), "-s", str(log)]
    res = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    res.check_returncode()
    stats = dict(kv.split("=") for kv in res.stderr.split())
    return int(stats["hwm_kb"]), int(stats["tracked"])


@dataclasses.dataclass
class Logs:
    ids: Path
    no_ids: Path
    ids_small: Path
    no_ids_small: Path


def make_logs(work: Path, conns: int, small: int) -> Logs:
    logs = Logs(
        work / "new-ids.log",
        work / "new-noids.log",
        work / "new-ids-small.log",
        work / "new-noids-small.log",
    )
    generate(str(logs.ids), conns, new_only=True)
    generate(str(logs.ids_small), small, new_only=True)
    _strip_ids(logs.ids, logs.no_ids)
    _strip_ids(logs.ids_small, logs.no_ids_small)
    return logs


def _verdict(b: float) -> str:
    return "within" if b <= TARGET else "OVER"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=1_000_000, help="open connections")
    ap.add_argument("--small", type=int, default=10_000, help="baseline run (pipeline, seed)")
    ap.add_argument("--profile", type=int, default=200_000, help="connections under tracemalloc")
    ap.add_argument("--no-pipeline", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ns = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nfflowd-open-conns-"))
    t0 = time.perf_counter()
    logs = make_logs(work, ns.conns, ns.small)
    print(
        f"generated {ns.conns:,} NEW-only lines (and a {ns.small:,}-line baseline), with and "
        f"without conntrack ids, in {time.perf_counter() - t0:.1f} s: {work}"
    )
    print(
        f"{os.cpu_count()} cores shared with other engineers' tests; "
        "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    )
    print(f"target: <= {TARGET} bytes per open connection\n")

    print("(a) in process, nfflowd.correlate.correlator.Correlator fed by the text parser")
    for label, log in (
        ("by conntrack id (-o id, netlink)", logs.ids),
        ("by original tuple (no -o id)", logs.no_ids),
    ):
        r = _child("correlator", str(log))
        b = float(r["rss_b"])  # type: ignore[arg-type]
        print(
            f"  {label:34} {r['open']:>9,} open: {b:6.0f} B/conn RSS "
            f"({r['hwm_b']:.0f} peak; dict alone {r['dict_b']:.0f}) "
            f"{r['feed_us']:.2f} us/event parse+feed  {_verdict(b)}"
        )

    if not ns.no_pipeline:
        print(
            f"\n(b) pipeline (nfflowd replay), correlate peak RSS, {ns.conns:,} minus "
            f"{ns.small:,} connections"
        )
        pairs = (
            ("by conntrack id", logs.ids, logs.ids_small),
            ("by original tuple", logs.no_ids, logs.no_ids_small),
        )
        for label, big, small in pairs:
            kb_small, _ = pipeline_peak_kb(small, work)
            kb_big, n_open = pipeline_peak_kb(big, work)
            b = (kb_big - kb_small) * 1024 / (ns.conns - ns.small)
            print(
                f"  {label:34} {n_open:>9,} open: {b:6.0f} B/conn (peak "
                f"{kb_small / 1024:.1f} -> {kb_big / 1024:.1f} MiB)  {_verdict(b)}"
            )

    hwm_small, n_small = seed_hwm_kb(logs.no_ids_small)
    hwm_big, n_big = seed_hwm_kb(logs.no_ids)
    b = (hwm_big - hwm_small) * 1024 / max(1, n_big - n_small)
    print(
        f"\n(c) the seed's technique (perl hash of NEW times), IPv4 TCP/UDP/ICMP only: "
        f"{n_big:,} tracked, {b:.0f} B/conn (peak {hwm_small / 1024:.1f} -> "
        f"{hwm_big / 1024:.1f} MiB)"
    )

    print(
        f"\nprofile: tracemalloc, by original tuple, {ns.profile:,} connections "
        "(what stays allocated, by the line that allocated it)"
    )
    prof = _child("profile", str(logs.no_ids), str(ns.profile))
    for s in prof["top"]:  # type: ignore[attr-defined]
        print(
            f"  {s['bytes_per_conn']:6.1f} B/conn {s['blocks_per_conn']:4.2f} blocks  "
            f"{s['where']:22} {s['code']}"
        )

    print("\nexperiment: plain dict key -> start, same events, other representations")
    cost = _child("cost", str(logs.ids), "200000")  # ids present: every kind works
    experiments = (
        ("7-tuple", "int ns", logs.no_ids),
        ("packed", "int ns", logs.no_ids),
        ("packed", "float ms", logs.no_ids),
        ("ct_id", "int ns", logs.ids),
        ("ct_id", "float ms", logs.ids),
    )
    for kind, value_kind, log in experiments:
        r = _child("table", str(log), kind, value_kind)
        b = float(r["rss_b"])  # type: ignore[arg-type]
        print(
            f"  {kind:6} -> {value_kind:8} {b:6.0f} B/conn RSS (key {r['key_b']:.0f} + value "
            f"{r['value_b']:.0f} + dict {r['dict_b']:.0f} by getsizeof)  "
            f"key+insert+pop {cost[kind]:.0f} ns  {_verdict(b)}"
        )
    if ns.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def child_main(args: list[str]) -> None:
    what, path, *rest = args
    result: object
    if what == "correlator":
        result = child_correlator(path)
    elif what == "table":
        result = child_table(path, rest[0], rest[1])
    elif what == "profile":
        result = child_profile(path, int(rest[0]))
    else:
        result = child_key_cost(path, int(rest[0]))
    print(json.dumps(result))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child_main(sys.argv[2:])
    else:
        main()
