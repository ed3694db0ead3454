"""CPU per line of the mirror's CSV line, objects vs blocks; prints figures, asserts nothing.

.venv/bin/python bench/bench_mirror_format.py [records] [repeats]

The flow-tools CSV line (nfflowd.formats.flowtools_csv) three ways, measured in turn
in every repeat (CPU time, median of the repeats):

* ``objects``: ``format_line`` per FlowRecord, the mirror's path up to schema 4;
* ``unpack + objects``: a schema-5 block decoded with ``unpack_flows`` first, what
  keeping the object path would cost now that batches carry bytes;
* ``block``: ``format_block`` on the block as it is (schema 5).

Blocks of 30 records (what the terminal stage hands the mirror) of NATed connections
as the lab's generated log has them (see make_records); for a live host (booted a
day before the flows), a replay of an older log (every flow ended before the boot:
each line's base is its own start), and the address cache's worst case.
"""

from __future__ import annotations

import gc
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_v5_encode import compare
from nfflowd.formats.flowtools_csv import format_block, format_line
from nfflowd.messages import FlowRecord, pack_flows, unpack_flows

EXADDR = "127.0.0.1"


def make_records(n: int, now_ms: int, *, distinct: bool = False) -> list[FlowRecord]:
    """The records of source-NATed connections, three each (original in, original out,
    reply in) as the correlator writes them, like the lab's generated log: a random
    client (10/8; fd00:1::/64 for 5%), one of 253 servers, the firewall's address;
    TCP, UDP, ICMP.  *distinct*: every address new instead (the address cache's worst
    case)."""
    rnd = random.Random(1)
    out: list[FlowRecord] = []
    i = 0
    while len(out) < n:
        i += 1
        v6 = rnd.random() < 0.05
        proto = rnd.choice((6, 6, 6, 17, 17, 1))
        if v6:
            proto = 58 if proto == 1 else proto
            cli = b"\xfd\x00\x00\x01" + bytes(8) + rnd.randbytes(4)
            srv = b"\x20\x01\x0d\xb8" + bytes(11) + bytes((rnd.randrange(1, 254),))
            fw = b"\x20\x01\x0d\xb8\x00\x01" + bytes(9) + b"\x01"
        else:
            cli = b"\x0a" + rnd.randbytes(3)
            srv = bytes((203, 0, 113, rnd.randrange(2, 255)))
            fw = bytes((203, 0, 113, 1))
        if distinct:
            size = 16 if v6 else 4
            srv, fw = (i.to_bytes(size - 1, "big") + bytes((k,)) for k in (1, 2))
        sport, nat_port = rnd.randrange(1024, 65535), rnd.randrange(1024, 65535)
        dport = 0x0800 if proto in (1, 58) else rnd.choice((80, 443, 53))
        first, last = now_ms - rnd.randrange(1000, 600_000), now_ms - rnd.randrange(1000)
        opk, rpk = rnd.randrange(1, 200), rnd.randrange(1, 400)
        oby, rby = opk * rnd.randrange(40, 1500), rpk * rnd.randrange(40, 1500)
        fam = 6 if v6 else 4
        # (src, dst, sport, dport, packets, octets, post_src, post_dst, post_sport,
        # post_dport, direction) of the original in, original out and reply in flows
        for row in (
            (cli, srv, sport, dport, opk, oby, fw, srv, nat_port, dport, 1),
            (fw, srv, nat_port, dport, opk, oby, fw, srv, nat_port, dport, 2),
            (srv, fw, dport, nat_port, rpk, rby, srv, cli, dport, sport, 3),
        ):
            out.append(FlowRecord(first, last, fam, proto, *row, 3, 0, 0, i))
    return out[:n]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 60_000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    now_ms = time.time_ns() // 1_000_000
    print(f"flow-tools CSV line, {n} records in blocks of 30, median of {repeats} (CPU time):")
    scenarios = (
        ("live host", now_ms - 86_400_000, False),
        ("replay of an older log", now_ms + 86_400_000, False),
        ("live, every address new", now_ms - 86_400_000, True),
    )
    for title, boot_ms, distinct in scenarios:
        records = make_records(n, now_ms, distinct=distinct)
        batches = [records[i : i + 30] for i in range(0, n, 30)]
        blocks = [pack_flows(b) for b in batches]

        def objects(boot_ms: int = boot_ms, batches: list[list[FlowRecord]] = batches) -> object:
            return [[format_line(r, exaddr=EXADDR, boot_ms=boot_ms) for r in b] for b in batches]

        def unpacked(boot_ms: int = boot_ms, blocks: list[bytes] = blocks) -> object:
            return [
                [format_line(r, exaddr=EXADDR, boot_ms=boot_ms) for r in unpack_flows(b)]
                for b in blocks
            ]

        def block(boot_ms: int = boot_ms, blocks: list[bytes] = blocks) -> object:
            return [format_block(b, exaddr=EXADDR, boot_ms=boot_ms) for b in blocks]

        gc.collect()
        gc.freeze()  # the fixtures: not traversed by every collection of the runs
        same = objects() == block()
        medians = compare(
            {
                "objects: format_line": objects,
                "unpack_flows + format_line": unpacked,
                "block: format_block": block,
            },
            n,
            repeats,
        )
        print(f"{title} (same lines both ways: {'yes' if same else 'NO'})")
        base = medians["objects: format_line"]
        for name, us in medians.items():
            print(f"  {name:28s} {us:6.3f} µs/record  {us / base:5.2f}x")


if __name__ == "__main__":
    main()
