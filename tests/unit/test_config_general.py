"""Config::General parsing (and the YAML/JSON/TOML readers and merge) down to the tree level."""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfflowd.config import general as cg


def parse(text: str) -> dict[str, Any]:
    return cg.parse(text, filename="t.conf").tree


# ---------------------------------------------------------------- key/value lines


def test_key_value_forms_and_case() -> None:
    tree = parse("a 1\nb = 2\nc=3\nD\t \tfour  words here \nE\n")
    assert tree == {"a": "1", "b": "2", "c": "3", "D": "four  words here", "E": ""}


def test_quoted_values_lose_their_quotes_only_when_whole() -> None:
    tree = parse('a "  padded  "\nb "x" y\nc ""\n')
    assert tree == {"a": "  padded  ", "b": '"x" y', "c": ""}


def test_repeated_keys_become_lists_in_order() -> None:
    assert parse("args 1\nargs 2\nargs 3\nx y\n") == {"args": ["1", "2", "3"], "x": "y"}


def test_force_array_brackets_make_a_one_element_list() -> None:
    assert parse("d [ screen ]\ne [a]\ne b\n") == {"d": ["screen"], "e": ["a", "b"]}


# ---------------------------------------------------------------- comments, continuation, here-docs


def test_comments_and_escaped_hash() -> None:
    text = "# full line\n  # indented\na 1 # trailing\nb x\\#y\n\n   \nc 2#3\n"
    assert parse(text) == {"a": "1", "b": "x#y", "c": "2"}


def test_c_comments_single_and_multi_line() -> None:
    text = "a 1 /* inline */\n/* start\n<b>\nnot 1\n</b>\nend */ c 3\nd 4\n"
    assert parse(text) == {"a": "1", "c": "3", "d": "4"}


def test_unclosed_c_comment_is_a_note() -> None:
    doc = cg.parse("a 1\n/* never closed\nb 2\n", filename="t.conf")
    assert doc.tree == {"a": "1"}
    assert doc.notes == [(("t.conf", 2), "C comment /* is never closed: rest of file ignored")]


def test_backslash_continuation_joins_lines_at_the_first_line() -> None:
    doc = cg.parse("x 0\nformat -E -e NEW \\\n    -o \\\n  timestamp\ny 1\n", filename="t.conf")
    assert doc.tree["format"] == "-E -e NEW -o timestamp"
    assert doc.origins[("format",)] == ("t.conf", 2)
    assert doc.origins[("y",)] == ("t.conf", 5)


def test_here_document_with_indented_end_marker() -> None:
    text = "<a>\n  msg <<EOT\n      line one # kept\n        line two\n    EOT\n  k v\n</a>\n"
    doc = cg.parse(text, filename="t.conf")
    assert doc.tree == {"a": {"msg": "line one # kept\n    line two", "k": "v"}}
    assert doc.origins[("a", "msg")] == ("t.conf", 2)


def test_crlf_and_bom() -> None:
    tree = cg.parse("\ufeff<a>\r\n  k v\r\n</a>\r\n").tree
    assert tree == {"a": {"k": "v"}}


# ---------------------------------------------------------------- blocks


def test_nested_blocks_repeated_blocks_and_origins() -> None:
    text = (
        "<export>\n"  # 1
        "  <collector>\n"  # 2
        "    port 1\n"  # 3
        "  </collector>\n"  # 4
        "  <collector>\n"  # 5
        "    port 2\n"  # 6
        "    port 3\n"  # 7
        "  </collector>\n"  # 8
        "</export>\n"  # 9
    )
    doc = cg.parse(text, filename="f")
    assert doc.tree == {"export": {"collector": [{"port": "1"}, {"port": ["2", "3"]}]}}
    assert doc.origins[("export",)] == ("f", 1)
    assert doc.origins[("export", "collector")] == ("f", 2)
    assert doc.origins[("export", "collector", 1)] == ("f", 5)
    assert doc.origins[("export", "collector", 1, "port", 1)] == ("f", 7)
    assert doc.origins[("export", "collector", 0, "port")] == ("f", 3)


def test_named_blocks_and_quoted_block_names() -> None:
    text = '<coll a>\nx 1\n</coll>\n<coll "b c">\nx 2\n</coll>\n<"q r">\ny 3\n</"q r">\n'
    assert parse(text) == {"coll": {"a": {"x": "1"}, "b c": {"x": "2"}}, "q r": {"y": "3"}}


def test_empty_block_shorthand() -> None:
    assert parse("<flow_import/>\n<a>\n<b />\n</a>\n") == {"flow_import": {}, "a": {"b": {}}}


