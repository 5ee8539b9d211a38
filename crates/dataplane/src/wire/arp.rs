//! ARP (RFC 826) for Ethernet and IPv4 — the only combination on a pod network.
//!
//! The view reads any hardware/protocol sizes (the lengths come from the packet); the
//! `Repr` accepts only Ethernet (htype 1, hlen 6) over IPv4 (ptype 0x0800, plen 4) and
//! calls anything else `Unsupported`. The gateway router answers requests for its IP
//! with [`ArpRepr::emit`]; anti-spoofing checks the sender fields of pod ARP.

use core::net::Ipv4Addr;

use super::{
    enum_with_unknown, get_array, get_be16, get_u8, need_len, put_bytes, put_u8, Layer, MacAddr,
    WireError,
};

mod field {
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    /// Start of the variable part: SHA, SPA, THA, TPA.
    pub const ADDRS: usize = 8;
}

/// Fixed part of the header (before the addresses).
const FIXED_LEN: usize = field::ADDRS;
/// htype for Ethernet.
pub const HTYPE_ETHERNET: u16 = 1;
/// ptype for IPv4 (the EtherType).
pub const PTYPE_IPV4: u16 = 0x0800;
/// Length of an Ethernet/IPv4 ARP packet: 8 + 2 × (6 + 4).
pub const ARP_ETH_IPV4_LEN: usize = 28;

enum_with_unknown! {
    /// ARP opcode.
    pub enum ArpOperation(u16) {
        Request = 1,
        Reply = 2,
    }
}

/// A view of an ARP packet.
#[derive(Clone, Copy, Debug)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps without checking; accessors on a short buffer return zeros.
    pub const fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    /// Wraps after checking the buffer holds the fixed header and the four addresses
    /// whose sizes it declares.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Err(Truncated)` unless the buffer holds `8 + 2 × (hlen + plen)` bytes.
    pub fn check_len(&self) -> Result<(), WireError> {
        let buf = self.buffer.as_ref();
        need_len(Layer::Arp, buf, FIXED_LEN)?;
        let addrs = 2 * (usize::from(self.hardware_len()) + usize::from(self.protocol_len()));
        need_len(Layer::Arp, buf, FIXED_LEN + addrs)
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Hardware type (1 = Ethernet).
    pub fn hardware_type(&self) -> u16 {
        get_be16(self.buffer.as_ref(), field::HTYPE)
    }

    /// Protocol type (0x0800 = IPv4).
    pub fn protocol_type(&self) -> u16 {
        get_be16(self.buffer.as_ref(), field::PTYPE)
    }

    /// Hardware address length.
    pub fn hardware_len(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::HLEN)
    }

    /// Protocol address length.
    pub fn protocol_len(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::PLEN)
    }

    /// Opcode.
    pub fn operation(&self) -> ArpOperation {
        ArpOperation::from(get_be16(self.buffer.as_ref(), field::OPER))
    }

    fn hl(&self) -> usize {
        usize::from(self.hardware_len())
    }

    fn pl(&self) -> usize {
        usize::from(self.protocol_len())
    }

    fn addr(&self, at: usize, len: usize) -> &[u8] {
        self.buffer.as_ref().get(at..at + len).unwrap_or(&[])
    }

    /// Sender hardware address, `hlen` bytes.
    pub fn source_hardware_addr(&self) -> &[u8] {
        self.addr(field::ADDRS, self.hl())
    }

    /// Sender protocol address, `plen` bytes.
    pub fn source_protocol_addr(&self) -> &[u8] {
        self.addr(field::ADDRS + self.hl(), self.pl())
    }

    /// Target hardware address, `hlen` bytes.
    pub fn target_hardware_addr(&self) -> &[u8] {
        self.addr(field::ADDRS + self.hl() + self.pl(), self.hl())
    }

    /// Target protocol address, `plen` bytes.
    pub fn target_protocol_addr(&self) -> &[u8] {
        self.addr(field::ADDRS + 2 * self.hl() + self.pl(), self.pl())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Sets the hardware type.
    pub fn set_hardware_type(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::HTYPE, &v.to_be_bytes());
    }

    /// Sets the protocol type.
    pub fn set_protocol_type(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::PTYPE, &v.to_be_bytes());
    }

    /// Sets the hardware address length.
    pub fn set_hardware_len(&mut self, v: u8) {
        put_u8(self.buffer.as_mut(), field::HLEN, v);
    }

    /// Sets the protocol address length.
    pub fn set_protocol_len(&mut self, v: u8) {
        put_u8(self.buffer.as_mut(), field::PLEN, v);
    }

    /// Sets the opcode.
    pub fn set_operation(&mut self, op: ArpOperation) {
        put_bytes(
            self.buffer.as_mut(),
            field::OPER,
            &u16::from(op).to_be_bytes(),
        );
    }

    /// Sets the sender hardware address (uses the current `hlen`/`plen` for layout).
    pub fn set_source_hardware_addr(&mut self, addr: &[u8]) {
        put_bytes(self.buffer.as_mut(), field::ADDRS, addr);
    }

    /// Sets the sender protocol address.
    pub fn set_source_protocol_addr(&mut self, addr: &[u8]) {
        let at = field::ADDRS + self.hl();
        put_bytes(self.buffer.as_mut(), at, addr);
    }

    /// Sets the target hardware address.
    pub fn set_target_hardware_addr(&mut self, addr: &[u8]) {
        let at = field::ADDRS + self.hl() + self.pl();
        put_bytes(self.buffer.as_mut(), at, addr);
    }

    /// Sets the target protocol address.
    pub fn set_target_protocol_addr(&mut self, addr: &[u8]) {
        let at = field::ADDRS + 2 * self.hl() + self.pl();
        put_bytes(self.buffer.as_mut(), at, addr);
    }
}

