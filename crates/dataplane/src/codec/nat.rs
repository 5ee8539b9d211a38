//! In-place address and port rewriting (NAT) of IPv4 TCP/UDP packets, with incremental
//! checksum updates (RFC 1624): what the service load balancer does to each packet of
//! a flow (DNAT towards the backend, un-DNAT of its replies, SNAT for hairpin).
//!
//! Three checksums are involved:
//!
//! - the IPv4 header checksum covers the addresses: updated for each changed word;
//! - a **full** TCP/UDP checksum covers the pseudo-header (both addresses) and the
//!   ports: updated as `HC' = ~(~HC + ~m + m')` for every changed 16-bit word (RFC 1624
//!   eqn. 3). A UDP checksum of 0 means "none" (RFC 768) and stays 0; a computed 0 is
//!   stored as 0xffff;
//! - a **partial** checksum (virtio-net `NEEDS_CSUM`: a TAP with checksum offload, and
//!   every TSO/GSO frame) holds only the *uncomplemented* folded pseudo-header sum;
//!   whoever finishes it sums everything from `csum_start` (ports included) on top.
//!   So only the address change is applied, and in the uncomplemented sense:
//!   `P' = P + ~m + m'` — applying the port change too would count it twice. For a GSO
//!   frame this one update is right for every segment the kernel or our software TSO
//!   cuts from it: segments differ from the frame only in length and sequence, not in
//!   addresses. The virtio-net header is left as it was.
//!
//! The packet's lengths never change, so `csum_start`, `csum_offset` and the GSO
//! fields stay valid.

use core::net::Ipv4Addr;

use crate::drops::{drop_for, DropReason};
use crate::wire::checksum;
use crate::wire::{IpProtocol, Ipv4Packet, TcpPacket, UdpPacket, UDP_HEADER_LEN};

/// How the packet's L4 checksum field is to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Sum {
    /// A complete checksum (or UDP's 0, "none").
    Full,
    /// A partial one: the uncomplemented pseudo-header sum (virtio `NEEDS_CSUM`).
    Partial,
}

/// An endpoint: address and port.
pub type Endpoint = (Ipv4Addr, u16);

/// One's-complement sum of `~old + new` over the 16-bit words of two addresses.
#[inline]
fn addr_delta(old: Ipv4Addr, new: Ipv4Addr) -> u64 {
    let [a, b, c, d] = old.octets();
    let [e, f, g, h] = new.octets();
    u64::from(!u16::from_be_bytes([a, b]))
        + u64::from(!u16::from_be_bytes([c, d]))
        + u64::from(u16::from_be_bytes([e, f]))
        + u64::from(u16::from_be_bytes([g, h]))
}

/// Stores `src` and `dst` in the IPv4 header `hdr` and updates its checksum by
/// `delta`, the [`addr_delta`] of both addresses.
fn set_addresses(hdr: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, delta: u64) {
    let mut p = Ipv4Packet::new_unchecked(hdr);
    let hsum = checksum::fold(u64::from(!p.checksum()) + delta);
    p.set_src_addr(src);
    p.set_dst_addr(dst);
    p.set_checksum(!hsum);
}

/// A full L4 checksum `old` after the addresses changed by `addrs` ([`addr_delta`])
/// and the ports from `old_ports` to `new_ports` (RFC 1624).
fn full_sum(old: u16, addrs: u64, old_ports: (u16, u16), new_ports: (u16, u16)) -> u16 {
    let ports = u64::from(!old_ports.0)
        + u64::from(new_ports.0)
        + u64::from(!old_ports.1)
        + u64::from(new_ports.1);
    !checksum::fold(u64::from(!old) + addrs + ports)
}

/// The facts of an IPv4 header that NAT needs, read once by whoever checked it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addressing {
    pub header_len: usize,
    pub total_len: usize,
    pub proto: IpProtocol,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// A fragment after the first (no L4 header to rewrite).
    pub later_fragment: bool,
}

impl Addressing {
    /// Checks the IPv4 header at the start of `ip` and reads its facts.
    pub fn parse(ip: &[u8]) -> Result<Addressing, DropReason> {
        let p = Ipv4Packet::new_checked(ip).map_err(drop_for)?;
        Ok(Addressing {
            header_len: p.header_len(),
            total_len: usize::from(p.total_len()),
            proto: p.protocol(),
            src: p.src_addr(),
            dst: p.dst_addr(),
            later_fragment: p.frag_offset() != 0,
        })
    }
}

