"""Shared test policy.

Tests marked ``root`` need root, network namespaces and the kernel's conntrack.
Under CI (``CI=true``) they always run — a missing capability is a failure,
not a skip.  Outside CI they are skipped, with the reason, when the machine
cannot run them.  The same rule for a test that needs a program, root or IPv6
is spelled in tests/needs.py.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from tests.needs import IN_CI, root_capability_missing, skip_or_fail

# No timing in tests: hypothesis' per-example deadline would make a busy 2-core CI
# machine fail property tests for being slow, not wrong.
settings.register_profile("nfflowd", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("nfflowd")


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
        skip_or_fail(f"the NAT lab cannot run: {reason}")
