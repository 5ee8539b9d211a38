//! VXLAN encapsulation (RFC 7348) of routed IPv4 packets, and what it takes to make
//! them fit the underlay: software TSO, IPv4 fragmentation, checksum completion.
//!
//! In full: docs/dataplane.md, "VXLAN encapsulation, software TSO and fragmentation".

use crate::drops::drop_for;
use crate::drops::DropReason;
use crate::wire::checksum;
use crate::wire::tcp::{pseudo_header_partial, pseudo_header_sum, TCP_CWR, TCP_FIN, TCP_PSH};
use crate::wire::{
    EtherType, EthernetFrame, EthernetRepr, IpProtocol, Ipv4Packet, MacAddr, TcpPacket, UdpPacket,
    VxlanPacket, VxlanRepr, ETHERNET_HEADER_LEN, IPV4_MIN_HEADER_LEN, VXLAN_HEADER_LEN,
};

/// Bytes in front of the inner IPv4 packet in each datagram: VXLAN + inner Ethernet.
pub const ENCAP_PREFIX_LEN: usize = VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN;

/// The outer framing towards one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encap {
    /// The VXLAN network identifier (1 in a flannel cluster).
    pub vni: u32,
    /// Our VTEP MAC: the inner source MAC.
    pub src_mac: MacAddr,
    /// The peer's VTEP MAC: the inner destination MAC.
    pub dst_mac: MacAddr,
}

impl Encap {
    /// Writes the VXLAN header and the inner Ethernet header into
    /// `buf[..ENCAP_PREFIX_LEN]`; `ReplyTooLarge` if `buf` is shorter.
    pub fn write_prefix(&self, buf: &mut [u8]) -> Result<(), DropReason> {
        let prefix = buf
            .get_mut(..ENCAP_PREFIX_LEN)
            .ok_or(DropReason::ReplyTooLarge)?;
        let mut vx = VxlanPacket::new_unchecked(prefix);
        VxlanRepr { vni: self.vni }.emit(&mut vx);
        EthernetRepr {
            src_addr: self.src_mac,
            dst_addr: self.dst_mac,
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut EthernetFrame::new_unchecked(vx.payload_mut()));
        Ok(())
    }
}

/// Where a run of datagrams ended up in `out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagrams {
    /// Bytes used from the start of `out`.
    pub len: usize,
    /// Length of every datagram but the last (which may be shorter).
    pub segment_len: usize,
    /// Number of datagrams.
    pub count: usize,
}

/// Encapsulates one IPv4 packet (`ip` is exactly the packet: `total_len` bytes).
pub fn encapsulate(enc: &Encap, ip: &[u8], out: &mut [u8]) -> Result<Datagrams, DropReason> {
    let len = ENCAP_PREFIX_LEN + ip.len();
    let buf = out.get_mut(..len).ok_or(DropReason::ReplyTooLarge)?;
    enc.write_prefix(buf)?;
    if let Some(dst) = buf.get_mut(ENCAP_PREFIX_LEN..) {
        dst.copy_from_slice(ip);
    }
    Ok(Datagrams {
        len,
        segment_len: len,
        count: 1,
    })
}