/// Rewrites the source to `src` and the destination to `dst` of the IPv4 TCP or UDP
/// packet at the start of `ip` (which may run past the total length: padding),
/// updating the IPv4 checksum and the L4 checksum as `sum` says. Errors: not an
/// unfragmented TCP/UDP packet with its L4 header (`UnsupportedProtocol`, `Truncated`,
/// `BadHeader`). Nothing is changed on error.
#[cfg(test)]
pub fn rewrite(ip: &mut [u8], src: Endpoint, dst: Endpoint, sum: L4Sum) -> Result<(), DropReason> {
    let a = Addressing::parse(ip)?;
    rewrite_checked(ip, &a, src, dst, sum)
}

/// `rewrite` of a packet whose header was already checked and read into `a`.
pub fn rewrite_checked(
    ip: &mut [u8],
    a: &Addressing,
    src: Endpoint,
    dst: Endpoint,
    sum: L4Sum,
) -> Result<(), DropReason> {
    if a.later_fragment {
        return Err(DropReason::UnsupportedProtocol);
    }
    let (hlen, total, proto, old_src, old_dst) = (a.header_len, a.total_len, a.proto, a.src, a.dst);
    let ip = ip.get_mut(..total).ok_or(DropReason::Truncated)?;
    let addrs = addr_delta(old_src, src.0) + addr_delta(old_dst, dst.0);
    let (ip_hdr, l4) = ip.split_at_mut(hlen.min(ip.len()));
    match proto {
        IpProtocol::Tcp => {
            let mut t = TcpPacket::new_checked(&mut *l4).map_err(drop_for)?;
            let old = t.checksum();
            let new = match sum {
                L4Sum::Partial => checksum::fold(u64::from(old) + addrs),
                L4Sum::Full => full_sum(old, addrs, (t.src_port(), t.dst_port()), (src.1, dst.1)),
            };
            t.set_src_port(src.1);
            t.set_dst_port(dst.1);
            t.set_checksum(new);
        }
        IpProtocol::Udp => {
            if l4.len() < UDP_HEADER_LEN {
                return Err(DropReason::Truncated);
            }
            let mut u = UdpPacket::new_unchecked(&mut *l4);
            let old = u.checksum();
            let new = match sum {
                L4Sum::Partial => checksum::fold(u64::from(old) + addrs),
                L4Sum::Full if old == 0 => 0,
                L4Sum::Full => {
                    match full_sum(old, addrs, (u.src_port(), u.dst_port()), (src.1, dst.1)) {
                        0 => 0xffff,
                        s => s,
                    }
                }
            };
            u.set_src_port(src.1);
            u.set_dst_port(dst.1);
            u.set_checksum(new);
        }
        _ => return Err(DropReason::UnsupportedProtocol),
    }
    set_addresses(ip_hdr, src.0, dst.0, addrs);
    Ok(())
}

/// Rewrites the addresses of the IPv4 packet at the start of `ip`, whose header was
/// checked and read into `a`, and updates its header checksum, nothing else: for a
/// fragment after the first, which holds no L4 header (the L4 checksum was updated in
/// the first fragment).
pub fn rewrite_addresses_checked(ip: &mut [u8], a: &Addressing, src: Ipv4Addr, dst: Ipv4Addr) {
    let delta = addr_delta(a.src, src) + addr_delta(a.dst, dst);
    set_addresses(ip, src, dst, delta);
}

/// The big-endian 16-bit field at `at` of `b`, if `b` holds it.
fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2)
        .and_then(|f| <[u8; 2]>::try_from(f).ok())
        .map(u16::from_be_bytes)
}

/// The TCP or UDP packet an ICMP error quotes (RFC 792: its IPv4 header and at least
/// the first 8 bytes of its payload), as far as the quote shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub proto: IpProtocol,
    /// Its IPv4 header length.
    pub header_len: usize,
    /// A fragment (necessarily the first: later ones have no ports to quote).
    pub fragment: bool,
}

impl Quoted {
    /// Reads the quote's addresses and ports. Errors: not IPv4 (`BadHeader`), too
    /// short for its header and both ports (`Truncated`), a later fragment or neither
    /// TCP nor UDP (`UnsupportedProtocol`).
    pub fn parse(quote: &[u8]) -> Result<Quoted, DropReason> {
        let p = Ipv4Packet::new_unchecked(quote);
        if quote.len() < crate::wire::IPV4_MIN_HEADER_LEN || p.version() != 4 {
            return Err(DropReason::BadHeader);
        }
        let hlen = p.header_len();
        if hlen < crate::wire::IPV4_MIN_HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        if p.frag_offset() != 0 || !matches!(p.protocol(), IpProtocol::Tcp | IpProtocol::Udp) {
            return Err(DropReason::UnsupportedProtocol);
        }
        let (Some(sport), Some(dport)) = (be16(quote, hlen), be16(quote, hlen + 2)) else {
            return Err(DropReason::Truncated);
        };
        Ok(Quoted {
            src: (p.src_addr(), sport),
            dst: (p.dst_addr(), dport),
            proto: p.protocol(),
            header_len: hlen,
            fragment: p.is_fragment(),
        })
    }
}

