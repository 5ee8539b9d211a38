//! The router's forwarding path: IPv4 packets sent to the gateway MAC for someone else,
//! and packets decapsulated from the tunnel (RFC 1812 §5.2–5.3, RFC 7348).
//!
//! For each packet, in order (every exit a counted outcome):
//!
//! 1. IPv4 header checksum (`BadChecksum`, RFC 1812 §5.2.2); a multicast, broadcast,
//!    unspecified or loopback destination — or the local subnet's broadcast address —
//!    is never routed (`NoRoute`, no ICMP error: RFC 1122 §3.2.2);
//! 2. route lookup in the current [`RouteSnapshot`]:
//!    - `Local`: the pod port with that IP, or the host port for `host_ip`; none →
//!      ICMP host unreachable (3/1);
//!    - `Peer(i)`: the tunnel to that node — unless the packet came *from* the tunnel
//!      (`TunnelLoop`: peer → us → peer would ping-pong until TTL runs out) or no
//!      tunnel is configured (`NoRoute`, the behaviour before tunnels existed);
//!    - nothing: in the cluster CIDR → ICMP host unreachable (3/1); outside → ICMP net
//!      unreachable (3/0). Without a tunnel, plain `NoRoute` (as before);
//! 3. TTL: a packet arriving with TTL ≤ 1 is not forwarded; ICMP time exceeded (11/0)
//!    goes back (RFC 1812 §5.3.1). Otherwise TTL − 1 with an incremental checksum
//!    update (RFC 1624). Local delivery decrements too, so `traceroute` from a pod on
//!    node 1 to one on node 2 shows 10.244.1.1, 10.244.2.1, then the pod;
//! 4. out: to a local pod from a port, the input frame is rewritten in place (source
//!    MAC = gateway, destination MAC = the pod's, known from its `PortRole`: no ARP)
//!    and forwarded, virtio-net header (GSO, partial checksum) untouched; from the
//!    tunnel, the frame is copied into `out` behind a fresh virtio-net header
//!    (`ToPort`, to a pod or the host port), after its L4 checksum is settled (below).
//!    To a peer: VXLAN, with software TSO for GSO frames, fragmentation for large
//!    non-DF packets, ICMP "fragmentation needed" (3/4, next-hop MTU = inner MTU,
//!    RFC 1191) for large DF packets, and a partial checksum completed first — so
//!    whatever we put into the tunnel carries complete checksums.
//!
//! Service flows (`service_path.rs`): a frame DNATed by the load balancer is routed
//! here like any other, except that it may leave through its ingress port (hairpin:
//! a pod reaching itself through a ClusterIP); a decapsulated reply of a tracked flow
//! is un-NATed before the route lookup.
//!
//! Checksums of decapsulated TCP/UDP (`crate::tunnel::settle_l4_checksum`). A Linux
//! VXLAN sender (flannel's `flannel.1`) on a veth underlay sends inner TCP/UDP whose
//! checksum is only partial: veth "offloads" checksums, so the skb stays
//! `CHECKSUM_PARTIAL`, and VXLAN's outer UDP checksum is zero by default for IPv4
//! (RFC 7348 §5 says it SHOULD be), so nobody ever completes it. A Linux receiver
//! would accept the bytes (still `CHECKSUM_PARTIAL` locally); a pod behind our TAP
//! verifies and drops them — ICMP got through, TCP SYNs died "cksum incorrect". So for
//! an unfragmented TCP/UDP packet (fragments are left alone, flags 0: Linux completes
//! checksums before fragmenting, and a fragment cannot be verified by itself):
//! a checksum that verifies, or UDP's "no checksum" 0, → `VIRTIO_NET_HDR_F_DATA_VALID`
//! (the pod's kernel skips its own pass: `CHECKSUM_UNNECESSARY`); a field that equals
//! the partial form (the uncomplemented folded pseudo-header sum, the kernel's
//! `~csum_tcpudp_magic`) → completed in software, `DATA_VALID`, counted in
//! `inner_checksums_completed` (completing is safer than handing the pod a
//! `NEEDS_CSUM` header it may not expect on receive); anything else → dropped as
//! `BadInnerChecksum`. Other protocols, and L4 headers too short to check, keep
//! flags 0 and are the pod kernel's to judge.
//!
//! ICMP errors (RFC 792, RFC 1812 §4.3.2): from the gateway IP to the offending
//! packet's source, quoting its IP header and as much payload as keeps the error
//! within 576 bytes (RFC 1812 §4.3.2.3; RFC 792's minimum is 8 bytes). Never about an
//! ICMP error, a non-first fragment, a packet to a multicast/broadcast address, or
//! from an address that is not one host (RFC 1122 §3.2.2, RFC 1812 §4.3.2.7). At most
//! `icmp_errors_per_sec` ([`crate::ratelimit`]). The error is then itself routed: back
//! out of the ingress port to a local sender (`Reply`), into the tunnel to a remote one
//! (`Tunnel`), or, for a packet that came from the tunnel with a local source, to that
//! pod's port (`ToPort`). When the error is not sent, the packet is dropped with the
//! reason the error would have given (`TtlExpired`, `HostUnreachable`, `NoRoute`,
//! `PacketTooBig`) and `icmp_errors_suppressed` counts it.

