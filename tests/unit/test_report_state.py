"""A correlate killed during a long connection's life: its records still add up exactly.

The connection is reported by the active timeout (periodic kernel dumps), then
ends.  Correlate is "killed" after batch *k* with the batches from *j* on not
acknowledged: as in the pipeline, ingest resends those to the successor, whose
records replace theirs (a batch that had left is recognised by its origin
downstream; here, none had).  Whatever the kill point, the records delivered for
the connection add up to the kernel's final counters.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nfflowd.correlate.correlator import Correlator
from nfflowd.correlate.report_state import ReportJournal
from nfflowd.messages import ConntrackEvent, EventType, FlowRecord
from tests.conntrack_events import SNAT_ORIG, SNAT_REPLY, ev

CT = 9
FINAL = (21, 2100, 17, 17100)
#: (origin, events): NEW, dumps at 3/6/9/12 s (reports at 6 and 12 with a 5 s timeout),
#: DESTROY at 14 s; dumps and DESTROY carry the kernel's start time (CTA_TIMESTAMP).
BATCHES: list[tuple[tuple[int, int], list[ConntrackEvent]]] = [
    ((1, 1), [ev(EventType.NEW, 0, SNAT_ORIG, SNAT_REPLY, counters=None, ct_id=CT)]),
    *[
        (
            (1, 2 + i),
            [ev(EventType.NEW, t, SNAT_ORIG, SNAT_REPLY, counters=cnt, ct_id=CT, start_ns=0)],
        )
        for i, (t, cnt) in enumerate(
            [
                (3, (5, 500, 4, 4000)),
                (6, (10, 1000, 8, 8000)),
                (9, (12, 1200, 8, 8000)),
                (12, (20, 2000, 15, 15000)),
            ]
        )
    ],
    (
        (1, 6),
        [ev(EventType.DESTROY, 14, SNAT_ORIG, SNAT_REPLY, counters=FINAL, ct_id=CT, start_ns=0)],
    ),
]


def life(
    path: Path | None, batches: list[tuple[tuple[int, int], list[ConntrackEvent]]]
) -> list[list[FlowRecord]]:
    """One correlate incarnation (what workers/correlate.py does per batch)."""
    corr = Correlator(active_timeout_s=5)
    journal = None
    if path is not None:
        journal = ReportJournal(str(path), capacity=8)
        for ct_id, state in journal.load().items():
            corr.open[ct_id] = state
        corr.journal = journal
    out = []
    for origin, events in batches:
        if journal is not None:
            journal.origin = origin
            for ct_id, state in journal.revert(origin):
                corr.open[ct_id] = state
        out.append(corr.feed_all(events))
    return out  # (the journal is dropped unclosed, like a killed process's)


def sums(records: list[FlowRecord]) -> tuple[int, int, int, int]:
    orig = [r for r in records if r.direction == 1]
    reply = [r for r in records if r.direction == 3]
    return (
        sum(r.packets for r in orig),
        sum(r.octets for r in orig),
        sum(r.packets for r in reply),
        sum(r.octets for r in reply),
    )


def killed_run(path: Path | None, killed_after: int, acked_upto: int) -> list[FlowRecord]:
    """Batches [0, killed_after] fed, [0, acked_upto) acknowledged (their records left);
    the successor gets the rest, from acked_upto on."""
    first = life(path, BATCHES[: killed_after + 1])
    second = life(path, BATCHES[acked_upto:])
    return [r for recs in first[:acked_upto] for r in recs] + [r for recs in second for r in recs]


@pytest.mark.parametrize("killed_after", range(len(BATCHES) - 1))
@pytest.mark.parametrize("unacked", [0, 1, 2])
def test_records_add_up_whatever_the_kill_point(
    tmp_path: Path, killed_after: int, unacked: int
) -> None:
    acked_upto = max(0, killed_after + 1 - unacked)
    records = killed_run(tmp_path / "reports", killed_after, acked_upto)
    assert sums(records) == FINAL
    # one record per direction and report period, none repeated
    periods = sorted({(r.first_ms, r.last_ms) for r in records})
    assert periods == [(0, 6000), (6000, 12000), (12000, 14000)]


def test_without_the_journal_a_restart_counts_reports_twice(tmp_path: Path) -> None:
    """The failure the journal prevents (and proof the test above can fail)."""
    records = killed_run(None, killed_after=3, acked_upto=4)  # the 6 s report had left
    assert sums(records) != FINAL
    assert sums(records)[0] > FINAL[0]


def test_closed_entries_are_reused_when_the_file_is_full(tmp_path: Path) -> None:
    journal = ReportJournal(str(tmp_path / "r"), capacity=2)
    assert journal.load() == {}
    journal.reported(1, 100, [100, 200, 1, 1, 1, 1])
    journal.reported(2, 100, [100, 200, 1, 1, 1, 1])
    journal.reported(3, 100, [100, 200, 1, 1, 1, 1])
    assert journal.full == 1  # no room: counted
    journal.closed_conn(1, [100, 200, 1, 1, 1, 1])
    journal.reported(3, 100, [100, 300, 2, 2, 2, 2])
    assert journal.full == 1
    again = ReportJournal(str(tmp_path / "r"), capacity=2)
    assert again.load() == {2: [100, 200, 1, 1, 1, 1], 3: [100, 300, 2, 2, 2, 2]}
