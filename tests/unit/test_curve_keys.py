"""``nfflowd keygen``: ZeroMQ certificate files, their modes, the copying instructions,
and the key checks ``check``/``start`` make for each side of a tcp:// link."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
import zmq.auth

from nfflowd.pipeline import curve


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_writes_two_keypairs_and_the_admitted_client(tmp_path: Path) -> None:
    d = tmp_path / "curve"
    res = subprocess.run(
        [sys.executable, "-m", "nfflowd.ops.cli", "keygen", str(d)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    names = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
    assert names == [
        "client.key",
        "client.key_secret",
        "clients/client.key",
        "server.key",
        "server.key_secret",
    ]
    # secrets only for the owner; the directory too (it holds both secrets)
    assert mode(d / "server.key_secret") == mode(d / "client.key_secret") == 0o600
    assert mode(d / "server.key") == mode(d / "clients" / "client.key") == 0o644
    assert mode(d) == 0o700
    # real keypairs in ZeroMQ's format: the public key derives from the secret one
    for name in ("server", "client"):
        public, secret = zmq.auth.load_certificate(d / f"{name}.key_secret")
        assert secret is not None and zmq.curve_public(secret) == public
        assert zmq.auth.load_certificate(d / f"{name}.key") == (public, None)
    server = zmq.auth.load_certificate(d / "server.key")[0]
    client = zmq.auth.load_certificate(d / "client.key")[0]
    assert server != client
    assert set(zmq.auth.load_certificates(d / "clients")) == {client}
    # the instructions name which file goes to which side
    out = res.stdout
    assert f"wrote {d}/server.key_secret  (secret, mode 0600)" in out
    receive, send = out.index("RECEIVE"), out.index("SEND")
    assert "server.key_secret, clients/client.key" in out[receive:send]
    assert "server.key, client.key_secret" in out[send:]
    assert "curve_dir /etc/nfflowd/curve" in out


def test_keygen_never_overwrites_keys(tmp_path: Path) -> None:
    curve.keygen(str(tmp_path))
    before = (tmp_path / "server.key_secret").read_bytes()
    with pytest.raises(curve.CurveError, match="exist already"):
        curve.keygen(str(tmp_path))
    assert (tmp_path / "server.key_secret").read_bytes() == before


def test_key_problems_per_side(tmp_path: Path) -> None:
    assert curve.problems(str(tmp_path), "receiver") != []  # nothing there yet
    curve.keygen(str(tmp_path))
    assert curve.problems(str(tmp_path), "receiver") == []
    assert curve.problems(str(tmp_path), "sender") == []
    # a sender host gets server.key and client.key_secret only: enough to send, not to receive
    sender = tmp_path / "fw"
    sender.mkdir()
    for name in ("server.key", "client.key_secret"):
        (sender / name).write_bytes((tmp_path / name).read_bytes())
        os.chmod(sender / name, 0o600)
    assert curve.problems(str(sender), "sender") == []
    missing = curve.problems(str(sender), "receiver")
    assert any("server.key_secret" in p for p in missing) and any("clients" in p for p in missing)
    # a secret readable by others, a public file where a secret one is needed, no client keys
    os.chmod(sender / "client.key_secret", 0o644)
    assert curve.problems(str(sender), "sender") == [
        f"{sender}/client.key_secret: readable by others (chmod 600)"
    ]
    (sender / "client.key_secret").write_bytes((tmp_path / "client.key").read_bytes())
    os.chmod(sender / "client.key_secret", 0o600)
    assert "not a CURVE secret certificate" in curve.problems(str(sender), "sender")[0]
    (tmp_path / "clients" / "client.key").unlink()
    assert curve.problems(str(tmp_path), "receiver") == [
        f"{tmp_path}/clients: no *.key files: every sender would be refused"
    ]