use core::net::Ipv4Addr;

use super::{Pipeline, PortId, TunnelConfig, Verdict};
use crate::drops::{Counter, DropReason};
use crate::routes::{prefix_mask, RouteSnapshot, RouteTarget};
use crate::tunnel::{
    complete_partial_checksum, encapsulate, flow_hash, fragment, segment_tcp, settle_l4_checksum,
    Datagrams, Encap, L4Checksum, ENCAP_PREFIX_LEN,
};
use crate::wire::{
    EtherType, EthernetFrame, EthernetRepr, GsoType, Icmpv4Message, Icmpv4Packet, Icmpv4Repr,
    IpProtocol, Ipv4Packet, Ipv4Repr, MacAddr, TcpPacket, VnetHdr, VnetHdrRepr, VxlanPacket,
    VxlanRepr, ETHERNET_HEADER_LEN, ICMP_TIMXCEED_INTRANS, ICMP_UNREACH_HOST,
    ICMP_UNREACH_NEEDFRAG, ICMP_UNREACH_NET, IPV4_MIN_HEADER_LEN, VNET_HDR_F_DATA_VALID,
    VNET_HDR_LEN,
};
use crate::Nanos;

/// An ICMP error is at most this long, IP header included (RFC 1812 §4.3.2.3).
const ICMP_ERROR_MAX: usize = 576;

/// TTL and DSCP of the errors we originate (Linux: `IPTOS_PREC_INTERNETCONTROL`).
const ICMP_ERROR_TTL: u8 = 64;
const ICMP_ERROR_TOS: u8 = 0xc0;

/// Where a packet came from.
#[derive(Clone, Copy, Debug)]
pub(super) enum Ingress {
    /// A port; `mac` is the frame's source MAC (where replies go). `hairpin`: the
    /// service load balancer rewrote the packet, so it may go back out of its ingress
    /// port (a pod reaching itself through a ClusterIP).
    Port {
        port: PortId,
        mac: MacAddr,
        hairpin: bool,
    },
    /// The tunnel.
    Tunnel,
}

/// Where a packet the router originates (echo reply, ICMP error) goes.
#[derive(Clone, Copy, Debug)]
pub(super) enum Egress {
    /// Back out of the ingress port to this MAC.
    Reply(MacAddr),
    /// To a local port and MAC.
    Port(PortId, MacAddr),
    /// Into the tunnel to peer `i`.
    Peer(usize),
}

/// The ICMP error a packet earns.
#[derive(Clone, Copy, Debug)]
pub(super) enum IcmpError {
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
    fn drop_reason(self) -> DropReason {
        match self {
            IcmpError::TimeExceeded => DropReason::TtlExpired,
            IcmpError::NetUnreachable => DropReason::NoRoute,
            IcmpError::HostUnreachable => DropReason::HostUnreachable,
            IcmpError::FragNeeded(_) => DropReason::PacketTooBig,
            IcmpError::Unreachable { reason, .. } => reason,
        }
    }

