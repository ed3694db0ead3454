"""The built-in NAT lab: three network namespaces, a NAT firewall, known traffic.

Topology (``P`` is the caller's prefix, default ``nfflowd-lab-``)::

    P client                    P fw                            P server
    eth0 10.0.1.2/24  (SNAT)  - lan0 10.0.1.1/24  wan0 203.0.113.1/24 - eth0 203.0.113.2/24
         10.0.1.3/24  (none)       fd00:1::1/64      2001:db8:1::1/64       2001:db8:1::2/64
         fd00:1::2/64 (NAT66)
         fd00:1::3/64 (none)

The firewall forwards IPv4 and IPv6 and has one nftables table (``inet nfflowd_lab``)
that masquerades 10.0.1.2 and fd00:1::2 behind its public addresses and forwards
203.0.113.1:8080/tcp to 10.0.1.2:80.  10.0.1.3 and fd00:1::3 leave un-NATed: the
server has routes back to 10.0.1.0/24 and fd00:1::/64 via the firewall.  The server
silently drops UDP port 5999, so a flow to it stays un-replied without an ICMP error.

Why nftables and not iptables: one ``nft -f`` per namespace loads the whole
ruleset atomically, one ``inet`` table covers IPv4 and IPv6 NAT alike, and it
needs neither the iptables-legacy/-nft alternative nor the xtables compat layer
(iptables v1.8.9 here is iptables-nft anyway, i.e. the same kernel code).

Conntrack sysctls: ``nf_conntrack_acct``, ``nf_conntrack_timestamp`` and every
protocol timeout are per network namespace (kernel >= 4.x; verified on 6.18: set in
the fw namespace, unchanged in the initial one); ``nf_conntrack_max`` is not writable
outside the initial namespace and is left alone.  The lab shortens the timeouts so
that a finished connection is destroyed (DESTROY event) within a few seconds: a TCP
connection closed with FIN stays in TIME_WAIT for ``nf_conntrack_tcp_timeout_time_wait``
(2 s here instead of 120 s), UDP/ICMP/GRE entries live 3 s after their last packet.
An expired entry is destroyed when the kernel's garbage collector gets to it (up to
a minute later) or at once when the table is listed: :func:`expire`.  :func:`flush`
(``conntrack -F``) destroys everything, expired or not.

Traffic: :mod:`nfflowd.lab_traffic`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import IO

from nfflowd.lab_traffic import Expected, LabError, describe, run_mix

__all__ = ["Expected", "Lab", "LabError", "available", "down", "flush", "main", "running"]
__all__ += ["capture", "expire", "listing", "traffic", "up"]

DEFAULT_PREFIX = "nfflowd-lab-"
ROLES = ("client", "fw", "server")
COMMAND_TIMEOUT = 15.0
NETLINK_NETFILTER = 12  # include/uapi/linux/netlink.h (the Eth column of /proc/net/netlink)

#: Applied in the fw namespace (all per-netns; see the module docstring).
FW_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.netfilter.nf_conntrack_acct": "1",
    "net.netfilter.nf_conntrack_timestamp": "1",
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait": "2",
    "net.netfilter.nf_conntrack_tcp_timeout_close": "2",
    "net.netfilter.nf_conntrack_tcp_timeout_fin_wait": "2",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait": "2",
    "net.netfilter.nf_conntrack_tcp_timeout_last_ack": "2",
    "net.netfilter.nf_conntrack_udp_timeout": "3",
    "net.netfilter.nf_conntrack_udp_timeout_stream": "3",
    "net.netfilter.nf_conntrack_icmp_timeout": "3",
    "net.netfilter.nf_conntrack_icmpv6_timeout": "3",
    "net.netfilter.nf_conntrack_gre_timeout": "3",
    "net.netfilter.nf_conntrack_gre_timeout_stream": "3",
    "net.netfilter.nf_conntrack_generic_timeout": "3",
}

#: The longest of those timeouts (s): every lab entry has expired this long after the mix.
MAX_TIMEOUT = 3.0

NO_DAD = ("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")

FW_RULESET = """\
table inet nfflowd_lab {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "wan0" ip daddr $fw_pub4 tcp dport $fwd_port dnat ip to $client4:$fwd_to_port
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" ip saddr $client4 masquerade
        oifname "wan0" ip6 saddr $client6 masquerade
    }
}
"""

SERVER_RULESET = """\
table inet nfflowd_lab {
    chain input {
        type filter hook input priority filter; policy accept;
        udp dport $drop_port drop
    }
}
"""


@dataclass(frozen=True)
class Lab:
    """A lab's namespace names and the addresses the traffic mix uses."""

    prefix: str
    client: str
    fw: str
    server: str
    client4: str = "10.0.1.2"  # SNAT to fw_pub4
    client4_nonat: str = "10.0.1.3"  # routed as is
    fw_priv4: str = "10.0.1.1"
    fw_pub4: str = "203.0.113.1"
    server4: str = "203.0.113.2"
    client6: str = "fd00:1::2"  # NAT66 to fw_pub6
    client6_nonat: str = "fd00:1::3"
    fw_priv6: str = "fd00:1::1"
    fw_pub6: str = "2001:db8:1::1"
    server6: str = "2001:db8:1::2"
    fwd_port: int = 8080  # fw_pub4:fwd_port -> client4:fwd_to_port
    fwd_to_port: int = 80
    drop_port: int = 5999  # UDP port the server drops silently

    @classmethod
    def named(cls, prefix: str = DEFAULT_PREFIX) -> Lab:
        return cls(prefix, prefix + "client", prefix + "fw", prefix + "server")

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.client, self.fw, self.server)


