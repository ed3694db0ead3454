"""``nfflowd install``: a hardened systemd unit, a logrotate rule, ``<daemon> user``'s account.

The unit runs ``nfflowd -f start``: supervisord and ingest as root, the other
programs as ``<daemon> user`` (nfflowd.ops.privileges).  Its sandbox is derived from
the settings, since what nfflowd needs depends on them:

* capabilities (the bounding set; nothing else survives, even for root):
  ``CAP_NET_ADMIN`` ingest: ctnetlink groups, ``SO_RCVBUFFORCE``, the conntrack
  program, netfilter sysctls.  ``CAP_SETUID CAP_SETGID`` supervisord switching
  to the user (setuid, setgid, setgroups).  ``CAP_KILL`` supervisord signalling
  processes of another uid (stop, restart).  ``CAP_CHOWN`` ``start`` giving the
  run directory to the user's group and leftovers of an earlier run to the
  user; ingest giving its stats file that group.  ``CAP_DAC_OVERRIDE`` ingest
  connecting to correlate's endpoint, a socket the user owns with mode 0700 (a
  connect needs write permission; root without this capability is "other").
  ``CAP_SYS_ADMIN`` only with ``<source> netns`` (``setns``).  Not needed:
  ``CAP_FOWNER`` (root owns every directory it removes entries from),
  ``CAP_FSETID`` (no setgid bits are set), ``CAP_NET_BIND_SERVICE`` (the
  metrics port is above 1023; ``check`` says so otherwise).
* ``ProtectKernelTunables`` makes /proc/sys read-only, which would stop
  ``<source> set_sysctls 1`` (acct and timestamps at start): it is set only when
  that is off.  ``RestrictNamespaces`` allows ``net`` only with ``<source> netns``.
* ``ProtectSystem=strict`` leaves only the run directory writable; under /run
  it is the unit's ``RuntimeDirectory`` (kept across restarts, for the
  checkpoints), under /var/lib its ``StateDirectory``, else it must exist
  (``install`` creates it).  The logs are in the run directory too.
* ``ProtectHome=yes`` hides /home and /root, so an nfflowd installed there
  (a pyenv, a bundle unpacked in root's ~/.shiv) gets ``read-only`` instead.

Not set, as untested under a running systemd here: ``SystemCallFilter``,
``MemoryDenyWriteExecute``, ``PrivateDevices`` (it would hide ``/dev/log``).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys

from nfflowd.config import Settings

UNIT_NAME = "nfflowd.service"
LOGROTATE_NAME = "nfflowd"
#: The account ``install`` creates for ``<daemon> user`` (Debian's system-user conventions).
USERADD = ("--system", "--no-create-home", "--home-dir", "/nonexistent",
           "--shell", "/usr/sbin/nologin", "--comment", "nfflowd stages")  # fmt: skip


class InstallError(RuntimeError):
    pass


#: Where the unit lets a single-file bundle unpack itself (ProtectSystem=strict
#: leaves no other writable place; systemd creates it: CacheDirectory=).
BUNDLE_CACHE = "/var/cache/nfflowd"


def bundle_path(argv0: str) -> str | None:
    """The ``nfflowd.pyz`` this process runs from (``make bundle``), or None."""
    path = os.path.abspath(argv0)
    return path if path.endswith(".pyz") and os.path.isfile(path) else None


def _command() -> tuple[str, list[str]]:
    """The ExecStart command prefix and the files it runs (for ProtectHome)."""
    bundle = bundle_path(sys.argv[0])
    if bundle is not None:  # run the bundle itself, not an installed `nfflowd`
        return f"{sys.executable} {bundle}", [sys.executable, bundle]
    exe = shutil.which("nfflowd")
    if exe is not None:
        return exe, [exe, sys.executable]
    return f"{sys.executable} -m nfflowd.ops.cli", [sys.executable]


def _in_home(paths: list[str]) -> bool:
    real = [os.path.realpath(p) for p in paths]
    return any(p == d or p.startswith(d + "/") for p in real for d in ("/root", "/home"))


def _directory_lines(rundir: str) -> list[str]:
    for base, key in (("/run/", "RuntimeDirectory"), ("/var/lib/", "StateDirectory")):
        if rundir.startswith(base) and len(rundir) > len(base):
            rel = rundir[len(base) :]
            extra = ["RuntimeDirectoryPreserve=yes"] if key == "RuntimeDirectory" else []
            return [f"{key}={rel}", f"{key}Mode=0700", *extra, f"ReadWritePaths={rundir}"]
    return [f"ReadWritePaths={rundir}"]


def _state_lines(settings: Settings) -> list[str]:
    """The coverage journal's ``<daemon> statedir`` (nfflowd.pipeline.coverage): under
    /var/lib a ``StateDirectory`` (kept across reboots), else it must exist."""
    statedir = settings.daemon.statedir
    if statedir.startswith("/var/lib/") and len(statedir) > len("/var/lib/"):
        mode = [] if settings.daemon.rundir.startswith("/var/lib/") else ["StateDirectoryMode=0700"]
        return [
            f"StateDirectory={statedir[len('/var/lib/') :]}",
            *mode,
            f"ReadWritePaths={statedir}",
        ]
    return [f"ReadWritePaths={statedir}"]


def unit_text(settings: Settings, config: str | None) -> str:
    """The unit running ``nfflowd -f start`` with *config*, sandboxed for *settings*."""
    exe, files = _command()
    conf = f" -c {os.path.abspath(config)}" if config else ""
    src = settings.source
    caps = "CAP_NET_ADMIN CAP_SETUID CAP_SETGID CAP_KILL CAP_CHOWN CAP_DAC_OVERRIDE"
    lines = [
        "# Sandbox: see nfflowd/ops/install.py and the README (systemd and logrotate).",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        *_directory_lines(settings.daemon.rundir),
        *_state_lines(settings),
        f"ProtectHome={'read-only' if _in_home(files) else 'yes'}",
        "PrivateTmp=yes",
        "UMask=0077",
        "# ingest: CAP_NET_ADMIN; supervisord -> <daemon> user: SETUID SETGID KILL; run directory:",
        "# CHOWN; ingest -> correlate's socket (the user's, 0700): DAC_OVERRIDE",
        f"CapabilityBoundingSet={caps}" + (" CAP_SYS_ADMIN" if src.netns else ""),
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "RestrictNamespaces=" + ("net" if src.netns else "yes"),
    ]
    if bundle_path(sys.argv[0]) is not None:
        lines += [
            "# the single-file bundle unpacks itself here",
            f"Environment=SHIV_ROOT={BUNDLE_CACHE}",
            "CacheDirectory=nfflowd",
        ]
    if src.set_sysctls:
        lines.append("# no ProtectKernelTunables: <source> set_sysctls 1 writes /proc/sys")
    else:
        lines.append("ProtectKernelTunables=yes")
    lines += [
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "DevicePolicy=closed",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "SystemCallArchitectures=native",
    ]
    sandbox = "\n".join(lines)
    return f"""\
