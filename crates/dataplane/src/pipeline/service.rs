//! Stage 3, service: the load balancer (Kubernetes fact 4), kube-proxy's job, done
//! after admission and before the route lookup.
//!
//! Port clashes: a service flow from `client:port` DNATed to `backend` holds the
//! reply key `backend → client:port`. A flow the client then sends straight to that
//! backend from the same port (not through the ClusterIP) would have the same reply
//! key, and its replies would be un-NATed to the VIP. As Linux's NAT clash
//! resolution does, that later flow is tracked too, as a direct flow
//! (`FlowKind::Direct`: the "VIP" is the backend itself), SNATed to another source
//! port whose reply key is free (`lb_clash_remaps`); its replies go back to the
//! client's own port from the backend, and ICMP errors about it are translated like
//! those of a service flow. `Conntrack::lookup` finds the flow a packet belongs to,
//! a reply, or such a clash (the packet is a reversed reply key) in one probe: no
//! second lookup for any packet. A direct flow lives by its own timeouts, is no
//! service's (a table change does not flush it), and once it has ended the port is
//! used unchanged again unless a service flow still holds the key.
//! Only tracked flows are seen: a direct connection opened before the service flow
//! took its reply key is not, and loses its replies to the VIP (Linux tracks every
//! flow and would give the service flow another port instead).
//!
//! In full: docs/dataplane.md, "The service stage (load balancer)".

use core::net::Ipv4Addr;

use super::config::PipelineConfig;
use super::context::{Ctx, IcmpError, Ip, Verdict};
use super::parse::read_l4;
use crate::codec::nat::{
    rewrite_addresses_checked, rewrite_checked, rewrite_quoted, Addressing, Endpoint, L4Sum, Quoted,
};
use crate::codec::vxlan::settle_l4_checksum;
use crate::drops::{Counter, Counters, DropReason};
use crate::hash::fmix64;
use crate::tables::conntrack::{
    timeout, Conntrack, Dir, Flow, FlowInfo, FlowKind, FlowState, Hit, Restored, Tuple,
};
use crate::tables::flow_file::{FlowFileError, FlowMemory};
use crate::tables::fragments::FragTable;
use crate::tables::service_table::ServiceTable;
use crate::types::{Backend, Ingress, L4Proto, Nanos};
use crate::wire::tcp::{TCP_ACK, TCP_FIN, TCP_SYN};
use crate::wire::{
    Icmpv4Message, IpProtocol, ICMPV4_HEADER_LEN, ICMP_UNREACH_HOST, ICMP_UNREACH_PORT,
};
use arc_swap::ArcSwap;

/// Flows `Pipeline::maintain` looks at per call when the table did not change.
pub const MAINTAIN_BUDGET: usize = 65_536;

/// Other source ports tried when the client's own gives a reply key already in use.
const NAT_PORT_TRIES: u32 = 16;

/// What the stage reads besides its own state.
pub(crate) struct LbEnv<'a> {
    pub cfg: &'a PipelineConfig,
    pub services: &'a ArcSwap<ServiceTable>,
    pub counters: &'a Counters,
}

/// What the stage reads once it has loaded the service table.
struct SvcEnv<'a> {
    cfg: &'a PipelineConfig,
    services: &'a ServiceTable,
    counters: &'a Counters,
}

/// What the tracked-flow lookup made of a packet.
enum Tracked {
    /// Translated (or dropped): the stage's verdict.
    Done(Verdict),
    /// A packet of the service flow at this conntrack index, for `balance`.
    Service(usize),
    /// No tracked flow.
    No,
}

/// The load balancer's per-node state: tracked flows and fragment translations.
#[derive(Debug)]
pub(crate) struct Lb {
    conntrack: Conntrack,
    /// Translations of fragmented datagrams of service flows.
    frags: FragTable,
    /// Generation of the service table `maintain` last reconciled every flow with.
    reconciled: u64,
}

