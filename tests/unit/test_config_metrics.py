"""The ``<metrics>`` block: listen HOST:PORT, validated with file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfflowd import config
from nfflowd.config import ConfigError, MetricsSettings


def write(tmp_path: Path, body: str, name: str = "m.conf") -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def block(listen: str) -> str:
    return f"# metrics\n<metrics>\n    listen {listen}\n</metrics>\n"


def test_off_by_default() -> None:
    s = config.load(None)
    assert s.metrics == MetricsSettings() and s.metrics.address is None
    assert s.metrics.listen == ""


@pytest.mark.parametrize(
    ("listen", "address", "port", "shown"),
    [
        ("127.0.0.1:9464", "127.0.0.1", 9464, "127.0.0.1:9464"),
        ("[::1]:9100", "::1", 9100, "[::1]:9100"),
        ("[0:0::1]:1", "::1", 1, "[::1]:1"),
        ("127.0.0.2:65535", "127.0.0.2", 65535, "127.0.0.2:65535"),
    ],
)
def test_listen_forms(tmp_path: Path, listen: str, address: str, port: int, shown: str) -> None:
    s = config.load(write(tmp_path, block(listen)))
    assert (s.metrics.address, s.metrics.port, s.metrics.listen) == (address, port, shown)
    assert not [n for n in s.notes if "metrics" in n]
    # what the stages and the metrics worker read back from settings.json
    assert config.from_dict(config.to_dict(s)).metrics == s.metrics


def test_yaml_gives_the_same(tmp_path: Path) -> None:
    s = config.load(write(tmp_path, "metrics:\n  listen: '[::1]:9464'\n", "m.yaml"))
    assert s.metrics == MetricsSettings("::1", 9464)


def test_a_non_loopback_address_is_allowed_with_a_note(tmp_path: Path) -> None:
    path = write(tmp_path, block("0.0.0.0:9464"))
    s = config.load(path)
    assert s.metrics == MetricsSettings("0.0.0.0", 9464)
    assert f"{path}:3: metrics are served beyond this host on 0.0.0.0:9464" in "\n".join(s.notes)


@pytest.mark.parametrize(
    ("listen", "fragment"),
    [
        ("localhost:9464", "HOST must be an IP address"),
        ("::1:9464", "an IPv6 HOST goes in brackets"),
        ("127.0.0.1:0", "PORT 1..65535"),
        ("127.0.0.1:65536", "PORT 1..65535"),
        ("127.0.0.1", "HOST:PORT"),
        ("9464", "HOST:PORT"),
        ("[127.0.0.1:9464", "HOST:PORT"),
        ("300.1.1.1:9464", "HOST must be an IP address"),
    ],
)
def test_bad_listen_names_file_line_and_key(tmp_path: Path, listen: str, fragment: str) -> None:
    path = write(tmp_path, block(listen))
    with pytest.raises(ConfigError) as err:
        config.load(path)
    text = str(err.value)
    assert text.startswith(f"{path}:3: key 'metrics.listen': expected HOST:PORT"), text
    assert fragment in text and repr(listen) in text


def test_unknown_key_and_repeated_listen(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'metrics.port': unknown key in <metrics>"):
        config.load(write(tmp_path, "<metrics>\n  port 9464\n</metrics>\n"))
    twice = "<metrics>\n  listen 127.0.0.1:1\n  listen 127.0.0.1:2\n</metrics>\n"
    with pytest.raises(ConfigError, match="expected a single value, got 2"):
        config.load(write(tmp_path, twice))


def test_settings_json_of_an_older_nfflowd_loads_with_metrics_off() -> None:
    d = config.to_dict(config.load(None))
    del d["metrics"]
    assert config.from_dict(d).metrics == MetricsSettings()
