"""``conntrack -E`` / ``conntrack -L`` text lines -> :class:`~nfflowd.messages.ConntrackEvent`.

The layout is the one libnetfilter_conntrack prints (``src/conntrack/snprintf_default.c``,
1.0.9, as used by conntrack-tools 1.4.7; ``src/conntrack.c`` adds the ``-o timestamp``
prefix and the ``[USERSPACE]`` suffix).  The kernel's ``/proc/net/nf_conntrack``
(``net/netfilter/nf_conntrack_standalone.c``, ``ct_seq_show``) uses the same one::

    [SEC.USEC]<TAB> [EVENT] [l3name l3num] l4name l4num [timeout] [STATE]
        ORIG [UNREPLIED] REPLY TAIL
    ORIG, REPLY = src=ADDR dst=ADDR [PORTS] [zone-orig=N | zone-reply=N] [packets=N bytes=N]
    PORTS       = sport=N dport=N | type=N code=N id=N | srckey=0xH dstkey=0xH
    TAIL        = [ASSURED]|[OFFLOAD]|[HW_OFFLOAD] mark= secmark= secctx= zone= delta-time=
                  [start=DATE] [stop=DATE] helper= use= id= labels= [USERSPACE] portid= progname=

A whole line is matched by one compiled regular expression (the fast path); a tail
whose fields are not in conntrack's order is tokenised instead (same results).  A line
the expression does not match is re-examined piece by piece, only to say where and why
(:class:`ParseError`).  Conventions of the result (see :mod:`nfflowd.messages`):

* ``time_ns`` comes from the ``-o timestamp`` prefix, converted exactly (integer
  arithmetic).  conntrack 1.4.7 prints ``[%-.8ld.%-.6ld]`` (zero-padded microseconds);
  older releases printed ``[%-8ld.%-6ld]``, left-justified microseconds padded with
  spaces (``[1248952480.1234  ]`` is 1234 us) -- both are understood.  Without a
  prefix the caller's ``now_ns`` (or the clock) is used.
* ICMP/ICMPv6 tuples: ``sport = id``, ``dport = type << 8 | code``; GRE: the keys;
  protocols without ports: 0/0.  ``id=`` inside an ICMP tuple is the ICMP id, the
  ``id=`` after the tuples is the conntrack id (``-o id``).
* ``zone`` is ``zone=`` (both directions), else ``zone-orig=`` (the zone the original
  tuple lives in), else 0; ``zone-reply=`` alone leaves 0.
* ``status``: IPS_SEEN_REPLY unless ``[UNREPLIED]`` (printed from CTA_STATUS, which
  every event and dump carries); IPS_ASSURED for ``[ASSURED]``; ``[OFFLOAD]`` and
  ``[HW_OFFLOAD]`` set IPS_OFFLOAD (+ IPS_HW_OFFLOAD) -- conntrack prints only one of
  the three, so an offloaded entry's ASSURED bit is unknown and left clear.  NAT bits
  cannot be read from text reliably and stay 0 (correlation compares the tuples).
* ``start_ns``/``stop_ns`` stay None: text carries the kernel timestamps only as
  ``-o ktimestamp`` local-time dates with one-second resolution (skipped); the
  ``delta-time=`` seconds are kept.
* Fields of the tail that nfflowd does not use (``secmark secctx helper use labels``,
  anything after ``[USERSPACE]``), unknown ``key=value`` fields and unknown ``[FLAGS]``
  are ignored, so newer conntrack releases keep working.
"""

from __future__ import annotations

import re
import time
from functools import cache
from socket import AF_INET, AF_INET6, inet_pton
from typing import NamedTuple

from nfflowd.messages import IPS_ASSURED, IPS_SEEN_REPLY, ConntrackEvent, EventType

#: Status bits missing from messages.py (include/uapi/linux/netfilter/nf_conntrack_common.h).
IPS_OFFLOAD = 1 << 14
IPS_HW_OFFLOAD = 1 << 15

_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
_NS_PER_S = 1_000_000_000
_NS_PER_US = 1_000
#: ns per unit of the n-th fraction digit: "[S.F]" is F * _FRAC_SCALE[len(F)] ns.
_FRAC_SCALE = (0, *(10 ** (9 - n) for n in range(1, 10)))

