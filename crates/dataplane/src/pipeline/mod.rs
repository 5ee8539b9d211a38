//! The per-node pipeline, as the packet's path: one function from (ingress, frame,
//! `now`) to an [`Action`], made of stages that each read one parsed [`Ctx`] and
//! return a [`Verdict`]. Only the driver below sequences them; no stage calls another.
//!
//! ```text
//! port ─► parse ─► admit ─► service ─► (policy) ─► forward ─► emit ─► Action
//! tunnel ─► parse (decap) ──┘
//! ```
//!
//! - `parse.rs`: headers checked once into the context;
//! - `admit.rs`: anti-spoofing of pod ports, learning;
//! - `service.rs`: the load balancer, DNAT to a backend and un-NAT of replies;
//! - (policy: NetworkPolicy will sit between service, which knows the backend, and
//!   forward);
//! - `forward.rs`: bridge, route, tunnel; `gateway.rs`: the gateway's own answers;
//! - `emit.rs`: framing, ICMP errors and resets the node originates;
//! - here: counting each outcome and lending the caller the bytes in `out`.
//!
//! `Flood` always means "every attached port except the ingress one". Nothing here
//! allocates: the tables are allocated in [`Pipeline::new`], replies and tunnel
//! datagrams are written into the caller's `out` ([`OUT_BUF_LEN`] bytes), and the port
//! table grows only in [`Pipeline::add_port`]. The whole path is walked through in
//! `docs/architecture.md`.

use core::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::codec::nat::Addressing;
use crate::drops::{Counter, Counters, DropReason};
use crate::tables::conntrack::{ConntrackTimeouts, FlowInfo, DEFAULT_CONNTRACK_CAPACITY};
use crate::tables::mac_table::MacTable;
use crate::tables::ports::Ports;
use crate::tables::routes::RouteSnapshot;
use crate::tables::service_table::ServiceTable;
use crate::types::{Ingress, Nanos, PortId, PortRole};
use crate::wire::{Ipv4Packet, MacAddr};

mod admit;
mod context;
mod emit;
mod forward;
mod gateway;
mod parse;
mod service;

pub use context::Action;
use context::{Ctx, Verdict};
use emit::{egress_for, originated, write_prefix, Env, Origin, Originated};
use forward::FwdEnv;
use gateway::Gateway;
pub use service::MAINTAIN_BUDGET;
use service::{Lb, LbEnv};

/// The least `out` buffer the I/O layer must pass to [`Pipeline::process`] and
/// [`Pipeline::process_tunnel`]: 256 KiB. The largest thing written there is the
/// software-TSO run of a 65,535-byte GSO frame: with an MSS of 536 (the IPv4 minimum
/// a peer may announce) that is 123 segments × 74 bytes of headers + 64 KiB of
/// payload ≈ 73 KiB; an echo reply to a 64 KiB ping is 65,546 bytes. The rest is
/// headroom for smaller MSSs. A run that would not fit is dropped as `ReplyTooLarge`.
pub const OUT_BUF_LEN: usize = 256 * 1024;

/// VXLAN's overhead on the underlay: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u16 = 50;

/// Default ICMP error rate limit (Linux's `icmp_msgs_per_sec`).
pub const DEFAULT_ICMP_ERRORS_PER_SEC: u32 = 1000;

/// Default MAC aging time: 300 s, as the Linux bridge and IEEE 802.1D.
pub const DEFAULT_MAC_AGING: Nanos = 300 * 1_000_000_000;

/// Default MAC table capacity.
pub const DEFAULT_MAC_CAPACITY: usize = 16_384;

/// This node's end of the VXLAN tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelConfig {
    /// Our underlay address (the I/O layer binds the tunnel socket to it; datagrams
    /// claiming to come from it are not from a peer).
    pub underlay_ip: Ipv4Addr,
    /// Our VTEP MAC: inner source MAC of what we send, inner destination MAC of what
    /// we accept.
    pub vtep_mac: MacAddr,
    /// The VXLAN network identifier: 1, as flannel.
    pub vni: u32,
    /// Largest inner IPv4 packet: the underlay MTU − [`VXLAN_OVERHEAD`] (1450 on a
    /// 1500-byte underlay). Larger packets are segmented, fragmented, or refused with
    /// ICMP "fragmentation needed".
    pub inner_mtu: u16,
}

