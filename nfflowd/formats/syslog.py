"""RFC 3164 ("BSD syslog") message format: names, priorities, addresses, the text.

What lives here: the facility and level tables, parsing of a syslog address,
and building one message's bytes.  The dispatchers that deliver those messages
(sockets, framing, buffering, retries) are :mod:`nfflowd.outputs.syslog`, which
re-exports these names.

Wire format of one syslog message (RFC 3164 section 4.1, "BSD syslog")::

    <PRI>Mmm dd hh:mm:ss ident: line            over a local socket (/dev/log)
    <PRI>Mmm dd hh:mm:ss HOSTNAME ident: line   over udp:// and tcp://

PRI = facility * 8 + severity (local6.info = 22 * 8 + 6 = 182).  The local form
is byte for byte what glibc's syslog(3) writes to /dev/log (``"%h %e %T"``
timestamp, English month, space-padded day, no hostname) and so what
Log::Dispatch::Syslog sent through Sys::Syslog's default "native" mechanism;
its ``logopt`` was empty, so the ident has no ``[pid]``.  rsyslog's imuxsock
does not look for a HOSTNAME on the local socket (it would take one as the tag),
while on the network RFC 3164 section 4.1.2 requires it, hence the two forms.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

#: Syslog facility names -> codes (RFC 5424 section 6.2.1 table 1; names as
#: glibc's <syslog.h>, Sys::Syslog and rsyslog spell them; "security" is glibc's
#: alias of auth).
# fmt: off
FACILITIES: dict[str, int] = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "security": 4, "syslog": 5,
    "lpr": 6, "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12,
    "audit": 13, "alert": 14, "clock": 15,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}

#: Log::Dispatch level names (and their aliases) -> syslog severities (RFC 5424
#: table 2), as Log::Dispatch::Syslog maps them.
LEVELS: dict[str, int] = {
    "emergency": 0, "emerg": 0, "alert": 1, "critical": 2, "crit": 2, "error": 3, "err": 3,
    "warning": 4, "warn": 4, "notice": 5, "info": 6, "debug": 7,
}
# fmt: on

#: The level flow lines are dispatched at: the 2009 tool's ptee logged each line with
#: ``$dispatcher->notice``, so a dispatcher gets them when its min_level is at most
#: notice.  Their syslog priority stays info (local6.info, as the tool documented it).
FLOW_LINE_LEVEL = "notice"
#: The syslog severity flow lines carry (local6.info, as the 2009 tool documented it).
FLOW_LINE_SEVERITY = "info"

#: C-locale month abbreviations for the RFC 3164 TIMESTAMP (never the host locale).
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
#: Port a ``udp://`` or ``tcp://`` address without one uses (RFC 5426, RFC 6587).
DEFAULT_PORT = 514


def parse_address(address: str) -> tuple[str, str, int]:
    """``/path`` -> ("unix", path, 0); ``udp://h:p`` / ``tcp://h:p`` -> (scheme, host, port)."""
    if "://" not in address:
        if not address:
            raise ValueError("syslog address is empty (use a socket path like /dev/log)")
        return ("unix", address, 0)
    parts = urlsplit(address)
    if parts.scheme not in ("udp", "tcp"):
        raise ValueError(f"syslog address {address!r}: scheme must be udp:// or tcp://")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ValueError(f"syslog address {address!r}: bad port ({exc})") from None
    if not parts.hostname:
        raise ValueError(f"syslog address {address!r}: no host")
    return (parts.scheme, parts.hostname, port)


def rfc3164_timestamp(when: float) -> str:
    """``Mmm dd hh:mm:ss`` in local time, day space-padded (glibc's ``"%h %e %T"``, C locale)."""
    tm = time.localtime(when)
    return (
        f"{MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} {tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
    )


def message_prefix(pri: int, ident: str, when: float, hostname: str | None = None) -> bytes:
    """Everything of a message before the line: ``<PRI>TIMESTAMP [HOSTNAME ]ident: ``."""
    host = f"{hostname} " if hostname else ""
    return f"<{pri}>{rfc3164_timestamp(when)} {host}{ident}: ".encode()


def clean_line(line: str) -> str:
    """One message per line: drop a trailing newline, turn embedded LF/NUL into spaces."""
    return line.rstrip("\r\n").replace("\n", " ").replace("\0", " ")
