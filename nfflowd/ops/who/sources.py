"""Where ``nfflowd who`` reads its records, and how, without loading days of them.

Which sources, in order of precedence:

1. ``--from PATH`` (repeatable);
2. ``<who> from`` in the configuration (:mod:`nfflowd.config.who`);
3. what the configuration implies: the file of every ``screen`` dispatcher
   (``<rundir>/mirror.out``, or ``mirror.err`` with ``stderr 1``; JSON or CSV lines,
   as its ``format`` says), with the mirror's own rotations (``mirror.out.1`` ...)
   and logrotate's (``mirror.out-YYYYMMDD``, gzip'ed or not).  A syslog dispatcher's
   lines are wherever the syslog daemon files them, which the configuration does not
   say, and nfcapd directories are the collector host's: name those with ``--from``
   or ``<who> from``.

What a path is:

* a directory: an nfcapd directory; every file below it whose name starts with
  ``nfcapd.`` (``nfcapd.YYYYmmddHHMM``, ``nfcapd.current.PID``, any ``-S`` subdirectory
  layout);
* a file starting with nfdump's magic (``0xA50C``, :data:`NFCAPD_MAGIC`): one nfcapd file;
* any other file: the mirror's lines, gzip'ed when it starts with gzip's magic, read
  with its rotations as :func:`mirror_files` finds them (``FILE.N``,
  ``FILE-DATE[.gz]``; a rotated file named itself has none).  Each file is JSON lines
  (:mod:`nfflowd.formats.json_lines`) or flow-tools CSV lines
  (:mod:`nfflowd.formats.flowtools_csv`, the 2009 tool's syslog line and the mirror's
  default), as the first of its first :data:`SNIFF_LINES` lines that is either says
  (a format changed between rotations is read file by file).  A line may carry a
  syslog prefix: a JSON object starts at its first ``{``, a CSV record is the line's
  last word, so a distribution's whole ``/var/log/syslog`` can be named.

**nfcapd files** are read by nfdump (``nfdump -r FILE -o json FILTER``, ``TZ=UTC``),
one file at a time, its output parsed one record at a time as it streams: the filter
built from the question (:func:`nfdump_filter`: the asked endpoint as source or
destination, before or after NAT, with ``--proto`` and ``--remote``) keeps nfdump's
output to the few records that matter, so memory does not grow with the data.
``nfdump -t`` selects only flows wholly inside a window (nfdump 1.7), not those that
overlap it, so times are compared here.  Files (nfcapd's, and JSON-lines files) are
skipped when they were last written (their modification time) more than
:data:`MTIME_SLACK_S` before the window starts: a flow is stored after it ends, so
such a file holds no flow that reaches into the window (the slack covers clock
differences between the firewall and the collector; a copied file only gets a newer
time, which costs reading it).  Records without their
post-NAT side (v5) need a second pass: the asked endpoint's records name the remote
end, and the remote end's records (``ip in [...]``) hold the private one
(:mod:`nfflowd.ops.who.join`).

**CSV lines** are v5's triplets (no post-NAT side), read in two passes as nfcapd's v5
records are: the lines whose source or destination address is the asked one, then,
for the groups those name, the lines of their remote ends.  A line is split, and
parsed in full (:func:`~nfflowd.formats.flowtools_csv.parse_line`) only when its
source or destination is an endpoint looked for (the asked address and port, a remote
end's): a NATed public address is in most lines of its file; its times are exact (the end is
``unix_secs``/``unix_nsecs``, ``sysuptime`` after the uptime base).  In a CSV file,
lines that end with no CSV record (other programs' syslog lines) are counted as
``other``, not malformed.

**JSON-lines files** are streamed line by line; a line that does not hold the asked
address's text and port (as some key's value) is not decoded (only checked to be a
whole ``{...}`` line): a NATed public address is in every line of its connections, so
the address alone would decode them all.  The others are checked in full by
:func:`~nfflowd.formats.json_lines.parse_line`.  A malformed line is counted and named
(``FILE:LINE: reason``, the first :data:`MALFORMED_SHOWN`), never fatal.  A source
that cannot be read at all (missing, unreadable, nfdump failing, missing or saying it
could not read a file nfcapd has closed) is a source error: the others are still read,
and the command exits 2 naming it.
"""

from __future__ import annotations