/// Splits the IPv4 packet `ip` (exactly `total_len` bytes, DF clear) into fragments of
/// at most `mtu` bytes, one datagram each. An already-fragmented packet is
/// fragmented further (offsets add up; the last piece keeps the original MF).
/// `PacketTooBig` if `mtu` leaves no room for 8 payload bytes after the header.
pub fn fragment(
    enc: &Encap,
    ip: &[u8],
    mtu: usize,
    out: &mut [u8],
) -> Result<Datagrams, DropReason> {
    let pkt = Ipv4Packet::new_checked(ip).map_err(drop_for)?;
    let hlen = pkt.header_len();
    let payload = pkt.payload();
    let chunk = (mtu.saturating_sub(hlen) / 8) * 8;
    if chunk == 0 {
        return Err(DropReason::PacketTooBig);
    }
    let base_offset = usize::from(pkt.frag_offset());
    let last_mf = pkt.more_frags();
    let count = payload.len().div_ceil(chunk).max(1);
    let segment_len = ENCAP_PREFIX_LEN + hlen + chunk.min(payload.len());
    let total = ENCAP_PREFIX_LEN * count + hlen * count + payload.len();
    if total > out.len() {
        return Err(DropReason::ReplyTooLarge);
    }
    let header = pkt.header();
    let mut at = 0;
    let mut pieces = payload.chunks(chunk);
    for k in 0..count {
        let piece = pieces.next().unwrap_or(&[]);
        let len = ENCAP_PREFIX_LEN + hlen + piece.len();
        let inner = carve(enc, out, at, header, piece)?;
        if k > 0 {
            if let Some(hdr) = inner.get_mut(..hlen) {
                nop_uncopied_options(hdr);
            }
        }
        let offset = u16::try_from(base_offset + k * chunk).map_err(|_| DropReason::BadHeader)?;
        let total_len = u16::try_from(hlen + piece.len()).map_err(|_| DropReason::BadHeader)?;
        let is_last = at + len == total;
        let mut p = Ipv4Packet::new_unchecked(inner);
        p.set_total_len(total_len);
        p.set_fragment(false, !is_last || last_mf, offset);
        p.fill_checksum();
        at += len;
    }
    Ok(Datagrams {
        len: total,
        segment_len,
        count,
    })
}

/// Writes one datagram at `out[at..]` — the encapsulation prefix, then `header`,
/// then `piece` — and returns the part after the prefix (the inner IPv4 packet).
/// Shared by fragmentation and software TSO, which differ only in how they
/// adjust the copied headers.
fn carve<'o>(
    enc: &Encap,
    out: &'o mut [u8],
    at: usize,
    header: &[u8],
    piece: &[u8],
) -> Result<&'o mut [u8], DropReason> {
    let len = ENCAP_PREFIX_LEN + header.len() + piece.len();
    let dgram = out.get_mut(at..at + len).ok_or(DropReason::ReplyTooLarge)?;
    enc.write_prefix(dgram)?;
    let inner = dgram
        .get_mut(ENCAP_PREFIX_LEN..)
        .ok_or(DropReason::ReplyTooLarge)?;
    let (hdr, body) = inner.split_at_mut(header.len());
    hdr.copy_from_slice(header);
    body.copy_from_slice(piece);
    Ok(inner)
}

/// Overwrites, in an IPv4 header, every option whose "copied" bit (0x80) is clear with
/// NOPs (RFC 791: only copied options go into fragments after the first). A malformed
/// option list is NOPed from the bad option on.
fn nop_uncopied_options(hdr: &mut [u8]) {
    const EOL: u8 = 0;
    const NOP: u8 = 1;
    let Some(opts) = hdr.get_mut(IPV4_MIN_HEADER_LEN..) else {
        return;
    };
    let mut i = 0;
    while let Some(&kind) = opts.get(i) {
        match kind {
            EOL => return,
            NOP => i += 1,
            _ => {
                let len = usize::from(opts.get(i + 1).copied().unwrap_or(0));
                match opts.get_mut(i..i + len) {
                    Some(opt) if len >= 2 => {
                        if kind & 0x80 == 0 {
                            opt.fill(NOP);
                        }
                        i += len;
                    }
                    _ => {
                        if let Some(rest) = opts.get_mut(i..) {
                            rest.fill(NOP);
                        }
                        return;
                    }
                }
            }
        }
    }
}

