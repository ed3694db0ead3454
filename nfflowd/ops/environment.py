"""What the host offers nfflowd: the conntrack program, kernel switches, syslog.

Each probe returns findings (level, text) for ``nfflowd check`` and ``start``;
none of them changes anything.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import stat

from nfflowd import topology
from nfflowd.config import ConntrackSettings, Settings
from nfflowd.ops import privileges
from nfflowd.pipeline import coverage, curve
from nfflowd.pipeline import rundir as rundirs

SYSCTL_DIR = "/proc/sys/net/netfilter"
KERNEL_SWITCHES = {
    "nf_conntrack_acct": "packet/byte counters (without it every record carries 0/0)",
    "nf_conntrack_timestamp": "exact kernel start/stop times of connections",
    "nf_conntrack_events": "conntrack events (2 = only while a listener exists, kernel >= 5.19)",
}

Finding = tuple[str, str]  # (level: "ok" | "note" | "warning" | "error", text)


def read_sysctls(netns: str | None = None) -> dict[str, str | None]:
    """The kernel switches as seen in *netns* (None: ours); a missing one is None."""
    if netns is not None:
        from nfflowd.conntrack.kernel import kernel_settings

        try:
            found = kernel_settings(netns)
        except OSError:
            return dict.fromkeys(KERNEL_SWITCHES)
        return {k.rsplit(".", 1)[-1]: v for k, v in found.items()}
    out: dict[str, str | None] = {}
    for name in KERNEL_SWITCHES:
        try:
            with open(os.path.join(SYSCTL_DIR, name)) as fh:
                out[name] = fh.read().strip()
        except OSError:
            out[name] = None
    return out


def kernel_findings(settings: Settings | None = None) -> list[Finding]:
    """The kernel switches where the source reads (its ``<source> netns``, else here)."""
    netns = settings.source.netns if settings is not None else None
    where = f" (netns {netns})" if netns else ""
    values = read_sysctls(netns)
    if all(v is None for v in values.values()):
        return [("warning", f"net.netfilter switches not found{where}: is nf_conntrack loaded?")]
    out: list[Finding] = []
    for name, meaning in KERNEL_SWITCHES.items():
        value = values.get(name)
        if value is None:
            out.append(("warning", f"net.netfilter.{name}{where}: not present ({meaning})"))
            continue
        good = value in ("1", "2") if name == "nf_conntrack_events" else value == "1"
        if not good and settings is not None and settings.source.set_sysctls:
            level = "note"
            meaning += "; <source> set_sysctls 1 turns it on at start"
        else:
            level = "ok" if good else "warning"
        out.append((level, f"net.netfilter.{name}{where} = {value}: {meaning}"))
    return out


def subscription_finding(
    settings: Settings, sysctls: dict[str, str | None] | None = None
) -> Finding:
    """Which conntrack events the netlink source will read, and what that costs
    (:class:`nfflowd.conntrack.sources.NetlinkSource`); *sysctls*: the kernel switches
    where it reads (read there if not given)."""
    src = settings.source
    if sysctls is None:
        sysctls = read_sysctls(src.netns)
    stamped = all(sysctls.get(k) == "1" for k in ("nf_conntrack_acct", "nf_conntrack_timestamp"))
    both = (
        "NEW and DESTROY events: twice the events of DESTROY-only, a table of open "
        "connections (about 122 bytes each), the table dumped at start"
    )
    if src.subscribe == "all":
        return ("note", f"source reads {both} (<source> subscribe all)")
    if settings.export.nat_realtime:
        return (
            "note",
            f"source reads {both}, for real-time NAT events "
            "(<collector> nat_events realtime: the create event when a connection opens)",
        )
    if stamped or src.set_sysctls:
        how = "they are on" if stamped else "<source> set_sysctls 1 turns them on at start"
        return (
            "ok",
            "source reads DESTROY events only: with nf_conntrack_acct and "
            f"nf_conntrack_timestamp ({how}) each carries the whole record",
        )
    return (
        "warning",
        f"source reads {both}, because nf_conntrack_acct or nf_conntrack_timestamp is off; "
        "with both on (<source> set_sysctls 1) it reads DESTROY events only, half the "
        "events and no table (README, Reading the kernel)",
    )


def source_findings(settings: Settings) -> list[Finding]:
    out: list[Finding] = []
    src = settings.source
    if src.type == "conntrack":
        ct = settings.conntrack
        prog = shutil.which(ct.progname)
        if prog is None:
            text = (
                f"conntrack program {ct.progname!r} not found in PATH "
                "(install conntrack-tools, or use <source> type netlink)"
            )
            out.append(("error", text))
        else:
            out.append(("ok", f"conntrack program: {prog}"))
        args = shlex.split(ct.format)
        if "-n" in args or "--src-nat" in args:
            out.append(
                (
                    "warning",
                    "<conntrack> format contains -n: in conntrack-tools -n means --src-nat, a "
                    "FILTER that keeps only source-NATed connections (the 2009 tool's default, "
                    "and why it 'assumed source NAT'); remove it to see every connection",
                )
            )
    elif src.type == "netlink":
        where = f" of netns {src.netns}" if src.netns else ""
        out.append(
            (
                "ok",
                f"source: the kernel's conntrack table and events{where} over "
                "ctnetlink (<source> type netlink, the default; type conntrack "
                "runs the conntrack program as in 2009)",
            )
        )
        out.append(subscription_finding(settings))
        if shlex.split(settings.conntrack.format) != shlex.split(ConntrackSettings().format):
            args = shlex.split(settings.conntrack.format)
            why = (
                ": its -n (--src-nat) filter, which kept only source-NATed connections, "
                "no longer applies"
                if "-n" in args or "--src-nat" in args
                else ""
            )
            out.append(("note", f"<conntrack> format is not used with <source> type netlink{why}"))
    elif src.type == "file":
        for p in src.path:
            out.append(("ok" if os.path.isfile(p) else "error", f"event log {p}"))
    return out


def mirror_findings(settings: Settings) -> list[Finding]:
    out: list[Finding] = []
    for d in settings.mirror.dispatchers:
        if d.kind != "syslog" or "://" in d.address:
            continue
        try:
            mode = os.stat(d.address).st_mode
        except OSError:
            text = (
                f"dispatcher {d.name}: syslog socket {d.address} missing "
                "(is a syslog daemon running?); lines are buffered meanwhile"
            )
            out.append(("warning", text))
            continue
        if not stat.S_ISSOCK(mode):
            out.append(("warning", f"dispatcher {d.name}: {d.address} is not a socket"))
    return out


def who_findings(settings: Settings) -> list[Finding]:
    """Where ``nfflowd who`` would look without --from (nfflowd.ops.who.sources)."""
    from nfflowd.ops.who.sources import SourceError, choose

    try:
        sources = choose(settings, [])
    except SourceError as exc:
        return [("note", f"nfflowd who: {exc}")]
    out: list[Finding] = []
    for src in sources:
        there = os.path.exists(src.path)
        level = "ok" if there or src.origin.startswith("dispatcher ") else "warning"
        state = "" if there else " (not there yet)" if level == "ok" else " (missing)"
        out.append((level, f"nfflowd who reads {src.path}{state}, from {src.origin}"))
    if any(os.path.isdir(s.path) for s in sources) and shutil.which(settings.who.nfdump) is None:
        out.append(("warning", f"nfflowd who: {settings.who.nfdump} not found (nfcapd files)"))
    return out


def export_findings(settings: Settings) -> list[Finding]:
    out: list[Finding] = []
    for c in settings.export.collectors:
        out.append(
            (
                "ok",
                f"collector {c.address} port {c.port} NetFlow v{c.version}"
                + (f" from {c.source}" if c.source else ""),
            )
        )
        if c.version == 5:
            out.append(
                (
                    "note",
                    "NetFlow v5 cannot carry IPv6: IPv6 flows are counted "
                    "(skipped_ipv6) and only mirrored",
                )
            )
    return out


def link_findings(settings: Settings) -> list[Finding]:
    """Each tcp:// link a stage of this host uses: its CURVE keys (an error here makes
    ``start`` refuse) and how many peers its receiver refused so far."""
    out: list[Finding] = []
    links = settings.links
    for link in links.addresses:
        for stage in settings.daemon.stages:
            side = topology.side_of(link.name, stage)
            if side is None:
                continue
            role = "sends to" if side == "sender" else "receives (binds)"
            where = f"link {link.name}: {stage} {role} {link.address}"
            issues = curve.problems(links.curve_dir, side) if links.curve_dir else ["no curve_dir"]
            out += [("error", f"{where}: {p}") for p in issues]
            if not issues:
                out.append(("ok", f"{where}, CURVE keys in {links.curve_dir}"))
            refused = curve.refused_count(settings.daemon.rundir, link.name)
            if side == "receiver" and refused:
                out.append(
                    (
                        "warning",
                        f"link {link.name}: {refused} connection attempts refused (peers without "
                        f"an admitted CURVE key; see {stage}.log)",
                    )
                )
    return out


def privilege_findings(settings: Settings, *, probe: bool = True) -> list[Finding]:
    """``<daemon> user``: set, existing, usable from here (an error makes ``start`` refuse).

    Unset while running as root: a recommendation.  Set: the user must exist, we
    must be able to switch to it (root), and it must be able to run this
    interpreter and reach the run directory (*probe*: really tried as that user).
    """
    user = settings.daemon.user
    if user is None:
        if os.geteuid() != 0:
            return []
        return [
            (
                "note",
                "correlate, export and mirror run as root: set `<daemon> user "
                "nfflowd` so only ingest keeps root (nfflowd install creates the "
                "user); see README, Least privilege",
            )
        ]
    try:
        acct = privileges.account_for(user)
    except privileges.PrivilegeError as exc:
        return [("error", str(exc))]
    if acct is None:
        return [("note", f"<daemon> user {user}: we already run as {user}, nothing to switch")]
    out: list[Finding] = [
        (
            "ok",
            f"<daemon> user {user} (uid {acct.uid}): correlate, export, "
            "mirror and metrics run as it, ingest as root",
        )
    ]
    sharers = privileges.group_sharers(acct)
    if sharers:
        out.append(
            (
                "warning",
                f"<daemon> user {user}: its group (gid {acct.gid}) also holds "
                f"{', '.join(sharers)}, who could enter the run directory; "
                "give it a group of its own",
            )
        )
    m = settings.metrics
    lowest = _unprivileged_port_start()
    if m.address is not None and m.port < lowest:
        out.append(
            (
                "error",
                f"<metrics> listen {m.listen}: the metrics program runs as {user} "
                f"and cannot bind a port below {lowest}",
            )
        )
    links = settings.links
    readable = [links.curve_dir] if links.addresses and links.curve_dir else []
    problem = privileges.probe(acct, settings.daemon.rundir, readable) if probe else None
    if problem:
        out.append(
            (
                "error",
                f"<daemon> user {user} cannot run the stages: {problem} (install nfflowd "
                "where that user can read it, e.g. a venv under /opt)",
            )
        )
    return out


def rundir_findings(settings: Settings) -> list[Finding]:
    """Whether ``<daemon> rundir`` is safe to use (nfflowd.pipeline.rundir); an error makes
    ``start`` refuse."""
    path = settings.daemon.rundir
    group = None
    try:
        acct = privileges.account_for(settings.daemon.user)
        group = acct.gid if acct is not None else None
    except privileges.PrivilegeError:
        pass  # privilege_findings says so
    found = rundirs.problems(path, group=group, correlators=settings.daemon.correlators)
    if found:
        return [("error", text) for text in found]
    state = "exists" if os.path.isdir(path) else "created at start"
    return [("ok", f"run directory {path} ({state})"), *statedir_findings(settings, group)]


def statedir_findings(settings: Settings, group: int | None) -> list[Finding]:
    """Whether ``<daemon> statedir`` (the coverage journal) is safe to use; only a live
    source journals (nfflowd.pipeline.coverage)."""
    path = settings.daemon.statedir
    if not coverage.journaling(settings):
        return [("ok", f"state directory {path}: not used (a saved log is replayed)")]
    found = coverage.problems(path, group=group)
    if found:
        return [("error", text) for text in found]
    state = "exists" if os.path.isdir(path) else "created at start"
    return [("ok", f"state directory {path} ({state}): the coverage journal")]


def config_file_findings(settings: Settings) -> list[Finding]:
    """Warnings when others than its owner and root can change the configuration file:
    its ``<conntrack> progname`` is a program ingest runs as root, its ``rundir`` where
    root writes."""
    path = settings.path
    if path is None:
        return []
    try:
        st = os.stat(path)
    except OSError:
        return []
    out: list[Finding] = []
    why = (
        "whoever can change it chooses what nfflowd runs as root (<conntrack> progname) "
        "and where root writes (<daemon> rundir)"
    )
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in (0, os.geteuid()):
        out.append(("warning", f"configuration {path} belongs to {_who(st.st_uid)}: {why}"))
    if mode & stat.S_IWOTH:
        text = f"is writable by every user (mode {mode:04o}): {why}; chmod o-w {path}"
        out.append(("warning", f"configuration {path} {text}"))
    elif mode & stat.S_IWGRP and st.st_gid != 0:
        text = f"is writable by group {st.st_gid} (mode {mode:04o}): {why}; chmod g-w {path}"
        out.append(("warning", f"configuration {path} {text}"))
    directory = os.path.dirname(os.path.realpath(path))
    try:
        dst = os.stat(directory)
    except OSError:
        return out
    dmode = stat.S_IMODE(dst.st_mode)
    open_dir = dmode & stat.S_IWOTH or (dmode & stat.S_IWGRP and dst.st_gid != 0)
    if (open_dir and not dmode & stat.S_ISVTX) or dst.st_uid not in (0, os.geteuid()):
        out.append(
            (
                "warning",
                f"configuration {path}: its directory {directory} (owner {_who(dst.st_uid)}, "
                f"mode {dmode:04o}) lets others replace the file: {why}",
            )
        )
    return out


def _who(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return 1024
