"""Chaos on live traffic: stages SIGKILLed about every second while the lab runs.

nfflowd (the real `nfflowd start`, netlink source reading the lab firewall's
conntrack) runs while the lab's traffic mix repeats and a random stage
(seeded, printed) is killed about once a second, every stage MIN_KILLS times.
Expired entries are reaped all along (a table listing), so connections end —
and records are made — during the kills, not only after.  The judge is
conntrack-tools' own `conntrack -E` in the firewall; nfdump and the screen
mirror must hold every record it implies.

One loss is documented and inherent (README, "What each crash costs"): the
kernel sends an event only to listeners present at that instant, so a
connection that ends while no ingest listens — between its SIGKILL and its
successor's subscription — is gone for good.  Records whose DESTROY falls in
such a window (widened by SLACK_S for events queued but not yet read) are
counted and printed, not required.  Every other record must arrive, and at most
0.1 % of them twice.  nfcapd runs with its default socket buffer in a namespace of
its own, whose ``Udp: RcvbufErrors`` must stay 0 (export's pace, README "Pacing").
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from nfflowd import lab as labmod
from nfflowd import topology
from nfflowd.lab.nfcapd import CollectorNetns, Nfcapd
from nfflowd.messages import FlowRecord
from nfflowd.ops import control
from nfflowd.pipeline import supervision
from tests.addresses import txt
from tests.lab_names import lab_prefix
from tests.pipeline_harness import (
    Chaos,
    csv_key,
    expected_records,
    mirror_lines,
    netlink_source,
    nfflowd,
    wait_all_running,
    wait_settled,
    write_config,
)

SEED = 20240905
#: Ingest sends one batch per read of the kernel socket, a handful of events at the
#: lab's rate, so the default 64 would stop it reading within a fraction of a second
#: of an output's restart, and the events then waiting in its kernel socket die with
#: it at its next kill (a loss of its own, see the module docstring).  With this many
#: it keeps reading through the ~2 s outages the kills cause.
MAX_UNACKED = 1000
MIN_KILLS = 5
#: Duplicates allowed, as a fraction of the records the witness saw (issue 4: 0.1 %).
DUPLICATE_BOUND = 0.001
#: Events emitted this long before an ingest kill may still be queued unread in its socket.
SLACK_S = 0.5
LISTENING = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ingest\[\d+\] INFO listening to conntrack"
)

Key = tuple[Any, ...]


def record_key(r: FlowRecord) -> Key:
    """No times: the witness stamps events when it reads them, nfflowd takes the kernel's."""
    return (txt(r.src), r.sport, txt(r.dst), r.dport, r.proto, r.packets, r.octets)


def subscriptions(ingest_log: Path) -> list[float]:
    """When each ingest incarnation had subscribed and dumped the table (epoch s)."""
    out = []
    for line in ingest_log.read_text().splitlines():
        if m := LISTENING.match(line):
            out.append(time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1e3)
    return out


