"""Bytes NetFlow v9 and IPFIX encode alike, as hex, for the layout-by-hand tests.

Both announce the same IPv4 template and encode a record with it byte for byte
the same; only the headers, the IPv6 template and the padding differ.
"""

from __future__ import annotations


def hex_digits(text: str) -> str:
    """*text* without its white space: hex bytes written in readable groups."""
    return "".join(text.split())


#: The IPv4 flow template (id 256) as v9 and IPFIX announce it: 18 fields (id, length).
TEMPLATE_V4_HEX = hex_digits(
    "0100 0012 00080004 000c0004 00070002 00200002 000b0002 00040001 003d0001 00880001"
    " 00020008 00010008 00980008 00990008 000a0004 000e0004 00e10004 00e20004"
    " 00e30002 00e40002"
)
#: ``snat_record(first=1795713179211, last=1795713184317)`` as v9 and IPFIX encode it
#: with that template: addresses, ports, proto, ..., counters, times, interfaces, post-NAT.
SNAT_RECORD_V4_HEX = hex_digits(
    "0a000001 cb007105 04d2 0000 01bb 06 00 03"
    " 000000000000000a 00000000000003e8 000001a218d89e4b 000001a218d8b23d"
    " 00000000 00000000 c6336401 cb007105 9c40 01bb"
)