import calendar
import glob
import gzip
import itertools
import json
import os
import re
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from nfflowd.config import Settings
from nfflowd.formats import flowtools_csv, json_lines
from nfflowd.ops.who.join import Flow, Point, mentions
from nfflowd.ops.who.question import Endpoint, Question, normal_address
from nfflowd.outputs.screen_file import screen_path

#: The first two bytes of an nfcapd file (nfdump's magic 0xA50C, little-endian).
NFCAPD_MAGIC = b"\x0c\xa5"
GZIP_MAGIC = b"\x1f\x8b"
#: Names of the files nfcapd writes (closed ones and the one it is writing).
NFCAPD_PREFIX = "nfcapd."
#: The file nfcapd is writing (``nfcapd.current.PID``): read as far as it goes.
NFCAPD_WRITING = "nfcapd.current."
#: A file last written this long before the window starts is not read (see above).
MTIME_SLACK_S = 3600
#: Malformed JSON lines named in the answer (all are counted).
MALFORMED_SHOWN = 5
#: Remote endpoints per second-pass nfdump filter.
REMOTES_PER_PASS = 500
#: ``direction`` of the JSON line: the original as it left (the triplet's second record).
EGRESS = "original_out"
REPLY = "reply_in"
#: nfdump's flowDirection value for egress.
NFDUMP_EGRESS = 1
#: What a text file holds (SourceReport.kind), told by its first lines (SNIFF_LINES).
JSON_LINES, CSV_LINES = "json lines", "flow-tools csv lines"
SNIFF_LINES = 1000
#: A flow-tools CSV record is the line's last word (after a syslog prefix, if any)
#: with this many commas; its source and destination endpoints are these fields
#: (:data:`nfflowd.formats.flowtools_csv.FIELDS`).
CSV_COMMAS = len(flowtools_csv.FIELDS) - 1
CSV_SIDES = tuple(
    (flowtools_csv.FIELDS.index(f"{side}addr"), flowtools_csv.FIELDS.index(f"{side}port"))
    for side in ("src", "dst")
)
#: The endpoints a pass over CSV lines looks for, as the lines write them: address ->
#: port texts (None: any port).
Wanted = dict[str, set[str] | None]


class SourceError(Exception):
    """A source cannot be read; the message names it."""


@dataclass(frozen=True)
class Source:
    path: str
    origin: str  # how it was chosen: "--from", "<who> from", "dispatcher screen (format json)"


@dataclass
class SourceReport:
    """What was read from one source (for the answer)."""

    path: str
    origin: str
    kind: str = ""  # "nfcapd" | "json lines"
    files: int = 0  # files read
    skipped_files: int = 0  # files skipped by their modification time
    records: int = 0  # records nfdump gave / lines read
    malformed: int = 0
    other: int = 0  # lines of a CSV file that are no CSV record (other programs' syslog)
    examples: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def choose(settings: Settings | None, given: Sequence[str]) -> list[Source]:
    """The sources to read (see the module docstring); SourceError when there are none."""
    if given:
        return [Source(os.path.abspath(p), "--from") for p in given]
    if settings is None:
        raise SourceError("no source: give --from PATH (no configuration was read)")
    if settings.who.sources:
        return [Source(p, "<who> from") for p in settings.who.sources]
    out = [
        Source(
            screen_path(settings.daemon.rundir, d.stderr),
            f"dispatcher {d.name} (format {d.format})",
        )
        for d in settings.mirror.dispatchers
        if d.kind == "screen"
    ]
    if out:
        return out
    syslog = [
        f"dispatcher {d.name} sends {d.format} lines to syslog ({d.address}): give the file "
        "your syslog daemon keeps them in"
        for d in settings.mirror.dispatchers
        if d.kind == "syslog"
    ]
    where = settings.path or "the built-in defaults"
    raise SourceError(
        f"no source: {where} has no <who> from and no screen dispatcher; "
        + ("; ".join(syslog) + "; " if syslog else "")
        + "give --from PATH (an nfcapd directory or file, a JSON-lines or CSV file) or a "
        "<who> block"
    )


def mirror_files(path: str) -> list[str]:
    """A JSON mirror file and its rotations, oldest first: logrotate's ``path-DATE[.gz]``,
    the mirror's ``path.N`` (higher N older), then *path*."""
    dated = sorted(glob.glob(glob.escape(path) + "-*"))
    numbered = [p for p in glob.glob(glob.escape(path) + ".*") if p.rsplit(".", 1)[1].isdigit()]
    numbered.sort(key=lambda p: -int(p.rsplit(".", 1)[1]))
    return dated + numbered + ([path] if os.path.exists(path) else [])


