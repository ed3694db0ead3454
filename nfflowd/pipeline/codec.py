"""Bytes <-> :mod:`nfflowd.messages` records.  The only module that imports msgpack.

Wire form of every message: a msgpack array ``[kind, version, *fields]`` (never a
map).  Since schema 5 a batch's events or records are one ``bin`` field each
(:class:`~nfflowd.messages.EventBatch`, :class:`~nfflowd.messages.FlowBatch`), so
encoding and decoding cost the same for 1 event or 10,000.

Decoding trusts nothing: a stage reads its links from other processes and, over
``tcp://``, from other hosts.  Every field is checked for its exact type (an
``int`` is not a ``bool`` or a ``float``; strings are ``str``, blobs ``bytes``)
and its range: counters, sequence numbers, incarnations and origins are in
``[0, 2**63)``, names are short, a flow block is a whole number of records.
Anything else raises :class:`DecodeError`, whose ``reason`` the receiver counts
(``malformed_<reason>``), and only that: the stage drops the message and goes
on.  The unpacker's own limits bound the work a hostile frame can ask for
(nesting depth, container and string sizes), so every frame decodes or fails in
time proportional to its length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

import msgpack

from nfflowd.messages import (
    FLOW_RECORD,
    SCHEMA_VERSION,
    Ack,
    EventBatch,
    FlowBatch,
    Kind,
    Message,
    Notice,
    Payload,
)

#: Integers on the wire: non-negative, below 2**63 (nanosecond clocks, counters).
INT_MAX: Final = 2**63 - 1
#: Longest stage, sender, token or source name accepted.
NAME_MAX: Final = 256
#: Most counters one notice may carry.
NOTICE_COUNTERS_MAX: Final = 1024
#: Largest message a receiver decodes (a batch of events or records is far smaller).
FRAME_MAX: Final = 64 << 20
_PAYLOADS: Final = frozenset(int(p) for p in Payload)


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


def decode(data: bytes) -> Message:
    """Parse one message; raise :class:`DecodeError` for anything that is not one."""
    if len(data) > FRAME_MAX:
        raise DecodeError("malformed", f"{len(data)} bytes: larger than any message")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=False,
            strict_map_key=True,
            max_array_len=NOTICE_COUNTERS_MAX,
            max_map_len=NOTICE_COUNTERS_MAX,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise DecodeError("malformed", f"not msgpack ({exc.__class__.__name__}: {exc})") from None
    if type(obj) is not tuple or len(obj) < 2:
        raise DecodeError("malformed", "expected [kind, version, ...]")
    kind, version = obj[0], obj[1]
    if type(kind) is not int or kind not in _DECODERS:
        raise DecodeError("unknown_kind", f"kind {_show(kind)}")
    if version != SCHEMA_VERSION or type(version) is not int:
        raise DecodeError("unknown_version", f"kind {kind} version {_show(version)}")
    return _DECODERS[kind](obj)


def _show(value: object) -> str:
    """A value for an error message, bounded (a hostile frame may carry megabytes)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _int(obj: Sequence[Any], i: int, what: str) -> int:
    value = obj[i]
    if type(value) is not int or not 0 <= value <= INT_MAX:
        raise DecodeError("malformed", f"{what}: {_show(value)} is not an integer in 0..2**63-1")
    return value


def _name(obj: Sequence[Any], i: int, what: str, empty: bool = False) -> str:
    value = obj[i]
    if type(value) is not str or len(value) > NAME_MAX or (not value and not empty):
        raise DecodeError("malformed", f"{what}: {_show(value)} is not a name")
    return value


def _blob(obj: Sequence[Any], i: int, what: str) -> bytes:
    value = obj[i]
    if type(value) is not bytes:
        raise DecodeError("malformed", f"{what}: {type(value).__name__}, expected bytes")
    return value


def _length(obj: Sequence[Any], n: int, what: str) -> None:
    if len(obj) != n:
        raise DecodeError("malformed", f"{what}: {len(obj) - 2} fields, expected {n - 2}")


def _event_batch(obj: Sequence[Any]) -> Message:
    _length(obj, 13, "event batch")
    payload = _int(obj, 6, "event batch payload")
    if payload not in _PAYLOADS:
        raise DecodeError("malformed", f"event batch payload {payload}: unknown")
    return EventBatch(
        _name(obj, 2, "event batch sender"),
        _int(obj, 3, "event batch incarnation"),
        _int(obj, 4, "event batch seq"),
        _int(obj, 5, "event batch acked"),
        payload,
        _blob(obj, 7, "event batch data"),
        _int(obj, 8, "event batch events"),
        _name(obj, 9, "event batch source", empty=True),
        _int(obj, 10, "event batch first line"),
        _int(obj, 11, "event batch origin stream"),
        _int(obj, 12, "event batch origin position"),
    )


def _flow_batch(obj: Sequence[Any]) -> Message:
    _length(obj, 9, "flow batch")
    records = _blob(obj, 8, "flow batch records")
    if len(records) % FLOW_RECORD.size:
        raise DecodeError(
            "malformed", f"flow batch records: {len(records)} bytes, not whole records"
        )
    return FlowBatch(
        _name(obj, 2, "flow batch sender"),
        _int(obj, 3, "flow batch incarnation"),
        _int(obj, 4, "flow batch seq"),
        _int(obj, 5, "flow batch acked"),
        _int(obj, 6, "flow batch origin stream"),
        _int(obj, 7, "flow batch origin position"),
        records,
    )


def _ack(obj: Sequence[Any]) -> Message:
    _length(obj, 6, "ack")
    return Ack(
        _name(obj, 2, "ack stage"),
        _int(obj, 3, "ack incarnation"),
        _int(obj, 4, "ack sender incarnation"),
        _int(obj, 5, "ack upto"),
    )


def _notice(obj: Sequence[Any]) -> Message:
    _length(obj, 5, "notice")
    counters = obj[4]
    if type(counters) is not dict:
        raise DecodeError("malformed", "notice counters: expected a map")
    for k, v in counters.items():
        if type(k) is not str or len(k) > NAME_MAX or type(v) is not int or abs(v) > INT_MAX:
            raise DecodeError("malformed", f"notice counter {_show(k)}: {_show(v)}")
    return Notice(_name(obj, 2, "notice stage"), _name(obj, 3, "notice token"), dict(counters))


_DECODERS: Final[dict[int, Callable[[Sequence[Any]], Message]]] = {
    Kind.EVENT_BATCH: _event_batch,
    Kind.FLOW_BATCH: _flow_batch,
    Kind.ACK: _ack,
    Kind.NOTICE: _notice,
}
