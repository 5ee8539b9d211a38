//! Keeps the data plane's NetworkPolicy table in step with the cluster: the
//! policy compiler.
//!
//! The cluster crate interprets NetworkPolicy over objects
//! (`NetworkPolicy::selects`, `NetworkPolicyPeer::matches`, `ports_allow`);
//! the data plane decides on addresses and port numbers only
//! ([`PolicyTable`]). This module turns one into the other for this node's
//! pods, so that the packet path never sees a label:
//!
//! - The **local pods** are the pods scheduled on this node (`spec.nodeName`)
//!   that have an address (the kubelet's status, else the pod's own) and are
//!   not terminated. For each, per direction, the policies of its namespace
//!   that select it and have that policy type; none → `None` (open in that
//!   direction); some → a [`RuleSetSpec`] with their ids and the union of their
//!   rules (no rule at all: default deny).
//! - **Peers**: an `ipBlock` becomes the block minus its `except`s; a
//!   `podSelector`, a `namespaceSelector` or both (ANDed) become the `/32` of
//!   every matching pod of the whole cluster that has an address. An empty
//!   `from`/`to` is every peer; a list that resolves to no address matches
//!   nothing, so its rule is left out (it must never become "every peer").
//! - **Ports**: numbers and `endPort` ranges with their protocol (TCP by
//!   default); an empty list is every port. A named port is resolved on the
//!   destination pod's container ports: for ingress on the local pod itself,
//!   for egress on each destination pod, so one egress rule with a named port
//!   becomes one compiled rule per port number the name resolves to, with the
//!   peers that resolve it so. A port list of which nothing resolves matches
//!   nothing (the rule is left out).
//!
//! **Policy ids** ([`PolicyIds`]): a policy gets a [`PolicyId`] the first
//! time it selects a local pod and keeps it while it exists in the store, so
//! its denial counter means one thing across tables (a table change does not
//! renumber policies, as ids by key order would). Ids are handed out round
//! robin, so a deleted policy's id is reused as late as possible, and each
//! assignment records the counter's value then: the denials shown for a
//! policy are those since it got its id. The last id ([`OVERFLOW_ID`]) is
//! shared by every policy beyond the first 4,095 selecting local pods at
//! once: enforcement stays exact, only their counts are pooled.
//! [`PolicyNames`] maps ids to `namespace/name` for `tapestry status`.
//!
//! On every change of the cluster state (pods, pod status, namespaces and
//! their labels, network policies) the table is compiled again, built, and
//! published into the pipeline's `ArcSwap` only when it differs from the one
//! the pipeline holds (CONVENTIONS.md §17): every new table generation makes
//! the policy stage re-judge each tracked flow at its next packet. Each
//! table the pipeline holds is then recorded in the [`PolicyCoverage`] with
//! the local pods it was compiled with, selected or not: the kubelet starts
//! a new pod's containers only once its pod is among them
//! ([`crate::policy_gate`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::policy_gate::PolicyCoverage;
use arc_swap::ArcSwap;
use tapestry_cluster::cache::{ClusterCache, ClusterState};
use tapestry_cluster::{
    Ipv4Cidr, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, Pod, PodRef, PolicyPortRef,
    PolicyProtocol, PolicyType, PortRange,
};
use tapestry_dataplane::{
    IpBlock, PodPolicy, PolicyCounters, PolicyError, PolicyId, PolicyPeers, PolicyPort,
    PolicyPorts, PolicyRule, PolicyTable, PortProtocol, RuleSetSpec, MAX_POLICY_IDS,
};

/// The id shared by policies beyond the first `MAX_POLICY_IDS - 1`.
pub const OVERFLOW_ID: PolicyId = PolicyId(4_095);
const _: () = assert!(OVERFLOW_ID.0 as usize + 1 == MAX_POLICY_IDS);

/// The name [`PolicyNames`] gives [`OVERFLOW_ID`].
pub const OVERFLOW_NAME: &str = "(policies beyond 4095)";

