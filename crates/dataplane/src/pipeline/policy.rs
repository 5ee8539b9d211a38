//! Stage 4, policy: NetworkPolicy, after service (which knows the backend) and
//! before forward.
//!
//! Egress rules are judged at the source pod's node, ingress rules at the destination
//! pod's node, both on the addresses the load balancer left (policy is about pods, not
//! ClusterIPs); the egress side is the pod that sent the packet, before any source
//! NAT (a pod reaching itself through a ClusterIP is masqueraded to the gateway).
//! Traffic from and to the node itself (its host IP, its gateway IP, the host port) is
//! always allowed, as kubelet probes need.
//!
//! Stateful: while the published [`PolicyTable`] is not empty, every TCP/UDP flow
//! from or to a pod it selects is tracked in this stage's own flow table
//! ([`PolicyFlows`]: one probe finds a flow from either direction's packets, hashed
//! once). Its first packet is judged; an allowed flow is stored with the table
//! generation it was judged under, and its later packets and its replies cost one
//! lookup, whatever the other side's policies. A denied packet is dropped (no reset)
//! and not stored (a scan cannot fill the table). A flow found under an older table
//! generation is judged again from its first packet (addresses, port, ingress on the
//! host port) and cut if no longer allowed. ICMP, other protocols and later fragments
//! are not tracked: each packet is judged (only rules without a port list admit
//! them).
//!
//! An empty table costs one load and one branch (`Policy::active`); a packet whose
//! two pods are selected by nothing, two bit tests ([`PolicyTable::may_select`]);
//! a packet of a flow judged under the current table, the bit tests and one probe:
//! the pods' rules are looked up only to judge.
//!
//! In full: docs/dataplane.md, "The policy stage".

use core::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::cache::Cache;
use arc_swap::ArcSwap;

use super::config::PipelineConfig;
use super::context::{Ctx, Ip, Verdict};
use crate::drops::{Counter, Counters, DropReason};
use crate::tables::conntrack::{timeout, Dir, Flow, FlowState, Tuple};
use crate::tables::policy::{PodRules, PolicyCounters, PolicyDirection, PolicyId, PolicyTable};
use crate::tables::policy_flows::{Hit, PolicyFlow, PolicyFlows};
use crate::types::{L4Proto, Nanos, PortRole};
use crate::wire::tcp::{TCP_ACK, TCP_FIN, TCP_SYN};
use crate::wire::IpProtocol;

/// What the stage reads besides its own state.
pub(crate) struct PolicyEnv<'a> {
    pub cfg: &'a PipelineConfig,
    pub counters: &'a Counters,
    pub denials: &'a PolicyCounters,
    /// The role of the ingress port (`None`: the tunnel).
    pub role: Option<PortRole>,
}

/// The stage's state: the published table (cached: one atomic load per packet while
/// it does not change) and the tracked flows.
#[derive(Debug)]
pub(crate) struct Policy {
    table: Cache<Arc<ArcSwap<PolicyTable>>, Arc<PolicyTable>>,
    flows: PolicyFlows,
}

/// A packet as policy judges it: after the load balancer, with the sender before it.
#[derive(Clone, Copy)]
struct Judged {
    /// The pod that sent it (its source before any NAT).
    sender: Ipv4Addr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: IpProtocol,
    dport: Option<u16>,
    /// It came in on the host port.
    from_host_port: bool,
}

impl PolicyEnv<'_> {
    /// One of the node's own addresses.
    fn is_node(&self, a: Ipv4Addr) -> bool {
        a == self.cfg.gateway_ip || self.cfg.host_ip == Some(a)
    }

    /// The decision: egress of the sender unless to the node, ingress of the
    /// destination unless from the node. `sender` and `dst` are the rules of
    /// `p.sender` and `p.dst` (`None`: selected by nothing).
    fn judge<'t>(
        &self,
        sender: Option<&'t PodRules>,
        dst: Option<&'t PodRules>,
        p: &Judged,
    ) -> Result<(), &'t [PolicyId]> {
        if let Some(r) = sender.filter(|_| !self.is_node(p.dst)) {
            r.allows(PolicyDirection::Egress, p.dst, p.proto, p.dport)?;
        }
        if let Some(r) = dst.filter(|_| !(p.from_host_port || self.is_node(p.src))) {
            r.allows(PolicyDirection::Ingress, p.src, p.proto, p.dport)?;
        }
        Ok(())
    }

    /// [`PolicyEnv::judge`], the rules looked up in `table`.
    fn judge_in<'t>(&self, table: &'t PolicyTable, p: &Judged) -> Result<(), &'t [PolicyId]> {
        self.judge(table.pod(p.sender), table.pod(p.dst), p)
    }

    fn deny(&self, policies: &[PolicyId]) -> Verdict {
        self.denials.bump_denied(policies);
        DropReason::PolicyDenied.into()
    }
}

impl Policy {
    pub(crate) fn new(table: &Arc<ArcSwap<PolicyTable>>, capacity: usize) -> Policy {
        Policy {
            table: Cache::new(Arc::clone(table)),
            flows: PolicyFlows::new(capacity),
        }
    }

