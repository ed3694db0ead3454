"""Our NetFlow v9 / IPFIX datagrams as tshark's cflow dissector reads them.

The datagrams go into a pcap (tests/pcap_writer.py) and ``tshark -T json -O cflow``
reads it back: one cflow layer per datagram, its sets and their records as tshark
names them.  Used by the v9/IPFIX and the NAT-event decoder tests.
"""

from __future__ import annotations

import calendar
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.pcap_writer import write_pcap

PORT = 9996
#: No name resolution; the pcap's UDP port PORT is cflow; every cflow field, as JSON.
OPTIONS = ("-n", "-d", f"udp.port=={PORT},cflow", "-T", "json", "-O", "cflow")


def abs_ms(text: str) -> int:
    """tshark's 'Nov 26, 2026 17:12:59.334000000 UTC' -> epoch ms (exact)."""
    stamp, frac = text.removesuffix(" UTC").split(".")
    assert frac[3:] == "000000", text
    return calendar.timegm(time.strptime(stamp, "%b %d, %Y %H:%M:%S")) * 1000 + int(frac[:3])


def _keep_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose repeated keys (a record with an element twice) map to lists."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            had = out[key]
            out[key] = [*had, value] if isinstance(had, list) else [had, value]
        else:
            out[key] = value
    return out


def tshark_packets(
    dgs: list[bytes], tmp_path: Path, *, duplicates: bool = False
) -> list[dict[str, Any]]:
    """The cflow layer of each datagram, as tshark's JSON output holds it (*duplicates*:
    a key tshark prints more than once in an object maps to the list of its values)."""
    pcap = tmp_path / "nfb-flows.pcap"
    write_pcap(pcap, dgs, PORT)
    argv = ["tshark", "-r", str(pcap), *OPTIONS]
    res = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=dict(os.environ, TZ="UTC", LC_ALL="C"),
    )
    hook = _keep_duplicates if duplicates else None
    return [p["_source"]["layers"]["cflow"] for p in json.loads(res.stdout, object_pairs_hook=hook)]


def data_records(layer: dict[str, Any], set_ids: range = range(256, 65536)) -> list[dict[str, Any]]:
    """The data records of one cflow layer (v9 flowsets, IPFIX sets), those of the sets
    ``set_ids`` (default: every data set), in order, as tshark names their fields."""
    out = []
    for key, fset in layer.items():
        if key.startswith(("Set ", "FlowSet ")) and int(fset["cflow.flowset_id"]) in set_ids:
            out += [v for k, v in fset.items() if k.startswith("Flow ")]
    return out
