"""Loopback UDP for tests: a port nobody listens on (a collector that is down: the kernel
answers ICMP port unreachable), and a receiver on a free port."""

from __future__ import annotations

import socket
from collections.abc import Iterator


def closed_udp_port() -> int:
    """A port that was free a moment ago (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def udp_receiver() -> Iterator[socket.socket]:
    """A UDP socket on a free loopback port, 5 s receive timeout (a pytest fixture's body:
    ``yield from udp_receiver()``)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    yield s
    s.close()
