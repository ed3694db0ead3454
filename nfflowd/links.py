"""The socket side of :mod:`nfflowd.delivery`: a stage's outgoing and incoming links.

:class:`Outlet` (sender) keeps every batch until the receiver acknowledges it and
resends what is unacknowledged when a new receiver incarnation says hello.
:class:`Inlet` (receiver) de-duplicates batches and sends ``Ack`` messages — after
batches and once a second, which makes them a heartbeat too.  Acks are sent
without blocking and may be dropped: they are cumulative, the next one covers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import zmq
from zmq.utils.monitor import recv_monitor_message

from nfflowd import codec, curve, shards
from nfflowd.delivery import Inbox, Outbox, Recent
from nfflowd.messages import Ack, EventBatch, FlowBatch, FlowRecord, Message
from nfflowd.persist import Slots
from nfflowd.stage import Stage

log = logging.getLogger("nfflowd")

HEARTBEAT_S = 1.0

Batch = EventBatch | FlowBatch


class _Empty(Exception):
    """Nothing (usable) waiting on the socket."""


def _next_message(stage: Stage, sock: zmq.Socket[bytes], where: str) -> Message | None:
    """Read one message without blocking; a bad one is counted and gives None.

    Raises :class:`_Empty` when nothing is waiting.
    """
    try:
        data = sock.recv(zmq.NOBLOCK)
    except zmq.Again:
        raise _Empty from None
    try:
        return codec.decode(data)
    except codec.DecodeError as exc:
        stage.count_malformed(exc.reason, str(exc), where)
        return None


class Outlet:
    """Sender side of a link."""

    def __init__(self, stage: Stage, name: str, limit: int) -> None:
        self.stage = stage
        self.name = name
        self.sock = stage.socket(name, "sender")
        self.outbox = Outbox(limit=limit)
        self.acks_seen = 0
        self.reconnects = 0
        # A connection that breaks (a tcp reset; a receiver restart) may lose batches
        # in flight.  After a reconnection the receiver's next Ack is treated as a
        # hello, so everything unacknowledged goes again (receivers de-duplicate).
        # a tcp link is monitored by nfflowd.curve already (one monitor per socket)
        self._curve = curve.reconnects_of(self.sock)
        self._monitor = (
            None
            if self._curve is not None
            else self.sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        )
        self._disconnected = False

    def full(self) -> bool:
        return self.outbox.full()

    def idle(self) -> bool:
        """Everything sent was acknowledged."""
        return not self.outbox.unacked

    def send(self, build: Callable[[int, int], Message]) -> int:
        """Build the batch for (next seq, acked so far), keep it, send it; return its seq."""
        seq = self.outbox.reserve()
        data = codec.encode(build(seq, self.outbox.acked_upto))
        self.outbox.add(data)
        self.stage.send(self.sock, data)
        return seq

    def send_encoded(self, seq: int, data: bytes) -> None:
        """Keep and send an already encoded batch carrying *seq* (the same batch on several
        outlets: their seqs advance in lockstep)."""
        if seq != self.outbox.reserve():
            raise RuntimeError(
                f"{self.name}: batch seq {seq} out of step ({self.outbox.reserve()})"
            )
        self.outbox.add(data)
        self.stage.send(self.sock, data)

    def _watch_connection(self) -> None:
        if self._curve is not None:
            if self._curve.pending:
                self._curve.pending = False
                self.reconnects += 1
                self.outbox.peer = 0
            return
        assert self._monitor is not None
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self._disconnected = True
            elif event["event"] == zmq.EVENT_CONNECTED and self._disconnected:
                self._disconnected = False
                self.reconnects += 1
                self.outbox.peer = 0  # the next Ack resends what is unacknowledged

    def poll_acks(self) -> int | None:
        """Handle every Ack waiting on the socket; return the newest cumulative ack (or None)."""
        self._watch_connection()
        newest = None
        while True:
            try:
                msg = _next_message(self.stage, self.sock, f"{self.name} acks")
            except _Empty:
                return newest
            if msg is None:
                continue
            if not isinstance(msg, Ack):
                self.stage.count_malformed("unexpected_kind", type(msg).__name__, self.name)
                continue
            self.acks_seen += 1
            if msg.sender_incarnation == self.stage.incarnation:
                self.outbox.ack(msg.upto)
                newest = msg.upto if newest is None else max(newest, msg.upto)
            for data in self.outbox.hello(msg.incarnation):
                self.stage.send(self.sock, data)

    def counters(self) -> dict[str, int]:
        return {
            f"{shards.base_link(self.name)}_unacked": len(self.outbox.unacked),
            f"{shards.base_link(self.name)}_resent": self.outbox.resent,
            f"{shards.base_link(self.name)}_reconnects": self.reconnects,
        }


class Inlet:
    """Receiver side of a link.

    With *position* (a terminal stage), what it acknowledges is also stored in
    a :class:`~nfflowd.persist.Slots` file: a restarted stage starts from there,
    so its first hello acknowledges what its previous incarnation delivered and
    the sender resends only the rest (instead of everything it still held).
    """

    def __init__(self, stage: Stage, name: str, *, position: Slots | None = None) -> None:
        self.stage = stage
        self.name = name
        self.sock = stage.socket(name, "receiver")
        self.inbox = Inbox()
        self.upto = 0  # what we acknowledge to the current sender incarnation
        self._next_heartbeat = 0.0
        self.position = position
        if position is not None and position[0]:
            self.inbox.incarnation, self.upto = position[0], position[1]
            self.inbox.contiguous = self.upto
            log.info("%s: resuming after batch %d of sender %d", name, self.upto, position[0])

    def receive(self) -> Batch | None:
        """The next new batch, or None (nothing waiting, a duplicate, or a bad message)."""
        try:
            msg = _next_message(self.stage, self.sock, f"{self.name} link")
        except _Empty:
            return None
        if msg is None:
            return None
        if not isinstance(msg, (EventBatch, FlowBatch)):
            self.stage.count_malformed("unexpected_kind", type(msg).__name__, f"{self.name} link")
            return None
        before = self.inbox.incarnation
        if not self.inbox.accept(msg.incarnation, msg.seq, msg.acked):
            self.ack(self.upto)  # the sender may have missed our ack: say it again
            return None
        if self.inbox.incarnation != before:
            self.upto = 0  # a new sender incarnation: its seqs start again
        return msg

    def ack(self, upto: int) -> None:
        """Acknowledge every batch up to *upto* of the current sender (non-blocking)."""
        self.upto = max(self.upto, upto)
        if self.position is not None:
            self.position[0], self.position[1] = self.inbox.incarnation, self.upto
        msg = Ack(self.stage.name, self.stage.incarnation, self.inbox.incarnation, self.upto)
        # no sender connected, or its queue is full: the next ack covers this one
        with contextlib.suppress(zmq.Again):
            self.sock.send(codec.encode(msg), zmq.NOBLOCK)
        self._next_heartbeat = time.monotonic() + HEARTBEAT_S

    def heartbeat(self) -> None:
        """Say hello / repeat the last ack once a second."""
        if time.monotonic() >= self._next_heartbeat:
            self.ack(self.upto)

    def counters(self) -> dict[str, int]:
        return {
            f"{shards.base_link(self.name)}_duplicates": self.inbox.duplicates,
            f"{shards.base_link(self.name)}_sender_restarts": self.inbox.restarts,
        }


class Sink(Protocol):
    """What a terminal stage (export, mirror) does with the flow records it receives."""

    def handle(self, records: list[FlowRecord]) -> None: ...

    def flush(self) -> None: ...

    def counters(self) -> dict[str, int]: ...

    def pending(self) -> int:
        """Items not yet delivered (e.g. syslog lines while syslog is down)."""
        ...


NOTICE_INTERVAL_S = 1.0


#: A terminal stage delivers a batch in chunks of this many records (a NetFlow v5
#: datagram's worth) and records its progress after each: a restarted stage skips
#: what its predecessor delivered of the batch it was killed in, so a crash
#: duplicates at most one chunk instead of a whole batch.
CHUNK = 30
#: Position file slots: acknowledged (sender incarnation, seq), then the batch being
#: delivered (sender incarnation, seq) and how many of its records are delivered.
_INC, _UPTO, _P_INC, _P_SEQ, _P_DONE = range(5)


class _Input:
    """One incoming link of a terminal stage, with what survives a restart."""

    def __init__(self, stage: Stage, link: str) -> None:
        self.position = Slots(os.path.join(stage.rundir, f"{link}.position"), 5)
        self.inlet = Inlet(stage, link, position=self.position)
        # origins (ingest incarnation, event seq) of the batches delivered lately: far
        # more than a restarted correlate can recompute (ingest resends <= max_unacked)
        self.delivered = Recent(size=16384)
        self.skipped_records = 0
        self.resumed_records = 0  # records a predecessor had delivered of a resent batch
        self.unacked = False  # delivered batches wait for the sink's pending lines

    def deliver(self, stage: Stage, sink: Sink, msg: FlowBatch) -> None:
        """Hand *msg*'s records to *sink* chunk by chunk, recording progress."""
        pos, records = self.position, msg.records
        inc = self.inlet.inbox.incarnation
        start = 0
        if (pos[_P_INC], pos[_P_SEQ]) == (inc, msg.seq):  # killed while delivering it
            start = min(pos[_P_DONE], len(records))
            self.resumed_records += start
        else:
            pos[_P_DONE] = 0
            pos[_P_INC], pos[_P_SEQ] = inc, msg.seq
        for i in range(start, len(records), CHUNK):
            chunk = records[i : i + CHUNK]
            try:
                sink.handle(chunk)
            except (TypeError, ValueError, AttributeError, struct.error) as exc:
                # resending a bad batch cannot help: count it, acknowledge it, go on
                stage.count_malformed("bad_record", repr(exc), f"batch {msg.seq}")
            if not sink.pending():  # else an outage: the idle path retries, less often
                sink.flush()
                if not sink.pending():
                    pos[_P_DONE] = i + len(chunk)
        self.ack(sink)

    def ack(self, sink: Sink) -> None:
        if sink.pending():
            self.unacked = True
        else:
            self.inlet.ack(self.inlet.inbox.contiguous)
            self.unacked = False

    def close(self) -> None:
        self.inlet.sock.close(linger=1000)
        self.position.close()


