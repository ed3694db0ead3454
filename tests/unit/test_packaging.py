"""Every package of the source tree is installed: pyproject.toml lists them one by one
(the stage programs in workers/ are installed as nfflowd.workers), and a package left
out only shows in a wheel or the bundle, as a ModuleNotFoundError at run time."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_under_nfflowd_is_listed() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "nfflowd").rglob("__init__.py")
    }
    assert found - listed == set(), "packages missing from pyproject.toml"
    assert {"nfflowd.workers", "nfflowd.deploy"} <= listed
