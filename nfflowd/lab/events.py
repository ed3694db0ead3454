"""Generate a large, realistic `conntrack -E -o timestamp,id` event log (NEW + DESTROY).

Mix: 60 % TCP, 30 % UDP, 8 % ICMP, 2 % GRE; 70 % source NAT, 15 % destination NAT
(port forwards), 15 % no NAT; 5 % of UDP unreplied; 5 % IPv6.  Connections
overlap (about `--open` of them at a time), so NEW and DESTROY interleave as on a
busy firewall.  Prints nothing but the file; `expected_records` tells how many
flow records the log must produce.

    python -m nfflowd.lab.events OUT.log --events 1000000
"""

from __future__ import annotations

import argparse
import random
from collections import deque
from typing import NamedTuple


class Conn(NamedTuple):
    id: int
    start_us: int
    new: str
    destroy_fmt: str  # with {t} for the timestamp
    records: int
    kind: str = ""  # "ipv4 tcp", "ipv6 udp unreplied", ...: what `tally` counts


def _conn(rnd: random.Random, cid: int, t_us: int) -> Conn:
    v6 = rnd.random() < 0.05
    r = rnd.random()
    kind = "snat" if r < 0.70 else "dnat" if r < 0.85 else "none"
    p = rnd.random()
    proto = "tcp" if p < 0.60 else "udp" if p < 0.90 else "icmp" if p < 0.98 else "gre"
    if v6:
        cli = f"fd00:1::{rnd.randrange(2, 0xFFFF):x}"
        srv = f"2001:db8:{rnd.randrange(1, 0xFFFF):x}::{rnd.randrange(1, 0xFFFF):x}"
        fw = "2001:db8:1::1"
        fam, num_fam = "ipv6", 10
    else:
        cli = f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
        srv = f"203.0.113.{rnd.randrange(2, 255)}"
        fw = "203.0.113.1"
        fam, num_fam = "ipv4", 2
    del fam, num_fam
    sport, dport = rnd.randrange(1024, 65535), rnd.choice((80, 443, 53, 22, 8080, 3478))
    if kind == "snat":
        o = (cli, srv, sport, dport)
        rp = (srv, fw, dport, rnd.randrange(1024, 65535))
    elif kind == "dnat":
        o = (srv, fw, sport, 8080)
        rp = (cli, srv, dport, sport)
    else:
        o = (cli, srv, sport, dport)
        rp = (srv, cli, dport, sport)
    unreplied = proto == "udp" and rnd.random() < 0.05
    opk = rnd.randrange(1, 200)
    oby = opk * rnd.randrange(40, 1500)
    rpk = 0 if unreplied else rnd.randrange(1, 400)
    rby = rpk * rnd.randrange(40, 1500)
    if proto == "tcp":
        head_new, head_del, state = "tcp      6 120 SYN_SENT ", "tcp      6 ", ""
    elif proto == "udp":
        head_new, head_del, state = "udp      17 30 ", "udp      17 ", ""
    elif proto == "icmp":
        head_new = "icmp     1 30 " if not v6 else "icmpv6   58 30 "
        head_del = head_new.replace(" 30 ", " ")
        state = ""
    else:
        head_new, head_del, state = "gre      47 30 ", "gre      47 ", ""
    del state

    def ports(t: tuple[str, str, int, int], req: bool) -> str:
        if proto in ("tcp", "udp"):
            return f"sport={t[2]} dport={t[3]}"
        if proto == "icmp":
            typ = (128 if req else 129) if v6 else (8 if req else 0)
            icmp_id = o[2] if req or kind != "snat" else rp[3]
            return f"type={typ} code=0 id={icmp_id}"
        return f"srckey=0x{t[2]:x} dstkey=0x{t[3]:x}"

    ot = f"src={o[0]} dst={o[1]} {ports(o, True)}"
    rt = f"src={rp[0]} dst={rp[1]} {ports(rp, False)}"
    new = f"    [NEW] {head_new}{ot} [UNREPLIED] {rt} id={cid}"
    assured = "" if unreplied else " [ASSURED]"
    destroy = (
        f"[DESTROY] {head_del}{ot} packets={opk} bytes={oby} "
        f"{'[UNREPLIED] ' if unreplied else ''}{rt} packets={rpk} bytes={rby}{assured} id={cid}"
    )
    natted = kind != "none"
    unrep_tag = " unreplied" if unreplied else ""
    n = (2 if natted else 1) + (0 if unreplied else 1)
    return Conn(cid, t_us, new, destroy, n, f"ipv{6 if v6 else 4} {proto}{unrep_tag}")


def generate(
    path: str,
    events: int,
    *,
    seed: int = 1,
    open_conns: int = 20000,
    start_s: int = 1_764_000_000,
    rate: int = 50_000,
    new_only: bool = False,
    tally: dict[str, int] | None = None,
) -> int:
    """Write the log; return the number of flow records it must produce.

    *new_only*: every line is the NEW of a distinct connection, none ends (0
    records; measures the open-connection table).  *tally*, when given, counts the
    destroyed connections by kind ("ipv4 tcp", "ipv4 udp unreplied", ...), so a
    consumer that handles only some kinds (the 2009 tool) knows what to expect.
    """
    rnd = random.Random(seed)
    t_us = start_s * 1_000_000
    step = max(1, 1_000_000 // rate)
    pending: deque[Conn] = deque()
    expected = 0
    written = 0
    cid = 1
    with open(path, "w") as fh:
        while written < events:
            if new_only or (len(pending) < open_conns and written + len(pending) < events):
                c = _conn(rnd, cid, t_us)
                cid += 1
                fh.write(f"[{t_us // 1_000_000}.{t_us % 1_000_000:06d}]\t{c.new}\n")
                if not new_only:
                    pending.append(c)
            else:
                c = pending.popleft()
                fh.write(f"[{t_us // 1_000_000}.{t_us % 1_000_000:06d}]\t{c.destroy_fmt}\n")
                expected += c.records
                if tally is not None:
                    tally[c.kind] = tally.get(c.kind, 0) + 1
            written += 1
            t_us += step
    return expected


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--new-only", action="store_true", help="only NEWs of distinct connections")
    ns = ap.parse_args()
    print(generate(ns.out, ns.events, seed=ns.seed, new_only=ns.new_only))


if __name__ == "__main__":
    main()
