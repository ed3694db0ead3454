"""Run the real `nfflowd` command against a private nfcapd and rsyslogd (shared by tests)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfflowd import topology
from nfflowd.conntrack.text import parse_line
from nfflowd.correlate.correlator import Correlator
from nfflowd.formats import flowtools_csv
from nfflowd.lab.events import generate
from nfflowd.messages import FlowRecord
from nfflowd.ops import control
from nfflowd.pipeline import supervision
from nfflowd.pipeline.stage import read_stats
from tests.addresses import txt

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "golden"


def write_config(
    rundir: Path,
    extra: str = "",
    *,
    collector_port: int | None = None,
    collector_address: str = "127.0.0.1",
    exaddr: str = "127.0.0.1",
    syslog_socket: str | None = None,
    screen: bool = True,
    screen_stderr: bool = False,
    screen_format: str | None = None,
    path: Path | None = None,
) -> Path:
    """A seed-style Config::General file for a daemon running in *rundir*: the screen
    dispatcher (mirror.out; ``format screen_format`` if given) unless ``screen=False``,
    a NetFlow v5 flow_send to our private collector (at *collector_address*, sent from
    *exaddr*: an address of this host) and a syslog dispatcher only when given, then
    *extra* (blocks).  Written to *path*, by default next to the run directory
    (``<rundir>.conf``)."""
    parts = []
    if collector_port is not None:
        parts.append(
            f"<flow_send>\n    args {exaddr}\n    args {collector_address}\n"
            f"    args {collector_port}\n</flow_send>\n"
        )
    dispatchers = (["screen"] if screen else []) + (["syslog"] if syslog_socket else [])
    parts.append("<ptee>\n  <conf>\n")
    parts += [f"    dispatchers {d}\n" for d in dispatchers]
    if screen:
        parts.append(
            "    <screen>\n      class Log::Dispatch::Screen\n"
            f"      stderr {int(screen_stderr)}\n      min_level debug\n"
            + (f"      format {screen_format}\n" if screen_format else "")
            + "    </screen>\n"
        )
    if syslog_socket:
        parts.append(
            "    <syslog>\n      class Log::Dispatch::Syslog\n      ident nfflowd\n"
            f"      facility local6\n      min_level debug\n      address {syslog_socket}\n"
            "    </syslog>\n"
        )
    parts.append("  </conf>\n</ptee>\n")
    # the coverage journal next to the run directory, never the host's /var/lib/nfflowd
    parts.append(f"<daemon>\n    rundir {rundir}\n    statedir {rundir}.state\n</daemon>\n")
    path = path or rundir.with_suffix(".conf")
    path.write_text("".join(parts) + extra)
    return path


def file_source(log: Path | str) -> str:
    """A ``<source>`` block reading a saved ``conntrack -E`` log."""
    return f"<source>\n  type file\n  path {log}\n</source>\n"


def idle_source(directory: Path) -> str:
    """A ``<source>`` reading an empty log (written in *directory*): a daemon with
    nothing to read."""
    empty = directory / "empty.log"
    empty.write_text("")
    return file_source(empty)


def netlink_source(netns: str, *settings: str) -> str:
    """A ``<source>`` block reading *netns*'s conntrack over netlink, with *settings*
    (lines such as ``"set_sysctls 1"``)."""
    lines = "".join(f"  {s}\n" for s in settings)
    return f"<source>\n  type netlink\n  netns {netns}\n{lines}</source>\n"


def export_block(
    exaddr: str, *collectors: tuple[int, int, *tuple[str, ...]], address: str = "127.0.0.1"
) -> str:
    """An ``<export>`` block: *exaddr*, and a collector on *address* for each
    ``(port, NetFlow version, setting lines...)``, e.g. ``(port, 9, "records triplet")``."""
    blocks = "".join(
        f"  <collector>\n    address {address}\n    port {port}\n    version {version}\n"
        + "".join(f"    {s}\n" for s in settings)
        + "  </collector>\n"
        for port, version, *settings in collectors
    )
    return f"<export>\n  exaddr {exaddr}\n{blocks}</export>\n"


def nfflowd(
    *args: str, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the real command line (`python -m nfflowd.ops.cli`)."""
    res = subprocess.run(
        [sys.executable, "-m", "nfflowd.ops.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, NFFLOWD_LOGLEVEL="INFO"),
        check=False,
    )
    if check and res.returncode != 0:
        raise AssertionError(
            f"nfflowd {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
        )
    return res


def replay(
    conf: Path, rundir: Path, log: Path | str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`nfflowd -c conf replay [args] --rundir rundir log` (the stages' report on stdout)."""
    return nfflowd("-c", str(conf), "replay", *args, "--rundir", str(rundir), str(log), check=check)


@contextlib.contextmanager
def daemon(conf: Path) -> Iterator[subprocess.CompletedProcess[str]]:
    """`nfflowd -c conf start` (its result), and `stop` however the block ends, even
    when start failed half-way."""
    try:
        yield nfflowd("-c", str(conf), "start")
    finally:
        nfflowd("-c", str(conf), "stop", check=False)


def csv_key(line: str) -> tuple[Any, ...]:
    """A syslog CSV line reduced to what it means: absolute times and the flow fields."""
    f = flowtools_csv.parse_line(line)
    end_ms = int(f["unix_secs"]) * 1000 + int(f["unix_nsecs"]) // 1_000_000
    base = end_ms - int(f["sysuptime"])
    return (
        base + int(f["first"]),
        base + int(f["last"]),
        f["srcaddr"],
        f["dstaddr"],
        int(f["srcport"]),
        int(f["dstport"]),
        int(f["prot"]),
        int(f["dpkts"]),
        int(f["doctets"]),
        f["exaddr"],
    )


#: The flow fields of a record read by nfdump (``parse_nfdump_line``) or of a JSON
#: mirror line (``json_lines.parse_line``): both use these names.
FLOW_FIELDS = ("src", "dst", "sport", "dport", "proto", "packets", "bytes")


def flow_fields(rec: dict[str, Any]) -> tuple[Any, ...]:
    """(src, dst, sport, dport, proto, packets, bytes) of an nfdump record or JSON line."""
    return tuple(rec[name] for name in FLOW_FIELDS)


def nfdump_key(rec: dict[str, Any]) -> tuple[Any, ...]:
    """(first ms, last ms, *flow_fields*) of an nfdump record or a JSON mirror line."""
    return (rec["first_ms"], rec["last_ms"], *flow_fields(rec))


def is_ipv4(text: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, text)
    except OSError:
        return False
    return True


def wait_all_running(rundir: Path | str, timeout: float = 20) -> dict[str, int]:
    """Until supervisord runs the four stages, all RUNNING; their pids."""
    rundir = Path(rundir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if control.is_running(str(rundir)):
            infos = supervision.processes(str(rundir))
            if len(infos) == 4 and all(p["statename"] == "RUNNING" for p in infos):
                return {p["name"]: p["pid"] for p in infos}
        time.sleep(0.1)
    raise AssertionError("stages did not all reach RUNNING")


# --- crash and outage tests: expected records, identities, stage killing ---------------

#: What identifies one flow record at the collector and in the mirror, whatever crashes
#: happened: (last ms, src, dst, sport, dport, proto, packets, bytes).  The start is
#: left out, as in nfflowd's own record identity: a restarted correlate has lost the
#: NEW events of acknowledged batches and takes the start from the DESTROY instead.
Ident = tuple[Any, ...]


def event_log(directory: Path, events: int, **options: Any) -> tuple[Path, int]:
    """A generated ``conntrack -E`` log of *events* lines (``nfflowd.lab.events.generate``
    with *options*), *directory*/events.log, and the number of records it must produce."""
    log = directory / "events.log"
    return log, generate(str(log), events, **options)


def expected_records(log: Path) -> list[FlowRecord]:
    """The flow records a saved ``conntrack -E`` log must produce (one correlator, no crash)."""
    corr = Correlator()
    with open(log, encoding="utf-8") as fh:
        events = [ev for line in fh if (ev := parse_line(line)) is not None]
    return corr.feed_all(events)


def record_ident(r: FlowRecord) -> Ident:
    return (r.last_ms, txt(r.src), txt(r.dst), r.sport, r.dport, r.proto, r.packets, r.octets)


def nfdump_ident(rec: dict[str, Any]) -> Ident:
    return nfdump_key(rec)[1:]


def csv_ident(line: str) -> Ident:
    """A flow-tools CSV line (screen), or a syslog message ending ``nfflowd: <line>``."""
    return csv_key(line.split(": ", 1)[1] if ": " in line else line)[1:9]


def csv_idents(lines: Iterable[str]) -> tuple[list[Ident], list[str]]:
    """The identities of the lines that parse, and the lines that do not (e.g. torn)."""
    good: list[Ident] = []
    bad: list[str] = []
    for line in lines:
        try:
            good.append(csv_ident(line))
        except (ValueError, IndexError):
            bad.append(line)
    return good, bad


@dataclass(frozen=True)
class Tally:
    """Records received vs expected, compared as multisets of identities."""

    expected: int
    received: int
    missing: int  # expected, never received
    duplicates: int  # received more often than expected
    unknown: int  # received, never expected (a corrupted or invented record)
    malformed: int  # lines that are no record at all (e.g. torn by a crash)
    sample: tuple[object, ...]  # a few missing identities and malformed lines

    @property
    def clean(self) -> bool:
        """Nothing missing, nothing corrupted (duplicates are judged separately)."""
        return not (self.missing or self.unknown or self.malformed)

    def line(self, where: str) -> str:
        pct = 100.0 * self.duplicates / max(1, self.expected)
        return (
            f"{where}: {self.received} received of {self.expected} expected, "
            f"{self.missing} missing, {self.duplicates} duplicates ({pct:.3f} %), "
            f"{self.unknown} unknown, {self.malformed} malformed"
        )


def tally(
    expected: Iterable[Ident], received: Iterable[Ident], malformed: Iterable[str] = ()
) -> Tally:
    want, got, bad = Counter(expected), Counter(received), list(malformed)
    missing = want - got
    extra = got - want
    unknown = sum(n for k, n in extra.items() if k not in want)
    return Tally(
        expected=sum(want.values()),
        received=sum(got.values()),
        missing=sum(missing.values()),
        duplicates=sum(extra.values()) - unknown,
        unknown=unknown,
        malformed=len(bad),
        sample=(*list(missing)[:5], *bad[:3]),
    )


def running_pid(rundir: Path | str, stage: str) -> int:
    """The pid of *stage* while supervisord reports it RUNNING (up >= startsecs), else 0."""
    rundir = str(rundir)
    if not os.path.exists(os.path.join(rundir, "supervisor.sock")):
        return 0
    try:
        infos = supervision.processes(rundir)
    except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
        return 0
    for p in infos:
        if p["name"] == stage and p["statename"] == "RUNNING":
            return int(p["pid"])
    return 0


def working_pid(rundir: Path | str, stage: str) -> int:
    """The pid of *stage* once that process has published its stats (it has counted its
    start and is at work: RUNNING alone may still be importing on a loaded machine), else 0."""
    pid = running_pid(rundir, stage)
    published = read_stats(str(rundir)).get(stage, {}).get("pid")
    return pid if pid and published == pid else 0


def mirror_lines(rundir: Path | str) -> list[str]:
    """Every line the screen dispatcher wrote (supervisord's mirror.out and its backups)."""
    rundir = Path(rundir)
    paths = [*sorted(rundir.glob("mirror.out.*"), reverse=True), rundir / "mirror.out"]
    # supervisord rotates by size, not at a line end: join the files, then split
    return "".join(p.read_text() for p in paths if p.exists()).splitlines()


def stage_token(rundir: Path | str, stage: str) -> str:
    """The token of *stage*'s latest notice (``stats``, ``eof``, ``final``; "" if none)."""
    return str(read_stats(str(rundir)).get(stage, {}).get("token", ""))


def stage_counters(rundir: Path | str, stage: str) -> dict[str, int]:
    """*stage*'s latest published counters (its stats file; {} before the first)."""
    return dict(read_stats(str(rundir)).get(stage, {}).get("counters", {}))


class Chaos:
    """SIGKILLs the stages of a running daemon, one about every *interval* seconds.

    Kills come in rounds, each stage once per round in an order drawn from
    ``random.Random(seed)``, so every stage is killed equally often and a failing
    run can be repeated with the printed seed.  Only a stage supervisord reports
    RUNNING is killed: one killed again before ``startsecs`` would count as a
    failed start and could end FATAL, which is another test's subject.
    """

    def __init__(
        self,
        rundir: Path | str,
        seed: int,
        *,
        interval: float = 1.0,
        stages: tuple[str, ...] = topology.STAGES,
    ) -> None:
        self.rundir = rundir
        self.seed = seed
        self.interval = interval
        self.stages = stages
        self.kills: Counter[str] = Counter()
        self.log: list[tuple[float, str]] = []  # (epoch s just before the kill, stage)

    def run(self, keep_going: Callable[[], bool], *, rounds: int | None = None) -> None:
        """Kill until *keep_going* says no (or after *rounds* rounds)."""
        rnd = random.Random(self.seed)
        done = 0
        while keep_going() and (rounds is None or done < rounds):
            order = list(self.stages)
            rnd.shuffle(order)
            for victim in order:
                pid = 0
                while keep_going() and not (pid := running_pid(self.rundir, victim)):
                    time.sleep(0.05)
                if not pid:
                    return
                at = time.time()
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.kills[victim] += 1
                self.log.append((at, victim))
                deadline = time.monotonic() + self.interval
                while keep_going() and time.monotonic() < deadline:
                    time.sleep(0.05)
            done += 1

    def summary(self) -> str:
        counts = ", ".join(f"{s} {self.kills[s]}" for s in self.stages)
        return f"seed {self.seed}: {sum(self.kills.values())} SIGKILLs ({counts})"


def wait_settled(
    count: Callable[[], int], target: int, *, timeout: float, quiet: float = 3.0
) -> int:
    """Wait until ``count()`` reaches *target*, or has not grown for *quiet* seconds
    (something is missing: the assertions say what); return the last count."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while last < target and time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.2)
        if (n := count()) != last:
            last, since = n, time.monotonic()
    return last


class PacedSyslog:
    """A syslog "daemon" on a unix datagram socket that reads at most *rate* lines/s.

    nfflowd acknowledges a batch end to end only once every dispatcher has
    delivered it, so a slow syslog paces the whole pipeline (backpressure): a
    replay then lasts about records / rate seconds whatever the machine's speed.
    The lines are kept as received (``<PRI>Mmm dd hh:mm:ss ident: line``).

    :meth:`down` makes it refuse messages (``shutdown(SHUT_RD)``: a send fails with
    EPIPE, as to a syslog daemon that is gone) while what it had accepted is still
    read; :meth:`up` binds a fresh socket at the same path (a restarted daemon).
    """

    def __init__(self, path: Path, rate: int) -> None:
        self.path = str(path)
        self.rate = rate
        self.lines: list[str] = []
        self._sock = self._bind()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self.path)
        sock.settimeout(0.2)
        return sock

    def _read(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            ahead = len(self.lines) / self.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(min(ahead, 0.05))
                continue
            with self._lock:
                try:
                    data = self._sock.recv(65536)
                except TimeoutError:
                    continue
            if not data:  # shut down (down()) and read to the end: until up()
                time.sleep(0.01)
                continue
            self.lines.append(data.decode(errors="replace"))

    def down(self) -> None:
        """Refuse new messages from now on; those already queued are still read."""
        self._sock.shutdown(socket.SHUT_RD)

    def up(self) -> None:
        """Accept messages again, on a new socket at the same path (after :meth:`down`)."""
        fresh = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        os.unlink(self.path)
        fresh.bind(self.path)
        fresh.settimeout(0.2)
        with self._lock:
            old, self._sock = self._sock, fresh
            old.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while data := old.recv(65536):  # what it accepted before down()
                    self.lines.append(data.decode(errors="replace"))
            old.close()

    def drain(self, quiet: float = 1.0) -> None:
        """Read at full speed until nothing has arrived for *quiet* seconds."""
        self.rate = 1 << 30
        wait_settled(lambda: len(self.lines), 1 << 62, timeout=60, quiet=quiet)

    def __enter__(self) -> PacedSyslog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class BackgroundReplay(subprocess.Popen[str]):
    """A replay whose stdout and stderr go to files next to its run directory: with a
    screen dispatcher it prints every flow line, more than a pipe nobody reads holds."""

    def __init__(self, cmd: list[str], out: Path) -> None:
        self.out_path, self.err_path = out.with_suffix(".stdout"), out.with_suffix(".stderr")
        with open(self.out_path, "w") as so, open(self.err_path, "w") as se:
            super().__init__(cmd, stdout=so, stderr=se, text=True)

    def communicate(
        self, input: str | None = None, timeout: float | None = None
    ) -> tuple[str, str]:
        self.wait(timeout)
        return self.out_path.read_text(), self.err_path.read_text()


def start_replay(conf: Path, rundir: Path, log: Path) -> BackgroundReplay:
    """`nfflowd replay` in the background (for tests that kill stages meanwhile)."""
    cmd = [
        sys.executable,
        "-m",
        "nfflowd.ops.cli",
        "-c",
        str(conf),
        "replay",
        "--rundir",
        str(rundir),
        str(log),
    ]
    return BackgroundReplay(cmd, rundir.parent / f"{rundir.name}-replay")


def end_replay(proc: BackgroundReplay, rundir: Path) -> None:
    """Kill a replay that is still running and stop its supervisord (a killed CLI's)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if (rundir / "supervisor.sock").exists() and control.is_running(str(rundir)):
        control.stop(str(rundir), timeout=30)


def wait_lines(path: Path, n: int, timeout: float = 15) -> None:
    """Until *path* (a mirror's file) has ``n`` lines, or *timeout* s (the caller's
    assertions then say what is missing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        time.sleep(0.1)


def fake_conntrack(tmp_path: Path, events: Path | None = None) -> tuple[Path, Path]:
    """A conntrack program: the listing (-L) is empty; the event stream is *events* (a
    saved ``conntrack -E`` log), then never ends."""
    pids = tmp_path / "program.pids"
    script = tmp_path / "fake-conntrack"
    play = f"cat {events}\n" if events else ""
    script.write_text(
        f'#!/bin/sh\ncase "$*" in *-L*) exit 0 ;; esac\necho $$ >> {pids}\n{play}exec sleep 300\n'
    )
    script.chmod(0o755)
    return script, pids
