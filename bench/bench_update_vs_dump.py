"""Active timeout: what kernel counters cost, UPDATE events vs periodic dumps.

Runs the lab's traffic mix with `conntrack -E` listening to every event type and
counts, per connection, the UPDATE events the kernel sends (each one a netlink
message nfflowd would have to receive and decode if it took counters from
updates), next to what a periodic dump costs (one message per connection still
open at dump time).  Prints figures; asserts nothing.

    python bench/bench_update_vs_dump.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nfflowd import lab

EVENT = re.compile(r"\[(NEW|UPDATE|DESTROY)\] (\S+)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ns = ap.parse_args()
    reason = lab.available()
    if reason:
        print(f"lab unavailable: {reason}")
        return
    kinds: Counter[tuple[str, str]] = Counter()
    conns: Counter[str] = Counter()
    with lab.running("nfb-upd-") as the_lab, tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "events.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", the_lab.fw, "conntrack", "-E", "-o", "timestamp,id"],
                stdout=fh,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
            for _ in range(ns.rounds):
                lab.traffic(the_lab)
                time.sleep(3.5)
                lab.expire(the_lab)
            lab.flush(the_lab)
            time.sleep(0.5)
            proc.terminate()
            proc.wait(5)
        for line in log.read_text().splitlines():
            m = EVENT.search(line)
            if not m:
                continue
            kinds[(m.group(2), m.group(1))] += 1
            if m.group(1) == "NEW":
                conns[m.group(2)] += 1
    print(f"{ns.rounds} rounds of the lab mix; per connection, by protocol:")
    print(f"{'proto':<8} {'conns':>6} {'UPDATE/conn':>12} {'NEW+DESTROY/conn':>17}")
    total_upd = total_conn = 0
    for proto, n in sorted(conns.items()):
        upd = kinds[(proto, "UPDATE")]
        total_upd += upd
        total_conn += n
        both = kinds[(proto, "NEW")] + kinds[(proto, "DESTROY")]
        print(f"{proto:<8} {n:>6} {upd / n:>12.2f} {both / n:>17.2f}")
    print(f"all      {total_conn:>6} {total_upd / max(1, total_conn):>12.2f}")
    print(
        "a periodic dump costs one message per connection OPEN at dump time; a connection "
        "shorter than the dump interval costs nothing, one of length L costs L/interval; "
        "updates cost the figure above for every connection, and an idle long connection "
        "sends none (so updates cannot drive a periodic report)."
    )


if __name__ == "__main__":
    main()
