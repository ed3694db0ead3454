"""The verbs of ``nfflowd`` (cli.py parses, this module acts)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import time
import xmlrpc.client
from types import FrameType

from nfflowd.config import ConfigError, MetricsSettings, Settings, load, load_resolved
from nfflowd.config.settings import DaemonSettings
from nfflowd.ops import control, environment, install, replay, screen, status
from nfflowd.pipeline import supervision
from nfflowd.pipeline.stage import SETTINGS_FILE, read_stats

UNIT_NAME = install.UNIT_NAME
#: ``nfflowd replay``'s exit status when the logs were replayed but not every flow line
#: could be delivered (nfflowd.ops.replay.Undelivered).
UNDELIVERED = 3


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
    links = environment.link_findings(settings)
    here = environment.source_findings(settings) + environment.kernel_findings(settings)
    privs = environment.privilege_findings(settings)
    run = environment.rundir_findings(settings)
    files = environment.config_file_findings(settings)
    for level, text in (
        (here if "ingest" in settings.daemon.stages else []) + links + privs + run + files
    ):
        if level in ("warning", "error"):
            sys.stderr.write(f"nfflowd: {level}: {text}\n")
    if any(level == "error" for level, _ in links):
        sys.stderr.write("nfflowd: not started: a tcp:// link cannot work with these keys\n")
        return 1
    if any(level == "error" for level, _ in privs):
        sys.stderr.write("nfflowd: not started: the stages cannot run as <daemon> user\n")
        return 1
    if any(level == "error" for level, _ in run):
        sys.stderr.write("nfflowd: not started: the run directory is refused (see above)\n")
        return 1
    rundir = settings.daemon.rundir
    followers: list[screen.Follower] = []
    try:
        if not foreground:
            control.launch_daemon(settings, rundir)
            print(f"nfflowd started (run directory {rundir})")
            return 0
        followers = screen.follow(settings, rundir)  # the screen dispatcher's lines, here too
        proc = control.launch_foreground(settings, rundir)
    except control.ControlError as exc:
        screen.stop(followers)
        sys.stderr.write(f"nfflowd: {exc}\n")
        return 1
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stopping:
            stopping.append(signum)
            # Ctrl-C reaches supervisord too (same process group): it may be shutting
            # down already and refuse the request, or be gone
            with contextlib.suppress(OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
                control.stop(rundir)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        f"nfflowd running in the foreground (run directory {rundir}); Ctrl-C stops it", flush=True
    )
    rc = proc.wait()
    screen.stop(followers)
    return 0 if rc in (0, -signal.SIGTERM) or stopping else 1


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
    if settings.metrics != _running_metrics(rundir):
        sys.stderr.write("nfflowd: note: <metrics> changed: takes effect at the next restart\n")
    if settings.daemon.user != _running_user(rundir):
        sys.stderr.write("nfflowd: note: <daemon> user changed: takes effect at the next restart\n")
    try:
        changed = control.reload(settings, rundir)
    except control.ControlError as exc:
        sys.stderr.write(f"nfflowd: {exc}\n")
        return 1
    print(
        "restarted: " + (", ".join(changed) if changed else "nothing (no stage's settings changed)")
    )
    return 0


def cmd_install(config: str | None, foreground: bool, args: list[str]) -> int:
    """The hardened systemd unit, the logrotate rule and <daemon> user (nfflowd.ops.install)."""
    p = argparse.ArgumentParser(prog="nfflowd install")
    p.add_argument("--root", default="/", help="write below this directory (staging)")
    ns = p.parse_args(args)
    settings = _load(config)
    if settings is None:
        return 1
    try:
        done = install.install(settings, config, os.path.abspath(ns.root))
    except (install.InstallError, OSError) as exc:
        sys.stderr.write(f"nfflowd install: {exc}\n")
        return 1
    print("\n".join(done))
    print("enable it with: systemctl daemon-reload && systemctl enable --now nfflowd")
    return 0


def cmd_check(config: str | None, foreground: bool, args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="nfflowd check")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--write-settings",
        action="store_true",
        help="also lay out the run directory (settings.json) for a supervisord "
        "of your own that includes deploy/supervisord.conf",
    )
    ns = p.parse_args(args)
    settings = _load(config, quiet=True)
    if settings is None:
        return 1
    if ns.write_settings:
        try:
            control.prepare(settings, settings.daemon.rundir)
        except control.ControlError as exc:
            sys.stderr.write(f"nfflowd check: not written: {exc}\n")
            return 1
        print(f"wrote {os.path.join(settings.daemon.rundir, 'settings.json')}")
    here = settings.daemon.stages  # a stage run on another host is checked there
    findings = (
        [("ok", f"configuration {settings.path or '(built-in defaults)'} is valid")]
        + environment.config_file_findings(settings)
        + [("note", n) for n in settings.notes]
        + ([("ok", "stages run on this host: " + ", ".join(here))] if len(here) < 4 else [])
        + (environment.source_findings(settings) if "ingest" in here else [])
        + (environment.export_findings(settings) if "export" in here else [])
        + (environment.mirror_findings(settings) if "mirror" in here else [])
        + (environment.kernel_findings(settings) if "ingest" in here else [])
        + environment.link_findings(settings)
        + environment.privilege_findings(settings)
        + environment.rundir_findings(settings)
        + environment.who_findings(settings)
    )
    rundir = settings.daemon.rundir
    running = control.is_running(rundir)
    findings += _metrics_findings(settings, control.metrics_process(rundir) if running else None)
    stages = supervision.processes(rundir) if running else []
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
            print(
                f"stage    {s['name']:<10} {s['statename']:<9} pid {s['pid']:<7} "
                f"uptime {up:>6}s restarts {max(0, s['starts'] - 1)}"
            )
    return 1 if any(level == "error" for level, _ in findings) else 0


def _running_metrics(rundir: str) -> MetricsSettings:
    """The <metrics> settings the running daemon was started with."""
    try:
        return load_resolved(os.path.join(rundir, SETTINGS_FILE)).metrics
    except ConfigError:
        return MetricsSettings()


def _running_user(rundir: str) -> str | None:
    """The <daemon> user the running daemon was started with."""
    try:
        return load_resolved(os.path.join(rundir, SETTINGS_FILE)).daemon.user
    except ConfigError:
        return None


def _bind_problem(address: str, port: int) -> str | None:
    """Why a TCP listener on address:port cannot be opened now (None: it can)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _metrics_findings(
    settings: Settings, process: dict[str, object] | None
) -> list[tuple[str, str]]:
    """Whether the metrics endpoint serves (daemon running) or could bind (not running)."""
    m = settings.metrics
    if m.address is None:
        return []
    url = f"http://{m.listen}/metrics"
    if process is not None:
        state = str(process.get("statename"))
        level = "ok" if state == "RUNNING" else "error"
        return [(level, f"metrics endpoint {url}: {state}")]
    problem = _bind_problem(m.address, m.port)
    if problem:
        return [("warning", f"metrics endpoint {url}: cannot listen there now: {problem}")]
    return [("ok", f"metrics endpoint {url} will be served")]


