"""More helpers for the crash and outage tests, next to tests/pipeline_harness.py.

Those tests replay a log in the background (``start_replay``), kill or pause
stages meanwhile, and judge the delivered records by identity.  What they
shared beyond pipeline_harness lives here, so that module stays small.
"""

from __future__ import annotations

import calendar
import ipaddress
import time
from collections.abc import Iterable
from pathlib import Path

from nfflowd.formats import flowtools_csv
from nfflowd.lab.nfcapd import Nfcapd
from nfflowd.messages import FlowRecord
from nfflowd.ops import control
from nfflowd.pipeline import supervision
from tests.pipeline_harness import Ident, Tally, csv_idents, nfdump_ident, record_ident, tally


def stage_pid(rundir: Path, stage: str) -> int:
    """The stage's pid in any state supervisord reports (0: none yet).

    Unlike ``running_pid`` this does not wait for RUNNING: a test that freezes a
    stage (SIGSTOP) from its very start must catch it before ``startsecs``.
    """
    if not (rundir / "supervisor.sock").exists() or not control.is_running(str(rundir)):
        return 0
    procs = supervision.processes(str(rundir))
    return next((int(p["pid"]) for p in procs if p["name"] == stage), 0)


def judge_delivery(
    want: Iterable[FlowRecord], cap: Nfcapd, mirror: Iterable[str], mirror_name: str
) -> dict[str, Tally]:
    """The collector (IPv4 only: NetFlow v5) and the mirror's lines against *want*.

    Keyed by where the records were read, as the tests print and assert them;
    the mirror is a screen (``mirror_lines``) or a syslog reader's lines.
    """
    want = list(want)
    return {
        "collector (nfdump)": tally(
            [record_ident(r) for r in want if r.family == 4], map(nfdump_ident, cap.records())
        ),
        mirror_name: tally(map(record_ident, want), *csv_idents(mirror)),
    }


# --- the same identities, read fast enough for millions of records ----------------------

#: Where csv_ident's fields sit in a flow-tools CSV line.
_CSV = {name: i for i, name in enumerate(flowtools_csv.FIELDS)}
_CSV_FIELDS = tuple(
    _CSV[n]
    for n in ("unix_secs", "unix_nsecs", "sysuptime", "last", "srcaddr", "dstaddr", "srcport")
)


def syslog_idents(lines: Iterable[str]) -> tuple[list[Ident], list[str]]:
    """What ``csv_idents`` gives for syslog messages (``... nfflowd: <csv line>``), about
    20 times faster: the fields are read by position and not validated one by one (a
    corrupted address is an unknown identity, a torn line a malformed one all the
    same).  ``test_chaos`` checks it against ``csv_idents`` on a sample."""
    secs, nsecs, uptime, last, src, dst, sport = _CSV_FIELDS
    dport, prot, dpkts, doctets = (_CSV[n] for n in ("dstport", "prot", "dpkts", "doctets"))
    width = len(flowtools_csv.FIELDS)
    good: list[Ident] = []
    bad: list[str] = []
    for line in lines:
        f = line.split(": ", 1)[-1].rstrip("\r\n").split(",")
        try:
            if len(f) != width:
                raise ValueError(line)
            end_ms = int(f[secs]) * 1000 + int(f[nsecs]) // 1_000_000
            good.append(
                (
                    end_ms - int(f[uptime]) + int(f[last]),
                    f[src],
                    f[dst],
                    int(f[sport]),
                    int(f[dport]),
                    int(f[prot]),
                    int(f[dpkts]),
                    int(f[doctets]),
                )
            )
        except ValueError:
            bad.append(line)
    return good, bad


def nfdump_idents(lines: Iterable[str]) -> list[Ident]:
    """What ``nfdump_ident`` gives for the records of ``cap.lines(NFDUMP_FMT)`` (those of
    ``cap.records()``), about 10 times faster: times parsed once per second, not per
    record, and IPv4 addresses taken as nfdump prints them.  ``test_chaos`` checks it
    against ``nfdump_ident`` on a sample."""
    seconds: dict[str, int] = {}

    def ms(text: str) -> int:
        whole, frac = text.strip().rsplit(".", 1)
        if whole not in seconds:
            seconds[whole] = calendar.timegm(time.strptime(whole, "%Y-%m-%d %H:%M:%S")) * 1000
        return seconds[whole] + int(frac)

    def port(text: str) -> int:
        if "." in text:  # ICMP type.code
            icmp_type, code = text.split(".")
            return int(icmp_type) * 256 + int(code)
        return int(text)

    out: list[Ident] = []
    for line in lines:
        c = line.split("|")
        src, dst = c[3].strip(), c[4].strip()
        if ":" in src:  # IPv6: nfdump -6 prints it uncompressed
            src, dst = str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst))
        out.append((ms(c[1]), src, dst, port(c[5]), port(c[6]), int(c[2]), int(c[7]), int(c[8])))
    return out
