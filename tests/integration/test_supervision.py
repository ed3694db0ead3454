"""supervisord restarts a stage killed with SIGKILL in the middle of a replay.

The replay completes, reports the restart, and loses no record: every batch
is kept until acknowledged end to end and resent to a restarted stage;
duplicates a crash makes unavoidable are removed by record identity and stay
within 0.1 %.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from nfflowd.pipeline import endpoints, supervision
from nfflowd.pipeline import rundir as rundirs
from nfflowd.pipeline.sink import CHUNK
from tests.pipeline_harness import (
    daemon,
    end_replay,
    event_log,
    idle_source,
    nfflowd,
    running_pid,
    start_replay,
    working_pid,
    write_config,
)


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
    log, expected = event_log(tmp_path, 300_000)
    rundir = tmp_path / "run"
    conf = write_config(rundir)
    proc = start_replay(conf, rundir, log)
    try:
        pid = wait_for(lambda: working_pid(rundir, victim), 30, f"{victim} at work")
        time.sleep(0.5)  # in the middle of the replay
        os.kill(int(pid), signal.SIGKILL)  # type: ignore[call-overload]
        new_pid = wait_for(
            lambda: (p := running_pid(rundir, victim)) and p != pid and p, 30, "restart"
        )
        assert new_pid != pid
        out, err = proc.communicate(timeout=180)
    finally:
        end_replay(proc, rundir)
    assert proc.returncode == 0, err
    report = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "starts=2" in report[victim], report  # the replay reports the restart
    lines = len((rundir / "mirror.out").read_text().splitlines())
    print(f"{victim} killed: {lines} of {expected} lines mirrored")
    # nothing lost; at most the chunk a mirror kill cut goes twice
    assert expected <= lines <= expected + CHUNK


#: deploy/supervisord.conf: a stage failing this many times in a row on start ends FATAL.
STARTRETRIES = 5


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_stage_failing_on_start_ends_fatal_with_its_cause_logged(tmp_path: Path) -> None:
    """export cannot bind its endpoint (a directory stands at the socket's path):
    supervisord tries 1 + startretries times, then reports FATAL instead of looping,
    `nfflowd check` shows it, the other stages keep running, and export's log says
    which endpoint could not be opened."""
    rundir = tmp_path / "run"
    rundirs.ensure(str(rundir))
    blocker = rundir / endpoints.BY_NAME["flows.export"].filename
    (blocker / "not-a-socket").mkdir(parents=True)  # non-empty: cannot be unlinked
    conf = write_config(rundir, idle_source(tmp_path))

    def fatal() -> dict[str, dict[str, object]] | None:
        states = {p["name"]: p for p in supervision.processes(str(rundir))}
        return states if states["export"]["statename"] == "FATAL" else None

    with daemon(conf):
        states = wait_for(fatal, 90, "export FATAL")
        check = nfflowd("-c", str(conf), "check", check=False).stdout
    assert isinstance(states, dict)
    # 1 + startretries failed starts in a row; on a loaded machine an attempt may take
    # longer than startsecs to fail, counts as started, and the count begins again
    assert states["export"]["starts"] >= 1 + STARTRETRIES, states["export"]
    for stage in ("ingest", "correlate", "mirror"):
        assert states[stage]["statename"] == "RUNNING", states[stage]
    assert re.search(r"stage\s+export\s+FATAL", check), check
    log = (rundir / "export.log").read_text()
    causes = [ln for ln in log.splitlines() if str(blocker) in ln and "error" in ln.lower()]
    print(causes[-1:] or log[-2000:])
    # every attempt says why, naming the endpoint it could not open
    assert len(causes) >= 1 + STARTRETRIES, log[-3000:]
