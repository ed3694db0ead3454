"""supervisord restarts a stage killed with SIGKILL in the middle of a replay.

The replay completes, reports the restart, and loses no record: every batch
is kept until acknowledged end to end and resent to a restarted stage;
duplicates a crash makes unavoidable are removed by record identity and stay
within 0.1 %.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.gen_events import generate
from nfflowd import control
from tests.pipeline_harness import write_config


def wait_for(check: object, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("victim", ["ingest", "correlate", "export", "mirror"])
def test_killed_stage_is_restarted_and_replay_completes(tmp_path: Path, victim: str) -> None:
    log = tmp_path / "events.log"
    expected = generate(str(log), 300_000)
    rundir = tmp_path / "run"
    conf = write_config(tmp_path / "c.conf", collector_port=None, syslog_socket=None,
                        rundir=rundir, screen=True)  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "nfflowd.cli", "-c", str(conf), "replay", "--rundir", str(rundir),
         str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def running_pid() -> int:
            if not (rundir / "supervisor.sock").exists() or not control.is_running(str(rundir)):
                return 0
            for p in control.processes(str(rundir)):
                if p["name"] == victim and p["statename"] == "RUNNING":
                    return int(p["pid"])
            return 0

        pid = wait_for(running_pid, 30, f"{victim} RUNNING")
        time.sleep(0.5)  # in the middle of the replay
        os.kill(int(pid), signal.SIGKILL)  # type: ignore[call-overload]
        new_pid = wait_for(lambda: (p := running_pid()) and p != pid and p, 30, "restart")
        assert new_pid != pid
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if (rundir / "supervisor.sock").exists() and control.is_running(str(rundir)):
            control.stop(str(rundir), timeout=30)  # the killed CLI's supervisord
    assert proc.returncode == 0, err
    report = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "starts=2" in report[victim], report  # the replay reports the restart
    lines = len((rundir / "mirror.out").read_text().splitlines())
    print(f"{victim} killed: {lines} of {expected} lines mirrored")
    assert expected <= lines <= expected * 1.001
