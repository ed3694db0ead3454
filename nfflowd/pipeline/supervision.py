"""What supervisord says of the running stages: its XML-RPC interface over the run
directory's unix socket.

Read by the operator's commands (:mod:`nfflowd.ops.control`, ``status``) and by the
metrics endpoint (:mod:`nfflowd.outputs.prometheus`), which is why it lives here
and not with the commands: a worker never imports :mod:`nfflowd.ops`.
"""

from __future__ import annotations

import os
import xmlrpc.client
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

#: supervisord's group of the stage programs (``nfflowd:ingest`` ...).
GROUP = "nfflowd"


def rpc(rundir: str) -> Any:
    """An XML-RPC proxy to the supervisord of *rundir*."""
    sock = os.path.join(os.path.abspath(rundir), "supervisor.sock")
    transport = SupervisorTransport(None, None, serverurl="unix://" + sock)
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def processes(rundir: str) -> list[dict[str, Any]]:
    """supervisord's view of the stages (getAllProcessInfo), plus each stage's start count."""
    infos: list[dict[str, Any]] = [
        p for p in rpc(rundir).supervisor.getAllProcessInfo() if p["group"] == GROUP
    ]
    for p in infos:
        p["starts"] = start_count(rundir, p["name"])
    return infos


def start_count(rundir: str, stage: str) -> int:
    try:
        with open(os.path.join(rundir, f"{stage}.starts")) as fh:
            return int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return 0
