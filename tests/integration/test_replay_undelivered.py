"""`nfflowd replay` whose syslog dispatcher cannot deliver (issue 13): it finishes.

The built-in default ``<ptee>`` (screen + syslog on /dev/log) on a host without a
syslog daemon made replay wait for ever without a word: the mirror holds the
lines, so their batches are never acknowledged and ingest's ``eof`` never comes.
Now replay says what it waits for, stops after ``--delivery-wait`` seconds of no
progress and exits 3 naming the dispatcher, its address and the lines held.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nfflowd.ops.commands import UNDELIVERED
from tests.pipeline_harness import GOLDEN, nfflowd, write_config

LOG = GOLDEN / "lab-events.log"


@pytest.mark.timeout(240)
def test_replay_with_a_syslog_socket_that_does_not_exist_ends_naming_the_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the stop then drains the mirror (which still holds the lines) 3 s, not 10
    monkeypatch.setenv("NFFLOWD_DRAIN_S", "3")
    missing = tmp_path / "no-syslog" / "log"
    run = tmp_path / "run"
    conf = write_config(run, syslog_socket=str(missing))
    start = time.monotonic()
    args = ["replay", "--delivery-wait", "5", "--rundir", str(run), str(LOG)]
    res = nfflowd("-c", str(conf), *args, check=False)
    took = time.monotonic() - start
    assert res.returncode == UNDELIVERED == 3, res.stdout + res.stderr
    lines = len((run / "mirror.out").read_text().splitlines())  # the screen got them all
    assert lines > 0
    assert (
        f"nfflowd replay: warning: dispatcher syslog: syslog socket {missing} missing" in res.stderr
    )
    held = f"{lines} lines held for syslog dispatcher 'syslog' ({missing}: no such socket"
    assert f"nfflowd replay: waiting up to 5 s for the mirror to deliver {held}" in res.stderr
    assert (
        f"nfflowd replay: not every flow line was delivered (nothing moved for 5 s): {held}"
        in res.stderr
    ), res.stderr
    report = {ln.split()[0]: ln for ln in res.stdout.splitlines() if ln.strip()}
    assert f"d1_pending={lines}" in report["mirror"] and "d1_lines_sent=0" in report["mirror"]
    assert f"d0_lines_sent={lines}" in report["mirror"]
    assert took < 60, took  # the stop drains each stage for at most NFFLOWD_DRAIN_S
