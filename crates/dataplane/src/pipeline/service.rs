//! Stage 3, service: the load balancer (Kubernetes fact 4), kube-proxy's job, done
//! after admission and before the route lookup.
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
    timeout, Conntrack, Dir, Flow, FlowInfo, FlowState, Restored, Tuple,
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
            if let Some(v) = self.reply(env, ctx, &ip, pkt, now) {
                return v;
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
        self.balance(&env, is_vip, ctx, &ip, pkt, now)
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

    /// Un-NATs the reply of a tracked flow; `None` if it is none.
    fn reply(
        &mut self,
        env: &LbEnv,
        ctx: &mut Ctx,
        ip: &Ip,
        pkt: &mut [u8],
        now: Nanos,
    ) -> Option<Verdict> {
        let t = ip.tuple()?;
        let services = env.services.load();
        let env = SvcEnv {
            cfg: env.cfg,
            services: &services,
            counters: env.counters,
        };
        let flow = self.track(&env, Dir::Reply, &t, ip.tcp_flags, now)?;
        let bytes = ip_bytes(ctx, pkt);
        let sum = match ctx.ingress {
            // A Linux VXLAN sender may leave it partial: settled first, then full.
            Ingress::Tunnel => match settle_l4_checksum(bytes) {
                Ok(c) => {
                    ctx.l4_checksum = Some(c);
                    L4Sum::Full
                }
                Err(r) => return Some(r.into()),
            },
            Ingress::Port(_) if ctx.vnet.needs_csum() => L4Sum::Partial,
            Ingress::Port(_) => L4Sum::Full,
        };
        if let Err(r) = rewrite_checked(bytes, &addressing(ip), flow.vip, flow.client, sum) {
            return Some(r.into());
        }
        if ip.fragment {
            self.frags
                .insert(ip.frag_key(), (flow.vip.0, flow.client.0), now);
        }
        env.counters.bump(Counter::LbReplies);
        readdress(ctx, flow.vip, flow.client);
        Some(Verdict::Continue)
    }

    /// The flow whose `dir` key is `t`, confirmed against the current table, with its
    /// state advanced for this packet.
    fn track(&mut self, env: &SvcEnv, dir: Dir, t: &Tuple, flags: u8, now: Nanos) -> Option<Flow> {
        let f = self.conntrack.find(dir, t, now, env.counters)?;
        let gen = env.services.generation();
        let flow = self.conntrack.get_mut(f)?;
        // Generation 0: no table published yet (an agent that restored its flows
        // before the cluster's services were read): keep the flow unconfirmed.
        if flow.generation != gen && gen != 0 {
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

    /// A packet to a ClusterIP or the service CIDR: see the module docs.
    fn balance(
        &mut self,
        env: &SvcEnv,
        is_vip: bool,
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
        let flow = match self.track(env, Dir::Forward, &t, ip.tcp_flags, now) {
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
                .find(Dir::Reply, &reply, now, env.counters)
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
            expires: now.saturating_add(timeout(state, &env.cfg.conntrack_timeouts)),
            generation: env.services.generation(),
        };
        self.conntrack.insert(flow, now, env.counters);
        env.counters.bump(Counter::LbNewFlows);
        Ok(flow)
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
            if f.generation == gen {
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
    /// [`Conntrack::attach`]. A record is accepted only if its ClusterIP is in the
    /// service CIDR (when one is configured) and its NAT source is its client or,
    /// for hairpin, the gateway.
    pub(crate) fn attach(
        &mut self,
        mem: Box<dyn FlowMemory>,
        cfg: &PipelineConfig,
        counters: &Counters,
        now: Nanos,
    ) -> Result<Restored, FlowFileError> {
        let valid = |f: &FlowInfo| {
            cfg.service_cidr.is_none_or(|c| c.contains(*f.vip.ip()))
                && (f.nat_source.ip() == f.client.ip() || *f.nat_source.ip() == cfg.gateway_ip)
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