    fn repr(self, quoted: &[u8]) -> Icmpv4Repr<'_> {
        match self {
            IcmpError::TimeExceeded => Icmpv4Repr::TimeExceeded {
                code: ICMP_TIMXCEED_INTRANS,
                quoted,
            },
            IcmpError::NetUnreachable | IcmpError::HostUnreachable => Icmpv4Repr::DstUnreachable {
                code: if matches!(self, IcmpError::NetUnreachable) {
                    ICMP_UNREACH_NET
                } else {
                    ICMP_UNREACH_HOST
                },
                next_hop_mtu: 0,
                quoted,
            },
            IcmpError::FragNeeded(mtu) => Icmpv4Repr::DstUnreachable {
                code: ICMP_UNREACH_NEEDFRAG,
                next_hop_mtu: mtu,
                quoted,
            },
            IcmpError::Unreachable { code, .. } => Icmpv4Repr::DstUnreachable {
                code,
                next_hop_mtu: 0,
                quoted,
            },
        }
    }
}

/// `true` for addresses that are not one unicast host: never routed to, never sent
/// an ICMP error.
fn not_one_host(a: Ipv4Addr) -> bool {
    a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback()
}

/// The local subnet's directed broadcast address (none for /31 and /32).
fn is_subnet_broadcast(routes: &RouteSnapshot, a: Ipv4Addr) -> bool {
    let (net, len) = routes.local_subnet();
    len < 31 && u32::from(a) == u32::from(net) | !prefix_mask(len)
}

/// Adds a counter's worth for a routed packet.
fn routed(v: Verdict, counters: &crate::drops::Counters) -> Verdict {
    if !matches!(v, Verdict::Drop(_)) {
        counters.bump(Counter::Routed);
    }
    v
}

