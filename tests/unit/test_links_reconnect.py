"""A link whose connection breaks resends what is unacknowledged, even to the same receiver.

Over tcp:// a connection reset can lose batches in flight while both stages live
on; the receiver's cumulative ack would then stop at the gap for ever.  The
Outlet watches its socket's connection events: after a reconnection, the next
Ack counts as a hello and everything unacknowledged goes again.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from nfflowd.messages import Ack, EventBatch, Message, Payload
from nfflowd.pipeline import codec, links
from nfflowd.pipeline.links import Outlet


class LoopbackStage:
    """What Outlet needs from a Stage: a sender socket on a tcp port on loopback."""

    name = "ingest"
    incarnation = 111

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], address: str) -> None:
        self.ctx, self.address = ctx, address
        self.malformed: list[str] = []

    def socket(self, name: str, side: str) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.connect(self.address)
        return sock

    def send(self, sock: zmq.Socket[bytes], data: bytes) -> None:
        sock.send(data)

    def count_malformed(self, reason: str, detail: str, where: str) -> None:
        self.malformed.append(reason)


def receiver(ctx: zmq.Context[zmq.Socket[bytes]], address: str) -> zmq.Socket[bytes]:
    """A DEALER bound on *address* (retried: a just-closed socket frees its port in the
    background)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for _ in range(50):
        try:
            sock.bind(address)
            return sock
        except zmq.ZMQError:
            time.sleep(0.1)
    raise AssertionError(f"cannot bind {address} again")


def batches(sock: zmq.Socket[bytes], timeout_s: float = 3.0) -> list[int]:
    """Seqs of the batches that arrive within the timeout (stops after 0.3 s of quiet)."""
    seqs: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and sock.poll(300 if seqs else 1000):
        msg: Message = codec.decode(sock.recv())
        assert isinstance(msg, EventBatch)
        seqs.append(msg.seq)
    return seqs


def pump(out: Outlet, sock: zmq.Socket[bytes], upto: int, seconds: float = 1.5) -> None:
    """The receiver (incarnation 222) acks *upto* while the outlet polls for a while."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.send(codec.encode(Ack("correlate", 222, 111, upto)))
        out.poll_acks()
        time.sleep(0.1)


def three_batches_sent(
    ctx: zmq.Context[zmq.Socket[bytes]],
) -> tuple[zmq.Socket[bytes], str, Any, Outlet]:
    """A receiver bound on a loopback port, and an outlet that has sent it batches 1-3
    (received): (receiver, address, stage, outlet)."""
    rx = ctx.socket(zmq.DEALER)
    rx.setsockopt(zmq.LINGER, 0)
    address = f"tcp://127.0.0.1:{rx.bind_to_random_port('tcp://127.0.0.1')}"
    stage: Any = LoopbackStage(ctx, address)
    out = Outlet(stage, "events", limit=64)
    for _ in range(3):
        out.send(lambda seq, acked: EventBatch("ingest", 111, seq, acked, Payload.TEXT, b"", 0))
    assert batches(rx) == [1, 2, 3]
    return rx, address, stage, out


def test_a_reconnected_receiver_gets_the_unacknowledged_batches_again() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        rx, address, stage, out = three_batches_sent(ctx)
        pump(out, rx, upto=1)  # the first Ack is a hello: 2 and 3 go once more
        assert batches(rx) == [2, 3]
        pump(out, rx, upto=1)  # same receiver, same connection: nothing again
        assert batches(rx, timeout_s=1.0) == []
        assert out.reconnects == 0

        rx.close(linger=0)  # the connection breaks; the receiver process lives on
        time.sleep(0.3)
        rx = receiver(ctx, address)
        pump(out, rx, upto=1, seconds=2.0)
        assert out.reconnects == 1
        assert batches(rx) == [2, 3]
        assert out.counters()["events_reconnects"] == 1
        assert stage.malformed == []
        rx.close(linger=0)
        out.sock.close(linger=0)
    finally:
        ctx.destroy(linger=0)


def test_a_batch_lost_without_a_restart_goes_again_once_acks_stop_at_it() -> None:
    """No hello, no reconnection: the receiver's acks stay below batch 2 (lost on the
    way).  After RETRANSMIT_S of acks that release nothing, the oldest unacknowledged
    batch goes again — that one only, not before; then after twice as long."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        rx, _, _, out = three_batches_sent(ctx)
        out.outbox.ack(1)
        rto = links.RETRANSMIT_S
        t = 1000.0
        out._head_of_line(1, t)  # an ack released batch 1: not stuck
        out._head_of_line(0, t + 1.0)  # acks from here on release nothing
        out._head_of_line(0, t + 1.0 + rto - 0.1)
        assert batches(rx, timeout_s=0.5) == []
        t += 1.0 + rto
        out._head_of_line(0, t)
        assert batches(rx) == [2]  # the head only
        out._head_of_line(0, t + 1.5 * rto)  # the wait doubled
        assert batches(rx, timeout_s=0.5) == []
        out._head_of_line(0, t + 2 * rto)
        assert batches(rx) == [2] and out.outbox.resent == 2
        t += 2 * rto
        for _ in range(10):  # never waits longer than RETRANSMIT_MAX_S
            t += links.RETRANSMIT_MAX_S
            out._head_of_line(0, t)
        assert out.outbox.resent == 12
        assert len(batches(rx)) == 10
        out.outbox.ack(3)
        out._head_of_line(2, t + 100.0)
        out._head_of_line(0, t + 200.0)  # nothing held: nothing goes again
        assert batches(rx, timeout_s=0.5) == []
        rx.close(linger=0)
        out.sock.close(linger=0)
    finally:
        ctx.destroy(linger=0)
