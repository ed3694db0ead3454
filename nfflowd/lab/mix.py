"""The lab's traffic mix as data: the flows it runs and what conntrack must show.

What lives here: :class:`Flow` and :func:`mix` (the connections, in order),
:func:`listeners` (what each endpoint serves), :class:`Expected` and
:func:`expected` (each connection as the fw's conntrack must show it) and
:func:`describe`.  Running the mix (endpoint programs in the namespaces) is
:mod:`nfflowd.lab.traffic`, which re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass

from nfflowd.lab.plan import Lab

ECHO_TYPES = {4: (8, 0), 6: (128, 129)}  # family -> (request type, reply type)
PROTO = {"tcp": 6, "udp": 17, "udp-unreplied": 17, "gre": 47}


@dataclass(frozen=True)
class Flow:
    """One connection of the mix, as the initiating endpoint runs it."""

    name: str
    kind: str  # tcp | udp | udp-unreplied | icmp | gre
    family: int
    src: str  # initiator's address
    dst: str  # where the initiator sends
    dport: int = 0
    send: int = 0  # payload bytes initiator -> responder (per message for datagrams)
    recv: int = 0  # payload bytes back (per message for datagrams)
    count: int = 1  # messages each way (datagram kinds)
    initiator: str = "client"  # or "server"
    snat_to: str = ""  # the firewall rewrites the source to this
    dnat_to: str = ""  # the firewall rewrites the destination to this (and dnat_port)
    dnat_port: int = 0


@dataclass(frozen=True)
class Expected:
    """A connection as the fw's conntrack must show it.

    Ports follow :mod:`nfflowd.messages`: ICMP/ICMPv6 sport=id, dport=type<<8|code;
    GRE (version 0, no keys) 0/0.
    """

    name: str
    family: int
    proto: int
    nat: str  # snat | dnat | none
    orig_src: str
    orig_dst: str
    orig_sport: int
    orig_dport: int
    reply_src: str
    reply_dst: str
    reply_sport: int
    reply_dport: int
    payload_orig: int  # L4 payload bytes, original direction
    payload_reply: int
    packets_orig: int | None  # exact for datagram protocols, None for TCP
    packets_reply: int | None

    @property
    def replied(self) -> bool:
        return self.payload_reply > 0

    def wire_bytes(self) -> tuple[int, int] | None:
        """Exact conntrack byte counters (L3 lengths) for datagram flows, else None."""
        if self.packets_orig is None or self.packets_reply is None:
            return None
        l3 = 20 if self.family == 4 else 40
        l4 = 4 if self.proto == 47 else 8
        return (
            self.payload_orig + self.packets_orig * (l3 + l4),
            self.payload_reply + self.packets_reply * (l3 + l4),
        )


def mix(lab: Lab) -> list[Flow]:
    """The traffic mix, in the order it runs."""
    c4, n4, s4, p4 = lab.client4, lab.client4_nonat, lab.server4, lab.fw_pub4
    c6, n6, s6, p6 = lab.client6, lab.client6_nonat, lab.server6, lab.fw_pub6
    fwd, to, srv = lab.fwd_port, lab.fwd_to_port, "server"
    return [
        Flow("tcp4-snat", "tcp", 4, c4, s4, 5001, 1000, 5000, snat_to=p4),
        Flow("tcp4-nonat", "tcp", 4, n4, s4, 5001, 2000, 3000),
        Flow("udp4-snat", "udp", 4, c4, s4, 5001, 100, 300, count=2, snat_to=p4),
        Flow("udp4-unreplied", "udp-unreplied", 4, c4, s4, lab.drop_port, 200, snat_to=p4),
        Flow("icmp4-snat", "icmp", 4, c4, s4, 0, 56, 56, count=3, snat_to=p4),
        Flow("gre4-snat", "gre", 4, c4, s4, 0, 64, 128, count=2, snat_to=p4),
        Flow("tcp6-snat", "tcp", 6, c6, s6, 5001, 1500, 4000, snat_to=p6),
        Flow("tcp6-nonat", "tcp", 6, n6, s6, 5001, 700, 1200),
        Flow("icmp6-snat", "icmp", 6, c6, s6, 0, 56, 56, count=3, snat_to=p6),
        Flow(
            "tcp4-dnat", "tcp", 4, s4, p4, fwd, 600, 2500, initiator=srv, dnat_to=c4, dnat_port=to
        ),
    ]


def listeners(flows: list[Flow], role: str) -> list[tuple[str, int, str, int, int]]:
    """(kind, family, address, port, messages) the ``role`` endpoint must serve."""
    served: dict[tuple[str, int, str, int], int] = {}
    for f in flows:
        if f.initiator == role or f.kind not in ("tcp", "udp", "gre"):
            continue
        key = (f.kind, f.family, f.dnat_to or f.dst, f.dnat_port or f.dport)
        served[key] = served.get(key, 0) + (1 if f.kind == "tcp" else f.count)
    return [(*k, n) for k, n in served.items()]


def expected(f: Flow, ident: int) -> Expected:
    """What conntrack must show for flow ``f`` run from local port (or ICMP id) ``ident``."""
    if f.kind == "icmp":
        req, rep = ECHO_TYPES[f.family]
        proto = 1 if f.family == 4 else 58
        ports = (ident, req << 8, ident, rep << 8)
    elif f.kind == "gre":
        proto, ports = 47, (0, 0, 0, 0)
    else:
        proto, ports = PROTO[f.kind], (ident, f.dport, f.dnat_port or f.dport, ident)
    reply_src, reply_dst = (f.dnat_to or f.dst), (f.snat_to or f.src)
    nat = "snat" if f.snat_to else "dnat" if f.dnat_to else "none"
    n_reply = f.count if f.recv else 0
    counts = (f.count, n_reply) if f.kind != "tcp" else (None, None)
    head = (f.name, f.family, proto, nat, f.src, f.dst, *ports[:2], reply_src, reply_dst)
    return Expected(*head, *ports[2:], f.send * f.count, f.recv * n_reply, *counts)


def describe(flows: list[Expected]) -> str:
    """A human table of the mix."""
    rows = [f"{'name':<15} {'nat':<5} original tuple -> reply tuple   payload orig/reply"]
    for e in flows:
        rows.append(
            f"{e.name:<15} {e.nat:<5} {e.orig_src}:{e.orig_sport} > {e.orig_dst}:{e.orig_dport}"
            f" -> {e.reply_src}:{e.reply_sport} > {e.reply_dst}:{e.reply_dport}"
            f"   {e.payload_orig}/{e.payload_reply}"
        )
    return "\n".join(rows)
