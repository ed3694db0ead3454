"""How fast nfflowd.conntrack.text.parse_line turns conntrack text into events.

Feeds the real captured lines of tests/data/conntrack-text/ through the parser, in a
loop, and prints lines per second per kind of line (best of --rounds runs).  No
assertions: this measures, the unit tests judge.

    .venv/bin/python bench/bench_text_parser.py [--lines 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

from nfflowd.conntrack.text import ParseError, parse_line

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "conntrack-text"
NOW = 1_700_000_000_000_000_000


def _lines(name: str, keep: Callable[[str], bool] = lambda ln: True) -> list[str]:
    text = (DATA / name).read_text()
    return [ln + "\n" for ln in text.splitlines() if "src=" in ln and keep(ln)]


def _scenarios() -> dict[str, list[str]]:
    captured = [p.name for p in sorted(DATA.glob("*.txt")) if p.name != "README.txt"]
    every = [ln for name in captured for ln in _lines(name, lambda ln: not ln.startswith("#"))]
    tcp_destroy = _lines("events-acct-ts-ext-id.txt", lambda ln: "DESTROY" in ln and " tcp " in ln)
    return {
        "tcp DESTROY, -o timestamp,extended,id, acct": tcp_destroy,
        "tcp DESTROY, plain -E, acct": _lines(
            "events-acct-plain.txt", lambda ln: "DESTROY" in ln and " tcp " in ln
        ),
        "NEW/UPDATE, -o timestamp,extended,id": _lines(
            "events-acct-ts-ext-id.txt", lambda ln: "DESTROY" not in ln
        ),
        "DESTROY -o id,ktimestamp,userspace": _lines(
            "events-acct-id-ktimestamp-labels-userspace.txt", lambda ln: "[start=" in ln
        ),
        "conntrack -L -o extended,id": _lines("list-acct-ext-id.txt"),
        "every captured and hand-made line": every,
        "malformed: tcp DESTROY cut in half": [ln[: len(ln) // 2] for ln in tcp_destroy],
    }


def _run(lines: list[str], total: int) -> float:
    """Seconds to parse ``total`` lines cycling through ``lines``."""
    batch = (lines * (total // len(lines) + 1))[:total]
    start = time.perf_counter()
    for ln in batch:
        try:  # noqa: SIM105 -- contextlib.suppress would be timed too
            parse_line(ln, now_ns=NOW)
        except ParseError:
            pass
    return time.perf_counter() - start


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    models = [ln.partition(":")[2].strip() for ln in info.splitlines() if ln[:10] == "model name"]
    return f"{models[0]} x{len(models)}" if models else platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=200_000, help="lines per run")
    ap.add_argument("--rounds", type=int, default=3, help="runs per scenario (best is shown)")
    args = ap.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {_cpu()}")
    print(f"{'scenario':52} {'lines/s':>10} {'us/line':>8}")
    for name, lines in _scenarios().items():
        best = min(_run(lines, args.lines) for _ in range(args.rounds))
        print(f"{name:52} {args.lines / best:10,.0f} {best / args.lines * 1e6:8.2f}")


if __name__ == "__main__":
    main()
