"""nfflowd's settings model: the frozen dataclasses :mod:`nfflowd.config` builds, its error,
and the view of a merged configuration tree the section validators read it through.

The view (``_V``) knows where every part of the tree was written, so each error
names the file, the line and the key path (:class:`ConfigError`); what the keys
mean is :mod:`nfflowd.config.sections`.  Import these names from
:mod:`nfflowd.config`, which re-exports them.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import typing
from dataclasses import dataclass
from typing import Any

from nfflowd.config import general as cg
from nfflowd.config.general import Key, Origin

_TRUE, _FALSE = ("1", "yes", "true", "on"), ("0", "no", "false", "off")
#: A size in bytes: digits, then K, M or G (powers of 1024), optionally "iB"/"B".
_SIZE = re.compile(r"^\s*(\d{1,30})\s*([kmg]?)i?b?\s*$", re.IGNORECASE)


#: The most batches ``<daemon> max_unacked`` may let a link keep in flight.
MAX_UNACKED = 1_000_000


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


#: Datagrams/s per collector unless configured (``<export> max_rate``): what an nfcapd
#: with its default socket buffer absorbed, on a 2-core machine shared with the
#: pipeline, in every measured resend of ``max_unacked`` batches (bench/bench_pacing.py
#: --busy 2; 8000 lost datagrams there), 4 times below the rate it absorbs on a quiet
#: machine; above what the pipeline produces on such a machine, below the live lab's
#: peak (README "Pacing": the figures, and what the pace costs then).
DEFAULT_MAX_RATE = 4000


@dataclass(frozen=True)
class SourceSettings:
    type: str = "netlink"  # "netlink" (the kernel) | "conntrack" (the program) | "file"
    path: tuple[str, ...] = ()
    netns: str | None = None
    rcvbuf: int = 64 * 1024 * 1024
    reliable: bool = False
    set_sysctls: bool = False
    linger_ms: int = 50  # a batch of events leaves when full or its oldest waited this long
    subscribe: str = "auto"  # auto: DESTROY only when the kernel stamps times; all: NEW too


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
    nat_events: bool = False  # v9/IPFIX: NAT event records too (nfflowd.formats.nat_events)
    nat_event_numbering: int = 1  # natEvent create/delete: 1 -> 1/2, 4 -> RFC 8158's 4/5
    # ``nat_events realtime``: the create event when the connection opens (its NEW),
    # not with the delete at its end
    nat_realtime: bool = False
    # v9/IPFIX: "per_direction" (one record per direction, the other side of the NAT in
    # postNAT* elements) or "triplet" (also the original direction as it left, as v5 sends);
    # None: the version's own, per_direction for 9/10 (v5 always sends the triplet)
    records: str | None = None
    # pacing (nfflowd.outputs.pacing): datagrams/s and bytes/s at most (0: no limit)
    max_rate: int = DEFAULT_MAX_RATE
    max_byte_rate: int = 0
    # v9/IPFIX: coverage gaps as options records (nfflowd.formats.coverage_options);
    # None: the version's own, yes for 9/10 (v5 has no options records)
    coverage: bool | None = None

    @property
    def sends_coverage(self) -> bool:
        """Whether this collector gets the coverage gaps (when the stages journal them)."""
        return self.version != 5 and self.coverage is not False


@dataclass(frozen=True)
class ExportSettings:
    exaddr: str = "0.0.0.0"
    engine_type: int = 0
    engine_id: int = 0
    collectors: tuple[Collector, ...] = ()
    observation_domain: int = 0  # NetFlow v9 source id / IPFIX observation domain id
    template_refresh_packets: int = 20  # re-send templates every N datagrams (v9/IPFIX) ...
    template_refresh_seconds: int = 1800  # ... and every T seconds, whichever comes first
    active_timeout: int = 0  # s; connections open longer are reported periodically (0 = off)
    # the pace of collectors that do not set their own (nfflowd.outputs.pacing; 0: no limit)
    max_rate: int = DEFAULT_MAX_RATE
    max_byte_rate: int = 0
    # s a collector that refuses (ICMP port unreachable) is held for before what it holds
    # is dropped (nfflowd.outputs.exporter; 0: never held)
    refused_hold: int = 30

    @property
    def nat_realtime(self) -> bool:
        """Some collector wants NAT create events when connections open (NEW events)."""
        return any(c.nat_realtime for c in self.collectors)


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
    # udp:// only: datagrams (lines)/s and bytes/s at most (nfflowd.outputs.pacing; 0: no limit)
    max_rate: int = 0
    max_byte_rate: int = 0


@dataclass(frozen=True)
class MirrorSettings:
    dispatchers: tuple[Dispatcher, ...]


@dataclass(frozen=True)
class DaemonSettings:
    rundir: str = "/run/nfflowd"
    max_unacked: int = 64  # batches a link keeps until acknowledged (the memory bound)
    # the stages supervisord runs on this host (nfflowd.pipeline.topology.STAGES, pipeline order)
    stages: tuple[str, ...] = ("ingest", "correlate", "export", "mirror")
    # every program but ingest runs as this user (nfflowd.ops.privileges); None: as the invoker
    user: str | None = None
    correlators: int = 1  # correlate processes (shards by connection, nfflowd.pipeline.shards)
    exporters: int = 1  # export processes (each fed by correlators i with i % M == its number)
    # the coverage journal (nfflowd.pipeline.coverage): survives reboots, unlike rundir
    statedir: str = "/var/lib/nfflowd"


@dataclass(frozen=True)
class LinkAddress:
    name: str  # a link name of nfflowd.topology.DATA_LINKS
    address: str  # tcp://HOST:PORT


@dataclass(frozen=True)
class LinkSettings:
    """``<links>``: data links moved from the run directory to tcp:// (nfflowd.config.links)."""

    addresses: tuple[LinkAddress, ...] = ()
    curve_dir: str | None = None  # CURVE keys (nfflowd keygen); required by any tcp link

    def address(self, name: str) -> str | None:
        """The tcp:// address of link *name*, or None (its ipc:// file)."""
        return next((a.address for a in self.addresses if a.name == name), None)


