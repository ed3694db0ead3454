"""The codec: every message round-trips; anything else is a DecodeError with a reason."""

from __future__ import annotations

import contextlib
import time

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfflowd.messages import (
    FLOW_RECORD,
    SCHEMA_VERSION,
    Ack,
    EventBatch,
    FlowBatch,
    FlowRecord,
    Kind,
    Notice,
    Payload,
    pack_flows,
    unpack_flows,
)
from nfflowd.pipeline import codec

RECORD = FlowRecord(1, 2, 4, 6, b"\n\0\1\2", b"\xcb\0q\2", 40000, 80, 10, 2**40, b"\xcb\0q\1",
                    b"\xcb\0q\2", 40000, 80, 1, 3, 0, 0, 42)  # fmt: skip
V6_SRC, V6_DST = b"\xfd" + b"\0" * 15, b"\x20\x01" + b"\1" * 14
RECORD6 = RECORD._replace(
    family=6, src=V6_SRC, dst=V6_DST, post_src=b"\x20\x01" + b"\2" * 14, post_dst=V6_DST
)
LINES = b"[1700000000.123456]\t[NEW] tcp 6 120 SYN_SENT src=10.0.0.1 dst=203.0.113.2 ...\n"


@pytest.mark.parametrize(
    "msg",
    [
        EventBatch("ingest", 7, 1, 0, Payload.TEXT, LINES, 1, "a.log", 12),
        EventBatch("ingest", 7, 2, 1, Payload.NETLINK, b"\0" * 40, 1, "ctnetlink", 0, 9, 2**50),
        FlowBatch("correlate", 8, 2, 1, 5, 3, pack_flows([RECORD, RECORD6])),
        Ack("export", 5, 7, 42),
        Notice("export", "eof", {"records": 3, "newest_event_ms": -1}),
    ],
)
def test_round_trip(msg: object) -> None:
    back = codec.decode(codec.encode(msg))  # type: ignore[arg-type]
    assert back == msg and type(back) is type(msg)


def test_flow_block_round_trips_records_of_both_families() -> None:
    back = codec.decode(codec.encode(FlowBatch("c", 1, 1, 0, 1, 1, pack_flows([RECORD, RECORD6]))))
    assert isinstance(back, FlowBatch)
    assert unpack_flows(back.records) == [RECORD, RECORD6]
    assert len(back.records) == 2 * FLOW_RECORD.size


def frame(*fields: object) -> bytes:
    data: bytes = msgpack.packb(fields, use_bin_type=True)
    return data


V = SCHEMA_VERSION
GOOD_EVENTS = (Kind.EVENT_BATCH, V, "ingest", 7, 1, 0, Payload.TEXT, LINES, 1, "a.log", 1, 0, 0)
GOOD_FLOWS = (Kind.FLOW_BATCH, V, "correlate", 8, 2, 1, 5, 3, pack_flows([RECORD]))


def replace(fields: tuple[object, ...], i: int, value: object) -> bytes:
    return frame(*fields[:i], value, *fields[i + 1 :])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (frame(99, V, "x"), "unknown_kind"),
        (frame({"kind": 1}, V), "unknown_kind"),  # a map as the kind (was: TypeError)
        (frame([1], V), "unknown_kind"),
        (frame(Kind.ACK, V + 1, "x", 1, 2, 3), "unknown_version"),
        (frame(Kind.ACK, float(V), "x", 1, 2, 3), "unknown_version"),
        (frame(Kind.ACK, V, "x", 1, "two", 3), "malformed"),
        (frame(Kind.ACK, V, "x", 1, 2), "malformed"),
        (frame(Kind.ACK, V, "", 1, 2, 3), "malformed"),
        (frame(Kind.ACK, V, "x", True, 2, 3), "malformed"),  # a bool is not a number here
        (frame(Kind.ACK, V, "x" * 300, 1, 2, 3), "malformed"),
        (msgpack.packb({"kind": 1}), "malformed"),
        (b"\xc1\xc1\xc1", "malformed"),
        (b"", "malformed"),
        (frame(Kind.NOTICE, V, "x", "stats", {"a": "b"}), "malformed"),
        (frame(Kind.NOTICE, V, "x", "stats", [1, 2]), "malformed"),
        # the flow block must hold whole records
        (replace(GOOD_FLOWS, 8, b"\0" * (FLOW_RECORD.size + 1)), "malformed"),
        (replace(GOOD_FLOWS, 8, [1, 2]), "malformed"),
        (replace(GOOD_EVENTS, 6, 7), "malformed"),  # an unknown payload
        (replace(GOOD_EVENTS, 7, "text"), "malformed"),  # data must be bytes
    ],
)
def test_bad_messages_have_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(codec.DecodeError) as info:
        codec.decode(data)
    assert info.value.reason == reason


#: What the fuzzer found the codec accepting or crashing on (issue 13): every field of the
#: batches, with values a real sender never produces.
HOSTILE: list[object] = [None, -1, 2**64 - 1, 2**63, 1.5, float("nan"), float("inf"), "12",
                         b"12", [], {}, True]  # fmt: skip


@pytest.mark.parametrize("good", [GOOD_EVENTS, GOOD_FLOWS], ids=["events", "flows"])
def test_every_field_is_checked_for_type_and_range(good: tuple[object, ...]) -> None:
    assert codec.decode(frame(*good))  # the untouched frame is fine
    for i in range(2, len(good)):
        for value in HOSTILE:
            if type(value) is type(good[i]) and value == good[i]:
                continue
            if type(value) is type(good[i]) and isinstance(value, str | bytes):
                continue  # another name is a name, other bytes are bytes
            data = replace(good, i, value)
            with pytest.raises(codec.DecodeError):
                codec.decode(data)


def test_hostile_frames_decode_or_fail_fast() -> None:
    """The slow frames of the fuzzing (deep nesting, huge maps and arrays) are bounded."""
    deep = b"\x91" * 100_000 + b"\x00"  # [[[[...]]]]
    wide = msgpack.packb([Kind.NOTICE, V, "x", "stats", {str(i): i for i in range(100_000)}])
    many = msgpack.packb([Kind.ACK, V, *range(1_000_000)])
    big_bin = frame(*GOOD_EVENTS[:7], b"\0" * (codec.FRAME_MAX + 1), *GOOD_EVENTS[8:])
    for data in (deep, wide, many, big_bin):
        t0 = time.perf_counter()
        with pytest.raises(codec.DecodeError):
            codec.decode(data)
        assert time.perf_counter() - t0 < 0.5


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    with contextlib.suppress(codec.DecodeError):
        codec.decode(data)


@settings(max_examples=300)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.text(max_size=5)
        | st.binary(max_size=5),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=3), children, max_size=3)
        ),
        max_leaves=20,
    ),
    st.sampled_from(list(Kind)),
)
def test_random_structures_with_a_valid_kind_never_escape(body: object, kind: Kind) -> None:
    fields = body if isinstance(body, list) else [body]
    with contextlib.suppress(codec.DecodeError):
        codec.decode(msgpack.packb([int(kind), V, *fields], use_bin_type=True))
