"""A private nfdump collector (``nfcapd``), on loopback or in a namespace, and what it stored.

Used by ``nfflowd demo``, the benchmarks and the tests: nfdump is the
independent judge of the NetFlow nfflowd sends.

Usage::

    with Nfcapd() as cap:                       # starts, waits until it listens
        cap.send(datagrams)                     # or: anything sends to cap.port
        rows = cap.records()                    # stops (flushes), then nfdump -r

``records()`` returns one dict per stored flow with the keys ``src``, ``dst``
(text, IPv6 compressed), ``sport``, ``dport`` (ICMP as type*256+code), ``proto``,
``packets``, ``bytes``, ``first_ms``, ``last_ms`` (epoch ms, exact).  ``totals()``
is what nfdump's statistics (``-s``) count: flows, packets and bytes, optionally of
the flows an nfdump filter selects.

How the data is made safe to read (nfcapd 1.7):

* "listening" = a UDP socket owned by the nfcapd process is bound to the port
  (``/proc/<pid>/fd`` inodes matched against ``/proc/net/udp{,6}``);
* before stopping, :meth:`sync` sends a sentinel datagram (version 0, which
  nfcapd counts as a bad packet and ignores) and waits until the socket's
  receive queue is empty: nfcapd handles datagrams one at a time, so all data
  queued before the sentinel has been processed.  (On SIGTERM nfcapd drops a
  datagram it has read but not yet processed; the sentinel takes that risk.)
* SIGTERM makes nfcapd close and rename its ``nfcapd.current.<pid>`` file to
  ``nfcapd.YYYYmmddHHMM``; all such files in the directory are read with
  ``nfdump -q -N -6 -o fmt:...`` under ``TZ=UTC`` (``%ts``/``%te`` have ms;
  ``-o csv`` has only seconds and 1.7.1's ``%ter`` prints ``ms % 100``).

Where loss happens: :class:`CollectorNetns` is a network namespace for a
collector alone (``Nfcapd(host=ns.address, netns=ns.name)``), so its kernel's
``Udp: RcvbufErrors`` counts exactly what the collector's socket dropped
(:meth:`CollectorNetns.rcvbuf_errors`: the tests assert it stays 0), and
:meth:`CollectorNetns.reject` takes the collector "down" (port unreachable) for
a while.  Its addresses are /30s of 10.254.0.0/16, a range no other lab uses.
"""

from __future__ import annotations

import calendar
import contextlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

#: nfdump output format: one flow per line, '|'-separated.
NFDUMP_FMT = "fmt:%ts|%te|%pr|%sa|%da|%sp|%dp|%pkt|%byt"
#: The summary line of ``nfdump -s ... -N`` (unscaled numbers).
SUMMARY = re.compile(r"^Summary: total flows: (\d+), total bytes: (\d+), total packets: (\d+),")
#: Names of the files nfcapd leaves after closing (nfcapd.YYYYmmddHHMM[SS]).
FINAL_FILE = re.compile(r"^nfcapd\.\d{12}(\d{2})?$")
SENTINEL = b"\0\0\0\0"  # netflow "version 0": ignored by nfcapd


class NfcapdError(RuntimeError):
    """nfcapd or nfdump misbehaved; the message includes nfcapd's log."""


def free_udp_port(host: str = "127.0.0.1") -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    return inodes


