//! The virtio-net header (`struct virtio_net_hdr`, virtio spec 1.2 §5.1.6) that a TAP
//! opened with `IFF_VNET_HDR` puts in front of every frame.
//!
//! It carries offload state: a partial checksum the receiver must finish (`NEEDS_CSUM`
//! with `csum_start`/`csum_offset`) and GSO (`gso_type`, `gso_size`, `hdr_len`) so the
//! kernel can hand over 64 KiB TCP segments. The bridge forwards it unchanged; the
//! router reads it to know whether an L4 checksum is final yet.
//!
//! Layout (10 bytes: the TAP's default `TUNSETVNETHDRSZ`; the 12-byte form with
//! `num_buffers` is not used): `flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16,
//! csum_start: u16, csum_offset: u16`. The 16-bit fields are in the TAP's virtio byte
//! order, which is the host's native order unless `TUNSETVNETBE/LE` is used; on x86-64
//! and aarch64 Linux that is **little-endian**, which is what this view reads and writes.
//! `csum_start` counts from the first byte of the Ethernet frame (just after this header).

use super::{get_le16, get_u8, need_len, put_bytes, put_u8, Layer, WireError};

/// Length of `struct virtio_net_hdr` (without `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial; the sum from `csum_start`
/// to the end must be folded into the field at `csum_start + csum_offset`.
pub const VNET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was already verified.
pub const VNET_HDR_F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const VNET_HDR_GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const VNET_HDR_GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP` (UFO, legacy).
pub const VNET_HDR_GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const VNET_HDR_GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO).
pub const VNET_HDR_GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`: OR-ed into `gso_type`, TCP had CWR set.
pub const VNET_HDR_GSO_ECN: u8 = 0x80;

mod field {
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: usize = 2;
    pub const GSO_SIZE: usize = 4;
    pub const CSUM_START: usize = 6;
    pub const CSUM_OFFSET: usize = 8;
}

/// The GSO kind, without the ECN bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoType {
    None,
    TcpV4,
    Udp,
    TcpV6,
    UdpL4,
    Unknown(u8),
}

impl From<u8> for GsoType {
    /// Reads the kind from a raw `gso_type`, ignoring [`VNET_HDR_GSO_ECN`].
    fn from(raw: u8) -> Self {
        match raw & !VNET_HDR_GSO_ECN {
            VNET_HDR_GSO_NONE => GsoType::None,
            VNET_HDR_GSO_TCPV4 => GsoType::TcpV4,
            VNET_HDR_GSO_UDP => GsoType::Udp,
            VNET_HDR_GSO_TCPV6 => GsoType::TcpV6,
            VNET_HDR_GSO_UDP_L4 => GsoType::UdpL4,
            other => GsoType::Unknown(other),
        }
    }
}

impl From<GsoType> for u8 {
    fn from(t: GsoType) -> u8 {
        match t {
            GsoType::None => VNET_HDR_GSO_NONE,
            GsoType::TcpV4 => VNET_HDR_GSO_TCPV4,
            GsoType::Udp => VNET_HDR_GSO_UDP,
            GsoType::TcpV6 => VNET_HDR_GSO_TCPV6,
            GsoType::UdpL4 => VNET_HDR_GSO_UDP_L4,
            GsoType::Unknown(v) => v,
        }
    }
}

/// A view of a virtio-net header.
#[derive(Clone, Copy, Debug)]
pub struct VnetHdr<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VnetHdr<T> {
    /// Wraps without checking; accessors on a short buffer return zeros.
    pub const fn new_unchecked(buffer: T) -> Self {
        VnetHdr { buffer }
    }

