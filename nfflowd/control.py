"""supervisord: render its configuration, start it, stop it in order, ask it for state.

The stages are programs of one supervisord group ``nfflowd``; everything here
talks to that supervisord over its XML-RPC interface on the unix socket in the
run directory (mode 0700, like the directory itself).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xmlrpc.client
from importlib import resources
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from nfflowd import endpoints
from nfflowd.config import Settings, dump_resolved, load_resolved, stage_sections
from nfflowd.stage import SETTINGS_FILE

GROUP = "nfflowd"
#: Pipeline order: stopping in this order lets every stage drain into the next.
STAGES = ("ingest", "correlate", "export", "mirror")
CONF_NAME = "supervisord.conf"


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
    """Create the run directory, write settings.json and supervisord.conf; return the conf path."""
    path = endpoints.ensure_rundir(rundir)
    dump_resolved(settings, os.path.join(path, SETTINGS_FILE))
    conf = os.path.join(path, CONF_NAME)
    tmp = conf + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        fh.write(render(path))
    os.replace(tmp, conf)
    return conf


def rpc(rundir: str) -> Any:
    """An XML-RPC proxy to the supervisord of *rundir*."""
    sock = os.path.join(os.path.abspath(rundir), "supervisor.sock")
    transport = SupervisorTransport(None, None, serverurl="unix://" + sock)
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def is_running(rundir: str) -> bool:
    try:
        state = rpc(rundir).supervisor.getState()
    except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
        return False
    return bool(state.get("statename") == "RUNNING")


def supervisord_command(conf: str, foreground: bool, *, silent: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "supervisor.supervisord", "-c", conf]
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


def processes(rundir: str) -> list[dict[str, Any]]:
    """supervisord's view of the stages (getAllProcessInfo), plus each stage's start count."""
    infos: list[dict[str, Any]] = [
        p for p in rpc(rundir).supervisor.getAllProcessInfo() if p["group"] == GROUP
    ]
    for p in infos:
        p["starts"] = start_count(rundir, p["name"])
    return infos


def start_count(rundir: str, stage: str) -> int:
    try:
        with open(os.path.join(rundir, f"{stage}.starts")) as fh:
            return int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _stop_process(proxy: Any, stage: str) -> None:
    try:
        proxy.supervisor.stopProcess(f"{GROUP}:{stage}", True)
    except xmlrpc.client.Fault as fault:
        if "NOT_RUNNING" not in fault.faultString:
            raise


def stop(rundir: str, *, timeout: float = 120) -> None:
    """Stop the stages in pipeline order (each drains into the next), then supervisord."""
    proxy = rpc(rundir)
    for stage in STAGES:
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
    before, after = stage_sections(old), stage_sections(settings)
    changed = [s for s in STAGES if before.get(s) != after.get(s)]
    dump_resolved(settings, os.path.join(rundir, SETTINGS_FILE))
    proxy = rpc(rundir)
    for stage in changed:
        _stop_process(proxy, stage)
    for stage in reversed(changed):
        proxy.supervisor.startProcess(f"{GROUP}:{stage}", True)
    return changed
