//! The service load balancer in the pipeline (Kubernetes fact 4): kube-proxy's job,
//! done in the router stage before the route lookup.
//!
//! **Forward.** An IPv4 frame to the gateway MAC whose destination is a ClusterIP of
//! the current [`ServiceTable`] (or any address of `service_cidr`):
//!
//! - `(vip, port, TCP/UDP)` is a service → the flow's conntrack entry, or a new one:
//!   Maglev picks a backend from a hash of the 5-tuple (or the client IP,
//!   [`crate::lb::Affinity::ClientIp`]); the packet is DNATed to it ([`crate::nat`],
//!   checksums updated incrementally, partial ones in the partial sense, GSO frames as
//!   one frame) and then routed like any other (TTL, local delivery or tunnel).
//!   Hairpin — the client is the chosen backend — is also SNATed to the gateway IP,
//!   as kube-proxy masquerades it, so the reply comes back through us;
//! - the service has no ready backend → TCP: a reset from `vip:port` (RFC 9293
//!   §3.10.7.1: for a segment without ACK, `seq 0, ack = seq + length`, RST|ACK; with
//!   ACK, `seq = its ack`, RST); UDP: ICMP port unreachable (3/3) from the VIP. That
//!   is what kube-proxy's `REJECT` rules send, so clients fail at once instead of
//!   timing out;
//! - a ClusterIP on a port or protocol nobody serves (TCP/UDP to another port: ICMP
//!   port unreachable 3/3 from the VIP; ICMP, e.g. ping, and anything else: host
//!   unreachable 3/1 from the gateway), or a service-CIDR address that is no
//!   ClusterIP (host unreachable 3/1 from the gateway). This is kube-proxy's nftables
//!   mode, which rejects traffic to ClusterIPs on unknown ports, and it is why
//!   `ping <ClusterIP>` gets no echo in Kubernetes: nothing listens on the VIP itself,
//!   only on `vip:port`. Rejecting (rather than routing to a default gateway and
//!   timing out, iptables mode) tells the user at once. Errors share the router's
//!   ICMP rate limit, resets included; when not sent, the packet is dropped with the
//!   reason (`NoServicePort`, `NotAService`, `LbNoEndpoint`);
//! - fragments (`crate::fragments`): the first fragment of a datagram carries the
//!   ports, so it is balanced and DNATed like a whole packet, and the addresses it
//!   got are recorded; the later fragments of the same datagram (source,
//!   destination, protocol, identification) get the same addresses. Replies'
//!   fragments are un-NATed the same way. A later fragment to a ClusterIP whose
//!   first fragment was not seen is dropped (`ServiceFragment`): no reassembly here.
//!
//! **Replies.** A TCP/UDP packet from `backend:port` to `nat source:port` of a tracked
//! flow is rewritten to `vip:port → client:port`. It can arrive three ways, all
//! checked (only when the conntrack table is not empty, so a node without service
//! traffic pays nothing):
//!
//! - bridged, from a pod port: client and backend on one node. The backend saw the
//!   client's own IP as source, on its subnet, so its kernel answers the client's MAC
//!   directly and the frame never reaches the router: it is un-NATed in place and
//!   bridged on (no TTL change, as a bridge);
//! - to the gateway MAC: hairpin replies (addressed to the gateway IP, checked before
//!   the gateway's own ICMP handling) and anything else routed through us; un-NATed,
//!   then routed;
//! - from the tunnel: the backend is on another node, the reply comes back to the
//!   client's node, which holds the flow. A Linux VXLAN sender may leave the inner
//!   checksum partial (see `forward.rs`), so it is settled (verified or completed)
//!   first, then updated as a full checksum.
//!
//! **ICMP errors** about a tracked flow, on their way back to the client — a
//! backend's port unreachable for UDP, a router's time exceeded or fragmentation
//! needed, including the errors our own router originates about a DNATed packet —
//! quote the packet as the backend saw it (`client → backend:port`), which the
//! client's kernel would match to no socket. As Linux's conntrack does for
//! `RELATED` errors (`nf_nat_icmp_reply_translation`), the quote is rewritten to
//! `client → vip:port`, the outer destination to the client (it differs for
//! hairpin), the outer source to the VIP when the backend itself sent the error,
//! and the checksums follow (`lb_icmp_errors`). They are found on the same three
//! paths as replies. The flow's state is not advanced by them.
//!
//! **Table changes.** The pipeline loads the service table per packet. Each flow
//! records the table generation at which its backend was last confirmed; when a
//! lookup finds a flow of an older generation, the backend is checked against the
//! current table at once, and a flow whose backend is gone is removed
//! (`conntrack_flushed`) — so no packet after a new table is published goes to a
//! removed backend, and a UDP client (DNS) moves to a live one with its next packet.
//! [`Pipeline::maintain`] reconciles all flows on the next tick after a new table
//! (flows of a removed backend that see no packet) and sweeps expired ones.

