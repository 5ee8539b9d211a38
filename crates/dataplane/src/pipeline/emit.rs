//! What the node itself sends: the framing of everything written into `out`, and the
//! packets it originates, ICMP errors and TCP resets. A helper below the stages, not a
//! stage: forward uses its framing, the driver its originators.
//!
//! ICMP errors (RFC 792, RFC 1812 §4.3.2): from the gateway IP (or the VIP, for the
//! load balancer's rejections) to the offending packet's source, quoting its IP header
//! and as much payload as keeps the error within 576 bytes (RFC 1812 §4.3.2.3; RFC
//! 792's minimum is 8 bytes). Never about an ICMP error, a non-first fragment, a packet
//! to a multicast/broadcast address, or from an address that is not one host (RFC 1122
//! §3.2.2, RFC 1812 §4.3.2.7). At most `icmp_errors_per_sec` ([`TokenBucket`]), resets
//! included. The error is then itself routed: back out of the ingress port to a local
//! sender (`Reply`), into the tunnel to a remote one (`Tunnel`), or, for a packet that
//! came from the tunnel with a local source, to that pod's port (`ToPort`). When it is
//! not sent, the packet is dropped with the reason the error would have given and
//! `icmp_errors_suppressed` counts it.
//!
//! A reset answers a TCP segment to a service without endpoints (RFC 9293 §3.10.7.1:
//! for a segment without ACK, `seq 0, ack = seq + length`, RST|ACK; with ACK,
//! `seq = its ack`, RST), as kube-proxy's `REJECT` does; never for a reset.

use core::net::Ipv4Addr;

use super::config::PipelineConfig;
use super::context::{Ctx, IcmpError, Verdict};
use crate::codec::vxlan::{Datagrams, Encap, ENCAP_PREFIX_LEN};
use crate::drops::{Counter, Counters, DropReason};
use crate::ratelimit::TokenBucket;
use crate::tables::ports::Ports;
use crate::tables::routes::{RouteSnapshot, RouteTarget};
use crate::types::{not_one_host, Ingress, Nanos, PortId};
use crate::wire::tcp::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crate::wire::{
    EtherType, EthernetFrame, EthernetRepr, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, IpProtocol,
    Ipv4Packet, Ipv4Repr, MacAddr, TcpPacket, TcpRepr, ETHERNET_HEADER_LEN, ICMPV4_HEADER_LEN,
    ICMP_TIMXCEED_INTRANS, ICMP_UNREACH_HOST, ICMP_UNREACH_NEEDFRAG, ICMP_UNREACH_NET,
    IPV4_MIN_HEADER_LEN, TCP_MIN_HEADER_LEN, VNET_HDR_LEN,
};

/// An ICMP error is at most this long, IP header included (RFC 1812 §4.3.2.3).
const ICMP_ERROR_MAX: usize = 576;

/// TTL and DSCP of the errors we originate (Linux: `IPTOS_PREC_INTERNETCONTROL`).
const ICMP_ERROR_TTL: u8 = 64;
const ICMP_ERROR_TOS: u8 = 0xc0;

/// TTL of the resets we originate.
const RST_TTL: u8 = 64;

/// Where a packet we write goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Egress {
    /// Back out of the ingress port to this MAC.
    Reply(MacAddr),
    /// To a local port and MAC.
    Port(PortId, MacAddr),
    /// Into the tunnel to peer `i`.
    Peer(usize),
}

/// A packet originated into `out`: where it goes, and where its IPv4 packet lies.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Originated {
    pub egress: Egress,
    /// Offset of its IPv4 header in `out` (after the framing).
    pub ip_at: usize,
    /// End of the packet in `out`.
    pub end: usize,
}

/// The local subnet's directed broadcast address (none for /31 and /32).
pub(crate) fn is_subnet_broadcast(routes: &RouteSnapshot, a: Ipv4Addr) -> bool {
    let local = routes.local_subnet();
    local.prefix_len() < 31 && a == local.broadcast()
}

/// Where a packet we originate for `dst` goes: a peer's subnet → the tunnel;
/// otherwise back to the sending port, or (from the tunnel) to the local port of
/// `dst`.
pub(crate) fn egress_for(
    cfg: &PipelineConfig,
    routes: &RouteSnapshot,
    ports: &Ports,
    ctx: &Ctx,
    dst: Ipv4Addr,
) -> Option<Egress> {
    match (routes.lookup(dst), cfg.tunnel, ctx.ingress) {
        (Some(RouteTarget::Peer(i)), Some(_), _) => Some(Egress::Peer(i)),
        (_, _, Ingress::Port(_)) => Some(Egress::Reply(ctx.src_mac)),
        (_, _, Ingress::Tunnel) => ports
            .local_dest(dst)
            .ok()
            .map(|(port, mac)| Egress::Port(port, mac)),
    }
}

