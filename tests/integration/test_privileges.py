"""``<daemon> user``: ingest as root, the other stages as a system user, nobody else in.

Runs the real command line as root with two temporary accounts: the daemon's
user and an unrelated local user.  The pipeline must deliver every record
across the two uids, the processes must run as claimed, and the other user
must be refused by every endpoint and by supervisord's socket (a plain
``AF_UNIX`` connect: ZeroMQ's connect is asynchronous and never fails).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import nfflowd
from nfflowd.config import load
from nfflowd.lab.events import generate
from nfflowd.ops import control, privileges
from nfflowd.pipeline import endpoints
from nfflowd.pipeline import rundir as rundirs
from tests.needs import needs
from tests.pipeline_harness import nfflowd as run_cli
from tests.pipeline_harness import wait_all_running

pytestmark = [
    pytest.mark.root,
    needs("useradd", "userdel", "setpriv", "setfacl", "getfacl", "systemd-analyze"),
]

UNPRIVILEGED_STAGES = ("correlate", "export", "mirror")
#: A connect as another user (stdlib only): prints the outcome for each path.
CONNECT = """\
import errno, socket, sys
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        print("CONNECTED")
    except OSError as exc:
        print(errno.errorcode.get(exc.errno, str(exc.errno)))
    finally:
        s.close()
