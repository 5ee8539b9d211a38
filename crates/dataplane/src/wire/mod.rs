//! Checked views over packet bytes, and `Repr`s that emit headers into a caller's buffer.
//!
//! Every header the data plane touches is read through a view (`EthernetFrame<T>`,
//! `ArpPacket<T>`, `Ipv4Packet<T>`, `Icmpv4Packet<T>`, `TcpPacket<T>`, `UdpPacket<T>`,
//! `VxlanPacket<T>`, `VnetHdr<T>`) built with
//! `new_checked`, which validates lengths (and, for IPv4, the header-length fields)
//! once. After that, accessors cannot panic: they read through `slice::get`, and the
//! fall-back for a missing byte (unreachable after `new_checked`) is zero. A view made
//! with `new_unchecked` is only for emitting into a buffer the caller has sized.
//!
//! Protocol numbers are total enums with an `Unknown(n)` variant: an unknown EtherType
//! is a value to switch on, not a parse error. Nothing here casts pointers onto header
//! bytes and nothing allocates.
//!
//! Byte order: network (big-endian) for every on-the-wire header; the virtio-net header
//! is little-endian, see [`vnet`].

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod ipv4;
pub mod tcp;
pub mod udp;
pub mod vnet;
pub mod vxlan;

pub use arp::{ArpOperation, ArpPacket, ArpRepr};
pub use ethernet::{EtherType, EthernetFrame, EthernetRepr, MacAddr, ETHERNET_HEADER_LEN};
pub use icmpv4::{
    Icmpv4Message, Icmpv4Packet, Icmpv4Repr, ICMPV4_HEADER_LEN, ICMP_TIMXCEED_INTRANS,
    ICMP_UNREACH_HOST, ICMP_UNREACH_NEEDFRAG, ICMP_UNREACH_NET, ICMP_UNREACH_PORT,
};
pub use ipv4::{IpProtocol, Ipv4Packet, Ipv4Repr, IPV4_MIN_HEADER_LEN};
pub use tcp::{TcpPacket, TcpRepr, TCP_MIN_HEADER_LEN};
pub use udp::{UdpPacket, UDP_HEADER_LEN};
pub use vnet::{
    GsoType, VnetHdr, VnetHdrRepr, VNET_HDR_F_DATA_VALID, VNET_HDR_F_NEEDS_CSUM, VNET_HDR_GSO_ECN,
    VNET_HDR_GSO_NONE, VNET_HDR_GSO_TCPV4, VNET_HDR_GSO_TCPV6, VNET_HDR_GSO_UDP,
    VNET_HDR_GSO_UDP_L4, VNET_HDR_LEN,
};
pub use vxlan::{VxlanPacket, VxlanRepr, VXLAN_HEADER_LEN, VXLAN_PORT};

/// Which header a [`WireError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    Vnet,
    Ethernet,
    Arp,
    Ipv4,
    Icmpv4,
    Tcp,
    Udp,
    Vxlan,
}

impl core::fmt::Display for Layer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Layer::Vnet => "virtio-net header",
            Layer::Ethernet => "Ethernet",
            Layer::Arp => "ARP",
            Layer::Ipv4 => "IPv4",
            Layer::Icmpv4 => "ICMPv4",
            Layer::Tcp => "TCP",
            Layer::Udp => "UDP",
            Layer::Vxlan => "VXLAN",
        })
    }
}

