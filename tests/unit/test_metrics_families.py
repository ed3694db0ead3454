"""Stage counters -> Prometheus families (nfflowd.outputs.prometheus), without HTTP; stats files."""

from __future__ import annotations

import configparser
import json
import os
import re
import signal
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from nfflowd.config import dump_resolved, load
from nfflowd.ops import control
from nfflowd.outputs import prometheus
from nfflowd.outputs.mirror import make_dispatchers
from nfflowd.pipeline.stage import STATS_DIR, Stage, read_stats, stats_path, write_stats
from tests.stage_stats import stats_record

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000.0
TARGETS: prometheus.Targets = {
    "c": [{"collector": "192.0.2.9:2055", "version": "9"}, {"collector": "[2001:db8::9]:4739",
                                                           "version": "10"}],
    "d": [{"dispatcher": "syslog", "kind": "syslog"}],
}  # fmt: skip


def record(stage: str, counters: dict[str, int], **extra: Any) -> dict[str, Any]:
    return stats_record(stage, counters, pid=4242, incarnation=7, time=NOW - 1) | extra


class _Fixed:
    def __init__(self, fams: list[Metric]) -> None:
        self.fams = fams

    def collect(self) -> Iterable[Metric]:
        return self.fams


def exposition(fams: list[Metric]) -> dict[str, Any]:
    """Render as Prometheus text and parse it back: {sample name: {labels: value}}, types."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(fams))
    text = generate_latest(registry).decode()
    out: dict[str, Any] = {"types": {}, "help": {}}
    for fam in text_string_to_metric_families(text):
        out["types"][fam.name] = fam.type
        out["help"][fam.name] = fam.documentation
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def lab(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


STATS = {
    "ingest": record("ingest", {"events": 1000, "lines": 1001,
                                "events_unacked": 3, "events_resent": 2, "enobufs": 4,
                                "peak_rss_kb": 2048, "starts": 2}, starts=2),
    "correlate": record("correlate", {"new": 500, "update": 7, "destroy": 493, "open": 7,
                                      "records": 1200, "newest_event_ms": 1_799_999_998_500,
                                      "events_duplicates": 5, "malformed_bad_event": 2,
                                      "malformed_lines": 1,
                                      "flows.export_unacked": 1, "flows.mirror_unacked": 0}),
    "export": record("export", {"records": 1200, "c0_datagrams_sent": 40, "c0_send_errors": 1,
                                "c1_datagrams_sent": 41, "c1_records": 1200,
                                "c1_paced": 300, "c1_held": 25,
                                "c2_datagrams_sent": 9, "flows.export_duplicates": 0,
                                "duplicate_records": 6, "brand_new_counter": 12}),
    "mirror": record("mirror", {"lines": 1200, "d0_pending": 17, "d0_send_errors": 3,
                                "d0_paced": 8},
                     token="final"),
}  # fmt: skip


def test_counters_get_conventional_names_labels_types_and_help() -> None:
    states = {s: {"statename": "RUNNING", "starts": 1} for s in ("ingest", "correlate")}
    states["export"] = {"statename": "BACKOFF", "starts": 3}
    got = exposition(prometheus.families(STATS, states, TARGETS, NOW))
    # stage level: supervisord's word on up; starts from whichever knows more
    assert got["nfflowd_stage_up"] == {
        lab(stage="ingest"): 1,
        lab(stage="correlate"): 1,
        lab(stage="export"): 0,
        lab(stage="mirror"): 0,
    }
    assert got["nfflowd_stage_starts_total"][lab(stage="ingest")] == 2
    assert got["nfflowd_stage_starts_total"][lab(stage="export")] == 3
    assert got["nfflowd_stage_peak_rss_bytes"][lab(stage="ingest")] == 2048 * 1024
    assert got["nfflowd_stage_last_report_timestamp_seconds"][lab(stage="mirror")] == NOW - 1
    # per stage
    assert got["nfflowd_source_events_total"] == {lab(stage="ingest"): 1000}
    assert got["nfflowd_source_enobufs_total"] == {lab(stage="ingest"): 4}
    events = got["nfflowd_correlate_events_total"]
    assert events[lab(stage="correlate", type="update")] == 7
    assert got["nfflowd_correlate_open_connections"] == {lab(stage="correlate"): 7}
    newest = got["nfflowd_correlate_newest_event_timestamp_seconds"][lab(stage="correlate")]
    assert newest == pytest.approx(NOW - 1.5)
    malformed = got["nfflowd_malformed_total"]
    assert malformed == {
        lab(stage="correlate", reason="event_line"): 1,
        lab(stage="correlate", reason="bad_event"): 2,
    }
    # links
    unacked = got["nfflowd_link_unacked_batches"]
    assert unacked[lab(stage="ingest", link="events")] == 3
    assert unacked[lab(stage="correlate", link="flows.export")] == 1
    assert got["nfflowd_link_duplicate_batches_total"][lab(stage="correlate", link="events")] == 5
    # collectors by address and version; an index the settings do not know keeps its number
    sent = got["nfflowd_export_datagrams_sent_total"]
    assert sent == {
        lab(stage="export", collector="192.0.2.9:2055", version="9"): 40,
        lab(stage="export", collector="[2001:db8::9]:4739", version="10"): 41,
        lab(stage="export", collector="#2", version=""): 9,
    }
    assert got["nfflowd_export_collector_records_total"] == {
        lab(stage="export", collector="[2001:db8::9]:4739", version="10"): 1200
    }
    assert got["nfflowd_mirror_pending_lines"] == {
        lab(stage="mirror", dispatcher="syslog", kind="syslog"): 17
    }
    # pacing: what each collector's pace held back (a counter) and holds now (a gauge)
    v10 = lab(stage="export", collector="[2001:db8::9]:4739", version="10")
    assert got["nfflowd_export_paced_datagrams_total"] == {v10: 300}
    assert got["nfflowd_export_held_datagrams"] == {v10: 25}
    assert got["types"]["nfflowd_export_held_datagrams"] == "gauge"
    assert got["nfflowd_mirror_paced_lines_total"] == {
        lab(stage="mirror", dispatcher="syslog", kind="syslog"): 8
    }
    assert got["nfflowd_duplicate_records_total"] == {lab(stage="export"): 6}
    # an unknown counter is still served, untyped, with its stage in the name
    assert got["types"]["nfflowd_export_brand_new_counter"] == "unknown"
    assert got["nfflowd_export_brand_new_counter"] == {lab(stage="export"): 12}
    # "starts" is only nfflowd_stage_starts_total
    assert "nfflowd_ingest_starts" not in got
    # counters are counters, gauges gauges, and every family says what it is
    assert got["types"]["nfflowd_export_datagrams_sent"] == "counter"
    assert got["types"]["nfflowd_link_unacked_batches"] == "gauge"
    assert all(got["help"][name] for name in got["types"])


def test_up_without_supervisord_trusts_fresh_reports_only() -> None:
    fresh = record("export", {}, time=NOW - 2)
    assert prometheus.stage_up("export", fresh, None, NOW) == 1
    assert prometheus.stage_up("export", {**fresh, "time": NOW - 60}, None, NOW) == 0
    assert prometheus.stage_up("export", {**fresh, "token": "final"}, None, NOW) == 0
    assert prometheus.stage_up("export", None, None, NOW) == 0
    assert prometheus.stage_up("export", fresh, "FATAL", NOW) == 0
    # supervisord answered and does not list the stage: down, whatever the file says
    got = exposition(prometheus.families({"export": fresh}, {}, {}, NOW))
    assert got["nfflowd_stage_up"] == {lab(stage="export"): 0}
    # without supervisord's word every pipeline stage is reported, down without a report
    got = exposition(prometheus.families({"export": fresh}, None, {}, NOW))
    assert got["nfflowd_stage_up"] == {
        lab(stage="ingest"): 0,
        lab(stage="correlate"): 0,
        lab(stage="export"): 1,
        lab(stage="mirror"): 0,
    }


def test_a_host_running_part_of_the_pipeline_reports_its_stages_only() -> None:
    states = {
        "export": {"statename": "RUNNING", "starts": 1},
        "mirror": {"statename": "RUNNING", "starts": 1},
    }
    stats = {"export": record("export", {"records": 3})}
    got = exposition(prometheus.families(stats, states, {}, NOW))
    assert got["nfflowd_stage_up"] == {lab(stage="export"): 1, lab(stage="mirror"): 1}
    assert set(got["nfflowd_stage_starts_total"]) == {lab(stage="export"), lab(stage="mirror")}


def test_every_family_name_is_conventional_and_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    names = [s.full_name for s in prometheus.all_specs()]
    assert len(names) == len(set(names))
    for spec in prometheus.all_specs():
        assert re.fullmatch(r"nfflowd_[a-z0-9_]+", spec.full_name), spec
        assert spec.full_name.endswith("_total") == (spec.kind == prometheus.COUNTER), spec
        assert spec.help and len(spec.help) < 90, spec
        assert f"`{spec.full_name}`" in readme, f"README lacks {spec.full_name}"


def test_target_labels_follow_the_settings_and_the_mirror_index(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text(
        "<export>\n  <collector>\n    address 192.0.2.9\n    port 2055\n    version 9\n"
        "  </collector>\n  <collector>\n    address 2001:db8::9\n    port 4739\n"
        "    version 10\n  </collector>\n</export>\n"
        "<ptee>\n  <conf>\n    dispatchers quiet\n    dispatchers screen\n"
        "    <quiet>\n      class Log::Dispatch::Screen\n      stderr 1\n"
        "      min_level warning\n    </quiet>\n"
        "    <screen>\n      class Log::Dispatch::Screen\n      stderr 1\n    </screen>\n"
        "  </conf>\n</ptee>\n"
    )
    settings = load(str(conf))
    targets = prometheus.target_labels(settings)
    assert targets["c"] == [
        {"collector": "192.0.2.9:2055", "version": "9"},
        {"collector": "[2001:db8::9]:4739", "version": "10"},
    ]
    # the mirror gives d<i> only to dispatchers that get flow lines: "quiet" has none
    assert len(make_dispatchers(settings)) == len(targets["d"]) == 1
    assert targets["d"] == [{"dispatcher": "screen", "kind": "screen"}]


def test_stats_files_are_written_whole_and_private(tmp_path: Path) -> None:
    (tmp_path / STATS_DIR).mkdir()
    path = stats_path(str(tmp_path), "export")
    write_stats(path, record("export", {"records": 1}))
    write_stats(path, record("export", {"records": 2}))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(tmp_path / STATS_DIR) == ["export.json"]  # no temp file left
    (tmp_path / STATS_DIR / "mirror.json").write_text('{"counters": ')  # torn: skipped
    (tmp_path / STATS_DIR / "other.json").write_text("[1, 2]")
    got = read_stats(str(tmp_path))
    assert list(got) == ["export"] and got["export"]["counters"] == {"records": 2}
    assert read_stats(str(tmp_path / "absent")) == {}


def test_stage_notify_keeps_its_latest_counters_in_the_stats_file(tmp_path: Path) -> None:
    dump_resolved(load(None), str(tmp_path / "settings.json"))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stage = Stage("export", ["--rundir", str(tmp_path)])
    try:
        stage.count_malformed("bad_record", "test", "here")
        stage.notify("stats", {"records": 5})
        stage.notify("final", {"records": 9})
    finally:
        stage.close()
        for s, h in handlers.items():
            signal.signal(s, h)
    rec = json.loads((tmp_path / STATS_DIR / "export.json").read_text())
    assert rec["token"] == "final" and rec["pid"] == os.getpid() and rec["starts"] == 1
    assert rec["incarnation"] == stage.incarnation
    assert rec["counters"]["records"] == 9 and rec["counters"]["malformed_bad_record"] == 1
    assert rec["counters"]["peak_rss_kb"] > 0


def test_metrics_program_is_rendered_only_when_listen_is_set(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text(
        f"<daemon>\n  rundir {tmp_path / 'run'}\n  statedir {tmp_path / 'state'}\n</daemon>\n"
    )
    plain = configparser.RawConfigParser()
    plain.read(control.prepare(load(str(conf)), str(tmp_path / "run")))
    assert "program:metrics" not in plain.sections()
    stale = tmp_path / "run" / STATS_DIR / "ingest.json"
    stale.write_text("{}")
    conf.write_text(conf.read_text() + "<metrics>\n  listen [::1]:9464\n</metrics>\n")
    parsed = configparser.RawConfigParser()
    parsed.read(control.prepare(load(str(conf)), str(tmp_path / "run")))
    prog = parsed["program:metrics"]
    assert prog["command"].endswith(f"-m nfflowd.workers.metrics --rundir {tmp_path / 'run'}")
    assert prog["autorestart"] == "true"
    # its own group: the pipeline's group line is the template's, untouched
    assert parsed["group:nfflowd"]["programs"] == plain["group:nfflowd"]["programs"]
    assert "metrics" not in parsed["group:nfflowd"]["programs"]
    assert not stale.exists()  # a new run does not start with the last run's reports


def test_coverage_gaps_are_counted_per_stage_in_seconds() -> None:
    stats = {
        "ingest": record("ingest", {"coverage_gaps": 2, "coverage_gap_ms": 3500}),
        "export": record("export", {"coverage_gaps": 1, "coverage_gap_ms": 250}),
    }
    got = exposition(prometheus.families(stats, None, TARGETS, NOW))
    assert got["types"]["nfflowd_coverage_gaps"] == "counter"
    assert got["nfflowd_coverage_gaps_total"][(("stage", "ingest"),)] == 2
    assert got["nfflowd_coverage_gap_seconds_total"] == {
        (("stage", "ingest"),): 3.5,
        (("stage", "export"),): 0.25,
    }
