"""``<collector> records``: one record per direction for v9/IPFIX collectors (the default),
the v5 triplet with ``records triplet``; v5 itself unchanged.

The configuration (defaults, values, errors naming the place), the encoders'
``per_direction`` (ORIGINAL_OUT records left out and counted, nothing else changed:
the datagrams are byte for byte those of the triplet without its second record) and
the export stage (which collector gets what, the counter as a metric).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfflowd import config
from nfflowd.config import Collector, ConfigError, ExportSettings
from nfflowd.conntrack.text import parse_line
from nfflowd.correlate.correlator import Correlator
from nfflowd.formats import ipfix, netflow_v9
from nfflowd.formats import ipfix_ies as ies
from nfflowd.formats.netflow_v5 import V5Encoder
from nfflowd.messages import Direction, FlowRecord, pack_flows
from nfflowd.outputs import prometheus
from nfflowd.outputs.exporter import Exporter, make_encoder
from tests.conntrack_events import feed
from tests.flow_records import FLOWS, NOW_NS
from tests.nat_mix import encoder

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "golden"
FORMATS = ["v9", "ipfix"]
OUT = Direction.ORIGINAL_OUT


def lab_records() -> list[FlowRecord]:
    """The correlator's records of the captured lab log: 10 connections, 27 records,
    8 of them ORIGINAL_OUT (SNAT, DNAT, NAT66, ...; tests/data/golden/README.txt)."""
    corr = Correlator()
    out: list[FlowRecord] = []
    for line in (GOLDEN / "lab-events.log").read_text().splitlines():
        ev = parse_line(line)
        if ev is not None:
            feed(corr, ev, out)
    return out


def decode(fmt: str, datagrams: list[bytes]) -> list[dict[str, Any]]:
    templates: ies.Templates = {}
    unpack = netflow_v9.unpack_datagram if fmt == "v9" else ipfix.unpack_datagram
    return [r for d in datagrams for r in unpack(d, templates)[1]]


# -- configuration --------------------------------------------------------------------------


def load_text(tmp_path: Path, text: str) -> config.Settings:
    path = tmp_path / "nfflowd.conf"
    path.write_text(text)
    return config.load(str(path))


def collector(version: int | None, records: str | None, port: int = 2055) -> str:
    lines = [f"address 192.0.2.1\nport {port}\n"]
    if version is not None:
        lines.append(f"version {version}\n")
    if records is not None:
        lines.append(f"records {records}\n")
    return "<collector>\n" + "".join(lines) + "</collector>\n"


def test_records_per_collector(tmp_path: Path) -> None:
    s = load_text(
        tmp_path,
        "<export>\nversion 9\n"
        + collector(None, None, 1)
        + collector(None, "triplet", 2)
        + collector(10, "per_direction", 3)
        + collector(10, None, 4)
        + collector(5, "triplet", 5)
        + collector(5, None, 6)
        + "</export>\n",
    )
    got = [(c.port, c.version, c.records) for c in s.export.collectors]
    assert got == [
        (1, 9, None),  # unset: the version's default (per_direction for 9 and 10)
        (2, 9, "triplet"),
        (3, 10, "per_direction"),
        (4, 10, None),
        (5, 5, "triplet"),
        (6, 5, None),
    ]
    assert Collector("192.0.2.1", 2055, 9).records is None
    assert s.notes == ()
    assert config.from_dict(json.loads(json.dumps(config.to_dict(s)))) == s
    # what the export stage makes of them
    encs = [make_encoder(s.export, c) for c in s.export.collectors]
    per_direction = [getattr(e, "per_direction", None) for e in encs]
    assert per_direction == [True, False, True, True, None, None]
    assert all(isinstance(e, V5Encoder) for e in encs[4:])


KEY = "export.collector.records"


@pytest.mark.parametrize(
    ("text", "line", "key", "fragment", "got"),
    [
        # v5 sends the triplet only: per_direction is refused where it is written ...
        (collector(5, "per_direction"), 6, KEY, "triplet with version 5", "per_direction"),
        # ... also when version 5 is <export>'s default
        (
            "version 5\n" + collector(9, "triplet") + collector(None, "per_direction"),
            12,
            "export.collector[1].records",
            "per_direction needs 9 or 10",
            "per_direction",
        ),
        (collector(9, "pairs"), 6, KEY, "per_direction (one record per", "pairs"),
        (collector(10, "1"), 6, KEY, "or triplet (also the original", "1"),
    ],
)
def test_records_errors(
    tmp_path: Path, text: str, line: int, key: str, fragment: str, got: str
) -> None:
    path = str(tmp_path / "nfflowd.conf")
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, f"<export>\n{text}</export>\n")
    err = info.value
    assert (err.path, err.line, err.key) == (path, line, key)
    assert fragment in err.message
    assert str(err).startswith(f"{path}:{line}: key {key!r}: expected ")
    assert str(err).endswith(f", got {got!r}")


def test_records_is_a_collector_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(
            tmp_path,
            "<export>\n<collector>\naddress 192.0.2.1\nport 1\nrecord x\n</collector>\n</export>\n",
        )
    assert "did you mean 'records'?" in info.value.message


# -- the encoders -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_per_direction_leaves_the_original_as_it_left_out(fmt: str) -> None:
    recs = lab_records()
    assert (len(recs), sum(r.direction == OUT for r in recs)) == (27, 8)
    both = encoder(fmt, per_direction=True), encoder(fmt)
    (fewer, left_out), (every, _) = ((e.encode(recs, NOW_NS), e.left_out) for e in both)
    assert left_out == 8 and both[1].left_out == 0
    assert both[0].records == 19 and both[1].records == 27
    got, triplet = decode(fmt, fewer), decode(fmt, every)
    assert {g["flowDirection"] for g in got} == {ies.FLOW_DIRECTION_INGRESS}
    assert got == [t for t in triplet if t["flowDirection"] == ies.FLOW_DIRECTION_INGRESS]
    # one per direction: the bytes of both directions exactly once
    assert sum(g["octetDeltaCount"] for g in got) == sum(
        r.octets for r in recs if r.direction != OUT
    )
    # ... and every translation is still there, in the postNAT* elements of record 1
    for r in recs:
        if r.direction == OUT:
            (ingress,) = [
                i for i in recs if i.ct_id == r.ct_id and i.direction == Direction.ORIGINAL_IN
            ]
            assert (ingress.post_src, ingress.post_dst, ingress.post_sport, ingress.post_dport) == (
                r.src,
                r.dst,
                r.sport,
                r.dport,
            )


@pytest.mark.parametrize("fmt", FORMATS)
@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(st.lists(FLOWS, max_size=40), min_size=1, max_size=4),
    refresh=st.integers(0, 3),
    nat_events=st.booleans(),
)
def test_per_direction_is_the_triplet_without_its_second_record(
    fmt: str, batches: list[list[FlowRecord]], refresh: int, nat_events: bool
) -> None:
    """Byte for byte, sequence numbers and template refreshes included; NAT events
    (made from ORIGINAL_IN records) unchanged."""
    kw: dict[str, Any] = {"template_refresh_packets": refresh, "nat_events": nat_events}
    mine, plain = encoder(fmt, per_direction=True, **kw), encoder(fmt, **kw)
    for i, batch in enumerate(batches):
        now = NOW_NS + i * 1_000_000_000
        want = plain.encode([r for r in batch if r.direction != OUT], now)
        assert mine.encode(batch, now) == want
    left = sum(r.direction == OUT for b in batches for r in b)
    assert (mine.left_out, mine.records, mine.sequence) == (left, plain.records, plain.sequence)
    assert mine.invalid == plain.invalid


# -- the export stage ------------------------------------------------------------------------------


def test_exporter_sends_v9_ipfix_one_record_per_direction_and_v5_the_triplet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exp = ExportSettings(
        collectors=(
            Collector("127.0.0.1", 9, 5),
            Collector("127.0.0.1", 9, 9),
            Collector("127.0.0.1", 9, 10),
            Collector("127.0.0.1", 9, 9, records="triplet"),
            Collector("127.0.0.1", 9, 10, records="triplet"),
            Collector("127.0.0.1", 9, 10, nat_events=True),
        )
    )
    exporter = Exporter(exp)
    sent: list[list[bytes]] = [[] for _ in exporter.targets]
    for out, (_enc, coll) in zip(sent, exporter.targets, strict=True):
        monkeypatch.setattr(coll, "send", out.append)
    monkeypatch.setattr(time, "time_ns", lambda: NOW_NS)  # the exporter's clock
    recs = lab_records()
    exporter.handle(pack_flows(recs))
    # v5: what it always sent, the triplet (its IPv4 part)
    assert sent[0] == V5Encoder().encode(recs, NOW_NS)
    fmts = ["v9", "ipfix", "v9", "ipfix", "ipfix"]
    flows = [
        [r for r in decode(f, s) if "natEvent" not in r]
        for f, s in zip(fmts, sent[1:], strict=True)
    ]
    assert [len(f) for f in flows] == [19, 19, 27, 27, 19]
    assert flows[0] == [f for f in flows[2] if f["flowDirection"] == 0]
    assert flows[1] == flows[4] == [f for f in flows[3] if f["flowDirection"] == 0]
    nat = [r for r in decode("ipfix", sent[5]) if "natEvent" in r]
    # NAT events: two for each of the 8 NATed connections, as with the triplet
    assert len(nat) == 2 * 8
    assert nat == [
        r
        for r in decode("ipfix", encoder("ipfix", nat_events=True).encode(recs, NOW_NS))
        if "natEvent" in r
    ]
    c = exporter.counters()
    assert [c.get(f"c{i}_left_out") for i in range(6)] == [None, 8, 8, 0, 0, 8]
    assert [c[f"c{i}_records"] for i in range(1, 6)] == [19, 19, 27, 27, 19 + 16]
    assert c["c0_records"] == 19  # v5: the 19 IPv4 records of the triplets
    assert prometheus.COLLECTOR_KEYS["left_out"].full_name == (
        "nfflowd_export_left_out_records_total"
    )
