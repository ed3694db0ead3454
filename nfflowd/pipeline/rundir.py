"""The run directory is a privilege boundary: checked before use, created and written safely.

nfflowd runs as root and keeps in ``<daemon> rundir`` what root later reads or
runs (``settings.json``: ingest runs its ``<conntrack> progname``;
``supervisord.conf``), and the ipc sockets every stage trusts.  So a run
directory is used only when nobody but root (or the invoking user, when that is
not root) can have put anything there or can move it:

* it is not a symbolic link (root would chmod, fill and clear the target);
* it is a directory, owned by root (by us when we are not root); its group may be
  ``<daemon> user``'s (:mod:`nfflowd.ops.privileges`) but never owned by that user,
  who could then replace ``settings.json``;
* no directory above it lets another user rename or replace it: each is owned by
  root or by us and writable by nobody else unless sticky (``/tmp``);
* when it already exists and holds anything, it is one nfflowd made before (the
  :data:`MARKER` file, or an nfflowd ``settings.json`` of an older version):
  ``rundir /etc`` is refused, not chmod'ed 0700 and filled;
* its ipc sockets' paths fit ``AF_UNIX``'s 107 bytes.

:func:`problems` lists what is wrong (``nfflowd check``); :func:`ensure` refuses
the same (``start``, ``replay``), then creates the directory with ``mkdir``
(never adopting one created meanwhile by someone else) and sets its owner and
mode through a descriptor opened with ``O_NOFOLLOW``.  Files root writes there
are new files (``O_EXCL | O_NOFOLLOW``) renamed into place (:func:`write_file`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import stat
from collections.abc import Iterator
from typing import Final

from nfflowd import topology
from nfflowd.pipeline import endpoints

#: Marks a directory nfflowd made or adopted as its run directory.
MARKER: Final = ".nfflowd-rundir"
#: A run directory shared with ``<daemon> user``'s group: root:G, sticky (nfflowd.ops.privileges).
SHARED_MODE: Final = endpoints.SHARED_RUNDIR_MODE
#: The longest path an ``AF_UNIX`` socket can have (sun_path is 108 bytes with its NUL).
UNIX_PATH_MAX: Final = 107
#: supervisord's control socket (deploy/supervisord.conf ``[unix_http_server]``).
SUPERVISOR_SOCKET: Final = "supervisor.sock"
#: A settings.json of an nfflowd older than :data:`MARKER` has these top-level keys.
_SETTINGS_KEYS: Final = {"schema", "source", "daemon", "export"}


class RundirError(RuntimeError):
    """The run directory cannot be used safely (the message says why and what to do)."""


def socket_names(correlators: int = 1) -> list[str]:
    """The unix sockets of a run directory: every link's ipc file for *correlators*
    shards (nfflowd.topology), the notices socket and supervisord's."""
    names = [endpoints.endpoint(topology.NOTICES).filename, SUPERVISOR_SOCKET]
    for link in topology.LINKS:
        names += [endpoints.endpoint(topology.link(link, i)).filename for i in range(correlators)]
    return names


def problems(path: str, *, group: int | None = None, correlators: int = 1) -> list[str]:
    """Why *path* cannot be this host's run directory (empty: it can).

    *group*: ``<daemon> user``'s group when the stages run as that user (root only).
    Nothing is changed.
    """
    path = os.path.abspath(path)
    out = _length_problems(path, correlators)
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        return [*out, f"run directory {path}: cannot inspect it: {exc.strerror}"]
    out += parent_problems(path)
    if st is None:
        return out
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        return [
            *out,
            f"run directory {path} is a symbolic link (to {target}): refused, give the real "
            "directory (a link could send root's files anywhere)",
        ]
    if not stat.S_ISDIR(st.st_mode):
        return [*out, f"run directory {path} exists and is not a directory"]
    out += _owner_problems(path, st, group)
    try:
        names = os.listdir(path)
    except OSError as exc:
        return [*out, f"run directory {path}: cannot list it: {exc.strerror}"]
    if names and not _ours(path, names):
        shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        out.append(
            f"run directory {path} is not empty and not an nfflowd run directory (it holds "
            f"{shown}): refused, give a new or empty directory"
        )
    return out


def _length_problems(path: str, correlators: int) -> list[str]:
    longest = max(socket_names(correlators), key=len)
    n = len(os.fsencode(os.path.join(path, longest)))
    if n <= UNIX_PATH_MAX:
        return []
    return [
        f"run directory {path} is too long for its unix sockets: {os.path.join(path, longest)} "
        f"has {n} bytes, AF_UNIX allows {UNIX_PATH_MAX}; give a shorter path"
    ]


