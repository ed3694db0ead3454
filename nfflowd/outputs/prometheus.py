"""Stage counters -> Prometheus metric families.

:func:`families` is pure (no files, no sockets, no HTTP); :class:`StatsCollector`
feeds it from the run directory and supervisord at each scrape.

Every stage publishes a flat ``name -> int`` map of counters (its notices,
kept in ``<rundir>/stats/<stage>.json`` by :meth:`nfflowd.pipeline.stage.Stage.notify`).
This module gives each counter its conventional Prometheus name (``nfflowd_``
prefix, ``_total`` for counters), its labels (stage, link, collector and
version, dispatcher and kind, event type, reason) and its HELP text.  The
metrics worker (``nfflowd.workers.metrics``) reads the files on each scrape and
serves :func:`families`; the tests call it directly.

A counter this module does not know yet is still exported, untyped, as
``nfflowd_<stage>_<counter>``, so a new counter is never silently invisible.
"""

from __future__ import annotations

import os
import re
import time
import xmlrpc.client
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    UnknownMetricFamily,
)

from nfflowd import topology
from nfflowd.config import ConfigError, load_resolved
from nfflowd.config.settings import Settings
from nfflowd.formats.syslog import FLOW_LINE_LEVEL, LEVELS
from nfflowd.pipeline import supervision
from nfflowd.pipeline.stage import SETTINGS_FILE, read_stats
from nfflowd.topology import STAGES

PREFIX = "nfflowd_"
#: Without supervisord's word, a stage whose last report is older than this is down.
STALE_S = 5.0
#: A dispatcher whose min_level is above FLOW_LINE_LEVEL (notice) gets no flow lines
#: and no ``d<i>_`` counters, so it takes no index.

COUNTER, GAUGE = "counter", "gauge"


@dataclass(frozen=True)
class Spec:
    """One metric family: name without prefix (and without ``_total``), type, HELP."""

    name: str
    kind: str
    help: str
    scale: float = 1.0

    @property
    def full_name(self) -> str:
        return PREFIX + self.name + ("_total" if self.kind == COUNTER else "")


def _c(name: str, text: str) -> Spec:
    return Spec(name, COUNTER, text)


def _g(name: str, text: str, scale: float = 1.0) -> Spec:
    return Spec(name, GAUGE, text, scale)


UP = _g("stage_up", "1 when supervisord runs the stage (RUNNING), else 0")
STARTS = _c("stage_starts", "Times supervisord started the stage (restarts = starts - 1)")
REPORTED = _g("stage_last_report_timestamp_seconds", "When the stage last published its counters")
EVENTS = _c("correlate_events", "Conntrack events correlated, by type (new, update, destroy)")
MALFORMED = _c("malformed", "Malformed inputs dropped, by reason")

Entry = tuple[tuple[str, str], tuple[Spec | None, dict[str, str]]]


def _k(stage: str, key: str, spec: Spec | None, **labels: str) -> Entry:
    return (stage, key), (spec, labels)


