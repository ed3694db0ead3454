"""Live kernel-ingestion benchmark: stepped connection rates through the NAT lab.

    python bench/bench_live.py [--rates 5000,10000,20000,40000,max] [--seconds 4]
                               [--modes default,reliable] [--ulogd separate|together|off]

Builds the NAT lab (prefix ``nfk-live-``) and an echo server in its server
namespace.  For each pass (nfflowd in default mode, in reliable mode, Debian's
ulogd2 NFCT -> IPFIX) and each rate step it flushes the firewall's conntrack
table, starts the consumer(s) afresh, sends short UDP request/response
connections (one raw-socket datagram each, distinct source/destination ports,
SNATed by the firewall; ``--tcp-rate`` adds TCP connect/RST) at the step's rate,
waits the 3 s UDP timeout plus ``--gc-wait``, flushes what the kernel's garbage
collector has not reaped (its one worker wakes every 10-60 s here, so DESTROY
events come in bursts: a GC batch or this flush), waits until every consumer is
idle and stops it.  Figures per step (see LEGEND): connections the kernel
created (nftables ``ct state new`` counter), NEW/DESTROY events received (the
stages' final log lines), records in each consumer's own nfcapd, ENOBUFS,
resyncs, netlink socket drops and queue (``/proc/net/netlink`` of the fw
namespace), CPU per process (``/proc/PID/stat``) per kernel event.  Prints
figures; asserts nothing.  Namespaces and processes are removed on exit, Ctrl-C,
SIGTERM and failure.  Needs root, iproute2, nftables, conntrack, nfdump; ulogd2
for its pass (``apt-get install ulogd2``).  One run of the defaults: ~3-4 min.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import re
import select
import selectors
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")
#: RFC 768 UDP header: source port, destination port, length, checksum (0 = none, IPv4).
UDP_HEADER = struct.Struct("!HHHH")
PAYLOAD = b"nfflowd-live-bench"
DPORT_BASE, DPORTS, TCP_PORT = 9000, 32, 9100
SPORT_LO, SPORT_HI = 1024, 65536
#: SO_LINGER {on, 0 s}: close() sends RST, so the client keeps no TIME_WAIT (asm-generic/socket.h).
LINGER_RST = struct.Struct("ii").pack(1, 0)


# ------------------------------------------------------------------ load roles (in the lab)
def role_sender(a: argparse.Namespace) -> None:
    """UDP requests from a raw socket (one packet = one connection), or TCP connect+RST."""
    first = SPORT_LO + a.slice * ((SPORT_HI - SPORT_LO) // a.slices)
    span = (SPORT_HI - SPORT_LO) // a.slices
    sent, k = 0, 0
    if a.tcp:
        sock = None
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        sock.bind((a.src, 0))
    length, pack, dst = UDP_HEADER.size + len(PAYLOAD), UDP_HEADER.pack, (a.dst, 0)
    t0 = time.perf_counter()
    end = t0 + a.seconds
    while sent < a.total:
        now = time.perf_counter()
        if now >= end:
            break
        target = min(a.total, int((now - t0) * a.rate) if a.rate > 0 else sent + 256)
        while sent < target:
            if sock is not None:
                sport, dport = first + k % span, DPORT_BASE + (k // span) % DPORTS
                sock.sendto(pack(sport, dport, length, 0) + PAYLOAD, dst)
            else:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
                    with contextlib.suppress(OSError):
                        s.connect((a.dst, TCP_PORT))
            sent, k = sent + 1, k + 1
        if a.rate > 0:
            time.sleep(0.0005)
    seconds = time.perf_counter() - t0
    print(json.dumps({"sent": sent, "seconds": seconds, "cpu": time.process_time()}), flush=True)


def role_server(a: argparse.Namespace) -> None:
    """Echo every UDP request on DPORTS ports; accept and close TCP; until SIGTERM."""
    sel = selectors.EpollSelector()
    for port in range(DPORT_BASE, DPORT_BASE + DPORTS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((a.addr, port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, "udp")
    listener = socket.create_server((a.addr, TCP_PORT), backlog=4096)
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ, "tcp")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        for key, _ in sel.select(0.5):
            sock = key.fileobj
            if not isinstance(sock, socket.socket):
                continue
            with contextlib.suppress(BlockingIOError, ConnectionError):
                for _ in range(512):
                    if key.data == "tcp":
                        sock.accept()[0].close()
                    else:
                        data, peer = sock.recvfrom(2048)
                        sock.sendto(data, peer)


def roles(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=("_sender", "_server"))
    for opt in ("--src", "--dst", "--addr"):
        p.add_argument(opt, default="")
    for opt, kind in (
        ("--rate", float),
        ("--seconds", float),
        ("--total", int),
        ("--slice", int),
        ("--slices", int),
    ):
        p.add_argument(opt, type=kind, default=1 if opt == "--slices" else 0)
    p.add_argument("--tcp", action="store_true")
    a = p.parse_args(argv)
    if a.total == 0:
        a.total = 1 << 62
    (role_sender if a.role == "_sender" else role_server)(a)


#: The load roles run inside the lab namespaces and need nothing but the standard library.
if __name__ == "__main__" and sys.argv[1:2] and sys.argv[1].startswith("_"):
    roles(sys.argv[1:])
    raise SystemExit(0)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nfflowd import lab as labmod  # noqa: E402
from nfflowd import topology  # noqa: E402
from nfflowd.config import Collector, Dispatcher, load  # noqa: E402
from nfflowd.conntrack.kernel import (  # noqa: E402
    NETLINK_NETFILTER,
    CtnetlinkListener,
    open_in_netns,
    run_in_netns,
)
from nfflowd.conntrack.payloads import PayloadDecoder  # noqa: E402
from nfflowd.lab.nfcapd import Nfcapd  # noqa: E402
from nfflowd.lab.nfcapd import _parse_time_ms as parse_time_ms  # noqa: E402
from nfflowd.messages import Payload  # noqa: E402
from nfflowd.ops import control  # noqa: E402
from nfflowd.pipeline import supervision  # noqa: E402

NFCAPD_ARGS = ["-B", "8388608"]
ULOGD_CONF = Path(__file__).resolve().parent / "ulogd.conf"
STAGES = topology.STAGES
CLK_TCK = os.sysconf("SC_CLK_TCK")

CLIENT_RULES = f"""table inet nfk_bench {{
    chain replies {{
        type filter hook input priority filter; policy accept;
        udp sport {DPORT_BASE}-{DPORT_BASE + DPORTS - 1} drop
    }}
}}
"""
#: In the fw: count the connections its conntrack creates (priority mangle: after conntrack
#: has classified the packet), and leave its loopback untracked, so that ulogd2's IPFIX to
#: its collector there makes no connections (nor events) of its own.
FW_RULES = """table inet nfk_bench {
    counter created { }
    chain raw_pre {
        type filter hook prerouting priority raw; policy accept;
        iifname "lo" notrack
    }
    chain raw_out {
        type filter hook output priority raw; policy accept;
        oifname "lo" notrack
    }
    chain pre {
        type filter hook prerouting priority mangle; policy accept;
        ct state new counter name "created"
    }
}
"""


# ------------------------------------------------------------------ measuring
def cpu_seconds(pid: int) -> float:
    """utime + stime of *pid* (fields 14 and 15 of /proc/PID/stat, proc(5)); 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def socket_inodes(pid: int) -> set[str]:
    out: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    out.add(link[8:-1])
    return out