@dataclass
class Collected:
    """Every record of every source that may answer the question."""

    flows: list[Flow] = field(default_factory=list)
    reports: list[SourceReport] = field(default_factory=list)


def collect(q: Question, sources: Sequence[Source], nfdump: str = "nfdump") -> Collected:
    """Read *sources* for *q*; a source that fails is reported, the others still read."""
    out = Collected()
    for src in sources:
        report = SourceReport(src.path, src.origin)
        out.reports.append(report)
        try:
            out.flows += _read(q, src, report, nfdump)
        except SourceError as exc:
            report.error = str(exc)
        except OSError as exc:  # unreadable, or gone while reading
            report.error = f"{exc.filename or src.path}: {exc.strerror or exc}"
        except (EOFError, zlib.error) as exc:  # a gzip file cut short or corrupt
            report.error = f"{src.path}: {exc}"
        except ValueError as exc:  # nfdump printed something that is not its JSON
            report.error = f"{src.path}: unexpected nfdump output: {exc}"
    return out


def _read(q: Question, src: Source, report: SourceReport, nfdump: str) -> list[Flow]:
    path = src.path
    if os.path.isdir(path):
        report.kind = "nfcapd"
        files = _nfcapd_files(path)
        if not files:
            report.warnings.append(f"{path}: no {NFCAPD_PREFIX}* file below it")
        return _nfcapd(q, files, report, nfdump)
    if os.path.exists(path):
        with open(path, "rb") as fh:
            magic = fh.read(2)
        if magic == NFCAPD_MAGIC:
            report.kind = "nfcapd"
            return _nfcapd(q, [path], report, nfdump)
    files = mirror_files(path)  # the file and its rotations
    if not files:
        inferred = src.origin.startswith("dispatcher ")
        hint = f" (written by the {src.origin} once nfflowd runs)" if inferred else ""
        raise SourceError(f"{path}: no such file or directory{hint}")
    files = _recent(q, files, report)
    kinds = {p: _kind_of(p) for p in files}
    report.kind = ", ".join(sorted(set(kinds.values()))) or JSON_LINES
    flows = [f for p in files if kinds[p] == JSON_LINES for f in _json_file(q, p, report)]
    return flows + _csv(q, [p for p in files if kinds[p] == CSV_LINES], report)


def _kind_of(path: str) -> str:
    """JSON_LINES or CSV_LINES: what the first of its first SNIFF_LINES lines that is
    either holds (JSON lines when none is)."""
    with _open_text(path) as fh:
        for raw in itertools.islice(fh, SNIFF_LINES):
            line = raw.strip()
            if "{" in line and line.endswith("}"):
                return JSON_LINES
            if _csv_record(line) is not None:
                return CSV_LINES
    return JSON_LINES


def _recent(q: Question, files: list[str], report: SourceReport) -> list[str]:
    """*files* but those last written :data:`MTIME_SLACK_S` before the window starts."""
    span = q.span
    if span is None:
        return files
    oldest = span[0] / 1000 - MTIME_SLACK_S
    kept = [p for p in files if os.stat(p).st_mtime >= oldest]
    report.skipped_files += len(files) - len(kept)
    return kept


# --- JSON lines ------------------------------------------------------------------------


def _open_text(path: str) -> IO[str]:
    with open(path, "rb") as fh:
        gz = fh.read(2) == GZIP_MAGIC
    if gz:
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _json_file(q: Question, path: str, report: SourceReport) -> Iterator[Flow]:
    needle = f'"{q.public.address}"'
    port = "" if q.public.port is None else str(q.public.port)
    # the port as the value of a key (a NATed public address is in every line of its
    # connections: the address alone would decode them all)
    port_value = re.compile(rf'":\s*{port}\s*[,}}]') if port else None
    report.files += 1
    with _open_text(path) as fh:
        for n, raw in enumerate(fh, 1):
            report.records += 1
            line = raw.strip()
            start = line.find("{")
            if start < 0 or not line.endswith("}"):
                _malformed(report, path, n, "not a whole JSON object")
                continue
            if needle not in line:
                continue
            if port_value is not None and (port not in line or not port_value.search(line)):
                continue
            try:
                fields = json_lines.parse_line(line[start:])
            except ValueError as exc:
                _malformed(report, path, n, str(exc))
                continue
            flow = _json_flow(fields, f"{path}:{n}")
            if q.wants_proto(flow.proto) and q.in_window(flow.first_ms, flow.last_ms):
                yield flow


