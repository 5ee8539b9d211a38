//! IPv4 headers (RFC 791), options included.
//!
//! `new_checked` establishes the invariants every accessor relies on: version 4,
//! `20 <= IHL*4 <= total length <= buffer length`. Options (IHL > 5) are skipped by
//! [`Ipv4Packet::payload`], never interpreted. The payload ends at the total length,
//! not at the end of the buffer, so Ethernet padding is ignored.
//!
//! Frames the TAP hands over with TSO (virtio GSO) are single IPv4 packets of up to
//! 64 KiB with a correct total length and header checksum; only the L4 checksum is
//! partial. IPv4 "BIG TCP" (total length 0, > 64 KiB) is not enabled on our TAPs and
//! is rejected as malformed.

use core::net::Ipv4Addr;

use super::{
    checksum, enum_with_unknown, get_array, get_be16, get_u8, need_len, put_bytes, put_u8, Layer,
    WireError,
};

/// Length of an IPv4 header without options.
pub const IPV4_MIN_HEADER_LEN: usize = 20;

mod field {
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const FRAG_OFFSET_MASK: u16 = 0x1fff;

enum_with_unknown! {
    /// IP protocol number (IANA "Assigned Internet Protocol Numbers").
    pub enum IpProtocol(u8) {
        Icmp = 1,
        Tcp = 6,
        Udp = 17,
    }
}

/// A view of an IPv4 packet.
#[derive(Clone, Copy, Debug)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps without checking; accessors on a short buffer return zeros.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps after checking version, header length and total length against the buffer.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Truncated` if the buffer ends before the fixed header, the options, or the total
    /// length; `Malformed` if the version is not 4, IHL < 5 or total length < IHL × 4.
    pub fn check_len(&self) -> Result<(), WireError> {
        let buf = self.buffer.as_ref();
        need_len(Layer::Ipv4, buf, IPV4_MIN_HEADER_LEN)?;
        if self.version() != 4 {
            return Err(WireError::Malformed {
                layer: Layer::Ipv4,
                what: "version is not 4",
            });
        }
        let hlen = self.header_len();
        if hlen < IPV4_MIN_HEADER_LEN {
            return Err(WireError::Malformed {
                layer: Layer::Ipv4,
                what: "IHL below 5",
            });
        }
        let total = usize::from(self.total_len());
        if total < hlen {
            return Err(WireError::Malformed {
                layer: Layer::Ipv4,
                what: "total length shorter than the header",
            });
        }
        need_len(Layer::Ipv4, buf, total)
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version nibble.
    pub fn version(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::VER_IHL) >> 4
    }

    /// Header length in bytes (IHL × 4), options included.
    pub fn header_len(&self) -> usize {
        usize::from(get_u8(self.buffer.as_ref(), field::VER_IHL) & 0x0f) * 4
    }