def blind_windows(
    kills: list[tuple[float, str]], listening: list[float]
) -> list[tuple[float, float]]:
    """(from, to) epoch s during which no ingest read the kernel's events."""
    windows = []
    for at, stage in kills:
        if stage == "ingest":
            back = min((t for t in listening if t > at), default=float("inf"))
            windows.append((at - SLACK_S, back + SLACK_S))
    return windows


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_live_traffic_with_stages_killed_every_second(tmp_path: Path, lab_ready: None) -> None:
    rundir = tmp_path / "run"
    witness_log = tmp_path / "conntrack-E.log"
    chaos = Chaos(rundir, SEED, interval=1.0)
    runs: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    with (
        labmod.running(lab_prefix("chaos")) as lab,
        CollectorNetns("nfcl") as ns,
        Nfcapd(host=ns.address, netns=ns.name) as cap,  # its default buffer
    ):
        source = netlink_source(lab.fw, "set_sysctls 1")
        daemon = f"<daemon>\n  max_unacked {MAX_UNACKED}\n</daemon>\n"
        conf = write_config(
            rundir,
            source + daemon,
            collector_port=cap.port,
            collector_address=ns.address,
            exaddr=ns.source,
        )

        def traffic() -> None:
            try:
                while not stop.is_set():
                    labmod.traffic(lab)
                    labmod.expire(lab)  # reap what has expired: DESTROYs during the kills
                    runs.append(1)
            except BaseException as exc:  # reported by the test thread
                failures.append(exc)

        try:
            with open(witness_log, "wb") as fh, labmod.capture(lab, fh, "timestamp,id"):
                nfflowd("-c", str(conf), "start")
                wait_all_running(rundir)
                thread = threading.Thread(target=traffic, daemon=True)
                thread.start()
                started = time.monotonic()
                try:
                    chaos.run(lambda: not failures, rounds=MIN_KILLS)
                    killing = time.monotonic() - started
                    # every stage back, ingest subscribed again, before the traffic ends
                    wait_all_running(rundir, timeout=30)
                    starts = supervision.start_count(str(rundir), "ingest")
                    deadline = time.monotonic() + 30
                    while len(subscriptions(rundir / "ingest.log")) < starts:
                        assert time.monotonic() < deadline, "the last ingest did not subscribe"
                        time.sleep(0.1)
                finally:
                    stop.set()
                    thread.join(60)
                assert not failures, failures
                # reap the last entries as they expire, a few at a time: one burst of
                # hundreds of DESTROYs overruns conntrack -E's own socket (the witness)
                deadline = time.monotonic() + labmod.MAX_TIMEOUT + 1
                while time.monotonic() < deadline:
                    labmod.expire(lab)
                    time.sleep(0.2)
                labmod.flush(lab)
                time.sleep(1.0)
            witness = expected_records(witness_log)
            wait_settled(lambda: len(mirror_lines(rundir)), len(witness), timeout=30)
        finally:
            nfflowd("-c", str(conf), "stop", check=False)
        assert not control.is_running(str(rundir))
        stored = cap.records()
        rcvbuf_errors = ns.rcvbuf_errors()

    print(chaos.summary())
    print(
        f"{len(runs)} runs of the lab mix during {killing:.1f} s of kills; "
        f"{len(witness)} records by the witness"
    )
    windows = blind_windows(chaos.log, subscriptions(rundir / "ingest.log"))
    print("no ingest listening: " + ", ".join(f"{b - a:.1f} s" for a, b in windows))

    def blind(r: FlowRecord) -> bool:
        return any(a <= r.last_ms / 1000 <= b for a, b in windows)

    got = {
        "collector (nfdump)": Counter(
            (x["src"], x["sport"], x["dst"], x["dport"], x["proto"], x["packets"], x["bytes"])
            for x in stored
        ),
        "mirror (screen)": Counter(
            (k[2], k[4], k[3], k[5], k[6], k[7], k[8]) for k in map(csv_key, mirror_lines(rundir))
        ),
    }
    problems = []
    for where, received in got.items():
        mine = [r for r in witness if r.family == 4 or "mirror" in where]
        every = Counter(record_key(r) for r in mine)
        required = Counter(record_key(r) for r in mine if not blind(r))
        missing = required - received
        excused = sum((every - received).values()) - sum(missing.values())
        extra = received - every
        unknown = sum(n for k, n in extra.items() if k not in every)
        print(
            f"{where}: {sum(received.values())} received of {sum(every.values())}; "
            f"{sum(missing.values())} missing, {excused} lost while no ingest listened, "
            f"{sum(extra.values()) - unknown} duplicates, {unknown} unknown"
        )
        duplicates = sum(extra.values()) - unknown
        if missing or unknown or duplicates > DUPLICATE_BOUND * sum(every.values()):
            problems.append(
                (
                    where,
                    list(missing)[:5],
                    [k for k in extra if k not in every][:5],
                    f"{duplicates} duplicates",
                )
            )
    assert min(chaos.kills[s] for s in topology.STAGES) >= MIN_KILLS, chaos.summary()
    assert len(runs) >= MIN_KILLS and witness
    assert not problems, problems
    assert rcvbuf_errors == 0  # nfcapd's socket, default sized, dropped nothing
