"""A private rsyslogd for tests: its own socket, config, pid file and work directory.

It never touches the system's syslog: imuxsock's system socket is off
(``SysSock.Use="off"``), the only inputs are a unix socket under the temp
directory and, on request, imudp / imtcp on 127.0.0.1 ports picked at random.

Files it writes (rsyslog templates)::

    local6.log   local6.* only, "%syslogtag%%msg%" -> exactly "nfflowd: <line>"
    other.log    every facility but local6 (proves the facility filter), "full" template
    all.log      everything, "full" template: "PRI facility.severity host prog|msg"
    syslog       everything, as a distribution's /var/log/syslog has it (rsyslog's
                 RSYSLOG_TraditionalFileFormat: "Dec  6 10:00:00 host nfflowd: <line>")

Use::

    with RsyslogHarness(tmp_path, udp=True) as rs:
        ...send to rs.socket_path or udp://127.0.0.1:{rs.udp_port}...
        assert rs.lines(3) == ["nfflowd: a", "nfflowd: b", "nfflowd: c"]
        rs.stop(); ...; rs.start()       # same socket path and ports
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

RSYSLOGD = "rsyslogd"

#: "PRI facility.severity HOSTNAME PROGRAMNAME|MSG" (MSG keeps rsyslog's leading space)
FULL = (
    "%pri% %syslogfacility-text%.%syslogseverity-text% %hostname% %programname%"
    "|%msg:::drop-last-lf%\\n"
)
CONFIG = """\
global(workDirectory="{work}" net.enableDNS="off")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{socket}" CreatePath="on" RateLimit.Interval="0")
{extra_inputs}
template(name="msgonly" type="string"
         string="%syslogtag%%msg:::sp-if-no-1st-sp%%msg:::drop-last-lf%\\n")
template(name="full" type="string" string="{full}")
local6.* action(type="omfile" file="{dir}/local6.log" template="msgonly")
*.*;local6.none action(type="omfile" file="{dir}/other.log" template="full")
*.* action(type="omfile" file="{dir}/all.log" template="full")
*.* action(type="omfile" file="{dir}/syslog" template="RSYSLOG_TraditionalFileFormat")
"""
UDP_INPUT = """\
module(load="imudp")
input(type="imudp" address="127.0.0.1" port="{port}" RateLimit.Interval="0")
"""
TCP_INPUT = """\
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{port}")
"""


def free_port(kind: int) -> int:
    """A 127.0.0.1 port nobody uses right now (UDP or TCP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_bound(proto: str, port: int) -> bool:
    """Is 127.0.0.1:port bound (UDP) or listening (TCP), per /proc/net/{udp,tcp}?"""
    want = f"0100007F:{port:04X}"
    with open(f"/proc/net/{proto}") as fh:
        for row in fh.readlines()[1:]:
            fields = row.split()
            if fields[1] == want and (proto == "udp" or fields[3] == "0A"):
                return True
    return False


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class RsyslogHarness:
    def __init__(self, directory: Path, *, udp: bool = False, tcp: bool = False) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.work = self.dir / "work"
        self.work.mkdir(exist_ok=True)
        self.socket_path = str(self.dir / "log.sock")
        self.conf = self.dir / "rsyslog.conf"
        self.pidfile = self.dir / "rsyslogd.pid"
        self.local6_log = self.dir / "local6.log"
        self.other_log = self.dir / "other.log"
        self.all_log = self.dir / "all.log"
        self.syslog_file = self.dir / "syslog"
        self.output = self.dir / "rsyslogd.out"
        self.udp_port = free_port(socket.SOCK_DGRAM) if udp else None
        self.tcp_port = free_port(socket.SOCK_STREAM) if tcp else None
        extra = ""
        if self.udp_port is not None:
            extra += UDP_INPUT.format(port=self.udp_port)
        if self.tcp_port is not None:
            extra += TCP_INPUT.format(port=self.tcp_port)
        self.conf.write_text(
            CONFIG.format(
                work=self.work, socket=self.socket_path, dir=self.dir, extra_inputs=extra, full=FULL
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> str | None:
        """None when rsyslogd can be run, else why not."""
        return None if shutil.which(RSYSLOGD) else "needs rsyslogd (apt-get install rsyslog)"

    @property
    def udp_address(self) -> str:
        return f"udp://127.0.0.1:{self.udp_port}"

    @property
    def tcp_address(self) -> str:
        return f"tcp://127.0.0.1:{self.tcp_port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start rsyslogd and wait until all its inputs accept messages."""
        if self.proc is not None:
            raise RuntimeError("rsyslogd already running")
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited ({self.proc.returncode}): {self.log_text()}")
            if not os.path.exists(self.socket_path):
                return False
            if self.udp_port is not None and not port_bound("udp", self.udp_port):
                return False
            return self.tcp_port is None or port_bound("tcp", self.tcp_port)

        try:
            wait_until(ready, timeout, f"rsyslogd to open {self.socket_path}")
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (SIGKILL after *timeout*); the socket file is gone afterwards."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if os.path.exists(self.socket_path):  # a killed rsyslogd leaves it behind
            os.unlink(self.socket_path)

    def log_text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    @staticmethod
    def _read(path: Path) -> list[str]:
        if not path.exists():
            return []
        text = path.read_text(errors="replace")
        # A line is complete once its newline is written.
        return text.split("\n")[:-1]

    def lines(self, n: int, timeout: float = 10.0) -> list[str]:
        """Every local6 line, once there are at least *n* (TimeoutError otherwise)."""
        got: list[str] = []

        def enough() -> bool:
            nonlocal got
            got = self._read(self.local6_log)
            return len(got) >= n

        try:
            wait_until(enough, timeout, f"{n} lines in {self.local6_log}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; got {len(got)}: {got[-5:]}") from None
        return got

    def other_lines(self) -> list[str]:
        return self._read(self.other_log)

    def all_lines(self) -> list[str]:
        return self._read(self.all_log)

    def __enter__(self) -> RsyslogHarness:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