/// Denials counted per policy id: the pipeline's [`PolicyCounters`] (a
/// trait so that tests can set counts without sending packets).
pub trait DenialCounts {
    /// Packets denied under `id` so far.
    fn denied(&self, id: PolicyId) -> u64;
}

impl DenialCounts for PolicyCounters {
    fn denied(&self, id: PolicyId) -> u64 {
        PolicyCounters::denied(self, id)
    }
}

/// An id given to a policy, and its counter's value at that time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Assigned {
    id: PolicyId,
    baseline: u64,
}

/// Stable ids for policies; see the module docs.
#[derive(Debug, Default)]
pub struct PolicyIds {
    /// By policy key (`namespace/name`).
    by_key: BTreeMap<String, Assigned>,
    /// The ids held (without [`OVERFLOW_ID`]).
    used: BTreeSet<u16>,
    /// Where the round-robin search for a free id starts.
    next: u16,
}

impl PolicyIds {
    /// The id of the policy `key`, assigned now if it has none (recording
    /// `counters`' value for it as its baseline).
    pub fn id(&mut self, key: &str, counters: &impl DenialCounts) -> PolicyId {
        if let Some(a) = self.by_key.get(key) {
            return a.id;
        }
        let id = self.free().unwrap_or(OVERFLOW_ID);
        if id != OVERFLOW_ID {
            self.used.insert(id.0);
            self.next = (id.0 + 1) % OVERFLOW_ID.0;
        }
        let baseline = if id == OVERFLOW_ID {
            0
        } else {
            counters.denied(id)
        };
        self.by_key
            .insert(key.to_owned(), Assigned { id, baseline });
        id
    }

    /// The first free id from `next` on, wrapping.
    fn free(&self) -> Option<PolicyId> {
        (0..OVERFLOW_ID.0)
            .map(|i| (self.next + i) % OVERFLOW_ID.0)
            .find(|id| !self.used.contains(id))
            .map(PolicyId)
    }

    /// Releases the ids of policies for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let used = &mut self.used;
        self.by_key.retain(|k, a| {
            let kept = keep(k);
            if !kept {
                used.remove(&a.id.0);
            }
            kept
        });
    }

    /// The id held by `key`, if any.
    pub fn get(&self, key: &str) -> Option<PolicyId> {
        self.by_key.get(key).map(|a| a.id)
    }

    /// The names of the ids held, as [`PolicyNames`].
    pub fn names(&self) -> PolicyNames {
        let mut entries: Vec<PolicyName> = self
            .by_key
            .iter()
            .filter(|(_, a)| a.id != OVERFLOW_ID)
            .map(|(k, a)| PolicyName {
                id: a.id,
                name: k.clone(),
                baseline: a.baseline,
            })
            .collect();
        if self.by_key.values().any(|a| a.id == OVERFLOW_ID) {
            entries.push(PolicyName {
                id: OVERFLOW_ID,
                name: OVERFLOW_NAME.to_owned(),
                baseline: 0,
            });
        }
        PolicyNames { entries }
    }
}

/// One named policy id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyName {
    pub id: PolicyId,
    /// `namespace/name` (or [`OVERFLOW_NAME`]).
    pub name: String,
    /// The id's denial count when the policy got it.
    pub baseline: u64,
}

/// Which policy each id stands for, published beside the table for status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyNames {
    /// In policy key order (the overflow entry last).
    pub entries: Vec<PolicyName>,
}

impl PolicyNames {
    /// Denials per policy name since each got its id, in name order.
    pub fn denials(&self, counters: &impl DenialCounts) -> Vec<(String, u64)> {
        self.entries
            .iter()
            .map(|e| {
                let count = counters.denied(e.id).saturating_sub(e.baseline);
                (e.name.clone(), count)
            })
            .collect()
    }
}

/// A pod of the cluster that has an address.
#[derive(Debug, Clone, Copy)]
struct Addressed<'a> {
    /// Its key (`namespace/name`).
    key: &'a str,
    pod: &'a Pod,
    ip: Ipv4Addr,
    /// Its namespace's labels, as namespace selectors see them.
    namespace_labels: &'a BTreeMap<String, String>,
}

