"""`nfflowd replay` through the real supervised pipeline into a real nfcapd and rsyslogd.

The judge of the NetFlow side is nfdump (`nfdump -r`), of the syslog side a
private rsyslogd with a `local6.*` rule.  The expected records are the golden
file checked in beside the lab's captured event log (see tests/data/golden/).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from nfflowd.lab.nfcapd import Nfcapd
from tests.pipeline_harness import (
    GOLDEN,
    csv_key,
    is_ipv4,
    nfdump_key,
    nfflowd,
    replay,
    write_config,
)
from tests.rsyslog_harness import RsyslogHarness

LOG = GOLDEN / "lab-events.log"
EXPECTED = GOLDEN / "lab-expected.csv"


def expected_keys() -> list[tuple[object, ...]]:
    return [csv_key(line) for line in EXPECTED.read_text().splitlines() if line.strip()]


@pytest.mark.timeout(180)
def test_replay_golden_log_reaches_collector_and_syslog(tmp_path: Path) -> None:
    with Nfcapd() as cap, RsyslogHarness(tmp_path / "syslog") as syslog:
        conf = write_config(
            tmp_path / "run",
            collector_port=cap.port,
            syslog_socket=syslog.socket_path,
            screen=False,
        )
        res = nfflowd("-c", str(conf), "replay", str(LOG))
        expected = expected_keys()
        lines = syslog.lines(len(expected), timeout=30)
        got_csv = [csv_key(ln.split(": ", 1)[1] if ": " in ln else ln) for ln in lines]
        assert Counter(got_csv) == Counter(expected)
        # exaddr is the first flow_send arg; the ident and facility are the seed's
        assert all(k[-1] == "127.0.0.1" for k in got_csv)
        assert syslog.other_lines() == []
        # NetFlow v5 carries the IPv4 records only; nfdump is the independent judge
        v4 = [k[:9] for k in expected if is_ipv4(str(k[2]))]
        got = [nfdump_key(r) for r in cap.records()]
        assert Counter(got) == Counter(v4)
    assert "export" in res.stdout and "mirror" in res.stdout


@pytest.mark.timeout(120)
def test_replay_without_collector_is_mirror_only(tmp_path: Path) -> None:
    conf = write_config(tmp_path / "run")
    res = replay(conf, tmp_path / "run", LOG)
    out = (tmp_path / "run" / "mirror.out").read_text().splitlines()
    assert Counter(csv_key(x)[:9] for x in out) == Counter(k[:9] for k in expected_keys())
    assert "lines=" in res.stdout


def test_replay_reports_a_missing_log(tmp_path: Path) -> None:
    conf = write_config(tmp_path / "run")
    res = nfflowd("-c", str(conf), "replay", str(tmp_path / "nope.log"), check=False)
    assert res.returncode == 1 and "nope.log: no such event log" in res.stderr
