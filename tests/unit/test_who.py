"""``nfflowd who`` without nfdump: the question, the join, JSON-lines sources, <who>.

The records are built as nfflowd makes them (the README's "Flow records": the
triplet, one record per direction with its post-NAT side) and as the JSON mirror
writes them (:func:`nfflowd.formats.json_lines.format_line`); what each must answer
is derived here from the connection's tuples, not from the code under test.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path

import pytest

from nfflowd import config
from nfflowd.formats import json_lines
from nfflowd.messages import FlowRecord
from nfflowd.ops import commands, who
from nfflowd.ops.who import ERROR, FOUND, NOT_FOUND, Answer, report
from nfflowd.ops.who.join import AMBIGUOUS, Flow, Point, join_untranslated, merge, observe
from nfflowd.ops.who.question import (
    Endpoint,
    Question,
    UsageError,
    parse_endpoint,
    parse_proto,
    parse_time,
)
from nfflowd.ops.who.sources import Source, SourceError, choose, mirror_files, nfdump_filter
from tests.flow_records import snat_connection as snat_records_of

#: No coverage journal here (tests/unit/test_coverage.py has the journal's own tests).
NO_JOURNAL = "/nonexistent/nfflowd-state"


def ask(q: Question, sources: list[Source], nfdump: str = "nfdump") -> Answer:
    return who.ask(q, sources, nfdump, statedir=NO_JOURNAL)


T0 = 1_796_551_200_000  # 2026-12-06T10:00:00Z
PRIV, PUB, REMOTE = ("10.0.1.2", 41000), ("203.0.113.1", 61000), ("203.0.113.2", 5001)


# --- the question ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("203.0.113.1", Endpoint("203.0.113.1")),
        ("203.0.113.1:8080", Endpoint("203.0.113.1", 8080)),
        ("2001:DB8:0::1", Endpoint("2001:db8::1")),
        ("[2001:db8::1]:443", Endpoint("2001:db8::1", 443)),
        ("[2001:db8::1]", Endpoint("2001:db8::1")),
        (" 203.0.113.1:0 ", Endpoint("203.0.113.1", 0)),
    ],
)
def test_endpoints(text: str, want: Endpoint) -> None:
    assert parse_endpoint(text) == want


@pytest.mark.parametrize("text", ["203.0.113", "host:80", "203.0.113.1:65536", "1.2.3.4:x", ""])
def test_bad_endpoints_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="ADDR"):
        parse_endpoint(text)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2026-12-06T10:00:00Z", T0),
        ("2026-12-06T10:00:00.250Z", T0 + 250),
        ("2026-12-06 11:00:00+01:00", T0),
        ("2026-12-06T05:30:00-04:30", T0),
        ("1796551200", T0),
        ("1796551200.25", T0 + 250),
    ],
)
def test_times(text: str, ms: int) -> None:
    assert parse_time(text) == ms


def test_a_time_without_zone_or_of_no_known_form_is_refused() -> None:
    with pytest.raises(UsageError, match="no time zone"):
        parse_time("2026-12-06T10:00:00")
    with pytest.raises(UsageError, match="ISO 8601"):
        parse_time("yesterday")


def test_protocols() -> None:
    assert (parse_proto("TCP"), parse_proto("17"), parse_proto("icmpv6")) == (6, 17, 58)
    with pytest.raises(UsageError, match="protocol"):
        parse_proto("256")


def test_window_overlap_both_ends_included() -> None:
    q = Question(Endpoint(*PUB), at_ms=T0, window_ms=5000)
    assert q.span == (T0 - 5000, T0 + 5000)
    assert q.in_window(T0 + 5000, T0 + 9000) and q.in_window(T0 - 9000, T0 - 5000)
    assert not q.in_window(T0 + 5001, T0 + 9000) and not q.in_window(T0 - 9000, T0 - 5001)
    assert q.in_window(T0 - 60_000, T0 + 60_000)  # a connection spanning the window
    assert Question(Endpoint(*PUB)).in_window(0, 1)  # no --at: any time


# --- records with their post-NAT side (v9/IPFIX, JSON lines) ---------------------------


def _flow(
    src: Point,
    dst: Point,
    post: tuple[Point, Point] | None,
    counters: tuple[int, int] = (6, 600),
    *,
    reply: bool | None = None,
    egress: bool = False,
    ref: str = "r",
    proto: int = 6,
    first: int = T0 - 1000,
    last: int = T0 + 1000,
) -> Flow:
    return Flow(proto, first, last, src, dst, *counters, post, egress, reply, ref)


def snat_records(first: int = T0 - 1000, last: int = T0 + 1000) -> list[Flow]:
    """One record per direction of PRIV -> REMOTE source-NATed to PUB."""
    return [
        _flow(
            PRIV, REMOTE, (PUB, REMOTE), (6, 600), reply=False, ref="orig", first=first, last=last
        ),
        _flow(
            REMOTE, PUB, (REMOTE, PRIV), (5, 500), reply=True, ref="reply", first=first, last=last
        ),
    ]


def dnat_records() -> list[Flow]:
    """REMOTE -> PUB forwarded to PRIV (a port forward), one record per direction."""
    return [
        _flow(REMOTE, PUB, (REMOTE, PRIV), (3, 300), reply=False, ref="orig"),
        _flow(PRIV, REMOTE, (PUB, REMOTE), (4, 400), reply=True, ref="reply"),
    ]


def answer(q: Question, flows: list[Flow]) -> list[tuple[object, ...]]:
    obs = [o for f in flows for o in observe(q, f)] + join_untranslated(q, flows)
    return [
        (m.private, m.public, m.remote, m.from_private, m.to_private, m.private_opened, m.refs)
        for m in merge(obs, [f for f in flows if f.egress])
    ]


def test_snat_each_record_alone_and_both_joined() -> None:
    q = Question(Endpoint(*PUB), at_ms=T0)
    orig, reply = snat_records()
    assert answer(q, [orig]) == [(PRIV, PUB, REMOTE, (6, 600), None, True, ["orig"])]
    assert answer(q, [reply]) == [(PRIV, PUB, REMOTE, None, (5, 500), True, ["reply"])]
    both = [(PRIV, PUB, REMOTE, (6, 600), (5, 500), True, ["orig", "reply"])]
    assert answer(q, [orig, reply]) == both
    # v9/IPFIX do not say which record is the reply: who opened it stays unknown
    unknown = [_flow(f.src, f.dst, f.post, (f.packets, f.bytes), ref=f.ref) for f in (orig, reply)]
    assert answer(q, unknown) == [(PRIV, PUB, REMOTE, (6, 600), (5, 500), None, ["orig", "reply"])]


def test_port_forward_is_found_by_its_public_destination() -> None:
    q = Question(Endpoint(*PUB), at_ms=T0)
    want = [(PRIV, PUB, REMOTE, (4, 400), (3, 300), False, ["orig", "reply"])]
    assert answer(q, dnat_records()) == want


def test_only_the_public_side_matches() -> None:
    flows = snat_records()
    assert answer(Question(Endpoint(*PRIV)), flows) == []  # the private side
    assert answer(Question(Endpoint(*REMOTE)), flows) == []  # the remote end of a NAT
    assert answer(Question(Endpoint(PUB[0], PUB[1] + 1)), flows) == []
    assert len(answer(Question(Endpoint(PUB[0])), flows)) == 1  # any port
    assert answer(Question(Endpoint(*PUB), remote=Endpoint(*PRIV)), flows) == []
    assert len(answer(Question(Endpoint(*PUB), remote=Endpoint(REMOTE[0])), flows)) == 1
    assert answer(Question(Endpoint(*PUB), proto=17), flows) == []
    assert answer(Question(Endpoint(*PUB), at_ms=T0 + 6001, window_ms=5000), flows) == []


def test_a_connection_no_nat_changed_is_found_by_either_end() -> None:
    host = ("198.51.100.9", 22)
    flows = [
        _flow(host, REMOTE, (host, REMOTE), (2, 200), reply=False, ref="o"),
        _flow(REMOTE, host, (REMOTE, host), (1, 100), reply=True, ref="r"),
    ]
    mine = answer(Question(Endpoint(*host)), flows)
    assert mine == [(host, host, REMOTE, (2, 200), (1, 100), True, ["o", "r"])]
    theirs = answer(Question(Endpoint(*REMOTE)), flows)
    assert theirs == [(REMOTE, REMOTE, host, (1, 100), (2, 200), False, ["o", "r"])]


def test_the_original_as_it_left_is_listed_not_answered() -> None:
    q = Question(Endpoint(*PUB))
    egress = _flow(PUB, REMOTE, (PUB, REMOTE), (6, 600), egress=True, ref="egress")
    assert answer(q, [egress]) == []
    got = answer(q, [*snat_records(), egress])
    assert got == [(PRIV, PUB, REMOTE, (6, 600), (5, 500), True, ["orig", "reply", "egress"])]


def test_one_connection_from_two_sources_is_one_match() -> None:
    q = Question(Endpoint(*PUB))
    a = snat_records()
    b = [_flow(f.src, f.dst, f.post, (f.packets, f.bytes), ref="b-" + f.ref) for f in a]
    (m,) = answer(q, a + b)
    assert m[6] == ["orig", "reply", "b-orig", "b-reply"]
    later = snat_records(first=T0, last=T0 + 2000)  # another connection, same tuples
    assert len(answer(q, a + later)) == 2


# --- records without it: the v5 triplet --------------------------------------------------


def _v5(src: Point, dst: Point, counters: tuple[int, int], ref: str) -> Flow:
    return _flow(src, dst, None, counters, ref=ref)


def snat_triplet() -> list[Flow]:
    return [
        _v5(PRIV, REMOTE, (6, 600), "1"),
        _v5(PUB, REMOTE, (6, 600), "2"),
        _v5(REMOTE, PUB, (5, 500), "3"),
    ]


def dnat_triplet() -> list[Flow]:
    return [
        _v5(REMOTE, PUB, (3, 300), "1"),
        _v5(REMOTE, PRIV, (3, 300), "2"),
        _v5(PRIV, REMOTE, (4, 400), "3"),
    ]


def test_v5_triplets_are_joined() -> None:
    q = Question(Endpoint(*PUB), at_ms=T0)
    assert answer(q, snat_triplet()) == [
        (PRIV, PUB, REMOTE, (6, 600), (5, 500), True, ["1", "2", "3"])
    ]
    assert answer(q, dnat_triplet()) == [
        (PRIV, PUB, REMOTE, (4, 400), (3, 300), False, ["1", "2", "3"])
    ]
    # unreplied: the original before and after SNAT
    assert answer(q, snat_triplet()[:2]) == [(PRIV, PUB, REMOTE, (6, 600), None, True, ["1", "2"])]
    # one record per direction without post-NAT addresses (nfdump's IPFIX IPv6)
    chained = [snat_triplet()[0], snat_triplet()[2]]
    assert answer(q, chained) == [(PRIV, PUB, REMOTE, (6, 600), (5, 500), None, ["1", "3"])]
    # the remote end or the private side is not the asked endpoint
    assert answer(Question(Endpoint(*REMOTE)), snat_triplet()) == []
    assert answer(Question(Endpoint(*PRIV)), snat_triplet()) == []


def test_v5_records_of_other_milliseconds_or_protocols_do_not_join() -> None:
    q = Question(Endpoint(*PUB))
    first, second, third = snat_triplet()
    moved = dataclasses.replace(first, first_ms=first.first_ms + 1)
    got = answer(q, [moved, second, third])
    assert got == [(PUB, PUB, REMOTE, (6, 600), (5, 500), None, ["2", "3"])]  # no NAT seen


def test_v5_connections_sharing_milliseconds_are_each_reported_with_a_note() -> None:
    q = Question(Endpoint(*PUB))
    other = ("10.0.1.3", 41000)
    flows = [*snat_triplet(), _v5(other, REMOTE, (6, 600), "4")]
    got = merge(join_untranslated(q, flows))
    assert [m.private for m in got] == [PRIV, other]
    assert all(m.notes == [AMBIGUOUS] for m in got)


def test_records_without_post_nat_addresses_of_two_connections_of_the_same_ms() -> None:
    """Seen on the lab: NAT66 and a connection no NAT changed to the same server port,
    started and ended in the same milliseconds, from IPFIX as nfdump 1.7 stores it (no
    post-NAT addresses): each is its own connection."""
    q = Question(Endpoint(*PUB))
    other = ("10.0.1.3", 41001)
    flows = [
        _v5(PRIV, REMOTE, (6, 600), "snat-orig"),
        _v5(REMOTE, PUB, (5, 500), "snat-reply"),
        _v5(other, REMOTE, (4, 400), "plain-orig"),
        _v5(REMOTE, other, (3, 300), "plain-reply"),
    ]
    want = [(PRIV, PUB, REMOTE, (6, 600), (5, 500), None, ["snat-orig", "snat-reply"])]
    assert answer(q, flows) == want
    got = answer(Question(Endpoint(*other)), flows)
    assert got == [(other, other, REMOTE, (4, 400), (3, 300), None, ["plain-orig", "plain-reply"])]
    # the same counters too: the plain connection's original could be the SNAT one's
    # before the translation (a triplet); both candidates, with the note
    same = [*flows[:2], _v5(other, REMOTE, (6, 600), "plain-orig"), flows[3]]
    got_same = merge(join_untranslated(q, same))
    assert [(m.private, m.notes) for m in got_same] == [(PRIV, [AMBIGUOUS]), (other, [AMBIGUOUS])]


def test_a_v5_connection_without_nat_is_its_own_private_side() -> None:
    host = ("198.51.100.9", 22)
    flows = [_v5(host, REMOTE, (2, 200), "o"), _v5(REMOTE, host, (1, 100), "r")]
    got = answer(Question(Endpoint(*host)), flows)
    assert got == [(host, host, REMOTE, (2, 200), (1, 100), None, ["o", "r"])]


# --- JSON-lines sources -------------------------------------------------------------------


def lines_of(records: list[FlowRecord]) -> list[str]:
    return [json_lines.format_line(r, exaddr="192.0.2.1") for r in records]


def snat_connection(first: int, last: int, priv: str, port: int, pub_port: int) -> list[FlowRecord]:
    """The three records nfflowd makes of PRIV:port -> REMOTE source-NATed to PUB:pub_port."""
    return snat_records_of(first, last, (priv, port), (PUB[0], pub_port), REMOTE)


def test_json_lines_rotated_gzip_syslog_prefixed_and_malformed(tmp_path: Path) -> None:
    a = snat_connection(T0 - 2000, T0 - 1000, "10.0.1.2", 40000, 50000)
    b = snat_connection(T0 - 500, T0 + 700, "10.0.1.7", 40001, 50001)
    c = snat_connection(T0 + 3000, T0 + 4000, "10.0.1.9", 40002, 50001)  # same port later
    la, lb, lc = lines_of(a), lines_of(b), lines_of(c)
    mirror = tmp_path / "mirror.out"
    with gzip.open(tmp_path / "mirror.out-20261205.gz", "wt") as fh:
        fh.write("\n".join(la) + "\n")
    (tmp_path / "mirror.out.1").write_text(
        "\n".join(["Dec  6 10:00:00 fw nfflowd: " + lb[0], lb[1], lb[2][:40]]) + "\n"
    )
    (tmp_path / "mirror.out").write_text(
        "\n".join([lc[0], "garbage", lc[1].replace('"proto":6', '"proto":"6"'), lc[2]]) + "\n"
    )
    assert mirror_files(str(mirror)) == [
        str(tmp_path / "mirror.out-20261205.gz"),
        str(tmp_path / "mirror.out.1"),
        str(mirror),
    ]
    src = Source(str(mirror), "dispatcher screen (format json)")
    q = Question(Endpoint(PUB[0], 50001), at_ms=T0, window_ms=1000)
    got = ask(q, [src])
    assert got.status == FOUND
    (m,) = got.matches
    assert (m.private, m.public, m.remote) == (("10.0.1.7", 40001), (PUB[0], 50001), REMOTE)
    assert (m.from_private, m.to_private, m.private_opened) == ((6, 600), None, True)
    assert m.refs == [f"{tmp_path}/mirror.out.1:1", f"{tmp_path}/mirror.out.1:2"]
    (r,) = got.reports
    assert (r.files, r.records, r.malformed, r.error) == (3, 10, 3, None)
    assert r.examples[0] == f"{tmp_path}/mirror.out.1:3: not a whole JSON object"
    assert r.examples[1] == f"{mirror}:2: not a whole JSON object"
    assert r.examples[2].startswith(f"{mirror}:3: key proto: '6' is not an integer")
    # the later connection on the same public port (one of its lines malformed)
    later = ask(Question(Endpoint(PUB[0], 50001), at_ms=T0 + 3500, window_ms=0), [src])
    assert [x.private for x in later.matches] == [("10.0.1.9", 40002)]
    assert ask(Question(Endpoint(PUB[0], 50001), at_ms=T0 + 2000, window_ms=500), [src]).status == (
        NOT_FOUND
    )
    # named with --from, the file is read with its rotations too
    assert ask(q, [Source(str(mirror), "--from")]).matches == got.matches
    # a rotated file last written long before the window is not read
    first = Question(Endpoint(PUB[0], 50000), at_ms=T0 - 1500, window_ms=0)
    assert [x.private for x in ask(first, [src]).matches] == [("10.0.1.2", 40000)]
    old = (T0 - 7_200_000) / 1000
    os.utime(tmp_path / "mirror.out-20261205.gz", (old, old))
    skipped = ask(first, [src])
    assert skipped.matches == [] and skipped.reports[0].skipped_files == 1
    text = report.text(got)
    assert "private 10.0.1.7:40001  public 203.0.113.1:50001  remote 203.0.113.2:5001" in text
    assert f"coverage: unknown: no coverage journal in {NO_JOURNAL} (no such directory" in text
    assert report.document(got)["coverage"]["recorded"] is False


def test_a_directory_without_nfcapd_files_says_so(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "flows.json").write_text("")
    got = ask(Question(Endpoint(*PUB)), [Source(str(tmp_path / "logs"), "--from")])
    assert got.status == NOT_FOUND
    assert got.reports[0].warnings == [f"{tmp_path}/logs: no nfcapd.* file below it"]


def test_a_missing_source_is_an_error_and_the_others_still_answer(tmp_path: Path) -> None:
    good = tmp_path / "flows.json"
    good.write_text("\n".join(lines_of(snat_connection(T0, T0 + 10, "10.0.1.2", 1, 2))) + "\n")
    q = Question(Endpoint(PUB[0], 2))
    got = ask(q, [Source(str(tmp_path / "nope"), "--from"), Source(str(good), "--from")])
    assert got.status == ERROR and len(got.matches) == 1
    assert got.reports[0].error == f"{tmp_path}/nope: no such file or directory"


# --- which sources ---------------------------------------------------------------------------


def _settings(tmp_path: Path, body: str) -> config.Settings:
    path = tmp_path / "nfflowd.conf"
    path.write_text(body + f"<daemon>\n  rundir {tmp_path}/run\n</daemon>\n")
    return config.load(str(path))


SCREEN_JSON = """<ptee>
  <conf>
    dispatchers screen
    dispatchers syslog
    <screen>
      class Log::Dispatch::Screen
      stderr 1
      format json
    </screen>
    <syslog>
      class Log::Dispatch::Syslog
      format json
    </syslog>
  </conf>
