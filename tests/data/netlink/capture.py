"""Re-capture the golden ctnetlink fixtures in this folder from the running kernel.

Run as root:  .venv/bin/python tests/data/netlink/capture.py [OUTDIR]

Creates network namespace ``nfn-cap`` (deleted at the end, even on failure), turns
on nf_conntrack_acct / nf_conntrack_timestamp there, makes conntrack track (one nft
rule), generates TCP, UDP, ICMP and ICMPv6 on 127.0.0.1 and ::1 and records:

* ``<type>_<proto><family>.hex``: the raw datagram of that event as the kernel sent it;
* ``dump.hex``: every datagram of one table dump (ending with NLMSG_DONE);
* ``error.hex``: the kernel's NLMSG_ERROR for a CT_GET without a tuple;
* ``<name>.json``: what the decoder gives for it (``expected``; addresses as text),
  the decode counters, and ``conntrack`` -- the same entries as printed by the
  conntrack tool (``conntrack -E/-L -o id,ktimestamp``), an independent oracle.

Only loopback traffic, only inside the namespace.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from nfflowd.conntrack.kernel import (
    NETLINK_ADD_MEMBERSHIP,
    SOL_NETLINK,
    open_in_netns,
    run_in_netns,
    set_sysctls,
)
from nfflowd.conntrack.netlink import (
    IPCTNL_MSG_CT_GET,
    NFGENMSG,
    NFNL_SUBSYS_CTNETLINK,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSGHDR,
    DecodeCounters,
    decode_messages,
    dump_request,
)
from nfflowd.messages import ConntrackEvent, EventType

NS = "nfn-cap"
PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}
NFT_RULES = (
    "add table inet nfncap\n"
    "add chain inet nfncap out { type filter hook output priority 0; }\n"
    "add rule inet nfncap out ct state new counter\n"
)


def event_json(ev: ConntrackEvent) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, value in zip(ConntrackEvent._fields, ev, strict=True):
        out[name] = str(ipaddress.ip_address(value)) if isinstance(value, bytes) else value
    return out


def drain(sock: socket.socket, quiet: float = 0.3) -> list[bytes]:
    """Datagrams until the socket has been silent for ``quiet`` seconds."""
    out: list[bytes] = []
    while select.select([sock], [], [], quiet)[0]:
        out.append(sock.recv(1 << 17))
    return out


def icmp_echo(family: int) -> None:
    """One echo request over a raw socket (the kernel answers on lo)."""
    if family == 4:
        body = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"nfflowd!"
        csum = sum(struct.unpack(f"!{len(body) // 2}H", body))
        csum = (csum >> 16) + (csum & 0xFFFF)
        csum = ~(csum + (csum >> 16)) & 0xFFFF
        pkt = body[:2] + struct.pack("!H", csum) + body[4:]
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
            s.sendto(pkt, ("127.0.0.1", 0))
            s.settimeout(2)
            s.recv(200)  # our request, then the reply: either proves the round trip
    else:
        pkt = struct.pack("!BBHHH", 128, 0, 0, 0x4321, 1) + b"nfflowd!"  # kernel sums v6
        with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
            s.sendto(pkt, ("::1", 0))
            s.settimeout(2)
            s.recv(200)


def tcp_and_udp(family: int) -> None:
    af, host = (socket.AF_INET, "127.0.0.1") if family == 4 else (socket.AF_INET6, "::1")
    with socket.socket(af, socket.SOCK_STREAM) as srv:
        srv.bind((host, 0))
        srv.listen(1)
        with socket.create_connection(srv.getsockname()[:2], timeout=2) as cli:
            conn, _ = srv.accept()
            cli.sendall(b"hello " * 10)
            conn.recv(100)
            conn.sendall(b"world")
            cli.recv(100)
            conn.close()
    with socket.socket(af, socket.SOCK_DGRAM) as srv, socket.socket(af, socket.SOCK_DGRAM) as c:
        srv.bind((host, 0))
        c.sendto(b"ping", srv.getsockname())
        _data, peer = srv.recvfrom(100)
        srv.sendto(b"pong" * 3, peer)
        c.recv(100)


def hex_lines(datagrams: list[bytes]) -> str:
    lines = []
    for i, dg in enumerate(datagrams):
        lines.append(f"# datagram {i}: {len(dg)} bytes")
        lines += [dg[j : j + 16].hex(" ") for j in range(0, len(dg), 16)]
    return "\n".join(lines) + "\n"


def save(outdir: Path, name: str, datagrams: list[bytes], recv_ns: int, oracle: list[str]) -> None:
    counters = DecodeCounters()
    events = [e for dg in datagrams for e in decode_messages(dg, recv_ns, counters)]
    (outdir / f"{name}.hex").write_text(hex_lines(datagrams))
    doc = {
        "recv_time_ns": recv_ns,
        "expected": [event_json(e) for e in events],
        "counters": {k: v for k, v in vars(counters).items() if k != "last_error"},
        "conntrack": oracle,
    }
    (outdir / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{name}: {len(datagrams)} datagram(s), {len(events)} event(s)")


def ns_run(*cmd: str, data: str | None = None) -> str:
    argv = ["ip", "netns", "exec", NS, *cmd]
    env = dict(os.environ, TZ="UTC")  # the oracle's [start=...] dates in UTC
    return subprocess.run(
        argv, input=data, capture_output=True, text=True, check=True, env=env
    ).stdout


def capture(outdir: Path) -> None:
    subprocess.run(["ip", "-n", NS, "link", "set", "lo", "up"], check=True)
    set_sysctls(NS, acct=True, timestamp=True)
    ns_run("nft", "-f", "-", data=NFT_RULES)
    sock = open_in_netns(NS)
    sock.bind((0, 0))
    for group in (1, 2, 3):
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
    argv = ["ip", "netns", "exec", NS, "stdbuf", "-oL", "conntrack", "-E", "-o", "id,ktimestamp"]
    watcher = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(os.environ, TZ="UTC"),
    )
    try:
        time.sleep(0.5)  # let conntrack -E subscribe before the first packet
        events: list[bytes] = []
        for fam in (4, 6):
            run_in_netns(NS, functools.partial(tcp_and_udp, fam))
            run_in_netns(NS, functools.partial(icmp_echo, fam))
        events += drain(sock)
        listing = ns_run("conntrack", "-L", "-o", "id,ktimestamp").splitlines()
        with open_in_netns(NS) as dsock:
            dsock.bind((0, 0))
            dsock.send(dump_request(7))
            dumped = drain(dsock)
        dump_ns = time.time_ns()
        ns_run("conntrack", "-F")
        events += drain(sock)
        with open_in_netns(NS) as esock:
            esock.bind((0, 0))
            mtype = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
            body = NFGENMSG.pack(socket.AF_INET, 0, 0)
            head = NLMSGHDR.pack(NLMSGHDR.size + len(body), mtype, NLM_F_REQUEST | NLM_F_ACK, 9, 0)
            esock.send(head + body)
            errors = drain(esock)
    finally:
        watcher.terminate()
        text, _ = watcher.communicate(timeout=5)
        sock.close()
    seen: set[str] = set()
    recv_ns = time.time_ns()
    for dg in events:
        (ev,) = decode_messages(dg, recv_ns, DecodeCounters())
        kind = EventType(ev.type).name.lower()
        name = f"{kind}_{PROTO_NAMES[ev.proto]}{ev.family}"
        if name in seen:
            continue
        seen.add(name)
        tag = f"[{kind.upper()}]"
        oracle = [ln for ln in text.splitlines() if tag in ln and f"id={ev.ct_id} " in ln + " "]
        save(outdir, name, [dg], recv_ns, oracle[:1])
    save(outdir, "dump", dumped, dump_ns, listing)
    save(outdir, "error", errors, recv_ns, [])


def main() -> None:
    outdir = Path(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(__file__))
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        capture(outdir)
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


if __name__ == "__main__":
    main()
