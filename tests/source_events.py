"""A source's bytes as events, the way the pipeline gets them: ingest reads (the source
appends its payload), a correlator decodes (``PayloadDecoder``, kept across reads so its
counters and layouts carry over)."""

from __future__ import annotations

from nfflowd.conntrack.payloads import PayloadDecoder
from nfflowd.conntrack.sources import Source
from nfflowd.messages import ConntrackEvent


class SourceEvents:
    def __init__(self, source: Source) -> None:
        self.source = source
        self.decoder = PayloadDecoder()

    def read(self, timeout_s: float) -> list[ConntrackEvent]:
        buf = bytearray()
        self.source.read(buf, timeout_s, 1 << 20)
        return self.decoder.decode(self.source.payload, bytes(buf), self.source.where)

    def counters(self) -> dict[str, int]:
        """What the correlator decoding them would publish."""
        return self.decoder.counter_values()
