"""Flow records -> flow lines -> screen / syslog (the mirror stage's work).

Each dispatcher has a ``format``: ``csv`` (flow-tools CSV, the 2009 tool's line,
:mod:`nfflowd.formats.flowtools_csv`) or ``json`` (every field of the record,
:mod:`nfflowd.formats.json_lines`).  A batch is formatted once per format in use,
whatever the number of dispatchers sharing it.  A record a formatter rejects is
counted (``invalid``), logged (rate-limited) and left out for every dispatcher;
the rest of its batch goes on.

Moving bytes, not objects (schema 5): :meth:`Mirror.handle` gets a block of
:data:`~nfflowd.messages.FLOW_RECORD` structs (a slice of a FlowBatch's), and a
formatter turns a whole block into its lines.  ``csv`` reads the block as it is
(:func:`~nfflowd.formats.flowtools_csv.format_block`, no object per record);
``json`` shows every field of the record, so it decodes the block once
(:func:`~nfflowd.messages.unpack_flows`) and formats each FlowRecord.  When a
formatter rejects a block, the block goes again record by record (the slow path)
to find and skip the bad records only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TextIO, cast

from nfflowd.config import Dispatcher as DispatcherSettings
from nfflowd.config import Settings
from nfflowd.formats import flowtools_csv, json_lines
from nfflowd.formats.syslog import FLOW_LINE_SEVERITY
from nfflowd.formats.uptime import host_boot_ms
from nfflowd.messages import FLOW_RECORD, unpack_flows
from nfflowd.outputs.screen_file import RotatingFile, screen_path
from nfflowd.outputs.syslog import (
    FLOW_LINE_LEVEL,
    LEVELS,
    Dispatcher,
    ScreenDispatcher,
    SyslogDispatcher,
)
from nfflowd.pipeline.batcher import Batcher

log = logging.getLogger("nfflowd.mirror")

#: Line formats a dispatcher can ask for (``<dispatcher> format``).
FORMATS = ("csv", "json")
#: At most one warning about invalid records in this many seconds.
WARN_INTERVAL_S = 60.0

#: A block of FLOW_RECORDs -> one line per record; ValueError on a record it cannot format.
Formatter = Callable[[bytes], list[str]]


def screen_stream(rundir: str, stderr: bool) -> TextIO | None:
    """The file a daemon's screen dispatcher writes (None, logged: this process's own
    stream, which supervisord then copies into the same place)."""
    path = screen_path(rundir, stderr)
    try:
        return cast(TextIO, RotatingFile(path))
    except OSError as exc:
        log.error(
            "screen dispatcher: cannot open %s (%s): writing to %s instead",
            path,
            exc.strerror or exc,
            "stderr" if stderr else "stdout",
        )
        return None


def gets_flow_lines(d: DispatcherSettings) -> bool:
    """Whether dispatcher *d* is given flow lines (its min_level lets ``notice`` through);
    the mirror's counters number those ``d0``, ``d1``, ... in configuration order."""
    return LEVELS[d.min_level] >= LEVELS[FLOW_LINE_LEVEL]


#: Flow records one event can make at most: a NAT triplet (nfflowd.correlate).
RECORDS_PER_EVENT = 3


def held_bound(settings: Settings) -> int:
    """Lines a syslog dispatcher may have to hold: every line of the batches its inputs
    may leave unacknowledged (``max_unacked`` per correlator, each of at most
    ``Batcher.max_events`` events), so that the FIFO's bound never drops a line that
    backpressure already holds upstream (at least the dispatcher's own 100,000)."""
    per_batch = Batcher.max_events * RECORDS_PER_EVENT
    return max(100_000, settings.daemon.correlators * settings.daemon.max_unacked * per_batch)


def make_dispatchers(
    settings: Settings, screen_dir: str | None = None
) -> list[tuple[str, Dispatcher]]:
    """(format, dispatcher) for each configured dispatcher that gets flow lines.

    With *screen_dir* (the mirror stage: its run directory), a screen dispatcher
    writes into ``mirror.out`` (``mirror.err``) there itself
    (:mod:`nfflowd.outputs.screen_file`); without, to this process's stdout/stderr."""
    out: list[tuple[str, Dispatcher]] = []
    for d in settings.mirror.dispatchers:
        if not gets_flow_lines(d):
            log.warning(
                "dispatcher %s: min_level %s is above %s: it gets no flow lines",
                d.name,
                d.min_level,
                FLOW_LINE_LEVEL,
            )
            continue
        if d.format not in FORMATS:
            raise SystemExit(f"dispatcher {d.name}: unknown format {d.format!r}")
        if d.kind == "screen":
            stream = None if screen_dir is None else screen_stream(screen_dir, d.stderr)
            out.append((d.format, ScreenDispatcher(stream, stderr=d.stderr)))
        elif d.kind == "syslog":
            syslog = SyslogDispatcher(
                d.address,
                ident=d.ident,
                facility=d.facility,
                severity=FLOW_LINE_SEVERITY,
                max_buffer=held_bound(settings),
                max_rate=d.max_rate,
                max_byte_rate=d.max_byte_rate,
            )
            out.append((d.format, syslog))
        else:
            raise SystemExit(f"dispatcher {d.name}: unknown kind {d.kind!r}")
    return out


