"""The mirror's JSON line (nfflowd.formats.json_lines) and the mirror's per-format dispatch."""

from __future__ import annotations

import dataclasses
import datetime
import io
import ipaddress
import json
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfflowd import config
from nfflowd.formats import flowtools_csv, json_lines
from nfflowd.formats.json_lines import KEYS, format_line, iso_ms, parse_line
from nfflowd.messages import Direction, EndReason, FlowRecord, pack_flows
from nfflowd.outputs.mirror import Mirror, make_dispatchers
from nfflowd.outputs.syslog import Dispatcher, ScreenDispatcher
from tests.addresses import a

# workers/ is installed as nfflowd.workers; mypy checks it as `workers`, not under that name


#: The SNAT connection tcp4-snat of tests/data/golden, its ORIGINAL_IN record.
SNAT_IN = FlowRecord(
    1795714522608, 1795714525646, 4, 6, a("10.0.1.2"), a("203.0.113.2"), 42995, 5001, 6, 1320,
    a("203.0.113.1"), a("203.0.113.2"), 42995, 5001, Direction.ORIGINAL_IN,
    EndReason.END_OF_FLOW, 0, 0, 3113394753,
)  # fmt: skip
SNAT_IN_LINE = (
    '{"first":"2026-11-26T17:35:22.608Z","last":"2026-11-26T17:35:25.646Z",'
    '"first_ms":1795714522608,"last_ms":1795714525646,"family":4,"proto":6,'
    '"src":"10.0.1.2","dst":"203.0.113.2","sport":42995,"dport":5001,'
    '"packets":6,"bytes":1320,"post_src":"203.0.113.1","post_dst":"203.0.113.2",'
    '"post_sport":42995,"post_dport":5001,"direction":"original_in",'
    '"end_reason":"end_of_flow","mark":0,"zone":0,"ct_id":3113394753,'
    '"exaddr":"127.0.0.1"}'
)
#: An IPv6 reply of a NAT66 connection, with mark, zone and an odd end reason.
V6_REPLY = FlowRecord(
    1000, 2**40, 6, 17, a("2001:db8:1::2"), a("2001:db8:1::1"), 53, 33755, 2**64 - 1, 2**63,
    a("fd00:1:0:0::2"), a("2001:db8:1::2"), 33755, 53, Direction.REPLY_IN,
    EndReason.LACK_OF_RESOURCES, 0xFFFFFFFF, 0xFFFF, 0,
)  # fmt: skip


def test_known_record_gives_the_documented_line() -> None:
    assert format_line(SNAT_IN, exaddr="127.0.0.1") == SNAT_IN_LINE
    assert list(json.loads(SNAT_IN_LINE)) == list(KEYS)


def test_every_field_of_an_ipv6_record() -> None:
    line = format_line(V6_REPLY, exaddr="2001:db8::ffff")
    assert "\n" not in line and " " not in line
    assert json.loads(line) == {
        "first": "1970-01-01T00:00:01.000Z",
        "last": "2004-11-03T19:53:47.776Z",
        "first_ms": 1000,
        "last_ms": 2**40,
        "family": 6,
        "proto": 17,
        "src": "2001:db8:1::2",
        "dst": "2001:db8:1::1",
        "sport": 53,
        "dport": 33755,
        "packets": 2**64 - 1,
        "bytes": 2**63,
        "post_src": "fd00:1::2",
        "post_dst": "2001:db8:1::2",
        "post_sport": 33755,
        "post_dport": 53,
        "direction": "reply_in",
        "end_reason": "lack_of_resources",
        "mark": 0xFFFFFFFF,
        "zone": 0xFFFF,
        "ct_id": 0,
        "exaddr": "2001:db8::ffff",
    }
    assert parse_line(line) == json.loads(line)


def test_exaddr_is_escaped() -> None:
    line = format_line(SNAT_IN, exaddr='x"\\y')
    assert json.loads(line)["exaddr"] == 'x"\\y'


