"""A hostile configuration file is a ConfigError naming the place, in bounded time and memory.

Each case is the minimal input of a finding of issue 13 (before: RecursionError,
ValueError, seconds of CPU, gigabytes of memory).
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nfflowd.config import ConfigError, load
from nfflowd.config import general as cg
from nfflowd.config.documents import (
    MAX_BYTES,
    MAX_DEPTH,
    MAX_INT_BITS,
    MAX_NODES,
    MAX_YAML_INT,
)
from nfflowd.config.sections import MAX_ARGS_LENGTH

#: What any of these inputs may cost in CPU time (the slowest took 210 s and 4.5 GB
#: before): CPU, not the wall clock, so that other load on the machine does not count.
SECONDS = 2.0
PEAK_BYTES = 64 * 1024 * 1024


@contextmanager
def bounded() -> Iterator[None]:
    """The block runs within SECONDS of CPU and allocates at most PEAK_BYTES at its peak."""
    tracemalloc.start()
    start = time.process_time()
    try:
        yield
    finally:
        took = time.process_time() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert took < SECONDS, f"took {took:.2f} s"
    assert peak < PEAK_BYTES, f"peak {peak / 1e6:.0f} MB"


def refused(tmp_path: Path, name: str, text: str | bytes) -> ConfigError:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with bounded(), pytest.raises(ConfigError) as err:
        load(str(path))
    assert str(err.value).startswith(str(path)), err.value
    return err.value


def loaded(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with bounded():
        load(str(path))


def test_a_thousand_nested_blocks(tmp_path: Path) -> None:
    err = refused(tmp_path, "c.conf", "<a>\n" * 1000 + "</a>\n" * 1000)
    assert err.line == MAX_DEPTH  # the file's top level is the first
    assert err.message == f"blocks nested more than {MAX_DEPTH} levels deep"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("deep.json", '{"a":' * 1000 + "1" + "}" * 1000),
        ("just.json", '{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1)),
        ("deep.toml", "a = " + "[" * 1000 + "]" * 1000 + "\n"),
        ("just.toml", "a = " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n"),
        ("deep.yaml", "a: " + "[" * 1000 + "]" * 1000 + "\n"),
        ("just.yaml", "a:\n" + "".join(" " * i + "- \n" for i in range(1, MAX_DEPTH + 1))),
    ],
)
def test_deep_data_files(tmp_path: Path, name: str, text: str) -> None:
    err = refused(tmp_path, name, text)
    assert f"nested more than {MAX_DEPTH} levels deep" in err.message


def test_nesting_within_the_limit_still_reads(tmp_path: Path) -> None:
    # deep enough for any block of nfflowd's, under an unknown key (a note, not an error)
    depth = MAX_DEPTH - 2
    loaded(tmp_path, "ok.json", '{"x":' + '{"a":' * depth + "1" + "}" * depth + "}")
    loaded(tmp_path, "ok.conf", "<x>\n" + "<a>\n" * depth + "</a>\n" * depth + "</x>\n")


def test_a_self_referencing_yaml_alias(tmp_path: Path) -> None:
    err = refused(tmp_path, "c.yaml", "a: &x [*x]\n")
    assert err.line == 1 and "alias *x is inside the node it names (a cycle)" in err.message


def test_a_yaml_alias_bomb(tmp_path: Path) -> None:
    rows = ["a: &a [x,x,x,x,x,x,x,x,x]"] + [
        f"{b}: &{b} [{','.join(['*' + a] * 9)}]" for a, b in zip("abcdef", "bcdefg", strict=True)
    ]
    text = "\n".join(rows) + "\n"
    assert len(text) < 256  # 9**7 values: 37 s and 4.5 GB before
    err = refused(tmp_path, "bomb.yaml", text)
    assert err.line == 6  # f: the first node past the bound
    assert f"more than {MAX_NODES} values once its aliases are expanded" in err.message


def test_yaml_aliases_within_the_bound_still_read(tmp_path: Path) -> None:
    text = (
        "export:\n  collector:\n    - &c {address: 192.0.2.1, port: 2055, version: 9}\n"
        "    - {<<: *c, port: 2056}\n"
    )
    path = tmp_path / "c.yaml"
    path.write_text(text)
    ports = [c.port for c in load(str(path)).export.collectors]
    assert ports == [2055, 2056]


DIGITS = "a number of more than 4300 digits"
BITS = f"a number of more than {MAX_INT_BITS} bits"
YAML_INT = f"YAML: an integer of more than {MAX_YAML_INT} characters"


@pytest.mark.parametrize(
    ("name", "text", "line", "message"),
    [
        ("c.json", '{"export": {"engine_id": ' + "9" * 5000 + "}}", 1, DIGITS),
        ("c.toml", "[export]\nengine_id = " + "9" * 5000 + "\n", 2, DIGITS),
        ("c.yaml", "export:\n  engine_id: " + "9" * 5000 + "\n", 2, YAML_INT),
        # no 4300 digits, yet str() of them raised ValueError while naming the bad value
        ("c.json", '{"export": {"engine_id": ' + "9" * 400 + "}}", 1, BITS),
        ("c.toml", "[export]\nengine_id = 0x" + "f" * 4000 + "\n", None, BITS),
        ("c.yaml", "export:\n  engine_id: 0x" + "f" * 300 + "\n", 2, BITS),
        ("c.yaml", "export:\n  engine_id: 1" + ":1" * 3000 + "\n", 2, YAML_INT),  # 60**3000
    ],
)
def test_integers_too_large_to_name_or_convert(
    tmp_path: Path, name: str, text: str, line: int | None, message: str
) -> None:
    err = refused(tmp_path, name, text)
    assert (err.line, err.message) == (line, message)


def test_yaml_sexagesimal_integers_are_bounded(tmp_path: Path) -> None:
    """``1:1:1:...`` is a YAML 1.1 integer in base 60: 40,000 parts took 0.8 s."""
    err = refused(tmp_path, "c.yaml", "a: 1" + ":1" * 40_000 + "\n")
    assert (err.line, err.message) == (1, YAML_INT)


def test_integers_over_4300_digits_in_config_general(tmp_path: Path) -> None:
    for key, block in (("engine_id", "export"), ("rcvbuf", "source"), ("ttl", "ct2ft")):
        err = refused(tmp_path, "c.conf", f"<{block}>\n  {key} {'9' * 5000}\n</{block}>\n")
        assert err.line == 2 and err.key == f"{block}.{key}", err
        assert "... (5002 characters)" in err.message and len(str(err)) < 400


def test_a_long_line_with_a_c_comment_is_linear(tmp_path: Path) -> None:
    line = "a" + " " * 100_000 + "b /* gone */ c"  # 8 s before (a quadratic regex)
    with bounded():
        doc = cg.parse(line + "\n")
    assert doc.tree == {"a": "bc"}  # blanks around a comment go with it (Config::General)
    assert cg.parse("x 1 /* a */ y /* b */\n").tree == {"x": "1"}  # first /* to last */


@pytest.mark.parametrize(
    "line",
    [
        "k <<a" + " " * 50_000 + "b",  # here-document marker
        "k [a" + " " * 50_000 + "b",  # forced array
        "<<include " + " " * 50_000 + "x",
        "k" + " " * 50_000 + "=" + " " * 50_000 + "v",
        "<a" + " " * 50_000 + "/>",
    ],
)
def test_long_lines_parse_in_linear_time(line: str) -> None:
    with bounded(), pytest.raises(cg.ParseError) as err:
        cg.parse(line + "\n<b>\n")  # never closed: every case ends in an error
    assert len(str(err.value)) < 300  # the line is shown clipped


def test_config_general_patterns_keep_their_meaning() -> None:
    tree = cg.parse("k [ a b ]\nh <<  EOT  \n x\nEOT\nw [ ]\n").tree
    assert tree == {"k": ["a b"], "h": "x", "w": [" "]}
    with pytest.raises(cg.ParseError, match="names no file"):
        cg.parse("<<include  >>\n")


def test_a_long_conntrack_format_is_refused_before_shlex(tmp_path: Path) -> None:
    text = "-E " * (MAX_ARGS_LENGTH // 3 + 1)
    err = refused(tmp_path, "c.conf", f"<conntrack>\n  format {text}\n</conntrack>\n")
    assert err.key == "conntrack.format" and err.line == 2
    assert f"program arguments of at most {MAX_ARGS_LENGTH} characters" in err.message


def test_a_10_mb_file_is_refused_unread(tmp_path: Path) -> None:
    text = "<conntrack>\n  format " + "-E " * 3_500_000 + "\n</conntrack>\n"  # > 120 s before
    err = refused(tmp_path, "c.conf", text)
    assert err.message.startswith(f"larger than {MAX_BYTES // 1024} KiB")


def test_includes_share_the_size_bound(tmp_path: Path) -> None:
    half = "# " + "x" * (MAX_BYTES // 2) + "\n"
    (tmp_path / "a.conf").write_text(half)
    (tmp_path / "b.conf").write_text(half)
    err = refused(tmp_path, "c.conf", "<<include a.conf>>\n<<include b.conf>>\n")
    assert err.line == 2 and "b.conf: larger than" in err.message
    err = refused(tmp_path, "z.conf", "<<include /dev/zero>>\n")
    assert err.line == 1 and "/dev/zero: larger than" in err.message


def test_an_include_with_a_nul_byte(tmp_path: Path) -> None:
    err = refused(tmp_path, "c.conf", b"<<include a\0b>>\n")
    assert err.line == 1 and "a file name with a NUL byte" in err.message


def test_many_keys_merge_in_linear_time(tmp_path: Path) -> None:
    text = "<export>\n" + "".join(f"k{i} 1\n" for i in range(12_000)) + "</export>\n"  # 210 s
    err = refused(tmp_path, "c.conf", text)
    assert err.key == "export.k0" and err.line == 2


def test_many_blocks_validate_in_linear_time(tmp_path: Path) -> None:
    blocks = "".join(f"<d{i}>\nclass screen\n</d{i}>\n" for i in range(4_000))  # 52 s before
    loaded(tmp_path, "c.conf", f"<ptee>\n<conf>\n{blocks}</conf>\n</ptee>\n")


@pytest.mark.parametrize(("name", "text"), [("c.json", "9"), ("c.json", '"x"'), ("c.yaml", "9")])
def test_a_data_file_that_is_one_scalar(tmp_path: Path, name: str, text: str) -> None:
    """Found by bench/fuzz.py (seed 2026): the depth check iterated a top-level 9."""
    err = refused(tmp_path, name, text)
    assert err.line == 1 and err.message.startswith("expected a mapping of blocks at the top")


def test_a_toml_key_of_thousands_of_dotted_parts(tmp_path: Path) -> None:
    """Found by bench/fuzz.py (seed 4): tomllib's cost is quadratic in a key's parts
    (1,184 parts: 0.1 s; 30,000 parts in 60 kB: 9 s)."""
    err = refused(tmp_path, "c.toml", "a" + ".t" * 30_000 + " = 1\n")
    assert err.line == 1 and err.message == "a dotted key of more than 32 parts"
    for text in ("[" + "t." * 40 + "t]\n", "x = {" + "t." * 40 + "t = 1}\n"):
        assert refused(tmp_path, "c.toml", text).message == "a dotted key of more than 32 parts"
    # dots in strings, comments and floats are not a key's
    loaded(
        tmp_path,
        "ok.toml",
        f"# {'.' * 100}\n[ct2ft]\nttl = 1\n[x]\ns = \"{'a.' * 50}\"\nt = '{'.' * 50}'\n"
        f'u = """\n{"." * 50}\n"""\nf = [1.5, 2.5]\n',
    )


def test_a_value_repeated_thousands_of_times_is_named_briefly(tmp_path: Path) -> None:
    err = refused(tmp_path, "c.conf", "<ct2ft>\n" + "ttl 1\n" * 5000 + "</ct2ft>\n")
    assert err.message == "expected a single value, got 5000 (lines 2, 3, 4, 5, 6, ...)"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [  # found by bench/fuzz.py (seeds 11-16), minimal inputs
        ("!!timestamp", 1, "timestamp cannot hold '' (AttributeError)"),
        ("r:\n    - s:\n      p:\n    - s:\n      p: !!int", 5, "int cannot hold '' (IndexError)"),
        ("a: !!bool maybe\n", 1, "bool cannot hold 'maybe' (KeyError)"),
        ("a: !!float ''\n", 1, "float cannot hold '' (IndexError)"),
    ],
)
def test_a_yaml_tag_on_a_value_it_cannot_hold(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    err = refused(tmp_path, "c.yaml", text)
    assert err.line == line and err.message == f"YAML: tag:yaml.org,2002:{message}"
