"""Outages downstream: nothing is lost, memory stays bounded, everything arrives after recovery.

The syslog daemon is down for 10 s in the middle of a replay: the mirror keeps
undelivered lines and does not acknowledge their batches, correlate stops at
``max_unacked`` batches (backpressure instead of unbounded memory), and once
rsyslogd is back every line arrives, none twice.  The only lines that can
miss are those already in rsyslogd's socket queue when it was killed (datagram
syslog has no acknowledgement): at most net.unix.max_dgram_qlen + 1.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bench.gen_events import generate
from nfflowd import control
from tests.pipeline_harness import write_config
from tests.rsyslog_harness import RsyslogHarness


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_syslog_down_for_ten_seconds_loses_nothing(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    expected = generate(str(log), 100_000)
    rundir = tmp_path / "run"
    with RsyslogHarness(tmp_path / "syslog") as syslog:
        conf = write_config(tmp_path / "c.conf", collector_port=None,
                            syslog_socket=syslog.socket_path, rundir=rundir,
                            extra="<daemon>\n  max_unacked 8\n</daemon>\n")  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "nfflowd.cli", "-c", str(conf), "replay", "--rundir",
             str(rundir), str(log)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not (syslog.local6_log.exists() and syslog.local6_log.stat().st_size > 0):
                assert time.monotonic() < deadline, "no line reached syslog"
                time.sleep(0.05)
            syslog.stop()
            time.sleep(10)
            during = len(syslog.lines(0))
            assert proc.poll() is None, "the replay cannot finish while syslog is down"
            syslog.start()
            out, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if (rundir / "supervisor.sock").exists() and control.is_running(str(rundir)):
                control.stop(str(rundir), timeout=30)  # the killed CLI's supervisord
        assert proc.returncode == 0, err
        queue = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
        syslog.lines(expected - queue - 1, timeout=60)
        time.sleep(1.0)  # anything still on its way
        lines = syslog.lines(0)
    assert during < expected
    counts = Counter(lines)
    assert max(counts.values()) == 1  # none twice
    assert expected - queue - 1 <= len(lines) <= expected
    report = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert "d0_dropped=0" in report["mirror"]
