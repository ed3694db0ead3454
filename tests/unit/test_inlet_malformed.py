"""A running link survives what is not a batch: garbage, unknown kinds, unknown versions.

A receiver that met a bad message and stopped, or raised, would stall the whole
pipeline behind it (the sender keeps resending what is not acknowledged).  Each bad
message must be counted with its reason (the ``malformed_<reason>`` counters of
``nfflowd status``), dropped, and the next valid batch received as if nothing happened.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq

from nfflowd.conntrack.text import parse_line
from nfflowd.messages import SCHEMA_VERSION, Ack, EventBatch, Kind, Payload
from nfflowd.pipeline import codec, links
from nfflowd.pipeline.delivery import Inbox
from nfflowd.pipeline.links import Inlet, Outlet

ADDRESS = "inproc://events"
LINE = (
    "[1795714273.762413]\t[DESTROY] tcp      6 src=10.0.1.2 dst=10.0.2.2 sport=34998 dport=5001 "
    "packets=5 bytes=1268 src=10.0.2.2 dst=10.0.1.2 sport=5001 dport=34998 packets=5 "
    "bytes=2268 [ASSURED] delta-time=2 id=3383701959"
)


class InprocStage:
    """What Inlet needs from a Stage: a receiver socket bound on inproc, a malformed counter."""

    name = "correlate"
    incarnation = 222

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.ctx = ctx
        self.malformed: list[tuple[str, str]] = []

    def socket(self, name: str, side: str) -> zmq.Socket[bytes]:
        assert side == "receiver"
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(ADDRESS)
        return sock

    def count_malformed(self, reason: str, detail: str, where: str) -> None:
        self.malformed.append((reason, where))


class OutletStage:
    """What Outlet needs from a Stage: a sender socket, send, a malformed counter."""

    name = "ingest"
    incarnation = 111

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self.ctx = ctx
        self.malformed: list[tuple[str, str]] = []

    def socket(self, name: str, side: str) -> zmq.Socket[bytes]:
        assert side == "sender"
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        return sock

    def send(self, sock: zmq.Socket[bytes], data: bytes) -> None:
        sock.send(data)

    def count_malformed(self, reason: str, detail: str, where: str) -> None:
        self.malformed.append((reason, where))


@pytest.fixture
def link() -> Iterator[tuple[InprocStage, Inlet, zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        stage = InprocStage(ctx)
        inlet = Inlet(stage, "events")  # type: ignore[arg-type]
        sender = ctx.socket(zmq.DEALER)
        sender.setsockopt(zmq.LINGER, 0)
        sender.connect(ADDRESS)
        yield stage, inlet, sender
        sender.close(linger=0)
        inlet.sock.close(linger=0)
    finally:
        ctx.destroy(linger=0)


def deliver(inlet: Inlet, sender: zmq.Socket[bytes], data: bytes) -> Any:
    """Send *data*, wait until it is waiting at the inlet, receive once; nothing may remain."""
    sender.send(data)
    assert inlet.sock.poll(5000, zmq.POLLIN), "the message never reached the inlet"
    got = inlet.receive()
    assert not inlet.sock.poll(0, zmq.POLLIN), "receive() left the message on the socket"
    return got


def test_bad_messages_are_counted_dropped_and_the_link_goes_on(
    link: tuple[InprocStage, Inlet, zmq.Socket[bytes]],
) -> None:
    stage, inlet, sender = link
    assert parse_line(LINE) is not None
    batch = EventBatch("ingest", 111, 1, 0, Payload.TEXT, LINE.encode() + b"\n", 1, "t.log", 1)
    valid = codec.encode(batch)
    wire = msgpack.unpackb(valid)  # [kind, version, *fields]
    assert wire[:2] == [Kind.EVENT_BATCH, SCHEMA_VERSION]
    bad = [
        ("malformed", b"\xc1 not msgpack at all"),  # 0xc1: a byte msgpack never uses
        ("malformed", valid[: len(valid) // 2]),  # a batch cut in half
        ("unknown_kind", msgpack.packb([99, SCHEMA_VERSION, "ingest", 111, 1, 0, 1, b"", 0])),
        ("unknown_version", msgpack.packb([*wire[:1], SCHEMA_VERSION + 1, *wire[2:]])),
        ("unexpected_kind", codec.encode(Ack("export", 333, 222, 0))),  # valid, wrong direction
    ]
    for _, data in bad:
        assert deliver(inlet, sender, data) is None
    assert stage.malformed == [(reason, "events link") for reason, _ in bad]

    assert deliver(inlet, sender, valid) == batch
    assert (inlet.inbox.incarnation, inlet.inbox.contiguous) == (111, 1)
    assert inlet.counters() == {
        "events_duplicates": 0,
        "events_sender_restarts": 0,
        "events_stale": 0,
        "events_reverted": 0,
    }
    assert len(stage.malformed) == len(bad)  # the valid batch counted nothing


def test_batches_no_real_sender_can_send_are_refused_and_change_nothing(
    link: tuple[InprocStage, Inlet, zmq.Socket[bytes]],
) -> None:
    """A forged or broken batch that decodes: an incarnation from the future would make
    the real sender's batches stale (the pipeline stops, silently); an acknowledgement
    at or beyond its own seq would make the receiver take later batches as seen."""
    stage, inlet, sender = link
    data = LINE.encode() + b"\n"
    real = EventBatch("ingest", 111, 1, 0, Payload.TEXT, data, 1, "t.log", 1)
    forged = [
        real._replace(incarnation=2**63 - 1),  # the year 2262
        real._replace(incarnation=time.time_ns() + 3600 * 10**9),  # an hour ahead
        real._replace(seq=5, acked=5),  # acknowledged before it was sent
        real._replace(seq=5, acked=2**62),
        real._replace(seq=2**62, acked=0),  # further ahead than any window
    ]
    for batch in forged:
        assert deliver(inlet, sender, codec.encode(batch)) is None
    assert [reason for reason, _ in stage.malformed] == ["implausible"] * len(forged)
    # nothing changed: the real sender's first batch is new, and so is its second
    assert deliver(inlet, sender, codec.encode(real)) == real
    second = real._replace(seq=2, acked=0)
    assert deliver(inlet, sender, codec.encode(second)) == second
    assert (inlet.inbox.incarnation, inlet.inbox.contiguous) == (111, 2)
    # a sender whose clock is a little ahead of ours (another host) is accepted
    ahead = real._replace(incarnation=time.time_ns() + 10**9)
    assert deliver(inlet, sender, codec.encode(ahead)) == ahead


def test_an_ack_of_batches_never_sent_releases_nothing() -> None:
    """An Ack beyond the last batch sent would drop unacknowledged batches: refused."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        stage = OutletStage(ctx)
        outlet = Outlet(stage, "events", 64)  # type: ignore[arg-type]
        receiver = ctx.socket(zmq.DEALER)
        receiver.setsockopt(zmq.LINGER, 0)
        receiver.bind(ADDRESS)
        outlet.sock.connect(ADDRESS)
        for _ in range(3):
            outlet.outbox.add(b"batch")
        forged = Ack("correlate", 333, stage.incarnation, 2**62)
        real = Ack("correlate", 333, stage.incarnation, 2)
        for ack in (forged, real):
            receiver.send(codec.encode(ack))
            deadline = time.monotonic() + 5
            while outlet.acks_seen == 0 or (ack is real and outlet.outbox.acked_upto < 2):
                assert time.monotonic() < deadline, "the ack never arrived"
                outlet.poll_acks()
                time.sleep(0.01)
        assert [reason for reason, _ in stage.malformed] == ["implausible"]
        assert list(outlet.outbox.unacked) == [3]
        receiver.close(linger=0)
        outlet.sock.close(linger=0)
    finally:
        ctx.destroy(linger=0)