    /// A table selecting some pod is published: the stage must see this packet.
    #[inline(always)]
    pub(crate) fn active(&mut self) -> bool {
        !self.table.load().is_empty()
    }

    /// The stage: see the module docs. `pre` is the packet's IPv4 facts before the
    /// load balancer, `ctx` after it. Kept out of line: the drivers' inlined path
    /// carries only the `active` branch when no policy is published.
    #[inline(never)]
    pub(crate) fn stage(&mut self, env: &PolicyEnv, pre: &Ip, ctx: &Ctx, now: Nanos) -> Verdict {
        let Some(ip) = ctx.ip.as_ref() else {
            return Verdict::Continue;
        };
        let table: &PolicyTable = self.table.load();
        if !table.may_select(pre.src) && !table.may_select(ip.dst) {
            return Verdict::Continue;
        }
        let from_host_port = env.role == Some(PortRole::Host);
        let (Some(ports), Some(pre_ports), Some(proto)) =
            (ip.ports, pre.ports, L4Proto::from_ip(ip.proto))
        else {
            return match env.judge_in(table, &judged(pre, ip, from_host_port)) {
                Ok(()) => Verdict::Continue,
                Err(policies) => env.deny(policies),
            };
        };
        let flows = &mut self.flows;
        let mut probe = flows.probe_parts(
            proto,
            ([ip.src, ip.dst], ports),
            ([pre.src, pre.dst], pre_ports),
        );
        if let Some(hit) = flows.find(&mut probe, now, env.counters) {
            // Every packet of a flow has the flow's sender and destination as its
            // `pre.src` and `ip.dst`, one way or the other: if neither is selected
            // now, judging again allows it, as not tracking it would.
            if let Some(v) = tracked(flows, env, table, hit, ip, now) {
                return v;
            }
        }
        let p = judged(pre, ip, from_host_port);
        let (sender, dst) = (table.pod(p.sender), table.pod(p.dst));
        if sender.is_none() && dst.is_none() {
            return Verdict::Continue;
        }
        if let Err(policies) = env.judge(sender, dst, &p) {
            return env.deny(policies);
        }
        if let (Some(t), Some(before)) = (ip.tuple(), pre.tuple()) {
            let flow = new_flow(&t, &before, ip.tcp_flags, from_host_port, table, env, now);
            flows.insert(&mut probe, &flow, now, env.counters);
        }
        Verdict::Continue
    }

    /// Periodic upkeep: up to `budget` flows visited, expired ones removed.
    pub(crate) fn maintain(&mut self, counters: &Counters, now: Nanos, budget: usize) -> usize {
        self.flows.sweep(now, budget, counters)
    }

    /// Flows stored (expired ones not yet reclaimed included).
    pub(crate) fn len(&self) -> usize {
        self.flows.len()
    }
}

/// The packet as judged: `pre` before the load balancer, `ip` after it.
fn judged(pre: &Ip, ip: &Ip, from_host_port: bool) -> Judged {
    Judged {
        sender: pre.src,
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        dport: if ip.later_fragment {
            None
        } else {
            ip.ports.map(|(_, d)| d)
        },
        from_host_port,
    }
}

/// A packet of the tracked flow `hit`: passes (judged again first if the table
/// changed since, and cut if no longer allowed). `None`: a new connection on the
/// 5-tuple of a closed one, removed, to be judged as a first packet.
fn tracked(
    flows: &mut PolicyFlows,
    env: &PolicyEnv,
    table: &PolicyTable,
    hit: Hit,
    ip: &Ip,
    now: Nanos,
) -> Option<Verdict> {
    if hit.dir == Dir::Forward
        && hit.state == FlowState::Closing
        && ip.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    {
        flows.remove(hit.slot);
        return None;
    }
    if hit.generation != table.generation() {
        let f = flows.get(hit.slot)?;
        let first = Judged {
            sender: f.before.src,
            src: f.after.src,
            dst: f.after.dst,
            proto: ip.proto,
            dport: Some(f.after.dport),
            from_host_port: f.from_host_port,
        };
        if let Err(policies) = env.judge_in(table, &first) {
            flows.remove(hit.slot);
            env.counters.bump(Counter::ConntrackFlushed);
            return Some(env.deny(policies));
        }
        flows.set_generation(hit.slot, table.generation());
    }
    let timeouts = &env.cfg.conntrack_timeouts;
    flows.on_packet(hit.slot, hit.dir, ip.tcp_flags, now, timeouts);
    Some(Verdict::Continue)
}

/// The entry of an allowed flow whose first packet is `t` after the load balancer and
/// `before` it.
fn new_flow(
    t: &Tuple,
    before: &Tuple,
    flags: u8,
    from_host_port: bool,
    table: &PolicyTable,
    env: &PolicyEnv,
    now: Nanos,
) -> PolicyFlow {
    let state = Flow::initial_state(t.proto, flags);
    PolicyFlow {
        after: *t,
        before: *before,
        state,
        fins: u8::from(t.proto == L4Proto::Tcp && flags & TCP_FIN != 0),
        from_host_port,
        expires: now.saturating_add(timeout(state, &env.cfg.conntrack_timeouts)),
        generation: table.generation(),
    }
}
