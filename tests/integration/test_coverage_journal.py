"""Coverage you can prove: a supervised ingest killed with SIGKILL leaves a
``not_listening`` gap in the coverage journal, and ``nfflowd who`` says so.

The source is the conntrack program (``<source> type conntrack``), played by a
script that lists nothing and then waits: a live source without root or the
kernel's conntrack, so this runs anywhere.  Ingest is killed, supervisord starts it
again; the journal in ``<daemon> statedir`` must hold a ``not_listening`` gap from
before the kill to the new ingest's start, ``who`` for a time inside it must say
INCOMPLETE with that cause (exit 1: nothing found), and for times before and after
the gap "complete".  After a clean stop the journal says ``stopped``, and a time
after that is "not recorded".  (The ``undelivered`` gap of records export cannot
deliver: tests/integration/test_privileges.py, with the stages as ``<daemon> user``.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from nfflowd.formats.json_lines import iso_ms
from nfflowd.pipeline import coverage
from tests.pipeline_harness import (
    fake_conntrack,
    nfflowd,
    running_pid,
    wait_all_running,
    write_config,
)


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def records(statedir: Path, kind: str) -> list[dict[str, Any]]:
    return [r for r in coverage.read(str(statedir)).records if r["kind"] == kind]


def who(conf: Path, at_ms: int, empty: Path, *extra: str) -> tuple[int, str]:
    res = nfflowd(
        "-c", str(conf), "who", "203.0.113.1:4242", "--at", f"{at_ms / 1000:.3f}",
        "--window", "0", "--from", str(empty), *extra, check=False,
    )  # fmt: skip
    return res.returncode, res.stdout + res.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_killed_ingest_is_a_not_listening_gap_and_who_says_so(tmp_path: Path) -> None:
    program, pids = fake_conntrack(tmp_path)
    rundir = tmp_path / "run"
    statedir = tmp_path / "run.state"  # write_config's
    conf = write_config(
        rundir, f"<source>\n  type conntrack\n</source>\n<conntrack>\n  progname {program}\n"
        "</conntrack>\n",
    )  # fmt: skip
    empty = tmp_path / "flows.json"
    empty.write_text("")
    try:
        nfflowd("-c", str(conf), "start")
        wait_all_running(rundir, 30)
        first = wait_for(lambda: records(statedir, "started"), 20, "started")[0]
        assert first["source"] == "conntrack"
        before = first["at_ms"] + 300  # recorded: ingest listens
        # the heartbeat is stored once per loop, which waits up to ~1 s for input when idle
        time.sleep(2.5)
        pid = running_pid(rundir, "ingest")
        killed = coverage.now_ms()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: (p := running_pid(rundir, "ingest")) and p != pid, 30, "a new ingest")
        starts = wait_for(lambda: len(s := records(statedir, "started")) == 2 and s, 20, "restart")
        after = starts[1]["at_ms"] + 300  # recorded again
        time.sleep(2.0)  # the heartbeat beyond it

        gaps = records(statedir, "gap")
        assert [g["cause"] for g in gaps] == ["not_listening"], gaps
        gap = gaps[0]
        # from the dead ingest's last heartbeat (before the kill) to the new one listening
        assert before < gap["from_ms"] <= killed < gap["from_ms"] + 2000, (before, gap, killed)
        assert gap["to_ms"] == starts[1]["at_ms"] and gap["to_ms"] > killed
        assert gap["to_ms"] - gap["from_ms"] < 15_000
        log = (rundir / "ingest.log").read_text()
        line = f"coverage gap from={iso_ms(gap['from_ms'])} to="
        assert line in log and "cause=not_listening stage=ingest" in log
        stats = json.loads((rundir / "stats" / "ingest.json").read_text())
        assert stats["counters"]["coverage_gaps"] == 1
        assert stats["counters"]["coverage_gap_ms"] == gap["to_ms"] - gap["from_ms"]

        inside = (gap["from_ms"] + gap["to_ms"]) // 2
        status, out = who(conf, inside, empty)
        assert status == 1, out
        assert "coverage: INCOMPLETE for" in out and "cause not_listening (ingest)" in out, out
        status, out = who(conf, inside, empty, "--json")
        doc = json.loads(out[: out.rindex("}") + 1])
        assert doc["coverage"]["complete"] is False
        assert [(g["from_ms"], g["to_ms"], g["cause"]) for g in doc["coverage"]["gaps"]] == [
            (gap["from_ms"], gap["to_ms"], "not_listening")
        ]
        for t in (before, after):
            status, out = who(conf, t, empty)
            assert status == 1 and "coverage: complete for" in out, (t, out)
        status, out = who(conf, first["at_ms"] - 60_000, empty)
        assert "coverage: INCOMPLETE" in out and "not recorded" in out, out

        shown = nfflowd("-c", str(conf), "status").stdout
        assert f"coverage journal {statedir}: 1 gap; ingest recording since " in shown, shown
        assert f"{iso_ms(gap['from_ms'])} .. " in shown and "not_listening (ingest)" in shown
        doc = json.loads(nfflowd("-c", str(conf), "status", "--json").stdout)
        assert doc["coverage"]["last_gaps"][0]["from_ms"] == gap["from_ms"]

        nfflowd("-c", str(conf), "stop")
        stopped = records(statedir, "stopped")
        assert len(stopped) == 1 and stopped[0]["at_ms"] >= after
        status, out = who(conf, stopped[0]["at_ms"] + 1000, empty)
        assert "coverage: INCOMPLETE" in out and "not recorded" in out, out
        status, out = who(conf, after, empty)
        assert "coverage: complete for" in out, out
    finally:
        nfflowd("-c", str(conf), "stop", check=False)
        for text in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(text), signal.SIGKILL)  # the program a killed ingest left
