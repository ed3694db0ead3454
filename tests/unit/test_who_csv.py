"""``nfflowd who`` from flow-tools CSV lines: the mirror's default format, the 2009 tool's.

The lines are written by nfflowd's own formatter
(:func:`nfflowd.formats.flowtools_csv.format_line`) from the three records nfflowd
makes of a connection (tests/flow_records.py), behind the prefix a syslog daemon
writes, among other programs' lines; what each question must answer is derived here
from the connection's tuples.  CSV lines carry no post-NAT side: they are v5's
triplets, joined as nfcapd's v5 records are (nfflowd.ops.who.join).
(tests/integration/test_who_syslog.py reads what a real rsyslogd wrote.)
"""

from __future__ import annotations

import gzip
from pathlib import Path

from nfflowd.formats import flowtools_csv, json_lines
from nfflowd.messages import FlowRecord
from nfflowd.ops import who
from nfflowd.ops.who import FOUND, NOT_FOUND, Answer, report
from nfflowd.ops.who.question import Endpoint, Question
from nfflowd.ops.who.sources import CSV_LINES, JSON_LINES, Source
from tests.flow_records import dnat_connection, snat_connection

NO_JOURNAL = "/nonexistent/nfflowd-state"
T0 = 1_796_551_200_000  # 2026-12-06T10:00:00Z
BOOT_MS = T0 - 86_400_000  # the firewall's boot, a day before
PUB, REMOTE = "203.0.113.1", ("203.0.113.2", 5001)
PREFIX = "Dec  6 10:00:01 fw nfflowd: "
OTHER = [
    "Dec  6 10:00:00 fw systemd[1]: Started Daily apt download activities.",
    "Dec  6 10:00:01 fw kernel: [ 12.3] nf_conntrack: table full, dropping packet",
    "Dec  6 10:00:01 fw CRON[812]: (root) CMD (a,b,c)",
]


def csv(records: list[FlowRecord]) -> list[str]:
    return [flowtools_csv.format_line(r, exaddr="192.0.2.1", boot_ms=BOOT_MS) for r in records]


def ask(q: Question, path: Path) -> Answer:
    return who.ask(q, [Source(str(path), "--from")], statedir=NO_JOURNAL)


def test_a_syslog_file_answers_snat_and_port_forward_questions(tmp_path: Path) -> None:
    early = snat_connection(T0 - 9000, T0 - 8000, ("10.0.1.2", 40000), (PUB, 50001), REMOTE)
    snat = snat_connection(T0 - 500, T0 + 700, ("10.0.1.7", 40001), (PUB, 50001), REMOTE)
    forward = dnat_connection(T0, T0 + 20, ("198.51.100.9", 61000), (PUB, 8080), ("10.0.1.5", 80))
    bad = csv(snat[1:2])[0].replace(",6,0,0", ",x,0,0")  # from PUB: parsed, refused
    ours = [PREFIX + ln for ln in [*csv(early), *csv(snat), bad, *csv(forward)]]
    log = tmp_path / "syslog"
    log.write_text("\n".join([OTHER[0], *ours[:3], OTHER[1], *ours[3:], OTHER[2]]) + "\n")

    got = ask(Question(Endpoint(PUB, 50001), at_ms=T0, window_ms=2000), log)
    assert got.status == FOUND
    (m,) = got.matches
    assert (m.private, m.public, m.remote) == (("10.0.1.7", 40001), (PUB, 50001), REMOTE)
    assert (m.first_ms, m.last_ms) == (T0 - 500, T0 + 700)  # exact, from the uptime fields
    assert (m.from_private, m.to_private, m.private_opened) == ((6, 600), (5, 500), True)
    assert sorted(ref.split(" ", 1)[0] for ref in m.refs) == [f"{log}:{n}" for n in (6, 7, 8)]
    (r,) = got.reports
    assert (r.kind, r.files, r.records, r.other, r.malformed) == (CSV_LINES, 1, 13, 3, 1)
    assert r.examples == [f"{log}:9: field prot: 'x' is not an unsigned integer"]
    text = report.text(got)
    assert "private 10.0.1.7:40001  public 203.0.113.1:50001  remote 203.0.113.2:5001" in text
    assert "1 malformed, 3 of other programs (no CSV record)" in text
    assert report.document(got)["sources"][0]["other_lines"] == 3

    # the same public port 9 s earlier: the host that had it then
    then = ask(Question(Endpoint(PUB, 50001), at_ms=T0 - 8500, window_ms=0), log)
    assert [x.private for x in then.matches] == [("10.0.1.2", 40000)]
    # the port forward, by its public destination: opened by the remote end
    (f,) = ask(Question(Endpoint(PUB, 8080), at_ms=T0), log).matches
    assert (f.private, f.remote, f.private_opened) == (
        ("10.0.1.5", 80),
        ("198.51.100.9", 61000),
        False,
    )
    assert (f.from_private, f.to_private) == ((7, 700), (4, 400))
    # a minute later nobody; the private side is not a public endpoint
    assert ask(Question(Endpoint(PUB, 50001), at_ms=T0 + 60_000), log).status == NOT_FOUND
    assert ask(Question(Endpoint("10.0.1.7", 40001), at_ms=T0), log).status == NOT_FOUND


