"""The coverage journal: every interval in which nfflowd may have missed connections.

A "not found" from ``nfflowd who`` is a proof only if nfflowd was listening over
the asked window and delivered everything it saw.  So the stages write down,
durably, when that was not so, and when recording started and stopped; ``who``
reads it back (:func:`read`, :func:`assess`).

**Where.**  ``<daemon> statedir`` (default ``/var/lib/nfflowd``), not the run
directory: ``/run`` is emptied by a reboot, and a reboot is one of the intervals
to be proven.  The state directory is checked as the run directory is
(:func:`problems`: no symbolic link, owned by root or by us, nothing above it that
another user could rename, and an existing non-empty directory only if nfflowd
made it: its :data:`MARKER`); :func:`ensure` creates it (root:``<daemon> user``'s
group, 1770, when the stages run as that user: each stage appends to a file of its
own, which the sticky bit keeps others from removing).  Only a live source
(``netlink``, ``conntrack``) journals: a saved log is replayed, not listened to.

**Files.**  One per writer, ``coverage.<stage>.jsonl`` (``coverage.ingest.jsonl``,
``coverage.export-1.jsonl``...): no two processes append to one file, and each is
owned by the process that writes it (ingest is root; the others may be ``<daemon>
user``).  A file larger than :data:`MAX_BYTES` is renamed ``….jsonl.1`` (older ones
shift up to ``.KEEP``; the oldest is removed) before the next append, so the
journal of a stage is bounded by ``(KEEP + 1) * MAX_BYTES``.  Every record is one
JSON object on one line, written with one ``write`` to an ``O_APPEND`` descriptor
and ``fsync``'ed before the stage goes on: a record that was logged is on disk.

**Records.**  Every one has ``"v": 1``, ``"kind"``, ``"stage"`` and ``"at_ms"``
(when it was written, epoch ms):

* ``{"kind": "started", "at_ms", "source", "conditions": [...]}``: ingest listens
  from ``at_ms`` (written once its socket or program is open); ``conditions`` are
  causes that hold for the whole run (``no_counters``, ``no_timestamps``);
* ``{"kind": "stopped", "at_ms"}``: ingest stopped cleanly (after its last read);
* ``{"kind": "gap", "from_ms", "to_ms", "cause", "detail"}``: connections in
  ``[from_ms, to_ms]`` may be missing, because of *cause* (:data:`CAUSES`).

nfflowd was recording at T when a ``started`` record precedes T and neither a
``stopped`` record nor another ``started`` (a restart after a crash, which writes
its ``not_listening`` gap) comes between; the run still going is proven up to its
last heartbeat (``ingest.alive`` in the state directory, a shared file mapping
updated on every loop, :mod:`nfflowd.conntrack.checkpoint`).  A window is
*complete* when it lies inside such recording and no gap overlaps it.

**Causes** (the vocabulary is closed: :data:`CAUSES`):

* ``not_listening``: no ingest listened, from its last heartbeat to the moment
  the next one listens (a crash, a SIGKILL, a stop, a reboot: today's
  ``blind_ms``).  Events waiting in a killed ingest's socket are lost with it; they
  are of connections that ended before the kill, i.e. inside or just before the gap;
* ``enobufs``: the kernel dropped events (ENOBUFS) between two reads; from the
  read before to the end of the resync that followed;
* ``no_counters`` / ``no_timestamps``: ``nf_conntrack_acct`` / ``nf_conntrack_timestamp``
  off where the source reads: connections are seen, without byte counters / the
  kernel's start and stop times (a condition of the run, in ``started``).  They are
  reported with the window's coverage but do not make it incomplete: no connection
  was missed, its record lacks fields;
* ``undelivered``: a terminal stage could not deliver records (collector send
  errors, a syslog dispatcher's dropped lines); from the first failure to the last
  of a burst (:class:`Undelivered`).  The records were of connections that ended at
  or shortly before those times.

Each gap is also one log line at WARNING in the stage's log (:meth:`Gap.line`,
fixed format: ``coverage gap from=ISO to=ISO ms=N cause=C stage=S detail=...``),
and counted in the stage's counters (``coverage_gaps``, ``coverage_gap_ms``).  Export
sends every stage's gaps to its v9/IPFIX collectors as options records
(:mod:`nfflowd.outputs.coverage_feed`, :mod:`nfflowd.formats.coverage_options`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from nfflowd.config import Settings
from nfflowd.formats.json_lines import iso_ms
from nfflowd.pipeline import persist
from nfflowd.pipeline import rundir as rundirs

#: Why connections may be missing (the ``cause`` of a gap record).
CAUSES: Final = ("not_listening", "enobufs", "no_counters", "no_timestamps", "undelivered")
#: The kinds of record.
GAP, STARTED, STOPPED = "gap", "started", "stopped"
#: Marks a directory nfflowd made or adopted as its state directory.
MARKER: Final = ".nfflowd-statedir"
#: A journal file is rotated when it grows beyond this.
MAX_BYTES: Final = 1 << 20
#: Rotated files kept per stage (``.1`` .. ``.KEEP``).
KEEP: Final = 3
#: Ingest's heartbeat in the state directory (nfflowd.conntrack.checkpoint.ALIVE).
ALIVE: Final = "ingest.alive"
#: A burst of delivery failures ends after this long without a new one.
UNDELIVERED_QUIET_MS: Final = 1000
VERSION: Final = 1
#: The latest time a record may carry (9999-12-31, as nfflowd.formats.json_lines).
MAX_MS: Final = 253_402_300_799_999

log = logging.getLogger("nfflowd.coverage")


class StatedirError(RuntimeError):
    """The state directory cannot be used safely (the message says why)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def journal_name(stage: str) -> str:
    return f"coverage.{stage}.jsonl"


