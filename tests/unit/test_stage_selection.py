"""``<daemon> stages``: the rendered supervisord.conf runs only this host's stages."""

from __future__ import annotations

import configparser
import dataclasses
from pathlib import Path

import pytest

from nfflowd import config, topology
from nfflowd.config.settings import LinkAddress, LinkSettings
from nfflowd.ops import control
from nfflowd.ops.replay import replay_settings


def parsed(text: str) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    cp.read_string(text)
    return cp


def programs(cp: configparser.RawConfigParser) -> list[str]:
    return [s.removeprefix("program:") for s in cp.sections() if s.startswith("program:")]


def test_all_stages_render_the_template_unchanged(tmp_path: Path) -> None:
    full = control.render(str(tmp_path))
    assert control.select_stages(full, topology.STAGES) == full


@pytest.mark.parametrize(
    "stages",
    [("ingest",), ("correlate", "export", "mirror"), ("export",), ("ingest", "mirror")],
)
def test_only_the_selected_programs_remain(tmp_path: Path, stages: tuple[str, ...]) -> None:
    full = control.render(str(tmp_path))
    cp = parsed(control.select_stages(full, stages))
    assert sorted(programs(cp)) == sorted(stages)
    assert sorted(cp.get("group:nfflowd", "programs").split(",")) == sorted(stages)
    # the rest of the file is untouched, program sections keep every line
    everything = parsed(full)
    for section in ("unix_http_server", "supervisord", "rpcinterface:supervisor", "supervisorctl"):
        assert dict(cp[section]) == dict(everything[section])
    for stage in stages:
        assert dict(cp[f"program:{stage}"]) == dict(everything[f"program:{stage}"])


def test_other_programs_are_kept(tmp_path: Path) -> None:
    """Programs that are not stages (added by other features) are left alone."""
    text = (
        control.render(str(tmp_path)).replace(
            "programs=export,mirror,correlate,ingest",
            "programs=export,mirror,correlate,ingest,extra",
        )
        + "\n[program:extra]\ncommand=/bin/true\n"
    )
    cp = parsed(control.select_stages(text, ("ingest",)))
    assert programs(cp) == ["ingest", "extra"]
    assert cp.get("group:nfflowd", "programs") == "ingest,extra"


def test_prepare_writes_the_selection(tmp_path: Path) -> None:
    s = config.load(None)
    state = str(tmp_path / "state")  # not the host's /var/lib/nfflowd
    s = dataclasses.replace(
        s, daemon=dataclasses.replace(s.daemon, stages=("ingest",), statedir=state)
    )
    conf = control.prepare(s, str(tmp_path / "run"))
    cp = parsed(Path(conf).read_text())
    assert programs(cp) == ["ingest"] and cp.get("group:nfflowd", "programs") == "ingest"


def test_a_replay_runs_every_stage_here_whatever_the_split(tmp_path: Path) -> None:
    """A host configured for only part of a split pipeline still replays through all four."""
    log = tmp_path / "events.log"
    log.write_text("")
    base = config.load(None)
    split = dataclasses.replace(
        base,
        daemon=dataclasses.replace(base.daemon, stages=("ingest",)),
        links=LinkSettings((LinkAddress("events", "tcp://203.0.113.1:5701"),), "/keys"),
    )
    replayed = replay_settings(split, [str(log)])
    assert replayed.daemon.stages == ("ingest", "correlate", "export", "mirror")
    assert replayed.links.address("events") is None
    assert replayed.source.type == "file"
