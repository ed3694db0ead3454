"""The ``<metrics>`` block: where the Prometheus endpoint listens (off unless given).

::

    <metrics>
        listen 127.0.0.1:9464
    </metrics>

HOST must be an IP literal (IPv6 in brackets): what is bound is exactly what
was written, no name resolution at start.  A non-loopback address is allowed
but noted, since the endpoint has no authentication.
"""

from __future__ import annotations

import ipaddress
import re

from nfflowd.config.general import Key
from nfflowd.config.settings import _V, MetricsSettings

KEYS = ("listen",)
_LISTEN = re.compile(r"^\s*(?:\[([^\]]*)\]|([^:\s\[\]]*)):(\d{1,5})\s*$")
_WHAT = "HOST:PORT to serve Prometheus metrics on (such as 127.0.0.1:9464 or [::1]:9464)"


def metrics_section(v: _V) -> MetricsSettings:
    k: Key = ("metrics", "listen")
    v.block(k[:1], KEYS)
    value = v.one(k)
    if value is None or value == "":
        return MetricsSettings()
    text = value if isinstance(value, str) else ""
    m = _LISTEN.match(text)
    if m is None and text.count(":") > 1 and "[" not in text:
        raise v.expected(k, f"{_WHAT}; an IPv6 HOST goes in brackets", value)
    if m is None or not 1 <= int(m[3]) <= 65535:
        raise v.expected(k, f"{_WHAT}, PORT 1..65535", value)
    try:
        ip = ipaddress.ip_address(m[1] if m[1] is not None else m[2])
    except ValueError:
        raise v.expected(k, f"{_WHAT}; HOST must be an IP address", value) from None
    if not ip.is_loopback:
        v.note(k, f"metrics are served beyond this host on {text.strip()} (no authentication)")
    return MetricsSettings(str(ip), int(m[3]))
