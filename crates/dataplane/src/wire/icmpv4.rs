//! ICMPv4 (RFC 792): the 8-byte header every message shares, and echo request/reply.
//!
//! The gateway router answers echo requests addressed to the gateway IP, and the
//! forwarding path sends the error messages a router owes a sender (RFC 1812 §4.3):
//! time exceeded (type 11), destination unreachable (type 3: net 0, host 1, and
//! fragmentation needed 4 with the next-hop MTU of RFC 1191 in bytes 6..8). An error
//! quotes the offending datagram's IP header and the start of its payload.
//! The checksum covers the whole ICMP message (header and data), no pseudo-header.

use super::{
    checksum, enum_with_unknown, get_be16, get_u8, need_len, put_bytes, put_u8, Layer, WireError,
};

/// Every ICMPv4 message starts with 8 bytes: type, code, checksum, 4 type-specific bytes.
pub const ICMPV4_HEADER_LEN: usize = 8;

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const ECHO_IDENT: usize = 4;
    pub const ECHO_SEQ: usize = 6;
    pub const NEXT_HOP_MTU: usize = 6;
    pub const DATA: usize = 8;
}

enum_with_unknown! {
    /// ICMPv4 message type.
    pub enum Icmpv4Message(u8) {
        EchoReply = 0,
        DstUnreachable = 3,
        Redirect = 5,
        EchoRequest = 8,
        TimeExceeded = 11,
        ParamProblem = 12,
    }
}

/// Destination unreachable code 0: network unreachable.
pub const ICMP_UNREACH_NET: u8 = 0;
/// Destination unreachable code 1: host unreachable.
pub const ICMP_UNREACH_HOST: u8 = 1;
/// Destination unreachable code 4: fragmentation needed and DF set.
pub const ICMP_UNREACH_NEEDFRAG: u8 = 4;
/// Destination unreachable code: port unreachable (RFC 792).
pub const ICMP_UNREACH_PORT: u8 = 3;
/// Time exceeded code 0: TTL exceeded in transit.
pub const ICMP_TIMXCEED_INTRANS: u8 = 0;

impl Icmpv4Message {
    /// `true` for the error messages (RFC 1122 §3.2.2: destination unreachable, source
    /// quench, redirect, time exceeded, parameter problem), about which no further
    /// error may ever be sent.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Icmpv4Message::DstUnreachable
                | Icmpv4Message::Redirect
                | Icmpv4Message::TimeExceeded
                | Icmpv4Message::ParamProblem
                | Icmpv4Message::Unknown(4)
        )
    }
}

