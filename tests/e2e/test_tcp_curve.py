"""Two hosts (network namespaces), one pipeline: the ``events`` link over tcp:// with CURVE.

Host A (a firewall, ``<daemon> stages ingest``) reads a generated conntrack log and
sends its events to host B (``correlate export mirror``) over 203.0.113.0/24.  Each
runs the real ``nfflowd start`` in its own namespace with its own run directory and
only the key files ``nfflowd keygen`` says its side needs.  Every record must reach
B's mirror.  Then raw ZeroMQ peers on A try the link: one with a key B does not
know and one without CURVE are refused (nothing they send reaches the mirror, B
logs and counts the refusals, ``check`` reports them); a peer with the admitted
key, sending the same kind of batch, gets through — proof that the probe would
have seen an accepted forgery.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfflowd.lab.events import generate
from nfflowd.ops import control
from nfflowd.pipeline import curve, supervision
from tests.needs import needs

PREFIX = f"nfcrv{os.getpid() % 100000}"
NS_A, NS_B = f"{PREFIX}a", f"{PREFIX}b"
ADDR_A, ADDR_B = "203.0.113.21", "203.0.113.22"
LINK = f"tcp://{ADDR_B}:5701"
WAIT_S = 240.0  # generous: a shared 2-core machine; no duration is asserted

#: Run in host A's namespace: a raw DEALER sends one EventBatch whose only event is a
#: connection from MARKER, then reports whether the receiver ever answered.
PROBE = r"""
import sys, time, zmq, zmq.auth
from nfflowd.pipeline import codec
from nfflowd.messages import EventBatch, Payload
addr, mode, keydir, marker = sys.argv[1:5]
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.linger = 0
if mode != "plain":
    s.curve_serverkey = zmq.auth.load_certificate(keydir + "/server.key")[0]
    if mode == "admitted":
        pair = zmq.auth.load_certificate(keydir + "/client.key_secret")
        s.curve_publickey, s.curve_secretkey = pair
    else:
        s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
s.connect(addr)
line = (
    f"[1764000100.000000]\t[DESTROY] udp      17 src={marker} dst=198.51.100.7 sport=4242 "
    f"dport=53 packets=1 bytes=60 src=198.51.100.7 dst=203.0.113.21 sport=53 dport=4242 "
    f"packets=1 bytes=90 id={int(marker.rsplit('.', 1)[1]) + 4000000000}\n"
).encode()
s.send(codec.encode(EventBatch("ingest", time.time_ns(), 1, 0, Payload.TEXT, line, 1, "x", 1)))
print("answered" if s.poll(8000) else "silent")
ctx.destroy(0)
"""


def run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def in_ns(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A command in namespace *ns*; Python ones with the test's interpreter."""
    return run("ip", "netns", "exec", ns, *args, check=check)


