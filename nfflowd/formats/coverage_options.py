"""Coverage gaps as NetFlow v9 / IPFIX options records: the intervals in which nfflowd
may have missed connections (:mod:`nfflowd.pipeline.coverage`), for a collector to store
next to the flows.

A gap is a statement about the exporter, not about a flow, so it travels as an
*options* record (RFC 7011 §3.4.2.2, RFC 3954 §6.1) in the collector's own stream
(same observation domain / source id, same sequence numbers) under one options
template, id :data:`TEMPLATE_ID` (260: after the flow templates 256/257 and the NAT
event templates 258/259):

========================================  ======================================
field (IPFIX; v9 the same but noted)      value
========================================  ======================================
scope: observationDomainId 149 (u32)      the message's observation domain
  (v9: scope type System 1, 4 bytes)      (v9: the packet's source id)
observationTimeMilliseconds 323 (u64)     the gap's first ms (``from_ms``)
observationTimeMilliseconds 323 (u64)     the gap's last ms (``to_ms``)
coverageCause, PEN 32473 id 1 (u8)        the cause, :data:`CAUSE_CODES`
  (v9: field type 32769)
coverageStage, PEN 32473 id 2 (16 bytes)  the stage that journaled it, ASCII,
  (v9: field type 32770)                  zero-padded (``ingest``, ``export-1``)
========================================  ======================================

**Why these elements.**  RFC 7011 §4 defines the options templates an exporter uses
to report its own losses: the Metering Process Reliability Statistics (§4.2, packets
the metering process ignored) and the Exporting Process Reliability Statistics
(§4.3, records not sent), each with the interval of the loss as "time first ..."
and "time last ..." carried by two ``observationTime*`` elements, in that order
(RFC 5101 used ``flowStart*``/``flowEnd*``; RFC 7011 replaced them).  A coverage gap
is the same statement with a cause instead of counts (nfflowd does not know how
many connections it missed), so it takes §4.2's scope and interval:
observationDomainId, as §4.2 scopes by it (the gap holds for every record of this
exporter's domain; exporter shards each send it under their own domain), and two
observationTimeMilliseconds (323), first then last, epoch ms like the flows' times.
NetFlow v9 has no observationDomainId; RFC 3954 §6.1's scope types are System,
Interface, Line Card, Cache and Template, and a gap concerns the whole exporting
system, so it is scope System (1) carrying the packet's source id (v9's analogue of
the observation domain).  v9 takes the same field types (RFC 3954 §8: >= 128 from
the IPFIX registry; tshark and nfdump read 323 in v9 too).

**The cause** has no standard element: flowEndReason (136), natEvent (230),
forwardingStatus (89) and firewallEvent (233) have closed value tables about flows
and packets, none about an exporter that was not listening.  So it is a code of
ours, in an enterprise-specific element (RFC 7011 §3.2: the enterprise bit and a
Private Enterprise Number), with the stage name beside it.  nfflowd has no PEN of
its own yet: :data:`ENTERPRISE_NUMBER` is 32473, the number IANA reserves for
documentation (RFC 5612), which tshark names as such, so nobody mistakes it for a
registered vendor's element; it is the one constant to change once nfflowd has
one.  NetFlow v9 has no enterprise numbers (RFC 3954 §5.2: type and length only):
the same elements go as field types ``0x8000 | id`` (32769, 32770), which
neither RFC 3954 nor the decoders checked assign (Cisco's NSEL types are
33000-33002 and 40000-40005).  The codes (fixed: a collector stores the number):

==================  ====  ==================================================
cause               code  sent
==================  ====  ==================================================
``not_listening``   1     yes (a gap record)
``enobufs``         2     yes
``undelivered``     3     yes
``no_counters``     4     reserved: a run's condition (its ``started`` record),
``no_timestamps``   5     not sent as options records yet
==================  ====  ==================================================

Decoders: tshark decodes the options template and every field of the data record
(``cflow.od_id``, ``cflow.observation_time_milliseconds`` twice, the enterprise
fields as "Enterprise Private entry" hex bytes in IPFIX, "Unknown Field Type" in
v9); nfdump 1.7 (nfcapd) stores no options record it does not know and goes on
storing the flows of the same stream (tests/integration/test_coverage_options_decoders.py);
on IPFIX it reports a sequence failure after a gap message, as it does not count the
options records it ignores (RFC 7011 §3.1 counts every data record, and so do we).
:mod:`nfflowd.formats.ipfix` and :mod:`nfflowd.formats.netflow_v9` decode the
template and records like any other (:func:`unpack` turns a decoded record back into
a :class:`GapRow`); their encoders send them (``encode_gaps``).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

from nfflowd.formats import ipfix_ies as ies

#: The options template's id, in v9 and IPFIX.
TEMPLATE_ID: Final = 260
#: The Private Enterprise Number of the cause and stage elements (RFC 5612's, see above).
ENTERPRISE_NUMBER: Final = 32473
#: Our element ids under ENTERPRISE_NUMBER (IPFIX); v9 sends ``V9_PRIVATE | id``.
CAUSE_ID: Final = 1
STAGE_ID: Final = 2
V9_PRIVATE: Final = 0x8000
#: IANA elements of the template.
OBSERVATION_DOMAIN_ID: Final = ies.OBSERVATION_DOMAIN_ID.id
OBSERVATION_TIME_MILLISECONDS: Final = ies.OBSERVATION_TIME_MILLISECONDS.id
#: RFC 3954 §6.1 scope type System.
V9_SCOPE_SYSTEM: Final = 1
STAGE_LENGTH: Final = 16
#: cause -> code (see the module docstring; a code never changes meaning).
CAUSE_CODES: Final = {
    "not_listening": 1,
    "enobufs": 2,
    "undelivered": 3,
    "no_counters": 4,
    "no_timestamps": 5,
}
CAUSES_BY_CODE: Final = {code: cause for cause, code in CAUSE_CODES.items()}

#: One data record, scope first: domain (u32), first ms, last ms (u64), cause (u8),
#: stage (16 bytes); the same in v9 and IPFIX (RFC 7011 §3.4.3, RFC 3954 §5.3).
RECORD_FORMAT: Final = f"!IQQB{STAGE_LENGTH}s"
RECORD: Final = struct.Struct(RECORD_FORMAT)
#: IPFIX options template record header: templateId, fieldCount, scopeFieldCount
#: (RFC 7011 §3.4.2.2).
IPFIX_HEADER_FORMAT: Final = "!HHH"
#: IPFIX field specifier (§3.2): id (top bit: enterprise), length; enterprise number.
IPFIX_FIELD_FORMAT: Final = "!HH"
IPFIX_ENTERPRISE_FIELD_FORMAT: Final = "!HHI"
#: v9 options template header: templateId, optionScopeLength, optionLength (RFC 3954 §6.1).
V9_HEADER_FORMAT: Final = "!HHH"
#: v9 scope / option field: type, length (§6.1).
V9_FIELD_FORMAT: Final = "!HH"
#: Set / flowset header: id, length (RFC 7011 §3.3.2, RFC 3954 §5.2).
SET_HEADER_FORMAT: Final = "!HH"
IPFIX_OPTIONS_TEMPLATE_SET_ID: Final = 3
V9_OPTIONS_TEMPLATE_FLOWSET_ID: Final = 1
_IPFIX_HEADER = struct.Struct(IPFIX_HEADER_FORMAT)
_IPFIX_FIELD = struct.Struct(IPFIX_FIELD_FORMAT)
_IPFIX_ENTERPRISE_FIELD = struct.Struct(IPFIX_ENTERPRISE_FIELD_FORMAT)
_V9_HEADER = struct.Struct(V9_HEADER_FORMAT)
_V9_FIELD = struct.Struct(V9_FIELD_FORMAT)
_SET_HEADER = struct.Struct(SET_HEADER_FORMAT)

#: The names the v9/IPFIX unpackers give the record's fields (a repeated element's
#: second instance is ``name#2``, :func:`nfflowd.formats.ipfix_ies.compile_template`).
FIRST_NAME: Final = ies.OBSERVATION_TIME_MILLISECONDS.name
LAST_NAME: Final = f"{FIRST_NAME}#2"
IPFIX_NAMES: Final = (ies.OBSERVATION_DOMAIN_ID.name, f"ie{ENTERPRISE_NUMBER}.{CAUSE_ID}",
                      f"ie{ENTERPRISE_NUMBER}.{STAGE_ID}")  # fmt: skip
V9_NAMES: Final = ("scopeSystem", f"ie{V9_PRIVATE | CAUSE_ID}", f"ie{V9_PRIVATE | STAGE_ID}")


class GapRow(NamedTuple):
    """One gap as sent: connections in [from_ms, to_ms] may be missing, because of
    *cause* (a key of :data:`CAUSE_CODES`), journaled by *stage*."""

    from_ms: int
    to_ms: int
    cause: str
    stage: str


def _pad(n: int) -> int:
    return -n & 3


def ipfix_template_set() -> bytes:
    """The IPFIX Options Template Set (id 3) announcing :data:`TEMPLATE_ID`."""
    body = b"".join(
        (
            _IPFIX_HEADER.pack(TEMPLATE_ID, 5, 1),
            _IPFIX_FIELD.pack(OBSERVATION_DOMAIN_ID, 4),
            _IPFIX_FIELD.pack(OBSERVATION_TIME_MILLISECONDS, 8),
            _IPFIX_FIELD.pack(OBSERVATION_TIME_MILLISECONDS, 8),
            _IPFIX_ENTERPRISE_FIELD.pack(0x8000 | CAUSE_ID, 1, ENTERPRISE_NUMBER),
            _IPFIX_ENTERPRISE_FIELD.pack(0x8000 | STAGE_ID, STAGE_LENGTH, ENTERPRISE_NUMBER),
        )
    )
    return _SET_HEADER.pack(IPFIX_OPTIONS_TEMPLATE_SET_ID, _SET_HEADER.size + len(body)) + body


def v9_template_flowset() -> bytes:
    """The v9 Options Template FlowSet (id 1) announcing :data:`TEMPLATE_ID`, padded."""
    scope = _V9_FIELD.pack(V9_SCOPE_SYSTEM, 4)
    options = b"".join(
        (
            _V9_FIELD.pack(OBSERVATION_TIME_MILLISECONDS, 8),
            _V9_FIELD.pack(OBSERVATION_TIME_MILLISECONDS, 8),
            _V9_FIELD.pack(V9_PRIVATE | CAUSE_ID, 1),
            _V9_FIELD.pack(V9_PRIVATE | STAGE_ID, STAGE_LENGTH),
        )
    )
    body = _V9_HEADER.pack(TEMPLATE_ID, len(scope), len(options)) + scope + options
    body += bytes(_pad(_SET_HEADER.size + len(body)))
    return _SET_HEADER.pack(V9_OPTIONS_TEMPLATE_FLOWSET_ID, _SET_HEADER.size + len(body)) + body


def pack_records(domain: int, gaps: Sequence[GapRow]) -> bytes:
    """The data records of *gaps* under *domain* (IPFIX observation domain, v9 source id).
    ValueError on an unknown cause or a value out of range."""
    out = []
    for g in gaps:
        code = CAUSE_CODES.get(g.cause)
        if code is None:
            raise ValueError(f"coverage gap cause {g.cause!r} has no code")
        try:
            out.append(RECORD.pack(domain, g.from_ms, g.to_ms, code, g.stage.encode("ascii")))
        except (struct.error, UnicodeEncodeError) as e:
            raise ValueError(f"coverage gap {g}: {e}") from None
    return b"".join(out)


def pack_data_set(domain: int, gaps: Sequence[GapRow], *, pad: bool) -> bytes:
    """A data set (IPFIX) / data flowset (v9, ``pad``: to 4 bytes) of *gaps*."""
    body = pack_records(domain, gaps)
    if pad:
        body += bytes(_pad(_SET_HEADER.size + len(body)))
    return _SET_HEADER.pack(TEMPLATE_ID, _SET_HEADER.size + len(body)) + body


def unpack(record: Mapping[str, Any]) -> tuple[int, GapRow] | None:
    """(domain, gap) of an options record as :func:`nfflowd.formats.ipfix.unpack_datagram`
    or :func:`nfflowd.formats.netflow_v9.unpack_datagram` decoded it; None when it is
    not one of ours (other fields, an unknown cause code)."""
    names = next((n for n in (IPFIX_NAMES, V9_NAMES) if n[0] in record and n[1] in record), None)
    if names is None:
        return None
    scope, cause, stage = names
    first, last = record.get(FIRST_NAME), record.get(LAST_NAME)
    raw_scope, raw_cause, raw_stage = record[scope], record[cause], record.get(stage)
    if not isinstance(first, int) or not isinstance(last, int) or not isinstance(raw_stage, bytes):
        return None
    domain = raw_scope if isinstance(raw_scope, int) else int.from_bytes(raw_scope, "big")
    code = raw_cause if isinstance(raw_cause, int) else int.from_bytes(raw_cause, "big")
    name = CAUSES_BY_CODE.get(code)
    if name is None:
        return None
    text = raw_stage.rstrip(b"\0").decode("ascii", "replace")
    return domain, GapRow(first, last, name, text)