impl TunnelConfig {
    /// VNI 1 and `inner_mtu = underlay_mtu - 50`.
    pub const fn new(underlay_ip: Ipv4Addr, vtep_mac: MacAddr, underlay_mtu: u16) -> Self {
        TunnelConfig {
            underlay_ip,
            vtep_mac,
            vni: 1,
            inner_mtu: underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
        }
    }
}

/// Static configuration of a node's pipeline.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// The pods' default gateway, e.g. 10.244.1.1.
    pub gateway_ip: Ipv4Addr,
    /// The MAC the gateway answers ARP with.
    pub gateway_mac: MacAddr,
    /// The node's pod subnet, e.g. 10.244.1.0 ...
    pub subnet: Ipv4Addr,
    /// ... /24.
    pub prefix_len: u8,
    /// Entries not refreshed for this long are treated as unknown (default 300 s).
    pub mac_aging: Nanos,
    /// Most MACs learned at once (default 16,384; clamped to `tables::mac_table::MAX_CAPACITY`).
    pub mac_capacity: usize,
    /// The VXLAN tunnel to other nodes. `None` (the default): packets for other
    /// subnets are dropped as `NoRoute`, and `process_tunnel` drops everything.
    pub tunnel: Option<TunnelConfig>,
    /// ICMP errors originated per second at most (default 1000, burst a tenth of
    /// that; 0 sends none). RFC 1812 §4.3.2.8; excess counted as suppressed.
    pub icmp_errors_per_sec: u32,
    /// The host port's IP (the agent uses the subnet's last usable address), so that
    /// routed packets for it — e.g. from a pod on another node — reach the host port.
    /// `None`: no routed delivery to the host.
    pub host_ip: Option<Ipv4Addr>,
    /// The host port's MAC. `None`: learned from the ARP requests and IPv4 the host
    /// port sends with `host_ip` as source (the host ARPs for the gateway before it
    /// routes anything through it); until then delivery to it is `HostMacUnknown`.
    pub host_mac: Option<MacAddr>,
    /// The service CIDR (default 10.96.0.0/12): traffic for an address in it that is
    /// no service's ClusterIP gets ICMP host unreachable instead of a route lookup.
    /// `None`: only ClusterIPs of the current service table are intercepted.
    pub service_cidr: Option<(Ipv4Addr, u8)>,
    /// Most service flows tracked at once (default 262,144; allocated up front).
    pub conntrack_capacity: usize,
    /// How long tracked flows live without traffic.
    pub conntrack_timeouts: ConntrackTimeouts,
}

/// Kubernetes' default service CIDR, 10.96.0.0/12.
pub const DEFAULT_SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);

impl PipelineConfig {
    /// A configuration with the default aging time and table capacity.
    pub fn new(
        gateway_ip: Ipv4Addr,
        gateway_mac: MacAddr,
        subnet: Ipv4Addr,
        prefix_len: u8,
    ) -> Self {
        PipelineConfig {
            gateway_ip,
            gateway_mac,
            subnet,
            prefix_len,
            mac_aging: DEFAULT_MAC_AGING,
            mac_capacity: DEFAULT_MAC_CAPACITY,
            tunnel: None,
            icmp_errors_per_sec: DEFAULT_ICMP_ERRORS_PER_SEC,
            host_ip: None,
            host_mac: None,
            service_cidr: Some(DEFAULT_SERVICE_CIDR),
            conntrack_capacity: DEFAULT_CONNTRACK_CAPACITY,
            conntrack_timeouts: ConntrackTimeouts::default(),
        }
    }
}

/// One node's data plane. Owned by one worker; see the module docs.
#[derive(Debug)]
pub struct Pipeline {
    cfg: PipelineConfig,
    gateway: Gateway,
    ports: Ports,
    macs: MacTable,
    routes: Arc<ArcSwap<RouteSnapshot>>,
    services: Arc<ArcSwap<ServiceTable>>,
    lb: Lb,
    origin: Origin,
    counters: Arc<Counters>,
}

