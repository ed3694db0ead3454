"""NAT event records (nfflowd.formats.nat_events) in v9 and IPFIX: layout, round trips
through our decoders, numbering, times, sequence rules, template refresh, the active
timeout's interim reports, golden datagrams; and how the export stage builds encoders."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nfflowd.config import Collector, ExportSettings
from nfflowd.formats import ipfix, nat_events, netflow_v9
from nfflowd.formats import ipfix_ies as ies
from nfflowd.formats.netflow_v5 import V5Encoder
from nfflowd.messages import FlowRecord
from nfflowd.outputs.exporter import make_encoder
from tests.addresses import a, txt
from tests.flow_records import NOW, NOW_NS, flow, load_records
from tests.nat_mix import PAIRS, PUB, encoder, mix, snat

GOLDEN = Path(__file__).parent.parent / "data" / "nat_events"
FORMATS = ["v9", "ipfix"]


def unpack(fmt: str) -> Callable[..., tuple[Any, list[dict[str, Any]]]]:
    return netflow_v9.unpack_datagram if fmt == "v9" else ipfix.unpack_datagram


def event_dict(fmt: str, r: FlowRecord, time_ms: int, event: int) -> dict[str, Any]:
    """The record our decoders must return for an event of ``r`` (built without nat_events):
    its conntrack id as flowId (IPFIX only) and its zone as ingressVRFID."""
    v6 = r.family == 6
    fam = "IPv6" if v6 else "IPv4"
    return {
        "observationTimeMilliseconds": time_ms,
        "natEvent": event,
        "protocolIdentifier": r.proto,
        f"source{fam}Address": r.src,
        f"destination{fam}Address": r.dst,
        "sourceTransportPort": r.sport,
        "destinationTransportPort": r.dport,
        f"postNATSource{fam}Address": r.post_src,
        f"postNATDestination{fam}Address": r.post_dst,
        "postNAPTSourceTransportPort": r.post_sport,
        "postNAPTDestinationTransportPort": r.post_dport,
        **({"flowId": r.ct_id} if fmt == "ipfix" else {}),
        "ingressVRFID": r.zone,
    }


def split(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    flows = [r for r in records if "natEvent" not in r]
    return flows, [r for r in records if "natEvent" in r]


def decode_each(fmt: str, dgs: list[bytes]) -> list[tuple[Any, list[dict[str, Any]]]]:
    """(header, records) of each datagram, templates carried over."""
    templates: ies.Templates = {}
    return [unpack(fmt)(d, templates) for d in dgs]  # v9: also checks the header count


def decode_all(fmt: str, dgs: list[bytes]) -> tuple[list[Any], list[dict[str, Any]]]:
    each = decode_each(fmt, dgs)
    return [h for h, _ in each], [r for _, recs in each for r in recs]


# -- layout ------------------------------------------------------------------------------------


def test_template_layout() -> None:
    assert (nat_events.TEMPLATE_ID_V4, nat_events.TEMPLATE_ID_V6) == (258, 259)
    ids4 = [(ie.id, ie.length) for ie in nat_events.FIELDS_V4]
    assert ids4 == [
        (323, 8),
        (230, 1),
        (4, 1),
        (8, 4),
        (12, 4),
        (7, 2),
        (11, 2),
        (225, 4),
        (226, 4),
        (227, 2),
        (228, 2),
        (148, 8),  # flowId: the conntrack id
        (234, 4),  # ingressVRFID: the conntrack zone
    ]
    assert [ie.id for ie in nat_events.FIELDS_V6] == [
        323,
        230,
        4,
        27,
        28,
        7,
        11,
        281,
        282,
        227,
        228,
        148,
        234,
    ]
    assert (nat_events.RECORD_V4.size, nat_events.RECORD_V6.size) == (34 + 12, 82 + 12)
    # v9's: no flowId (nfdump 1.7 reads it as Cisco NSEL's connection id and then loses
    # the natEvent), the rest the same
    for v9_fields, fields in (
        (nat_events.FIELDS_V4_V9, nat_events.FIELDS_V4),
        (nat_events.FIELDS_V6_V9, nat_events.FIELDS_V6),
    ):
        assert [ie.id for ie in v9_fields] == [ie.id for ie in fields if ie.id != 148]
    assert (nat_events.RECORD_V4_V9.size, nat_events.RECORD_V6_V9.size) == (34 + 4, 82 + 4)
    assert nat_events.NUMBERINGS == PAIRS
    with pytest.raises(ValueError, match="expected 1 or 4"):
        nat_events.NatEvents(2)


def test_one_ipfix_event_pair_by_hand() -> None:
    r = flow(
        0x0102030405,
        0x0102030406,
        6,
        "10.0.0.1",
        "192.0.2.2",
        1000,
        80,
        3,
        300,
        "198.51.100.1",
        "192.0.2.2",
        2000,
        80,
        ct=0x0A0B0C0D,
    )._replace(zone=0x0102)
    (d,) = ipfix.IpfixEncoder(nat_events=True, nat_event_numbering=4).encode([r], NOW_NS)
    body = (
        "0000000102030405 04 06 0a000001 c0000202 03e8 0050 c6336401 c0000202 07d0 0050"
        " 000000000a0b0c0d 00000102"  # flowId (conntrack id), ingressVRFID (zone)
    ).replace(" ", "")
    delete = "000000010203040605" + body[18:]
    tail = "0102" + f"{4 + 2 * 46:04x}" + body + delete
    assert d.hex().endswith(tail)
    templates = (
        "0102000d"
        "01430008"
        "00e60001"
        "00040001"
        "00080004"
        "000c0004"
        "00070002"
        "000b0002"
        "00e10004"
        "00e20004"
        "00e30002"
        "00e40002"
        "00940008"
        "00ea0004"
    )
    assert templates in d.hex()
    h, got = ipfix.unpack_datagram(d)
    assert h.sequence == 0 and len(got) == 3  # the flow, then its two events
    assert [(g["flowId"], g["ingressVRFID"]) for g in got[1:]] == [(0x0A0B0C0D, 0x0102)] * 2


# -- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("numbering", [1, 4])
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(fmt: str, numbering: int) -> None:
    recs = mix()
    plain = encoder(fmt, source_id=5) if fmt == "v9" else encoder(fmt, observation_domain=5)
    kw = {"source_id" if fmt == "v9" else "observation_domain": 5}
    enc = encoder(fmt, nat_events=True, nat_event_numbering=numbering, **kw)
    dgs = enc.encode(recs, NOW_NS)
    _, decoded = decode_all(fmt, dgs)
    flows, events = split(decoded)
    assert flows == decode_all(fmt, plain.encode(recs, NOW_NS))[1]  # flows unchanged
    create, delete = PAIRS[numbering]
    translated = [r for r in recs if r.direction == 1 and r.ct_id not in (16, 17)]
    want = [
        e
        for r in translated
        for e in (event_dict(fmt, r, r.first_ms, create), event_dict(fmt, r, r.last_ms, delete))
    ]
    assert events == want
    assert enc.nat is not None and enc.nat.events == len(want) == 10
    assert enc.records == len(recs) + len(want) and enc.invalid == 0
    # the NAT66 pair, spelled out: pre/post addresses and times
    v6 = [e for e in events if "sourceIPv6Address" in e]
    assert [(e["natEvent"], e["observationTimeMilliseconds"]) for e in v6] == [
        (create, NOW - 800),
        (delete, NOW - 300),
    ]
    assert {txt(e["postNATSourceIPv6Address"]) for e in v6} == {"2001:db8:ff::10"}


def test_no_translation_no_events_but_templates() -> None:
    recs = [r for r in mix() if r.ct_id in (16, 17)]
    for fmt in FORMATS:
        enc = encoder(fmt, nat_events=True)
        dgs = enc.encode(recs, NOW_NS)
        templates: ies.Templates = {}
        _, got = unpack(fmt)(dgs[0], templates)
        assert {tid for _, tid in templates} == {256, 257, 258, 259}
        assert split(got)[1] == [] and enc.nat is not None and enc.nat.events == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_many_events_span_datagrams_and_sequences_stay_right(fmt: str) -> None:
    recs = [r for i in range(60) for r in snat(NOW - 1000 - i, NOW - i, i)]
    recs += [
        flow(
            NOW - 50,
            NOW - 5,
            17,
            f"fd00::{i:x}",
            "2001:db8::53",
            1000 + i,
            53,
            3,
            300,
            "2001:db8:ff::1",
            "2001:db8::53",
            3000 + i,
            53,
        )
        for i in range(20)
    ]
    enc = encoder(fmt, mtu=512, sequence=2**32 - 3, template_refresh_packets=3, nat_events=True)
    dgs = enc.encode(recs, NOW_NS)
    assert max(map(len, dgs)) <= 512 and len(dgs) > 10
    each = decode_each(fmt, dgs)
    flows, events = split([r for _, recs in each for r in recs])
    assert len(flows) == len(recs) and len(events) == 2 * 80
    seq = 2**32 - 3
    for h, got in each:
        assert h.sequence == seq
        # v9 counts packets (RFC 3954 §5.1), IPFIX data records (RFC 7011 §3.1)
        seq = (seq + (1 if fmt == "v9" else len(got))) & 0xFFFFFFFF
    assert enc.sequence == seq
    with_templates = [_has_templates(fmt, d) for d in dgs]
    assert with_templates[::3] == [True] * len(with_templates[::3])
    assert not any(w for i, w in enumerate(with_templates) if i % 3)


def _has_templates(fmt: str, d: bytes) -> bool:
    set_id: int = struct.unpack_from("!H", d, 20 if fmt == "v9" else 16)[0]
    if set_id not in (0, 2):
        return False
    _, count = struct.unpack_from("!HH", d, 0)
    templates: ies.Templates = {}
    unpack(fmt)(d, templates)
    assert len(templates) == 4  # flow and NAT event templates always go together
    if fmt == "v9":  # header count = 4 templates + data records
        assert count == 4 + len(unpack(fmt)(d, templates)[1])
    return True


@pytest.mark.parametrize("fmt", FORMATS)
def test_untranslatable_records_yield_no_events(fmt: str) -> None:
    bad_len = flow(
        NOW - 10, NOW, 6, "10.0.0.1", "192.0.2.2", 1, 80, 3, 300, PUB, "192.0.2.2", 2, 80
    )
    bad_len = bad_len._replace(post_src=a("2001:db8::1"))
    bad_port = flow(
        NOW - 10, NOW, 17, "10.0.0.1", "192.0.2.2", 70000, 53, 3, 300, PUB, "192.0.2.2", 2, 53
    )
    bad_family = bad_port._replace(family=5, sport=1)
    enc = encoder(fmt, nat_events=True)
    dgs = enc.encode([bad_len, bad_port, bad_family, *snat(NOW - 9, NOW - 1, 3)], NOW_NS)
    flows, events = split(decode_all(fmt, dgs)[1])
    assert (enc.invalid, len(flows), len(events)) == (3, 3, 2)


# -- active timeout: interim reports ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_interim_reports_create_once_final_deletes(fmt: str) -> None:
    start = NOW - 300_000
    enc = encoder(fmt, nat_events=True, nat_event_numbering=4)
    templates: ies.Templates = {}

    def events(batch: list[FlowRecord]) -> list[tuple[int, int]]:
        got = [r for d in enc.encode(batch, NOW_NS) for r in unpack(fmt)(d, templates)[1]]
        return [(e["natEvent"], e["observationTimeMilliseconds"]) for e in split(got)[1]]

    assert events(snat(start, start + 60_000, 1, end=2, ct=77)) == [(4, start)]
    assert events(snat(start + 60_000, start + 120_000, 1, end=2, ct=77)) == []
    no_id = snat(start, start + 60_000, 2, end=2)  # no conntrack id: keyed by its tuple
    assert events(no_id) == [(4, start)]
    assert events(snat(start + 120_000, start + 130_000, 1, ct=77)) == [(5, start + 130_000)]
    assert events(snat(start + 60_000, start + 70_000, 2)) == [(5, start + 70_000)]
    assert enc.nat is not None and enc.nat.open == {}
    # an export restart forgets: the final record then yields a (late) create too
    fresh = encoder(fmt, nat_events=True, nat_event_numbering=4)
    dgs = fresh.encode(snat(start + 120_000, start + 130_000, 1, ct=78), NOW_NS)
    got = split(decode_all(fmt, dgs)[1])[1]
    assert [(e["natEvent"], e["observationTimeMilliseconds"]) for e in got] == [
        (4, start + 120_000),
        (5, start + 130_000),
    ]


def test_remembered_interim_creates_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nat_events, "MAX_OPEN", 3)
    nat = nat_events.NatEvents(1)
    for ct in range(1, 6):
        assert len(nat.rows(snat(NOW - 100, NOW - 50, ct, end=2, ct=ct))) == 1
    assert list(nat.open) == [3, 4, 5]  # the oldest forgotten first
    assert [row[2][1] for row in nat.rows(snat(NOW - 50, NOW, 1, ct=1))] == [1, 2]
    assert [row[2][1] for row in nat.rows(snat(NOW - 50, NOW, 5, ct=5))] == [2]


# -- golden datagrams ------------------------------------------------------------------------------


def golden_event(fmt: str, e: dict[str, Any], numbering: int) -> dict[str, Any]:
    """A hand-written event of a golden case as our decoders return it."""
    fam = "IPv6" if ":" in e["src"] else "IPv4"
    create, delete = PAIRS[numbering]
    return {
        "observationTimeMilliseconds": e["time_ms"],
        "natEvent": create if e["event"] == "create" else delete,
        "protocolIdentifier": e["proto"],
        f"source{fam}Address": a(e["src"]),
        f"destination{fam}Address": a(e["dst"]),
        "sourceTransportPort": e["sport"],
        "destinationTransportPort": e["dport"],
        f"postNATSource{fam}Address": a(e["post_src"]),
        f"postNATDestination{fam}Address": a(e["post_dst"]),
        "postNAPTSourceTransportPort": e["post_sport"],
        "postNAPTDestinationTransportPort": e["post_dport"],
        **({"flowId": e["ct_id"]} if fmt == "ipfix" else {}),
        "ingressVRFID": e["zone"],
    }


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.stem)
def test_encode_equals_golden(path: Path) -> None:
    case = json.loads(path.read_text())
    fmt = case["format"]
    enc = (
        netflow_v9.V9Encoder(**case["encoder"])
        if fmt == "v9"
        else ipfix.IpfixEncoder(**case["encoder"])
    )
    numbering = case["encoder"]["nat_event_numbering"]
    templates: ies.Templates = {}
    for batch in case["batches"]:
        dgs = enc.encode(load_records(batch["records"]), batch["now_ns"])
        assert [d.hex() for d in dgs] == batch["datagrams"]
        got = [r for d in dgs for r in unpack(fmt)(d, templates)[1]]
        assert split(got)[1] == [golden_event(fmt, e, numbering) for e in batch["events"]]
    assert {k: getattr(enc, k) for k in case["counters"]} == case["counters"]
    assert enc.nat is not None and enc.nat.events == case["nat_events"]
    assert enc.sequence == case["final_sequence"]


def test_golden_cases_cover_both_formats_and_numberings() -> None:
    cases = [json.loads(p.read_text()) for p in GOLDEN.glob("*.json")]
    assert {(c["format"], c["encoder"]["nat_event_numbering"]) for c in cases} == {
        ("v9", 1),
        ("ipfix", 4),
    }


# -- the export stage's encoders -------------------------------------------------------------------


def test_make_encoder_takes_the_export_settings() -> None:
    exp = ExportSettings(
        engine_type=3,
        engine_id=4,
        observation_domain=4242,
        template_refresh_packets=7,
        template_refresh_seconds=90,
        collectors=(
            Collector("192.0.2.1", 2055, 9, nat_events=True, nat_event_numbering=4),
            Collector("192.0.2.2", 4739, 10),
            Collector("192.0.2.3", 2056, 5),
        ),
    )
    v9, fx, v5 = (make_encoder(exp, c) for c in exp.collectors)
    assert isinstance(v9, netflow_v9.V9Encoder) and isinstance(fx, ipfix.IpfixEncoder)
    assert (v9.source_id, fx.observation_domain) == (4242, 4242)
    for enc in (v9, fx):
        assert (enc.template_refresh_packets, enc.template_refresh_seconds) == (7, 90.0)
    assert v9.nat is not None and (v9.nat.create, v9.nat.delete) == (4, 5)
    assert fx.nat is None
    assert isinstance(v5, V5Encoder) and (v5.engine_type, v5.engine_id) == (3, 4)
    # and the datagrams say so: source id / domain, refresh after 7 packets
    recs = [r for i in range(40) for r in snat(NOW - 100, NOW, i)]
    dgs = v9.encode(recs, NOW_NS)
    assert {netflow_v9.unpack_datagram(d, {})[0].source_id for d in dgs} == {4242}
    assert [i for i, d in enumerate(dgs) if _has_templates("v9", d)] == list(range(0, len(dgs), 7))
    assert ipfix.unpack_datagram(fx.encode(recs[:3], NOW_NS)[0])[0].observation_domain == 4242
