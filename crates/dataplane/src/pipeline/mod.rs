//! The per-node pipeline, as the packet's path: one function from (ingress, frame,
//! `now`) to an [`Action`], made of stages that each read one parsed [`Ctx`] and
//! return a [`Verdict`]. Only the driver below sequences them; no stage calls another.
//!
//! ```text
//! port ─► parse ─► admit ─► service ─► policy ─► forward ─► emit ─► Action
//! tunnel ─► parse (decap) ─► admit ──┘
//! ```
//!
//! - `parse.rs`: headers checked once into the context;
//! - `admit.rs`: anti-spoofing of pod ports (ARP and IPv4 only), learning; for the
//!   tunnel, the inner source must belong to the sending peer's pod subnet;
//! - `service.rs`: the load balancer, DNAT to a backend and un-NAT of replies;
//! - `policy.rs`: NetworkPolicy, between service (which knows the backend) and
//!   forward, stateful (its own flow table), skipped while no policy selects a pod;
//! - `forward.rs`: bridge, route, tunnel; `gateway.rs`: the gateway's own answers;
//! - `emit.rs`: framing, ICMP errors and resets the node originates;
//! - here: counting each outcome and lending the caller the bytes in `out`.
//!
//! `Flood` always means "every attached port except the ingress one". Nothing here
//! allocates: the tables are allocated in [`Pipeline::new`], replies and tunnel
//! datagrams are written into the caller's `out` ([`OUT_BUF_LEN`] bytes), and the port
//! table grows only in [`Pipeline::add_port`]. The whole path is walked through in
//! `docs/architecture.md`.

use core::net::SocketAddrV4;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::codec::nat::Addressing;
use crate::codec::vxlan::ENCAP_PREFIX_LEN;
use crate::drops::{Counter, Counters, DropReason};
use crate::hash::flow_hash;
use crate::tables::conntrack::{FlowInfo, Restored};
use crate::tables::flow_file::{FlowFileError, FlowMemory};
use crate::tables::mac_table::MacTable;
use crate::tables::policy::{PolicyCounters, PolicyTable};
use crate::tables::ports::Ports;
use crate::tables::routes::RouteSnapshot;
use crate::tables::service_table::ServiceTable;
use crate::types::{Ingress, Nanos, PortId, PortRole};
use crate::wire::{Ipv4Packet, MacAddr};

mod admit;
mod config;
mod context;
mod emit;
mod forward;
mod gateway;
mod parse;
mod policy;
mod service;

pub use config::{
    PipelineConfig, TunnelConfig, DEFAULT_ICMP_ERRORS_PER_SEC, DEFAULT_MAC_AGING,
    DEFAULT_MAC_CAPACITY, DEFAULT_SERVICE_CIDR, OUT_BUF_LEN, VXLAN_OVERHEAD,
};
pub use context::Action;
use context::{Ctx, Lazy, Verdict};
use emit::{egress_for, originated, write_prefix, Env, Origin, Originated};
use forward::FwdEnv;
use gateway::Gateway;
use policy::{Policy, PolicyEnv};
pub use service::MAINTAIN_BUDGET;
use service::{Lb, LbEnv};

/// One node's data plane. Owned by one worker; see the module docs.
#[derive(Debug)]
pub struct Pipeline {
    cfg: PipelineConfig,
    stages: Stages,
    routes: Arc<ArcSwap<RouteSnapshot>>,
    services: Arc<ArcSwap<ServiceTable>>,
    policies: Arc<ArcSwap<PolicyTable>>,
    counters: Arc<Counters>,
    policy_counters: Arc<PolicyCounters>,
}

/// The state the stages change, apart from what they only read ([`Shared`]), so
/// that a snapshot can stay loaded while a stage runs.
#[derive(Debug)]
struct Stages {
    gateway: Gateway,
    ports: Ports,
    macs: MacTable,
    lb: Lb,
    policy: Policy,
    origin: Origin,
}

/// What every stage reads and none changes.
struct Shared<'a> {
    cfg: &'a PipelineConfig,
    services: &'a ArcSwap<ServiceTable>,
    counters: &'a Counters,
    denials: &'a PolicyCounters,
}

