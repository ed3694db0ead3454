"""Configuration files -> a plain tree with line numbers; mostly Config::General syntax.

:func:`read` picks the format by extension: ``.yml``/``.yaml`` YAML, ``.json``
JSON, ``.toml`` TOML (all three read by :mod:`nfflowd.config.documents`, home of
the :class:`Document` tree), anything else Config::General; :func:`merge` lays
one tree over another as the 2009 tool did.  Nothing here knows what the keys
mean (that is :mod:`nfflowd.config`).

The 2009 tool read its file with Config::Any (``use_ext``), which hands ``.conf``
files to Config::General 2.x with ``-ForceArray => 1`` and every other option at
its default.  This module parses that dialect:

* ``key value``, ``key = value``, ``key=value``: the key runs to the first blank
  or ``=``; the rest of the line is the value (``key`` alone has value ``""``);
  a value wholly in double quotes loses them (``"  padded "``);
* a key given more than once becomes a list, in file order; ``key [ v ]`` makes a
  one-element list (ForceArray);
* ``<block>`` ... ``</block>`` nest; a repeated block becomes a list of blocks;
  ``<block name>`` (a named block) becomes ``{"block": {"name": {...}}}``;
  ``<block/>`` is an empty block.  Config::General closes the innermost block
  at any ``</...>``; so do we, with a note when the names differ;
* ``#`` to the end of the line is a comment (``\\#`` is a literal ``#``); C
  comments ``/* ... */``; blank lines;
* a trailing backslash joins the next line (its leading blanks removed);
* here-documents ``key <<EOF`` ... ``EOF`` (an indented end marker removes that
  indentation from every line);
* ``<<include FILE>>``, relative to the including file's directory (Config::General
  used the current directory, which for a daemon is ``/``); a file already read
  is not read again, as in Config::General;
* names and values keep their case.

Reading is bounded whatever the file holds (:mod:`nfflowd.config.documents`):
:data:`~nfflowd.config.documents.MAX_BYTES` for a file with its includes, blocks
nested at most :data:`~nfflowd.config.documents.MAX_DEPTH` deep, and every pattern
is matched in time linear in the line's length.

Every key path of the tree is mapped to the file and line where it was written:
``("export", "collector", 1, "port")`` -> ``("/etc/nfflowd.conf", 12)``.  Lists
map their own path to the first element's line and each index to its element's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nfflowd.config.documents import (
    DATA_EXTENSIONS,
    MAX_BYTES,
    MAX_DEPTH,
    clip,
    decode,
    read_bytes,
    read_data,
)
from nfflowd.config.documents import Document as Document
from nfflowd.config.documents import Key as Key
from nfflowd.config.documents import Origin as Origin
from nfflowd.config.documents import ParseError as ParseError

_BLOCK_START = re.compile(r"^<([^/].*)>$")
_BLOCK_END = re.compile(r"^</(.+?)>$")
_BLOCK_NAMES = re.compile(r'^(?:"([^"]+)"|(\S+))(?:\s+(?:"([^"]+)"|(.*)))?$')
_EMPTY_BLOCK = re.compile(r"^\s*<([^/].*?)/>$")
# no lazy group followed by optional blanks and an anchor (quadratic on a long line):
# the part after the marker is taken whole and stripped in code
_HEREDOC = re.compile(r"^\s*(\S+?)(?:\s*=\s*|\s+)<<(.*)$")
_INCLUDE = re.compile(r"^\s*<<include\s(.*)>>\s*$", re.IGNORECASE)
_COMMENT = re.compile(r"(?<!\\)#.*$")
_SPLIT = re.compile(r"\s*=\s*|\s+")
_FORCE_ARRAY = re.compile(r"^\[(.+)\]$")


@dataclass
class _Heredoc:
    key: str
    text: str


@dataclass
class _Block:
    name: str
    origin: Origin
    items: dict[str, list[tuple[str | _Block, Origin]]] = field(default_factory=dict)
    forced: set[str] = field(default_factory=set)

    def add(self, key: str, item: str | _Block, origin: Origin) -> None:
        self.items.setdefault(key, []).append((item, origin))


_Line = tuple[str | _Heredoc, Origin]


class _Reader:
    """Turns physical lines into logical ones: comments, continuations, here-docs, includes."""

    def __init__(self) -> None:
        self.out: list[_Line] = []
        self.notes: list[tuple[Origin, str]] = []
        self.seen: set[str] = set()
        self.budget = MAX_BYTES  # bytes the files still to be read may hold together

    def read_file(self, path: str, origin: Origin | None) -> None:
        if "\0" in path:
            file, line = origin or (None, None)
            raise ParseError(f"cannot read {path!r}: a file name with a NUL byte", file, line)
        real = os.path.realpath(path)
        if real in self.seen:
            return
        self.seen.add(real)
        try:
            data = read_bytes(path, self.budget)
        except ParseError as exc:
            if origin is None:
                raise
            raise ParseError(f"{path}: {exc.message}", *origin) from None
        self.budget -= len(data)
        self.read_text(decode(data, path), path)

    def read_text(self, text: str, file: str | None) -> None:
        c_comment: int | None = None
        heredoc: tuple[str, str, int, list[str]] | None = None  # key, marker, line, body
        longline: tuple[str, int] | None = None
        for lineno, raw in enumerate(text.split("\n"), 1):
            line = raw.rstrip("\r")
            # C comments, before anything else (as Config::General does)
            if "/*" in line and "*/" in line[line.index("/*") + 2 :]:
                # from the first /* to the last */, and the blanks around (no regex: a
                # leading run of blanks made one quadratic on a long line)
                line = line[: line.index("/*")].rstrip() + line[line.rindex("*/") + 2 :].lstrip()
            elif line.lstrip().startswith("/*"):
                c_comment = lineno
                continue
            elif "*/" in line and c_comment is not None:
                c_comment = None
                line = line[line.index("*/") + 2 :]
            if c_comment is not None:
                continue
            if heredoc is not None:
                key, marker, start, body = heredoc
                if line.strip() != marker:  # (no regex: compiling a long marker costs seconds)
                    body.append(line)
                    continue
                indent = line[: len(line) - len(line.lstrip())]
                if indent:
                    body = [b[len(indent) :] if b.startswith(indent) else b for b in body]
                self.out.append((_Heredoc(key, "\n".join(body).strip()), (file, start)))
                heredoc = None
                continue
            line = _COMMENT.sub("", line)
            if not line.strip():
                continue
            if line.endswith("\\"):
                part = line[:-1].lstrip()
                longline = (longline[0] + part, longline[1]) if longline else (part, lineno)
                continue
            line = line.replace("\\#", "#")
            empty = _EMPTY_BLOCK.match(line)
            if empty and longline is None:
                inner = empty.group(1)
                name = inner.split()[0] if inner.split() else inner
                self.out.append((f"<{inner}>", (file, lineno)))
                self.out.append((f"</{name}>", (file, lineno)))
                continue
            hd = _HEREDOC.match(line)
            if hd and hd.group(2).strip() and longline is None:
                heredoc = (hd.group(1), hd.group(2).strip(), lineno, [])
                continue
            if longline is not None:
                self.out.append((longline[0] + line.lstrip(), (file, longline[1])))
                longline = None
                continue
            inc = _INCLUDE.match(line)
            if inc:
                target = inc.group(1).strip().strip('"')
                if not target:
                    raise ParseError("<<include>> names no file", file, lineno)
                if file is not None and not os.path.isabs(target):
                    target = os.path.join(os.path.dirname(file), target)
                self.read_file(target, (file, lineno))
                continue
            self.out.append((line, (file, lineno)))
        if heredoc is not None:
            marker = clip(heredoc[1])
            msg = f"here-document <<{marker} has no end marker {marker!r}"
            raise ParseError(msg, file, heredoc[2])
        if longline is not None:
            msg = "the line ends with a backslash (continuation) but the file ends"
            raise ParseError(msg, file, longline[1])
        if c_comment is not None:
            self.notes.append(
                ((file, c_comment), "C comment /* is never closed: rest of file ignored")
            )


def _split(text: str) -> tuple[str, str]:
    parts = _SPLIT.split(text, maxsplit=1)
    value = parts[1] if len(parts) > 1 else ""
    if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
        value = value[1:-1]
    return parts[0], value


def _build(lines: list[_Line], notes: list[tuple[Origin, str]]) -> _Block:
    root = _Block("", (None, 0))
    stack: list[tuple[_Block, str | None]] = [(root, None)]
    for item, origin in lines:
        current = stack[-1][0]
        if isinstance(item, _Heredoc):
            current.add(item.key, item.text, origin)
            continue
        text = item.strip()
        if text.startswith("<") and (text.count("<") > 1 or text.count(">") > 1):
            raise ParseError(f"{clip(text)!r}: one block tag per line", *origin)
        start = _BLOCK_START.match(text)
        if start:
            names = start.group(1).strip()
            if names.startswith('"') and names.endswith('"') and names.count('"') == 2:
                block, label = names[1:-1], None
            else:
                m = _BLOCK_NAMES.match(names)
                if m is None:
                    raise ParseError(f"malformed block tag {clip(text)}", *origin)
                block, label = m.group(1) or m.group(2), m.group(3) or m.group(4)
            if len(stack) >= MAX_DEPTH:  # the file's top level is level 1
                raise ParseError(f"blocks nested more than {MAX_DEPTH} levels deep", *origin)
            stack.append((_Block(block, origin), label))
            continue
        end = _BLOCK_END.match(text)
        if end:
            if len(stack) == 1:
                raise ParseError(f"</{end.group(1)}> closes no open block", *origin)
            block_obj, label = stack.pop()
            if end.group(1).strip() != block_obj.name:
                notes.append(
                    (
                        origin,
                        f"</{end.group(1)}> closes <{block_obj.name}> (line "
                        f"{block_obj.origin[1]}); the names differ",
                    )
                )
            _attach(stack[-1][0], block_obj, label)
            continue
        if text.startswith("<"):
            raise ParseError(
                f"malformed block tag {clip(text)!r}: expected <name> or </name>", *origin
            )
        key, value = _split(text)
        if not key:
            raise ParseError(f"{clip(text)!r}: a value without a key", *origin)
        forced = _FORCE_ARRAY.match(value)
        if forced and key not in current.items:
            current.forced.add(key)
            value = forced.group(1).strip() or forced.group(1)[-1]
        current.add(key, value, origin)
    if len(stack) > 1:
        block_obj = stack[-1][0]
        raise ParseError(
            f"block <{block_obj.name}> is never closed (no </{block_obj.name}>)", *block_obj.origin
        )
    return root


def _attach(parent: _Block, block: _Block, label: str | None) -> None:
    if label is None:
        parent.add(block.name, block, block.origin)
        return
    existing = parent.items.get(block.name)
    if existing is None:
        holder = _Block(block.name, block.origin)
        parent.add(block.name, holder, block.origin)
    elif len(existing) == 1 and isinstance(existing[0][0], _Block):
        holder = existing[0][0]
    else:
        raise ParseError(
            f"named block <{block.name} {label}> cannot join the {len(existing)} "
            f"earlier <{block.name}> entries",
            *block.origin,
        )
    holder.add(label, block, block.origin)


def _finish(block: _Block, path: Key, origins: dict[Key, Origin]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, items in block.items.items():
        kpath = (*path, key)
        origins[kpath] = items[0][1]
        if len(items) == 1 and key not in block.forced:
            item = items[0][0]
            out[key] = _finish(item, kpath, origins) if isinstance(item, _Block) else item
            continue
        values: list[Any] = []
        for i, (item, origin) in enumerate(items):
            origins[(*kpath, i)] = origin
            values.append(_finish(item, (*kpath, i), origins) if isinstance(item, _Block) else item)
        out[key] = values
    return out


def parse(text: str, *, filename: str | None = None) -> Document:
    """Parse Config::General *text*; *filename* is used in positions and for includes."""
    reader = _Reader()
    if filename is not None:
        reader.seen.add(os.path.realpath(filename))
    reader.read_text(text.removeprefix("\ufeff"), filename)
    notes = reader.notes
    origins: dict[Key, Origin] = {}
    tree = _finish(_build(reader.out, notes), (), origins)
    return Document(tree, origins, notes)


def parse_file(path: str) -> Document:
    """Parse the Config::General file *path* (ParseError if unreadable or malformed)."""
    reader = _Reader()
    reader.read_file(path, None)
    notes = reader.notes
    origins: dict[Key, Origin] = {}
    tree = _finish(_build(reader.out, notes), (), origins)
    return Document(tree, origins, notes)


def read(path: str) -> Document:
    """Read *path* in the format its extension names; the root maps to ``(path, 0)``."""
    ext = os.path.splitext(path)[1].lower()
    if ext in DATA_EXTENSIONS:
        return read_data(path, ext)
    doc = parse_file(path)
    doc.origins[()] = (path, 0)
    return doc


def merge(base: Document, over: Document) -> Document:
    """*over* laid on *base* like the 2009 tool's merge_hashes: blocks merge key by key,
    any other value (a list too) replaces; a YAML ``key:`` without a value keeps *base*'s;
    a repeated block over a block is first read as one (:func:`fold`)."""
    origins = dict(base.origins)
    tree = _merge(base.tree, over.tree, (), origins, dict(over.origins))
    return Document(tree, origins, base.notes + over.notes)


def _merge(
    base: Any, over: Any, path: Key, origins: dict[Key, Origin], over_origins: dict[Key, Origin]
) -> Any:
    if isinstance(base, dict) and _blocks(over):
        over = fold(over, path, over_origins)
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            if v is not None:
                out[k] = _merge(base.get(k), v, (*path, k), origins, over_origins)
        if path in over_origins:
            origins[path] = over_origins[path]
        elif path:  # over's format gives no position: point at over's file, not base's
            origins.pop(path, None)
        return out
    for k in _paths(base, path):  # base's positions under path, found by its shape (a scan
        origins.pop(k, None)  # of every position per value merged was quadratic)
    origins.update({k: over_origins[k] for k in _paths(over, path) if k in over_origins})
    return over


def _paths(tree: Any, path: Key) -> list[Key]:
    """*path* and the path of every value below it in *tree* (the value found there)."""
    out: list[Key] = []
    todo: list[tuple[Any, Key]] = [(tree, path)]
    while todo:
        node, at = todo.pop()
        out.append(at)
        if isinstance(node, dict):
            todo += [(v, (*at, k)) for k, v in node.items()]
        elif isinstance(node, list):
            todo += [(v, (*at, i)) for i, v in enumerate(node)]
    return out


def _blocks(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(b, dict) for b in value)


def fold(blocks: list[dict[str, Any]], key: Key, origins: dict[Key, Origin]) -> dict[str, Any]:
    """A repeated block at *key* read as one block, as Config::General -MergeDuplicateBlocks
    does: a key given in several of them becomes a list (in order).  *origins* is updated."""
    first = _where(origins, (*key, 0))
    items: dict[str, list[tuple[Any, Key]]] = {}
    for i, b in enumerate(blocks):
        for k, val in b.items():
            many = isinstance(val, list)
            for j, x in enumerate(val if many else [val]):
                items.setdefault(k, []).append((x, (*key, i, k, j) if many else (*key, i, k)))
    moves: dict[Key, Key] = {}
    merged: dict[str, Any] = {}
    lists: dict[Key, Origin] = {}
    for k, pairs in items.items():
        merged[k] = pairs[0][0] if len(pairs) == 1 else [x for x, _ in pairs]
        for j, (_, old) in enumerate(pairs):
            moves[old] = (*key, k) if len(pairs) == 1 else (*key, k, j)
        if len(pairs) > 1:
            lists[(*key, k)] = _where(origins, pairs[0][1])
    n = len(key)
    for old_key in [o for o in origins if o[:n] == key and len(o) > n]:
        origin = origins.pop(old_key)
        for m in range(len(old_key), n, -1):
            if old_key[:m] in moves:
                origins[moves[old_key[:m]] + old_key[m:]] = origin
                break
    origins.update(lists)
    origins[key] = first
    return merged


def _where(origins: dict[Key, Origin], key: Key) -> Origin:
    return next(
        (origins[key[:n]] for n in range(len(key), -1, -1) if key[:n] in origins), (None, 0)
    )


def expand(overrides: Mapping[str, Any], origin: Origin) -> Document:
    """``{"source.type": "file"}`` -> a Document ``{"source": {"type": "file"}}``."""
    tree: dict[str, Any] = {}
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        value = expand(value, origin).tree if isinstance(value, Mapping) else value
        old = node.get(last)
        node[last] = _merge(old, value, (), {}, {}) if isinstance(old, dict) else value
    origins: dict[Key, Origin] = {}
    _all_keys(tree, (), origins, origin)
    return Document(tree, origins, [])


def _all_keys(tree: Any, path: Key, out: dict[Key, Origin], origin: Origin) -> None:
    if not isinstance(tree, dict):
        out[path] = origin
    items = (
        tree.items()
        if isinstance(tree, dict)
        else enumerate(tree)
        if isinstance(tree, list)
        else ()
    )
    for k, v in items:
        _all_keys(v, (*path, k), out, origin)
