"""Pacing: a token bucket in datagrams/s and bytes/s, per collector and per UDP syslog.

Why.  A collector's socket buffer is the only buffer between nfflowd and the
collector, and UDP has no flow control: what arrives while it is full is
dropped by the collector's kernel (``Udp: RcvbufErrors`` there), and nfflowd
cannot know.  The pipeline's own rate is moderate, but after an export restart
correlate resends every unacknowledged batch at once (up to ``max_unacked``
of them, thousands of datagrams), and an unpaced exporter sends them as fast as
Python can: measured, 10 % of the records of a chaos run were lost by an
nfcapd with its default buffer (``net.core.rmem_default``, 208 KiB: 92 full v5
datagrams).

How.  Each destination has a :class:`Pace`: tokens for datagrams (``max_rate``
per second) and for bytes (``max_byte_rate`` per second), each bucket holding
at most :data:`BURST_S` worth, so a burst that goes at once stays a small part
of a default collector buffer.  A datagram leaves when both buckets have a
token (the byte bucket may go into debt by one datagram, so any size can
leave); otherwise it stays in the sender's queue, and :meth:`Pace.wait` tells
how long until the next one may go.  The terminal stage's loop
(:mod:`nfflowd.pipeline.sink`) wakes at that time instead of its 100 ms
polling, so the datagrams leave steadily, a few at a time, not as 100 ms of
tokens in one burst.

What it costs.  Held datagrams are records not yet delivered: the sink reports
them as pending, and their batch is acknowledged only once they have left.  A
pace below what the pipeline produces is backpressure through the
acknowledgements (correlate stops at ``max_unacked``, then ingest), never a
drop.  The default rate (``<export> max_rate``, :class:`nfflowd.config.ExportSettings`)
and how it was chosen: README, "Pacing".
"""

from __future__ import annotations

import time

#: A bucket holds this long a run of tokens: the largest burst after a pause.
BURST_S = 0.004

#: Tokens short by less than this many seconds' worth count as there: ``now -
#: stamp`` on a monotonic clock of hours loses its last bits (about 1e-11 s), and
#: a datagram due at ``stamp + 1/rate`` must not wait another loop turn for that.
EPSILON_S = 1e-6


class Pace:
    """A token bucket: at most *rate* datagrams/s and *byte_rate* bytes/s (0: no limit)."""

    def __init__(self, rate: int, byte_rate: int = 0, *, burst_s: float = BURST_S) -> None:
        if rate < 0 or byte_rate < 0:
            raise ValueError(f"pace {rate}/s, {byte_rate} B/s: must not be negative")
        self.rate = rate
        self.byte_rate = byte_rate
        self.capacity = max(1.0, rate * burst_s)
        self.byte_capacity = byte_rate * burst_s
        self.tokens = self.capacity
        self.byte_tokens = self.byte_capacity
        self.stamp = time.monotonic()

    @property
    def unlimited(self) -> bool:
        return not (self.rate or self.byte_rate)

    def _refill(self, now: float) -> None:
        elapsed = now - self.stamp
        if elapsed <= 0:
            return
        self.stamp = now
        if self.rate:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        if self.byte_rate:
            self.byte_tokens = min(self.byte_capacity, self.byte_tokens + elapsed * self.byte_rate)

    def take(self, size: int, now: float) -> bool:
        """Spend the tokens of one datagram of *size* bytes; False (nothing spent) when
        it must wait."""
        if not (self.rate or self.byte_rate):
            return True
        self._refill(now)
        if (self.rate and self.tokens < 1.0 - EPSILON_S * self.rate) or (
            self.byte_rate and self.byte_tokens < -EPSILON_S * self.byte_rate
        ):
            return False
        self.tokens -= 1.0
        self.byte_tokens -= size
        return True

    def wait(self, now: float) -> float:
        """Seconds until the next datagram may go (0: now)."""
        if not (self.rate or self.byte_rate):
            return 0.0
        self._refill(now)
        wait = 0.0
        if self.rate and self.tokens < 1.0 - EPSILON_S * self.rate:
            wait = (1.0 - self.tokens) / self.rate
        if self.byte_rate and self.byte_tokens < -EPSILON_S * self.byte_rate:
            wait = max(wait, -self.byte_tokens / self.byte_rate)
        return wait
