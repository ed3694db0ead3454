"""The test tree's own rule: no test module imports another test module.

Shared helpers live in ``tests/*.py`` modules that are not tests (``needs``,
``pipeline_harness``, ``udp_ports``...): a test that imports another test's module
runs that module's import-time code and ties the two together, and pytest without
``__init__`` files cannot tell two test modules of one basename apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_test_module_imports_another() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("tests.") and name.split(".")[-1].startswith("test_"):
                    offenders.append(f"{path.relative_to(TESTS)}:{node.lineno}: {name}")
    assert offenders == []
