//! The VXLAN header (RFC 7348 §5): 8 bytes in front of the inner Ethernet frame, inside
//! a UDP datagram to port 4789.
//!
//! ```text
//!  0               1               2               3
//! |R|R|R|R|I|R|R|R|            Reserved                          |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//!
//! Only the I flag (0x08, "the VNI is valid") is defined. RFC 7348 says reserved bits
//! MUST be zero when sent and MUST be ignored on receipt, so [`VxlanRepr::parse`] looks
//! at the I flag alone: a Linux kernel endpoint (flannel's `flannel.1`) and anything
//! sending Group Policy or GPE bits in reserved fields are accepted, and the VNI
//! decides. A header without the I flag carries no VNI and is `Malformed`.
//!
//! The UDP and outer IP headers are not here: the I/O layer sends and receives VXLAN
//! datagrams through a kernel UDP socket, so the data plane only ever sees the UDP
//! payload.

use super::{get_u8, need_len, put_bytes, Layer, WireError};

/// Length of the VXLAN header.
pub const VXLAN_HEADER_LEN: usize = 8;

/// The IANA-assigned VXLAN UDP port (RFC 7348 §5).
pub const VXLAN_PORT: u16 = 4789;

/// The I flag: the VNI field is valid.
pub const VXLAN_FLAG_VNI: u8 = 0x08;

/// Largest VNI (24 bits).
pub const VXLAN_MAX_VNI: u32 = 0x00ff_ffff;

mod field {
    pub const FLAGS: usize = 0;
    pub const VNI: usize = 4;
    pub const PAYLOAD: usize = 8;
}

/// A view of a VXLAN header and the inner frame after it.
#[derive(Clone, Copy, Debug)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps without checking; accessors on a short buffer return zeros.
    pub const fn new_unchecked(buffer: T) -> Self {
        VxlanPacket { buffer }
    }

    /// Wraps after checking the 8-byte header is present.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Err(Truncated)` if shorter than the header.
    pub fn check_len(&self) -> Result<(), WireError> {
        need_len(Layer::Vxlan, self.buffer.as_ref(), VXLAN_HEADER_LEN)
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::FLAGS)
    }

    /// The 24-bit VNI.
    pub fn vni(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([
            0,
            get_u8(b, field::VNI),
            get_u8(b, field::VNI + 1),
            get_u8(b, field::VNI + 2),
        ])
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(field::PAYLOAD..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Sets the flags byte and zeroes the 3 reserved bytes after it.
    pub fn set_flags(&mut self, flags: u8) {
        put_bytes(self.buffer.as_mut(), field::FLAGS, &[flags, 0, 0, 0]);
    }

    /// Sets the VNI (low 24 bits of `vni`) and zeroes the reserved byte after it.
    pub fn set_vni(&mut self, vni: u32) {
        let [_, a, b, c] = (vni & VXLAN_MAX_VNI).to_be_bytes();
        put_bytes(self.buffer.as_mut(), field::VNI, &[a, b, c, 0]);
    }

    /// The inner frame, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(field::PAYLOAD..)
            .unwrap_or(&mut [])
    }
}

/// A VXLAN header as plain values: only the VNI means anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VxlanRepr {
    pub vni: u32,
}

impl VxlanRepr {
    /// Reads the header: `Truncated` if short, `Malformed` without the I flag. Reserved
    /// bits are ignored (RFC 7348 §5).
    pub fn parse<T: AsRef<[u8]>>(packet: &VxlanPacket<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        if packet.flags() & VXLAN_FLAG_VNI == 0 {
            return Err(WireError::Malformed {
                layer: Layer::Vxlan,
                what: "I flag clear: no VNI",
            });
        }
        Ok(VxlanRepr { vni: packet.vni() })
    }

    /// Bytes [`VxlanRepr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        VXLAN_HEADER_LEN
    }

    /// Writes flags 0x08, zeroed reserved fields and the VNI.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VxlanPacket<T>) {
        packet.set_flags(VXLAN_FLAG_VNI);
        packet.set_vni(self.vni);
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    /// VNI 1 as Linux sends it, followed by the first 4 bytes of an inner frame.
    static PACKET_BYTES: [u8; 12] = [
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0xaa, 0xbb, 0xcc, 0xdd,
    ];

    #[test]
    fn deconstruct() {
        let p = VxlanPacket::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(p.flags(), 0x08);
        assert_eq!(p.vni(), 1);
        assert_eq!(p.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
    }

    #[test]
    fn parse_and_emit() {
        let p = VxlanPacket::new_checked(&PACKET_BYTES[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p).unwrap(), VxlanRepr { vni: 1 });
        let mut buf = [0xffu8; 12];
        let mut v = VxlanPacket::new_unchecked(&mut buf[..]);
        VxlanRepr { vni: 1 }.emit(&mut v);
        v.payload_mut().copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        assert_eq!(buf, PACKET_BYTES);
        let mut big = [0u8; 8];
        VxlanRepr { vni: 0x00ab_cdef }.emit(&mut VxlanPacket::new_unchecked(&mut big[..]));
        assert_eq!(big, [0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
    }

    #[test]
    fn reserved_bits_are_ignored_but_i_flag_is_required() {
        let mut b = PACKET_BYTES;
        b[0] = 0x88; // G bit of VXLAN-GBP plus I
        b[2] = 0x12; // a group policy ID
        b[7] = 0x99; // reserved after the VNI
        let p = VxlanPacket::new_checked(&b[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p).unwrap(), VxlanRepr { vni: 1 });
        b[0] = 0x80;
        assert!(matches!(
            VxlanRepr::parse(&VxlanPacket::new_unchecked(&b[..])),
            Err(WireError::Malformed { .. })
        ));
    }

    #[test]
    fn short_is_truncated() {
        for len in 0..VXLAN_HEADER_LEN {
            assert!(matches!(
                VxlanPacket::new_checked(&PACKET_BYTES[..len]),
                Err(WireError::Truncated { .. })
            ));
        }
        let p = VxlanPacket::new_checked(&PACKET_BYTES[..8]).unwrap();
        assert!(p.payload().is_empty());
    }
}
