"""A local UDP port nobody listens on (a collector that is down: the kernel answers
ICMP port unreachable)."""

from __future__ import annotations

import socket


def closed_udp_port() -> int:
    """A port that was free a moment ago (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