def test_names_cover_the_enums() -> None:
    assert set(json_lines.DIRECTIONS.values()) == {"original_in", "original_out", "reply_in"}
    assert len(json_lines.END_REASONS) == len(EndReason) - 1  # OPENED is no flow's end


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (999, "1970-01-01T00:00:00.999Z"),
        (951_782_400_001, "2000-02-29T00:00:00.001Z"),
        (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_iso_times(ms: int, text: str) -> None:
    assert iso_ms(ms) == text


@pytest.mark.parametrize("ms", [-1, 253_402_300_800_000])
def test_iso_time_out_of_range(ms: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        iso_ms(ms)


# -- property: what is written is every field, read back exactly -------------------------------

v4 = st.binary(min_size=4, max_size=4)
v6 = st.binary(min_size=16, max_size=16)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
ms = st.integers(0, 253_402_300_799_999)


@st.composite
def records(draw: st.DrawFn) -> FlowRecord:
    family = draw(st.sampled_from([4, 6]))
    addr = v4 if family == 4 else v6
    return FlowRecord(
        draw(ms),
        draw(ms),
        family,
        draw(st.integers(0, 255)),
        draw(addr),
        draw(addr),
        draw(u16),
        draw(u16),
        draw(u64),
        draw(u64),
        draw(addr),
        draw(addr),
        draw(u16),
        draw(u16),
        draw(st.sampled_from(list(Direction))),
        draw(st.sampled_from([e for e in EndReason if e is not EndReason.OPENED])),
        draw(u32),
        draw(u16),
        draw(u32),
    )


def independent(r: FlowRecord, exaddr: str) -> dict[str, Any]:
    """What the line must say, computed with datetime and ipaddress instead."""
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)

    def when(t: int) -> str:
        return (epoch + datetime.timedelta(milliseconds=t)).isoformat(timespec="milliseconds")[
            :-6
        ] + "Z"

    def addr(b: bytes) -> str:
        return str(ipaddress.ip_address(b))

    return {
        "first": when(r.first_ms),
        "last": when(r.last_ms),
        "first_ms": r.first_ms,
        "last_ms": r.last_ms,
        "family": r.family,
        "proto": r.proto,
        "src": addr(r.src),
        "dst": addr(r.dst),
        "sport": r.sport,
        "dport": r.dport,
        "packets": r.packets,
        "bytes": r.octets,
        "post_src": addr(r.post_src),
        "post_dst": addr(r.post_dst),
        "post_sport": r.post_sport,
        "post_dport": r.post_dport,
        "direction": Direction(r.direction).name.lower(),
        "end_reason": EndReason(r.end_reason).name.lower(),
        "mark": r.mark,
        "zone": r.zone,
        "ct_id": r.ct_id,
        "exaddr": exaddr,
    }


@given(records(), st.sampled_from(["0.0.0.0", "172.16.1.1", "2001:db8::1"]))
def test_round_trip(r: FlowRecord, exaddr: str) -> None:
    line = format_line(r, exaddr=exaddr)
    want = independent(r, exaddr)
    assert json.loads(line) == want
    assert parse_line(line) == want
    assert list(parse_line(line)) == list(KEYS)


# -- bad records: a clear ValueError naming the field ------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"family": 5}, "family"),
        ({"family": "4"}, "family"),
        ({"src": b"\1\2\3"}, "src"),
        ({"post_dst": a("::1")}, "post_dst"),
        ({"post_src": None}, "post_src"),
        ({"direction": 9}, "direction"),
        ({"end_reason": 0}, "end_reason"),
        ({"end_reason": True}, "end_reason"),
        ({"sport": 65536}, "sport"),
        ({"octets": -1}, "octets"),
        ({"packets": 2**64}, "packets"),
        ({"ct_id": "7"}, "ct_id"),
        ({"first_ms": 10**16}, "first_ms"),
        ({"zone": 1.5}, "zone"),
        ({"mark": True}, "mark"),
    ],
)
def test_bad_record_names_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^field {field}: "):
        format_line(SNAT_IN._replace(**change), exaddr="127.0.0.1")


