#!/bin/bash
# Re-capture the real `conntrack -E` / `conntrack -L` samples in this directory.
#
# Needs root, iproute2, nftables, conntrack and python3.  Everything happens in a
# private network namespace (nfa-cap) on its loopback; /etc is overlaid in a private
# mount namespace only to give conntrack and nft a connlabel.conf.  The namespace is
# deleted on exit, whatever happens.  Usage: capture.sh [output-dir]
set -euo pipefail

if [ -z "${NFA_CAPTURE_INNER:-}" ]; then
    export NFA_CAPTURE_INNER=1
    exec unshare -m --propagation private "$0" "$@"
fi

NS=nfa-cap
OUT=$(realpath "${1:-$(dirname "$0")}")
TMP=$(mktemp -d /tmp/nfa-cap.XXXXXX)
PIDS=()

HOLD=
cleanup() {
    for p in "${PIDS[@]}" $HOLD; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    umount /etc 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# connlabel.conf for conntrack (/etc/xtables) and nft (/etc), visible only to us.
mkdir -p "$TMP/upper" "$TMP/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$TMP/upper,workdir=$TMP/work" /etc
mkdir -p /etc/xtables
printf '0 blue\n1 green\n' | tee /etc/xtables/connlabel.conf >/etc/connlabel.conf

ip netns add "$NS"
nsx() { ip netns exec "$NS" "$@"; }
nsx ip link set lo up
# Short timeouts so DESTROY events come within seconds; no checksum checks for raw packets.
for kv in tcp_timeout_time_wait=2 tcp_timeout_close=2 tcp_timeout_fin_wait=2 \
    tcp_timeout_syn_sent=3 udp_timeout=3 udp_timeout_stream=4 icmp_timeout=2 \
    icmpv6_timeout=2 generic_timeout=3 gre_timeout=3 gre_timeout_stream=3 \
    sctp_timeout_cookie_wait=3 checksum=0; do
    nsx sysctl -q -w "net.netfilter.nf_conntrack_$kv"
done

nsx nft -f - <<'EOF'
table inet nfa {
    chain raw_out {
        type filter hook output priority raw;
        udp dport 5007 ct zone set 5
        udp sport 5007 ct zone set 5
        udp dport 5011 ct original zone set 9
    }
    chain mangle_out {
        type filter hook output priority mangle;
        udp dport 5006 ct mark set 42
        udp dport 5013 ct label set blue
        udp dport 5013 ct label set green
    }
}
table ip nfanat {
    chain out { type nat hook output priority -100; tcp dport 5008 dnat to 127.0.0.1:5009; }
    chain post { type nat hook postrouting priority 100; udp dport 5010 snat to 127.0.0.5; }
}
EOF

cat >"$TMP/traffic.py" <<'EOF'
"""Loopback traffic for the capture: one short exchange per protocol/feature."""
import socket
import struct
import sys
import threading
import time

V4, V6 = "127.0.0.1", "::1"


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def tcp(addr: str, port: int, send: int = 1000, answer: int = 2000, hold: float = 0.0) -> None:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    srv = socket.socket(fam, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(1)

    def serve() -> None:
        c, _ = srv.accept()
        got = 0
        while got < send:
            got += len(c.recv(65536))
        c.sendall(b"r" * answer)
        c.close()

    t = threading.Thread(target=serve)
    t.start()
    cli = socket.create_connection((addr, port), timeout=5)
    cli.sendall(b"q" * send)
    got = 0
    while got < answer:
        got += len(cli.recv(65536))
    t.join()
    time.sleep(hold)
    cli.close()
    srv.close()


def tcp_dnat(port: int, real_port: int) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind((V4, real_port))
    srv.listen(1)

    def serve() -> None:
        c, _ = srv.accept()
        c.recv(100)
        c.sendall(b"dnat-reply")
        c.close()

    t = threading.Thread(target=serve)
    t.start()
    cli = socket.create_connection((V4, port), timeout=5)
    cli.sendall(b"dnat-query")
    cli.recv(100)
    t.join()
    cli.close()
    srv.close()


def udp(addr: str, port: int, reply: bool = True, proto: int = 0, payload: bytes = b"u" * 100) -> None:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    if reply:
        srv = socket.socket(fam, socket.SOCK_DGRAM, proto)
        srv.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
    cli = socket.socket(fam, socket.SOCK_DGRAM, proto)
    cli.settimeout(2)
    cli.sendto(payload, (addr, port))
    if reply:
        data, peer = srv.recvfrom(65536)
        srv.sendto(data * 3, peer)
        cli.recvfrom(65536)
        srv.close()
    cli.close()


def raw(addr: str, proto: int, payload: bytes) -> None:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_RAW, proto)
    s.sendto(payload, (addr, 0))
    s.close()


def ping4(ident: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.settimeout(2)
    body = struct.pack("!HH", ident, 1) + b"p" * 56
    pkt = struct.pack("!BBH", 8, 0, 0) + body
    pkt = struct.pack("!BBH", 8, 0, csum(pkt)) + body
    s.sendto(pkt, (V4, 0))
    s.recv(1024)
    s.close()


def ping6(ident: int) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.settimeout(2)
    s.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, 1) + b"p" * 56, (V6, 0))
    s.recv(1024)
    s.close()


def gre_pptp(call_id: int) -> bytes:
    # Enhanced GRE (RFC 2637): K bit + version 1, protocol 0x880B, payload length, call id.
    return struct.pack("!HHHH", 0x2001, 0x880B, 0, call_id)