def _malformed(report: SourceReport, path: str, line: int, reason: str) -> None:
    report.malformed += 1
    if len(report.examples) < MALFORMED_SHOWN:
        report.examples.append(f"{path}:{line}: {reason}")


def _json_flow(j: dict[str, int | str], ref: str) -> Flow:
    def point(addr: str, port: str) -> Point:
        return str(j[addr]), int(j[port])

    return Flow(
        proto=int(j["proto"]),
        first_ms=int(j["first_ms"]),
        last_ms=int(j["last_ms"]),
        src=point("src", "sport"),
        dst=point("dst", "dport"),
        packets=int(j["packets"]),
        bytes=int(j["bytes"]),
        post=(point("post_src", "post_sport"), point("post_dst", "post_dport")),
        egress=j["direction"] == EGRESS,
        reply=j["direction"] == REPLY,
        ref=ref,
    )


# --- flow-tools CSV lines (the syslog mirror's) -----------------------------------------


def _csv_record(line: str) -> str | None:
    """The CSV record a line ends with (after a syslog prefix, if any), else None."""
    words = line.rsplit(None, 1)
    return words[-1] if words and words[-1].count(",") == CSV_COMMAS else None


def _csv(q: Question, files: list[str], report: SourceReport) -> list[Flow]:
    """The flows of *files* (CSV lines, v5's triplets: no post-NAT side) that answer *q*:
    those naming the asked endpoint, then, as for nfcapd files, the remote ends'."""
    if not files:
        return []
    flows: list[Flow] = []
    remotes: dict[tuple[int, int, int], set[Point]] = {}
    port = q.public.port
    asked: Wanted = {q.public.address: None if port is None else {str(port)}}
    for path in files:
        report.files += 1
        for flow in _csv_flows(q, path, asked, report):
            other = mentions(q, flow)
            if other is not None:
                flows.append(flow)
                remotes.setdefault(flow.group, set()).add(other)
    if remotes:  # second pass: the records of the remote ends, for the groups that need them
        ends: Wanted = {}
        for address, remote_port in set().union(*remotes.values()):
            ends[address] = (ends.get(address) or set()) | {str(remote_port)}
        for path in files:
            flows += _of_remotes(_csv_flows(q, path, ends, None), remotes)
    return flows


def _csv_flows(
    q: Question, path: str, wanted: Wanted, report: SourceReport | None
) -> Iterator[Flow]:
    """The flows of *path*'s CSV lines from or to a *wanted* endpoint, within *q*'s
    window and protocol; lines and malformed lines counted in *report* (None: a second
    pass, counted already).  A line is tested (:func:`_prefilter`) before it is split:
    most lines of a NATed public address's file name that address, few its port."""
    named = _prefilter(wanted)
    with _open_text(path) as fh:
        for n, raw in enumerate(fh, 1):
            if report is not None:  # every line is told: counted as a record or other
                record = _csv_record(raw)
                report.records += 1
                report.other += record is None and bool(raw.strip())
            elif named is not None and not named(raw):
                continue
            else:
                record = _csv_record(raw)
            if record is None or (named is not None and not named(record)):
                continue
            parts = record.split(",")
            if not any(_wanted(wanted, parts[a], parts[p]) for a, p in CSV_SIDES):
                continue
            try:
                fields = flowtools_csv.parse_line(record)
            except ValueError as exc:
                if report is not None:
                    _malformed(report, path, n, str(exc))
                continue
            flow = _csv_flow(fields, f"{path}:{n}")
            if q.wants_proto(flow.proto) and q.in_window(flow.first_ms, flow.last_ms):
                yield flow


#: Above this many addresses a CSV pass splits every line (no search first).
PREFILTER_MAX = 64


def _prefilter(wanted: Wanted) -> Callable[[str], bool] | None:
    """A test true of every CSV record naming a *wanted* endpoint, and of few others,
    run before a line is split (None for many addresses): an address, and one of its
    ports, each between commas (in a record the addresses come before the ports).
    One endpoint (the usual question, and its one remote end): two substring tests."""
    if len(wanted) > PREFILTER_MAX:
        return None
    if len(wanted) == 1:
        ((address, ports),) = wanted.items()
        a = f",{address},"
        if ports is None:
            return lambda line: a in line
        if len(ports) == 1:
            p = f",{next(iter(ports))},"
            return lambda line: p in line and a in line
    each = []
    for address, ports in wanted.items():
        port = "" if ports is None else ".*,(?:" + "|".join(sorted(ports)) + "),"
        each.append(f",{re.escape(address)},{port}")
    search = re.compile("|".join(each)).search
    return lambda line: search(line) is not None


