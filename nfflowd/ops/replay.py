"""``nfflowd replay LOG…``: saved conntrack logs through the real supervised pipeline.

The same four stages run under their own supervisord (in a private run
directory unless one is given).  Ingest reads the logs; every batch is
acknowledged end to end once its records have been exported and mirrored, and
when the logs are exhausted and everything is acknowledged ingest publishes an
``eof`` notice.  Replay waits for it, stops the pipeline in order and prints
what each stage counted (their ``final`` notices).  With a ``screen`` dispatcher
the flow lines show on replay's own stdout (or stderr) too, as in the 2009 tool
(:mod:`nfflowd.ops.screen`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
import xmlrpc.client
from collections.abc import Sequence
from typing import TextIO

import zmq

from nfflowd import topology
from nfflowd.config import Settings
from nfflowd.config.settings import DaemonSettings, LinkSettings
from nfflowd.messages import EOF_TOKEN, Notice
from nfflowd.ops import control, screen
from nfflowd.pipeline import codec, endpoints, supervision
from nfflowd.pipeline import rundir as rundirs


class ReplayError(RuntimeError):
    pass


def replay_settings(settings: Settings, logs: Sequence[str]) -> Settings:
    paths = tuple(os.path.abspath(p) for p in logs)
    for p in paths:
        if not os.path.isfile(p):
            raise ReplayError(f"{p}: no such event log")
    source = dataclasses.replace(settings.source, type="file", path=paths)
    # a replay runs the whole pipeline here, whatever this host's part of a split one is
    daemon = dataclasses.replace(settings.daemon, stages=DaemonSettings().stages)
    return dataclasses.replace(settings, source=source, daemon=daemon, links=LinkSettings())


def run(
    settings: Settings,
    logs: Sequence[str],
    *,
    rundir: str | None = None,
    timeout: float | None = None,
    out: TextIO | None = None,
) -> dict[str, dict[str, int]]:
    """Replay *logs*; return the final counters of each stage (by stage name)."""
    settings = replay_settings(settings, logs)
    own_rundir = rundir is None
    run_dir = tempfile.mkdtemp(prefix="nfflowd-replay-") if rundir is None else rundir
    try:
        rundirs.ensure(run_dir, correlators=settings.daemon.correlators)
    except rundirs.RundirError as exc:
        raise ReplayError(str(exc)) from None
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sub = endpoints.open_socket(ctx, run_dir, "notices", "receiver", hwm=10000)
    proc = None
    seen: dict[str, dict[str, int]] = {}
    ok = False
    followers = screen.follow(settings, run_dir) if out is not None else []
    try:
        proc = control.launch_foreground(settings, run_dir, silent=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        next_check = time.monotonic() + 2
        finished = False
        while not finished:
            if deadline is not None and time.monotonic() > deadline:
                raise ReplayError(f"replay did not complete within {timeout} s (run dir {run_dir})")
            if proc.poll() is not None:
                raise ReplayError(f"supervisord exited with status {proc.returncode}")
            if time.monotonic() > next_check:
                _fail_on_fatal(run_dir)
                next_check = time.monotonic() + 2
            if not sub.poll(200, zmq.POLLIN):
                continue
            try:
                msg = codec.decode(sub.recv())
            except codec.DecodeError:
                continue
            if isinstance(msg, Notice):
                seen[msg.stage] = msg.counters
                finished = msg.stage == "ingest" and msg.token == EOF_TOKEN
        control.stop(run_dir)
        proc.wait(60)
        while sub.poll(200, zmq.POLLIN):  # the stages' final notices
            try:
                msg = codec.decode(sub.recv())
            except codec.DecodeError:
                continue
            if isinstance(msg, Notice):
                seen[msg.stage] = msg.counters
        ok = True
        screen.stop(followers)
        if out is not None:
            order = {s: i for i, s in enumerate(topology.STAGES)}
            names = set(topology.STAGES) - {topology.stage_of(n) for n in seen} | set(seen)
            for name in sorted(names, key=lambda n: (order.get(topology.stage_of(n), 9), n)):
                counters = " ".join(f"{k}={v}" for k, v in sorted(seen.get(name, {}).items()))
                out.write(f"{name:<11} {counters}\n")
        return seen
    finally:
        screen.stop(followers)
        sub.close(linger=0)
        ctx.destroy(linger=0)
        if proc is not None and proc.poll() is None:
            try:
                control.stop(run_dir, timeout=30)
            except Exception:
                proc.terminate()
            proc.wait(60)
        if own_rundir and ok and not os.environ.get("NFFLOWD_KEEP_RUNDIR"):
            shutil.rmtree(run_dir, ignore_errors=True)


def _fail_on_fatal(rundir: str) -> None:
    try:
        processes = supervision.processes(rundir)
    except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
        return  # supervisord starting, or busy restarting a stage: ask again later
    for p in processes:
        if p["statename"] == "FATAL":
            raise ReplayError(
                f"stage {p['name']} is FATAL ({p.get('spawnerr') or 'see its log'}): "
                f"{os.path.join(rundir, p['name'] + '.log')}"
            )
