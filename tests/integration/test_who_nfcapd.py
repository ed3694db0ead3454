"""``nfflowd who`` over what a real nfcapd stored (v5 triplets, IPFIX post-NAT records)
and over a JSON-lines mirror file, through the real command line.

The records are made as the README's "Flow records" says nfflowd makes them: an hour
of source-NATed connections behind one public address, the same public ports taken
again by other private hosts a minute later, port forwards, NAT66, connections no
NAT changed, sent by nfflowd's own encoders to a private nfcapd on loopback.
``nfflowd who PUBLIC:PORT --at T --from DIR`` must name exactly the private host
and port that had it at T (each connection asked at a random moment of its life,
with a window of 0 s: the port's earlier and later owners are outside it), nothing
a second after the connection ends (exit 1), and exit 2 for a source that does not
exist or is not readable.
"""

from __future__ import annotations

import gzip
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from nfflowd.formats import ipfix, json_lines, netflow_v5
from nfflowd.lab.nfcapd import Nfcapd
from nfflowd.messages import FlowRecord
from nfflowd.ops import cli
from tests.addresses import txt
from tests.flow_records import flow
from tests.needs import needs
from tests.pipeline_harness import nfflowd

PUB4, PUB6 = "203.0.113.1", "2001:db8:1::1"
SERVER4, SERVER6 = "203.0.113.2", "2001:db8:1::2"
SEED = 14


def snat(t0: int, ms: int, priv: str, port: int, pub_port: int, proto: int = 6) -> list[FlowRecord]:
    """The triplet of ``priv:port -> server:443`` source-NATed to the public address."""
    v6 = ":" in priv
    pub, srv = (PUB6, SERVER6) if v6 else (PUB4, SERVER4)
    f = (t0, t0 + ms, proto)
    return [
        flow(*f, priv, srv, port, 443, 7, 700, pub, srv, pub_port, 443, 1),
        flow(*f, pub, srv, pub_port, 443, 7, 700, pub, srv, pub_port, 443, 2),
        flow(*f, srv, pub, 443, pub_port, 5, 5000, srv, priv, 443, port, 3),
    ]


def dnat(t0: int, ms: int, remote: str, rport: int, priv: str) -> list[FlowRecord]:
    """``remote:rport -> PUB4:8080`` forwarded to ``priv:80``."""
    f = (t0, t0 + ms, 6)
    return [
        flow(*f, remote, PUB4, rport, 8080, 4, 400, remote, priv, rport, 80, 1),
        flow(*f, remote, priv, rport, 80, 4, 400, remote, priv, rport, 80, 2),
        flow(*f, priv, remote, 80, rport, 3, 3000, PUB4, remote, 8080, rport, 3),
    ]


def plain(t0: int, ms: int, host: str, port: int) -> list[FlowRecord]:
    f = (t0, t0 + ms, 17)
    return [
        flow(*f, host, SERVER4, port, 53, 1, 60, host, SERVER4, port, 53, 1),
        flow(*f, SERVER4, host, 53, port, 1, 90, SERVER4, host, 53, port, 3),
    ]


#: A connection asked about: (public endpoint, expected private endpoint, its records).
Case = tuple[str, tuple[str, int], list[FlowRecord]]


