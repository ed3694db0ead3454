"""Stage 4, mirror: ``flows.mirror`` link -> flow-tools CSV lines -> screen / syslog."""

from __future__ import annotations

import logging

from nfflowd.config import Settings
from nfflowd.formats.flowtools_csv import format_line
from nfflowd.formats.uptime import host_boot_ms
from nfflowd.messages import FlowRecord
from nfflowd.outputs.syslog import LEVELS, Dispatcher, ScreenDispatcher, SyslogDispatcher
from nfflowd.stage import Stage, consume

log = logging.getLogger("nfflowd.mirror")

#: Flow lines are logged at this level (syslog priority local6.info by default).
LINE_LEVEL = "info"


def make_dispatchers(settings: Settings) -> list[Dispatcher]:
    out: list[Dispatcher] = []
    for d in settings.mirror.dispatchers:
        if LEVELS[d.min_level] < LEVELS[LINE_LEVEL]:
            log.warning("dispatcher %s: min_level %s is above %s: it gets no flow lines",
                        d.name, d.min_level, LINE_LEVEL)  # fmt: skip
            continue
        if d.kind == "screen":
            out.append(ScreenDispatcher(stderr=d.stderr))
        elif d.kind == "syslog":
            out.append(
                SyslogDispatcher(d.address, ident=d.ident, facility=d.facility, severity=LINE_LEVEL)
            )
        else:
            raise SystemExit(f"dispatcher {d.name}: unknown kind {d.kind!r}")
    return out


class Mirror:
    def __init__(self, settings: Settings) -> None:
        self.exaddr = settings.export.exaddr
        self.boot_ms = host_boot_ms()
        self.dispatchers = make_dispatchers(settings)
        self.lines = 0

    def handle(self, records: list[FlowRecord]) -> None:
        exaddr, boot = self.exaddr, self.boot_ms
        lines = [format_line(r, exaddr=exaddr, boot_ms=boot) for r in records]
        self.lines += len(lines)
        for d in self.dispatchers:
            d.emit(lines)

    def flush(self) -> None:
        for d in self.dispatchers:
            d.flush()

    def pending(self) -> int:
        return sum(d.pending for d in self.dispatchers if isinstance(d, SyslogDispatcher))

    def counters(self) -> dict[str, int]:
        out = {"lines": self.lines}
        for i, d in enumerate(self.dispatchers):
            for k, v in d.counters.items():
                out[f"d{i}_{k}"] = v
        return out


def main(argv: list[str] | None = None) -> int:
    stage = Stage("mirror", argv)
    try:
        mirror = Mirror(stage.settings)
        consume(stage, "flows.mirror", mirror)
        for d in mirror.dispatchers:
            d.close()
    finally:
        stage.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
