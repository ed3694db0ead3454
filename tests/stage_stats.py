"""A stage's stats record, as ``Stage`` writes it to its stats file (read_stats)."""

from __future__ import annotations

from typing import Any


def stats_record(
    stage: str, counters: dict[str, int], *, pid: int, incarnation: int, time: float
) -> dict[str, Any]:
    """The record of *stage*'s ``stats`` notice at *time* (its first start) with *counters*."""
    record = {"stage": stage, "pid": pid, "incarnation": incarnation, "starts": 1}
    return record | {"time": time, "token": "stats", "counters": counters}