[Unit]
Description=nfflowd: NetFlow/IPFIX from netfilter connection tracking
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={exe}{conf} -f start
ExecReload={exe}{conf} reload
KillSignal=SIGTERM
TimeoutStopSec=150
Restart=on-failure
RestartSec=5
{sandbox}

[Install]
WantedBy=multi-user.target
"""


def logrotate_text(settings: Settings) -> str:
    """The stage logs in the run directory, rotated in place (``copytruncate``).

    supervisord keeps each log open, and with ``<daemon> user`` it does not
    rotate them itself (nfflowd.ops.control.run_as).  ``su root root``: logrotate
    refuses a directory writable by a group other than root's without it.
    ``dateext``: never the ``.1`` names supervisord's own rotation uses.
    """
    rundir = settings.daemon.rundir
    return f"""\
# nfflowd: stage and supervisord logs (nfflowd install)
{rundir}/*.log {rundir}/*.out {{
    su root root
    weekly
    maxsize 10M
    rotate 4
    dateext
    dateformat -%Y%m%d-%s
    missingok
    notifempty
    compress
    delaycompress
    copytruncate
}}
"""


def _account_exists(name: str, root: str, database: str) -> bool:
    if root == "/":
        getter = pwd.getpwnam if database == "passwd" else grp.getgrnam
        try:
            getter(name)
        except KeyError:
            return False
        return True
    with open(os.path.join(root, "etc", database), encoding="utf-8") as fh:
        return any(line.split(":", 1)[0] == name for line in fh)


def ensure_user(name: str, root: str = "/") -> str:
    """Create system user *name* (and its own group) unless it exists; say what was done.

    Below *root* other than "/", the account files there are changed (``useradd
    --prefix``; staging an image, and the tests).  A group of that name that
    exists already becomes the user's primary group.
    """
    try:
        if _account_exists(name, root, "passwd"):
            return f"user {name} exists"
        group_exists = _account_exists(name, root, "group")
    except OSError as exc:
        raise InstallError(f"cannot read the account files below {root}: {exc}") from None
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    cmd = [useradd, *(["--prefix", root] if root != "/" else []), *USERADD]
    cmd += ["--gid", name] if group_exists else ["--user-group"]
    res = subprocess.run([*cmd, name], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise InstallError(f"useradd {name} failed: {res.stderr.strip() or res.returncode}")
    return f"created system user {name}"


def write(root: str, relpath: str, text: str) -> str:
    path = os.path.join(root, relpath)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def install(settings: Settings, config: str | None, root: str = "/") -> list[str]:
    """Write the unit and the logrotate rule below *root*, create ``<daemon> user``;
    return what was done, one line each."""
    done = [f"wrote {write(root, 'etc/systemd/system/' + UNIT_NAME, unit_text(settings, config))}"]
    done.append(
        f"wrote {write(root, 'etc/logrotate.d/' + LOGROTATE_NAME, logrotate_text(settings))}"
    )
    rundir = settings.daemon.rundir
    if not rundir.startswith(("/run/", "/var/lib/")):  # ProtectSystem=strict: must exist
        os.makedirs(os.path.join(root, rundir.lstrip("/")), mode=0o700, exist_ok=True)
    statedir = settings.daemon.statedir
    if not statedir.startswith("/var/lib/"):  # the same for the coverage journal
        os.makedirs(os.path.join(root, statedir.lstrip("/")), mode=0o700, exist_ok=True)
    if settings.daemon.user is not None:
        done.append(ensure_user(settings.daemon.user, root))
    else:
        done.append("note: every stage runs as root; set <daemon> user nfflowd so only ingest does")
    return done
