"""The Prometheus endpoint and `nfflowd status` on a real supervised pipeline.

nfflowd is started with `<metrics> listen 127.0.0.1:<port>` on a generated event
log; /metrics is scraped over HTTP until the log is delivered, then the source
is switched to a second log (`nfflowd reload` restarts ingest only) and scraped
again: the counters moved by exactly the second log's records, the restart is
counted, and `nfflowd status --json` agrees.  After `nfflowd stop` the endpoint
is gone and `status` exits 3.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nfflowd.lab.events import generate
from nfflowd.ops import control
from tests.pipeline_harness import GOLDEN, file_source, nfflowd, wait_all_running, write_config

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
STAGES = ("ingest", "correlate", "export", "mirror")


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> tuple[Samples, dict[str, str]]:
    """Every sample of /metrics by (name, labels), and each family's type."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples: Samples = {}
    types: dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), -1.0)


def scrape_until(port: int, done: Callable[[Samples], bool], timeout: float) -> Samples:
    deadline = time.monotonic() + timeout
    last: Samples = {}
    while time.monotonic() < deadline:
        try:
            last, _ = scrape(port)
        except (OSError, urllib.error.URLError):
            last = {}
        if last and done(last):
            return last
        time.sleep(0.5)
    raise AssertionError(f"metrics did not reach the expected state: {sorted(last.items())}")


def second_log(path: Path, events: int) -> int:
    """A log whose connections are new to correlate: other ids, later times."""
    expected = generate(str(path), events, seed=2, start_s=1_764_100_000)
    # the conntrack id ends the line (ICMP tuples have an `id=` of their own)
    text = re.sub(
        r" id=(\d+)$",
        lambda m: f" id={int(m[1]) + 10_000_000}",
        path.read_text(),
        flags=re.MULTILINE,
    )
    path.write_text(text)
    return expected


