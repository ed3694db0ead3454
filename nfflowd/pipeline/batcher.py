"""Batches by time as well as size: what makes the per-batch costs cost nothing per event.

Every batch pays the same fixed costs wherever it goes: an envelope to encode and
decode, two ZeroMQ hops, an acknowledgement back, a position stored, a loop turn
in four processes.  When each kernel event became its own batch (an idle-ish
firewall reads one event per wake-up), those costs were most of nfflowd's CPU at
everyday rates.  So ingest holds events until one of:

* the batch has ``max_events`` events or ``max_bytes`` bytes (a flood: full batches);
* its oldest event has waited ``linger_s`` (a quiet firewall: a batch every
  ``linger_s`` at most, however few events it has).

``linger_s`` bounds the latency it adds (``<source> linger_ms``, default 50 ms:
a record reaches the collector well within the 250 ms the latency target allows),
and the rest of the pipeline forwards each batch at once (one flow batch per
event batch), so there is one place that decides how events are grouped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Batcher:
    """Accumulates a payload (bytes) and says when it is due (see the module docstring)."""

    linger_s: float = 0.05
    max_events: int = 2048
    max_bytes: int = 512 << 10
    data: bytearray = field(default_factory=bytearray)
    count: int = 0
    first_at: float = 0.0  # monotonic time of the oldest event held

    def added(self, n: int, now: float | None = None) -> None:
        """*n* events were appended to :attr:`data`."""
        if n and not self.count:
            self.first_at = time.monotonic() if now is None else now
        self.count += n

    def room(self) -> int:
        """How many more events the batch may take."""
        return max(0, self.max_events - self.count)

    def full(self) -> bool:
        return self.count >= self.max_events or len(self.data) >= self.max_bytes

    def due(self, now: float | None = None) -> bool:
        if not self.count:
            return False
        if self.full():
            return True
        return (time.monotonic() if now is None else now) - self.first_at >= self.linger_s

    def wait_s(self, now: float | None = None) -> float:
        """How long until the batch is due by time (the poll timeout), 0 when due."""
        if not self.count:
            return self.linger_s
        left = self.first_at + self.linger_s - (time.monotonic() if now is None else now)
        return max(0.0, left)

    def take(self) -> tuple[bytes, int]:
        """The batch's bytes and events; the batcher is empty afterwards."""
        out = (bytes(self.data), self.count)
        self.data.clear()
        self.count = 0
        return out
