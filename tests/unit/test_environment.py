"""What ``nfflowd check`` says about the netlink source's subscription and its cost."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from nfflowd import config
from nfflowd.config import Collector, Settings, SourceSettings
from nfflowd.ops.environment import subscription_finding

ON = {"nf_conntrack_acct": "1", "nf_conntrack_timestamp": "1", "nf_conntrack_events": "1"}
NO_TIMESTAMPS = {**ON, "nf_conntrack_timestamp": "0"}


def settings(realtime: bool = False, **source: object) -> Settings:
    base = config.load(None)
    collectors = (Collector("203.0.113.9", 2055, 10, nat_events=True, nat_realtime=True),)
    export = dataclasses.replace(base.export, collectors=collectors if realtime else ())
    return dataclasses.replace(base, source=SourceSettings(**source), export=export)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("source", "sysctls", "level", "says"),
    [
        ({}, ON, "ok", "DESTROY events only"),
        ({}, NO_TIMESTAMPS, "warning", "NEW and DESTROY events"),
        ({"set_sysctls": True}, NO_TIMESTAMPS, "ok", "set_sysctls 1 turns them on"),
        ({"subscribe": "all"}, ON, "note", "subscribe all"),
        ({"realtime": True}, ON, "note", "real-time NAT events"),
    ],
)
def test_the_subscription_and_its_cost_are_stated(
    source: dict[str, Any], sysctls: dict[str, str | None], level: str, says: str
) -> None:
    got_level, text = subscription_finding(settings(**source), sysctls)
    assert (got_level, says in text) == (level, True), text
    if "NEW and DESTROY" in text:
        assert "twice the events" in text and "table of open connections" in text
