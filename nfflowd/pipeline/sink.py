"""The loop of a terminal stage (export, mirror): flow batches in, a sink delivers, acks go back.

What a terminal stage acknowledges is what has left nfflowd, and what it
remembers across a SIGKILL (shared file mappings, :mod:`nfflowd.pipeline.persist`) is
enough that a restarted stage repeats at most the records that were on their
way out at the instant of the kill:

* ``<link>.position``: the acknowledged (sender incarnation, seq), and the batch
  being delivered: its (incarnation, seq), origin, length and how many of its
  records have left.  A resent batch resumes there; so does a batch recomputed
  by a restarted correlate from the same events (same origin and length).
* ``<link>.delivered``: a ring of the origins of the batches that have left
  (stored as soon as a batch's last record has left, before the position moves
  on to the next batch: a paced sink finishes one batch while the next is being
  handed): a batch recomputed from the same events (restarted correlate, or a
  saved log re-read by a restarted ingest) is dropped, counted as
  ``duplicate_batches``.

A sink delivers records in order (first in, first out) and says how many it
still holds (:meth:`Sink.pending`, e.g. syslog lines while syslog is slow or
down).  So the number of records that have left is *handed - pending*, and
each batch is acknowledged as soon as its last record has left, even while
later ones are still held.

A paced sink (:mod:`nfflowd.outputs.pacing`) holds records until its pace lets
them go and says when that is (:meth:`Sink.wait`): the loop then waits for input
at most that long and sends, so held datagrams leave steadily, a few at a time,
instead of at the next 100 ms poll in one burst.  A stage told to stop goes on
while paced records wait (until its drain deadline).
"""

from __future__ import annotations

import logging
import math
import os
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import zmq

from nfflowd.messages import FLOW_RECORD, FlowBatch
from nfflowd.pipeline.coverage import DeliveryWatch
from nfflowd.pipeline.delivery import Recent
from nfflowd.pipeline.links import Inlet
from nfflowd.pipeline.persist import Ring, Slots
from nfflowd.pipeline.stage import Stage

log = logging.getLogger("nfflowd")

NOTICE_INTERVAL_S = 1.0
_SIZE = FLOW_RECORD.size
#: A batch is handed to the sink in chunks of this many records (a NetFlow v5
#: datagram's worth), its progress recorded after each.
CHUNK = 30
#: Position file: slots 0-1 are the acknowledged (sender incarnation, seq) (see
#: Inlet), then PARTIALS entries of a batch partly delivered: (sender incarnation,
#: seq), its origin and length (a batch recomputed by a restarted correlate is the
#: same one), how many of its records have left.  One entry follows the batch being
#: delivered; the others keep what predecessors were killed in, until it comes again
#: (a resent batch can come after newer ones: they are sent as soon as we connect, so
#: a successor killed in that window leaves one more: with 4 entries the oldest were
#: dropped after a few such kills and their batches went again whole, one or two
#: batches of duplicates in some chaos runs).  An entry of a batch whose origin is
#: remembered as delivered (it has all left since) is freed at start.
PARTIALS = 64
_P_INC, _P_SEQ, _P_ORIGIN_A, _P_ORIGIN_B, _P_LEN, _P_DONE = range(6)
_ENTRY = 6
POSITION_SLOTS = 2 + PARTIALS * _ENTRY
#: Origins of delivered batches a restarted stage remembers: far more than a
#: restarted correlate can recompute (ingest resends <= max_unacked batches).
REMEMBERED_ORIGINS = 16384


class Sink(Protocol):
    """What a terminal stage (export, mirror) does with the flow records it receives."""

    def handle(self, block: bytes) -> None:
        """Deliver the records of *block* (FLOW_RECORD structs, at most CHUNK of them)."""
        ...

    def flush(self) -> None: ...

    def counters(self) -> dict[str, int]: ...

    def pending(self) -> int:
        """Records handed over but not yet delivered (oldest first), e.g. while syslog is down."""
        ...

    def wait(self) -> float | None:
        """Seconds until held records may go (a pace), 0 for now; None when nothing waits
        for a time (nothing held, or held by an outage: retried at each poll)."""
        ...

    #: Set by the terminal stage: a sink that sends records it held (a pace, an outage)
    #: calls it after each send, so the progress recorded follows what has left
    #: datagram by datagram (a SIGKILL repeats at most what was on its way out), not
    #: send burst by send burst.  A sink may leave it uncalled (progress is then
    #: recorded after each chunk it is handed, and at each poll).
    on_sent: Callable[[], None] | None


