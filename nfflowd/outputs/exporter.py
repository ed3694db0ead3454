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
from collections.abc import Sequence
from typing import Protocol

from nfflowd.config import Collector, ExportSettings
from nfflowd.formats.coverage_options import GapRow
from nfflowd.formats.ipfix import IpfixEncoder
from nfflowd.formats.netflow_v5 import V5Encoder
from nfflowd.formats.netflow_v9 import V9Encoder
from nfflowd.messages import FLOW_RECORD, FlowRecord, unpack_flows, without_opened
from nfflowd.outputs.collector import UdpCollector
from nfflowd.pipeline import persist

log = logging.getLogger("nfflowd.export")

#: In the run directory: (stream identity, sequence number) per collector.
SEQUENCE_FILE = "export.sequence"


class Encoder(Protocol):
    sequence: int

    def encode(self, records: Sequence[FlowRecord], now_ns: int) -> list[bytes]: ...


#: Collectors whose sequence numbers ``<rundir>/export.sequence`` can keep.
MAX_STREAMS = 64


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
    """Encodes flow records for every collector and sends them; one slow or dead collector
    costs the others nothing but a failed non-blocking send."""

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
        """Encode and send the records of *block* (FLOW_RECORD structs) to every collector;
        ValueError, nothing sent, when its length is not a multiple of a record's."""
        count, rest = divmod(len(block), FLOW_RECORD.size)
        if rest:
            raise ValueError(f"flow block of {len(block)} bytes: not whole records")
        self.records += count
        now = time.time_ns()
        slots = self.sequences
        flows = without_opened(block) if self.any_realtime else block
        # decoded once per kind of block, if a v9/IPFIX collector needs it
        decoded: dict[bool, list[FlowRecord]] = {}
        for i, (enc, coll) in enumerate(self.targets):
            if isinstance(enc, V5Encoder):
                datagrams = enc.encode_block(flows, now)
            else:
                realtime = self.realtime[i]
                records = decoded.get(realtime)
                if records is None:
                    records = decoded[realtime] = unpack_flows(block if realtime else flows)
                datagrams = enc.encode(records, now)
            if slots is not None and i < MAX_STREAMS:
                # stored before sending: after a crash the stream skips ahead, never back
                slots[2 * i + 1] = enc.sequence
            for datagram in datagrams:
                coll.send(datagram)

    def send_gaps(self, gaps: Sequence[GapRow]) -> None:
        """Send coverage *gaps* as options records to every collector that takes them;
        ValueError, nothing sent, when one cannot be encoded."""
        now = time.time_ns()
        slots = self.sequences
        for i, (enc, coll) in enumerate(self.targets):
            if not getattr(enc, "coverage", False):
                continue
            assert isinstance(enc, V9Encoder | IpfixEncoder)
            datagrams = enc.encode_gaps(gaps, now)
            if slots is not None and i < MAX_STREAMS:
                slots[2 * i + 1] = enc.sequence  # before sending, as handle()
            for datagram in datagrams:
                coll.send(datagram)

    def flush(self) -> None:
        """Every datagram is sent as soon as it is encoded; nothing is held back."""

    def pending(self) -> int:
        return 0

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
        return out


def shard_settings(exp: ExportSettings, shard: int) -> ExportSettings:
    """Exporter *shard* is an exporter of its own to the collectors: engine id (v5) and
    observation domain / source id (v9, IPFIX) offset by its number, its own sequences."""
    if shard == 0:
        return exp
    domain = (exp.observation_domain + shard) & 0xFFFFFFFF
    engine_id = (exp.engine_id + shard) & 0xFF
    return dataclasses.replace(exp, engine_id=engine_id, observation_domain=domain)