#: l4 names libnetfilter_conntrack (proto2str) and the kernel print; anything else is "unknown".
_PROTO_BY_NAME = {
    "tcp": 6, "udp": 17, "udplite": 136, "dccp": 33, "sctp": 132,
    "icmp": 1, "icmpv6": 58, "gre": 47,
}  # fmt: skip
_PORT_PROTOS = frozenset({6, 17, 33, 132, 136})
_ICMP_PROTOS = frozenset({1, 58})
_GRE = 47
#: Protocols whose tuples carry ports (or ICMP id/type/code, GRE keys) in conntrack's text;
#: `unknown N` lines carry none, whatever N (conntrack prints GRE without keys so).
_PROTOS_WITH_PORTS = _PORT_PROTOS | _ICMP_PROTOS | {_GRE}
_L3 = {"ipv4": (4, AF_INET, "2"), "ipv6": (6, AF_INET6, "10")}
_EVENTS = {"NEW": EventType.NEW, "UPDATE": EventType.UPDATE, "DESTROY": EventType.DESTROY}
#: Status flags conntrack prints after the reply tuple (at most one of them); None: none.
_FLAG_STATUS: dict[str | None, int] = {
    None: 0,
    "[ASSURED]": IPS_ASSURED,
    "[OFFLOAD]": IPS_OFFLOAD,
    "[HW_OFFLOAD]": IPS_OFFLOAD | IPS_HW_OFFLOAD,
}
#: Tail fields kept: name -> (slot, largest value).
_TAIL_NUMBERS = {"id": (0, _U32), "mark": (1, _U32), "zone": (2, _U16), "delta-time": (3, _U64)}
#: Fields that belong inside a tuple; after the reply tuple they mean a malformed line.
_TUPLE_VALUES = {
    "src": r"\S+", "dst": r"\S+", "sport": r"\d{1,5}", "dport": r"\d{1,5}",
    "type": r"\d{1,3}", "code": r"\d{1,3}", "srckey": r"0x[0-9a-fA-F]{1,4}",
    "dstkey": r"0x[0-9a-fA-F]{1,4}", "zone-orig": r"\d{1,5}", "zone-reply": r"\d{1,5}",
    "packets": r"\d{1,20}", "bytes": r"\d{1,20}",
}  # fmt: skip
#: Unknown "[FLAG]" words in the tail are ignored, except these (line run-ons).
_FLAG_WORD = re.compile(r"\[[A-Z][A-Z_]*\]", re.ASCII)
_MISPLACED = frozenset({"[UNREPLIED]", "[NEW]", "[UPDATE]", "[DESTROY]"})

_SP = r"[ \t]+"
#: A separator, or the end of the line: only the diagnosis of a truncated line sees the difference.
_SPE = r"(?:[ \t]+|(?=[\r\n]*\Z))"


def _ports(d: str) -> str:
    return (
        rf"(?:sport=(?P<{d}sp>\d{{1,5}}){_SP}dport=(?P<{d}dp>\d{{1,5}})"
        rf"|type=(?P<{d}ty>\d{{1,3}}){_SP}code=(?P<{d}co>\d{{1,3}}){_SP}id=(?P<{d}id>\d{{1,5}})"
        rf"|srckey=0x(?P<{d}sk>[0-9a-fA-F]{{1,4}}){_SP}dstkey=0x(?P<{d}dk>[0-9a-fA-F]{{1,4}}))"
    )


class _Piece(NamedTuple):
    pattern: str
    expected: str  # what the line should have had here (for error messages)