class Periodic(Protocol):
    """Work a terminal stage does once a second besides its batches (export: the coverage
    journal to the collectors, nfflowd.outputs.coverage_feed), never per record."""

    def tick(self, force: bool = False) -> None: ...

    def counters(self) -> dict[str, int]: ...


class Flow:
    """Records handed to the sink so far, by every input: the FIFO mark of each batch."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.handed = 0

    def left(self) -> int:
        """How many of the handed records have left (delivered, or dropped and counted)."""
        return self.handed - self.sink.pending()


class _Waiting(NamedTuple):
    """A batch handed to the sink whose records have not all left yet."""

    incarnation: int  # the sender's
    seq: int
    base: int  # the Flow mark of its record 0
    end: int  # the Flow mark after its last record
    origin: tuple[int, int] | None  # None: a dropped duplicate (nothing to remember)
    resumed_at: int  # records of it a predecessor had delivered
    entry: int = -1  # the inherited position entry that said so (cleared once tracked)


class _Partials:
    """The PARTIALS entries of the position file (kill-safe: an entry is invalid,
    length 0, while its fields change)."""

    def __init__(self, slots: Slots, delivered: Recent | None = None) -> None:
        self.slots = slots
        # entries a predecessor left: batches that may come again, partly delivered
        # (not those acknowledged since, nor those whose origin is remembered as
        # delivered: they come again only recomputed, and are then dropped as such)
        acked_inc, acked_upto = slots[0], slots[1]
        self.inherited = [
            k
            for k in range(PARTIALS)
            if self._get(k, _P_LEN)
            and self._get(k, _P_INC)
            and not (self._get(k, _P_INC) == acked_inc and self._get(k, _P_SEQ) <= acked_upto)
            and not (
                delivered is not None
                and (self._get(k, _P_ORIGIN_A), self._get(k, _P_ORIGIN_B)) in delivered
            )
        ]
        free = [k for k in range(PARTIALS) if k not in self.inherited]
        # the entry that follows our own batch (the oldest inherited one if none is free)
        self.mine = free[0] if free else self.inherited.pop(0)
        self.tracked: object = None  # what `mine` describes

    def _get(self, k: int, field: int) -> int:
        return self.slots[2 + k * _ENTRY + field]

    def _set(self, k: int, field: int, value: int) -> None:
        self.slots[2 + k * _ENTRY + field] = value

    def resume(self, inc: int, seq: int, origin: tuple[int, int], length: int) -> tuple[int, int]:
        """Records of this batch a predecessor delivered (0: none known), and the entry."""
        for k in self.inherited:
            same = (self._get(k, _P_INC), self._get(k, _P_SEQ)) == (inc, seq)
            recomputed = (
                self._get(k, _P_ORIGIN_A),
                self._get(k, _P_ORIGIN_B),
                self._get(k, _P_LEN),
            ) == (*origin, length)
            if same or recomputed:
                self.inherited.remove(k)  # cleared once `mine` tracks the batch
                return min(self._get(k, _P_DONE), length), k
        return 0, -1

    def advance(self, done: int) -> None:
        """More records of the batch `mine` describes have left."""
        if done > self._get(self.mine, _P_DONE):
            self._set(self.mine, _P_DONE, done)

    def track(
        self,
        key: object,
        inc: int,
        seq: int,
        origin: tuple[int, int],
        length: int,
        done: int,
        inherited: int = -1,
    ) -> None:
        """Let `mine` describe this batch (*key* identifies it in memory)."""
        if self.tracked is key:
            self.advance(done)
            return
        k = self.mine
        self._set(k, _P_LEN, 0)
        self._set(k, _P_DONE, done)
        self._set(k, _P_INC, inc)
        self._set(k, _P_SEQ, seq)
        self._set(k, _P_ORIGIN_A, origin[0])
        self._set(k, _P_ORIGIN_B, origin[1])
        self._set(k, _P_LEN, length)
        self.tracked = key
        if inherited >= 0:  # described by `mine` now
            self._set(inherited, _P_LEN, 0)


class _Input:
    """One incoming link of a terminal stage, with what survives a restart."""

    def __init__(self, stage: Stage, link: str) -> None:
        self.position = Slots(os.path.join(stage.rundir, f"{link}.position"), POSITION_SLOTS)
        self.inlet = Inlet(stage, link, position=self.position)
        self.delivered = Recent(size=REMEMBERED_ORIGINS)
        self.ring = Ring(os.path.join(stage.rundir, f"{link}.delivered"), REMEMBERED_ORIGINS)
        for origin in self.ring.pairs():
            self.delivered.add(origin)
        self.waiting: deque[_Waiting] = deque()  # handed over, not all left yet
        self.current: _Waiting | None = None  # the oldest of them not all left, as last seen
        self.partials = _Partials(self.position, self.delivered)
        self.skipped_records = 0
        self.resumed_records = 0

    def skip_if_seen(self, msg: FlowBatch, flow: Flow) -> bool:
        """True (counted) when a batch from the same origin was delivered already."""
        if (msg.origin_incarnation, msg.origin_seq) in self.delivered:
            self.delivered.hits += 1
            self.skipped_records += len(msg.records) // _SIZE
            mark = flow.handed
            self.waiting.append(_Waiting(msg.incarnation, msg.seq, mark, mark, None, 0))
            return True
        return False

    def deliver(self, stage: Stage, flow: Flow, msg: FlowBatch) -> None:
        """Hand *msg*'s records to the sink chunk by chunk, recording progress."""
        records, sink = msg.records, flow.sink
        count = len(records) // _SIZE
        origin = (msg.origin_incarnation, msg.origin_seq)
        # a batch a predecessor was killed in comes again: resent, or recomputed by a
        # restarted correlate from the same events (same origin: the same records in
        # the same order, unless its table differed; then the length usually does
        # too, and the whole batch goes again rather than lose any)
        start, entry = self.partials.resume(msg.incarnation, msg.seq, origin, count)
        self.resumed_records += start
        self.delivered.add(origin)
        base = flow.handed - start
        self.waiting.append(
            _Waiting(msg.incarnation, msg.seq, base, base + count, origin, start, entry)
        )
        for i in range(start, count, CHUNK):
            chunk = records[i * _SIZE : (i + CHUNK) * _SIZE]
            try:
                sink.handle(chunk)
            except (TypeError, ValueError, AttributeError, struct.error) as exc:
                # resending a bad batch cannot help: count it, acknowledge it, go on
                stage.count_malformed("bad_record", repr(exc), f"batch {msg.seq}")
            flow.handed += len(chunk) // _SIZE
            if not sink.pending():  # else an outage or a slow reader: the idle path retries
                sink.flush()
            self.progress(flow)
        self.ack(flow)

    def progress(self, flow: Flow) -> None:
        """Record in the slots how far the oldest batch not fully delivered has got,
        once the origins of the batches that have all left are remembered: a paced or
        held sink finishes a batch while the next is being handed, and a kill before
        that batch's acknowledgement must not make the successor send it again (the
        slots describe one batch only)."""
        left = flow.left()
        w = self.current
        if w is not None and w.end > left and self.partials.tracked is w:
            # the batch `mine` describes is still the oldest one going (none after it can
            # have finished: FIFO): only its count moves (per datagram: keep it cheap)
            self.partials.advance(max(w.resumed_at, left - w.base))
            return
        finished = [i for i, f in enumerate(self.waiting) if f.end <= left and f.origin]
        for i in finished:
            f = self.waiting[i]
            assert f.origin is not None
            self.ring.add(*f.origin)
            self.waiting[i] = f._replace(origin=None)  # remembered: _release adds nothing
        # (the batches before it have left: about to be acknowledged)
        w = next((w for w in self.waiting if w.end > left and w.origin is not None), None)
        self.current = w
        if w is None or w.origin is None:
            return
        done = max(w.resumed_at, min(w.end - w.base, left - w.base))
        self.partials.track(w, w.incarnation, w.seq, w.origin, w.end - w.base, done, w.entry)

    def _release(self, w: _Waiting) -> None:
        """Remember a delivered batch's origin."""
        if w.origin is not None:
            self.ring.add(*w.origin)

    def ack(self, flow: Flow) -> None:
        """Acknowledge (and remember the origins of) every batch whose records have left.

        The acknowledgement is cumulative: every batch of the current sender up to
        the last one received without a gap (``Inbox.contiguous``), except from the
        oldest one still held on.  It is computed from that state, not from the
        batches released by this call: batches that arrive after newer ones (a
        resend of what a killed predecessor lost, behind the originals ZeroMQ kept
        queued) fill the gap that held the newer ones' acknowledgement back, and
        the newer ones, released long before, are covered then (else the sender
        keeps them, its correlator stops acknowledging ingest, and the run stalls:
        CI saw it once, after correlate-1 and export-0 were SIGKILLed together).
        """
        self.progress(flow)
        left = flow.left()
        while self.waiting and self.waiting[0].end <= left:
            self._release(self.waiting.popleft())
        inbox = self.inlet.inbox
        upto = inbox.contiguous
        for w in self.waiting:
            if w.incarnation == inbox.incarnation and w.seq <= upto:
                upto = w.seq - 1
        if upto > self.inlet.upto:
            self.inlet.ack(upto)

    def close(self) -> None:
        self.inlet.sock.close(linger=1000)
        self.position.close()
        self.ring.close()


