"""The codec: every message round-trips; anything else is a DecodeError with a reason."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfflowd.messages import (
    SCHEMA_VERSION,
    Ack,
    ConntrackEvent,
    EventBatch,
    FlowBatch,
    FlowRecord,
    Kind,
    Notice,
)
from nfflowd.pipeline import codec

EVENT = ConntrackEvent(3, 1_700_000_000_123_456_789, 4, 6, b"\n\0\1\2", b"\xcb\0q\2", 40000, 80,
                       b"\xcb\0q\2", b"\xcb\0q\1", 80, 40000, 10, 1000, 8, 5000, 42, None, None,
                       12, 0, 0, 0)  # fmt: skip
RECORD = FlowRecord(1, 2, 4, 6, b"\n\0\1\2", b"\xcb\0q\2", 40000, 80, 10, 2**40, b"\xcb\0q\1",
                    b"\xcb\0q\2", 40000, 80, 1, 3, 0, 0, 42)  # fmt: skip


@pytest.mark.parametrize(
    "msg",
    [
        EventBatch("ingest", 7, 1, 0, [EVENT, EVENT]),
        FlowBatch("correlate", 8, 2, 1, 5, 3, [RECORD]),
        Ack("export", 5, 7, 42),
        Notice("export", "eof", {"records": 3}),
    ],
)
def test_round_trip(msg: object) -> None:
    back = codec.decode(codec.encode(msg))  # type: ignore[arg-type]
    assert back == msg and type(back) is type(msg)


def test_event_fields_keep_their_types() -> None:
    back = codec.decode(codec.encode(EventBatch("ingest", 1, 1, 0, [EVENT])))
    assert isinstance(back, EventBatch)
    ev = back.events[0]
    assert isinstance(ev, ConntrackEvent) and ev.orig_src == b"\n\0\1\2" and ev.start_ns is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (msgpack.packb([99, SCHEMA_VERSION, "x"]), "unknown_kind"),
        (msgpack.packb([Kind.ACK, SCHEMA_VERSION + 1, "x", 1, 2, 3]), "unknown_version"),
        (msgpack.packb([Kind.ACK, SCHEMA_VERSION, "x", 1, "two", 3]), "malformed"),
        (msgpack.packb([Kind.EVENT_BATCH, SCHEMA_VERSION, "i", 1, 1, 0, [[1, 2]]]), "malformed"),
        (msgpack.packb({"kind": 1}), "malformed"),
        (b"\xc1\xc1\xc1", "malformed"),
        (b"", "malformed"),
    ],
)
def test_bad_messages_have_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(codec.DecodeError) as info:
        codec.decode(data)
    assert info.value.reason == reason


@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    with contextlib.suppress(codec.DecodeError):
        codec.decode(data)