def read_in_netns(netns: str, path: str) -> str:
    """/proc/thread-self/<path> as seen from inside *netns* (a thread enters it)."""

    def read() -> str:
        with open(f"/proc/thread-self/{path}") as fh:
            return fh.read()

    return run_in_netns(netns, read)


def kernel_state(lab: labmod.Lab) -> dict[str, int]:
    """The fw's conntrack entries, drop statistics (summed over CPUs) and connections created."""
    lines = read_in_netns(lab.fw, "net/stat/nf_conntrack").split("\n")
    names = lines[0].split()
    rows = [[int(v, 16) for v in ln.split()] for ln in lines[1:] if ln.strip()]
    state = {n: sum(r[i] for r in rows) for i, n in enumerate(names) if n != "entries"}
    state["entries"] = rows[0][names.index("entries")]
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            lab.fw,
            "nft",
            "-j",
            "list",
            "counter",
            "inet",
            "nfk_bench",
            "created",
        ],
        capture_output=True,
        text=True,
        timeout=15,
        check=True,
    ).stdout
    counter = next(o["counter"] for o in json.loads(out)["nftables"] if "counter" in o)
    state["created"] = int(counter["packets"])
    return state


def netlink_sockets(lab: labmod.Lab) -> dict[str, tuple[int, int, int]]:
    """inode -> (groups, rmem, drops) of the fw namespace's NETLINK_NETFILTER sockets."""
    out: dict[str, tuple[int, int, int]] = {}
    for line in read_in_netns(lab.fw, "net/netlink").splitlines()[1:]:
        c = line.split()  # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        if len(c) >= 10 and c[1] == str(NETLINK_NETFILTER):
            out[c[9]] = (int(c[3], 16), int(c[4]), int(c[8]))
    return out


def listener_state(lab: labmod.Lab, pid: int) -> tuple[int, int] | None:
    """(rmem queued, drops) of *pid*'s subscribed conntrack socket, None if not (yet) there."""
    mine, socks = socket_inodes(pid), netlink_sockets(lab)
    found = [(r, d) for ino, (g, r, d) in socks.items() if ino in mine and g]
    return (sum(r for r, _ in found), sum(d for _, d in found)) if found else None


