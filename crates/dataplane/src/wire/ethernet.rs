//! Ethernet II frames (IEEE 802.3, DIX framing): MAC addresses, EtherType, the 14-byte header.
//!
//! The bridge reads only this header for most frames: destination to decide, source to
//! learn. Frames arrive from TAP devices without preamble or FCS, so the header starts
//! at byte 0 and the payload runs to the end of the buffer (which may include padding
//! to the 60-byte minimum; upper layers use their own length fields).

use super::{enum_with_unknown, get_array, get_be16, need_len, put_bytes, Layer, WireError};

/// Length of the Ethernet II header: destination, source, EtherType.
pub const ETHERNET_HEADER_LEN: usize = 14;

mod field {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: usize = 12;
    pub const PAYLOAD: usize = 14;
}

pub use tapestry_net::MacAddr;

enum_with_unknown! {
    /// EtherType (IEEE 802 numbers registry).
    pub enum EtherType(u16) {
        Ipv4 = 0x0800,
        Arp = 0x0806,
        /// 802.1Q VLAN tag.
        Vlan = 0x8100,
        Ipv6 = 0x86dd,
    }
}

/// A read (and in-place write) view of an Ethernet II frame.
#[derive(Clone, Copy, Debug)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` without checking its length. Accessors on a short buffer return
    /// zeros and setters do nothing; use this only to emit into a buffer you sized.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps `buffer` after checking it holds the 14-byte header.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// `Err(Truncated)` if the buffer is shorter than the header.
    pub fn check_len(&self) -> Result<(), WireError> {
        need_len(Layer::Ethernet, self.buffer.as_ref(), ETHERNET_HEADER_LEN)
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Destination MAC.
    pub fn dst_addr(&self) -> MacAddr {
        MacAddr(get_array(self.buffer.as_ref(), field::DST.start))
    }

    /// Source MAC.
    pub fn src_addr(&self) -> MacAddr {
        MacAddr(get_array(self.buffer.as_ref(), field::SRC.start))
    }

    /// EtherType.
    #[inline]
    pub fn ethertype(&self) -> EtherType {
        EtherType::from(get_be16(self.buffer.as_ref(), field::ETHERTYPE))
    }

    /// Everything after the header (empty for a bare header).
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(field::PAYLOAD..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC.
    pub fn set_dst_addr(&mut self, addr: MacAddr) {
        put_bytes(self.buffer.as_mut(), field::DST.start, &addr.0);
    }

    /// Sets the source MAC.
    pub fn set_src_addr(&mut self, addr: MacAddr) {
        put_bytes(self.buffer.as_mut(), field::SRC.start, &addr.0);
    }

    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        put_bytes(
            self.buffer.as_mut(),
            field::ETHERTYPE,
            &u16::from(ethertype).to_be_bytes(),
        );
    }

    /// Everything after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(field::PAYLOAD..)
            .unwrap_or(&mut [])
    }
}

/// The Ethernet II header as plain values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthernetRepr {
    pub src_addr: MacAddr,
    pub dst_addr: MacAddr,
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Reads the header of a checked frame.
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<Self, WireError> {
        frame.check_len()?;
        Ok(EthernetRepr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    /// Header length: always [`ETHERNET_HEADER_LEN`].
    pub const fn buffer_len(&self) -> usize {
        ETHERNET_HEADER_LEN
    }

    /// Writes the header into `frame` (payload untouched).
    #[inline]
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Broadcast from 02:00:00:00:00:01, EtherType ARP, 4 payload bytes.
    static FRAME_BYTES: [u8; 18] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0xaa,
        0xbb, 0xcc, 0xdd,
    ];

    #[test]
    fn deconstruct() {
        let f = EthernetFrame::new_checked(&FRAME_BYTES[..]).unwrap();
        assert_eq!(f.dst_addr(), MacAddr::BROADCAST);
        assert_eq!(f.src_addr(), MacAddr::new(2, 0, 0, 0, 0, 1));
        assert_eq!(f.ethertype(), EtherType::Arp);
        assert_eq!(f.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 18];
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        f.set_dst_addr(MacAddr::BROADCAST);
        f.set_src_addr(MacAddr::new(2, 0, 0, 0, 0, 1));
        f.set_ethertype(EtherType::Arp);
        f.payload_mut().copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(buf, FRAME_BYTES);
    }

    #[test]
    fn parse_and_emit_repr() {
        let f = EthernetFrame::new_checked(&FRAME_BYTES[..]).unwrap();
        let repr = EthernetRepr::parse(&f).unwrap();
        let mut buf = FRAME_BYTES;
        buf[..14].fill(0);
        repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        assert_eq!(buf, FRAME_BYTES);
    }

    #[test]
    fn short_frames_are_truncated() {
        for len in 0..ETHERNET_HEADER_LEN {
            assert!(matches!(
                EthernetFrame::new_checked(&FRAME_BYTES[..len]),
                Err(WireError::Truncated { need: 14, .. })
            ));
        }
        let bare = EthernetFrame::new_checked(&FRAME_BYTES[..14]).unwrap();
        assert!(bare.payload().is_empty());
    }

    #[test]
    fn unchecked_view_on_short_buffer_does_not_panic() {
        let mut buf = [0u8; 3];
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        f.set_src_addr(MacAddr::BROADCAST);
        assert_eq!(f.dst_addr(), MacAddr::ZERO);
        assert_eq!(f.ethertype(), EtherType::Unknown(0));
        assert!(f.payload_mut().is_empty());
    }

    #[test]
    fn ethertype_is_total() {
        assert_eq!(EtherType::from(0x0800), EtherType::Ipv4);
        assert_eq!(EtherType::from(0x88cc), EtherType::Unknown(0x88cc));
        for v in [0u16, 0x0800, 0x0806, 0x8100, 0x86dd, 0xffff] {
            assert_eq!(u16::from(EtherType::from(v)), v);
        }
    }
}