fn addressing(ip: &Ip) -> Addressing {
    Addressing {
        header_len: ip.header_len,
        total_len: ip.total_len,
        proto: ip.proto,
        src: ip.src,
        dst: ip.dst,
        later_fragment: ip.later_fragment,
    }
}

/// The IPv4 packet of the buffer `ctx` describes.
fn ip_bytes<'p>(ctx: &Ctx, pkt: &'p mut [u8]) -> &'p mut [u8] {
    pkt.get_mut(ctx.ip_at()..).unwrap_or(&mut [])
}

/// Records in `ctx` the addresses (and ports) NAT wrote.
fn readdress(ctx: &mut Ctx, src: Endpoint, dst: Endpoint) {
    if let Some(ip) = ctx.ip.as_mut() {
        ip.src = src.0;
        ip.dst = dst.0;
        if ip.ports.is_some() {
            ip.ports = Some((src.1, dst.1));
        }
    }
    ctx.translated = true;
}

impl Lb {
    pub(crate) fn new(conntrack_capacity: usize) -> Lb {
        Lb {
            conntrack: Conntrack::new(conntrack_capacity),
            frags: FragTable::new(),
            reconciled: 0,
        }
    }

    /// The stage: see the module docs. `Continue` with `ctx.translated` set when the
    /// packet was rewritten (DNAT, or un-NAT of a reply or an ICMP error). Always
    /// inlined: its idle check is the bridged path's whole cost of this stage.
    #[inline(always)]
    pub(crate) fn stage(
        &mut self,
        env: &LbEnv,
        ctx: &mut Ctx,
        pkt: &mut [u8],
        now: Nanos,
    ) -> Verdict {
        // Nothing to do for a frame that is bridged while no service flow is tracked
        // (the bulk of same-node traffic): no table is loaded.
        let idle = self.frags.is_empty() && self.conntrack.is_empty();
        if ctx.ip.is_none() || (idle && !(ctx.to_gateway && ctx.ingress != Ingress::Tunnel)) {
            return Verdict::Continue;
        }
        self.busy(env, ctx, pkt, now)
    }

    /// The stage for a packet it may have to translate or balance.
    fn busy(&mut self, env: &LbEnv, ctx: &mut Ctx, pkt: &mut [u8], now: Nanos) -> Verdict {
        read_l4(ctx, pkt);
        let Some(ip) = ctx.ip else {
            return Verdict::Continue;
        };
        if ip.later_fragment && !self.frags.is_empty() {
            if let Some((src, dst)) = self.frags.find(&ip.frag_key(), now) {
                rewrite_addresses_checked(ip_bytes(ctx, pkt), &addressing(&ip), src, dst);
                readdress(ctx, (src, 0), (dst, 0));
                return Verdict::Continue;
            }
        }
        let mut service_flow = None;
        if !self.conntrack.is_empty() {
            if ip.proto == IpProtocol::Icmp && !ip.fragment {
                let a = addressing(&ip);
                match self.translate_icmp_error(env.counters, ip_bytes(ctx, pkt), &a, now) {
                    Ok(Some((src, dst))) => {
                        readdress(ctx, (src, 0), (dst, 0));
                        return Verdict::Continue;
                    }
                    Ok(None) => {}
                    Err(r) => return r.into(),
                }
            }
            match self.tracked(env, ctx, &ip, pkt, now) {
                Tracked::Done(v) => return v,
                Tracked::Service(f) => service_flow = Some(f),
                Tracked::No => {}
            }
        }
        if ctx.ingress == Ingress::Tunnel || !ctx.to_gateway {
            return Verdict::Continue;
        }
        let in_cidr = env.cfg.service_cidr.is_some_and(|c| c.contains(ip.dst));
        let services = env.services.load();
        let is_vip = services.is_vip(ip.dst);
        if !is_vip && !in_cidr {
            return Verdict::Continue;
        }
        let env = SvcEnv {
            cfg: env.cfg,
            services: &services,
            counters: env.counters,
        };
        self.balance(&env, is_vip, service_flow, ctx, &ip, pkt, now)
    }

