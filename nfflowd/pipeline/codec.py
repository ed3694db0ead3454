"""Bytes <-> :mod:`nfflowd.messages` records.  The only module that imports msgpack.

Wire form of every message: a msgpack array ``[kind, version, *fields]`` where
nested records (events, flow records) are arrays too, never maps.  Decoding
checks the kind, the version and the shape; anything else raises
:class:`DecodeError`, which a worker counts and drops (see ``Counters``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from nfflowd.messages import (
    EVENT_FIELDS,
    FLOW_FIELDS,
    SCHEMA_VERSION,
    Ack,
    ConntrackEvent,
    EventBatch,
    FlowBatch,
    FlowRecord,
    Kind,
    Message,
    Notice,
)


class DecodeError(ValueError):
    """A message that is not a valid record of this schema; ``reason`` is a counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _pack(obj: object) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def encode(msg: Message) -> bytes:
    """Serialise one message."""
    if isinstance(msg, EventBatch):
        return _pack((Kind.EVENT_BATCH, SCHEMA_VERSION, *msg))
    if isinstance(msg, FlowBatch):
        return _pack((Kind.FLOW_BATCH, SCHEMA_VERSION, *msg))
    if isinstance(msg, Ack):
        return _pack((Kind.ACK, SCHEMA_VERSION, *msg))
    if isinstance(msg, Notice):
        return _pack((Kind.NOTICE, SCHEMA_VERSION, msg.stage, msg.token, msg.counters))
    raise TypeError(f"not a message: {type(msg).__name__}")


def _items(raw: Any, width: int, what: str) -> list[Any]:
    if not isinstance(raw, (list, tuple)):
        raise DecodeError("malformed", f"{what}: expected an array")
    for i, item in enumerate(raw):
        if not isinstance(item, (list, tuple)) or len(item) != width:
            raise DecodeError("malformed", f"{what}[{i}]: expected an array of {width} fields")
    return list(raw)


def decode(data: bytes) -> Message:
    """Parse one message; raise :class:`DecodeError` for anything that is not one."""
    try:
        obj = msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise DecodeError("malformed", f"not msgpack ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(obj, tuple) or len(obj) < 2:
        raise DecodeError("malformed", "expected [kind, version, ...]")
    kind, version = obj[0], obj[1]
    if kind not in _DECODERS:
        raise DecodeError("unknown_kind", f"kind {kind!r}")
    if version != SCHEMA_VERSION:
        raise DecodeError("unknown_version", f"kind {kind} version {version!r}")
    return _DECODERS[kind](obj)


def _event_batch(obj: Sequence[Any]) -> Message:
    if len(obj) != 9:
        raise DecodeError("malformed", "event batch: expected 9 elements")
    events = _items(obj[6], EVENT_FIELDS, "events")
    return EventBatch(
        str(obj[2]),
        int(obj[3]),
        int(obj[4]),
        int(obj[5]),
        [ConntrackEvent._make(e) for e in events],
        int(obj[7]),
        int(obj[8]),
    )


def _flow_batch(obj: Sequence[Any]) -> Message:
    if len(obj) != 9:
        raise DecodeError("malformed", "flow batch: expected 9 elements")
    records = _items(obj[8], FLOW_FIELDS, "records")
    new = tuple.__new__  # what FlowRecord._make does, without re-checking the length
    return FlowBatch(
        str(obj[2]),
        int(obj[3]),
        int(obj[4]),
        int(obj[5]),
        int(obj[6]),
        int(obj[7]),
        [new(FlowRecord, r) for r in records],
    )


def _ack(obj: Sequence[Any]) -> Message:
    if len(obj) != 6 or not all(isinstance(x, int) for x in obj[3:]):
        raise DecodeError(
            "malformed", "ack: expected [kind, version, stage, inc, sender inc, upto]"
        )
    return Ack(str(obj[2]), obj[3], obj[4], obj[5])


def _notice(obj: Sequence[Any]) -> Message:
    if len(obj) != 5 or not isinstance(obj[4], dict):
        raise DecodeError("malformed", "notice: expected [kind, version, stage, token, counters]")
    return Notice(str(obj[2]), str(obj[3]), {str(k): int(v) for k, v in obj[4].items()})


_DECODERS = {
    Kind.EVENT_BATCH: _event_batch,
    Kind.FLOW_BATCH: _flow_batch,
    Kind.ACK: _ack,
    Kind.NOTICE: _notice,
}
