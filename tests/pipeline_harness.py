"""Run the real `nfflowd` command against a private nfcapd and rsyslogd (shared by tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nfflowd import control
from nfflowd.formats import flowtools_csv

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "golden"


def write_config(
    path: Path,
    *,
    collector_port: int | None,
    syslog_socket: str | None,
    rundir: Path,
    screen: bool = False,
    extra: str = "",
) -> Path:
    """A seed-style Config::General file pointing at our private collector and syslog."""
    parts = []
    if collector_port is not None:
        parts.append(
            "<flow_send>\n    args 127.0.0.1\n    args 127.0.0.1\n"
            f"    args {collector_port}\n</flow_send>\n"
        )
    dispatchers = (["screen"] if screen else []) + (["syslog"] if syslog_socket else [])
    parts.append("<ptee>\n  <conf>\n")
    parts += [f"    dispatchers {d}\n" for d in dispatchers]
    if screen:
        parts.append("    <screen>\n      class Log::Dispatch::Screen\n      stderr 0\n"
                     "      min_level debug\n    </screen>\n")  # fmt: skip
    if syslog_socket:
        parts.append(
            "    <syslog>\n      class Log::Dispatch::Syslog\n      ident nfflowd\n"
            f"      facility local6\n      min_level debug\n      address {syslog_socket}\n"
            "    </syslog>\n"
        )
    parts.append("  </conf>\n</ptee>\n")
    parts.append(f"<daemon>\n    rundir {rundir}\n</daemon>\n")
    path.write_text("".join(parts) + extra)
    return path


def nfflowd(
    *args: str, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the real command line (`python -m nfflowd.cli`)."""
    res = subprocess.run(
        [sys.executable, "-m", "nfflowd.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, NFFLOWD_LOGLEVEL="INFO"),
        check=False,
    )
    if check and res.returncode != 0:
        raise AssertionError(
            f"nfflowd {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
        )
    return res


def csv_key(line: str) -> tuple[Any, ...]:
    """A syslog CSV line reduced to what it means: absolute times and the flow fields."""
    f = flowtools_csv.parse_line(line)
    end_ms = int(f["unix_secs"]) * 1000 + int(f["unix_nsecs"]) // 1_000_000
    base = end_ms - int(f["sysuptime"])
    return (
        base + int(f["first"]), base + int(f["last"]), f["srcaddr"], f["dstaddr"],
        int(f["srcport"]), int(f["dstport"]), int(f["prot"]), int(f["dpkts"]), int(f["doctets"]),
        f["exaddr"],
    )  # fmt: skip


def nfdump_key(rec: dict[str, Any]) -> tuple[Any, ...]:
    return (rec["first_ms"], rec["last_ms"], rec["src"], rec["dst"], rec["sport"], rec["dport"],
            rec["proto"], rec["packets"], rec["bytes"])  # fmt: skip


def is_ipv4(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, text)
    except OSError:
        return False
    return True


def wait_all_running(rundir: Path | str, timeout: float = 20) -> dict[str, int]:
    """Until supervisord runs the four stages, all RUNNING; their pids."""
    rundir = Path(rundir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if control.is_running(str(rundir)):
            infos = control.processes(str(rundir))
            if len(infos) == 4 and all(p["statename"] == "RUNNING" for p in infos):
                return {p["name"]: p["pid"] for p in infos}
        time.sleep(0.1)
    raise AssertionError("stages did not all reach RUNNING")
