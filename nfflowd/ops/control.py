"""supervisord: render its configuration, start it, stop it in order, ask it for state.

The stages are programs of one supervisord group ``nfflowd``; everything here
talks to that supervisord over its XML-RPC interface on the unix socket in the
run directory (mode 0700, like the directory itself).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import xmlrpc.client
from importlib import resources
from typing import Any

from nfflowd import topology
from nfflowd.config import Settings, dump_resolved, load_resolved, stage_sections
from nfflowd.ops import privileges
from nfflowd.pipeline import coverage, shards
from nfflowd.pipeline import rundir as rundirs
from nfflowd.pipeline.stage import SETTINGS_FILE, STATS_DIR
from nfflowd.pipeline.supervision import GROUP, rpc

#: Pipeline order: stopping in this order lets every stage drain into the next.
CONF_NAME = "supervisord.conf"
#: The Prometheus endpoint's program (``<metrics> listen``); outside the group, see below.
METRICS = "metrics"


class ControlError(RuntimeError):
    pass


def template() -> str:
    """The shipped deploy/supervisord.conf (package data ``nfflowd.deploy``)."""
    return resources.files("nfflowd.deploy").joinpath(CONF_NAME).read_text()


def render(rundir: str, python: str | None = None) -> str:
    """The template with this installation's run directory and interpreter filled in."""
    return (
        template()
        .replace("%(ENV_NFFLOWD_RUNDIR)s", os.path.abspath(rundir))
        .replace("%(ENV_NFFLOWD_PYTHON)s", python or sys.executable)
    )


def prepare(settings: Settings, rundir: str) -> str:
    """Create the run directory, write settings.json and supervisord.conf; return the conf path.

    The run directory is checked first and refused (ControlError) when it is not
    safe (:mod:`nfflowd.pipeline.rundir`).  With ``<daemon> user`` (and root) it is
    laid out for that user (:mod:`nfflowd.ops.privileges`).
    """
    acct = _account(settings)
    group = acct.gid if acct is not None else None
    path = os.path.abspath(rundir)
    text = select_stages(render(path), settings.daemon.stages)
    text = shards.programs(text, settings.daemon.correlators, settings.daemon.exporters)
    text = run_as(text + _metrics_program(settings, path), acct.name if acct else None)
    try:
        found = rundirs.problems(path, group=group, correlators=settings.daemon.correlators)
        if found:
            raise rundirs.RundirError("; ".join(found))
        was_shared = privileges.shared_group(path) is not None
        path = rundirs.ensure(path, group, correlators=settings.daemon.correlators)
        if acct is not None or was_shared:
            privileges.sanitize(path, text)  # before root writes there
        dump_resolved(settings, os.path.join(path, SETTINGS_FILE), group=group)
        conf = rundirs.write_file(path, CONF_NAME, text, 0o600)
        stats = rundirs.subdir(path, STATS_DIR, group)
        rundirs.clear(stats)  # a previous run's reports: not this run's counters
        if acct is not None:
            privileges.settle(path, acct, text, stats)
        if coverage.journaling(settings) and settings.daemon.stages != ("correlate",):
            coverage.ensure(settings.daemon.statedir, group)
    except (rundirs.RundirError, coverage.StatedirError) as exc:
        raise ControlError(str(exc)) from None
    except OSError as exc:
        raise ControlError(f"run directory {path}: {exc}") from None
    return conf


def _account(settings: Settings) -> privileges.Account | None:
    try:
        return privileges.account_for(settings.daemon.user)
    except privileges.PrivilegeError as exc:
        raise ControlError(str(exc)) from None


def run_as(conf: str, user: str | None) -> str:
    """*conf* (rendered) with ``user=USER`` in every program section but ingest's.

    The programs of :data:`nfflowd.ops.privileges.UNPRIVILEGED` (a ``metrics`` program
    too, when present): supervisord, root, starts them as *user*.  None: *conf*
    unchanged.  It also sets every ``*logfile_maxbytes`` to 0: supervisord's
    rotation renames a log and opens its name afresh, in a directory *user* can
    create entries in, so a symlink planted there in between would have root
    write where the user chose; ``logrotate`` with ``copytruncate`` (the rule
    ``nfflowd install`` writes) rotates in place instead.
    """
    if user is None:
        return conf
    out: list[str] = []
    for line in conf.splitlines(keepends=True):
        program = re.match(r"\[program:([^\]]+)\]", line)
        if re.match(r"(stdout_|stderr_)?logfile_maxbytes=", line):
            line = line.partition("=")[0] + "=0\n"
        out.append(line)
        if program and program.group(1) in privileges.UNPRIVILEGED:
            out.append(f"user={user}\n")
    return "".join(out)


def select_stages(conf: str, stages: tuple[str, ...]) -> str:
    """*conf* (a rendered supervisord.conf) with only the stage programs in *stages*.

    For hosts that run part of the pipeline (``<daemon> stages``; the links between
    hosts are tcp://).  Drops the ``[program:X]`` sections of the other stages and
    their names from the group's ``programs=`` line; anything else is kept as is.
    """
    dropped = {f"[program:{s}]" for s in topology.STAGES if s not in stages}
    out: list[str] = []
    keep = True
    for line in conf.splitlines(keepends=True):
        if line.startswith("["):
            keep = line.strip() not in dropped
        if keep and line.startswith("programs="):
            names = [n.strip() for n in line.partition("=")[2].split(",")]
            kept = [n for n in names if n not in topology.STAGES or n in stages]
            line = "programs=" + ",".join(kept) + "\n"
        if keep:
            out.append(line)
    return "".join(out)


