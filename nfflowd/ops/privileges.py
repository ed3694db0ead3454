"""``<daemon> user``: ingest keeps root, every other program runs as an unprivileged user.

Only ingest touches the kernel: ctnetlink (its multicast groups and
``SO_RCVBUFFORCE`` need CAP_NET_ADMIN), the ``conntrack`` program, the netfilter
sysctls, ``setns`` for ``<source> netns``.  correlate, export, mirror and the
metrics endpoint read sockets and files and send datagrams, so supervisord
starts them as the configured user (``user=`` lines, :func:`nfflowd.ops.control.run_as`).

The run directory must let that user bind its endpoints and keep its state
files, keep every other local user out, and give a compromised unprivileged
stage no way to become root.  The last rules out a run directory the user
owns: it could then replace ``settings.json``, which ingest (root) reads at its
next start (``<conntrack> progname`` is a program ingest runs).  So:

=================================  ===========  =====  ===========================================
path                               owner:group  mode   why
=================================  ===========  =====  ===========================================
``<rundir>``, ``<rundir>/stats``   root:G       1770   G (the user's primary group) creates its
                                                       files; other users cannot resolve any
                                                       path inside; the sticky bit stops G from
                                                       removing or renaming root's files
``settings.json``                  root:G       0640   the stages read it, nobody but root writes
``.nfflowd-rundir``                root:G       0640   marks it nfflowd's (nfflowd.pipeline.rundir)
``supervisord.conf``, ``.sock``    root         0600   only root commands supervisord
logs, ``ingest.*``                 root         0600   made by root before any user process runs
``stats/ingest.json``              root:G       0640   the metrics program (as the user) reads it
the user's sockets and files       user:G       own    as its stages create them
=================================  ===========  =====  ===========================================

Root processes then never follow a name the user planted: before supervisord
starts (no user process exists) :func:`sanitize` removes any entry under one of
root's names that is not a root-owned regular file with one link (a symlink, a
hard link to a file elsewhere) and :func:`settle` creates root's files afresh.
Files that root creates later use ``O_EXCL | O_NOFOLLOW`` (nfflowd.pipeline.stage;
ingest's shared mappings, opened by name at every start, are among those
created beforehand: :data:`PRECREATE`), and supervisord does not rotate logs
with a user set (it would re-create them by name; ``logrotate`` with
``copytruncate`` keeps the inode instead).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import stat
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from nfflowd import topology
from nfflowd.pipeline import endpoints
from nfflowd.pipeline import rundir as rundirs

#: Programs supervisord starts as ``<daemon> user`` (all but ingest).
UNPRIVILEGED: Final = ("correlate", "export", "mirror", "metrics")
#: Root's entries of the run directory besides the log files named in supervisord.conf
#: and every ``ingest.*`` (ingest runs as root).
ROOT_FILES: Final = ("supervisord.conf.tmp", "supervisord.pid")
#: Root's files that must exist before a user process runs, created empty (a wrong size
#: makes nfflowd.pipeline.persist start afresh): ingest's shared mappings (workers/ingest.py).
PRECREATE: Final = ("ingest.checkpoint", "ingest.alive")
_LOG = re.compile(r"\.(log|out)(\.\d+)?$")
#: The screen dispatcher's files, which the mirror writes itself (nfflowd.outputs.screen_file).
SCREEN_FILES: Final = ("mirror.out", "mirror.err")
_LOGFILE_LINE = re.compile(r"^(?:stdout_|stderr_)?logfile=(.+)$", re.MULTILINE)


class PrivilegeError(RuntimeError):
    pass


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int  # primary group: the run directory's group


def lookup(name: str) -> Account:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError(
            f"<daemon> user {name}: no such user (nfflowd install creates it)"
        ) from None
    return Account(name, pw.pw_uid, pw.pw_gid)


def account_for(user: str | None) -> Account | None:
    """The account the unprivileged programs switch to; None when they run as we do.

    None too when we already are that user (supervisord then needs no switch).
    Only root can switch users: a non-root invoker with another user configured
    gets an error rather than stages silently running as itself.
    """
    if user is None:
        return None
    acct = lookup(user)
    if acct.uid == os.geteuid():
        return None
    if os.geteuid() != 0:
        raise PrivilegeError(
            f"<daemon> user {user}: only root can start stages as another user "
            f"(running as uid {os.geteuid()})"
        )
    return acct


def shared_group(rundir: str) -> int | None:
    """The run directory's group when it is shared with ``<daemon> user`` (see settle)."""
    try:
        st = os.stat(rundir)
    except OSError:
        return None
    return st.st_gid if stat.S_IMODE(st.st_mode) == endpoints.SHARED_RUNDIR_MODE else None


