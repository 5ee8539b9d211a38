//! The data plane's hash functions, each stable across versions (pinned by tests):
//! Maglev's backend choice, the tunnel's outer source port, table hashers.

use core::hash::Hasher;
use core::net::Ipv4Addr;

use crate::types::L4Proto;
use crate::wire::{IpProtocol, Ipv4Packet};

/// murmur3's 64-bit finaliser: a bijection that spreads every input bit.
#[inline]
pub(crate) const fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// murmur3's 32-bit finaliser: a bijection that spreads every input bit.
#[inline]
const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// A hasher for the packed `u64` keys of [`crate::ServiceTable`]: [`fmix64`]. Not keyed:
/// only the control thread inserts.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8)) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 ^= v;
    }

    fn write_u32(&mut self, v: u32) {
        self.0 ^= u64::from(v);
    }

    fn finish(&self) -> u64 {
        fmix64(self.0)
    }
}

/// The flow hash Maglev is indexed with for [`crate::Affinity::None`]. Stable (pinned by the
/// pipeline's golden test through [`crate::ServiceTable::pick`]).
#[inline]
pub fn backend_hash(client: (Ipv4Addr, u16), vip: Ipv4Addr, port: u16, proto: L4Proto) -> u64 {
    let a = (u64::from(client.0.to_bits()) << 32) | u64::from(vip.to_bits());
    let b = (u64::from(client.1) << 32) | (u64::from(port) << 8) | u64::from(proto.number());
    fmix64(fmix64(a) ^ b)
}

/// The hash for [`crate::Affinity::ClientIp`]: the client address alone.
#[inline]
pub fn client_hash(client: Ipv4Addr) -> u64 {
    fmix64(u64::from(client.to_bits()) ^ 0x636c_6965_6e74_4950) // "clientIP"
}

/// A hash of the inner flow for the outer UDP source port: source and destination
/// address, protocol, and for TCP and UDP the two ports — but only in unfragmented
/// packets. Fragments (first included) hash without ports, so all pieces of one
/// datagram take the same outer port and path and are not reordered (Linux's flow
/// dissector likewise stops at a fragment). Stable across versions: pinned by a test.
pub fn flow_hash(ip: &Ipv4Packet<&[u8]>) -> u32 {
    let proto = u8::from(ip.protocol());
    let ports = match ip.protocol() {
        IpProtocol::Tcp | IpProtocol::Udp if !ip.is_fragment() => {
            let p = ip.payload();
            match p.get(..4) {
                Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
                _ => 0,
            }
        }
        _ => 0,
    };
    flow_hash_of(ip.src_addr(), ip.dst_addr(), proto, ports)
}

/// [`flow_hash`] from its parts (`ports` = source port << 16 | destination port).
pub const fn flow_hash_of(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, ports: u32) -> u32 {
    let mut h = 0x9e37_79b9u32;
    h = fmix32(h ^ src.to_bits());
    h = fmix32(h.rotate_left(7) ^ dst.to_bits());
    h = fmix32(h.rotate_left(7) ^ protocol as u32);
    fmix32(h.rotate_left(7) ^ ports)
}
