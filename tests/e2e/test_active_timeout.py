"""A long-lived lab connection with a short active timeout: interim records add up exactly.

A TCP connection through the lab's SNAT stays open ~11 s, sending a little
every 0.5 s; nfflowd (netlink source, `<export> active_timeout 3`) reports it
periodically from kernel dumps and finally at DESTROY.  The sum of every record
of each direction must equal the kernel's final counters, read independently
from conntrack-tools' DESTROY line.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nfflowd import lab as labmod
from nfflowd.lab.nfcapd import Nfcapd
from tests.lab_names import end_connections, lab_prefix
from tests.pipeline_harness import daemon, netlink_source, running_pid, write_config

SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen(1); print("ready", flush=True)
c, _ = s.accept()
while True:
    data = c.recv(65536)
    if not data:
        break
    c.sendall(data * 2)
c.close()
"""
CLIENT = """
import socket, time
c = socket.create_connection(("203.0.113.2", 7000))
for _ in range(22):
    c.sendall(b"x" * 500); c.recv(65536); time.sleep(0.5)
c.close()
"""
DESTROY = re.compile(
    r"\[DESTROY\] tcp\s+6 .*src=10\.0\.1\.2 dst=203\.0\.113\.2 sport=(\d+) dport=7000 "
    r"packets=(\d+) bytes=(\d+) src=203\.0\.113\.2 dst=203\.0\.113\.1 sport=7000 dport=(\d+) "
    r"packets=(\d+) bytes=(\d+)"
)


@pytest.mark.root
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kill_correlate", [False, True], ids=["undisturbed", "correlate-killed"])
def test_long_connection_interim_records_sum_to_kernel_counters(
    tmp_path: Path, lab_ready: None, kill_correlate: bool
) -> None:
    rundir = tmp_path / "run"
    events = tmp_path / "conntrack-E.log"
    with labmod.running(lab_prefix("at")) as lab, Nfcapd() as cap:
        source = netlink_source(lab.fw, "set_sysctls 1")
        export = "<export>\n  active_timeout 3\n</export>\n"
        conf = write_config(rundir, source + export, collector_port=cap.port)
        with daemon(conf), open(events, "wb") as fh, labmod.capture(lab, fh, "timestamp,id"):
            server = subprocess.Popen(
                ["ip", "netns", "exec", lab.server, sys.executable, "-c", SERVER],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            client = subprocess.Popen(
                ["ip", "netns", "exec", lab.client, sys.executable, "-c", CLIENT]
            )
            if kill_correlate:
                time.sleep(7)  # reported at least once (active timeout 3 s)
                pid = running_pid(rundir, "correlate")
                assert pid, "correlate runs"
                os.kill(pid, signal.SIGKILL)
            assert client.wait(60) == 0
            server.wait(10)
            end_connections(lab, 2.5)  # TIME_WAIT (2 s in the lab) ends the connection
        stored = cap.records()

    m = DESTROY.search(events.read_text())
    assert m, "conntrack -E saw the DESTROY"
    sport, opk, oby, nport, rpk, rby = (int(x) for x in m.groups())
    orig_in = [r for r in stored if r["src"] == "10.0.1.2" and r["sport"] == sport]
    orig_out = [r for r in stored if r["src"] == "203.0.113.1" and r["dport"] == 7000]
    reply_in = [r for r in stored if r["src"] == "203.0.113.2" and r["dport"] == nport]
    # reported several times (interim + final), not just once at the end
    assert len(orig_in) >= 3, orig_in
    for recs, pk, by in ((orig_in, opk, oby), (orig_out, opk, oby), (reply_in, rpk, rby)):
        assert (sum(r["packets"] for r in recs), sum(r["bytes"] for r in recs)) == (pk, by)
        spans = sorted((r["first_ms"], r["last_ms"]) for r in recs)
        # consecutive reports: each starts where the previous one ended
        assert all(a[1] == b[0] for a, b in itertools.pairwise(spans)), spans
    if kill_correlate:  # the successor took over the reported state
        assert (
            "restored the report state of 1 long connections"
            in (rundir / "correlate.log").read_text()
        )
