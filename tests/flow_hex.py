"""Bytes NetFlow v9 and IPFIX encode alike, as hex, for the layout-by-hand tests.

Both announce the same IPv4 template and encode a record with it byte for byte
the same up to the post-NAT ports; then IPFIX has flowId (the conntrack id),
which v9 leaves out, and both the conntrack zone as ingressVRFID and egressVRFID.
Only these tails, the headers, the IPv6 template and the padding differ.
"""

from __future__ import annotations


def hex_digits(text: str) -> str:
    """*text* without its white space: hex bytes written in readable groups."""
    return "".join(text.split())


#: The IPv4 flow template's (id 256) first 18 fields (id, length), v9 and IPFIX alike.
_TEMPLATE_V4_FIELDS = (
    "00080004 000c0004 00070002 00200002 000b0002 00040001 003d0001 00880001"
    " 00020008 00010008 00980008 00990008 000a0004 000e0004 00e10004 00e20004"
    " 00e30002 00e40002"
)
#: The IPv4 flow template as IPFIX announces it: 21 fields, the last flowId 148
#: (8 bytes), ingressVRFID 234 and egressVRFID 235 (4 bytes each).
TEMPLATE_V4_HEX = hex_digits(f"0100 0015 {_TEMPLATE_V4_FIELDS} 00940008 00ea0004 00eb0004")
#: As v9 announces it: 20 fields, without flowId.
TEMPLATE_V4_HEX_V9 = hex_digits(f"0100 0014 {_TEMPLATE_V4_FIELDS} 00ea0004 00eb0004")
#: ``snat_record(first=1795713179211, last=1795713184317, zone=9)`` up to its post-NAT
#: ports: addresses, ports, proto, ..., counters, times, interfaces, post-NAT.  69 bytes.
_SNAT_RECORD_V4 = (
    "0a000001 cb007105 04d2 0000 01bb 06 00 03"
    " 000000000000000a 00000000000003e8 000001a218d89e4b 000001a218d8b23d"
    " 00000000 00000000 c6336401 cb007105 9c40 01bb"
)
#: That record as IPFIX encodes it: then its conntrack id 77 (flowId, 8 bytes) and
#: zone 9 (ingressVRFID, egressVRFID).  85 bytes.
SNAT_RECORD_V4_HEX = hex_digits(f"{_SNAT_RECORD_V4} 000000000000004d 00000009 00000009")
#: As v9 encodes it: zone 9 twice, no flowId.  77 bytes.
SNAT_RECORD_V4_HEX_V9 = hex_digits(f"{_SNAT_RECORD_V4} 00000009 00000009")