@pytest.fixture
def udp_sink() -> Iterator[int]:
    """A collector port that accepts datagrams and never reads them (no ICMP errors)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def config(tmp_path: Path, log: Path, collector: int, metrics_port: int) -> Path:
    return write_config(
        tmp_path / "run",
        file_source(log) + f"<metrics>\n  listen 127.0.0.1:{metrics_port}\n</metrics>\n",
        collector_port=collector,
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_metrics_endpoint_and_status_follow_the_pipeline(tmp_path: Path, udp_sink: int) -> None:
    events_a, events_b = 30_000, 10_000
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    records_a = generate(str(log_a), events_a)
    records_b = second_log(log_b, events_b)
    port = free_tcp_port()
    conf = config(tmp_path, log_a, udp_sink, port)
    run = tmp_path / "run"
    collector = {"stage": "export", "collector": f"127.0.0.1:{udp_sink}", "version": "5"}
    nfflowd("-c", str(conf), "start")
    try:
        wait_all_running(run)

        def delivered(n: int, events: int) -> Callable[[Samples], bool]:
            # the source's count too: a restarted ingest publishes it at its next notice,
            # which may come after the records it read have been delivered
            return lambda s: (
                value(s, "nfflowd_source_events_total", stage="ingest") == events
                and value(s, "nfflowd_export_records_total", stage="export") == n
                and value(s, "nfflowd_mirror_records_total", stage="mirror") == n
                and value(s, "nfflowd_link_unacked_batches", stage="ingest", link="events") == 0
            )

        first = scrape_until(port, delivered(records_a, events_a), 120)
        _, types = scrape(port)
        # every counter a stage publishes has a name, a type and a HELP text of its own
        assert not [n for n, t in types.items() if t in ("unknown", "untyped")], types
        for stage in STAGES:
            assert value(first, "nfflowd_stage_up", stage=stage) == 1
            assert value(first, "nfflowd_stage_starts_total", stage=stage) == 1
        assert value(first, "nfflowd_source_events_total", stage="ingest") == events_a
        new = value(first, "nfflowd_correlate_events_total", stage="correlate", type="new")
        destroy = value(first, "nfflowd_correlate_events_total", stage="correlate", type="destroy")
        assert new == destroy == events_a / 2
        assert value(first, "nfflowd_correlate_open_connections", stage="correlate") == 0
        assert value(first, "nfflowd_correlate_records_total", stage="correlate") == records_a
        # NetFlow v5 carries the IPv4 records; the IPv6 ones are counted as skipped
        v4 = value(first, "nfflowd_export_collector_records_total", **collector)
        v6 = value(first, "nfflowd_export_skipped_ipv6_records_total", **collector)
        assert v4 > 0 and v6 > 0 and v4 + v6 == records_a
        assert value(first, "nfflowd_export_datagrams_sent_total", **collector) > 0
        assert value(first, "nfflowd_export_send_errors_total", **collector) == 0
        lines = {"stage": "mirror", "dispatcher": "screen", "kind": "screen"}
        assert value(first, "nfflowd_mirror_lines_sent_total", **lines) == records_a

        # a second log: ingest alone restarts, the counters go on
        config(tmp_path, log_b, udp_sink, port)
        assert "restarted: ingest" in nfflowd("-c", str(conf), "reload").stdout
        second = scrape_until(port, delivered(records_a + records_b, events_b), 120)
        assert value(second, "nfflowd_stage_starts_total", stage="ingest") == 2
        for stage in ("correlate", "export", "mirror"):
            assert value(second, "nfflowd_stage_starts_total", stage=stage) == 1
        for stage in STAGES:
            assert value(second, "nfflowd_stage_up", stage=stage) == 1
        got = value(second, "nfflowd_export_records_total", stage="export")
        assert got - value(first, "nfflowd_export_records_total", stage="export") == records_b
        assert value(second, "nfflowd_source_events_total", stage="ingest") == events_b
        # (lines are decoded, and bad ones counted, by the correlator)
        assert value(second, "nfflowd_malformed_total", stage="correlate", reason="event_line") == 0
        new = value(second, "nfflowd_correlate_events_total", stage="correlate", type="new")
        assert new == (events_a + events_b) / 2

        res = nfflowd("-c", str(conf), "status", "--json")
        doc = json.loads(res.stdout)
        assert doc["running"] is True and doc["rundir"] == str(run)
        by_stage = {r["stage"]: r for r in doc["stages"]}
        assert list(by_stage) == list(STAGES)
        assert all(r["statename"] == "RUNNING" and r["pid"] for r in by_stage.values())
        assert by_stage["ingest"]["restarts"] == 1 and by_stage["export"]["restarts"] == 0
        assert by_stage["export"]["counters"]["records"] == records_a + records_b
        assert by_stage["mirror"]["counters"]["lines"] == records_a + records_b
        assert by_stage["ingest"]["report"]["pid"] == by_stage["ingest"]["pid"]
        assert doc["metrics"] == {"listen": f"127.0.0.1:{port}", "statename": "RUNNING"}
        table = nfflowd("-c", str(conf), "status").stdout
        assert f"records {records_a + records_b}" in table and "RUNNING" in table
    finally:
        nfflowd("-c", str(conf), "stop", check=False)
        if (run / "supervisor.sock").exists() and control.is_running(str(run)):
            control.stop(str(run), timeout=30)
    # stopped: the endpoint is gone with the stages, status says so and keeps their last word
    with pytest.raises(OSError):
        scrape(port)
    res = nfflowd("-c", str(conf), "status", "--json", check=False)
    assert res.returncode == 3
    doc = json.loads(res.stdout)
    assert doc["running"] is False
    final = {r["stage"]: r for r in doc["stages"]}
    assert all(final[s]["report"]["token"] == "final" for s in STAGES)
    assert final["export"]["counters"]["records"] == records_a + records_b
    text = nfflowd("-c", str(conf), "status", check=False)
    assert text.returncode == 3 and "nfflowd is not running" in text.stdout


def test_check_validates_the_metrics_address(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("<metrics>\n  listen localhost:9464\n</metrics>\n")
    res = nfflowd("-c", str(bad), "check", check=False)
    assert res.returncode == 1
    assert f"{bad}:2: key 'metrics.listen'" in res.stderr and "IP address" in res.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = int(busy.getsockname()[1])
        conf = config(tmp_path, GOLDEN / "lab-events.log", 9, port)
        out = nfflowd("-c", str(conf), "check", check=False).stdout
        assert f"warning  metrics endpoint http://127.0.0.1:{port}/metrics: cannot listen" in out
    out = nfflowd("-c", str(conf), "check", check=False).stdout
    assert f"ok       metrics endpoint http://127.0.0.1:{port}/metrics will be served" in out
    # status of a run directory nothing runs in
    res = nfflowd("-c", str(conf), "status", check=False)
    assert res.returncode == 3 and res.stdout.startswith("nfflowd is not running")