def cmd_status(config: str | None, foreground: bool, args: list[str]) -> int:
    """Per stage: supervisord's state and the stage's last counters; exit 3 if not running."""
    p = argparse.ArgumentParser(prog="nfflowd status")
    p.add_argument("--json", action="store_true", help="one JSON document, for machines")
    p.add_argument("--rundir", default=None, help="run directory (default: the configured one)")
    ns = p.parse_args(args)
    statedir: str | None = None
    if ns.rundir is None:
        settings = _load(config, quiet=True)
        if settings is None:
            return status.UNKNOWN
        ns.rundir = settings.daemon.rundir
        statedir = settings.daemon.statedir
    rundir = os.path.abspath(ns.rundir)
    if statedir is None:  # --rundir: the running daemon's settings say where
        with contextlib.suppress(ConfigError):
            statedir = load_resolved(os.path.join(rundir, SETTINGS_FILE)).daemon.statedir
    journal = None if statedir is None else status.read_journal(statedir)
    running = control.is_running(rundir)
    procs = supervision.processes(rundir) if running else None
    now = time.time()
    rows = status.rows(procs, read_stats(rundir), now)
    metrics: dict[str, object] = {}
    if running:
        info = control.metrics_process(rundir)
        metrics = {
            "listen": _running_metrics(rundir).listen or None,
            "statename": info["statename"] if info else None,
        }
    if ns.json:
        print(json.dumps(status.document(rundir, running, rows, metrics, journal), indent=2))
    else:
        now_ms = int(now * 1000)
        sys.stdout.write(status.table(rundir, running, rows, metrics, journal, now_ms))
    return 0 if running else status.NOT_RUNNING


def cmd_replay(config: str | None, foreground: bool, args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="nfflowd replay")
    p.add_argument("logs", nargs="+", metavar="LOG")
    p.add_argument(
        "--rundir", default=None, help="run directory (default: a private temporary one)"
    )
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument(
        "--delivery-wait",
        type=float,
        default=replay.DELIVERY_WAIT_S,
        metavar="SECONDS",
        help="how long the mirror may hold lines it cannot deliver (syslog down) with "
        "nothing else moving; then replay stops and exits 3 naming them (default "
        f"{replay.DELIVERY_WAIT_S:.0f})",
    )
    ns = p.parse_args(args)
    settings = _load(config)
    if settings is None:
        return 1
    for level, text in environment.mirror_findings(settings):
        if level in ("warning", "error"):
            sys.stderr.write(f"nfflowd replay: {level}: {text}\n")
    try:
        replay.run(
            settings,
            ns.logs,
            rundir=ns.rundir,
            timeout=ns.timeout,
            out=sys.stdout,
            delivery_wait=ns.delivery_wait,
        )
    except replay.Undelivered as exc:
        sys.stderr.write(f"nfflowd replay: {exc}\n")
        return UNDELIVERED
    except (replay.ReplayError, control.ControlError) as exc:
        sys.stderr.write(f"nfflowd replay: {exc}\n")
        return 1
    return 0


