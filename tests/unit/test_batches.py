"""correlate/batches.py: an event batch's bytes -> a flow block, as the correlate stage does it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nfflowd.conntrack.netlink import encode_event
from nfflowd.conntrack.payloads import frame
from nfflowd.conntrack.text import parse_line
from nfflowd.correlate.batches import BatchCorrelator
from nfflowd.correlate.correlator import Correlator
from nfflowd.lab.events import generate
from nfflowd.messages import EventBatch, Payload, unpack_flows

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden"


def text_batch(data: bytes, seq: int = 1, where: str = "log", first: int = 1) -> EventBatch:
    return EventBatch("ingest", 5, seq, 0, Payload.TEXT, data, data.count(b"\n"), where, first)


def test_text_batches_give_what_parse_and_feed_give(tmp_path: Path) -> None:
    """NEW lines with a conntrack id take the fast path; records and counters are those of
    parsing every line and feeding every event."""
    log = tmp_path / "events.log"
    generate(str(log), 6000, seed=3)
    data = log.read_bytes()
    plain = Correlator()
    events = [ev for ln in data.decode().splitlines() if (ev := parse_line(ln)) is not None]
    want = plain.feed_block(events)
    work = BatchCorrelator(plain.ttl_s)
    got = work.records(text_batch(data))
    assert got == want and len(unpack_flows(got)) > 1000
    c = work.counters()
    assert (c["new"], c["destroy"], c["records"], c["open"], c["new_duplicate"]) == (
        plain.counters.new,
        plain.counters.destroy,
        plain.counters.records,
        len(plain.open),
        plain.counters.new_duplicate,
    )
    assert c["events"] == len(events) and c["lines"] == data.count(b"\n")


def test_a_reread_batch_makes_no_records_again() -> None:
    data = (GOLDEN / "lab-events.log").read_bytes()
    work = BatchCorrelator(604800)
    batch = text_batch(data)._replace(origin_stream=77, origin_pos=0)
    assert len(unpack_flows(work.records(batch))) == 27
    again = batch._replace(incarnation=6)  # a restarted ingest, the same saved-log position
    assert work.records(again) == b""
    assert work.counters()["reread_events"] == batch.n_events


def test_a_bad_line_is_counted_and_named_by_place(caplog: pytest.LogCaptureFixture) -> None:
    data = (GOLDEN / "lab-events.log").read_bytes()
    lines = data.splitlines(keepends=True)
    bad = b"".join([*lines[:3], b"[1795714525.0]\t[DESTROY] tcp 6 src=nowhere\n", *lines[3:]])
    work = BatchCorrelator(604800)
    with caplog.at_level(logging.WARNING, logger="nfflowd.source"):
        records = unpack_flows(work.records(text_batch(bad, where="lab.log", first=41)))
    assert len(records) == 27  # the rest of the batch goes on
    assert work.counters()["malformed_lines"] == 1
    assert any("lab.log:44: malformed event line" in r.message for r in caplog.records)


def test_netlink_batches_decode_in_place() -> None:
    """Framed datagrams: the records of the golden log's events, whatever the framing."""
    events = [
        ev
        for ln in (GOLDEN / "lab-events.log").read_text().splitlines()
        if (ev := parse_line(ln)) is not None
    ]
    want = Correlator().feed_block(events)
    data = bytearray()
    for ev in events:  # the kernel sends each event in a datagram of its own
        frame(data, ev.time_ns, encode_event(ev))
    batch = EventBatch("ingest", 5, 1, 0, Payload.NETLINK, bytes(data), len(events), "ctnetlink")
    work = BatchCorrelator(604800)
    assert work.records(batch) == want
    # other connections of the same shapes: every message now read by a compiled layout
    others = [ev._replace(ct_id=(ev.ct_id or 0) + 1000) for ev in events]
    data = bytearray()
    for ev in others:
        frame(data, ev.time_ns, encode_event(ev))
    fast = work.counters()["fast_decoded"]
    assert work.records(batch._replace(seq=2, data=bytes(data))) == Correlator().feed_block(others)
    assert work.counters()["fast_decoded"] - fast == len(others)


def test_stamped_destroys_go_straight_to_records() -> None:
    """DESTROY only, with the kernel's start and stop (the stateless mode): once a shape is
    known, the picked values become records without an event; the bytes are the same."""
    events = [
        ev._replace(start_ns=ev.time_ns - 2_000_000_123, stop_ns=ev.time_ns - 1_000_000)
        for ln in (GOLDEN / "lab-events.log").read_text().splitlines()
        if (ev := parse_line(ln)) is not None and ev.type == 3
    ]
    events += [ev._replace(ct_id=ev.ct_id + 1000 if ev.ct_id else None) for ev in events]
    want = Correlator().feed_block(events)
    data = bytearray()
    for ev in events:
        frame(data, ev.time_ns, encode_event(ev))
    batch = EventBatch("ingest", 5, 1, 0, Payload.NETLINK, bytes(data), len(events), "ctnetlink")
    work = BatchCorrelator(604800)
    assert work.records(batch) == want
    c = work.counters()
    # the second copy of each shape took the fused path (and so did repeats of a shape)
    assert c["fast_decoded"] >= len(events) // 2 and c["destroy"] == len(events)
    assert c["open"] == 0 and c["destroy_without_new"] == 0
