"""Small helpers shared by the tests: addresses as text <-> packed bytes, tool markers."""

from __future__ import annotations

import os
import shutil
import socket

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def a(text: str) -> bytes:
    """An IPv4 or IPv6 address as packed bytes (the form FlowRecord and ConntrackEvent use)."""
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def txt(b: bytes) -> str:
    """Packed bytes back to text."""
    return socket.inet_ntop(socket.AF_INET6 if len(b) == 16 else socket.AF_INET, b)


def needs(*programs: str) -> pytest.MarkDecorator:
    """Skip outside CI when a program is missing; under CI=true the test runs and fails."""
    missing = [p for p in programs if shutil.which(p) is None]
    return pytest.mark.skipif(
        bool(missing) and not IN_CI, reason=f"outside CI: {', '.join(missing)} not installed"
    )