    /// Whether `ip` (TCP/UDP with ports) is the reply of a tracked flow. Read only:
    /// the flow is not advanced (the stage does that when it un-NATs the packet).
    pub(crate) fn expects_reply(&mut self, ip: &Ip, counters: &Counters, now: Nanos) -> bool {
        if self.conntrack.is_empty() {
            return false;
        }
        ip.tuple()
            .and_then(|t| self.conntrack.find(Dir::Reply, &t, now, counters))
            .is_some()
    }

    /// Looks the packet's tuple up once (see `Conntrack::lookup`) and translates what
    /// belongs to a tracked flow: a reply (un-NAT), a packet of a direct flow (SNAT),
    /// the first packet of a direct flow that clashes with a tracked one (a new
    /// direct flow, SNAT). A packet of a service flow is left to `balance`.
    fn tracked(
        &mut self,
        env: &LbEnv,
        ctx: &mut Ctx,
        ip: &Ip,
        pkt: &mut [u8],
        now: Nanos,
    ) -> Tracked {
        let Some(t) = ip.tuple() else {
            return Tracked::No;
        };
        // Twice: a direct flow that a new TCP connection ends is looked up again.
        for _ in 0..2 {
            let Some((f, hit)) = self.conntrack.lookup(&t, now, env.counters) else {
                return Tracked::No;
            };
            let services = env.services.load();
            let svc = SvcEnv {
                cfg: env.cfg,
                services: &services,
                counters: env.counters,
            };
            let (dir, flow) = match hit {
                Hit::Forward => {
                    if self.conntrack.get_mut(f).map(|f| f.kind) == Some(FlowKind::Service) {
                        return Tracked::Service(f);
                    }
                    match self.track(&svc, f, Dir::Forward, ip.tcp_flags, now) {
                        Some(flow) => (Dir::Forward, flow),
                        None => continue,
                    }
                }
                Hit::Reply => match self.track(&svc, f, Dir::Reply, ip.tcp_flags, now) {
                    Some(flow) => (Dir::Reply, flow),
                    None => return Tracked::No,
                },
                Hit::Clash => match self.direct_flow(&svc, &t, ip.tcp_flags, now) {
                    Ok(flow) => (Dir::Forward, flow),
                    Err(r) => return Tracked::Done(r.into()),
                },
            };
            return Tracked::Done(self.translate(env.counters, dir, &flow, ctx, ip, pkt, now));
        }
        Tracked::No
    }

    /// Rewrites a packet of `flow` going `dir`, found by `tracked`: a reply back to
    /// `vip → client`, a direct flow's packet to `nat → backend`.
    #[allow(clippy::too_many_arguments)]
    fn translate(
        &mut self,
        counters: &Counters,
        dir: Dir,
        flow: &Flow,
        ctx: &mut Ctx,
        ip: &Ip,
        pkt: &mut [u8],
        now: Nanos,
    ) -> Verdict {
        let (src, dst) = match dir {
            Dir::Reply => (flow.vip, flow.client),
            Dir::Forward => (flow.nat, (flow.backend.ip, flow.backend.port)),
        };
        let bytes = ip_bytes(ctx, pkt);
        let sum = match ctx.ingress {
            // A Linux VXLAN sender may leave it partial: settled first, then full.
            Ingress::Tunnel => match settle_l4_checksum(bytes) {
                Ok(c) => {
                    ctx.l4_checksum = Some(c);
                    L4Sum::Full
                }
                Err(r) => return r.into(),
            },
            Ingress::Port(_) if ctx.vnet.needs_csum() => L4Sum::Partial,
            Ingress::Port(_) => L4Sum::Full,
        };
        if let Err(r) = rewrite_checked(bytes, &addressing(ip), src, dst, sum) {
            return r.into();
        }
        if ip.fragment && (src.0, dst.0) != (ip.src, ip.dst) {
            self.frags.insert(ip.frag_key(), (src.0, dst.0), now);
        }
        if dir == Dir::Reply {
            counters.bump(Counter::LbReplies);
        }
        readdress(ctx, src, dst);
        Verdict::Continue
    }