def consume(stage: Stage, links: Sequence[str], sink: Sink) -> None:
    """The loop of a terminal stage: flow batches in, *sink* does the work, acks go back.

    *links*: one per correlator feeding this stage (one unless sharded).  A
    batch is acknowledged once the sink has flushed it and has nothing pending
    (every record sent to the collectors / every line delivered), so what a
    crash or an outage holds back is resent by correlate.  The acknowledged
    position is kept in ``<rundir>/<link>.position`` so a restarted stage does
    not deliver again what its predecessor had.  On SIGTERM the loop keeps
    going until input has been quiet for QUIET_S (or the deadline), so whatever
    upstream sent before stopping is delivered.  Counters are published as
    notices once a second and at exit (summed over the links).
    """
    inputs: list[_Input] = []
    try:
        for link in links:
            inputs.append(_Input(stage, link))
        _consume(stage, inputs, sink)
    finally:
        for inp in inputs:
            inp.close()


def _consume(stage: Stage, inputs: list[_Input], sink: Sink) -> None:
    by_sock = {inp.inlet.sock: inp for inp in inputs}
    poller = zmq.Poller()
    for sock in by_sock:
        poller.register(sock, zmq.POLLIN)
    last_input = time.monotonic()
    next_notice = 0.0

    def counters() -> dict[str, int]:
        out = dict(sink.counters())
        for inp in inputs:
            for k, v in inp.inlet.counters().items():
                out[k] = out.get(k, 0) + v
        out["duplicate_batches"] = sum(inp.delivered.hits for inp in inputs)
        out["duplicate_records"] = sum(inp.skipped_records for inp in inputs)
        out["resumed_records"] = sum(inp.resumed_records for inp in inputs)
        return out

    while not stage.done_draining(last_input):
        for inp in inputs:
            inp.inlet.heartbeat()
        if time.monotonic() >= next_notice:
            stage.notify("stats", counters())
            next_notice = time.monotonic() + NOTICE_INTERVAL_S
        ready = dict(poller.poll(100))
        if not ready:
            if sink.pending():
                sink.flush()
            for inp in inputs:
                if inp.unacked:
                    inp.ack(sink)
            continue
        last_input = time.monotonic()
        for sock in ready:
            inp = by_sock[sock]
            msg = inp.inlet.receive()
            if msg is None:
                continue
            if not isinstance(msg, FlowBatch):
                stage.count_malformed("unexpected_kind", type(msg).__name__, inp.inlet.name)
                continue
            if not inp.delivered.add((msg.origin_incarnation, msg.origin_seq)):
                inp.skipped_records += len(msg.records)  # recomputed by a restarted correlate
                inp.ack(sink)
                continue
            inp.deliver(stage, sink, msg)
    sink.flush()
    for inp in inputs:
        inp.ack(sink)
    stage.notify("final", counters())
    log.info("stopped; %s", counters())
