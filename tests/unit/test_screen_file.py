"""The screen dispatcher's file (outputs/screen_file.py) and its follower (ops/screen.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from nfflowd.ops.screen import Follower
from nfflowd.outputs.screen_file import RotatingFile, screen_path


def test_lines_are_appended_and_rotated_by_size(tmp_path: Path) -> None:
    path = tmp_path / "mirror.out"
    path.write_text("from before\n")
    f = RotatingFile(str(path), max_bytes=100, backups=2)
    for i in range(30):
        f.write(f"line {i:02d} of the flows\n")  # 19 bytes each
        f.flush()
    f.close()
    kept = [p.read_text() for p in (tmp_path / "mirror.out.2", tmp_path / "mirror.out.1", path)]
    lines = "".join(kept).splitlines()
    # two backups and the current file hold the newest lines, in order, none torn
    assert lines == [f"line {i:02d} of the flows" for i in range(30 - len(lines), 30)]
    assert not (tmp_path / "mirror.out.3").exists()
    assert (tmp_path / "mirror.out.1").stat().st_mode & 0o777 == 0o600  # made by RotatingFile


def test_a_symlink_in_its_place_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    os.symlink(target, screen_path(str(tmp_path), stderr=False))
    with pytest.raises(OSError):
        RotatingFile(screen_path(str(tmp_path), stderr=False))
    assert screen_path("/r", stderr=True) == "/r/mirror.err"


def test_the_follower_copies_new_whole_lines_across_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "mirror.out"
    path.write_text("an earlier run\n")
    rd, wr = os.pipe()
    follower = Follower(str(path), wr).start()
    f = RotatingFile(str(path), max_bytes=60, backups=1)
    for i in range(8):
        f.write(f"flow {i}\n")
        if i % 3 == 2:
            time.sleep(0.25)  # let the follower see the file between rotations
        f.flush()
    f.write("half a li")  # not flushed: not there yet
    f.close()
    follower.stop()
    os.close(wr)
    with os.fdopen(rd) as fh:
        got = fh.read()
    assert got.splitlines() == [f"flow {i}" for i in range(8)] + ["half a li"]