def udp_socket_state(pid: int, port: int) -> tuple[int, int] | None:
    """(rx_queue bytes, drops) of ``pid``'s UDP socket bound to ``port``, or None.

    Read from ``/proc/<pid>/net``: the tables of the process's own network namespace."""
    inodes = _socket_inodes(pid)
    for table in (f"/proc/{pid}/net/udp", f"/proc/{pid}/net/udp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as f:
            next(f)
            for line in f:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[9] in inodes:
                    return int(cols[4].split(":")[1], 16), int(cols[12])
    return None


def _parse_time_ms(text: str) -> int:
    """'YYYY-mm-dd HH:MM:SS.mmm' in UTC -> epoch ms."""
    day, clock = text.strip().split(" ")
    hms, ms = clock.split(".")
    t = time.strptime(f"{day} {hms}", "%Y-%m-%d %H:%M:%S")
    return calendar.timegm(t) * 1000 + int(ms)


def _port(text: str, proto: int) -> int:
    text = text.strip()
    if "." in text:  # nfdump prints ICMP's dst port as type.code
        icmp_type, code = text.split(".")
        return int(icmp_type) * 256 + int(code)
    return int(text)


def parse_nfdump_line(line: str) -> dict[str, Any]:
    """One line of ``nfdump -N -6 -o`` :data:`NFDUMP_FMT` as a record dict."""
    cols = line.split("|")
    if len(cols) != 9:
        raise NfcapdError(f"unexpected nfdump line: {line!r}")
    proto = int(cols[2])
    return {
        "src": str(ipaddress.ip_address(cols[3].strip())),
        "dst": str(ipaddress.ip_address(cols[4].strip())),
        "sport": _port(cols[5], proto),
        "dport": _port(cols[6], proto),
        "proto": proto,
        "packets": int(cols[7]),
        "bytes": int(cols[8]),
        "first_ms": _parse_time_ms(cols[0]),
        "last_ms": _parse_time_ms(cols[1]),
    }


class Nfcapd:
    """An nfcapd collecting on ``host``:``port`` into ``directory`` (temp dirs by default)."""

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        timeout: float = 10.0,
        nfcapd: str = "nfcapd",
        nfdump: str = "nfdump",
        extra_args: list[str] | None = None,
        netns: str | None = None,
        nice: int = 0,
    ) -> None:
        self.host = host
        self.nice = nice  # its scheduling priority: a collector host's nfcapd has a CPU
        self.netns = netns  # run in this namespace (ip netns exec); host is one of its addresses
        self.port = port or 0
        self.timeout = timeout
        self.nfcapd = nfcapd
        self.nfdump = nfdump
        self.extra_args = list(extra_args or [])  # e.g. ["-B", "8388608"] for benchmarks
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="nfb-nfcapd-"))
        self._log = tempfile.NamedTemporaryFile(prefix="nfb-nfcapd-", suffix=".log")  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None
        self._tx: socket.socket | None = None
        self._fixed_port = port is not None

    # -- lifecycle -------------------------------------------------------------
    def __enter__(self) -> Nfcapd:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def start(self) -> None:
        if shutil.which(self.nfcapd) is None:
            raise NfcapdError(f"{self.nfcapd} not found")
        self.directory.mkdir(parents=True, exist_ok=True)
        for attempt in range(5):
            if not self._fixed_port:  # a namespace of its own: NetFlow's usual port is free
                self.port = 2055 + attempt if self.netns else free_udp_port(self.host)
            cmd = [
                *(["ip", "netns", "exec", self.netns] if self.netns else []),
                *(["nice", "-n", str(self.nice)] if self.nice else []),
                self.nfcapd,
                "-b",
                self.host,
                "-p",
                str(self.port),
                "-w",
                str(self.directory),
                *self.extra_args,
            ]
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
            )
            if self._wait_listening():
                return
            if self._fixed_port or "in use" not in self.log() or attempt == 4:
                raise NfcapdError(f"nfcapd did not start listening: {cmd}\n{self.log()}")

    def _wait_listening(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if udp_socket_state(self.proc.pid, self.port) is not None:
                return True
            time.sleep(0.01)
        self._terminate()
        raise NfcapdError(
            f"nfcapd not listening on {self.port} after {self.timeout}s\n{self.log()}"
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _state(self) -> tuple[int, int]:
        assert self.proc is not None
        state = udp_socket_state(self.proc.pid, self.port)
        if state is None:
            raise NfcapdError(f"nfcapd's socket on port {self.port} is gone\n{self.log()}")
        return state

    def wait_drained(self) -> None:
        """Wait until nfcapd has read every datagram queued on its socket."""
        deadline = time.monotonic() + self.timeout
        while self._state()[0] != 0:
            if time.monotonic() > deadline:
                raise NfcapdError(f"nfcapd did not drain its socket in {self.timeout}s")
            time.sleep(0.005)

    def drops(self) -> int:
        """Datagrams the kernel dropped on nfcapd's socket (receive buffer full)."""
        return self._state()[1]

    def send(self, datagrams: Iterable[bytes], *, window: int = 32) -> None:
        """Send datagrams to nfcapd, pausing every ``window`` until it has read them."""
        if self._tx is None:
            fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            self._tx = socket.socket(fam, socket.SOCK_DGRAM)
        for i, d in enumerate(datagrams, 1):
            self._tx.sendto(d, (self.host, self.port))
            if i % window == 0:
                self.wait_drained()

    def sync(self) -> None:
        """Make sure everything sent to nfcapd so far has been processed."""
        self.send([SENTINEL])
        self.wait_drained()

    def stop(self) -> None:
        """Process everything sent so far, then SIGTERM (nfcapd closes its file)."""
        if not self.running:
            return
        self.sync()
        drops = self.drops()
        self._terminate()
        if drops:
            raise NfcapdError(f"nfcapd's socket dropped {drops} datagrams")

    def _terminate(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(self.timeout)
                raise NfcapdError(f"nfcapd ignored SIGTERM\n{self.log()}") from None

    def close(self) -> None:
        """Stop nfcapd if still running and remove temporary files."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(NfcapdError):
                self._terminate()
        if self._tx is not None:
            self._tx.close()
            self._tx = None
        self._log.close()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- reading ---------------------------------------------------------------
    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if FINAL_FILE.match(p.name))

    def _nfdump(self, *args: str) -> Iterator[str]:
        if self.running:
            self.stop()
        env = dict(os.environ, TZ="UTC")
        for path in self.files():
            res = subprocess.run(
                [self.nfdump, "-r", str(path), *args],
                capture_output=True,
                text=True,
                env=env,
                timeout=self.timeout * 6,
                check=False,
            )
            if res.returncode != 0:
                raise NfcapdError(f"nfdump -r {path} failed: {res.stderr}")
            # an empty file (nfcapd rotates every interval, busy or not) says so in words
            yield from (
                ln for ln in res.stdout.splitlines() if ln.strip() and ln != "No matching flows"
            )

    def rows(self, fmt: str) -> list[list[str]]:
        """Every stored flow as the '|'-separated columns of ``nfdump -o fmt`` (e.g. with the
        NAT fields ``%xsa %xda %xsp %xdp``); stops nfcapd first if running."""
        return [
            [c.strip() for c in ln.split("|")] for ln in self._nfdump("-q", "-N", "-6", "-o", fmt)
        ]

    def lines(self, fmt: str) -> Iterator[str]:
        """Every stored flow as the line ``nfdump -q -N -6 -o fmt`` prints (for readers of
        millions of records); stops nfcapd first if running."""
        return self._nfdump("-q", "-N", "-6", "-o", fmt)

    def records(self) -> list[dict[str, Any]]:
        """Every flow stored, in arrival order (stops nfcapd first if running)."""
        return [parse_nfdump_line(ln) for ln in self._nfdump("-q", "-N", "-6", "-o", NFDUMP_FMT)]

    def totals(self, nfdump_filter: str = "") -> dict[str, int]:
        """``flows``, ``packets`` and ``bytes`` as nfdump's statistics count them: the
        summary of ``nfdump -s proto -N [FILTER]``, summed over the files (stops nfcapd
        first if running).  No flow matching the filter: zeros."""
        out = {"flows": 0, "bytes": 0, "packets": 0}
        for ln in self._nfdump("-N", "-s", "proto", *([nfdump_filter] if nfdump_filter else [])):
            m = SUMMARY.match(ln)
            if m:
                for key, value in zip(("flows", "bytes", "packets"), m.groups(), strict=True):
                    out[key] += int(value)
        return out

    def stats(self) -> dict[str, int]:
        """``nfdump -I`` counters summed over the files (e.g. "Sequence failures")."""
        out: dict[str, int] = {}
        for ln in self._nfdump("-I"):
            key, _, value = ln.partition(":")
            with contextlib.suppress(ValueError):
                out[key.strip()] = out.get(key.strip(), 0) + int(value.strip())
        return out


#: Collector namespaces are numbered into /30 networks of 10.254.0.0/16 (private, and
#: used by no other lab): this host's end is .1, the namespace's .2.
COLLECTOR_NET = ipaddress.IPv4Network("10.254.0.0/16")
_COLLECTOR_SLOTS = COLLECTOR_NET.num_addresses // 4
_collector_count = 0
#: In a collector namespace: no ICMP rate limit (every datagram to a port nobody
#: listens on is refused, as on loopback, where the kernel never limits ICMP).
COLLECTOR_SYSCTLS = ("net.ipv4.icmp_ratemask=0",)


def _ip(*args: str, stdin: str | None = None) -> str:
    res = subprocess.run(
        ["ip", *args], input=stdin, capture_output=True, text=True, timeout=15, check=False
    )
    if res.returncode != 0:
        raise NfcapdError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def udp_counters(text: str) -> dict[str, int]:
    """The ``Udp:`` line of a ``/proc/net/snmp`` as {name: value} (``RcvbufErrors``, ...)."""
    rows = [ln.split()[1:] for ln in text.splitlines() if ln.startswith("Udp:")]
    if len(rows) != 2:
        raise NfcapdError(f"no Udp: lines in /proc/net/snmp: {text[:200]!r}")
    return {name: int(value) for name, value in zip(rows[0], rows[1], strict=True)}


class CollectorNetns:
    """A network namespace of its own for collectors, reached from here over a veth pair.

    Its kernel counts what its sockets drop: nothing else receives UDP in it, so
    :meth:`rcvbuf_errors` (``Udp: RcvbufErrors`` of its ``/proc/net/snmp``) is exactly
    the number of datagrams a collector's full receive buffer dropped.  Run a collector
    in it with ``Nfcapd(host=ns.address, netns=ns.name)`` and send to ``ns.address``
    from ``ns.source``.  The namespace starts with the host's defaults
    (``net.core.rmem_default``: a collector without ``-B`` has that buffer), ARP is
    replaced by permanent neighbour entries (an expiring entry queues, and may drop,
    datagrams where no counter of the collector's sees them) and ICMP is not rate
    limited (``icmp_ratemask 0``), so a datagram to a port nobody listens on is
    refused, reported to a connected sender by its next send or by ``SO_ERROR``, as on
    loopback.  :meth:`reject` makes a port answer "port unreachable" while the
    collector keeps its socket (a collector down, without losing what it had
    queued); :meth:`accept` ends that.  Deleted (with its veth pair) on exit.
    """

    def __init__(self, prefix: str = "nfc") -> None:
        global _collector_count
        _collector_count += 1
        self.name = f"{prefix}-{os.getpid()}-{_collector_count}"
        self.slot = (os.getpid() * 16 + _collector_count) % _COLLECTOR_SLOTS
        self.host_link = ""
        self.source = self.address = ""
        self._created = False

    def __enter__(self) -> CollectorNetns:
        try:
            self.create()
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def _free_slot(self) -> int:
        """A /30 no interface of this namespace uses (another test run may have one)."""
        used = set()
        for line in _ip("-4", "-o", "addr", "show").splitlines():
            addr = ipaddress.IPv4Interface(line.split()[3]).ip
            if addr in COLLECTOR_NET:
                used.add((int(addr) - int(COLLECTOR_NET.network_address)) // 4)
        for k in range(_COLLECTOR_SLOTS):
            slot = (self.slot + k) % _COLLECTOR_SLOTS
            if slot not in used and not os.path.exists(f"/sys/class/net/nfc{slot}"):
                return slot
        raise NfcapdError(f"every /30 of {COLLECTOR_NET} is in use")

    def create(self) -> None:
        self.slot = self._free_slot()
        base = int(COLLECTOR_NET.network_address) + 4 * self.slot
        self.source = str(ipaddress.IPv4Address(base + 1))
        self.address = str(ipaddress.IPv4Address(base + 2))
        self.host_link = f"nfc{self.slot}"
        _ip("netns", "add", self.name)
        self._created = True
        _ip("-n", self.name, "link", "set", "lo", "up")
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name", "c0", "netns", self.name)
        _ip("addr", "add", f"{self.source}/30", "dev", self.host_link)
        _ip("-n", self.name, "addr", "add", f"{self.address}/30", "dev", "c0")
        _ip("link", "set", self.host_link, "up")
        _ip("-n", self.name, "link", "set", "c0", "up")
        _ip("netns", "exec", self.name, "sysctl", "-q", "-w", *COLLECTOR_SYSCTLS)
        here = self._mac(["link", "show", self.host_link])
        there = self._mac(["-n", self.name, "link", "show", "c0"])
        perm = ("nud", "permanent")
        _ip("neigh", "replace", self.address, "lladdr", there, "dev", self.host_link, *perm)
        _ip("-n", self.name, "neigh", "replace", self.source, "lladdr", here, "dev", "c0", *perm)
        deadline = time.monotonic() + 5
        while "state UP" not in _ip("-n", self.name, "-o", "link", "show", "c0") or (
            "state UP" not in _ip("-o", "link", "show", self.host_link)
        ):
            if time.monotonic() > deadline:
                raise NfcapdError(f"veth {self.host_link} to {self.name} not up after 5 s")
            time.sleep(0.02)

    @staticmethod
    def _mac(args: list[str]) -> str:
        words = _ip("-o", *args).split()
        return words[words.index("link/ether") + 1]

    def delete(self) -> None:
        """Delete the namespace (its end of the veth pair takes ours with it)."""
        if self._created:
            subprocess.run(["ip", "netns", "del", self.name], check=False, timeout=15)
            self._created = False

    def snmp(self) -> dict[str, int]:
        """The namespace's UDP counters (``Udp:`` of its ``/proc/net/snmp``)."""
        return udp_counters(_ip("netns", "exec", self.name, "cat", "/proc/net/snmp"))

    def rcvbuf_errors(self) -> int:
        """Datagrams dropped in this namespace because a socket's receive buffer was full."""
        return self.snmp()["RcvbufErrors"]

    def reject(self, port: int) -> None:
        """Datagrams to *port* are answered "port unreachable" (the collector is down)."""
        rules = (
            "add table inet nfc_down\n"
            "add chain inet nfc_down in { type filter hook input priority 0; }\n"
            f"add rule inet nfc_down in udp dport {port} counter reject\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", self.name, "nft", "-f", "-"],
            input=rules,
            text=True,
            check=True,
            timeout=15,
        )

    def refused(self) -> int:
        """How many datagrams :meth:`reject`'s rule has refused so far."""
        listing = subprocess.run(
            ["ip", "netns", "exec", self.name, "nft", "list", "table", "inet", "nfc_down"],
            capture_output=True,
            text=True,
            check=True,
            timeout=15,
        ).stdout
        found = re.search(r"counter packets (\d+)", listing)
        if found is None:
            raise NfcapdError(f"no counter in the reject rule: {listing}")
        return int(found[1])

    def accept(self) -> int:
        """End :meth:`reject`; the number of datagrams it refused."""
        refused = self.refused()
        subprocess.run(
            ["ip", "netns", "exec", self.name, "nft", "delete", "table", "inet", "nfc_down"],
            check=True,
            timeout=15,
        )
        return refused
