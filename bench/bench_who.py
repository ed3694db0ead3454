"""``nfflowd who`` over many stored connections: time and peak memory; prints figures,
asserts nothing.

.venv/bin/python -m bench.bench_who [connections] [directory]

Makes *connections* (default 1,000,000) source-NATed TCP connections spread over a
day behind one public address (each public port taken again and again), as nfflowd
records them: the v5 triplet into a private nfcapd (``-B 8 MiB``; 3 records per
connection), the three JSON mirror lines into a file, and the three flow-tools CSV
lines into a file as a syslog daemon writes them (``Dec  6 10:00:01 fw nfflowd: ...``,
``RSYSLOG_TraditionalFileFormat``).  Then asks for one
connection in the middle of the day, from each source, with ``/usr/bin/time``
(elapsed time, peak RSS of the ``nfflowd who`` process and, for nfcapd, of nfdump),
and prints what was found.  All records land in one or two nfcapd files (nfcapd
rotates by wall-clock time), so no file is skipped by time: the worst case, every
record read by nfdump (twice for v5: the second pass for the remote end's records).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from nfflowd.formats import flowtools_csv, json_lines, netflow_v5
from nfflowd.lab.nfcapd import Nfcapd
from nfflowd.messages import FlowRecord

PUB = bytes((203, 0, 113, 1))
DAY_MS = 86_400_000
#: Records encoded and sent per step (a multiple of v5's 30 per datagram).
CHUNK = 3000
TIME_FORMAT = "%e %M"  # elapsed seconds, peak RSS KiB
#: The prefix rsyslog's traditional file format puts before the mirror's line.
SYSLOG_PREFIX = "Dec  6 10:00:01 fw nfflowd: "


def connection(i: int, day0: int, n: int) -> list[FlowRecord]:
    """Connection *i* of *n*: 10.x.y.z:port -> 198.51.100.x:443 as 203.0.113.1:pub_port."""
    priv = bytes((10, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF))
    srv = bytes((198, 51, 100, 1 + i % 200))
    port, pub_port = 1024 + i % 60000, 1024 + (i * 7919) % 64000
    first = day0 + i * DAY_MS // n
    last = first + 1000 + i % 30_000
    pk, by, rpk, rby = 6 + i % 10, 600 + i % 1000, 5 + i % 7, 5000 + i % 3000
    f = (first, last, 4, 6)
    return [
        FlowRecord(*f, priv, srv, port, 443, pk, by, PUB, srv, pub_port, 443, 1, 3, 0, 0, i),
        FlowRecord(*f, PUB, srv, pub_port, 443, pk, by, PUB, srv, pub_port, 443, 2, 3, 0, 0, i),
        FlowRecord(*f, srv, PUB, 443, pub_port, rpk, rby, srv, priv, 443, port, 3, 3, 0, 0, i),
    ]


def records(n: int, day0: int) -> Iterator[list[FlowRecord]]:
    chunk: list[FlowRecord] = []
    for i in range(n):
        chunk += connection(i, day0, n)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def timed(args: list[str]) -> tuple[float, int, str]:
    """(elapsed s, peak RSS KiB, stdout) of ``nfflowd who ARGS`` under /usr/bin/time."""
    cmd = ["/usr/bin/time", "-f", TIME_FORMAT, sys.executable, "-m", "nfflowd.ops.cli"]
    res = subprocess.run(
        [*cmd, "-c", "/dev/null", "who", *args], capture_output=True, text=True, check=False
    )
    m = re.search(r"^([\d.]+) (\d+)$", res.stderr, re.MULTILINE)
    if m is None:
        raise RuntimeError(f"no figures from /usr/bin/time: {res.stderr}")
    return float(m[1]), int(m[2]), res.stdout


def nfdump_peak(directory: Path, filt: str) -> tuple[float, int]:
    """(elapsed s, peak RSS KiB) of one ``nfdump -r FILE -o json FILTER`` over the files."""
    total, peak = 0.0, 0
    for path in sorted(directory.glob("nfcapd.*")):
        res = subprocess.run(
            ["/usr/bin/time", "-f", TIME_FORMAT, "nfdump", "-r", str(path), "-o", "json", filt],
            capture_output=True,
            text=True,
            env=dict(os.environ, TZ="UTC"),
            check=False,
        )
        m = re.search(r"^([\d.]+) (\d+)$", res.stderr, re.MULTILINE)
        if m:
            total += float(m[1])
            peak = max(peak, int(m[2]))
    return total, peak


def ask(base: Path, n: int, day0: int) -> None:
    i = n // 2
    asked = connection(i, day0, n)[0]
    public = f"203.0.113.1:{asked.post_sport}"
    at = f"{(asked.first_ms + 500) / 1000:.3f}"
    print(f"asking: who {public} --at {at} (connection {i}: 10.x:{asked.sport} expected)")
    sources = (
        ("nfcapd (v5)", base / "nfcapd"),
        ("JSON lines", base / "mirror.out"),
        ("CSV syslog", base / "syslog"),
    )
    for name, path in sources:
        secs, kib, stdout = timed([public, "--at", at, "--from", str(path)])
        found = [ln.strip() for ln in stdout.splitlines() if ln.strip().startswith("tcp")]
        print(f"{name:12} {secs:6.1f} s, peak RSS of nfflowd who {kib / 1024:.0f} MiB: {found}")
    filt = f"(src ip 203.0.113.1 and src port {asked.post_sport})"
    secs, kib = nfdump_peak(base / "nfcapd", filt)
    print(f"one nfdump pass with the filter: {secs:.1f} s, peak RSS {kib / 1024:.0f} MiB")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    base = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="who-bench-"))
    day0 = (int(time.time() * 1000) // DAY_MS - 2) * DAY_MS  # the day before yesterday, UTC
    capdir, jsonl, syslog = base / "nfcapd", base / "mirror.out", base / "syslog"
    t0 = time.monotonic()
    with (
        Nfcapd(capdir, extra_args=["-B", "8388608"]) as cap,
        open(jsonl, "w") as out,
        open(syslog, "w") as log,
    ):
        enc = netflow_v5.V5Encoder()
        for chunk in records(n, day0):
            cap.send(enc.encode(chunk, time.time_ns()), window=64)
            out.writelines(json_lines.format_line(r, exaddr="192.0.2.1") + "\n" for r in chunk)
            log.writelines(
                SYSLOG_PREFIX
                + flowtools_csv.format_line(r, exaddr="192.0.2.1", boot_ms=day0)
                + "\n"
                for r in chunk
            )
        cap.stop()
        stored = sum(p.stat().st_size for p in capdir.glob("nfcapd.*"))
    print(
        f"{n:,} connections = {3 * n:,} records: nfcapd {stored / 2**20:.0f} MiB in "
        f"{len(list(capdir.glob('nfcapd.*')))} file(s), JSON lines "
        f"{jsonl.stat().st_size / 2**20:.0f} MiB, CSV syslog {syslog.stat().st_size / 2**20:.0f} "
        f"MiB; made in {time.monotonic() - t0:.0f} s"
    )
    ask(base, n, day0)
    print(f"data kept in {base}")


if __name__ == "__main__":
    main()
