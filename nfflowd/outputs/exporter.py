"""Flow records -> NetFlow v5/v9/IPFIX datagrams -> UDP collectors (the export stage's work).

One encoder per collector (its own sequence numbers and template timers), one
socket per collector (:mod:`nfflowd.outputs.collector`).  Sequence numbers
survive a restart in ``<rundir>/export.sequence`` (a shared mapping,
:mod:`nfflowd.pipeline.persist`), stored before a datagram is sent, so a
collector's stream skips ahead after a crash, never back.  Exporter shards are
exporters of their own (engine id / observation domain offset by the shard).

Moving bytes, not objects (schema 5): :meth:`Exporter.handle` gets a block of
:data:`~nfflowd.messages.FLOW_RECORD` structs (a slice of a FlowBatch's).  v5
collectors encode it as it is (:meth:`V5Encoder.encode_block`, no object per
record); v9 and IPFIX, whose encoders take FlowRecord objects, share one
:func:`~nfflowd.messages.unpack_flows` of the block, made only when one of them is
configured.

Pacing and holding (:mod:`nfflowd.outputs.pacing`): each collector has a queue of
datagrams encoded and not yet sent, a :class:`~nfflowd.outputs.pacing.Pace`
(``max_rate`` datagrams/s, ``max_byte_rate`` bytes/s) that lets them leave a few
at a time, and a refusal state: a datagram the collector refused (ICMP port
unreachable, known at once for a collector on this host) stays first in its
queue and is tried again every REFUSED_RETRY_S, for ``<export> refused_hold`` s
(30) at most: a
collector that still refuses then is given up on (what it holds is dropped,
counted as ``dropped``, and so is what it refuses from then on, until it
accepts a datagram again), so a collector that is down for good stalls the
pipeline (and so the other collectors and the mirror) that long, not for ever.
What a queue holds is not delivered: :meth:`Exporter.pending` counts the records
of the oldest block a collector still holds a datagram of, so their batch is
acknowledged only once every collector has sent them (backpressure, never a
drop), and a killed export repeats them (its successor encodes them again, with
the sequence number of the last block that began to leave).  :meth:`Exporter.wait`
tells the loop when the next datagram may go.

Which records: v5 collectors get the correlator's triplet as it is; v9/IPFIX
encoders leave out the ORIGINAL_OUT records (``per_direction``, counted as
``left_out``: the ORIGINAL_IN record's postNAT* elements say the same) unless the
collector says ``records triplet``.  OPENED records (real-time NAT events, see
:class:`~nfflowd.messages.EndReason`) go only to collectors with ``nat_events
realtime``, whose encoders turn them into create events and send no flow record
for them; the others get the block without them.

Coverage gaps (:meth:`Exporter.send_gaps`, fed by :mod:`nfflowd.outputs.coverage_feed`)
go to the v9/IPFIX collectors with ``coverage`` on, as options records in their
streams (:mod:`nfflowd.formats.coverage_options`), when the Exporter is made with
``coverage`` (the stages journal: a live source); their encoders then announce the
options template with the data templates.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from nfflowd.config import Collector, ExportSettings
from nfflowd.formats.coverage_options import GapRow
from nfflowd.formats.ipfix import IpfixEncoder
from nfflowd.formats.netflow_v5 import V5Encoder
from nfflowd.formats.netflow_v9 import V9Encoder
from nfflowd.messages import FLOW_RECORD, FlowRecord, unpack_flows, without_opened
from nfflowd.outputs.collector import DROPPED, REFUSED, UdpCollector
from nfflowd.outputs.pacing import Pace
from nfflowd.pipeline import persist

log = logging.getLogger("nfflowd.export")

#: In the run directory: (stream identity, sequence number) per collector.
SEQUENCE_FILE = "export.sequence"


class Encoder(Protocol):
    sequence: int

    def encode(self, records: Sequence[FlowRecord], now_ns: int) -> list[bytes]: ...


#: Collectors whose sequence numbers ``<rundir>/export.sequence`` can keep.
MAX_STREAMS = 64
#: A collector that refused a datagram is tried again (that datagram first) this often.
REFUSED_RETRY_S = 0.5
#: A datagram waiting to be sent: its bytes, the exporter's record count before the
#: block it came from (what has left while it waits), and the encoder's sequence after
#: that block (stored when its first datagram goes; -1 on the others), and whether it
#: carries coverage gaps (options records), not flow records.
Held = tuple[bytes, int, int, bool]


def stream_identity(exp: ExportSettings, c: Collector) -> int:
    """What makes a stream of datagrams one sequence space for a collector."""
    domain = exp.observation_domain if c.version != 5 else (exp.engine_type << 8 | exp.engine_id)
    return persist.identity(f"{c.address}:{c.port}/v{c.version}/{c.source}/{domain}")


def restore_sequences(slots: persist.Slots, streams: Sequence[tuple[int, Encoder]]) -> int:
    """Give each (identity, encoder) the sequence its previous incarnation left, then
    rewrite the table for exactly these streams.  Returns how many were restored."""
    old = {slots[2 * i]: slots[2 * i + 1] for i in range(slots.count // 2) if slots[2 * i]}
    restored = 0
    for i in range(slots.count // 2):
        slots[2 * i] = slots[2 * i + 1] = 0
    for i, (ident, enc) in enumerate(streams[: slots.count // 2]):
        if ident in old:
            enc.sequence = old[ident]
            restored += 1
        slots[2 * i], slots[2 * i + 1] = ident, enc.sequence
    return restored


def make_encoder(exp: ExportSettings, c: Collector, coverage: bool = False) -> Encoder:
    """One encoder per collector: each has its own sequence numbers and template timers;
    *coverage*: coverage gaps go to the collectors that take them (``sends_coverage``)."""
    if c.version == 5:
        return V5Encoder(engine_type=exp.engine_type, engine_id=exp.engine_id)
    common = {
        "template_refresh_packets": exp.template_refresh_packets,
        "template_refresh_seconds": float(exp.template_refresh_seconds),
        "nat_events": c.nat_events,
        "nat_event_numbering": c.nat_event_numbering,
        "per_direction": c.records != "triplet",  # None: the default, per_direction
        "coverage": coverage and c.sends_coverage,
    }
    if c.version == 9:
        return V9Encoder(source_id=exp.observation_domain, **common)  # type: ignore[arg-type]
    return IpfixEncoder(observation_domain=exp.observation_domain, **common)  # type: ignore[arg-type]


class Exporter:
    """Encodes flow records for every collector and sends them, paced per collector.

    A collector that is paced, or refuses (for ``refused_hold`` s at most), holds back
    the records it has not sent, and so the acknowledgement of their batch (the
    slowest collector paces the pipeline); one that fails otherwise (no route,
    buffer full) costs the others nothing: the datagram is counted and dropped."""

    def __init__(
        self, exp: ExportSettings, sequences: persist.Slots | None = None, coverage: bool = False
    ) -> None:
        """*sequences*: where each collector's sequence number survives a restart, so a
        collector sees the stream go on (templates are sent again, as at any start).
        *coverage*: the stages journal coverage gaps; :meth:`send_gaps` sends them."""
        self.targets: list[tuple[Encoder, UdpCollector]] = [
            (make_encoder(exp, c, coverage), UdpCollector(c.address, c.port, source=c.source))
            for c in exp.collectors
        ]
        self.paces = [Pace(c.max_rate, c.max_byte_rate) for c in exp.collectors]
        self.queues: list[deque[Held]] = [deque() for _ in exp.collectors]
        self.retry_at = [0.0 for _ in exp.collectors]  # while refused: when to try again
        self.refused_since: list[float | None] = [None for _ in exp.collectors]
        self.hold_s = float(exp.refused_hold)  # a refusing collector is held this long
        self.gave_up = [False for _ in exp.collectors]  # refused for hold_s
        self.dropped = [0 for _ in exp.collectors]  # given up on after hold_s
        self.gaps_dropped = [0 for _ in exp.collectors]  # gap datagrams among those
        self.paced = [0 for _ in exp.collectors]  # datagrams that waited for the pace
        self.queued = [0 for _ in exp.collectors]  # datagrams ever queued, per collector
        self.gaps_upto = [0 for _ in exp.collectors]  # `queued` after the last gap datagram
        # called after each datagram has left (the terminal stage records its progress
        # there: a SIGKILL then repeats at most the one datagram on its way out)
        self.on_sent: Callable[[], None] | None = None
        if not self.targets:
            log.warning("no collector configured: flow records are only mirrored")
        if len(self.targets) > MAX_STREAMS:
            log.warning(
                "more than %d collectors: sequence numbers of the others restart at 0", MAX_STREAMS
            )
        self.records = 0
        self.sequences = sequences
        # real-time NAT events: these collectors get the OPENED records too (the others a
        # block without them, made once per block)
        self.realtime = [c.nat_realtime for c in exp.collectors]
        self.any_realtime = any(self.realtime)
        if sequences is not None:
            idents = [stream_identity(exp, c) for c in exp.collectors]
            streams = [(ident, enc) for ident, (enc, _) in zip(idents, self.targets, strict=True)]
            if restore_sequences(sequences, streams):
                log.info(
                    "sequence numbers go on from %s", [enc.sequence for enc, _ in self.targets]
                )

    def handle(self, block: bytes) -> None:
        """Encode the records of *block* (FLOW_RECORD structs) for every collector and send
        what each one's pace allows now (the rest waits: :meth:`flush`); ValueError,
        nothing sent, when its length is not a multiple of a record's."""
        count, rest = divmod(len(block), FLOW_RECORD.size)
        if rest:
            raise ValueError(f"flow block of {len(block)} bytes: not whole records")
        mark = self.records
        self.records += count
        now = time.time_ns()
        flows = without_opened(block) if self.any_realtime else block
        # decoded once per kind of block, if a v9/IPFIX collector needs it
        decoded: dict[bool, list[FlowRecord]] = {}
        clock = time.monotonic()
        for i, (enc, _) in enumerate(self.targets):
            if isinstance(enc, V5Encoder):
                datagrams = enc.encode_block(flows, now)
            else:
                realtime = self.realtime[i]
                records = decoded.get(realtime)
                if records is None:
                    records = decoded[realtime] = unpack_flows(block if realtime else flows)
                datagrams = enc.encode(records, now)
            if not datagrams:
                continue
            queue = self.queues[i]
            queue.append((datagrams[0], mark, enc.sequence, False))
            queue.extend((d, mark, -1, False) for d in datagrams[1:])
            self.queued[i] += len(datagrams)
            self._send(i, clock)
            if queue and clock >= self.retry_at[i]:  # held by the pace, not by a refusal
                self.paced[i] += min(len(queue), len(datagrams))

    def _send(self, i: int, now: float) -> None:
        """Send collector *i*'s held datagrams, oldest first, while its pace allows."""
        queue = self.queues[i]
        if not queue or now < self.retry_at[i]:
            return
        coll, pace, slots = self.targets[i][1], self.paces[i], self.sequences
        while queue:
            datagram, _, sequence, gaps = queue[0]
            if not pace.take(len(datagram), now):
                return
            if sequence >= 0 and slots is not None and i < MAX_STREAMS:
                # stored before sending: after a crash the stream skips ahead, never back
                slots[2 * i + 1] = sequence
            result = coll.send(datagram)
            if result != REFUSED:
                self.refused_since[i], self.gave_up[i] = None, False
                if result == DROPPED and gaps:
                    # a gap record lost is no missed connection: not a send error for the
                    # coverage watch (it would journal a gap about it, sent here, lost...)
                    coll.counters["send_errors"] -= 1
                    self.gaps_dropped[i] += 1
            elif self._hold(i, now):  # kept, first in the queue
                self.retry_at[i] = now + REFUSED_RETRY_S
                return
            queue.popleft()
            if self.on_sent is not None:
                self.on_sent()

    def _hold(self, i: int, now: float) -> bool:
        """Whether collector *i*, which just refused, is still waited for.  Once it has
        refused for ``hold_s``, each refusal drops what it holds (the refused
        datagram too: the caller pops it), until it accepts again."""
        since = self.refused_since[i]
        if since is None:
            self.refused_since[i] = since = now
        if now - since < self.hold_s:
            return True
        queue = self.queues[i]
        if not self.gave_up[i]:
            self.gave_up[i] = True
            log.warning(
                "collector %s refused everything for %.0f s: dropping %d datagrams held, "
                "and sending on without holding until it accepts again",
                self.targets[i][1].target,
                now - since,
                len(queue),
            )
        # all but the refused datagram (popped by the caller), which is counted here too;
        # lost gap records are counted apart: they are no missed connections (counting
        # them as such would journal a gap about them, sent to this collector, refused...)
        gaps = sum(1 for held in queue if held[3])
        self.dropped[i] += len(queue) - gaps
        self.gaps_dropped[i] += gaps
        first = queue.popleft()
        queue.clear()
        queue.append(first)
        return False

    def send_gaps(self, gaps: Sequence[GapRow]) -> None:
        """Queue coverage *gaps* as options records for every collector that takes them,
        behind its flow datagrams (sequence numbers stay in order; paced and held on
        refusal like them), and send what the pace allows now; :meth:`gaps_held` says
        when they have all left.  ValueError, nothing queued, when one cannot be encoded."""
        now = time.time_ns()
        for i, (enc, _) in enumerate(self.targets):
            if not getattr(enc, "coverage", False):
                continue
            assert isinstance(enc, V9Encoder | IpfixEncoder)
            datagrams = enc.encode_gaps(gaps, now)
            if not datagrams:
                continue
            queue = self.queues[i]
            queue.append((datagrams[0], self.records, enc.sequence, True))
            queue.extend((d, self.records, -1, True) for d in datagrams[1:])
            self.queued[i] += len(datagrams)
            self.gaps_upto[i] = self.queued[i]
            self._send(i, time.monotonic())

    def gaps_held(self) -> bool:
        """Whether a datagram of the gaps given to :meth:`send_gaps` is still queued."""
        return any(
            self.queued[i] - len(queue) < self.gaps_upto[i] for i, queue in enumerate(self.queues)
        )

    def flush(self) -> None:
        """Send what each collector's pace allows now (and try a refusing one again)."""
        now = time.monotonic()
        for i in range(len(self.targets)):
            self._send(i, now)

    def pending(self) -> int:
        """Records not sent to every collector yet (those of the oldest block held)."""
        held = [queue[0][1] for queue in self.queues if queue]
        return self.records - min(held) if held else 0

    def wait(self) -> float | None:
        """Seconds until a held datagram may go (None: nothing is held)."""
        now = time.monotonic()
        waits = [
            max(self.retry_at[i] - now, self.paces[i].wait(now))
            for i, queue in enumerate(self.queues)
            if queue
        ]
        return max(0.0, min(waits)) if waits else None

    def counters(self) -> dict[str, int]:
        out = {"records": self.records}
        for i, (enc, coll) in enumerate(self.targets):
            for name in (
                "records",
                "skipped_ipv6",
                "invalid",
                "datagrams",
                "template_sends",
                "split",
                "clamped",
                "left_out",
                "gaps",
            ):
                value = getattr(enc, name, None)
                if isinstance(value, int):
                    out[f"c{i}_{name}"] = value
            for k, v in coll.counters.items():
                out[f"c{i}_{k}"] = v
            out[f"c{i}_paced"] = self.paced[i]
            out[f"c{i}_held"] = len(self.queues[i])
            out[f"c{i}_dropped"] = self.dropped[i]
            out[f"c{i}_gaps_dropped"] = self.gaps_dropped[i]
        return out


def shard_settings(exp: ExportSettings, shard: int) -> ExportSettings:
    """Exporter *shard* is an exporter of its own to the collectors: engine id (v5) and
    observation domain / source id (v9, IPFIX) offset by its number, its own sequences."""
    if shard == 0:
        return exp
    domain = (exp.observation_domain + shard) & 0xFFFFFFFF
    engine_id = (exp.engine_id + shard) & 0xFF
    return dataclasses.replace(exp, engine_id=engine_id, observation_domain=domain)
