"""Decode throughput of nfflowd.conntrack.netlink on the captured kernel messages.

    .venv/bin/python bench/bench_netlink_decode.py [--seconds 2]

Two shapes: event datagrams as the listener gets them (one message per recv), and
dump-sized buffers (many messages per recv).  When pyroute2 is importable (run with
a throwaway venv's python and PYTHONPATH=. -- it is not a project dependency) the
same buffers are parsed with pyroute2's Marshal, fields extracted to the same tuple
values, and its version is printed.  Prints figures only: wall time per message
(perf_counter) and CPU time per message (process_time: this process's user + system
time, so a busy machine's other load shows in the first and not in the second).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nfflowd.conntrack.netlink import DecodeCounters, decode_messages

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "netlink"


def load() -> list[bytes]:
    grams: list[bytes] = []
    for path in sorted(DATA.glob("*_*.hex")):  # event fixtures: one message each
        for line in path.read_text().splitlines():
            if line.startswith("# datagram"):
                grams.append(b"")
            elif line.strip() and not line.startswith("#"):
                grams[-1] += bytes.fromhex(line)
    return grams


def rate(label: str, fn: Callable[[], int], seconds: float) -> float:
    """Run ``fn`` (returns messages handled) repeatedly for ``seconds``; print msgs/s
    by wall time and microseconds per message by wall and by CPU time."""
    fn()
    done, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        done += fn()
    cpu = time.process_time() - cpu_start
    per_s = done / elapsed
    print(
        f"{label:<44} {per_s:>12,.0f} msgs/s  {1e6 / per_s:8.2f} us/msg wall  "
        f"{1e6 * cpu / done:8.2f} us/msg CPU"
    )
    return per_s


def pyroute2_version() -> str:
    """The installed pyroute2's version (distribution metadata, else the module's)."""
    from importlib import metadata

    try:
        return metadata.version("pyroute2")
    except metadata.PackageNotFoundError:
        import pyroute2  # type: ignore[import-not-found]

        return str(getattr(pyroute2, "__version__", "unknown"))


def pyroute2_decoder() -> Callable[[bytes], list[tuple[Any, ...]]] | None:
    try:
        from pyroute2.netlink.marshal import Marshal  # type: ignore[import-not-found]
        from pyroute2.netlink.nfnetlink.nfctsocket import (  # type: ignore[import-not-found]
            AsyncNFCTSocket,
        )
    except ImportError:
        return None

    class NfctMarshal(Marshal):  # type: ignore[misc]
        msg_map = AsyncNFCTSocket.policy

    marshal = NfctMarshal()

    def side(t: Any) -> tuple[Any, ...]:
        ip, l4 = t.get_attr("CTA_TUPLE_IP"), t.get_attr("CTA_TUPLE_PROTO")
        return (
            ip.get_attr("CTA_IP_V4_SRC") or ip.get_attr("CTA_IP_V6_SRC"),
            ip.get_attr("CTA_IP_V4_DST") or ip.get_attr("CTA_IP_V6_DST"),
            l4.get_attr("CTA_PROTO_NUM"),
            l4.get_attr("CTA_PROTO_SRC_PORT") or l4.get_attr("CTA_PROTO_ICMP_ID"),
            l4.get_attr("CTA_PROTO_DST_PORT") or l4.get_attr("CTA_PROTO_ICMP_TYPE"),
        )

    def decode(buf: bytes) -> list[tuple[Any, ...]]:
        out = []
        for msg in marshal.parse(buf):
            orig = msg.get_attr("CTA_TUPLE_ORIG")
            if orig is None:
                continue
            counters = msg.get_attr("CTA_COUNTERS_ORIG")
            stamp = msg.get_attr("CTA_TIMESTAMP")
            out.append(
                (
                    side(orig),
                    side(msg.get_attr("CTA_TUPLE_REPLY")),
                    msg.get_attr("CTA_ID"),
                    counters and counters.get_attr("CTA_COUNTERS_PACKETS"),
                    stamp and stamp.get_attr("CTA_TIMESTAMP_START"),
                )
            )
        return out

    return decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    args = parser.parse_args()
    grams = load()
    big = b"".join(grams) * max(1, 16384 // sum(map(len, grams)))  # ~ one dump recv
    per_big = len(grams) * (len(big) // sum(map(len, grams)))
    print(
        f"{len(grams)} captured event messages, {sum(map(len, grams)) / len(grams):.0f} B avg; "
        f"dump buffer {len(big)} B = {per_big} messages"
    )
    counters = DecodeCounters()

    def ours_events() -> int:
        for g in grams:
            decode_messages(g, 0, counters)
        return len(grams)

    def ours_dump() -> int:
        decode_messages(big, 0, counters)
        return per_big

    a = rate("nfflowd: one message per recv buffer", ours_events, args.seconds)
    b = rate("nfflowd: dump-sized buffers", ours_dump, args.seconds)
    print(f"decoder problems: malformed {counters.malformed}, truncated {counters.truncated}")
    other = pyroute2_decoder()
    if other is None:
        print("pyroute2 not importable here: comparison skipped (see the docstring)")
        return
    print(f"pyroute2 {pyroute2_version()}")

    def theirs_events() -> int:
        for g in grams:
            other(g)
        return len(grams)

    def theirs_dump() -> int:
        other(big)
        return per_big

    c = rate("pyroute2: one message per recv buffer", theirs_events, args.seconds)
    d = rate("pyroute2: dump-sized buffers", theirs_dump, args.seconds)
    print(f"speed-up over pyroute2: events x{a / c:.1f}, dump x{b / d:.1f}")


if __name__ == "__main__":
    main()
