"""The ``screen`` dispatcher on the terminal of ``nfflowd -f start`` and ``nfflowd replay``.

The 2009 tool printed its flow lines on its own terminal when its ``<ptee>`` had a
screen dispatcher.  Here the mirror stage is a process of supervisord, which
writes the screen dispatcher's lines into ``<rundir>/mirror.out`` (``mirror.err``
with ``stderr 1``; :mod:`nfflowd.outputs.screen_file`): the right place for a
detached daemon.  A command that runs the pipeline in the foreground also follows
that file and copies what the mirror writes to its own stdout (stderr for a
dispatcher with ``stderr 1``), so the lines show up where the old tool showed
them, and the file is written as always.

Following survives supervisord's rotation (the file renamed, a new one made: a
new inode, or a shorter file, is opened from its start) and copies whole lines
only; :meth:`Follower.stop` copies what is left before it returns.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import BinaryIO

from nfflowd.config import Settings
from nfflowd.formats.syslog import FLOW_LINE_LEVEL, LEVELS
from nfflowd.outputs.screen_file import screen_path

#: How often the file is looked at (s).
POLL_S = 0.1
#: Read at most this much per look (bounded memory whatever the mirror writes).
CHUNK = 1 << 20


def screen_streams(settings: Settings) -> set[str]:
    """Which of the mirror's streams carry flow lines: "stdout" and/or "stderr"."""
    return {
        "stderr" if d.stderr else "stdout"
        for d in settings.mirror.dispatchers
        if d.kind == "screen" and LEVELS[d.min_level] >= LEVELS[FLOW_LINE_LEVEL]
    }


class Follower:
    """Copies what is appended to *path* to the file descriptor *fd* (a thread)."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.copied = 0  # bytes
        self._fh: BinaryIO | None = None
        self._ino = 0
        self._partial = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"follow:{path}", daemon=True)

    def start(self) -> Follower:
        """Follow from the file's current end: what an earlier run wrote is not shown."""
        with contextlib.suppress(OSError):
            self._fh = open(self.path, "rb")  # noqa: SIM115 - kept open across polls
            self._fh.seek(0, os.SEEK_END)
            self._ino = os.fstat(self._fh.fileno()).st_ino
        self._thread.start()
        return self

    def stop(self) -> None:
        """Copy what is there now, then stop following (again: nothing)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(10)
        self._copy()
        if self._partial:
            self._write(self._partial + b"\n")
            self._partial = b""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self._copy()

    def _reopen_if_rotated(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return
        fh = self._fh
        if fh is not None and st.st_ino == self._ino and st.st_size >= fh.tell():
            return
        if fh is not None:
            self._drain(fh)  # what the old file still held
            fh.close()
        self._fh = open(self.path, "rb")  # noqa: SIM115 - kept open across polls
        self._ino = st.st_ino

    def _copy(self) -> None:
        with contextlib.suppress(OSError):
            self._reopen_if_rotated()
            if self._fh is not None:
                self._drain(self._fh)

    def _drain(self, fh: BinaryIO) -> None:
        while data := fh.read(CHUNK):
            data = self._partial + data
            cut = data.rfind(b"\n") + 1
            self._partial = data[cut:]
            if cut:
                self._write(data[:cut])

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.copied += len(data)


def follow(settings: Settings, rundir: str) -> list[Follower]:
    """Start following the mirror's files that carry flow lines (none without a screen).

    Call it before the pipeline starts; :func:`stop` the followers once it ended."""
    streams = screen_streams(settings)
    out = []
    if "stdout" in streams:
        out.append(Follower(screen_path(rundir, stderr=False), 1).start())
    if "stderr" in streams:
        out.append(Follower(screen_path(rundir, stderr=True), 2).start())
    return out


def stop(followers: list[Follower]) -> None:
    for f in followers:
        f.stop()