impl<'a> Addressed<'a> {
    fn peer_ref(&self) -> PodRef<'a> {
        PodRef {
            namespace: &self.pod.metadata.namespace,
            labels: &self.pod.metadata.labels,
            namespace_labels: self.namespace_labels,
        }
    }
}

/// Every namespace's labels (of the namespaces pods are in too).
fn namespace_labels(state: &ClusterState) -> BTreeMap<&str, BTreeMap<String, String>> {
    let names = state
        .namespaces
        .keys()
        .map(String::as_str)
        .chain(state.pods.values().map(|p| p.metadata.namespace.as_str()));
    names.map(|n| (n, state.namespace_labels(n))).collect()
}

/// The pods that have an address and are not terminated, in key order: the
/// kubelet's reported address, else the pod's own, as endpoints take it.
fn addressed<'a>(
    state: &'a ClusterState,
    labels: &'a BTreeMap<&str, BTreeMap<String, String>>,
) -> Vec<Addressed<'a>> {
    state
        .pods
        .iter()
        .filter_map(|(key, pod)| {
            let status = state.pod_status.get(key);
            if status.is_some_and(|s| matches!(s.phase.as_str(), "Failed" | "Succeeded")) {
                return None;
            }
            let ip = status.and_then(|s| s.pod_ip).or(pod.status.pod_ip)?;
            Some(Addressed {
                key,
                pod,
                ip,
                namespace_labels: labels.get(pod.metadata.namespace.as_str())?,
            })
        })
        .collect()
}

fn port_protocol(p: PolicyProtocol) -> PortProtocol {
    match p {
        PolicyProtocol::Tcp => PortProtocol::Tcp,
        PolicyProtocol::Udp => PortProtocol::Udp,
        PolicyProtocol::Sctp => PortProtocol::Sctp,
    }
}

fn policy_port(r: PortRange) -> PolicyPort {
    PolicyPort {
        protocol: port_protocol(r.protocol),
        first: r.first,
        last: r.last,
    }
}

/// An `ipBlock` as the data plane takes it: `None` when an `except` covers
/// the whole block (it matches nothing); exceptions outside the block (which
/// validation refuses) are dropped, as they exclude nothing from it.
fn ip_block(b: &tapestry_cluster::IpBlock) -> Option<IpBlock> {
    if b.except.iter().any(|e| e.contains_net(&b.cidr)) {
        return None;
    }
    let mut except: Vec<Ipv4Cidr> = b
        .except
        .iter()
        .filter(|e| b.cidr.contains_net(e))
        .copied()
        .collect();
    except.sort_unstable_by_key(|c| (c.network(), c.prefix_len()));
    except.dedup();
    Some(IpBlock {
        cidr: b.cidr,
        except,
    })
}

fn host(ip: Ipv4Addr) -> Option<IpBlock> {
    Ipv4Cidr::new(ip, 32).map(IpBlock::new)
}

/// One rule's peer list, resolved against the cluster's pods.
#[derive(Debug)]
struct Peers<'a> {
    /// What the data plane matches; `None`: no address at all (the rule
    /// matches nothing).
    compiled: Option<PolicyPeers>,
    /// The pods among the peers (selected, or inside an `ipBlock`; every pod
    /// for an empty list), where an egress rule's named ports resolve.
    pods: Vec<Addressed<'a>>,
}

