"""An event batch's bytes -> conntrack events: the decoding that ingest no longer does.

Ingest forwards events as its source gave them (:class:`nfflowd.messages.Payload`):
text lines of ``conntrack -E``/``-L``, or the kernel's ctnetlink datagrams, each
framed with the time it was received (:data:`nfflowd.messages.DATAGRAM_FRAME`).
The correlator that gets the batch decodes it here, so the decoding cost is spread
over the correlator shards instead of bounding the single ingest process, and an
event nobody needs decoded (none today) would cost nothing.

Bad input never stops decoding: a malformed line is logged with its source and
line number (the first few, then powers of two), counted and skipped; a bad
netlink message is counted by the decoder (:class:`DecodeCounters`) and skipped;
a frame that runs past the end of the batch is counted (``truncated_frames``)
and ends the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from nfflowd.conntrack.netlink import DecodeCounters, decode_messages
from nfflowd.conntrack.netlink_layouts import Layouts
from nfflowd.conntrack.netlink_wire import NLMSG_ALIGNTO, NLMSGHDR
from nfflowd.conntrack.text import ParseError, parse_line
from nfflowd.messages import DATAGRAM_FRAME, ConntrackEvent, EventType, Payload
from nfflowd.pipeline.shards import shard_of

log = logging.getLogger("nfflowd.source")

_FRAME = DATAGRAM_FRAME.size


def text_lines(data: bytes) -> list[str]:
    """The lines of a TEXT payload (each ended by "\\n"), decoded (bad UTF-8 replaced)."""
    lines = data.decode("utf-8", "replace").split("\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines


def line_ct_id(line: bytes) -> int | None:
    """The conntrack id a ``-o id`` line ends with (what :func:`parse_line` gives as
    ``ct_id``), read without parsing the line; None when it does not end so (then parse
    it: an ICMP tuple's ``code=N id=N`` is the ICMP id, not the conntrack id)."""
    head, _, last = line.rstrip(b"\r\n").rpartition(b" id=")
    if not last.isdigit() or len(last) > 10 or not head:
        return None
    if head[head.rfind(b" ") + 1 :].startswith(b"code="):
        return None
    ct_id = int(last)
    return ct_id if ct_id <= 0xFFFFFFFF else None


def frame(out: bytearray, recv_ns: int, datagram: bytes | memoryview) -> None:
    """Append one received datagram to a NETLINK payload."""
    out += DATAGRAM_FRAME.pack(recv_ns, len(datagram))
    out += datagram


class LineParser:
    """Text lines -> events, with counting and located error messages."""

    def __init__(self, counters: dict[str, int]) -> None:
        self.counters = counters
        counters.setdefault("lines", 0)
        counters.setdefault("malformed_lines", 0)

    def parse(
        self, line: str, where: str, out: list[ConntrackEvent], default_type: int = EventType.NEW
    ) -> None:
        ev = self.event(line, where, default_type)
        if ev is not None:
            out.append(ev)

    def event(
        self, line: str, where: str, default_type: int = EventType.NEW
    ) -> ConntrackEvent | None:
        """The event of *line* (None: not an entry, or malformed: counted and logged)."""
        self.counters["lines"] += 1
        try:
            return parse_line(line, default_type=default_type)
        except ParseError as exc:
            n = self.counters["malformed_lines"] + 1
            self.counters["malformed_lines"] = n
            if n <= 10 or n & (n - 1) == 0:
                log.warning("%s: malformed event line skipped: %s [%d so far]", where, exc, n)
            return None


class PayloadDecoder:
    """Decodes the payloads of one stream of event batches (keeps counters and layouts)."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {"truncated_frames": 0}
        self.netlink = DecodeCounters()
        self.layouts = Layouts()
        self._lines = LineParser(self.counters)

    def decode(
        self, payload: int, data: bytes, where: str = "", first_line: int = 0
    ) -> list[ConntrackEvent]:
        """The events of one batch's *data* (see the module docstring)."""
        if payload == Payload.NETLINK:
            return self._netlink(data)
        if payload == Payload.TEXT:
            return self._text(data, where, first_line)
        raise ValueError(f"unknown payload {payload}")

    def _text(self, data: bytes, where: str, first_line: int) -> list[ConntrackEvent]:
        out: list[ConntrackEvent] = []
        parse = self._lines.parse
        for i, line in enumerate(text_lines(data)):
            parse(line, f"{where}:{first_line + i}" if first_line else where, out)
        return out

    def line_event(self, line: str, where: str, first_line: int, i: int) -> ConntrackEvent | None:
        """The event of line *i* of a TEXT payload (None: not an entry, or malformed:
        counted and logged with its place)."""
        return self._lines.event(line, f"{where}:{first_line + i}" if first_line else where)

    def count_lines(self, n: int) -> None:
        """*n* lines read without :meth:`line_event` (the correlator's fast NEW path)."""
        self.counters["lines"] += n

    def _netlink(self, data: bytes) -> list[ConntrackEvent]:
        out: list[ConntrackEvent] = []
        for recv_ns, pos, length in self.frames(data):
            out += self.datagram(data, pos, length, recv_ns)
        return out

    def frames(self, data: bytes) -> Iterator[tuple[int, int, int]]:
        """(receive time, offset, length) of each datagram of a NETLINK payload; a frame
        running past the end is counted (``truncated_frames``) and ends the payload."""
        pos, end = 0, len(data)
        unpack_frame = DATAGRAM_FRAME.unpack_from
        while pos < end:
            if end - pos < _FRAME:
                self._truncated(pos, end)
                return
            recv_ns, length = unpack_frame(data, pos)
            pos += _FRAME
            if pos + length > end:
                self._truncated(pos, end)
                return
            yield recv_ns, pos, length
            pos += length

    def datagram(self, data: bytes, pos: int, length: int, recv_ns: int) -> list[ConntrackEvent]:
        """The events of the datagram at data[pos:pos + length].  One event message of a
        known layout (the usual case: the kernel sends each event in its own datagram) is
        read in place, without the general decoder's per-datagram set-up, and counted as
        it would count it."""
        for layout in self.layouts.by_length.get(length, ()):
            ev = layout.decode(data, pos, recv_ns, True)
            if ev is not None:
                self.read_in_place()
                return [ev]
        view = memoryview(data)[pos : pos + length]
        return decode_messages(view, recv_ns, self.netlink, kernel_time=True, layouts=self.layouts)

    def read_in_place(self, n: int = 1) -> None:
        """Count *n* datagrams of one event each read by a compiled layout, as the general
        decoder counts them."""
        c = self.netlink
        c.buffers += n
        c.messages += n
        c.events += n
        self.layouts.hits += n

    def _truncated(self, pos: int, end: int) -> None:
        n = self.counters["truncated_frames"] = self.counters["truncated_frames"] + 1
        if n <= 10 or n & (n - 1) == 0:
            log.warning(
                "netlink payload: frame at byte %d runs past the batch's end (%d) [%d so far]",
                pos,
                end,
                n,
            )

    def counter_values(self) -> dict[str, int]:
        """What was counted, named as the stage publishes it."""
        c = self.netlink
        return {
            **self.counters,
            "malformed_messages": c.malformed + c.truncated,
            "bad_attrs": c.bad_attrs,
            "unknown_attrs": c.unknown_attrs,
            "netlink_errors": c.errors,
            "fast_decoded": self.layouts.hits,
        }


def split(payload: int, data: bytes, n: int) -> list[tuple[bytes, int]]:
    """*data* as (bytes, events) per correlator, each event where :func:`shard_of` sends it.

    Only for sources with state (NEW and DESTROY of one connection must meet in one
    correlator) and more than one correlator: it decodes each event to find its key,
    the work a stateless source spares ingest.  An event that does not decode goes to
    correlator 0, whose decoder counts it."""
    parts = [bytearray() for _ in range(n)]
    counts = [0] * n
    if payload == Payload.TEXT:
        for line in data.splitlines(keepends=True):
            ct_id = line_ct_id(line)
            if ct_id:  # what shard_of takes from the parsed event, read off the line's end
                i = ct_id % n
            else:
                try:
                    ev = parse_line(line.decode("utf-8", "replace"))
                except ParseError:
                    ev = None
                i = shard_of(ev, n) if ev is not None else 0
            parts[i] += line
            counts[i] += 1
        return [(bytes(p), c) for p, c in zip(parts, counts, strict=True)]
    scratch = DecodeCounters()
    pos, end = 0, len(data)
    while end - pos >= _FRAME:
        recv_ns, length = DATAGRAM_FRAME.unpack_from(data, pos)
        pos += _FRAME
        datagram = data[pos : pos + length]
        pos += length
        off = 0
        while len(datagram) - off >= NLMSGHDR.size:  # one frame per message: a dump's
            size = NLMSGHDR.unpack_from(datagram, off)[0]  # entries go their own ways
            if size < NLMSGHDR.size or off + size > len(datagram):
                size = len(datagram) - off  # bad: the rest goes to 0, which counts it
            message = datagram[off : off + size]
            evs = decode_messages(message, recv_ns, scratch)
            i = shard_of(evs[0], n) if evs else 0
            frame(parts[i], recv_ns, message)
            counts[i] += 1
            off += (size + NLMSG_ALIGNTO - 1) & ~(NLMSG_ALIGNTO - 1)
    return [(bytes(p), c) for p, c in zip(parts, counts, strict=True)]