# -- the state directory -------------------------------------------------------------


def problems(path: str, *, group: int | None = None) -> list[str]:
    """Why *path* cannot be this host's state directory (empty: it can); nothing changes."""
    path = os.path.abspath(path)
    label = "state directory"
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        return [f"{label} {path}: cannot inspect it: {exc.strerror}"]
    out = rundirs.parent_problems(path, label)
    if st is None:
        return out
    if stat.S_ISLNK(st.st_mode):
        return [
            *out,
            f"{label} {path} is a symbolic link (to {os.readlink(path)}): refused, give the "
            "real directory (a link could send root's files anywhere)",
        ]
    if not stat.S_ISDIR(st.st_mode):
        return [*out, f"{label} {path} exists and is not a directory"]
    owner = 0 if os.geteuid() == 0 else os.geteuid()
    if st.st_uid != owner:
        out.append(
            f"{label} {path} belongs to uid {st.st_uid}, not uid {owner}: refused (that user "
            f"could forge or remove the coverage journal); remove it or `chown {owner} {path}`"
        )
    try:
        names = os.listdir(path)
    except OSError as exc:
        return [*out, f"{label} {path}: cannot list it: {exc.strerror}"]
    if names and MARKER not in names:
        shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        out.append(
            f"{label} {path} is not empty and not an nfflowd state directory (it holds "
            f"{shown}): refused, give a new or empty directory"
        )
    return out


def ensure(path: str, group: int | None = None) -> str:
    """Check *path* (:func:`problems`), create it if needed, return its absolute path.

    Mode 0700, or root:*group* 1770 (sticky) when the stages run as ``<daemon> user``.
    Raises :class:`StatedirError`."""
    path = os.path.abspath(path)
    found = problems(path, group=group)
    if found:
        raise StatedirError("; ".join(found))
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            if st.st_uid != (0 if os.geteuid() == 0 else os.geteuid()):
                raise StatedirError(f"state directory {path} changed owner: refused")
            if group is not None:
                os.fchown(fd, 0, group)
            os.fchmod(fd, 0o700 if group is None else 0o1770)
            if MARKER not in os.listdir(fd):
                text = "nfflowd state directory: the coverage journal (nfflowd who)\n"
                rundirs.write_file(path, MARKER, text, 0o644)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StatedirError(f"state directory {path}: {exc.strerror or exc}") from None
    return path


def own_file(directory: str, name: str) -> str:
    """*directory*/*name* with anything there that is not a regular file of ours removed
    (in a shared state directory another user could have planted a name for us)."""
    path = os.path.join(directory, name)
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.unlink(path)
    return path


# -- gaps and the journal ----------------------------------------------------------------


