"""The configuration tree every format reads into, and the YAML, JSON and TOML readers.

A configuration file becomes a :class:`Document`: a plain tree (str / list /
dict values, whatever the format's scalars are) and, for every key path of it,
the file and line where it was written.  :func:`read_data` reads the data
formats (``.yml``/``.yaml`` YAML, ``.json`` JSON, ``.toml`` TOML); Config::General,
the 2009 tool's format, is :mod:`nfflowd.config.general`, which also picks the
reader for a file (:func:`nfflowd.config.general.read`).
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from typing import Any

import yaml

#: A position in the tree: block and key names, list indexes.
Key = tuple[str | int, ...]
#: Where something was written: (file or None for a string, 1-based line).
Origin = tuple[str | None, int]

#: File extensions read by :func:`read_data`; any other is Config::General.
DATA_EXTENSIONS = (".yml", ".yaml", ".json", ".toml")


class ParseError(Exception):
    """Bad configuration syntax (any format) at *file*:*line*."""

    def __init__(
        self, message: str, file: str | None, line: int | None, key: Key | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line or None
        self.key = key

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.file, self.line) if p is not None)
        return f"{where}: {self.message}" if where else self.message


@dataclass
class Document:
    """A parsed file: the tree (str / list / dict values), origins, parser notes."""

    tree: dict[str, Any]
    origins: dict[Key, Origin]
    notes: list[tuple[Origin, str]]


def decode(data: bytes, path: str | None) -> str:
    """UTF-8 text of a configuration file; a bad byte is a ParseError naming its line."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ParseError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path, line) from None


def read_data(path: str, ext: str) -> Document:
    """Read the YAML, JSON or TOML file *path* (*ext* one of :data:`DATA_EXTENSIONS`,
    lower case); the root maps to ``(path, 0)``."""
    try:
        with open(path, "rb") as fh:
            text = decode(fh.read(), path)
    except OSError as exc:
        raise ParseError(f"cannot read: {exc.strerror}", path, None) from None
    origins: dict[Key, Origin] = {(): (path, 0)}
    try:
        if ext == ".toml":
            tree: Any = tomllib.loads(text)
        elif ext == ".json":
            tree = json.loads(text)
            _yaml_origins_if_same(text, tree, path, origins)
        else:
            tree = yaml.load(text, Loader=yaml.SafeLoader)
            _yaml_origins(yaml.compose(text, Loader=yaml.SafeLoader), (), path, origins)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\s*\(at line (\d+), column \d+\)", str(exc))
        msg = str(exc)[: m.start()] if m else str(exc)
        raise ParseError(f"TOML syntax: {msg}", path, int(m[1]) if m else None) from None
    except json.JSONDecodeError as exc:
        raise ParseError(f"JSON syntax: {exc.msg}", path, exc.lineno) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ParseError(f"YAML syntax: {problem}", path, mark.line + 1 if mark else None) from None
    tree = {} if tree is None else tree
    if not isinstance(tree, dict):
        raise ParseError(
            f"expected a mapping of blocks at the top, got {type(tree).__name__}", path, 1
        )
    _check_keys(tree, (), origins)
    return Document(tree, origins, [])


def _yaml_origins(node: yaml.Node | None, path: Key, file: str, out: dict[Key, Origin]) -> None:
    if isinstance(node, yaml.MappingNode):
        for knode, vnode in node.value:
            if isinstance(knode, yaml.ScalarNode):
                child = (*path, knode.value)
                _yaml_origins(vnode, child, file, out)
                out[child] = (file, knode.start_mark.line + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*path, i)] = (file, item.start_mark.line + 1)
            _yaml_origins(item, (*path, i), file, out)


def _yaml_origins_if_same(text: str, tree: Any, file: str, out: dict[Key, Origin]) -> None:
    """JSON reports no positions; when the text reads the same as YAML, use YAML's."""
    try:
        if yaml.load(text, Loader=yaml.SafeLoader) == tree:
            _yaml_origins(yaml.compose(text, Loader=yaml.SafeLoader), (), file, out)
    except yaml.YAMLError:
        pass


def _check_keys(tree: Any, path: Key, origins: dict[Key, Origin]) -> None:
    if isinstance(tree, list):
        for i, item in enumerate(tree):
            _check_keys(item, (*path, i), origins)
    elif isinstance(tree, dict):
        for k, v in tree.items():
            if not isinstance(k, str):
                at = (*path, str(k))
                file, line = next(
                    origins[at[:n]] for n in range(len(at), -1, -1) if at[:n] in origins
                )
                raise ParseError(f"keys must be text, got {k!r}", file, line, path)
            _check_keys(v, (*path, k), origins)
