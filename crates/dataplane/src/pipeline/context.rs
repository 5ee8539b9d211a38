//! The one parsed view of a packet that every stage reads ([`Ctx`]), the verdict a
//! stage returns ([`Verdict`]), and what the caller is finally told ([`Action`]).
//!
//! The context is filled once, by `parse.rs`, from checked views: afterwards stages read
//! its fields instead of parsing headers again, and rewrite the packet bytes in place
//! through the offsets it records (NAT keeps `ip` in step with what it wrote).

use core::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::codec::vxlan::L4Checksum;
use crate::drops::DropReason;
use crate::tables::conntrack::Tuple;
use crate::tables::fragments::FragKey;
use crate::tables::routes::PeerSubnet;
use crate::types::{Ingress, L4Proto, PortId};
use crate::wire::{
    ArpRepr, IpProtocol, MacAddr, VnetHdrRepr, ETHERNET_HEADER_LEN, VNET_HDR_LEN, VXLAN_HEADER_LEN,
};

/// What the caller must do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Send the input buffer (virtio-net header included) out of this port. Bridged
    /// frames are unchanged; routed ones were rewritten in place (MACs, TTL, IPv4
    /// checksum).
    Forward(PortId),
    /// Send the input buffer out of every port except the ingress one.
    Flood,
    /// Send these bytes (a zeroed virtio-net header followed by an Ethernet frame,
    /// built in the caller's `out` buffer) back out of the ingress port.
    Reply(&'a [u8]),
    /// Send these bytes (virtio-net header + Ethernet frame, built in `out`) to this
    /// port.
    ToPort(PortId, &'a [u8]),
    /// Send UDP datagrams to `peer`:4789. `datagrams` holds one or more VXLAN
    /// datagrams back to back (UDP payloads: VXLAN header + inner frame), each exactly
    /// `segment_len` bytes except possibly the last, which is shorter (the layout UDP
    /// GSO `UDP_SEGMENT` wants). `flow_hash` is a hash of the inner flow (src/dst IP,
    /// protocol, ports of unfragmented TCP/UDP): pick the outer UDP source port from
    /// it (ECMP entropy, RFC 7348 §5).
    Tunnel {
        peer: Ipv4Addr,
        flow_hash: u32,
        datagrams: &'a [u8],
        segment_len: usize,
    },
    /// Do nothing with it; the reason has been counted.
    Drop(DropReason),
}

/// The ICMP error a packet earns (RFC 792, RFC 1812 §4.3.2); the driver has it built
/// and routed back to the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IcmpError {
    TimeExceeded,
    NetUnreachable,
    HostUnreachable,
    FragNeeded(u16),
    /// Destination unreachable with `code`, from `from` (the service load balancer's
    /// rejections); `reason` when not sent.
    Unreachable {
        from: Ipv4Addr,
        code: u8,
        reason: DropReason,
    },
}

impl IcmpError {
    /// The drop reason when the error is not sent.
    pub(crate) fn drop_reason(self) -> DropReason {
        match self {
            IcmpError::TimeExceeded => DropReason::TtlExpired,
            IcmpError::NetUnreachable => DropReason::NoRoute,
            IcmpError::HostUnreachable => DropReason::HostUnreachable,
            IcmpError::FragNeeded(_) => DropReason::PacketTooBig,
            IcmpError::Unreachable { reason, .. } => reason,
        }
    }
}

/// What a stage decided. `Continue` hands the packet to the next stage; the rest end
/// its path (the driver turns `Icmp`, `Reset` and `Gateway` into the packet that
/// answers, through `emit.rs` and `gateway.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// On to the next stage.
    Continue,
    /// Out of this port, the input buffer (rewritten in place if routed).
    Forward(PortId),
    /// Out of every port but the ingress one.
    Flood,
    /// `out[..len]` back out of the ingress port.
    Reply(usize),
    /// `out[..len]` to this port.
    ToPort(PortId, usize),
    /// `out[..len]`: VXLAN datagrams of `segment_len` bytes (the last may be
    /// shorter) for `peer`. Kept to 16 bytes, as every verdict, so that it travels
    /// in registers: the flow hash and the count are derived from `out` at the end.
    Tunnel {
        peer: Ipv4Addr,
        len: u32,
        segment_len: u32,
    },
    /// Answer with this ICMP error (or drop with its reason if none may be sent).
    Icmp(IcmpError),
    /// Answer a TCP segment to a service without endpoints with a reset.
    Reset,
    /// Addressed to the gateway itself: its own answers (ARP, echo).
    Gateway,
    /// Dropped, for this reason.
    Drop(DropReason),
}

// Sixteen bytes or less travel in registers between the stages and the driver;
// larger verdicts were measured to stall on their way through the stack.
const _: () = assert!(core::mem::size_of::<Verdict>() <= 16);

impl From<DropReason> for Verdict {
    fn from(r: DropReason) -> Self {
        Verdict::Drop(r)
    }
}