"""


def _useradd(name: str) -> pwd.struct_passwd:
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(name)


def _userdel(name: str) -> None:
    subprocess.run(["userdel", name], check=False, capture_output=True)
    with contextlib.suppress(KeyError):
        grp.getgrnam(name)
        subprocess.run(["groupdel", name], check=False, capture_output=True)


@pytest.fixture
def accounts() -> Iterator[tuple[pwd.struct_passwd, pwd.struct_passwd]]:
    """(the daemon's user, another local user), both removed afterwards."""
    tag = f"{os.getpid() % 100000}{int(time.time()) % 1000}"
    names = (f"nfft-d{tag}", f"nfft-o{tag}")
    made: list[str] = []
    try:
        for name in names:
            _useradd(name)
            made.append(name)
        yield pwd.getpwnam(names[0]), pwd.getpwnam(names[1])
    finally:
        for name in made:
            _userdel(name)


def _blocked_dirs(user: pwd.struct_passwd, paths: list[str]) -> list[str]:
    """Directories above *paths* that *user* cannot search (no x for "other")."""
    out: list[str] = []
    for p in paths:
        d = os.path.dirname(os.path.realpath(p))
        while True:
            st = os.stat(d)
            if not st.st_mode & stat.S_IXOTH and st.st_uid != user.pw_uid and d not in out:
                out.append(d)
            if d == "/":
                break
            d = os.path.dirname(d)
    return out


@contextlib.contextmanager
def interpreter_reachable(*users: pwd.struct_passwd) -> Iterator[None]:
    """Let *users* search the directories above this interpreter and nfflowd (ACL entries).

    Here the venv's python is a pyenv build below /root (mode 0700), which no
    system user can run; a real installation puts it under /opt or /usr.  The
    ACLs are restored exactly (getfacl/setfacl --restore) afterwards.
    """
    import msgpack
    import zmq

    paths = [sys.executable, nfflowd.__file__, zmq.__file__, msgpack.__file__]
    dirs = sorted({d for user in users for d in _blocked_dirs(user, paths)})
    saved = [
        subprocess.run(
            ["getfacl", "--absolute-names", "-p", d], check=True, capture_output=True, text=True
        ).stdout
        for d in dirs
    ]
    try:
        for d in dirs:
            for user in users:
                subprocess.run(["setfacl", "-m", f"u:{user.pw_name}:x", d], check=True)
        yield
    finally:
        for d, acl in zip(dirs, saved, strict=True):
            subprocess.run(["setfacl", "-b", d], check=False)
            subprocess.run(["setfacl", "--restore=-"], input=acl, text=True, check=False)


def _connect_as(user: pwd.struct_passwd | None, paths: list[Path]) -> list[str]:
    """What a plain AF_UNIX connect to each of *paths* gives, run as *user* (None: root)."""
    switch = (
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
        if user
        else []
    )
    res = subprocess.run(
        [*switch, sys.executable, "-I", "-c", CONNECT, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return res.stdout.split()


def _uids(pid: int) -> tuple[int, ...]:
    """Real, effective, saved and filesystem uid of *pid* (/proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return tuple(int(x) for x in line.split()[1:])
    raise AssertionError(f"no Uid line for {pid}")


def _config(path: Path, log: Path, rundir: Path, user: str | None) -> Path:
    """Mirror to the screen (mirror.out) only: no syslog daemon or collector to wait for."""
    path.write_text(
        f"<source>\n  type file\n  path {log}\n</source>\n"
        "<ptee>\n  <conf>\n    dispatchers screen\n    <screen>\n"
        "      class Log::Dispatch::Screen\n      stderr 0\n      min_level debug\n"
        "    </screen>\n  </conf>\n</ptee>\n"
        f"<daemon>\n  rundir {rundir}\n" + (f"  user {user}\n" if user else "") + "</daemon>\n"
    )
    return path


def _wait_lines(path: Path, n: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        got = len(path.read_text().splitlines()) if path.exists() else 0
        if got >= n:
            return got
        time.sleep(0.2)
    return got


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory every user can search (pytest's tmp_path is below a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="nfflowd-priv-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        _end_supervisords(d)
        shutil.rmtree(d, ignore_errors=True)


def _end_supervisords(workdir: Path) -> None:
    """Stop any supervisord this test left running in *workdir* (a failed or timed-out
    command): found by their configuration's path, which is unique to the test."""
    mine = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            args = (entry / "cmdline").read_bytes().split(b"\0")
            if b"supervisor.supervisord" in args and any(str(workdir).encode() in a for a in args):
                mine.append(int(entry.name))
    for pid in mine:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while mine and time.monotonic() < deadline:
        mine = [p for p in mine if Path(f"/proc/{p}").exists()]
        time.sleep(0.2)
    for pid in mine:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(600)
def test_stages_run_as_the_user_and_nobody_else_gets_in(
    accounts: tuple[pwd.struct_passwd, pwd.struct_passwd], workdir: Path
) -> None:
    user, other = accounts
    earlier, log = workdir / "earlier.log", workdir / "events.log"
    n_earlier = generate(str(earlier), 1000, open_conns=100, seed=7)
    expected = generate(str(log), 3000, open_conns=300)
    run = workdir / "run"
    # an earlier run without <daemon> user left root's state files in the run directory
    as_root = _config(workdir / "root.conf", earlier, run, None)
    run_cli("-c", str(as_root), "replay", "--timeout", "240", "--rundir", str(run), str(earlier))
    assert (run / "export.sequence").stat().st_uid == 0
    conf = _config(workdir / "nfflowd.conf", log, run, user.pw_name)
    with interpreter_reachable(user, other):
        check = run_cli("-c", str(conf), "check", check=False).stdout
        assert f"ok       <daemon> user {user.pw_name} (uid {user.pw_uid})" in check, check
        run_cli("-c", str(conf), "start")
        try:
            pids = wait_all_running(run, timeout=60)
            # every record crosses from root (ingest) to the user (correlate, mirror)
            out = run / "mirror.out"
            assert _wait_lines(out, n_earlier + expected) == n_earlier + expected
            # the processes run as claimed: real, effective, saved and fs uid
            assert _uids(pids["ingest"]) == (0, 0, 0, 0)
            for stage in UNPRIVILEGED_STAGES:
                assert _uids(pids[stage]) == (user.pw_uid,) * 4, stage
            # the run directory: root:G 1770; settings readable by G only
            st = run.stat()
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, user.pw_gid, 0o1770)
            _assert_settings_shared(run, user)
            assert (run / "supervisord.conf").stat().st_uid == 0
            assert (run / "export.sequence").stat().st_uid == user.pw_uid  # handed over
            sock = run / "supervisor.sock"
            assert sock.stat().st_uid == 0 and stat.S_IMODE(sock.stat().st_mode) == 0o700
            bound = [
                run / e.filename
                for e in endpoints.TABLE
                if e.bound_by == "receiver" and e.receiver in UNPRIVILEGED_STAGES
            ]
            assert len(bound) == 3 and all(p.stat().st_uid == user.pw_uid for p in bound)
            # the other user: refused everywhere (also by the earlier replay's notices
            # socket); the daemon's user: its own sockets only; root: all (so the probe
            # itself can connect)
            everything = sorted({*run.glob("*.ipc"), *bound, sock})
            assert _connect_as(other, everything) == ["EACCES"] * len(everything)
            targets = [*bound, sock]
            assert _connect_as(user, targets) == ["CONNECTED"] * 3 + ["EACCES"]
            assert _connect_as(None, targets) == ["CONNECTED"] * 4
            assert wait_all_running(run) == pids  # no stage restarted meanwhile
            # reload rewrites settings.json: still readable by the restarted stage
            conf.write_text(conf.read_text() + "<export>\n  engine_id 7\n</export>\n")
            assert "restarted: export" in run_cli("-c", str(conf), "reload").stdout
            after = wait_all_running(run, timeout=60)
            assert after["export"] != pids["export"]
            assert _uids(after["export"]) == (user.pw_uid,) * 4
            _assert_settings_shared(run, user)
        finally:
            run_cli("-c", str(conf), "stop", check=False)
        assert not control.is_running(str(run))
        assert len(out.read_text().splitlines()) == n_earlier + expected
        # a replay (private supervisord, its own notices socket, bound by root) hears the
        # final counters of the user's stages too
        res = run_cli(
            "-c",
            str(conf),
            "replay",
            "--timeout",
            "240",
            "--rundir",
            str(workdir / "replay"),
            str(log),
        )
    lines = {ln.split()[0]: ln for ln in res.stdout.splitlines() if ln.strip()}
    assert f"lines={expected}" in lines["mirror"], res.stdout
    assert f"records={expected}" in lines["export"], res.stdout
    assert f"records={expected}" in lines["correlate"], res.stdout


def _assert_settings_shared(run: Path, user: pwd.struct_passwd) -> None:
    st = (run / "settings.json").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, user.pw_gid, 0o640)


def test_a_missing_user_is_reported_and_start_refuses(workdir: Path) -> None:
    missing = f"nfft-none{os.getpid()}"
    with pytest.raises(KeyError):
        pwd.getpwnam(missing)
    log = workdir / "e.log"
    generate(str(log), 10, open_conns=5)
    conf = _config(workdir / "c.conf", log, workdir / "run", missing)
    check = run_cli("-c", str(conf), "check", check=False)
    assert check.returncode == 1
    assert f"error    <daemon> user {missing}: no such user (nfflowd install creates it)" in (
        check.stdout
    )
    start = run_cli("-c", str(conf), "start", check=False)
    assert start.returncode == 1 and "not started" in start.stderr
    assert not control.is_running(str(workdir / "run"))


def test_without_a_user_check_recommends_one(workdir: Path) -> None:
    conf = workdir / "c.conf"
    conf.write_text(f"<daemon>\n  rundir {workdir / 'run'}\n</daemon>\n")
    out = run_cli("-c", str(conf), "check", check=False).stdout
    assert "note     correlate, export and mirror run as root: set `<daemon> user" in out


def test_sanitize_removes_planted_links_and_keeps_root_files(
    accounts: tuple[pwd.struct_passwd, pwd.struct_passwd], workdir: Path
) -> None:
    """What a compromised stage could leave under root's names is removed, not followed."""
    user, _ = accounts
    run = workdir / "run"
    rundirs.ensure(str(run), user.pw_gid)
    victim = workdir / "victim"
    victim.write_text("precious\n")
    conf = control.run_as(control.render(str(run)), user.pw_name)
    (run / "supervisord.pid").symlink_to(victim)  # a symlink
    os.link(victim, run / "ingest.checkpoint")  # a hard link to root's file elsewhere
    (run / "export.log").write_text("user's\n")
    os.chown(run / "export.log", user.pw_uid, user.pw_gid)  # the user's file, root's name
    (run / "ingest.alive").symlink_to(victim)  # a root name nobody listed: any ingest.*
    (run / "ingest.log").write_text("root's own log\n")  # root's: kept
    (run / "correlate.starts").write_text("3\n")  # a user stage's, left by a root run
    (run / "stats").mkdir()
    privileges.sanitize(str(run), conf)
    privileges.settle(str(run), privileges.lookup(user.pw_name), conf, str(run / "stats"))
    assert victim.read_text() == "precious\n" and victim.stat().st_nlink == 1
    assert not (run / "supervisord.pid").exists()
    for name in ("ingest.checkpoint", "ingest.alive", "export.log"):
        st = (run / name).lstat()
        assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and st.st_size == 0, name
    assert (run / "ingest.log").read_text() == "root's own log\n"
    assert (run / "correlate.starts").stat().st_uid == user.pw_uid
    st = (run / "stats").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, user.pw_gid, 0o1770)