def _wanted(wanted: Wanted, address: str, port: str) -> bool:
    if address not in wanted:
        return False
    ports = wanted[address]
    return ports is None or port in ports


def _csv_flow(c: dict[str, int | str], ref: str) -> Flow:
    """One CSV line's flow; its times are exact: the end is unix_secs/nsecs, which is
    ``sysuptime`` after the uptime base (:mod:`nfflowd.formats.flowtools_csv`)."""
    base = int(c["unix_secs"]) * 1000 + int(c["unix_nsecs"]) // 1_000_000 - int(c["sysuptime"])
    src = (str(c["srcaddr"]), int(c["srcport"]))
    dst = (str(c["dstaddr"]), int(c["dstport"]))
    return Flow(
        proto=int(c["prot"]),
        first_ms=base + int(c["first"]),
        last_ms=base + int(c["last"]),
        src=src,
        dst=dst,
        packets=int(c["dpkts"]),
        bytes=int(c["doctets"]),
        post=None,
        ref=f"{ref} (flow-tools CSV: {_show(src)} > {_show(dst)})",
    )


def _of_remotes(
    flows: Iterable[Flow], remotes: dict[tuple[int, int, int], set[Point]]
) -> Iterator[Flow]:
    """The second pass's keepers: records without their post-NAT side, of a group whose
    asked-for records named a remote end, from or to that end."""
    for flow in flows:
        ends = remotes.get(flow.group)
        if flow.post is None and ends is not None and (flow.src in ends or flow.dst in ends):
            yield flow


# --- nfcapd files, through nfdump ------------------------------------------------------


def _nfcapd_files(directory: str) -> list[str]:
    out = []
    for root, dirs, names in os.walk(directory, onerror=_raise):
        dirs.sort()
        out += [os.path.join(root, n) for n in sorted(names) if n.startswith(NFCAPD_PREFIX)]
    return out


def _raise(exc: OSError) -> None:
    raise exc


def nfdump_filter(q: Question, remotes: Sequence[str] = (), protos: Sequence[int] = ()) -> str:
    """nfdump's filter for the asked endpoint (before or after NAT, either side), or, with
    *remotes*, for every record of those addresses (the second pass)."""
    parts = []
    if q.proto is not None:
        parts.append(f"proto {q.proto}")
    elif protos:
        parts.append("(" + " or ".join(f"proto {p}" for p in sorted(set(protos))) + ")")
    if remotes:
        parts.append(f"ip in [{' '.join(sorted(set(remotes)))}]")
    else:
        parts.append(_endpoint_filter(q.public))
        if q.remote is not None:
            parts.append(_endpoint_filter(q.remote))
    return " and ".join(parts)


def _endpoint_filter(e: Endpoint) -> str:
    sides = []
    for kind in ("ip", "xip"):
        port = "port" if kind == "ip" else "xport"
        for side in ("src", "dst"):
            term = f"{side} {kind} {e.address}"
            if e.port is not None:
                term += f" and {side} {port} {e.port}"
            sides.append(f"({term})")
    return "(" + " or ".join(sides) + ")"


def _nfcapd(q: Question, files: list[str], report: SourceReport, nfdump: str) -> list[Flow]:
    files = _recent(q, files, report)
    report.files += len(files)
    flows: list[Flow] = []
    remotes: dict[tuple[int, int, int], set[Point]] = {}
    filt = nfdump_filter(q)
    for path in files:
        for rec in _nfdump_records(nfdump, path, filt, report):
            flow = _nfdump_flow(rec, path)
            if flow is None or not q.in_window(flow.first_ms, flow.last_ms):
                continue
            flows.append(flow)
            other = mentions(q, flow)
            if other is not None:
                remotes.setdefault(flow.group, set()).add(other)
    if not remotes:
        return flows
    # second pass: the records of the remote ends, for the groups that need them
    addresses = sorted({p[0] for points in remotes.values() for p in points})
    protos = [g[0] for g in remotes]
    for i in range(0, len(addresses), REMOTES_PER_PASS):
        filt = nfdump_filter(q, addresses[i : i + REMOTES_PER_PASS], protos)
        for path in files:
            records = _nfdump_records(nfdump, path, filt, report, count=False)
            decoded = (_nfdump_flow(rec, path) for rec in records)
            flows += _of_remotes((f for f in decoded if f is not None), remotes)
    return flows


