"""Validation of each section of the merged configuration tree into :mod:`nfflowd.config.settings`.

One function per block (``<source>``, ``<conntrack>``, ``<ct2ft>``, ``<export>`` with
the 2009 tool's ``<flow_send>``, ``<ptee><conf>``, ``<daemon>``, ``<metrics>`` (in
:mod:`nfflowd.config.metrics`), ``<who>`` (in :mod:`nfflowd.config.who`));
:func:`validate` runs them in that order.  The policy on unknown keys and the error
format are described in :mod:`nfflowd.config`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import shlex

from nfflowd.config.general import Key
from nfflowd.config.links import KEYS as LINKS_KEYS
from nfflowd.config.links import daemon_stages, links_section
from nfflowd.config.metrics import KEYS as METRICS_KEYS
from nfflowd.config.metrics import metrics_section
from nfflowd.config.mirror import KEYS as PTEE_KEYS
from nfflowd.config.mirror import mirror_section
from nfflowd.config.settings import (
    _SIZE,
    _V,
    DEFAULT_MAX_RATE,
    MAX_UNACKED,
    Collector,
    ConfigError,
    ConntrackSettings,
    Ct2ftSettings,
    DaemonSettings,
    ExportSettings,
    Settings,
    SourceSettings,
    _int,
    _show,
    pace_byte_rate,
    pace_rate,
)
from nfflowd.config.who import KEYS as WHO_KEYS
from nfflowd.config.who import who_section
from nfflowd.formats.nat_events import NUMBERINGS as NAT_EVENT_NUMBERINGS

#: The 2009 tool's message (bin/nfflowd gd_preconfig) when flow_send args is not three values.
FLOW_SEND_ARGS_ERROR = (
    "You must supply three arguments for flow_send: source addr, dest addr, dest port"
)
OBSOLETE = "is no longer needed (nfflowd sends NetFlow itself)"
SOURCE_TYPES = ("netlink", "conntrack", "file")
NETFLOW_VERSIONS = (5, 9, 10)
SECTIONS = {
    "source": (
        "type",
        "path",
        "netns",
        "rcvbuf",
        "reliable",
        "set_sysctls",
        "linger_ms",
        "subscribe",
    ),
    "conntrack": ("progname", "init_format", "format"),
    "ct2ft": ("ttl",),
    "export": (
        "exaddr",
        "engine_type",
        "engine_id",
        "version",
        "collector",
        "observation_domain",
        "template_refresh_packets",
        "template_refresh_seconds",
        "active_timeout",
        "max_rate",
        "max_byte_rate",
        "refused_hold",
    ),
    "flow_send": ("args", "progname", "format"),
    "flow_import": None,  # obsolete: anything goes
    "ptee": PTEE_KEYS,  # nfflowd.config.mirror
    "daemon": (
        "rundir",
        "max_unacked",
        "stages",
        "user",
        "correlators",
        "exporters",
        "statedir",
    ),
    "links": LINKS_KEYS,  # nfflowd.config.links
    "metrics": METRICS_KEYS,
    "who": WHO_KEYS,  # nfflowd.config.who
}
#: <source> subscribe: which conntrack event groups the netlink source reads.
SUBSCRIBE = ("auto", "all")
COLLECTOR_KEYS = (
    "address",
    "port",
    "version",
    "source",
    "nat_events",
    "nat_event_numbering",
    "records",
    "max_rate",
    "max_byte_rate",
    "coverage",
)
#: ``<collector> records``: which flow records a v9/IPFIX collector gets
#: (nfflowd.formats.netflow_v9's ``per_direction``); v5 always gets the triplet.
RECORDS = ("per_direction", "triplet")
#: The longest ``<conntrack>`` argument line (shlex.split is slow on megabytes).
MAX_ARGS_LENGTH = 4096


def _source(v: _V) -> SourceSettings:
    k: Key = ("source",)
    v.block(k, SECTIONS["source"])
    kind = v.text((*k, "type"), "netlink")
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
        v.integer((*k, "linger_ms"), SourceSettings.linger_ms, 0, 10_000, "milliseconds"),
        _subscribe(v, (*k, "subscribe")),
    )
    for key in ("rcvbuf", "reliable"):
        if kind != "netlink" and v.user_set((*k, key)):
            v.note((*k, key), f"<source> {key} is only used with type netlink")
    if kind != "file" and paths:
        v.note((*k, "path"), "<source> path is only used with type file")
    return out


def _subscribe(v: _V, key: Key) -> str:
    """``auto`` (DESTROY only when the kernel stamps times) or ``all`` (NEW too)."""
    word = v.text(key, SourceSettings.subscribe)
    if word not in SUBSCRIBE:
        raise v.expected(key, f"one of {', '.join(SUBSCRIBE)}", word)
    return word


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
        if len(text) > MAX_ARGS_LENGTH:
            what = f"program arguments of at most {MAX_ARGS_LENGTH} characters"
            raise v.expected((*k, name), what, text)
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
    rate = pace_rate(v, (*k, "max_rate"), DEFAULT_MAX_RATE)
    byte_rate = pace_byte_rate(v, (*k, "max_byte_rate"), 0)
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
        c = _collector(v, sub[1], v.address(sub[1], args[1]), port, 5, exaddr)
        collectors.append(dataclasses.replace(c, max_rate=rate, max_byte_rate=byte_rate))
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
        collectors[-1] = dataclasses.replace(
            _coverage(v, bk, _records(v, bk, _nat_events(v, bk, collectors[-1]))),
            max_rate=pace_rate(v, (*bk, "max_rate"), rate),
            max_byte_rate=pace_byte_rate(v, (*bk, "max_byte_rate"), byte_rate),
        )
    if v.one((*k, "exaddr")) is not None:
        exaddr = v.address((*k, "exaddr"), v.one((*k, "exaddr")))
    if not collectors:
        v.note(
            None,
            "no collector configured (no <flow_send> args, no <export><collector>): "
            "flow records are only mirrored",
        )
    kind = v.text(("source", "type"), SourceSettings.type)
    active = v.integer((*k, "active_timeout"), 0, 0, 2**31, "a number of seconds (0 = off)")
    if active and kind != "netlink":
        v.note(
            (*k, "active_timeout"),
            "<export> active_timeout needs <source> type netlink (its periodic table dumps "
            f"find the long connections); with type {kind} only events that carry counters "
            "(UPDATE) can trigger an interim report",
        )
    return ExportSettings(
        exaddr,
        v.integer((*k, "engine_type"), 0, 0, 255, "a NetFlow engine type"),
        v.integer((*k, "engine_id"), 0, 0, 255, "a NetFlow engine id"),
        tuple(collectors),
        v.integer((*k, "observation_domain"), 0, 0, 2**32 - 1, "an observation domain id"),
        v.integer((*k, "template_refresh_packets"), 20, 0, 2**31, "a number of datagrams"),
        v.integer((*k, "template_refresh_seconds"), 1800, 0, 2**31, "a number of seconds"),
        v.integer((*k, "active_timeout"), 0, 0, 2**31, "a number of seconds (0 = off)"),
        rate,
        byte_rate,
        v.integer((*k, "refused_hold"), 30, 0, 86400, "a number of seconds (0: never hold)"),
    )


def _version(v: _V, key: Key, default: int) -> int:
    value = v.one(key)
    if value is None:
        return default
    if _int(value) not in NETFLOW_VERSIONS:
        raise v.expected(key, "a NetFlow version: 5, 9 or 10 (IPFIX)", value)
    return int(value)


#: ``<collector> nat_events realtime``: the create event when the connection opens.
REALTIME = "realtime"


def _nat_events(v: _V, key: Key, c: Collector) -> Collector:
    """``nat_events`` (a boolean, or ``realtime``) and ``nat_event_numbering`` of a
    <collector> (nfflowd.formats.nat_events)."""
    ek, nk = (*key, "nat_events"), (*key, "nat_event_numbering")
    numbering = v.one(nk)
    if numbering is not None and _int(numbering) not in NAT_EVENT_NUMBERINGS:
        raise v.expected(
            nk, "1 (natEvent 1/2, as ipt-netflow and Juniper) or 4 (RFC 8158: 4/5)", numbering
        )
    value = v.one(ek)
    realtime = isinstance(value, str) and value.strip().lower() == REALTIME
    try:
        on = realtime or v.boolean(ek, False)
    except ConfigError:
        what = "a boolean (1/0, yes/no, true/false, on/off) or realtime"
        raise v.expected(ek, what, value) from None
    if on and c.version == 5:
        raise v.expected(ek, "0 with version 5 (NAT event records need version 9 or 10)", value)
    if numbering is not None and not on:
        v.note(nk, "<collector> nat_event_numbering is only used with nat_events 1")
    return dataclasses.replace(
        c, nat_events=on, nat_event_numbering=int(numbering or 1), nat_realtime=realtime
    )


def _records(v: _V, key: Key, c: Collector) -> Collector:
    """``records`` of a <collector>: per_direction (v9/IPFIX's default) or triplet."""
    rk = (*key, "records")
    value = v.one(rk)
    if value is None:
        return c
    if value not in RECORDS:
        raise v.expected(
            rk,
            "per_direction (one record per direction, post-NAT elements included) or "
            "triplet (also the original direction as it left, as v5)",
            value,
        )
    if value != "triplet" and c.version == 5:
        raise v.expected(
            rk,
            "triplet with version 5 (v5 has no post-NAT fields; per_direction needs 9 or 10)",
            value,
        )
    return dataclasses.replace(c, records=value)


def _coverage(v: _V, key: Key, c: Collector) -> Collector:
    """``coverage`` of a <collector>: the coverage gaps as v9/IPFIX options records
    (nfflowd.formats.coverage_options); yes by default for 9 and 10, no for 5."""
    ck = (*key, "coverage")
    value = v.one(ck)
    if value is None:
        return c
    on = v.boolean(ck, True)
    if on and c.version == 5:
        raise v.expected(ck, "no with version 5 (options records need version 9 or 10)", value)
    return dataclasses.replace(c, coverage=on)


def _collector(v: _V, key: Key, addr: str, port: int, version: int, src: str | None) -> Collector:
    if src is not None and ipaddress.ip_address(src).version != ipaddress.ip_address(addr).version:
        raise v.error(
            key, f"source address {src} and collector address {addr} are of different IP versions"
        )
    return Collector(addr, port, version, src)


def _daemon(v: _V) -> DaemonSettings:
    v.block(("daemon",), SECTIONS["daemon"])
    rundir = v.text(("daemon", "rundir"), "/run/nfflowd")
    if not os.path.isabs(rundir):
        raise v.expected(("daemon", "rundir"), "an absolute directory path", rundir)
    rundir = os.path.normpath(rundir)
    # a run directory at the default state directory moves the default aside, next to it
    default = DaemonSettings.statedir
    statedir = v.text(("daemon", "statedir"), default + ".state" if rundir == default else default)
    if not os.path.isabs(statedir):
        raise v.expected(("daemon", "statedir"), "an absolute directory path", statedir)
    statedir = os.path.normpath(statedir)
    if statedir == rundir:
        raise v.expected(
            ("daemon", "statedir"),
            "a directory other than rundir (which a reboot empties)",
            statedir,
        )
    return DaemonSettings(
        rundir,
        v.integer(("daemon", "max_unacked"), 64, 1, MAX_UNACKED, "a number of batches"),
        daemon_stages(v),
        _daemon_user(v),
        *_daemon_shards(v),
        statedir=statedir,
    )


def _daemon_shards(v: _V) -> tuple[int, int]:
    """``correlators N`` and ``exporters M`` (M <= N: an exporter is fed by correlators)."""
    n = v.integer(("daemon", "correlators"), 1, 1, 64, "a number of correlate processes")
    m = v.integer(("daemon", "exporters"), 1, 1, 64, "a number of export processes")
    if m > n:
        raise v.expected(("daemon", "exporters"), f"at most `correlators` ({n})", str(m))
    return n, m


_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,30}[$]?$")  # shadow's default NAME_REGEX


def _daemon_user(v: _V) -> str | None:
    """A name, not a uid (useradd and supervisord's ``user=`` take names); whether it
    exists is for ``check``/``start`` on the host that runs the stages."""
    name = v.text(("daemon", "user"), "") if v.one(("daemon", "user")) is not None else None
    if name is not None and not _USER.match(name):
        raise v.expected(("daemon", "user"), "a user name (a-z, 0-9, _ and -)", name)
    return name


def validate(v: _V, path: str | None) -> Settings:
    """Every section of *v*'s tree, in order, into :class:`Settings` (*path*: the file read)."""
    source, conntrack, ct2ft = _source(v), _conntrack(v), _ct2ft(v)
    export, mirror, daemon = _export(v), mirror_section(v), _daemon(v)
    metrics, links = metrics_section(v), links_section(v, daemon.stages)
    who = who_section(v)
    notes = tuple(v.notes)
    return Settings(
        source, conntrack, ct2ft, export, mirror, daemon, path, notes, metrics, links, who
    )
