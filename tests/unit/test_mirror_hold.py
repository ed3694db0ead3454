"""The mirror's syslog FIFO holds every line backpressure can leave waiting.

During a syslog outage the mirror holds lines; upstream, correlate stops at
``max_unacked`` unacknowledged flow batches per correlator.  A FIFO smaller than
what those batches can hold dropped the oldest lines before backpressure could
stop the pipeline (a chaos run lost 71,731 lines with the fixed 100,000)."""

from __future__ import annotations

import dataclasses

from nfflowd import config
from nfflowd.outputs.mirror import held_bound, make_dispatchers
from nfflowd.outputs.syslog import SyslogDispatcher
from nfflowd.pipeline.batcher import Batcher


def test_the_fifo_holds_every_unacknowledged_batch_line() -> None:
    base = config.load(None)
    for correlators, max_unacked in ((1, 64), (4, 64), (1, 1)):
        daemon = dataclasses.replace(base.daemon, correlators=correlators, max_unacked=max_unacked)
        settings = dataclasses.replace(base, daemon=daemon)
        need = correlators * max_unacked * Batcher.max_events * 3
        assert held_bound(settings) >= max(need, 100_000)
        syslogs = [d for _, d in make_dispatchers(settings) if isinstance(d, SyslogDispatcher)]
        assert syslogs and all(d.max_buffer == held_bound(settings) for d in syslogs)
