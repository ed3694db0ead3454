"""When a test may skip: only outside CI, and then it says why.

Tests that need root, network namespaces, the kernel's conntrack or a program
(nfcapd, tshark, rsyslogd, ...) must run in CI: under ``CI=true`` nothing here
skips, so a missing capability makes the test fail.  Outside CI they are skipped,
with the reason prefixed ``outside CI:``.  This module is the only place that
reads ``CI``.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

#: ``CI=true`` (any case) in the environment: every test runs, none skips for want of a tool.
IN_CI = os.environ.get("CI", "").lower() == "true"


def skip_outside_ci(reason: str | None) -> pytest.MarkDecorator:
    """Skip outside CI when ``reason`` (why the test cannot run here) is not None;
    under CI=true the test runs (and fails if the reason holds)."""
    return pytest.mark.skipif(reason is not None and not IN_CI, reason=f"outside CI: {reason}")


def needs(*programs: str) -> pytest.MarkDecorator:
    """Skip outside CI when a program is missing; under CI=true the test runs and fails."""
    missing = [p for p in programs if shutil.which(p) is None]
    return skip_outside_ci(f"{', '.join(missing)} not installed" if missing else None)


def needs_root() -> pytest.MarkDecorator:
    """Skip outside CI when not root; under CI=true the test runs and fails."""
    return skip_outside_ci("needs root" if os.geteuid() != 0 else None)


def root_capability_missing() -> str | None:
    """Why the tests marked ``root`` (root, namespaces, conntrack) cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, conntrack)"
    for tool in ("ip", "conntrack", "nft"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} program (make test installs it)"
    return None


def skip_or_fail(reason: str) -> NoReturn:
    """From inside a test or fixture that finds it cannot run: fail under CI=true,
    skip (saying why) outside CI."""
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(f"outside CI: {reason}")
