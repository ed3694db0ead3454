"""Every verb of the command line, against a real supervisord."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest

from nfflowd import topology
from nfflowd.config import load
from nfflowd.ops import control
from nfflowd.pipeline import supervision
from tests.pipeline_harness import (
    GOLDEN,
    csv_key,
    file_source,
    nfflowd,
    replay,
    wait_all_running,
    write_config,
)


def pids(rundir: Path) -> dict[str, int]:
    return {p["name"]: p["pid"] for p in supervision.processes(str(rundir))}


def config(tmp_path: Path, engine_id: int = 0) -> Path:
    return write_config(
        tmp_path / "run",
        file_source(GOLDEN / "lab-events.log") + f"<export>\n  engine_id {engine_id}\n</export>\n",
    )


def test_help_and_version() -> None:
    out = nfflowd("help").stdout
    assert "Usage: nfflowd [ -c file ] [ -f ]" in out and "replay" in out
    assert nfflowd("version").stdout.startswith("nfflowd ")
    bad = nfflowd("frobnicate", check=False)
    assert bad.returncode == 2 and "unknown command" in bad.stderr


@pytest.mark.timeout(180)
def test_start_check_reload_restart_stop(tmp_path: Path) -> None:
    conf = config(tmp_path)
    run = tmp_path / "run"
    assert "started" in nfflowd("-c", str(conf), "start").stdout
    try:
        before = wait_all_running(run)
        # no other local user may reach the endpoints or supervisord's socket
        assert stat.S_IMODE(run.stat().st_mode) == 0o700
        # a stage is RUNNING after 1 s, maybe before it has bound (still importing, on a
        # loaded machine): its endpoints appear soon after
        deadline = time.monotonic() + 30
        while len(sockets := [*run.glob("*.ipc"), run / "supervisor.sock"]) < 4:
            assert time.monotonic() < deadline, sockets
            time.sleep(0.1)
        assert all(stat.S_IMODE(s.stat().st_mode) & 0o077 == 0 for s in sockets), sockets
        # a second start for the same run directory is refused
        again = nfflowd("-c", str(conf), "start", check=False)
        assert again.returncode == 1 and "already running" in again.stderr
        check = nfflowd("-c", str(conf), "check").stdout
        for stage, pid in before.items():
            assert f"stage    {stage:<10} RUNNING   pid {pid}" in check
        # supervisorctl on the rendered config sees the group
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "supervisor.supervisorctl",
                "-c",
                str(run / "supervisord.conf"),
                "status",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert status.stdout.count("nfflowd:") == 4 and "RUNNING" in status.stdout
        # an operator's supervisorctl restart of one stage leaves the other three alone
        ctl = subprocess.run(
            [
                sys.executable,
                "-m",
                "supervisor.supervisorctl",
                "-c",
                str(run / "supervisord.conf"),
                "restart",
                "nfflowd:export",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert ctl.returncode == 0 and "export: started" in ctl.stdout, ctl.stdout + ctl.stderr
        restarted = wait_all_running(run)
        assert restarted["export"] != before["export"]
        assert {s: restarted[s] for s in ("ingest", "correlate", "mirror")} == {
            s: before[s] for s in ("ingest", "correlate", "mirror")
        }
        # check shows each stage's uptime and how often supervisord restarted it
        check = nfflowd("-c", str(conf), "check").stdout
        for stage, pid in restarted.items():
            shown = rf"^stage +{stage} +RUNNING +pid {pid} +uptime +(\d+)s restarts (\d+)$"
            line = re.search(shown, check, re.M)
            assert line, check
            assert int(line[2]) == (1 if stage == "export" else 0), line[0]
        before = restarted
        # reload restarts only the stage whose settings changed
        config(tmp_path, engine_id=7)
        assert "restarted: export" in nfflowd("-c", str(conf), "reload").stdout
        after = wait_all_running(run)
        assert after["export"] != before["export"]
        assert {s: after[s] for s in ("ingest", "correlate", "mirror")} == {
            s: before[s] for s in ("ingest", "correlate", "mirror")
        }
        assert "nothing" in nfflowd("-c", str(conf), "reload").stdout
        # a change of shape (shards) cannot be reloaded: it says so and changes nothing
        conf.write_text(conf.read_text().replace("</daemon>", "  correlators 2\n</daemon>"))
        refused = nfflowd("-c", str(conf), "reload", check=False)
        assert refused.returncode == 1 and "nfflowd restart" in refused.stderr
        assert wait_all_running(run) == after
        config(tmp_path, engine_id=7)
        # restart replaces every stage
        nfflowd("-c", str(conf), "restart")
        renewed = wait_all_running(run)
        assert all(renewed[s] != after[s] for s in renewed)
    finally:
        nfflowd("-c", str(conf), "stop", check=False)
    assert not control.is_running(str(run))
    assert "not running" in nfflowd("-c", str(conf), "stop").stdout


@pytest.mark.timeout(180)
def test_the_shipped_supervisord_conf_runs_as_is(tmp_path: Path) -> None:
    """Ops who run supervisord themselves use deploy/supervisord.conf unchanged, with
    NFFLOWD_RUNDIR (holding settings.json) and NFFLOWD_PYTHON exported."""
    conf = config(tmp_path)
    run = tmp_path / "run"
    control.prepare(load(str(conf)), str(run))  # what `nfflowd start` writes there
    (run / control.CONF_NAME).unlink()  # only the shipped file from here on
    shipped = resources.files("nfflowd.deploy").joinpath(control.CONF_NAME)
    expected = len((GOLDEN / "lab-expected.csv").read_text().splitlines())
    with resources.as_file(shipped) as path:
        assert "%(ENV_NFFLOWD_RUNDIR)s" in path.read_text() and str(run) not in path.read_text()
        env = dict(os.environ, NFFLOWD_RUNDIR=str(run), NFFLOWD_PYTHON=sys.executable)
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            stages = wait_all_running(run, timeout=60)
            assert sorted(stages) == sorted(topology.STAGES)
            assert control.supervisord_pid(str(run)) == proc.pid
            # the stages it started are the pipeline: the file source's flows get mirrored
            out = run / "mirror.out"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if out.exists() and len(out.read_text().splitlines()) >= expected:
                    break
                time.sleep(0.2)
            assert len(out.read_text().splitlines()) == expected
        finally:
            if control.is_running(str(run)):
                control.stop(str(run))
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("signum", "to_group"),
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGINT, True)],
    ids=["SIGTERM", "SIGINT", "ctrl-c"],  # ctrl-c: SIGINT to the process group, as a terminal
)
def test_foreground_start_stops_cleanly_on_signal(
    tmp_path: Path, signum: signal.Signals, to_group: bool
) -> None:
    conf = config(tmp_path)
    run = str(tmp_path / "run")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nfflowd.ops.cli", "-c", str(conf), "-f", "start"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    err = ""
    want = len((GOLDEN / "lab-expected.csv").read_text().splitlines())
    out_file = tmp_path / "run" / "mirror.out"
    try:
        wait_all_running(run)
        # the file source's lines mirrored (stages may still be importing when RUNNING)
        deadline = time.monotonic() + 60
        while not out_file.exists() or out_file.read_text().count("\n") < want:
            assert time.monotonic() < deadline, "the saved log was never mirrored"
            time.sleep(0.1)
        if to_group:  # supervisord (same group) gets it too; the stages have groups of their own
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        left_running = control.is_running(run)
        if left_running:  # never leave a supervisord (and its stages) behind
            control.stop(run)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert not left_running
    # nothing mirrored twice or lost by the stop
    lines = out_file.read_text().splitlines()
    assert len(lines) == want
    # ... and, as with the 2009 tool, the screen dispatcher's lines showed on our terminal
    # (supervisord -n logs there too)
    assert [line for line in out.splitlines() if line.count(",") == 17] == lines


@pytest.mark.timeout(180)
@pytest.mark.parametrize("stderr", [False, True], ids=["stdout", "stderr 1"])
def test_replay_shows_screen_lines_on_its_own_terminal(tmp_path: Path, stderr: bool) -> None:
    """The 2009 tool printed a screen dispatcher's lines on its terminal; so does replay
    (stderr with ``stderr 1``), while the mirror's file keeps them too."""
    conf = write_config(tmp_path / "run", screen_stderr=stderr)
    res = replay(conf, tmp_path / "run", GOLDEN / "lab-events.log")
    expected = (GOLDEN / "lab-expected.csv").read_text().splitlines()
    terminal, other = (res.stderr, res.stdout) if stderr else (res.stdout, res.stderr)
    shown = [line for line in terminal.splitlines() if line.count(",") == 17]
    assert [line for line in other.splitlines() if line.count(",") == 17] == []
    assert Counter(csv_key(x)[:9] for x in shown) == Counter(csv_key(x)[:9] for x in expected)
    if not stderr:
        assert (tmp_path / "run" / "mirror.out").read_text().splitlines() == shown
    assert "mirror" in res.stdout  # the stages' final counters follow the lines