def test_the_run_directory_is_refused_to_the_user_and_to_others(
    accounts: tuple[pwd.struct_passwd, pwd.struct_passwd], workdir: Path
) -> None:
    """Issue 13: a run directory the stages' user owns (it could replace settings.json,
    whose <conntrack> progname root runs) or another user pre-created in a sticky,
    world-writable parent is refused by check and start and left as it was."""
    user, other = accounts
    log = workdir / "e.log"
    generate(str(log), 10, open_conns=5)
    public = workdir / "public"
    public.mkdir()
    public.chmod(0o1777)  # as /tmp
    for owner in (user, other):
        run = public / f"run-{owner.pw_name}"
        run.mkdir()
        os.chown(run, owner.pw_uid, owner.pw_gid)
        conf = _config(workdir / "c.conf", log, run, user.pw_name)
        text = f"run directory {run} belongs to {owner.pw_name} (uid {owner.pw_uid}), not root"
        with interpreter_reachable(user):  # so that only the run directory is wrong
            check = run_cli("-c", str(conf), "check", check=False)
            start = run_cli("-c", str(conf), "start", check=False)
        assert check.returncode == 1 and f"error    {text}" in check.stdout, check.stdout
        assert start.returncode == 1 and text in start.stderr, start.stderr
        assert "not started: the run directory is refused" in start.stderr
        assert os.listdir(run) == [] and run.stat().st_uid == owner.pw_uid


