"""Throughput of the NetFlow v9 and IPFIX encoders (records/s); prints figures, asserts nothing.

.venv/bin/python bench/bench_v9_ipfix_encode.py [records] [batch] [ipv6 share, 0..1]
"""

from __future__ import annotations

import sys
import time

from nfflowd.formats.ipfix import IpfixEncoder
from nfflowd.formats.netflow_v9 import V9Encoder
from nfflowd.messages import FlowRecord


def make_records(n: int, now_ms: int, v6_share: float) -> list[FlowRecord]:
    out = []
    every = round(1 / v6_share) if v6_share > 0 else 0
    for i in range(n):
        first = now_ms - 60_000 - i % 5000
        sport = 1024 + i % 60000
        packets = 10 + i % 100
        proto = 6 if i % 3 else 17
        if every and i % every == 0:
            src = b"\xfd" + bytes(11) + i.to_bytes(4, "big")
            dst = b"\x20\x01\x0d\xb8" + bytes(11) + bytes((i % 250 + 1,))
            post = b"\x20\x01\x0d\xb8\x00\xff" + bytes(10)
            fam = 6
        else:
            src = bytes((10, 0, (i >> 8) & 0xFF, i & 0xFF))
            dst = bytes((203, 0, 113, i % 250 + 1))
            post = bytes((198, 51, 100, 7))
            fam = 4
        r = FlowRecord(
            first,
            now_ms - i % 1000,
            fam,
            proto,
            src,
            dst,
            sport,
            443,
            packets,
            1500 * packets,
            post,
            dst,
            30000 + i % 30000,
            443,
            1 + i % 3,
            3,
            0,
            0,
            i,
        )
        out.append(r)
    return out


def run(
    name: str, enc: V9Encoder | IpfixEncoder, batches: list[list[FlowRecord]], n: int, now_ns: int
) -> float:
    for b in batches[:5]:  # warm up
        enc.encode(b, now_ns)
    best = 0.0
    for _ in range(3):
        datagrams = 0
        octets = 0
        t0 = time.perf_counter()
        for b in batches:
            for d in enc.encode(b, now_ns):
                datagrams += 1
                octets += len(d)
        dt = time.perf_counter() - t0
        best = max(best, n / dt)
        print(
            f"{name}: {n} records in {dt:.3f}s = {n / dt:,.0f} records/s "
            f"({datagrams} datagrams, {octets / datagrams:.0f} bytes avg)"
        )
    return best


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    v6_share = float(sys.argv[3]) if len(sys.argv) > 3 else 0.2
    now_ns = time.time_ns()
    records = make_records(n, now_ns // 1_000_000, v6_share)
    batches = [records[i : i + batch] for i in range(0, n, batch)]
    v9 = run("v9", V9Encoder(boot_ms=now_ns // 1_000_000 - 86_400_000), batches, n, now_ns)
    fix = run("ipfix", IpfixEncoder(), batches, n, now_ns)
    print(
        f"best: v9 {v9:,.0f} records/s, ipfix {fix:,.0f} records/s "
        f"(batch {batch}, IPv6 share {v6_share:.0%}, mtu 1400)"
    )


if __name__ == "__main__":
    main()
