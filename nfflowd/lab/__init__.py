"""The built-in NAT lab: three network namespaces, a NAT firewall, known traffic.

What lives where: the plan (topology and addresses in :class:`Lab`, the nftables
rulesets, the conntrack sysctls, and why) is :mod:`nfflowd.lab.plan`, re-exported
here.  This module builds the lab from it with iproute2, nft and sysctl, tears it
down, watches the firewall's conntrack table (:func:`flush`, :func:`listing`,
:func:`expire`, :func:`capture`) and is the ``nfflowd lab`` command.

Traffic: :mod:`nfflowd.lab.traffic`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO

from nfflowd.lab.plan import (
    DEFAULT_PREFIX,
    FW_RULESET,
    FW_SYSCTLS,
    MAX_TIMEOUT,
    NO_DAD,
    ROLES,
    SERVER_RULESET,
    Lab,
    ruleset,
    topology,
)
from nfflowd.lab.traffic import Expected, LabError, describe, run_mix

__all__ = ["Expected", "Lab", "LabError", "available", "down", "flush", "main", "running"]
__all__ += ["capture", "expire", "listing", "traffic", "up"]
__all__ += ["DEFAULT_PREFIX", "FW_SYSCTLS", "MAX_TIMEOUT", "ROLES"]

COMMAND_TIMEOUT = 15.0
NETLINK_NETFILTER = 12  # include/uapi/linux/netlink.h (the Eth column of /proc/net/netlink)


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
        for cmd in topology(lab):
            _run(cmd)
        _run(["ip", "netns", "exec", lab.fw, "nft", "-f", "-"], stdin=ruleset(FW_RULESET, lab))
        _run(
            ["ip", "netns", "exec", lab.server, "nft", "-f", "-"],
            stdin=ruleset(SERVER_RULESET, lab),
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
    """Run the traffic mix (see :mod:`nfflowd.lab.traffic`); return what it promises.

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