impl Pipeline {
    /// Builds the pipeline and allocates its tables (`cfg.mac_capacity` MACs,
    /// `cfg.conntrack_capacity` flows) up front.
    pub fn new(cfg: PipelineConfig) -> Self {
        let policies = Arc::new(ArcSwap::from_pointee(PolicyTable::empty()));
        Pipeline {
            stages: Stages {
                gateway: Gateway::new(cfg.gateway_ip, cfg.gateway_mac, cfg.subnet),
                ports: Ports::new(cfg.host_ip, cfg.host_mac),
                macs: MacTable::new(cfg.mac_capacity, cfg.mac_aging),
                lb: Lb::new(cfg.conntrack_capacity),
                policy: Policy::new(&policies, cfg.conntrack_capacity),
                origin: Origin::new(cfg.icmp_errors_per_sec),
            },
            routes: Arc::new(ArcSwap::from_pointee(RouteSnapshot::empty_for(cfg.subnet))),
            services: Arc::new(ArcSwap::from_pointee(ServiceTable::unpublished())),
            policies,
            counters: Arc::new(Counters::default()),
            policy_counters: Arc::new(PolicyCounters::default()),
            cfg,
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    /// The handle the control thread stores new route snapshots into; the pipeline
    /// `load()`s it per packet (no lock, no allocation). Initially
    /// `RouteSnapshot::empty_for(subnet)`.
    pub fn routes(&self) -> &Arc<ArcSwap<RouteSnapshot>> {
        &self.routes
    }

    /// The handle the control thread stores new service tables into; the pipeline
    /// `load()`s it per packet (no lock). Initially [`ServiceTable::empty`].
    pub fn services(&self) -> &Arc<ArcSwap<ServiceTable>> {
        &self.services
    }

    /// The handle the control thread stores new policy tables into (compare with
    /// `==` and store only on change: a new table makes every tracked flow be judged
    /// again at its next packet). Initially [`PolicyTable::empty`]: every pod open,
    /// and the policy stage costs one branch.
    pub fn policies(&self) -> &Arc<ArcSwap<PolicyTable>> {
        &self.policies
    }

    /// Denials per policy id, shared with the control thread for stats.
    pub fn policy_counters(&self) -> &Arc<PolicyCounters> {
        &self.policy_counters
    }

    /// Flows the policy stage tracks (expired ones not yet reclaimed included).
    pub fn policy_flows_len(&self) -> usize {
        self.stages.policy.len()
    }

    /// The host port's MAC, configured or learned.
    pub fn host_mac(&self) -> Option<MacAddr> {
        self.stages.ports.host_mac()
    }

    /// Attaches a port; replaces an existing port of that id and forgets its MACs.
    pub fn add_port(&mut self, id: PortId, role: PortRole) {
        if self.stages.ports.add(id, role) {
            self.stages.macs.forget_port(id);
        }
    }

    /// The gateway's ARP announcement to the pod on `port` (see
    /// `Gateway::announce`), built in `out`; `None` for a port that is no pod's.
    pub fn gateway_announcement<'a>(&self, port: PortId, out: &'a mut [u8]) -> Option<&'a [u8]> {
        let PortRole::Pod { mac, ip } = self.stages.ports.role(port)? else {
            return None;
        };
        let len = self.stages.gateway.announce((mac, ip), out).ok()?;
        out.get(..len)
    }

    /// Detaches a port and forgets every MAC learned on it.
    pub fn remove_port(&mut self, id: PortId) {
        if self.stages.ports.remove(id) {
            self.stages.macs.forget_port(id);
        }
    }

