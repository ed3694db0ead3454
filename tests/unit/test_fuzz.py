"""The fuzz harness (bench/fuzz.py) in small: a few thousand mutated inputs per parser, no
crash, no input slower than 50 ms, no memory growth; and the crashes it found, each with
its minimal input (issue 13; the full run's figures are in the issue's closing note)."""

from __future__ import annotations

import random
import struct

from bench import fuzz
from nfflowd.decode import decode_stream, pcap

#: Inputs per target of the reduced run (the full run: bench.fuzz.FULL, 1,020,000).
INPUTS = 3000


def test_a_reduced_run_finds_no_crash_no_slow_input_no_growth() -> None:
    lines: list[str] = []
    reports = fuzz.run(INPUTS, seed=13, out=lines.append)
    assert [r.name for r in reports] == list(fuzz.FULL)
    for r in reports:
        assert r.inputs == INPUTS, r.name
        assert r.crashes == {}, (r.name, [c.message for c in r.crashes.values()])
        assert r.slow == [], (r.name, [(ms, data[:80]) for ms, data in r.slow])
        assert r.growth_kb < 64 * 1024, (r.name, r.growth_kb)
    assert lines == []  # nothing to report as it went
    table = fuzz.table(reports, 64 * 1024)
    assert table.splitlines()[-1].split()[:3] == ["total", str(INPUTS * len(reports)), "0"]


def test_the_harness_reports_a_crash_minimised() -> None:
    """A parser that raises something else than its documented error is a crash,
    found, counted and minimised to the bytes that matter."""

    def parser(data: bytes) -> None:
        if b"\x01\x02" in data:
            raise IndexError("boom")
        if data[:1] == b"x":
            raise ValueError("documented")

    seeds = [b"x" * 40, b"\x00" * 30 + b"\x01\x02" + b"\x00" * 30]
    target = fuzz.Target("toy", seeds, parser, (ValueError,))
    report = fuzz.fuzz(target, 200, random.Random(1), 50.0, lambda _: None)
    (crash,) = report.crashes.values()
    assert crash.signature.startswith("IndexError at ")
    assert crash.input == b"\x01\x02" and crash.count >= 1


def _truncated_ipv6() -> bytes:
    """An IPv6 header announcing 16 bytes of payload behind a hop-by-hop header, with
    none of them captured."""
    return struct.pack(pcap.IPV6_HEADER_FORMAT, 6 << 28, 16, 0, 64, b"\0" * 16, b"\0" * 16)


def test_a_truncated_ipv6_packet_is_a_value_error_not_an_index_error() -> None:
    """Found by the harness (issue 13): the extension headers were read before the
    capture length was checked."""
    try:
        pcap.udp_datagram(pcap.LINKTYPE_RAW, _truncated_ipv6())
    except ValueError as exc:
        assert str(exc) == (
            "offset 40: frame captured up to byte 40, its IP packet ends at 56 (snaplen too small?)"
        )
    else:
        raise AssertionError("no error")


def test_nfflowd_decode_names_the_truncated_packet_and_goes_on() -> None:
    capture = fuzz._pcapng_file(pcap.LINKTYPE_RAW, [_truncated_ipv6()], "<")
    (item,) = list(decode_stream(capture))
    assert item.error == (
        "frame: offset 40: frame captured up to byte 40, its IP packet ends at 56 "
        "(snaplen too small?)"
    )