def nfflowd_in(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return in_ns(
        ns,
        "env",
        "NFFLOWD_LOGLEVEL=INFO",
        sys.executable,
        "-m",
        "nfflowd.ops.cli",
        *args,
        check=check,
    )


def _delete_namespaces() -> None:
    for ns in (NS_A, NS_B):
        pids = run("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:  # only processes in our own namespaces: ours
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def two_hosts() -> Iterator[None]:
    """A and B joined by a veth pair on 203.0.113.0/24; deleted whatever happens."""
    _delete_namespaces()  # a previous run of this pid that died hard
    try:
        for ns in (NS_A, NS_B):
            run("ip", "netns", "add", ns)
            in_ns(ns, "ip", "link", "set", "lo", "up")
        in_ns(
            NS_A, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", NS_B
        )
        for ns, addr in ((NS_A, ADDR_A), (NS_B, ADDR_B)):
            in_ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")
            in_ns(ns, "ip", "link", "set", "eth0", "up")
        in_ns(NS_A, "ping", "-c", "1", "-W", "5", ADDR_B)
        yield
    finally:
        _delete_namespaces()


def host_config(path: Path, rundir: Path, keys: Path, stages: str, extra: str = "") -> Path:
    path.write_text(
        f"<daemon>\n    rundir {rundir}\n    statedir {rundir}.state\n    stages {stages}\n"
        "</daemon>\n"
        f"<links>\n    curve_dir {keys}\n    <events>\n        address {LINK}\n"
        "    </events>\n</links>\n"
        "<ptee>\n  <conf>\n    dispatchers screen\n    <screen>\n"
        "      class Log::Dispatch::Screen\n      stderr 0\n      min_level debug\n"
        "    </screen>\n  </conf>\n</ptee>\n" + extra
    )
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for(what: str, predicate: object, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def programs(rundir: Path) -> dict[str, str]:
    return {p["name"]: p["statename"] for p in supervision.processes(str(rundir))}


@pytest.mark.root
@needs("ip", "ping")
@pytest.mark.timeout(600)
def test_events_link_across_hosts_with_curve(tmp_path: Path, two_hosts: None) -> None:
    log = tmp_path / "events.log"
    expected = generate(str(log), 6000, open_conns=200)
    # keys: generated once, then each host gets only what its side needs
    everything = tmp_path / "keygen"
    out = run(sys.executable, "-m", "nfflowd.ops.cli", "keygen", str(everything)).stdout
    assert "server.key, client.key_secret" in out
    keys_a, keys_b = tmp_path / "keys-a", tmp_path / "keys-b"
    for keys, names in (
        (keys_a, ("server.key", "client.key_secret")),
        (keys_b, ("server.key_secret", "clients/client.key")),
    ):
        for name in names:
            (keys / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(everything / name, keys / name)
    run_a, run_b = tmp_path / "run-a", tmp_path / "run-b"
    conf_a = host_config(
        tmp_path / "a.conf",
        run_a,
        keys_a,
        "ingest",
        f"<source>\n    type file\n    path {log}\n</source>\n",
    )
    conf_b = host_config(tmp_path / "b.conf", run_b, keys_b, "correlate export mirror")
    mirror_out = run_b / "mirror.out"
    started: list[tuple[str, Path]] = []
    try:
        for ns, conf in ((NS_B, conf_b), (NS_A, conf_a)):  # the receiver first
            nfflowd_in(ns, "-c", str(conf), "start")
            started.append((ns, conf))
        wait_for(
            "both hosts' stages RUNNING",
            lambda: (
                programs(run_a) == {"ingest": "RUNNING"}
                and programs(run_b) == dict.fromkeys(("correlate", "export", "mirror"), "RUNNING")
            ),
        )
        # every record crosses: A's ingest -> tcp+CURVE -> B's correlate -> B's mirror
        wait_for(f"{expected} flow lines on B", lambda: len(lines(mirror_out)) >= expected)
        got = lines(mirror_out)
        assert len(got) == expected and len(set(got)) == expected
        # the link really is tcp between the namespaces, not an ipc file
        assert not (run_a / "events.ipc").exists() and not (run_b / "events.ipc").exists()
        assert f"{ADDR_B}:5701" in in_ns(NS_A, "ss", "-tn", "state", "established").stdout
        assert (
            "events: CURVE handshake with the receiver succeeded"
            in (run_a / "ingest.log").read_text()
        )
        assert (
            "events: CURVE handshake with a sender succeeded"
            in (run_b / "correlate.log").read_text()
        )
        assert curve.refused_count(str(run_b), "events") == 0

        # a peer with a key B does not know, then one without CURVE: refused
        for mode, marker, needed in (("fresh", "10.66.0.1", 1), ("plain", "10.66.0.2", 2)):
            probe = in_ns(NS_A, sys.executable, "-c", PROBE, LINK, mode, str(keys_a), marker)
            assert probe.stdout.strip() == "silent", probe.stderr
            wait_for(
                f"{mode}: refusal counted",
                lambda n=needed: curve.refused_count(str(run_b), "events") >= n,
            )
        correlate_log = (run_b / "correlate.log").read_text()
        assert "events: refused a peer: client key not admitted (ZAP status 400)" in correlate_log
        assert f"peer {ADDR_A}: refused: client key" in correlate_log
        # without CURVE: which side notices the mismatch first varies, the refusal does not
        assert re.search(
            r"events: refused a peer: (the peer does not speak CURVE|the peer "
            r"hung up during the handshake \(no CURVE\?\))",
            correlate_log,
        )
        check = nfflowd_in(NS_B, "-c", str(conf_b), "check", check=False).stdout
        refused = curve.refused_count(str(run_b), "events")
        assert f"warning  link events: {refused} connection attempts refused" in check

        # the same probe with the admitted key is answered and its record arrives, after
        # which nothing of the refused probes can still be on its way
        probe = in_ns(NS_A, sys.executable, "-c", PROBE, LINK, "admitted", str(keys_a), "10.66.0.3")
        assert probe.stdout.strip() == "answered", probe.stderr
        wait_for(
            "the admitted probe's record",
            lambda: any("10.66.0.3" in line for line in lines(mirror_out)),
        )
        text = mirror_out.read_text()
        assert "10.66.0.1" not in text and "10.66.0.2" not in text

        # stop works on hosts that run part of the pipeline
        for ns, conf in reversed(started):
            assert "stopped" in nfflowd_in(ns, "-c", str(conf), "stop").stdout
        started.clear()
        assert not control.is_running(str(run_a)) and not control.is_running(str(run_b))
    finally:
        for ns, conf in started:
            nfflowd_in(ns, "-c", str(conf), "stop", check=False)
