//! UDP headers (RFC 768), as far as the router needs them: ports, the length field
//! and the checksum, to check (and, for a kernel's partial checksum, finish) the
//! checksum of a decapsulated datagram before it is handed to a pod.
//!
//! `new_checked` establishes `8 <= length field <= buffer length`; bytes past the
//! length field (IPv4 padding) are not part of the datagram, as in the kernel's
//! `__udp4_lib_rcv`, which trims the packet to the UDP length before checksumming. The
//! checksum covers the IPv4 pseudo-header (protocol 17, length = the UDP length) and
//! the datagram; a stored 0 means the sender computed none (RFC 768), and a computed 0
//! is sent as 0xffff.

use core::net::Ipv4Addr;

use super::tcp::pseudo_header_sum;
use super::{checksum, get_be16, need_len, put_bytes, Layer, WireError};

/// Length of the UDP header.
pub const UDP_HEADER_LEN: usize = 8;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// A view of a UDP datagram (header and payload).
#[derive(Clone, Copy, Debug)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps without checking; accessors on a short buffer return zeros.
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Wraps after checking the header and the length field.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Truncated` if the buffer ends inside the header or before the length field
    /// says; `Malformed` if the length field is below 8.
    pub fn check_len(&self) -> Result<(), WireError> {
        let buf = self.buffer.as_ref();
        need_len(Layer::Udp, buf, UDP_HEADER_LEN)?;
        let len = usize::from(self.len());
        if len < UDP_HEADER_LEN {
            return Err(WireError::Malformed {
                layer: Layer::Udp,
                what: "length below 8",
            });
        }
        need_len(Layer::Udp, buf, len)
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        get_be16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        get_be16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field: header plus payload.
    pub fn len(&self) -> u16 {
        get_be16(self.buffer.as_ref(), field::LENGTH)
    }

    /// `true` if the length field says there is no payload.
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= UDP_HEADER_LEN
    }

    /// Checksum as stored (0: none).
    pub fn checksum(&self) -> u16 {
        get_be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The datagram as the length field bounds it: header and payload, padding excluded.
    pub fn datagram(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(..usize::from(self.len()))
            .unwrap_or(&[])
    }

    /// The payload as the length field bounds it.
    pub fn payload(&self) -> &[u8] {
        self.datagram().get(UDP_HEADER_LEN..).unwrap_or(&[])
    }

    /// `true` if the stored checksum is right for a datagram between `src` and `dst`.
    /// A stored 0 ("no checksum") is *not* reported as right here: callers decide.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let d = self.datagram();
        self.checksum() != 0
            && checksum::fold(checksum::accumulate(
                pseudo_header_sum(src, dst, 17, d.len()),
                d,
            )) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the source port (the checksum is not updated).
    pub fn set_src_port(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::SRC_PORT, &v.to_be_bytes());
    }

    /// Sets the destination port (the checksum is not updated).
    pub fn set_dst_port(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::DST_PORT, &v.to_be_bytes());
    }

    /// Stores `v` as the checksum.
    pub fn set_checksum(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::CHECKSUM, &v.to_be_bytes());
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);

    /// 10.244.1.2:4000 -> 10.244.2.3:53, length 12, payload "dns!", checksum 0xff84,
    /// then two bytes of padding that are not part of the datagram.
    ///
    /// Checksum by hand: pseudo-header 0a f4 01 02 | 0a f4 02 03 | 00 11 | 00 0c,
    /// header 0f a0 00 35 00 0c, payload "dn" "s!" = 0x646e 0x7321:
    /// 0x0af4+0x0102+0x0af4+0x0203+0x0011+0x000c+0x0fa0+0x0035+0x000c+0x646e+0x7321
    /// = 0x1007a → 0x007b, complemented 0xff84.
    static DATAGRAM_BYTES: [u8; 14] = [
        0x0f, 0xa0, 0x00, 0x35, 0x00, 0x0c, 0xff, 0x84, b'd', b'n', b's', b'!', 0xee, 0xee,
    ];

    #[test]
    fn deconstruct() {
        let p = UdpPacket::new_checked(&DATAGRAM_BYTES[..]).unwrap();
        assert_eq!(p.src_port(), 4000);
        assert_eq!(p.dst_port(), 53);
        assert_eq!(p.len(), 12);
        assert!(!p.is_empty());
        assert_eq!(p.checksum(), 0xff84);
        assert_eq!(p.datagram(), &DATAGRAM_BYTES[..12], "padding excluded");
        assert_eq!(p.payload(), b"dns!");
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(DST, SRC.to_bits().wrapping_add(1).into()));
    }

    #[test]
    fn zero_checksum_is_not_verified_here() {
        let mut b = DATAGRAM_BYTES;
        let mut p = UdpPacket::new_unchecked(&mut b[..]);
        p.set_checksum(0);
        assert_eq!(&b[6..8], &[0, 0]);
        assert!(!UdpPacket::new_checked(&b[..])
            .unwrap()
            .verify_checksum(SRC, DST));
    }

    #[test]
    fn bad_lengths() {
        for len in 0..12 {
            assert!(matches!(
                UdpPacket::new_checked(&DATAGRAM_BYTES[..len]),
                Err(WireError::Truncated { .. })
            ));
        }
        let mut b = DATAGRAM_BYTES;
        b[5] = 7;
        assert!(matches!(
            UdpPacket::new_checked(&b[..]),
            Err(WireError::Malformed { .. })
        ));
        b[5] = 15;
        assert!(matches!(
            UdpPacket::new_checked(&b[..]),
            Err(WireError::Truncated { .. })
        ));
    }
}
