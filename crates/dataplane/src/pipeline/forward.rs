//! Stage 5, forward: the learning bridge for frames between ports, and the router for
//! IPv4 sent to the gateway MAC for someone else and for packets decapsulated from the
//! tunnel (RFC 1812 §5.2–5.3, RFC 7348).
//!
//! In full: docs/dataplane.md, "The forward stage (bridge and router)".
use super::config::PipelineConfig;
use super::context::{Ctx, IcmpError, Ip, Lazy, Verdict};
use super::emit::{is_subnet_broadcast, tunnel_verdict, write_port_prefix, Egress};
use crate::codec::vxlan::{
    complete_partial_checksum, encapsulate, fragment, segment_tcp, settle_l4_checksum, Encap,
    L4Checksum,
};
use crate::drops::{drop_for, Counter, Counters, DropReason};
use crate::tables::mac_table::MacTable;
use crate::tables::ports::Ports;
use crate::tables::routes::{RouteSnapshot, RouteTarget};
use crate::types::{not_one_host, Ingress, Nanos, PortId};
use crate::wire::{
    ArpOperation, EthernetFrame, GsoType, Ipv4Packet, MacAddr, TcpPacket, VnetHdr,
    ETHERNET_HEADER_LEN, VNET_HDR_F_DATA_VALID,
};

/// What the stage reads besides the packet.
pub(crate) struct FwdEnv<'a> {
    pub cfg: &'a PipelineConfig,
    pub ports: &'a Ports,
    pub counters: &'a Counters,
}

/// What routing reads.
struct RouteEnv<'a> {
    cfg: &'a PipelineConfig,
    routes: &'a RouteSnapshot,
    ports: &'a Ports,
    counters: &'a Counters,
}

/// The stage: bridge, gateway or route. See the module docs. `DECAP`: the packet
/// was decapsulated from the tunnel (the tunnel driver's copy of the stage). Parse
/// addressed it to the gateway, so it is routed or answered, never bridged; the
/// router is inlined into that driver alone (in the port driver it stays out of
/// line, [`route`]).
#[inline(always)]
pub(crate) fn forward<const DECAP: bool>(
    env: &FwdEnv,
    routes: &mut Lazy<RouteSnapshot>,
    macs: &mut MacTable,
    ctx: &Ctx,
    pkt: &mut [u8],
    now: Nanos,
    out: &mut [u8],
) -> Verdict {
    debug_assert_eq!(DECAP, ctx.ingress == Ingress::Tunnel);
    if DECAP || ctx.to_gateway {
        if !ctx.transit(env.cfg.gateway_ip) {
            return Verdict::Gateway;
        }
        let Some(ip) = ctx.ip.as_ref() else {
            return DropReason::UnsupportedProtocol.into();
        };
        let env = RouteEnv {
            cfg: env.cfg,
            routes: routes.get(),
            ports: env.ports,
            counters: env.counters,
        };
        // Returned as it is: the verdict is written once, where the driver reads it.
        return if DECAP {
            counted(&env, decide_route::<true>(&env, ctx, ip, pkt, out))
        } else {
            route(&env, ctx, ip, pkt, out)
        };
    }
    bridge(env.cfg, macs, ctx, now, env.counters)
}

/// The learning bridge's decision for a frame not sent to the gateway MAC.
#[inline(always)]
fn bridge(
    cfg: &PipelineConfig,
    macs: &mut MacTable,
    ctx: &Ctx,
    now: Nanos,
    counters: &Counters,
) -> Verdict {
    let arp_for_gateway = ctx.arp.is_some_and(|a| {
        a.operation == ArpOperation::Request && a.target_protocol_addr == cfg.gateway_ip
    });
    if ctx.dst_mac.is_broadcast() && arp_for_gateway {
        return Verdict::Gateway;
    }
    if ctx.dst_mac.is_multicast() {
        return Verdict::Flood;
    }
    match (macs.lookup(ctx.dst_mac, now, counters), ctx.port()) {
        (Some(p), Some(ingress)) if p == ingress => DropReason::HairpinSelf.into(),
        (Some(p), _) => Verdict::Forward(p),
        (None, _) => Verdict::Flood,
    }
}

/// The forwarding decision for the IPv4 packet `ip` of a frame from a port. See the
/// module docs. Kept out of line: inlined into both drivers it doubled the hot code
/// for no measurable gain (alternating runs pinned to one CPU, docs/benchmarks.md).
#[inline(never)]
fn route(env: &RouteEnv, ctx: &Ctx, ip: &Ip, pkt: &mut [u8], out: &mut [u8]) -> Verdict {
    counted(env, decide_route::<false>(env, ctx, ip, pkt, out))
}

/// Counts a routing decision that routed the packet.
#[inline(always)]
fn counted(env: &RouteEnv, v: Verdict) -> Verdict {
    if !matches!(v, Verdict::Drop(_) | Verdict::Icmp(_)) {
        env.counters.bump(Counter::Routed);
    }
    v
}