def make_formatters(exaddr: str, boot_ms: int) -> dict[str, Formatter]:
    def csv(block: bytes) -> list[str]:
        return flowtools_csv.format_block(block, exaddr=exaddr, boot_ms=boot_ms)

    def json(block: bytes) -> list[str]:
        return [json_lines.format_line(r, exaddr=exaddr) for r in unpack_flows(block)]

    return {"csv": csv, "json": json}


class Mirror:
    def __init__(
        self, settings: Settings, outputs: Sequence[tuple[str, Dispatcher]] | None = None
    ) -> None:
        """``outputs``: (format, dispatcher) pairs; by default built from ``settings``."""
        self.outputs = list(make_dispatchers(settings) if outputs is None else outputs)
        self.dispatchers = [d for _, d in self.outputs]
        every = make_formatters(settings.export.exaddr, host_boot_ms())
        in_use = dict.fromkeys(fmt for fmt, _ in self.outputs)  # ordered, unique
        self.formatters = {fmt: every[fmt] for fmt in in_use}
        self.lines = 0  # records mirrored (once each, whatever the number of formats)
        self.invalid = 0  # records a formatter rejected
        self._last_warning = -WARN_INTERVAL_S
        self._on_sent: Callable[[], None] | None = None

    @property
    def on_sent(self) -> Callable[[], None] | None:
        """Sink.on_sent: given to each syslog dispatcher (held lines go in bursts)."""
        return self._on_sent

    @on_sent.setter
    def on_sent(self, hook: Callable[[], None] | None) -> None:
        self._on_sent = hook
        for d in self.dispatchers:
            if isinstance(d, SyslogDispatcher):
                d.on_sent = hook

    def handle(self, block: bytes) -> None:
        """Format the records of *block* (FLOW_RECORD structs) once per format in use and
        hand the lines to every dispatcher."""
        try:
            by_format = {f: fn(block) for f, fn in self.formatters.items()}
        except (ValueError, TypeError, AttributeError):
            by_format = self._one_by_one(block)
        if by_format:
            self.lines += len(next(iter(by_format.values())))
        else:
            self.lines += len(block) // FLOW_RECORD.size
        for fmt, d in self.outputs:
            d.emit(by_format[fmt])

    def _one_by_one(self, block: bytes) -> dict[str, list[str]]:
        """The slow path of a block with a bad record: skip (and count) only the bad ones."""
        out: dict[str, list[str]] = {f: [] for f in self.formatters}
        size = FLOW_RECORD.size
        count, rest = divmod(len(block), size)
        for i in range(count):
            one = block[i * size : (i + 1) * size]
            try:
                lines = {f: fn(one) for f, fn in self.formatters.items()}
            except (ValueError, TypeError, AttributeError) as exc:
                self._reject(f"record {i} of a batch not mirrored: {exc}")
                continue
            for f, (line,) in lines.items():
                out[f].append(line)
        if rest:
            self._reject(f"{rest} bytes after the last whole record of a batch not mirrored")
        return out

    def _reject(self, what: str) -> None:
        """Count a record no line is written for; say so at most every WARN_INTERVAL_S."""
        self.invalid += 1
        now = time.monotonic()
        if now - self._last_warning >= WARN_INTERVAL_S:
            self._last_warning = now
            log.warning("%s (%d so far)", what, self.invalid)

    def flush(self) -> None:
        for d in self.dispatchers:
            d.flush()

    def pending(self) -> int:
        """Records not yet delivered by every dispatcher (one line each, oldest first)."""
        return max(
            (d.pending for d in self.dispatchers if isinstance(d, SyslogDispatcher)), default=0
        )

    def wait(self) -> float | None:
        """Seconds until a paced dispatcher may send its next held line (None: none waits)."""
        waits = [
            w
            for d in self.dispatchers
            if isinstance(d, SyslogDispatcher) and (w := d.wait()) is not None
        ]
        return min(waits) if waits else None

    def counters(self) -> dict[str, int]:
        out = {"lines": self.lines, "invalid": self.invalid}
        for i, d in enumerate(self.dispatchers):
            for k, v in d.counters.items():
                out[f"d{i}_{k}"] = v
        return out
