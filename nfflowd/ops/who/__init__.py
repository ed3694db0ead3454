"""``nfflowd who``: which private host had public address A, port P at time T?

The abuse report's question, answered from what nfflowd exported: nfcapd files
(through nfdump) and its own JSON mirror lines.  The parts:

* :mod:`~nfflowd.ops.who.question` — the question: endpoint, time, window, protocol;
* :mod:`~nfflowd.ops.who.sources` — which sources, and reading them without loading
  them (nfdump with a filter built from the question, JSON lines streamed);
* :mod:`~nfflowd.ops.who.join` — records to connections: the private, public and
  remote endpoints, v5 triplets joined, v9/IPFIX/JSON records read alone;
* :mod:`~nfflowd.ops.who.report` — the answer, as text or one JSON document.

:func:`ask` ties them together and is what the CLI (``nfflowd.ops.commands.cmd_who``)
calls.  The answer ends with a coverage line: whether nfflowd was listening during
the asked window is not recorded yet, so a "not found" is not a proof, and the answer
says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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

    @property
    def status(self) -> int:
        if any(r.error for r in self.reports):
            return ERROR
        return FOUND if self.matches else NOT_FOUND


def ask(q: Question, sources: Sequence[Source], nfdump: str = "nfdump") -> Answer:
    """Read *sources* and answer *q*."""
    got = collect(q, sources, nfdump)
    observations = [o for f in got.flows for o in observe(q, f)]
    observations += join_untranslated(q, got.flows)
    egress = [f for f in got.flows if f.egress]
    return Answer(q, merge(observations, egress), got.reports)