/// Software TSO: cuts the IPv4/TCP packet `ip` (exactly `total_len` bytes) into
/// segments of `mss` payload bytes, one datagram each, with fresh IPv4 and TCP
/// checksums (any partial checksum in the input is ignored). `UnsupportedGso` for a
/// non-TCP packet or a fragment; `mss` 0 is treated as 1.
pub fn segment_tcp(
    enc: &Encap,
    ip: &[u8],
    mss: usize,
    out: &mut [u8],
) -> Result<Datagrams, DropReason> {
    let pkt = Ipv4Packet::new_checked(ip).map_err(drop_for)?;
    if pkt.protocol() != IpProtocol::Tcp || pkt.is_fragment() {
        return Err(DropReason::UnsupportedGso);
    }
    let tcp = TcpPacket::new_checked(pkt.payload()).map_err(drop_for)?;
    let mss = mss.max(1);
    let ip_hdr = pkt.header();
    let hdrs = ip_hdr.len() + tcp.header().len();
    // The IPv4 and TCP headers lie back to back at the start of the packet.
    let headers = ip.get(..hdrs).ok_or(DropReason::Truncated)?;
    let payload = tcp.payload();
    let count = payload.len().div_ceil(mss).max(1);
    let segment_len = ENCAP_PREFIX_LEN + hdrs + mss.min(payload.len());
    let total = (ENCAP_PREFIX_LEN + hdrs) * count + payload.len();
    if total > out.len() {
        return Err(DropReason::ReplyTooLarge);
    }
    let (src, dst) = (pkt.src_addr(), pkt.dst_addr());
    let (ident, seq, flags) = (pkt.ident(), tcp.seq_number(), tcp.flags());
    let mut at = 0;
    let mut pieces = payload.chunks(mss);
    for k in 0..count {
        let piece = pieces.next().unwrap_or(&[]);
        let len = ENCAP_PREFIX_LEN + hdrs + piece.len();
        let inner = carve(enc, out, at, headers, piece)?;
        let (_, seg) = inner.split_at_mut(ip_hdr.len());

        let last = k + 1 == count;
        let mut f = flags;
        if !last {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if k > 0 {
            f &= !TCP_CWR;
        }
        // k < count <= 65,535 and k * mss < 65,535: both fit their fields.
        let k16 = u16::try_from(k).unwrap_or(u16::MAX);
        let advance = u32::try_from(k * mss).unwrap_or(u32::MAX);
        let mut t = TcpPacket::new_unchecked(&mut *seg);
        t.set_seq_number(seq.wrapping_add(advance));
        t.set_flags(f);
        t.set_checksum(0);
        let sum = checksum::accumulate(pseudo_header_sum(src, dst, 6, seg.len()), seg);
        TcpPacket::new_unchecked(&mut *seg).set_checksum(!checksum::fold(sum));

        let total_len = u16::try_from(hdrs + piece.len()).map_err(|_| DropReason::BadHeader)?;
        let mut p = Ipv4Packet::new_unchecked(inner);
        p.set_total_len(total_len);
        p.set_ident(ident.wrapping_add(k16));
        p.fill_checksum();
        at += len;
    }
    Ok(Datagrams {
        len: total,
        segment_len,
        count,
    })
}

/// Finishes a partial L4 checksum in place (virtio `NEEDS_CSUM`): sums
/// `frame[csum_start..end]` — the field already holds the pseudo-header sum — and stores
/// the complement at `csum_start + csum_offset`. A result of 0 is stored as 0xffff
/// (RFC 768: 0 means "no checksum" for UDP; the same value for TCP), as the kernel's
/// `skb_checksum_help` does. `BadVnetHeader` if the field is not inside
/// `frame[..end]`.
pub fn complete_partial_checksum(
    frame: &mut [u8],
    csum_start: usize,
    csum_offset: usize,
    end: usize,
) -> Result<(), DropReason> {
    let field = csum_start + csum_offset;
    if field + 2 > end {
        return Err(DropReason::BadVnetHeader);
    }
    let region = frame
        .get(csum_start..end)
        .ok_or(DropReason::BadVnetHeader)?;
    let sum = match !checksum::fold(checksum::accumulate(0, region)) {
        0 => 0xffff,
        s => s,
    };
    let dst = frame
        .get_mut(field..field + 2)
        .ok_or(DropReason::BadVnetHeader)?;
    dst.copy_from_slice(&sum.to_be_bytes());
    Ok(())
}

/// What [`settle_l4_checksum`] found (and did) in a decapsulated packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Checksum {
    /// Not looked at: not TCP or UDP, a fragment, or an L4 header too short or
    /// inconsistent to check (the receiving kernel judges and drops those). Deliver
    /// with virtio-net flags 0, as before.
    Unchecked,
    /// UDP with checksum 0: the sender computed none (RFC 768), nothing to verify.
    /// Delivered with `DATA_VALID`, which changes nothing for the receiver: Linux
    /// marks such a datagram `CHECKSUM_UNNECESSARY` itself (`udp4_csum_init`).
    Absent,
    /// The checksum verified.
    Valid,
    /// The checksum was partial (the pseudo-header sum only) and has been completed.
    Completed,
}