@dataclass(frozen=True)
class Gap:
    """Connections in [from_ms, to_ms] may be missing, because of *cause*."""

    from_ms: int
    to_ms: int
    cause: str
    stage: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.cause not in CAUSES:
            raise ValueError(f"coverage gap cause {self.cause!r} is not one of {CAUSES}")
        if self.to_ms < self.from_ms:
            raise ValueError(f"coverage gap ends ({self.to_ms}) before it starts ({self.from_ms})")

    @property
    def ms(self) -> int:
        return self.to_ms - self.from_ms

    def overlaps(self, span: tuple[int, int]) -> bool:
        return self.from_ms <= span[1] and self.to_ms >= span[0]

    def line(self) -> str:
        """The one fixed-format log line of this gap."""
        detail = self.detail.replace("\n", " ")
        return (
            f"coverage gap from={iso_ms(self.from_ms)} to={iso_ms(self.to_ms)} ms={self.ms} "
            f"cause={self.cause} stage={self.stage} detail={detail}"
        )

    def record(self, at_ms: int) -> dict[str, Any]:
        return {
            "v": VERSION,
            "kind": GAP,
            "stage": self.stage,
            "at_ms": at_ms,
            "from_ms": self.from_ms,
            "to_ms": self.to_ms,
            "cause": self.cause,
            "detail": self.detail,
        }