#: The grammar, in order; the line regex is their concatenation.
_PIECES = (
    _Piece(
        rf"[ \t]*(?:\[(?P<sec>\d{{1,10}})(?:\.(?P<frac>\d{{1,9}}))?(?P<pad> *)\]{_SPE})?",
        "'[SECONDS.MICROSECONDS]' timestamp",
    ),
    _Piece(rf"(?:\[(?P<ev>NEW|UPDATE|DESTROY)\]{_SPE})?", "event type '[NEW]'"),
    _Piece(rf"(?:(?P<l3>ipv4|ipv6){_SP}(?P<l3n>\d{{1,2}}){_SPE})?", "'ipv4 2' or 'ipv6 10'"),
    _Piece(rf"(?P<l4>[a-z][a-z0-9]{{0,15}}){_SP}(?P<l4n>\d{{1,3}}){_SPE}", "protocol ('tcp 6')"),
    _Piece(rf"(?:\d{{1,10}}{_SPE})?(?:[A-Z][A-Z0-9_]{{0,31}}{_SPE})?", "timeout and state"),
    _Piece(rf"src=(?P<os>\S+){_SPE}", "original tuple 'src=ADDRESS'"),
    _Piece(rf"dst=(?P<od>\S+){_SPE}", "original tuple 'dst=ADDRESS'"),
    _Piece(rf"(?:{_ports('o')}{_SPE})?(?:zone-orig=(?P<oz>\d{{1,5}}){_SPE})?", "ports"),
    _Piece(rf"(?:packets=(?P<op>\d{{1,20}}){_SP}bytes=(?P<ob>\d{{1,20}}){_SPE})?", "counters"),
    _Piece(rf"(?P<unrep>\[UNREPLIED\]{_SPE})?", "'[UNREPLIED]'"),
    _Piece(r"src=(?P<rs>\S+)", "reply tuple 'src=ADDRESS'"),
    _Piece(rf"{_SP}dst=(?P<rd>\S+)", "reply tuple 'dst=ADDRESS'"),
    _Piece(rf"(?:{_SP}{_ports('r')})?(?:{_SP}zone-reply=(?P<rz>\d{{1,5}}))?", "ports"),
    _Piece(rf"(?:{_SP}packets=(?P<rp>\d{{1,20}}){_SP}bytes=(?P<rb>\d{{1,20}}))?", "counters"),
    # The usual tail, in the order conntrack prints it; anything else lands in "rest" and
    # sends the whole tail to _tail() (same results, slower, names a bad field).
    _Piece(
        r"(?P<tail>(?: (?P<flag>\[(?:ASSURED|OFFLOAD|HW_OFFLOAD)\]))?"
        r"(?: mark=(?P<mark>\d{1,10}))?(?: secmark=\d{1,10})?(?: secctx=\S+)?"
        r"(?: zone=(?P<zone>\d{1,5}))?(?: delta-time=(?P<delta>\d{1,20}))?"
        r"(?: \[start=[^]\n]*\])?(?: \[stop=[^]\n]*\])?(?: helper=\S+)?"
        r"(?: use=\d{1,10})?(?: id=(?P<ctid>\d{1,10}))?(?: labels=\S*)?"
        r"(?: \[USERSPACE\](?:[ \t].*)?)?[ \t]*(?P<rest>.*))[\r\n]*\Z",
        "end of line",
    ),
)
#: The fast path: end-of-line alternatives (_SPE) only matter to the diagnosis (_prefix).
_LINE = re.compile("".join(p.pattern for p in _PIECES).replace(_SPE, _SP), re.ASCII)


class ParseError(ValueError):
    """A line that is not valid conntrack text; ``str()`` says what and where."""

    def __init__(self, reason: str, *, column: int | None = None, field: str | None = None):
        self.reason = reason
        self.column = column  # 1-based column in the line, when known
        self.field = field  # the key of the offending field, when there is one
        where = [f"field {field!r}"] if field else []
        if column is not None:
            where.append(f"column {column}")
        super().__init__(f"{reason} ({', '.join(where)})" if where else reason)