/// Writes the framing for `egress` at the start of `out` and returns its length:
/// zeroed virtio-net header + Ethernet (gateway → `mac`), or VXLAN + Ethernet.
pub(crate) fn write_prefix(
    cfg: &PipelineConfig,
    routes: &RouteSnapshot,
    out: &mut [u8],
    egress: Egress,
) -> Result<usize, DropReason> {
    let mac = match egress {
        Egress::Reply(mac) | Egress::Port(_, mac) => mac,
        Egress::Peer(i) => {
            let (Some(t), Some(peer)) = (cfg.tunnel, routes.peer(i)) else {
                return Err(DropReason::NoRoute);
            };
            let enc = Encap {
                vni: t.vni,
                src_mac: t.vtep_mac,
                dst_mac: peer.vtep_mac,
            };
            enc.write_prefix(out)?;
            return Ok(ENCAP_PREFIX_LEN);
        }
    };
    write_port_prefix(cfg, out, mac)
}

/// [`write_prefix`] for a local port (or the ingress one) whose pod has `mac`: a
/// zeroed virtio-net header and Ethernet from the gateway.
#[inline(always)]
pub(crate) fn write_port_prefix(
    cfg: &PipelineConfig,
    out: &mut [u8],
    mac: MacAddr,
) -> Result<usize, DropReason> {
    let len = VNET_HDR_LEN + ETHERNET_HEADER_LEN;
    let buf = out.get_mut(..len).ok_or(DropReason::ReplyTooLarge)?;
    let (vnet, eth) = buf.split_at_mut(VNET_HDR_LEN);
    vnet.fill(0);
    EthernetRepr {
        src_addr: cfg.gateway_mac,
        dst_addr: mac,
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(eth));
    Ok(len)
}

/// The verdict for tunnel datagrams written into `out`.
pub(crate) fn tunnel_verdict(peer: Ipv4Addr, d: Datagrams) -> Verdict {
    match (u32::try_from(d.len), u32::try_from(d.segment_len)) {
        (Ok(len), Ok(segment_len)) => Verdict::Tunnel {
            peer,
            len,
            segment_len,
        },
        _ => DropReason::ReplyTooLarge.into(),
    }
}

/// The verdict for a packet we originated.
pub(crate) fn originated(routes: &RouteSnapshot, o: Originated) -> Verdict {
    match o.egress {
        Egress::Reply(_) => Verdict::Reply(o.end),
        Egress::Port(port, _) => Verdict::ToPort(port, o.end),
        Egress::Peer(i) => {
            let Some(peer) = routes.peer(i) else {
                return DropReason::NoRoute.into();
            };
            let d = Datagrams {
                len: o.end,
                segment_len: o.end,
                count: 1,
            };
            tunnel_verdict(peer.underlay_ip, d)
        }
    }
}

fn icmp_repr(err: IcmpError, quoted: &[u8]) -> Icmpv4Repr<'_> {
    let unreachable = |code, next_hop_mtu| Icmpv4Repr::DstUnreachable {
        code,
        next_hop_mtu,
        quoted,
    };
    match err {
        IcmpError::TimeExceeded => Icmpv4Repr::TimeExceeded {
            code: ICMP_TIMXCEED_INTRANS,
            quoted,
        },
        IcmpError::NetUnreachable => unreachable(ICMP_UNREACH_NET, 0),
        IcmpError::HostUnreachable => unreachable(ICMP_UNREACH_HOST, 0),
        IcmpError::FragNeeded(mtu) => unreachable(ICMP_UNREACH_NEEDFRAG, mtu),
        IcmpError::Unreachable { code, .. } => unreachable(code, 0),
    }
}

/// The packets the node originates, with their rate limit and identification.
#[derive(Debug)]
pub(crate) struct Origin {
    bucket: TokenBucket,
    /// Identification of the next packet we originate.
    ident: u16,
}

/// The node's view for originating: configuration, routes, ports, counters.
pub(crate) struct Env<'a> {
    pub cfg: &'a PipelineConfig,
    pub routes: &'a RouteSnapshot,
    pub ports: &'a Ports,
    pub counters: &'a Counters,
}

impl Origin {
    pub(crate) fn new(errors_per_sec: u32) -> Origin {
        Origin {
            bucket: TokenBucket::new(errors_per_sec),
            ident: 0,
        }
    }

    fn next_ident(&mut self) -> u16 {
        self.ident = self.ident.wrapping_add(1);
        self.ident
    }