    /// Wraps after checking the buffer holds [`VNET_HDR_LEN`] bytes (it may hold the
    /// frame after them too).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let h = Self::new_unchecked(buffer);
        h.check_len()?;
        Ok(h)
    }

    /// `Err(Truncated)` if shorter than the header.
    pub fn check_len(&self) -> Result<(), WireError> {
        need_len(Layer::Vnet, self.buffer.as_ref(), VNET_HDR_LEN)
    }

    /// Flags (`VNET_HDR_F_*`).
    pub fn flags(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::FLAGS)
    }

    /// Raw `gso_type` (`VNET_HDR_GSO_*`, possibly with the ECN bit).
    pub fn gso_type_raw(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::GSO_TYPE)
    }

    /// The GSO kind.
    pub fn gso_type(&self) -> GsoType {
        GsoType::from(self.gso_type_raw())
    }

    /// Length of the headers to replicate per segment.
    pub fn hdr_len(&self) -> u16 {
        get_le16(self.buffer.as_ref(), field::HDR_LEN)
    }

    /// Payload bytes per segment (MSS).
    pub fn gso_size(&self) -> u16 {
        get_le16(self.buffer.as_ref(), field::GSO_SIZE)
    }

    /// Offset (from the Ethernet header) where checksumming starts.
    pub fn csum_start(&self) -> u16 {
        get_le16(self.buffer.as_ref(), field::CSUM_START)
    }

    /// Offset of the checksum field from `csum_start`.
    pub fn csum_offset(&self) -> u16 {
        get_le16(self.buffer.as_ref(), field::CSUM_OFFSET)
    }

    /// `NEEDS_CSUM` is set: the L4 checksum field holds a partial sum.
    pub fn needs_csum(&self) -> bool {
        self.flags() & VNET_HDR_F_NEEDS_CSUM != 0
    }

    /// `DATA_VALID` is set: the L4 checksum was verified by the sender.
    pub fn data_valid(&self) -> bool {
        self.flags() & VNET_HDR_F_DATA_VALID != 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VnetHdr<T> {
    /// Sets the flags.
    pub fn set_flags(&mut self, v: u8) {
        put_u8(self.buffer.as_mut(), field::FLAGS, v);
    }

    /// Sets the raw `gso_type`.
    pub fn set_gso_type_raw(&mut self, v: u8) {
        put_u8(self.buffer.as_mut(), field::GSO_TYPE, v);
    }

    /// Sets `hdr_len`.
    pub fn set_hdr_len(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::HDR_LEN, &v.to_le_bytes());
    }

    /// Sets `gso_size`.
    pub fn set_gso_size(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::GSO_SIZE, &v.to_le_bytes());
    }

    /// Sets `csum_start`.
    pub fn set_csum_start(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::CSUM_START, &v.to_le_bytes());
    }

    /// Sets `csum_offset`.
    pub fn set_csum_offset(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::CSUM_OFFSET, &v.to_le_bytes());
    }

    /// Zeroes the header: no offloads, checksums final.
    pub fn clear(&mut self) {
        if let Some(h) = self.buffer.as_mut().get_mut(..VNET_HDR_LEN) {
            h.fill(0);
        }
    }
}

