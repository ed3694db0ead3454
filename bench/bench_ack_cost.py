"""What the lossless-delivery protocol costs: the same replay benchmark, before and after.

    python bench/bench_ack_cost.py [--events 600000] [--rounds 3] [--baseline 9f0a1d0]

Checks out the last revision before acknowledgements were wired in (``9f0a1d0``:
plain DEALER pushes, no acks, no resend, no de-duplication) into a temporary git
worktree and runs its ``bench/bench_pipeline.py`` and this tree's alternately, on
the same machine in the same run, then prints each round's events/s, the medians
and the ratio.  Issue 4's budget: the protocol may cost at most 15 %.  Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RATE = re.compile(r"events/s end to end: ([\d,]+)")
LOST = re.compile(r"\(lost (\d+)\)")


def worktree(rev: str, where: Path) -> Path:
    """A detached checkout of *rev*; nfflowd.workers made importable from it directly
    (the editable install maps that package to this tree's workers/)."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev],
        check=True,
        capture_output=True,
    )
    (where / "nfflowd" / "workers").symlink_to("../workers")
    return where


def run(tree: Path, events: int) -> tuple[float, str]:
    env = dict(os.environ)
    if tree != ROOT:
        env["PYTHONPATH"] = str(tree)  # ahead of the editable install of this tree
    # cwd too: `python -m` puts the working directory first on the stages' sys.path
    res = subprocess.run(
        [sys.executable, str(tree / "bench" / "bench_pipeline.py"), "--events", str(events)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    m = RATE.search(res.stdout)
    if m is None:
        raise SystemExit(f"{tree}: no figure in the output:\n{res.stdout}\n{res.stderr}")
    return float(m.group(1).replace(",", "")), res.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=600_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline", default="9f0a1d0", help="revision before the protocol")
    ap.add_argument("--tree", type=Path, default=ROOT, help="tree to measure (default: this)")
    ns = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nfflowd-ackcost-"))
    base = worktree(ns.baseline, tmp / "baseline")
    rates: dict[str, list[float]] = {"before (no acks)": [], "now (acks)": []}
    try:
        for r in range(ns.rounds):
            for label, tree in (("before (no acks)", base), ("now (acks)", ns.tree)):
                rate, out = run(tree, ns.events)
                rates[label].append(rate)
                lost = LOST.findall(out)
                print(
                    f"round {r + 1} {label:17} {rate:9,.0f} events/s  lost {'/'.join(lost)}",
                    flush=True,
                )
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
            check=False,
            capture_output=True,
        )
    before = statistics.median(rates["before (no acks)"])
    now = statistics.median(rates["now (acks)"])
    print(
        f"median before {before:,.0f} events/s, now {now:,.0f} events/s: "
        f"the protocol costs {100 * (1 - now / before):.1f} % (budget 15 %)"
    )


if __name__ == "__main__":
    main()