/// Resolves `peers` of a policy in `namespace`.
fn resolve_peers<'a>(
    namespace: &str,
    peers: &[NetworkPolicyPeer],
    pods: &[Addressed<'a>],
) -> Peers<'a> {
    let matching = |q: &Addressed| {
        peers.is_empty()
            || peers
                .iter()
                .any(|peer| peer.matches(namespace, q.ip, Some(q.peer_ref())))
    };
    let matched: Vec<Addressed<'a>> = pods.iter().filter(|q| matching(q)).copied().collect();
    if peers.is_empty() {
        return Peers {
            compiled: Some(PolicyPeers::Any),
            pods: matched,
        };
    }
    let mut blocks: Vec<IpBlock> = peers
        .iter()
        .filter_map(|p| p.ip_block.as_ref().and_then(ip_block))
        .collect();
    let selected: BTreeSet<Ipv4Addr> = pods
        .iter()
        .filter(|q| {
            peers
                .iter()
                .any(|peer| peer.ip_block.is_none() && peer.matches_pod(namespace, q.peer_ref()))
        })
        .map(|q| q.ip)
        .collect();
    blocks.extend(selected.into_iter().filter_map(host));
    dedup_blocks(&mut blocks);
    Peers {
        compiled: (!blocks.is_empty()).then_some(PolicyPeers::Blocks(blocks)),
        pods: matched,
    }
}

/// Removes repeated blocks, keeping the first of each.
fn dedup_blocks(blocks: &mut Vec<IpBlock>) {
    let mut seen = std::collections::HashSet::new();
    blocks.retain(|b| seen.insert(b.clone()));
}

/// The ingress rule `peers` x `ports` for the local pod `dest` (named ports
/// resolved on it); `None` when it matches nothing.
fn ingress_rule(
    peers: &Option<PolicyPeers>,
    ports: &[NetworkPolicyPort],
    dest: &Pod,
) -> Option<PolicyRule> {
    let peers = peers.clone()?;
    let ports = if ports.is_empty() {
        PolicyPorts::Any
    } else {
        let list: Vec<PolicyPort> = ports
            .iter()
            .filter_map(|p| p.resolve(Some(dest)))
            .map(policy_port)
            .collect();
        if list.is_empty() {
            return None;
        }
        PolicyPorts::List(list)
    };
    Some(PolicyRule { peers, ports })
}

fn is_named(p: &NetworkPolicyPort) -> bool {
    matches!(p.port, Some(PolicyPortRef::Name(_)))
}

/// The compiled rules of one egress rule: numbers for its peers, and per
/// group of destination pods that resolve its named ports alike, those
/// numbers for those pods' addresses.
fn egress_rules(peers: &Peers, ports: &[NetworkPolicyPort]) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    if ports.is_empty() {
        if let Some(p) = &peers.compiled {
            out.push(PolicyRule {
                peers: p.clone(),
                ports: PolicyPorts::Any,
            });
        }
        return out;
    }
    let numeric: Vec<PolicyPort> = ports
        .iter()
        .filter(|p| !is_named(p))
        .filter_map(|p| p.resolve(None))
        .map(policy_port)
        .collect();
    if let (false, Some(p)) = (numeric.is_empty(), &peers.compiled) {
        out.push(PolicyRule {
            peers: p.clone(),
            ports: PolicyPorts::List(numeric),
        });
    }
    let named: Vec<&NetworkPolicyPort> = ports.iter().filter(|p| is_named(p)).collect();
    if named.is_empty() {
        return out;
    }
    // (resolved ports, destination addresses), in order of first appearance.
    let mut groups: Vec<(Vec<PolicyPort>, BTreeSet<Ipv4Addr>)> = Vec::new();
    for q in &peers.pods {
        let mut resolved: Vec<PolicyPort> = Vec::new();
        for r in named.iter().filter_map(|p| p.resolve(Some(q.pod))) {
            let r = policy_port(r);
            if !resolved.contains(&r) {
                resolved.push(r);
            }
        }
        if resolved.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|(ports, _)| *ports == resolved) {
            Some((_, ips)) => {
                ips.insert(q.ip);
            }
            None => groups.push((resolved, BTreeSet::from([q.ip]))),
        }
    }
    out.extend(groups.into_iter().map(|(ports, ips)| PolicyRule {
        peers: PolicyPeers::Blocks(ips.into_iter().filter_map(host).collect()),
        ports: PolicyPorts::List(ports),
    }));
    out
}

