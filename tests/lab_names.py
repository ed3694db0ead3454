"""Names of the NAT labs (nfflowd.lab) the tests start: unique to the test process.

Each lab's namespaces are named from its prefix, so two test runs on one host
(or a test and the module's shared lab) never meet.
"""

from __future__ import annotations

import os


def lab_prefix(tag: str) -> str:
    """A namespace prefix unique to this test process."""
    return f"nfl-{tag}{os.getpid()}-"