/// Rewrites the packet an ICMP error quotes (RFC 792: its IPv4 header and at least
/// the first 8 bytes of its payload, here TCP or UDP) to source `src` and destination
/// `dst`, as Linux's NAT does for an error related to a translated flow
/// (`nf_nat_icmp_reply_translation`). The quote is usually cut short, so the IPv4
/// total length is not trusted: the ports are rewritten, and the L4 checksum is
/// updated only if the quote holds it (UDP: always, unless 0, "no checksum"; TCP:
/// with 18 bytes of its header). The IPv4 header checksum is updated. Errors
/// (`Truncated`, `BadHeader`, `UnsupportedProtocol`) change nothing.
pub fn rewrite_quoted(quote: &mut [u8], src: Endpoint, dst: Endpoint) -> Result<(), DropReason> {
    let q = Quoted::parse(quote)?;
    if quote.len() < q.header_len + 8 {
        return Err(DropReason::Truncated);
    }
    let proto = q.proto;
    let sum_at = if q.proto == IpProtocol::Tcp { 16 } else { 6 };
    let addrs = addr_delta(q.src.0, src.0) + addr_delta(q.dst.0, dst.0);
    let (ip_hdr, l4) = quote.split_at_mut(q.header_len);
    if let Some(old) = be16(l4, sum_at) {
        if !(proto == IpProtocol::Udp && old == 0) {
            let mut new = full_sum(old, addrs, (q.src.1, q.dst.1), (src.1, dst.1));
            if proto == IpProtocol::Udp && new == 0 {
                new = 0xffff;
            }
            if let Some(f) = l4.get_mut(sum_at..sum_at + 2) {
                f.copy_from_slice(&new.to_be_bytes());
            }
        }
    }
    if let Some(f) = l4.get_mut(0..2) {
        f.copy_from_slice(&src.1.to_be_bytes());
    }
    if let Some(f) = l4.get_mut(2..4) {
        f.copy_from_slice(&dst.1.to_be_bytes());
    }
    set_addresses(ip_hdr, src.0, dst.0, addrs);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::codec::vxlan::complete_partial_checksum;
    use crate::wire::tcp::{pseudo_header_partial, pseudo_header_sum};

    const CLIENT: Endpoint = (Ipv4Addr::new(10, 244, 1, 2), 40000);
    const VIP: Endpoint = (Ipv4Addr::new(10, 96, 0, 10), 53);
    const BACKEND: Endpoint = (Ipv4Addr::new(10, 244, 2, 7), 5353);

    /// IPv4 10.244.1.2 → 10.96.0.10, TTL 64, protocol TCP, total length 46; TCP
    /// 40000 → 53, seq 1, ack 0, data offset 5, flags SYN, window 0xffff; payload
    /// "query!". Checksums are zero here and filled by `fill`.
    static TCP_BYTES: [u8; 46] = [
        0x45, 0x00, 0x00, 0x2e, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 0x0a, 0xf4, 0x01,
        0x02, 0x0a, 0x60, 0x00, 0x0a, // IPv4
        0x9c, 0x40, 0x00, 0x35, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x50, 0x02, 0xff,
        0xff, 0x00, 0x00, 0x00, 0x00, // TCP
        b'q', b'u', b'e', b'r', b'y', b'!',
    ];

    /// The same addresses with UDP 40000 → 53, length 14, payload "query!".
    static UDP_BYTES: [u8; 34] = [
        0x45, 0x00, 0x00, 0x22, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0x0a, 0xf4, 0x01,
        0x02, 0x0a, 0x60, 0x00, 0x0a, // IPv4
        0x9c, 0x40, 0x00, 0x35, 0x00, 0x0e, 0x00, 0x00, // UDP
        b'q', b'u', b'e', b'r', b'y', b'!',
    ];

    /// Fills the IPv4 checksum and a full (or partial) L4 checksum at `at`.
    fn fill(mut b: Vec<u8>, at: usize, proto: u8, partial: bool) -> Vec<u8> {
        Ipv4Packet::new_unchecked(&mut b[..]).fill_checksum();
        b[at..at + 2].copy_from_slice(&[0, 0]);
        let (src, dst) = (
            Ipv4Addr::new(b[12], b[13], b[14], b[15]),
            Ipv4Addr::new(b[16], b[17], b[18], b[19]),
        );
        let l4_len = b.len() - 20;
        let v = if partial {
            pseudo_header_partial(src, dst, proto, l4_len)
        } else {
            !checksum::fold(checksum::accumulate(
                pseudo_header_sum(src, dst, proto, l4_len),
                &b[20..],
            ))
        };
        b[at..at + 2].copy_from_slice(&v.to_be_bytes());
        b
    }

    fn addrs(b: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
        let p = Ipv4Packet::new_checked(b).unwrap();
        (p.src_addr(), p.dst_addr())
    }

    #[test]
    fn tcp_full_checksum_dnat_and_back() {
        let orig = fill(TCP_BYTES.to_vec(), 36, 6, false);
        let mut b = orig.clone();
        rewrite(&mut b, CLIENT, BACKEND, L4Sum::Full).unwrap();
        assert_eq!(&b[16..20], &[10, 244, 2, 7]);
        assert_eq!(&b[22..24], &5353u16.to_be_bytes());
        assert_eq!(&b[20..22], &40000u16.to_be_bytes());
        assert!(Ipv4Packet::new_checked(&b[..]).unwrap().verify_checksum());
        let (s, d) = addrs(&b);
        assert!(TcpPacket::new_checked(&b[20..])
            .unwrap()
            .verify_checksum(s, d));
        // Exactly what a full recomputation gives.
        assert_eq!(b, fill(b.clone(), 36, 6, false));
        // Reverse: back to the original bytes.
        rewrite(&mut b, CLIENT, VIP, L4Sum::Full).unwrap();
        assert_eq!(b, orig);
    }

    #[test]
    fn udp_full_checksum_and_zero() {
        let orig = fill(UDP_BYTES.to_vec(), 26, 17, false);
        let mut b = orig.clone();
        rewrite(&mut b, BACKEND, CLIENT, L4Sum::Full).unwrap();
        let (s, d) = addrs(&b);
        assert_eq!((s, d), (BACKEND.0, CLIENT.0));
        assert!(UdpPacket::new_checked(&b[20..])
            .unwrap()
            .verify_checksum(s, d));
        assert!(Ipv4Packet::new_checked(&b[..]).unwrap().verify_checksum());
        // No checksum stays no checksum.
        let mut z = UDP_BYTES.to_vec();
        Ipv4Packet::new_unchecked(&mut z[..]).fill_checksum();
        rewrite(&mut z, CLIENT, BACKEND, L4Sum::Full).unwrap();
        assert_eq!(&z[26..28], &[0, 0]);
        assert!(Ipv4Packet::new_checked(&z[..]).unwrap().verify_checksum());
    }

    /// Partial checksums: only the address change is applied, uncomplemented; the
    /// field then equals the partial form for the new addresses, and finishing it as a
    /// NIC would gives a valid checksum (ports included).
    #[test]
    fn partial_checksums_follow_the_addresses_only() {
        for (bytes, at, proto) in [(&TCP_BYTES[..], 36, 6u8), (&UDP_BYTES[..], 26, 17)] {
            let mut b = fill(bytes.to_vec(), at, proto, true);
            rewrite(&mut b, CLIENT, BACKEND, L4Sum::Partial).unwrap();
            let (s, d) = addrs(&b);
            let want = pseudo_header_partial(s, d, proto, b.len() - 20);
            assert_eq!(&b[at..at + 2], &want.to_be_bytes(), "proto {proto}");
            let end = b.len();
            complete_partial_checksum(&mut b, 20, at - 20, end).unwrap();
            let l4 = &b[20..];
            let ok = if proto == 6 {
                TcpPacket::new_checked(l4).unwrap().verify_checksum(s, d)
            } else {
                UdpPacket::new_checked(l4).unwrap().verify_checksum(s, d)
            };
            assert!(ok, "proto {proto}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_rewrite() {
        let mut icmp = fill(TCP_BYTES.to_vec(), 36, 6, false);
        icmp[9] = 1;
        let before = icmp.clone();
        assert_eq!(
            rewrite(&mut icmp, CLIENT, BACKEND, L4Sum::Full),
            Err(DropReason::UnsupportedProtocol)
        );
        assert_eq!(icmp, before, "unchanged on error");
        let mut frag = fill(TCP_BYTES.to_vec(), 36, 6, false);
        frag[7] = 0x10;
        assert_eq!(
            rewrite(&mut frag, CLIENT, BACKEND, L4Sum::Full),
            Err(DropReason::UnsupportedProtocol)
        );
        let mut short = fill(TCP_BYTES.to_vec(), 36, 6, false);
        short[3] = 30; // total length 30: 10 bytes of TCP
        short.truncate(30);
        Ipv4Packet::new_unchecked(&mut short[..]).fill_checksum();
        assert_eq!(
            rewrite(&mut short, CLIENT, BACKEND, L4Sum::Full),
            Err(DropReason::Truncated)
        );
        assert_eq!(
            rewrite(&mut [0u8; 3], CLIENT, BACKEND, L4Sum::Full),
            Err(DropReason::Truncated)
        );
    }
}