def test_install_writes_a_systemd_unit(tmp_path: Path) -> None:
    conf = config(tmp_path)
    out = nfflowd("-c", str(conf), "install", "--root", str(tmp_path / "root")).stdout
    unit = (tmp_path / "root" / "etc/systemd/system/nfflowd.service").read_text()
    assert f"-c {conf} -f start" in unit and "ExecReload=" in unit and "[Install]" in unit
    assert "systemctl" in out


def test_check_reports_config_errors_with_place(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("<flow_send>\n  args 10.0.0.1\n  args 10.0.0.2\n</flow_send>\n")
    res = nfflowd("-c", str(bad), "check", check=False)
    assert res.returncode == 1
    assert str(bad) in res.stderr and "three arguments for flow_send" in res.stderr


def test_check_explains_the_seed_minus_n(tmp_path: Path) -> None:
    conf = tmp_path / "old.conf"
    seed = "<conntrack>\n  format -E -e NEW,DESTROY -o timestamp -n\n</conntrack>\n"
    conf.write_text(seed + "<source>\n  type conntrack\n</source>\n")
    out = nfflowd("-c", str(conf), "check", check=False).stdout
    assert "-n means --src-nat" in out
    # without <source> (the seed's file as it was) the kernel is read and -n plays no part
    conf.write_text(seed)
    res = nfflowd("-c", str(conf), "check", check=False)
    assert res.returncode == 0, res.stdout
    assert "-n means --src-nat" not in res.stdout and "conntrack program:" not in res.stdout
    assert "net.netfilter.nf_conntrack_acct" in res.stdout
    assert "ok       source: the kernel's conntrack table and events over ctnetlink" in res.stdout
    assert "its -n (--src-nat) filter, which kept only source-NATed connections" in res.stdout
