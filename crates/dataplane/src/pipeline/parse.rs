//! Stage 1, parse: the headers of one packet are checked once, into a [`Ctx`].
//!
//! From a port: the virtio-net header must be present and sane (`Truncated`,
//! `BadVnetHeader`), then an Ethernet header (`Truncated`); ARP is always parsed (it
//! is rare and the gateway must see requests for its IP); IPv4 is parsed when it comes
//! from a pod (anti-spoofing) or goes to the gateway MAC. Host-port IPv4 to other MACs,
//! the bulk of host traffic, is bridged without reading L3. Parse errors: `Truncated`,
//! `BadHeader`, `UnsupportedProtocol` (non-Ethernet/IPv4 ARP).
//!
//! From the tunnel (a VXLAN datagram, RFC 7348): the outer source must be a known
//! peer (`NotClusterNode`), the VXLAN header valid (`BadVxlan`) with our VNI
//! (`WrongVni`), the inner frame addressed to our VTEP MAC (`NotOurVtep`) and IPv4
//! (`UnsupportedProtocol`). The sending peer's pod subnet is recorded for admission.

use core::net::Ipv4Addr;

use super::config::TunnelConfig;
use super::context::{Ctx, Ip};
use crate::drops::{drop_for, Counter, Counters, DropReason};
use crate::tables::routes::RouteSnapshot;
use crate::types::PortRole;
use crate::wire::{
    ArpPacket, ArpRepr, EtherType, EthernetFrame, IpProtocol, Ipv4Packet, MacAddr, TcpPacket,
    UdpPacket, VnetHdr, VnetHdrRepr, VxlanPacket, VxlanRepr, WireError, UDP_HEADER_LEN,
    VNET_HDR_LEN, VXLAN_HEADER_LEN,
};

/// The ports and TCP flags of the packet `ip` describes (`None`, 0 when it has no
/// TCP/UDP header to read: another protocol, a later fragment, a short header).
#[inline(always)]
pub(crate) fn l4_facts(ip: &Ipv4Packet<&[u8]>) -> (Option<(u16, u16)>, u8) {
    let l4 = ip.payload();
    match ip.protocol() {
        _ if ip.frag_offset() != 0 => (None, 0),
        IpProtocol::Tcp => match TcpPacket::new_checked(l4) {
            Ok(t) => (Some((t.src_port(), t.dst_port())), t.flags()),
            Err(_) => (None, 0),
        },
        IpProtocol::Udp if l4.len() >= UDP_HEADER_LEN => {
            let u = UdpPacket::new_unchecked(l4);
            (Some((u.src_port(), u.dst_port())), 0)
        }
        _ => (None, 0),
    }
}

/// Reads the ports and flags of a packet whose IPv4 facts were parsed without them
/// (`Ip::l4_read` false), once: the stages that need them call this first.
#[inline]
pub(crate) fn read_l4(ctx: &mut Ctx, pkt: &[u8]) {
    let at = ctx.ip_at();
    let Some(ip) = ctx.ip.as_mut().filter(|ip| !ip.l4_read) else {
        return;
    };
    let bytes = pkt.get(at..).unwrap_or(&[]);
    let (ports, tcp_flags) = l4_facts(&Ipv4Packet::new_unchecked(bytes));
    ip.ports = ports;
    ip.tcp_flags = tcp_flags;
    ip.l4_read = true;
}

/// The IPv4 facts of a checked packet; its ports and TCP flags only if `with_l4`.
#[inline(always)]
fn ip_facts(ip: &Ipv4Packet<&[u8]>, with_l4: bool) -> Ip {
    let fragment = ip.is_fragment();
    let later_fragment = ip.frag_offset() != 0;
    let (ports, tcp_flags) = if with_l4 { l4_facts(ip) } else { (None, 0) };
    Ip {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        proto: ip.protocol(),
        header_len: ip.header_len(),
        total_len: usize::from(ip.total_len()),
        ttl: ip.ttl(),
        dont_frag: ip.dont_frag(),
        ports,
        fragment,
        later_fragment,
        ident: ip.ident(),
        tcp_flags,
        l4_read: with_l4,
    }
}

