"""``<daemon> user`` without root: parsing, the rendered supervisord.conf, the unit text."""

from __future__ import annotations

import configparser
import os
import sys
from pathlib import Path

import pytest

from nfflowd.config import ConfigError, Settings, from_dict, load, to_dict
from nfflowd.ops import control, install, privileges
from nfflowd.pipeline import shards


def _settings(tmp_path: Path, text: str) -> Settings:
    conf = tmp_path / "c.conf"
    conf.write_text(text)
    return load(str(conf))


def test_user_is_parsed_and_survives_settings_json(tmp_path: Path) -> None:
    s = _settings(tmp_path, "<daemon>\n  user nfflowd\n</daemon>\n")
    assert s.daemon.user == "nfflowd"
    assert from_dict(to_dict(s)).daemon.user == "nfflowd"
    assert load(None).daemon.user is None  # default: everything as the invoker
    # settings.json written before the key existed still loads
    old = to_dict(s)
    del old["daemon"]["user"]
    assert from_dict(old).daemon.user is None


@pytest.mark.parametrize("bad", ["1000", "Root", "a b", "x" * 40, "-x"])
def test_user_must_be_a_name(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        _settings(tmp_path, f"<daemon>\n  user {bad}\n</daemon>\n")
    assert "daemon.user" in str(err.value) and "a user name" in str(err.value)


def _sections(conf: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read_string(conf)
    return parser


def test_run_as_gives_every_program_but_ingest_the_user() -> None:
    rendered = control.render("/run/nfflowd") + (
        "\n[program:metrics]\ncommand=x\nstdout_logfile=/run/nfflowd/metrics.log\n"
        "stdout_logfile_maxbytes=1MB\n"
    )
    assert control.run_as(rendered, None) == rendered
    parsed = _sections(control.run_as(rendered, "nfflowd"))
    users = {
        s.split(":", 1)[1]: parsed.get(s, "user", fallback=None)
        for s in parsed.sections()
        if s.startswith("program:")
    }
    assert users == {
        "export": "nfflowd",
        "mirror": "nfflowd",
        "correlate": "nfflowd",
        "ingest": None,
        "metrics": "nfflowd",
    }
    # no rotation by supervisord (it would re-create files in a directory the user writes)
    sizes = [
        parsed.get(s, k)
        for s in parsed.sections()
        for k in parsed.options(s)
        if k.endswith("logfile_maxbytes")
    ]
    assert len(sizes) == 6 and set(sizes) == {"0"}  # the mirror rotates mirror.out itself
    # nothing else changed
    plain = _sections(rendered)
    for s in plain.sections():
        for k in plain.options(s):
            if not k.endswith("logfile_maxbytes"):
                assert parsed.get(s, k) == plain.get(s, k), (s, k)


def test_which_files_belong_to_the_user() -> None:
    mine = [
        "correlate.starts",
        "export.sequence",
        "flows.export.position",
        "events.ipc",
        "flows-mirror.ipc",
        "events.refused",
        "mirror.json",
        "export.starts.123",
        # shards: -N process names and ipc files, .N link names
        "correlate-1.starts",
        "export-2.sequence",
        "events-1.ipc",
        "flows-export-2.ipc",
        "flows.mirror.1.position",
        "correlate-0.json",
        "mirror.out",  # the screen dispatcher's: the mirror writes it (outputs.screen_file)
        "mirror.out.2",
        "mirror.err",
    ]
    roots = [
        "ingest.checkpoint",
        "ingest.starts",
        "export.log",
        "mirror.log",
        "mirror.log.2",
        "settings.json",
        "supervisord.conf",
        "supervisor.sock",
        "notices.ipc",
        "ingest.json",
        "supervisord.log.1",
        "export-1.log",
        "correlate-0.log.3",
    ]
    assert [n for n in mine if not privileges.user_file(n)] == []
    assert [n for n in roots if privileges.user_file(n)] == []


def test_logfiles_of_the_rendered_conf() -> None:
    files = privileges.logfiles(control.render("/run/x"))
    assert sorted(os.path.basename(f) for f in files) == [
        "correlate.log",
        "export.log",
        "ingest.log",
        "mirror.log",
        "supervisord.log",
    ]


def test_logfiles_of_sharded_programs_are_expanded() -> None:
    conf = shards.programs(control.render("/run/x"), 2, 3)
    names = sorted(os.path.basename(f) for f in privileges.logfiles(conf))
    assert names == [
        "correlate-0.log",
        "correlate-1.log",
        "export-0.log",
        "export-1.log",
        "export-2.log",
        "ingest.log",
        "mirror.log",
        "supervisord.log",
    ]


def _unit(tmp_path: Path, text: str) -> dict[str, list[str]]:
    s = _settings(tmp_path, text)
    out: dict[str, list[str]] = {}
    for line in install.unit_text(s, str(tmp_path / "c.conf")).splitlines():
        if "=" in line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def test_unit_sandbox_follows_the_settings(tmp_path: Path) -> None:
    u = _unit(tmp_path, "<daemon>\n  user nfflowd\n</daemon>\n")
    caps = u["CapabilityBoundingSet"][0].split()
    assert set(caps) == {
        "CAP_NET_ADMIN",
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_KILL",
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
    }
    assert u["RuntimeDirectory"] == ["nfflowd"] and u["StateDirectory"] == ["nfflowd"]
    assert u["ReadWritePaths"] == ["/run/nfflowd", "/var/lib/nfflowd"]
    assert u["ProtectKernelTunables"] == ["yes"] and u["RestrictNamespaces"] == ["yes"]
    assert u["NoNewPrivileges"] == ["yes"] and u["ProtectSystem"] == ["strict"]
    # this interpreter may live below /root (a pyenv): ProtectHome must not hide it
    in_home = os.path.realpath(sys.executable).startswith(("/root/", "/home/"))
    assert u["ProtectHome"] == ["read-only" if in_home else "yes"]
    u = _unit(
        tmp_path,
        "<source>\n  type netlink\n  netns fw\n  set_sysctls 1\n</source>\n"
        "<daemon>\n  rundir /var/lib/nfflowd\n</daemon>\n",
    )
    assert "CAP_SYS_ADMIN" in u["CapabilityBoundingSet"][0].split()
    assert u["RestrictNamespaces"] == ["net"] and "ProtectKernelTunables" not in u
    # the coverage journal moves aside from a run directory at its default place
    assert u["StateDirectory"] == ["nfflowd", "nfflowd.state"] and "RuntimeDirectory" not in u
    assert u["ReadWritePaths"] == ["/var/lib/nfflowd", "/var/lib/nfflowd.state"]


def test_logrotate_rule_rotates_in_place(tmp_path: Path) -> None:
    s = _settings(tmp_path, "<daemon>\n  rundir /srv/nff\n</daemon>\n")
    text = install.logrotate_text(s)
    assert text.splitlines()[1] == "/srv/nff/*.log /srv/nff/*.out {"
    assert {"copytruncate", "dateext", "su root root"} <= {x.strip() for x in text.splitlines()}


def test_unit_of_a_bundle_runs_the_bundle_and_gives_it_a_place_to_unpack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pyz = tmp_path / "nfflowd.pyz"
    pyz.write_bytes(b"PK")
    monkeypatch.setattr(sys, "argv", [str(pyz), "install"])
    u = _unit(tmp_path, "")
    assert u["ExecStart"][0].startswith(f"{sys.executable} {pyz} -c ")
    assert u["Environment"] == [f"SHIV_ROOT={install.BUNDLE_CACHE}"]
    assert u["CacheDirectory"] == ["nfflowd"]
    monkeypatch.setattr(sys, "argv", ["/usr/bin/nfflowd"])
    assert "Environment" not in _unit(tmp_path, "")