/// A view of an ICMPv4 message.
#[derive(Clone, Copy, Debug)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Wraps without checking; accessors on a short buffer return zeros.
    pub const fn new_unchecked(buffer: T) -> Self {
        Icmpv4Packet { buffer }
    }

    /// Wraps after checking the 8-byte header is present. The message is the whole
    /// buffer: pass exactly the IPv4 payload.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Err(Truncated)` if shorter than the header.
    pub fn check_len(&self) -> Result<(), WireError> {
        need_len(Layer::Icmpv4, self.buffer.as_ref(), ICMPV4_HEADER_LEN)
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Message type.
    pub fn msg_type(&self) -> Icmpv4Message {
        Icmpv4Message::from(get_u8(self.buffer.as_ref(), field::TYPE))
    }

    /// Code.
    pub fn msg_code(&self) -> u8 {
        get_u8(self.buffer.as_ref(), field::CODE)
    }

    /// Checksum as stored.
    pub fn checksum(&self) -> u16 {
        get_be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Echo identifier (meaningful for echo request/reply).
    pub fn echo_ident(&self) -> u16 {
        get_be16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    /// Echo sequence number (meaningful for echo request/reply).
    pub fn echo_seq_no(&self) -> u16 {
        get_be16(self.buffer.as_ref(), field::ECHO_SEQ)
    }

    /// Next-hop MTU of a "fragmentation needed" message (RFC 1191 §4).
    pub fn next_hop_mtu(&self) -> u16 {
        get_be16(self.buffer.as_ref(), field::NEXT_HOP_MTU)
    }

    /// Everything after the 8-byte header.
    pub fn data(&self) -> &[u8] {
        self.buffer.as_ref().get(field::DATA..).unwrap_or(&[])
    }

    /// `true` if the checksum over the whole message is right.
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(self.buffer.as_ref())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    /// Sets the message type.
    pub fn set_msg_type(&mut self, t: Icmpv4Message) {
        put_u8(self.buffer.as_mut(), field::TYPE, u8::from(t));
    }

    /// Sets the code.
    pub fn set_msg_code(&mut self, c: u8) {
        put_u8(self.buffer.as_mut(), field::CODE, c);
    }

    /// Stores `v` as the checksum.
    pub fn set_checksum(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::CHECKSUM, &v.to_be_bytes());
    }

    /// Sets the echo identifier.
    pub fn set_echo_ident(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::ECHO_IDENT, &v.to_be_bytes());
    }

    /// Sets the echo sequence number.
    pub fn set_echo_seq_no(&mut self, v: u16) {
        put_bytes(self.buffer.as_mut(), field::ECHO_SEQ, &v.to_be_bytes());
    }

    /// Sets bytes 4..8 to zero and the next-hop MTU (bytes 6..8).
    pub fn set_next_hop_mtu(&mut self, mtu: u16) {
        put_bytes(self.buffer.as_mut(), field::ECHO_IDENT, &[0, 0]);
        put_bytes(
            self.buffer.as_mut(),
            field::NEXT_HOP_MTU,
            &mtu.to_be_bytes(),
        );
    }

    /// Everything after the header, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(field::DATA..)
            .unwrap_or(&mut [])
    }

    /// Computes and stores the checksum over the whole buffer.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let sum = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(sum);
    }
}

/// The ICMPv4 messages this crate builds and answers, as plain values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Icmpv4Repr<'a> {
    EchoRequest {
        ident: u16,
        seq_no: u16,
        data: &'a [u8],
    },
    EchoReply {
        ident: u16,
        seq_no: u16,
        data: &'a [u8],
    },
    /// Type 3. `next_hop_mtu` is meaningful for code 4 only (zero otherwise);
    /// `quoted` is the offending datagram's header and leading payload bytes.
    DstUnreachable {
        code: u8,
        next_hop_mtu: u16,
        quoted: &'a [u8],
    },
    /// Type 11.
    TimeExceeded { code: u8, quoted: &'a [u8] },
}