def _run(args: list[str], stdin: str | None = None, timeout: float = COMMAND_TIMEOUT) -> str:
    try:
        done = subprocess.run(
            args, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"{' '.join(args)}: {exc}") from exc
    if done.returncode != 0:
        msg = (done.stderr or done.stdout).strip()
        raise LabError(f"{' '.join(args)}: exit {done.returncode}: {msg}")
    return done.stdout


def _netns_names() -> set[str]:
    try:
        out = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _topology(lab: Lab) -> list[list[str]]:
    c, f, s = (["ip", "-n", ns] for ns in lab.namespaces)
    cmds = [
        [*c, "link", "add", "eth0", "type", "veth", "peer", "name", "lan0", "netns", lab.fw],
        [*f, "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", lab.server],
        [*c, "addr", "add", f"{lab.client4}/24", "dev", "eth0"],
        [*c, "addr", "add", f"{lab.client4_nonat}/24", "dev", "eth0"],
        [*c, "addr", "add", f"{lab.client6}/64", "dev", "eth0", "nodad"],
        [*c, "addr", "add", f"{lab.client6_nonat}/64", "dev", "eth0", "nodad"],
        [*f, "addr", "add", f"{lab.fw_priv4}/24", "dev", "lan0"],
        [*f, "addr", "add", f"{lab.fw_priv6}/64", "dev", "lan0", "nodad"],
        [*f, "addr", "add", f"{lab.fw_pub4}/24", "dev", "wan0"],
        [*f, "addr", "add", f"{lab.fw_pub6}/64", "dev", "wan0", "nodad"],
        [*s, "addr", "add", f"{lab.server4}/24", "dev", "eth0"],
        [*s, "addr", "add", f"{lab.server6}/64", "dev", "eth0", "nodad"],
    ]
    links = ((c, "lo"), (c, "eth0"), (f, "lo"), (f, "lan0"), (f, "wan0"), (s, "lo"), (s, "eth0"))
    cmds += [[*ns, "link", "set", dev, "up"] for ns, dev in links]
    cmds += [
        [*c, "route", "add", "default", "via", lab.fw_priv4],
        [*c, "-6", "route", "add", "default", "via", lab.fw_priv6],
        [*s, "route", "add", "10.0.1.0/24", "via", lab.fw_pub4],
        [*s, "-6", "route", "add", "fd00:1::/64", "via", lab.fw_pub6],
    ]
    return cmds


def _ruleset(template: str, lab: Lab) -> str:
    return string.Template(template).substitute(asdict(lab))  # $names: Lab fields


def _wait_link_local(lab: Lab, timeout: float = 5.0) -> None:
    """Wait until every veth has its IPv6 link-local address.

    The kernel's link watcher reports a veth's carrier up to a second late, and until
    then the interface has no link-local address and IPv6 neighbour discovery on it
    fails (seen as Ip6InNoRoutes on the fw and a 1 s TCP SYN retransmission).
    """
    want = {lab.client: 1, lab.fw: 2, lab.server: 1}
    deadline = time.monotonic() + timeout
    while True:
        have = {
            ns: _run(["ip", "-n", ns, "-6", "addr", "show", "scope", "link"]).count("fe80::")
            for ns in want
        }
        if all(have[ns] >= n for ns, n in want.items()):
            return
        if time.monotonic() > deadline:
            raise LabError(f"IPv6 link-local addresses missing after {timeout}s: {have}")
        time.sleep(0.05)


