"""The run directory is a privilege boundary (issue 13): what ``check`` reports and ``start``
refuses, and that nothing outside a refused run directory is touched.

The cases of another owner chown to ``nobody`` (65534) and need root: they run in CI.
``<daemon> user``'s own cases (a real second account) are in
tests/integration/test_privileges.py.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nfflowd.config import Settings, dump_resolved, load
from nfflowd.pipeline import rundir
from tests.needs import needs_root

NOBODY = 65534


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nfflowd.ops.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def config(tmp_path: Path, run: Path | str, name: str = "c.conf") -> Path:
    path = tmp_path / name
    path.write_text(
        "<ptee>\n  <conf>\n    dispatchers screen\n    <screen>\n      class screen\n"
        "      stderr 0\n    </screen>\n  </conf>\n</ptee>\n"
        f"<daemon>\n  rundir {run}\n  statedir {tmp_path / 'state'}\n</daemon>\n"
    )
    path.chmod(0o644)
    return path


def refused_by_check_and_start(tmp_path: Path, run: Path | str, *expected: str) -> None:
    """``check`` reports *expected* as errors (exit 1); ``start`` refuses with the same
    text and starts nothing; neither shows a traceback."""
    conf = config(tmp_path, run)
    check = cli("-c", str(conf), "check")
    assert check.returncode == 1, check.stdout + check.stderr
    errors = [ln for ln in check.stdout.splitlines() if ln.startswith("error ")]
    for text in expected:
        assert any(text in ln for ln in errors), (text, check.stdout)
    start = cli("-c", str(conf), "start")
    assert start.returncode == 1, start.stdout + start.stderr
    assert "nfflowd: not started: the run directory is refused (see above)" in start.stderr
    for text in expected:
        assert text in start.stderr, (text, start.stderr)
    for res in (check, start):
        assert "Traceback" not in res.stderr, res.stderr
    assert not (Path(run) / "supervisord.conf").exists() or Path(run).is_symlink()


def snapshot(path: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Mode, owner, group and content of every entry below *path* (and *path* itself)."""
    out = {}
    for p in [path, *sorted(path.rglob("*"))]:
        st = p.lstat()
        data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
        out[str(p.relative_to(path))] = (st.st_mode, st.st_uid, st.st_gid, data)
    return out


def test_a_symlink_is_refused_and_its_target_is_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    (victim / "stats").mkdir(parents=True)
    (victim / "stats" / "precious.json").write_text("{}\n")
    victim.chmod(0o755)
    before = snapshot(victim)
    link = tmp_path / "run"
    link.symlink_to(victim)
    assert rundir.problems(str(link)) == [
        f"run directory {link} is a symbolic link (to {victim}): refused, give the real "
        "directory (a link could send root's files anywhere)"
    ]
    with pytest.raises(rundir.RundirError, match="is a symbolic link"):
        rundir.ensure(str(link))
    refused_by_check_and_start(tmp_path, link, "is a symbolic link")
    assert snapshot(victim) == before  # not chmod'ed 0700, stats/ not emptied


def test_an_existing_file_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.write_text("not a directory\n")
    refused_by_check_and_start(tmp_path, run, f"run directory {run} exists and is not a directory")
    assert run.read_text() == "not a directory\n"


def test_a_path_too_long_for_its_unix_sockets(tmp_path: Path) -> None:
    # fits exactly with one correlator: flows-export.ipc and flows-mirror.ipc are the longest
    room = rundir.UNIX_PATH_MAX - len("/flows-export.ipc") - len(str(tmp_path)) - 1
    run = tmp_path / ("x" * room)
    assert len(os.fsencode(run / "flows-export.ipc")) == rundir.UNIX_PATH_MAX
    assert rundir.problems(str(run)) == []
    # with 11 correlators, flows-export-10.ipc is 3 bytes longer
    (found,) = rundir.problems(str(run), correlators=11)
    assert found == (
        f"run directory {run} is too long for its unix sockets: {run}/flows-export-10.ipc has "
        f"{rundir.UNIX_PATH_MAX + 3} bytes, AF_UNIX allows {rundir.UNIX_PATH_MAX}; give a "
        "shorter path"
    )
    longer = tmp_path / ("x" * (room + 1))
    refused_by_check_and_start(tmp_path, longer, "is too long for its unix sockets")
    assert not longer.exists()


