//! TCP headers (RFC 9293 §3.1), only as far as the router needs them: ports for the
//! tunnel's flow hash, and sequence number, flags and checksum for software TSO
//! (cutting a 64 KiB GSO segment into MSS-sized packets).
//!
//! `new_checked` establishes `20 <= data offset × 4 <= buffer length`. Options are
//! carried as opaque bytes inside [`TcpPacket::header`]. The checksum covers a
//! pseudo-header (source, destination, zero, protocol 6, TCP length) plus the whole
//! segment; [`pseudo_header_sum`] gives the first part so callers can add the rest,
//! and [`pseudo_header_partial`] the value a partial (offloaded) checksum holds.

use core::net::Ipv4Addr;

use super::{checksum, get_be16, get_u8, need_len, put_bytes, put_u8, Layer, WireError};

/// Length of a TCP header without options.
pub const TCP_MIN_HEADER_LEN: usize = 20;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
}

/// FIN flag.
pub const TCP_FIN: u8 = 0x01;
/// SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// RST flag.
pub const TCP_RST: u8 = 0x04;
/// PSH flag.
pub const TCP_PSH: u8 = 0x08;
/// ACK flag.
pub const TCP_ACK: u8 = 0x10;
/// URG flag.
pub const TCP_URG: u8 = 0x20;
/// ECE flag (RFC 3168).
pub const TCP_ECE: u8 = 0x40;
/// CWR flag (RFC 3168).
pub const TCP_CWR: u8 = 0x80;

/// A view of a TCP segment (header and payload).
#[derive(Clone, Copy, Debug)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps without checking; accessors on a short buffer return zeros.
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps after checking the header (options included) is inside the buffer.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Truncated` if the buffer ends inside the header; `Malformed` if the data
    /// offset is below 5.
    pub fn check_len(&self) -> Result<(), WireError> {
        let buf = self.buffer.as_ref();
        need_len(Layer::Tcp, buf, TCP_MIN_HEADER_LEN)?;
        let hlen = self.header_len();
        if hlen < TCP_MIN_HEADER_LEN {
            return Err(WireError::Malformed {
                layer: Layer::Tcp,
                what: "data offset below 5",
            });
        }
        need_len(Layer::Tcp, buf, hlen)
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        get_be16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        get_be16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        let b = self.buffer.as_ref();
        (u32::from(get_be16(b, field::SEQ)) << 16) | u32::from(get_be16(b, field::SEQ + 2))
    }

    /// Acknowledgment number.
    pub fn ack_number(&self) -> u32 {
        let b = self.buffer.as_ref();
        (u32::from(get_be16(b, field::ACK)) << 16) | u32::from(get_be16(b, field::ACK + 2))
    }

    /// Window.
    pub fn window(&self) -> u16 {
        get_be16(self.buffer.as_ref(), field::WINDOW)
    }

    /// Header length in bytes (data offset × 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(get_u8(self.buffer.as_ref(), field::DATA_OFF) >> 4) * 4
    }

    /// The flags byte (`TCP_FIN` … `TCP_CWR`).
    pub fn flags(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::FLAGS)
    }

    /// Checksum as stored.
    pub fn checksum(&self) -> u16 {
        get_be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The header, options included.
    pub fn header(&self) -> &[u8] {
        self.buffer.as_ref().get(..self.header_len()).unwrap_or(&[])
    }

    /// Everything after the header.
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(self.header_len()..).unwrap_or(&[])
    }

    /// `true` if the checksum is right for a segment between `src` and `dst` (the
    /// buffer must be exactly the segment).
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let seg = self.buffer.as_ref();
        let acc = pseudo_header_sum(src, dst, 6, seg.len());
        checksum::fold(checksum::accumulate(acc, seg)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// Sets the source port (the checksum is not updated).
    pub fn set_src_port(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::SRC_PORT, &v.to_be_bytes());
    }

    /// Sets the destination port (the checksum is not updated).
    pub fn set_dst_port(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::DST_PORT, &v.to_be_bytes());
    }

    /// Sets the acknowledgment number.
    pub fn set_ack_number(&mut self, v: u32) {
        put_bytes(self.buffer.as_mut(), field::ACK, &v.to_be_bytes());
    }

    /// Sets the data offset from a header length in bytes (a multiple of 4, 20..=60).
    pub fn set_header_len(&mut self, len: usize) {
        let off = u8::try_from(len / 4).unwrap_or(0x0f) & 0x0f;
        put_u8(self.buffer.as_mut(), field::DATA_OFF, off << 4);
    }

    /// Sets the window.
    pub fn set_window(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::WINDOW, &v.to_be_bytes());
    }

    /// Sets the urgent pointer.
    pub fn set_urgent(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::URGENT, &v.to_be_bytes());
    }

    /// Sets the sequence number.
    pub fn set_seq_number(&mut self, v: u32) {
        put_bytes(self.buffer.as_mut(), field::SEQ, &v.to_be_bytes());
    }

    /// Sets the flags byte.
    pub fn set_flags(&mut self, v: u8) {
        put_u8(self.buffer.as_mut(), field::FLAGS, v);
    }

    /// Stores `v` as the checksum.
    pub fn set_checksum(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::CHECKSUM, &v.to_be_bytes());
    }
}

/// A TCP header without options and without payload: what the router originates
/// (the load balancer's resets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: u32,
    pub ack_number: u32,
    /// `TCP_FIN` … `TCP_CWR`.
    pub flags: u8,
    pub window: u16,
}

impl TcpRepr {
    /// Reads a checked view (options and payload ignored).
    pub fn parse<T: AsRef<[u8]>>(p: &TcpPacket<T>) -> Result<Self, WireError> {
        p.check_len()?;
        Ok(TcpRepr {
            src_port: p.src_port(),
            dst_port: p.dst_port(),
            seq_number: p.seq_number(),
            ack_number: p.ack_number(),
            flags: p.flags(),
            window: p.window(),
        })
    }

    /// Bytes [`TcpRepr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        TCP_MIN_HEADER_LEN
    }

    /// Writes the 20-byte header with its checksum for a segment from `src` to `dst`.
    /// The buffer must be exactly [`TcpRepr::buffer_len`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        p: &mut TcpPacket<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) {
        p.set_src_port(self.src_port);
        p.set_dst_port(self.dst_port);
        p.set_seq_number(self.seq_number);
        p.set_ack_number(self.ack_number);
        p.set_header_len(TCP_MIN_HEADER_LEN);
        p.set_flags(self.flags);
        p.set_window(self.window);
        p.set_checksum(0);
        p.set_urgent(0);
        let seg = p.buffer.as_ref();
        let sum = checksum::accumulate(pseudo_header_sum(src, dst, 6, seg.len()), seg);
        p.set_checksum(!checksum::fold(sum));
    }
}

