"""conntrack/reader.py: ingest's batches, cut where a successor re-reading would cut them."""

from __future__ import annotations

from pathlib import Path

from nfflowd.conntrack.reader import Part, Reader
from nfflowd.conntrack.sources import FileSource
from nfflowd.lab.events import generate


def batches(reader: Reader, correlators: int = 1) -> list[tuple[list[Part], tuple[int, int]]]:
    """Every batch of a saved log, with the position after it (what ingest checkpoints)."""
    out = []
    log_file = reader.log_file
    assert log_file is not None
    while not (reader.source.exhausted and not reader.holding):
        if reader.due():
            out.append((reader.take([0] * correlators), log_file.position()))
        else:
            reader.read()
    return out


def test_a_re_read_from_any_checkpoint_cuts_the_same_batches(tmp_path: Path) -> None:
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    generate(str(logs[0]), 9000, seed=1)
    generate(str(logs[1]), 2500, seed=2)
    paths = tuple(map(str, logs))
    first = batches(Reader(FileSource(paths), 1, linger_s=0.0, paths=paths))
    lines = sum(p.events for parts, _ in first for p in parts)
    assert lines == 11500 and len(first) > 5
    # a batch never spans two files, and names where its first line is
    for parts, _ in first:
        (p,) = parts
        assert p.where in paths and p.first_line >= 1
        assert p.data.count(b"\n") == p.events
    for k in range(len(first) - 1):  # the successor of an ingest killed after batch k
        resumed = FileSource(paths, resume=first[k][1])
        again = batches(Reader(resumed, 1, linger_s=0.0, paths=paths))
        assert again == first[k + 1 :], k  # same bytes, same origins, same lines


def test_split_among_correlators_keeps_every_line_once(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    generate(str(log), 5000, seed=3)
    paths = (str(log),)
    got = batches(Reader(FileSource(paths), 3, linger_s=0.0, paths=paths), correlators=3)
    data = b"".join(p.data for parts, _ in got for p in parts)
    assert sorted(data.splitlines()) == sorted(log.read_bytes().splitlines())
    for parts, _ in got:
        assert {p.origin_pos for p in parts} == {parts[0].origin_pos}  # one batch, one origin
        assert len({p.origin_stream for p in parts}) == len(parts)  # a stream per correlator
        assert all(p.first_line == 0 for p in parts)  # lines no longer in a row