def wait_for(what: str, check: Callable[[], T], timeout: float = 30.0, every: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# ------------------------------------------------------------------ consumers
class FwNfcapd(Nfcapd):
    """An nfcapd inside the lab's fw namespace, on that namespace's loopback (for ulogd)."""

    def __init__(self, netns: str, directory: Path, port: int = 4739) -> None:
        wrapper = directory / "nfcapd-in-netns"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {netns} nfcapd "$@"\n')
        wrapper.chmod(0o755)
        self.netns = netns
        super().__init__(directory, port=port, nfcapd=str(wrapper), extra_args=NFCAPD_ARGS)

    def _udp(self) -> tuple[int, int] | None:
        assert self.proc is not None
        inodes = socket_inodes(self.proc.pid)
        with contextlib.suppress(OSError), open(f"/proc/{self.proc.pid}/net/udp") as fh:
            for line in fh.readlines()[1:]:
                c = line.split()
                if int(c[1].rsplit(":", 1)[1], 16) == self.port and c[9] in inodes:
                    return int(c[4].split(":")[1], 16), int(c[12])
        return None

    def _wait_listening(self) -> bool:
        assert self.netns is not None  # set by __init__
        self._tx = open_in_netns(self.netns, socket.AF_INET, socket.SOCK_DGRAM, 0)
        assert self.proc is not None
        proc = self.proc
        return (
            bool(
                wait_for(
                    "nfcapd in the fw namespace",
                    lambda: proc.poll() is not None or self._udp() is not None,
                )
            )
            and proc.poll() is None
        )

    def _state(self) -> tuple[int, int]:
        state = self._udp()
        if state is None:
            raise RuntimeError(f"nfcapd in {self.netns}: socket gone\n{self.log()}")
        return state


def collector_result(
    cap: Nfcapd, destroyed: dict[tuple[str, int, int], int] | None = None
) -> dict[str, Any]:
    """Everything sent so far processed, then stored flows, socket drops and latencies."""
    cap.sync()
    drops = cap.drops()
    cap._terminate()
    out: dict[str, Any] = {"stored": cap.stats().get("Flows", 0), "collector_drops": drops}
    if destroyed:
        out["probe_destroys"] = len(destroyed)
        out["latency_ms"] = lat = latencies(cap, destroyed)
        out["probe_missing"] = out["probe_destroys"] - len(lat)
    return out


class DestroyProbe:
    """When the kernel sent each DESTROY: a listener of our own in the fw namespace (the
    event's kernel timestamp, CTA_TIMESTAMP_EVENT, or its receive time), by the original
    source address and ports of its connection (distinct for every bench connection).

    The flow's end (the kernel's stop timestamp) is not the moment to measure from: for a
    connection reaped by the garbage collector the kernel backdates it to the expiry, up
    to seconds before the DESTROY is sent (nf_ct_delete)."""

    def __init__(self, netns: str) -> None:
        self.listener = CtnetlinkListener(netns=netns, destroy_only=True, kernel_time=True)
        self.data = bytearray()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            select.select([self.listener.fileno()], [], [], 0.2)
            self.listener.recv_frames(self.data)

    def finish(self) -> dict[tuple[str, int, int], int]:
        self.stop.set()
        self.thread.join(5)
        self.listener.recv_frames(self.data)
        self.listener.close()
        events = PayloadDecoder().decode(Payload.NETLINK, bytes(self.data))
        return {
            (
                socket.inet_ntop(socket.AF_INET if e.family == 4 else socket.AF_INET6, e.orig_src),
                e.orig_sport,
                e.orig_dport,
            ): e.time_ns // 1_000_000
            for e in events
            if e.type == 3
        }


def latencies(cap: Nfcapd, destroyed: dict[tuple[str, int, int], int]) -> list[int]:
    """Per DESTROY the probe saw whose connection has its original-direction record at the
    collector: when the collector received it minus when the kernel sent the DESTROY, in
    ms.  The DESTROYs without such a record are the records lost on the way."""
    out = []
    with contextlib.suppress(Exception):
        for sa, sp, dp, tr in cap.rows("fmt:%sa|%sp|%dp|%tr"):
            sent = destroyed.pop((sa, int(sp), int(dp)), None)
            if sent is not None:
                out.append(parse_time_ms(tr) - sent)
    return out


def percentiles(values: list[int]) -> str:
    if not values:
        return "n/a"
    v = sorted(values)
    pick = [v[min(len(v) - 1, int(q * len(v)))] for q in (0.5, 0.9, 0.99)]
    return f"{pick[0]:>6} {pick[1]:>6} {pick[2]:>6} {v[-1]:>6}"


def final_counters(log: Path) -> dict[str, int]:
    """A stage's last "stopped[ after N events]; COUNTERS" line (a dict or Name(k=v, ...))."""
    found = None
    with contextlib.suppress(OSError), open(log, errors="replace") as fh:
        for line in fh:
            found = re.search(r"stopped(?: after (\d+) events)?; (.*)$", line) or found
    if found is None:
        return {}
    literal = re.search(r"\{.*\}", found.group(2))
    out: dict[str, int] = {}
    if literal:
        with contextlib.suppress(ValueError, SyntaxError):
            out = {k: v for k, v in ast.literal_eval(literal.group(0)).items() if type(v) is int}
    else:
        out = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", found.group(2))}
    if found.group(1):
        out["events"] = int(found.group(1))
    return out


class NfflowdRun:
    """The four stages under supervisord, reading the fw namespace over ctnetlink."""

    def __init__(self, lab: labmod.Lab, work: Path, mode: str, a: argparse.Namespace) -> None:
        """*mode*: default, reliable (<source> reliable 1), or natrt (an IPFIX collector
        with real-time NAT events: the NEW events are read too)."""
        reliable, natrt = mode == "reliable", mode == "natrt"
        self.name = "nfflowd-" + mode
        self.lab, self.rundir = lab, work / "run"
        self.cap = Nfcapd(extra_args=NFCAPD_ARGS)
        self.cap.start()
        base = load(None)
        mirror = (Dispatcher(name="screen", kind="screen"),) if a.mirror == "screen" else ()
        self.settings = dataclasses.replace(
            base,
            source=dataclasses.replace(
                base.source,
                type="netlink",
                netns=lab.fw,
                rcvbuf=a.rcvbuf,
                reliable=reliable,
                set_sysctls=True,
            ),
            export=dataclasses.replace(
                base.export,
                exaddr="127.0.0.1",
                collectors=(
                    Collector(
                        address="127.0.0.1",
                        port=self.cap.port,
                        version=10 if natrt else a.version,
                        nat_events=natrt,
                        nat_realtime=natrt,
                    ),
                ),
            ),
            mirror=dataclasses.replace(base.mirror, dispatchers=mirror),
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: dict[str, int] = {}
        self.latency = a.latency
        self.probe: DestroyProbe | None = None

    def start(self) -> None:
        if self.latency:
            self.probe = DestroyProbe(self.lab.fw)
        self.proc = control.launch_foreground(self.settings, str(self.rundir), silent=True)
        self.pids = {"supervisord": self.proc.pid}

        def ready() -> bool:
            infos = supervision.processes(str(self.rundir))
            self.pids.update({p["name"]: p["pid"] for p in infos if p["pid"]})
            up = all(p["statename"] == "RUNNING" for p in infos) and len(infos) == len(STAGES)
            return up and listener_state(self.lab, self.pids.get("ingest", 0)) is not None

        wait_for(f"{self.name} to run and subscribe", ready, timeout=30, every=0.1)

    @property
    def listener_pid(self) -> int:
        return self.pids["ingest"]

    def finish(self) -> dict[str, Any]:
        destroyed = self.probe.finish() if self.probe is not None else None
        control.stop(str(self.rundir))
        assert self.proc is not None
        self.proc.wait(30)
        out: dict[str, Any] = collector_result(self.cap, destroyed)
        self.cap.close()
        out.update(final_counters(self.rundir / "ingest.log"))
        out.update(final_counters(self.rundir / "correlate.log"))
        out["sent_records"] = final_counters(self.rundir / "export.log").get("records", 0)
        return out

    def abort(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                control.stop(str(self.rundir), timeout=20)
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
        for name, pid in self.pids.items():  # stages we started, if supervisord lost them
            ours = False
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as fh:
                ours = str(self.rundir).encode() in fh.read()  # not a reused pid
            if name != "supervisord" and ours:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.cap.close()


def ulogd_plugindir() -> str | None:
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    for d in (f"/usr/lib/{multiarch}/ulogd", "/usr/lib/ulogd", "/usr/lib64/ulogd"):
        if os.path.exists(os.path.join(d, "ulogd_output_IPFIX.so")):
            return d
    return None


def ulogd_missing() -> str | None:
    if shutil.which("ulogd") is None:
        return "the ulogd program is not installed (Debian: apt-get install ulogd2)"
    if ulogd_plugindir() is None:
        return "ulogd_output_IPFIX.so not found (ulogd2 >= 2.0.8 packages it)"
    return None


class UlogdRun:
    """ulogd2 (NFCT -> IPFIX) inside the fw namespace, into its own nfcapd there."""

    def __init__(self, lab: labmod.Lab, work: Path, reliable: bool, a: argparse.Namespace) -> None:
        self.name = "ulogd2" + ("-reliable" if reliable else "")
        self.lab, self.log = lab, work / "ulogd.log"
        self.cap = FwNfcapd(lab.fw, work)
        self.cap.start()
        self.conf = work / "ulogd.conf"
        values = {
            "logfile": self.log,
            "plugindir": ulogd_plugindir(),
            "rcvbuf": a.rcvbuf,
            "rcvbuf_max": max(a.rcvbuf, 512 << 20),
            "reliable": int(reliable),
            "port": self.cap.port,
        }
        self.conf.write_text(string.Template(ULOGD_CONF.read_text()).substitute(values))
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: dict[str, int] = {}

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.fw, "ulogd", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pids = {"ulogd": self.proc.pid}
        proc = self.proc
        wait_for(
            "ulogd to subscribe",
            lambda: proc.poll() is not None or listener_state(self.lab, proc.pid) is not None,
        )
        if proc.poll() is not None:
            raise RuntimeError(f"ulogd exited with status {proc.returncode}: see {self.log}")

    @property
    def listener_pid(self) -> int:
        return self.pids["ulogd"]

    def finish(self) -> dict[str, Any]:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(20)
        out: dict[str, Any] = collector_result(self.cap)
        self.cap.close()
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        out["enobufs"] = text.count("losing events") + text.count("Maximum buffer size")
        return out

    def abort(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.cap.close()


Consumer = NfflowdRun | UlogdRun


# ------------------------------------------------------------------ one step
def role(args: list[str], netns: str) -> subprocess.Popen[str]:
    cmd = ["ip", "netns", "exec", netns, sys.executable, str(Path(__file__).resolve()), *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)


#: CPU seconds per sample (0.25-0.3 s) above which a consumer counts as busy: 3 clock ticks,
#: ~10 % of a core (idle stages poll their sockets a few times a second, and ticks are coarse).
BUSY_CPU_S = 0.03


def sample(lab: labmod.Lab, consumers: list[Consumer], t_end: float, st: dict[str, Any]) -> None:
    """Record each consumer's peak socket queue and the last time it was busy (s after load)."""
    now = time.monotonic()
    for c in consumers:
        queued = (listener_state(lab, c.listener_pid) or (0, 0))[0]
        cpu = sum(cpu_seconds(p) for p in c.pids.values())
        mine = st.setdefault(c.name, {"peak_queue": 0, "busy_s": 0.0, "cpu": cpu})
        mine["peak_queue"] = max(mine["peak_queue"], queued)
        if queued or cpu - mine["cpu"] >= BUSY_CPU_S:
            mine["busy_s"] = max(0.0, now - t_end) if t_end else 0.0
        mine["cpu"] = cpu


def generate(
    lab: labmod.Lab, rate: int, a: argparse.Namespace, consumers: list[Consumer], st: dict[str, Any]
) -> dict[str, float]:
    """Run the senders for one step; return what they sent, their time and CPU."""
    per = rate / a.senders if rate else 0
    jobs = [
        role(
            [
                "_sender",
                "--src",
                lab.client4,
                "--dst",
                lab.server4,
                "--rate",
                str(per),
                "--seconds",
                str(a.seconds),
                "--total",
                str(a.max_total // a.senders),
                "--slice",
                str(i),
                "--slices",
                str(a.senders),
            ],
            lab.client,
        )
        for i in range(a.senders)
    ]
    if a.tcp_rate:
        jobs.append(
            role(
                [
                    "_sender",
                    "--tcp",
                    "--src",
                    lab.client4,
                    "--dst",
                    lab.server4,
                    "--rate",
                    str(a.tcp_rate),
                    "--seconds",
                    str(a.seconds),
                ],
                lab.client,
            )
        )
    deadline = time.monotonic() + a.seconds + 60
    while any(j.poll() is None for j in jobs) and time.monotonic() < deadline:
        sample(lab, consumers, 0.0, st)
        time.sleep(0.25)
    res = [json.loads(j.communicate(timeout=10)[0] or "{}") for j in jobs]
    return {
        k: (max if k == "seconds" else sum)(r.get(k, 0) for r in res)
        for k in ("sent", "seconds", "cpu")
    }


def settle(
    lab: labmod.Lab, consumers: list[Consumer], a: argparse.Namespace, st: dict[str, Any]
) -> dict[str, float]:
    """Let the connections expire, flush what the GC left, wait until the consumers are idle."""
    t_end = time.monotonic()
    while time.monotonic() < t_end + labmod.MAX_TIMEOUT + a.gc_wait:
        if not kernel_state(lab)["entries"]:
            break
        sample(lab, consumers, t_end, st)
        time.sleep(0.25)
    flushed, flush_s = kernel_state(lab)["entries"], time.monotonic() - t_end
    if flushed:  # in a thread: the queues peak while `conntrack -F` runs
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            flushing = pool.submit(labmod.flush, lab)
            while not flushing.done():
                sample(lab, consumers, t_end, st)
                time.sleep(0.05)
            flushing.result()
    pids = [pid for c in consumers for pid in c.pids.values()]
    last, quiet, deadline = -1.0, 0, time.monotonic() + 60
    while quiet < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
        sample(lab, consumers, t_end, st)
        cpu = sum(cpu_seconds(p) for p in pids)
        queued = sum((listener_state(lab, c.listener_pid) or (0, 0))[0] for c in consumers)
        idle = queued == 0 and cpu - last < BUSY_CPU_S and kernel_state(lab)["entries"] == 0
        quiet, last = (quiet + 1 if idle else 0), cpu
    return {"flushed": flushed, "flush_s": flush_s}


def run_step(
    lab: labmod.Lab, rate: int, consumers: list[Consumer], a: argparse.Namespace
) -> dict[str, Any]:
    labmod.flush(lab)
    for c in consumers:
        c.start()
    spies = start_profiles(consumers, rate, a.profile) if a.profile else []
    idle = idle_cpu(consumers, a.idle) if a.idle else {}
    k0 = kernel_state(lab)
    cpu0 = {c.name: {n: cpu_seconds(p) for n, p in c.pids.items()} for c in consumers}
    st: dict[str, Any] = {}
    step: dict[str, Any] = {"rate": rate, **generate(lab, rate, a, consumers, st)}
    step.update(settle(lab, consumers, a, st))
    k1 = kernel_state(lab)
    step.update({k: k1[k] - k0[k] for k in ("created", "drop", "early_drop", "insert_failed")})
    if spies:
        step["profile"] = stop_profiles(spies)
    for name, pct in idle.items():
        step.setdefault("idle", {})[name] = pct
    for c in consumers:
        cpu = {n: cpu_seconds(p) - cpu0[c.name][n] for n, p in c.pids.items()}
        sock = listener_state(lab, c.listener_pid) or (0, -1)
        extra = {"peak_queue": st[c.name]["peak_queue"], "busy_s": st[c.name]["busy_s"]}
        step[c.name] = {**c.finish(), **extra, "cpu": cpu, "sock_drops": sock[1]}
    return step


def idle_cpu(consumers: list[Consumer], seconds: float) -> dict[str, float]:
    """CPU of each consumer (all its processes) with no traffic, in % of one core, over
    *seconds* (after 2 s to settle from the start)."""
    time.sleep(2)
    c0 = {c.name: sum(cpu_seconds(p) for p in c.pids.values()) for c in consumers}
    time.sleep(seconds)
    return {
        c.name: (sum(cpu_seconds(p) for p in c.pids.values()) - c0[c.name]) * 100 / seconds
        for c in consumers
    }


# ------------------------------------------------------------------ profiles (py-spy)
def start_profiles(
    consumers: list[Consumer], rate: int, directory: str
) -> list[tuple[str, Path, subprocess.Popen[bytes]]]:
    """py-spy on every Python process of the nfflowd consumers, from start to idle."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = []
    for c in consumers:
        if not isinstance(c, NfflowdRun):
            continue
        for name, pid in c.pids.items():
            path = Path(directory) / f"{c.name}-{rate or 'max'}-{name}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            cmd = [
                spy,
                "record",
                "--format",
                "raw",
                "--nonblocking",
                "-r",
                "250",
                "-o",
                str(path),
                "-p",
                str(pid),
            ]
            out.append(
                (
                    name,
                    path,
                    subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                )
            )
    return out


def stop_profiles(spies: list[tuple[str, Path, subprocess.Popen[bytes]]]) -> dict[str, Any]:
    """Stop py-spy (SIGINT: it writes its file); per process, the top functions by self time."""
    for _, _, proc in spies:
        proc.send_signal(signal.SIGINT)
    tops: dict[str, Any] = {}
    for name, path, proc in spies:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            continue
        tops[name] = top_functions(path)
    return tops


def top_functions(path: Path, n: int = 8) -> list[tuple[str, float]]:
    """(function, share of the samples) by self time, from py-spy's collapsed stacks."""
    counts: dict[str, int] = {}
    total = 0
    with contextlib.suppress(OSError), open(path) as fh:
        for line in fh:
            stack, _, k = line.rstrip().rpartition(" ")
            if not k.isdigit():
                continue
            leaf = stack.rsplit(";", 1)[-1]
            leaf = re.sub(r" \((?:.*/)?([^/:]+):\d+\)$", r" (\1)", leaf)
            counts[leaf] = counts.get(leaf, 0) + int(k)
            total += int(k)
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    return [(f, v / total) for f, v in top] if total else []


def projection(step: dict[str, Any], name: str) -> list[str]:
    """Scaling on paper from one step's CPU per connection of each stage: one ingest, one
    mirror (neither is sharded), N correlators and M exporters sharing the other cores."""
    r, created = step[name], step["created"] or 1
    per = {n: r["cpu"].get(n, 0.0) * 1e6 / created for n in STAGES}
    out = [
        f"{name}, {step['rate'] or 'max'} conn/s step: CPU per connection "
        + ", ".join(f"{n} {v:.1f} µs" for n, v in per.items())
    ]
    for cores in (2, 8, 16):
        bounds = {
            "ingest (one socket, one core)": 1e6 / per["ingest"] if per["ingest"] else 1e12,
            "mirror (one process, one core)": 1e6 / per["mirror"] if per["mirror"] else 1e12,
            "the CPU of all stages on all cores": cores * 1e6 / sum(per.values()),
        }
        what, limit = min(bounds.items(), key=lambda kv: kv[1])
        out.append(f"  {cores:>2} cores: ~{limit:,.0f} conn/s, bounded by {what}")
    return out


# ------------------------------------------------------------------ report
DELIVERY = (
    f"{'consumer':<16} {'target':>7} {'sent/s':>7} {'made/s':>7} {'kdrop':>5} "
    f"{'flushed':>7} {'NEW/s':>7} {'DEST/s':>7} {'-NEW':>6} {'-DEST':>6} {'stored':>8} "
    f"{'/conn':>5} {'cdrop':>5} {'ENOBF':>5} {'rsync':>5} {'sockdrp':>7} {'peakQ':>6} {'busy':>5}"
)
CPU = (
    f"{'consumer':<16} {'target':>7} {'made/s':>7} {'CPU s':>6} {'µs/conn':>7} {'µs/ev':>6}  "
    f"{'ingest':>6} {'correl':>6} {'export':>6} {'mirror':>6} {'superv':>6} {'ulogd':>6}  "
    f"{'bound/s':>7}"
)


def show_step(name: str, s: dict[str, Any]) -> tuple[str, str]:
    """The step's delivery line and CPU line for consumer *name*."""
    created, r, secs = s["created"], s[name], s["seconds"] or 1.0
    kev = 2 * created or 1
    rate = "max" if not s["rate"] else f"{s['rate']:,}"
    head = f"{name:<16} {rate:>7}"
    if "destroy" in r and r.get("destroy_only"):  # NEW not subscribed: nothing to miss
        got = f"{'-':>7} {r['destroy'] / secs:>7,.0f} {'-':>6} {created - r['destroy']:>6,}"
    elif "destroy" in r:
        new = r.get("new", 0) - r.get("dumped", 0)
        got = (
            f"{new / secs:>7,.0f} {r['destroy'] / secs:>7,.0f} {created - new:>6,} "
            f"{created - r['destroy']:>6,}"
        )
    else:
        got = f"{'n/a':>7} {'n/a':>7} {'n/a':>6} {'n/a':>6}"
    delivery = (
        f"{head} {s['sent'] / secs:>7,.0f} {created / secs:>7,.0f} "
        f"{s['drop'] + s['early_drop'] + s['insert_failed']:>5} {s['flushed']:>7,} {got} "
        f"{r['stored']:>8,} {r['stored'] / created if created else 0:>5.2f} "
        f"{r['collector_drops']:>5} "
        f"{r.get('enobufs', 0):>5} {r.get('resyncs', '-'):>5} {r['sock_drops']:>7,} "
        f"{r['peak_queue'] / 2**20:>6.1f} {r['busy_s']:>5.1f}"
    )
    cpu = r["cpu"]
    per = {n: cpu.get(n, 0.0) * 1e6 / kev for n in (*STAGES, "supervisord", "ulogd")}
    cols = " ".join(f"{per[n]:>6.1f}" if n in cpu else f"{'':>6}" for n in per)
    worst = max(v for n, v in per.items() if n in cpu and n != "supervisord")
    total = sum(cpu.values())
    per_conn = total * 1e6 / created if created else 0.0
    line = (
        f"{head} {created / secs:>7,.0f} {total:>6.2f} {per_conn:>7.1f} {total * 1e6 / kev:>6.1f}  "
        f"{cols}  {1e6 / (2 * worst) if worst else 0:>7,.0f}"
    )
    return delivery, line


LEGEND = """\
sent/s, made/s: connections the senders sent / the fw's conntrack created (nft `ct state new`
  counter), per second of load; kdrop: conntrack drop + early_drop + insert_failed; flushed:
  entries the GC had not reaped 3 s + --gc-wait after the load (`conntrack -F`: a DESTROY burst).
NEW/s, DEST/s: events the correlator received per second of load (NEW without table-dump
  entries); -NEW, -DEST: kernel connections minus events received (missed events).
stored: records in the consumer's nfcapd; /conn: per kernel connection (nfflowd: 3 per SNATed
  request/response with v5, 2 with v9/IPFIX, one per direction; ulogd2: 1, and its last partly
  filled IPFIX message is never sent); cdrop: datagrams the nfcapd's socket dropped (8 MiB
  buffer).  nfflowd below 3.00 (2.00) with no event missed and no cdrop: requests the echo
  server dropped under load (no reply, no record).
ENOBF: ENOBUFS seen (ulogd2: "losing events" log lines); rsync: table re-dumps; sockdrp: events
  the kernel could not queue on the consumer's netlink socket (/proc/net/netlink Drops; in
  reliable mode DESTROYs counted here are re-delivered later, NEWs are lost); peakQ: MiB queued
  on that socket at most (sampled every 0.25 s, 0.05 s during the flush); busy: s after the load
  ended that the consumer was still reading or using CPU (the last DESTROYs come with the GC or
  the flush).
CPU: utime+stime of each process (nfflowd: every stage and supervisord) from consumer start
  to idle after the step; µs/conn: per kernel connection (the target's unit: ≤ 2x ulogd2's);
  µs/ev and the per-process columns: per kernel event (2 per connection: NEW + DESTROY, whether
  or not the consumer subscribes to NEW); bound/s: connections/s at which the busiest single
  process would need a whole core (1e6 / (2 x its µs/ev))."""


def loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


# ------------------------------------------------------------------ main
def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--rates",
        default="5000,10000,20000,40000,max",
        help="connections/s per step; 'max' = as fast as the senders go",
    )
    p.add_argument("--seconds", type=float, default=4.0, help="load time per step")
    p.add_argument("--max-total", type=int, default=200_000, help="connections per step, at most")
    p.add_argument(
        "--modes",
        default="default,reliable",
        help="nfflowd passes: default, reliable, natrt (real-time NAT events: NEW read too)",
    )
    p.add_argument(
        "--ulogd",
        choices=("separate", "together", "off"),
        default="separate",
        help="ulogd2 in its own pass, alongside every nfflowd pass, or not at all",
    )
    p.add_argument("--ulogd-reliable", action="store_true", help="ulogd2 with reliable=1")
    p.add_argument("--rcvbuf", type=int, default=64 << 20, help="netlink receive buffer (both)")
    p.add_argument("--version", type=int, choices=(5, 9, 10), default=5, help="nfflowd export")
    p.add_argument("--mirror", choices=("screen", "none"), default="screen")
    p.add_argument("--senders", type=int, default=1, help="UDP sender processes")
    p.add_argument("--tcp-rate", type=int, default=0, help="TCP connections/s added to each step")
    p.add_argument("--gc-wait", type=float, default=1.5, help="s after the UDP timeout for GC")
    p.add_argument("--prefix", default="nfk-live-", help="lab namespace prefix")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--profile", default="", help="py-spy every nfflowd process into this dir")
    p.add_argument("--idle", type=float, default=0.0, help="s of idle CPU to measure per step")
    p.add_argument("--latency", action="store_true", help="DESTROY -> collector latency")
    return p.parse_args(argv)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    a = parse(argv)
    reason = labmod.available()
    if reason:
        print(f"bench_live: cannot run here: {reason}")
        return 1
    rates = [0 if r.strip() == "max" else int(r) for r in a.rates.split(",")]
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    ulogd_reason = ulogd_missing() if a.ulogd != "off" else None
    if ulogd_reason:
        print(f"ulogd2 pass skipped: {ulogd_reason}")
    ulogd_mode = "reliable" if a.ulogd_reliable else "default"
    passes: list[list[tuple[str, str]]] = [[("nfflowd", m)] for m in modes]
    if a.ulogd == "together" and not ulogd_reason:
        passes = [[*p, ("ulogd", ulogd_mode)] for p in passes]
    elif a.ulogd == "separate" and not ulogd_reason:
        passes.append([("ulogd", ulogd_mode)])
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored
        signal.signal(signum, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="nfk-live-"))
    lab, server = None, None
    consumers: list[Consumer] = []
    started = time.monotonic()
    lines: list[tuple[str, str]] = []
    profiles: list[str] = []
    latency_lines: list[str] = []
    idle_lines: list[str] = []
    projections: list[str] = []
    try:
        lab = labmod.up(a.prefix)
        for ns, rules in ((lab.client, CLIENT_RULES), (lab.fw, FW_RULES)):
            subprocess.run(
                ["ip", "netns", "exec", ns, "nft", "-f", "-"],
                input=rules,
                text=True,
                check=True,
                timeout=15,
            )
        server = role(["_server", "--addr", lab.server4], lab.server)
        print(
            f"load average {loadavg()}; lab {a.prefix}* up; steps of {a.seconds:g} s "
            f"(at most {a.max_total:,} conns); work dir {work}"
        )
        print(DELIVERY, flush=True)
        for n, spec in enumerate(passes):
            for rate in rates:
                d = work / f"p{n}-{rate or 'max'}"
                consumers = []
                for kind, mode in spec:
                    (d / kind).mkdir(parents=True)
                    consumers.append(
                        NfflowdRun(lab, d / kind, mode, a)
                        if kind == "nfflowd"
                        else UlogdRun(lab, d / kind, mode == "reliable", a)
                    )
                step = run_step(lab, rate, consumers, a)
                consumers = []
                for name in (k for k, v in step.items() if isinstance(v, dict) and "cpu" in v):
                    lines.append(show_step(name, step))
                    print(lines[-1][0], flush=True)
                    if name.startswith("nfflowd") and rate == rates[-1]:
                        projections.extend(projection(step, name))
                    if name in step.get("idle", {}):
                        idle_lines.append(
                            f"{name:<16} {rate or 'max':>7} {step['idle'][name]:6.2f}"
                        )
                    lat = step[name].pop("latency_ms", [])
                    if name.startswith("nfflowd") and a.latency:
                        seen = step[name].get("probe_destroys", 0)
                        lost = step[name].get("probe_missing", 0)
                        row = f"{name:<16} {rate or 'max':>7} {percentiles(lat)}"
                        latency_lines.append(f"{row} {seen:>9,} {lost:>7,}")
                for proc, top in step.get("profile", {}).items():
                    profiles.append(
                        f"{rate or 'max':>7} {proc:<12} "
                        + "; ".join(f"{fn} {share:.0%}" for fn, share in top[:6])
                    )
                (d / "step.json").write_text(json.dumps(step, indent=1, default=str))
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        for c in consumers:
            with contextlib.suppress(Exception):
                c.abort()
        if server is not None:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(5)
        if lab is not None:
            labmod.down(lab)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{DELIVERY}\n" + "\n".join(d for d, _ in lines))
    print(f"\n{CPU}\n" + "\n".join(c for _, c in lines))
    if projections:
        print("\nprojection (one ingest, one mirror, N correlators + M exporters):")
        print("\n".join(projections))
    if idle_lines:
        print("\nidle CPU, no traffic, % of one core (every process of the consumer):")
        print("\n".join(idle_lines))
    print("\nlatency: collector receive time of a connection's first record - its DESTROY, ms")
    print(
        f"{'consumer':<16} {'target':>7} {'p50':>6} {'p90':>6} {'p99':>6} {'max':>6}"
        f" {'DESTROYs':>9} {'missing':>7}"
    )
    print("\n".join(latency_lines))
    if profiles:
        print("\npy-spy, self time by function (share of each process's samples):")
        print("\n".join(profiles))
    print(f"{LEGEND}\ntotal wall time {time.monotonic() - started:.0f} s; load average {loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
