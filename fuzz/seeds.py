#!/usr/bin/env python3
"""Writes seed inputs for the `pipeline` fuzz target into a directory (default
fuzz/seeds/pipeline): frames that take the paths the primed service flow opens
(see fuzz_targets/pipeline.rs). A backend's SYN-ACK and ICMP port unreachable,
bridged from pod 10.244.1.3 and through the tunnel from 10.244.2.2 (Maglev
picks one of the two for the primed flow), and a later fragment of the primed
datagram. The first byte is the target's selector: the ingress, with the top
bit set so the harness fixes the IPv4 header checksum after mutation."""
import os
import struct
import sys


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src, dst, proto, payload, ident=0x1234, frag=0):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, frag, 64, proto, 0, bytes(src), bytes(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload


def icmp(kind, code, body):
    m = struct.pack("!BBHI", kind, code, 0, 0) + body
    return m[:2] + struct.pack("!H", csum(m)) + m[4:]


def synack(src, dst):
    return ipv4(src, dst, 6, struct.pack("!HHIIBBHHH", 8080, 40000, 9, 2, 0x50, 0x12, 0xFFFF, 0, 0))


POD1, POD2, REMOTE, VIP = [10, 244, 1, 2], [10, 244, 1, 3], [10, 244, 2, 2], [10, 96, 1, 0]
GW, MAC1, MAC2 = bytes([0x0A, 0x58, 10, 244, 1, 1]), bytes([0x0A, 0x58, 10, 244, 1, 2]), bytes([0x0A, 0x58, 10, 244, 1, 3])
VTEP1, VTEP2 = bytes([0x0A, 0x58, 198, 18, 0, 1]), bytes([0x0A, 0x58, 198, 18, 0, 2])
VNET = b"\0" * 10
VXLAN = struct.pack("!BBHI", 0x08, 0, 0, 1 << 8)
ETH_IP = b"\x08\x00"


def error_from(backend):
    quote = ipv4(POD1, backend, 6, struct.pack("!HHI", 40000, 8080, 1) + b"\0" * 12, frag=0x2000)
    return ipv4(backend, POD1, 1, icmp(3, 3, quote))


SEEDS = {
    "synack_local": bytes([0x82]) + VNET + MAC1 + MAC2 + ETH_IP + synack(POD2, POD1),
    "icmp_local": bytes([0x82]) + VNET + MAC1 + MAC2 + ETH_IP + error_from(POD2),
    "synack_tunnel": bytes([0x83]) + VXLAN + VTEP1 + VTEP2 + ETH_IP + synack(REMOTE, POD1),
    "icmp_tunnel": bytes([0x83]) + VXLAN + VTEP1 + VTEP2 + ETH_IP + error_from(REMOTE),
    "later_fragment": bytes([0x81]) + VNET + GW + MAC1 + ETH_IP + ipv4(POD1, VIP, 6, b"\xab" * 8, frag=1),
}

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "seeds", "pipeline")
    os.makedirs(out, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds in {out}")
