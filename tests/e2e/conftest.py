"""Fixtures for the NAT lab (nfflowd.lab): a running lab and one captured run of its mix.

The lab needs root, network namespaces, nftables and conntrack: the ``lab_ready``
fixture (tests/conftest.py) fails the tests under CI=true when one is missing, and
elsewhere skips them with the reason :func:`nfflowd.lab.available` gives.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from nfflowd import lab as labmod
from tests.lab_names import lab_prefix


@pytest.fixture(scope="module")
def nat_lab(lab_ready: None) -> Iterator[labmod.Lab]:
    with labmod.running(lab_prefix("m")) as lab:
        yield lab


# --- conntrack -E text, just enough for the lab tests ----------------------------------

EVENT_RE = re.compile(r"^\[(?P<ts>\d+\.\d+)\]\s+\[(?P<type>NEW|DESTROY|UPDATE)\]\s+(?P<rest>.*)$")
PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "gre": 47}


@dataclass
class Tuple:
    src: str = ""
    dst: str = ""
    sport: int = 0  # ICMP: id; GRE: key
    dport: int = 0  # ICMP: type << 8 | code
    packets: int | None = None
    bytes: int | None = None


@dataclass
class Event:
    type: str
    time: float
    proto: int
    state: str
    orig: Tuple
    reply: Tuple
    flags: set[str] = field(default_factory=set)
    ct_id: int | None = None

    def key(self) -> tuple[int, str, str, int, int]:
        return (self.proto, self.orig.src, self.orig.dst, self.orig.sport, self.orig.dport)


def parse_event(line: str) -> Event:
    """One line of ``conntrack -E -o timestamp[,extended],id`` (or a listing line, type LIST)."""
    m = EVENT_RE.match(line)
    if m:
        typ, ts, tokens = m["type"], float(m["ts"]), m["rest"].split()
    else:
        typ, ts, tokens = "LIST", 0.0, line.split()
    if tokens[0] in ("ipv4", "ipv6"):
        tokens = tokens[2:]
    proto = int(tokens[1])
    assert PROTOS.get(tokens[0], proto) == proto, line
    ct_id = None
    if tokens[-1].startswith("id="):  # -o id: the conntrack id ends the line
        ct_id = int(tokens.pop()[3:])
    tuples: list[Tuple] = []
    ev = Event(typ, ts, proto, "", Tuple(), Tuple(), set(), ct_id)
    icmp: dict[str, int] = {}
    for tok in tokens[2:]:
        key, eq, value = tok.partition("=")
        if tok.startswith("[") and tok.endswith("]"):
            ev.flags.add(tok[1:-1])
        elif not eq:
            if tok.isupper() and not tuples:
                ev.state = tok
        elif key == "src":
            tuples.append(Tuple(src=value))
            icmp = {}
        elif not tuples:
            continue  # e.g. /proc timeout=…
        elif key in ("sport", "dport"):
            setattr(tuples[-1], key, int(value))
        elif key in ("srckey", "dstkey"):
            setattr(tuples[-1], "sport" if key == "srckey" else "dport", int(value, 16))
        elif key in ("type", "code", "id"):
            icmp[key] = int(value)
            if len(icmp) == 3:
                tuples[-1].sport, tuples[-1].dport = icmp["id"], icmp["type"] << 8 | icmp["code"]
        elif key in ("dst", "packets", "bytes"):
            setattr(tuples[-1], key, value if key == "dst" else int(value))
    assert len(tuples) == 2, f"not two tuples in {line!r}"
    ev.orig, ev.reply = tuples
    return ev


def parse_events(text: str) -> list[Event]:
    return [parse_event(line) for line in text.splitlines() if line.startswith("[")]


def parse_listing(text: str) -> list[Event]:
    return [parse_event(line) for line in text.splitlines() if line.strip()]


# --- one captured run of the mix ---------------------------------------------------------


@dataclass
class MixRun:
    expected: list[labmod.Expected]
    events: list[Event]  # -o timestamp,id
    extended: list[Event]  # -o timestamp,extended,id
    listing: list[Event]  # conntrack -L -o extended,id before any TCP close
    traffic_s: float
    traffic_end: float  # wall clock (the captures' timestamps) when the last TCP closed
    destroyed_after_s: float  # from the end of the traffic to the last DESTROY
    flushed: bool  # whether flush() was needed to get every DESTROY


def run_captured_mix(lab: labmod.Lab, settle: float = 15.0, use_flush: bool = False) -> MixRun:
    """Capture NEW/DESTROY twice around the mix; wait for every DESTROY, by timeouts
    (:func:`nfflowd.lab.expire` polls) or, with ``use_flush``, by a flush."""
    listed: list[str] = []
    with (
        tempfile.TemporaryFile() as plain,
        tempfile.TemporaryFile() as ext,
        labmod.capture(lab, plain),
        labmod.capture(lab, ext, "timestamp,extended,id"),
    ):
        t0 = time.monotonic()
        expected = labmod.traffic(lab, lambda: listed.append(labmod.listing(lab)))
        t1, t1_wall = time.monotonic(), time.time()
        flushed = False
        if use_flush:
            labmod.flush(lab)
            flushed = True
        deadline = t1 + settle
        while True:
            texts = []
            for fh in (plain, ext):
                fh.seek(0)
                texts.append(fh.read().decode())
            done = all(
                t.count("[NEW]") >= len(expected) and t.count("[DESTROY]") >= t.count("[NEW]")
                for t in texts
            )
            if done:
                break
            now = time.monotonic()
            if now > deadline and flushed:
                break  # the assertions will say what is missing
            if now > deadline:
                labmod.flush(lab)
                flushed = True
                deadline = now + 5
            elif now > t1 + labmod.MAX_TIMEOUT:
                labmod.expire(lab)
            time.sleep(0.2)
        settled = time.monotonic() - t1
    return MixRun(
        expected,
        parse_events(texts[0]),
        parse_events(texts[1]),
        parse_listing(listed[0]) if listed else [],
        t1 - t0,
        t1_wall,
        settled,
        flushed,
    )


@pytest.fixture(scope="module")
def mix_run(nat_lab: labmod.Lab) -> MixRun:
    """One run of the mix in the module's lab, ended by the lab's timeouts."""
    return run_captured_mix(nat_lab)


@pytest.fixture
def capture_mix() -> Callable[..., MixRun]:
    """:func:`run_captured_mix`, for tests that need a run of their own."""
    return run_captured_mix


class ConntrackText:
    """The parsers above, handed to tests as a fixture (tests do not import conftest)."""

    events = staticmethod(parse_events)
    listing = staticmethod(parse_listing)


@pytest.fixture
def ct_text() -> ConntrackText:
    return ConntrackText()
