"""`nfflowd status`: merging supervisord's view with the stats files, table and JSON."""

from __future__ import annotations

import json
from typing import Any

from nfflowd.ops import status
from tests.stage_stats import stats_record

NOW = 1_800_000_000.0


def proc(
    name: str, state: str = "RUNNING", pid: int = 100, start: float = NOW - 3725, starts: int = 1
) -> dict[str, Any]:
    return {
        "name": name,
        "group": "nfflowd",
        "statename": state,
        "pid": pid,
        "start": start,
        "starts": starts,
    }


def report(stage: str, counters: dict[str, int], **extra: Any) -> dict[str, Any]:
    return stats_record(stage, counters, pid=100, incarnation=9, time=NOW - 2) | extra


PROCS = [proc("ingest", pid=11), proc("correlate", pid=12),
         proc("export", state="BACKOFF", pid=0, starts=3), proc("mirror", pid=14)]  # fmt: skip
STATS = {
    "ingest": report("ingest", {"events": 1000, "events_unacked": 2, "malformed_lines": 1}),
    "correlate": report("correlate", {"new": 600, "destroy": 400, "records": 900, "open": 200,
                                      "malformed_bad_event": 2, "flows.export_unacked": 3}),
    "export": report("export", {"records": 900, "c0_datagrams_sent": 30, "c1_datagrams_sent": 31,
                                "c0_send_errors": 4, "c0_records": 900}, starts=2),
    "mirror": report("mirror", {"lines": 900, "d0_pending": 5, "d0_send_errors": 1}),
}  # fmt: skip


def test_rows_merge_supervisord_state_with_reports() -> None:
    rows = {r["stage"]: r for r in status.rows(PROCS, STATS, NOW)}
    assert list(rows) == ["ingest", "correlate", "export", "mirror"]
    assert rows["ingest"]["statename"] == "RUNNING" and rows["ingest"]["pid"] == 11
    assert rows["ingest"]["uptime"] == 3725
    assert rows["export"]["uptime"] == 0 and rows["export"]["pid"] is None  # not running
    assert rows["export"]["starts"] == 3 and rows["export"]["restarts"] == 2
    assert rows["ingest"]["report"] == {
        "pid": 100,
        "incarnation": 9,
        "token": "stats",
        "time": NOW - 2,
        "age": 2.0,
    }
    assert rows["correlate"]["counters"]["records"] == 900


def test_rows_without_supervisord_or_reports() -> None:
    stats = {s: report(s, {"lines": 3}, token="final") for s in ("mirror", "ingest")}
    rows = status.rows(None, stats, NOW)
    assert [r["stage"] for r in rows] == ["ingest", "mirror"]  # pipeline order
    assert all(r["statename"] is None and r["uptime"] == 0 for r in rows)
    assert rows[1]["report"]["token"] == "final" and rows[1]["counters"] == {"lines": 3}
    assert status.rows(None, {}, NOW) == []
    # a host that runs part of the pipeline: its stages, one without a report yet
    part = status.rows([proc("export"), proc("mirror")], {"mirror": report("mirror", {})}, NOW)
    assert [(r["stage"], r["report"] is None) for r in part] == [
        ("export", True),
        ("mirror", False),
    ]
    # a stage nfflowd does not know yet still gets a row, after the pipeline
    extra = status.rows([proc("ingest")], {"shaper": report("shaper", {"x": 1})}, NOW)
    assert [r["stage"] for r in extra][-1] == "shaper"


def test_table_shows_key_columns_then_every_counter() -> None:
    rows = status.rows(PROCS, STATS, NOW)
    metrics = {"listen": "127.0.0.1:9464", "statename": "RUNNING"}
    text = status.table("/run/nfflowd", True, rows, metrics)
    lines = text.splitlines()
    assert lines[0] == "nfflowd is running (run directory /run/nfflowd)"
    assert lines[1].split() == [
        "STAGE",
        "STATE",
        "PID",
        "UPTIME",
        "RESTARTS",
        "UNACKED",
        "DROPPED",
        "REPORT",
        "SUMMARY",
    ]
    by_stage = {ln.split()[0]: ln for ln in lines[2:6]}
    assert by_stage["ingest"].split()[:7] == ["ingest", "RUNNING", "11", "1h02m", "0", "2", "1"]
    assert "events 1000" in by_stage["ingest"] and "2s ago" in by_stage["ingest"]
    assert by_stage["correlate"].split()[5:7] == ["3", "2"]  # unacked, dropped
    assert "events 1000, records 900, open 200" in by_stage["correlate"]
    assert by_stage["export"].split()[:5] == ["export", "BACKOFF", "-", "-", "2"]
    assert "records 900, datagrams 61, send errors 4" in by_stage["export"]
    assert "records 900, pending 5, send errors 1" in by_stage["mirror"]
    assert "metrics endpoint http://127.0.0.1:9464/metrics (RUNNING)" in text
    # then all counters, stage by stage, wrapped
    rest = lines[lines.index("export:") + 1]
    assert rest.startswith("  c0_datagrams_sent=30 c0_records=900 c0_send_errors=4")
    assert all(len(ln) <= status.WIDTH for ln in lines[lines.index("ingest:") :])


def test_table_when_not_running() -> None:
    assert status.table("/r", False, status.rows(None, {}, NOW), {}) == (
        "nfflowd is not running (run directory /r)\n"
    )
    stats = {"export": report("export", {"records": 7}, token="final")}
    text = status.table("/r", False, status.rows(None, stats, NOW), {})
    assert "not running" in text and "last reports of its stages:" in text
    export = next(ln for ln in text.splitlines() if ln.startswith("export "))
    assert export.split()[1] == "down" and "(final)" in export and "records 7" in export
    running = status.table("/r", True, status.rows([proc("ingest")], stats, NOW), {})
    ingest = next(ln for ln in running.splitlines() if ln.startswith("ingest "))
    assert ingest.split()[-1] == "none"  # no report yet


def test_json_document_is_plain_json() -> None:
    rows = status.rows(PROCS, STATS, NOW)
    doc = json.loads(json.dumps(status.document("/r", True, rows, {"listen": None})))
    assert doc["running"] is True and doc["rundir"] == "/r"
    assert doc["stages"][2]["statename"] == "BACKOFF"
    assert doc["stages"][3]["counters"]["d0_pending"] == 5


def test_uptime_text() -> None:
    assert [status.uptime_text(s) for s in (0, 9, 75, 3725, 90061)] == [
        "-",
        "9s",
        "1m15s",
        "1h02m",
        "1d01h",
    ]


def test_shards_sit_with_their_stage_and_are_summarised_like_it() -> None:
    names = ("mirror", "correlate-1", "ingest", "correlate-0", "export-0")
    stats = {n: {"counters": {"records": 5}, "time": 0.0} for n in names}
    shown = [r["stage"] for r in status.rows(None, stats, now=1.0)]
    assert shown == ["ingest", "correlate-0", "correlate-1", "export-0", "mirror"]
    assert status.summary("correlate-1", {"new": 2, "destroy": 3, "records": 5}).startswith(
        "events 5, records 5"
    )
