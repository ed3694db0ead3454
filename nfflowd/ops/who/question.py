"""The question ``nfflowd who`` answers, read from its command line.

``ADDR[:PORT]`` is an endpoint on the firewall's public side (IPv6 in brackets when
a port follows: ``[2001:db8::1]:443``); ``--remote`` the other end.  Addresses are
compared in one normal form, :func:`normal_address` (``inet_ntop`` of ``inet_pton``:
RFC 5952 for IPv6, the form the JSON mirror line writes), so ``2001:DB8:0::1`` finds
``2001:db8::1``.

``--at TIME`` is ISO 8601 with a zone (``2026-12-06T10:00:00Z``,
``2026-12-06 11:00:00.250+01:00``) or epoch seconds (``1796551200``,
``1796551200.25``); a time without a zone is refused rather than guessed.  A
connection matches when it overlaps ``[TIME - window, TIME + window]``:
``first <= TIME + window`` and ``last >= TIME - window``.  The window defaults to
:data:`DEFAULT_WINDOW_S` (the reporting party's clock skew; ``<who> window`` or
``--window``).  Without ``--at`` every time matches.
"""

from __future__ import annotations

import math
import re
import socket
from dataclasses import dataclass
from datetime import datetime

#: Seconds either side of --at when neither --window nor <who> window says otherwise.
DEFAULT_WINDOW_S = 5.0
#: Protocol names --proto accepts (any number 0..255 too).
PROTOCOLS = {
    "icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51,
    "icmpv6": 58, "ipv6-icmp": 58, "sctp": 132, "udplite": 136,
}  # fmt: skip
#: Names by number, for the answer.
PROTOCOL_NAMES = {n: name for name, n in reversed(PROTOCOLS.items())}
#: The latest time accepted (the JSON mirror line's limit: 9999-12-31).
MAX_MS = 253_402_300_799_999
_EPOCH = re.compile(r"^\s*(\d{1,15})(\.\d{1,9})?\s*$")
_BRACKETED = re.compile(r"^\[([^\]]+)\](?::(\d{1,5}))?$")


class UsageError(ValueError):
    """The question cannot be asked as written (exit status 2)."""


def normal_address(text: str) -> str:
    """*text* as ``inet_ntop`` writes it; ValueError when it is no IPv4/IPv6 address."""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text))
    except OSError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None


def protocol_name(proto: int) -> str:
    return PROTOCOL_NAMES.get(proto, f"proto {proto}")


@dataclass(frozen=True)
class Endpoint:
    """An address and, when given, a port (None: any port)."""

    address: str  # normal_address form
    port: int | None = None

    def matches(self, address: str, port: int) -> bool:
        return address == self.address and (self.port is None or port == self.port)

    def __str__(self) -> str:
        return self.address if self.port is None else join_endpoint(self.address, self.port)


def join_endpoint(address: str, port: int) -> str:
    """``ADDR:PORT``, IPv6 in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def parse_endpoint(text: str, what: str = "ADDR[:PORT]") -> Endpoint:
    """``203.0.113.1``, ``203.0.113.1:8080``, ``2001:db8::1``, ``[2001:db8::1]:443``."""
    text = text.strip()
    m = _BRACKETED.match(text)
    if m:
        host, port = m[1], m[2]
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None
    try:
        address = normal_address(host)
    except ValueError as exc:
        raise UsageError(f"{what} {text!r}: {exc}") from None
    if port is not None and not (port.isdigit() and 0 <= int(port) <= 0xFFFF):
        raise UsageError(f"{what} {text!r}: the port must be a number 0..65535")
    return Endpoint(address, None if port is None else int(port))


def parse_time(text: str) -> int:
    """ISO 8601 with a zone, or epoch seconds -> epoch milliseconds (UsageError otherwise)."""
    m = _EPOCH.match(text)
    if m:
        ms = int(m[1]) * 1000 + (round(float(m[2]) * 1000) if m[2] else 0)
    else:
        try:
            when = datetime.fromisoformat(text.strip())
        except ValueError:
            raise UsageError(
                f"--at {text!r}: expected ISO 8601 with a zone (2026-12-06T10:00:00Z, "
                "...+01:00) or epoch seconds"
            ) from None
        if when.tzinfo is None or when.utcoffset() is None:
            raise UsageError(
                f"--at {text!r}: no time zone; add one (Z for UTC, or +HH:MM) rather than "
                "let the local zone be guessed"
            )
        ms = round(when.timestamp() * 1000)
    if not 0 <= ms <= MAX_MS:
        raise UsageError(f"--at {text!r}: outside 1970-01-01..9999-12-31")
    return ms


def parse_window(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= 86_400:
        raise UsageError(f"--window {text!r}: expected a number of seconds (0..86400)")
    return seconds


def parse_proto(text: str) -> int:
    word = text.strip().lower()
    if word in PROTOCOLS:
        return PROTOCOLS[word]
    if word.isdigit() and int(word) <= 255:
        return int(word)
    names = ", ".join(sorted(PROTOCOLS))
    raise UsageError(f"--proto {text!r}: expected a protocol number (0..255) or one of {names}")


@dataclass(frozen=True)
class Question:
    """Which connections had *public* on the firewall's public side, when, with whom."""

    public: Endpoint
    at_ms: int | None = None
    window_ms: int = round(DEFAULT_WINDOW_S * 1000)
    remote: Endpoint | None = None
    proto: int | None = None

    @property
    def span(self) -> tuple[int, int] | None:
        """The window in epoch ms, both ends included (None: any time)."""
        if self.at_ms is None:
            return None
        return self.at_ms - self.window_ms, self.at_ms + self.window_ms

    def in_window(self, first_ms: int, last_ms: int) -> bool:
        span = self.span
        return span is None or (first_ms <= span[1] and last_ms >= span[0])

    def wants_proto(self, proto: int) -> bool:
        return self.proto is None or proto == self.proto
