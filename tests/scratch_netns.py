"""A throw-away network namespace for tests that talk to the kernel's conntrack.

Every test that builds one uses this context manager, so each gets a unique
name (prefix, pid, counter) and the namespace is deleted even when the test
fails.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
from collections.abc import Iterator

from nfflowd.conntrack.kernel import set_sysctls

_names = itertools.count()
#: A rule that needs conntrack: without one a new namespace tracks nothing.
TRACKING_RULES = (
    "add table inet nfflowd_test\n"
    "add chain inet nfflowd_test out { type filter hook output priority 0; }\n"
    "add rule inet nfflowd_test out ct state new counter\n"
)


def track_connections(netns: str) -> None:
    """Load TRACKING_RULES in *netns*: its connections are tracked from now on."""
    argv = ["ip", "netns", "exec", netns, "nft", "-f", "-"]
    subprocess.run(argv, input=TRACKING_RULES, text=True, check=True, timeout=10)


@contextlib.contextmanager
def scratch_netns(prefix: str, *, track: bool = True, counters: bool = True) -> Iterator[str]:
    """A fresh namespace with lo up; with *track*, connections are tracked; with
    *counters*, accounting and timestamps are on (set before any connection: the
    kernel gives an entry counters and timestamps only when they are on at its
    creation)."""
    name = f"{prefix}-{os.getpid()}-{next(_names)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        if track:
            track_connections(name)
        if counters:
            set_sysctls(name, acct=True, timestamp=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)