/// The routing decision, before it is counted. `DECAP`: decapsulated from the
/// tunnel (the ingress is known where the driver is, so neither copy tests it).
#[inline(always)]
fn decide_route<const DECAP: bool>(
    env: &RouteEnv,
    ctx: &Ctx,
    ip: &Ip,
    pkt: &mut [u8],
    out: &mut [u8],
) -> Verdict {
    let (cfg, routes) = (env.cfg, env.routes);
    let Some(frame) = pkt.get_mut(ctx.eth_at..) else {
        return DropReason::Truncated.into();
    };
    let header = frame.get(ETHERNET_HEADER_LEN..).unwrap_or(&[]);
    if !Ipv4Packet::new_unchecked(header).verify_checksum() {
        return DropReason::BadChecksum.into();
    }
    if not_one_host(ip.dst) || is_subnet_broadcast(routes, ip.dst) {
        return DropReason::NoRoute.into();
    }
    let target = match (routes.lookup(ip.dst), cfg.tunnel) {
        (Some(RouteTarget::Local), _) => match env.ports.local_dest(ip.dst) {
            Ok((port, mac)) => Egress::Port(port, mac),
            Err(DropReason::HostUnreachable) => return Verdict::Icmp(IcmpError::HostUnreachable),
            Err(r) => return r.into(),
        },
        (Some(RouteTarget::Peer(_)), None) | (None, None) => return DropReason::NoRoute.into(),
        (Some(RouteTarget::Peer(_)), Some(_)) if DECAP => return DropReason::TunnelLoop.into(),
        (Some(RouteTarget::Peer(i)), Some(_)) => Egress::Peer(i),
        (None, Some(_)) if routes.in_cluster(ip.dst) => {
            return Verdict::Icmp(IcmpError::HostUnreachable)
        }
        (None, Some(_)) => match egress_via_host(env, ctx, ip) {
            Some(Ok((port, mac))) => Egress::Port(port, mac),
            Some(Err(r)) => return r.into(),
            None => return Verdict::Icmp(IcmpError::NetUnreachable),
        },
    };
    if ip.ttl <= 1 {
        return Verdict::Icmp(IcmpError::TimeExceeded);
    }
    match target {
        Egress::Port(port, mac) if DECAP => copy_to_port(env, ctx, ip, frame, port, mac, out),
        Egress::Port(port, _) if ctx.port() == Some(port) && !ctx.translated => {
            DropReason::HairpinSelf.into()
        }
        Egress::Port(port, mac) => {
            rewrite_for_port(cfg, frame, mac);
            Verdict::Forward(port)
        }
        Egress::Peer(i) => send_to_peer(env, ctx, ip, i, frame, out),
        Egress::Reply(_) => DropReason::NoRoute.into(),
    }
}

/// The host port, for a pod's packet to an address outside the cluster when
/// `egress_via_host` is on (`None`: not this way, so net unreachable). The
/// service CIDR stays the load balancer's, and what comes from the tunnel or from
/// the host port itself never leaves through the host (no second exit, no loop).
#[inline(always)]
fn egress_via_host(
    env: &RouteEnv,
    ctx: &Ctx,
    ip: &Ip,
) -> Option<Result<(PortId, MacAddr), DropReason>> {
    let cfg = env.cfg;
    if !cfg.egress_via_host || cfg.service_cidr.is_some_and(|c| c.contains(ip.dst)) {
        return None;
    }
    let host_ip = cfg.host_ip?;
    let Ingress::Port(ingress) = ctx.ingress else {
        return None;
    };
    match env.ports.local_dest(host_ip) {
        Ok((port, _)) if port == ingress => None,
        Err(DropReason::HostUnreachable) => None,
        found => Some(found),
    }
}

/// Local delivery of a frame from a port: new MACs, TTL − 1, in place.
fn rewrite_for_port(cfg: &PipelineConfig, frame: &mut [u8], mac: MacAddr) {
    let mut eth = EthernetFrame::new_unchecked(&mut *frame);
    eth.set_dst_addr(mac);
    eth.set_src_addr(cfg.gateway_mac);
    Ipv4Packet::new_unchecked(eth.payload_mut()).decrement_ttl();
}

