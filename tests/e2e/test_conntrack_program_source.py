"""`<source> type conntrack`: the 2009 way (the conntrack program's text), in the live lab.

nfflowd runs the program named in `<conntrack> progname` with `init_format`
(the listing of open connections) and `format` (the event stream), as the seed
did.  To read the lab firewall's table from the root namespace the program is
`ip` and its arguments enter the namespace first.  Also: the program dying is
restarted by the source (counted), not the whole stage.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from nfflowd import lab as labmod
from nfflowd.conntrack.sources import ProgramSource
from nfflowd.lab.nfcapd import Nfcapd
from nfflowd.messages import ConntrackEvent
from tests.lab_names import end_connections, lab_prefix
from tests.pipeline_harness import daemon, write_config
from tests.source_events import SourceEvents


@pytest.mark.root
@pytest.mark.timeout(120)
def test_conntrack_program_source_in_the_lab(tmp_path: Path, lab_ready: None) -> None:
    rundir = tmp_path / "run"
    with labmod.running(lab_prefix("prog")) as lab, Nfcapd() as cap:
        program = (
            "<source>\n  type conntrack\n</source>\n"
            "<conntrack>\n  progname ip\n"
            f"  init_format netns exec {lab.fw} conntrack -L\n"
            f"  format netns exec {lab.fw} conntrack -E -e NEW,DESTROY -o timestamp,id\n"
            "</conntrack>\n"
        )
        conf = write_config(rundir, program, collector_port=cap.port)
        with daemon(conf):
            time.sleep(1.5)  # the program starts and subscribes
            flows = labmod.traffic(lab)
            end_connections(lab)
        stored = cap.records()
    lines = (rundir / "mirror.out").read_text().splitlines()
    # every connection of the mix: 3 records when NATed and replied, 2 without NAT / reply
    expected = sum((3 if f.nat != "none" else 2) - (0 if f.replied else 1) for f in flows)
    assert len(lines) == expected
    v4 = [f for f in flows if f.family == 4]
    assert len(stored) == sum((3 if f.nat != "none" else 2) - (0 if f.replied else 1) for f in v4)
    protos = Counter(r["proto"] for r in stored)
    assert protos[6] and protos[17] and protos[1] and protos[47]


def fake_conntrack(tmp_path: Path, script: str) -> tuple[ProgramSource, SourceEvents]:
    """A source running the shell *script* as its conntrack program, and its reader."""
    program = tmp_path / "fake-conntrack"
    program.write_text("#!/bin/sh\n" + script)
    program.chmod(0o755)
    src = ProgramSource(str(program), "", "-E", restart_delay_s=0.05)
    return src, SourceEvents(src)


def test_program_source_restarts_a_dead_program(tmp_path: Path) -> None:
    """The program exits after one line: the source logs, counts and runs it again."""
    src, reader = fake_conntrack(
        tmp_path,
        "echo '[1795714525.646611]\t[DESTROY] udp      17 src=10.0.1.2 dst=203.0.113.2 "
        "sport=1 dport=2 packets=1 bytes=28 src=203.0.113.2 dst=10.0.1.2 sport=2 dport=1 "
        "packets=1 bytes=28 id=5'\n"
        "echo 'garbage line' \n"
        "exit 3\n",
    )
    events = []
    deadline = time.monotonic() + 10
    while src.counters["program_starts"] < 3 and time.monotonic() < deadline:
        events += reader.read(0.1)
    src.close()
    assert src.counters["program_starts"] >= 3 and src.counters["program_exits"] >= 2
    assert len(events) >= 2 and all(e.ct_id == 5 for e in events)
    assert reader.counters()["malformed_lines"] >= 2


def test_program_source_keeps_reading_a_program_that_fills_its_stderr(tmp_path: Path) -> None:
    """Issue 13: conntrack-tools prints its ENOBUFS warnings on stderr, exactly under load;
    a pipe nobody reads blocks the program once it holds 64 KiB, and the events stop.
    Here 50 events each follow 8 KiB of error output (400 KiB in all): every event
    arrives, every error line is counted, and the program is never restarted."""
    src, reader = fake_conntrack(
        tmp_path,
        "i=1\n"
        "while [ $i -le 50 ]; do\n"
        "  head -c 8192 /dev/zero | tr '\\0' 'x' | fold -w 63 >&2\n"
        "  printf '[1795714525.646611]\\t[DESTROY] udp      17 src=10.0.1.2 dst=203.0.113.2 "
        "sport=1 dport=2 packets=1 bytes=28 src=203.0.113.2 dst=10.0.1.2 sport=2 dport=1 "
        "packets=1 bytes=28 id=%d\\n' $i\n"
        "  i=$((i + 1))\n"
        "done\n"
        "exec sleep 60\n",
    )
    events: list[ConntrackEvent] = []
    deadline = time.monotonic() + 30
    try:
        while len(events) < 50 and time.monotonic() < deadline:
            events += reader.read(0.1)
        for _ in range(10):  # what is left of the error output
            reader.read(0.05)
    finally:
        src.close()
    assert [e.ct_id for e in events] == list(range(1, 51))
    # 8192 bytes folded at 63: 130 lines, and a last piece without its newline
    assert src.counters["program_stderr_lines"] == 50 * (8192 // 63)
    assert src.counters["program_starts"] == 1 and src.counters["program_exits"] == 0