    /// Attached ports in id order.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, PortRole)> + '_ {
        self.stages.ports.iter()
    }

    /// The ports a [`Action::Flood`] from `ingress` goes to: every attached port but
    /// `ingress`, in id order. Does not allocate.
    pub fn flood_targets(&self, ingress: PortId) -> impl Iterator<Item = PortId> + '_ {
        self.stages
            .ports
            .iter()
            .map(|(id, _)| id)
            .filter(move |id| *id != ingress)
    }

    /// The role of an attached port.
    pub fn port_role(&self, id: PortId) -> Option<PortRole> {
        self.stages.ports.role(id)
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
        let (st, sh, mut routes) = self.split();
        st.port_path(&sh, &mut routes, ingress, pkt, now, out)
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
        let (st, sh, mut routes) = self.split();
        let tun = sh.cfg.tunnel.as_ref();
        let mut ctx = Ctx::new(Ingress::Tunnel);
        let (from, counters) = (*src.ip(), sh.counters);
        if let Err(r) = parse::from_tunnel(tun, routes.get(), from, payload, counters, &mut ctx) {
            return finish(counters, r.into(), out);
        }
        if st.lb.len() != 0 {
            // The inner-source check may ask whether this is a tracked reply.
            parse::read_l4(&mut ctx, payload);
        }
        let lb = &mut st.lb;
        let v = admit::admit_tunnel(&ctx, |ip| lb.expects_reply(ip, counters, now));
        if v != Verdict::Continue {
            return finish(counters, v, out);
        }
        st.after_admit::<true>(&sh, &mut routes, &mut ctx, payload, now, out)
    }

    /// The stages, lent mutably beside what they only read, and the route snapshot
    /// (loaded on first use).
    #[inline(always)]
    fn split(&mut self) -> (&mut Stages, Shared<'_>, Lazy<'_, RouteSnapshot>) {
        let sh = Shared {
            cfg: &self.cfg,
            services: &self.services,
            counters: &self.counters,
            denials: &self.policy_counters,
        };
        (&mut self.stages, sh, Lazy::new(&self.routes))
    }

    /// The counters, shared with the control thread for stats.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// MAC table entries stored (aged entries not yet swept included).
    pub fn mac_table_len(&self) -> usize {
        self.stages.macs.len()
    }

    /// Live MAC table entries as `(mac, port, age)` for status output (allocates).
    pub fn mac_entries(&self, now: Nanos) -> Vec<(MacAddr, PortId, Nanos)> {
        self.stages.macs.entries(now)
    }

    /// Periodic upkeep (the worker calls it about once a second): after a new service
    /// table, every flow is checked against it and those whose backend is gone are
    /// removed (`conntrack_flushed`: the reconcile that catches flows no packet
    /// touched); otherwise up to [`MAINTAIN_BUDGET`] flows are visited in turn.
    /// Expired flows met either way are removed (`conntrack_expired`), and up to
    /// [`MAINTAIN_BUDGET`] flows of the policy stage are visited for expiry. Returns
    /// how many flows were removed.
    pub fn maintain(&mut self, now: Nanos) -> usize {
        let services = self.services.load();
        let lb = self.stages.lb.maintain(&services, &self.counters, now);
        lb + self
            .stages
            .policy
            .maintain(&self.counters, now, MAINTAIN_BUDGET)
    }

    /// Restores the service flows recorded in a flow file (`tables/flow_file.rs`)
    /// and from then on writes every flow change into it, so that the next process
    /// finds them. Call before the first packet, on an empty table. Counted:
    /// `conntrack_restored`, `conntrack_restore_rejected`; an unusable header is
    /// an error and the memory is dropped unused.
    pub fn attach_flow_file(
        &mut self,
        mem: Box<dyn FlowMemory>,
        now: Nanos,
    ) -> Result<Restored, FlowFileError> {
        self.stages.lb.attach(mem, &self.cfg, &self.counters, now)
    }

    /// Stops mirroring into the flow file and hands its memory back, as it is (what
    /// a process killed now would leave).
    pub fn detach_flow_file(&mut self) -> Option<Box<dyn FlowMemory>> {
        self.stages.lb.detach()
    }

    /// Counts a flow file found unusable and moved aside (`flow_file_discarded`).
    /// Before the first packet (the worker owns the counters afterwards).
    pub fn flow_file_discarded(&mut self) {
        self.counters.bump(Counter::FlowFileDiscarded);
    }

    /// Live tracked flows, for status (allocates).
    pub fn flows(&self, now: Nanos) -> Vec<FlowInfo> {
        self.stages.lb.flows(now)
    }

    /// Flows stored in the connection table (expired ones not yet reclaimed included).
    pub fn conntrack_len(&self) -> usize {
        self.stages.lb.len()
    }
}