impl Pipeline {
    /// Builds the pipeline and allocates its tables (`cfg.mac_capacity` MACs,
    /// `cfg.conntrack_capacity` flows) up front.
    pub fn new(cfg: PipelineConfig) -> Self {
        Pipeline {
            gateway: Gateway::new(cfg.gateway_ip, cfg.gateway_mac, cfg.subnet, cfg.prefix_len),
            ports: Ports::new(cfg.host_ip, cfg.host_mac),
            macs: MacTable::new(cfg.mac_capacity, cfg.mac_aging),
            routes: Arc::new(ArcSwap::from_pointee(RouteSnapshot::empty_for(
                cfg.subnet,
                cfg.prefix_len,
            ))),
            services: Arc::new(ArcSwap::from_pointee(ServiceTable::empty())),
            lb: Lb::new(cfg.conntrack_capacity),
            origin: Origin::new(cfg.icmp_errors_per_sec),
            counters: Arc::new(Counters::default()),
            cfg,
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    /// The handle the control thread stores new route snapshots into; the pipeline
    /// `load()`s it per packet (no lock, no allocation). Initially
    /// `RouteSnapshot::empty_for(subnet, prefix_len)`.
    pub fn routes(&self) -> &Arc<ArcSwap<RouteSnapshot>> {
        &self.routes
    }

    /// The handle the control thread stores new service tables into; the pipeline
    /// `load()`s it per packet (no lock). Initially [`ServiceTable::empty`].
    pub fn services(&self) -> &Arc<ArcSwap<ServiceTable>> {
        &self.services
    }

    /// The host port's MAC, configured or learned.
    pub fn host_mac(&self) -> Option<MacAddr> {
        self.ports.host_mac()
    }

    /// Attaches a port; replaces an existing port of that id and forgets its MACs.
    pub fn add_port(&mut self, id: PortId, role: PortRole) {
        if self.ports.add(id, role) {
            self.macs.forget_port(id);
        }
    }

    /// Detaches a port and forgets every MAC learned on it.
    pub fn remove_port(&mut self, id: PortId) {
        if self.ports.remove(id) {
            self.macs.forget_port(id);
        }
    }

    /// Attached ports in id order.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, PortRole)> + '_ {
        self.ports.iter()
    }

    /// The ports a [`Action::Flood`] from `ingress` goes to: every attached port but
    /// `ingress`, in id order. Does not allocate.
    pub fn flood_targets(&self, ingress: PortId) -> impl Iterator<Item = PortId> + '_ {
        self.ports
            .iter()
            .map(|(id, _)| id)
            .filter(move |id| *id != ingress)
    }

    /// The role of an attached port.
    pub fn port_role(&self, id: PortId) -> Option<PortRole> {
        self.ports.role(id)
    }

