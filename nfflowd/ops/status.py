"""``nfflowd status``: supervisord's view of each stage merged with its stats file.

Pure: :func:`rows` merges what the caller read (``supervision.processes``,
``stage.read_stats``); :func:`table` and :func:`document` format it for people
and for machines.  The table shows a few key columns per stage, then all the
counters of each stage below it, so nothing a stage counts is hidden.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nfflowd import topology
from nfflowd.formats.json_lines import iso_ms
from nfflowd.pipeline import coverage
from nfflowd.topology import STAGES

#: LSB init-script status code: "program is not running".
NOT_RUNNING = 3
#: LSB: "program or service status is unknown" (e.g. the configuration cannot be read).
UNKNOWN = 4
WIDTH = 100


def rows(
    processes: Sequence[Mapping[str, Any]] | None,
    stats: Mapping[str, Mapping[str, Any]],
    now: float,
) -> list[dict[str, Any]]:
    """One row per stage: supervisord's state (None when it does not run) and the report.

    *processes*: ``supervision.processes()`` (None: supervisord is not running);
    *stats*: ``stage.read_stats()``.  The stages either knows of, in pipeline order.
    """
    procs = {p["name"]: p for p in processes or ()}
    present = set(procs) | set(stats)  # a host may run a part (<daemon> stages)
    order = {s: i for i, s in enumerate(STAGES)}  # shards (correlate-1) sit with their stage
    names = sorted(present, key=lambda n: (order.get(topology.stage_of(n), len(order)), n))
    out: list[dict[str, Any]] = []
    for name in names:
        p, rec = procs.get(name), stats.get(name)
        running = p is not None and p.get("statename") == "RUNNING"
        starts = max(int((p or {}).get("starts", 0)), int((rec or {}).get("starts", 0)))
        report = None
        if rec is not None:
            report = {k: rec.get(k) for k in ("pid", "incarnation", "token", "time")}
            report["age"] = round(max(0.0, now - float(rec.get("time", now))), 1)
        out.append(
            {
                "stage": name,
                "statename": None if p is None else p.get("statename"),
                "pid": (p or {}).get("pid") or None,
                "uptime": int(now - float(p["start"])) if running and p else 0,
                "starts": starts,
                "restarts": max(0, starts - 1),
                "report": report,
                "counters": dict(rec["counters"]) if rec is not None else {},
            }
        )
    return out


def document(
    rundir: str,
    running: bool,
    rows_: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    journal: Journal | None = None,
) -> dict[str, Any]:
    """The ``--json`` document (``coverage``: the journal's last gaps, when read)."""
    out = {"rundir": rundir, "running": running, "stages": list(rows_), "metrics": metrics}
    if journal is not None:
        out["coverage"] = {
            "statedir": journal.statedir,
            "error": journal.error,
            "gaps": journal.total,
            "last_gaps": [
                {
                    "from_ms": g.from_ms,
                    "to_ms": g.to_ms,
                    "cause": g.cause,
                    "stage": g.stage,
                    "detail": g.detail,
                }
                for g in journal.last
            ],
            "recording_since_ms": journal.since_ms,
            "heartbeat_ms": journal.heartbeat_ms,
        }
    return out


@dataclass(frozen=True)
class Journal:
    """What ``status`` shows of the coverage journal (nfflowd.pipeline.coverage)."""

    statedir: str
    error: str | None = None  # it could not be read
    total: int = 0  # gaps journaled (in the files kept)
    last: tuple[coverage.Gap, ...] = ()  # the last LAST_GAPS, oldest first
    since_ms: int | None = None  # the running (or last) ingest's start
    heartbeat_ms: int | None = None


#: Gaps ``status`` shows.
LAST_GAPS = 5


def read_journal(statedir: str) -> Journal:
    """The coverage journal's summary for ``status`` (never raises)."""
    try:
        found = coverage.read(statedir)
    except OSError as exc:
        return Journal(statedir, f"cannot read it: {exc.strerror}")
    if not found.files:
        return Journal(statedir, "no journal yet (only a live source journals)")
    cov = coverage.assess(found, None)
    starts = [r["at_ms"] for r in found.records if r["kind"] == coverage.STARTED]
    return Journal(
        statedir,
        None,
        len(cov.gaps),
        cov.gaps[-LAST_GAPS:],
        starts[-1] if starts else None,
        found.alive_ms,
    )


def journal_lines(j: Journal, now_ms: int) -> list[str]:
    """The coverage part of the table: the last gaps, a line each."""
    if j.error is not None:
        return [f"coverage journal {j.statedir}: {j.error}"]
    head = f"coverage journal {j.statedir}: {j.total} gap{'s' * (j.total != 1)}"
    if j.since_ms is not None:
        head += f"; ingest recording since {iso_ms(j.since_ms)}"
    if j.heartbeat_ms is not None:
        head += f", last heartbeat {max(0, now_ms - j.heartbeat_ms) / 1000:.1f}s ago"
    out = [head + (f"; the last {len(j.last)}:" if j.last else "")]
    out += [
        f"  {iso_ms(g.from_ms)} .. {iso_ms(g.to_ms)} ({g.ms / 1000:g} s) {g.cause} "
        f"({g.stage}): {g.detail}"
        for g in j.last
    ]
    return out


def _sum(counters: Mapping[str, int], *, suffix: str = "", prefix: str = "") -> int:
    return sum(v for k, v in counters.items() if k.endswith(suffix) and k.startswith(prefix))


def _indexed(counters: Mapping[str, int], letter: str, name: str) -> int:
    """Sum of ``<letter><i>_<name>`` over every collector / dispatcher i."""
    return sum(
        v
        for k, v in counters.items()
        if k.startswith(letter)
        and k.partition("_")[0][1:].isdigit()
        and k.partition("_")[2] == name
    )


def summary(stage: str, c: Mapping[str, int]) -> str:
    """The few figures that say what a stage is doing."""
    if not c:
        return ""
    stage = topology.stage_of(stage)
    if stage == "ingest":
        parts = [f"events {c.get('events', 0)}"]
        parts += [f"{k} {c[k]}" for k in ("enobufs", "resyncs") if c.get(k)]
    elif stage == "correlate":
        events = sum(c.get(k, 0) for k in ("new", "update", "destroy"))
        parts = [f"events {events}", f"records {c.get('records', 0)}", f"open {c.get('open', 0)}"]
    elif stage == "export":
        parts = [
            f"records {c.get('records', 0)}",
            f"datagrams {_indexed(c, 'c', 'datagrams_sent')}",
            f"send errors {_indexed(c, 'c', 'send_errors')}",
        ]
    elif stage == "mirror":
        parts = [
            f"records {c.get('lines', 0)}",
            f"pending {_indexed(c, 'd', 'pending')}",
            f"send errors {_indexed(c, 'd', 'send_errors')}",
        ]
    else:
        return ""
    return ", ".join(parts)


def uptime_text(seconds: int) -> str:
    if seconds <= 0:
        return "-"
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def table(
    rundir: str,
    running: bool,
    rows_: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    journal: Journal | None = None,
    now_ms: int = 0,
) -> str:
    """The human-readable status: a line per stage, the coverage journal's last gaps,
    then all the counters of each stage."""
    lines = [f"nfflowd is {'running' if running else 'not running'} (run directory {rundir})"]
    gaps = [] if journal is None else journal_lines(journal, now_ms)
    if not running and not any(r["report"] for r in rows_):
        return "\n".join([lines[0], *gaps]) + "\n"
    if not running:
        lines.append("last reports of its stages:")
    head = ("STAGE", "STATE", "PID", "UPTIME", "RESTARTS", "UNACKED", "DROPPED", "REPORT")
    cells = [head]
    for r in rows_:
        c, rep = r["counters"], r["report"]
        cells.append(
            (
                r["stage"],
                r["statename"] or ("-" if running else "down"),
                str(r["pid"] or "-"),
                uptime_text(r["uptime"]),
                str(r["restarts"]),
                str(_sum(c, suffix="_unacked")) if rep else "-",
                str(_sum(c, prefix="malformed_")) if rep else "-",
                f"{rep['age']:.0f}s ago" + (f" ({rep['token']})" if rep["token"] != "stats" else "")
                if rep
                else "none",
            )
        )
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    for i, row in enumerate(cells):
        text = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        extra = "SUMMARY" if i == 0 else summary(rows_[i - 1]["stage"], rows_[i - 1]["counters"])
        lines.append(f"{text}  {extra}".rstrip())
    if metrics.get("listen"):
        state = metrics.get("statename") or "-"
        lines.append(f"metrics endpoint http://{metrics['listen']}/metrics ({state})")
    lines += gaps
    for r in rows_:
        rest = " ".join(f"{k}={v}" for k, v in sorted(r["counters"].items()) if k != "starts")
        if rest:
            lines.append(f"{r['stage']}:")
            lines += textwrap.wrap(rest, WIDTH, initial_indent="  ", subsequent_indent="  ")
    return "\n".join(lines) + "\n"