def _metrics_program(settings: Settings, rundir: str, python: str | None = None) -> str:
    """``[program:metrics]`` when ``<metrics> listen`` is set, else "".

    It is its own supervisord group, not one of ``nfflowd``'s: the group is the
    pipeline (``nfflowd:*`` in supervisorctl, the stages of ``check``/``reload``),
    and a metrics endpoint that cannot bind its port must not look like a
    broken pipeline.  ``nfflowd stop`` still ends it: supervisord's shutdown
    stops every program.
    """
    if settings.metrics.address is None:
        return ""
    rundir = os.path.abspath(rundir)
    return f"""
[program:{METRICS}]
; added because <metrics> listen {settings.metrics.listen} is set
command={python or sys.executable} -P -m nfflowd.workers.metrics --rundir {rundir}
directory={rundir}
priority=400
autostart=true
autorestart=true
startsecs=1
startretries=5
stopsignal=TERM
stopwaitsecs=5
redirect_stderr=true
stdout_logfile={rundir}/metrics.log
stdout_logfile_maxbytes=1MB
stdout_logfile_backups=1
"""


def is_running(rundir: str) -> bool:
    try:
        state = rpc(rundir).supervisor.getState()
    except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
        return False
    return bool(state.get("statename") == "RUNNING")


def supervisord_command(conf: str, foreground: bool, *, silent: bool = False) -> list[str]:
    cmd = [sys.executable, "-P", "-m", "supervisor.supervisord", "-c", conf]
    if foreground:
        cmd.append("-n")
    if silent:
        cmd.append("-s")  # log to its logfile only, not to our stdout
    return cmd


def _prepare_launch(settings: Settings, rundir: str) -> tuple[str, dict[str, str]]:
    if is_running(rundir):
        raise ControlError(f"nfflowd is already running for {os.path.abspath(rundir)}")
    conf = prepare(settings, rundir)
    env = dict(os.environ, NFFLOWD_RUNDIR=os.path.abspath(rundir), NFFLOWD_PYTHON=sys.executable)
    return conf, env


def launch_foreground(
    settings: Settings, rundir: str, *, silent: bool = False
) -> subprocess.Popen[bytes]:
    """Start supervisord for *rundir* as our child (``-n``); return once it answers.

    Refuses when a supervisord already runs for that run directory.
    """
    conf, env = _prepare_launch(settings, rundir)
    proc = subprocess.Popen(supervisord_command(conf, True, silent=silent), env=env)
    wait_until_up(rundir, proc)
    return proc


def launch_daemon(settings: Settings, rundir: str) -> None:
    """Start supervisord for *rundir* as a daemon; return once it answers."""
    conf, env = _prepare_launch(settings, rundir)
    cmd = supervisord_command(conf, False)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise ControlError(f"supervisord failed to start: {res.stderr.strip() or res.stdout}")
    wait_until_up(rundir, None)


def wait_until_up(rundir: str, proc: subprocess.Popen[bytes] | None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ControlError(f"supervisord exited with status {proc.returncode} on start")
        if is_running(rundir):
            return
        time.sleep(0.1)
    raise ControlError(f"supervisord did not answer within {timeout:.0f} s")


def metrics_process(rundir: str) -> dict[str, Any] | None:
    """supervisord's view of the metrics program (None when it has none)."""
    for p in rpc(rundir).supervisor.getAllProcessInfo():
        if p["group"] == METRICS and p["name"] == METRICS:
            return dict(p)
    return None


def _names(proxy: Any, stage: str) -> list[str]:
    """The supervisord process names of *stage*: ``correlate``, or its shards
    ``correlate-0`` ... (nfflowd.pipeline.shards); none when this host does not run it."""
    return [
        p["name"]
        for p in proxy.supervisor.getAllProcessInfo()
        if p["group"] == GROUP and topology.stage_of(p["name"]) == stage
    ]


def _stop_process(proxy: Any, stage: str) -> None:
    for name in _names(proxy, stage):
        try:
            proxy.supervisor.stopProcess(f"{GROUP}:{name}", True)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                raise


def stop(rundir: str, *, timeout: float = 120) -> None:
    """Stop the stages in pipeline order (each drains into the next), then supervisord."""
    proxy = rpc(rundir)
    for stage in topology.STAGES:
        _stop_process(proxy, stage)
    pid = supervisord_pid(rundir)
    proxy.supervisor.shutdown()
    deadline = time.monotonic() + timeout
    while pid and _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """True while *pid* runs (a zombie, e.g. our own exited child, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def supervisord_pid(rundir: str) -> int:
    try:
        return int(rpc(rundir).supervisor.getPID())
    except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
        return 0


def reload(settings: Settings, rundir: str) -> list[str]:
    """Apply new settings: restart only the stages whose settings changed; return their names."""
    old = load_resolved(os.path.join(rundir, SETTINGS_FILE))
    shape = ("correlators", "exporters", "stages")
    if any(getattr(old.daemon, k) != getattr(settings.daemon, k) for k in shape):
        raise ControlError(
            "<daemon> correlators/exporters/stages changed: supervisord's "
            "programs change with them, use `nfflowd restart`"
        )
    before, after = stage_sections(old), stage_sections(settings)
    changed = [s for s in old.daemon.stages if before.get(s) != after.get(s)]
    group = privileges.shared_group(rundir)  # as the running stages were started
    dump_resolved(settings, os.path.join(rundir, SETTINGS_FILE), group=group)
    proxy = rpc(rundir)
    for stage in changed:
        _stop_process(proxy, stage)
    for stage in reversed(changed):
        for name in _names(proxy, stage):
            proxy.supervisor.startProcess(f"{GROUP}:{name}", True)
    return changed