#: (stage, counter) -> (spec, fixed labels); stage "*" is any stage; spec None: not exported.
KEYS: dict[tuple[str, str], tuple[Spec | None, dict[str, str]]] = dict([
    _k("*", "starts", None),  # nfflowd_stage_starts_total
    _k("*", "peak_rss_kb", _g("stage_peak_rss_bytes", "Peak resident memory of the stage", 1024)),
    _k("*", "cpu_ms", Spec("stage_cpu_seconds", COUNTER, "CPU time (user + system) of the stage",
                           0.001)),
    _k("*", "duplicate_batches",
       _c("duplicate_batches", "Batches a restarted correlate recomputed, already delivered")),
    _k("*", "duplicate_records",
       _c("duplicate_records", "Records of those batches, dropped (not delivered twice)")),
    _k("*", "resumed_records",
       _c("resumed_records", "Records a killed predecessor had delivered, not sent again")),
    _k("*", "coverage_gaps",
       _c("coverage_gaps", "Coverage gaps journaled: intervals connections may have been missed")),
    _k("*", "coverage_gap_ms",
       Spec("coverage_gap_seconds", COUNTER, "Total length of the coverage gaps journaled",
            0.001)),
    _k("*", "coverage_journal_errors",
       _c("coverage_journal_errors", "Coverage journal records that could not be written")),
    _k("ingest", "events",
       _c("source_events", "Events (lines, netlink datagrams) read and sent to correlate")),
    _k("ingest", "datagrams", _c("source_datagrams", "Netlink datagrams read (netlink source)")),
    _k("ingest", "destroy_only",
       _g("source_destroy_only", "1: only DESTROY events are read (the kernel stamps times)")),
    _k("ingest", "program_stderr_lines",
       _c("source_program_stderr_lines", "Lines of the conntrack program's error output")),
    _k("ingest", "lines", _c("source_lines", "Event lines read (file and program sources)")),
    _k("ingest", "files", _c("source_files", "Saved event logs opened (file source)")),
    _k("ingest", "unreadable_files",
       _c("source_unreadable_files", "Saved event logs that could not be opened")),
    _k("ingest", "resumed_at_line",
       _g("source_resumed_at_line", "Line of the saved log a restarted ingest resumed at")),
    _k("ingest", "program_starts",
       _c("source_program_starts", "Starts of the conntrack program (program source)")),
    _k("ingest", "program_exits",
       _c("source_program_exits", "Exits of the conntrack program (it is restarted)")),
    _k("ingest", "enobufs",
       _c("source_enobufs", "Kernel event overruns (ENOBUFS): conntrack events were lost")),
    _k("ingest", "blind_ms",
       Spec("source_blind_seconds", GAUGE, "Time no ingest listened before this one started",
            0.001)),
    _k("ingest", "resyncs",
       _c("source_resyncs", "Kernel table re-dumps after an overrun (netlink source)")),
    _k("ingest", "dumped",
       _c("source_dumped_connections", "Connections read from kernel table dumps")),
    _k("correlate", "bad_attrs",
       _c("source_bad_attributes", "Netlink attributes of a wrong size, skipped (message kept)")),
    _k("correlate", "unknown_attrs",
       _c("source_unknown_attributes", "Netlink attributes of unknown type, skipped")),
    _k("ingest", "periodic_dumps",
       _c("source_periodic_dumps", "Kernel table dumps for the active timeout")),
    _k("ingest", "truncated_reads",
       _c("source_truncated_reads", "Netlink reads truncated by a too small buffer")),
    _k("correlate", "malformed_lines", MALFORMED, reason="event_line"),
    _k("correlate", "malformed_messages", MALFORMED, reason="netlink_message"),
    _k("correlate", "truncated_frames", MALFORMED, reason="netlink_frame"),
    _k("correlate", "invalid_events", MALFORMED, reason="event_value"),
    _k("correlate", "events",
       _c("correlate_decoded_events", "Conntrack events decoded from the event batches")),
    _k("correlate", "lines", None),  # the same as ingest's source_lines
    _k("correlate", "fast_decoded",
       _c("correlate_fast_decoded", "Netlink messages read by a compiled layout")),
    _k("correlate", "netlink_errors",
       _c("correlate_netlink_errors", "NLMSG_ERROR messages met in dumps")),
    _k("correlate", "new", EVENTS, type="new"),
    _k("correlate", "update", EVENTS, type="update"),
    _k("correlate", "destroy", EVENTS, type="destroy"),
    _k("correlate", "records", _c("correlate_records", "Flow records produced by correlate")),
    _k("correlate", "open",
       _g("correlate_open_connections", "Connections open in correlate's table")),
    _k("correlate", "purged",
       _c("correlate_purged", "Open connections dropped after the ttl without a DESTROY")),
    _k("correlate", "destroy_without_new",
       _c("correlate_destroy_without_new", "DESTROY events of connections never seen open")),
    _k("correlate", "new_duplicate",
       _c("correlate_new_duplicates", "NEW events of connections already open")),
    _k("correlate", "opened",
       _c("correlate_opened_nat_connections",
          "NATed connections reported when they opened (real-time NAT events)")),
    _k("correlate", "replayed",
       _c("correlate_replayed_events", "Events of connections already closed, ignored")),
    _k("correlate", "reread_events",
       _c("correlate_reread_events", "Events a restarted ingest read again, skipped")),
    _k("correlate", "report_state_full",
       _c("correlate_report_state_full", "Reports whose state was not kept (file full)")),
    _k("correlate", "interim_reports",
       _c("correlate_interim_reports", "Active-timeout reports of long connections")),
    _k("correlate", "newest_event_ms",
       _g("correlate_newest_event_timestamp_seconds",
          "Time of the newest event correlated (now minus this: the pipeline's lag)", 0.001)),
    _k("correlate", "pending_batches",
       _g("correlate_pending_batches",
          "Event batches whose records export and mirror have not all acknowledged")),
    _k("export", "records", _c("export_records", "Flow records received for export")),
    _k("mirror", "lines",
       _c("mirror_records", "Flow records mirrored (once, whatever the dispatchers)")),
    _k("mirror", "invalid", _c("mirror_invalid_records", "Flow records no line could be made of")),
])  # fmt: skip

