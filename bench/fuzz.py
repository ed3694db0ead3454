"""Mutation fuzzing of every parser that reads bytes from outside nfflowd (issue 13).

Each target is a parser, its seeds (from tests/data, or built from it) and the one
error type its documentation promises; an input is a seed mutated a few times
(bit flips, interesting integers, inserted tokens, deleted, repeated or spliced
ranges, truncation).  Checked for every input: any exception other than the
documented one (a *crash*: minimised, then saved and printed), any input slower
than ``--slow-ms`` (50 ms by the wall clock, then confirmed after the run: the
least CPU time of three runs, so that a busy machine's other load does not count),
and, per target, memory growth (the resident set after the run, garbage collected,
against before it).  Inputs stop at a size per target (``Target.max_input``, from
4 KiB for text lines and hex to 64 KiB for datagrams and frames) that a linear
parser handles well within the bound.

===========  ==================================================  ========================
target       what is called                                      may raise
===========  ==================================================  ========================
text         conntrack.text.parse_line, new_line_key             text.ParseError
netlink      conntrack.netlink.decode_messages (with and         nothing
             without compiled layouts)
payloads     conntrack.payloads.PayloadDecoder.decode            nothing
             (Payload.NETLINK frames, Payload.TEXT lines)
codec        pipeline.codec.decode; a batch it accepts is        codec.DecodeError
             then decoded (events) or formatted (flow lines),
             as correlate and mirror do
netflow      formats.netflow_v5/netflow_v9/ipfix.unpack_datagram ValueError
decode       ``nfflowd decode`` on hex text: decode_stream and   nothing
             its text and JSON output
pcap         ``nfflowd decode`` on pcap/pcapng captures; also    nothing (decode_stream);
             decode.pcap.read_packets and udp_datagram           ValueError, pcap.NotUdp
config       config.load on a mutated file (.conf, .json,        config.ConfigError
             .yaml, .toml)
===========  ==================================================  ========================

Full run (1,020,000 inputs; about 4 minutes on one core)::

    nice .venv/bin/python -m bench.fuzz --full --as-limit-mb 2048

A reduced run is part of the test suite (tests/unit/test_fuzz.py: a few thousand
inputs per target).  Other options: ``--inputs N`` per target, ``--only
text,codec``, ``--seed S`` (runs are reproducible), ``--save DIR`` (crashing and
slow inputs, one file each), ``--as-limit-mb M`` (an address-space limit, so an
input that asks for gigabytes is a MemoryError crash instead of the machine's).
Exit status 1 when any target had a crash, a slow input or grew by more than
``--max-growth-mb``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import random
import resource
import shutil
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from nfflowd import config
from nfflowd.conntrack import netlink, payloads, text
from nfflowd.conntrack.netlink_layouts import Layouts
from nfflowd.decode import decode_stream, format_json, format_text, pcap
from nfflowd.formats import flowtools_csv, ipfix, json_lines, netflow_v5, netflow_v9
from nfflowd.formats.ipfix_ies import Templates
from nfflowd.messages import (
    Ack,
    EventBatch,
    FlowBatch,
    FlowRecord,
    Message,
    Notice,
    Payload,
    pack_flows,
    unpack_flows,
)
from nfflowd.pipeline import codec

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
#: Inputs per target of the full run: 1,020,000 in all.
FULL: dict[str, int] = {
    "text": 200_000,
    "netlink": 200_000,
    "payloads": 100_000,
    "codec": 200_000,
    "netflow": 150_000,
    "decode": 50_000,
    "pcap": 60_000,
    "config": 60_000,
}
#: Largest input the mutators make (repeating a range stops there).
MAX_INPUT = 64 * 1024

INTERESTING = (0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 20, 24, 28, 31, 32, 40, 63, 64, 127, 128, 255,
               256, 1000, 1024, 4095, 4096, 32767, 32768, 65535, 65536, 2**31 - 1, 2**31,
               2**32 - 1, 2**32, 2**53, 2**63 - 1, 2**63, 2**64 - 1)  # fmt: skip
#: Tokens inserted into text inputs (conntrack lines, configuration files, hex).
TOKENS = (b" ", b"=", b"\t", b"\n", b"\r", b"[", b"]", b"<", b">", b"</", b"/>", b"\\", b"#",
          b"/*", b"*/", b"<<", b"EOF", b'"', b"'", b"{", b"}", b":", b"- ", b",", b"&a ", b"*a",
          b"!!python/object", b"0", b"-1", b"+1", b"9" * 30, b"9" * 4400, b"0x", b"1e999",
          b"nan", b"\x00", b"\xff", b"\xc3\xa9", b"\xe2\x80\xae", b"src=", b"dst=", b"sport=",
          b"dport=", b"id=", b"packets=", b"bytes=", b"zone=", b"mark=", b"type=", b"code=",
          b"[NEW] ", b"[DESTROY] ", b"[UPDATE] ", b"[1700000000.123456]", b"tcp ", b"icmpv6 ",
          b"ipv6 10 ", b"::ffff:1.2.3.4", b"255.255.255.256", b"<<include x>>", b"<source>",
          b"</source>", b"true", b"null", b"~", b"[[a]]", b"a.b.c = 1", b".t", b":1", b"0o7",
          b"0b1", b"1_000", b"0xff", b"inf", b'"""', b"'''", b"!!set ", b"!!binary ", b"!!omap ",
          b"!!str ", b"!!int ", b"!!timestamp ", b"2001-12-14t21:59:43.10-05:00", b"<<: *a",
          b"&a ", b"? ", b"| \n", b"> \n", b"---\n", b"...\n", b"%YAML 1.1\n")  # fmt: skip