def test_rotations_of_either_format_are_read_together(tmp_path: Path) -> None:
    """The mirror's format changed from json to csv between two rotations: both answer."""
    old = snat_connection(T0 - 5000, T0 - 4000, ("10.0.1.3", 1), (PUB, 2000), REMOTE)
    mid = snat_connection(T0 - 3000, T0 - 2000, ("10.0.1.4", 1), (PUB, 2000), REMOTE)
    new = snat_connection(T0 - 1000, T0, ("10.0.1.5", 1), (PUB, 2000), REMOTE)
    mirror = tmp_path / "mirror.out"
    with gzip.open(tmp_path / "mirror.out-20261205.gz", "wt") as fh:
        fh.write("".join(json_lines.format_line(r, exaddr="192.0.2.1") + "\n" for r in old))
    (tmp_path / "mirror.out.1").write_text("".join(ln + "\n" for ln in csv(mid)))
    gz = gzip.compress("".join(ln + "\n" for ln in csv(new)).encode())
    mirror.write_bytes(gz)  # a gzip'ed file under the plain name: read by its magic
    got = ask(Question(Endpoint(PUB, 2000), at_ms=T0 - 2500, window_ms=3000), mirror)
    assert sorted(x.private for x in got.matches) == [
        ("10.0.1.3", 1),
        ("10.0.1.4", 1),
        ("10.0.1.5", 1),
    ]
    (r,) = got.reports
    assert (r.kind, r.files, r.records, r.malformed, r.other) == (
        f"{CSV_LINES}, {JSON_LINES}",
        3,
        9,
        0,
        0,
    )


def test_an_address_without_port_or_time_finds_every_connection_through_it(tmp_path: Path) -> None:
    """Many remote ends (the second pass looks for several endpoints at once)."""
    remotes = [(f"198.51.100.{i + 1}", 443 + i % 2) for i in range(6)]
    hosts = [(f"10.0.1.{i + 1}", 40000 + i) for i in range(6)]
    records = [
        r
        for i, (host, remote) in enumerate(zip(hosts, remotes, strict=True))
        for r in snat_connection(T0 + 1000 * i, T0 + 1000 * i + 50, host, (PUB, 50000), remote)
    ]
    records += dnat_connection(T0, T0 + 9, remotes[0], (PUB, 8080), ("10.0.1.99", 80))
    other = snat_connection(T0 + 500, T0 + 550, ("10.0.2.1", 1), ("203.0.113.7", 50000), remotes[0])
    log = tmp_path / "mirror.out"
    log.write_text("".join(ln + "\n" for ln in csv(records + other)))
    got = ask(Question(Endpoint(PUB)), log)
    assert sorted((m.private, m.remote) for m in got.matches) == sorted(
        [*zip(hosts, remotes, strict=True), (("10.0.1.99", 80), remotes[0])]
    )
    assert got.reports[0].records == 3 * 8