    /// Flow `f`, which a packet going `dir` was found to belong to, confirmed against
    /// the current table (a service flow), with its state advanced for this packet.
    fn track(&mut self, env: &SvcEnv, f: usize, dir: Dir, flags: u8, now: Nanos) -> Option<Flow> {
        let gen = env.services.generation();
        let flow = self.conntrack.get_mut(f)?;
        // Generation 0: no table published yet (an agent that restored its flows
        // before the cluster's services were read): keep the flow unconfirmed.
        if flow.kind == FlowKind::Service && flow.generation != gen && gen != 0 {
            let alive = env
                .services
                .find(flow.vip.0, flow.vip.1, flow.proto)
                .is_some_and(|s| s.has_backend(flow.backend));
            if !alive {
                self.conntrack.remove(f);
                env.counters.bump(Counter::ConntrackFlushed);
                return None;
            }
            flow.generation = gen;
        }
        if dir == Dir::Forward
            && flow.state == FlowState::Closing
            && flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        {
            // A new connection reusing the 5-tuple of a closed one: pick afresh.
            self.conntrack.remove(f);
            return None;
        }
        let before = (flow.state, flow.fins);
        flow.on_packet(dir, flags, now, &env.cfg.conntrack_timeouts);
        let flow = *flow;
        if (flow.state, flow.fins) != before {
            self.conntrack.persist(f);
        }
        Some(flow)
    }

    /// A packet to a ClusterIP or the service CIDR: see the module docs. `found`: the
    /// service flow `tracked` found the packet to belong to.
    #[allow(clippy::too_many_arguments)]
    fn balance(
        &mut self,
        env: &SvcEnv,
        is_vip: bool,
        found: Option<usize>,
        ctx: &mut Ctx,
        ip: &Ip,
        pkt: &mut [u8],
        now: Nanos,
    ) -> Verdict {
        let gw = env.cfg.gateway_ip;
        let unreachable =
            |from, code, reason| Verdict::Icmp(IcmpError::Unreachable { from, code, reason });
        if !is_vip {
            return unreachable(gw, ICMP_UNREACH_HOST, DropReason::NotAService);
        }
        if ip.later_fragment {
            // Its first fragment was not seen (`stage` looked it up).
            return DropReason::ServiceFragment.into();
        }
        let Some(t) = ip.tuple() else {
            if L4Proto::from_ip(ip.proto).is_some() {
                return DropReason::Truncated.into();
            }
            return unreachable(gw, ICMP_UNREACH_HOST, DropReason::NoServicePort);
        };
        let Some(service) = env.services.find(t.dst, t.dport, t.proto) else {
            return unreachable(t.dst, ICMP_UNREACH_PORT, DropReason::NoServicePort);
        };
        let tracked = found.and_then(|f| self.track(env, f, Dir::Forward, ip.tcp_flags, now));
        let flow = match tracked {
            Some(flow) => {
                env.counters.bump(Counter::LbEstablished);
                flow
            }
            None => {
                let Some(backend) = service.pick((t.src, t.sport)) else {
                    env.counters.bump(Counter::LbNoEndpoint);
                    return match t.proto {
                        L4Proto::Tcp => Verdict::Reset,
                        L4Proto::Udp => {
                            unreachable(t.dst, ICMP_UNREACH_PORT, DropReason::LbNoEndpoint)
                        }
                    };
                };
                match self.new_flow(env, &t, backend, ip.tcp_flags, now) {
                    Ok(flow) => flow,
                    Err(r) => return r.into(),
                }
            }
        };
        let dst = (flow.backend.ip, flow.backend.port);
        let sum = if ctx.vnet.needs_csum() {
            L4Sum::Partial
        } else {
            L4Sum::Full
        };
        if let Err(r) = rewrite_checked(ip_bytes(ctx, pkt), &addressing(ip), flow.nat, dst, sum) {
            return r.into();
        }
        if ip.fragment {
            self.frags
                .insert(ip.frag_key(), (flow.nat.0, flow.backend.ip), now);
        }
        readdress(ctx, flow.nat, dst);
        Verdict::Continue
    }