def test_a_foreign_non_empty_directory_is_refused_not_chmodded(tmp_path: Path) -> None:
    """``rundir /etc``, on a private copy: refused, left as it was (mode 0755, no file
    added); the real /etc is only looked at by ``check``."""
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("hostname", "hosts", "passwd"):
        if os.path.exists(f"/etc/{name}"):
            shutil.copy2(f"/etc/{name}", etc / name)
    (etc / "ssl").mkdir()
    etc.chmod(0o755)
    before = snapshot(etc)
    refused_by_check_and_start(
        tmp_path, etc, f"run directory {etc} is not empty and not an nfflowd run directory"
    )
    with pytest.raises(rundir.RundirError, match="not an nfflowd run directory"):
        rundir.ensure(str(etc))
    assert snapshot(etc) == before
    mode = stat.S_IMODE(os.stat("/etc").st_mode)
    check = cli("-c", str(config(tmp_path, "/etc", "etc.conf")), "check")
    assert check.returncode == 1
    assert "error    run directory /etc is not empty and not an nfflowd run directory" in (
        check.stdout
    )
    assert stat.S_IMODE(os.stat("/etc").st_mode) == mode


def test_a_world_writable_parent_needs_the_sticky_bit(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    run = shared / "run"
    refused_by_check_and_start(
        tmp_path,
        run,
        f"{shared} (above the run directory) is writable by every user and not sticky "
        "(mode 0777): anyone could replace the run directory; refused",
    )
    assert not run.exists()
    shared.chmod(0o1777)  # as /tmp: nobody else can rename or remove what we create there
    assert rundir.problems(str(run)) == []
    assert rundir.ensure(str(run)) == str(run)


def test_an_empty_directory_is_adopted_and_marked(tmp_path: Path) -> None:
    """systemd's RuntimeDirectory=nfflowd: an empty directory of ours, mode 0755."""
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o755)
    assert rundir.problems(str(run)) == []
    rundir.ensure(str(run))
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    assert sorted(os.listdir(run)) == [rundir.MARKER]
    assert (run / rundir.MARKER).lstat().st_uid == os.geteuid()
    (run / "export.log").write_text("a previous run's\n")
    assert rundir.problems(str(run)) == []  # marked: ours from now on