def test_a_forged_incarnation_holds_the_real_sender_back_for_a_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A forged batch whose incarnation is just ahead of the clock (within what a real
    sender on another host may have): the real sender's batches are stale for a while,
    then its resends (its acks are about another sender) are taken back, and every
    batch it sent is received; the forged sender is never taken again."""
    monkeypatch.setattr(links, "FOREIGN_ACKS_S", 0.2)
    monkeypatch.setattr(Inbox, "STALE_GRACE_S", 0.5)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        receiver_stage, sender_stage = InprocStage(ctx), OutletStage(ctx)
        sender_stage.incarnation = time.time_ns()
        inlet = Inlet(receiver_stage, "events")  # type: ignore[arg-type]
        outlet = Outlet(sender_stage, "events", 64)  # type: ignore[arg-type]
        outlet.sock.connect(ADDRESS)
        forger = ctx.socket(zmq.DEALER)
        forger.setsockopt(zmq.LINGER, 0)
        forger.connect(ADDRESS)
        data = LINE.encode() + b"\n"

        def real(seq: int, acked: int) -> EventBatch:
            inc = sender_stage.incarnation
            return EventBatch("ingest", inc, seq, acked, Payload.TEXT, data, 1, "t.log", seq)

        outlet.send(real)
        got = [b.seq for b in receive_all(inlet, outlet, 0.3)]
        assert got == [1]
        forged = real(1, 0)._replace(incarnation=time.time_ns() + 30 * 10**9)
        forger.send(codec.encode(forged))
        assert [b.incarnation for b in receive_all(inlet, outlet, 0.3)] == [forged.incarnation]
        t0 = time.monotonic()
        for _ in range(3):
            outlet.send(real)
        while len(got) < 4:
            assert time.monotonic() - t0 < 10, f"the real sender was not taken back: {got}"
            got += [b.seq for b in receive_all(inlet, outlet, 0.1)]
        assert got == [1, 2, 3, 4]
        assert inlet.inbox.incarnation == sender_stage.incarnation
        assert inlet.counters()["events_reverted"] == 1
        assert inlet.counters()["events_stale"] >= 3
        forger.send(codec.encode(forged._replace(seq=2)))  # never taken again
        assert receive_all(inlet, outlet, 0.3) == []
        for sock in (forger, outlet.sock, inlet.sock):
            sock.close(linger=0)
    finally:
        ctx.destroy(linger=0)


def receive_all(inlet: Inlet, outlet: Outlet, seconds: float) -> list[EventBatch]:
    """Run both ends of the link for *seconds*: what the inlet takes as new batches
    (acknowledged at once, with heartbeats), and the outlet's handling of the acks."""
    out: list[EventBatch] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        inlet.sock.poll(20, zmq.POLLIN)
        while (batch := inlet.receive()) is not None:
            assert isinstance(batch, EventBatch)
            out.append(batch)
            inlet.ack(batch.seq)
        inlet.heartbeat()
        outlet.poll_acks()
    return out