def parse_line(
    line: str, *, default_type: int = EventType.NEW, now_ns: int | None = None
) -> ConntrackEvent | None:
    """Parse one line of ``conntrack -E``/``-L`` output (any ``-o`` variant).

    Returns None for lines that are not connection entries (blank lines and
    conntrack's own ``conntrack v1.4.7 (conntrack-tools): ...`` messages); lines
    without an event tag (listings) get ``default_type``.  Raises :class:`ParseError`
    -- and nothing else -- for anything malformed.
    """
    m = _LINE.match(line)
    if m is None:
        raise_or_none = _diagnose(line)
        if raise_or_none is None:
            return None
        raise raise_or_none
    (
        sec,
        frac,
        pad,
        ev,
        l3,
        l3n,
        l4,
        l4n,
        osrc,
        odst,
        osp,
        odp,
        oty,
        oco,
        oid,
        osk,
        odk,
        ozone,
        opk,
        obt,
        unrep,
        rsrc,
        rdst,
        rsp,
        rdp,
        rty,
        rco,
        rid,
        rsk,
        rdk,
        _rz,
        rpk,
        rbt,
        tail,
        flag,
        tmark,
        tzone,
        tdelta,
        tid,
        rest,
    ) = m.groups()

    if sec is None:
        time_ns = time.time_ns() if now_ns is None else now_ns
    elif not pad:
        time_ns = int(sec) * _NS_PER_S + (int(frac) * _FRAC_SCALE[len(frac)] if frac else 0)
    elif frac is None or len(frac) > 6:
        raise _error(m, "sec", "padded timestamp needs 1-6 microsecond digits")
    else:  # conntrack < 1.4.5: "%-6ld" left-justified microseconds
        time_ns = int(sec) * _NS_PER_S + int(frac) * _NS_PER_US

    proto = int(l4n)
    named = _PROTO_BY_NAME.get(l4)
    if proto > 255 or (named != proto if named is not None else l4 != "unknown"):
        raise _error(m, "l4", f"bad protocol {l4!r} {l4n}")

    if l3 is None:
        family, af = (6, AF_INET6) if ":" in osrc else (4, AF_INET)
    else:
        family, af, num = _L3[l3]
        if l3n != num:
            raise _error(m, "l3", f"bad layer-3 protocol {l3!r} {l3n}")
    try:
        addrs = inet_pton(af, osrc), inet_pton(af, odst), inet_pton(af, rsrc), inet_pton(af, rdst)
    except (OSError, ValueError):  # ValueError: NUL or non-ASCII characters
        raise _bad_address(m, af) from None

    if rest:
        status, ct_id, mark, zone, delta = _tail(m, tail, unrep)
    else:
        status = _FLAG_STATUS[flag] if unrep else _FLAG_STATUS[flag] | IPS_SEEN_REPLY
        ct_id = int(tid) if tid is not None else None
        mark = int(tmark) if tmark is not None else 0
        zone = int(tzone) if tzone is not None else None
        delta = int(tdelta) if tdelta is not None else None
        if (ct_id or 0) > _U32 or mark > _U32 or (zone or 0) > _U16 or (delta or 0) > _U64:
            _tail(m, tail, unrep)  # raises, naming the field
    if zone is None:
        zone = int(ozone) if ozone is not None else 0

    if osp is not None and rsp is not None and proto in _PORT_PROTOS:
        osport, odport, rsport, rdport = int(osp), int(odp), int(rsp), int(rdp)
        if osport > _U16 or odport > _U16 or rsport > _U16 or rdport > _U16:
            raise _out_of_range(m, ("osp", "odp", "rsp", "rdp"), _U16)
    elif oty is not None and rty is not None and proto in _ICMP_PROTOS:
        otype, ocode, rtype, rcode = int(oty), int(oco), int(rty), int(rco)
        osport, rsport = int(oid), int(rid)
        if otype > 255 or ocode > 255 or rtype > 255 or rcode > 255:
            raise _out_of_range(m, ("oty", "oco", "rty", "rco"), 255)
        if osport > _U16 or rsport > _U16:
            raise _out_of_range(m, ("oid", "rid"), _U16)
        odport, rdport = otype << 8 | ocode, rtype << 8 | rcode
    elif osk is not None and rsk is not None and proto == _GRE:
        osport, odport, rsport, rdport = int(osk, 16), int(odk, 16), int(rsk, 16), int(rdk, 16)
    elif (
        osp is None and oty is None and osk is None and rsp is None and rty is None and rsk is None
    ) and (l4 == "unknown" or proto not in _PROTOS_WITH_PORTS):
        osport = odport = rsport = rdport = 0
    else:
        raise _error(m, "os", f"tuple ports missing or not those of protocol {l4!r}")

    opackets: int | None
    obytes: int | None
    rpackets: int | None
    rbytes: int | None
    if opk is not None and rpk is not None:
        opackets, obytes, rpackets, rbytes = int(opk), int(obt), int(rpk), int(rbt)
        if opackets > _U64 or obytes > _U64 or rpackets > _U64 or rbytes > _U64:
            raise _out_of_range(m, ("op", "ob", "rp", "rb"), _U64)
    elif opk is None and rpk is None:
        opackets = obytes = rpackets = rbytes = None
    else:
        raise _error(m, "op" if rpk is None else "rp", "counters on one tuple only")

    etype = _EVENTS[ev] if ev is not None else default_type
    fields = (
        etype,
        time_ns,
        family,
        proto,
        addrs[0],
        addrs[1],
        osport,
        odport,
        addrs[2],
        addrs[3],
        rsport,
        rdport,
        opackets,
        obytes,
        rpackets,
        rbytes,
        ct_id,
        None,
        None,
        delta,
        mark,
        zone,
        status,
    )
    return _new_tuple(ConntrackEvent, fields)