    /// DSCP and ECN byte (the old TOS).
    pub fn dscp_ecn(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::DSCP_ECN)
    }

    /// Total length: header plus payload.
    pub fn total_len(&self) -> u16 {
        get_be16(self.buffer.as_ref(), field::TOTAL_LEN)
    }

    /// Identification.
    pub fn ident(&self) -> u16 {
        get_be16(self.buffer.as_ref(), field::IDENT)
    }

    /// Don't Fragment flag.
    pub fn dont_frag(&self) -> bool {
        get_be16(self.buffer.as_ref(), field::FLAGS_FRAG) & FLAG_DF != 0
    }

    /// More Fragments flag.
    pub fn more_frags(&self) -> bool {
        get_be16(self.buffer.as_ref(), field::FLAGS_FRAG) & FLAG_MF != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (get_be16(self.buffer.as_ref(), field::FLAGS_FRAG) & FRAG_OFFSET_MASK) << 3
    }

    /// `true` for any fragment (first, middle or last) of a fragmented datagram.
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::TTL)
    }

    /// Protocol of the payload.
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol::from(get_u8(self.buffer.as_ref(), field::PROTOCOL))
    }

    /// Header checksum as stored.
    pub fn checksum(&self) -> u16 {
        get_be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(get_array::<4>(self.buffer.as_ref(), field::SRC))
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(get_array::<4>(self.buffer.as_ref(), field::DST))
    }

    /// The whole header, options included.
    pub fn header(&self) -> &[u8] {
        self.buffer.as_ref().get(..self.header_len()).unwrap_or(&[])
    }

    /// Options bytes (empty when IHL = 5).
    pub fn options(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(IPV4_MIN_HEADER_LEN..self.header_len())
            .unwrap_or(&[])
    }

    /// `true` if the header checksum is right.
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(self.header())
    }

    /// From the end of the header to the total length.
    pub fn payload(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(self.header_len()..usize::from(self.total_len()))
            .unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets version 4 and the header length in bytes (a multiple of 4, 20..=60).
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        let ihl = u8::try_from(header_len / 4).unwrap_or(0x0f) & 0x0f;
        put_u8(self.buffer.as_mut(), field::VER_IHL, 0x40 | ihl);
    }

    /// Sets DSCP/ECN.
    pub fn set_dscp_ecn(&mut self, v: u8) {
        put_u8(self.buffer.as_mut(), field::DSCP_ECN, v);
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::TOTAL_LEN, &v.to_be_bytes());
    }

    /// Sets the identification.
    pub fn set_ident(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::IDENT, &v.to_be_bytes());
    }

    /// Sets flags and fragment offset: DF as given, MF clear, offset 0.
    pub fn set_unfragmented(&mut self, dont_frag: bool) {
        let v = if dont_frag { FLAG_DF } else { 0 };
        put_bytes(self.buffer.as_mut(), field::FLAGS_FRAG, &v.to_be_bytes());
    }

    /// Sets flags and fragment offset: DF and MF as given, `offset` in bytes (RFC 791
    /// stores it in 8-byte units, so the low 3 bits are dropped).
    pub fn set_fragment(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut v = (offset >> 3) & FRAG_OFFSET_MASK;
        if dont_frag {
            v |= FLAG_DF;
        }
        if more_frags {
            v |= FLAG_MF;
        }
        put_bytes(self.buffer.as_mut(), field::FLAGS_FRAG, &v.to_be_bytes());
    }

    /// The header, options included, writable.
    pub fn header_mut(&mut self) -> &mut [u8] {
        let hlen = self.header_len();
        self.buffer.as_mut().get_mut(..hlen).unwrap_or(&mut [])
    }

    /// Sets the TTL (the checksum is not updated).
    pub fn set_ttl(&mut self, v: u8) {
        put_u8(self.buffer.as_mut(), field::TTL, v);
    }

    /// Sets the protocol.
    pub fn set_protocol(&mut self, p: IpProtocol) {
        put_u8(self.buffer.as_mut(), field::PROTOCOL, u8::from(p));
    }

    /// Stores `v` as the header checksum.
    pub fn set_checksum(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::CHECKSUM, &v.to_be_bytes());
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        put_bytes(self.buffer.as_mut(), field::SRC, &a.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        put_bytes(self.buffer.as_mut(), field::DST, &a.octets());
    }

    /// Computes and stores the header checksum (options included).
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::checksum(self.header());
        self.set_checksum(sum);
    }

    /// Decrements the TTL and updates the checksum incrementally (RFC 1624).
    /// Returns the new TTL; a TTL already 0 stays 0.
    #[inline]
    pub fn decrement_ttl(&mut self) -> u8 {
        let ttl = self.ttl();
        let new_ttl = ttl.saturating_sub(1);
        // The byte that shares the TTL's checksum word, as it is (not through
        // `IpProtocol`, whose round trip the compiler does not fold away).
        let proto = get_u8(self.buffer.as_ref(), field::PROTOCOL);
        let old_word = u16::from_be_bytes([ttl, proto]);
        let new_word = u16::from_be_bytes([new_ttl, proto]);
        let sum = checksum::update16(self.checksum(), old_word, new_word);
        self.set_ttl(new_ttl);
        self.set_checksum(sum);
        new_ttl
    }

    /// The payload (header end to total length), writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        self.buffer.as_mut().get_mut(range).unwrap_or(&mut [])
    }
}

