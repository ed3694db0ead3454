"""Event batch -> flow block: the correlate stage's work, without its sockets.

One event batch (bytes, :class:`~nfflowd.messages.EventBatch`) becomes one block
of flow records (bytes, :data:`~nfflowd.messages.FLOW_RECORD`): the payload is
decoded here (:class:`~nfflowd.conntrack.payloads.PayloadDecoder`), the events
go through the :class:`~nfflowd.correlate.correlator.Correlator`, which packs
the records it completes straight into the block.  What a crash must not undo:

* a batch whose origin was fed already (a saved log re-read by a restarted
  ingest) makes no records again (``reread_events``): the records it made are
  on their way, and the terminal stages recognise the batch by its origin;
* with the active timeout, what was reported of each long connection survives in
  the report journal (:mod:`nfflowd.correlate.report_state`), and a batch fed
  again is fed from the state it found the first time.
"""

from __future__ import annotations

import logging
import os

from nfflowd.conntrack.payloads import PayloadDecoder, text_lines
from nfflowd.conntrack.text import new_line_key
from nfflowd.correlate.correlator import Correlator
from nfflowd.correlate.report_state import ReportJournal
from nfflowd.messages import EventBatch, EventType, Payload
from nfflowd.pipeline.delivery import Recent

log = logging.getLogger("nfflowd.correlate")
_DESTROY = EventType.DESTROY


class BatchCorrelator:
    """Turns the event batches of one correlator shard into flow blocks."""

    def __init__(
        self,
        ttl_s: int,
        active_timeout_s: int = 0,
        *,
        journal_path: str | None = None,
        remembered: int = 16384,
        nat_starts: bool = False,
    ) -> None:
        """*nat_starts*: real-time NAT events (an OPENED record per NATed NEW, see
        :mod:`nfflowd.correlate.correlator`)."""
        self.corr = Correlator(
            ttl_s=ttl_s, active_timeout_s=active_timeout_s, nat_starts=nat_starts
        )
        self.decoder = PayloadDecoder()
        # origins of the event batches fed to the table lately: a restarted ingest
        # re-reads at most max_unacked batches of a saved log
        self.processed = Recent(size=remembered)
        self.reread_events = 0
        self.events = 0  # decoded events fed
        self.journal: ReportJournal | None = None
        if active_timeout_s and journal_path is not None:
            # what the active timeout reported survives a crash (see report_state)
            self.journal = ReportJournal(journal_path)
            restored = self.journal.load()
            if restored:
                log.info("restored the report state of %d long connections", len(restored))
            for ct_id, state in restored.items():
                self.corr.open[ct_id] = state
            self.corr.journal = self.journal

    def records(self, batch: EventBatch) -> bytes:
        """The flow block of *batch* (b"" when it completes no connection)."""
        origin = batch.origin()
        if not self.processed.add(origin):
            self.reread_events += batch.n_events
            return b""
        if self.journal is not None:
            self.journal.origin = origin
            for ct_id, state in self.journal.revert(origin):  # fed again: as it was before
                self.corr.open[ct_id] = state
        if batch.payload == Payload.TEXT:
            return self._text(batch)
        if batch.payload == Payload.NETLINK:
            return self._netlink(batch)
        events = self.decoder.decode(batch.payload, batch.data, batch.where, batch.first_line)
        self.events += len(events)
        return self.corr.feed_block(events)

    def _netlink(self, batch: EventBatch) -> bytes:
        """Datagrams in order.  While the table is empty (DESTROY-only, no active timeout:
        nothing to look up), a DESTROY of a known layout goes from the picked values
        straight to records (:meth:`Correlator.destroyed`); anything else is decoded into
        events and fed."""
        out = bytearray()
        corr, decoder, data = self.corr, self.decoder, batch.data
        destroys = decoder.layouts.destroys
        feed, destroyed, datagram = corr.feed, corr.destroyed, decoder.datagram
        stateless = not corr.active_timeout_s
        fused = 0
        for recv_ns, pos, length in decoder.frames(data):
            if stateless and not corr.open:
                for layout in destroys.get(length, ()):
                    if (v := layout.values(data, pos)) is not None:
                        destroyed(v, layout.family, layout.icmp, recv_ns, out)
                        fused += 1
                        break
                else:
                    v = None
                if v is not None:
                    continue
            for ev in datagram(data, pos, length, recv_ns):
                feed(ev, out)
                self.events += 1
        decoder.read_in_place(fused)
        self.events += fused
        return bytes(out)

    def _text(self, batch: EventBatch) -> bytes:
        """Text lines in order; a NEW line that only opens a connection (it has a
        conntrack id) costs two numbers (:func:`new_line_key`), not a whole parse."""
        out = bytearray()
        corr, decoder = self.corr, self.decoder
        feed, opened, event = corr.feed, corr.opened, decoder.line_event
        where, first, fast = batch.where, batch.first_line, 0
        whole = corr.nat_starts  # a NEW's tuples tell whether NAT applies: parsed in full
        for i, line in enumerate(text_lines(batch.data)):
            key = None if whole else new_line_key(line)
            if key is not None:
                opened(*key)
                fast += 1
            elif (ev := event(line, where, first, i)) is not None:
                feed(ev, out)
                self.events += 1
        self.events += fast
        decoder.count_lines(fast)
        return bytes(out)

    def counters(self) -> dict[str, int]:
        c, corr = self.corr.counters, self.corr
        return {
            "events": self.events,
            "new": c.new,
            "destroy": c.destroy,
            "update": c.update,
            "records": c.records,
            "open": len(corr.open),
            "purged": c.purged,
            "destroy_without_new": c.destroy_without_new,
            "interim_reports": c.interim_reports,
            "new_duplicate": c.new_duplicate,
            "opened": c.opened,
            "replayed": c.replayed,
            "invalid_events": c.invalid,
            "reread_events": self.reread_events,
            "newest_event_ms": corr.clock_ns // 1_000_000,
            "report_state_full": self.journal.full if self.journal else 0,
            **self.decoder.counter_values(),
        }

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()


def journal_path(rundir: str, shard: int | None) -> str:
    """Where correlator *shard* keeps its report journal."""
    name = "correlate.reports" if shard is None else f"correlate-{shard}.reports"
    return os.path.join(rundir, name)
