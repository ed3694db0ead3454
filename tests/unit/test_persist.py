"""Slots survive SIGKILL of the writer; export sequence numbers go on after a restart."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from nfflowd.config import Collector, ExportSettings
from nfflowd.conntrack.checkpoint import blind_time
from nfflowd.formats.netflow_v5 import HEADER as V5_HEADER
from nfflowd.formats.netflow_v5 import V5Encoder
from nfflowd.formats.netflow_v9 import HEADER as V9_HEADER
from nfflowd.formats.netflow_v9 import V9Encoder
from nfflowd.messages import FlowRecord, pack_flows, unpack_flows
from nfflowd.outputs import exporter as exporter_module
from nfflowd.outputs.exporter import Exporter, make_encoder, restore_sequences, stream_identity
from nfflowd.pipeline import persist
from tests.addresses import a


def test_values_survive_a_killed_writer(tmp_path: Path) -> None:
    path = str(tmp_path / "x.slots")
    pid = os.fork()
    if pid == 0:  # the child stores, then dies without any cleanup
        s = persist.Slots(path, 4)
        s[0], s[3] = 2**64 - 1, 12345
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    s = persist.Slots(path, 4)
    assert not s.fresh
    assert [s[i] for i in range(4)] == [2**64 - 1, 0, 0, 12345]
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


def test_a_foreign_or_resized_file_is_reset(tmp_path: Path) -> None:
    path = tmp_path / "x.slots"
    path.write_bytes(b"garbage!" + b"\x01" * 16)
    s = persist.Slots(str(path), 2)
    assert s.fresh and (s[0], s[1]) == (0, 0)
    s[1] = 7
    s.close()
    bigger = persist.Slots(str(path), 3)  # another layout: not trusted
    assert bigger.fresh and bigger[1] == 0


def rec(n: int) -> FlowRecord:
    return FlowRecord(
        1_000,
        2_000,
        4,
        17,
        a("10.0.0.1"),
        a("203.0.113.9"),
        1000 + n,
        53,
        1,
        60,
        a("203.0.113.1"),
        a("203.0.113.9"),
        2000 + n,
        53,
        1,
        2,
        0,
        0,
        n,
    )


def test_sequences_are_restored_per_stream_identity(tmp_path: Path) -> None:
    exp = ExportSettings(
        collectors=(
            Collector("127.0.0.1", 9995, version=5),
            Collector("127.0.0.1", 9996, version=9),
        )
    )
    idents = [stream_identity(exp, c) for c in exp.collectors]
    assert len(set(idents)) == 2
    slots = persist.Slots(str(tmp_path / "export.sequence"), 8)
    v5, v9 = V5Encoder(), V9Encoder()
    assert restore_sequences(slots, [(idents[0], v5), (idents[1], v9)]) == 0
    slots[1], slots[3] = 500, 7  # what a killed export left
    v5b, v9b = V5Encoder(), V9Encoder()
    # the collectors were swapped in the config: each stream keeps its own number
    assert restore_sequences(slots, [(idents[1], v9b), (idents[0], v5b)]) == 2
    assert (v5b.sequence, v9b.sequence) == (500, 7)
    other = V5Encoder()
    assert restore_sequences(slots, [(persist.identity("elsewhere"), other)]) == 0
    assert other.sequence == 0


def test_exporter_stores_the_sequence_before_sending(tmp_path: Path) -> None:
    """A restarted Exporter continues the header sequence where the last one stopped."""
    exp = ExportSettings(
        collectors=(Collector("127.0.0.1", 9, version=5), Collector("127.0.0.1", 9, version=9))
    )
    path = str(tmp_path / "export.sequence")
    first = Exporter(exp, persist.Slots(path, 8))
    first.handle(pack_flows([rec(i) for i in range(40)]))  # v5 counts records, v9 packets
    v5_seq, v9_seq = first.targets[0][0].sequence, first.targets[1][0].sequence
    assert v5_seq == 40 and v9_seq >= 1
    second = Exporter(exp, persist.Slots(path, 8))
    v5_next = second.targets[0][0].encode([rec(99)], 3_000_000_000)
    v9_next = second.targets[1][0].encode([rec(99)], 3_000_000_000)
    assert V5_HEADER.unpack_from(v5_next[0])[5] == v5_seq  # flow_sequence
    assert V9_HEADER.unpack_from(v9_next[0])[4] == v9_seq  # packet sequence


def test_exporter_sends_what_each_encoder_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    """v5 encodes the block as it is, v9 and IPFIX the records decoded once for both;
    ``records`` counts records."""
    exp = ExportSettings(
        collectors=tuple(Collector("127.0.0.1", 9, version=v) for v in (9, 5, 10, 5))
    )
    exporter = Exporter(exp)
    sent: list[list[bytes]] = [[] for _ in exporter.targets]
    for out, (_enc, coll) in zip(sent, exporter.targets, strict=True):
        monkeypatch.setattr(coll, "send", out.append)
    decoded = []
    real_unpack = unpack_flows

    def unpack(block: bytes) -> list[FlowRecord]:
        decoded.append(block)
        return real_unpack(block)

    monkeypatch.setattr(exporter_module, "unpack_flows", unpack)
    monkeypatch.setattr(time, "time_ns", lambda: 3_000_000_000)  # the exporter's clock
    recs = [rec(i) for i in range(40)]
    exporter.handle(pack_flows(recs))
    assert decoded == [pack_flows(recs)]
    want = [make_encoder(exp, c).encode(recs, 3_000_000_000) for c in exp.collectors]
    assert sent == want and all(sent)
    assert exporter.counters()["records"] == 40
    assert [exporter.counters()[f"c{i}_records"] for i in (1, 3)] == [40, 40]


def test_ingest_counts_the_time_no_listener_existed(tmp_path: Path) -> None:
    alive = persist.Slots(str(tmp_path / "ingest.alive"), 1)
    now = 1_800_000_000 * 10**9
    assert blind_time(alive, True, now) == 0  # first start: nothing to say
    alive[0] = now - 12_345 * 10**6  # the previous ingest was last alive 12.345 s ago
    assert blind_time(alive, True, now) == 12_345
    assert blind_time(alive, False, now) == 0  # a saved log resumes at its checkpoint
    alive[0] = now + 10**9  # a clock step backwards: no claim
    assert blind_time(alive, True, now) == 0
