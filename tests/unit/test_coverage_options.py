"""Coverage gaps as v9/IPFIX options records (nfflowd.formats.coverage_options): the
encoders' ``encode_gaps`` against our own unpackers, the template's exact layout, the
cause codes against the journal's causes, splitting, sequence numbers, refusals."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from nfflowd.formats import coverage_options as co
from nfflowd.formats import ipfix, netflow_v9
from nfflowd.formats.ipfix_ies import distinct
from nfflowd.pipeline import coverage
from tests.flow_records import flow

NOW_NS = 1_796_552_630_123_000_000
GAPS = [
    co.GapRow(1_796_552_624_000, 1_796_552_626_545, "not_listening", "ingest"),
    co.GapRow(1_796_552_627_001, 1_796_552_627_001, "enobufs", "ingest"),
    co.GapRow(0, 2**64 - 1, "undelivered", "export-12"),
]


def encoder(fmt: str, **kw: Any) -> ipfix.IpfixEncoder | netflow_v9.V9Encoder:
    if fmt == "v9":
        return netflow_v9.V9Encoder(source_id=7, boot_ms=0, coverage=True, **kw)
    return ipfix.IpfixEncoder(observation_domain=7, coverage=True, **kw)


def decode(fmt: str, datagrams: list[bytes]) -> tuple[list[Any], list[dict[str, Any]]]:
    unpack = netflow_v9.unpack_datagram if fmt == "v9" else ipfix.unpack_datagram
    templates: dict[Any, Any] = {}
    heads, records = [], []
    for d in datagrams:
        h, recs = unpack(d, templates)  # v9: raises when the header count is wrong
        heads.append(h)
        records += recs
    return heads, records


def test_every_journal_cause_has_a_code_that_never_changes() -> None:
    assert set(co.CAUSE_CODES) == set(coverage.CAUSES)
    assert co.CAUSE_CODES == {
        "not_listening": 1, "enobufs": 2, "undelivered": 3, "no_counters": 4, "no_timestamps": 5,
    }  # fmt: skip


@pytest.mark.parametrize("fmt", ["v9", "ipfix"])
def test_gaps_round_trip_through_our_unpackers(fmt: str) -> None:
    enc = encoder(fmt)
    dgs = enc.encode_gaps(GAPS, NOW_NS)
    assert len(dgs) == 1 and enc.gaps == 3 and enc.records == 0
    heads, records = decode(fmt, dgs)
    assert [co.unpack(r) for r in records] == [(7, g) for g in GAPS]
    assert records[0][co.FIRST_NAME] == GAPS[0].from_ms
    assert records[0][co.LAST_NAME] == GAPS[0].to_ms
    if fmt == "v9":  # the data templates (first packet) and the options template + 3 records
        assert heads[0].count == 2 + 1 + 3 and heads[0].source_id == 7
    else:
        assert heads[0].observation_domain == 7 and heads[0].sequence == 0
        assert enc.sequence == 3  # options data records take sequence numbers (RFC 7011 §3.1)


def test_the_ipfix_options_template_set_byte_for_byte() -> None:
    ent = 0x8000
    want = struct.pack(
        "!HH HHH HH HH HH HHI HHI",
        3, 4 + 6 + 4 * 3 + 8 * 2,  # Options Template Set, its length
        260, 5, 1,  # template id, 5 fields, 1 of them scope
        149, 4,  # observationDomainId (scope)
        323, 8, 323, 8,  # observationTimeMilliseconds: first, last
        ent | 1, 1, 32473, ent | 2, 16, 32473,  # cause, stage (enterprise-specific)
    )  # fmt: skip
    assert co.ipfix_template_set() == want


def test_the_v9_options_template_flowset_byte_for_byte() -> None:
    body = struct.pack(
        "!HHH HH HH HH HH HH",
        260, 4, 16,  # template id, scope length, option length (RFC 3954 §6.1)
        1, 4,  # scope System
        323, 8, 323, 8, 0x8001, 1, 0x8002, 16,
    )  # fmt: skip
    assert co.v9_template_flowset() == struct.pack("!HH", 1, 4 + len(body) + 2) + body + b"\0\0"


@pytest.mark.parametrize("fmt", ["v9", "ipfix"])
def test_the_options_template_goes_with_the_data_templates_and_every_gap(fmt: str) -> None:
    enc = encoder(fmt, template_refresh_packets=3)
    rec = flow(
        1000, 2000, 6, "10.0.0.1", "192.0.2.1", 1234, 80, 1, 60, "10.0.0.1", "192.0.2.1", 1234, 80
    )
    first = enc.encode([rec], NOW_NS)  # templates due: data and options templates
    templates: dict[Any, Any] = {}
    unpack = netflow_v9.unpack_datagram if fmt == "v9" else ipfix.unpack_datagram
    unpack(first[0], templates)
    assert (7, co.TEMPLATE_ID) in templates and (7, 256) in templates
    enc.encode([rec], NOW_NS)  # no templates in this one
    # a gap message carries the options template although the data templates are not due
    (gap_dg,) = enc.encode_gaps(GAPS[:1], NOW_NS)
    _, records = unpack(gap_dg, {})  # a collector that knows no template yet
    assert [co.unpack(r) for r in records] == [(7, GAPS[0])]
    assert (co.ipfix_template_set() if fmt == "ipfix" else co.v9_template_flowset()) in gap_dg
    # the refresh counts the gap message: the next is the third since the templates
    third = enc.encode([rec], NOW_NS)[0]
    assert len(third) == len(first[0])


@pytest.mark.parametrize("fmt", ["v9", "ipfix"])
def test_many_gaps_are_split_within_the_mtu(fmt: str) -> None:
    enc = encoder(fmt, mtu=600)
    gaps = [GAPS[i % 3]._replace(from_ms=i, to_ms=i + 1) for i in range(100)]
    dgs = enc.encode_gaps(gaps, NOW_NS)
    assert len(dgs) > 1 and all(len(d) <= 600 for d in dgs)
    heads, records = decode(fmt, dgs)
    assert [co.unpack(r) for r in records] == [(7, g) for g in gaps]
    if fmt == "ipfix":  # the count of data records before the message
        per = [len(decode(fmt, [d])[1]) for d in dgs]
        assert [h.sequence for h in heads] == [sum(per[:i]) for i in range(len(dgs))]
        assert enc.sequence == 100
    else:
        assert [h.sequence for h in heads] == list(range(len(dgs)))


@pytest.mark.parametrize("fmt", ["v9", "ipfix"])
def test_bad_gaps_send_nothing(fmt: str) -> None:
    enc = encoder(fmt)
    for bad in (GAPS[0]._replace(cause="bored"), GAPS[0]._replace(to_ms=2**64)):
        with pytest.raises(ValueError):
            enc.encode_gaps([GAPS[1], bad], NOW_NS)
    assert (enc.sequence, enc.datagrams, enc.gaps) == (0, 0, 0)
    plain = ipfix.IpfixEncoder() if fmt == "ipfix" else netflow_v9.V9Encoder(boot_ms=0)
    with pytest.raises(ValueError, match="coverage=True"):
        plain.encode_gaps(GAPS, NOW_NS)
    assert enc.encode_gaps([], NOW_NS) == []


def test_long_stage_names_are_cut_and_foreign_records_are_not_ours() -> None:
    enc = encoder("ipfix")
    (d,) = enc.encode_gaps([GAPS[0]._replace(stage="mirror-1234567890123")], NOW_NS)
    _, recs = decode("ipfix", [d])
    assert co.unpack(recs[0]) == (7, GAPS[0]._replace(stage="mirror-123456789"))
    assert co.unpack({"observationDomainId": 7}) is None
    assert co.unpack({**recs[0], "ie32473.1": b"\x63"}) is None  # an unknown cause code


def test_repeated_elements_keep_both_values() -> None:
    assert distinct(["a", "b", "a", "a"]) == ("a", "b", "a#2", "a#3")
