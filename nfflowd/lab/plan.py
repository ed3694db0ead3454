"""The NAT lab's plan: topology, addresses, nftables rulesets, conntrack sysctls.

What lives here is the lab as data (:class:`Lab`, the rulesets, the sysctls and the
iproute2 commands that wire it up); :mod:`nfflowd.lab` builds it from this plan,
tears it down and watches its conntrack table, and re-exports the names here that
callers use.

Topology (``P`` is the caller's prefix, default ``nfflowd-lab-``)::

    P client                    P fw                            P server
    eth0 10.0.1.2/24  (SNAT)  - lan0 10.0.1.1/24  wan0 203.0.113.1/24 - eth0 203.0.113.2/24
         10.0.1.3/24  (none)       fd00:1::1/64      2001:db8:1::1/64       2001:db8:1::2/64
         fd00:1::2/64 (NAT66)
         fd00:1::3/64 (none)

The firewall forwards IPv4 and IPv6 and has one nftables table (``inet nfflowd_lab``)
that masquerades 10.0.1.2 and fd00:1::2 behind its public addresses and forwards
203.0.113.1:8080/tcp to 10.0.1.2:80.  10.0.1.3 and fd00:1::3 leave un-NATed: the
server has routes back to 10.0.1.0/24 and fd00:1::/64 via the firewall.  The server
silently drops UDP port 5999, so a flow to it stays un-replied without an ICMP error.

Why nftables and not iptables: one ``nft -f`` per namespace loads the whole
ruleset atomically, one ``inet`` table covers IPv4 and IPv6 NAT alike, and it
needs neither the iptables-legacy/-nft alternative nor the xtables compat layer
(iptables v1.8.9 here is iptables-nft anyway, i.e. the same kernel code).

Conntrack sysctls: ``nf_conntrack_acct``, ``nf_conntrack_timestamp`` and every
protocol timeout are per network namespace (kernel >= 4.x; verified on 6.18: set in
the fw namespace, unchanged in the initial one); ``nf_conntrack_max`` is not writable
outside the initial namespace and is left alone.  The lab shortens the timeouts so
that a finished connection is destroyed (DESTROY event) within a few seconds: a TCP
connection closed with FIN stays in TIME_WAIT for ``nf_conntrack_tcp_timeout_time_wait``
(2 s here instead of 120 s), UDP/ICMP/GRE entries live 3 s after their last packet.
An expired entry is destroyed when the kernel's garbage collector gets to it (up to
a minute later) or at once when the table is listed: :func:`nfflowd.lab.expire`.
:func:`nfflowd.lab.flush` (``conntrack -F``) destroys everything, expired or not.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass

DEFAULT_PREFIX = "nfflowd-lab-"
ROLES = ("client", "fw", "server")

#: Applied in the fw namespace (all per-netns; see the module docstring).
FW_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.netfilter.nf_conntrack_acct": "1",
    "net.netfilter.nf_conntrack_timestamp": "1",
    "net.netfilter.nf_conntrack_tcp_timeout_time_wait": "2",
    "net.netfilter.nf_conntrack_tcp_timeout_close": "2",
    "net.netfilter.nf_conntrack_tcp_timeout_fin_wait": "2",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait": "2",
    "net.netfilter.nf_conntrack_tcp_timeout_last_ack": "2",
    "net.netfilter.nf_conntrack_udp_timeout": "3",
    "net.netfilter.nf_conntrack_udp_timeout_stream": "3",
    "net.netfilter.nf_conntrack_icmp_timeout": "3",
    "net.netfilter.nf_conntrack_icmpv6_timeout": "3",
    "net.netfilter.nf_conntrack_gre_timeout": "3",
    "net.netfilter.nf_conntrack_gre_timeout_stream": "3",
    "net.netfilter.nf_conntrack_generic_timeout": "3",
}

#: The longest of those timeouts (s): every lab entry has expired this long after the mix.
MAX_TIMEOUT = 3.0

NO_DAD = ("net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")

FW_RULESET = """\
table inet nfflowd_lab {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "wan0" ip daddr $fw_pub4 tcp dport $fwd_port dnat ip to $client4:$fwd_to_port
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" ip saddr $client4 masquerade
        oifname "wan0" ip6 saddr $client6 masquerade
    }
}
"""

SERVER_RULESET = """\
table inet nfflowd_lab {
    chain input {
        type filter hook input priority filter; policy accept;
        udp dport $drop_port drop
    }
}
"""


@dataclass(frozen=True)
class Lab:
    """A lab's namespace names and the addresses the traffic mix uses."""

    prefix: str
    client: str
    fw: str
    server: str
    client4: str = "10.0.1.2"  # SNAT to fw_pub4
    client4_nonat: str = "10.0.1.3"  # routed as is
    fw_priv4: str = "10.0.1.1"
    fw_pub4: str = "203.0.113.1"
    server4: str = "203.0.113.2"
    client6: str = "fd00:1::2"  # NAT66 to fw_pub6
    client6_nonat: str = "fd00:1::3"
    fw_priv6: str = "fd00:1::1"
    fw_pub6: str = "2001:db8:1::1"
    server6: str = "2001:db8:1::2"
    fwd_port: int = 8080  # fw_pub4:fwd_port -> client4:fwd_to_port
    fwd_to_port: int = 80
    drop_port: int = 5999  # UDP port the server drops silently

    @classmethod
    def named(cls, prefix: str = DEFAULT_PREFIX) -> Lab:
        return cls(prefix, prefix + "client", prefix + "fw", prefix + "server")

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.client, self.fw, self.server)


