"""FlowRecords for the wire-format tests, written with addresses as text.

The fixed clock the encoders are run at (:data:`NOW_NS`, a host booted at
:data:`BOOT`), builders from the most explicit (:func:`flow`, every field) to
the ones with defaults (:func:`plain_record`, a flow no NAT changed;
:func:`snat_record`, a source-NATed one; :func:`snat_connection` and
:func:`dnat_connection`, the triplets of a connection), the hypothesis strategy :data:`FLOWS`
over any encodable source-NATed record, and :func:`load_records` for the
records of the golden cases under tests/data.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from nfflowd.messages import FlowRecord
from tests.addresses import a

NOW_NS = 1_795_713_184_334_567_890
NOW = NOW_NS // 1_000_000
SECS = NOW_NS // 1_000_000_000
#: When the host booted, in epoch ms (v9's sysUpTime base); 1008 s before NOW.
BOOT = 1_795_712_176_000


def flow(
    first: int,
    last: int,
    proto: int,
    src: str,
    dst: str,
    sp: int,
    dp: int,
    pk: int,
    by: int,
    psrc: str,
    pdst: str,
    psp: int,
    pdp: int,
    d: int = 1,
    end: int = 3,
    ct: int = 0,
) -> FlowRecord:
    """A FlowRecord field by field (no mark, zone 0); the family follows ``src``."""
    fam = 6 if ":" in src else 4
    return FlowRecord(
        first,
        last,
        fam,
        proto,
        a(src),
        a(dst),
        sp,
        dp,
        pk,
        by,
        a(psrc),
        a(pdst),
        psp,
        pdp,
        d,
        end,
        0,
        0,
        ct,
    )


def plain_record(
    first: int,
    last: int,
    src: str = "10.0.0.1",
    dst: str = "203.0.113.5",
    sport: int = 1234,
    dport: int = 80,
    packets: int = 10,
    octets: int = 1000,
    proto: int = 6,
) -> FlowRecord:
    """A flow no NAT changed (post-NAT fields = pre-NAT ones), ORIGINAL_IN, END_OF_FLOW,
    no mark, no conntrack id: what NetFlow v5 and the CSV line carry."""
    return flow(first, last, proto, src, dst, sport, dport, packets, octets, src, dst, sport, dport)


def snat_record(
    first: int = NOW - 5106,
    last: int = NOW - 17,
    src: str = "10.0.0.1",
    dst: str | None = None,
    sport: int = 1234,
    dport: int = 443,
    packets: int = 10,
    octets: int = 1000,
    proto: int = 6,
    post_src: str | None = None,
    post_sport: int = 40000,
    direction: int = 1,
    end_reason: int = 3,
    zone: int = 0,
    ct_id: int = 77,
) -> FlowRecord:
    """A source-NATed flow (mark 5, conntrack id 77 and zone 0 unless given); the
    destination and the post-NAT source default to documentation addresses of ``src``'s
    family."""
    v6 = ":" in src
    dst = dst or ("2001:db8::5" if v6 else "203.0.113.5")
    psrc = post_src or ("2001:db8:ff::1" if v6 else "198.51.100.1")
    pre = (src, dst, sport, dport)
    r = flow(first, last, proto, *pre, packets, octets, psrc, dst, post_sport, dport)
    return r._replace(direction=direction, end_reason=end_reason, mark=5, zone=zone, ct_id=ct_id)


Endpoint = tuple[str, int]


def snat_connection(
    first: int, last: int, private: Endpoint, public: Endpoint, remote: Endpoint
) -> list[FlowRecord]:
    """The three records nfflowd makes of *private* -> *remote* source-NATed to *public*:
    the original as it arrived, as it left, the reply as it arrived."""
    (pv, pp), (pb, pbp), (r, rp) = private, public, remote
    return [
        flow(first, last, 6, pv, r, pp, rp, 6, 600, pb, r, pbp, rp, 1),
        flow(first, last, 6, pb, r, pbp, rp, 6, 600, pb, r, pbp, rp, 2),
        flow(first, last, 6, r, pb, rp, pbp, 5, 500, r, pv, rp, pp, 3),
    ]


def dnat_connection(
    first: int, last: int, remote: Endpoint, public: Endpoint, private: Endpoint
) -> list[FlowRecord]:
    """The three records nfflowd makes of *remote* -> *public* forwarded (DNAT) to
    *private*: the original as it arrived, as it left, the reply as it arrived."""
    (r, rp), (pb, pbp), (pv, pp) = remote, public, private
    return [
        flow(first, last, 6, r, pb, rp, pbp, 4, 400, r, pv, rp, pp, 1),
        flow(first, last, 6, r, pv, rp, pp, 4, 400, r, pv, rp, pp, 2),
        flow(first, last, 6, pv, r, pp, rp, 7, 700, pb, r, pbp, rp, 3),
    ]


#: Any source-NATed record v9 and IPFIX can carry: every counter and time to 64 bits,
#: IPv4 and IPv6 sources at the ends of their ranges, any conntrack zone (16 bits in the
#: kernel) and id (32 bits).
FLOWS = st.builds(
    snat_record,
    first=st.integers(0, 2**64 - 1),
    last=st.integers(0, 2**64 - 1),
    src=st.sampled_from(["10.0.0.1", "0.0.0.0", "255.255.255.255", "fd00::1", "::"]),
    sport=st.integers(0, 0xFFFF),
    dport=st.integers(0, 0xFFFF),
    packets=st.integers(0, 2**64 - 1),
    octets=st.integers(0, 2**64 - 1),
    proto=st.integers(0, 255),
    post_sport=st.integers(0, 0xFFFF),
    direction=st.sampled_from([1, 2, 3]),
    end_reason=st.integers(1, 255),  # 0 is OPENED: a notice, no flow (messages.EndReason)
    zone=st.integers(0, 0xFFFF),
    ct_id=st.integers(0, 2**32 - 1),
)


def load_records(rows: list[dict[str, Any]]) -> list[FlowRecord]:
    """The records of a golden case (FlowRecord fields by name, addresses as text)."""
    return [
        FlowRecord(**{**r, **{k: a(r[k]) for k in ("src", "dst", "post_src", "post_dst")}})
        for r in rows
    ]
