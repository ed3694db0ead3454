"""Stage 3, export: ``flows.export`` link -> NetFlow datagrams -> UDP collectors."""

from __future__ import annotations

import logging
import time

from nfflowd.config import Settings
from nfflowd.formats.netflow_v5 import V5Encoder
from nfflowd.messages import FlowRecord
from nfflowd.outputs.collector import UdpCollector
from nfflowd.stage import Stage, consume

log = logging.getLogger("nfflowd.export")


class Exporter:
    """Encodes flow records once per NetFlow version and sends them to every collector."""

    def __init__(self, settings: Settings) -> None:
        exp = settings.export
        self.targets: list[tuple[V5Encoder, UdpCollector]] = []
        for c in exp.collectors:
            if c.version != 5:
                raise SystemExit(
                    f"collector {c.address}:{c.port}: NetFlow version {c.version} is not "
                    "supported by this build (only 5)"
                )
            enc = V5Encoder(engine_type=exp.engine_type, engine_id=exp.engine_id)
            self.targets.append((enc, UdpCollector(c.address, c.port, source=c.source)))
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
            out[f"c{i}_skipped_ipv6"] = enc.skipped_ipv6
            for k, v in coll.counters.items():
                out[f"c{i}_{k}"] = v
        return out


def main(argv: list[str] | None = None) -> int:
    stage = Stage("export", argv)
    try:
        consume(stage, "flows.export", Exporter(stage.settings))
    finally:
        stage.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
