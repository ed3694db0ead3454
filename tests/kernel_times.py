"""The kernel's own start/stop of each connection, as conntrack-tools prints them.

The live tests judge nfflowd's flow times against a witness that is not nfflowd:
``conntrack -E -o timestamp,ktimestamp,id`` in the lab's firewall.  Two clocks show
there.  The ``[<epoch>.<usec>]`` stamp that begins each line is taken by
conntrack-tools when it reads the event, so it trails the kernel by a little
(:data:`TIME_SLACK_MS`).  The ``[start=…] [stop=…]`` of a DESTROY line is the
kernel's own timestamp (``nf_conntrack_timestamp``), which conntrack-tools prints
only to the second, in local time: run it under ``TZ=UTC`` to read it here.
"""

from __future__ import annotations

import calendar
import re
import time
from pathlib import Path

#: conntrack -E stamps events when it reads them; the kernel stamps them when they happen.
TIME_SLACK_MS = 100
#: `-o ktimestamp` prints the kernel's own start/stop (to the second) on DESTROY lines.
KTIMESTAMP = re.compile(r"\[start=([^\]]+)\] \[stop=([^\]]+)\].* id=(\d+)")


def kernel_seconds(log: Path) -> dict[int, tuple[int, int]]:
    """conntrack id -> (start, stop) in epoch seconds, as conntrack-tools decoded them (UTC)."""
    out = {}
    for m in KTIMESTAMP.finditer(log.read_text()):
        start, stop = (
            calendar.timegm(time.strptime(t, "%a %b %d %H:%M:%S %Y")) for t in m.groups()[:2]
        )
        out[int(m.group(3))] = (start, stop)
    return out
