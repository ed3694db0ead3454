"""The stages run from an installed wheel in a fresh venv, even from inside the source tree.

Proves the package-dir mapping: workers/ is installed as ``nfflowd.workers``
and no generic top-level ``workers`` module lands in site-packages.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.pipeline_harness import GOLDEN, ROOT, write_config


def run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert res.returncode == 0, f"{cmd} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_in_fresh_venv_runs_a_replay(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(ROOT),
        ],
        cwd=tmp_path,
    )
    wheels = list(dist.glob("nfflowd-*.whl"))
    assert len(wheels) == 1
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    run([py, "-m", "pip", "install", "-q", str(wheels[0])], cwd=tmp_path)
    # the stages are nfflowd.workers.*, and there is no top-level "workers" package
    probe = run(
        [
            py,
            "-c",
            (
                "import importlib.util as u, nfflowd.workers.ingest as i; "
                "print(i.__file__); print(u.find_spec('workers'))"
            ),
        ],
        cwd=tmp_path,
    )
    path, spec = probe.stdout.split()
    assert "site-packages/nfflowd/workers/ingest.py" in path and spec == "None"
    conf = write_config(tmp_path / "run")
    log = GOLDEN / "lab-events.log"
    # run from inside the source checkout: `python -m` would put its nfflowd/ (which has no
    # workers/) first on sys.path; the stages start in the run directory with -P instead
    res = run(
        [
            str(env_dir / "bin" / "nfflowd"),
            "-c",
            str(conf),
            "replay",
            "--rundir",
            str(tmp_path / "run"),
            str(log),
        ],
        cwd=ROOT,
        timeout=120,
    )
    lines = (tmp_path / "run" / "mirror.out").read_text().splitlines()
    expected = (GOLDEN / "lab-expected.csv").read_text().splitlines()
    assert len(lines) == len(expected) > 0
    assert "mirror" in res.stdout