def up(prefix: str = DEFAULT_PREFIX) -> Lab:
    """Create the lab (after removing leftovers with the same prefix); return it."""
    lab = Lab.named(prefix)
    down(lab)
    try:
        for ns in lab.namespaces:
            _run(["ip", "netns", "add", ns])
            # No duplicate address detection: addresses are usable at once, not
            # "tentative" for a second or two (every address here is unique anyway).
            _run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *NO_DAD])
        for cmd in _topology(lab):
            _run(cmd)
        _run(["ip", "netns", "exec", lab.fw, "nft", "-f", "-"], stdin=_ruleset(FW_RULESET, lab))
        _run(
            ["ip", "netns", "exec", lab.server, "nft", "-f", "-"],
            stdin=_ruleset(SERVER_RULESET, lab),
        )
        settings = [f"{k}={v}" for k, v in FW_SYSCTLS.items()]
        _run(["ip", "netns", "exec", lab.fw, "sysctl", "-q", "-w", *settings])
        _wait_link_local(lab)
    except BaseException:
        with contextlib.suppress(LabError):  # the original error matters more
            down(lab)
        raise
    return lab


def down(lab_or_prefix: Lab | str = DEFAULT_PREFIX) -> None:
    """Remove the lab's namespaces (and stray processes inside them); safe to repeat.

    Raises :class:`LabError` only if a namespace of the lab still exists afterwards.
    """
    lab = lab_or_prefix if isinstance(lab_or_prefix, Lab) else Lab.named(lab_or_prefix)
    present = _netns_names()
    for ns in lab.namespaces:
        if ns not in present:
            continue
        with contextlib.suppress(LabError):  # processes the lab started and lost track of
            for pid in _run(["ip", "netns", "pids", ns]).split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        with contextlib.suppress(LabError):
            _run(["ip", "netns", "del", ns])
    left = sorted(set(lab.namespaces) & _netns_names())
    if left:
        raise LabError(f"could not delete network namespaces {left}")


@contextlib.contextmanager
def running(prefix: str = DEFAULT_PREFIX) -> Iterator[Lab]:
    """``up`` on entry, ``down`` on exit, whatever happens inside."""
    lab = up(prefix)
    try:
        yield lab
    finally:
        down(lab)


def traffic(lab: Lab, before_close: Callable[[], object] | None = None) -> list[Expected]:
    """Run the traffic mix (see :mod:`nfflowd.lab_traffic`); return what it promises.

    ``before_close`` runs when every connection has exchanged its data but no TCP
    connection has been closed yet (e.g. to list the kernel's counters).
    """
    return run_mix(lab, before_close)


def flush(lab: Lab) -> None:
    """Destroy every conntrack entry of the fw namespace (each gives a DESTROY event)."""
    _run(["ip", "netns", "exec", lab.fw, "conntrack", "-F"])


def listing(lab: Lab) -> str:
    """The fw's conntrack table with counters: ``conntrack -L -o extended,id`` (both families).

    Listing also makes the kernel destroy the entries whose timeout has passed.
    """
    return _run(["ip", "netns", "exec", lab.fw, "conntrack", "-L", "-o", "extended,id"])


def expire(lab: Lab) -> None:
    """Destroy the fw's entries whose timeout has passed, now.

    The kernel reaps expired entries (and sends DESTROY) lazily: its garbage
    collector is one worker for all namespaces whose interval adapts to the average
    timeout of the entries it sees (1 s up to a minute), so a lab entry can outlive
    its timeout by tens of seconds.  A table dump kills the expired entries it meets.
    """
    listing(lab)


