"""The ``<ptee>`` section: where flow lines are mirrored (the 2009 tool's Log::Dispatch).

Its dispatchers keep their Perl class names (``Log::Dispatch::Screen``,
``Log::Dispatch::Syslog``) and keys; Log::Dispatch keys nfflowd does not use are
accepted and noted.  Part of the configuration schema (:mod:`nfflowd.config.sections`).
"""

from __future__ import annotations

import os
from typing import Any

from nfflowd.config.general import Key
from nfflowd.config.settings import (
    _V,
    Dispatcher,
    MirrorSettings,
    _int,
    _suggest,
    pace_byte_rate,
    pace_rate,
)
from nfflowd.formats.syslog import FACILITIES, FLOW_LINE_LEVEL, LEVELS, parse_address

KEYS = ("conf",)
#: Log::Dispatch level names, least severe first; flow lines are logged at "notice".
LEVEL_ORDER = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
DISPATCHER_CLASSES = {
    "Log::Dispatch::Screen": "screen",
    "screen": "screen",
    "Log::Dispatch::Syslog": "syslog",
    "syslog": "syslog",
}
#: Keys of a dispatcher block: ours, and Log::Dispatch's we accept but do not use.
COMMON_KEYS = ("class", "min_level", "format")
KIND_KEYS = {
    "screen": ("stderr",),
    "syslog": ("ident", "facility", "address", "socket", "max_rate", "max_byte_rate"),
}
IGNORED_KEYS = {
    "screen": ("max_level", "callbacks", "newline", "utf8"),
    "syslog": ("max_level", "callbacks", "newline", "logopt", "lock"),
}


def mirror_section(v: _V) -> MirrorSettings:
    """The `<ptee>` block: the 2009 tool's Log::Dispatch dispatchers, and ours."""
    v.block(("ptee",), KEYS)
    k: Key = ("ptee", "conf")
    conf = v.block(k, None)
    for name, value in conf.items():
        if name not in ("dispatchers", "format") and not _is_block(value):
            raise v.error(
                (*k, name),
                "unknown key in <conf>"
                + _suggest(name, ["dispatchers", "format"])
                + " (valid: dispatchers, format, and one block per dispatcher)",
            )
    if v.user_set((*k, "format")):
        v.note((*k, "format"), "Log::Dispatch::Config format patterns are ignored")
    names = v.many((*k, "dispatchers"))
    many = isinstance(v.get((*k, "dispatchers")), list)
    out: list[Dispatcher] = []
    for i, name in enumerate(names):
        nk = (*k, "dispatchers", i) if many else (*k, "dispatchers")
        if not isinstance(name, str) or not name.strip():
            raise v.expected(nk, "a dispatcher name", name)
        if any(d.name == name for d in out):
            v.note(nk, f"dispatcher {name!r} is listed twice; once is enough")
            continue
        if not _is_block(conf.get(name)):
            raise v.error(
                nk, f"dispatcher {name!r} is listed but there is no <{name}> block in <ptee><conf>"
            )
        out.append(_dispatcher(v, (*k, name), name))
    for name, value in conf.items():
        if _is_block(value) and name not in names and v.user_set((*k, name)):
            v.note((*k, name), f"<{name}> is not listed in `dispatchers`: ignored")
    return MirrorSettings(tuple(out))


def _is_block(value: Any) -> bool:
    return isinstance(value, dict) or (
        isinstance(value, list) and bool(value) and all(isinstance(b, dict) for b in value)
    )