/// An IPv4 header without options, as plain values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub protocol: IpProtocol,
    /// Bytes after the header.
    pub payload_len: usize,
    pub ttl: u8,
    pub dscp_ecn: u8,
    pub ident: u16,
    pub dont_frag: bool,
}

impl Ipv4Repr {
    /// Reads a checked view. Options are skipped; the checksum is not verified here
    /// (see [`Ipv4Packet::verify_checksum`]) so that callers choose when to pay for it.
    pub fn parse<T: AsRef<[u8]>>(packet: &Ipv4Packet<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        Ok(Ipv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()).saturating_sub(packet.header_len()),
            ttl: packet.ttl(),
            dscp_ecn: packet.dscp_ecn(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
        })
    }

    /// Bytes [`Ipv4Repr::emit`] writes: always the 20-byte header.
    pub const fn buffer_len(&self) -> usize {
        IPV4_MIN_HEADER_LEN
    }

    /// Writes a 20-byte header with a valid checksum. `Malformed` if header plus payload
    /// would not fit the 16-bit total length.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Ipv4Packet<T>,
    ) -> Result<(), WireError> {
        let total = u16::try_from(IPV4_MIN_HEADER_LEN + self.payload_len).map_err(|_| {
            WireError::Malformed {
                layer: Layer::Ipv4,
                what: "payload too large for total length",
            }
        })?;
        packet.set_version_and_header_len(IPV4_MIN_HEADER_LEN);
        packet.set_dscp_ecn(self.dscp_ecn);
        packet.set_total_len(total);
        packet.set_ident(self.ident);
        packet.set_unfragmented(self.dont_frag);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    /// 10.244.1.2 -> 10.244.1.1, ICMP, TTL 64, DF, ident 0x1234, 4 bytes of payload.
    static PACKET_BYTES: [u8; 24] = [
        0x45, 0x00, 0x00, 0x18, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x10, 0xc7, 10, 244, 1, 2, 10,
        244, 1, 1, 0xde, 0xad, 0xbe, 0xef,
    ];

    /// The same with a 4-byte options field (NOP NOP NOP EOL), IHL 6, plus 2 padding bytes.
    static OPTIONS_BYTES: [u8; 30] = [
        0x46, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 244, 1, 2, 10,
        244, 1, 1, 0x01, 0x01, 0x01, 0x00, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x00,
    ];

    fn repr() -> Ipv4Repr {
        Ipv4Repr {
            src_addr: Ipv4Addr::new(10, 244, 1, 2),
            dst_addr: Ipv4Addr::new(10, 244, 1, 1),
            protocol: IpProtocol::Icmp,
            payload_len: 4,
            ttl: 64,
            dscp_ecn: 0,
            ident: 0x1234,
            dont_frag: true,
        }
    }

    #[test]
    fn fixture_checksum_is_right() {
        assert_eq!(
            checksum::checksum(
                &{
                    let mut h = PACKET_BYTES;
                    h[10] = 0;
                    h[11] = 0;
                    h
                }[..20]
            ),
            0x10c7
        );
    }

    #[test]
    fn deconstruct() {
        let p = Ipv4Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 24);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag());
        assert!(!p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), IpProtocol::Icmp);
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(10, 244, 1, 1));
        assert!(p.verify_checksum());
        assert!(p.options().is_empty());
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn parse_and_emit() {
        let p = Ipv4Packet::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&p).unwrap(), repr());
        let mut buf = [0u8; 24];
        repr()
            .emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]))
            .unwrap();
        buf[20..].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(buf, PACKET_BYTES);
    }

    #[test]
    fn options_are_skipped_and_padding_ignored() {
        let mut bytes = OPTIONS_BYTES;
        Ipv4Packet::new_unchecked(&mut bytes[..]).fill_checksum();
        let p = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(p.payload(), &[0xde, 0xad, 0xbe, 0xef]);
        assert!(p.verify_checksum());
        assert_eq!(Ipv4Repr::parse(&p).unwrap().payload_len, 4);
    }

    #[test]
    fn inconsistent_headers_are_rejected() {
        let malformed =
            |b: &[u8]| matches!(Ipv4Packet::new_checked(b), Err(WireError::Malformed { .. }));
        let mut v6 = PACKET_BYTES;
        v6[0] = 0x65;
        assert!(malformed(&v6));
        let mut ihl4 = PACKET_BYTES;
        ihl4[0] = 0x44;
        assert!(malformed(&ihl4));
        let mut short_total = PACKET_BYTES;
        short_total[3] = 19;
        assert!(malformed(&short_total));
        let mut options_past_total = OPTIONS_BYTES;
        options_past_total[0] = 0x4f; // 60-byte header in a 28-byte datagram
        assert!(malformed(&options_past_total));
        let mut long_total = PACKET_BYTES;
        long_total[3] = 25;
        assert!(matches!(
            Ipv4Packet::new_checked(&long_total[..]),
            Err(WireError::Truncated {
                need: 25,
                have: 24,
                ..
            })
        ));
    }

    #[test]
    fn truncated_at_every_length() {
        for len in 0..PACKET_BYTES.len() {
            assert!(
                matches!(
                    Ipv4Packet::new_checked(&PACKET_BYTES[..len]),
                    Err(WireError::Truncated { .. })
                ),
                "len {len}"
            );
        }
        for len in 20..28 {
            assert!(matches!(
                Ipv4Packet::new_checked(&OPTIONS_BYTES[..len]),
                Err(WireError::Truncated { .. })
            ));
        }
    }

    #[test]
    fn fragments_are_recognised() {
        let mut b = PACKET_BYTES;
        b[6] = 0x20; // MF
        assert!(Ipv4Packet::new_unchecked(&b[..]).is_fragment());
        b[6] = 0x00;
        b[7] = 0x01; // offset 8
        let p = Ipv4Packet::new_unchecked(&b[..]);
        assert_eq!(p.frag_offset(), 8);
        assert!(p.is_fragment());
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        let mut b = PACKET_BYTES;
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        assert_eq!(p.decrement_ttl(), 63);
        assert!(p.verify_checksum());
        let mut b0 = PACKET_BYTES;
        b0[8] = 0;
        let mut p0 = Ipv4Packet::new_unchecked(&mut b0[..]);
        p0.fill_checksum();
        assert_eq!(p0.decrement_ttl(), 0);
        assert!(p0.verify_checksum());
    }

    #[test]
    fn emit_rejects_oversized_payload() {
        let mut buf = [0u8; 20];
        let mut r = repr();
        r.payload_len = 65_516;
        assert!(r
            .emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]))
            .is_err());
    }

    #[test]
    fn protocol_is_total() {
        assert_eq!(IpProtocol::from(17), IpProtocol::Udp);
        assert_eq!(IpProtocol::from(132), IpProtocol::Unknown(132));
    }

    #[test]
    fn fragment_fields_round_trip() {
        let mut b = PACKET_BYTES;
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_fragment(false, true, 1480);
        assert_eq!(&b[6..8], &[0x20, 0xb9]);
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert!(p.more_frags() && !p.dont_frag() && p.is_fragment());
        assert_eq!(p.frag_offset(), 1480);
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_fragment(true, false, 0);
        assert_eq!(&b[6..8], &[0x40, 0x00]);
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.header_mut()[1] = 0xb8;
        assert_eq!(b[1], 0xb8);
    }
}
