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


def read_sysctl(name: str) -> str | None:
    try:
        with open(os.path.join(SYSCTL_DIR, name)) as fh:
            return fh.read().strip()
    except OSError:
        return None


def kernel_findings() -> list[Finding]:
    out: list[Finding] = []
    if not os.path.isdir(SYSCTL_DIR):
        return [("warning", f"{SYSCTL_DIR} missing: is nf_conntrack loaded in this namespace?")]
    for name, meaning in KERNEL_SWITCHES.items():
        value = read_sysctl(name)
        if value is None:
            out.append(("warning", f"net.netfilter.{name}: not present ({meaning})"))
        elif name == "nf_conntrack_events":
            level = "ok" if value in ("1", "2") else "warning"
            out.append((level, f"net.netfilter.{name} = {value}: {meaning}"))
        else:
            level = "ok" if value == "1" else "warning"
            out.append((level, f"net.netfilter.{name} = {value}: {meaning}"))
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