/// Checks an IPv4 packet and writes its facts into `slot` (in place: no copy of
/// the facts through a `Result`).
#[inline(always)]
fn ipv4(bytes: &[u8], with_l4: bool, slot: &mut Option<Ip>) -> Result<(), DropReason> {
    let p = Ipv4Packet::new_checked(bytes).map_err(drop_for)?;
    *slot = Some(ip_facts(&p, with_l4));
    Ok(())
}

/// A frame read from a port (virtio-net header + Ethernet frame) whose role is
/// `role`, into `ctx` (made by [`Ctx::new`] for that port). The context is filled
/// in place, field by field, and never moved: it is read by every stage.
#[inline]
pub(crate) fn from_port(
    role: PortRole,
    gateway_mac: MacAddr,
    pkt: &[u8],
    ctx: &mut Ctx,
) -> Result<(), DropReason> {
    if pkt.len() < VNET_HDR_LEN {
        return Err(DropReason::Truncated);
    }
    let (vnet_bytes, frame) = pkt.split_at(VNET_HDR_LEN.min(pkt.len()));
    let vnet = match VnetHdrRepr::parse(&VnetHdr::new_unchecked(vnet_bytes), frame.len()) {
        Ok(v) => v,
        Err(WireError::Truncated { .. }) => return Err(DropReason::Truncated),
        Err(_) => return Err(DropReason::BadVnetHeader),
    };
    let eth = EthernetFrame::new_checked(frame).map_err(drop_for)?;
    let (src_mac, dst_mac, ethertype) = (eth.src_addr(), eth.dst_addr(), eth.ethertype());
    if src_mac.is_multicast() {
        return Err(DropReason::SourceMulticast);
    }
    let to_gateway = dst_mac == gateway_mac;
    let from_pod = matches!(role, PortRole::Pod { .. });
    let arp = match ethertype {
        EtherType::Arp => Some(
            ArpPacket::new_checked(eth.payload())
                .and_then(|p| ArpRepr::parse(&p))
                .map_err(drop_for)?,
        ),
        _ => None,
    };
    if ethertype == EtherType::Ipv4 && (to_gateway || from_pod) {
        ipv4(eth.payload(), true, &mut ctx.ip)?;
    }
    ctx.src_mac = src_mac;
    ctx.dst_mac = dst_mac;
    ctx.vnet = vnet;
    ctx.to_gateway = to_gateway;
    ctx.arp = arp;
    Ok(())
}

/// A VXLAN datagram (UDP payload) from `src` on the underlay, into `ctx` (made by
/// [`Ctx::new`] for the tunnel).
#[inline]
pub(crate) fn from_tunnel(
    tun: Option<&TunnelConfig>,
    routes: &RouteSnapshot,
    src: Ipv4Addr,
    payload: &[u8],
    counters: &Counters,
    ctx: &mut Ctx,
) -> Result<(), DropReason> {
    let tun = tun.ok_or(DropReason::TunnelNotConfigured)?;
    let peer_subnet = match routes.peer_subnet_by_underlay(src) {
        Some(s) if src != tun.underlay_ip => s,
        _ => return Err(DropReason::NotClusterNode),
    };
    let vxlan = VxlanPacket::new_checked(payload)
        .and_then(|v| VxlanRepr::parse(&v))
        .map_err(|_| DropReason::BadVxlan)?;
    if vxlan.vni != tun.vni {
        return Err(DropReason::WrongVni);
    }
    counters.bump(Counter::TunneledIn);
    let frame = payload
        .get(VXLAN_HEADER_LEN..)
        .ok_or(DropReason::BadVxlan)?;
    let eth = EthernetFrame::new_checked(frame).map_err(drop_for)?;
    if eth.dst_addr() != tun.vtep_mac {
        return Err(DropReason::NotOurVtep);
    }
    if eth.ethertype() != EtherType::Ipv4 {
        return Err(DropReason::UnsupportedProtocol);
    }
    ctx.src_mac = eth.src_addr();
    ctx.dst_mac = eth.dst_addr();
    ctx.to_gateway = true;
    ctx.peer_subnet = Some(peer_subnet);
    // The ports are read later, by the stages that need them (a tracked flow, a
    // policy): most decapsulated packets are routed on their addresses alone.
    ipv4(eth.payload(), false, &mut ctx.ip)?;
    Ok(())
}