def _nfdump_records(
    nfdump: str, path: str, filt: str, report: SourceReport, *, count: bool = True
) -> Iterator[dict[str, Any]]:
    """The records ``nfdump -r path -o json filt`` prints, one at a time as they come."""
    env = dict(os.environ, TZ="UTC", LC_ALL="C")
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                [nfdump, "-r", path, "-o", "json", filt],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                text=True,
                encoding="utf-8",
                errors="replace",
            )
        except OSError as exc:
            raise SourceError(
                f"{path}: cannot run {nfdump!r} ({exc.strerror}): install nfdump, or name "
                "the program in <who> nfdump"
            ) from None
        assert proc.stdout is not None
        try:
            obj: list[str] | None = None
            for line in proc.stdout:
                text = line.strip()
                if text.startswith("{"):
                    obj = [text]
                elif obj is not None and text.startswith("}"):
                    obj.append("}")
                    if count:
                        report.records += 1
                    yield json.loads("".join(obj))
                    obj = None
                elif obj is not None:
                    obj.append(text)
        except BaseException:  # not read to the end (an error, the caller stopped)
            proc.kill()
            raise
        finally:
            proc.stdout.close()
            rc = proc.wait()
        err.seek(0)
        said = err.read().decode(errors="replace").strip()
    lines = said.splitlines()
    if rc != 0:
        raise SourceError(f"{path}: nfdump exited with status {rc}: {'; '.join(lines[:2])}")
    if lines and os.path.basename(path).startswith(NFCAPD_WRITING):
        report.warnings.append(f"{path} (being written): nfdump: {'; '.join(lines[:2])}")
    elif lines:  # nfdump 1.7 exits 0 on a file it cannot read (short read, bad appendix)
        raise SourceError(f"{path}: nfdump could not read it: {'; '.join(lines[:2])}")


def _nfdump_ms(text: str) -> int:
    """nfdump 1.7's JSON time ``YYYY-mm-ddTHH:MM:SS.ms`` (TZ=UTC) -> epoch ms."""
    stamp, _, frac = str(text).partition(".")
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) * 1000 + int(frac or 0)


def _nfdump_flow(r: dict[str, Any], path: str) -> Flow | None:
    """A FLOW record of nfdump's JSON as a Flow (None: another record type, a NAT event)."""
    if r.get("type") != "FLOW" or "nat_event_id" in r:
        return None
    v = "4" if "src4_addr" in r else "6" if "src6_addr" in r else None
    if v is None:
        return None
    proto = int(r["proto"])
    if "icmp_type" in r:
        sport, dport = 0, int(r["icmp_type"]) << 8 | int(r.get("icmp_code", 0))
    else:
        sport, dport = int(r.get("src_port", 0)), int(r.get("dst_port", 0))
    src = (normal_address(r[f"src{v}_addr"]), sport)
    dst = (normal_address(r[f"dst{v}_addr"]), dport)
    post = None
    xs, xd = r.get(f"src{v}_xlt_ip"), r.get(f"dst{v}_xlt_ip")
    if xs is not None and xd is not None and not {xs, xd} <= {"0.0.0.0", "::"}:
        post = (
            (normal_address(xs), int(r.get("src_xlt_port", sport))),
            (normal_address(xd), int(r.get("dst_xlt_port", dport))),
        )
    what = "with post-NAT fields" if post else "without post-NAT fields"
    return Flow(
        proto=proto,
        first_ms=_nfdump_ms(r["first"]),
        last_ms=_nfdump_ms(r["last"]),
        src=src,
        dst=dst,
        packets=int(r.get("in_packets", 0)),
        bytes=int(r.get("in_bytes", 0)),
        post=post,
        egress=r.get("direction") == NFDUMP_EGRESS,
        ref=f"{path} ({what}: {_show(src)} > {_show(dst)})",
    )


def _show(p: Point) -> str:
    return f"[{p[0]}]:{p[1]}" if ":" in p[0] else f"{p[0]}:{p[1]}"