def cmd_demo(config: str | None, foreground: bool, args: list[str]) -> int:
    from nfflowd.ops import demo

    return demo.main(args)


def cmd_keygen(config: str | None, foreground: bool, args: list[str]) -> int:
    """Write CURVE keypairs for tcp:// links and say which file goes to which host."""
    from nfflowd.pipeline import curve

    p = argparse.ArgumentParser(prog="nfflowd keygen")
    p.add_argument("dir", metavar="DIR", help="where to write the keys (created mode 0700)")
    ns = p.parse_args(args)
    try:
        written = curve.keygen(ns.dir)
    except (curve.CurveError, OSError) as exc:
        sys.stderr.write(f"nfflowd keygen: {exc}\n")
        return 1
    for path in written:
        print(f"wrote {path}{'  (secret, mode 0600)' if path.endswith('_secret') else ''}")
    d = os.path.abspath(ns.dir)
    print(f"""
Copy into the curve_dir of each host (same layout, e.g. /etc/nfflowd/curve):
  hosts that RECEIVE a tcp:// link (bind it, e.g. correlate centrally):
      {curve.SERVER_SECRET}, {curve.CLIENTS}/{curve.CLIENT_PUBLIC}
      ({curve.CLIENTS}/*.key are the senders admitted; add or remove files to
      admit or refuse a sender, no restart needed)
  hosts that SEND on a tcp:// link (connect to it, e.g. ingest on each firewall):
      {curve.SERVER_PUBLIC}, {curve.CLIENT_SECRET}
  A host doing both (correlate receiving events and sending on over tcp) needs both sets.
Then in each configuration:
  <links>
      curve_dir /etc/nfflowd/curve
      <events>
          address tcp://RECEIVER-IP:PORT
      </events>
  </links>
Keep the *_secret files secret (mode 0600); {d} holds both.""")
    return 0


def cmd_who(config: str | None, foreground: bool, args: list[str]) -> int:
    """Which private host had a public address and port at a time (nfflowd.ops.who)."""
    from nfflowd.ops import who
    from nfflowd.ops.who import question, report, sources

    p = argparse.ArgumentParser(
        prog="nfflowd who",
        description="Find the connections whose public-side (post-NAT) endpoint was "
        "ADDR[:PORT] at TIME, and their private host.  Exit 0 found, 1 not found, "
        "2 usage or source error.",
    )
    p.add_argument("public", metavar="ADDR[:PORT]", help="the public endpoint (IPv6: [ADDR]:PORT)")
    p.add_argument(
        "--at", metavar="TIME", help="ISO 8601 with a zone, or epoch seconds (default: any time)"
    )
    p.add_argument(
        "--window",
        metavar="SECONDS",
        help="seconds either side of --at (default: <who> window, else "
        f"{question.DEFAULT_WINDOW_S:g})",
    )
    p.add_argument("--remote", metavar="ADDR[:PORT]", help="the other end of the connection")
    p.add_argument("--proto", metavar="P", help="protocol name or number (tcp, udp, 6, ...)")
    p.add_argument(
        "--from",
        dest="sources",
        action="append",
        default=[],
        metavar="PATH",
        help="an nfcapd directory or file, or a mirror file: JSON or flow-tools CSV lines, "
        "syslog-prefixed or not (.gz too); repeatable (default: <who> from, else the "
        "configuration's screen dispatcher files)",
    )
    p.add_argument(
        "--coverage",
        metavar="PATH",
        help="the state directory holding the coverage journal (default: <daemon> statedir, "
        "else /var/lib/nfflowd)",
    )
    p.add_argument("--json", action="store_true", help="one JSON document, for machines")
    ns = p.parse_args(args)
    settings = _load(config, quiet=True)
    if settings is None and not ns.sources:
        return who.ERROR
    try:
        if ns.window is not None and ns.at is None:
            raise question.UsageError("--window needs --at")
        window = (
            question.parse_window(ns.window)
            if ns.window is not None
            else settings.who.window
            if settings is not None
            else question.DEFAULT_WINDOW_S
        )
        q = question.Question(
            question.parse_endpoint(ns.public),
            at_ms=None if ns.at is None else question.parse_time(ns.at),
            window_ms=round(window * 1000),
            remote=None if ns.remote is None else question.parse_endpoint(ns.remote, "--remote"),
            proto=None if ns.proto is None else question.parse_proto(ns.proto),
        )
        chosen = sources.choose(settings, ns.sources)
    except (question.UsageError, sources.SourceError) as exc:
        sys.stderr.write(f"nfflowd who: {exc}\n")
        return who.ERROR
    nfdump = settings.who.nfdump if settings is not None else "nfdump"
    statedir = (
        os.path.abspath(ns.coverage)
        if ns.coverage is not None
        else settings.daemon.statedir
        if settings is not None
        else DaemonSettings.statedir
    )
    answer = who.ask(q, chosen, nfdump, statedir=statedir)
    sys.stdout.write(report.as_json(answer) if ns.json else report.text(answer))
    for r in answer.reports:
        if r.error:
            sys.stderr.write(f"nfflowd who: source {r.path} ({r.origin}): {r.error}\n")
    return answer.status
