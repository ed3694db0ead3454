"""The verbs of ``nfflowd`` (cli.py parses, this module acts)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from types import FrameType

from nfflowd import control, environment, replay
from nfflowd.config import ConfigError, Settings, load

UNIT_NAME = "nfflowd.service"


def _load(config: str | None, *, quiet: bool = False) -> Settings | None:
    try:
        settings = load(config)
    except ConfigError as exc:
        sys.stderr.write(f"nfflowd: configuration error: {exc}\n")
        return None
    for note in () if quiet else settings.notes:
        sys.stderr.write(f"nfflowd: note: {note}\n")
    return settings


def cmd_start(config: str | None, foreground: bool, args: list[str]) -> int:
    settings = _load(config)
    if settings is None:
        return 1
    for level, text in environment.source_findings(settings) + environment.kernel_findings(
        settings
    ):
        if level in ("warning", "error"):
            sys.stderr.write(f"nfflowd: {level}: {text}\n")
    rundir = settings.daemon.rundir
    try:
        if not foreground:
            control.launch_daemon(settings, rundir)
            print(f"nfflowd started (run directory {rundir})")
            return 0
        proc = control.launch_foreground(settings, rundir)
    except control.ControlError as exc:
        sys.stderr.write(f"nfflowd: {exc}\n")
        return 1
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stopping:
            stopping.append(signum)
            control.stop(rundir)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"nfflowd running in the foreground (run directory {rundir}); Ctrl-C stops it")
    return 0 if proc.wait() in (0, -signal.SIGTERM) or stopping else 1


def cmd_stop(config: str | None, foreground: bool, args: list[str]) -> int:
    settings = _load(config)
    if settings is None:
        return 1
    rundir = settings.daemon.rundir
    if not control.is_running(rundir):
        print(f"nfflowd is not running (run directory {rundir})")
        return 0
    control.stop(rundir)
    print("nfflowd stopped")
    return 0


def cmd_restart(config: str | None, foreground: bool, args: list[str]) -> int:
    rc = cmd_stop(config, foreground, args)
    return rc if rc else cmd_start(config, foreground, args)


def cmd_reload(config: str | None, foreground: bool, args: list[str]) -> int:
    settings = _load(config)
    if settings is None:
        return 1
    rundir = settings.daemon.rundir
    if not control.is_running(rundir):
        sys.stderr.write(f"nfflowd: not running (run directory {rundir}); nothing to reload\n")
        return 1
    changed = control.reload(settings, rundir)
    print(
        "restarted: " + (", ".join(changed) if changed else "nothing (no stage's settings changed)")
    )
    return 0


def unit_text(config: str | None) -> str:
    exe = shutil.which("nfflowd") or f"{sys.executable} -m nfflowd.cli"
    conf = f" -c {os.path.abspath(config)}" if config else ""
    return f"""\
[Unit]
Description=nfflowd: NetFlow/IPFIX from netfilter connection tracking
Documentation=man:nfflowd(8)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exe}{conf} -f start
ExecReload={exe}{conf} reload
KillSignal=SIGTERM
TimeoutStopSec=150
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


def cmd_install(config: str | None, foreground: bool, args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="nfflowd install")
    p.add_argument("--root", default="/", help="write below this directory (staging)")
    ns = p.parse_args(args)
    unit_dir = os.path.join(ns.root, "etc/systemd/system")
    os.makedirs(unit_dir, exist_ok=True)
    path = os.path.join(unit_dir, UNIT_NAME)
    with open(path, "w") as fh:
        fh.write(unit_text(config))
    print(
        f"wrote {path}\nenable it with: systemctl daemon-reload && systemctl enable --now nfflowd"
    )
    return 0


def cmd_check(config: str | None, foreground: bool, args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="nfflowd check")
    p.add_argument("--json", action="store_true")
    ns = p.parse_args(args)
    settings = _load(config, quiet=True)
    if settings is None:
        return 1
    findings = (
        [("ok", f"configuration {settings.path or '(built-in defaults)'} is valid")]
        + [("note", n) for n in settings.notes]
        + environment.source_findings(settings)
        + environment.export_findings(settings)
        + environment.mirror_findings(settings)
        + environment.kernel_findings(settings)
    )
    rundir = settings.daemon.rundir
    stages = control.processes(rundir) if control.is_running(rundir) else []
    if ns.json:
        print(json.dumps({"findings": findings, "stages": stages}, default=str, indent=2))
    else:
        for level, text in findings:
            print(f"{level:<8} {text}")
        if not stages:
            print(f"daemon   not running (run directory {rundir})")
        now = time.time()
        for s in stages:
            up = int(now - s["start"]) if s["statename"] == "RUNNING" else 0
            print(f"stage    {s['name']:<10} {s['statename']:<9} pid {s['pid']:<7} "
                  f"uptime {up:>6}s restarts {max(0, s['starts'] - 1)}")  # fmt: skip
    return 1 if any(level == "error" for level, _ in findings) else 0


def cmd_replay(config: str | None, foreground: bool, args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="nfflowd replay")
    p.add_argument("logs", nargs="+", metavar="LOG")
    p.add_argument(
        "--rundir", default=None, help="run directory (default: a private temporary one)"
    )
    p.add_argument("--timeout", type=float, default=None)
    ns = p.parse_args(args)
    settings = _load(config)
    if settings is None:
        return 1
    try:
        replay.run(settings, ns.logs, rundir=ns.rundir, timeout=ns.timeout, out=sys.stdout)
    except (replay.ReplayError, control.ControlError) as exc:
        sys.stderr.write(f"nfflowd replay: {exc}\n")
        return 1
    return 0


def cmd_demo(config: str | None, foreground: bool, args: list[str]) -> int:
    from nfflowd import demo

    return demo.main(args)
