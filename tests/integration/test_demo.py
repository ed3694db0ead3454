"""``nfflowd demo`` (the README's first command), run as a user runs it.

The bundled-log path (``--log-only``, what a machine without root or namespaces
gets) needs only nfcapd/nfdump.  The lab path needs root, namespaces, nftables and
conntrack: it runs under CI=true and elsewhere skips with the reason
:func:`nfflowd.lab.available` gives (as tests/e2e/conftest.py ``lab_ready`` does),
with namespaces of its own (``--prefix``).

Both check what the demo prints against itself: every NetFlow v5 record the
collector stored is one of nfflowd's IPv4 CSV lines (v5 cannot carry IPv6).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest

from nfflowd import lab as labmod
from nfflowd.formats import flowtools_csv
from nfflowd.lab.traffic import mix
from nfflowd.ops import control
from tests.needs import needs
from tests.pipeline_harness import expected_records, is_ipv4

COLLECTOR = re.compile(r"^== what the collector \(nfcapd\) stored: (\d+) NetFlow v5 records ==$")
CSV = re.compile(r"^== nfflowd's own flow-tools CSV lines \(what syslog gets\): (\d+) ==$")
#: One collector row: first (UTC), proto, src:port -> dst:port, packets, bytes.
ROW = re.compile(r"^\d\d:\d\d:\d\d\.\d{3}\s+(\d+)\s+(\S+):(\d+) -> (\S+):(\d+)\s+(\d+)\s+(\d+)$")
CSV_HEADER = "unix_secs,unix_nsecs,sysuptime,exaddr,dpkts,doctets,first,last,srcaddr,dstaddr,"

Flow = tuple[int, str, int, str, int, int, int]
Line = dict[str, int | str]  # flowtools_csv.parse_line


def run_demo(tmp_path: Path, *args: str, timeout: float = 240) -> tuple[int, str, str]:
    """``nfflowd demo ARGS`` in its own session (a timeout ends its supervisord and
    nfcapd too); TMPDIR puts its run directory under *tmp_path*."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "nfflowd.ops.cli", "demo", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=dict(os.environ, TMPDIR=str(tmp_path), NFFLOWD_LOGLEVEL="INFO"),
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the demo left behind
        proc.wait(10)
    return proc.returncode, out, err


def parse_output(out: str) -> tuple[list[Flow], list[Line]]:
    """The collector's rows and nfflowd's CSV lines, each section's count checked."""
    lines = out.splitlines()
    heads = [i for i, ln in enumerate(lines) if COLLECTOR.match(ln)]
    assert len(heads) == 1, out
    start = heads[0]
    m = COLLECTOR.match(lines[start])
    assert m
    rows: list[Flow] = []
    for ln in lines[start + 2 : start + 2 + int(m[1])]:  # after the column titles
        r = ROW.match(ln)
        assert r, ln
        rows.append((int(r[1]), r[2], int(r[3]), r[4], int(r[5]), int(r[6]), int(r[7])))
    assert len(rows) == int(m[1])
    csv_at = [i for i, ln in enumerate(lines) if CSV.match(ln)]
    assert len(csv_at) == 1 and csv_at[0] > start, out
    c = CSV.match(lines[csv_at[0]])
    assert c and lines[csv_at[0] + 1].startswith(CSV_HEADER)
    csv = [flowtools_csv.parse_line(ln) for ln in lines[csv_at[0] + 2 : csv_at[0] + 2 + int(c[1])]]
    assert len(csv) == int(c[1])
    return rows, csv


def csv_flow(f: Line) -> Flow:
    src, dst = str(f["srcaddr"]), str(f["dstaddr"])
    return (
        int(f["prot"]),
        src,
        int(f["srcport"]),
        dst,
        int(f["dstport"]),
        int(f["dpkts"]),
        int(f["doctets"]),
    )


def check_agreement(rows: list[Flow], csv: list[Line]) -> None:
    """The collector got exactly the IPv4 CSV lines (same flows, packets, bytes)."""
    assert rows, "the collector stored no record"
    v4 = [csv_flow(f) for f in csv if is_ipv4(str(f["srcaddr"]))]
    assert Counter(rows) == Counter(v4)


def demo_rundirs(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("nfflowd-demo-*"))


@needs("nfcapd", "nfdump")
@pytest.mark.timeout(300)
def test_demo_log_only_replays_the_bundled_log(tmp_path: Path) -> None:
    rc, out, err = run_demo(tmp_path, "--log-only")
    assert rc == 0, f"{out}\n{err}"
    assert "replaying the bundled conntrack log" in out and "demo-events.log" in out
    assert "NAT lab" not in out  # --log-only does not even look for the lab
    rows, csv = parse_output(out)
    check_agreement(rows, csv)
    # every connection of the bundled log, and nothing else, reached both outputs
    log = Path(str(resources.files("nfflowd.data").joinpath("demo-events.log")))
    expected = expected_records(log)
    assert len(csv) == len(expected)
    assert len(rows) == sum(1 for r in expected if r.family == 4) > 0
    (rundir,) = demo_rundirs(tmp_path)
    assert not control.is_running(str(rundir))  # the demo's supervisord is gone


@pytest.mark.root
@needs("nfcapd", "nfdump")
@pytest.mark.timeout(300)
def test_demo_on_the_nat_lab(tmp_path: Path, lab_ready: None) -> None:
    prefix = f"nfl-demo{os.getpid()}-"
    try:
        rc, out, err = run_demo(tmp_path, "--prefix", prefix)
    finally:
        labmod.down(prefix)  # a no-op unless the demo was killed midway
    assert rc == 0, f"{out}\n{err}"
    assert f"lab up: {prefix}client -> {prefix}fw (NAT) -> {prefix}server" in out
    names = [f.name for f in mix(labmod.Lab.named(prefix))]  # the mix, in its order
    assert f"traffic: {len(names)} connections ({', '.join(names)})" in out
    rows, csv = parse_output(out)
    check_agreement(rows, csv)
    assert any(not is_ipv4(str(f["srcaddr"])) for f in csv)  # IPv6 flows: in the CSV only
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    assert prefix not in netns.stdout  # the demo took its lab down
    (rundir,) = demo_rundirs(tmp_path)
    assert not control.is_running(str(rundir))