def user_file(name: str) -> bool:
    """Whether *name* (in the run directory or stats/) is made by an unprivileged program.

    Such files are handed to the user when a run directory used before without
    (or with another) ``<daemon> user`` is settled, so the stages can rewrite them.
    Shards (nfflowd.pipeline.shards) add ``-N`` to process names and ipc files and ``.N``
    to link names.
    """
    if _LOG.search(name) and not name.startswith(SCREEN_FILES):
        return False  # supervisord writes the logs, as root
    stems = {
        e.filename.removesuffix(".ipc")
        for e in endpoints.TABLE
        if e.bound_by == "receiver" and e.receiver in UNPRIVILEGED
    }
    stem, _, ext = name.partition(".")
    if ext == "ipc" and re.sub(r"-\d+$", "", stem) in stems:
        return True
    prefixes = tuple(p + sep for p in (*UNPRIVILEGED, *topology.LINKS) for sep in ".-")
    return name.startswith(prefixes)


def logfiles(conf: str) -> list[str]:
    """Every log file a rendered supervisord.conf names; a ``numprocs`` program's
    (shards, nfflowd.pipeline.shards) once per process."""
    out: list[str] = []
    for section in re.split(r"^(?=\[)", conf, flags=re.MULTILINE):
        procs = re.search(r"^numprocs=(\d+)$", section, re.MULTILINE)
        for path in (m.strip() for m in _LOGFILE_LINE.findall(section)):
            if not path.startswith("/"):
                continue  # AUTO, NONE, syslog
            nums = range(int(procs.group(1))) if procs and "%(process_num)d" in path else [0]
            out += [path.replace("%(process_num)d", str(n)) for n in nums]
    return out


def _trusted(path: str) -> bool:
    """A root-owned regular file with one link (not a symlink, not a hard link to elsewhere)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    return stat.S_ISREG(st.st_mode) and st.st_uid == 0 and st.st_nlink == 1


def sanitize(rundir: str, conf: str) -> None:
    """Remove whatever stands under one of root's names in *rundir* and is not a root-owned
    regular file with one link (a planted symlink or hard link).  Before root writes there.

    *conf* is the rendered supervisord.conf, for the names of its log files.
    """
    ingest = [n for n in os.listdir(rundir) if n.startswith("ingest.")]
    for path in [os.path.join(rundir, n) for n in (*ROOT_FILES, *ingest)] + logfiles(conf):
        if not _trusted(path):
            os.unlink(path)


def settle(rundir: str, acct: Account, conf: str, stats_dir: str) -> None:
    """Lay out *rundir* for *acct* (the table above); as root, after :func:`sanitize` and
    before supervisord starts.  *stats_dir* is the stages' stats directory in *rundir*."""
    rundirs.subdir(rundir, os.path.basename(stats_dir), acct.gid)  # as the run directory
    for path in [os.path.join(rundir, n) for n in PRECREATE] + logfiles(conf):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        os.close(fd)
    notices = os.path.join(rundir, endpoints.BY_NAME["notices"].filename)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(notices).st_mode):  # a listener's (replay), bound as root
            endpoints.share_socket(notices, acct.gid)
    for directory in (rundir, stats_dir):  # left by a run without (or with another) user
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if user_file(name) and os.lstat(path).st_uid != acct.uid:
                os.chown(path, acct.uid, acct.gid, follow_symlinks=False)


def group_sharers(acct: Account) -> list[str]:
    """Other accounts that are in *acct*'s primary group (they could enter the run directory)."""
    out = {p.pw_name for p in pwd.getpwall() if p.pw_gid == acct.gid and p.pw_uid != acct.uid}
    with contextlib.suppress(KeyError):
        out.update(m for m in grp.getgrgid(acct.gid).gr_mem if m != acct.name)
    return sorted(out)


def _nearest_existing(path: str) -> str:
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


_PROBE = """\
import os, sys
import nfflowd.workers.correlate, nfflowd.workers.export, nfflowd.workers.mirror
for p in sys.argv[1:]:
    if not os.access(p, os.R_OK | os.X_OK):
        sys.exit(f"cannot enter {p}")
"""


def probe(acct: Account, rundir: str, readable: Iterable[str] = ()) -> str | None:
    """Why *acct* could not run the unprivileged stages here (None: it can).

    Runs this interpreter as *acct* importing the stage modules, then entering
    the directory above *rundir* and each of *readable* (e.g. the CURVE key
    directory): the usual failure is an interpreter or installation below a
    directory the user cannot search (a pyenv or a bundle under /root).
    """
    parent = _nearest_existing(os.path.dirname(os.path.abspath(rundir)))
    groups = os.getgrouplist(acct.name, acct.gid)
    cmd = [sys.executable, "-c", _PROBE, parent, *readable]
    try:
        res = subprocess.run(
            cmd,
            user=acct.uid,
            group=acct.gid,
            extra_groups=groups,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except OSError as exc:
        return f"cannot run {sys.executable} as {acct.name}: {exc.strerror or exc}"
    if res.returncode == 0:
        return None
    lines = res.stderr.strip().splitlines()
    return f"as {acct.name}, {sys.executable}: {lines[-1] if lines else res.returncode}"
