"""The configuration tree every format reads into, and the YAML, JSON and TOML readers.

A configuration file becomes a :class:`Document`: a plain tree (str / list /
dict values, whatever the format's scalars are) and, for every key path of it,
the file and line where it was written.  :func:`read_data` reads the data
formats (``.yml``/``.yaml`` YAML, ``.json`` JSON, ``.toml`` TOML); Config::General,
the 2009 tool's format, is :mod:`nfflowd.config.general`, which also picks the
reader for a file (:func:`nfflowd.config.general.read`).

A file is untrusted input until it is validated, so reading it is bounded in
time and memory whatever it holds: at most :data:`MAX_BYTES` (a file and what it
includes), :data:`MAX_DEPTH` levels of nesting and, for YAML, :data:`MAX_NODES`
values once its aliases are expanded (a self-referencing alias or an "alias
bomb" is a :class:`ParseError` naming its line, not a RecursionError or
gigabytes of memory).
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

try:
    from yaml._yaml import CParser
except ImportError:  # PyYAML without LibYAML: the pure-Python parser (_PyLoader) only

    class CParser:  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            raise NotImplementedError("PyYAML without LibYAML")


#: A position in the tree: block and key names, list indexes.
Key = tuple[str | int, ...]
#: Where something was written: (file or None for a string, 1-based line).
Origin = tuple[str | None, int]

#: File extensions read by :func:`read_data`; any other is Config::General.
DATA_EXTENSIONS = (".yml", ".yaml", ".json", ".toml")
#: The most a configuration file (with everything it includes) may hold.
MAX_BYTES = 128 * 1024  # 40 times defaults.conf; PyYAML reads it within ~2 s
#: The deepest nesting of blocks, mappings and lists (nfflowd's own needs 5).
MAX_DEPTH = 32
#: The most values a YAML document may have once its aliases are expanded.
MAX_NODES = 100_000
#: The largest integer a file may hold (every setting fits in 64 bits).
MAX_INT_BITS = 1024
#: The longest YAML integer (its sexagesimal form ``1:2:3`` costs quadratic time).
MAX_YAML_INT = 400


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


def read_bytes(path: str, budget: int = MAX_BYTES) -> bytes:
    """The content of *path*, refused (ParseError) when longer than *budget* bytes; never
    reads more than that (a ``/dev/zero`` included is an error, not a hang)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(budget + 1)
    except OSError as exc:
        raise ParseError(f"cannot read: {exc.strerror}", path, None) from None
    except ValueError:  # open() of a name with a NUL byte (an <<include>> can hold one)
        raise ParseError("cannot read: a file name with a NUL byte", repr(path), None) from None
    if len(data) > budget:
        raise ParseError(
            f"larger than {MAX_BYTES // 1024} KiB (a configuration file with what it "
            "includes); refused",
            path,
            None,
        )
    return data


def clip(text: str, limit: int = 60) -> str:
    """*text* for an error message: at most *limit* characters of it, and how long it is."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def read_data(path: str, ext: str) -> Document:
    """Read the YAML, JSON or TOML file *path* (*ext* one of :data:`DATA_EXTENSIONS`,
    lower case); the root maps to ``(path, 0)``."""
    text = decode(read_bytes(path), path)
    origins: dict[Key, Origin] = {(): (path, 0)}
    try:
        if ext == ".toml":
            _check_toml_keys(text, path)
            tree: Any = tomllib.loads(text)
        elif ext == ".json":
            tree = json.loads(text)
            _check_tree(tree, path, ints=False)  # before it is read again as YAML
            _yaml_origins_if_same(text, tree, path, origins)
        else:
            tree = load_yaml(text, path, origins)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\s*\(at line (\d+), column \d+\)", str(exc))
        msg = str(exc)[: m.start()] if m else str(exc)
        raise ParseError(f"TOML syntax: {msg}", path, int(m[1]) if m else None) from None
    except json.JSONDecodeError as exc:
        raise ParseError(f"JSON syntax: {exc.msg}", path, exc.lineno) from None
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, path) from None
    except RecursionError:
        raise ParseError(_too_deep(), path, None) from None
    except ValueError as exc:  # an integer beyond int()'s limit; a TOML date out of range
        raise _value_error(exc, text, path) from None
    tree = {} if tree is None else tree
    if not isinstance(tree, dict):
        raise ParseError(
            f"expected a mapping of blocks at the top, got {type(tree).__name__}", path, 1
        )
    _check_tree(tree, path, origins)
    _check_keys(tree, (), origins)
    return Document(tree, origins, [])


def _too_deep() -> str:
    return f"nested more than {MAX_DEPTH} levels deep"


def _yaml_error(exc: yaml.YAMLError, path: str | None) -> ParseError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if "maximum nesting depth" in str(problem):  # LibYAML's own bound, met first
        exc, problem = _Refused(), _too_deep()
    what = "YAML" if isinstance(exc, _Refused) else "YAML syntax"
    return ParseError(f"{what}: {problem}", path, mark.line + 1 if mark else None)


def _value_error(exc: ValueError, text: str, path: str) -> ParseError:
    """A value the format's reader could not convert (ValueError, not its syntax error)."""
    limit = sys.get_int_max_str_digits()
    digits = re.search(rf"\d{{{limit + 1},}}", text) if limit else None
    if digits is not None:
        line = text.count("\n", 0, digits.start()) + 1
        return ParseError(f"a number of more than {limit} digits", path, line)
    return ParseError(f"a value that cannot be read: {clip(str(exc), 200)}", path, None)


