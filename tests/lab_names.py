"""Names of the NAT labs (nfflowd.lab) the tests start: unique to the test process.

Each lab's namespaces are named from its prefix, so two test runs on one host
(or a test and the module's shared lab) never meet.  Also how a test ends the
connections of its lab's mix.
"""

from __future__ import annotations

import os
import time

from nfflowd import lab as labmod


def lab_prefix(tag: str) -> str:
    """A namespace prefix unique to this test process."""
    return f"nfl-{tag}{os.getpid()}-"


def end_connections(lab: labmod.Lab, natural_s: float = 3.5) -> None:
    """End every connection left in *lab*: *natural_s* for the natural ends (TIME_WAIT,
    the 3 s datagram timeouts), expire what has timed out, flush the rest (each with a
    DESTROY), then a second for those events to be read."""
    time.sleep(natural_s)
    labmod.expire(lab)
    labmod.flush(lab)
    time.sleep(1.0)
