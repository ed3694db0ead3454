"""Datagrams as a pcap file, for decoders that read captures (tshark's cflow dissector).

The v5 and the v9/IPFIX decoder tests both feed tshark our datagrams without a
capture privilege or a live socket: a file of raw IPv4/UDP packets is enough.
"""

from __future__ import annotations

import struct
from pathlib import Path

from tests.addresses import a


def write_pcap(path: Path, payloads: list[bytes], dport: int) -> None:
    """A pcap (LINKTYPE_RAW) of UDP/IPv4 packets 127.0.0.2:40000 -> 127.0.0.1:dport."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)]
    for i, data in enumerate(payloads):
        udp = struct.pack("!HHHH", 40000, dport, 8 + len(data), 0) + data
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0, a("127.0.0.2"), a("127.0.0.1")
        )
        words = sum(struct.unpack("!10H", hdr))
        while words > 0xFFFF:
            words = (words & 0xFFFF) + (words >> 16)
        ip = hdr[:10] + struct.pack("!H", ~words & 0xFFFF) + hdr[12:] + udp
        out.append(struct.pack("<IIII", 1_700_000_000 + i, 0, len(ip), len(ip)) + ip)
    path.write_bytes(b"".join(out))