    /// Tracks a new flow to `backend`: NAT source (hairpin → the gateway IP), a free
    /// reply key, the entry.
    fn new_flow(
        &mut self,
        env: &SvcEnv,
        t: &Tuple,
        backend: Backend,
        flags: u8,
        now: Nanos,
    ) -> Result<Flow, DropReason> {
        let nat_ip = if backend.ip == t.src {
            env.cfg.gateway_ip
        } else {
            t.src
        };
        let nat_port = self.free_nat_port(env.counters, t, backend, nat_ip, 0, now)?;
        let nat = (nat_ip, nat_port);
        Ok(self.insert_flow(env, t, backend, nat, FlowKind::Service, flags, now))
    }

    /// Tracks a new flow of `t` to `backend`, seen by the backend from `nat`,
    /// counted as a new service flow or a clash remap by its `kind`.
    #[allow(clippy::too_many_arguments)]
    fn insert_flow(
        &mut self,
        env: &SvcEnv,
        t: &Tuple,
        backend: Backend,
        nat: (Ipv4Addr, u16),
        kind: FlowKind,
        flags: u8,
        now: Nanos,
    ) -> Flow {
        let state = Flow::initial_state(t.proto, flags);
        let flow = Flow {
            client: (t.src, t.sport),
            vip: (t.dst, t.dport),
            backend,
            nat,
            proto: t.proto,
            kind,
            state,
            fins: if flags & TCP_FIN != 0 { 1 } else { 0 },
            created: now,
            expires: now.saturating_add(timeout(state, &env.cfg.conntrack_timeouts)),
            generation: env.services.generation(),
        };
        self.conntrack.insert(flow, now, env.counters);
        env.counters.bump(match kind {
            FlowKind::Service => Counter::LbNewFlows,
            FlowKind::Direct => Counter::LbClashRemaps,
        });
        flow
    }

    /// A source port for `nat_ip` whose reply key from `backend` no flow holds: the
    /// client's own (`t.sport`, unless `first` skips it), else one of
    /// `NAT_PORT_TRIES` others (as Linux's `nf_nat_used_tuple` / `get_unique_tuple`).
    fn free_nat_port(
        &mut self,
        counters: &Counters,
        t: &Tuple,
        backend: Backend,
        nat_ip: Ipv4Addr,
        first: u32,
        now: Nanos,
    ) -> Result<u16, DropReason> {
        for k in first..=NAT_PORT_TRIES {
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
                .find(Dir::Reply, &reply, now, counters)
                .is_none()
            {
                return Ok(port);
            }
        }
        Err(DropReason::NatPortsExhausted)
    }

    /// Tracks a flow straight to a pod (`t`, not to a ClusterIP) whose reply key a
    /// tracked flow holds, with another source port (see the module docs).
    fn direct_flow(
        &mut self,
        env: &SvcEnv,
        t: &Tuple,
        flags: u8,
        now: Nanos,
    ) -> Result<Flow, DropReason> {
        let backend = Backend {
            ip: t.dst,
            port: t.dport,
        };
        let nat_port = self.free_nat_port(env.counters, t, backend, t.src, 1, now)?;
        let nat = (t.src, nat_port);
        Ok(self.insert_flow(env, t, backend, nat, FlowKind::Direct, flags, now))
    }