# -- mutation ---------------------------------------------------------------------------------


def mutate(
    rng: random.Random,
    data: bytes,
    seeds: Sequence[bytes],
    textual: bool,
    max_input: int = MAX_INPUT,
) -> bytes:
    """*data* changed 1 to 8 times by the operators below, at most *max_input* bytes."""
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
        op = rng.randrange(12 if textual else 10)
        n = len(out)
        i = rng.randrange(n + 1)
        if op == 0 and n:  # flip a bit
            out[i % n] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # a random or interesting byte
            out[i % n] = rng.choice((rng.randrange(256), rng.choice(INTERESTING) & 0xFF))
        elif op == 2 and n:  # an interesting integer, 2, 4 or 8 bytes, either byte order
            size = rng.choice((2, 4, 8))
            value = rng.choice(INTERESTING) + rng.choice((0, 0, 0, -1, 1))
            raw = (value % (1 << 8 * size)).to_bytes(size, rng.choice(("big", "little")))
            out[i : i + size] = raw
        elif op == 3:  # insert random bytes
            out[i:i] = rng.randbytes(rng.randrange(1, 17))
        elif op == 4 and n:  # delete a range
            del out[i : i + rng.randrange(1, max(2, n // 4))]
        elif op == 5 and n:  # duplicate a range where it is
            j = rng.randrange(n)
            out[i:i] = out[j : j + rng.randrange(1, 65)]
        elif op == 6 and n:  # repeat a range many times (superlinear parsers show here)
            j = rng.randrange(n)
            piece = bytes(out[j : j + rng.randrange(1, 9)]) or b" "
            out[i:i] = piece * rng.randrange(2, max(3, (max_input - n) // len(piece) // 4))
        elif op == 7:  # splice another seed's tail
            other = rng.choice(seeds)
            out[i:] = other[rng.randrange(len(other) + 1) :]
        elif op == 8 and n:  # truncate
            del out[i:]
        elif op == 9 and n:  # overwrite with another seed's bytes
            other = rng.choice(seeds)
            j = rng.randrange(len(other) + 1)
            chunk = other[j : j + rng.randrange(1, 33)]
            out[i : i + len(chunk)] = chunk
        elif op in (10, 11):  # a token (text only)
            token = rng.choice(TOKENS)
            if op == 10:
                out[i:i] = token
            else:
                out[i : i + len(token)] = token
        if len(out) > max_input:
            del out[max_input:]
    return bytes(out)


# -- targets ----------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    seeds: list[bytes]
    call: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...]
    textual: bool = False
    #: Inputs stop at this size: what the parser handles well within the slow bound when
    #: its cost is linear (a hex file of 4 KiB may hold 2,000 one-byte datagrams).
    max_input: int = MAX_INPUT
    #: A mutator that knows the format, used for half the inputs (None: bytes only).
    structured: Callable[[random.Random, bytes], bytes] | None = None


def _lines(paths: Iterator[Path]) -> list[bytes]:
    out: list[bytes] = []
    for p in paths:
        out += [ln for ln in p.read_bytes().splitlines() if ln.strip()]
    return out


def _text_seeds() -> list[bytes]:
    files = sorted((DATA / "conntrack-text").glob("*.txt")) + sorted(
        (DATA / "golden").glob("lab-events*.log")
    )
    return [ln for ln in _lines(iter(files)) if not ln.startswith(b"#")]


def _netlink_seeds() -> list[bytes]:
    out: list[bytes] = []
    for path in sorted((DATA / "netlink").glob("*.hex")):
        datagram = bytearray()
        for line in path.read_text().splitlines():
            if line.startswith("#"):
                if datagram:
                    out.append(bytes(datagram))
                datagram = bytearray()
                continue
            datagram += bytes.fromhex("".join(line.split()))
        if datagram:
            out.append(bytes(datagram))
    return out


def _datagrams() -> list[bytes]:
    """NetFlow v5, v9 and IPFIX datagrams of the golden test files."""
    out: list[bytes] = []
    for path in sorted(DATA.glob("*/*.json")):
        try:
            doc = json.loads(path.read_text())
        except ValueError:
            continue
        if not isinstance(doc, dict):
            continue
        grams = list(doc.get("datagrams", []))
        for batch in doc.get("batches", []):
            if isinstance(batch, dict):
                grams += batch.get("datagrams", [])
        out += [bytes.fromhex(g) for g in grams if isinstance(g, str)]
    hexfile = DATA / "golden" / "lab-expected-v5.hex"
    out += [bytes.fromhex(x.decode()) for x in _lines(iter([hexfile])) if not x.startswith(b"#")]
    return out


def _text(data: bytes) -> None:
    for line in data.decode("utf-8", "replace").split("\n"):
        text.new_line_key(line)
        text.parse_line(line)


def _netlink_target() -> Target:
    seeds = _netlink_seeds()
    layouts = Layouts()
    for s in seeds:  # the fast path knows every seed's shape
        netlink.decode_messages(s, 1, netlink.DecodeCounters(), layouts=layouts)
    state = {"n": 0}

    def call(data: bytes) -> None:
        state["n"] += 1
        kernel_time = state["n"] % 2 == 0
        netlink.decode_messages(data, 1, netlink.DecodeCounters(), kernel_time=kernel_time)
        netlink.decode_messages(data, 1, netlink.DecodeCounters(), layouts=layouts)

    return Target("netlink", seeds, call, ())


def _framed(datagrams: Sequence[bytes]) -> bytes:
    out = bytearray()
    for i, d in enumerate(datagrams):
        payloads.frame(out, 1_700_000_000_000_000_000 + i, d)
    return bytes(out)


def _payloads_target() -> Target:
    grams = _netlink_seeds()
    lines = _text_seeds()
    seeds = [b"N" + _framed(grams[i : i + 3]) for i in range(0, len(grams), 3)]
    seeds += [b"T" + b"\n".join(lines[i : i + 5]) + b"\n" for i in range(0, len(lines), 5)]
    decoder = [payloads.PayloadDecoder()]
    state = {"n": 0}

    def call(data: bytes) -> None:
        state["n"] += 1
        if state["n"] % 1000 == 0:
            decoder[0] = payloads.PayloadDecoder()  # as a restarted correlator
        kind = Payload.NETLINK if data[:1] == b"N" else Payload.TEXT
        decoder[0].decode(kind, data[1:], "fuzz", 1)

    return Target("payloads", seeds, call, (), max_input=16384)


_RECORD = FlowRecord(
    1_700_000_000_000,
    1_700_000_001_000,
    4,
    6,
    b"\n\0\1\2",
    b"\xcb\0q\2",
    40000,
    80,
    10,
    2**40,
    b"\xcb\0q\1",
    b"\xcb\0q\2",
    40000,
    80,
    1,
    3,
    0,
    0,
    42,
)
_V6 = b"\x20\x01" + b"\1" * 14
_RECORD6 = _RECORD._replace(
    family=6,
    proto=58,
    sport=0,
    dport=128 << 8,
    src=b"\xfd" * 16,
    dst=_V6,
    post_src=b"\x20\x01" + b"\2" * 14,
    post_dst=_V6,
)


def _codec_target() -> Target:
    lines = b"\n".join(_text_seeds()[:8]) + b"\n"
    messages: list[Message] = [
        EventBatch("ingest", 7, 1, 0, Payload.TEXT, lines, 8, "a.log", 12, 3, 4096),
        EventBatch("ingest", 7, 2, 1, Payload.NETLINK, _framed(_netlink_seeds()[:4]), 4, "nl"),
        FlowBatch("correlate", 8, 2, 1, 5, 3, pack_flows([_RECORD, _RECORD6, _RECORD])),
        Ack("export", 5, 7, 42),
        Notice("export", "eof", {"records": 3, "newest_event_ms": 1, "cpu_ms": 12}),
    ]
    seeds = [codec.encode(m) for m in messages]

    def call(data: bytes) -> None:
        msg = codec.decode(data)
        if isinstance(msg, EventBatch):  # what the correlator does with it
            payloads.PayloadDecoder().decode(msg.payload, msg.data, msg.where, msg.first_line)
        elif isinstance(msg, FlowBatch):  # what the mirror does with it
            with contextlib.suppress(ValueError):  # a record the formatter rejects: counted
                flowtools_csv.format_block(msg.records, exaddr="192.0.2.1", boot_ms=0)
            for rec in unpack_flows(msg.records):
                with contextlib.suppress(ValueError):
                    json_lines.format_line(rec, exaddr="192.0.2.1")

    return Target("codec", seeds, call, (codec.DecodeError,), structured=_codec_fields)


def _odd_value(rng: random.Random) -> object:
    """A msgpack value a sender should not send: another type, or an extreme."""
    pool: list[object] = [
        None,
        True,
        False,
        -1,
        -(2**63),
        2**63 - 1,
        2**64 - 1,
        0.5,
        float("nan"),
        float("inf"),
        "",
        "x" * 300,
        "é",
        b"",
        b"\0" * 57,
        rng.randbytes(rng.randrange(200)),
        [],
        [1, 2],
        {},
        {"a": 1},
        {1: 2},
        [[[]]],
        rng.choice(INTERESTING),
    ]
    return rng.choice(pool)


def _codec_fields(rng: random.Random, data: bytes) -> bytes:
    """A seed message with one to three fields replaced (any field, any value), or one
    added or removed: frames the msgpack layer accepts, for the checks behind it."""
    fields = list(msgpack.unpackb(data, raw=False))
    for _ in range(rng.randrange(1, 4)):
        op, i = rng.randrange(8), rng.randrange(len(fields))
        if len(fields) > 2 and rng.random() < 0.9:  # mostly past kind and version
            i = rng.randrange(2, len(fields))
        if op == 0:
            fields.insert(i, _odd_value(rng))
        elif op == 1 and len(fields) > 1:
            del fields[i]
        elif op == 2 and isinstance(fields[i], bytes) and fields[i]:
            blob = bytearray(fields[i])  # a block or payload: its bytes mutated
            blob[rng.randrange(len(blob))] = rng.randrange(256)
            fields[i] = bytes(blob)
        elif op == 3 and isinstance(fields[i], int):
            fields[i] = fields[i] + rng.choice((-1, 1, 2**32, -(2**32)))
        else:
            fields[i] = _odd_value(rng)
    try:
        packed: bytes = msgpack.packb(fields, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return data
    return packed


def _netflow_target() -> Target:
    templates: list[Templates] = [{}]
    state = {"n": 0}

    def call(data: bytes) -> None:
        state["n"] += 1
        if state["n"] % 64 == 0:
            templates[0] = {}  # another exporter
        version = int.from_bytes(data[:2], "big")
        if version not in (5, 9, 10):  # the version check itself, by each
            version = (5, 9, 10)[state["n"] % 3]
        if version == 5:
            netflow_v5.unpack_datagram(data)
        elif version == 9:
            netflow_v9.unpack_datagram(data, templates[0])
        else:
            ipfix.unpack_datagram(data, templates[0])

    return Target("netflow", _datagrams(), call, (ValueError,))


def _render(data: bytes) -> None:
    for d in decode_stream(data):
        format_text(d)
        format_json(d)


def _decode_target() -> Target:
    grams = _datagrams()
    seeds = [
        b"\n".join(g.hex().encode() for g in grams[i : i + 4]) + b"\n"
        for i in range(0, len(grams), 4)
    ]
    seeds.append((DATA / "golden" / "lab-expected-v5.hex").read_bytes())
    return Target("decode", seeds, _render, (), textual=True, max_input=4096)


def _udp4(payload: bytes, sport: int = 40000, dport: int = 2055) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = (0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, b"\x7f\0\0\2", b"\x7f\0\0\1")
    return struct.pack("!BBHHHBBH4s4s", *ip) + udp


def _udp6(payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 40000, 4739, 8 + len(payload), 0) + payload
    hop = bytes([17, 0]) + b"\0" * 6  # a hop-by-hop extension header, then UDP
    ip = (6 << 28, len(hop) + len(udp), 0, 64, b"\0" * 15 + b"\2", b"\0" * 15 + b"\1")
    return struct.pack("!IHBB16s16s", *ip) + hop + udp


def _frames(grams: Sequence[bytes]) -> dict[int, list[bytes]]:
    """The datagrams as link-layer frames, per link type."""
    eth = b"\2" * 6 + b"\4" * 6
    return {
        pcap.LINKTYPE_RAW: [_udp4(g) for g in grams],
        pcap.LINKTYPE_ETHERNET: [eth + b"\x81\0\0\7\x08\0" + _udp4(g) for g in grams],
        pcap.LINKTYPE_LINUX_SLL: [b"\0" * 14 + b"\x86\xdd" + _udp6(g) for g in grams],
        pcap.LINKTYPE_LINUX_SLL2: [b"\x08\0" + b"\0" * 18 + _udp4(g) for g in grams],
        pcap.LINKTYPE_NULL: [struct.pack("<I", 2) + _udp4(g) for g in grams],
    }


def _pcap_file(linktype: int, frames: Sequence[bytes], order: str, ns: bool) -> bytes:
    magic = pcap.PCAP_MAGIC_NS if ns else pcap.PCAP_MAGIC_US
    out = [struct.pack(order + pcap.PCAP_HEADER_FORMAT, magic, 2, 4, 0, 0, 65535, linktype)]
    for i, f in enumerate(frames):
        record = (1_700_000_000 + i, i, len(f), len(f))
        out.append(struct.pack(order + pcap.PCAP_RECORD_FORMAT, *record) + f)
    return b"".join(out)


def _block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) & 3)
    n = 12 + len(body)
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def _pcapng_file(linktype: int, frames: Sequence[bytes], order: str) -> bytes:
    shb = struct.pack(order + "IHHq", pcap.PCAPNG_BYTE_ORDER, 1, 0, -1)
    tsresol = struct.pack(order + "HH", pcap.OPT_IF_TSRESOL, 1) + b"\x09\0\0\0"
    idb = struct.pack(order + pcap.PCAPNG_IDB_FORMAT, linktype, 0, 65535) + tsresol + b"\0" * 4
    out = [_block(order, pcap.PCAPNG_SHB, shb), _block(order, pcap.PCAPNG_IDB, idb)]
    for i, f in enumerate(frames):
        ts = 1_700_000_000_000_000_000 + i
        epb = (0, ts >> 32, ts & 0xFFFFFFFF, len(f), len(f))
        head = struct.pack(order + pcap.PCAPNG_EPB_FORMAT, *epb)
        btype = pcap.PCAPNG_EPB if i % 3 else pcap.PCAPNG_SPB
        body = head + f if btype == pcap.PCAPNG_EPB else struct.pack(order + "I", len(f)) + f
        out.append(_block(order, btype, body))
    return b"".join(out)


def _pcap_target() -> Target:
    grams = _datagrams()
    seeds: list[bytes] = []
    for k, (linktype, frames) in enumerate(_frames(grams).items()):
        some = frames[k : k + 4]
        seeds.append(_pcap_file(linktype, some, "<>"[k % 2], ns=k % 2 == 1))
        seeds.append(_pcapng_file(linktype, some, "<>"[(k + 1) % 2]))
    links = list(_frames(grams))
    state = {"n": 0}

    def call(data: bytes) -> None:
        state["n"] += 1
        _render(data)
        with contextlib.suppress(ValueError):  # the documented error of a broken file
            for p in pcap.read_packets(data):
                with contextlib.suppress(ValueError, pcap.NotUdp):
                    pcap.udp_datagram(p.linktype, p.data)
        with contextlib.suppress(ValueError, pcap.NotUdp):  # any bytes as any link's frame
            pcap.udp_datagram(links[state["n"] % len(links)], data[24:])

    return Target("pcap", seeds, call, (), max_input=16384)


#: A config input's first byte names its format (the file's extension).
_CONFIG_KINDS = {b"c": ".conf", b"j": ".json", b"y": ".yaml", b"t": ".toml"}


def _config_target(workdir: Path) -> Target:
    seeds = []
    for path in sorted((DATA / "config").glob("*/*")):
        if path.is_file():
            shutil.copy(path, workdir / path.name)  # includes are found beside the file
            ext = path.suffix.lower()
            kind = next((k for k, e in _CONFIG_KINDS.items() if e == ext), b"c")
            seeds.append(kind + path.read_bytes())
    exts = list(_CONFIG_KINDS.values())

    def call(data: bytes) -> None:
        ext = _CONFIG_KINDS.get(data[:1]) or exts[data[0] % len(exts) if data else 0]
        path = workdir / f"fuzz{ext}"
        path.write_bytes(data[1:])
        config.load(str(path))

    return Target("config", seeds, call, (config.ConfigError,), textual=True, max_input=16384)


def targets(workdir: Path) -> list[Target]:
    return [
        Target("text", _text_seeds(), _text, (text.ParseError,), textual=True, max_input=4096),
        _netlink_target(),
        _payloads_target(),
        _codec_target(),
        _netflow_target(),
        _decode_target(),
        _pcap_target(),
        _config_target(workdir),
    ]


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Crash:
    signature: str  # exception type and the innermost line of nfflowd it came from
    message: str
    input: bytes  # minimised
    count: int = 1


@dataclass
class Report:
    name: str
    inputs: int = 0
    seconds: float = 0.0
    crashes: dict[str, Crash] = field(default_factory=dict)
    slow: list[tuple[float, bytes]] = field(default_factory=list)  # (best ms, input)
    slowest_ms: float = 0.0
    rss_before_kb: int = 0
    rss_after_kb: int = 0

    @property
    def growth_kb(self) -> int:
        return self.rss_after_kb - self.rss_before_kb

    @property
    def crash_count(self) -> int:
        return sum(c.count for c in self.crashes.values())


def rss_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _signature(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if "nfflowd" in f.filename and "bench" not in f.filename]
    where = mine[-1] if mine else frames[-1] if frames else None
    place = f"{os.path.relpath(where.filename)}:{where.lineno}" if where else "?"
    return f"{type(exc).__name__} at {place}"


def _outcome(target: Target, data: bytes) -> BaseException | None:
    """The crash *data* causes (None: it was accepted or refused as documented)."""
    try:
        target.call(data)
    except target.allowed:
        return None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a crash: whatever else escapes
        return exc
    return None


def minimise(target: Target, data: bytes, signature: str, tries: int = 3000) -> bytes:
    """*data* with as many bytes removed as keep the crash *signature* (greedy chunks)."""
    chunk = max(1, len(data) // 2)
    while chunk >= 1 and tries > 0:
        i, changed = 0, False
        while i < len(data) and tries > 0:
            candidate = data[:i] + data[i + chunk :]
            tries -= 1
            exc = _outcome(target, candidate)
            if exc is not None and _signature(exc) == signature:
                data, changed = candidate, True
            else:
                i += chunk
        if not changed:
            chunk //= 2
    return data


def _best_ms(target: Target, data: bytes, runs: int = 3) -> float:
    """The least CPU time (this process's) *data* takes in *runs* runs, in ms: a busy
    machine's other load, which the wall clock of the first run includes, does not count."""
    best = float("inf")
    for _ in range(runs):
        start = time.process_time()
        _outcome(target, data)
        best = min(best, (time.process_time() - start) * 1000)
    return best


def fuzz(
    target: Target, inputs: int, rng: random.Random, slow_ms: float, out: Callable[[str], None]
) -> Report:
    report = Report(target.name)
    gc.collect()
    report.rss_before_kb = rss_kb()
    started = time.monotonic()
    seeds = target.seeds
    candidates: list[bytes] = []  # slower than slow_ms by the wall clock
    for i in range(inputs):
        if i < len(seeds):
            data = seeds[i]
        elif target.structured is not None and rng.random() < 0.5:
            data = target.structured(rng, rng.choice(seeds))
        else:
            data = mutate(rng, rng.choice(seeds), seeds, target.textual, target.max_input)
        start = time.perf_counter()
        exc = _outcome(target, data)
        ms = (time.perf_counter() - start) * 1000
        report.inputs += 1
        if exc is not None:
            sig = _signature(exc)
            known = report.crashes.get(sig)
            if known is not None:
                known.count += 1
            else:
                small = minimise(target, data, sig)
                report.crashes[sig] = Crash(sig, f"{type(exc).__name__}: {exc}"[:300], small)
                out(f"  {target.name}: CRASH {sig}: {str(exc)[:120]!r} input {small[:80]!r}")
        if ms > slow_ms:
            candidates.append(data)  # timed again once the run is over
        else:
            report.slowest_ms = max(report.slowest_ms, ms)
    for data in candidates:
        best = _best_ms(target, data)
        if best > slow_ms:
            report.slow.append((best, data))
            out(f"  {target.name}: SLOW {best:.0f} ms, {len(data)} bytes: {data[:60]!r}")
        report.slowest_ms = max(report.slowest_ms, best)
    report.seconds = time.monotonic() - started
    gc.collect()
    report.rss_after_kb = rss_kb()
    return report


def run(
    inputs: int | dict[str, int],
    *,
    seed: int = 13,
    only: Sequence[str] = (),
    slow_ms: float = 50.0,
    out: Callable[[str], None] = print,
) -> list[Report]:
    """Fuzz every target (or those in *only*) with *inputs* each (or per name)."""
    reports: list[Report] = []
    logging.disable(logging.CRITICAL)  # parsers log what they skip: not here
    try:
        with tempfile.TemporaryDirectory(prefix="nfflowd-fuzz-") as tmp:
            for target in targets(Path(tmp)):
                if only and target.name not in only:
                    continue
                n = inputs if isinstance(inputs, int) else inputs.get(target.name, 0)
                rng = random.Random(f"{seed}:{target.name}")
                reports.append(fuzz(target, n, rng, slow_ms, out))
    finally:
        logging.disable(logging.NOTSET)
    return reports


def table(reports: Sequence[Report], max_growth_kb: int) -> str:
    rows = [
        f"{'target':<9} {'inputs':>9} {'crashes':>8} {'distinct':>8} {'slow':>5} "
        f"{'max ms':>7} {'rss MB':>7} {'+MB':>6} {'s':>6}"
    ]
    for r in reports:
        flag = " !" if r.growth_kb > max_growth_kb else ""
        rows.append(
            f"{r.name:<9} {r.inputs:>9} {r.crash_count:>8} {len(r.crashes):>8} "
            f"{len(r.slow):>5} {r.slowest_ms:>7.1f} {r.rss_after_kb / 1024:>7.1f} "
            f"{r.growth_kb / 1024:>6.1f}{flag} {r.seconds:>6.1f}"
        )
    total = sum(r.inputs for r in reports)
    crashes = sum(r.crash_count for r in reports)
    slow = sum(len(r.slow) for r in reports)
    rows.append(f"{'total':<9} {total:>9} {crashes:>8} {'':>8} {slow:>5}")
    return "\n".join(rows)


def _save(reports: Sequence[Report], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for r in reports:
        for i, c in enumerate(r.crashes.values()):
            (directory / f"{r.name}-crash-{i}.bin").write_bytes(c.input)
            (directory / f"{r.name}-crash-{i}.txt").write_text(f"{c.signature}\n{c.message}\n")
        for i, (ms, data) in enumerate(r.slow):
            (directory / f"{r.name}-slow-{i}-{ms:.0f}ms.bin").write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="the full run (1,020,000 inputs)")
    p.add_argument("--inputs", type=int, default=2000, help="inputs per target (default 2000)")
    p.add_argument("--only", default="", help="comma-separated target names")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--slow-ms", type=float, default=50.0)
    p.add_argument("--max-growth-mb", type=float, default=64.0)
    p.add_argument("--as-limit-mb", type=int, default=0, help="address-space limit (0: none)")
    p.add_argument("--save", type=Path, default=None, help="write crashing and slow inputs here")
    ns = p.parse_args(argv)
    if ns.as_limit_mb:
        limit = ns.as_limit_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    only = [x for x in ns.only.split(",") if x]
    budget: int | dict[str, int] = FULL if ns.full else ns.inputs
    started = time.monotonic()
    reports = run(budget, seed=ns.seed, only=only, slow_ms=ns.slow_ms, out=print)
    max_growth_kb = int(ns.max_growth_mb * 1024)
    print(table(reports, max_growth_kb))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"seed {ns.seed}, {time.monotonic() - started:.0f} s, peak RSS {peak:.0f} MB")
    for r in reports:
        for c in r.crashes.values():
            print(f"{r.name}: {c.count} x {c.signature}\n    {c.message}\n    input {c.input!r}")
    if ns.save is not None:
        _save(reports, ns.save)
    bad = any(r.crashes or r.slow or r.growth_kb > max_growth_kb for r in reports)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