/// A policy selecting some local pod, its local-pod-independent parts
/// compiled once.
struct Compiled<'p> {
    policy: &'p NetworkPolicy,
    id: PolicyId,
    /// With `Ingress` among its types: per rule, the peers and the ports
    /// (named ones resolve per local pod).
    ingress: Option<Vec<(Option<PolicyPeers>, &'p [NetworkPolicyPort])>>,
    /// With `Egress` among its types: the compiled rules.
    egress: Option<Vec<PolicyRule>>,
}

impl<'p> Compiled<'p> {
    fn new(policy: &'p NetworkPolicy, id: PolicyId, pods: &[Addressed<'_>]) -> Self {
        let ns = policy.metadata.namespace.as_str();
        let ingress = policy.has_policy_type(PolicyType::Ingress).then(|| {
            policy
                .spec
                .ingress
                .iter()
                .map(|r| {
                    let peers = resolve_peers(ns, &r.from, pods);
                    (peers.compiled, r.ports.as_slice())
                })
                .collect()
        });
        let egress = policy.has_policy_type(PolicyType::Egress).then(|| {
            policy
                .spec
                .egress
                .iter()
                .flat_map(|r| egress_rules(&resolve_peers(ns, &r.to, pods), &r.ports))
                .collect()
        });
        Compiled {
            policy,
            id,
            ingress,
            egress,
        }
    }
}

/// The rule sets of the local pod `pod` from the policies `compiled`.
fn pod_policy(pod: &Addressed, compiled: &[Compiled]) -> PodPolicy {
    let (ns, labels) = (&pod.pod.metadata.namespace, &pod.pod.metadata.labels);
    let selecting: Vec<&Compiled> = compiled
        .iter()
        .filter(|c| c.policy.selects(ns, labels))
        .collect();
    let mut ingress: Option<RuleSetSpec> = None;
    let mut egress: Option<RuleSetSpec> = None;
    for c in selecting {
        if let Some(rules) = &c.ingress {
            let spec = ingress.get_or_insert_with(RuleSetSpec::default);
            spec.policies.push(c.id);
            spec.rules.extend(
                rules
                    .iter()
                    .filter_map(|(peers, ports)| ingress_rule(peers, ports, pod.pod)),
            );
        }
        if let Some(rules) = &c.egress {
            let spec = egress.get_or_insert_with(RuleSetSpec::default);
            spec.policies.push(c.id);
            spec.rules.extend(rules.iter().cloned());
        }
    }
    PodPolicy {
        pod: pod.ip,
        ingress,
        egress,
    }
}

/// Compiles the policies selecting the local pods of node `me` into one
/// [`PodPolicy`] per local pod selected by some policy (in pod key order),
/// giving each such policy an id from `ids`. A local address held by two
/// pods (a stale status) is compiled for the first pod by key only.
pub fn compile(
    me: &str,
    state: &ClusterState,
    ids: &mut PolicyIds,
    counters: &impl DenialCounts,
) -> Vec<PodPolicy> {
    compile_local(me, state, ids, counters).0
}

/// [`compile`], and every local pod it compiled (key → address), selected
/// by some policy or by none: what a table built from it covers
/// ([`PolicyCoverage`]).
fn compile_local(
    me: &str,
    state: &ClusterState,
    ids: &mut PolicyIds,
    counters: &impl DenialCounts,
) -> (Vec<PodPolicy>, BTreeMap<String, Ipv4Addr>) {
    let labels = namespace_labels(state);
    let pods = addressed(state, &labels);
    let mut seen = BTreeSet::new();
    let local: Vec<&Addressed> = pods
        .iter()
        .filter(|p| p.pod.spec.node_name.as_deref() == Some(me))
        .filter(|p| {
            let fresh = seen.insert(p.ip);
            if !fresh {
                tracing::warn!(pod = %format!("{}/{}", p.pod.metadata.namespace, p.pod.metadata.name), ip = %p.ip, "address held by another local pod; no policy compiled for this one");
            }
            fresh
        })
        .collect();
    let compiled: Vec<Compiled> = state
        .network_policies
        .iter()
        .filter(|(_, np)| {
            local
                .iter()
                .any(|p| np.selects(&p.pod.metadata.namespace, &p.pod.metadata.labels))
        })
        .map(|(key, np)| Compiled::new(np, ids.id(key, counters), &pods))
        .collect();
    let covered = local.iter().map(|p| (p.key.to_owned(), p.ip)).collect();
    let policies = local
        .into_iter()
        .map(|p| pod_policy(p, &compiled))
        .filter(|p| p.ingress.is_some() || p.egress.is_some())
        .collect();
    (policies, covered)
}

