"""``<links>`` (tcp:// links with CURVE) and ``<daemon> stages``: parsing, validation,
serialisation, and what a reload restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfflowd import config, topology
from nfflowd.config import ConfigError, Settings
from nfflowd.config.settings import LinkAddress, LinkSettings
from nfflowd.pipeline import endpoints

KEYS = "/etc/nfflowd/curve"


def load_text(tmp_path: Path, text: str) -> Settings:
    p = tmp_path / "nfflowd.conf"
    p.write_text(text)
    return config.load(str(p))


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return info.value


def links(body: str, curve_dir: str | None = KEYS) -> str:
    curve = f"    curve_dir {curve_dir}\n" if curve_dir else ""
    return f"<links>\n{body}{curve}</links>\n"


def link(name: str, address: str) -> str:
    return f"    <{name}>\n        address {address}\n    </{name}>\n"


def stages(*names: str) -> str:
    return "<daemon>\n" + "".join(f"    stages {n}\n" for n in names) + "</daemon>\n"


def test_defaults_every_stage_here_every_link_ipc(tmp_path: Path) -> None:
    s = config.load(None)
    assert s.daemon.stages == ("ingest", "correlate", "export", "mirror") == topology.STAGES
    assert s.links == LinkSettings()
    assert endpoints.address("/run/x", "events", s.links) == "ipc:///run/x/events.ipc"


def test_a_tcp_link_with_curve_keys(tmp_path: Path) -> None:
    s = load_text(
        tmp_path,
        links(
            link("events", "tcp://203.0.113.1:5701")
            + link("flows.mirror", "tcp://[2001:db8::0:1]:5703")
        )
        + stages("ingest"),
    )
    assert s.links == LinkSettings(
        (
            LinkAddress("events", "tcp://203.0.113.1:5701"),
            LinkAddress("flows.mirror", "tcp://[2001:db8::1]:5703"),
        ),  # normalised
        KEYS,
    )
    assert s.daemon.stages == ("ingest",)
    assert endpoints.address("/run/x", "events", s.links) == "tcp://203.0.113.1:5701"
    assert endpoints.address("/run/x", "flows.export", s.links) == "ipc:///run/x/flows-export.ipc"
    # settings.json round trip (what the stages read)
    assert config.from_dict(config.to_dict(s)) == s


def test_tcp_without_curve_keys_is_refused(tmp_path: Path) -> None:
    err = error_of(tmp_path, links(link("events", "tcp://203.0.113.1:5701"), curve_dir=None))
    assert err.key == "links.events.address" and err.line == 3
    assert "must be encrypted and authenticated" in str(err) and "curve_dir" in str(err)
    assert "nfflowd keygen" in str(err)


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("ipc:///tmp/x.ipc", "tcp://HOST:PORT"),
        ("tcp://collector.example:5701", "HOST is not an IP address"),
        ("tcp://203.0.113.1:70000", "PORT 1..65535"),
        ("tcp://203.0.113.1", "tcp://HOST:PORT"),
        ("tcp://2001:db8::1:5701", "(IPv6 in brackets)"),
        ("tcp://0.0.0.0:5701", "not 0.0.0.0"),
        ("tcp://*:5701", "HOST is not an IP address"),
    ],
)
def test_bad_addresses(tmp_path: Path, address: str, fragment: str) -> None:
    err = error_of(tmp_path, links(link("events", address)))
    assert err.key == "links.events.address", err
    assert fragment in str(err), err


def test_unknown_and_local_only_endpoints(tmp_path: Path) -> None:
    err = error_of(tmp_path, links(link("evnts", "tcp://203.0.113.1:5701")))
    assert err.key == "links.evnts" and "did you mean 'events'" in str(err)
    # the notices are local to a host: not a link that can move
    err = error_of(tmp_path, links(link("notices", "tcp://203.0.113.1:5701")))
    assert err.key == "links.notices" and "valid: curve_dir, events, flows.export" in str(err)
    err = error_of(tmp_path, "<links>\n    <events>\n        port 5701\n    </events>\n</links>\n")
    assert err.key == "links.events.port"


def test_two_links_on_one_address_and_relative_key_dir(tmp_path: Path) -> None:
    body = link("flows.export", "tcp://10.0.0.1:5702") + link("flows.mirror", "tcp://10.0.0.1:5702")
    err = error_of(tmp_path, links(body))
    assert err.key == "links.flows.mirror.address" and "<flows.export> already" in str(err)
    err = error_of(tmp_path, links(link("events", "tcp://10.0.0.1:5701"), curve_dir="curve"))
    assert err.key == "links.curve_dir" and "absolute" in str(err)


def test_curve_dir_without_a_tcp_link_is_a_note(tmp_path: Path) -> None:
    s = load_text(tmp_path, links(""))
    assert s.links == LinkSettings((), KEYS)
    assert any("curve_dir is set but no link is tcp" in n for n in s.notes)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["ingest"], ("ingest",)),
        (["mirror", "correlate", "export"], ("correlate", "export", "mirror")),  # pipeline order
        (["correlate, export mirror"], ("correlate", "export", "mirror")),
    ],
)
def test_stages(tmp_path: Path, lines: list[str], expected: tuple[str, ...]) -> None:
    body = link("events", "tcp://203.0.113.1:5701")
    s = load_text(tmp_path, links(body) + stages(*lines))
    assert s.daemon.stages == expected


def test_bad_stages(tmp_path: Path) -> None:
    err = error_of(tmp_path, stages("ingest", "exporter"))
    assert err.key == "daemon.stages" and "stage names among ingest, correlate" in str(err)
    s = load_text(
        tmp_path, links(link("events", "tcp://203.0.113.1:5701")) + stages("ingest", "ingest")
    )
    assert s.daemon.stages == ("ingest",) and any("twice" in n for n in s.notes)


def test_a_link_between_hosts_must_be_tcp(tmp_path: Path) -> None:
    err = error_of(tmp_path, stages("ingest"))
    assert err.key == "daemon.stages"
    assert "link events joins ingest (run here) and correlate (not in <daemon> stages)" in str(err)
    # central host: the events link crosses, the flows links stay local (ipc is fine)
    err = error_of(tmp_path, stages("correlate", "export"))
    assert "link events joins correlate (run here) and ingest" in str(err)
    err = error_of(
        tmp_path, links(link("events", "tcp://10.0.0.1:5701")) + stages("correlate", "export")
    )
    assert "link flows.mirror joins correlate (run here) and mirror" in str(err)
    s = load_text(
        tmp_path,
        links(link("events", "tcp://10.0.0.1:5701")) + stages("correlate", "export", "mirror"),
    )
    assert s.links.address("flows.export") is None


def test_reload_restarts_the_stages_of_a_changed_link(tmp_path: Path) -> None:
    a = load_text(tmp_path, links(link("events", "tcp://10.0.0.1:5701")))
    b = load_text(tmp_path, links(link("events", "tcp://10.0.0.1:5799")))
    before, after = config.stage_sections(a), config.stage_sections(b)
    changed = [s for s in topology.STAGES if before[s] != after[s]]
    assert changed == ["ingest", "correlate"]
    c = load_text(tmp_path, links(link("events", "tcp://10.0.0.1:5799"), curve_dir="/etc/other"))
    assert [s for s in topology.STAGES if config.stage_sections(c)[s] != after[s]] == [
        "ingest",
        "correlate",
    ]