    /// Builds and rate-limits an ICMP error about the packet in `pkt` (described by
    /// `ctx`) into `out`. `Err` is the drop reason when none is sent.
    pub(crate) fn icmp_error(
        &mut self,
        env: &Env,
        ctx: &Ctx,
        pkt: &[u8],
        err: IcmpError,
        now: Nanos,
        out: &mut [u8],
    ) -> Result<Originated, DropReason> {
        let reason = err.drop_reason();
        let suppressed = || {
            env.counters.bump(Counter::IcmpErrorsSuppressed);
            reason
        };
        let Some(ip) = ctx.ip else {
            return Err(suppressed());
        };
        let ip_bytes = pkt.get(ctx.ip_at()..).unwrap_or(&[]);
        let about_error = ip.proto == IpProtocol::Icmp
            && ip.total_len > ip.header_len
            && ip_bytes
                .get(ip.header_len)
                .is_some_and(|t| Icmpv4Message::from(*t).is_error());
        if ip.later_fragment
            || about_error
            || not_one_host(ip.src)
            || not_one_host(ip.dst)
            || is_subnet_broadcast(env.routes, ip.src)
        {
            return Err(suppressed());
        }
        let Some(egress) = egress_for(env.cfg, env.routes, env.ports, ctx, ip.src) else {
            return Err(suppressed());
        };
        if !self.bucket.take(now) {
            return Err(suppressed());
        }
        let mut max = ICMP_ERROR_MAX;
        if let (Egress::Peer(_), Some(t)) = (egress, env.cfg.tunnel) {
            max = max.min(usize::from(t.inner_mtu));
        }
        let room = max.saturating_sub(IPV4_MIN_HEADER_LEN + ICMPV4_HEADER_LEN);
        let Some(quoted) = ip_bytes.get(..ip.total_len.min(room)) else {
            return Err(suppressed());
        };
        let icmp = icmp_repr(err, quoted);
        let from_ip = match err {
            IcmpError::Unreachable { from, .. } => from,
            _ => env.cfg.gateway_ip,
        };
        let hdr = Ipv4Repr {
            src_addr: from_ip,
            dst_addr: ip.src,
            protocol: IpProtocol::Icmp,
            payload_len: icmp.buffer_len(),
            ttl: ICMP_ERROR_TTL,
            dscp_ecn: ICMP_ERROR_TOS,
            ident: self.next_ident(),
            dont_frag: false,
        };
        let ip_at = write_prefix(env.cfg, env.routes, out, egress)?;
        let end = ip_at + IPV4_MIN_HEADER_LEN + icmp.buffer_len();
        let buf = out.get_mut(ip_at..end).ok_or(DropReason::ReplyTooLarge)?;
        let mut p = Ipv4Packet::new_unchecked(buf);
        hdr.emit(&mut p).map_err(|_| DropReason::ReplyTooLarge)?;
        icmp.emit(&mut Icmpv4Packet::new_unchecked(p.payload_mut()));
        Ok(Originated { egress, ip_at, end })
    }

    /// A TCP reset from the service to the client of the segment in `pkt`, back out of
    /// the ingress port. `Err(LbNoEndpoint)` when none is sent.
    pub(crate) fn tcp_reset(
        &mut self,
        env: &Env,
        ctx: &Ctx,
        pkt: &[u8],
        now: Nanos,
        out: &mut [u8],
    ) -> Result<Originated, DropReason> {
        let (Some(ip), Some(l4)) = (ctx.ip, pkt.get(ctx.ip_at()..)) else {
            return Err(DropReason::Truncated);
        };
        let l4 = l4.get(ip.header_len..ip.total_len).unwrap_or(&[]);
        let tcp = TcpPacket::new_checked(l4).map_err(|_| DropReason::Truncated)?;
        let flags = tcp.flags();
        if flags & TCP_RST != 0 || !self.bucket.take(now) {
            return Err(DropReason::LbNoEndpoint);
        }
        let (seq, ack, rst_flags) = if flags & TCP_ACK != 0 {
            (tcp.ack_number(), 0, TCP_RST)
        } else {
            let data = u32::try_from(tcp.payload().len()).unwrap_or(0);
            let syn_fin = u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
            let ack = tcp.seq_number().wrapping_add(data).wrapping_add(syn_fin);
            (0, ack, TCP_RST | TCP_ACK)
        };
        let rst = TcpRepr {
            src_port: tcp.dst_port(),
            dst_port: tcp.src_port(),
            seq_number: seq,
            ack_number: ack,
            flags: rst_flags,
            window: 0,
        };
        let hdr = Ipv4Repr {
            src_addr: ip.dst,
            dst_addr: ip.src,
            protocol: IpProtocol::Tcp,
            payload_len: rst.buffer_len(),
            ttl: RST_TTL,
            dscp_ecn: 0,
            ident: self.next_ident(),
            dont_frag: true,
        };
        let egress = Egress::Reply(ctx.src_mac);
        let ip_at = write_prefix(env.cfg, env.routes, out, egress)?;
        let end = ip_at + IPV4_MIN_HEADER_LEN + TCP_MIN_HEADER_LEN;
        let buf = out.get_mut(ip_at..end).ok_or(DropReason::ReplyTooLarge)?;
        let mut p = Ipv4Packet::new_unchecked(buf);
        hdr.emit(&mut p).map_err(|_| DropReason::ReplyTooLarge)?;
        rst.emit(
            &mut TcpPacket::new_unchecked(p.payload_mut()),
            hdr.src_addr,
            hdr.dst_addr,
        );
        Ok(Originated { egress, ip_at, end })
    }
}