def sctp_init(sport: int, dport: int) -> bytes:
    # RFC 9260 common header (vtag 0) + INIT chunk; the checksum is not verified (checksum=0).
    chunk = struct.pack("!BBHIIHHI", 1, 0, 20, 0x11223344, 65535, 1, 1, 1)
    return struct.pack("!HHII", sport, dport, 0, 0) + chunk


def dccp_request(sport: int, dport: int) -> bytes:
    # RFC 4340 generic header, X=1, type 0 (Request), + service code.
    return struct.pack("!HHBBHBBHII", sport, dport, 5, 0, 0, 0x01, 0, 0, 1, 0)


def main(phase: str) -> None:
    if phase == "hold":
        tcp(V4, 5014, 300, 600, hold=float(sys.argv[2]))
        return
    tcp(V4, 5001)
    tcp(V6, 5002)
    udp(V4, 5003)
    udp(V4, 5004, reply=False)
    udp(V6, 5005)
    ping4(0x1234)
    ping6(0x4321)
    if phase == "full":
        udp(V4, 5006)  # ct mark 42
        udp(V4, 5007)  # ct zone 5
        udp(V4, 5011, reply=False)  # ct original zone 9
        tcp_dnat(5008, 5009)
        udp(V4, 5010)  # snat to 127.0.0.5
        udp(V4, 5012, proto=136)  # udplite
        udp(V4, 5013)  # labels
        raw(V4, 47, gre_pptp(0x1A2B))
        raw(V4, 132, sctp_init(40000, 5015))
        raw(V4, 33, dccp_request(40001, 5016))
        raw(V4, 253, b"experimental")
        raw(V6, 253, b"experimental")


main(sys.argv[1])
EOF

listen() {  # listen FILE ARGS...: start `conntrack -E ARGS` in the namespace, stdout to FILE
    local f=$1
    shift
    # not via nsx: $! must be conntrack itself (ip netns exec execs it), not a subshell
    ip netns exec "$NS" conntrack -E "$@" >"$OUT/$f" 2>"$TMP/$f.err" &
    PIDS+=($!)
}

stop_listeners() {  # SIGTERM makes conntrack print its "N flow events have been shown." trailer
    local p deadline=$((SECONDS + 10))
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        while kill -0 "$p" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    PIDS=()
}

wait_destroys() {  # wait until FILE has as many DESTROY as NEW lines (deadline 60 s)
    local f=$1 deadline=$((SECONDS + 60))
    while [ $SECONDS -lt $deadline ]; do
        nsx conntrack -L >/dev/null 2>&1 || true  # a dump reaps expired entries (-> DESTROY events)
        local n d
        n=$(grep -c '\[NEW\]' "$OUT/$f" || true)
        d=$(grep -c '\[DESTROY\]' "$OUT/$f" || true)
        [ "$n" -gt 0 ] && [ "$d" -ge "$n" ] && return 0
        sleep 0.5
    done
    echo "warning: not every connection in $f was destroyed in time" >&2
}

listing() {  # listing FILE ARGS...: `conntrack -L ARGS`, stdout then stderr (the trailer)
    local f=$1
    shift
    nsx conntrack -L "$@" >"$OUT/$f" 2>"$TMP/listing.err"
    cat "$TMP/listing.err" >>"$OUT/$f"
}

wait_listening() {  # until every listener has its netlink socket (deadline 10 s)
    local p deadline=$((SECONDS + 10))
    for p in "${PIDS[@]}"; do
        until find "/proc/$p/fd" -lname 'socket:*' 2>/dev/null | grep -q .; do
            [ $SECONDS -lt $deadline ] || { echo "conntrack -E did not start" >&2; exit 1; }
            sleep 0.05
        done
    done
}

# --- phase 1: accounting and timestamps on --------------------------------------------
nsx sysctl -q -w net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1
listen events-acct-ts-ext-id.txt -o timestamp,extended,id
listen events-acct-plain.txt
listen events-acct-ts.txt -o timestamp
listen events-acct-id-ktimestamp-labels-userspace.txt -o id,ktimestamp,labels,userspace
wait_listening
ip netns exec "$NS" python3 "$TMP/traffic.py" hold 4 &
HOLD=$!
sleep 0.5  # the held connection comes first in the logs
nsx python3 "$TMP/traffic.py" full
listing list-acct-plain.txt
listing list-acct-ext-id.txt -o extended,id
listing list-acct-ktimestamp-labels.txt -o ktimestamp,labels
listing list-acct-ipv6.txt -f ipv6
listing list-acct-ts.txt -o timestamp
nsx conntrack -D -p udp --dport 5003 >/dev/null 2>&1 || true  # DESTROY [USERSPACE]
wait "$HOLD"
wait_destroys events-acct-ts-ext-id.txt
nsx conntrack -F >/dev/null 2>&1 || true
stop_listeners

# --- phase 2: accounting and timestamps off --------------------------------------------
nsx sysctl -q -w net.netfilter.nf_conntrack_acct=0 net.netfilter.nf_conntrack_timestamp=0
listen events-noacct-ts-ext-id.txt -o timestamp,extended,id
listen events-noacct-plain.txt
wait_listening
nsx python3 "$TMP/traffic.py" basic
listing list-noacct-plain.txt
listing list-noacct-ext-id.txt -o extended,id
wait_destroys events-noacct-ts-ext-id.txt
stop_listeners

# The listeners' trailers went to stderr; keep them (in file-name order) in a file of their own.
cat "$TMP"/events-*.err >"$OUT/trailers-stderr.txt"
echo "captured into $OUT"
