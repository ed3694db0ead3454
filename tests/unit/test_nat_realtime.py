"""Real-time NAT events (``<collector> nat_events realtime``): the correlator's OPENED
record at a NATed connection's NEW, the create event it becomes at once, the delete
event alone at the end; no other consumer sees an OPENED record."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from nfflowd import config
from nfflowd.config import Collector, ConfigError, ExportSettings
from nfflowd.correlate.batches import BatchCorrelator
from nfflowd.correlate.correlator import Correlator
from nfflowd.formats import ipfix_ies as ies
from nfflowd.messages import (
    Direction,
    EndReason,
    EventBatch,
    EventType,
    FlowRecord,
    Payload,
    pack_flows,
    unpack_flows,
    without_opened,
)
from nfflowd.outputs.exporter import Exporter
from tests.addresses import a
from tests.conntrack_events import SNAT_ORIG, SNAT_REPLY, ev, feed
from tests.nat_mix import decode_all_records, encoder

NEW, DESTROY = EventType.NEW, EventType.DESTROY
PLAIN = (("10.0.1.3", "203.0.113.2", 4000, 80), ("203.0.113.2", "10.0.1.3", 80, 4000))


def test_a_natted_new_yields_one_opened_record_and_a_plain_one_none() -> None:
    corr, out = Correlator(nat_starts=True), list[FlowRecord]()
    feed(corr, ev(NEW, 100.0, SNAT_ORIG, SNAT_REPLY, counters=None, ct_id=7), out)
    feed(corr, ev(NEW, 100.5, *PLAIN, counters=None, ct_id=8), out)
    assert len(out) == 1 and corr.counters.opened == 1
    (r,) = out
    assert (r.end_reason, r.direction) == (EndReason.OPENED, Direction.ORIGINAL_IN)
    assert (r.first_ms, r.last_ms, r.packets, r.octets, r.ct_id) == (100_000, 100_000, 0, 0, 7)
    assert (r.src, r.post_src, r.post_sport) == (a("10.0.195.106"), a("192.76.7.154"), 62380)
    # the DESTROY still yields the whole triplet, from the start the NEW gave
    feed(corr, ev(DESTROY, 130.0, SNAT_ORIG, SNAT_REPLY, ct_id=7), out)
    assert [(x.direction, x.end_reason, x.first_ms) for x in out[1:]] == [
        (d, EndReason.END_OF_FLOW, 100_000) for d in Direction
    ]
    # without real-time NAT events a NEW yields nothing
    quiet: list[FlowRecord] = []
    feed(Correlator(), ev(NEW, 100.0, SNAT_ORIG, SNAT_REPLY, counters=None, ct_id=9), quiet)
    assert quiet == []


def test_saved_logs_parse_new_lines_in_full_for_opened_records() -> None:
    """The fast NEW path (two numbers of the line) cannot tell NAT: it is off."""
    new = (
        "[1795714273.762413]\t    [NEW] tcp      6 120 SYN_SENT src=10.0.1.2 dst=203.0.113.2 "
        "sport=34998 dport=80 [UNREPLIED] src=203.0.113.2 dst=203.0.113.1 sport=80 "
        "dport=34998 id=3383701959\n"
    )
    batch = EventBatch("ingest", 1, 1, 0, Payload.TEXT, new.encode(), 1, "t.log", 1)
    got = unpack_flows(BatchCorrelator(3600, nat_starts=True).records(batch))
    assert [(r.end_reason, r.post_src, r.ct_id) for r in got] == [
        (EndReason.OPENED, a("203.0.113.1"), 3383701959)
    ]
    assert BatchCorrelator(3600).records(batch) == b""


@pytest.mark.parametrize("fmt", ["v9", "ipfix"])
def test_create_at_the_start_delete_alone_at_the_end(fmt: str) -> None:
    corr, recs = Correlator(nat_starts=True), list[FlowRecord]()
    feed(corr, ev(NEW, 100.0, SNAT_ORIG, SNAT_REPLY, counters=None, ct_id=7), recs)
    enc = encoder(fmt, nat_events=True, nat_event_numbering=4, per_direction=True)
    templates: ies.Templates = {}
    flows, events = decode_all_records(fmt, enc.encode(recs, 101 * 10**9), templates)
    assert flows == []  # an OPENED record is no flow
    assert [(e["natEvent"], e["observationTimeMilliseconds"]) for e in events] == [(4, 100_000)]
    end: list[FlowRecord] = []
    feed(corr, ev(DESTROY, 130.0, SNAT_ORIG, SNAT_REPLY, ct_id=7), end)
    flows, events = decode_all_records(fmt, enc.encode(end, 131 * 10**9), templates)
    assert len(flows) == 2  # per direction
    assert [(e["natEvent"], e["observationTimeMilliseconds"]) for e in events] == [(5, 130_000)]


def test_without_opened_keeps_every_other_record_in_order() -> None:
    corr, recs = Correlator(nat_starts=True), list[FlowRecord]()
    feed(corr, ev(NEW, 100.0, SNAT_ORIG, SNAT_REPLY, counters=None, ct_id=7), recs)
    feed(corr, ev(DESTROY, 101.0, *PLAIN, ct_id=8), recs)
    feed(corr, ev(NEW, 102.0, SNAT_ORIG, SNAT_REPLY, counters=None, ct_id=9), recs)
    block = pack_flows(recs)
    assert unpack_flows(without_opened(block)) == [r for r in recs if r.end_reason]
    plain = pack_flows([r for r in recs if r.end_reason])
    assert without_opened(plain) is plain


def test_export_sends_opened_records_to_realtime_collectors_only() -> None:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
            s.settimeout(5)
        ports = [s.getsockname()[1] for s in socks]
        exp = ExportSettings(
            collectors=(
                Collector("127.0.0.1", ports[0], 10, nat_events=True, nat_realtime=True),
                Collector("127.0.0.1", ports[1], 10, nat_events=True),
            )
        )
        corr, recs = Correlator(nat_starts=True), list[FlowRecord]()
        feed(corr, ev(NEW, 100.0, SNAT_ORIG, SNAT_REPLY, counters=None, ct_id=7), recs)
        feed(corr, ev(DESTROY, 101.0, *PLAIN, ct_id=8), recs)
        exporter = Exporter(exp)
        exporter.handle(pack_flows(recs))
        got = [decode_all_records("ipfix", [s.recv(65535)], {}) for s in socks]
        (rt_flows, rt_events), (plain_flows, plain_events) = got
        assert len(rt_flows) == len(plain_flows) == 2  # the plain connection, per direction
        assert [e["natEvent"] for e in rt_events] == [1]  # created while open
        assert plain_events == []  # nat_events 1: both events when it ends
        assert exporter.records == 3  # what was handed over, OPENED included
    finally:
        for s in socks:
            s.close()


def conf(tmp_path: Path, value: str, version: int = 10) -> Path:
    path = tmp_path / "c.conf"
    path.write_text(
        "<export>\n  <collector>\n    address 127.0.0.1\n    port 2055\n"
        f"    version {version}\n    nat_events {value}\n  </collector>\n</export>\n"
    )
    return path


def test_configuration(tmp_path: Path) -> None:
    s = config.load(str(conf(tmp_path, "realtime")))
    (c,) = s.export.collectors
    assert (c.nat_events, c.nat_realtime, s.export.nat_realtime) == (True, True, True)
    s = config.load(str(conf(tmp_path, "1")))
    assert (s.export.collectors[0].nat_realtime, s.export.nat_realtime) == (False, False)
    with pytest.raises(ConfigError, match="or realtime"):
        config.load(str(conf(tmp_path, "sometimes")))
    with pytest.raises(ConfigError, match="version 5"):
        config.load(str(conf(tmp_path, "realtime", version=5)))
