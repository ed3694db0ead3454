"""The delivery protocol as a state machine: outbox, inbox, acknowledgements, ledger."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nfflowd.pipeline.delivery import Acker, Inbox, Ledger, Outbox


def test_outbox_keeps_until_acked_and_resends_to_a_new_receiver() -> None:
    out = Outbox(limit=3)
    for payload in (b"a", b"b", b"c"):
        out.add(payload)
    assert out.full() and list(out.unacked) == [1, 2, 3]
    assert out.hello(111) == [b"a", b"b", b"c"]  # a receiver we had not heard from
    assert out.hello(111) == []  # the same receiver's heartbeat
    assert out.ack(2) == 2 and not out.full() and list(out.unacked) == [3]
    assert out.ack(1) == 0  # an old acknowledgement changes nothing
    out.add(b"d")
    assert out.hello(222) == [b"c", b"d"]  # the receiver restarted: resend what it may have lost
    assert out.resent == 5


def test_inbox_deduplicates_and_follows_sender_restarts() -> None:
    inbox = Inbox()
    assert [inbox.accept(10, s) for s in (1, 2, 3)] == [True, True, True]
    assert [inbox.accept(10, s) for s in (2, 3)] == [False, False]  # resent after a hello
    assert inbox.accept(10, 5) and inbox.accept(10, 4) and not inbox.accept(10, 5)
    assert inbox.contiguous == 5 and inbox.ahead == set()
    assert inbox.accept(20, 1)  # the sender restarted: its seqs start again
    assert not inbox.accept(10, 6)  # a straggler of the old incarnation
    assert (inbox.duplicates, inbox.stale, inbox.restarts) == (3, 1, 1)


def test_an_older_sender_that_still_sends_is_taken_back_after_the_grace() -> None:
    """A newer incarnation that falls silent while the older one still sends was not a
    restart (a dead sender sends nothing): after STALE_GRACE_S the receiver goes back."""
    inbox, grace = Inbox(), Inbox.STALE_GRACE_S
    assert inbox.accept(10, 1, now=100.0) and inbox.accept(10, 2, now=101.0)
    assert inbox.accept(99, 1, now=102.0)  # a forged "restart"
    assert not inbox.accept(10, 3, acked=2, now=102.0 + grace - 0.1)  # stale, within the grace
    assert inbox.accept(10, 3, acked=2, now=102.0 + grace)  # the real sender is back
    assert not inbox.accept(10, 3, now=102.0 + grace)  # and de-duplicated as before
    assert not inbox.accept(99, 2, now=102.0 + grace)  # the forged one is now the stale one
    assert (inbox.incarnation, inbox.contiguous) == (10, 3)
    assert (inbox.stale, inbox.reverted, inbox.duplicates) == (2, 1, 1)


def test_a_resumed_receiver_drops_an_old_sender_queued_batches() -> None:
    """A terminal stage resumes its position (no batch seen yet): stragglers of an older
    sender that were queued for it are stale from its start, not taken back at once."""
    inbox = Inbox(incarnation=20, contiguous=7)
    assert not inbox.accept(10, 9, now=50.0)
    assert not inbox.accept(10, 10, now=50.0 + Inbox.STALE_GRACE_S / 2)
    assert inbox.accept(20, 8, now=51.0)
    assert inbox.stale == 2 and inbox.reverted == 0


def test_acker_is_cumulative() -> None:
    ack = Acker()
    assert ack.durable(2) == 0 and ack.durable(1) == 2 and ack.durable(4) == 2
    assert ack.durable(3) == 4


def test_ledger_acks_event_batches_once_both_outputs_have_their_records() -> None:
    led = Ledger()
    led.record(1, 1)  # event batch 1 -> flow batch 1
    led.record(2, 0)  # event batch 2 produced no records
    led.record(3, 2)
    assert led.ackable(3) == 0
    led.output_acked("export", 2)
    assert led.ackable(3) == 0  # mirror has nothing yet
    led.output_acked("mirror", 1)
    assert led.ackable(3) == 2  # batch 2 rides along with batch 1
    led.output_acked("mirror", 2)
    assert led.ackable(3) == 3 and not led.entries


def test_ledger_never_acknowledges_a_batch_that_arrived_late_before_it_is_covered() -> None:
    """After a restart, event batches 4-5 (kept queued by ZeroMQ) arrive before the
    resend of 2-3 (lost in the dead peer's socket).  4-5's records are acknowledged
    first: that must not acknowledge 2-3 to ingest while their records are still on
    their way (a correlate crash would lose them), nor hold 4-5 back once 2-3 are
    covered."""
    led = Ledger()
    led.record(1, 1)
    led.record(4, 2)  # received: 1, then 4 (contiguous 1)
    led.record(5, 3)
    for out in ("export", "mirror"):
        led.output_acked(out, 3)
    assert led.ackable(1) == 1
    led.record(2, 4)  # the resend arrives: contiguous 5
    led.record(3, 5)
    assert led.ackable(5) == 1  # 2 and 3 are not covered yet
    for out in ("export", "mirror"):
        led.output_acked(out, 4)
    assert led.ackable(5) == 2
    for out in ("export", "mirror"):
        led.output_acked(out, 5)
    assert led.ackable(5) == 5 and not led.entries


@given(
    st.lists(st.integers(1, 40), min_size=1, max_size=200),
    st.lists(st.integers(1, 40), max_size=50),
)
def test_every_batch_is_accepted_exactly_once(order: list[int], restarts_at: list[int]) -> None:
    """Any interleaving of sends, resends and duplicates: each seq accepted once."""
    inbox = Inbox()
    accepted = [s for s in order if inbox.accept(1, s)]
    assert sorted(accepted) == sorted(set(order))
    assert inbox.duplicates == len(order) - len(set(order))


@given(st.lists(st.sampled_from(["send", "ack", "crash", "deliver"]), max_size=300))
def test_link_loses_nothing_across_receiver_crashes(script: list[str]) -> None:
    """Sender, an unreliable pipe (lost on crash), a receiver that acks what it handled."""
    out, inbox, acker = Outbox(limit=10_000), Inbox(), Acker()
    pipe: list[tuple[int, bytes]] = []
    handled: list[bytes] = []
    receiver_inc = 1
    sent = 0
    for step in script:
        if step == "send":
            sent += 1
            payload = str(sent).encode()
            seq = out.add(payload)
            pipe.append((seq, payload))
        elif step == "deliver" and pipe:
            seq, payload = pipe.pop(0)
            if inbox.accept(7, seq):
                handled.append(payload)
                acker.durable(seq)
        elif step == "ack":
            out.ack(acker.upto)
        elif step == "crash":  # receiver dies: its pipe contents are lost; it restarts
            pipe.clear()
            receiver_inc += 1
            inbox, acker = Inbox(), Acker()
            pipe.extend((s, p) for s, p in zip(out.unacked, out.hello(receiver_inc), strict=True))
    # finally: resend and deliver everything
    receiver_inc += 1
    pipe = list(zip(out.unacked, out.hello(receiver_inc), strict=True))
    for seq, payload in pipe:
        if inbox.accept(7, seq):
            handled.append(payload)
    assert set(handled) == {str(i).encode() for i in range(1, sent + 1)}


def test_a_restarted_ingest_is_not_acknowledged_past_unacknowledged_records() -> None:
    """Ingest restarts while flow batches 1..2 wait at a stopped mirror; its re-read
    events make no new records (already closed), yet must not be acknowledged before
    batches 1..2 are: a correlate crash then would lose them."""
    led = Ledger()
    led.record(1, 1)
    led.record(2, 2)
    led.output_acked("export", 2)
    assert led.ackable(2) == 0  # mirror has nothing yet
    led.reset()  # a new ingest incarnation
    led.record(1, 0)  # its re-read batches: duplicates, no flow batch
    led.record(2, 0)
    assert led.ackable(2) == 0
    led.output_acked("mirror", 1)
    assert led.ackable(2) == 0
    led.output_acked("mirror", 2)
    assert led.ackable(2) == 2
    led.record(3, 3)  # later batches as usual
    led.output_acked("export", 3)
    led.output_acked("mirror", 3)
    assert led.ackable(3) == 3