#: Where a TOML key's dots are counted: strings and comments are skipped, these end a key.
_TOML_SPECIAL = re.compile(r"[\"'#=\[\]{},\n.]")


def _check_toml_keys(text: str, path: str) -> None:
    """ParseError when a TOML key has more than :data:`MAX_DEPTH` dotted parts.

    tomllib's cost grows with the square of a key's parts (1,200 parts: 0.1 s, 30,000:
    9 s), so they are counted first, in one pass: the dots between two of ``= [ ] { } ,``
    or a line's end, outside strings and comments (a float's one dot counts too).
    """
    i, line, dots = 0, 1, 0
    while (m := _TOML_SPECIAL.search(text, i)) is not None:
        c, j = m.group(), m.start()
        i = j + 1
        if c == ".":
            dots += 1
            if dots > MAX_DEPTH:
                raise ParseError(f"a dotted key of more than {MAX_DEPTH} parts", path, line)
        elif c == "#":
            end = text.find("\n", j)
            i = len(text) if end < 0 else end
        elif c in "\"'":
            quote = c * 3 if text.startswith(c * 3, j) else c
            end = _toml_string_end(text, j + len(quote), quote)
            line += text.count("\n", j, end)
            i = end
        else:
            dots = 0
            line += c == "\n"


def _toml_string_end(text: str, start: int, quote: str) -> int:
    """Where the string opened by *quote* before *start* ends (past its closing quote; a
    one-line string also at the line's end).  Backslashes escape in basic strings only."""
    k = start
    while True:
        end = text.find(quote, k)
        if len(quote) == 1:
            newline = text.find("\n", k, len(text) if end < 0 else end)
            if newline >= 0:
                return newline
        if end < 0:
            return len(text)
        before = end
        while before > start and text[before - 1] == "\\":
            before -= 1
        if quote[0] == "'" or (end - before) % 2 == 0:  # not an escaped quote
            return end + len(quote)
        k = end + 1


def _check_tree(
    tree: Any, path: str | None, origins: dict[Key, Origin] | None = None, *, ints: bool = True
) -> None:
    """ParseError when *tree* nests deeper than :data:`MAX_DEPTH` or holds an integer of
    more than :data:`MAX_INT_BITS` bits (YAML's ``0x``/sexagesimal and TOML's ``0x``
    spell them without 4300 digits; str() of one would raise ValueError later)."""
    level: list[tuple[Any, Key]] = [(tree, ())] if isinstance(tree, dict | list) else []
    for _ in range(MAX_DEPTH):  # the top is level 1
        below: list[tuple[Any, Key]] = []
        for node, key in level:
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for k, child in items:
                if isinstance(child, dict | list):
                    below.append((child, (*key, k)))
                elif ints and isinstance(child, int) and child.bit_length() > MAX_INT_BITS:
                    at, known = (*key, k), origins or {}
                    lines = (known[at[:n]][1] for n in range(len(at), 0, -1) if at[:n] in known)
                    too_big = f"a number of more than {MAX_INT_BITS} bits"
                    raise ParseError(too_big, path, next(lines, None))
        level = below
        if not level:
            return
    raise ParseError(_too_deep(), path, None)