def test_mismatched_end_tag_closes_innermost_block_with_a_note() -> None:
    doc = cg.parse("<flow_send>\nargs 1\n</flowsend>\n", filename="t.conf")
    assert doc.tree == {"flow_send": {"args": "1"}}
    assert doc.notes == [
        (("t.conf", 3), "</flowsend> closes <flow_send> (line 1); the names differ")
    ]


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("<a>\nk v\n", 1, "block <a> is never closed"),
        ("<a>\n<b>\n</b>\n", 1, "block <a> is never closed"),
        ("k v\n</a>\n", 2, "</a> closes no open block"),
        ("<a\nk v\n</a>\n", 1, "malformed block tag '<a'"),
        ("<>\n", 1, "malformed block tag"),
        ("<a><b>\nk v\n</b></a>\n", 1, "one block tag per line"),
        ("k <<EOF\nv\n", 1, "here-document <<EOF has no end marker"),
        ("k v \\\n", 1, "ends with a backslash"),
        ("= v\n", 1, "a value without a key"),
        ("a 1\n<c x>\n</c>\n<c>\n</c>\n<c y>\n</c>\n", 6, "named block <c y> cannot join"),
    ],
)
def test_syntax_errors_name_the_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(cg.ParseError) as info:
        cg.parse(text, filename="t.conf")
    assert info.value.line == line
    assert info.value.file == "t.conf"
    assert fragment in info.value.message
    assert str(info.value).startswith(f"t.conf:{line}: ")


def test_bad_utf8_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "x.conf"
    p.write_bytes(b"a 1\nb 2\nc \xff\n")
    with pytest.raises(cg.ParseError) as info:
        cg.parse_file(str(p))
    assert (info.value.file, info.value.line) == (str(p), 3)
    assert "not UTF-8" in info.value.message


# ---------------------------------------------------------------- includes