impl Pipeline {
    /// Routes an IPv4 frame sent to the gateway MAC from a port for another address.
    /// `pkt` is the whole input (virtio-net header + frame), rewritten in place when
    /// forwarded. `hairpin`: see [`Ingress::Port`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn route_from_port(
        &mut self,
        port: PortId,
        mac: MacAddr,
        hairpin: bool,
        vnet: VnetHdrRepr,
        pkt: &mut [u8],
        now: Nanos,
        out: &mut [u8],
    ) -> Verdict {
        let Some(frame) = pkt.get_mut(VNET_HDR_LEN..) else {
            return DropReason::Truncated.into();
        };
        let routes = self.routes.load();
        let from = Ingress::Port { port, mac, hairpin };
        self.route(&routes, from, vnet, frame, now, out)
    }

    /// Checks and decapsulates one VXLAN datagram from `src`, then routes it.
    pub(super) fn decide_tunnel(
        &mut self,
        src: Ipv4Addr,
        payload: &mut [u8],
        now: Nanos,
        out: &mut [u8],
    ) -> Verdict {
        let Some(tun) = self.cfg.tunnel else {
            return DropReason::TunnelNotConfigured.into();
        };
        let routes = self.routes.load();
        if src == tun.underlay_ip || routes.peer_by_underlay(src).is_none() {
            return DropReason::NotClusterNode.into();
        }
        let vni = match VxlanPacket::new_checked(&*payload).and_then(|v| VxlanRepr::parse(&v)) {
            Ok(v) => v.vni,
            Err(_) => return DropReason::BadVxlan.into(),
        };
        if vni != tun.vni {
            return DropReason::WrongVni.into();
        }
        self.counters.bump(Counter::TunneledIn);
        let Some(frame) = payload.get_mut(crate::wire::VXLAN_HEADER_LEN..) else {
            return DropReason::BadVxlan.into();
        };
        let (dst, ethertype) = match EthernetFrame::new_checked(&*frame) {
            Ok(e) => (e.dst_addr(), e.ethertype()),
            Err(e) => return crate::router::drop_for(e).into(),
        };
        if dst != tun.vtep_mac {
            return DropReason::NotOurVtep.into();
        }
        if ethertype != EtherType::Ipv4 {
            return DropReason::UnsupportedProtocol.into();
        }
        if let Err(r) = self.unnat_from_tunnel(frame, now) {
            return r.into();
        }
        self.route(
            &routes,
            Ingress::Tunnel,
            VnetHdrRepr::default(),
            frame,
            now,
            out,
        )
    }

    /// The forwarding decision for an IPv4 packet in the Ethernet frame `frame` (which
    /// may run past the IPv4 total length: padding). See the module docs.
    pub(super) fn route(
        &mut self,
        routes: &RouteSnapshot,
        from: Ingress,
        vnet: VnetHdrRepr,
        frame: &mut [u8],
        now: Nanos,
        out: &mut [u8],
    ) -> Verdict {
        let Some(ip_bytes) = frame.get(ETHERNET_HEADER_LEN..) else {
            return DropReason::Truncated.into();
        };
        let ip = match Ipv4Packet::new_checked(ip_bytes) {
            Ok(p) => p,
            Err(e) => return crate::router::drop_for(e).into(),
        };
        let (dst, ttl) = (ip.dst_addr(), ip.ttl());
        if dst == self.cfg.gateway_ip {
            // Only reachable from the tunnel: ports send these to the router directly.
            return self.answer_gateway(routes, from, vnet, frame, out);
        }
        if !ip.verify_checksum() {
            return DropReason::BadChecksum.into();
        }
        if not_one_host(dst) || is_subnet_broadcast(routes, dst) {
            return DropReason::NoRoute.into();
        }
        let target = match (routes.lookup(dst), self.cfg.tunnel) {
            (Some(RouteTarget::Local), _) => match self.local_dest(dst) {
                Ok(d) => Egress::Port(d.0, d.1),
                Err(DropReason::HostUnreachable) => {
                    return self.icmp_error(
                        routes,
                        from,
                        frame,
                        IcmpError::HostUnreachable,
                        now,
                        out,
                    )
                }
                Err(r) => return r.into(),
            },
            (Some(RouteTarget::Peer(_)), None) | (None, None) => return DropReason::NoRoute.into(),
            (Some(RouteTarget::Peer(_)), Some(_)) if matches!(from, Ingress::Tunnel) => {
                return DropReason::TunnelLoop.into()
            }
            (Some(RouteTarget::Peer(i)), Some(_)) => Egress::Peer(i),
            (None, Some(_)) => {
                let err = if routes.in_cluster(dst) {
                    IcmpError::HostUnreachable
                } else {
                    IcmpError::NetUnreachable
                };
                return self.icmp_error(routes, from, frame, err, now, out);
            }
        };
        if ttl <= 1 {
            return self.icmp_error(routes, from, frame, IcmpError::TimeExceeded, now, out);
        }
        let v = match (target, from) {
            (
                Egress::Port(port, _),
                Ingress::Port {
                    port: ingress,
                    hairpin: false,
                    ..
                },
            ) if port == ingress => DropReason::HairpinSelf.into(),
            (Egress::Port(port, mac), Ingress::Port { .. }) => {
                self.rewrite_for_port(frame, mac);
                Verdict::Forward(port)
            }
            (Egress::Port(port, mac), Ingress::Tunnel) => self.copy_to_port(frame, port, mac, out),
            (Egress::Peer(i), _) => match self.cfg.tunnel {
                Some(tun) => self.send_to_peer(routes, &tun, i, from, vnet, frame, now, out),
                None => DropReason::NoRoute.into(),
            },
            (Egress::Reply(_), _) => DropReason::NoRoute.into(),
        };
        routed(v, &self.counters)
    }

    /// A local port for `dst`: a pod's, or the host port for `host_ip`.
    /// `HostUnreachable` if nobody has it, `HostMacUnknown` if the host MAC is unknown.
    fn local_dest(&self, dst: Ipv4Addr) -> Result<(PortId, MacAddr), DropReason> {
        if let Ok(i) = self.pods.binary_search_by_key(&dst, |e| e.0) {
            if let Some(&(_, port, mac)) = self.pods.get(i) {
                return Ok((port, mac));
            }
        }
        match (self.cfg.host_ip == Some(dst), self.host_port, self.host_mac) {
            (true, Some(port), Some(mac)) => Ok((port, mac)),
            (true, Some(_), None) => Err(DropReason::HostMacUnknown),
            _ => Err(DropReason::HostUnreachable),
        }
    }

    /// Local delivery of a frame from a port: new MACs, TTL − 1, in place.
    fn rewrite_for_port(&self, frame: &mut [u8], mac: MacAddr) {
        let mut eth = EthernetFrame::new_unchecked(&mut *frame);
        eth.set_dst_addr(mac);
        eth.set_src_addr(self.cfg.gateway_mac);
        Ipv4Packet::new_unchecked(eth.payload_mut()).decrement_ttl();
    }

    /// Local delivery of a decapsulated packet: virtio-net header, Ethernet
    /// (gateway → pod), the IPv4 packet with TTL − 1, built in `out`. Its TCP/UDP
    /// checksum is settled first ([`settle_l4_checksum`]: verified, or a partial one
    /// completed, or `BadInnerChecksum`); the header says `DATA_VALID` when it was
    /// verified or completed, and is zeroed otherwise.
    fn copy_to_port(&self, frame: &[u8], port: PortId, mac: MacAddr, out: &mut [u8]) -> Verdict {
        let ip = Ipv4Packet::new_unchecked(frame.get(ETHERNET_HEADER_LEN..).unwrap_or(&[]));
        let ip_len = usize::from(ip.total_len());
        let Some(src_ip) = frame.get(ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + ip_len) else {
            return DropReason::Truncated.into();
        };
        let prefix = match self.write_prefix(None, out, Egress::Port(port, mac)) {
            Ok(p) => p,
            Err(r) => return r.into(),
        };
        let Some(dst) = out.get_mut(prefix..prefix + ip_len) else {
            return DropReason::ReplyTooLarge.into();
        };
        dst.copy_from_slice(src_ip);
        Ipv4Packet::new_unchecked(&mut *dst).decrement_ttl();
        let l4 = match settle_l4_checksum(dst) {
            Ok(c) => c,
            Err(r) => return r.into(),
        };
        if l4 == L4Checksum::Completed {
            self.counters.bump(Counter::InnerChecksumsCompleted);
        }
        if l4.data_valid() {
            VnetHdr::new_unchecked(&mut *out).set_flags(VNET_HDR_F_DATA_VALID);
        }
        Verdict::ToPort(port, prefix + ip_len)
    }

    /// Into the tunnel to peer `i`: MTU handling, TTL − 1, checksum completion, TSO or
    /// fragmentation. See the module docs.
    #[allow(clippy::too_many_arguments)]
    fn send_to_peer(
        &mut self,
        routes: &RouteSnapshot,
        tun: &TunnelConfig,
        i: usize,
        from: Ingress,
        vnet: VnetHdrRepr,
        frame: &mut [u8],
        now: Nanos,
        out: &mut [u8],
    ) -> Verdict {
        let Some(peer) = routes.peer(i) else {
            return DropReason::NoRoute.into();
        };
        let enc = Encap {
            vni: tun.vni,
            src_mac: tun.vtep_mac,
            dst_mac: peer.vtep_mac,
        };
        let mtu = usize::from(tun.inner_mtu);
        let (total, hlen, df) = {
            let ip = Ipv4Packet::new_unchecked(frame.get(ETHERNET_HEADER_LEN..).unwrap_or(&[]));
            (usize::from(ip.total_len()), ip.header_len(), ip.dont_frag())
        };
        let ip_end = ETHERNET_HEADER_LEN + total;
        let gso = vnet.gso();
        // How to send it: Some(mss) = software TSO, None = as one packet or fragments.
        let mss = match gso {
            GsoType::TcpV4 => {
                let tcp_hlen = match frame
                    .get(ETHERNET_HEADER_LEN + hlen..ip_end)
                    .map(TcpPacket::new_checked)
                {
                    Some(Ok(t)) => t.header_len(),
                    Some(Err(e)) => return crate::router::drop_for(e).into(),
                    None => return DropReason::Truncated.into(),
                };
                let hdrs = hlen + tcp_hlen;
                let mss = usize::from(vnet.gso_size);
                if hdrs + mss.min(total - hdrs.min(total)) > mtu {
                    if df {
                        let err = IcmpError::FragNeeded(tun.inner_mtu);
                        return self.icmp_error(routes, from, frame, err, now, out);
                    }
                    match mtu.checked_sub(hdrs) {
                        Some(m) if m > 0 => Some(m),
                        _ => return DropReason::PacketTooBig.into(),
                    }
                } else {
                    Some(mss)
                }
            }
            GsoType::None => {
                if total > mtu && df {
                    let err = IcmpError::FragNeeded(tun.inner_mtu);
                    return self.icmp_error(routes, from, frame, err, now, out);
                }
                None
            }
            _ => return DropReason::UnsupportedGso.into(),
        };
        if gso == GsoType::None && vnet.needs_csum() {
            let start = usize::from(vnet.csum_start);
            if let Err(r) =
                complete_partial_checksum(frame, start, usize::from(vnet.csum_offset), ip_end)
            {
                return r.into();
            }
        }
        let Some(ip_slice) = frame.get_mut(ETHERNET_HEADER_LEN..ip_end) else {
            return DropReason::Truncated.into();
        };
        Ipv4Packet::new_unchecked(&mut *ip_slice).decrement_ttl();
        let ip = Ipv4Packet::new_unchecked(&*ip_slice);
        let hash = flow_hash(&ip);
        let result = match mss {
            Some(mss) => segment_tcp(&enc, ip_slice, mss, out),
            None if total <= mtu => encapsulate(&enc, ip_slice, out),
            None => fragment(&enc, ip_slice, mtu, out),
        };
        match result {
            Ok(d) => tunnel_verdict(peer.underlay_ip, hash, d),
            Err(r) => r.into(),
        }
    }

    /// A packet for the gateway IP that came from the tunnel: answered like a local
    /// ping, the reply routed back.
    fn answer_gateway(
        &mut self,
        routes: &RouteSnapshot,
        from: Ingress,
        vnet: VnetHdrRepr,
        frame: &[u8],
        out: &mut [u8],
    ) -> Verdict {
        let Ok(ip) = Ipv4Packet::new_checked(frame.get(ETHERNET_HEADER_LEN..).unwrap_or(&[]))
        else {
            return DropReason::Truncated.into();
        };
        let Some(egress) = self.egress_for(routes, from, ip.src_addr()) else {
            return DropReason::NoRoute.into();
        };
        let prefix = match self.write_prefix(Some(routes), out, egress) {
            Ok(p) => p,
            Err(r) => return r.into(),
        };
        let Some(rest) = out.get_mut(prefix..) else {
            return DropReason::ReplyTooLarge.into();
        };
        match self.router.answer_echo(&vnet, &ip, rest) {
            Ok(n) => self.originated(routes, egress, prefix + n, out),
            Err(r) => r.into(),
        }
    }

    /// Builds, rate-limits and routes an ICMP error about the packet in `frame`.
    pub(super) fn icmp_error(
        &mut self,
        routes: &RouteSnapshot,
        from: Ingress,
        frame: &[u8],
        err: IcmpError,
        now: Nanos,
        out: &mut [u8],
    ) -> Verdict {
        let reason = err.drop_reason();
        let suppressed = |c: &crate::drops::Counters| {
            c.bump(Counter::IcmpErrorsSuppressed);
            Verdict::Drop(reason)
        };
        let Ok(ip) = Ipv4Packet::new_checked(frame.get(ETHERNET_HEADER_LEN..).unwrap_or(&[]))
        else {
            return suppressed(&self.counters);
        };
        let src = ip.src_addr();
        let about_error = ip.protocol() == IpProtocol::Icmp
            && ip
                .payload()
                .first()
                .is_some_and(|t| Icmpv4Message::from(*t).is_error());
        if ip.frag_offset() != 0
            || about_error
            || not_one_host(src)
            || not_one_host(ip.dst_addr())
            || is_subnet_broadcast(routes, src)
        {
            return suppressed(&self.counters);
        }
        let Some(egress) = self.egress_for(routes, from, src) else {
            return suppressed(&self.counters);
        };
        if !self.icmp_bucket.take(now) {
            return suppressed(&self.counters);
        }
        let mut max = ICMP_ERROR_MAX;
        if let (Egress::Peer(_), Some(t)) = (egress, self.cfg.tunnel) {
            max = max.min(usize::from(t.inner_mtu));
        }
        let room = max.saturating_sub(IPV4_MIN_HEADER_LEN + crate::wire::ICMPV4_HEADER_LEN);
        let quoted_len = usize::from(ip.total_len()).min(room);
        let Some(quoted) = ip_bytes_of(frame).get(..quoted_len) else {
            return suppressed(&self.counters);
        };
        let icmp = err.repr(quoted);
        self.icmp_ident = self.icmp_ident.wrapping_add(1);
        let from_ip = match err {
            IcmpError::Unreachable { from, .. } => from,
            _ => self.cfg.gateway_ip,
        };
        let hdr = Ipv4Repr {
            src_addr: from_ip,
            dst_addr: src,
            protocol: IpProtocol::Icmp,
            payload_len: icmp.buffer_len(),
            ttl: ICMP_ERROR_TTL,
            dscp_ecn: ICMP_ERROR_TOS,
            ident: self.icmp_ident,
            dont_frag: false,
        };
        let prefix = match self.write_prefix(Some(routes), out, egress) {
            Ok(p) => p,
            Err(r) => return r.into(),
        };
        let len = IPV4_MIN_HEADER_LEN + icmp.buffer_len();
        let Some(buf) = out.get_mut(prefix..prefix + len) else {
            return DropReason::ReplyTooLarge.into();
        };
        let mut p = Ipv4Packet::new_unchecked(&mut *buf);
        if hdr.emit(&mut p).is_err() {
            return DropReason::ReplyTooLarge.into();
        }
        icmp.emit(&mut Icmpv4Packet::new_unchecked(p.payload_mut()));
        // About a DNATed packet of a service flow: the client must see its own
        // packet to the ClusterIP quoted (`service_path.rs`, ICMP errors).
        if let Err(r) = self.unnat_icmp_error(buf, now) {
            return r.into();
        }
        self.counters.bump(Counter::IcmpErrorsSent);
        self.originated(routes, egress, prefix + len, out)
    }

    /// Where a packet we originate for `dst` goes: a peer's subnet → the tunnel;
    /// otherwise back to the sending port, or (from the tunnel) to the local port of
    /// `dst`.
    pub(super) fn egress_for(
        &self,
        routes: &RouteSnapshot,
        from: Ingress,
        dst: Ipv4Addr,
    ) -> Option<Egress> {
        match (routes.lookup(dst), self.cfg.tunnel, from) {
            (Some(RouteTarget::Peer(i)), Some(_), _) => Some(Egress::Peer(i)),
            (_, _, Ingress::Port { mac, .. }) => Some(Egress::Reply(mac)),
            (_, _, Ingress::Tunnel) => self
                .local_dest(dst)
                .ok()
                .map(|(port, mac)| Egress::Port(port, mac)),
        }
    }

    /// Writes the framing for `egress` at the start of `out` and returns its length:
    /// zeroed virtio-net header + Ethernet (gateway → `mac`), or VXLAN + Ethernet.
    pub(super) fn write_prefix(
        &self,
        routes: Option<&RouteSnapshot>,
        out: &mut [u8],
        egress: Egress,
    ) -> Result<usize, DropReason> {
        let mac = match egress {
            Egress::Reply(mac) | Egress::Port(_, mac) => mac,
            Egress::Peer(i) => {
                let peer = routes.and_then(|r| r.peer(i));
                let (Some(t), Some(peer)) = (self.cfg.tunnel, peer) else {
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
        let len = VNET_HDR_LEN + ETHERNET_HEADER_LEN;
        let buf = out.get_mut(..len).ok_or(DropReason::ReplyTooLarge)?;
        let (vnet, eth) = buf.split_at_mut(VNET_HDR_LEN);
        vnet.fill(0);
        EthernetRepr {
            src_addr: self.cfg.gateway_mac,
            dst_addr: mac,
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut EthernetFrame::new_unchecked(eth));
        Ok(len)
    }

    /// The verdict for a packet we originated, `len` bytes of `out` with its framing.
    pub(super) fn originated(
        &self,
        routes: &RouteSnapshot,
        egress: Egress,
        len: usize,
        out: &[u8],
    ) -> Verdict {
        match egress {
            Egress::Reply(_) => Verdict::Reply(len),
            Egress::Port(port, _) => Verdict::ToPort(port, len),
            Egress::Peer(i) => {
                let Some(peer) = routes.peer(i) else {
                    return DropReason::NoRoute.into();
                };
                let ip = Ipv4Packet::new_unchecked(out.get(ENCAP_PREFIX_LEN..len).unwrap_or(&[]));
                tunnel_verdict(
                    peer.underlay_ip,
                    flow_hash(&ip),
                    Datagrams {
                        len,
                        segment_len: len,
                        count: 1,
                    },
                )
            }
        }
    }
}

/// The IPv4 packet of an Ethernet frame, padding excluded.
fn ip_bytes_of(frame: &[u8]) -> &[u8] {
    let ip = frame.get(ETHERNET_HEADER_LEN..).unwrap_or(&[]);
    let total = usize::from(Ipv4Packet::new_unchecked(ip).total_len());
    ip.get(..total).unwrap_or(ip)
}

fn tunnel_verdict(peer: Ipv4Addr, flow_hash: u32, d: Datagrams) -> Verdict {
    Verdict::Tunnel {
        peer,
        flow_hash,
        len: d.len,
        segment_len: d.segment_len,
        count: d.count,
    }
}