def _tail(
    m: re.Match[str], tail: str, unreplied: str | None
) -> tuple[int, int | None, int, int | None, int | None]:
    """Flags and fields after the reply tuple: (status, ct_id, mark, zone, delta_time)."""
    status = 0 if unreplied else IPS_SEEN_REPLY
    values: list[int | None] = [None, None, None, None]  # indexed like _TAIL_NUMBERS
    tokens = tail.split()
    i, n = 0, len(tokens)
    while i < n:
        tok = tokens[i]
        i += 1
        flag = _FLAG_STATUS.get(tok)
        if flag is not None:
            status |= flag
            continue
        key, eq, val = tok.partition("=")
        slot = _TAIL_NUMBERS.get(key) if eq else None
        if slot is not None:
            index, limit = slot
            if not (val.isdigit() and val.isascii() and len(val) <= 20 and int(val) <= limit):
                raise _tail_error(m, tokens, i - 1, key, f"bad value {_show(val)} (0-{limit})")
            if values[index] is not None:
                raise _tail_error(m, tokens, i - 1, key, "duplicate field")
            values[index] = int(val)
        elif tok == "[USERSPACE]":
            break  # "portid=N progname=NAME": who caused the event; not used
        elif tok.startswith(("[start=", "[stop=")):  # -o ktimestamp: "[start=Thu Jul 30 ...]"
            first = i - 1
            while not tok.endswith("]"):
                if i >= n:
                    raise _tail_error(m, tokens, first, key[1:], "unterminated date")
                tok = tokens[i]
                i += 1
        elif eq and key in _TUPLE_VALUES:
            for j in range(i - 1, n):  # name the first bad value of a reply field, if any
                k, _, v = tokens[j].partition("=")
                if k in _TUPLE_VALUES and not re.fullmatch(_TUPLE_VALUES[k], v, re.ASCII):
                    raise _tail_error(m, tokens, j, k, f"bad value {_show(v)}")
            raise _tail_error(m, tokens, i - 1, key, "malformed or misplaced tuple field")
        elif not eq and (tok in _MISPLACED or not _FLAG_WORD.fullmatch(tok)):
            raise _tail_error(m, tokens, i - 1, None, f"unexpected {_show(tok)}")
    ct_id, mark, zone, delta = values
    return status, ct_id, mark or 0, zone, delta


#: Building the NamedTuple through tuple.__new__ skips its per-field argument parsing.
_new_tuple = tuple.__new__


