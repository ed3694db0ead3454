"""CPU per record of the NetFlow v5 encoder, objects vs blocks; prints figures, asserts nothing.

.venv/bin/python bench/bench_v5_encode.py [records] [repeats] [batch]

Three ways to encode the same flows, measured in turn in every repeat (CPU time,
median of the repeats, so that a busy machine skews them alike):

* ``objects``: ``V5Encoder.encode`` over FlowRecord objects, the record-by-record
  loop the export stage ran up to schema 4 (when batches carried objects);
* ``unpack + objects``: a schema-5 block decoded with ``unpack_flows`` first, what
  keeping the object path would cost now that batches carry bytes;
* ``block``: ``V5Encoder.encode_block`` on the block as it is (schema 5).

Batches of 30 records by default: what the terminal stage hands the exporter.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable

from nfflowd.formats.netflow_v5 import V5Encoder
from nfflowd.messages import FlowRecord, pack_flows, unpack_flows


def make_records(n: int, now_ms: int) -> list[FlowRecord]:
    """IPv4 flows a live exporter sees: TCP, UDP and ICMP, ended within the last second."""
    out = []
    for i in range(n):
        src = bytes((10, 0, (i >> 8) & 0xFF, i & 0xFF))
        dst = bytes((203, 0, 113, i % 250 + 1))
        first = now_ms - 60_000 - i % 5000
        sport = 1024 + i % 60000
        packets = 10 + i % 100
        proto = (6, 6, 17, 6, 17, 1)[i % 6]
        r = FlowRecord(
            first,
            now_ms - i % 1000,
            4,
            proto,
            src,
            dst,
            sport,
            443 if proto != 1 else 0x0800,
            packets,
            1500 * packets,
            src,
            dst,
            sport,
            443,
            1,
            3,
            0,
            0,
            i,
        )
        out.append(r)
    return out


def compare(ways: dict[str, Callable[[], object]], records: int, repeats: int) -> dict[str, float]:
    """Median µs of CPU per record of each way, the ways run in turn in each repeat
    (also bench_mirror_format's)."""
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, way in ways.items():
            t0 = time.process_time()
            way()
            times[name].append((time.process_time() - t0) / records * 1e6)
    return {name: statistics.median(t) for name, t in times.items()}


def report(medians: dict[str, float]) -> None:
    base = next(iter(medians.values()))
    for name, us in medians.items():
        print(f"  {name:28s} {us:6.3f} µs/record  {us / base:5.2f}x  {1e6 / us:>12,.0f} records/s")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 60_000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    now_ns = time.time_ns()
    records = make_records(n, now_ns // 1_000_000)
    batches = [records[i : i + batch] for i in range(0, n, batch)]
    blocks = [pack_flows(b) for b in batches]
    boot_ms = now_ns // 1_000_000 - 86_400_000
    objects, unpacked, block = (V5Encoder(boot_ms=boot_ms) for _ in range(3))
    same = [objects.encode(b, now_ns) for b in batches] == [
        block.encode_block(b, now_ns) for b in blocks
    ]
    gc.collect()
    gc.freeze()  # the fixtures: not traversed by every collection of the runs
    medians = compare(
        {
            "objects: encode": lambda: [objects.encode(b, now_ns) for b in batches],
            "unpack_flows + encode": lambda: [
                unpacked.encode(unpack_flows(b), now_ns) for b in blocks
            ],
            "block: encode_block": lambda: [block.encode_block(b, now_ns) for b in blocks],
        },
        n,
        repeats,
    )
    print(f"NetFlow v5, {n} records in batches of {batch}, median of {repeats} (CPU time);")
    print(f"  same datagrams both ways: {'yes' if same else 'NO'}")
    report(medians)


if __name__ == "__main__":
    main()
