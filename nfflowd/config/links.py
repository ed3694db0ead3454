"""``<links>`` (data links across hosts) and ``<daemon> stages`` (which stages run here).

::

    <links>
        <events>                        # a link name of nfflowd.topology.DATA_LINKS
            address tcp://203.0.113.1:5701
        </events>
        curve_dir /etc/nfflowd/curve    # nfflowd keygen DIR
    </links>
    <daemon>
        stages ingest                   # default: all four
    </daemon>

A link given a ``tcp://`` address is opened there instead of its ``ipc://`` file:
its receiver binds exactly that address (so HOST is one of the receiving host's
addresses, an IP literal, IPv6 in brackets: nothing is resolved at start) and its
sender connects to it.  Flow data then crosses a network, so a tcp link without
``curve_dir`` is an error: there is no plain-tcp mode.  Which key files each host
needs is :mod:`nfflowd.pipeline.curve`'s docstring; ``nfflowd check`` looks for them.

A link whose one stage runs here and whose other does not must be tcp (an ipc://
file cannot reach another host): that is an error too.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any

from nfflowd import topology
from nfflowd.config.general import Key
from nfflowd.config.settings import _V, LinkAddress, LinkSettings

KEYS = ("curve_dir", *topology.LINKS)
LINK_KEYS = ("address",)
_TCP = re.compile(r"^tcp://(?:\[([^\]]*)\]|([^:\s\[\]/]+)):(\d{1,5})$")
_WHAT = "tcp://HOST:PORT, HOST an IP address (IPv6 in brackets), PORT 1..65535"


def daemon_stages(v: _V) -> tuple[str, ...]:
    """``<daemon> stages``: repeated lines and/or names separated by blanks or commas."""
    k: Key = ("daemon", "stages")
    if v.get(k) is None:
        return topology.STAGES
    words: list[str] = []
    for item in v.many(k):
        if not isinstance(item, str | int) or isinstance(item, bool):
            raise v.expected(k, "stage names", item)
        words += str(item).replace(",", " ").split()
    unknown = [w for w in words if w not in topology.STAGES]
    if unknown or not words:
        raise v.expected(k, f"stage names among {', '.join(topology.STAGES)}", v.get(k))
    if len(set(words)) != len(words):
        v.note(k, "<daemon> stages names a stage twice; once is enough")
    return tuple(s for s in topology.STAGES if s in words)


def links_section(v: _V, stages: tuple[str, ...]) -> LinkSettings:
    """``<links>`` into :class:`LinkSettings`, checked against the stages run here."""
    k: Key = ("links",)
    block = v.block(k, KEYS)
    curve_dir = _curve_dir(v, (*k, "curve_dir"))
    found: list[LinkAddress] = []
    for name in topology.LINKS:
        if name not in block:
            continue
        lk: Key = (*k, name)
        v.block(lk, LINK_KEYS)
        ak: Key = (*lk, "address")
        if v.one(ak) is None:
            raise v.error(lk, f"expected `address {_WHAT}` in <{name}>")
        addr = _tcp_address(v, ak, v.one(ak))
        other = next((a.name for a in found if a.address == addr), None)
        if other is not None:
            raise v.error(
                ak, f"{addr} is the address of <{other}> already; each link needs its own"
            )
        if curve_dir is None:
            raise v.error(
                ak,
                f"a tcp:// link must be encrypted and authenticated: set <links> curve_dir "
                f"(keys from `nfflowd keygen DIR`); got {addr} without it",
            )
        found.append(LinkAddress(name, addr))
    if curve_dir is not None and not found:
        v.note((*k, "curve_dir"), "<links> curve_dir is set but no link is tcp://: unused")
    links = LinkSettings(tuple(found), curve_dir)
    _check_split(v, links, stages)
    return links


def _curve_dir(v: _V, key: Key) -> str | None:
    if v.one(key) is None:
        return None
    path = v.text(key, "")
    if not os.path.isabs(path):
        raise v.expected(key, "an absolute directory path (nfflowd keygen DIR)", path)
    return os.path.normpath(path)


def _tcp_address(v: _V, key: Key, value: Any) -> str:
    m = _TCP.match(value.strip()) if isinstance(value, str) else None
    if m is None or not 1 <= int(m[3]) <= 65535:
        raise v.expected(key, _WHAT, value)
    host = m[1] if m[1] is not None else m[2]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise v.expected(key, f"{_WHAT}; HOST is not an IP address", value) from None
    if ip.is_unspecified:
        raise v.expected(key, f"{_WHAT}; the sender connects to it, so not {ip}", value)
    return f"tcp://[{ip}]:{int(m[3])}" if ip.version == 6 else f"tcp://{ip}:{int(m[3])}"


def _check_split(v: _V, links: LinkSettings, stages: tuple[str, ...]) -> None:
    """A link with one end here and the other elsewhere must be tcp://."""
    for name in topology.LINKS:
        ep = topology.BY_NAME[name]
        here = [s for s in (ep.sender, ep.receiver) if s in stages]
        if len(here) == 1 and links.address(name) is None:
            away = ep.receiver if here[0] == ep.sender else ep.sender
            raise v.error(
                ("daemon", "stages"),
                f"link {name} joins {here[0]} (run here) and {away} (not in <daemon> stages): "
                f"give it a tcp:// address in <links><{name}> so the hosts can reach each other",
            )


def stage_links(links: LinkSettings, stage: str) -> dict[str, Any]:
    """What of *links* *stage* uses (a stage whose part changed must restart on reload)."""
    mine = {a.name: a.address for a in links.addresses if topology.side_of(a.name, stage)}
    return {"addresses": mine, "curve_dir": links.curve_dir if mine else None}
