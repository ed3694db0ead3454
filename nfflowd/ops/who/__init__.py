"""``nfflowd who``: which private host had public address A, port P at time T?

The abuse report's question, answered from what nfflowd exported: nfcapd files
(through nfdump) and its own mirror lines (JSON, or the flow-tools CSV the 2009 tool
sent to syslog).  The parts:

* :mod:`~nfflowd.ops.who.question` — the question: endpoint, time, window, protocol;
* :mod:`~nfflowd.ops.who.sources` — which sources, and reading them without loading
  them (nfdump with a filter built from the question, JSON and CSV lines streamed);
* :mod:`~nfflowd.ops.who.join` — records to connections: the private, public and
  remote endpoints, v5 triplets joined, v9/IPFIX/JSON records read alone;
* :mod:`~nfflowd.ops.who.coverage` — whether nfflowd was recording over the window,
  from the coverage journal (:mod:`nfflowd.pipeline.coverage`);
* :mod:`~nfflowd.ops.who.report` — the answer, as text or one JSON document.

:func:`ask` ties them together and is what the CLI (``nfflowd.ops.commands.cmd_who``)
calls.  The answer ends with the coverage of the asked window: "complete" (a "not
found" is a proof), the gaps that overlap it with their causes, or "unknown" (no
journal): a "not found" is either a proof or an explicit uncertainty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nfflowd.ops.who import coverage
from nfflowd.ops.who.join import Match, join_untranslated, merge, observe
from nfflowd.ops.who.question import Question
from nfflowd.ops.who.sources import Source, SourceReport, collect

#: Exit statuses: found, not found, usage or source errors.
FOUND, NOT_FOUND, ERROR = 0, 1, 2


@dataclass(frozen=True)
class Answer:
    question: Question
    matches: list[Match]
    reports: list[SourceReport]
    coverage: coverage.Report

    @property
    def status(self) -> int:
        if any(r.error for r in self.reports):
            return ERROR
        return FOUND if self.matches else NOT_FOUND


def ask(q: Question, sources: Sequence[Source], nfdump: str = "nfdump", *, statedir: str) -> Answer:
    """Read *sources* and answer *q*; its coverage from the journal in *statedir*."""
    got = collect(q, sources, nfdump)
    observations = [o for f in got.flows for o in observe(q, f)]
    observations += join_untranslated(q, got.flows)
    egress = [f for f in got.flows if f.egress]
    found = coverage.read(statedir, q.span)
    return Answer(q, merge(observations, egress), got.reports, found)