/// Why a header could not be parsed. Cheap and `Copy`: it is built on the packet path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer ends before the header (or the length the header declares) does.
    #[error("{layer}: truncated: need {need} bytes, have {have}")]
    Truncated {
        layer: Layer,
        need: usize,
        have: usize,
    },
    /// A field holds a value that makes the header inconsistent.
    #[error("{layer}: malformed: {what}")]
    Malformed { layer: Layer, what: &'static str },
    /// Well-formed, but a kind this parser does not represent (e.g. non-Ethernet ARP).
    #[error("{layer}: unsupported: {what}")]
    Unsupported { layer: Layer, what: &'static str },
}

/// Defines a total protocol-number enum: named variants plus `Unknown(n)`, with
/// `From<$ty>` and `From<Enum> for $ty` that round-trip every value.
macro_rules! enum_with_unknown {
    (
        $(#[$enum_attr:meta])*
        pub enum $name:ident($ty:ty) {
            $( $(#[$variant_attr:meta])* $variant:ident = $value:expr ),+ $(,)?
        }
    ) => {
        $(#[$enum_attr])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$variant_attr])* $variant, )+
            /// A value this crate has no name for.
            Unknown($ty),
        }

        impl ::core::convert::From<$ty> for $name {
            #[inline]
            fn from(value: $ty) -> Self {
                match value {
                    $( $value => $name::$variant, )+
                    other => $name::Unknown(other),
                }
            }
        }

        impl ::core::convert::From<$name> for $ty {
            #[inline]
            fn from(value: $name) -> Self {
                match value {
                    $( $name::$variant => $value, )+
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}
pub(crate) use enum_with_unknown;

/// Big-endian `u16` at `at`; zero if the buffer is too short (views check lengths first).
#[inline]
pub(crate) fn get_be16(buf: &[u8], at: usize) -> u16 {
    match buf.get(at..at.saturating_add(2)) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

/// Little-endian `u16` at `at`; zero if the buffer is too short.
#[inline]
pub(crate) fn get_le16(buf: &[u8], at: usize) -> u16 {
    match buf.get(at..at.saturating_add(2)) {
        Some(&[a, b]) => u16::from_le_bytes([a, b]),
        _ => 0,
    }
}

/// Byte at `at`; zero if the buffer is too short.
#[inline]
pub(crate) fn get_u8(buf: &[u8], at: usize) -> u8 {
    buf.get(at).copied().unwrap_or(0)
}

/// `N` bytes at `at`; zeros if the buffer is too short.
#[inline]
pub(crate) fn get_array<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    buf.get(at..at.saturating_add(N))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .unwrap_or([0; N])
}

/// Writes `bytes` at `at`; does nothing if the buffer is too short (views check first).
#[inline]
pub(crate) fn put_bytes(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(at..at.saturating_add(bytes.len())) {
        dst.copy_from_slice(bytes);
    }
}

/// Writes the byte `value` at `at`; does nothing if the buffer is too short.
#[inline]
pub(crate) fn put_u8(buf: &mut [u8], at: usize, value: u8) {
    if let Some(dst) = buf.get_mut(at) {
        *dst = value;
    }
}

/// Returns `Err(Truncated)` unless `buf` holds at least `need` bytes.
#[inline]
pub(crate) fn need_len(layer: Layer, buf: &[u8], need: usize) -> Result<(), WireError> {
    if buf.len() < need {
        Err(WireError::Truncated {
            layer,
            need,
            have: buf.len(),
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_never_panic_on_short_buffers() {
        let buf = [1u8, 2, 3];
        assert_eq!(get_be16(&buf, 0), 0x0102);
        assert_eq!(get_le16(&buf, 1), 0x0302);
        assert_eq!(get_be16(&buf, 2), 0);
        assert_eq!(get_be16(&buf, usize::MAX), 0);
        assert_eq!(get_u8(&buf, 3), 0);
        assert_eq!(get_array::<4>(&buf, 0), [0; 4]);
        let mut m = [0u8; 2];
        put_bytes(&mut m, 1, &[9, 9]);
        put_bytes(&mut m, usize::MAX, &[9]);
        put_u8(&mut m, 5, 1);
        assert_eq!(m, [0, 0]);
        assert!(need_len(Layer::Ipv4, &buf, 4).is_err());
        assert!(need_len(Layer::Ipv4, &buf, 3).is_ok());
    }

    #[test]
    fn wire_error_displays_layer_and_sizes() {
        let e = WireError::Truncated {
            layer: Layer::Arp,
            need: 28,
            have: 3,
        };
        assert_eq!(e.to_string(), "ARP: truncated: need 28 bytes, have 3");
    }
}