def test_links_the_user_plants_in_the_shared_run_directory_are_not_followed(
    accounts: tuple[pwd.struct_passwd, pwd.struct_passwd], workdir: Path
) -> None:
    """Issue 13: a supervisord.conf.tmp symlink made root overwrite a root-owned 0600
    file; a stats symlink had root empty the directory it pointed to."""
    user, _ = accounts
    log = workdir / "e.log"
    generate(str(log), 10, open_conns=5)
    run = workdir / "run"
    conf = _config(workdir / "c.conf", log, run, user.pw_name)
    settings = load(str(conf))
    control.prepare(settings, str(run))  # a first start laid it out: root:G 1770
    victim = workdir / "victim"
    victim.write_text("root's 0600 file\n")
    victim.chmod(0o600)
    victims = workdir / "victims"
    victims.mkdir()
    (victims / "keep").write_text("kept\n")
    shutil.rmtree(run / "stats")  # the sticky bit keeps the user from removing root's
    plant = (
        "import os, sys; run = sys.argv[1]; "
        "os.symlink(sys.argv[2], run + '/supervisord.conf.tmp'); "
        "os.symlink(sys.argv[3], run + '/stats')"
    )
    switch = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
    args = [sys.executable, "-I", "-c", plant, str(run), str(victim), str(victims)]
    subprocess.run([*switch, *args], check=True, capture_output=True, timeout=60)
    assert (run / "stats").is_symlink() and (run / "supervisord.conf.tmp").is_symlink()
    control.prepare(settings, str(run))
    assert victim.read_text() == "root's 0600 file\n"
    assert (victims / "keep").read_text() == "kept\n"
    st = (run / "stats").lstat()
    assert stat.S_ISDIR(st.st_mode) and (st.st_uid, st.st_gid) == (0, user.pw_gid)
    assert not (run / "supervisord.conf.tmp").exists()
    assert (run / "supervisord.conf").stat().st_uid == 0


def _staging_root(base: Path) -> Path:
    root = base / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        if os.path.exists(f"/etc/{name}"):
            shutil.copy2(f"/etc/{name}", root / "etc" / name)
    return root


@pytest.mark.timeout(120)
def test_install_creates_the_user_and_a_unit_systemd_accepts(workdir: Path) -> None:
    name = f"nfft-i{os.getpid() % 100000}"
    root = _staging_root(workdir)
    conf = workdir / "nfflowd.conf"
    conf.write_text(f"<daemon>\n  user {name}\n</daemon>\n")
    out = run_cli("-c", str(conf), "install", "--root", str(root)).stdout
    assert f"created system user {name}" in out
    entry = next(
        ln for ln in (root / "etc/passwd").read_text().splitlines() if ln.startswith(name + ":")
    ).split(":")
    assert entry[6] == "/usr/sbin/nologin" and int(entry[2]) < 1000  # a system account
    group = next(
        ln for ln in (root / "etc/group").read_text().splitlines() if ln.startswith(name + ":")
    ).split(":")
    assert group[2] == entry[3]  # its own group
    with pytest.raises(KeyError):
        pwd.getpwnam(name)  # the host's accounts are untouched
    assert (
        "user " + name + " exists"
        in run_cli("-c", str(conf), "install", "--root", str(root)).stdout
    )
    unit = root / "etc/systemd/system/nfflowd.service"
    text = unit.read_text()
    for line in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "RuntimeDirectory=nfflowd",
        "ReadWritePaths=/run/nfflowd",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    ):
        assert line + "\n" in text, line
    assert f" -c {conf} -f start\n" in text.split("ExecStart=", 1)[1]
    assert "CAP_NET_ADMIN CAP_SETUID CAP_SETGID" in text and "CAP_SYS_ADMIN" not in text
    rotate = (root / "etc/logrotate.d/nfflowd").read_text()
    assert "/run/nfflowd/*.log" in rotate and "copytruncate" in rotate
    _verify(unit)
    # set_sysctls writes /proc/sys at start: no ProtectKernelTunables then; netns: setns
    conf.write_text(
        "<source>\n  type netlink\n  set_sysctls 1\n  netns fw\n</source>\n"
        f"<daemon>\n  user {name}\n  rundir /srv/nfflowd\n</daemon>\n"
    )
    run_cli("-c", str(conf), "install", "--root", str(root))
    text = unit.read_text()
    assert "ProtectKernelTunables" not in text.replace("# no ProtectKernelTunables", "")
    assert "CAP_SYS_ADMIN" in text and "RestrictNamespaces=net" in text
    assert (root / "srv/nfflowd").is_dir()  # ProtectSystem=strict: it must exist
    _verify(unit)


