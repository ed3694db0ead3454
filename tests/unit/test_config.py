"""Settings: defaults, the 2009 examples, every format, every kind of error, serialisation."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfflowd import config
from nfflowd.config import (
    Collector,
    ConfigError,
    ConntrackSettings,
    Ct2ftSettings,
    DaemonSettings,
    Dispatcher,
    ExportSettings,
    MirrorSettings,
    Settings,
    SourceSettings,
)
from nfflowd.config.settings import DEFAULT_MAX_RATE

DATA = Path(__file__).resolve().parent.parent / "data" / "config"
GOOD, BAD = DATA / "good", DATA / "bad"

SCREEN = Dispatcher("screen", "screen", stderr=False, min_level="debug")
SYSLOG = Dispatcher("syslog", "syslog", ident="nfflowd", facility="local6", min_level="debug")
DEFAULT_MIRROR = MirrorSettings((SCREEN, SYSLOG))
SEED_EXPORT = ExportSettings(
    exaddr="172.16.1.1", collectors=(Collector("192.168.0.1", 65001, 5, "172.16.1.1"),)
)


def load_text(tmp_path: Path, text: str, name: str = "nfflowd.conf") -> Settings:
    p = tmp_path / name
    p.write_text(text)
    return config.load(str(p))


def ptee(body: str) -> str:
    return f"<ptee>\n<conf>\n{body}\n</conf>\n</ptee>\n"


def error_of(tmp_path: Path, text: str, name: str = "nfflowd.conf") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, name)
    return info.value


# ---------------------------------------------------------------- defaults and the 2009 examples


def test_defaults_only_match_the_dataclass_defaults() -> None:
    s = config.load(None)
    assert s == Settings(
        SourceSettings(),
        ConntrackSettings(),
        Ct2ftSettings(),
        ExportSettings(),
        DEFAULT_MIRROR,
        DaemonSettings(),
        path=None,
        notes=s.notes,
    )
    assert s.conntrack.format == "-E -e NEW,DESTROY -o timestamp"  # no -n (--src-nat filter)
    assert s.source.type == "netlink"  # the kernel itself, not the conntrack program
    assert s.notes == (
        "no collector configured (no <flow_send> args, no <export><collector>): "
        "flow records are only mirrored",
    )


def test_seed_minimal_example() -> None:
    path = str(GOOD / "seed_minimal.conf")
    s = config.load(path)
    assert s == Settings(
        SourceSettings(),
        ConntrackSettings(),
        Ct2ftSettings(),
        SEED_EXPORT,
        DEFAULT_MIRROR,
        DaemonSettings(),
        path=path,
        notes=(),
    )
    # no <source> in a 2009 file: it now reads the kernel (every connection, not only
    # what its `conntrack -E ... -n` filter let through)
    assert s.source.type == "netlink"


def test_seed_full_listing_keeps_its_values_and_notes_obsolete_blocks() -> None:
    path = str(GOOD / "seed_full.conf")
    s = config.load(path)
    # the documentation's two <flow_send> examples, pasted one after the other, read as one
    assert s.export == SEED_EXPORT
    assert s.mirror == DEFAULT_MIRROR
    assert s.ct2ft == Ct2ftSettings(604800)
    assert s.conntrack == ConntrackSettings("conntrack", "-L", "-E -e NEW,DESTROY -o timestamp -n")
    assert s.notes == (
        f"{path}:40: <flow_send> progname is no longer needed (nfflowd sends NetFlow itself)",
        f"{path}:41: <flow_send> format is no longer needed (nfflowd sends NetFlow itself)",
        f"{path}:35: <flow_import> is no longer needed (nfflowd sends NetFlow itself)",
    )


FULL = Settings(
    SourceSettings("netlink", (), "fw1", 128 << 20, reliable=True, set_sysctls=True),
    ConntrackSettings("/usr/sbin/conntrack", "-L", "-E -e NEW,DESTROY -o timestamp"),
    Ct2ftSettings(3600),
    ExportSettings(
        "203.0.113.1", 1, 7, (Collector("127.0.0.1", 2055, 9), Collector("::1", 4739, 10, "::1"))
    ),
    MirrorSettings(
        (
            Dispatcher("syslog", "syslog", ident="fw1-flows", facility="local5", format="json"),
            Dispatcher(
                "remote",
                "syslog",
                ident="nfflowd",
                facility="local6",
                min_level="info",
                address="udp://127.0.0.1:5514",
            ),
        )
    ),
    DaemonSettings("/run/nfflowd-test"),
)


@pytest.mark.parametrize("name", ["full.conf", "full.yaml", "full.json", "full.toml"])
def test_every_format_gives_the_same_settings(name: str) -> None:
    s = config.load(str(GOOD / name))
    assert dataclasses.replace(s, path=None, notes=()) == FULL
    assert s.notes == ()
    assert s.path == str(GOOD / name)


def test_config_general_syntax_features() -> None:
    s = config.load(str(GOOD / "syntax.conf"))
    assert s.export == ExportSettings(
        "192.0.2.10", collectors=(Collector("192.0.2.20", 2055, 5, "192.0.2.10"),)
    )
    assert s.conntrack == ConntrackSettings()
    assert s.ct2ft == Ct2ftSettings(86400)  # from the included file; the C-commented one ignored
    assert s.mirror == MirrorSettings((dataclasses.replace(SYSLOG, ident="nfflowd #1"),))
    assert len(s.notes) == 1 and "<flow_import> is no longer needed" in s.notes[0]


def test_unknown_top_level_blocks_are_notes_with_suggestions() -> None:
    path = str(GOOD / "unknown_block.conf")
    s = config.load(path)
    assert s.notes == (
        f"{path}:6: unknown block 'flowsend' ignored; did you mean 'flow_send'?",
        f"{path}:9: unknown block 'newer_feature' ignored",
    )
    assert len(s.export.collectors) == 1


def test_ptee_override_replaces_the_list_and_maps_the_socket_parameter() -> None:
    s = config.load(str(GOOD / "ptee_override.conf"))
    assert s.mirror == MirrorSettings((dataclasses.replace(SYSLOG, address="udp://localhost:514"),))


# ---------------------------------------------------------------- every kind of error

BAD_CASES = [
    ("unclosed_block.conf", 1, None, "block <flow_send> is never closed"),
    ("stray_end.conf", 4, None, "</flow_send> closes no open block"),
    ("malformed_tag.conf", 1, None, "malformed block tag '<ct2ft'"),
    ("heredoc_unterminated.conf", 2, None, "here-document <<END has no end marker"),
    ("not_utf8.conf", 2, None, "not UTF-8"),
    ("args_two.conf", 3, "flow_send.args", config.FLOW_SEND_ARGS_ERROR + "; got 2 values"),
    ("args_one_line.conf", 2, "flow_send.args", "got 1 value ('172.16.1.1 192.168.0.1 65001')"),
    (
        "bad_port.conf",
        4,
        "flow_send.args[2]",
        "expected a collector port number (1..65535), got '65536'",
    ),
    (
        "bad_address.conf",
        3,
        "export.collector.address",
        "expected an IPv4 or IPv6 address, got '192.168.0.300'",
    ),
    (
        "bad_ttl.conf",
        2,
        "ct2ft.ttl",
        "expected a whole number of seconds (1..2147483647), got 'one-week'",
    ),
    ("negative_ttl.conf", 2, "ct2ft.ttl", "got '-5'"),
    ("repeated_ttl.conf", 2, "ct2ft.ttl", "expected a single value, got 2 (lines 2, 3)"),
    ("repeated_block.conf", 2, "ct2ft.ttl", "expected a single value, got 2 (lines 2, 5)"),
    ("not_a_block.conf", 1, "ct2ft", "expected a block <ct2ft> ... </ct2ft>, got '60'"),
    (
        "unknown_source_type.conf",
        2,
        "source.type",
        "expected one of netlink, conntrack, file, got 'ulog'",
    ),
    ("file_without_path.conf", 2, "source.type", "expected at least one `path`"),
    ("bad_bool.conf", 3, "source.reliable", "expected a boolean"),
    (
        "unknown_dispatcher_class.conf",
        5,
        "ptee.conf.file.class",
        "unknown dispatcher class 'Log::Dispatch::File'",
    ),
    (
        "missing_dispatcher_block.conf",
        4,
        "ptee.conf.dispatchers[1]",
        "dispatcher 'remote' is listed but there is no <remote> block",
    ),
    (
        "unknown_key.conf",
        4,
        "ptee.conf.syslog.facilty",
        "unknown key in <syslog>; did you mean 'facility'?",
    ),
    ("bad_facility.conf", 4, "ptee.conf.syslog.facility", "expected a syslog facility"),
    ("bad_level.conf", 4, "ptee.conf.screen.min_level", "expected a Log::Dispatch level"),
    ("bad_syslog_address.conf", 4, "ptee.conf.syslog.address", "scheme must be udp:// or tcp://"),
    ("bad_version.conf", 5, "export.collector.version", "expected a NetFlow version: 5, 9 or 10"),
    ("collector_without_port.conf", 2, "export.collector", "expected `address` and `port`"),
    ("mixed_families.conf", 2, "export.collector", "different IP versions"),
    ("relative_rundir.conf", 2, "daemon.rundir", "expected an absolute directory path"),
    ("bad_syntax.yaml", 4, None, "YAML syntax"),
    ("not_a_mapping.yaml", 1, None, "expected a mapping of blocks"),
    ("bad_port.yaml", 6, "export.collector[1].port", "port number (1..65535), got 0"),
    ("bad_syntax.json", 3, None, "JSON syntax"),
    ("bad_ttl.json", 3, "ct2ft.ttl", "got 'soon'"),
    ("bad_syntax.toml", 3, None, "TOML syntax"),
    ("bad_engine.toml", None, "export.engine_id", "expected a NetFlow engine id (0..255), got 300"),
]


@pytest.mark.parametrize(("name", "line", "key", "fragment"), BAD_CASES)
def test_bad_files(name: str, line: int | None, key: str | None, fragment: str) -> None:
    path = str(BAD / name)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    err = info.value
    assert (err.path, err.line, err.key) == (path, line, key)
    assert fragment in err.message
    where = f"{path}:{line}" if line else path
    assert str(err) == (
        f"{where}: key {key!r}: {err.message}" if key else f"{where}: {err.message}"
    )


def test_every_bad_file_is_covered() -> None:
    assert sorted(os.listdir(BAD)) == sorted(name for name, *_ in BAD_CASES)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(str(tmp_path / "absent.conf"))


# ---------------------------------------------------------------- details of the mapping


def test_user_blocks_override_defaults_key_by_key(tmp_path: Path) -> None:
    s = load_text(tmp_path, ptee("<syslog>\nident fw\n</syslog>"))
    assert s.mirror == MirrorSettings((SCREEN, dataclasses.replace(SYSLOG, ident="fw")))


def test_new_dispatchers_take_log_dispatch_defaults_with_notes(tmp_path: Path) -> None:
    s = load_text(
        tmp_path,
        ptee("""
        dispatchers out
        dispatchers far
        <out>
            class Log::Dispatch::Screen
        </out>
        <far>
            class Log::Dispatch::Syslog
            socket tcp
        </far>
        <unused>
            class screen
        </unused>"""),
    )
    assert s.mirror == MirrorSettings(
        (
            Dispatcher("out", "screen", stderr=True),
            Dispatcher("far", "syslog", facility="user", address="tcp://localhost:514"),
        )
    )
    assert [n.split(": ", 1)[1] for n in s.notes[-3:]] == [
        "dispatcher out: no stderr: writing to stderr (Log::Dispatch::Screen)",
        "dispatcher far: no facility: using user (Log::Dispatch::Syslog)",
        "<unused> is not listed in `dispatchers`: ignored",
    ]


@pytest.mark.parametrize(
    ("lines", "address"),
    [
        ("socket native", "/dev/log"),
        ("socket unix\nsocket /run/systemd/journal/syslog", "/run/systemd/journal/syslog"),
        ("socket inet", "udp://localhost:514"),
        ("<socket>\ntype udp\nhost 192.0.2.7\nport 1514\n</socket>", "udp://192.0.2.7:1514"),
        ("address tcp://[::1]:6514", "tcp://[::1]:6514"),
        ("<socket>\ntype tcp\nhost ::1\n</socket>", "tcp://[::1]:514"),
    ],
)
def test_syslog_socket_and_address(tmp_path: Path, lines: str, address: str) -> None:
    s = load_text(tmp_path, ptee(f"<syslog>\n{lines}\n</syslog>"))
    assert s.mirror.dispatchers[1].address == address


@pytest.mark.parametrize(
    ("lines", "key", "fragment"),
    [
        ("socket pipe", "socket", "a Sys::Syslog socket type nfflowd supports"),
        ("socket unix\naddress /dev/log", "socket", "either address or socket"),
        ("address dev/log", "address", "an absolute socket path"),
        ("format %m%n\nformat json", "format", "expected a single value"),
        ("format xml", "format", "expected csv or json, got 'xml'"),
        ("ident", "ident", "expected a non-empty text value, got ''"),
        ("<ident>\n</ident>", "ident", "expected a non-empty text value, got a block"),
    ],
)
def test_syslog_option_errors(tmp_path: Path, lines: str, key: str, fragment: str) -> None:
    err = error_of(tmp_path, ptee(f"<syslog>\n{lines}\n</syslog>"))
    assert err.key == f"ptee.conf.syslog.{key}" and fragment in err.message
    assert err.line == 4


def test_repeated_dispatcher_blocks_read_as_one(tmp_path: Path) -> None:
    s = load_text(
        tmp_path, ptee("<syslog>\nident a\n</syslog>\n<syslog>\nfacility daemon\n</syslog>")
    )
    assert s.mirror.dispatchers[1] == dataclasses.replace(SYSLOG, ident="a", facility="daemon")
    err = error_of(tmp_path, ptee("<syslog>\nident a\n</syslog>\n<syslog>\nident b\n</syslog>"))
    assert (err.line, err.key) == (4, "ptee.conf.syslog.ident")
    assert err.message == "expected a single value, got 2 (lines 4, 7)"


def test_levels_facilities_and_ignored_log_dispatch_parameters(tmp_path: Path) -> None:
    s = load_text(
        tmp_path,
        ptee("""
        <screen>
            min_level 1
            newline 1
            format [%d] %m
        </screen>
        <syslog>
            min_level WARN
            facility LOG_LOCAL3
            logopt pid
        </syslog>"""),
    )
    assert s.mirror == MirrorSettings(
        (
            dataclasses.replace(SCREEN, min_level="info"),
            dataclasses.replace(SYSLOG, min_level="warning", facility="local3"),
        )
    )
    texts = [n.split(": ", 1)[1] for n in s.notes]
    assert "dispatcher screen: Log::Dispatch parameter 'newline' is ignored" in texts
    assert (
        "dispatcher screen: Log::Dispatch::Config format pattern ignored; "
        "lines are flow-tools CSV" in texts
    )
    assert "dispatcher syslog: Log::Dispatch parameter 'logopt' is ignored" in texts
    assert any("min_level warning is above notice" in t for t in texts)


def test_duplicate_dispatcher_and_named_collector(tmp_path: Path) -> None:
    s = load_text(tmp_path, ptee("dispatchers screen\ndispatchers screen"))
    assert s.mirror == MirrorSettings((SCREEN,))
    assert any("listed twice" in n for n in s.notes)
    err = error_of(
        tmp_path, "<export>\n<collector main>\naddress 192.0.2.1\n</collector>\n</export>"
    )
    assert err.key == "export.collector.main"
    assert "named blocks <x NAME> are not supported here" in err.message


def test_ttl_zero_means_the_default_as_in_2009(tmp_path: Path) -> None:
    s = load_text(tmp_path, "<ct2ft>\nttl 0\n</ct2ft>\n")
    assert s.ct2ft == Ct2ftSettings(604800)
    assert any("ttl 0 means the default" in n for n in s.notes)


def test_collector_versions_and_export_default_version(tmp_path: Path) -> None:
    s = load_text(
        tmp_path,
        """<export>
        version 10
        <collector>
            address [2001:db8::7]
            port 4739
        </collector>
        <collector>
            address 192.0.2.9
            port 2055
            version 5
        </collector>
    </export>""",
    )
    assert s.export.collectors == (Collector("2001:db8::7", 4739, 10), Collector("192.0.2.9", 2055))
    assert s.export.exaddr == "0.0.0.0"


def test_source_file_paths_rcvbuf_and_netns(tmp_path: Path) -> None:
    s = load_text(tmp_path, "<source>\ntype file\npath a.log\npath /b.log\nrcvbuf 1M\n</source>\n")
    assert s.source == SourceSettings("file", ("a.log", "/b.log"), rcvbuf=1 << 20)
    assert any("rcvbuf is only used with type netlink" in n for n in s.notes)
    for value in ("12", "1T", "4095"):
        err = error_of(tmp_path, f"<source>\nrcvbuf {value}\n</source>\n")
        assert err.key == "source.rcvbuf"
    err = error_of(tmp_path, "<source>\nnetns ../x\n</source>\n")
    assert err.key == "source.netns" and "a namespace name" in err.message
    assert load_text(tmp_path, "<source>\nnetns /proc/1/ns/net\n</source>").source.netns == (
        "/proc/1/ns/net"
    )


def test_unknown_key_in_known_block_and_top_level_key(tmp_path: Path) -> None:
    err = error_of(tmp_path, "<export>\nengine-id 3\n</export>\n")
    assert str(err) == (
        f"{tmp_path / 'nfflowd.conf'}:2: key 'export.engine-id': unknown key in <export>; did "
        "you mean 'engine_id'? (valid: exaddr, engine_type, engine_id, version, collector, "
        "observation_domain, template_refresh_packets, template_refresh_seconds, "
        "active_timeout, max_rate, max_byte_rate, refused_hold)"
    )
    s = load_text(tmp_path, "rundir /tmp\n")
    assert s.notes[0].endswith("unknown key 'rundir' ignored")


def test_obsolete_notes_only_when_the_user_sets_them(tmp_path: Path) -> None:
    s = load_text(tmp_path, "<flow_send>\nformat -V5\n</flow_send>\n")
    assert s.notes[0].split(": ", 1)[1] == (
        "<flow_send> format is no longer needed (nfflowd sends NetFlow itself)"
    )
    assert not any("no longer needed" in n for n in config.load(None).notes)


def test_yaml_flow_send_args_and_nulls_keep_defaults(tmp_path: Path) -> None:
    s = load_text(
        tmp_path, "flow_send:\n  args: [172.16.1.1, 192.168.0.1, 65001]\nptee:\n", "c.yaml"
    )
    assert (s.export, s.mirror) == (SEED_EXPORT, DEFAULT_MIRROR)


def test_overrides_dotted_and_nested(tmp_path: Path) -> None:
    p = tmp_path / "c.conf"
    p.write_text("<ct2ft>\nttl 5\n</ct2ft>\n")
    s = config.load(str(p), overrides={"source.type": "file", "source": {"path": ["x.log"]}})
    assert s.source == SourceSettings("file", ("x.log",))
    assert s.ct2ft.ttl == 5
    with pytest.raises(ConfigError) as info:
        config.load(str(p), overrides={"ct2ft.ttl": "never"})
    assert (info.value.path, info.value.line, info.value.key) == ("<overrides>", None, "ct2ft.ttl")
    with pytest.raises(ConfigError, match="did you mean 'ct2ft'"):
        config.load(None, overrides={"ct2f.ttl": 5})


@settings(max_examples=60, deadline=None)
@given(st.ip_addresses(v=4).map(str), st.ip_addresses(v=4).map(str), st.integers(1, 65535))
def test_any_valid_flow_send_args(src: str, dst: str, port: int) -> None:
    tree = {"flow_send": {"args": [src, dst, str(port)]}}
    s = config.load(None, overrides=tree)
    assert s.export.exaddr == src
    assert s.export.collectors == (Collector(dst, port, 5, src),)


# ---------------------------------------------------------------- serialisation, stages


def test_to_dict_from_dict_round_trip_through_json() -> None:
    for s in (config.load(None), config.load(str(GOOD / "full.conf"))):
        d = json.loads(json.dumps(config.to_dict(s)))
        assert d["schema"] == config.SCHEMA
        assert isinstance(d["export"]["collectors"], list)
        assert config.from_dict(d) == s


@pytest.mark.parametrize(
    ("change", "key", "fragment"),
    [
        (lambda d: d["ct2ft"].update(ttl="5"), "ct2ft.ttl", "expected int, got '5'"),
        (lambda d: d["source"].update(reliable=1), "source.reliable", "expected bool"),
        (
            lambda d: d["export"]["collectors"][0].update(extra=1),
            "export.collectors[0]",
            "unknown field 'extra'",
        ),
        (lambda d: d["export"]["collectors"][0].pop("port"), "export.collectors[0]", "missing"),
        (lambda d: d.update(schema=2), "schema", "expected settings schema 1"),
        (lambda d: d["mirror"].update(dispatchers="screen"), "mirror.dispatchers", "a list"),
    ],
)
def test_from_dict_checks_types(change: object, key: str, fragment: str) -> None:
    d = config.to_dict(config.load(str(GOOD / "full.conf")))
    change(d)  # type: ignore[operator]
    with pytest.raises(ConfigError) as info:
        config.from_dict(d)
    assert info.value.key == key and fragment in info.value.message


def test_dump_and_load_resolved(tmp_path: Path) -> None:
    s = config.load(str(GOOD / "full.conf"))
    target = tmp_path / "settings.json"
    target.write_text("old")
    os.chmod(target, 0o644)
    config.dump_resolved(s, str(target))
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["settings.json"]  # no temporary file left behind
    assert config.load_resolved(str(target)) == s
    target.write_text('{\n  "schema": 1,\n  oops\n}\n')
    with pytest.raises(ConfigError) as info:
        config.load_resolved(str(target))
    assert (info.value.path, info.value.line) == (str(target), 3)
    with pytest.raises(ConfigError, match="cannot read"):
        config.load_resolved(str(tmp_path / "absent.json"))
    target.write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match="expected a mapping of settings"):
        config.load_resolved(str(target))


def test_stage_sections_show_which_stages_a_change_touches() -> None:
    base = config.load(str(GOOD / "seed_minimal.conf"))

    def changed(new: Settings) -> list[str]:
        a, b = config.stage_sections(base), config.stage_sections(new)
        return sorted(stage for stage in a if a[stage] != b[stage])

    rep = dataclasses.replace
    assert changed(base) == []
    assert changed(rep(base, ct2ft=Ct2ftSettings(60))) == ["correlate"]
    assert changed(rep(base, export=rep(base.export, engine_id=3))) == ["export"]
    assert changed(rep(base, export=rep(base.export, exaddr="10.0.0.1"))) == ["export", "mirror"]
    assert changed(rep(base, mirror=MirrorSettings((SCREEN,)))) == ["mirror"]
    assert changed(rep(base, daemon=DaemonSettings("/run/x"), notes=("n",))) == []
    program = rep(base, source=SourceSettings("conntrack"))
    assert changed(program) == ["ingest"]
    p, q = (
        config.stage_sections(program),
        config.stage_sections(rep(program, conntrack=ConntrackSettings(progname="ct"))),
    )
    assert sorted(stage for stage in p if p[stage] != q[stage]) == ["ingest"]
    assert base.source.type == "netlink"  # the seed's file has no <source>: the default
    a, b = (
        config.stage_sections(base),
        config.stage_sections(rep(base, conntrack=ConntrackSettings(progname="ct"))),
    )
    assert a == b  # the conntrack program does not matter to a netlink source
    assert set(a) == {"ingest", "correlate", "export", "mirror"}


# ---------------------------------------------------------------- NAT event records per collector

NAT = DATA / "nat_events"


def test_nat_events_per_collector() -> None:
    s = config.load(str(NAT / "collectors.conf"))
    assert s.export.collectors == (
        Collector("192.0.2.1", 2055, 9, nat_events=True, nat_event_numbering=1),
        Collector("192.0.2.2", 4739, 10, nat_events=True, nat_event_numbering=4),
        Collector("192.0.2.3", 2056, 9),
    )
    assert Collector("192.0.2.3", 2056).nat_events is False
    assert s.notes == ()
    assert config.from_dict(json.loads(json.dumps(config.to_dict(s)))) == s


@pytest.mark.parametrize(
    ("name", "line", "key", "fragment", "got"),
    [
        ("version5.conf", 6, "export.collector.nat_events", "expected 0 with version 5", "1"),
        ("version5_by_default.conf", 12, "export.collector[1].nat_events", "version 9 or 10", "on"),
        ("bad_numbering.conf", 7, "export.collector.nat_event_numbering", "(RFC 8158: 4/5)", "2"),
    ],
)
def test_nat_events_errors(name: str, line: int, key: str, fragment: str, got: str) -> None:
    path = str(NAT / name)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    err = info.value
    assert (err.path, err.line, err.key) == (path, line, key)
    assert fragment in err.message
    assert str(err).startswith(f"{path}:{line}: key {key!r}: expected ")
    assert str(err).endswith(f", got {got!r}")


def test_nat_event_numbering_without_nat_events_is_a_note() -> None:
    path = NAT / "numbering_without_events.conf"
    s = config.load(str(path))
    assert s.export.collectors == (Collector("192.0.2.1", 4739, 10, nat_event_numbering=4),)
    assert s.notes == (f"{path}:6: <collector> nat_event_numbering is only used with nat_events 1",)


@pytest.mark.parametrize(("kind", "noted"), [("conntrack", True), ("netlink", False)])
def test_active_timeout_without_netlink_is_a_note(tmp_path: Path, kind: str, noted: bool) -> None:
    extra = "<conntrack>\nformat -E -o timestamp\n</conntrack>\n" if kind == "conntrack" else ""
    s = load_text(
        tmp_path,
        f"<source>\ntype {kind}\n</source>\n<export>\nactive_timeout 60\n</export>\n{extra}",
    )
    assert s.export.active_timeout == 60
    want = (
        f"{tmp_path / 'nfflowd.conf'}:5: <export> active_timeout needs <source> type netlink "
        f"(its periodic table dumps find the long connections); with type {kind} only events "
        "that carry counters (UPDATE) can trigger an interim report"
    )
    assert (want in s.notes) is noted
    assert not any("active_timeout" in n for n in config.load(None).notes)


# ---------------------------------------------------------------- pacing (nfflowd.outputs.pacing)


def test_pace_defaults_come_from_export_and_each_collector_may_set_its_own(
    tmp_path: Path,
) -> None:
    assert config.load(None).export.max_rate == DEFAULT_MAX_RATE
    s = load_text(
        tmp_path,
        """<export>
        max_rate 500
        max_byte_rate 2M
        <collector>
            address 192.0.2.1
            port 2055
        </collector>
        <collector>
            address 192.0.2.2
            port 2056
            max_rate 0
            max_byte_rate 64KiB
        </collector>
    </export>""",
    )
    assert (s.export.max_rate, s.export.max_byte_rate) == (500, 2 << 20)
    assert [(c.max_rate, c.max_byte_rate) for c in s.export.collectors] == [
        (500, 2 << 20),
        (0, 64 << 10),
    ]
    s = load_text(
        tmp_path,
        "<flow_send>\nargs 192.0.2.7\nargs 192.0.2.1\nargs 2055\n</flow_send>\n"
        "<export>\nmax_rate 1234\n</export>\n",
    )
    assert [c.max_rate for c in s.export.collectors] == [1234]
    s = load_text(
        tmp_path, "<flow_send>\nargs 192.0.2.7\nargs 192.0.2.1\nargs 2055\n</flow_send>\n"
    )
    assert [(c.max_rate, c.max_byte_rate) for c in s.export.collectors] == [(DEFAULT_MAX_RATE, 0)]


@pytest.mark.parametrize(
    ("text", "line", "key", "got"),
    [
        ("<export>\nmax_rate fast\n</export>\n", 2, "export.max_rate", "fast"),
        ("<export>\nmax_rate -1\n</export>\n", 2, "export.max_rate", "-1"),
        ("<export>\nmax_byte_rate 1T\n</export>\n", 2, "export.max_byte_rate", "1T"),
        (
            "<export>\n<collector>\naddress 192.0.2.1\nport 2055\nmax_rate 1e4\n"
            "</collector>\n</export>\n",
            5,
            "export.collector.max_rate",
            "1e4",
        ),
    ],
)
def test_pace_errors_name_the_place(
    tmp_path: Path, text: str, line: int, key: str, got: str
) -> None:
    err = error_of(tmp_path, text)
    assert (err.line, err.key) == (line, key)
    assert str(err).startswith(f"{tmp_path / 'nfflowd.conf'}:{line}: key {key!r}: expected ")
    assert str(err).endswith(f", got {got!r}")


def test_syslog_dispatcher_pace_applies_to_udp_only(tmp_path: Path) -> None:
    udp = """
        dispatchers far
        <far>
            class Log::Dispatch::Syslog
            facility local6
            address udp://192.0.2.9:514
            max_rate 2000
            max_byte_rate 1M
        </far>"""
    (d,) = load_text(tmp_path, ptee(udp)).mirror.dispatchers
    assert (d.max_rate, d.max_byte_rate) == (2000, 1 << 20)
    s = load_text(tmp_path, ptee(udp.replace("udp://192.0.2.9:514", "/dev/log")))
    assert any("max_rate paces udp:// addresses only" in n for n in s.notes)
    assert Dispatcher("d", "syslog").max_rate == 0  # no pace unless asked for


# ---------------------------------------------------------------- coverage options per collector


def test_coverage_per_collector(tmp_path: Path) -> None:
    s = load_text(
        tmp_path,
        "<export>\n<collector>\naddress 192.0.2.1\nport 2055\nversion 9\n</collector>\n"
        "<collector>\naddress 192.0.2.2\nport 4739\nversion 10\ncoverage no\n</collector>\n"
        "<collector>\naddress 192.0.2.3\nport 2056\nversion 5\ncoverage off\n</collector>\n"
        "<collector>\naddress 192.0.2.4\nport 2057\n</collector>\n</export>\n",
    )
    got = [(c.version, c.coverage, c.sends_coverage) for c in s.export.collectors]
    assert got == [(9, None, True), (10, False, False), (5, False, False), (5, None, False)]
    assert config.from_dict(json.loads(json.dumps(config.to_dict(s)))) == s


@pytest.mark.parametrize(
    ("version", "value", "fragment"),
    [
        (9, "maybe", "expected a boolean (1/0, yes/no, true/false, on/off)"),
        (5, "yes", "expected no with version 5 (options records need version 9 or 10)"),
    ],
)
def test_coverage_bad_values(tmp_path: Path, version: int, value: str, fragment: str) -> None:
    err = error_of(
        tmp_path,
        f"<export>\n<collector>\naddress 192.0.2.1\nport 2055\nversion {version}\n"
        f"coverage {value}\n</collector>\n</export>\n",
    )
    assert err.key == "export.collector.coverage" and err.line == 6
    assert fragment in err.message and str(err).endswith(f", got {value!r}")


def test_refused_hold(tmp_path: Path) -> None:
    assert config.load(None).export.refused_hold == 30
    s = load_text(tmp_path, "<export>\nrefused_hold 0\n</export>\n")
    assert s.export.refused_hold == 0
    err = error_of(tmp_path, "<export>\nrefused_hold forever\n</export>\n")
    assert (err.line, err.key) == (2, "export.refused_hold")
    assert str(err).endswith(", got 'forever'")
