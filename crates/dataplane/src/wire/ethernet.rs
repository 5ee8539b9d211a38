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

/// A 48-bit IEEE 802 MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// 00:00:00:00:00:00 (used as the unknown target in ARP requests).
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// Builds an address from its six octets.
    pub const fn new(a: u8, b: u8, c: u8, d: u8, e: u8, f: u8) -> Self {
        MacAddr([a, b, c, d, e, f])
    }

    /// Reads the first six bytes of `bytes`, or `None` if there are fewer.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes
            .get(..6)
            .and_then(|s| <[u8; 6]>::try_from(s).ok())
            .map(MacAddr)
    }

    /// The octets.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// The I/G bit (least significant bit of the first octet): group address. Broadcast
    /// is a group address too.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// ff:ff:ff:ff:ff:ff.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Neither multicast nor broadcast.
    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// The U/L bit: a locally administered address (what Tapestry assigns to pods).
    pub const fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// The address as the low 48 bits of a `u64` (big-endian order), e.g. a hash key.
    pub fn to_u64(&self) -> u64 {
        let [a, b, c, d, e, f] = self.0;
        u64::from_be_bytes([0, 0, a, b, c, d, e, f])
    }

    /// The inverse of [`MacAddr::to_u64`]; bits above 48 are ignored.
    pub fn from_u64(v: u64) -> Self {
        let [_, _, a, b, c, d, e, f] = v.to_be_bytes();
        MacAddr([a, b, c, d, e, f])
    }
}

impl core::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl core::fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(self, f)
    }
}

/// Error parsing a MAC address from text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address: expected six hex octets separated by ':'")]
pub struct ParseMacError;

impl core::str::FromStr for MacAddr {
    type Err = ParseMacError;

    /// Parses `aa:bb:cc:dd:ee:ff` (also accepts `-` as separator).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for slot in &mut out {
            let part = parts.next().ok_or(ParseMacError)?;
            if part.is_empty() || part.len() > 2 {
                return Err(ParseMacError);
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| ParseMacError)?;
        }
        if parts.next().is_some() {
            return Err(ParseMacError);
        }
        Ok(MacAddr(out))
    }
}

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

    #[test]
    fn mac_classes_and_text() {
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(MacAddr::BROADCAST.is_broadcast());
        assert!(MacAddr::new(0x01, 0x00, 0x5e, 0, 0, 1).is_multicast());
        assert!(MacAddr::new(0x02, 0, 0, 0, 0, 1).is_unicast());
        assert!(MacAddr::new(0x02, 0, 0, 0, 0, 1).is_local());
        let m: MacAddr = "0a:58:0A:f4:01:02".parse().unwrap();
        assert_eq!(m, MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02));
        assert_eq!(m.to_string(), "0a:58:0a:f4:01:02");
        assert_eq!(MacAddr::from_u64(m.to_u64()), m);
        assert_eq!(m.to_u64(), 0x0a58_0af4_0102);
        assert!("0a:58:0a:f4:01".parse::<MacAddr>().is_err());
        assert!("0a:58:0a:f4:01:02:03".parse::<MacAddr>().is_err());
        assert!("0a:58:0a:f4:01:zz".parse::<MacAddr>().is_err());
        assert!("0a:58:0a:f4:01:".parse::<MacAddr>().is_err());
        assert_eq!(MacAddr::from_bytes(&[1, 2, 3]), None);
    }
}