impl L4Checksum {
    /// `true` if the packet may be delivered with `VIRTIO_NET_HDR_F_DATA_VALID`.
    pub const fn data_valid(self) -> bool {
        !matches!(self, L4Checksum::Unchecked)
    }
}

/// Checks the TCP or UDP checksum of the IPv4 packet `ip` (exactly `total_len` bytes,
/// e.g. decapsulated from the tunnel) before local delivery, and completes it in place
/// if the sender left it partial (see the module docs for why that happens).
/// `Err(BadInnerChecksum)` if it is neither right nor partial. One pass over the
/// segment: the completed checksum is derived from the failed verification's sum.
pub fn settle_l4_checksum(ip: &mut [u8]) -> Result<L4Checksum, DropReason> {
    let (hlen, len, full, tcp) = {
        let Ok(p) = Ipv4Packet::new_checked(&*ip) else {
            return Ok(L4Checksum::Unchecked);
        };
        if p.is_fragment() {
            return Ok(L4Checksum::Unchecked);
        }
        let l4 = p.payload();
        let (seg, stored, tcp) = match p.protocol() {
            IpProtocol::Tcp => match TcpPacket::new_checked(l4) {
                Ok(t) => (l4, t.checksum(), true),
                Err(_) => return Ok(L4Checksum::Unchecked),
            },
            IpProtocol::Udp => match UdpPacket::new_checked(l4) {
                Ok(u) if u.checksum() == 0 => return Ok(L4Checksum::Absent),
                // `new_checked` made sure the length field is inside `l4`.
                Ok(u) => (
                    l4.get(..usize::from(u.len())).unwrap_or(l4),
                    u.checksum(),
                    false,
                ),
                Err(_) => return Ok(L4Checksum::Unchecked),
            },
            _ => return Ok(L4Checksum::Unchecked),
        };
        let proto = if tcp { 6 } else { 17 };
        let (src, dst, len) = (p.src_addr(), p.dst_addr(), seg.len());
        let sum = checksum::fold(checksum::accumulate(
            pseudo_header_sum(src, dst, proto, len),
            seg,
        ));
        if sum == 0xffff {
            return Ok(L4Checksum::Valid);
        }
        if stored != pseudo_header_partial(src, dst, proto, len) {
            return Err(DropReason::BadInnerChecksum);
        }
        // `sum` = pseudo-header + segment with the partial value in the field; take
        // that value out again (one's-complement subtraction = adding its complement)
        // and the rest is what the checksum must cancel. 0 is sent as 0xffff, as
        // `complete_partial_checksum` and the kernel's `skb_checksum_help` do.
        let full = match !checksum::fold(u64::from(sum) + u64::from(!stored)) {
            0 => 0xffff,
            c => c,
        };
        (p.header_len(), len, full, tcp)
    };
    let seg = ip.get_mut(hlen..hlen + len).ok_or(DropReason::Truncated)?;
    if tcp {
        TcpPacket::new_unchecked(seg).set_checksum(full);
    } else {
        UdpPacket::new_unchecked(seg).set_checksum(full);
    }
    Ok(L4Checksum::Completed)
}

#[cfg(test)]
#[path = "vxlan_tests.rs"]
mod tests;