/// Where the compiled table and its names go: the pipeline's handles.
#[derive(Clone)]
pub struct PolicyHandles {
    /// The pipeline's policy table ([`tapestry_dataplane::Pipeline::policies`]).
    pub table: Arc<ArcSwap<PolicyTable>>,
    /// Its denial counters ([`tapestry_dataplane::Pipeline::policy_counters`]).
    pub counters: Arc<PolicyCounters>,
    /// The names of the ids, for status.
    pub names: Arc<ArcSwap<PolicyNames>>,
    /// The local pods the table in `table` was compiled with, which the
    /// kubelet waits on before starting a pod's containers.
    pub coverage: Arc<PolicyCoverage>,
}

/// What one [`reconcile`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconciled {
    /// The published table already holds these rules: nothing was stored.
    Unchanged,
    /// A new table was stored, with this generation, selecting `pods` pods.
    Published { generation: u64, pods: usize },
}

/// Compiles the policies for node `me` and publishes a new table only if it
/// differs from the current one; the names table likewise (before the
/// table, so a denial under a new id has its name). Ids of policies gone
/// from the store are released. Then, stored or already equal, the table
/// reflects every local pod compiled: they are recorded in the coverage
/// (after the table, so a pod is never reported covered early). A table
/// the data plane rejects is an error and leaves the current one, and the
/// coverage, in place.
pub fn reconcile(
    me: &str,
    state: &ClusterState,
    ids: &mut PolicyIds,
    handles: &PolicyHandles,
) -> Result<Reconciled, PolicyError> {
    ids.retain(|k| state.network_policies.contains_key(k));
    let (pods, covered) = compile_local(me, state, ids, &*handles.counters);
    let names = ids.names();
    if **handles.names.load() != names {
        handles.names.store(Arc::new(names));
    }
    let built = PolicyTable::build(&pods)?;
    if **handles.table.load() == built {
        handles.coverage.record(covered);
        return Ok(Reconciled::Unchanged);
    }
    let generation = built.generation();
    let selected = built.len();
    handles.table.store(Arc::new(built));
    handles.coverage.record(covered);
    Ok(Reconciled::Published {
        generation,
        pods: selected,
    })
}

/// Reconciles the policy table on every cluster change, forever. The cache
/// wakes this thread at each publication (no polling interval), so a store
/// change reaches the data plane within the store's watch latency plus one
/// compile.
pub fn run(cache: Arc<ClusterCache>, me: String, handles: PolicyHandles) {
    run_with(cache, me, handles, PolicyIds::default())
}

/// [`run`], keeping the ids a first [`reconcile`] (before the thread) assigned.
pub fn run_with(cache: Arc<ClusterCache>, me: String, handles: PolicyHandles, mut ids: PolicyIds) {
    let changes = cache.subscribe();
    loop {
        match reconcile(&me, &cache.snapshot(), &mut ids, &handles) {
            Ok(Reconciled::Unchanged) => {}
            Ok(Reconciled::Published { generation, pods }) => {
                let policies: Vec<String> = handles
                    .names
                    .load()
                    .entries
                    .iter()
                    .map(|e| format!("{}={}", e.name, e.id.0))
                    .collect();
                tracing::info!(generation, pods, ?policies, "policy table updated");
            }
            Err(e) => {
                tracing::error!(error = %e, "policy table rejected; keeping the previous one")
            }
        }
        if changes.recv().is_err() {
            return;
        }
    }
}

#[cfg(test)]
#[path = "policy_sync_tests.rs"]
mod tests;