/// The one's-complement sum (unfolded) of the IPv4 pseudo-header (RFC 9293 §3.1,
/// RFC 768): source, destination, zero, protocol, and the L4 length.
#[inline]
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4_len: usize) -> u64 {
    let acc = checksum::accumulate(0, &src.octets());
    let acc = checksum::accumulate(acc, &dst.octets());
    // A segment never exceeds 65,535 bytes (IPv4 total length); wider values are
    // folded like any other sum.
    acc + u64::from(protocol) + (l4_len as u64)
}

/// The value a *partial* TCP or UDP checksum field holds: the pseudo-header sum
/// folded to 16 bits and **not** complemented. This is what Linux stores when it
/// leaves a checksum to the NIC (`CHECKSUM_PARTIAL`): `__tcp_v4_send_check` and
/// `udp4_hwcsum` write `~csum_tcpudp_magic(saddr, daddr, len, proto, 0)`, and
/// `csum_tcpudp_magic` is the complemented fold, so the field is the plain fold. The
/// virtio-net `NEEDS_CSUM` frames a TAP hands us carry the same value.
#[inline]
pub fn pseudo_header_partial(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, l4_len: usize) -> u16 {
    checksum::fold(pseudo_header_sum(src, dst, protocol, l4_len))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);

    /// 10.244.1.2:40000 -> 10.244.2.3:80, seq 0x01020304, ack 5, data offset 6 (an MSS
    /// option), flags PSH|ACK, window 0xffff, payload "hi", checksum filled below.
    static SEGMENT_BYTES: [u8; 26] = [
        0x9c, 0x40, 0x00, 0x50, 0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x00, 0x05, 0x60, 0x18, 0xff,
        0xff, 0x00, 0x00, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, b'h', b'i',
    ];

    fn with_checksum() -> [u8; 26] {
        let mut b = SEGMENT_BYTES;
        let sum = !checksum::fold(checksum::accumulate(
            pseudo_header_sum(SRC, DST, 6, b.len()),
            &b,
        ));
        b[16..18].copy_from_slice(&sum.to_be_bytes());
        b
    }

    #[test]
    fn deconstruct() {
        let b = with_checksum();
        let p = TcpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.src_port(), 40000);
        assert_eq!(p.dst_port(), 80);
        assert_eq!(p.seq_number(), 0x0102_0304);
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.flags(), TCP_PSH | TCP_ACK);
        assert_eq!(p.header().len(), 24);
        assert_eq!(p.payload(), b"hi");
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(DST, Ipv4Addr::new(10, 244, 2, 4)));
    }

    #[test]
    fn setters() {
        let mut b = with_checksum();
        let mut p = TcpPacket::new_unchecked(&mut b[..]);
        p.set_seq_number(0xa0b0_c0d0);
        p.set_flags(TCP_FIN | TCP_ACK);
        p.set_checksum(0x1234);
        assert_eq!(&b[4..8], &[0xa0, 0xb0, 0xc0, 0xd0]);
        assert_eq!(b[13], 0x11);
        assert_eq!(&b[16..18], &[0x12, 0x34]);
    }

    /// A bare RST|ACK from 10.244.1.2:40000 to 10.244.2.3:80: seq 0, ack 0x01020305,
    /// window 0. Checksum by hand: pseudo-header 0af4 0102 0af4 0203 0006 0014, header
    /// 9c40 0050 0000 0000 0102 0305 5014 0000 0000 0000 sums to 0x1_09b2 → 0x09b3,
    /// complemented 0xf64c.
    static RST_BYTES: [u8; 20] = [
        0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 0, 0x01, 0x02, 0x03, 0x05, 0x50, 0x14, 0, 0, 0xf6, 0x4c,
        0, 0,
    ];

    #[test]
    fn repr_emit_and_parse() {
        let repr = TcpRepr {
            src_port: 40000,
            dst_port: 80,
            seq_number: 0,
            ack_number: 0x0102_0305,
            flags: TCP_RST | TCP_ACK,
            window: 0,
        };
        let mut b = [0xaa_u8; 20];
        repr.emit(&mut TcpPacket::new_unchecked(&mut b[..]), SRC, DST);
        assert_eq!(b, RST_BYTES);
        let p = TcpPacket::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum(SRC, DST));
        assert_eq!(TcpRepr::parse(&p).unwrap(), repr);
        assert_eq!(repr.buffer_len(), 20);
    }

    #[test]
    fn pseudo_header_matches_rfc_layout() {
        // src + dst + 0x0006 + length, as 16-bit words.
        let words: u64 = 0x0af4 + 0x0102 + 0x0af4 + 0x0203 + 6 + 26;
        assert_eq!(
            checksum::fold(pseudo_header_sum(SRC, DST, 6, 26)),
            checksum::fold(words)
        );
    }

    /// `~csum_tcpudp_magic` pinned with bytes: a 16-byte UDP datagram from
    /// 10.244.255.254 to 10.244.254.255 (words 0af4 fffe 0af4 feff 0011 0010 sum to
    /// 0x21506, which folds with an end-around carry of 2 to 0x1508), and the 26-byte
    /// segment of `SEGMENT_BYTES` (0af4+0102+0af4+0203+0006+001a = 0x190d).
    #[test]
    fn partial_form_is_the_uncomplemented_fold() {
        let a = Ipv4Addr::new(10, 244, 255, 254);
        let b = Ipv4Addr::new(10, 244, 254, 255);
        assert_eq!(
            pseudo_header_partial(a, b, 17, 16).to_be_bytes(),
            [0x15, 0x08]
        );
        assert_eq!(
            pseudo_header_partial(SRC, DST, 6, 26).to_be_bytes(),
            [0x19, 0x0d]
        );
        // Storing it and summing the segment completes the checksum.
        let mut seg = SEGMENT_BYTES;
        seg[16..18].copy_from_slice(&[0x19, 0x0d]);
        let full = !checksum::fold(checksum::accumulate(0, &seg));
        seg[16..18].copy_from_slice(&full.to_be_bytes());
        assert_eq!(seg, with_checksum());
    }

    #[test]
    fn bad_lengths() {
        for len in 0..24 {
            assert!(matches!(
                TcpPacket::new_checked(&SEGMENT_BYTES[..len]),
                Err(WireError::Truncated { .. })
            ));
        }
        let mut b = SEGMENT_BYTES;
        b[12] = 0x40;
        assert!(matches!(
            TcpPacket::new_checked(&b[..]),
            Err(WireError::Malformed { .. })
        ));
    }
}