impl Stages {
    /// Stages 1 and 2 for a frame from a port, then the rest.
    #[inline(always)]
    fn port_path<'a>(
        &mut self,
        sh: &Shared,
        routes: &mut Lazy<RouteSnapshot>,
        port: PortId,
        pkt: &mut [u8],
        now: Nanos,
        out: &'a mut [u8],
    ) -> Action<'a> {
        let Some(role) = self.ports.role(port) else {
            return finish(sh.counters, DropReason::UnknownIngress.into(), out);
        };
        let mut ctx = Ctx::new(Ingress::Port(port));
        if let Err(r) = parse::from_port(role, sh.cfg.gateway_mac, pkt, &mut ctx) {
            return finish(sh.counters, r.into(), out);
        }
        let v = admit::admit(
            &ctx,
            port,
            role,
            &mut self.ports,
            &mut self.macs,
            now,
            sh.counters,
        );
        if v != Verdict::Continue {
            return finish(sh.counters, v, out);
        }
        self.after_admit::<false>(sh, routes, &mut ctx, pkt, now, out)
    }

    /// Service, policy, forward, and what they asked the node to answer, counted
    /// and lent to the caller ([`finish`]). Inlined into both drivers so that the
    /// verdicts stay in registers (a verdict stored piecewise and reloaded whole
    /// stalls store forwarding: measured +15 ns a frame). `DECAP`: called by the
    /// tunnel driver (see `forward::forward`).
    #[inline(always)]
    fn after_admit<'a, const DECAP: bool>(
        &mut self,
        sh: &Shared,
        routes: &mut Lazy<RouteSnapshot>,
        ctx: &mut Ctx,
        pkt: &mut [u8],
        now: Nanos,
        out: &'a mut [u8],
    ) -> Action<'a> {
        let env = LbEnv {
            cfg: sh.cfg,
            services: sh.services,
            counters: sh.counters,
        };
        // Policy needs the sender as it was before the load balancer's NAT; copied
        // only while some policy selects a pod (one branch otherwise).
        let pre = if self.policy.active() {
            parse::read_l4(ctx, pkt);
            ctx.ip
        } else {
            None
        };
        // Each stage's verdict is its own value, returned as it is unless it asks
        // for an answer: one variable reassigned by every stage was copied field by
        // field and reloaded whole, a store-forwarding stall on every packet.
        let v = self.lb.stage(&env, ctx, pkt, now);
        if v != Verdict::Continue {
            let v = self.settle(sh, routes, ctx, v, pkt, now, out);
            return finish(sh.counters, v, out);
        }
        if let Some(pre) = pre {
            let env = PolicyEnv {
                cfg: sh.cfg,
                counters: sh.counters,
                denials: sh.denials,
                role: ctx.port().and_then(|p| self.ports.role(p)),
            };
            let v = self.policy.stage(&env, &pre, ctx, now);
            if v != Verdict::Continue {
                let v = self.settle(sh, routes, ctx, v, pkt, now, out);
                return finish(sh.counters, v, out);
            }
        }
        let env = FwdEnv {
            cfg: sh.cfg,
            ports: &self.ports,
            counters: sh.counters,
        };
        let v = forward::forward::<DECAP>(&env, routes, &mut self.macs, ctx, pkt, now, out);
        if matches!(v, Verdict::Icmp(_) | Verdict::Reset | Verdict::Gateway) {
            let v = self.settle(sh, routes, ctx, v, pkt, now, out);
            return finish(sh.counters, v, out);
        }
        finish(sh.counters, v, out)
    }

    /// A verdict that asks the node to answer becomes the answer; any other is final.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn settle(
        &mut self,
        sh: &Shared,
        routes: &mut Lazy<RouteSnapshot>,
        ctx: &Ctx,
        v: Verdict,
        pkt: &[u8],
        now: Nanos,
        out: &mut [u8],
    ) -> Verdict {
        match v {
            Verdict::Icmp(_) | Verdict::Reset | Verdict::Gateway => {
                self.answer(sh, routes.get(), ctx, v, pkt, now, out)
            }
            other => other,
        }
    }

    /// Turns the verdicts that ask the node to answer into the answer.
    #[allow(clippy::too_many_arguments)]
    fn answer(
        &mut self,
        sh: &Shared,
        routes: &RouteSnapshot,
        ctx: &Ctx,
        v: Verdict,
        pkt: &[u8],
        now: Nanos,
        out: &mut [u8],
    ) -> Verdict {
        let env = Env {
            cfg: sh.cfg,
            routes,
            ports: &self.ports,
            counters: sh.counters,
        };
        let sent = match v {
            Verdict::Icmp(err) => self.origin.icmp_error(&env, ctx, pkt, err, now, out),
            Verdict::Reset => self.origin.tcp_reset(&env, ctx, pkt, now, out),
            Verdict::Gateway => return self.gateway_answer(&env, ctx, pkt, out),
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
                .and_then(|a| self.lb.translate_icmp_error(sh.counters, ip, &a, now));
            if let Err(r) = translated {
                return r.into();
            }
            sh.counters.bump(Counter::IcmpErrorsSent);
        }
        originated(routes, o)
    }

    /// The gateway's own answers: ARP and echo from a port, echo from the tunnel
    /// (whose reply is routed back).
    fn gateway_answer(&self, env: &Env, ctx: &Ctx, pkt: &[u8], out: &mut [u8]) -> Verdict {
        let ip = Ipv4Packet::new_unchecked(pkt.get(ctx.ip_at()..).unwrap_or(&[]));
        let result = match (ctx.ingress, &ctx.arp, ctx.ip) {
            (Ingress::Port(_), Some(arp), _) => self.gateway.handle_arp(arp, out),
            (Ingress::Port(_), None, Some(_)) => {
                self.gateway.handle_ipv4(&ctx.vnet, ctx.src_mac, &ip, out)
            }
            (Ingress::Tunnel, _, Some(facts)) => {
                let Some(egress) = egress_for(env.cfg, env.routes, env.ports, ctx, facts.src)
                else {
                    return DropReason::NoRoute.into();
                };
                let sent = write_prefix(env.cfg, env.routes, out, egress).and_then(|ip_at| {
                    let rest = out.get_mut(ip_at..).ok_or(DropReason::ReplyTooLarge)?;
                    let n = self.gateway.answer_echo(&ctx.vnet, &ip, rest)?;
                    Ok(Originated {
                        egress,
                        ip_at,
                        end: ip_at + n,
                    })
                });
                return match sent {
                    Ok(o) => originated(env.routes, o),
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
}

/// Counts the outcome and lends the caller the bytes it refers to. Called where
/// each path ends rather than once after the paths merge: a verdict merged from
/// several paths was copied field by field and then read back in other widths, a
/// store-forwarding stall on every packet (docs/benchmarks.md, the pipeline
/// restructure).
#[inline(always)]
fn finish<'a>(c: &Counters, verdict: Verdict, out: &'a [u8]) -> Action<'a> {
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
            len,
            segment_len,
        } => {
            let (len, segment_len) = (len as usize, segment_len.max(1) as usize);
            match lend(len, Counter::TunneledOut) {
                Some(datagrams) => {
                    c.add(
                        Counter::TunnelDatagramsOut,
                        len.div_ceil(segment_len) as u64,
                    );
                    // The inner flow of the first datagram: every one has the same.
                    let inner = datagrams.get(ENCAP_PREFIX_LEN..).unwrap_or(&[]);
                    Action::Tunnel {
                        peer,
                        flow_hash: flow_hash(&Ipv4Packet::new_unchecked(inner)),
                        datagrams,
                        segment_len,
                    }
                }
                None => too_large,
            }
        }
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

#[cfg(test)]
mod tests;
