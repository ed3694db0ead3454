"""Entry point of the single-file bundle (``make bundle``: a shiv zipapp, ``nfflowd.pyz``).

The bundle carries compiled wheels (pyzmq, msgpack, PyYAML) for one Python
version, architecture and glibc baseline.  Run by another Python, pyzmq fails deep inside its
import with advice about source trees; this entry point says what is wrong
instead, then is the ordinary command line.  How supervisord and the stages
find the bundle's packages is not here: shiv's ``-E`` (set by the Makefile)
exports the extracted site-packages in PYTHONPATH before this runs, and every
``python3 -m ...`` started from here inherits it.
"""

from __future__ import annotations

import importlib
import platform
import sys

#: Compiled modules the stages cannot run without (msgpack and PyYAML fall back to pure Python).
COMPILED = ("zmq",)


def unloadable() -> str | None:
    """Why the bundle's compiled modules do not load in this interpreter, or None."""
    for name in COMPILED:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
            return f"{name}: {type(exc).__name__}: {first}"
    return None


def main(argv: list[str] | None = None) -> int:
    problem = unloadable()
    if problem is not None:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        sys.stderr.write(
            f"nfflowd: this bundle's compiled modules do not load in Python "
            f"{platform.python_version()} ({sys.executable}; {problem}).\n"
            "It was built for the Python its first line names (#!...); build one for this "
            f"Python with: make bundle BUNDLE_PYTHON={version}\n"
        )
        return 1
    from nfflowd.ops import cli

    return cli.main(argv)