#: export's ``c<i>_<counter>``: per collector (labels collector, version).
COLLECTOR_KEYS: dict[str, Spec] = {
    "records": _c("export_collector_records", "Flow records encoded for the collector"),
    "datagrams": _c("export_datagrams_encoded", "Datagrams encoded for the collector"),
    "datagrams_sent": _c("export_datagrams_sent", "Datagrams the kernel accepted for sending"),
    "bytes_sent": _c("export_bytes_sent", "Bytes of datagrams sent"),
    "send_errors": _c("export_send_errors", "Datagrams not sent (refused, buffer full, error)"),
    "refused": _c("export_refused", "ICMP port unreachable from the collector (is it down?)"),
    "paced": _c("export_paced_datagrams", "Datagrams held back by the collector's pace (max_rate)"),
    "held": _g("export_held_datagrams", "Datagrams waiting for the pace or a refusing collector"),
    "refused_lost": _c(
        "export_refused_lost_datagrams", "Datagrams refused after they had gone (a late ICMP)"
    ),
    "dropped": _c(
        "export_dropped_datagrams", "Datagrams dropped: the collector refused for refused_hold s"
    ),
    "gaps_dropped": _c(
        "export_gap_datagrams_dropped", "Coverage gap datagrams not delivered (send error, refused)"
    ),
    "unbound_source": _c("export_unbound_source", "Sends from a source address not on the host"),
    "resolve_errors": _c("export_resolve_errors", "Failed look-ups of the collector's name"),
    "skipped_ipv6": _c("export_skipped_ipv6_records", "IPv6 records NetFlow v5 cannot carry"),
    "invalid": _c("export_invalid_records", "Records that could not be encoded"),
    "template_sends": _c("export_template_sends", "Datagrams that carried templates (v9/IPFIX)"),
    "split": _c("export_split_records", "Extra v5 records for counters over 32 bits"),
    "clamped": _c("export_clamped_records", "v5 records whose start was moved into range"),
    "left_out": _c(
        "export_left_out_records",
        "Original-as-it-left records not sent (records per_direction, v9/IPFIX)",
    ),
}
#: mirror's ``d<i>_<counter>``: per dispatcher (labels dispatcher, kind).
DISPATCHER_KEYS: dict[str, Spec] = {
    "lines_sent": _c("mirror_lines_sent", "Lines delivered to the dispatcher's destination"),
    "send_errors": _c(
        "mirror_send_errors", "Failed delivery attempts (syslog keeps the lines, retries)"
    ),
    "buffered": _c("mirror_buffered_lines", "Lines held while the destination was unavailable"),
    "paced": _c("mirror_paced_lines", "Lines held back by a udp:// syslog's pace (max_rate)"),
    "dropped": _c("mirror_dropped_lines", "Lines dropped (buffer full or unsendable)"),
    "reconnects": _c("mirror_reconnects", "Reconnections to the destination"),
    "pending": _g("mirror_pending_lines", "Lines waiting for the destination (queue depth)"),
}
#: ``<link>_<counter>`` of a stage's links (label link: events, flows.export, flows.mirror).
LINK_KEYS: dict[str, Spec] = {
    "unacked": _g("link_unacked_batches", "Batches sent and not yet acknowledged end to end"),
    "resent": _c("link_resent_batches", "Batches resent to a restarted receiver"),
    "duplicates": _c("link_duplicate_batches", "Batches received twice, dropped"),
    "sender_restarts": _c("link_sender_restarts", "Restarts of the sending stage seen"),
    "stale": _c("link_stale_batches", "Batches of an older sender incarnation, dropped"),
    "reverted": _c(
        "link_reverted_senders",
        "Older sender incarnations taken back after the newer one fell silent",
    ),
    "reconnects": _c(
        "link_reconnects", "Reconnections after which unacknowledged batches went again"
    ),
}
_INDEXED = re.compile(r"^([cd])(\d+)_(\w+)$")
_LINK = re.compile(
    r"^(events|flows\.\w+)_(unacked|resent|duplicates|sender_restarts|stale|reverted|reconnects)$"
)
_SANITIZE = re.compile(r"[^a-zA-Z0-9_]")