@dataclass(frozen=True)
class MetricsSettings:
    """The Prometheus endpoint (``<metrics> listen HOST:PORT``); off while address is None."""

    address: str | None = None
    port: int = 9464

    @property
    def listen(self) -> str:
        """HOST:PORT as written in the configuration ([v6]:PORT); "" when off."""
        if self.address is None:
            return ""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class WhoSettings:
    """``<who>``: where ``nfflowd who`` looks (nfflowd.config.who); empty: what the rest of
    the configuration implies (nfflowd.ops.who.sources)."""

    sources: tuple[str, ...] = ()  # `from`: nfcapd directories or files, JSON-lines files
    window: float = 5.0  # seconds either side of --at (the reporting party's clock skew)
    nfdump: str = "nfdump"  # the program that reads nfcapd files


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
    metrics: MetricsSettings = MetricsSettings()
    links: LinkSettings = LinkSettings()
    who: WhoSettings = WhoSettings()


# ---------------------------------------------------------------- validation helpers


def _dotted(key: Key) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in key).lstrip(".")


def _at(origin: Origin) -> str:
    return f"{origin[0]}:{origin[1]}" if origin[1] else str(origin[0])


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a block"
    if isinstance(value, list):
        shown = ", ".join(_repr(v) for v in value[:4]) + (", ..." if len(value) > 4 else "")
        return f"{len(value)} value{'s' if len(value) != 1 else ''} ({shown})"
    return "nothing" if value is None else _repr(value)


def _repr(value: Any) -> str:
    """repr(*value*), at most 60 characters of it (a value may be a whole line of the file)."""
    shown = repr(value)  # an int has at most 4300 digits: the readers refuse more
    return shown if len(shown) <= 60 else f"{shown[:60]}... ({len(shown)} characters)"


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
            lines = ", ".join(str(self.where((*key, i))[1]) for i in range(min(len(value), 5)))
            more = ", ..." if len(value) > 5 else ""
            raise self.error(
                key, f"expected a single value, got {len(value)} (lines {lines}{more})"
            )
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


#: The highest pace that can be set (datagrams/s; bytes/s: MAX_BYTE_RATE).
MAX_RATE = 10_000_000
MAX_BYTE_RATE = 1 << 40


def pace_rate(v: _V, key: Key, default: int) -> int:
    """``max_rate``: datagrams per second at most, 0 for no limit (nfflowd.outputs.pacing)."""
    return v.integer(key, default, 0, MAX_RATE, "datagrams per second (0: no limit)")


def pace_byte_rate(v: _V, key: Key, default: int) -> int:
    """``max_byte_rate``: bytes per second at most (suffix K, M, G: 2**10, 2**20, 2**30),
    0 for no limit."""
    value = v.one(key)
    if value is None:
        return default
    m = _SIZE.match(str(value)) if not isinstance(value, bool) else None
    n = int(m[1]) << {"": 0, "k": 10, "m": 20, "g": 30}[m[2].lower()] if m else -1
    if not 0 <= n <= MAX_BYTE_RATE:
        what = f"bytes per second, 0..{MAX_BYTE_RATE} (suffix K/M/G allowed; 0: no limit)"
        raise v.expected(key, what, value)
    return n


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,30}\s*", value):
        return int(value)  # no setting needs more digits; int() refuses over 4300
    return None
