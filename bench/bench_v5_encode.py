"""Throughput of the NetFlow v5 encoder (records/s); prints figures, asserts nothing.

.venv/bin/python bench/bench_v5_encode.py [records] [batch]
"""

from __future__ import annotations

import sys
import time

from nfflowd.formats.netflow_v5 import V5Encoder
from nfflowd.messages import FlowRecord


def make_records(n: int, now_ms: int) -> list[FlowRecord]:
    out = []
    for i in range(n):
        src = bytes((10, 0, (i >> 8) & 0xFF, i & 0xFF))
        dst = bytes((203, 0, 113, i % 250 + 1))
        first = now_ms - 60_000 - i % 5000
        sport = 1024 + i % 60000
        packets = 10 + i % 100
        proto = 6 if i % 3 else 17
        r = FlowRecord(
            first,
            now_ms - i % 1000,
            4,
            proto,
            src,
            dst,
            sport,
            443,
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


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    now_ns = time.time_ns()
    records = make_records(n, now_ns // 1_000_000)
    batches = [records[i : i + batch] for i in range(0, n, batch)]
    enc = V5Encoder(boot_ms=now_ns // 1_000_000 - 86_400_000)
    for b in batches[:5]:  # warm up
        enc.encode(b, now_ns)
    best = 0.0
    for _ in range(3):
        datagrams = 0
        t0 = time.perf_counter()
        for b in batches:
            datagrams += len(enc.encode(b, now_ns))
        dt = time.perf_counter() - t0
        best = max(best, n / dt)
        print(f"encode: {n} records in {dt:.3f}s = {n / dt:,.0f} records/s ({datagrams} datagrams)")
    print(f"best: {best:,.0f} records/s (batch {batch})")


if __name__ == "__main__":
    main()