/// Local delivery of a decapsulated packet: virtio-net header, Ethernet
/// (gateway → pod), the IPv4 packet with TTL − 1, built in `out`. Its TCP/UDP
/// checksum is settled unless the service stage already did ([`settle_l4_checksum`]:
/// verified, or a partial one completed, or `BadInnerChecksum`); the header says
/// `DATA_VALID` when it was verified or completed, and is zeroed otherwise.
/// Inlined: the tunnel driver's router is its only caller.
#[inline(always)]
fn copy_to_port(
    env: &RouteEnv,
    ctx: &Ctx,
    ip: &Ip,
    frame: &[u8],
    port: PortId,
    mac: MacAddr,
    out: &mut [u8],
) -> Verdict {
    let ip_len = ip.total_len;
    let Some(src_ip) = frame.get(ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + ip_len) else {
        return DropReason::Truncated.into();
    };
    let prefix = match write_port_prefix(env.cfg, out, mac) {
        Ok(p) => p,
        Err(r) => return r.into(),
    };
    let Some(dst) = out.get_mut(prefix..prefix + ip_len) else {
        return DropReason::ReplyTooLarge.into();
    };
    dst.copy_from_slice(src_ip);
    Ipv4Packet::new_unchecked(&mut *dst).decrement_ttl();
    let l4 = match ctx.l4_checksum {
        Some(settled) => settled,
        None => match settle_l4_checksum(dst) {
            Ok(c) => c,
            Err(r) => return r.into(),
        },
    };
    if l4 == L4Checksum::Completed {
        env.counters.bump(Counter::InnerChecksumsCompleted);
    }
    if l4.data_valid() {
        VnetHdr::new_unchecked(&mut *out).set_flags(VNET_HDR_F_DATA_VALID);
    }
    Verdict::ToPort(port, prefix + ip_len)
}

/// How a packet goes into the tunnel: `Some(mss)` = software TSO, `None` = as one
/// packet or fragments; or the verdict that stops it (too big with DF, bad GSO).
fn tunnel_mss(
    ctx: &Ctx,
    ip: &Ip,
    frame: &[u8],
    mtu: usize,
    inner_mtu: u16,
) -> Result<Option<usize>, Verdict> {
    let total = ip.total_len;
    match ctx.vnet.gso() {
        GsoType::TcpV4 => {
            let tcp = frame
                .get(ETHERNET_HEADER_LEN + ip.header_len..ETHERNET_HEADER_LEN + total)
                .ok_or(Verdict::Drop(DropReason::Truncated))?;
            let tcp_hlen = TcpPacket::new_checked(tcp)
                .map_err(|e| Verdict::Drop(drop_for(e)))?
                .header_len();
            let hdrs = ip.header_len + tcp_hlen;
            let mss = usize::from(ctx.vnet.gso_size);
            if hdrs + mss.min(total - hdrs.min(total)) <= mtu {
                return Ok(Some(mss));
            }
            if ip.dont_frag {
                return Err(Verdict::Icmp(IcmpError::FragNeeded(inner_mtu)));
            }
            match mtu.checked_sub(hdrs) {
                Some(m) if m > 0 => Ok(Some(m)),
                _ => Err(DropReason::PacketTooBig.into()),
            }
        }
        GsoType::None if total > mtu && ip.dont_frag => {
            Err(Verdict::Icmp(IcmpError::FragNeeded(inner_mtu)))
        }
        GsoType::None => Ok(None),
        _ => Err(DropReason::UnsupportedGso.into()),
    }
}

/// Into the tunnel to peer `i`: MTU handling, TTL − 1, checksum completion, TSO or
/// fragmentation. See the module docs.
fn send_to_peer(
    env: &RouteEnv,
    ctx: &Ctx,
    ip: &Ip,
    i: usize,
    frame: &mut [u8],
    out: &mut [u8],
) -> Verdict {
    let (Some(tun), Some(peer)) = (env.cfg.tunnel, env.routes.peer(i)) else {
        return DropReason::NoRoute.into();
    };
    let enc = Encap {
        vni: tun.vni,
        src_mac: tun.vtep_mac,
        dst_mac: peer.vtep_mac,
    };
    let mtu = usize::from(tun.inner_mtu);
    let mss = match tunnel_mss(ctx, ip, frame, mtu, tun.inner_mtu) {
        Ok(m) => m,
        Err(v) => return v,
    };
    let ip_end = ETHERNET_HEADER_LEN + ip.total_len;
    if mss.is_none() && ctx.vnet.needs_csum() {
        let (start, offset) = (ctx.vnet.csum_start, ctx.vnet.csum_offset);
        let done =
            complete_partial_checksum(frame, usize::from(start), usize::from(offset), ip_end);
        if let Err(r) = done {
            return r.into();
        }
    }
    let Some(ip_slice) = frame.get_mut(ETHERNET_HEADER_LEN..ip_end) else {
        return DropReason::Truncated.into();
    };
    Ipv4Packet::new_unchecked(&mut *ip_slice).decrement_ttl();
    let result = match mss {
        Some(mss) => segment_tcp(&enc, ip_slice, mss, out),
        None if ip.total_len <= mtu => encapsulate(&enc, ip_slice, out),
        None => fragment(&enc, ip_slice, mtu, out),
    };
    match result {
        Ok(d) => tunnel_verdict(peer.underlay_ip, d),
        Err(r) => r.into(),
    }
}