def _who(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _trusted_owners() -> set[int]:
    return {0, os.geteuid()}


def parent_problems(path: str, label: str = "run directory") -> list[str]:
    """Directories above *path* (as resolved) that let another user move it (or create
    the missing part of it as they like); *label* names *path* in the messages."""
    out: list[str] = []
    parent = os.path.dirname(path)
    for d in _ancestors(os.path.realpath(parent)):
        try:
            st = os.stat(d)
        except FileNotFoundError:
            continue  # created by us (root, or the invoker) on the way
        except OSError as exc:
            out.append(f"{d} (above the {label}): cannot inspect it: {exc.strerror}")
            break
        mode = stat.S_IMODE(st.st_mode)
        sticky = bool(mode & stat.S_ISVTX)
        if st.st_uid not in _trusted_owners():
            out.append(
                f"{d} (above the {label}) belongs to {_who(st.st_uid)}, who could "
                f"replace the {label}: refused"
            )
        elif mode & stat.S_IWOTH and not sticky:
            out.append(
                f"{d} (above the {label}) is writable by every user and not sticky "
                f"(mode {mode:04o}): anyone could replace the {label}; refused"
            )
        elif mode & stat.S_IWGRP and not sticky and st.st_gid != 0:
            out.append(
                f"{d} (above the {label}) is writable by group {st.st_gid} and not "
                f"sticky (mode {mode:04o}): its members could replace the {label}; refused"
            )
    existing = next((d for d in _ancestors(path)[::-1][1:] if os.path.isdir(d)), "/")
    if not os.path.exists(path) and not os.access(existing, os.W_OK | os.X_OK):
        out.append(
            f"{label} {path} cannot be created: {existing} is not writable by {_who(os.geteuid())}"
        )
    return out


def _ancestors(path: str) -> list[str]:
    """``/a/b`` -> ``["/", "/a", "/a/b"]``."""
    out = [path]
    while os.path.dirname(out[-1]) != out[-1]:
        out.append(os.path.dirname(out[-1]))
    return out[::-1]


def _owner_problems(path: str, st: os.stat_result, group: int | None) -> list[str]:
    owner = 0 if os.geteuid() == 0 else os.geteuid()
    if st.st_uid == owner:
        return []
    why = (
        "it could replace settings.json, which root reads and whose <conntrack> progname root runs"
        if group is not None and st.st_gid == group
        else "that user could read the flows and replace root's files"
    )
    return [
        f"run directory {path} belongs to {_who(st.st_uid)}, not {_who(owner)}: refused "
        f"({why}); remove it or `chown {owner} {path}`"
    ]


def _ours(path: str, names: list[str]) -> bool:
    """Whether a non-empty *path* is a run directory nfflowd made (its marker, or the
    settings.json of an nfflowd older than the marker)."""
    if MARKER in names:
        return True
    if "settings.json" not in names:
        return False
    try:
        fd = os.open(os.path.join(path, "settings.json"), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            data = json.loads(fh.read(1 << 20))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and set(data) >= _SETTINGS_KEYS


@contextlib.contextmanager
def _opened(path: str, dir_fd: int | None = None) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def ensure(path: str, group: int | None = None, *, correlators: int = 1) -> str:
    """Check *path* (:func:`problems`), create it if needed and return its absolute path.

    Mode 0700; with *group* (root only: ``<daemon> user``'s primary group) root:*group*
    mode 1770, so the unprivileged stages can bind their endpoints and create their
    files while other users cannot resolve a path inside and the group cannot remove
    or rename root's files.  Raises :class:`RundirError`.
    """
    path = os.path.abspath(path)
    found = problems(path, group=group, correlators=correlators)
    if found:
        raise RundirError("; ".join(found))
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        with _opened(path) as fd:
            _settle(fd, path, group)
    except OSError as exc:
        raise RundirError(f"run directory {path}: {exc.strerror or exc}") from None
    return path


def _settle(fd: int, path: str, group: int | None) -> None:
    """Owner, mode and marker of the run directory open as *fd* (checked again through
    the descriptor: the directory may have been swapped since :func:`problems`)."""
    st = os.fstat(fd)
    found = _owner_problems(path, st, group)
    names = os.listdir(fd)
    if names and not _ours(path, names):
        found.append(f"run directory {path} is not empty and not an nfflowd run directory")
    if found:
        raise RundirError("; ".join(found))
    if group is not None:
        os.fchown(fd, 0, group)
    os.fchmod(fd, 0o700 if group is None else SHARED_MODE)
    if MARKER not in names:
        text = "nfflowd run directory: nfflowd may remove or replace anything in it\n"
        write_file(path, MARKER, text, 0o644 if group is None else 0o640, group=group)


def subdir(rundir: str, name: str, group: int | None = None) -> str:
    """The directory *name* in *rundir* (``stats``), made as :func:`ensure` makes the run
    directory; whatever else stands under that name (a symlink an unprivileged stage
    planted, a directory of another owner) is removed first.  Returns its path."""
    with _opened(rundir) as parent:
        try:
            st: os.stat_result | None = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            st = None
        if st is not None and (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()):
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=parent)
            else:
                os.unlink(name, dir_fd=parent)
            st = None
        if st is None:
            os.mkdir(name, 0o700, dir_fd=parent)
        with _opened(name, dir_fd=parent) as fd:
            if group is not None:
                os.fchown(fd, 0, group)
            os.fchmod(fd, 0o700 if group is None else SHARED_MODE)
    return os.path.join(rundir, name)


def clear(directory: str) -> None:
    """Remove every file in *directory* (not following links; subdirectories are left)."""
    with _opened(directory) as fd:
        for name in os.listdir(fd):
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISDIR(os.lstat(name, dir_fd=fd).st_mode):
                    os.unlink(name, dir_fd=fd)


def write_file(directory: str, name: str, text: str, mode: int, *, group: int | None = None) -> str:
    """Replace *directory*/*name* with *text*: written to a new ``NAME.tmp`` (``O_EXCL |
    O_NOFOLLOW``: a planted link is removed, never followed), then renamed; *mode*, and
    root:*group* when given.  Returns the path."""
    path = os.path.join(directory, name)
    tmp = path + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        if group is not None:
            os.fchown(fd, 0, group)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
