"""More helpers for the crash and outage tests, next to tests/pipeline_harness.py.

Those tests replay a log in the background (``start_replay``), kill or pause
stages meanwhile, and judge the delivered records by identity.  What they
shared beyond pipeline_harness lives here, so that module stays small.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from nfflowd.lab.nfcapd import Nfcapd
from nfflowd.messages import FlowRecord
from nfflowd.ops import control
from nfflowd.pipeline import supervision
from tests.pipeline_harness import Tally, csv_idents, nfdump_ident, record_ident, tally


def stage_pid(rundir: Path, stage: str) -> int:
    """The stage's pid in any state supervisord reports (0: none yet).

    Unlike ``running_pid`` this does not wait for RUNNING: a test that freezes a
    stage (SIGSTOP) from its very start must catch it before ``startsecs``.
    """
    if not (rundir / "supervisor.sock").exists() or not control.is_running(str(rundir)):
        return 0
    procs = supervision.processes(str(rundir))
    return next((int(p["pid"]) for p in procs if p["name"] == stage), 0)


def judge_delivery(
    want: Iterable[FlowRecord], cap: Nfcapd, mirror: Iterable[str], mirror_name: str
) -> dict[str, Tally]:
    """The collector (IPv4 only: NetFlow v5) and the mirror's lines against *want*.

    Keyed by where the records were read, as the tests print and assert them;
    the mirror is a screen (``mirror_lines``) or a syslog reader's lines.
    """
    want = list(want)
    return {
        "collector (nfdump)": tally(
            [record_ident(r) for r in want if r.family == 4], map(nfdump_ident, cap.records())
        ),
        mirror_name: tally(map(record_ident, want), *csv_idents(mirror)),
    }