use core::net::Ipv4Addr;

use super::forward::{Egress, IcmpError, Ingress};
use super::{Pipeline, PortId, Verdict};
use crate::conntrack::{Dir, Flow, Tuple};
use crate::drops::{Counter, DropReason};
use crate::fragments::FragKey;
use crate::lb::{Backend, L4Proto, ServiceTable};
use crate::maglev::fmix64;
use crate::nat::{rewrite, rewrite_addresses, rewrite_quoted, L4Sum, Quoted};
use crate::routes::prefix_mask;
use crate::tunnel::settle_l4_checksum;
use crate::wire::tcp::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crate::wire::{
    Icmpv4Message, IpProtocol, Ipv4Packet, Ipv4Repr, MacAddr, TcpPacket, TcpRepr, UdpPacket,
    VnetHdrRepr, ETHERNET_HEADER_LEN, ICMPV4_HEADER_LEN, ICMP_UNREACH_HOST, ICMP_UNREACH_PORT,
    IPV4_MIN_HEADER_LEN, TCP_MIN_HEADER_LEN, UDP_HEADER_LEN, VNET_HDR_LEN,
};
use crate::Nanos;

/// Flows [`Pipeline::maintain`] looks at per call when the table did not change.
pub const MAINTAIN_BUDGET: usize = 65_536;

/// Other source ports tried when the client's own gives a reply key already in use.
const NAT_PORT_TRIES: u32 = 16;

/// TTL of the resets we originate.
const RST_TTL: u8 = 64;

/// What the load balancer needs from an IPv4 packet, read before it is rewritten.
#[derive(Clone, Copy, Debug)]
pub(super) struct L4Info {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: IpProtocol,
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
}

impl L4Info {
    pub(super) fn of(ip: &Ipv4Packet<&[u8]>) -> L4Info {
        let fragment = ip.is_fragment();
        let later_fragment = ip.frag_offset() != 0;
        let l4 = ip.payload();
        let (ports, tcp_flags) = match ip.protocol() {
            _ if later_fragment => (None, 0),
            IpProtocol::Tcp => match TcpPacket::new_checked(l4) {
                Ok(t) => (Some((t.src_port(), t.dst_port())), t.flags()),
                Err(_) => (None, 0),
            },
            IpProtocol::Udp if l4.len() >= UDP_HEADER_LEN => {
                let u = UdpPacket::new_unchecked(l4);
                (Some((u.src_port(), u.dst_port())), 0)
            }
            _ => (None, 0),
        };
        L4Info {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            proto: ip.protocol(),
            ports,
            fragment,
            later_fragment,
            ident: ip.ident(),
            tcp_flags,
        }
    }

    /// What identifies this packet's datagram among fragments.
    fn frag_key(&self) -> FragKey {
        FragKey {
            src: self.src,
            dst: self.dst,
            proto: u8::from(self.proto),
            ident: self.ident,
        }
    }