/// An Ethernet/IPv4 ARP packet as plain values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpRepr {
    pub operation: ArpOperation,
    pub source_hardware_addr: MacAddr,
    pub source_protocol_addr: Ipv4Addr,
    pub target_hardware_addr: MacAddr,
    pub target_protocol_addr: Ipv4Addr,
}

impl ArpRepr {
    /// Parses a checked view; `Unsupported` unless it is Ethernet over IPv4.
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<Self, WireError> {
        packet.check_len()?;
        if packet.hardware_type() != HTYPE_ETHERNET || packet.hardware_len() != 6 {
            return Err(WireError::Unsupported {
                layer: Layer::Arp,
                what: "hardware type is not Ethernet",
            });
        }
        if packet.protocol_type() != PTYPE_IPV4 || packet.protocol_len() != 4 {
            return Err(WireError::Unsupported {
                layer: Layer::Arp,
                what: "protocol type is not IPv4",
            });
        }
        let buf = packet.buffer.as_ref();
        Ok(ArpRepr {
            operation: packet.operation(),
            source_hardware_addr: MacAddr(get_array(buf, 8)),
            source_protocol_addr: Ipv4Addr::from(get_array::<4>(buf, 14)),
            target_hardware_addr: MacAddr(get_array(buf, 18)),
            target_protocol_addr: Ipv4Addr::from(get_array::<4>(buf, 24)),
        })
    }

    /// Bytes [`ArpRepr::emit`] writes: [`ARP_ETH_IPV4_LEN`].
    pub const fn buffer_len(&self) -> usize {
        ARP_ETH_IPV4_LEN
    }

    /// Writes the packet into `packet` (which must hold [`ARP_ETH_IPV4_LEN`] bytes).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        packet.set_hardware_type(HTYPE_ETHERNET);
        packet.set_protocol_type(PTYPE_IPV4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(&self.source_hardware_addr.0);
        packet.set_source_protocol_addr(&self.source_protocol_addr.octets());
        packet.set_target_hardware_addr(&self.target_hardware_addr.0);
        packet.set_target_protocol_addr(&self.target_protocol_addr.octets());
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    /// "Who has 10.244.1.1? Tell 10.244.1.2" from 0a:58:0a:f4:01:02.
    static REQUEST_BYTES: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // htype ptype hlen plen oper
        0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02, 10, 244, 1, 2, // sha spa
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 10, 244, 1, 1, // tha tpa
    ];

    fn request_repr() -> ArpRepr {
        ArpRepr {
            operation: ArpOperation::Request,
            source_hardware_addr: MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02),
            source_protocol_addr: Ipv4Addr::new(10, 244, 1, 2),
            target_hardware_addr: MacAddr::ZERO,
            target_protocol_addr: Ipv4Addr::new(10, 244, 1, 1),
        }
    }

    #[test]
    fn deconstruct() {
        let p = ArpPacket::new_checked(&REQUEST_BYTES[..]).unwrap();
        assert_eq!(p.hardware_type(), 1);
        assert_eq!(p.protocol_type(), 0x0800);
        assert_eq!(p.hardware_len(), 6);
        assert_eq!(p.protocol_len(), 4);
        assert_eq!(p.operation(), ArpOperation::Request);
        assert_eq!(p.source_hardware_addr(), &REQUEST_BYTES[8..14]);
        assert_eq!(p.source_protocol_addr(), &[10, 244, 1, 2]);
        assert_eq!(p.target_hardware_addr(), &[0; 6]);
        assert_eq!(p.target_protocol_addr(), &[10, 244, 1, 1]);
    }

    #[test]
    fn parse_and_emit() {
        let p = ArpPacket::new_checked(&REQUEST_BYTES[..]).unwrap();
        assert_eq!(ArpRepr::parse(&p).unwrap(), request_repr());
        let mut buf = [0xeeu8; 28];
        request_repr().emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
        assert_eq!(buf, REQUEST_BYTES);
    }

    #[test]
    fn truncated_at_every_length() {
        for len in 0..28 {
            assert!(
                matches!(
                    ArpPacket::new_checked(&REQUEST_BYTES[..len]),
                    Err(WireError::Truncated { .. })
                ),
                "len {len}"
            );
        }
    }

    #[test]
    fn non_ethernet_ipv4_is_unsupported() {
        let mut bytes = REQUEST_BYTES;
        bytes[1] = 6; // IEEE 802 hardware
        let p = ArpPacket::new_checked(&bytes[..]).unwrap();
        assert!(matches!(
            ArpRepr::parse(&p),
            Err(WireError::Unsupported { .. })
        ));
        let mut bytes = REQUEST_BYTES;
        bytes[5] = 16; // plen 16 (IPv6-sized), now too short for its own declared size
        assert!(ArpPacket::new_checked(&bytes[..]).is_err());
    }

    #[test]
    fn opcode_is_total() {
        assert_eq!(ArpOperation::from(2), ArpOperation::Reply);
        assert_eq!(ArpOperation::from(9), ArpOperation::Unknown(9));
    }
}