class _Refused(ComposerError):
    """A YAML document beyond the bounds above (well-formed YAML otherwise)."""


def _refused(problem: str, mark: Any) -> ComposerError:
    return _Refused(None, None, problem, mark)


class _BoundedComposer(Composer):
    """PyYAML's composer refusing what would make the tree unbounded: nesting deeper
    than :data:`MAX_DEPTH`, an alias inside the node it names (a cycle), more than
    :data:`MAX_NODES` values once aliases are expanded.  Mixed with a parser below, and
    before the constructor, whose errors on a value its tag cannot hold it names."""

    peek_event: Any  # the parser's

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """The constructor's, which for an explicit tag on a value it cannot hold (``!!int
        ""``, ``!!timestamp x``, ``!!bool maybe``) raised IndexError, AttributeError,
        KeyError ... instead of a YAML error."""
        try:
            return super().construct_object(node, deep)  # type: ignore[misc]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            shown = clip(str(node.value)) if isinstance(node, yaml.ScalarNode) else "this node"
            problem = f"{node.tag} cannot hold {shown!r} ({type(exc).__name__})"
            raise _Refused(None, None, problem, node.start_mark) from None

    def bound(self) -> None:
        #: id(node) -> (values once expanded, depth once expanded), for complete nodes
        self.expanded: dict[int, tuple[int, int]] = {}
        self.level = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: Any = self.peek_event()
        collection = isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent)
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self.expanded:
                cycle = f"alias *{event.anchor} is inside the node it names (a cycle)"
                raise _refused(cycle, event.start_mark)
            return super().compose_node(parent, index)
        self.level += collection  # the top mapping is level 1, as for JSON and TOML
        if self.level > MAX_DEPTH:
            raise _refused(_too_deep(), event.start_mark)
        node = super().compose_node(parent, index)
        self.level -= collection
        if node is None:
            return None
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        values, depth = 1, 0
        for child in children:
            n, d = self.expanded[id(child)]
            values, depth = values + n, max(depth, d)
        if values > MAX_NODES:
            bomb = f"more than {MAX_NODES} values once its aliases are expanded"
            raise _refused(bomb, node.start_mark)
        depth += collection
        if depth > MAX_DEPTH:
            raise _refused(_too_deep() + " through aliases", node.start_mark)
        self.expanded[id(node)] = (values, depth)
        return node


def _yaml_int(loader: Any, node: yaml.ScalarNode) -> Any:
    """A YAML integer, refused when longer than :data:`MAX_YAML_INT` characters."""
    text = str(node.value)
    if len(text) > MAX_YAML_INT:
        problem = f"an integer of more than {MAX_YAML_INT} characters"
        raise _Refused(None, None, problem, node.start_mark)
    return loader.construct_yaml_int(node)


class _PyLoader(_BoundedComposer, yaml.SafeLoader):
    """The bounded composer on PyYAML's pure-Python scanner and parser."""

    def __init__(self, stream: str) -> None:
        yaml.SafeLoader.__init__(self, stream)
        self.bound()


class _CLoader(_BoundedComposer, CParser, SafeConstructor, Resolver):
    """The bounded composer on LibYAML's scanner and parser (4 times as fast)."""

    def __init__(self, stream: str) -> None:
        CParser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.bound()


for _loader in (_PyLoader, _CLoader):
    _loader.add_constructor("tag:yaml.org,2002:int", _yaml_int)


def load_yaml(text: str, path: str | None, origins: dict[Key, Origin] | None = None) -> Any:
    """The YAML document *text* (safe types only), within the bounds above; with *origins*,
    the line of every key path too.  Raises yaml.YAMLError (bounds included) or ValueError."""
    loader = _CLoader(text) if yaml.__with_libyaml__ else _PyLoader(text)
    try:
        node = loader.get_single_node()
        tree = None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()
    if origins is not None:
        _yaml_origins(node, (), path or "", origins)
    return tree


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
    if len(text) > MAX_BYTES // 2:  # line numbers are a nicety: not worth PyYAML's seconds
        return
    found: dict[Key, Origin] = {}
    try:
        same = load_yaml(text, file, found) == tree
    except (yaml.YAMLError, ValueError, RecursionError):
        return
    if same:
        out.update(found)


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
