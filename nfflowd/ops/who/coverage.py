"""The coverage line(s) that end every answer of ``nfflowd who``.

Read from the coverage journal (:mod:`nfflowd.pipeline.coverage`) in ``<daemon>
statedir`` (or ``--coverage PATH``), for the asked window:

* ``coverage: complete for FROM .. UNTIL``: the journal shows nfflowd recording over
  the whole window (a ``started`` before it, no ``stopped`` or restart inside, the
  heartbeat past it) and no gap overlapping it: a connection not found was not made;
* ``coverage: INCOMPLETE for FROM .. UNTIL``, then one line per gap overlapping the
  window (its interval, cause, stage and detail) and per part of the window no run was
  recording: a connection not found may have been missed there;
* ``coverage: unknown``: no journal (or an unreadable one), or no window (no ``--at``);

then the conditions the window was recorded under (``no_counters``, ``no_timestamps``:
records lacking fields, not connections missed).

The exit status of ``who`` does not change: found or not is about the records; the
coverage says what a "not found" is worth.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from nfflowd.formats.json_lines import iso_ms
from nfflowd.pipeline import coverage

#: Gaps listed at most when the question has no window (the journal may hold many).
MAX_LISTED = 20


@dataclass(frozen=True)
class Report:
    """The coverage of a window, as read from *journal* (a state directory)."""

    journal: str
    span: tuple[int, int] | None
    found: coverage.Coverage | None = None  # None: no journal, or unreadable
    error: str | None = None
    malformed: int = 0

    @property
    def complete(self) -> bool | None:
        if self.found is None or self.span is None:
            return None
        return self.found.complete


def read(statedir: str, span: tuple[int, int] | None) -> Report:
    """The coverage of *span* by the journal in *statedir*."""
    if not os.path.isdir(statedir):
        why = "no such directory" if not os.path.exists(statedir) else "not a directory"
        return Report(statedir, span, error=why)
    try:
        records = coverage.read(statedir)
    except OSError as exc:
        return Report(statedir, span, error=f"cannot read it: {exc.strerror}")
    if not records.files:
        return Report(statedir, span, error="no journal file in it")
    return Report(statedir, span, coverage.assess(records, span), malformed=records.malformed)


def _window(span: tuple[int, int]) -> str:
    return f"{iso_ms(span[0])} .. {iso_ms(span[1])}"


def _gap_line(g: coverage.Gap) -> str:
    return (
        f"  gap {iso_ms(g.from_ms)} .. {iso_ms(g.to_ms)} ({g.ms / 1000:g} s) "
        f"cause {g.cause} ({g.stage}): {g.detail}"
    )


#: What a run's condition means for its records.
CONDITION_TEXT = {
    "no_counters": "connections recorded without packet and byte counters (nf_conntrack_acct off)",
    "no_timestamps": "connections recorded without the kernel's start and stop times "
    "(nf_conntrack_timestamp off)",
}


def _condition_line(c: coverage.Gap) -> str:
    what = CONDITION_TEXT.get(c.cause, c.detail)
    return f"  condition {c.cause} {_window((c.from_ms, c.to_ms))} ({c.stage}): {what}"


def _hole_line(hole: tuple[int, int]) -> str:
    return (
        f"  not recorded {_window(hole)}: no nfflowd run was recording (before a start, "
        "after a stop, or past the last heartbeat)"
    )


def lines(r: Report) -> list[str]:
    """The coverage part of the text answer."""
    if r.found is None:
        return [
            f"coverage: unknown: no coverage journal in {r.journal} ({r.error}; <daemon> "
            "statedir, or --coverage PATH): nothing proves nfflowd was listening, so a "
            "connection not found is not a proof that none was made"
        ]
    out: list[str] = []
    if r.malformed:
        out.append(f"coverage journal {r.journal}: {r.malformed} malformed lines left out")
    if r.span is None:
        gaps = r.found.gaps
        out.append(
            f"coverage: unknown: the question has no time (--at), so no window to prove; "
            f"the journal {r.journal} holds {len(gaps)} gap{'s' * (len(gaps) != 1)}"
        )
        out += [_gap_line(g) for g in gaps[-MAX_LISTED:]]
        return out
    conditions = [_condition_line(c) for c in r.found.conditions]
    if r.found.complete:
        return [
            *out,
            f"coverage: complete for {_window(r.span)}: nfflowd was recording over the whole "
            f"window and no gap overlaps it (journal {r.journal})",
            *conditions,
        ]
    n = len(r.found.gaps)
    what = [f"{n} gap{'s' * (n != 1)}"] if n else []
    if r.found.unrecorded:
        what.append("not recorded throughout")
    out.append(
        f"coverage: INCOMPLETE for {_window(r.span)}: {' and '.join(what)} (journal "
        f"{r.journal}); a connection not found may have been missed"
    )
    out += [_gap_line(g) for g in r.found.gaps]
    out += [_hole_line(h) for h in r.found.unrecorded]
    return out + conditions


def document(r: Report) -> dict[str, Any]:
    """The ``coverage`` member of ``who --json``."""
    found = r.found
    return {
        "recorded": found is not None,
        "journal": r.journal,
        "error": r.error,
        "complete": r.complete,
        "window": None if r.span is None else {"from_ms": r.span[0], "until_ms": r.span[1]},
        "gaps": []
        if found is None
        else [
            {
                "from": iso_ms(g.from_ms),
                "to": iso_ms(g.to_ms),
                "from_ms": g.from_ms,
                "to_ms": g.to_ms,
                "cause": g.cause,
                "stage": g.stage,
                "detail": g.detail,
            }
            for g in found.gaps
        ],
        "unrecorded": []
        if found is None
        else [{"from_ms": a, "until_ms": b} for a, b in found.unrecorded],
        "conditions": []
        if found is None
        else [
            {"from_ms": c.from_ms, "to_ms": c.to_ms, "cause": c.cause, "stage": c.stage}
            for c in found.conditions
        ],
        "malformed_lines": r.malformed,
        "text": "\n".join(lines(r)),
    }