class Journal:
    """One stage's journal file in the state directory: append, fsync, rotate.

    A journal that cannot be written (no state directory, a full disk) does not stop
    the stage: the failure is logged once per kind and counted
    (``coverage_journal_errors``); the gap's log line and counters still say it.
    """

    def __init__(
        self,
        statedir: str,
        stage: str,
        logger: logging.Logger,
        *,
        max_bytes: int = MAX_BYTES,
        keep: int = KEEP,
    ) -> None:
        self.statedir = statedir
        self.stage = stage
        self.path = os.path.join(statedir, journal_name(stage))
        self.log = logger
        self.max_bytes = max_bytes
        self.keep = keep
        self.counters: dict[str, int] = {
            "coverage_gaps": 0,
            "coverage_gap_ms": 0,
            "coverage_journal_errors": 0,
        }
        self._fd: int | None = None
        self._said: set[str] = set()

    def _open(self) -> int:
        if self._fd is None:
            own_file(self.statedir, journal_name(self.stage))
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, 0o640)
        return self._fd

    def _rotate(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        for i in range(self.keep, 0, -1):
            older = f"{self.path}.{i - 1}" if i > 1 else self.path
            with contextlib.suppress(FileNotFoundError):
                os.replace(older, f"{self.path}.{i}")
        if self.keep == 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        dfd = os.open(self.statedir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def append(self, record: Mapping[str, Any]) -> bool:
        """Write *record* as one line and fsync it (False: it could not be written)."""
        data = (json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n").encode()
        try:
            fd = self._open()
            if os.fstat(fd).st_size + len(data) > self.max_bytes and os.fstat(fd).st_size:
                self._rotate()
                fd = self._open()
            os.write(fd, data)
            os.fsync(fd)
        except OSError as exc:
            self.counters["coverage_journal_errors"] += 1
            if exc.strerror not in self._said:
                self._said.add(str(exc.strerror))
                self.log.error("coverage journal %s: cannot write: %s", self.path, exc.strerror)
            return False
        return True

    def gap(self, gap: Gap) -> None:
        """Journal *gap*, log its line, count it."""
        self.log.warning("%s", gap.line())
        self.counters["coverage_gaps"] += 1
        self.counters["coverage_gap_ms"] += gap.ms
        self.append(gap.record(now_ms()))

    def started(self, at_ms: int, source: str, conditions: Sequence[str] = ()) -> None:
        for c in conditions:
            if c not in CAUSES:
                raise ValueError(f"coverage condition {c!r} is not one of {CAUSES}")
        record = {"v": VERSION, "kind": STARTED, "stage": self.stage, "at_ms": at_ms}
        self.append({**record, "source": source, "conditions": list(conditions)})

    def stopped(self, at_ms: int) -> None:
        self.append({"v": VERSION, "kind": STOPPED, "stage": self.stage, "at_ms": at_ms})

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class Undelivered:
    """Bursts of delivery failures -> ``undelivered`` gaps.

    :meth:`observe` takes a counter that only grows (datagrams not sent, lines
    dropped) and the time; a gap opens at the first increase and closes once the
    counter stood still for :data:`UNDELIVERED_QUIET_MS` (:meth:`observe` returns
    it) or the stage stops (:meth:`flush`).  One record per burst, not per datagram.
    """

    stage: str
    what: str  # "datagrams to collector 192.0.2.1:2055 v9"
    quiet_ms: int = UNDELIVERED_QUIET_MS
    _last: int = 0
    _first_ms: int | None = None
    _last_ms: int = 0
    _lost: int = 0

    def observe(self, total: int, at_ms: int) -> Gap | None:
        if total > self._last:
            if self._first_ms is None:
                self._first_ms = at_ms
            self._lost += total - self._last
            self._last, self._last_ms = total, at_ms
            return None
        self._last = total
        if self._first_ms is not None and at_ms - self._last_ms >= self.quiet_ms:
            return self.flush()
        return None

    def flush(self) -> Gap | None:
        if self._first_ms is None:
            return None
        gap = Gap(
            self._first_ms,
            self._last_ms,
            "undelivered",
            self.stage,
            f"{self._lost} {self.what} not delivered",
        )
        self._first_ms, self._lost = None, 0
        return gap


def journaling(settings: Settings) -> bool:
    """Whether a stage with *settings* journals coverage: only while listening live."""
    return settings.source.type != "file"


class DeliveryWatch:
    """A terminal stage's delivery-failure counters -> ``undelivered`` gaps in *journal*.

    *watched*: counter name (``c0_send_errors``, ``d1_dropped``) -> what it counts
    (``datagrams to collector 192.0.2.1:2055 v9``).  :meth:`observe` takes the stage's
    counters now and then (every notice); :meth:`close` ends the bursts at exit."""

    def __init__(self, journal: Journal, watched: Mapping[str, str]) -> None:
        self.journal = journal
        self.bursts = {k: Undelivered(journal.stage, what) for k, what in watched.items()}

    def observe(self, counters: Mapping[str, int], at_ms: int | None = None) -> None:
        at = now_ms() if at_ms is None else at_ms
        for key, burst in self.bursts.items():
            gap = burst.observe(counters.get(key, 0), at)
            if gap is not None:
                self.journal.gap(gap)

    def close(self) -> None:
        for burst in self.bursts.values():
            gap = burst.flush()
            if gap is not None:
                self.journal.gap(gap)
        self.journal.close()


# -- reading it back -------------------------------------------------------------------


@dataclass
class Records:
    """What :func:`read` found: records by time, and what could not be read."""

    records: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    malformed: int = 0
    alive_ms: int | None = None  # the running ingest's last heartbeat, when readable


def journal_files(statedir: str) -> list[str]:
    """The journal files of *statedir* (every stage's, rotated ones included; none when
    it does not exist; OSError when it cannot be listed)."""
    try:
        names = os.listdir(statedir)
    except FileNotFoundError:
        return []

    def order(name: str) -> tuple[str, int]:  # each stage's oldest rotation first
        base, _, generation = name.partition(".jsonl")
        return base, -int(generation[1:] or 0)

    found = [
        n
        for n in names
        if n.startswith("coverage.")
        and (n.endswith(".jsonl") or re.fullmatch(r".*\.jsonl\.\d+", n) is not None)
    ]
    return [os.path.join(statedir, n) for n in sorted(found, key=order)]


def _lines(path: str) -> Iterator[bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as fh:
        yield from fh


def parse(line: bytes) -> dict[str, Any] | None:
    """One journal line -> its record (None: not a record of this version)."""
    try:
        rec = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(rec, dict) or rec.get("v") != VERSION:
        return None
    ints = ["at_ms"] + (["from_ms", "to_ms"] if rec.get("kind") == GAP else [])
    if any(type(rec.get(k)) is not int or not 0 <= rec[k] <= MAX_MS for k in ints):
        return None
    if not isinstance(rec.get("stage"), str) or not isinstance(rec.get("detail", ""), str):
        return None
    kind = rec.get("kind")
    if kind == GAP:
        if rec.get("cause") not in CAUSES or rec["to_ms"] < rec["from_ms"]:
            return None
        rec.setdefault("detail", "")
    elif kind == STARTED:
        conditions = rec.get("conditions", [])
        if not isinstance(conditions, list) or any(c not in CAUSES for c in conditions):
            return None
        rec["conditions"] = conditions
    elif kind != STOPPED:
        return None
    return rec


def read(statedir: str) -> Records:
    """Every record of *statedir*'s journal, by time (records of one time in the order
    written), and the heartbeat; OSError: a file cannot be read."""
    out = Records(files=journal_files(statedir))
    for path in out.files:
        for line in _lines(path):
            rec = parse(line)
            if rec is None:
                out.malformed += 1
            else:
                out.records.append(rec)
    out.records.sort(key=lambda r: (r["at_ms"], r["kind"] != STOPPED))
    out.alive_ms = read_alive(statedir)
    return out


def read_alive(statedir: str) -> int | None:
    """The last heartbeat (epoch ms) of ingest.alive in *statedir* (None: none readable)."""
    path = os.path.join(statedir, ALIVE)
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as fh:
            data = fh.read(size)
    except OSError:
        return None
    if len(data) != len(persist.MAGIC) + persist.SLOT.size or not data.startswith(persist.MAGIC):
        return None
    ns = int(persist.SLOT.unpack_from(data, len(persist.MAGIC))[0])
    return ns // 1_000_000 if ns else None


@dataclass(frozen=True)
class Coverage:
    """The coverage of one window: its gaps, its parts nfflowd was not recording, and the
    conditions it was recording under."""

    span: tuple[int, int] | None
    gaps: tuple[Gap, ...]
    unrecorded: tuple[tuple[int, int], ...]
    runs: tuple[tuple[int, int], ...]  # the recording intervals overlapping the window
    #: runs' conditions (no_counters, no_timestamps) over the window: connections were
    #: seen, their records lack fields; they do not make the window incomplete
    conditions: tuple[Gap, ...] = ()

    @property
    def complete(self) -> bool:
        """Recorded throughout, and no gap: a connection not found was not made."""
        return self.span is not None and not self.gaps and not self.unrecorded


def recording(records: Sequence[Mapping[str, Any]], alive_ms: int | None) -> list[tuple[int, int]]:
    """The intervals ingest was recording: each ``started`` to its ``stopped``, to the
    next ``started`` (a restart after a crash: its gap says the rest), or, for the last
    run, to its heartbeat (else its start: nothing proves it went on)."""
    runs: list[tuple[int, int]] = []
    begun: int | None = None
    for rec in records:
        if rec["stage"] != "ingest" or rec["kind"] not in (STARTED, STOPPED):
            continue
        if begun is not None:
            runs.append((begun, max(begun, rec["at_ms"])))
            begun = None
        if rec["kind"] == STARTED:
            begun = rec["at_ms"]
    if begun is not None:
        runs.append((begun, max(begun, alive_ms or begun)))
    return runs


def _conditions(records: Sequence[Mapping[str, Any]], runs: Sequence[tuple[int, int]]) -> list[Gap]:
    """A run's conditions as gaps over the run."""
    out: list[Gap] = []
    starts = {r[0]: r for r in runs}
    for rec in records:
        if rec["kind"] == STARTED and rec["stage"] == "ingest" and rec["at_ms"] in starts:
            run = starts[rec["at_ms"]]
            for c in rec["conditions"]:
                out.append(Gap(run[0], run[1], c, "ingest", f"{c} while this ingest ran"))
    return out


def _minus(span: tuple[int, int], runs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of *span* outside every run (all ends included, in whole ms)."""
    holes: list[tuple[int, int]] = []
    at = span[0]  # the first ms not known to be covered
    for a, b in sorted(runs):
        if b < at:
            continue
        if a > span[1]:
            break
        if a > at:
            holes.append((at, a - 1))
        at = b + 1
        if at > span[1]:
            return holes
    holes.append((at, span[1]))
    return holes


def assess(found: Records, span: tuple[int, int] | None) -> Coverage:
    """The coverage of *span* (None: every time the journal knows of) by *found*."""
    runs = recording(found.records, found.alive_ms)
    gaps = [
        Gap(r["from_ms"], r["to_ms"], r["cause"], r["stage"], r["detail"])
        for r in found.records
        if r["kind"] == GAP
    ]
    gaps.sort(key=lambda g: (g.from_ms, g.to_ms))
    conditions = _conditions(found.records, runs)
    if span is None:
        return Coverage(None, tuple(gaps), (), tuple(runs), tuple(conditions))
    return Coverage(
        span,
        tuple(g for g in gaps if g.overlaps(span)),
        tuple(_minus(span, runs)),
        tuple(r for r in runs if r[0] <= span[1] and r[1] >= span[0]),
        tuple(c for c in conditions if c.overlaps(span)),
    )