def test_include_relative_to_the_including_file_once(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inc.conf").write_text("<ct2ft>\n  ttl 5\n</ct2ft>\n")
    main = tmp_path / "main.conf"
    main.write_text("a 1\n<<include sub/inc.conf>>\n<<INCLUDE sub/inc.conf>>\nb 2\n")
    doc = cg.parse_file(str(main))
    assert doc.tree == {"a": "1", "ct2ft": {"ttl": "5"}, "b": "2"}
    assert doc.origins[("ct2ft", "ttl")] == (str(tmp_path / "sub" / "inc.conf"), 2)
    assert doc.origins[("b",)] == (str(main), 4)


def test_include_of_itself_is_ignored_and_missing_include_is_an_error(tmp_path: Path) -> None:
    main = tmp_path / "main.conf"
    main.write_text("a 1\n<<include main.conf>>\n<<include nope.conf>>\n")
    with pytest.raises(cg.ParseError) as info:
        cg.parse_file(str(main))
    assert (info.value.file, info.value.line) == (str(main), 3)
    assert "cannot read" in info.value.message and "nope.conf" in info.value.message


# ---------------------------------------------------------------- round trip property

_KEY = st.text(string.ascii_letters + "_", min_size=1, max_size=8)
_SAFE = string.ascii_letters + string.digits + "-_.,:/%@+ "
_VALUE = (
    st.text(_SAFE, min_size=1, max_size=20)
    .map(str.strip)
    .filter(lambda v: bool(v) and "/*" not in v and "*/" not in v)
)


def _trees(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    leaf: st.SearchStrategy[Any] = st.one_of(_VALUE, st.lists(_VALUE, min_size=2, max_size=3))
    if depth > 0:
        sub = _trees(depth - 1)
        leaf = st.one_of(leaf, sub, st.lists(sub, min_size=2, max_size=2))
    return st.dictionaries(_KEY, leaf, max_size=4)


def _emit(tree: dict[str, Any], indent: str = "") -> str:
    out = []
    for k, v in tree.items():
        for item in v if isinstance(v, list) else [v]:
            if isinstance(item, dict):
                out.append(f"{indent}<{k}>\n{_emit(item, indent + '  ')}{indent}</{k}>\n")
            else:
                out.append(f"{indent}{k} {item}\n")
    return "".join(out)


@settings(max_examples=200, deadline=None)
@given(_trees(2))
def test_emitted_trees_parse_back_identically(tree: dict[str, Any]) -> None:
    assert parse(_emit(tree)) == tree


# ---------------------------------------------------------------- other formats, merge


def test_read_yaml_with_line_origins(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("# c\nexport:\n  collector:\n    - address: 192.0.2.1\n      port: 2055\n")
    doc = cg.read(str(p))
    assert doc.tree == {"export": {"collector": [{"address": "192.0.2.1", "port": 2055}]}}
    assert doc.origins[("export", "collector", 0, "port")] == (str(p), 5)
    assert doc.origins[()] == (str(p), 0)


def test_read_json_takes_line_origins_from_yaml_when_equal(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text('{\n  "ct2ft": {\n    "ttl": 5\n  }\n}\n')
    doc = cg.read(str(p))
    assert doc.tree == {"ct2ft": {"ttl": 5}}
    assert doc.origins[("ct2ft", "ttl")] == (str(p), 3)


def test_read_toml_has_only_the_file(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[ct2ft]\nttl = 5\n")
    doc = cg.read(str(p))
    assert doc.tree == {"ct2ft": {"ttl": 5}}
    assert doc.origins == {(): (str(p), 0)}


def test_unknown_extension_is_config_general(tmp_path: Path) -> None:
    p = tmp_path / "nfflowd.ini"
    p.write_text("<ct2ft>\n ttl 5\n</ct2ft>\n")
    assert cg.read(str(p)).tree == {"ct2ft": {"ttl": "5"}}


@pytest.mark.parametrize(
    ("name", "text", "line", "fragment"),
    [
        ("a.yaml", "a:\n  b: 1\n c: 2\n", 3, "YAML syntax"),
        ("a.yml", "- 1\n", 1, "expected a mapping"),
        ("a.yaml", "a:\n  1: x\n", 2, "keys must be text"),
        ("a.json", '{"a": 1,\n}\n', 2, "JSON syntax"),
        ("a.toml", "a = 1\nb = \n", 2, "TOML syntax"),
    ],
)
def test_syntax_errors_of_other_formats(
    tmp_path: Path, name: str, text: str, line: int, fragment: str
) -> None:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(cg.ParseError) as info:
        cg.read(str(p))
    assert (info.value.file, info.value.line) == (str(p), line)
    assert fragment in info.value.message


def test_read_missing_file(tmp_path: Path) -> None:
    for name in ("none.conf", "none.yaml"):
        with pytest.raises(cg.ParseError, match="cannot read"):
            cg.read(os.path.join(tmp_path, name))


def test_merge_is_merge_hashes_with_origins() -> None:
    base = cg.parse("<a>\n x 1\n y 2\n l 1\n l 2\n</a>\nb 1\n", filename="base")
    over = cg.parse("<a>\n y 3\n l 9\n</a>\n", filename="over")
    merged = cg.merge(base, over)
    assert merged.tree == {"a": {"x": "1", "y": "3", "l": "9"}, "b": "1"}
    assert merged.origins[("a", "x")] == ("base", 2)
    assert merged.origins[("a", "y")] == ("over", 2)
    assert merged.origins[("a", "l")] == ("over", 3)
    assert ("a", "l", 1) not in merged.origins  # the replaced list's positions are gone
    assert merged.origins[("a",)] == ("over", 1)


def test_fold_reads_a_repeated_block_as_one_and_moves_origins() -> None:
    doc = cg.parse("<a>\nx 1\n<b>\ny 2\n</b>\n</a>\n<a>\nx 3\nz 4\n</a>\n", filename="f")
    merged = cg.fold(doc.tree["a"], ("a",), doc.origins)
    assert merged == {"x": ["1", "3"], "b": {"y": "2"}, "z": "4"}
    assert doc.origins[("a",)] == ("f", 1)
    assert doc.origins[("a", "x")] == ("f", 2)
    assert doc.origins[("a", "x", 1)] == ("f", 8)
    assert doc.origins[("a", "b", "y")] == ("f", 4)
    assert doc.origins[("a", "z")] == ("f", 9)
    assert not [k for k in doc.origins if len(k) > 1 and isinstance(k[1], int)]


def test_merge_folds_a_repeated_block_over_a_block() -> None:
    base = cg.parse("<a>\nx 1\ny 2\n</a>\n", filename="base")
    over = cg.parse("<a>\ny 3\n</a>\n<a>\nz 4\n</a>\n", filename="over")
    merged = cg.merge(base, over)
    assert merged.tree == {"a": {"x": "1", "y": "3", "z": "4"}}
    assert merged.origins[("a", "z")] == ("over", 5)


def test_merge_keeps_base_for_yaml_nulls_and_expand_dotted_keys() -> None:
    base = cg.parse("<ptee>\n x 1\n</ptee>\n", filename="base")
    over = cg.Document({"ptee": None, "ct2ft": {"ttl": 1}}, {}, [])
    assert cg.merge(base, over).tree == {"ptee": {"x": "1"}, "ct2ft": {"ttl": 1}}
    doc = cg.expand({"source.type": "file", "source": {"path": ["a"]}, "x": {"y.z": 1}}, ("o", 0))
    assert doc.tree == {"source": {"type": "file", "path": ["a"]}, "x": {"y": {"z": 1}}}
    assert doc.origins[("source", "type")] == ("o", 0)