/// A virtio-net header as plain values, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VnetHdrRepr {
    pub flags: u8,
    /// Raw `gso_type`, ECN bit included.
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdrRepr {
    /// Parses and validates the header in front of a frame of `frame_len` bytes:
    /// only `NEEDS_CSUM`/`DATA_VALID` flags, a known GSO kind with a nonzero
    /// `gso_size`, and for `NEEDS_CSUM` a checksum field inside the frame.
    /// Anything else is `Malformed` (the pipeline's `BadVnetHeader`).
    pub fn parse<T: AsRef<[u8]>>(hdr: &VnetHdr<T>, frame_len: usize) -> Result<Self, WireError> {
        hdr.check_len()?;
        let malformed = |what| WireError::Malformed {
            layer: Layer::Vnet,
            what,
        };
        let repr = VnetHdrRepr {
            flags: hdr.flags(),
            gso_type: hdr.gso_type_raw(),
            hdr_len: hdr.hdr_len(),
            gso_size: hdr.gso_size(),
            csum_start: hdr.csum_start(),
            csum_offset: hdr.csum_offset(),
        };
        if repr.flags & !(VNET_HDR_F_NEEDS_CSUM | VNET_HDR_F_DATA_VALID) != 0 {
            return Err(malformed("unknown flag bits"));
        }
        match GsoType::from(repr.gso_type) {
            GsoType::Unknown(_) => return Err(malformed("unknown GSO type")),
            GsoType::None => {
                if repr.gso_type & VNET_HDR_GSO_ECN != 0 {
                    return Err(malformed("ECN bit without GSO"));
                }
            }
            _ => {
                if repr.gso_size == 0 {
                    return Err(malformed("GSO without a segment size"));
                }
            }
        }
        if repr.needs_csum() {
            let field_end = usize::from(repr.csum_start) + usize::from(repr.csum_offset) + 2;
            if field_end > frame_len {
                return Err(malformed("checksum field beyond the frame"));
            }
        }
        Ok(repr)
    }

    /// `NEEDS_CSUM` is set.
    pub const fn needs_csum(&self) -> bool {
        self.flags & VNET_HDR_F_NEEDS_CSUM != 0
    }

    /// `DATA_VALID` is set.
    pub const fn data_valid(&self) -> bool {
        self.flags & VNET_HDR_F_DATA_VALID != 0
    }

    /// The GSO kind.
    pub fn gso(&self) -> GsoType {
        GsoType::from(self.gso_type)
    }

    /// Writes the header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, hdr: &mut VnetHdr<T>) {
        hdr.set_flags(self.flags);
        hdr.set_gso_type_raw(self.gso_type);
        hdr.set_hdr_len(self.hdr_len);
        hdr.set_gso_size(self.gso_size);
        hdr.set_csum_start(self.csum_start);
        hdr.set_csum_offset(self.csum_offset);
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A TSO segment as the TAP hands it over: NEEDS_CSUM, TCPV4|ECN, hdr_len 66,
    /// MSS 1448, checksum from offset 34 (14 + 20), field at +16 (TCP checksum).
    static HDR_BYTES: [u8; 10] = [0x01, 0x81, 66, 0, 0xa8, 0x05, 34, 0, 16, 0];

    fn repr() -> VnetHdrRepr {
        VnetHdrRepr {
            flags: VNET_HDR_F_NEEDS_CSUM,
            gso_type: VNET_HDR_GSO_TCPV4 | VNET_HDR_GSO_ECN,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        }
    }

    #[test]
    fn deconstruct_little_endian() {
        let h = VnetHdr::new_checked(&HDR_BYTES[..]).unwrap();
        assert!(h.needs_csum());
        assert!(!h.data_valid());
        assert_eq!(h.gso_type(), GsoType::TcpV4);
        assert_eq!(h.gso_type_raw(), 0x81);
        assert_eq!(h.hdr_len(), 66);
        assert_eq!(h.gso_size(), 1448);
        assert_eq!(h.csum_start(), 34);
        assert_eq!(h.csum_offset(), 16);
    }

    #[test]
    fn parse_and_emit() {
        let h = VnetHdr::new_checked(&HDR_BYTES[..]).unwrap();
        assert_eq!(VnetHdrRepr::parse(&h, 1514).unwrap(), repr());
        let mut buf = [0xffu8; 10];
        repr().emit(&mut VnetHdr::new_unchecked(&mut buf[..]));
        assert_eq!(buf, HDR_BYTES);
        VnetHdr::new_unchecked(&mut buf[..]).clear();
        assert_eq!(buf, [0; 10]);
        let zero = VnetHdrRepr::parse(&VnetHdr::new_unchecked(&buf[..]), 0).unwrap();
        assert_eq!(zero, VnetHdrRepr::default());
    }

    #[test]
    fn invalid_headers_are_malformed() {
        let bad = |b: [u8; 10], frame_len| {
            matches!(
                VnetHdrRepr::parse(&VnetHdr::new_unchecked(&b[..]), frame_len),
                Err(WireError::Malformed { .. })
            )
        };
        // Checksum field would end at 34 + 16 + 2 = 52 > 51.
        assert!(bad(HDR_BYTES, 51));
        assert!(!bad(HDR_BYTES, 52));
        let mut b = HDR_BYTES;
        b[0] = 0x04; // RSC_INFO: not something a TAP sends us
        assert!(bad(b, 1514));
        let mut b = HDR_BYTES;
        b[1] = 2; // undefined GSO type
        assert!(bad(b, 1514));
        let mut b = HDR_BYTES;
        b[4] = 0;
        b[5] = 0; // gso_size 0
        assert!(bad(b, 1514));
        let mut b = [0u8; 10];
        b[1] = VNET_HDR_GSO_ECN;
        assert!(bad(b, 1514));
    }

    #[test]
    fn short_is_truncated() {
        for len in 0..VNET_HDR_LEN {
            assert!(matches!(
                VnetHdr::new_checked(&HDR_BYTES[..len]),
                Err(WireError::Truncated { .. })
            ));
        }
    }

    #[test]
    fn gso_type_round_trips() {
        for v in [0u8, 1, 3, 4, 5, 7] {
            assert_eq!(u8::from(GsoType::from(v)), v);
        }
        assert_eq!(GsoType::from(0x84), GsoType::TcpV6);
    }
}