def _dispatcher(v: _V, k: Key, name: str) -> Dispatcher:
    v.block(k, None)  # a repeated block becomes one first
    cls = v.text((*k, "class"), "")
    kind = DISPATCHER_CLASSES.get(cls)
    if kind is None:
        raise v.error(
            (*k, "class"),
            f"unknown dispatcher class {cls!r}; expected one of {', '.join(DISPATCHER_CLASSES)}",
        )
    ignored = IGNORED_KEYS[kind]
    v.block(k, COMMON_KEYS + KIND_KEYS[kind] + ignored)
    for key in ignored:
        if v.get((*k, key)) is not None:
            v.note((*k, key), f"dispatcher {name}: Log::Dispatch parameter {key!r} is ignored")
    level = _level(v, (*k, "min_level"))
    if LEVEL_ORDER.index(level) > LEVEL_ORDER.index(FLOW_LINE_LEVEL):
        v.note(
            (*k, "min_level"),
            f"dispatcher {name}: min_level {level} is above {FLOW_LINE_LEVEL}, the "
            "level the 2009 tool logged flow lines at: it gets no flow lines",
        )
    fmt = v.text((*k, "format"), "csv")
    if "%" in fmt:
        v.note(
            (*k, "format"),
            f"dispatcher {name}: Log::Dispatch::Config format pattern "
            "ignored; lines are flow-tools CSV",
        )
        fmt = "csv"
    elif fmt not in ("csv", "json"):
        raise v.expected((*k, "format"), "csv or json", fmt)
    if kind == "screen":
        if v.get((*k, "stderr")) is None:
            v.note(k, f"dispatcher {name}: no stderr: writing to stderr (Log::Dispatch::Screen)")
        return Dispatcher(
            name, kind, stderr=v.boolean((*k, "stderr"), True), min_level=level, format=fmt
        )
    facility = v.text((*k, "facility"), "user").lower().removeprefix("log_")
    if facility not in FACILITIES:
        raise v.expected(
            (*k, "facility"),
            "a syslog facility (" + ", ".join(FACILITIES) + ")",
            v.one((*k, "facility")),
        )
    if v.get((*k, "facility")) is None:
        v.note(k, f"dispatcher {name}: no facility: using user (Log::Dispatch::Syslog)")
    address = _syslog_address(v, k)
    for key in ("max_rate", "max_byte_rate"):
        if v.user_set((*k, key)) and not address.startswith("udp://"):
            v.note((*k, key), f"dispatcher {name}: {key} paces udp:// addresses only")
    return Dispatcher(
        name,
        kind,
        ident=v.text((*k, "ident"), "nfflowd"),
        facility=facility,
        min_level=level,
        address=address,
        format=fmt,
        max_rate=pace_rate(v, (*k, "max_rate"), Dispatcher.max_rate),
        max_byte_rate=pace_byte_rate(v, (*k, "max_byte_rate"), Dispatcher.max_byte_rate),
    )


def _level(v: _V, key: Key) -> str:
    value = v.one(key)
    if value is None:
        return "debug"
    n = _int(value)
    if n is not None and 0 <= n < len(LEVEL_ORDER):
        return LEVEL_ORDER[n]
    word = str(value).lower()
    if isinstance(value, str) and word in LEVELS:
        return next(lv for lv in LEVEL_ORDER if LEVELS[lv] == LEVELS[word])
    raise v.expected(key, "a Log::Dispatch level (" + ", ".join(LEVEL_ORDER) + ")", value)


def _syslog_address(v: _V, k: Key) -> str:
    """Our ``address``, or Log::Dispatch::Syslog's ``socket`` (Sys::Syslog setlogsock)."""
    address, sock = v.one((*k, "address")), v.get((*k, "socket"))
    akey = (*k, "address" if sock is None else "socket")
    if address is not None and sock is not None:
        raise v.error(akey, "give either address or socket, not both")
    if sock is not None:
        items = (
            sock
            if isinstance(sock, list)
            else [sock.get("type"), sock.get("path")]
            if isinstance(sock, dict)
            else [sock]
        )
        kind = str(items[0]).lower()
        if kind in ("native", "unix", "stream"):
            address = items[1] if len(items) > 1 and items[1] else "/dev/log"
        elif kind in ("udp", "inet", "tcp") and not isinstance(sock, dict):
            address = f"{'tcp' if kind == 'tcp' else 'udp'}://localhost:514"
        elif kind in ("udp", "inet", "tcp"):
            host, port = str(sock.get("host") or "localhost"), sock.get("port") or 514
            host = f"[{host}]" if ":" in host else host
            address = f"{'tcp' if kind == 'tcp' else 'udp'}://{host}:{port}"
        else:
            raise v.expected(
                (*k, "socket"),
                "a Sys::Syslog socket type nfflowd supports (native, unix, stream, udp, inet, tcp)",
                sock,
            )
    address = "/dev/log" if address is None else str(address)
    try:
        parse_address(address)
    except ValueError as exc:
        raise v.expected(
            akey, f"a socket path or udp://HOST:PORT or tcp://HOST:PORT ({exc})", address
        ) from None
    if "://" not in address and not os.path.isabs(address):
        raise v.expected(akey, "an absolute socket path (such as /dev/log)", address)
    return address
