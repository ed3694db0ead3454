"""Addresses in the tests: text <-> the packed bytes FlowRecord and ConntrackEvent hold."""

from __future__ import annotations

import socket


def a(text: str) -> bytes:
    """An IPv4 or IPv6 address as packed bytes (the form FlowRecord and ConntrackEvent use)."""
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def txt(b: bytes) -> str:
    """Packed bytes back to text."""
    return socket.inet_ntop(socket.AF_INET6 if len(b) == 16 else socket.AF_INET, b)
