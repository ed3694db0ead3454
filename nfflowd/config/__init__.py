"""nfflowd's settings: read a configuration file, merge it over the defaults, validate it.

Formats, chosen by file extension: ``.yml``/``.yaml`` YAML, ``.json`` JSON, ``.toml``
TOML, anything else Config::General (:mod:`nfflowd.config.general`), the 2009
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
import json
import os
import tempfile
import types
import typing
from collections.abc import Mapping
from importlib import resources
from typing import Any

from nfflowd.config import general as cg
from nfflowd.config.links import stage_links
from nfflowd.config.sections import FLOW_SEND_ARGS_ERROR as FLOW_SEND_ARGS_ERROR
from nfflowd.config.sections import SECTIONS, validate
from nfflowd.config.settings import _V, _at, _dotted, _show, _suggest
from nfflowd.config.settings import Collector as Collector
from nfflowd.config.settings import ConfigError as ConfigError
from nfflowd.config.settings import ConntrackSettings as ConntrackSettings
from nfflowd.config.settings import Ct2ftSettings as Ct2ftSettings
from nfflowd.config.settings import DaemonSettings as DaemonSettings
from nfflowd.config.settings import Dispatcher as Dispatcher
from nfflowd.config.settings import ExportSettings as ExportSettings
from nfflowd.config.settings import LinkSettings as LinkSettings
from nfflowd.config.settings import MetricsSettings as MetricsSettings
from nfflowd.config.settings import MirrorSettings as MirrorSettings
from nfflowd.config.settings import Settings as Settings
from nfflowd.config.settings import SourceSettings as SourceSettings
from nfflowd.config.settings import WhoSettings as WhoSettings

#: Version of the resolved-settings JSON (settings.json in the run directory).
SCHEMA = 1


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
    return validate(v, path)


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


def dump_resolved(s: Settings, path: str, *, group: int | None = None) -> None:
    """Write *s* as JSON to *path* atomically (temp file, fsync, rename), mode 0600.

    With *group* (``<daemon> user``'s group, see nfflowd.ops.privileges) root:*group*
    0640 instead: the unprivileged stages read the file, only root writes it.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".settings.", suffix=".tmp", dir=directory)
    try:
        if group is not None:
            os.fchown(fd, -1, group)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(to_dict(s), fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), 0o600 if group is None else 0o640)  # not by name
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
    ingest: dict[str, Any] = {"source": d["source"], "active_timeout": s.export.active_timeout}
    if s.source.type == "conntrack":
        ingest["conntrack"] = d["conntrack"]
    out = {
        "ingest": ingest,
        "correlate": {"ct2ft": d["ct2ft"], "active_timeout": s.export.active_timeout},
        "export": {"export": d["export"]},
        "mirror": {"mirror": d["mirror"], "exaddr": s.export.exaddr},
    }
    for stage, part in out.items():
        part["links"] = stage_links(s.links, stage)
        if stage != "correlate":  # the stages that journal coverage (nfflowd.pipeline.coverage)
            part["statedir"] = s.daemon.statedir
    return out
