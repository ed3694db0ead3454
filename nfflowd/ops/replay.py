"""``nfflowd replay LOG…``: saved conntrack logs through the real supervised pipeline.

The same four stages run under their own supervisord (in a private run
directory unless one is given).  Ingest reads the logs; every batch is
acknowledged end to end once its records have been exported and mirrored, and
when the logs are exhausted and everything is acknowledged ingest publishes an
``eof`` notice.  Replay waits for it, stops the pipeline in order and prints
what each stage counted (their ``final`` notices).  With a ``screen`` dispatcher
the flow lines show on replay's own stdout (or stderr) too, as in the 2009 tool
(:mod:`nfflowd.ops.screen`).

Lines the mirror cannot deliver (a syslog dispatcher whose socket does not
exist, as ``/dev/log`` on a host without a syslog daemon with the built-in
default ``<ptee>``) hold their batches unacknowledged, so the ``eof`` would
never come.  Replay says what it waits for once the mirror has been stuck a
few seconds, and when nothing has moved for ``delivery_wait`` seconds
(``--delivery-wait``, default 30) it stops the pipeline and raises
:class:`Undelivered` naming each dispatcher and its lines (``nfflowd replay``
exits 3).  A run that ends with lines pending or dropped by a dispatcher
(its buffer overflowed) ends the same way: every line replayed was either
delivered or is named as lost.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Mapping, Sequence
from typing import TextIO

import zmq

from nfflowd import topology
from nfflowd.config import Settings
from nfflowd.config.settings import DaemonSettings, LinkSettings
from nfflowd.messages import EOF_TOKEN, Notice
from nfflowd.ops import control, screen
from nfflowd.outputs.mirror import gets_flow_lines
from nfflowd.pipeline import codec, endpoints, supervision
from nfflowd.pipeline import rundir as rundirs


class ReplayError(RuntimeError):
    pass


class Undelivered(ReplayError):
    """The logs were replayed but the mirror could not deliver every line (the message
    names each dispatcher, its address and how many lines); ``counters`` as :func:`run`
    returns them."""

    def __init__(self, message: str, counters: dict[str, dict[str, int]]) -> None:
        super().__init__(message)
        self.counters = counters


#: Default of ``delivery_wait``: how long a mirror holding lines may make no progress.
DELIVERY_WAIT_S = 30.0
#: After this long without progress, replay says what it is waiting for.
STUCK_NOTE_S = 3.0


class _Delivery:
    """Whether the mirror is stuck with lines it cannot deliver, from its notices: lines
    held (``dN_pending``) while neither new lines arrive (``lines``) nor any leave
    (``dN_lines_sent``)."""

    def __init__(self) -> None:
        self.moved = time.monotonic()
        self.progress: tuple[int, int] | None = None
        self.held = 0

    def update(self, counters: Mapping[str, int]) -> None:
        sent = sum(v for k, v in counters.items() if k.endswith("_lines_sent"))
        progress = (counters.get("lines", 0), sent)
        self.held = sum(v for k, v in counters.items() if k.endswith("_pending"))
        if progress != self.progress or not self.held:
            self.progress, self.moved = progress, time.monotonic()

    def stuck_for(self) -> float:
        return time.monotonic() - self.moved if self.held else 0.0


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
    delivery_wait: float = DELIVERY_WAIT_S,
) -> dict[str, dict[str, int]]:
    """Replay *logs*; return the final counters of each stage (by stage name).

    Raises :class:`Undelivered` when the mirror held lines it could not deliver for
    *delivery_wait* seconds with nothing else moving, or ended with lines not
    delivered; with *out*, the counters are written there first and what replay
    waits for goes to stderr."""
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
    delivery = _Delivery()
    noted = stuck = False
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
            waited = delivery.stuck_for()
            if waited >= STUCK_NOTE_S and not noted and out is not None:
                noted = True
                what = _undelivered(settings, seen.get("mirror", {}), pending_only=True)
                sys.stderr.write(
                    f"nfflowd replay: waiting up to {delivery_wait:.0f} s for the mirror to "
                    f"deliver {what}\n"
                )
                sys.stderr.flush()
            if waited >= delivery_wait:
                stuck = True
                break
            if not sub.poll(200, zmq.POLLIN):
                continue
            try:
                msg = codec.decode(sub.recv())
            except codec.DecodeError:
                continue
            if isinstance(msg, Notice):
                seen[msg.stage] = msg.counters
                finished = msg.stage == "ingest" and msg.token == EOF_TOKEN
                if msg.stage == "mirror":
                    delivery.update(msg.counters)
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
        lost = _undelivered(settings, seen.get("mirror", {}), pending_only=False)
        if stuck or lost:
            why = f"nothing moved for {delivery_wait:.0f} s" if stuck else "at the end"
            raise Undelivered(
                f"not every flow line was delivered ({why}): {lost or 'see mirror.log'}; "
                f"see {os.path.join(run_dir, 'mirror.log')}",
                seen,
            )
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


def _undelivered(settings: Settings, counters: Mapping[str, int], *, pending_only: bool) -> str:
    """The lines each dispatcher holds (and, unless *pending_only*, dropped), from the
    mirror's counters, naming the dispatcher and its address ("" when none)."""
    parts = []
    for i, d in enumerate(x for x in settings.mirror.dispatchers if gets_flow_lines(x)):
        held = counters.get(f"d{i}_pending", 0)
        dropped = 0 if pending_only else counters.get(f"d{i}_dropped", 0)
        if not held and not dropped:
            continue
        where = d.address if d.kind == "syslog" else ("stderr" if d.stderr else "stdout")
        why = ""
        if d.kind == "syslog" and "://" not in d.address and not os.path.exists(d.address):
            why = ": no such socket (is a syslog daemon running?)"
        elif counters.get(f"d{i}_send_errors"):
            why = f": {counters[f'd{i}_send_errors']} send errors"
        lines = f"{held} lines held" + (f", {dropped} dropped (buffer full)" if dropped else "")
        parts.append(f"{lines} for {d.kind} dispatcher {d.name!r} ({where}{why})")
    return "; ".join(parts)


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
