"""The ``<who>`` block: where ``nfflowd who`` looks for the answer (nfflowd.ops.who).

::

    <who>
        from   /var/lib/nfcapd/fw1           # repeatable: an nfcapd directory or file,
        from   /var/log/nfflowd/flows.json   # or a JSON-lines file (rotated, .gz too)
        window 5                             # seconds either side of --at
        nfdump /usr/bin/nfdump               # the program that reads nfcapd files
    </who>

Without ``from`` the command reads what the rest of the configuration implies (the
``format json`` screen dispatchers' files in the run directory).  Paths must be
absolute: the command may run from any directory.  Whether they exist is checked
when the command runs (the configuration may be checked on another host), and the
error then names the source.
"""

from __future__ import annotations

import os

from nfflowd.config.general import Key
from nfflowd.config.settings import _V, WhoSettings

KEYS = ("from", "window", "nfdump")
#: The largest window (s) either side of --at: a day.
MAX_WINDOW_S = 86_400


def who_section(v: _V) -> WhoSettings:
    k: Key = ("who",)
    v.block(k, KEYS)
    fk = (*k, "from")
    many = isinstance(v.get(fk), list)
    sources: list[str] = []
    for i, value in enumerate(v.many(fk)):
        key = (*fk, i) if many else fk
        if isinstance(value, dict | list | bool) or value is None:
            raise v.expected(key, "a path (an nfcapd directory or file, a JSON-lines file)", value)
        path = str(value).strip()
        if not path or not os.path.isabs(path):
            raise v.expected(key, "an absolute path", value)
        if path in sources:
            v.note(key, f"<who> from {path} is listed twice; once is enough")
            continue
        sources.append(os.path.normpath(path))
    return WhoSettings(
        tuple(sources),
        _window(v, (*k, "window")),
        v.text((*k, "nfdump"), WhoSettings.nfdump),
    )


def _window(v: _V, key: Key) -> float:
    value = v.one(key)
    if value is None:
        return WhoSettings.window
    try:
        seconds = float(str(value).strip()) if not isinstance(value, bool) else -1.0
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_WINDOW_S:
        raise v.expected(key, f"a number of seconds (0..{MAX_WINDOW_S})", value)
    return seconds