#: Per kind of target, the label sets by index: {"c": [{"collector":…, "version":…}], "d": […]}.
Targets = Mapping[str, Sequence[Mapping[str, str]]]


def target_labels(settings: Settings) -> dict[str, list[dict[str, str]]]:
    """Labels of export's collectors (``c<i>``) and mirror's dispatchers (``d<i>``)."""
    collectors = [
        {
            "collector": (f"[{c.address}]" if ":" in c.address else c.address) + f":{c.port}",
            "version": str(c.version),
        }
        for c in settings.export.collectors
    ]
    dispatchers = [
        {"dispatcher": d.name, "kind": d.kind}
        for d in settings.mirror.dispatchers
        if LEVELS[d.min_level] >= LEVELS[FLOW_LINE_LEVEL]
    ]
    return {"c": collectors, "d": dispatchers}


def describe(stage: str, key: str, targets: Targets) -> tuple[Spec, dict[str, str]] | None:
    """The family and labels of one stage counter (None: not exported on its own).

    A shard (``correlate-1``, nfflowd.pipeline.shards) has its stage's families; its
    ``stage`` label is the process name."""
    base = topology.stage_of(stage)
    for k in ((base, key), ("*", key)):
        if k in KEYS:
            spec, fixed = KEYS[k]
            return None if spec is None else (spec, {"stage": stage, **fixed})
    m = _INDEXED.match(key)
    table = {"c": COLLECTOR_KEYS, "d": DISPATCHER_KEYS}
    if m and m[3] in table[m[1]] and (base, m[1]) in (("export", "c"), ("mirror", "d")):
        index = int(m[2])
        known = targets.get(m[1], ())
        if index < len(known):
            labels = dict(known[index])
        elif m[1] == "c":
            labels = {"collector": f"#{index}", "version": ""}
        else:
            labels = {"dispatcher": f"#{index}", "kind": ""}
        return table[m[1]][m[3]], {"stage": stage, **labels}
    m = _LINK.match(key)
    if m:
        return LINK_KEYS[m[2]], {"stage": stage, "link": m[1]}
    if key.startswith("malformed_"):
        return MALFORMED, {"stage": stage, "reason": key.removeprefix("malformed_")}
    name = _SANITIZE.sub("_", f"{stage}_{key}")
    return Spec(name, "unknown", f"Counter {key!r} of stage {stage} (not described yet)"), {
        "stage": stage
    }


