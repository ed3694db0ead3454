"""From flow records to connections: who was behind the public endpoint.

Every source gives :class:`Flow` s: one unidirectional record each, with its post-NAT
side when the record carries one (v9/IPFIX postNAT* elements, the JSON mirror line's
``post_*``) and without it otherwise (NetFlow v5; IPFIX IPv6 records as nfdump 1.7
stores them, without IEs 281/282).

**Records with their post-NAT side** answer alone, whatever their direction.  NAT
on a border firewall rewrites a source on the way out (SNAT of an original, the
un-DNAT of a reply) and a destination on the way in (DNAT of an original, the
un-SNAT of a reply), so in a record ``a > b`` that left as ``a' > b'``:

* the source was translated (``a != a'``): ``a`` is private, ``a'`` public, and the
  remote end, as the public side saw it, is ``b``;
* the destination was translated (``b != b'``): ``b`` is public, ``b'`` private, the
  remote end ``a'``;
* nothing was translated: a connection no NAT changed; the asked endpoint may be
  either end (private = public).

A record names the asked endpoint only in those places: ``a`` of a translated source
is private, as is ``b'``, and the remote end of a translated connection is not the
firewall's.  The original as it left (v9/IPFIX flowDirection egress, JSON
``original_out``: the triplet's second record) translates nothing and adds
nothing; it is listed with its connection.

**Records without it** (v5's triplet) are joined first.  The records of one
connection share protocol, first and last millisecond (nfflowd gives the triplet
one start and one end, and v5/v9/IPFIX carry them exactly), so within such a group
two records belong together when

* one mirrors the other (``x.src = y.dst`` and ``x.dst = y.src``: a direction as it
  left and the other one's arrival);
* they share their destination, not their source, and their counters (the original
  before and after SNAT), or their source, not their destination, and their counters
  (before and after DNAT);
* one's destination is the other's source and not the other way round (an original
  as it arrived and its reply as it arrived, without the record between them), when
  neither has its mirror in the group (a connection no NAT changed, met in the same
  milliseconds, is not chained to another).

A joined connection has three endpoints (two without NAT): the one present in every
record is the remote end, the asked one is public, the third is private.  A whole
triplet also tells public from private (after SNAT the reply comes back to the public
side, after DNAT it leaves from the private one), so asking for the private side of
a triplet finds nothing, as with post-NAT records; one or two records of a translated
connection do not tell, and the asked endpoint is taken to be the public one.  More than
three means two connections of the same milliseconds met; each candidate is then
reported with a note, never silently chosen.

Same connection, several records or sources (nfcapd and the JSON mirror, v9 and
IPFIX collectors): :func:`merge` makes one :class:`Match` of everything with the
same protocol, first, last, private, public and remote endpoint, listing every
record it came from.  Counters are per direction as the private host saw them:
``from_private`` (what it sent) and ``to_private``.  Who opened the connection is
known from the JSON line's direction and from the v5 triplet's shape (the
original's counters shared before and after SNAT or DNAT); v9/IPFIX records do
not tell (an SNAT original and a DNAT reply look alike), so it stays unknown there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from nfflowd.ops.who.question import Question

#: An endpoint: (address in normal form, port).
Point = tuple[str, int]
#: Counters of one direction: (packets, bytes).
Counters = tuple[int, int]
#: A joined group of records without their post-NAT side: more endpoints than this
#: is two connections of the same milliseconds.
ENDPOINTS_OF_A_NAT = 3
AMBIGUOUS = (
    "records without post-NAT fields of more than one connection share these "
    "milliseconds: this private endpoint is one candidate"
)


@dataclass(frozen=True)
class Flow:
    """One unidirectional flow record as a source stored it."""

    proto: int
    first_ms: int
    last_ms: int
    src: Point
    dst: Point
    packets: int
    bytes: int
    post: tuple[Point, Point] | None  # (src, dst) as it left; None: not carried
    egress: bool = False  # the original direction as it left (the triplet's second)
    reply: bool | None = None  # the reply direction (None: the record does not say)
    ref: str = ""  # where it was read, for the answer

    @property
    def group(self) -> tuple[int, int, int]:
        return self.proto, self.first_ms, self.last_ms


@dataclass(frozen=True)
class Observation:
    """What one record (or one joined group of them) says about the asked endpoint."""

    proto: int
    first_ms: int
    last_ms: int
    private: Point
    public: Point
    remote: Point
    translated: bool
    from_private: Counters | None
    to_private: Counters | None
    private_opened: bool | None  # True: the private host opened it; None: not known
    refs: tuple[str, ...]
    note: str | None = None

    @property
    def key(self) -> tuple[int, int, int, Point, Point, Point]:
        return self.proto, self.first_ms, self.last_ms, self.private, self.public, self.remote


@dataclass
class Match:
    """One connection found: the answer's unit."""

    proto: int
    first_ms: int
    last_ms: int
    private: Point
    public: Point
    remote: Point
    translated: bool
    from_private: Counters | None = None
    to_private: Counters | None = None
    private_opened: bool | None = None
    refs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _wanted(q: Question, public: Point, remote: Point) -> bool:
    return q.public.matches(*public) and (q.remote is None or q.remote.matches(*remote))