/// A published snapshot (routes, services), loaded on first use: a bridged frame
/// never pays for the load of tables it does not read.
pub(crate) struct Lazy<'a, T> {
    handle: &'a ArcSwap<T>,
    guard: Option<Guard<Arc<T>>>,
}

impl<'a, T> Lazy<'a, T> {
    pub(crate) fn new(handle: &'a ArcSwap<T>) -> Self {
        Lazy {
            handle,
            guard: None,
        }
    }

    /// The snapshot, loaded now if it was not yet.
    pub(crate) fn get(&mut self) -> &T {
        let handle = self.handle;
        self.guard.get_or_insert_with(|| handle.load())
    }
}

/// The IPv4 facts of a packet, read once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ip {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: IpProtocol,
    /// Header length and total length (the packet may be followed by padding).
    pub header_len: usize,
    pub total_len: usize,
    pub ttl: u8,
    pub dont_frag: bool,
    /// Source and destination port: TCP/UDP, header present, not a fragment after
    /// the first.
    pub ports: Option<(u16, u16)>,
    /// Any fragment, the first included.
    pub fragment: bool,
    /// A fragment after the first (no L4 header).
    pub later_fragment: bool,
    /// IPv4 identification (what ties fragments together).
    pub ident: u16,
    /// TCP flags (0 otherwise).
    pub tcp_flags: u8,
    /// `ports` and `tcp_flags` were read (decapsulated packets leave them for
    /// `parse::read_l4`, called by the stages that need them).
    pub l4_read: bool,
}

impl Ip {
    /// What identifies this packet's datagram among fragments.
    pub(crate) fn frag_key(&self) -> FragKey {
        FragKey {
            src: self.src,
            dst: self.dst,
            proto: u8::from(self.proto),
            ident: self.ident,
        }
    }

    /// The connection-tracking key of a TCP/UDP packet that carries its ports.
    pub(crate) fn tuple(&self) -> Option<Tuple> {
        let (sport, dport) = self.ports?;
        Some(Tuple {
            src: self.src,
            sport,
            dst: self.dst,
            dport,
            proto: L4Proto::from_ip(self.proto)?,
        })
    }
}

/// One packet as the stages see it. See the module docs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ctx {
    pub ingress: Ingress,
    /// The frame's source MAC (where a port's replies go).
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    /// Offset of the Ethernet header in the buffer: after the virtio-net header for a
    /// port, after the VXLAN header for the tunnel.
    pub eth_at: usize,
    /// The virtio-net header (zero for the tunnel).
    pub vnet: VnetHdrRepr,
    /// Sent to the gateway MAC (always, for the tunnel).
    pub to_gateway: bool,
    pub arp: Option<ArpRepr>,
    /// Present for IPv4 from a pod, to the gateway MAC, or from the tunnel; host-port
    /// IPv4 to other MACs is bridged without reading L3.
    pub ip: Option<Ip>,
    /// The load balancer rewrote it: it is routed even back out of its ingress port
    /// (a pod reaching itself through a ClusterIP).
    pub translated: bool,
    /// The TCP/UDP checksum, once settled (tunnel input only).
    pub l4_checksum: Option<L4Checksum>,
    /// From the tunnel: the pod subnet of the peer whose underlay address sent the
    /// datagram.
    pub peer_subnet: Option<PeerSubnet>,
}

impl Ctx {
    /// The context of a packet from `ingress`, before parsing: nothing known yet
    /// but where the Ethernet header starts.
    #[inline]
    pub(crate) const fn new(ingress: Ingress) -> Ctx {
        Ctx {
            ingress,
            src_mac: MacAddr::ZERO,
            dst_mac: MacAddr::ZERO,
            eth_at: match ingress {
                Ingress::Port(_) => VNET_HDR_LEN,
                Ingress::Tunnel => VXLAN_HEADER_LEN,
            },
            vnet: VnetHdrRepr {
                flags: 0,
                gso_type: 0,
                hdr_len: 0,
                gso_size: 0,
                csum_start: 0,
                csum_offset: 0,
            },
            to_gateway: false,
            arp: None,
            ip: None,
            translated: false,
            l4_checksum: None,
            peer_subnet: None,
        }
    }

    /// Offset of the IPv4 header in the buffer.
    pub(crate) const fn ip_at(&self) -> usize {
        self.eth_at + ETHERNET_HEADER_LEN
    }

    /// The port it came in on (`None` from the tunnel).
    pub(crate) const fn port(&self) -> Option<PortId> {
        match self.ingress {
            Ingress::Port(p) => Some(p),
            Ingress::Tunnel => None,
        }
    }

    /// IPv4 to someone other than the gateway itself: routed when sent to the gateway
    /// MAC.
    pub(crate) fn transit(&self, gateway_ip: Ipv4Addr) -> bool {
        self.arp.is_none() && self.ip.is_some_and(|ip| ip.dst != gateway_ip)
    }
}