    /// Decides what to do with one frame. `pkt` is the virtio-net header
    /// ([`crate::VNET_HDR_LEN`] bytes) followed by the Ethernet frame, exactly as read
    /// from the TAP; routed frames are rewritten in place. `out` is scratch space for
    /// replies and tunnel datagrams (pass [`OUT_BUF_LEN`] bytes).
    /// Never panics, never allocates; every outcome is counted.
    pub fn process<'a>(
        &mut self,
        ingress: PortId,
        pkt: &mut [u8],
        now: Nanos,
        out: &'a mut [u8],
    ) -> Action<'a> {
        self.counters.bump(Counter::RxFrames);
        let verdict = self.port_path(ingress, pkt, now, out);
        self.finish(verdict, out)
    }

    /// A VXLAN datagram (UDP payload: VXLAN header + inner Ethernet frame) received
    /// from `src` (outer source address and port) on the tunnel socket. The inner
    /// packet is routed: delivered to a local port (`ToPort`; its virtio-net header
    /// says `DATA_VALID` if the packet's TCP/UDP checksum was verified or completed,
    /// and is zeroed otherwise), answered (echo to the gateway, ICMP errors: `Tunnel`
    /// back), or dropped. `payload` may be rewritten in place. Same `out` contract as
    /// [`Pipeline::process`].
    pub fn process_tunnel<'a>(
        &mut self,
        src: SocketAddrV4,
        payload: &mut [u8],
        now: Nanos,
        out: &'a mut [u8],
    ) -> Action<'a> {
        self.counters.bump(Counter::RxFrames);
        let routes = self.routes.load();
        let tun = self.cfg.tunnel.as_ref();
        let verdict = match parse::from_tunnel(tun, &routes, *src.ip(), payload, &self.counters) {
            Ok(mut ctx) => self.after_admit(&mut ctx, &routes, payload, now, out),
            Err(r) => r.into(),
        };
        self.finish(verdict, out)
    }

    /// Stages 1 and 2 for a frame from a port, then the rest.
    fn port_path(&mut self, port: PortId, pkt: &mut [u8], now: Nanos, out: &mut [u8]) -> Verdict {
        let Some(role) = self.ports.role(port) else {
            return DropReason::UnknownIngress.into();
        };
        let mut ctx = match parse::from_port(port, role, self.cfg.gateway_mac, pkt) {
            Ok(ctx) => ctx,
            Err(r) => return r.into(),
        };
        let (ports, macs, counters) = (&mut self.ports, &mut self.macs, &*self.counters);
        let v = admit::admit(&ctx, port, role, ports, macs, now, counters);
        if v != Verdict::Continue {
            return v;
        }
        let routes = self.routes.load();
        self.after_admit(&mut ctx, &routes, pkt, now, out)
    }

    /// Service, (policy,) forward, and what they asked the node to answer.
    fn after_admit(
        &mut self,
        ctx: &mut Ctx,
        routes: &RouteSnapshot,
        pkt: &mut [u8],
        now: Nanos,
        out: &mut [u8],
    ) -> Verdict {
        let services = self.services.load();
        let env = LbEnv {
            cfg: &self.cfg,
            services: &services,
            counters: &self.counters,
        };
        let mut v = self.lb.stage(&env, ctx, pkt, now);
        // NetworkPolicy goes here: after service (the backend is known), before forward.
        if v == Verdict::Continue {
            let env = FwdEnv {
                cfg: &self.cfg,
                routes,
                ports: &self.ports,
                counters: &self.counters,
            };
            v = forward::forward(&env, &mut self.macs, ctx, pkt, now, out);
        }
        self.answer(ctx, routes, v, pkt, now, out)
    }

    /// Turns the verdicts that ask the node to answer into the answer.
    fn answer(
        &mut self,
        ctx: &Ctx,
        routes: &RouteSnapshot,
        v: Verdict,
        pkt: &[u8],
        now: Nanos,
        out: &mut [u8],
    ) -> Verdict {
        let env = Env {
            cfg: &self.cfg,
            routes,
            ports: &self.ports,
            counters: &self.counters,
        };
        let sent = match v {
            Verdict::Icmp(err) => self.origin.icmp_error(&env, ctx, pkt, err, now, out),
            Verdict::Reset => self.origin.tcp_reset(&env, ctx, pkt, now, out),
            Verdict::Gateway => return self.gateway_answer(ctx, routes, pkt, out),
            other => return other,
        };
        let o = match sent {
            Ok(o) => o,
            Err(r) => return r.into(),
        };
        if matches!(v, Verdict::Icmp(_)) {
            // About a DNATed packet of a service flow: the client must see its own
            // packet to the ClusterIP quoted (`service.rs`, ICMP errors).
            let ip = out.get_mut(o.ip_at..o.end).unwrap_or(&mut []);
            let translated = Addressing::parse(ip)
                .and_then(|a| self.lb.translate_icmp_error(&self.counters, ip, &a, now));
            if let Err(r) = translated {
                return r.into();
            }
            self.counters.bump(Counter::IcmpErrorsSent);
        }
        originated(routes, o, out)
    }

    /// The gateway's own answers: ARP and echo from a port, echo from the tunnel
    /// (whose reply is routed back).
    fn gateway_answer(
        &self,
        ctx: &Ctx,
        routes: &RouteSnapshot,
        pkt: &[u8],
        out: &mut [u8],
    ) -> Verdict {
        let ip = Ipv4Packet::new_unchecked(pkt.get(ctx.ip_at()..).unwrap_or(&[]));
        let result = match (ctx.ingress, &ctx.arp, ctx.ip) {
            (Ingress::Port(_), Some(arp), _) => self.gateway.handle_arp(arp, out),
            (Ingress::Port(_), None, Some(_)) => {
                self.gateway.handle_ipv4(&ctx.vnet, ctx.src_mac, &ip, out)
            }
            (Ingress::Tunnel, _, Some(facts)) => {
                let Some(egress) = egress_for(&self.cfg, routes, &self.ports, ctx, facts.src)
                else {
                    return DropReason::NoRoute.into();
                };
                let sent = write_prefix(&self.cfg, routes, out, egress).and_then(|ip_at| {
                    let rest = out.get_mut(ip_at..).ok_or(DropReason::ReplyTooLarge)?;
                    let n = self.gateway.answer_echo(&ctx.vnet, &ip, rest)?;
                    Ok(Originated {
                        egress,
                        ip_at,
                        end: ip_at + n,
                    })
                });
                return match sent {
                    Ok(o) => originated(routes, o, out),
                    Err(r) => r.into(),
                };
            }
            _ => Err(DropReason::UnsupportedProtocol),
        };
        match result {
            Ok(len) => Verdict::Reply(len),
            Err(r) => r.into(),
        }
    }

    /// Counts the outcome and lends the caller the bytes it refers to.
    fn finish<'a>(&self, verdict: Verdict, out: &'a [u8]) -> Action<'a> {
        let c = &self.counters;
        let lend = |len: usize, counter: Counter| {
            let bytes = out.get(..len);
            match bytes {
                Some(_) => c.bump(counter),
                None => c.bump_drop(DropReason::ReplyTooLarge),
            }
            bytes
        };
        let too_large = Action::Drop(DropReason::ReplyTooLarge);
        match verdict {
            Verdict::Forward(p) => {
                c.bump(Counter::Forwarded);
                Action::Forward(p)
            }
            Verdict::Flood => {
                c.bump(Counter::Flooded);
                Action::Flood
            }
            Verdict::Reply(len) => lend(len, Counter::Replies).map_or(too_large, Action::Reply),
            Verdict::ToPort(port, len) => {
                lend(len, Counter::Delivered).map_or(too_large, |bytes| Action::ToPort(port, bytes))
            }
            Verdict::Tunnel {
                peer,
                flow_hash,
                len,
                segment_len,
                count,
            } => match lend(len, Counter::TunneledOut) {
                Some(datagrams) => {
                    c.add(Counter::TunnelDatagramsOut, count as u64);
                    Action::Tunnel {
                        peer,
                        flow_hash,
                        datagrams,
                        segment_len,
                    }
                }
                None => too_large,
            },
            Verdict::Drop(reason) => {
                c.bump_drop(reason);
                Action::Drop(reason)
            }
            // `answer` turned these into packets; a stage that ends the path with
            // `Continue` has nowhere to send it.
            Verdict::Continue | Verdict::Icmp(_) | Verdict::Reset | Verdict::Gateway => {
                debug_assert!(false, "unanswered verdict {verdict:?}");
                c.bump_drop(DropReason::NoRoute);
                Action::Drop(DropReason::NoRoute)
            }
        }
    }

    /// The counters, shared with the control thread for stats.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// MAC table entries stored (aged entries not yet swept included).
    pub fn mac_table_len(&self) -> usize {
        self.macs.len()
    }

    /// Live MAC table entries as `(mac, port, age)` for status output (allocates).
    pub fn mac_entries(&self, now: Nanos) -> Vec<(MacAddr, PortId, Nanos)> {
        self.macs.entries(now)
    }

    /// Periodic upkeep (the worker calls it about once a second): after a new service
    /// table, every flow is checked against it and those whose backend is gone are
    /// removed (`conntrack_flushed`: the reconcile that catches flows no packet
    /// touched); otherwise up to [`MAINTAIN_BUDGET`] flows are visited in turn.
    /// Expired flows met either way are removed (`conntrack_expired`). Returns how
    /// many flows were removed.
    pub fn maintain(&mut self, now: Nanos) -> usize {
        let services = self.services.load();
        self.lb.maintain(&services, &self.counters, now)
    }

    /// Live tracked flows, for status (allocates).
    pub fn flows(&self, now: Nanos) -> Vec<FlowInfo> {
        self.lb.flows(now)
    }

    /// Flows stored in the connection table (expired ones not yet reclaimed included).
    pub fn conntrack_len(&self) -> usize {
        self.lb.len()
    }
}

#[cfg(test)]
mod tests;