def topology(lab: Lab) -> list[list[str]]:
    """The ``ip`` commands that create the veths, addresses, links and routes, in order."""
    c, f, s = (["ip", "-n", ns] for ns in lab.namespaces)
    cmds = [
        [*c, "link", "add", "eth0", "type", "veth", "peer", "name", "lan0", "netns", lab.fw],
        [*f, "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", lab.server],
        [*c, "addr", "add", f"{lab.client4}/24", "dev", "eth0"],
        [*c, "addr", "add", f"{lab.client4_nonat}/24", "dev", "eth0"],
        [*c, "addr", "add", f"{lab.client6}/64", "dev", "eth0", "nodad"],
        [*c, "addr", "add", f"{lab.client6_nonat}/64", "dev", "eth0", "nodad"],
        [*f, "addr", "add", f"{lab.fw_priv4}/24", "dev", "lan0"],
        [*f, "addr", "add", f"{lab.fw_priv6}/64", "dev", "lan0", "nodad"],
        [*f, "addr", "add", f"{lab.fw_pub4}/24", "dev", "wan0"],
        [*f, "addr", "add", f"{lab.fw_pub6}/64", "dev", "wan0", "nodad"],
        [*s, "addr", "add", f"{lab.server4}/24", "dev", "eth0"],
        [*s, "addr", "add", f"{lab.server6}/64", "dev", "eth0", "nodad"],
    ]
    links = ((c, "lo"), (c, "eth0"), (f, "lo"), (f, "lan0"), (f, "wan0"), (s, "lo"), (s, "eth0"))
    cmds += [[*ns, "link", "set", dev, "up"] for ns, dev in links]
    cmds += [
        [*c, "route", "add", "default", "via", lab.fw_priv4],
        [*c, "-6", "route", "add", "default", "via", lab.fw_priv6],
        [*s, "route", "add", "10.0.1.0/24", "via", lab.fw_pub4],
        [*s, "-6", "route", "add", "fd00:1::/64", "via", lab.fw_pub6],
    ]
    return cmds


def ruleset(template: str, lab: Lab) -> str:
    """``FW_RULESET`` or ``SERVER_RULESET`` with this lab's addresses and ports filled in."""
    return string.Template(template).substitute(asdict(lab))  # $names: Lab fields
