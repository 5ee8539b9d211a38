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
//! from or to a pod it selects is tracked in this stage's own connection table (both
//! directions' 5-tuples, as the packets look after the load balancer). Its first
//! packet is judged; an allowed flow is stored with the table generation it was
//! judged under, and its later packets and its replies cost one lookup, whatever the
//! other side's policies. A denied packet is dropped (no reset) and not stored (a
//! scan cannot fill the table). A flow found under an older table generation is judged
//! again from its first packet's addresses and cut if no longer allowed. ICMP, other
//! protocols and later fragments are not tracked: each packet is judged (only rules
//! without a port list admit them).
//!
//! An empty table costs one load and one branch (`Policy::active`).
//!
//! In full: docs/dataplane.md, "The policy stage".

use core::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::cache::Cache;
use arc_swap::ArcSwap;

use super::config::PipelineConfig;
use super::context::{Ctx, Ip, Verdict};
use crate::drops::{Counter, Counters, DropReason};
use crate::tables::conntrack::{Conntrack, Dir, Flow, FlowState, Tuple};
use crate::tables::policy::{PolicyCounters, PolicyDirection, PolicyId, PolicyTable};
use crate::types::{Backend, L4Proto, Nanos, PortRole};
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
    flows: Conntrack,
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
    /// destination unless from the node.
    fn judge<'t>(&self, table: &'t PolicyTable, p: &Judged) -> Result<(), &'t [PolicyId]> {
        if !self.is_node(p.dst) {
            table.allows(PolicyDirection::Egress, p.sender, p.dst, p.proto, p.dport)?;
        }
        if !(p.from_host_port || self.is_node(p.src)) {
            table.allows(PolicyDirection::Ingress, p.dst, p.src, p.proto, p.dport)?;
        }
        Ok(())
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
            flows: Conntrack::new(capacity),
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
        let Some(ip) = ctx.ip else {
            return Verdict::Continue;
        };
        let table: &PolicyTable = self.table.load();
        if !table.selects(pre.src) && !table.selects(ip.dst) {
            return Verdict::Continue;
        }
        let p = Judged {
            sender: pre.src,
            src: ip.src,
            dst: ip.dst,
            proto: ip.proto,
            dport: if ip.later_fragment {
                None
            } else {
                ip.ports.map(|(_, d)| d)
            },
            from_host_port: env.role == Some(PortRole::Host),
        };
        let (Some(t), Some(before)) = (ip.tuple(), pre.tuple()) else {
            return match env.judge(table, &p) {
                Ok(()) => Verdict::Continue,
                Err(policies) => env.deny(policies),
            };
        };
        let gen = table.generation();
        let flows = &mut self.flows;
        for dir in [Dir::Forward, Dir::Reply] {
            let Some(f) = flows.find(dir, &t, now, env.counters) else {
                continue;
            };
            let Some(flow) = flows.get_mut(f) else {
                continue;
            };
            if dir == Dir::Forward
                && flow.state == FlowState::Closing
                && ip.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
            {
                // A new connection on the 5-tuple of a closed one: judged afresh.
                flows.remove(f);
                break;
            }
            if flow.generation != gen {
                let first = Judged {
                    sender: flow.nat.0,
                    src: flow.client.0,
                    dst: flow.vip.0,
                    proto: ip.proto,
                    dport: Some(flow.vip.1),
                    from_host_port: false,
                };
                if let Err(policies) = env.judge(table, &first) {
                    flows.remove(f);
                    env.counters.bump(Counter::ConntrackFlushed);
                    return env.deny(policies);
                }
                flow.generation = gen;
            }
            flow.on_packet(dir, ip.tcp_flags, now, &env.cfg.conntrack_timeouts);
            return Verdict::Continue;
        }
        if let Err(policies) = env.judge(table, &p) {
            return env.deny(policies);
        }
        self.flows.insert(
            new_flow(&t, &before, ip.tcp_flags, gen, env, now),
            now,
            env.counters,
        );
        Verdict::Continue
    }

    /// Periodic upkeep: up to `budget` flows visited, expired ones removed.
    pub(crate) fn maintain(&mut self, counters: &Counters, now: Nanos, budget: usize) -> usize {
        self.flows.sweep(now, budget, false, counters, |_| true)
    }

    /// Flows stored (expired ones not yet reclaimed included).
    pub(crate) fn len(&self) -> usize {
        self.flows.len()
    }
}

/// The entry of an allowed flow whose first packet is `t` after the load balancer and
/// `before` it. The connection table's fields, read for a policy flow: `client` →
/// `vip` is the first packet's key (after the load balancer); `backend` → `nat` the
/// key of its replies after the load balancer (the first packet's key before it,
/// reversed: a reply the balancer un-NATs comes from the ClusterIP); `nat.0` is the
/// sender.
fn new_flow(t: &Tuple, before: &Tuple, flags: u8, gen: u64, env: &PolicyEnv, now: Nanos) -> Flow {
    let state = Flow::initial_state(t.proto, flags);
    Flow {
        client: (t.src, t.sport),
        vip: (t.dst, t.dport),
        backend: Backend {
            ip: before.dst,
            port: before.dport,
        },
        nat: (before.src, before.sport),
        proto: t.proto,
        state,
        fins: if t.proto == L4Proto::Tcp && flags & TCP_FIN != 0 {
            1
        } else {
            0
        },
        created: now,
        expires: now.saturating_add(crate::tables::conntrack::timeout(
            state,
            &env.cfg.conntrack_timeouts,
        )),
        generation: gen,
    }
}