    fn tuple(&self) -> Option<Tuple> {
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

fn l4_sum(vnet: &VnetHdrRepr) -> L4Sum {
    if vnet.needs_csum() {
        L4Sum::Partial
    } else {
        L4Sum::Full
    }
}

/// The IPv4 packet of a virtio-net + Ethernet input buffer.
fn ip_of(pkt: &mut [u8]) -> &mut [u8] {
    pkt.get_mut(VNET_HDR_LEN + ETHERNET_HEADER_LEN..)
        .unwrap_or(&mut [])
}

impl Pipeline {
    /// The load balancer's look at an IPv4 frame from a port, after anti-spoofing and
    /// learning. `Some` when it decided the frame's fate; `None` to carry on (maybe
    /// after un-NATing a bridged reply in place).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn service_stage(
        &mut self,
        ingress: PortId,
        mac: MacAddr,
        to_router: bool,
        vnet: VnetHdrRepr,
        info: L4Info,
        pkt: &mut [u8],
        now: Nanos,
        out: &mut [u8],
    ) -> Option<Verdict> {
        if info.later_fragment && !self.frags.is_empty() {
            if let Some((src, dst)) = self.frags.find(&info.frag_key(), now) {
                if let Err(r) = rewrite_addresses(ip_of(pkt), src, dst) {
                    return Some(r.into());
                }
                if !to_router {
                    return None;
                }
                return Some(self.route_from_port(ingress, mac, true, vnet, pkt, now, out));
            }
        }
        if !self.conntrack.is_empty() {
            if info.proto == IpProtocol::Icmp && !info.fragment {
                match self.unnat_icmp_error(ip_of(pkt), now) {
                    Ok(false) => {}
                    Ok(true) if !to_router => return None,
                    Ok(true) => {
                        return Some(self.route_from_port(ingress, mac, true, vnet, pkt, now, out))
                    }
                    Err(r) => return Some(r.into()),
                }
            }
            if let Some(t) = info.tuple() {
                let svc = self.services.load();
                if let Some(flow) = self.track(&svc, Dir::Reply, &t, info.tcp_flags, now) {
                    let client = flow.client;
                    if let Err(r) = rewrite(ip_of(pkt), flow.vip, client, l4_sum(&vnet)) {
                        return Some(r.into());
                    }
                    if info.fragment {
                        self.frags
                            .insert(info.frag_key(), (flow.vip.0, client.0), now);
                    }
                    self.counters.bump(Counter::LbReplies);
                    if !to_router {
                        return None;
                    }
                    return Some(self.route_from_port(ingress, mac, true, vnet, pkt, now, out));
                }
            }
        }
        if !to_router {
            return None;
        }
        let in_cidr = self.cfg.service_cidr.is_some_and(|(net, len)| {
            info.dst.to_bits() & prefix_mask(len) == net.to_bits() & prefix_mask(len)
        });
        let svc = self.services.load();
        let is_vip = svc.is_vip(info.dst);
        if !is_vip && !in_cidr {
            return None;
        }
        Some(self.service_forward(&svc, is_vip, ingress, mac, vnet, info, pkt, now, out))
    }

    /// The flow whose `dir` key is `t`, confirmed against the current table, with its
    /// state advanced for this packet.
    fn track(
        &mut self,
        svc: &ServiceTable,
        dir: Dir,
        t: &Tuple,
        flags: u8,
        now: Nanos,
    ) -> Option<Flow> {
        let f = self.conntrack.find(dir, t, now, &self.counters)?;
        let gen = svc.generation();
        let flow = self.conntrack.get_mut(f)?;
        if flow.generation != gen {
            let alive = svc
                .find(flow.vip.0, flow.vip.1, flow.proto)
                .is_some_and(|s| s.has_backend(flow.backend));
            if !alive {
                self.conntrack.remove(f);
                self.counters.bump(Counter::ConntrackFlushed);
                return None;
            }
            flow.generation = gen;
        }
        if dir == Dir::Forward
            && flow.state == crate::conntrack::FlowState::Closing
            && flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        {
            // A new connection reusing the 5-tuple of a closed one: pick afresh.
            self.conntrack.remove(f);
            return None;
        }
        flow.on_packet(dir, flags, now, &self.cfg.conntrack_timeouts);
        Some(*flow)
    }

    /// A frame to a ClusterIP or the service CIDR: see the module docs.
    #[allow(clippy::too_many_arguments)]
    fn service_forward(
        &mut self,
        svc: &ServiceTable,
        is_vip: bool,
        ingress: PortId,
        mac: MacAddr,
        vnet: VnetHdrRepr,
        info: L4Info,
        pkt: &mut [u8],
        now: Nanos,
        out: &mut [u8],
    ) -> Verdict {
        let from = Ingress::Port {
            port: ingress,
            mac,
            hairpin: false,
        };
        let gw = self.cfg.gateway_ip;
        let unreachable = |from_ip, code, reason| IcmpError::Unreachable {
            from: from_ip,
            code,
            reason,
        };
        if !is_vip {
            let err = unreachable(gw, ICMP_UNREACH_HOST, DropReason::NotAService);
            return self.reject(from, pkt, err, now, out);
        }
        if info.later_fragment {
            // Its first fragment was not seen (`service_stage` looked it up).
            return DropReason::ServiceFragment.into();
        }
        let Some(t) = info.tuple() else {
            if L4Proto::from_ip(info.proto).is_some() {
                return DropReason::Truncated.into();
            }
            let err = unreachable(gw, ICMP_UNREACH_HOST, DropReason::NoServicePort);
            return self.reject(from, pkt, err, now, out);
        };
        let Some(service) = svc.find(t.dst, t.dport, t.proto) else {
            let err = unreachable(t.dst, ICMP_UNREACH_PORT, DropReason::NoServicePort);
            return self.reject(from, pkt, err, now, out);
        };
        let flow = match self.track(svc, Dir::Forward, &t, info.tcp_flags, now) {
            Some(flow) => {
                self.counters.bump(Counter::LbEstablished);
                flow
            }
            None => {
                let Some(backend) = service.pick((t.src, t.sport)) else {
                    self.counters.bump(Counter::LbNoEndpoint);
                    return match t.proto {
                        L4Proto::Tcp => self.tcp_reset(mac, pkt, now, out),
                        L4Proto::Udp => {
                            let err =
                                unreachable(t.dst, ICMP_UNREACH_PORT, DropReason::LbNoEndpoint);
                            self.reject(from, pkt, err, now, out)
                        }
                    };
                };
                match self.new_flow(svc, &t, backend, info.tcp_flags, now) {
                    Ok(flow) => flow,
                    Err(r) => return r.into(),
                }
            }
        };
        let dst = (flow.backend.ip, flow.backend.port);
        if let Err(r) = rewrite(ip_of(pkt), flow.nat, dst, l4_sum(&vnet)) {
            return r.into();
        }
        if info.fragment {
            self.frags
                .insert(info.frag_key(), (flow.nat.0, flow.backend.ip), now);
        }
        self.route_from_port(ingress, mac, true, vnet, pkt, now, out)
    }

    /// Tracks a new flow to `backend`: NAT source (hairpin → the gateway IP), a free
    /// reply key, the entry.
    fn new_flow(
        &mut self,
        svc: &ServiceTable,
        t: &Tuple,
        backend: Backend,
        flags: u8,
        now: Nanos,
    ) -> Result<Flow, DropReason> {
        let nat_ip = if backend.ip == t.src {
            self.cfg.gateway_ip
        } else {
            t.src
        };
        let mut nat_port = None;
        for k in 0..=NAT_PORT_TRIES {
            let port = if k == 0 {
                t.sport
            } else {
                // Spread over 1024..=65535, deterministic per client port and try.
                let h = fmix64((u64::from(t.sport) << 8) | u64::from(k));
                1024 + u16::try_from(h % 64_512).unwrap_or(0)
            };
            let reply = Tuple {
                src: backend.ip,
                sport: backend.port,
                dst: nat_ip,
                dport: port,
                proto: t.proto,
            };
            if self
                .conntrack
                .find(Dir::Reply, &reply, now, &self.counters)
                .is_none()
            {
                nat_port = Some(port);
                break;
            }
        }
        let nat_port = nat_port.ok_or(DropReason::NatPortsExhausted)?;
        let state = Flow::initial_state(t.proto, flags);
        let flow = Flow {
            client: (t.src, t.sport),
            vip: (t.dst, t.dport),
            backend,
            nat: (nat_ip, nat_port),
            proto: t.proto,
            state,
            fins: if flags & TCP_FIN != 0 { 1 } else { 0 },
            created: now,
            expires: now.saturating_add(crate::conntrack::timeout(
                state,
                &self.cfg.conntrack_timeouts,
            )),
            generation: svc.generation(),
        };
        self.conntrack.insert(flow, now, &self.counters);
        self.counters.bump(Counter::LbNewFlows);
        Ok(flow)
    }

    /// Sends an ICMP error about the frame in `pkt` (routed back to the sender).
    fn reject(
        &mut self,
        from: Ingress,
        pkt: &[u8],
        err: IcmpError,
        now: Nanos,
        out: &mut [u8],
    ) -> Verdict {
        let routes = self.routes.load();
        let frame = pkt.get(VNET_HDR_LEN..).unwrap_or(&[]);
        self.icmp_error(&routes, from, frame, err, now, out)
    }

    /// A TCP reset from the service to the client of the segment in `pkt` (RFC 9293
    /// §3.10.7.1), back out of the ingress port to `mac`. Never for a reset; limited
    /// by the ICMP error budget.
    fn tcp_reset(&mut self, mac: MacAddr, pkt: &[u8], now: Nanos, out: &mut [u8]) -> Verdict {
        let ip_bytes = pkt.get(VNET_HDR_LEN + ETHERNET_HEADER_LEN..).unwrap_or(&[]);
        let Ok(ip) = Ipv4Packet::new_checked(ip_bytes) else {
            return DropReason::Truncated.into();
        };
        let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
            return DropReason::Truncated.into();
        };
        let flags = tcp.flags();
        if flags & TCP_RST != 0 || !self.icmp_bucket.take(now) {
            return DropReason::LbNoEndpoint.into();
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
        self.icmp_ident = self.icmp_ident.wrapping_add(1);
        let hdr = Ipv4Repr {
            src_addr: ip.dst_addr(),
            dst_addr: ip.src_addr(),
            protocol: IpProtocol::Tcp,
            payload_len: rst.buffer_len(),
            ttl: RST_TTL,
            dscp_ecn: 0,
            ident: self.icmp_ident,
            dont_frag: true,
        };
        let routes = self.routes.load();
        let egress = Egress::Reply(mac);
        let prefix = match self.write_prefix(Some(&routes), out, egress) {
            Ok(p) => p,
            Err(r) => return r.into(),
        };
        let len = IPV4_MIN_HEADER_LEN + TCP_MIN_HEADER_LEN;
        let Some(buf) = out.get_mut(prefix..prefix + len) else {
            return DropReason::ReplyTooLarge.into();
        };
        let mut p = Ipv4Packet::new_unchecked(buf);
        if hdr.emit(&mut p).is_err() {
            return DropReason::ReplyTooLarge.into();
        }
        let (src, dst) = (hdr.src_addr, hdr.dst_addr);
        rst.emit(&mut TcpPacket::new_unchecked(p.payload_mut()), src, dst);
        self.originated(&routes, egress, prefix + len, out)
    }

    /// Un-NATs a reply decapsulated from the tunnel (`frame`: inner Ethernet frame) in
    /// place, if it belongs to a tracked flow. Its checksum is settled first: see the
    /// module docs.
    pub(super) fn unnat_from_tunnel(
        &mut self,
        frame: &mut [u8],
        now: Nanos,
    ) -> Result<(), DropReason> {
        if self.conntrack.is_empty() {
            return Ok(());
        }
        let Some(ip) = frame.get_mut(ETHERNET_HEADER_LEN..) else {
            return Ok(());
        };
        let info = match Ipv4Packet::new_checked(&*ip) {
            Ok(p) => L4Info::of(&p),
            Err(_) => return Ok(()), // the router names it
        };
        if info.later_fragment {
            if let Some((src, dst)) = self.frags.find(&info.frag_key(), now) {
                rewrite_addresses(ip, src, dst)?;
            }
            return Ok(());
        }
        if info.proto == IpProtocol::Icmp && !info.fragment {
            return self.unnat_icmp_error(ip, now).map(|_| ());
        }
        let Some(t) = info.tuple() else {
            return Ok(());
        };
        let svc = self.services.load();
        let Some(flow) = self.track(&svc, Dir::Reply, &t, info.tcp_flags, now) else {
            return Ok(());
        };
        settle_l4_checksum(ip)?;
        rewrite(ip, flow.vip, flow.client, L4Sum::Full)?;
        if info.fragment {
            self.frags
                .insert(info.frag_key(), (flow.vip.0, flow.client.0), now);
        }
        self.counters.bump(Counter::LbReplies);
        Ok(())
    }

    /// Rewrites, in place, an ICMP error (the IPv4 packet `ip`) about a tracked flow
    /// for its client: see the module docs. `Ok(false)`: not an ICMP error, or not
    /// about a tracked flow (untouched); `Ok(true)`: rewritten. An error whose quote
    /// matches a flow but cannot be rewritten is dropped (`Truncated`, `BadHeader`).
    pub(super) fn unnat_icmp_error(
        &mut self,
        ip: &mut [u8],
        now: Nanos,
    ) -> Result<bool, DropReason> {
        if self.conntrack.is_empty() {
            return Ok(false);
        }
        let (hlen, total, outer_src, outer_dst) = match Ipv4Packet::new_checked(&*ip) {
            Ok(p) if p.protocol() == IpProtocol::Icmp && !p.is_fragment() => (
                p.header_len(),
                usize::from(p.total_len()),
                p.src_addr(),
                p.dst_addr(),
            ),
            _ => return Ok(false),
        };
        let Some(ip) = ip.get_mut(..total) else {
            return Ok(false);
        };
        let (outer, icmp) = ip.split_at_mut(hlen.min(ip.len()));
        if !icmp
            .first()
            .is_some_and(|t| Icmpv4Message::from(*t).is_error())
        {
            return Ok(false);
        }
        let Some(quote) = icmp.get_mut(ICMPV4_HEADER_LEN..) else {
            return Ok(false);
        };
        // The quoted packet went client → backend; its reply key is the other way.
        let t = match Quoted::parse(quote) {
            Ok(q) if !q.fragment => match L4Proto::from_ip(q.proto) {
                Some(proto) => Tuple {
                    src: q.dst.0,
                    sport: q.dst.1,
                    dst: q.src.0,
                    dport: q.src.1,
                    proto,
                },
                None => return Ok(false),
            },
            _ => return Ok(false),
        };
        let Some(f) = self.conntrack.find(Dir::Reply, &t, now, &self.counters) else {
            return Ok(false);
        };
        let Some(flow) = self.conntrack.get_mut(f).map(|f| *f) else {
            return Ok(false);
        };
        rewrite_quoted(quote, flow.client, flow.vip)?;
        // The ICMP checksum covers the quote: recompute it (at most 576 bytes).
        if let Some(sum) = icmp.get_mut(2..4) {
            sum.fill(0);
        }
        let sum = crate::wire::checksum::checksum(icmp);
        if let Some(field) = icmp.get_mut(2..4) {
            field.copy_from_slice(&sum.to_be_bytes());
        }
        let new_src = if outer_src == flow.backend.ip {
            flow.vip.0
        } else {
            outer_src
        };
        let new_dst = if outer_dst == flow.nat.0 {
            flow.client.0
        } else {
            outer_dst
        };
        let mut o = Ipv4Packet::new_unchecked(outer);
        o.set_src_addr(new_src);
        o.set_dst_addr(new_dst);
        o.fill_checksum();
        self.counters.bump(Counter::LbIcmpErrors);
        Ok(true)
    }

    /// Periodic upkeep (the worker calls it about once a second): after a new service
    /// table, every flow is checked against it and those whose backend is gone are
    /// removed (`conntrack_flushed`: the reconcile that catches flows no packet
    /// touched); otherwise up to [`MAINTAIN_BUDGET`] flows are visited in turn.
    /// Expired flows met either way are removed (`conntrack_expired`). Returns how
    /// many flows were removed.
    pub fn maintain(&mut self, now: Nanos) -> usize {
        let svc = self.services.load();
        let gen = svc.generation();
        let full = gen != self.ct_reconciled;
        let budget = if full {
            self.conntrack.len()
        } else {
            MAINTAIN_BUDGET
        };
        let removed = self
            .conntrack
            .sweep(now, budget, full, &self.counters, |f| {
                if f.generation == gen {
                    return true;
                }
                let alive = svc
                    .find(f.vip.0, f.vip.1, f.proto)
                    .is_some_and(|s| s.has_backend(f.backend));
                if alive {
                    f.generation = gen;
                }
                alive
            });
        self.ct_reconciled = gen;
        removed
    }

    /// Live tracked flows, for status (allocates).
    pub fn flows(&self, now: Nanos) -> Vec<crate::conntrack::FlowInfo> {
        self.conntrack.infos(now)
    }

    /// Flows stored in the connection table (expired ones not yet reclaimed included).
    pub fn conntrack_len(&self) -> usize {
        self.conntrack.len()
    }
}