def stage_up(stage: str, record: Mapping[str, Any] | None, state: str | None, now: float) -> int:
    """supervisord's word when there is one; else a fresh report from a stage not finished."""
    if state is not None:
        return int(state == "RUNNING")
    if record is None or record.get("token") == "final":
        return 0
    return int(now - float(record.get("time", 0)) <= STALE_S)


def families(
    stats: Mapping[str, Mapping[str, Any]],
    states: Mapping[str, Mapping[str, Any]] | None,
    targets: Targets,
    now: float,
) -> list[Metric]:
    """Every metric family for one scrape.

    *stats*: stage -> its stats record (``nfflowd.pipeline.stage.read_stats``); *states*:
    stage -> supervisord's process info (``statename``, ``starts``) of the stages it
    runs, or None when it did not answer (then every pipeline stage is reported);
    *targets*: :func:`target_labels`.
    """
    out: dict[str, CounterMetricFamily | GaugeMetricFamily | UnknownMetricFamily] = {}
    label_names: dict[str, tuple[str, ...]] = {}

    def add(spec: Spec, labels: Mapping[str, str], value: float) -> None:
        name = spec.full_name
        if name not in out:
            maker = {COUNTER: CounterMetricFamily, GAUGE: GaugeMetricFamily}.get(spec.kind)
            make = UnknownMetricFamily if maker is None else maker
            out[name] = make(PREFIX + spec.name, spec.help, labels=list(labels))
            label_names[name] = tuple(labels)
        names = label_names[name]
        out[name].add_metric([labels.get(n, "") for n in names], value * spec.scale)

    # the stages of this host: those supervisord runs (<daemon> stages may name a part)
    present = set(stats) | set(STAGES if states is None else states)
    for stage in [s for s in STAGES if s in present] + sorted(present - set(STAGES)):
        record = stats.get(stage)
        info = None if states is None else states.get(stage)
        state = None
        if states is not None:  # supervisord answered: a stage it does not list is not up
            state = str(info["statename"]) if info else "ABSENT"
        add(UP, {"stage": stage}, stage_up(stage, record, state, now))
        starts = max(int((info or {}).get("starts", 0)), int((record or {}).get("starts", 0)))
        add(STARTS, {"stage": stage}, starts)
        if record is None:
            continue
        add(REPORTED, {"stage": stage}, float(record.get("time", 0)))
        for key, value in sorted(record["counters"].items()):
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            found = describe(stage, key, targets)
            if found is not None:
                add(found[0], found[1], value)
    return list(out.values())


def all_specs() -> Iterable[Spec]:
    """Every family this module can produce (for documentation and its test)."""
    seen: dict[str, Spec] = {}
    tables: list[Iterable[Spec | None]] = [
        [UP, STARTS, REPORTED],
        (spec for spec, _ in KEYS.values()),
        COLLECTOR_KEYS.values(),
        DISPATCHER_KEYS.values(),
        LINK_KEYS.values(),
    ]
    for table in tables:
        for spec in table:
            if spec is not None:
                seen.setdefault(spec.full_name, spec)
    return seen.values()


class StatsCollector:
    """A prometheus-client collector that reads the run directory at each scrape."""

    def __init__(self, rundir: str) -> None:
        self.rundir = rundir

    def states(self) -> dict[str, dict[str, Any]] | None:
        """supervisord's view of the stages (None when it does not answer)."""
        try:
            return {p["name"]: p for p in supervision.processes(self.rundir)}
        except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
            return None

    def collect(self) -> Iterable[Metric]:
        try:
            settings = load_resolved(os.path.join(self.rundir, SETTINGS_FILE))
            targets: Targets = target_labels(settings)
        except ConfigError:
            targets = {}  # counters keep index labels (collector="#0")
        return families(read_stats(self.rundir), self.states(), targets, time.time())