def _subscribed(pid: int) -> bool:
    """Whether process ``pid`` owns a NETLINK_NETFILTER socket joined to multicast groups."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    with contextlib.suppress(OSError), open(f"/proc/{pid}/net/netlink") as fh:
        for line in fh.readlines()[1:]:
            cols = line.split()  # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
            # conntrack -E also owns a socket without groups: look for one with groups
            ours = len(cols) >= 10 and cols[1] == str(NETLINK_NETFILTER) and cols[9] in inodes
            if ours and int(cols[3], 16):
                return True
    return False


@contextlib.contextmanager
def capture(lab: Lab, out: IO[bytes], options: str = "timestamp,id") -> Iterator[int]:
    """Run ``conntrack -E -e NEW,DESTROY -o OPTIONS`` in the fw namespace, writing to ``out``.

    Returns once the program is subscribed (its netlink socket is visible with its
    groups in /proc/PID/net/netlink), so no event of the body is missed; terminates
    it on exit.  Yields the program's pid.  (``ip netns exec`` execs, it does not fork.)
    """
    args = ["ip", "netns", "exec", lab.fw, "conntrack", "-E", "-e", "NEW,DESTROY", "-o", options]
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not _subscribed(proc.pid):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait(5)
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise LabError(f"{' '.join(args)}: did not start listening: {err.strip()}")
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()


def available() -> str | None:
    """None when the lab can run here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables, conntrack)"
    for tool in ("ip", "nft", "conntrack", "sysctl"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} program (iproute2, nftables, conntrack, procps)"
    if not os.path.exists("/proc/sys/net/netfilter/nf_conntrack_acct"):
        try:
            _run(["modprobe", "-q", "nf_conntrack"])
        except LabError as exc:
            return f"the kernel's conntrack is not available: {exc}"
    probe = f"nfflowd-probe-{os.getpid()}"
    try:
        _run(["ip", "netns", "add", probe])
    except LabError as exc:
        return f"cannot create network namespaces: {exc}"
    finally:
        if probe in _netns_names():
            subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


USAGE = "python -m nfflowd.lab {up|traffic|flush|down|capture DIR} [--prefix P]"


def _write_capture(lab: Lab, directory: str) -> list[Expected]:
    """Golden data: two event captures around the mix, the table before the close.

    Entries end by their (shortened) timeouts, reaped by :func:`expire`; a final
    :func:`flush` destroys whatever would be left.
    """
    os.makedirs(directory, exist_ok=True)
    plain = os.path.join(directory, "lab-events.log")
    ext = os.path.join(directory, "lab-events-extended.log")
    with (
        open(plain, "wb") as fp,
        open(ext, "wb") as fe,
        open(os.path.join(directory, "lab-listing.txt"), "w") as fl,
        capture(lab, fp),
        capture(lab, fe, "timestamp,extended,id"),
    ):
        expected = traffic(lab, lambda: fl.write(listing(lab)))
        ended = time.monotonic()
        while not _all_destroyed([plain, ext], len(expected)):
            if time.monotonic() > ended + 20:
                raise LabError(f"no DESTROY for every connection in {plain} after 20s")
            if time.monotonic() > ended + MAX_TIMEOUT:
                expire(lab)
            time.sleep(0.2)
        flush(lab)
    return expected


def _all_destroyed(paths: list[str], at_least: int) -> bool:
    for path in paths:
        with open(path) as fh:
            text = fh.read()
        if not at_least <= text.count("[NEW]") <= text.count("[DESTROY]"):
            return False
    return True


def main(argv: list[str]) -> int:
    """``nfflowd lab`` / ``python -m nfflowd.lab``."""
    p = argparse.ArgumentParser(prog="nfflowd lab", usage=USAGE)
    p.add_argument("verb", choices=("up", "traffic", "flush", "down", "capture"))
    p.add_argument("directory", nargs="?", default=None)
    p.add_argument("--prefix", default=DEFAULT_PREFIX)
    ns = p.parse_args(argv)
    lab = Lab.named(ns.prefix)
    try:
        if ns.verb == "down":
            down(lab)
            print(f"lab {ns.prefix!r}: removed")
            return 0
        if ns.verb == "up":
            reason = available()
            if reason:
                print(f"nfflowd lab: cannot run here: {reason}", file=sys.stderr)
                return 1
            up(ns.prefix)
            print(f"lab {ns.prefix!r} up: namespaces {', '.join(lab.namespaces)}")
            return 0
        if ns.verb == "capture":
            if ns.directory is None:
                p.error("capture needs a directory")
            with running(ns.prefix) as live:
                expected = _write_capture(live, ns.directory)
            print(describe(expected))
            return 0
        missing = sorted(set(lab.namespaces) - _netns_names())
        if missing:
            print(
                f"nfflowd lab: lab {ns.prefix!r} is not up (missing {missing}); "
                "run `nfflowd lab up` first",
                file=sys.stderr,
            )
            return 1
        if ns.verb == "flush":
            flush(lab)
            return 0
        print(describe(traffic(lab)))
        return 0
    except LabError as exc:
        print(f"nfflowd lab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
