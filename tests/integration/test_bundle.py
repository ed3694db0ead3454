"""The single-file bundle (`make bundle`) runs on a bare system ``python3``.

The bundle is built with the Makefile's own target (into a temporary directory),
then run as on a server that has none of the dependencies:
``env -i PATH=/usr/bin:/bin HOME=<tmp> SHIV_ROOT=<tmp> python3 -I nfflowd.pyz ...``
(no venv, no PYTHONPATH, no user site, not run from the source tree).  That
python3 must itself lack pyzmq, msgpack and supervisor, or the test would prove
nothing.  supervisord and the four stages are started as ``python3 -m ...`` by
the bundled CLI; that they find the bundle's packages is what is at stake here
(shiv's ``-E`` hands the extracted site-packages down in PYTHONPATH).  The
bundle's entry point (nfflowd.ops.bundle) is also tested in-process: it explains a
Python the compiled wheels were not built for instead of pyzmq's traceback.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import nfflowd
from nfflowd import topology
from nfflowd.lab.events import generate
from nfflowd.lab.nfcapd import Nfcapd
from nfflowd.ops import bundle as entry
from nfflowd.ops import control
from tests.needs import needs, skip_or_fail
from tests.pipeline_harness import (
    ROOT,
    csv_key,
    file_source,
    is_ipv4,
    nfdump_key,
    wait_all_running,
    write_config,
)

SYSTEM_PATH = "/usr/bin:/bin"
#: What the bundle carries and a bare system python3 must not have.
BUNDLED = ("zmq", "msgpack", "supervisor")

#: The tests that build and run the bundle need these (the entry point's own tests do not).
needs_tools = needs("make", "nfcapd", "nfdump")


def system_python() -> tuple[str, str]:
    """The bare ``python3`` on the system PATH and its X.Y; fails (CI) or skips if unusable."""
    problems: list[str] = []
    python = shutil.which("python3", path=SYSTEM_PATH)
    version = ""
    if python is None:
        problems.append(f"no python3 in {SYSTEM_PATH}")
    else:
        probe = subprocess.run(
            [python, "-I", "-c", "import sys; print(*sys.version_info[:2])"],
            env={"PATH": SYSTEM_PATH},
            capture_output=True,
            text=True,
            check=True,
        )
        major, minor = (int(x) for x in probe.stdout.split())
        version = f"{major}.{minor}"
        if (major, minor) < (3, 11):
            problems.append(f"{python} is Python {version}, the bundle needs >= 3.11")
        for module in BUNDLED:
            res = subprocess.run(
                [python, "-I", "-c", f"import {module}"],
                env={"PATH": SYSTEM_PATH},
                capture_output=True,
                check=False,
            )
            if res.returncode == 0:
                problems.append(f"{python} already has {module}: nothing would be proven")
    if problems:
        skip_or_fail("; ".join(problems))
    assert python is not None
    return python, version


class Bundle:
    """The built nfflowd.pyz, run by the bare python3 in an emptied environment."""

    def __init__(self, python: str, pyz: Path, work: Path) -> None:
        self.python = python
        self.pyz = pyz
        self.home = work / "home"
        self.shiv_root = work / "shiv"
        self.home.mkdir()
        self.shiv_root.mkdir()

    def env(self) -> dict[str, str]:
        return {"PATH": SYSTEM_PATH, "HOME": str(self.home), "SHIV_ROOT": str(self.shiv_root)}

    def run(self, *args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [self.python, "-I", str(self.pyz), *args],
            cwd=cwd,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert res.returncode == 0, (
            f"nfflowd.pyz {args} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
        )
        return res

    def site_packages(self) -> Path:
        """The one site-packages shiv extracted (below SHIV_ROOT)."""
        found = list(self.shiv_root.glob("nfflowd.pyz_*/site-packages"))
        assert len(found) == 1, found
        return found[0]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    python, version = system_python()
    work = tmp_path_factory.mktemp("bundle")
    # the Makefile's target itself, with this test's interpreter as the builder (-o: never
    # rebuild the venv from here) and the bare python3's version as the target
    res = subprocess.run(
        [
            "make",
            "-C",
            str(ROOT),
            "-o",
            f"{sys.prefix}/.installed",
            "bundle",
            f"VENV={sys.prefix}",
            f"PY={sys.executable}",
            f"DIST={work / 'dist'}",
            f"BUNDLE_BUILD={work / 'build'}",
            f"BUNDLE_PYTHON={version}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, f"make bundle -> {res.returncode}\n{res.stdout}\n{res.stderr}"
    pyz = work / "dist" / "nfflowd.pyz"
    assert pyz.is_file()
    assert pyz.read_bytes().startswith(f"#!/usr/bin/env python{version}\n".encode())
    return Bundle(python, pyz, work)


def generated_log(path: Path) -> int:
    """A small generated event log (NEW/DESTROY interleaved, IPv4 and IPv6); its record count."""
    return generate(str(path), 600, seed=11, open_conns=40)


def mirrored(rundir: Path) -> list[str]:
    out = rundir / "mirror.out"
    return out.read_text().splitlines() if out.exists() else []


def assert_collector_matches_mirror(cap: Nfcapd, lines: list[str]) -> None:
    """nfcapd stored exactly the IPv4 records of the mirror (NetFlow v5 carries IPv4 only)."""
    v4 = Counter(k[:9] for k in map(csv_key, lines) if is_ipv4(str(k[2])))
    got = Counter(nfdump_key(r) for r in cap.records())
    assert 0 < sum(v4.values()) < len(lines)  # both families in the log
    assert got == v4


@pytest.mark.slow
@needs_tools
@pytest.mark.timeout(900)
def test_bundle_replays_into_a_collector_with_the_bare_system_python(
    bundle: Bundle, tmp_path: Path
) -> None:
    res = bundle.run("version", cwd=tmp_path)
    assert res.stdout == f"nfflowd {nfflowd.__version__}\n"
    site = bundle.site_packages()
    assert (site / "nfflowd" / "workers" / "export.py").is_file()
    assert not (bundle.home / ".shiv").exists()  # SHIV_ROOT, not ~/.shiv

    log = tmp_path / "events.log"
    expected = generated_log(log)
    rundir = tmp_path / "run"
    with Nfcapd() as cap:
        conf = write_config(rundir, collector_port=cap.port)
        res = bundle.run("-c", str(conf), "replay", "--rundir", str(rundir), str(log), cwd=tmp_path)
        assert re.search(rf"^export .*\brecords={expected}\b", res.stdout, re.M), res.stdout
        lines = mirrored(rundir)
        assert len(lines) == expected
        assert_collector_matches_mirror(cap, lines)


@pytest.mark.slow
@needs_tools
@pytest.mark.timeout(900)
def test_bundle_start_check_stop_as_a_daemon(bundle: Bundle, tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    expected = generated_log(log)
    rundir = tmp_path / "run"
    with Nfcapd() as cap:
        conf = str(write_config(rundir, file_source(log), collector_port=cap.port))
        res = bundle.run("-c", conf, "check", cwd=tmp_path)
        assert re.search(r"^ok +configuration .* is valid$", res.stdout, re.M), res.stdout
        assert not re.search(r"^error ", res.stdout, re.M), res.stdout
        assert "daemon   not running" in res.stdout
        try:
            bundle.run("-c", conf, "start", cwd=tmp_path)
            pids = wait_all_running(rundir, timeout=60)
            site = str(bundle.site_packages())
            for stage, pid in pids.items():
                # each stage is the bare python3, with the bundle's compiled pyzmq loaded
                exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
                assert os.path.realpath(exe) == os.path.realpath(bundle.python), stage
                maps = Path(f"/proc/{pid}/maps").read_text()
                assert f"{site}/zmq/backend/" in maps, stage
            res = bundle.run("-c", conf, "check", cwd=tmp_path)
            stages = re.findall(r"^stage +(\w+) +RUNNING ", res.stdout, re.M)
            assert sorted(stages) == sorted(topology.STAGES)
            deadline = time.monotonic() + 120
            while len(mirrored(rundir)) < expected and time.monotonic() < deadline:
                time.sleep(0.2)
            bundle.run("-c", conf, "stop", cwd=tmp_path)
        finally:
            if control.is_running(str(rundir)):
                control.stop(str(rundir), timeout=60)
        assert not control.is_running(str(rundir))
        lines = mirrored(rundir)
        assert len(lines) == expected
        assert_collector_matches_mirror(cap, lines)


def test_entry_point_explains_a_python_the_bundle_was_not_built_for(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # what a cp311 pyzmq does under another Python: its compiled backend does not import
    monkeypatch.setitem(sys.modules, "zmq", None)
    assert entry.main(["version"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "compiled modules do not load" in captured.err and "zmq: " in captured.err
    assert f"BUNDLE_PYTHON={sys.version_info.major}.{sys.version_info.minor}\n" in captured.err


def test_entry_point_is_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert entry.main(["version"]) == 0
    assert capsys.readouterr().out == f"nfflowd {nfflowd.__version__}\n"
