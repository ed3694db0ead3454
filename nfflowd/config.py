"""nfflowd's settings: read a configuration file, merge it over the defaults, validate it.

Formats, chosen by file extension: ``.yml``/``.yaml`` YAML, ``.json`` JSON, ``.toml``
TOML, anything else Config::General (:mod:`nfflowd.config_general`), the 2009
tool's format.  All of them give the same nested tree, which is merged over
``nfflowd/data/defaults.conf`` the way the 2009 tool merged its built-ins
(``merge_hashes``: blocks merge key by key, any other value replaces), then
validated into frozen :class:`Settings`.

Policy: an unknown top-level block or key is a note ("ignored"), so a newer
file still loads in an older nfflowd and a file shared with other Config::Any
tools stays valid; an unknown key inside a known block is an error naming the
closest valid key, since a mistyped key (``facilty local5``) would silently
leave the setting at its default.  Every error names the file, the line (when
the format tells it: Config::General and YAML always, JSON when the text also
reads as YAML, TOML only for syntax errors), the key path and what was expected.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import ipaddress
import json
import os
import re
import shlex
import tempfile
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from nfflowd import config_general as cg
from nfflowd.config_general import Key, Origin
from nfflowd.outputs.syslog import FACILITIES, LEVELS, parse_address

#: Version of the resolved-settings JSON (settings.json in the run directory).
SCHEMA = 1
#: The 2009 tool's message (bin/nfflowd gd_preconfig) when flow_send args is not three values.
FLOW_SEND_ARGS_ERROR = (
    "You must supply three arguments for flow_send: source addr, dest addr, dest port"
)
OBSOLETE = "is no longer needed (nfflowd sends NetFlow itself)"
SOURCE_TYPES = ("netlink", "conntrack", "file")
NETFLOW_VERSIONS = (5, 9, 10)
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
KIND_KEYS = {"screen": ("stderr",), "syslog": ("ident", "facility", "address", "socket")}
IGNORED_KEYS = {
    "screen": ("max_level", "callbacks", "newline", "utf8"),
    "syslog": ("max_level", "callbacks", "newline", "logopt", "lock"),
}
SECTIONS = {
    "source": ("type", "path", "netns", "rcvbuf", "reliable", "set_sysctls"),
    "conntrack": ("progname", "init_format", "format"),
    "ct2ft": ("ttl",),
    "export": ("exaddr", "engine_type", "engine_id", "version", "collector"),
    "flow_send": ("args", "progname", "format"),
    "flow_import": None,  # obsolete: anything goes
    "ptee": ("conf",),
    "daemon": ("rundir",),
}
COLLECTOR_KEYS = ("address", "port", "version", "source")
_TRUE, _FALSE = ("1", "yes", "true", "on"), ("0", "no", "false", "off")
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)i?b?\s*$", re.IGNORECASE)


class ConfigError(Exception):
    """A configuration problem: ``FILE:LINE: key 'a.b': expected X, got Y``."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.path, self.line, self.key = message, path, line, key

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.path, self.line) if p is not None)
        text = f"key {self.key!r}: {self.message}" if self.key else self.message
        return f"{where}: {text}" if where else text


@dataclass(frozen=True)
class SourceSettings:
    type: str = "conntrack"  # "netlink" | "conntrack" | "file"
    path: tuple[str, ...] = ()
    netns: str | None = None
    rcvbuf: int = 64 * 1024 * 1024
    reliable: bool = False
    set_sysctls: bool = False


@dataclass(frozen=True)
class ConntrackSettings:
    progname: str = "conntrack"
    init_format: str = "-L"
    format: str = "-E -e NEW,DESTROY -o timestamp"  # the 2009 default minus -n (--src-nat)


@dataclass(frozen=True)
class Ct2ftSettings:
    ttl: int = 604800


@dataclass(frozen=True)
class Collector:
    address: str
    port: int
    version: int = 5
    source: str | None = None


@dataclass(frozen=True)
class ExportSettings:
    exaddr: str = "0.0.0.0"
    engine_type: int = 0
    engine_id: int = 0
    collectors: tuple[Collector, ...] = ()


@dataclass(frozen=True)
class Dispatcher:
    name: str
    kind: str  # "screen" | "syslog"
    stderr: bool = False
    ident: str = "nfflowd"
    facility: str = "local6"
    min_level: str = "debug"
    address: str = "/dev/log"  # unix socket path, or udp://HOST:PORT / tcp://HOST:PORT
    format: str = "csv"  # "csv" (flow-tools CSV) | "json"


