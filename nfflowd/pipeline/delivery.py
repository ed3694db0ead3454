"""Lossless links between stages: numbered batches, acknowledgements, resend, de-duplication.

One module, pure (no sockets), so the protocol can be tested as a state machine.

Per link (ingest -> correlate, correlate -> export, correlate -> mirror)::

    sender                                   receiver
    Outbox.add(batch) -> seq                 Inbox.accept(incarnation, seq) -> new or duplicate
      keeps the encoded batch until ...      ... its effects are durable downstream, then
    Outbox.ack(upto)  <------- Ack(upto) ---  acknowledges cumulatively (Acker)
    Outbox.pending()  <------ Hello(inc) ---  a (re)started receiver says hello (every second,
      resends every unacknowledged batch      which doubles as a heartbeat)

* A batch is identified by (sender incarnation, seq): the incarnation is the
  sender's start time in ns, seq counts from 1 per incarnation.  That pair is the
  record identity that makes duplicates detectable.
* A receiver de-duplicates: a batch already accepted from the same incarnation is
  dropped and counted; a new incarnation (the sender restarted) starts afresh.
  An older incarnation's batches are stale and dropped — unless the current one has
  sent nothing for ``Inbox.STALE_GRACE_S`` while the older one still sends: a dead
  sender sends nothing, so that older one is alive and the newer one was not a
  restart (a forged or broken message): the receiver goes back to it, and never
  takes the one it left again.  One message can change whom a receiver accepts
  from for that long at most.
* Acknowledgements are end to end: export and mirror acknowledge a flow batch
  once it is sent to the collectors / delivered to every dispatcher; correlate
  acknowledges an event batch once every flow batch derived from it (and from the
  batches before it) is acknowledged by both export and mirror (:class:`Ledger`).
  So a batch is released by ingest only when its records have left nfflowd.
* Bounded memory: an outbox holds at most *limit* batches; a stage whose outbox is
  full stops taking input (backpressure), down to ingest, whose kernel socket
  buffer, reliable mode and resync then take over.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field


@dataclass
class Outbox:
    """Sender side of one link."""

    limit: int = 1000
    next_seq: int = 1
    unacked: OrderedDict[int, bytes] = field(default_factory=OrderedDict)
    acked_upto: int = 0
    resent: int = 0
    peer: int = 0  # incarnation of the receiver last heard from

    def full(self) -> bool:
        return len(self.unacked) >= self.limit

    def add(self, payload: bytes) -> int:
        """Keep *payload* (an encoded batch carrying the returned seq) until acknowledged."""
        seq = self.next_seq
        self.next_seq += 1
        self.unacked[seq] = payload
        return seq

    def reserve(self) -> int:
        """The seq the next :meth:`add` will use (to build the batch that carries it)."""
        return self.next_seq

    def ack(self, upto: int) -> int:
        """Release every batch up to *upto*; return how many were released."""
        released = 0
        while self.unacked:
            seq = next(iter(self.unacked))
            if seq > upto:
                break
            del self.unacked[seq]
            released += 1
        self.acked_upto = max(self.acked_upto, upto)
        return released

    def hello(self, receiver_incarnation: int) -> list[bytes]:
        """A receiver said hello: if it is a new one, everything unacknowledged goes again."""
        if receiver_incarnation == self.peer:
            return []
        self.peer = receiver_incarnation
        self.resent += len(self.unacked)
        return list(self.unacked.values())


@dataclass
class Inbox:
    """Receiver side of one link: accepts each (incarnation, seq) once."""

    incarnation: int = 0
    contiguous: int = 0  # every seq <= this was accepted
    ahead: set[int] = field(default_factory=set)  # accepted seqs above `contiguous`
    duplicates: int = 0
    stale: int = 0  # batches from an older sender incarnation
    restarts: int = 0  # sender incarnations seen after the first
    reverted: int = 0  # times an older incarnation was taken back (the newer one fell silent)
    last_new: float = 0.0  # monotonic time of the last new batch of `incarnation`
    # incarnations left for an older one (never taken again; the newest few)
    abandoned: deque[int] = field(default_factory=lambda: deque(maxlen=16))

    #: An older incarnation that still sends while the current one has been silent
    #: this long is taken back (see the module docstring).
    STALE_GRACE_S = 10.0

    def accept(self, incarnation: int, seq: int, acked: int = 0, now: float = -1.0) -> bool:
        """True when the batch is new; False (counted) when it was seen before.

        *acked* is the sender's cumulative acknowledgement carried by the batch:
        nothing at or below it will ever come again, so a receiver that joins
        mid-stream (restarted) starts counting from there.  *now*: the monotonic
        clock (read if not given).
        """
        if now < 0:
            now = time.monotonic()
        if incarnation != self.incarnation:
            if incarnation in self.abandoned:
                self.stale += 1
                return False
            if incarnation < self.incarnation:
                if not self.last_new:
                    self.last_new = now  # (a resumed position) silent from now on, not before
                if now - self.last_new < self.STALE_GRACE_S:
                    self.stale += 1
                    return False
                self.reverted += 1
                self.abandoned.append(self.incarnation)
            if self.incarnation:
                self.restarts += 1
            self.incarnation, self.contiguous, self.ahead = incarnation, 0, set()
        if acked > self.contiguous:
            self.contiguous = acked
            self.ahead = {s for s in self.ahead if s > acked}
            while self.contiguous + 1 in self.ahead:
                self.contiguous += 1
                self.ahead.discard(self.contiguous)
        if seq <= self.contiguous or seq in self.ahead:
            self.duplicates += 1
            return False
        self.last_new = now
        if seq == self.contiguous + 1:
            self.contiguous = seq
            while self.contiguous + 1 in self.ahead:
                self.contiguous += 1
                self.ahead.discard(self.contiguous)
        else:
            self.ahead.add(seq)
        return True


@dataclass
class Acker:
    """What a terminal receiver acknowledges: seqs whose effects are durable, cumulatively."""

    done: set[int] = field(default_factory=set)
    upto: int = 0
    incarnation: int = 0

    def reset(self, incarnation: int) -> None:
        self.incarnation, self.done, self.upto = incarnation, set(), 0

    def durable(self, seq: int) -> int:
        """Mark *seq* durable; return the new cumulative acknowledgement."""
        self.done.add(seq)
        while self.upto + 1 in self.done:
            self.upto += 1
            self.done.discard(self.upto)
        return self.upto


@dataclass
class Ledger:
    """Correlate's bookkeeping: which event batches may be acknowledged to ingest.

    Every accepted event batch is recorded with the seq of the flow batch it
    produced (0 when it produced none).  An event batch is acknowledged once it
    and every earlier one are covered: received, and its flow batch (if any)
    acknowledged by every output.

    Entries are in the order batches arrived, which is not always their seq order:
    after a restart the batches ZeroMQ kept queued come before the resend of those
    the dead peer's socket lost.  So what may be acknowledged is bounded by the
    oldest entry not covered yet, whatever its place, and by what was received
    without a gap (:meth:`ackable`'s *received*) — never by the last entry popped,
    which would acknowledge the older batches still on their way.
    """

    outputs: tuple[str, ...] = ("export", "mirror")
    entries: deque[tuple[int, int]] = field(default_factory=deque)  # (event seq, flow seq)
    acked: dict[str, int] = field(default_factory=dict)  # output -> flow seq acked upto
    highest_flow: int = 0  # the newest flow batch recorded
    barrier: int = 0  # flow batches of an earlier ingest incarnation still to be acked
    in_order: bool = True  # entries' event seqs increase (the usual case: no scan)

    def record(self, event_seq: int, flow_seq: int) -> None:
        self.highest_flow = max(self.highest_flow, flow_seq)
        if not self.entries:
            self.in_order = True
        elif event_seq < self.entries[-1][0]:
            self.in_order = False
        # an event batch of a new ingest incarnation waits for every flow batch made
        # before it: its events may repeat ones already turned into those batches
        self.entries.append((event_seq, max(flow_seq, self.barrier)))

    def output_acked(self, output: str, upto: int) -> None:
        self.acked[output] = max(self.acked.get(output, 0), upto)

    def ackable(self, received: int) -> int:
        """The cumulative event seq that can be acknowledged now (0: none yet), given
        that every seq up to *received* has arrived (``Inbox.contiguous``)."""
        floor = min(self.acked.get(o, 0) for o in self.outputs)
        entries = self.entries
        while entries and entries[0][1] <= floor:
            entries.popleft()
        if not entries:
            return received
        oldest = entries[0][0] if self.in_order else min(e for e, _ in entries)
        return min(received, oldest - 1)

    def reset(self) -> None:
        """The event sender restarted: its old batches will never be acknowledged.

        Its successor re-reads from its checkpoint; events correlate recognises
        as already handled make no new flow batch, yet the records they made are
        maybe still unacknowledged downstream.  So nothing of the new sender is
        acknowledged until every flow batch made so far is: otherwise its
        checkpoint (or end of log) would pass records that a correlate crash
        could still lose.
        """
        self.entries.clear()
        self.barrier = self.highest_flow


@dataclass
class Recent:
    """A bounded memory of identities seen lately (oldest forgotten first).

    Used where a crash makes a resend unavoidable: correlate remembers the
    conntrack ids it closed (a restarted ingest re-reads a few batches), export
    and mirror remember the origins (ingest incarnation, event seq) of the flow
    batches they delivered (a restarted correlate recomputes a few batches from
    the same event batches; see the README, "Crash isolation").
    """

    size: int = 65536
    seen: set[object] = field(default_factory=set)
    order: deque[object] = field(default_factory=deque)
    hits: int = 0

    def add(self, key: object) -> bool:
        """Remember *key*; False (counted) when it was already there."""
        if key in self.seen:
            self.hits += 1
            return False
        self.seen.add(key)
        self.order.append(key)
        if len(self.order) > self.size:
            self.seen.discard(self.order.popleft())
        return True

    def __contains__(self, key: object) -> bool:
        return key in self.seen