def test_a_run_directory_of_an_older_nfflowd_is_adopted(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    dump_resolved(load(None), str(run / "settings.json"))
    (run / "ingest.log").write_text("older run\n")
    assert rundir.problems(str(run)) == []
    rundir.ensure(str(run))
    assert (run / rundir.MARKER).is_file()
    # a settings.json that is not nfflowd's does not make a directory ours
    other = tmp_path / "app"
    other.mkdir()
    (other / "settings.json").write_text('{"theme": "dark"}\n')
    (found,) = rundir.problems(str(other))
    assert "is not empty and not an nfflowd run directory (it holds settings.json)" in found


def test_write_file_never_follows_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("root's secret\n")
    victim.chmod(0o600)
    run = Path(rundir.ensure(str(tmp_path / "run")))
    (run / "supervisord.conf.tmp").symlink_to(victim)
    path = rundir.write_file(str(run), "supervisord.conf", "[supervisord]\n", 0o600)
    assert victim.read_text() == "root's secret\n"
    assert Path(path).read_text() == "[supervisord]\n" and not Path(path).is_symlink()
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    assert not (run / "supervisord.conf.tmp").exists()


def test_a_planted_stats_link_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("kept\n")
    run = Path(rundir.ensure(str(tmp_path / "run")))
    (run / "stats").symlink_to(victim)
    stats = rundir.subdir(str(run), "stats")
    rundir.clear(stats)
    assert (victim / "keep").read_text() == "kept\n"
    assert (run / "stats").is_dir() and not (run / "stats").is_symlink()
    assert stat.S_IMODE((run / "stats").stat().st_mode) == 0o700


def test_prepare_lays_out_a_safe_run_directory(tmp_path: Path) -> None:
    from nfflowd.ops import control

    settings: Settings = load(str(config(tmp_path, tmp_path / "run")))
    victim = tmp_path / "victim"
    victim.write_text("root's secret\n")
    run = Path(rundir.ensure(str(tmp_path / "run")))
    (run / "supervisord.conf.tmp").symlink_to(victim)
    (run / "stats").mkdir()
    (run / "stats" / "export.json").write_text("{}")
    conf = control.prepare(settings, str(run))
    assert victim.read_text() == "root's secret\n"
    assert "[supervisord]" in Path(conf).read_text()
    assert os.listdir(run / "stats") == []  # the previous run's reports are gone
    assert {rundir.MARKER, "settings.json", "supervisord.conf", "stats"} == set(os.listdir(run))
    with pytest.raises(control.ControlError, match="exists and is not a directory"):
        control.prepare(settings, str(victim))


def test_check_warns_when_others_can_change_the_configuration(tmp_path: Path) -> None:
    conf = config(tmp_path, tmp_path / "run")
    out = cli("-c", str(conf), "check").stdout
    assert f"configuration {conf} is writable" not in out
    conf.chmod(0o666)
    res = cli("-c", str(conf), "check")
    assert (
        f"warning  configuration {conf} is writable by every user (mode 0666): whoever can "
        "change it chooses what nfflowd runs as root (<conntrack> progname) and where root "
        f"writes (<daemon> rundir); chmod o-w {conf}"
    ) in res.stdout, res.stdout


@needs_root()
def test_a_directory_of_another_owner_is_refused(tmp_path: Path) -> None:
    """Pre-created by another user (here in a sticky, world-writable parent like /tmp):
    it keeps its owner, who could read the flows and swap root's files; refused."""
    tmp_path.chmod(0o1777)
    run = tmp_path / "run"
    run.mkdir()
    (run / "planted").write_text("x\n")
    os.chown(run / "planted", NOBODY, NOBODY)
    os.chown(run, NOBODY, NOBODY)
    before = snapshot(run)
    refused_by_check_and_start(
        tmp_path,
        run,
        f"run directory {run} belongs to nobody (uid {NOBODY}), not root (uid 0): refused",
    )
    assert snapshot(run) == before


@needs_root()
def test_a_parent_of_another_owner_or_writable_by_a_group_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    (found,) = rundir.problems(str(theirs / "run"))
    assert found == (
        f"{theirs} (above the run directory) belongs to nobody (uid {NOBODY}), who could "
        "replace the run directory: refused"
    )
    group = tmp_path / "group"
    group.mkdir()
    os.chown(group, 0, NOBODY)
    group.chmod(0o775)
    (found,) = rundir.problems(str(group / "run"))
    assert f"{group} (above the run directory) is writable by group {NOBODY}" in found
    group.chmod(0o1775)
    assert rundir.problems(str(group / "run")) == []


@needs_root()
def test_a_directory_swapped_in_after_the_check_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ensure() checks again through the descriptor it opened: a directory another user
    created between the check and mkdir is not adopted (nor chown'ed to root)."""
    run = tmp_path / "run"
    real = rundir.problems

    def check_then_race(path: str, **kw: Any) -> list[str]:
        found = real(path, **kw)
        run.mkdir()
        os.chown(run, NOBODY, NOBODY)
        return found

    monkeypatch.setattr(rundir, "problems", check_then_race)
    with pytest.raises(rundir.RundirError, match="belongs to nobody"):
        rundir.ensure(str(run))
    st = run.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o755 & ~_umask())
    assert os.listdir(run) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@needs_root()
def test_check_warns_about_a_configuration_of_another_owner(tmp_path: Path) -> None:
    conf = config(tmp_path, tmp_path / "run")
    os.chown(conf, NOBODY, NOBODY)
    conf.chmod(0o664)
    out = cli("-c", str(conf), "check").stdout
    assert f"warning  configuration {conf} belongs to nobody (uid {NOBODY}): whoever" in out
    assert f"warning  configuration {conf} is writable by group {NOBODY} (mode 0664)" in out
