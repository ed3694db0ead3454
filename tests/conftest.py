"""Shared test policy.

Tests marked ``root`` need root, network namespaces and the kernel's conntrack.
Under CI (``CI=true``) they always run — a missing capability is a failure,
not a skip.  Outside CI they are skipped, with the reason, when the machine
cannot run them.
"""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import HealthCheck, settings

# No timing in tests: hypothesis' per-example deadline would make a busy 2-core CI
# machine fail property tests for being slow, not wrong.
settings.register_profile("nfflowd", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("nfflowd")

IN_CI = os.environ.get("CI", "").lower() == "true"


def root_capability_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, conntrack)"
    for tool in ("ip", "conntrack", "nft"):
        if shutil.which(tool) is None:
            return f"needs the {tool!r} program (make test installs it)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_CI:
        return
    reason = root_capability_missing()
    if reason is None:
        return
    marker = pytest.mark.skip(reason=f"outside CI: {reason}")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(marker)


@pytest.fixture(scope="session")
def lab_ready() -> None:
    """The NAT lab (nfflowd.lab) can run here; under CI=true a missing capability fails."""
    from nfflowd import lab as labmod

    reason = labmod.available()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"CI=true but the NAT lab cannot run: {reason}")
        pytest.skip(f"NAT lab unavailable: {reason}")
