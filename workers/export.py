"""Stage 3, export: ``flows.export`` link -> NetFlow v5/v9/IPFIX datagrams -> UDP collectors."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

from nfflowd.config import Collector, ExportSettings
from nfflowd.formats.ipfix import IpfixEncoder
from nfflowd.formats.netflow_v5 import V5Encoder
from nfflowd.formats.netflow_v9 import V9Encoder
from nfflowd.links import consume
from nfflowd.messages import FlowRecord
from nfflowd.outputs.collector import UdpCollector
from nfflowd.stage import Stage

log = logging.getLogger("nfflowd.export")


class Encoder(Protocol):
    def encode(self, records: Sequence[FlowRecord], now_ns: int) -> list[bytes]: ...


def make_encoder(exp: ExportSettings, c: Collector) -> Encoder:
    """One encoder per collector: each has its own sequence numbers and template timers."""
    if c.version == 5:
        return V5Encoder(engine_type=exp.engine_type, engine_id=exp.engine_id)
    refresh = {
        "template_refresh_packets": exp.template_refresh_packets,
        "template_refresh_seconds": float(exp.template_refresh_seconds),
    }
    if c.version == 9:
        return V9Encoder(source_id=exp.observation_domain, **refresh)  # type: ignore[arg-type]
    return IpfixEncoder(observation_domain=exp.observation_domain, **refresh)  # type: ignore[arg-type]


class Exporter:
    """Encodes flow records for every collector and sends them; one slow or dead collector
    costs the others nothing but a failed non-blocking send."""

    def __init__(self, exp: ExportSettings) -> None:
        self.targets: list[tuple[Encoder, UdpCollector]] = [
            (make_encoder(exp, c), UdpCollector(c.address, c.port, source=c.source))
            for c in exp.collectors
        ]
        if not self.targets:
            log.warning("no collector configured: flow records are only mirrored")
        self.records = 0

    def handle(self, records: list[FlowRecord]) -> None:
        self.records += len(records)
        now = time.time_ns()
        for enc, coll in self.targets:
            for datagram in enc.encode(records, now):
                coll.send(datagram)

    def flush(self) -> None:
        """Every datagram is sent as soon as it is encoded; nothing is held back."""

    def pending(self) -> int:
        return 0

    def counters(self) -> dict[str, int]:
        out = {"records": self.records}
        for i, (enc, coll) in enumerate(self.targets):
            for name in ("skipped_ipv6", "invalid", "datagrams", "template_sends", "split"):
                value = getattr(enc, name, None)
                if isinstance(value, int):
                    out[f"c{i}_{name}"] = value
            for k, v in coll.counters.items():
                out[f"c{i}_{k}"] = v
        return out


def main(argv: list[str] | None = None) -> int:
    stage = Stage("export", argv)
    try:
        consume(stage, "flows.export", Exporter(stage.settings.export))
    finally:
        stage.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
