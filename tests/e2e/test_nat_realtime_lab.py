"""Real-time NAT events from the real kernel: the create event while the connection is open.

nfflowd reads the lab firewall's conntrack (DESTROY-only would do for records, but
``<collector> nat_events realtime`` makes it read NEW events too) and exports IPFIX
to a socket of the test's.  While every connection of the lab's mix is still open
(``before_close``), each NATed connection the kernel's table lists must already
have its create event at the collector (and no delete); once they have ended, each
has exactly one create and one delete, and the mirror wrote no OPENED record (its
JSON lines would count one as invalid).  Judges: the kernel's own table
(``conntrack -L``, parsed by the text parser), and the datagrams as received.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from pathlib import Path

from nfflowd import lab as labmod
from nfflowd.conntrack.text import parse_line
from nfflowd.correlate.correlator import is_natted
from nfflowd.formats import ipfix
from nfflowd.formats import ipfix_ies as ies
from nfflowd.lab.nfcapd import Nfcapd
from nfflowd.lab.plan import Lab
from nfflowd.ops import control
from tests.addresses import txt
from tests.lab_names import end_connections, lab_prefix
from tests.pipeline_harness import (
    netlink_source,
    nfflowd,
    stage_counters,
    wait_all_running,
    write_config,
)

CREATE, DELETE = 1, 2  # nat_event_numbering 1
LISTENING = re.compile(r"INFO listening to conntrack")
Key = tuple[int, str, int, str, int]  # proto, pre-NAT source, port, destination, port


class Receiver:
    """IPFIX datagrams on a loopback port, decoded as they arrive (templates kept)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.events: list[tuple[int, Key]] = []
        self.flows = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        templates: ies.Templates = {}
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            for r in ipfix.unpack_datagram(data, templates)[1]:
                if "natEvent" not in r:
                    self.flows += 1
                    continue
                fam = "IPv6" if "sourceIPv6Address" in r else "IPv4"
                key = (
                    r["protocolIdentifier"],
                    txt(r[f"source{fam}Address"]),
                    r["sourceTransportPort"],
                    txt(r[f"destination{fam}Address"]),
                    r["destinationTransportPort"],
                )
                self.events.append((r["natEvent"], key))

    def got(self, event: int) -> list[Key]:
        return [k for e, k in list(self.events) if e == event]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def natted_in_table(lab: Lab) -> set[Key]:
    """The kernel's NATed connections now (TCP and UDP: their ports identify them)."""
    out = labmod.listing(lab)
    keys = set()
    for line in out.splitlines():
        ev = parse_line(line)
        if ev is not None and ev.proto in (6, 17) and is_natted(ev):
            keys.add((ev.proto, txt(ev.orig_src), ev.orig_sport, txt(ev.orig_dst), ev.orig_dport))
    return keys


def wait_for(what: str, done: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


#: nfdump's view of a NAT event: natEvent (ADD/DELETE), its time, the pre-NAT tuple
NFDUMP_NEL = "fmt:%nevt|%tevt|%pr|%sa|%sp|%da|%dp"


def collector(port: int) -> str:
    return (
        f"  <collector>\n    address 127.0.0.1\n    port {port}\n    version 10\n"
        "    nat_events realtime\n  </collector>\n"
    )


def test_create_events_arrive_while_connections_are_open(tmp_path: Path, lab_ready: None) -> None:
    rundir = tmp_path / "run"
    receiver = Receiver()
    cap = Nfcapd()
    cap.start()
    nel: list[list[str]] = []
    try:
        with labmod.running(lab_prefix("rt")) as lab:
            source = netlink_source(lab.fw, "set_sysctls 1")
            # nfcapd is stopped while connections are open: not held for (README "Pacing")
            export = (
                f"<export>\n  refused_hold 0\n{collector(receiver.port)}{collector(cap.port)}"
                "</export>\n"
            )
            conf = write_config(rundir, source + export, screen_format="json")
            nfflowd("-c", str(conf), "start")
            try:
                wait_all_running(rundir)
                log = rundir / "ingest.log"
                wait_for("ingest listening", lambda: LISTENING.search(log.read_text()))
                open_now: set[Key] = set()

                def while_open() -> None:
                    open_now.update(natted_in_table(lab))
                    wait_for(
                        f"create events of {sorted(open_now)}",
                        lambda: open_now <= set(receiver.got(CREATE)),
                    )
                    assert not open_now & set(receiver.got(DELETE))
                    # nfcapd has them too: stopped now (it stores what it got), read by nfdump
                    cap.stop()
                    nel.extend(r for r in cap.rows(NFDUMP_NEL) if r[0] in ("ADD", "DELETE"))

                labmod.traffic(lab, before_close=while_open)
                end_connections(lab)
                wait_for(
                    "delete events of every connection",
                    lambda: open_now <= set(receiver.got(DELETE)),
                )
                out = rundir / "mirror.out"

                def mirrored() -> bool:  # its stats are published once a second
                    lines = out.read_text().count("\n") if out.exists() else 0
                    return 0 < lines == stage_counters(rundir, "mirror").get("lines", -1)

                wait_for("the mirror's lines and its published count", mirrored)
                mirror = stage_counters(rundir, "mirror")
            finally:
                nfflowd("-c", str(conf), "stop", check=False)
            assert not control.is_running(str(rundir))
    finally:
        receiver.close()
        cap.close()
    assert len(open_now) >= 4, open_now  # the mix's SNAT, DNAT and NAT66 connections
    creates, deletes = receiver.got(CREATE), receiver.got(DELETE)
    for key in open_now:
        assert (creates.count(key), deletes.count(key)) == (1, 1), key
    assert receiver.flows > 0
    # nfdump, while the connections were open: an ADD for each, stamped before the close
    added = {
        (int(r[2]), r[3], int(r[4]), r[5], int(r[6]))
        for r in nel
        if r[0] == "ADD" and r[2] in ("6", "17")  # (ICMP: type.code for a port)
    }
    assert open_now <= added and not [r for r in nel if r[0] == "DELETE"], nel
    assert mirror.get("invalid") == 0 and mirror.get("lines", 0) > 0, mirror
    lines = (rundir / "mirror.out").read_text().splitlines()
    assert lines and not [ln for ln in lines if '"opened"' in ln]