def consume(
    stage: Stage,
    links: Sequence[str],
    sink: Sink,
    watch: DeliveryWatch | None = None,
    periodic: Periodic | None = None,
) -> None:
    """The loop of a terminal stage: flow batches in, *sink* does the work, acks go back.

    *links*: one per correlator feeding this stage (one unless sharded).  A
    batch is acknowledged once its records have left (see the module
    docstring), so what a crash or an outage holds back is resent by correlate.
    On SIGTERM the loop keeps going until input has been quiet for QUIET_S (or
    the deadline), so whatever upstream sent before stopping is delivered.
    Counters are published as notices once a second and at exit (summed over
    the links).  *watch*: the coverage journal of what the sink could not deliver
    (:mod:`nfflowd.pipeline.coverage`), fed the counters at every notice.  *periodic*:
    ticked before every notice and once more at exit (after *watch* closed), its
    counters published with the stage's.
    """
    inputs: list[_Input] = []
    try:
        for link in links:
            inputs.append(_Input(stage, link))
        _consume(stage, inputs, Flow(sink), watch, periodic)
    finally:
        for inp in inputs:
            inp.close()
        if watch is not None:
            watch.close()


def _consume(
    stage: Stage,
    inputs: list[_Input],
    flow: Flow,
    watch: DeliveryWatch | None,
    periodic: Periodic | None,
) -> None:
    sink = flow.sink
    by_sock = {inp.inlet.sock: inp for inp in inputs}
    poller = zmq.Poller()
    for sock in by_sock:
        poller.register(sock, zmq.POLLIN)
    last_input = time.monotonic()
    next_notice = 0.0

    def sent() -> None:
        for inp in inputs:
            inp.progress(flow)

    sink.on_sent = sent

    def counters() -> dict[str, int]:
        out = dict(sink.counters())
        for inp in inputs:
            for k, v in inp.inlet.counters().items():
                out[k] = out.get(k, 0) + v
        out["duplicate_batches"] = sum(inp.delivered.hits for inp in inputs)
        out["duplicate_records"] = sum(inp.skipped_records for inp in inputs)
        out["resumed_records"] = sum(inp.resumed_records for inp in inputs)
        if watch is not None:
            watch.observe(out)
            out.update(watch.journal.counters)
        if periodic is not None:
            out.update(periodic.counters())
        return out

    while True:
        wait = sink.wait()  # paced records: when the next may go
        if stage.done_draining(last_input) and (
            wait is None or time.monotonic() > stage.stop_deadline
        ):
            break
        for inp in inputs:
            inp.inlet.heartbeat()
        if time.monotonic() >= next_notice:
            if periodic is not None:
                periodic.tick()
            stage.notify("stats", counters())
            next_notice = time.monotonic() + NOTICE_INTERVAL_S
        # records held (an outage, a slow reader): retry every 100 ms; paced: when due
        busy = bool(sink.pending() or any(inp.waiting for inp in inputs))
        timeout = stage.poll_ms(last_input, busy=busy)
        if wait is not None:
            timeout = min(timeout, math.ceil(wait * 1000))
        ready = dict(poller.poll(timeout))
        if not ready:
            if sink.pending():
                sink.flush()  # what the pace allows; an outage or a slow reader: retry
            for inp in inputs:
                inp.ack(flow)
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
            if inp.skip_if_seen(msg, flow):  # recomputed by a restarted correlate, or re-read
                inp.ack(flow)
                continue
            inp.deliver(stage, flow, msg)
    sink.flush()
    for inp in inputs:
        inp.ack(flow)
    if watch is not None:
        watch.observe(sink.counters())
        watch.close()  # a burst still open ends here, in the final counters
    if periodic is not None:
        periodic.tick(force=True)  # what was journaled up to now (a final burst included)
    stage.notify("final", counters())
    log.info("stopped; %s", counters())