def _verify(unit: Path) -> None:
    """systemd-analyze verify: no systemd needs to run; it checks every directive and that
    ExecStart's program exists.  Unknown or invalid directives are only warnings, so the
    output must be empty too."""
    res = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr


@pytest.mark.timeout(300)
def test_with_a_user_each_stage_journals_coverage_in_a_file_of_its_own(
    accounts: tuple[pwd.struct_passwd, pwd.struct_passwd], workdir: Path
) -> None:
    """The state directory (nfflowd.pipeline.coverage) is root:G 1770; ingest's journal
    is root's, export's the user's: its collector's port has no listener, so the
    datagrams refused are an ``undelivered`` gap, which ``who`` reports."""
    from nfflowd.pipeline import coverage
    from tests.pipeline_harness import export_block, fake_conntrack
    from tests.udp_ports import closed_udp_port

    user, other = accounts
    log = workdir / "events.log"
    generate(str(log), 300)
    program, pids = fake_conntrack(workdir, log)
    run, state = workdir / "run", workdir / "state"
    conf = workdir / "c.conf"
    # held 1 s, then given up on: the datagrams dropped are the gap
    export = export_block("192.0.2.1", (closed_udp_port(), 9))
    export = export.replace("<export>\n", "<export>\n  refused_hold 1\n")
    conf.write_text(
        f"<source>\n  type conntrack\n</source>\n<conntrack>\n  progname {program}\n"
        "</conntrack>\n" + export
        + f"<daemon>\n  rundir {run}\n  statedir {state}\n  user {user.pw_name}\n</daemon>\n"
    )  # fmt: skip
    try:
        with interpreter_reachable(user, other):
            run_cli("-c", str(conf), "start")
            try:
                wait_all_running(run, timeout=60)
                deadline = time.monotonic() + 60
                while not (state / "coverage.export.jsonl").exists():
                    assert time.monotonic() < deadline, "no undelivered gap journaled"
                    time.sleep(0.1)
            finally:
                run_cli("-c", str(conf), "stop", check=False)
        st = state.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, user.pw_gid, 0o1770)
        assert (state / "coverage.ingest.jsonl").stat().st_uid == 0
        assert (state / coverage.ALIVE).stat().st_uid == 0
        assert (state / "coverage.export.jsonl").stat().st_uid == user.pw_uid
        found = coverage.read(str(state)).records
        kinds = [(r["stage"], r["kind"]) for r in found]
        assert ("ingest", "started") in kinds and ("ingest", "stopped") in kinds, kinds
        (gap,) = [r for r in found if r["kind"] == "gap"]
        assert gap["stage"] == "export" and gap["cause"] == "undelivered", gap
        assert "datagrams held for collector 127.0.0.1:" in gap["detail"], gap
        assert "and given up not delivered" in gap["detail"], gap
        assert "cause=undelivered stage=export" in (run / "export.log").read_text()
        empty = workdir / "flows.json"
        empty.write_text("")
        at = f"{gap['from_ms'] / 1000:.3f}"
        res = run_cli(
            "-c", str(conf), "who", "203.0.113.1:4242", "--at", at, "--window", "0",
            "--from", str(empty), check=False,
        )  # fmt: skip
        assert res.returncode == 1 and "cause undelivered (export)" in res.stdout, res.stdout
    finally:
        for text in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(text), signal.SIGKILL)