def _show(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _error(m: re.Match[str], group: str, reason: str) -> ParseError:
    """An error at a matched group; the column is that of its "key=value" token."""
    field = _GROUP_FIELDS.get(group, group)
    column = m.start(group) + 1 - (len(field) + 1 if field in _TUPLE_VALUES else 0)
    return ParseError(reason, column=column, field=field)


#: Regex group -> the field it holds, for messages ("o"/"r": original/reply tuple).
_GROUP_FIELDS = {"sec": "timestamp", "l3": "layer 3 protocol", "l4": "protocol"} | {
    d + g: f
    for d in "or"
    for g, f in (
        ("s", "src"),
        ("d", "dst"),
        ("sp", "sport"),
        ("dp", "dport"),
        ("ty", "type"),
        ("co", "code"),
        ("id", "id"),
        ("sk", "srckey"),
        ("dk", "dstkey"),
        ("p", "packets"),
        ("b", "bytes"),
    )
}


def _out_of_range(m: re.Match[str], groups: tuple[str, ...], limit: int) -> ParseError:
    for g in groups:
        value = m.group(g)
        if int(value, 16 if g[1:] in ("sk", "dk") else 10) > limit:
            return _error(m, g, f"value {value} out of range 0-{limit}")
    return _error(m, groups[0], "value out of range")  # not reached


def _bad_address(m: re.Match[str], af: int) -> ParseError:
    fam = "IPv6" if af == AF_INET6 else "IPv4"
    for g in ("os", "od", "rs", "rd"):
        text = m.group(g)
        try:
            inet_pton(af, text)
        except (OSError, ValueError):
            return _error(m, g, f"bad {fam} address {_show(text)}")
    return _error(m, "os", "bad address")  # not reached


def _tail_error(
    m: re.Match[str], tokens: list[str], index: int, field: str | None, reason: str
) -> ParseError:
    tail, pos = m.group("tail"), 0
    for tok in tokens[:index]:  # tokens came from tail.split(): find each in turn
        pos = tail.find(tok, pos) + len(tok)
    pos = tail.find(tokens[index], pos)
    return ParseError(reason, column=m.start("tail") + pos + 1, field=field)


def _diagnose(line: str) -> ParseError | None:
    """Why ``line`` does not match (None if it is not meant to be an entry)."""
    text = line.strip()
    if not text or (text.startswith("conntrack v") and "(conntrack-tools)" in text):
        return None
    if text.startswith("<"):
        return ParseError("XML output (conntrack -o xml) is not supported", column=1)
    if text.startswith("-"):
        return ParseError("'conntrack -o save' output is not supported", column=1)
    brk = re.search(r"[\r\n]", line.rstrip("\r\n"))
    if brk:
        return ParseError("line break inside the line", column=brk.start() + 1)
    pos = 0
    for k, piece in enumerate(_PIECES):
        m = _prefix(k).match(line)
        if m is None:
            return _explain(line, pos, piece)
        pos = m.end()
    return ParseError("line does not follow the conntrack text format")  # not reached


@cache
def _prefix(k: int) -> re.Pattern[str]:
    """The first k+1 pieces of the grammar (separators may also be the end of the line)."""
    return re.compile("".join(p.pattern for p in _PIECES[: k + 1]), re.ASCII)


def _explain(line: str, pos: int, piece: _Piece) -> ParseError:
    rest = line[pos:]
    found = rest.split(None, 1)[0] if rest.strip() else ""
    column = pos + (len(rest) - len(rest.lstrip())) + 1
    if not found:
        return ParseError(f"line ends early: expected {piece.expected}", column=column)
    key, eq, val = found.partition("=")
    if eq and key in _TUPLE_VALUES:
        if not re.fullmatch(_TUPLE_VALUES[key], val, re.ASCII):
            return ParseError(f"bad value {_show(val)}", column=column, field=key)
        reason = f"field out of place, expected {piece.expected}"
        return ParseError(reason, column=column, field=key)
    return ParseError(f"expected {piece.expected}, found {_show(found)}", column=column)


#: A ``[NEW]`` line of ``conntrack -E -o timestamp,id``, as much as the correlator reads of it.
_NEW_HEAD = re.compile(r"[ \t]*\[(\d{1,10})\.(\d{1,9})\][ \t]+\[NEW\] ", re.ASCII)


def new_line_key(line: str) -> tuple[int, int] | None:
    """(time_ns, conntrack id) of a ``[NEW]`` line when that is all the correlator needs of
    it, else None (parse it with :func:`parse_line`).

    A NEW event only opens its connection in the correlator's table: under its
    conntrack id, at its time, unless it carries counters (a listing or dump entry,
    which the active timeout reads).  Half the lines of a saved ``-E`` log are NEWs,
    and reading two numbers costs a fraction of the whole line's parse.  The line
    must end with the conntrack id (``-o id``; for ICMP the id after ``code=N id=N``
    is the ICMP id, so such a line is left to :func:`parse_line`).  The rest of the
    line is not checked: a NEW whose tuples are garbage opens an entry that its
    DESTROY, parsed in full, either closes or never finds (purged after the ttl).
    """
    m = _NEW_HEAD.match(line)
    if m is None or "packets=" in line:
        return None
    head, _, last = line.rstrip("\r\n").rpartition(" id=")
    if not last.isdigit() or not last.isascii() or len(last) > 10:
        return None
    before = head[head.rfind(" ") + 1 :]
    if before.startswith("code=") or "[USERSPACE]" in head:
        return None
    ct_id = int(last)
    if ct_id > _U32:
        return None
    sec, frac = m.groups()
    return int(sec) * _NS_PER_S + int(frac) * _FRAC_SCALE[len(frac)], ct_id
