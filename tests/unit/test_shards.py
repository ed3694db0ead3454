"""Shard routing is stable, keeps each connection's events together, and renders numprocs."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from nfflowd import config, topology
from nfflowd.conntrack.payloads import line_ct_id, split
from nfflowd.conntrack.text import ParseError, parse_line
from nfflowd.lab.events import generate
from nfflowd.messages import Payload
from nfflowd.ops import control
from nfflowd.pipeline import endpoints, shards
from tests.conntrack_events import numbered_event as event

DATA_TEXT = Path(__file__).resolve().parent.parent / "data" / "conntrack-text"


def test_a_connection_always_meets_the_same_correlator() -> None:
    for n in (1, 2, 3, 4):
        for i in range(500):
            new, destroy = event(i, None, 1), event(i, None, 3)._replace(time_ns=2 * 10**18)
            assert shards.shard_of(new, n) == shards.shard_of(destroy, n)
            with_id = event(i, 7000 + i)
            assert shards.shard_of(with_id, n) == (7000 + i) % n


def test_shards_are_balanced_and_the_split_keeps_order() -> None:
    events = [event(i, None) for i in range(4000)]
    parts = shards.split(events, 4)
    assert sum(map(len, parts)) == 4000
    assert all(800 < len(p) < 1200 for p in parts), [len(p) for p in parts]
    for p in parts:
        assert p == sorted(p, key=lambda e: e.time_ns)


def test_the_tuple_hash_is_the_same_in_another_process() -> None:
    """Python's hash() is salted per process; the shard must not be (a restarted ingest)."""
    import subprocess
    import sys

    code = (
        "from tests.conntrack_events import numbered_event as event;"
        "from nfflowd.pipeline import shards;"
        "print([shards.shard_of(event(i, None), 3) for i in range(50)])"
    )
    root = Path(__file__).resolve().parents[2]
    outs = set()
    for seed in (1, 2):
        env = {"PYTHONHASHSEED": str(seed), "PATH": "/usr/bin"}
        run = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            cwd=root,
        )
        outs.add(run.stdout)
    assert len(outs) == 1 and outs.pop().strip() == str(
        [shards.shard_of(event(i, None), 3) for i in range(50)]
    )


def test_links_names_and_exporter_assignment() -> None:
    assert [topology.link("events", i) for i in range(3)] == ["events", "events.1", "events.2"]
    assert topology.base_link("flows.export.2") == "flows.export"
    assert topology.base_link("flows.export") == "flows.export"
    assert topology.correlators_of(0, 4, 2) == [0, 2] and topology.correlators_of(1, 4, 2) == [1, 3]
    assert endpoints.endpoint("flows.export.2").filename == "flows-export-2.ipc"
    assert endpoints.endpoint("events").filename == "events.ipc"
    assert endpoints.address("/r", "events.3") == "ipc:///r/events-3.ipc"
    assert topology.stage_of("correlate-3") == "correlate"
    assert topology.stage_of("mirror") == "mirror"


def test_supervisord_programs_get_numprocs(tmp_path: Path) -> None:
    text = shards.programs(control.render(str(tmp_path)), 4, 2)
    conf = configparser.RawConfigParser()
    conf.read_string(text)
    corr, exp = conf["program:correlate"], conf["program:export"]
    assert corr["numprocs"] == "4" and exp["numprocs"] == "2"
    assert corr["process_name"] == "%(program_name)s-%(process_num)d"
    assert corr["command"].endswith("--shard %(process_num)d")
    assert corr["stdout_logfile"].endswith("correlate-%(process_num)d.log")
    assert "numprocs" not in conf["program:mirror"] and "numprocs" not in conf["program:ingest"]
    assert shards.programs(control.render(str(tmp_path)), 1, 1) == control.render(str(tmp_path))


def test_config_keys_and_their_bounds(tmp_path: Path) -> None:
    good = tmp_path / "good.conf"
    good.write_text("<daemon>\n  correlators 3\n  exporters 2\n</daemon>\n")
    s = config.load(str(good))
    assert (s.daemon.correlators, s.daemon.exporters) == (3, 2)
    assert (config.load(None).daemon.correlators, config.load(None).daemon.exporters) == (1, 1)
    bad = tmp_path / "bad.conf"
    bad.write_text("<daemon>\n  correlators 2\n  exporters 3\n</daemon>\n")
    with pytest.raises(config.ConfigError, match="exporters"):
        config.load(str(bad))


def test_a_text_payload_is_split_where_shard_of_sends_each_event(tmp_path: Path) -> None:
    """Ingest splits a stateful source's batch without parsing the lines that end with their
    conntrack id (line_ct_id): every line lands where shard_of sends its parsed event."""
    log = tmp_path / "events.log"
    generate(str(log), 3000, seed=5)
    data = (
        log.read_bytes()
        + (DATA_TEXT / "events-acct-id-ktimestamp-labels-userspace.txt").read_bytes()
    )
    parts = split(Payload.TEXT, data, 3)
    assert sum(n for _, n in parts) == data.count(b"\n")
    for i, (part, _) in enumerate(parts):
        for text in part.decode().splitlines():
            try:
                ev = parse_line(text)
            except ParseError:
                ev = None
            assert (shards.shard_of(ev, 3) if ev is not None else 0) == i, text
    for line in data.splitlines():
        ct_id = line_ct_id(line)
        if ct_id is not None:
            ev = parse_line(line.decode())
            assert ev is not None and ev.ct_id == ct_id