@dataclass(frozen=True)
class MirrorSettings:
    dispatchers: tuple[Dispatcher, ...]


@dataclass(frozen=True)
class DaemonSettings:
    rundir: str = "/run/nfflowd"


@dataclass(frozen=True)
class Settings:
    source: SourceSettings
    conntrack: ConntrackSettings
    ct2ft: Ct2ftSettings
    export: ExportSettings
    mirror: MirrorSettings
    daemon: DaemonSettings
    path: str | None = None  # the file read (None: defaults only)
    notes: tuple[str, ...] = ()  # informational messages, e.g. obsolete keys


# ---------------------------------------------------------------- validation helpers


def _dotted(key: Key) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in key).lstrip(".")


def _at(origin: Origin) -> str:
    return f"{origin[0]}:{origin[1]}" if origin[1] else str(origin[0])


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a block"
    if isinstance(value, list):
        shown = ", ".join(repr(v) for v in value[:4]) + (", ..." if len(value) > 4 else "")
        return f"{len(value)} value{'s' if len(value) != 1 else ''} ({shown})"
    return "nothing" if value is None else repr(value)


def _suggest(word: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(valid), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class _V:
    """The merged tree, where each part of it came from, and the notes so far."""

    def __init__(self, tree: dict[str, Any], origins: dict[Key, Origin], user: dict[str, Any]):
        self.tree, self.origins, self.user = tree, origins, user
        self.notes: list[str] = []

    def get(self, key: Key, tree: Any = None) -> Any:
        node = self.tree if tree is None else tree
        for k in key:
            if isinstance(node, dict) and isinstance(k, str):
                node = node.get(k)
            elif isinstance(node, list) and isinstance(k, int) and k < len(node):
                node = node[k]
            elif isinstance(node, list) and isinstance(k, str):  # a repeated block, unfolded
                node = next((b[k] for b in node if isinstance(b, dict) and k in b), None)
            else:
                return None
        return node

    def user_set(self, key: Key) -> bool:
        return self.get(key, self.user) is not None

    def where(self, key: Key) -> Origin:
        for n in range(len(key), -1, -1):
            if key[:n] in self.origins:
                return self.origins[key[:n]]
        return (None, 0)

    def error(self, key: Key, message: str) -> ConfigError:
        file, line = self.where(key)
        return ConfigError(message, path=file, line=line or None, key=_dotted(key) or None)

    def expected(self, key: Key, what: str, value: Any) -> ConfigError:
        return self.error(key, f"expected {what}, got {_show(value)}")

    def note(self, key: Key | None, text: str) -> None:
        self.notes.append(text if key is None else f"{_at(self.where(key))}: {text}")

    def block(self, key: Key, allowed: typing.Sequence[str] | None) -> dict[str, Any]:
        value = self.get(key)
        if value is None:
            return {}
        if isinstance(value, list) and value and all(isinstance(b, dict) for b in value):
            value = self._fold(key, value)
        if not isinstance(value, dict):
            raise self.expected(key, f"a block <{key[-1]}> ... </{key[-1]}>", value)
        for k, v in value.items():
            if allowed is not None and k not in allowed:
                hint = (
                    " (named blocks <x NAME> are not supported here)" if isinstance(v, dict) else ""
                )
                raise self.error(
                    (*key, k),
                    f"unknown key in <{key[-1]}>{_suggest(k, allowed)}"
                    f"{hint} (valid: {', '.join(allowed)})",
                )
        return value

    def _fold(self, key: Key, blocks: list[dict[str, Any]]) -> dict[str, Any]:
        merged = cg.fold(blocks, key, self.origins)
        self.get(key[:-1])[key[-1]] = merged
        return merged

    def one(self, key: Key) -> Any:
        value = self.get(key)
        if isinstance(value, list) and len(value) == 1:  # `key [value]` (ForceArray), `[::1]`
            return value[0]
        if isinstance(value, list):
            lines = ", ".join(str(self.where((*key, i))[1]) for i in range(len(value)))
            raise self.error(key, f"expected a single value, got {len(value)} (lines {lines})")
        return value

    def many(self, key: Key) -> list[Any]:
        value = self.get(key)
        return [] if value is None else value if isinstance(value, list) else [value]

    def text(self, key: Key, default: str, *, empty: bool = False) -> str:
        value = self.one(key)
        if value is None:
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, str | int)
            or (value == "" and not empty)
        ):
            raise self.expected(key, "a non-empty text value", value)
        return str(value)

    def integer(self, key: Key, default: int, lo: int, hi: int, what: str) -> int:
        value = self.one(key)
        if value is None:
            return default
        n = _int(value)
        if n is None or not lo <= n <= hi:
            raise self.expected(key, f"{what} ({lo}..{hi})", value)
        return n

    def boolean(self, key: Key, default: bool) -> bool:
        value = self.one(key)
        if value is None:
            return default
        word = str(value).strip().lower()
        if isinstance(value, bool) or word in _TRUE + _FALSE:
            return value if isinstance(value, bool) else word in _TRUE
        raise self.expected(key, "a boolean (1/0, yes/no, true/false, on/off)", value)

    def address(self, key: Key, value: Any) -> str:
        try:
            return str(ipaddress.ip_address(str(value).strip().strip("[]")))
        except ValueError:
            raise self.expected(key, "an IPv4 or IPv6 address", value) from None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    return None


