"""The socket side of :mod:`nfflowd.pipeline.delivery`: a stage's outgoing and incoming links.

:class:`Outlet` (sender) keeps every batch until the receiver acknowledges it and
resends what is unacknowledged when a new receiver incarnation says hello.
:class:`Inlet` (receiver) de-duplicates batches and sends ``Ack`` messages — after
batches and once a second, which makes them a heartbeat too.  Acks are sent
without blocking and may be dropped: they are cumulative, the next one covers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import zmq
from zmq.utils.monitor import recv_monitor_message

from nfflowd import topology
from nfflowd.config.settings import MAX_UNACKED
from nfflowd.messages import Ack, EventBatch, FlowBatch, Message
from nfflowd.pipeline import codec, curve
from nfflowd.pipeline.delivery import Inbox, Outbox
from nfflowd.pipeline.persist import Slots
from nfflowd.pipeline.stage import Stage

log = logging.getLogger("nfflowd")

HEARTBEAT_S = 1.0
#: An ack that could not be sent (nobody connected yet) is tried again this soon: the
#: hello of a restarted receiver, after which its sender resends what it holds.
HELLO_RETRY_S = 0.05
#: A sender's incarnation is its start time (ns): one later than now by more than
#: this (clock skew between hosts on a tcp link) is refused.  One within it that no
#: real sender uses makes the real sender's batches stale until the receiver takes
#: the real one back (``Inbox.STALE_GRACE_S`` after the forged one's last batch).
FUTURE_INCARNATION_NS = 60 * 10**9
#: A receiver whose acks are about another sender this long gets our unacknowledged
#: batches again (:meth:`Outlet._follows_another`).
FOREIGN_ACKS_S = 5.0
#: A receiver whose acks have not released our oldest batch for this long gets that
#: batch again (:meth:`Outlet._head_of_line`): a batch lost on its way without a
#: restart to say so (no hello follows) would otherwise hold every later one back.
#: The wait doubles after each such resend, up to RETRANSMIT_MAX_S (an outage
#: downstream that holds acks for an hour costs ~60 duplicate batches, not 720).
RETRANSMIT_S = 5.0
RETRANSMIT_MAX_S = 60.0
#: No real sender has more batches in flight than ``<daemon> max_unacked`` allows.
MAX_IN_FLIGHT = MAX_UNACKED

Batch = EventBatch | FlowBatch


def event_batch(
    stage: Stage,
    payload: int,
    data: bytes,
    count: int,
    where: str,
    first_line: int,
    origin_stream: int = 0,
    origin_pos: int = 0,
) -> Callable[[int, int], EventBatch]:
    """How to build an event batch of *stage* once its outlet has given it (seq, acked)."""
    inc = stage.incarnation

    def build(seq: int, acked: int) -> EventBatch:
        return EventBatch(
            stage.name,
            inc,
            seq,
            acked,
            payload,
            data,
            count,
            where,
            first_line,
            origin_stream,
            origin_pos,
        )

    return build


def least_loaded(outlets: Sequence[Outlet]) -> int:
    """The index of the outlet with the fewest unacknowledged batches (the first of equals):
    where a self-contained batch goes when there are several correlators."""
    best, fewest = 0, -1
    for i, out in enumerate(outlets):
        n = len(out.outbox.unacked)
        if fewest < 0 or n < fewest:
            best, fewest = i, n
    return best


def implausible(batch: Batch, now_ns: int) -> str:
    """Why no real sender can have sent *batch* ("" if one can): its incarnation (start
    time) is in the future, or its cumulative acknowledgement is not below its own seq
    or is further behind than any link's window.  Such a batch would change whom the
    receiver accepts from, or what it takes as already seen: refused and counted."""
    if batch.incarnation > now_ns + FUTURE_INCARNATION_NS:
        return f"sender incarnation {batch.incarnation} is in the future (now {now_ns})"
    if batch.seq == 0 or batch.acked >= batch.seq:
        return f"batch {batch.seq} says batches up to {batch.acked} are acknowledged"
    if batch.seq - batch.acked > MAX_IN_FLIGHT:
        return f"batch {batch.seq} is {batch.seq - batch.acked} past its acknowledgement"
    return ""


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
        # a tcp link is monitored by nfflowd.pipeline.curve already (one monitor per socket)
        self._curve = curve.reconnects_of(self.sock)
        self._monitor = (
            None
            if self._curve is not None
            else self.sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        )
        self._disconnected = False
        self._foreign_since = 0.0  # since when the receiver's acks are about another sender
        self._stuck_since = 0.0  # since when acks of ours release nothing while we hold some
        self._retransmit_s = RETRANSMIT_S

    def _follows_another(self, ack: Ack) -> None:
        """The receiver acknowledges another sender than us: for a moment after either of
        us restarted, or because it took another incarnation for ours (a forged or broken
        batch, see :func:`implausible`).  If that lasts FOREIGN_ACKS_S while we hold
        unacknowledged batches, they go again (every FOREIGN_ACKS_S): the receiver drops
        them as stale until it takes us back (``Inbox.STALE_GRACE_S``)."""
        now = time.monotonic()
        if not self.outbox.unacked or self.outbox.peer != ack.incarnation:
            self._foreign_since = 0.0
            return
        if not self._foreign_since:
            self._foreign_since = now
        elif now - self._foreign_since >= FOREIGN_ACKS_S:
            self._foreign_since = now
            self.outbox.resent += len(self.outbox.unacked)
            for data in list(self.outbox.unacked.values()):
                self.stage.send(self.sock, data)

    def _head_of_line(self, released: int, now: float) -> None:
        """An ack of ours arrived: if acks have released nothing for RETRANSMIT_S while we
        hold batches, the oldest goes again (then after 2x, 4x ... RETRANSMIT_MAX_S).
        The receiver either has it (its records are still on their way: a slow or held
        sink; it drops the copy as a duplicate) or lost it, and then its
        acknowledgement was stuck below it for good: a safety net under the hellos,
        which resend everything after a restart of either end.  Never blocks: a
        receiver that does not read (its own backpressure) has the batch already."""
        if released or not self.outbox.unacked:
            self._stuck_since, self._retransmit_s = 0.0, RETRANSMIT_S
        elif not self._stuck_since:
            self._stuck_since = now
        elif now - self._stuck_since >= self._retransmit_s:
            self._stuck_since = now
            self._retransmit_s = min(2 * self._retransmit_s, RETRANSMIT_MAX_S)
            with contextlib.suppress(zmq.Again):
                self.sock.send(next(iter(self.outbox.unacked.values())), zmq.NOBLOCK)
                self.outbox.resent += 1

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
            if msg.sender_incarnation != self.stage.incarnation:
                self._follows_another(msg)
            else:
                self._foreign_since = 0.0
                if msg.upto >= self.outbox.next_seq:  # batches never sent: not a real ack
                    detail = f"ack of batch {msg.upto}, last sent {self.outbox.next_seq - 1}"
                    self.stage.count_malformed("implausible", detail, f"{self.name} acks")
                    continue
                released = self.outbox.ack(msg.upto)
                if msg.incarnation == self.outbox.peer:  # (a new receiver: hello below)
                    self._head_of_line(released, time.monotonic())
                newest = msg.upto if newest is None else max(newest, msg.upto)
            resend = self.outbox.hello(msg.incarnation)
            if resend:
                self._stuck_since = 0.0  # all of it goes again now
            for data in resend:
                self.stage.send(self.sock, data)

    def counters(self) -> dict[str, int]:
        return {
            f"{topology.base_link(self.name)}_unacked": len(self.outbox.unacked),
            f"{topology.base_link(self.name)}_resent": self.outbox.resent,
            f"{topology.base_link(self.name)}_reconnects": self.reconnects,
        }


class Inlet:
    """Receiver side of a link.

    With *position* (a terminal stage), what it acknowledges is also stored in
    a :class:`~nfflowd.pipeline.persist.Slots` file: a restarted stage starts from there,
    so its first hello acknowledges what its previous incarnation delivered and
    the sender resends only the rest (instead of everything it still held).
    """

    def __init__(self, stage: Stage, name: str, *, position: Slots | None = None) -> None:
        self.stage = stage
        self.name = name
        self.sock = stage.socket(name, "receiver")
        self.inbox = Inbox()
        self.upto = 0  # what we acknowledge to the current sender incarnation
        self.restarted = False  # the last batch received came from a new sender incarnation
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
        problem = implausible(msg, time.time_ns())
        if problem:
            self.stage.count_malformed("implausible", problem, f"{self.name} link")
            return None
        before = self.inbox.incarnation
        if not self.inbox.accept(msg.incarnation, msg.seq, msg.acked):
            self.ack(self.upto)  # the sender may have missed our ack: say it again
            return None
        self.restarted = self.inbox.incarnation != before
        if self.restarted:
            self.upto = 0  # a new sender incarnation: its seqs start again
        return msg

    def ack(self, upto: int) -> None:
        """Acknowledge every batch up to *upto* of the current sender (non-blocking)."""
        self.upto = max(self.upto, upto)
        pos = self.position
        if pos is not None:
            if pos[0] != self.inbox.incarnation:
                # never (new incarnation, old upto), even for an instant: a kill right
                # then would acknowledge batches of the new sender never delivered
                pos[1] = 0
                pos[0] = self.inbox.incarnation
            pos[1] = self.upto
        msg = Ack(self.stage.name, self.stage.incarnation, self.inbox.incarnation, self.upto)
        try:
            self.sock.send(codec.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            # no sender connected (yet: a restarted stage binds, and the sender reconnects
            # within ZeroMQ's reconnect interval), or its queue is full: the next ack
            # covers this one, and goes soon, so a restart is not a second of silence
            self._next_heartbeat = time.monotonic() + HELLO_RETRY_S
            return
        self._next_heartbeat = time.monotonic() + HEARTBEAT_S

    def heartbeat(self) -> None:
        """Say hello / repeat the last ack once a second."""
        if time.monotonic() >= self._next_heartbeat:
            self.ack(self.upto)

    def counters(self) -> dict[str, int]:
        return {
            f"{topology.base_link(self.name)}_duplicates": self.inbox.duplicates,
            f"{topology.base_link(self.name)}_sender_restarts": self.inbox.restarts,
            f"{topology.base_link(self.name)}_stale": self.inbox.stale,
            f"{topology.base_link(self.name)}_reverted": self.inbox.reverted,
        }
