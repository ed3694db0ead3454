"""The answer of ``nfflowd who``: text for people, one JSON document for machines.

Text, per connection found (times UTC to the ms; counters per direction as the
private host saw them: what it sent, what it got)::

    tcp  private 10.0.1.2:41234  public 203.0.113.1:41234  remote 203.0.113.2:5001
         translated; opened by the private host
         2026-12-06T10:00:01.123Z .. 2026-12-06T10:00:02.456Z
         sent 6 packets, 1320 bytes; received 5 packets, 1018 bytes
         from /srv/nfcapd/nfcapd.202612061000 (without post-NAT fields: ...)

then what each source gave (files, records, malformed lines named), and the coverage
of the window (:mod:`nfflowd.ops.who.coverage`).  ``--json``: ``{"question",
"matches", "sources", "coverage"}``, every time as ISO text and epoch ms, endpoints
as ``{"address", "port"}``.
"""

from __future__ import annotations

import json
from typing import Any

from nfflowd.formats.json_lines import iso_ms
from nfflowd.ops.who import Answer, coverage
from nfflowd.ops.who.join import Counters, Match, Point
from nfflowd.ops.who.question import join_endpoint, protocol_name
from nfflowd.ops.who.sources import SourceReport


def _counters(c: Counters | None) -> str:
    return "not recorded" if c is None else f"{c[0]} packets, {c[1]} bytes"


def _opened(m: Match) -> str:
    nat = "translated" if m.translated else "no NAT"
    if m.private_opened is None:
        return f"{nat}; who opened it: not recorded"
    return f"{nat}; opened by the {'private host' if m.private_opened else 'remote end'}"


def _question(a: Answer) -> str:
    q = a.question
    what = f"public {q.public}"
    if q.remote is not None:
        what += f", remote {q.remote}"
    if q.proto is not None:
        what += f", {protocol_name(q.proto)}"
    span = q.span
    if span is None:
        return f"who had {what}, at any time"
    return (
        f"who had {what} at {iso_ms(q.at_ms or 0)} (window {iso_ms(span[0])} .. "
        f"{iso_ms(span[1])}, {q.window_ms / 1000:g} s either side)"
    )


def _source_lines(r: SourceReport) -> list[str]:
    if r.error:
        return [f"source {r.path} ({r.origin}): ERROR: {r.error}"]
    skipped = f", {r.skipped_files} skipped by time" if r.skipped_files else ""
    unit = "records matched the filter" if r.kind == "nfcapd" else "lines"
    other = f", {r.other} of other programs (no CSV record)" if r.other else ""
    lines = [
        f"source {r.path} ({r.origin}; {r.kind}): {r.files} file{'s' * (r.files != 1)} read"
        f"{skipped}, {r.records} {unit}, {r.malformed} malformed{other}"
    ]
    lines += [f"  malformed: {e}" for e in r.examples]
    if r.malformed > len(r.examples):
        lines.append(f"  ... and {r.malformed - len(r.examples)} more malformed")
    lines += [f"  warning: {w}" for w in r.warnings]
    return lines


def text(a: Answer) -> str:
    out = [_question(a)]
    n = len(a.matches)
    out.append(f"{n} connection{'s' * (n != 1)} found" if n else "no connection found")
    for m in a.matches:
        out += [
            "",
            f"{protocol_name(m.proto):<5} private {join_endpoint(*m.private)}  "
            f"public {join_endpoint(*m.public)}  remote {join_endpoint(*m.remote)}",
            f"      {_opened(m)}",
            f"      {iso_ms(m.first_ms)} .. {iso_ms(m.last_ms)}",
            f"      sent {_counters(m.from_private)}; received {_counters(m.to_private)}",
        ]
        out += [f"      note: {note}" for note in m.notes]
        out += [f"      from {ref}" for ref in m.refs]
    out.append("")
    for r in a.reports:
        out += _source_lines(r)
    out += coverage.lines(a.coverage)
    return "\n".join(out) + "\n"


def _point(p: Point) -> dict[str, Any]:
    return {"address": p[0], "port": p[1]}


def _count(c: Counters | None) -> dict[str, int] | None:
    return None if c is None else {"packets": c[0], "bytes": c[1]}


def document(a: Answer) -> dict[str, Any]:
    q = a.question
    span = q.span
    return {
        "question": {
            "public": {"address": q.public.address, "port": q.public.port},
            "remote": None
            if q.remote is None
            else {"address": q.remote.address, "port": q.remote.port},
            "proto": q.proto,
            "at": None if q.at_ms is None else iso_ms(q.at_ms),
            "at_ms": q.at_ms,
            "window_ms": q.window_ms,
            "from_ms": None if span is None else span[0],
            "until_ms": None if span is None else span[1],
        },
        "matches": [
            {
                "proto": m.proto,
                "private": _point(m.private),
                "public": _point(m.public),
                "remote": _point(m.remote),
                "translated": m.translated,
                "private_opened": m.private_opened,
                "first": iso_ms(m.first_ms),
                "last": iso_ms(m.last_ms),
                "first_ms": m.first_ms,
                "last_ms": m.last_ms,
                "from_private": _count(m.from_private),
                "to_private": _count(m.to_private),
                "records": list(m.refs),
                "notes": list(m.notes),
            }
            for m in a.matches
        ],
        "sources": [
            {
                "path": r.path,
                "origin": r.origin,
                "kind": r.kind,
                "files": r.files,
                "skipped_files": r.skipped_files,
                "records": r.records,
                "malformed": r.malformed,
                "malformed_examples": list(r.examples),
                "other_lines": r.other,
                "warnings": list(r.warnings),
                "error": r.error,
            }
            for r in a.reports
        ],
        "coverage": coverage.document(a.coverage),
    }


def as_json(a: Answer) -> str:
    return json.dumps(document(a), indent=2) + "\n"
