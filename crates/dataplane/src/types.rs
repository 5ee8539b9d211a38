//! Small value types every layer of the data plane shares: time, ports, the
//! transport protocols and backends of services. No logic beyond their own methods.

use core::net::Ipv4Addr;

use crate::wire::{IpProtocol, MacAddr};

/// Monotonic time in nanoseconds, always passed in by the caller.
pub type Nanos = u64;

/// A bridge port: one TAP device, numbered by the I/O layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

/// What is behind a port, which decides how far its frames are trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRole {
    /// A pod's eth0. Anti-spoofing: frames whose source MAC is not `mac` are dropped
    /// (`SpoofedMac`); IPv4 frames whose source IP is not `ip`, and ARP whose sender IP
    /// is not `ip` (0.0.0.0 allowed for ARP probes), are dropped (`SpoofedIp`).
    Pod { mac: MacAddr, ip: Ipv4Addr },
    /// The node's own host port (TAP `cbr0` in the node namespace): trusted, no
    /// anti-spoofing.
    Host,
}

/// Where a frame entered the node: a port, or the VXLAN tunnel from another node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingress {
    Port(PortId),
    Tunnel,
}

/// The transport protocols a service port can have (SCTP is not supported).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => 6,
            L4Proto::Udp => 17,
        }
    }

    /// TCP or UDP; `None` for anything else.
    pub const fn from_ip(p: IpProtocol) -> Option<L4Proto> {
        match p {
            IpProtocol::Tcp => Some(L4Proto::Tcp),
            IpProtocol::Udp => Some(L4Proto::Udp),
            _ => None,
        }
    }
}

impl core::fmt::Display for L4Proto {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            L4Proto::Tcp => "TCP",
            L4Proto::Udp => "UDP",
        })
    }
}

/// One ready endpoint of a service port: a pod IP and its target port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl core::fmt::Display for Backend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// `true` for addresses that are not one unicast host: never routed to, never sent an
/// ICMP error, never a backend.
pub(crate) fn not_one_host(a: Ipv4Addr) -> bool {
    a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback()
}
