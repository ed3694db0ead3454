"""What the host offers nfflowd: the conntrack program, kernel switches, syslog.

Each probe returns findings (level, text) for ``nfflowd check`` and ``start``;
none of them changes anything.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat

from nfflowd.config import Settings

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
            out.append((
                "warning",
                "<conntrack> format contains -n: in conntrack-tools -n means --src-nat, a FILTER "
                "that keeps only source-NATed connections (the 2009 tool's default, and why it "
                "'assumed source NAT'); remove it to see every connection",
            ))  # fmt: skip
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


def export_findings(settings: Settings) -> list[Finding]:
    out: list[Finding] = []
    for c in settings.export.collectors:
        out.append(("ok", f"collector {c.address} port {c.port} NetFlow v{c.version}"
                          + (f" from {c.source}" if c.source else "")))  # fmt: skip
        if c.version == 5:
            out.append(("note", "NetFlow v5 cannot carry IPv6: IPv6 flows are counted "
                                "(skipped_ipv6) and only mirrored"))  # fmt: skip
    return out