def observe(q: Question, f: Flow) -> list[Observation]:
    """What a record with its post-NAT side says about *q*'s endpoint (see the module
    docstring); [] for a record without it, an egress record or one that does not match."""
    if f.post is None or f.egress or not q.wants_proto(f.proto):
        return []
    if not q.in_window(f.first_ms, f.last_ms):
        return []
    (a, b), (a2, b2) = (f.src, f.dst), f.post
    counters = (f.packets, f.bytes)
    out: list[Observation] = []

    def add(private: Point, public: Point, remote: Point, ours_is_src: bool, nat: bool) -> None:
        if not _wanted(q, public, remote):
            return
        out.append(
            Observation(
                f.proto,
                f.first_ms,
                f.last_ms,
                private,
                public,
                remote,
                translated=nat,
                from_private=counters if ours_is_src else None,
                to_private=None if ours_is_src else counters,
                private_opened=None if f.reply is None else ours_is_src != f.reply,
                refs=(f.ref,),
            )
        )

    if a != a2:
        add(a, a2, b, True, True)
    if b != b2:
        add(b2, b, a2, False, True)
    if a == a2 and b == b2:
        add(a, a, b, True, False)
        add(b, b, a, False, False)
    return out


def mentions(q: Question, f: Flow) -> Point | None:
    """The other end of a record without its post-NAT side that names *q*'s endpoint
    (the remote end whose records complete the connection), else None."""
    if f.post is not None or not q.wants_proto(f.proto):
        return None
    if q.public.matches(*f.src):
        return f.dst
    if q.public.matches(*f.dst):
        return f.src
    return None


def join_untranslated(q: Question, flows: Iterable[Flow]) -> list[Observation]:
    """Join records without their post-NAT side (v5's triplet) into connections and say
    what those naming *q*'s endpoint tell (see the module docstring)."""
    groups: dict[tuple[int, int, int], list[Flow]] = defaultdict(list)
    for f in flows:
        if f.post is None and q.wants_proto(f.proto) and q.in_window(f.first_ms, f.last_ms):
            groups[f.group].append(f)
    out: list[Observation] = []
    for members in groups.values():
        for cluster in _clusters(_unique(members)):
            out += _cluster_observations(q, cluster)
    return out


def _unique(flows: list[Flow]) -> list[Flow]:
    """One of each record (a record read in both passes over the same file)."""
    seen: dict[tuple[object, ...], Flow] = {}
    for f in flows:
        seen.setdefault((f.src, f.dst, f.packets, f.bytes, f.ref), f)
    return list(seen.values())


def _mirrors(x: Flow, y: Flow) -> bool:
    return x.src == y.dst and x.dst == y.src


def _linked(x: Flow, y: Flow, x_mirrored: bool, y_mirrored: bool) -> bool:
    """Whether *x* and *y* are records of one connection (see the module docstring); a
    record with its mirror in the group is a direction complete with its other side, so
    it is not also chained, and two of them (two connections) share no counters."""
    if _mirrors(x, y):
        return True  # a direction and its mirror
    same = (x.packets, x.bytes) == (y.packets, y.bytes)
    if same and not (x_mirrored and y_mirrored) and (x.dst == y.dst) != (x.src == y.src):
        return True  # the original before and after SNAT (or DNAT)
    if x_mirrored or y_mirrored:
        return False
    return (x.dst == y.src) != (y.dst == x.src)  # original and reply, as each arrived