def edited(**change: Any) -> str:
    obj = json.loads(SNAT_IN_LINE)
    for k, v in change.items():
        if v is None:
            del obj[k]
        else:
            obj[k] = v
    return json.dumps(obj)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"first": ', r"^not JSON at offset 10: "),
        ("[1, 2]", r"^expected a JSON object, got list"),
        (edited(zone=None), r"^key zone: missing"),
        (edited(extra=1), r"^key extra: unknown"),
        (edited(sport="42995"), r"^key sport: '42995' is not an integer"),
        (edited(sport=True), r"^key sport: True is not an integer"),
        (edited(dport=70000), r"^key dport: 70000 is not an integer in 0..65535"),
        (edited(packets=-1), r"^key packets: "),
        (edited(bytes=1.5), r"^key bytes: "),
        (edited(family=5), r"^key family: 5 is neither 4 nor 6"),
        (edited(src="fd00::1"), r"^key src: 'fd00::1' is not an IPv4 address"),
        (edited(post_dst="203.0.113.300"), r"^key post_dst: "),
        (edited(exaddr=7), r"^key exaddr: 7 is not an address string"),
        (edited(first="2026-11-26 17:35:22.608Z"), r"^key first: .* is not YYYY"),
        (edited(last="2026-11-26T17:35:25.647Z"), r"^key last: .* disagrees with last_ms"),
        (edited(direction="in"), r"^key direction: 'in' is not one of original_in, "),
        (edited(end_reason=3), r"^key end_reason: 3 is not one of "),
    ],
)
def test_bad_line_names_the_key(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_line(line)


def test_parse_normalises_addresses_and_accepts_any_key_order() -> None:
    obj = json.loads(format_line(V6_REPLY, exaddr="::1"))
    obj["post_src"] = "FD00:1:0:0:0:0:0:2"
    shuffled = json.dumps(dict(reversed(list(obj.items()))))
    assert parse_line(shuffled)["post_src"] == "fd00:1::2"
    assert list(parse_line(shuffled)) == list(KEYS)


# -- the mirror: one formatting per format in use, every dispatcher its own format -------------


def mirror_with(*formats: str) -> tuple[Any, list[io.StringIO]]:
    base = config.load(None)
    settings = dataclasses.replace(
        base, export=dataclasses.replace(base.export, exaddr="192.0.2.9")
    )
    streams = [io.StringIO() for _ in formats]
    outputs: list[tuple[str, Dispatcher]] = [
        (fmt, ScreenDispatcher(stream)) for fmt, stream in zip(formats, streams, strict=True)
    ]
    return Mirror(settings, outputs), streams


def test_mirror_formats_once_per_format(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"csv": 0, "json": 0}  # lines formatted
    csv_blocks = []
    real_csv, real_json = flowtools_csv.format_block, json_lines.format_line

    def count_csv(block: bytes, **kw: Any) -> list[str]:
        lines = real_csv(block, **kw)
        calls["csv"] += len(lines)
        csv_blocks.append(block)
        return lines

    def count_json(r: FlowRecord, **kw: Any) -> str:
        calls["json"] += 1
        return real_json(r, **kw)

    monkeypatch.setattr(flowtools_csv, "format_block", count_csv)
    monkeypatch.setattr(json_lines, "format_line", count_json)
    m, streams = mirror_with("json", "csv", "json", "csv")
    assert list(m.formatters) == ["json", "csv"]
    m.handle(pack_flows([SNAT_IN, V6_REPLY]))
    m.flush()
    assert calls == {"csv": 2, "json": 2}
    assert csv_blocks == [pack_flows([SNAT_IN, V6_REPLY])]  # the block at once
    js, cs, js2, cs2 = (s.getvalue().splitlines() for s in streams)
    assert js == js2 and cs == cs2
    assert [parse_line(x)["src"] for x in js] == ["10.0.1.2", "2001:db8:1::2"]
    assert parse_line(js[1])["post_src"] == "fd00:1::2"
    assert [flowtools_csv.parse_line(x)["srcaddr"] for x in cs] == ["10.0.1.2", "2001:db8:1::2"]
    assert all(parse_line(x)["exaddr"] == "192.0.2.9" for x in js)
    assert m.counters()["lines"] == 2 and m.counters()["invalid"] == 0


def test_mirror_skips_only_the_bad_record() -> None:
    m, (js, cs) = mirror_with("json", "csv")
    bad = SNAT_IN._replace(direction=0)  # the CSV line has no direction; JSON rejects it
    m.handle(pack_flows([SNAT_IN, bad, V6_REPLY]))
    m.flush()
    assert len(js.getvalue().splitlines()) == len(cs.getvalue().splitlines()) == 2
    assert m.counters()["lines"] == 2 and m.counters()["invalid"] == 1


def test_mirror_counts_what_neither_format_takes(caplog: pytest.LogCaptureFixture) -> None:
    """A record the CSV block formatter rejects is skipped for every dispatcher, counted
    once, warned about once a minute; the rest of its block goes on."""
    m, (cs, js) = mirror_with("csv", "json")
    bad = SNAT_IN._replace(family=5)
    with caplog.at_level(logging.WARNING, logger="nfflowd.mirror"):
        m.handle(pack_flows([bad, SNAT_IN, V6_REPLY]))
        m.handle(pack_flows([V6_REPLY, bad]))
    m.flush()
    srcs = [flowtools_csv.parse_line(x)["srcaddr"] for x in cs.getvalue().splitlines()]
    assert srcs == ["10.0.1.2", "2001:db8:1::2", "2001:db8:1::2"]
    assert [parse_line(x)["src"] for x in js.getvalue().splitlines()] == srcs
    assert m.counters()["lines"] == 3 and m.counters()["invalid"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "nfflowd.mirror"]
    assert len(warnings) == 1 and warnings[0].startswith("record 0 of a batch not mirrored: ")


def test_mirror_csv_alone_skips_only_the_bad_record() -> None:
    m, (cs,) = mirror_with("csv")
    m.handle(pack_flows([SNAT_IN, SNAT_IN._replace(family=0), V6_REPLY]))
    m.flush()
    srcs = [flowtools_csv.parse_line(x)["srcaddr"] for x in cs.getvalue().splitlines()]
    assert srcs == ["10.0.1.2", "2001:db8:1::2"]
    assert m.counters()["lines"] == 2 and m.counters()["invalid"] == 1


def test_mirror_builds_dispatchers_with_their_format(tmp_path: Any) -> None:
    conf = tmp_path / "m.conf"
    conf.write_text(
        "<ptee>\n <conf>\n  dispatchers screen\n  dispatchers other\n"
        "  <screen>\n   class Log::Dispatch::Screen\n   stderr 0\n   min_level debug\n"
        "   format json\n  </screen>\n"
        "  <other>\n   class Log::Dispatch::Screen\n   stderr 1\n   min_level info\n"
        "  </other>\n </conf>\n</ptee>\n"
    )
    outputs = make_dispatchers(config.load(str(conf)))
    assert [fmt for fmt, _ in outputs] == ["json", "csv"]
