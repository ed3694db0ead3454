"""A terminal stage killed at any instant repeats nothing that had left, loses nothing.

The tests drive :class:`nfflowd.pipeline.sink._Input` as export and mirror do, with a
sink that holds records (first in, first out) until the test lets some leave,
like a slow syslog reader.  A SIGKILL is simulated by dropping the object
without closing anything: what survives is only what a killed process leaves, the
files in the run directory.  The successor is a new object on the same files.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeAlias

import pytest
import zmq

from nfflowd.messages import FlowBatch, FlowRecord, pack_flows, unpack_flows
from nfflowd.pipeline.persist import Ring
from nfflowd.pipeline.sink import PARTIALS, Flow, _Input

CORRELATE_A = 1_000
CORRELATE_B = 2_000  # a restarted correlate
STREAM = 77  # the origin stream (a saved log's identity)
Ctx: TypeAlias = "zmq.Context[zmq.Socket[bytes]]"


def record(n: int) -> FlowRecord:
    return FlowRecord(
        n,
        n,
        4,
        17,
        b"\n\0\0\1",
        b"\n\0\0\2",
        1,
        2,
        1,
        60,
        b"\n\0\0\1",
        b"\n\0\0\2",
        1,
        2,
        1,
        3,
        0,
        0,
        n,
    )


def batch(inc: int, seq: int, origin_pos: int, first: int, count: int) -> FlowBatch:
    """Flow batch *seq* of correlate *inc*, computed from event batch *origin_pos*."""
    records = pack_flows([record(first + i) for i in range(count)])
    return FlowBatch("correlate", inc, seq, 0, STREAM, origin_pos, records)


class SlowSink:
    """Holds what it is handed; `let(n)` lets the n oldest records leave."""

    def __init__(self, out: list[int]) -> None:
        self.held: deque[FlowRecord] = deque()
        self.out = out  # the "collector": ct_ids of the records that left, in order
        self.on_sent: Callable[[], None] | None = None

    def handle(self, block: bytes) -> None:
        self.held.extend(unpack_flows(block))

    def flush(self) -> None:
        pass

    def let(self, n: int) -> None:
        for _ in range(min(n, len(self.held))):
            self.out.append(self.held.popleft().ct_id)

    def burst(self, n: int, die_after: int) -> None:
        """Let *n* records leave one by one, as a paced exporter sends its datagrams,
        telling the stage after each (on_sent); the process dies after *die_after*."""
        for k in range(min(n, len(self.held))):
            self.out.append(self.held.popleft().ct_id)
            if k + 1 == die_after:
                return
            if self.on_sent is not None:
                self.on_sent()

    def counters(self) -> dict[str, int]:
        return {}

    def pending(self) -> int:
        return len(self.held)

    def wait(self) -> float | None:
        return None  # let() and burst() decide when records leave


class FakeStage:
    """What _Input needs from a Stage: a run directory and an (unconnected) socket."""

    name = "mirror"
    incarnation = 5

    def __init__(self, rundir: Path, ctx: Ctx) -> None:
        self.rundir, self.ctx = str(rundir), ctx
        self.malformed: list[str] = []

    def socket(self, name: str, side: str) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        return sock  # acks are sent NOBLOCK and dropped: nobody listens

    def count_malformed(self, reason: str, detail: str, where: str) -> None:
        self.malformed.append(reason)


class Terminal:
    """One incarnation of a terminal stage with one input."""

    def __init__(self, rundir: Path, ctx: Ctx, out: list[int]):
        self.stage = FakeStage(rundir, ctx)
        self.inp = _Input(self.stage, "flows.mirror")  # type: ignore[arg-type]
        self.sink = SlowSink(out)
        self.flow = Flow(self.sink)

    def receive(self, msg: FlowBatch) -> None:
        """What the consume loop does with a batch the inlet accepted."""
        self.inp.inlet.inbox.accept(msg.incarnation, msg.seq, msg.acked)
        if not self.inp.skip_if_seen(msg, self.flow):
            self.inp.deliver(self.stage, self.flow, msg)  # type: ignore[arg-type]

    def let(self, n: int) -> None:
        self.sink.let(n)
        self.inp.ack(self.flow)  # the idle path: progress and acknowledgements

    def acked(self) -> int:
        return self.inp.inlet.upto


def killed_in_first_batch(
    tmp_path: Path,
    ctx: Ctx,
    seq: int,
    left: int,
) -> tuple[Terminal, list[int]]:
    """Flow batch *seq* of correlate A (origin 10, records 0-99) handed over, *left* of
    its records out, then the stage killed: its successor, and what left so far."""
    out: list[int] = []
    t = Terminal(tmp_path, ctx, out)
    t.receive(batch(CORRELATE_A, seq, 10, 0, 100))
    t.let(left)
    return Terminal(tmp_path, ctx, out), out


@pytest.fixture
def ctx() -> Iterator[Ctx]:
    c: Ctx = zmq.Context()
    yield c
    c.destroy(linger=0)  # closes what a failed test left open (term would wait)


def test_a_batch_is_acknowledged_once_its_records_have_left(tmp_path: Path, ctx: Ctx) -> None:
    out: list[int] = []
    t = Terminal(tmp_path, ctx, out)
    t.receive(batch(CORRELATE_A, 1, 10, 0, 100))
    t.receive(batch(CORRELATE_A, 2, 11, 100, 100))
    assert t.acked() == 0
    t.let(99)
    assert t.acked() == 0
    t.let(1)
    assert t.acked() == 1  # batch 2 is still held
    t.let(100)
    assert t.acked() == 2
    assert out == list(range(200))


def test_killed_mid_batch_the_resent_batch_resumes_where_records_stopped_leaving(
    tmp_path: Path,
    ctx: Ctx,
) -> None:
    out: list[int] = []
    t = Terminal(tmp_path, ctx, out)
    t.receive(batch(CORRELATE_A, 1, 10, 0, 100))
    t.receive(batch(CORRELATE_A, 2, 11, 100, 100))
    t.let(130)  # batch 1 left; 30 of batch 2 left; the rest dies with the process
    del t
    t2 = Terminal(tmp_path, ctx, out)
    assert t2.acked() == 1
    # the sender resends 2 (and newer batches, which may come first: 3 here)
    t2.receive(batch(CORRELATE_A, 3, 12, 200, 100))
    t2.receive(batch(CORRELATE_A, 2, 11, 100, 100))
    t2.let(1000)
    assert sorted(out) == list(range(300)), "each record exactly once"
    assert t2.acked() == 3


def test_batches_that_left_before_an_older_one_arrived_are_acknowledged_with_it(
    tmp_path: Path,
    ctx: Ctx,
) -> None:
    """A restarted stage gets the batches ZeroMQ kept queued (3, 4) before the resend of
    those its predecessor's socket lost (1, 2).  3 and 4 leave first but cannot be
    acknowledged (1, 2 missing); once 1 and 2 have left too, the acknowledgement covers
    all four.  It stopped at 2 once (CI): the sender kept 3 and 4 forever, the run
    stalled."""
    out: list[int] = []
    t = Terminal(tmp_path, ctx, out)
    t.receive(batch(CORRELATE_A, 3, 12, 200, 100))
    t.receive(batch(CORRELATE_A, 4, 13, 300, 100))
    t.let(200)
    assert t.acked() == 0  # 1 and 2 not received
    t.receive(batch(CORRELATE_A, 1, 10, 0, 100))
    t.receive(batch(CORRELATE_A, 2, 11, 100, 100))
    t.let(150)
    assert t.acked() == 1  # 2 still held
    t.let(50)
    assert t.acked() == 4
    assert sorted(out) == list(range(400))


def test_a_kill_in_a_send_burst_repeats_only_the_record_on_its_way_out(
    tmp_path: Path,
    ctx: Ctx,
) -> None:
    """A paced sink sends what it held in bursts between two turns of the loop: the
    progress follows each send (on_sent), so a kill in the middle of a burst (before
    the loop records anything) repeats the one record whose send was not recorded,
    not the whole burst (the chaos run's duplicates, in runs of 1-5 datagrams)."""
    out: list[int] = []
    t = Terminal(tmp_path, ctx, out)
    inp, flow = t.inp, t.flow
    t.sink.on_sent = lambda: inp.progress(flow)
    t.receive(batch(CORRELATE_A, 1, 10, 0, 100))
    t.receive(batch(CORRELATE_A, 2, 11, 100, 100))
    t.let(20)
    t.sink.burst(100, die_after=90)  # records 20-109 left; 109's send was not recorded
    inp.close()  # the process dies (its socket with it)
    del t
    t2 = Terminal(tmp_path, ctx, out)
    t2.receive(batch(CORRELATE_A, 2, 11, 100, 100))
    t2.let(1000)
    assert sorted(set(out)) == list(range(200))
    assert [r for r in out if out.count(r) > 1] == [109, 109]


def test_a_batch_recomputed_by_a_restarted_correlate_resumes_too(
    tmp_path: Path,
    ctx: Ctx,
) -> None:
    t2, out = killed_in_first_batch(
        tmp_path, ctx, seq=7, left=40
    )  # and correlate died too: its successor recomputes from event batch 10
    t2.receive(batch(CORRELATE_B, 1, 10, 0, 100))
    t2.let(1000)
    assert sorted(out) == list(range(100))


def test_a_batch_whose_records_all_left_is_never_delivered_again(
    tmp_path: Path,
    ctx: Ctx,
) -> None:
    t2, out = killed_in_first_batch(tmp_path, ctx, seq=1, left=100)
    # recomputed by a restarted correlate, or made again from a re-read saved log
    t2.receive(batch(CORRELATE_B, 1, 10, 0, 100))
    t2.let(1000)
    assert out == list(range(100))
    assert t2.inp.skipped_records == 100
    assert t2.acked() == 1  # acknowledged, so the sender lets it go


def test_repeated_kills_keep_every_partial_batch(tmp_path: Path, ctx: Ctx) -> None:
    """Each incarnation is killed inside a different batch before the earlier ones
    come again; up to PARTIALS - 1 such batches are remembered."""
    out: list[int] = []
    t = Terminal(tmp_path, ctx, out)
    t.receive(batch(CORRELATE_A, 1, 10, 0, 100))
    t.let(25)
    for k in range(1, PARTIALS - 1):
        del t
        t = Terminal(tmp_path, ctx, out)
        # a newer batch arrives first and is killed in too
        t.receive(batch(CORRELATE_A, 1 + k, 10 + k, 100 * k, 100))
        t.let(25)
    del t
    t = Terminal(tmp_path, ctx, out)
    for k in range(PARTIALS - 1):
        t.receive(batch(CORRELATE_A, 1 + k, 10 + k, 100 * k, 100))
    t.let(10_000)
    assert sorted(out) == list(range(100 * (PARTIALS - 1)))


def test_unknown_progress_repeats_rather_than_loses(tmp_path: Path, ctx: Ctx) -> None:
    """A recomputed batch of another length (the restarted correlate's table differed)
    goes again whole: duplicates, never a loss."""
    t2, out = killed_in_first_batch(tmp_path, ctx, seq=1, left=40)
    t2.receive(batch(CORRELATE_B, 1, 10, 0, 99))
    t2.let(1000)
    assert set(range(99)) <= set(out)
    assert len(out) == 40 + 99


def test_ring_remembers_the_newest_pairs(tmp_path: Path) -> None:
    ring = Ring(str(tmp_path / "r"), 3)
    assert ring.fresh and ring.pairs() == []
    for i in range(5):
        ring.add(i, i * 10)
    ring.close()
    again = Ring(str(tmp_path / "r"), 3)
    assert not again.fresh
    assert again.pairs() == [(2, 20), (3, 30), (4, 40)]
    again.close()


def test_partial_batches_of_many_killed_predecessors_are_all_kept(
    tmp_path: Path,
    ctx: Ctx,
) -> None:
    """A restarted stage is sent the sender's new batches as soon as it connects, and
    the unacknowledged ones only after its hello: a new batch can start leaving before
    an older, partly delivered one comes again.  Killed every time in that window, the
    stages leave one more partial batch each; every one must resume where it stopped
    when it finally comes (the 4 entries there were dropped the oldest: a chaos run
    then repeated whole batches)."""
    out: list[int] = []
    kills = 8
    for k in range(kills):
        t = Terminal(tmp_path, ctx, out)
        t.receive(batch(CORRELATE_A, 10 + k, 100 + k, 100 * k, 100))  # the newest first
        t.let(40)  # 40 of it left, then killed
        t.inp.close()
        del t
    t = Terminal(tmp_path, ctx, out)
    for k in range(kills):  # the resends, at last
        t.receive(batch(CORRELATE_A, 10 + k, 100 + k, 100 * k, 100))
    t.let(10_000)
    assert sorted(out) == list(range(100 * kills)), "each record exactly once"
