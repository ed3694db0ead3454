"""Where a daemon's ``screen`` dispatcher writes: ``<rundir>/mirror.out`` (``mirror.err``).

The 2009 tool's screen dispatcher wrote to its terminal.  A stage run by
supervisord has no terminal: its stdout is a pipe that supervisord reads and
copies into a log file.  For flow lines that relay cost supervisord (a Python
loop) about as much CPU as writing them, so the mirror writes the screen
dispatcher's lines into the file itself, rotated as supervisord rotated it
(``MAX_BYTES``, ``BACKUPS``: ``mirror.out.1`` ...), and the stage's own stdout
and stderr stay supervisord's (``mirror.log``).  ``nfflowd replay`` and
``nfflowd -f start`` follow the file and show the lines on their terminal
(:mod:`nfflowd.ops.screen`).

The file is opened with ``O_NOFOLLOW`` (the run directory may be shared with
``<daemon> user``'s group), mode 0600, appended to, written in large blocks.
"""

from __future__ import annotations

import contextlib
import os

#: A file past this size is rotated (supervisord's stdout_logfile_maxbytes was 50MB).
MAX_BYTES = 50 << 20
#: Rotated files kept (mirror.out.1 .. mirror.out.3).
BACKUPS = 3
#: Bytes buffered before a write (a flush writes whatever is buffered).
BUFFER = 1 << 16


def screen_path(rundir: str, stderr: bool) -> str:
    """The file of a screen dispatcher (stdout: mirror.out; ``stderr 1``: mirror.err)."""
    return os.path.join(rundir, "mirror.err" if stderr else "mirror.out")


class RotatingFile:
    """A text stream (``write``, ``flush``, ``close``) onto *path*, rotated by size."""

    def __init__(self, path: str, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        self.name = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._fd = -1
        self._size = 0
        self._buf: list[str] = []
        self._buffered = 0
        self._open()

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
        self._fd = os.open(self.name, flags, 0o600)
        self._size = os.fstat(self._fd).st_size

    def write(self, text: str) -> int:
        self._buf.append(text)
        self._buffered += len(text)
        if self._buffered >= BUFFER:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if not self._buf:
            return
        data = "".join(self._buf).encode("utf-8", "replace")
        self._buf.clear()
        self._buffered = 0
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._size += len(data)
        if self._size >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        for i in range(self.backups - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.name}.{i}", f"{self.name}.{i + 1}")
        if self.backups:
            os.replace(self.name, f"{self.name}.1")
        else:
            os.unlink(self.name)
        self._open()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