def connections(now_ms: int) -> tuple[list[FlowRecord], list[Case]]:
    rnd = random.Random(SEED)
    t0 = now_ms - 3_600_000
    records: list[FlowRecord] = []
    cases: list[Case] = []
    for i in range(300):  # the same 100 public ports, three owners each, a minute apart
        start = t0 + (i // 100) * 60_000 + rnd.randrange(0, 30_000)
        priv, port, pub_port = f"10.0.{1 + i % 3}.{2 + i % 200}", 30000 + i, 50000 + i % 100
        conn = snat(start, rnd.randrange(1, 20_000), priv, port, pub_port)
        records += conn
        cases.append((f"{PUB4}:{pub_port}", (priv, port), conn))
    for i in range(20):
        conn = dnat(t0 + 200_000 + i * 5_000, 3_000, f"198.51.100.{i + 1}", 40000 + i, "10.0.1.9")
        records += conn
        cases.append((f"{PUB4}:8080", ("10.0.1.9", 80), conn))
    records += plain(t0 + 10_000, 500, "203.0.113.7", 5353)  # no NAT
    cases.append(("203.0.113.7:5353", ("203.0.113.7", 5353), records[-2:]))
    conn = snat(t0 + 12_000, 900, "fd00:1::2", 41000, 41000)  # NAT66
    records += conn
    cases.append((f"[{PUB6}]:41000", ("fd00:1::2", 41000), conn))
    return records, cases


def encode(fmt: str, records: list[FlowRecord], now_ns: int) -> list[bytes]:
    if fmt == "v5":
        return netflow_v5.V5Encoder().encode(records, now_ns)
    return ipfix.IpfixEncoder(per_direction=True, mtu=1400).encode(records, now_ns)


def who(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    """The command line in this process (``nfflowd.ops.cli.main``): its status and answer."""
    # no coverage journal: the host's /var/lib/nfflowd is not this test's
    rc = cli.main(["-c", "/dev/null", "who", *args, "--coverage", "/nonexistent", "--json"])
    out = capsys.readouterr().out
    return rc, json.loads(out) if out.startswith("{") else {}


@needs("nfcapd", "nfdump")
@pytest.mark.timeout(240)
def test_who_finds_the_private_host_in_nfcapd_and_json_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now_ns = time.time_ns()
    records, cases = connections(now_ns // 1_000_000)
    dirs = {}
    for fmt in ("v5", "ipfix"):
        dirs[fmt] = tmp_path / fmt
        with Nfcapd(dirs[fmt]) as cap:
            cap.send(encode(fmt, records, now_ns))
            cap.stop()
            assert cap.files(), fmt
    mirror = tmp_path / "mirror.json.gz"  # a rotated, compressed JSON-lines mirror
    with gzip.open(mirror, "wt") as fh:
        fh.writelines(json_lines.format_line(r, exaddr="192.0.2.1") + "\n" for r in records)
    sources = {"v5": dirs["v5"], "ipfix": dirs["ipfix"], "json": mirror}

    rnd = random.Random(SEED)
    asked = rnd.sample(cases[:300], 6) + cases[300:301] + cases[-2:]
    for public, private, conn in asked:
        first, last = conn[0].first_ms, conn[0].last_ms
        at = f"{rnd.randrange(first, last + 1) / 1000:.3f}"
        v6 = ":" in private[0]
        for name, path in sources.items():
            if name == "v5" and v6:
                continue  # v5 carries no IPv6
            if name == "ipfix" and v6:
                continue  # nfdump 1.7 stores no postNAT*IPv6Address (281/282) from IPFIX
            rc, doc = who(capsys, public, "--at", at, "--window", "0", "--from", str(path))
            assert rc == 0, (name, public, at, doc)
            (m,) = doc["matches"]
            assert (m["private"]["address"], m["private"]["port"]) == private, (name, public)
            assert (m["first_ms"], m["last_ms"]) == (first, last), name
            # counters as the private host saw them: sent, received
            opened = (txt(conn[0].src), conn[0].sport) == private
            out, back = (conn[0], conn[-1]) if opened else (conn[-1], conn[0])
            assert m["from_private"] == {"packets": out.packets, "bytes": out.octets}, name
            assert m["to_private"] == {"packets": back.packets, "bytes": back.octets}, name
            assert m["records"], name
            assert doc["coverage"]["recorded"] is False
        # a second after it ended, with no window: not found (the port's next owner, the
        # forward's next connection start later)
        late = f"{(last + 1000) / 1000:.3f}"
        for name, path in sources.items():
            if name != "json" and v6:
                continue
            rc, doc = who(capsys, public, "--at", late, "--window", "0", "--from", str(path))
            assert rc == 1 and doc["matches"] == [], (name, public, late, doc)

    # every source at once: one answer, each record listed, from every source
    public, private, conn = cases[0]
    at = f"{conn[0].first_ms / 1000:.3f}"
    args = [a for p in sources.values() for a in ("--from", str(p))]
    res = nfflowd("-c", "/dev/null", "who", public, "--at", at, "--window", "0", *args, "--json")
    rc, doc = res.returncode, json.loads(res.stdout)
    assert rc == 0
    (m,) = doc["matches"]
    assert (m["private"]["address"], m["private"]["port"]) == private
    assert m["private_opened"] is True  # from the triplet's shape and the JSON line
    listed = " ".join(m["records"])
    assert str(dirs["v5"]) in listed and str(dirs["ipfix"]) in listed and str(mirror) in listed
    assert [s["error"] for s in doc["sources"]] == [None, None, None]

    # a source that does not exist, or cannot be read as nfcapd: exit 2, named
    res = nfflowd("-c", "/dev/null", "who", public, "--from", str(tmp_path / "nope"), check=False)
    assert res.returncode == 2 and f"{tmp_path}/nope: no such file or directory" in res.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    cut = broken / "nfcapd.202601010000"  # an nfcapd file cut short
    cut.write_bytes(next(dirs["v5"].glob("nfcapd.*")).read_bytes()[:300])
    res = nfflowd("-c", "/dev/null", "who", public, "--from", str(broken), check=False)
    assert res.returncode == 2 and f"{cut}: nfdump could not read it" in res.stderr, res