def _clusters(flows: list[Flow]) -> list[list[Flow]]:
    mirrored = [any(_mirrors(f, g) for g in flows) for f in flows]
    parent = list(range(len(flows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(flows)):
        for j in range(i + 1, len(flows)):
            if _linked(flows[i], flows[j], mirrored[i], mirrored[j]):
                parent[root(i)] = root(j)
    out: dict[int, list[Flow]] = defaultdict(list)
    for i, f in enumerate(flows):
        out[root(i)].append(f)
    return list(out.values())


def _cluster_observations(q: Question, cluster: list[Flow]) -> list[Observation]:
    points = {p for f in cluster for p in (f.src, f.dst)}
    publics = sorted(p for p in points if q.public.matches(*p))
    if not publics:
        return []
    f0 = cluster[0]
    refs = tuple(f.ref for f in cluster)
    if len(points) == 2:  # no NAT: either end may be the asked one
        out = []
        for public in publics:
            (remote,) = points - {public}
            if q.remote is None or q.remote.matches(*remote):
                out.append(_untranslated(f0, cluster, public, remote, refs))
        return out
    # the remote end is in every record; the others are the public and private sides
    everywhere = set.intersection(*({f.src, f.dst} for f in cluster))
    publics = [p for p in publics if p not in everywhere]  # not the remote end of a NAT
    if not everywhere:  # two connections met: the other ends of the asked endpoint's records
        named = [f for f in cluster if f.src in publics or f.dst in publics]
        everywhere = {f.dst if f.src in publics else f.src for f in named} - set(publics)
    remotes = sorted(everywhere)
    out = []
    for remote in remotes:
        if q.remote is not None and not q.remote.matches(*remote):
            continue
        for public in publics:
            if public == remote:
                continue
            privates = sorted(points - {public, remote})
            note = AMBIGUOUS if len(points) > ENDPOINTS_OF_A_NAT or len(remotes) > 1 else None
            for private in privates:
                if not _swapped(cluster, private, public, remote):
                    out.append(_translated(f0, cluster, private, public, remote, refs, note))
    return out


def _swapped(cluster: list[Flow], private: Point, public: Point, remote: Point) -> bool:
    """Whether a whole triplet says the asked endpoint is the private side: after SNAT
    the reply comes back to the public side, after DNAT it leaves from the private one."""
    pairs = {(f.src, f.dst) for f in cluster}
    to_remote = {(private, remote), (public, remote)} <= pairs
    from_remote = {(remote, private), (remote, public)} <= pairs
    if to_remote and not from_remote:  # SNAT
        return (remote, private) in pairs and (remote, public) not in pairs
    if from_remote and not to_remote:  # DNAT
        return (public, remote) in pairs and (private, remote) not in pairs
    return False


def _untranslated(
    f0: Flow, cluster: list[Flow], public: Point, remote: Point, refs: tuple[str, ...]
) -> Observation:
    sent = next(((f.packets, f.bytes) for f in cluster if f.src == public), None)
    got = next(((f.packets, f.bytes) for f in cluster if f.dst == public), None)
    return Observation(
        f0.proto,
        f0.first_ms,
        f0.last_ms,
        public,
        public,
        remote,
        translated=False,
        from_private=sent,
        to_private=got,
        private_opened=None,
        refs=refs,
    )


def _translated(
    f0: Flow,
    cluster: list[Flow],
    private: Point,
    public: Point,
    remote: Point,
    refs: tuple[str, ...],
    note: str | None,
) -> Observation:
    ours = (private, public)
    sent = next(((f.packets, f.bytes) for f in cluster if f.src in ours and f.dst == remote), None)
    got = next(((f.packets, f.bytes) for f in cluster if f.src == remote and f.dst in ours), None)
    # the original's counters, before and after the translation: after SNAT both go to
    # the remote end (the private host opened it), after DNAT both come from it
    snat = {f.src for f in cluster if f.dst == remote} == {private, public}
    dnat = {f.dst for f in cluster if f.src == remote} == {private, public}
    opened = (
        True
        if snat and _same_counters(cluster, remote, to_remote=True)
        else False
        if dnat and _same_counters(cluster, remote, to_remote=False)
        else None
    )
    return Observation(
        f0.proto,
        f0.first_ms,
        f0.last_ms,
        private,
        public,
        remote,
        translated=True,
        from_private=sent,
        to_private=got,
        private_opened=opened,
        refs=refs,
        note=note,
    )


def _same_counters(cluster: list[Flow], remote: Point, *, to_remote: bool) -> bool:
    side = [f for f in cluster if (f.dst if to_remote else f.src) == remote]
    return len({(f.packets, f.bytes) for f in side}) == 1


def merge(observations: Iterable[Observation], egress: Iterable[Flow] = ()) -> list[Match]:
    """One Match per connection (see the module docstring), by start time; *egress*
    records (the original as it left) are listed with the connection they belong to."""
    found: dict[tuple[int, int, int, Point, Point, Point], Match] = {}
    for o in observations:
        m = found.get(o.key)
        if m is None:
            m = found[o.key] = Match(
                o.proto, o.first_ms, o.last_ms, o.private, o.public, o.remote, o.translated
            )
        m.translated = m.translated or o.translated
        m.from_private = m.from_private or o.from_private
        m.to_private = m.to_private or o.to_private
        if m.private_opened is None:
            m.private_opened = o.private_opened
        m.refs += [r for r in o.refs if r not in m.refs]
        if o.note and o.note not in m.notes:
            m.notes.append(o.note)
    for f in egress:
        for m in found.values():
            ends = {f.src, f.dst}
            same = (f.proto, f.first_ms, f.last_ms) == (m.proto, m.first_ms, m.last_ms)
            mine = ends in ({m.public, m.remote}, {m.private, m.remote})
            if same and mine and f.ref not in m.refs:
                m.refs.append(f.ref)
    return sorted(found.values(), key=lambda m: (m.first_ms, m.last_ms, m.private, m.public))