impl<'a> Icmpv4Repr<'a> {
    /// Parses an echo request or reply (code must be 0), a destination unreachable or
    /// a time exceeded. The checksum is not verified here: with a virtio-net partial
    /// checksum it is not final yet (see the router). Other types are `Unsupported`.
    pub fn parse(packet: &Icmpv4Packet<&'a [u8]>) -> Result<Self, WireError> {
        packet.check_len()?;
        let buffer: &'a [u8] = packet.buffer;
        let data = buffer.get(field::DATA..).unwrap_or(&[]);
        match (packet.msg_type(), packet.msg_code()) {
            (Icmpv4Message::EchoRequest, 0) => Ok(Icmpv4Repr::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            }),
            (Icmpv4Message::EchoReply, 0) => Ok(Icmpv4Repr::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            }),
            (Icmpv4Message::DstUnreachable, code) => Ok(Icmpv4Repr::DstUnreachable {
                code,
                next_hop_mtu: if code == ICMP_UNREACH_NEEDFRAG {
                    packet.next_hop_mtu()
                } else {
                    0
                },
                quoted: data,
            }),
            (Icmpv4Message::TimeExceeded, code) => {
                Ok(Icmpv4Repr::TimeExceeded { code, quoted: data })
            }
            _ => Err(WireError::Unsupported {
                layer: Layer::Icmpv4,
                what: "not an echo request or reply",
            }),
        }
    }

    /// Bytes [`Icmpv4Repr::emit`] writes: header plus data.
    pub fn buffer_len(&self) -> usize {
        match self {
            Icmpv4Repr::EchoRequest { data, .. }
            | Icmpv4Repr::EchoReply { data, .. }
            | Icmpv4Repr::DstUnreachable { quoted: data, .. }
            | Icmpv4Repr::TimeExceeded { quoted: data, .. } => ICMPV4_HEADER_LEN + data.len(),
        }
    }

    /// Writes the message and its checksum into `packet`, which must be exactly
    /// [`Icmpv4Repr::buffer_len`] bytes (the checksum covers the whole buffer).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Icmpv4Packet<T>) {
        let data = match *self {
            Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data,
            }
            | Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            } => {
                let t = if matches!(self, Icmpv4Repr::EchoRequest { .. }) {
                    Icmpv4Message::EchoRequest
                } else {
                    Icmpv4Message::EchoReply
                };
                packet.set_msg_type(t);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
                data
            }
            Icmpv4Repr::DstUnreachable {
                code,
                next_hop_mtu,
                quoted,
            } => {
                packet.set_msg_type(Icmpv4Message::DstUnreachable);
                packet.set_msg_code(code);
                packet.set_next_hop_mtu(next_hop_mtu);
                quoted
            }
            Icmpv4Repr::TimeExceeded { code, quoted } => {
                packet.set_msg_type(Icmpv4Message::TimeExceeded);
                packet.set_msg_code(code);
                packet.set_next_hop_mtu(0);
                quoted
            }
        };
        if let Some(dst) = packet.data_mut().get_mut(..data.len()) {
            dst.copy_from_slice(data);
        }
        packet.fill_checksum();
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Echo request, ident 0x0b0c, seq 1, data "abcd".
    static ECHO_BYTES: [u8; 12] = [
        0x08, 0x00, 0x28, 0x2c, 0x0b, 0x0c, 0x00, 0x01, 0x61, 0x62, 0x63, 0x64,
    ];

    #[test]
    fn deconstruct() {
        let p = Icmpv4Packet::new_checked(&ECHO_BYTES[..]).unwrap();
        assert_eq!(p.msg_type(), Icmpv4Message::EchoRequest);
        assert_eq!(p.msg_code(), 0);
        assert_eq!(p.echo_ident(), 0x0b0c);
        assert_eq!(p.echo_seq_no(), 1);
        assert_eq!(p.data(), b"abcd");
        assert!(p.verify_checksum(), "checksum {:04x}", p.checksum());
    }

    #[test]
    fn parse_and_emit() {
        let p = Icmpv4Packet::new_checked(&ECHO_BYTES[..]).unwrap();
        let repr = Icmpv4Repr::parse(&p).unwrap();
        assert_eq!(
            repr,
            Icmpv4Repr::EchoRequest {
                ident: 0x0b0c,
                seq_no: 1,
                data: b"abcd"
            }
        );
        assert_eq!(repr.buffer_len(), 12);
        let mut buf = [0u8; 12];
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, ECHO_BYTES);
    }

    #[test]
    fn reply_differs_only_in_type_and_checksum() {
        let reply = Icmpv4Repr::EchoReply {
            ident: 0x0b0c,
            seq_no: 1,
            data: b"abcd",
        };
        let mut buf = [0u8; 12];
        let mut p = Icmpv4Packet::new_unchecked(&mut buf[..]);
        reply.emit(&mut p);
        assert!(p.verify_checksum());
        assert_eq!(buf[0], 0);
        // Type 8 -> 0 lowers the sum by 0x0800, so the checksum rises by 0x0800.
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), 0x282c + 0x0800);
        assert_eq!(buf[4..], ECHO_BYTES[4..]);
    }

    #[test]
    fn other_types_are_unsupported_and_short_is_truncated() {
        let mut b = ECHO_BYTES;
        b[0] = 13; // timestamp
        let p = Icmpv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.msg_type(), Icmpv4Message::Unknown(13));
        assert!(matches!(
            Icmpv4Repr::parse(&p),
            Err(WireError::Unsupported { .. })
        ));
        let mut b = ECHO_BYTES;
        b[1] = 1; // echo with a nonzero code
        assert!(Icmpv4Repr::parse(&Icmpv4Packet::new_unchecked(&b[..])).is_err());
        for len in 0..8 {
            assert!(matches!(
                Icmpv4Packet::new_checked(&ECHO_BYTES[..len]),
                Err(WireError::Truncated { .. })
            ));
        }
        assert_eq!(Icmpv4Message::from(42), Icmpv4Message::Unknown(42));
    }

    /// Fragmentation needed, next-hop MTU 1450, quoting a 20-byte header and 8 bytes.
    static FRAG_NEEDED_BYTES: [u8; 36] = [
        0x03, 0x04, 0x00, 0x00, 0x00, 0x00, 0x05, 0xaa, // type, code, sum, unused, MTU
        0x45, 0x00, 0x05, 0xdc, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 10, 244, 1, 2, 10,
        244, 2, 3, // quoted IPv4 header
        0x9c, 0x40, 0x00, 0x35, 0x05, 0xc8, 0x00, 0x00, // quoted UDP header
    ];

    #[test]
    fn errors_parse_and_emit() {
        let mut fixture = FRAG_NEEDED_BYTES;
        Icmpv4Packet::new_unchecked(&mut fixture[..]).fill_checksum();
        let p = Icmpv4Packet::new_checked(&fixture[..]).unwrap();
        assert_eq!(p.msg_type(), Icmpv4Message::DstUnreachable);
        assert!(p.msg_type().is_error());
        assert_eq!(p.next_hop_mtu(), 1450);
        let repr = Icmpv4Repr::parse(&p).unwrap();
        assert_eq!(
            repr,
            Icmpv4Repr::DstUnreachable {
                code: ICMP_UNREACH_NEEDFRAG,
                next_hop_mtu: 1450,
                quoted: &FRAG_NEEDED_BYTES[8..],
            }
        );
        assert_eq!(repr.buffer_len(), 36);
        let mut buf = [0xffu8; 36];
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, fixture);
        assert!(Icmpv4Packet::new_unchecked(&buf[..]).verify_checksum());

        let te = Icmpv4Repr::TimeExceeded {
            code: ICMP_TIMXCEED_INTRANS,
            quoted: &FRAG_NEEDED_BYTES[8..],
        };
        let mut buf = [0xffu8; 36];
        te.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]));
        assert_eq!(&buf[..2], &[11, 0]);
        assert_eq!(&buf[4..8], &[0; 4]);
        let p = Icmpv4Packet::new_checked(&buf[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(Icmpv4Repr::parse(&p).unwrap(), te);
        // Host unreachable: the MTU bytes stay zero.
        let mut b = fixture;
        b[1] = ICMP_UNREACH_HOST;
        let repr = Icmpv4Repr::parse(&Icmpv4Packet::new_unchecked(&b[..])).unwrap();
        assert!(matches!(
            repr,
            Icmpv4Repr::DstUnreachable {
                code: 1,
                next_hop_mtu: 0,
                ..
            }
        ));
    }

    #[test]
    fn error_classification() {
        for t in [3u8, 4, 5, 11, 12] {
            assert!(Icmpv4Message::from(t).is_error(), "{t}");
        }
        for t in [0u8, 8, 13, 14, 17, 42] {
            assert!(!Icmpv4Message::from(t).is_error(), "{t}");
        }
    }
}