# ---------------------------------------------------------------- sections


def _source(v: _V) -> SourceSettings:
    k: Key = ("source",)
    v.block(k, SECTIONS["source"])
    kind = v.text((*k, "type"), "conntrack")
    if kind not in SOURCE_TYPES:
        raise v.expected((*k, "type"), f"one of {', '.join(SOURCE_TYPES)}", kind)
    pk = (*k, "path")
    plist = isinstance(v.get(pk), list)
    paths = tuple(v.text((*pk, i) if plist else pk, "") for i in range(len(v.many(pk))))
    if kind == "file" and not paths:
        raise v.error(
            (*k, "type"),
            "expected at least one `path` (a saved `conntrack -E -o "
            "timestamp` log) with type file, got none",
        )
    netns = v.one((*k, "netns"))
    if netns is not None:
        netns = v.text((*k, "netns"), "")
        if not (os.path.isabs(netns) or re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", netns)):
            raise v.expected(
                (*k, "netns"), "a namespace name (ip netns) or an absolute path", netns
            )
    rcvbuf = _size(v, (*k, "rcvbuf"))
    out = SourceSettings(
        kind,
        paths,
        netns,
        rcvbuf,
        v.boolean((*k, "reliable"), False),
        v.boolean((*k, "set_sysctls"), False),
    )
    for key in ("rcvbuf", "reliable"):
        if kind != "netlink" and v.user_set((*k, key)):
            v.note((*k, key), f"<source> {key} is only used with type netlink")
    if kind != "file" and paths:
        v.note((*k, "path"), "<source> path is only used with type file")
    return out


def _size(v: _V, key: Key) -> int:
    value = v.one(key)
    if value is None:
        return SourceSettings.rcvbuf
    m = _SIZE.match(str(value)) if not isinstance(value, bool) else None
    n = int(m[1]) << {"": 0, "k": 10, "m": 20, "g": 30}[m[2].lower()] if m else -1
    if not 4096 <= n <= 2**31 - 1:
        raise v.expected(
            key, "a buffer size in bytes, 4096..2147483647 (suffix K/M/G allowed)", value
        )
    return n


def _conntrack(v: _V) -> ConntrackSettings:
    k: Key = ("conntrack",)
    v.block(k, SECTIONS["conntrack"])
    prog = v.text((*k, "progname"), "conntrack")
    fields = []
    for name, default in (("init_format", "-L"), ("format", ConntrackSettings.format)):
        text = v.text((*k, name), default, empty=True)
        try:
            args = shlex.split(text)
        except ValueError as exc:
            raise v.expected((*k, name), f"program arguments ({exc})", text) from None
        fields.append(text)
    if not {"-E", "--event"} & set(args):
        v.note((*k, "format"), "<conntrack> format has no -E: conntrack lists its table and exits")
    return ConntrackSettings(prog, fields[0], fields[1])


def _ct2ft(v: _V) -> Ct2ftSettings:
    k: Key = ("ct2ft", "ttl")
    v.block(k[:1], SECTIONS["ct2ft"])
    if v.one(k) in (0, "0", ""):  # the 2009 tool: `ttl || 604800`
        v.note(k, "ttl 0 means the default, 604800 s, as in the 2009 tool")
        return Ct2ftSettings()
    return Ct2ftSettings(v.integer(k, 604800, 1, 2**31 - 1, "a whole number of seconds"))


def _export(v: _V) -> ExportSettings:
    k: Key = ("export",)
    v.block(k, SECTIONS["export"])
    fs = v.block(("flow_send",), SECTIONS["flow_send"])
    for key in ("progname", "format"):
        if v.user_set(("flow_send", key)):
            v.note(("flow_send", key), f"<flow_send> {key} {OBSOLETE}")
    if v.get(("flow_import",), v.user) is not None:
        v.block(("flow_import",), None)
        v.note(("flow_import",), f"<flow_import> {OBSOLETE}")
    version = _version(v, (*k, "version"), 5)
    collectors: list[Collector] = []
    exaddr = "0.0.0.0"
    if "args" in fs:
        args, ak = v.many(("flow_send", "args")), ("flow_send", "args")
        if len(args) != 3:
            hint = " (one `args` line each)" if len(args) == 1 and " " in str(args[0]) else ""
            raise v.error(ak, f"{FLOW_SEND_ARGS_ERROR}; got {_show(args)}{hint}")
        sub = [(*ak, i) for i in range(3)]
        exaddr = v.address(sub[0], args[0])
        port = _int(args[2])
        if port is None or not 1 <= port <= 65535:
            raise v.expected(sub[2], "a collector port number (1..65535)", args[2])
        collectors.append(_collector(v, sub[1], v.address(sub[1], args[1]), port, 5, exaddr))
    ck = (*k, "collector")
    blocks = v.many(ck)
    for i, block in enumerate(blocks):
        bk = (*ck, i) if isinstance(v.get(ck), list) else ck
        if not isinstance(block, dict):
            raise v.expected(bk, "a <collector> block (address, port, version, source)", block)
        v.block(bk, COLLECTOR_KEYS)
        if "address" not in block or "port" not in block:
            raise v.error(bk, "expected `address` and `port` in <collector>")
        src = v.one((*bk, "source"))
        collectors.append(
            _collector(
                v,
                bk,
                v.address((*bk, "address"), v.one((*bk, "address"))),
                v.integer((*bk, "port"), 0, 1, 65535, "a collector port number"),
                _version(v, (*bk, "version"), version),
                None if src is None else v.address((*bk, "source"), src),
            )
        )
    if v.one((*k, "exaddr")) is not None:
        exaddr = v.address((*k, "exaddr"), v.one((*k, "exaddr")))
    if not collectors:
        v.note(
            None,
            "no collector configured (no <flow_send> args, no <export><collector>): "
            "flow records are only mirrored",
        )
    return ExportSettings(
        exaddr,
        v.integer((*k, "engine_type"), 0, 0, 255, "a NetFlow engine type"),
        v.integer((*k, "engine_id"), 0, 0, 255, "a NetFlow engine id"),
        tuple(collectors),
    )


def _version(v: _V, key: Key, default: int) -> int:
    value = v.one(key)
    if value is None:
        return default
    if _int(value) not in NETFLOW_VERSIONS:
        raise v.expected(key, "a NetFlow version: 5, 9 or 10 (IPFIX)", value)
    return int(value)


def _collector(v: _V, key: Key, addr: str, port: int, version: int, src: str | None) -> Collector:
    if src is not None and ipaddress.ip_address(src).version != ipaddress.ip_address(addr).version:
        raise v.error(
            key, f"source address {src} and collector address {addr} are of different IP versions"
        )
    return Collector(addr, port, version, src)


def _mirror(v: _V) -> MirrorSettings:
    v.block(("ptee",), SECTIONS["ptee"])
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
    if LEVEL_ORDER.index(level) > LEVEL_ORDER.index("notice"):
        v.note(
            (*k, "min_level"),
            f"dispatcher {name}: min_level {level} is above notice, the "
            "level the 2009 tool logged flow lines at",
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
    return Dispatcher(
        name,
        kind,
        ident=v.text((*k, "ident"), "nfflowd"),
        facility=facility,
        min_level=level,
        address=_syslog_address(v, k),
        format=fmt,
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


def _daemon(v: _V) -> DaemonSettings:
    v.block(("daemon",), SECTIONS["daemon"])
    rundir = v.text(("daemon", "rundir"), "/run/nfflowd")
    if not os.path.isabs(rundir):
        raise v.expected(("daemon", "rundir"), "an absolute directory path", rundir)
    return DaemonSettings(os.path.normpath(rundir))


# ---------------------------------------------------------------- public API


def _defaults() -> cg.Document:
    res = resources.files("nfflowd.data").joinpath("defaults.conf")
    return cg.parse(res.read_text(encoding="utf-8"), filename=str(res))


def load(path: str | None, *, overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read *path* (None: defaults only), merge it over the defaults, validate it.

    *overrides* (``{"source.type": "file", ...}`` or nested) are laid over the file.
    Raises :class:`ConfigError` naming the file, line and key of the first problem.
    """
    doc = _defaults()
    user: dict[str, Any] = {}
    try:
        if path is not None:
            mine = cg.read(path)
            user = copy.deepcopy(mine.tree)
            doc = cg.merge(doc, mine)
        if overrides:
            extra = cg.expand(overrides, ("<overrides>", 0))
            unknown = sorted(set(extra.tree) - set(SECTIONS))
            if unknown:
                hint = _suggest(unknown[0], SECTIONS)
                raise ConfigError(f"unknown block{hint}", path="<overrides>", key=unknown[0])
            doc = cg.merge(doc, extra)
    except cg.ParseError as exc:
        key = _dotted(exc.key) if exc.key else None
        raise ConfigError(exc.message, path=exc.file, line=exc.line, key=key) from None
    v = _V(doc.tree, doc.origins, user)
    v.notes.extend(f"{_at(o)}: {text}" for o, text in doc.notes)
    for name, value in user.items():
        if name not in SECTIONS:
            what = "block" if isinstance(value, dict | list) else "key"
            v.note((name,), f"unknown {what} {name!r} ignored{_suggest(name, SECTIONS)}")
    source, conntrack, ct2ft = _source(v), _conntrack(v), _ct2ft(v)
    export, mirror, daemon = _export(v), _mirror(v), _daemon(v)
    return Settings(source, conntrack, ct2ft, export, mirror, daemon, path, tuple(v.notes))


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_jsonable(x) for x in value]
    return value


def to_dict(s: Settings) -> dict[str, Any]:
    """JSON-safe dict of *s* (lists for tuples), with the schema version."""
    out: dict[str, Any] = {"schema": SCHEMA, **_jsonable(s)}
    return out


def from_dict(d: Mapping[str, Any]) -> Settings:
    """The inverse of :func:`to_dict`; checks every field's type (not its range)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"expected a mapping of settings, got {_show(d)}")
    d = dict(d)
    schema = d.pop("schema", SCHEMA)
    if schema != SCHEMA:
        raise ConfigError(f"expected settings schema {SCHEMA}, got {schema!r}", key="schema")
    out: Settings = _build(Settings, d, "")
    return out


def _build(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"expected a mapping, got {_show(value)}", key=key or None)
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        extra = set(value) - set(names)
        if extra:
            raise ConfigError(f"unknown field {sorted(extra)[0]!r}", key=key or None)
        kwargs = {
            n: _build(hints[n], value[n], f"{key}.{n}".lstrip(".")) for n in names if n in value
        }
        try:
            factory: Any = tp
            return factory(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"missing field ({exc})", key=key or None) from None
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        return _build(next(a for a in args if a is not type(None)), value, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"expected a list, got {_show(value)}", key=key)
        return tuple(_build(args[0], x, f"{key}[{i}]") for i, x in enumerate(value))
    ok = isinstance(value, tp) and (tp is not int or not isinstance(value, bool))
    if not ok:
        raise ConfigError(f"expected {tp.__name__}, got {_show(value)}", key=key)
    return value


def dump_resolved(s: Settings, path: str) -> None:
    """Write *s* as JSON to *path* atomically (temp file, fsync, rename), mode 0600."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".settings.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(to_dict(s), fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load_resolved(path: str) -> Settings:
    """Read settings written by :func:`dump_resolved` (ConfigError if unreadable or wrong)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read resolved settings: {exc.strerror}", path=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = exc.lineno if isinstance(exc, json.JSONDecodeError) else None
        raise ConfigError(f"resolved settings are not JSON ({exc})", path=path, line=line) from None
    try:
        return from_dict(data)
    except ConfigError as exc:
        exc.path = path
        raise


def stage_sections(s: Settings) -> dict[str, dict[str, Any]]:
    """Per stage, the settings it depends on: a stage whose part changed must restart."""
    d = to_dict(s)
    ingest = {"source": d["source"]}
    if s.source.type == "conntrack":
        ingest["conntrack"] = d["conntrack"]
    return {
        "ingest": ingest,
        "correlate": {"ct2ft": d["ct2ft"]},
        "export": {"export": d["export"]},
        "mirror": {"mirror": d["mirror"], "exaddr": s.export.exaddr},
    }
