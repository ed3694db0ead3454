"""``nfflowd who`` reads what a real rsyslogd wrote: the mirror's flow-tools CSV lines.

The syslog mirror (nfflowd.outputs.syslog, the 2009 tool's only record) sends each
connection's three CSV lines to a private rsyslogd (tests/rsyslog_harness.py), with
another program's messages between them; rsyslogd files everything as a
distribution's ``/var/log/syslog`` has it (``RSYSLOG_TraditionalFileFormat``:
``Dec  6 10:00:01 host nfflowd: <line>``).  ``nfflowd who --from`` that file must name
each connection's private host, though the public ports are reused every few
seconds by other hosts, and count the other programs' lines as such.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from nfflowd.formats import flowtools_csv
from nfflowd.ops import commands
from nfflowd.outputs.syslog import SyslogDispatcher
from tests.flow_records import snat_connection
from tests.needs import skip_outside_ci
from tests.rsyslog_harness import RsyslogHarness

pytestmark = skip_outside_ci(RsyslogHarness.available())

T0 = 1_796_551_200_000  # 2026-12-06T10:00:00Z
PUB, REMOTE = "203.0.113.1", ("203.0.113.2", 443)
CONNECTIONS, PORTS = 300, 50  # each public port taken by 6 hosts in turn, 50 s apart
OTHER_EVERY = 25
TRADITIONAL = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \S+ nfflowd: \d+,\d+,")


def connection(i: int) -> tuple[int, tuple[str, int], int]:
    """The i-th connection: its start (ms), its private host, its public port."""
    return T0 + 1000 * i, (f"10.0.{i // 200}.{i % 200 + 1}", 40000 + i), 20000 + i % PORTS


def who(conf: Path, port: int, at_ms: int, source: Path, *more: str) -> int:
    """``nfflowd who PUB:port --at at_ms --window 1 --from source`` (its exit status)."""
    at = f"{at_ms / 1000:.3f}"
    args = [f"{PUB}:{port}", "--at", at, "--window", "1", "--from", str(source), *more]
    return commands.cmd_who(str(conf), False, args)


def test_who_names_each_private_host_from_the_syslog_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with RsyslogHarness(tmp_path / "rsyslog") as rs:
        mirror = SyslogDispatcher(rs.socket_path)  # ident nfflowd, local6: the seed's
        other = SyslogDispatcher(rs.socket_path, ident="dhclient", facility="daemon")
        for i in range(CONNECTIONS):
            start, private, port = connection(i)
            records = snat_connection(start, start + 400, private, (PUB, port), REMOTE)
            mirror.emit(
                [flowtools_csv.format_line(r, exaddr="192.0.2.1", boot_ms=T0) for r in records]
            )
            if i % OTHER_EVERY == 0:
                other.emit([f"DHCPREQUEST for 10.0.0.{i % 250} on eth0 to 10.0.0.1, port 67"])
        mirror.flush()
        other.flush()
        rs.lines(3 * CONNECTIONS)  # all of ours are in (local6.log); then rsyslogd stops
        mirror.close()
        other.close()
    text = rs.syslog_file.read_text()
    ours = [ln for ln in text.splitlines() if " nfflowd: " in ln]
    assert len(ours) == 3 * CONNECTIONS and all(TRADITIONAL.match(ln) for ln in ours), ours[:3]
    conf = tmp_path / "nfflowd.conf"
    conf.write_text(f"<daemon>\n  rundir {tmp_path}/run\n</daemon>\n")

    for i in range(0, CONNECTIONS, 7):
        start, private, port = connection(i)
        rc = who(conf, port, start + 200, rs.syslog_file, "--json")
        doc = json.loads(capsys.readouterr().out)
        got = [(m["private"]["address"], m["private"]["port"]) for m in doc["matches"]]
        assert (rc, got) == (0, [private]), (i, doc)
        (m,) = doc["matches"]
        assert (m["remote"]["address"], m["remote"]["port"]) == REMOTE
        (src,) = doc["sources"]
        assert (src["kind"], src["malformed"]) == ("flow-tools csv lines", 0)
        assert src["records"] == len(text.splitlines())
        assert src["other_lines"] == len(text.splitlines()) - 3 * CONNECTIONS
        assert src["other_lines"] >= CONNECTIONS // OTHER_EVERY  # dhclient's, rsyslogd's own
    # between two holders of a port, nobody
    start, _, port = connection(0)
    rc = who(conf, port, start + 25_000, rs.syslog_file)
    assert rc == 1 and "no connection found" in capsys.readouterr().out