    /// Rewrites, in place, an ICMP error (the IPv4 packet `ip`, whose header `outer`
    /// describes) about a tracked flow for its client: see the module docs. `None`:
    /// not an ICMP error, or not about a tracked flow (untouched); `Some`: rewritten,
    /// with its new outer source and destination. An error whose quote matches a flow
    /// but cannot be rewritten is dropped (`Truncated`, `BadHeader`).
    pub(crate) fn translate_icmp_error(
        &mut self,
        counters: &Counters,
        ip: &mut [u8],
        outer: &Addressing,
        now: Nanos,
    ) -> Result<Option<(Ipv4Addr, Ipv4Addr)>, DropReason> {
        if self.conntrack.is_empty() || outer.proto != IpProtocol::Icmp {
            return Ok(None);
        }
        let Some(ip) = ip.get_mut(..outer.total_len) else {
            return Ok(None);
        };
        let (hdr, icmp) = ip.split_at_mut(outer.header_len.min(ip.len()));
        if !icmp
            .first()
            .is_some_and(|t| Icmpv4Message::from(*t).is_error())
        {
            return Ok(None);
        }
        let Some(quote) = icmp.get_mut(ICMPV4_HEADER_LEN..) else {
            return Ok(None);
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
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let Some(f) = self.conntrack.find(Dir::Reply, &t, now, counters) else {
            return Ok(None);
        };
        let Some(flow) = self.conntrack.get_mut(f).map(|f| *f) else {
            return Ok(None);
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
        let src = if outer.src == flow.backend.ip {
            flow.vip.0
        } else {
            outer.src
        };
        let dst = if outer.dst == flow.nat.0 {
            flow.client.0
        } else {
            outer.dst
        };
        let mut o = crate::wire::Ipv4Packet::new_unchecked(hdr);
        o.set_src_addr(src);
        o.set_dst_addr(dst);
        o.fill_checksum();
        counters.bump(Counter::LbIcmpErrors);
        Ok(Some((src, dst)))
    }

    /// Periodic upkeep: see `Pipeline::maintain`.
    pub(crate) fn maintain(
        &mut self,
        services: &ServiceTable,
        counters: &Counters,
        now: Nanos,
    ) -> usize {
        let gen = services.generation();
        if gen == 0 {
            // Nothing published yet: expire, but judge no backend by an empty table.
            return self
                .conntrack
                .sweep(now, MAINTAIN_BUDGET, false, counters, |_| true);
        }
        let full = gen != self.reconciled;
        let budget = if full {
            self.conntrack.len()
        } else {
            MAINTAIN_BUDGET
        };
        let removed = self.conntrack.sweep(now, budget, full, counters, |f| {
            if f.generation == gen || f.kind == FlowKind::Direct {
                return true;
            }
            let alive = services
                .find(f.vip.0, f.vip.1, f.proto)
                .is_some_and(|s| s.has_backend(f.backend));
            if alive {
                f.generation = gen;
            }
            alive
        });
        self.reconciled = gen;
        removed
    }

    /// Restores the flows of a flow file and mirrors every change into it: see
    /// [`Conntrack::attach`]. A service flow is accepted only if its ClusterIP is
    /// in the service CIDR (when one is configured) and its NAT source is its
    /// client or, for hairpin, the gateway; a direct flow only if its destination
    /// is its backend and its NAT source its client's address.
    pub(crate) fn attach(
        &mut self,
        mem: Box<dyn FlowMemory>,
        cfg: &PipelineConfig,
        counters: &Counters,
        now: Nanos,
    ) -> Result<Restored, FlowFileError> {
        let valid = |f: &Flow| match f.kind {
            FlowKind::Service => {
                cfg.service_cidr.is_none_or(|c| c.contains(f.vip.0))
                    && (f.nat.0 == f.client.0 || f.nat.0 == cfg.gateway_ip)
            }
            // Straight to a pod, its source port moved: the "service" is the pod.
            FlowKind::Direct => f.vip == (f.backend.ip, f.backend.port) && f.nat.0 == f.client.0,
        };
        self.conntrack
            .attach(mem, now, &cfg.conntrack_timeouts, counters, valid)
    }

    /// The flow file's memory, no longer written.
    pub(crate) fn detach(&mut self) -> Option<Box<dyn FlowMemory>> {
        self.conntrack.detach()
    }

    /// Live tracked flows, for status (allocates).
    pub(crate) fn flows(&self, now: Nanos) -> Vec<FlowInfo> {
        self.conntrack.infos(now)
    }

    /// Flows stored (expired ones not yet reclaimed included).
    pub(crate) fn len(&self) -> usize {
        self.conntrack.len()
    }
}