</ptee>
"""
SYSLOG_ONLY = """<ptee>
  <conf>
    dispatchers syslog
    <syslog>
      class Log::Dispatch::Syslog
      format json
    </syslog>
  </conf>
</ptee>
"""


def test_sources_from_the_command_line_then_who_then_the_mirror(tmp_path: Path) -> None:
    s = _settings(tmp_path, SCREEN_JSON + "<who>\n  from /srv/nfcapd\n  window 2.5\n</who>\n")
    assert (s.who.sources, s.who.window) == (("/srv/nfcapd",), 2.5)
    assert choose(s, ["x.json"]) == [Source(os.path.abspath("x.json"), "--from")]
    assert choose(s, []) == [Source("/srv/nfcapd", "<who> from")]
    s = _settings(tmp_path, SCREEN_JSON)
    inferred = [Source(f"{tmp_path}/run/mirror.err", "dispatcher screen (format json)")]
    assert choose(s, []) == inferred
    # a screen dispatcher of the seed's format: its CSV lines (the built-in default too)
    s = _settings(tmp_path, SCREEN_JSON.replace("format json\n    </screen>", "</screen>"))
    assert choose(s, []) == [Source(f"{tmp_path}/run/mirror.err", "dispatcher screen (format csv)")]
    default = config.load(None)
    assert choose(default, []) == [
        Source(f"{default.daemon.rundir}/mirror.out", "dispatcher screen (format csv)")
    ]
    with pytest.raises(SourceError, match=r"dispatcher syslog sends json lines to syslog") as e:
        choose(_settings(tmp_path, SYSLOG_ONLY), [])
    assert "has no <who> from and no screen dispatcher" in str(e.value)


@pytest.mark.parametrize(
    ("block", "error"),
    [
        ("  from relative/dir\n", "key 'who.from': expected an absolute path"),
        ("  window -1\n", "key 'who.window': expected a number of seconds (0..86400)"),
        ("  window 1e9\n", "key 'who.window': expected a number of seconds"),
        ("  form /x\n", "key 'who.form': unknown key in <who>; did you mean 'from'?"),
    ],
)
def test_who_block_errors_name_the_place(tmp_path: Path, block: str, error: str) -> None:
    with pytest.raises(config.ConfigError) as exc:
        _settings(tmp_path, f"<who>\n{block}</who>\n")
    assert str(exc.value).startswith(f"{tmp_path}/nfflowd.conf:2: {error}")


def test_nfdump_filters() -> None:
    q = Question(Endpoint("203.0.113.1", 80), proto=6, remote=Endpoint("198.51.100.2"))
    f = nfdump_filter(q)
    assert f.startswith("proto 6 and ((src ip 203.0.113.1 and src port 80) or ")
    assert "(src xip 203.0.113.1 and src xport 80) or (dst xip 203.0.113.1 and dst xport 80)" in f
    assert f.endswith("(dst xip 198.51.100.2))")
    second = nfdump_filter(Question(Endpoint("203.0.113.1")), ["b", "a"], [17, 6, 6])
    assert second == "(proto 6 or proto 17) and ip in [a b]"


# --- the command --------------------------------------------------------------------------


def test_command_exit_statuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "flows.json"
    log.write_text("\n".join(lines_of(snat_connection(T0, T0 + 10, "10.0.1.2", 1, 2))) + "\n")
    conf = tmp_path / "nfflowd.conf"  # the built-in defaults but the run directory
    conf.write_text(f"<daemon>\n  rundir {tmp_path}/run\n</daemon>\n")
    run = commands.cmd_who
    assert run(str(conf), False, ["203.0.113.1:2", "--at", "1796551200", "--from", str(log)]) == 0
    out = capsys.readouterr().out
    assert "private 10.0.1.2:1  public 203.0.113.1:2" in out
    assert run(str(conf), False, ["203.0.113.1:2", "--at", "1796551300", "--from", str(log)]) == 1
    assert run(str(conf), False, ["203.0.113.1:2", "--from", str(tmp_path / "nope")]) == 2
    assert "nope: no such file or directory" in capsys.readouterr().err
    assert run(str(conf), False, ["203.0.113.1:2", "--window", "3", "--from", str(log)]) == 2
    assert "--window needs --at" in capsys.readouterr().err
    # no --from: the built-in screen dispatcher's file, not there yet
    assert run(str(conf), False, ["203.0.113.1:2"]) == 2
    assert f"{tmp_path}/run/mirror.out: no such file or directory (written by the dispatcher" in (
        capsys.readouterr().err
    )


# --- nfdump's JSON, read as it streams (a stand-in nfdump printing what 1.7.1 prints) -----

#: Records as ``nfdump -r FILE -o json`` 1.7.1 prints them (fields cut to those read):
#: a v5 record, an IPFIX record with its post-NAT side, a NAT event (skipped).
NFDUMP_OUTPUT = """[
{
\t"type" : "FLOW",
\t"first" : "2026-12-06T10:00:00.005",
\t"last" : "2026-12-06T10:00:01.250",
\t"in_packets" : 3,
\t"in_bytes" : 300,
\t"proto" : 6,
\t"src_port" : 61000,
\t"dst_port" : 5001,
\t"src4_addr" : "203.0.113.1",
\t"dst4_addr" : "203.0.113.2",
\t"label" : "<none>"
},
{
\t"type" : "FLOW",
\t"first" : "2026-12-06T10:00:00.005",
\t"last" : "2026-12-06T10:00:01.000",
\t"in_packets" : 2,
\t"in_bytes" : 120,
\t"proto" : 1,
\t"icmp_type" : 8,
\t"icmp_code" : 0,
\t"src4_addr" : "10.0.1.2",
\t"dst4_addr" : "203.0.113.2",
\t"direction" : 0,
\t"src4_xlt_ip" : "203.0.113.1",
\t"dst4_xlt_ip" : "203.0.113.2",
\t"src_xlt_port" : "0",
\t"dst_xlt_port" : "2048"
},
{
\t"type" : "FLOW",
\t"nat_event_id" : "1",
\t"first" : "2026-12-06T10:00:00.000",
\t"last" : "2026-12-06T10:00:00.000",
\t"proto" : 6,
\t"src4_addr" : "10.0.1.2",
\t"dst4_addr" : "203.0.113.2"
}]
"""


def fake_nfdump(tmp_path: Path, stdout: str, stderr: str = "", status: int = 0) -> str:
    script = tmp_path / "nfdump"
    (tmp_path / "out.json").write_text(stdout)
    script.write_text(f"#!/bin/sh\ncat {tmp_path}/out.json\nprintf '{stderr}' >&2\nexit {status}\n")
    script.chmod(0o755)
    return str(script)


def nfcapd_file(tmp_path: Path) -> Path:
    path = tmp_path / "nfcapd.202612061000"
    path.write_bytes(b"\x0c\xa5" + bytes(30))  # nfdump's magic: read through "nfdump"
    return path


def test_nfdump_json_is_read_record_by_record(tmp_path: Path) -> None:
    data = nfcapd_file(tmp_path)
    nfdump = fake_nfdump(tmp_path, NFDUMP_OUTPUT)
    q = Question(Endpoint("203.0.113.1"), at_ms=T0 + 500, window_ms=0, proto=1)
    got = ask(q, [Source(str(data), "--from")], nfdump)
    (m,) = got.matches
    assert (m.private, m.public, m.remote) == (
        ("10.0.1.2", 0),
        ("203.0.113.1", 0),
        ("203.0.113.2", 8 << 8),  # ICMP echo: type*256+code as the destination port
    )
    assert (m.first_ms, m.last_ms, m.from_private) == (T0 + 5, T0 + 1000, (2, 120))
    assert got.reports[0].kind == "nfcapd" and got.reports[0].records == 3
    # a v5 record alone (its other records not there): no translation seen
    tcp = ask(Question(Endpoint("203.0.113.1", 61000)), [Source(str(data), "--from")], nfdump)
    (m,) = tcp.matches
    assert (m.first_ms, m.last_ms, m.private, m.translated) == (
        T0 + 5,
        T0 + 1250,
        ("203.0.113.1", 61000),
        False,
    )


def test_nfdump_failing_or_complaining_is_a_source_error(tmp_path: Path) -> None:
    data = nfcapd_file(tmp_path)
    q = Question(Endpoint("203.0.113.1"))
    bad = ask(q, [Source(str(data), "--from")], fake_nfdump(tmp_path, "", "boom\\n", 255))
    assert bad.status == ERROR
    assert bad.reports[0].error == f"{data}: nfdump exited with status 255: boom"
    short = ask(q, [Source(str(data), "--from")], fake_nfdump(tmp_path, "[\n]\n", "Short read\\n"))
    assert short.reports[0].error == f"{data}: nfdump could not read it: Short read"
    writing = tmp_path / "nfcapd.current.4242"
    writing.write_bytes(data.read_bytes())
    cut = ask(q, [Source(str(writing), "--from")], fake_nfdump(tmp_path, "[\n]\n", "Short read\\n"))
    assert cut.reports[0].error is None and cut.status == NOT_FOUND
    assert cut.reports[0].warnings == [f"{writing} (being written): nfdump: Short read"]
    missing = ask(q, [Source(str(data), "--from")], str(tmp_path / "no-nfdump"))
    assert "cannot run" in (missing.reports[0].error or "")


def test_a_corrupt_or_cut_gzip_file_is_a_source_error(tmp_path: Path) -> None:
    lines = "\n".join(lines_of(snat_connection(T0, T0 + 10, "10.0.1.2", 1, 2))) * 500
    data = gzip.compress(lines.encode())
    corrupt, cut = tmp_path / "corrupt.json.gz", tmp_path / "cut.json.gz"
    corrupt.write_bytes(data[:20] + bytes([data[20] ^ 0xFF]) + data[21:])  # zlib.error
    cut.write_bytes(data[: len(data) // 2])  # EOFError
    q = Question(Endpoint(PUB[0], 2))
    for path in (corrupt, cut):
        got = ask(q, [Source(str(path), "--from")])
        assert got.status == ERROR and (got.reports[0].error or "").startswith(f"{path}: ")


def test_check_says_where_who_would_look(tmp_path: Path) -> None:
    from nfflowd.ops.environment import who_findings

    (tmp_path / "nfcapd").mkdir()
    block = f"<who>\n  from {tmp_path}/nfcapd\n  from {tmp_path}/gone.json\n"
    s = _settings(tmp_path, block + "  nfdump /nonexistent/nfdump\n</who>\n")
    assert who_findings(s) == [
        ("ok", f"nfflowd who reads {tmp_path}/nfcapd, from <who> from"),
        ("warning", f"nfflowd who reads {tmp_path}/gone.json (missing), from <who> from"),
        ("warning", "nfflowd who: /nonexistent/nfdump not found (nfcapd files)"),
    ]
    inferred = who_findings(_settings(tmp_path, SCREEN_JSON))
    assert inferred == [
        (
            "ok",
            f"nfflowd who reads {tmp_path}/run/mirror.err (not there yet), "
            "from dispatcher screen (format json)",
        )
    ]
    ((level, text),) = who_findings(_settings(tmp_path, SYSLOG_ONLY))
    assert level == "note" and "no source" in text and "give the file your syslog" in text
