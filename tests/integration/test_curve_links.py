"""A tcp:// link on loopback, opened by ``endpoints.open_socket`` as the stages open it:
CURVE end to end, unknown or keyless peers refused, logged and counted, and
``nfflowd check``/``start`` refusing a tcp link whose keys are missing."""

from __future__ import annotations

import logging
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth

from nfflowd.config.settings import LinkAddress, LinkSettings
from nfflowd.pipeline import curve, endpoints
from tests.pipeline_harness import idle_source, nfflowd, write_config

#: Generous: the machine is shared; nothing here asserts a duration.
WAIT_MS = 10_000


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    d = tmp_path / "curve"
    curve.keygen(str(d))
    return d


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    c: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield c
    c.destroy(linger=0)


def wait_for(predicate: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_MS / 1000
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def intruder(
    ctx: zmq.Context[zmq.Socket[bytes]],
    addr: str,
    keys: Path,
    pair: tuple[bytes, bytes] | None,
) -> zmq.Socket[bytes]:
    """A DEALER that knows the server's public key and has keypair *pair* (None: no CURVE)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if pair is not None:
        sock.curve_serverkey = zmq.auth.load_certificate(keys / "server.key")[0]
        sock.curve_publickey, sock.curve_secretkey = pair
    sock.connect(addr)
    return sock


def test_curve_link_admits_known_keys_only(
    tmp_path: Path,
    keys: Path,
    ctx: zmq.Context[zmq.Socket[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="nfflowd")
    run = tmp_path / "run"
    run.mkdir()
    addr = f"tcp://127.0.0.1:{free_tcp_port()}"
    links = LinkSettings((LinkAddress("events", addr),), str(keys))
    recv = endpoints.open_socket(ctx, str(run), "events", "receiver", links=links)
    assert recv.getsockopt(zmq.CURVE_SERVER) == 1 and recv.getsockopt(zmq.MECHANISM) == zmq.CURVE
    # the real sender, in its own context as in its own process: both ways work
    sctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        send = endpoints.open_socket(sctx, str(run), "events", "sender", links=links)
        send.send(b"batch 1")
        assert recv.poll(WAIT_MS) and recv.recv() == b"batch 1"
        recv.send(b"ack 1")
        assert send.poll(WAIT_MS) and send.recv() == b"ack 1"
        assert curve.refused_count(str(run), "events") == 0

        # a fresh key the receiver does not know: refused (ZAP), nothing delivered
        pair = zmq.curve_keypair()
        evil = intruder(ctx, addr, keys, pair)
        evil.send(b"forged batch")
        wait_for(lambda: curve.refused_count(str(run), "events") >= 1, "the ZAP refusal")
        # a peer without CURVE at all: refused too
        plain = intruder(ctx, addr, keys, None)
        plain.send(b"plain batch")
        before = curve.refused_count(str(run), "events")
        wait_for(lambda: curve.refused_count(str(run), "events") > before, "the second refusal")
        # the real sender still gets through, and it is the only thing that arrives
        send.send(b"batch 2")
        assert recv.poll(WAIT_MS) and recv.recv() == b"batch 2"
        assert not recv.poll(500)
        assert not evil.poll(0) and not plain.poll(0)
        logged = caplog.text
        assert "events: refused a peer: client key not admitted (ZAP status 400)" in logged
        # without CURVE: which side notices the mismatch first varies, the refusal does not
        assert re.search(
            r"events: refused a peer: (the peer does not speak CURVE|the peer "
            r"hung up during the handshake \(no CURVE\?\))",
            logged,
        )
        assert f"{pair[0].decode()} not in {keys}/clients" in logged and "peer 127.0.0.1" in logged
        refused = curve.refused_count(str(run), "events")
        assert (run / "events.refused").read_text() == f"{refused}\n"
        evil.close()
        plain.close()

        # admitting a sender is a file in clients/, read at the next handshake (no restart)
        (keys / "clients" / "new.key").write_text(f'curve\n    public-key = "{pair[0].decode()}"\n')
        admitted = intruder(ctx, addr, keys, pair)
        admitted.send(b"now admitted")
        assert recv.poll(WAIT_MS) and recv.recv() == b"now admitted"
        admitted.close()
        send.close()
    finally:
        sctx.destroy(linger=0)
    recv.close()


def test_context_destroy_ends_the_curve_threads(tmp_path: Path, keys: Path) -> None:
    """Stage.close() only destroys the context: the ZAP and monitor threads must end."""
    c: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    links = LinkSettings(
        (LinkAddress("flows.export", f"tcp://127.0.0.1:{free_tcp_port()}"),), str(keys)
    )
    sock = endpoints.open_socket(c, str(tmp_path), "flows.export", "receiver", links=links)
    assert sock.getsockopt(zmq.CURVE_SERVER) == 1
    ours = [t for t in threading.enumerate() if t.name.startswith("nfflowd-")]
    assert {t.name for t in ours} == {"nfflowd-zap", "nfflowd-monitor-flows.export"}
    c.destroy(linger=0)  # what Stage.close() does, sockets still open
    for t in ours:
        t.join(WAIT_MS / 1000)
        assert not t.is_alive(), t.name


def test_missing_keys_fail_at_open(tmp_path: Path, keys: Path) -> None:
    c: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        addr = f"tcp://127.0.0.1:{free_tcp_port()}"
        (keys / "client.key_secret").unlink()
        links = LinkSettings((LinkAddress("events", addr),), str(keys))
        with pytest.raises(curve.CurveError, match=r"client\.key_secret"):
            endpoints.open_socket(c, str(tmp_path), "events", "sender", links=links)
        with pytest.raises(curve.CurveError, match="without CURVE keys"):
            endpoints.open_socket(
                c,
                str(tmp_path),
                "events",
                "receiver",
                links=LinkSettings((LinkAddress("events", addr),)),
            )
    finally:
        c.destroy(linger=0)


def test_check_and_start_refuse_a_tcp_link_without_keys(tmp_path: Path) -> None:
    keys = tmp_path / "curve"
    links = (
        "<links>\n    <events>\n        address tcp://127.0.0.1:5701\n    </events>\n"
        f"    curve_dir {keys}\n</links>\n<daemon>\n    stages ingest\n</daemon>\n"
    )
    conf = write_config(tmp_path / "run", links + idle_source(tmp_path), screen=False)
    # no keys yet: check and start refuse
    res = nfflowd("-c", str(conf), "check", check=False)
    assert res.returncode == 1
    assert (
        f"error    link events: ingest sends to tcp://127.0.0.1:5701: {keys}/server.key"
        in res.stdout
    )
    assert "stages run on this host: ingest" in res.stdout
    res = nfflowd("-c", str(conf), "start", check=False)
    assert res.returncode == 1 and "not started" in res.stderr
    assert not (tmp_path / "run" / "supervisor.sock").exists()
    # with the sender's two files, check is content
    nfflowd("keygen", str(tmp_path / "all"))
    keys.mkdir()
    for name in ("server.key", "client.key_secret"):
        shutil.copy2(tmp_path / "all" / name, keys / name)
    res = nfflowd("-c", str(conf), "check", check=False)
    assert res.returncode == 0, res.stdout
    assert (
        f"ok       link events: ingest sends to tcp://127.0.0.1:5701, CURVE keys in {keys}"
        in res.stdout
    )
    # plain tcp is not an option: without curve_dir the configuration itself is refused
    conf.write_text(conf.read_text().replace(f"    curve_dir {keys}\n", ""))
    res = nfflowd("-c", str(conf), "check", check=False)
    assert res.returncode == 1 and "must be encrypted and authenticated" in res.stderr
