//! Node liveness: whether a node's agent is alive, judged from a lease it
//! renews, the way Kubernetes' kubelet renews its `coordination.k8s.io`
//! Lease in `kube-node-lease`.
//!
//! Every agent writes `nodeleases/NODE` = `{holder, renewTime,
//! durationSeconds}` every [`RENEW_INTERVAL`] (2 s) with a duration of
//! [`LEASE_DURATION`] (6 s), from a thread of its own (never the packet
//! thread), through [`Store::put_expiring`]: on the directory and memory
//! stores that is a plain put and readers judge expiry from `renewTime`; a
//! store with real leases may attach one of the same duration, so the key
//! disappears when the agent dies (the etcd backend does not yet: it takes
//! the default, a plain put). Readers therefore treat a missing
//! lease exactly like an expired one.
//!
//! A node is *Ready* when `renewTime + durationSeconds + CLOCK_SKEW > now`
//! on the reader's clock ([`CLOCK_SKEW`], 1 s, absorbs small differences
//! between hosts; the lab's nodes share one clock). Only nodes an agent
//! registered ([`KUBELET_LABEL`]) are judged: a Node written by hand (a
//! kernel VXLAN peer) has no agent to renew anything and is
//! [`Liveness::Unmanaged`], routed as before.
//!
//! Each consumer judges with its own clock rather than trusting a condition
//! some other process wrote: no controller has to be elected or stay alive
//! to notice a death, and a dead node, which produces no store event, is
//! noticed by every reader's timer ([`next_expiry`] says when to look
//! again). The [`crate::ClusterCache`] does it for the agent and DNS; the CLI
//! judges once per command.
//!
//! Worst case from an agent's death to NotReady: its last renewal was at most
//! [`RENEW_INTERVAL`] before, so NotReady follows the death by between
//! `LEASE_DURATION + CLOCK_SKEW - RENEW_INTERVAL` (5 s) and
//! `LEASE_DURATION + CLOCK_SKEW` (7 s), inside the 10 s the cluster promises.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::manifest::{Node, Object, KUBELET_LABEL};
use crate::pod::Pod;
use crate::status::PodRunStatus;
use crate::store::{Revision, Store, StoreError};

/// Key prefix of node leases.
pub const NODE_LEASE_PREFIX: &str = "nodeleases/";

/// How long a renewal keeps a node Ready.
pub const LEASE_DURATION: Duration = Duration::from_secs(6);

/// How often an agent renews its lease: three renewals per duration, so one
/// or two slow or failed writes do not make a live node NotReady.
pub const RENEW_INTERVAL: Duration = Duration::from_secs(2);

/// Clock difference between writer and reader tolerated before a lease
/// counts as expired.
pub const CLOCK_SKEW: Duration = Duration::from_secs(1);

/// Store key of a node's lease: `nodeleases/node1`.
pub fn lease_key(node: &str) -> String {
    format!("{NODE_LEASE_PREFIX}{node}")
}

/// The value of `nodeleases/NODE` (the fields of a Kubernetes Lease's spec
/// that matter here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeLease {
    /// Who renews it: the node's name.
    pub holder: String,
    /// When it was last renewed, RFC 3339 UTC with microseconds (a
    /// Kubernetes `MicroTime`).
    #[serde(with = "rfc3339")]
    pub renew_time: SystemTime,
    /// How long after `renewTime` the holder counts as alive.
    pub duration_seconds: u32,
}

impl NodeLease {
    /// A lease held by `node`, renewed at `now`, for [`LEASE_DURATION`].
    pub fn renewed(node: &str, now: SystemTime) -> Self {
        Self {
            holder: node.to_owned(),
            renew_time: now,
            duration_seconds: u32::try_from(LEASE_DURATION.as_secs()).unwrap_or(u32::MAX),
        }
    }

    /// The first instant at which this lease no longer makes its holder
    /// Ready on a reader's clock (skew allowance included).
    pub fn expires(&self) -> SystemTime {
        let d = Duration::from_secs(u64::from(self.duration_seconds)) + CLOCK_SKEW;
        self.renew_time.checked_add(d).unwrap_or(self.renew_time)
    }

    /// Decodes a stored lease.
    pub fn decode(key: &str, value: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(value).map_err(|e| StoreError::Decode {
            key: key.to_owned(),
            message: e.to_string(),
        })
    }

    /// The JSON stored under [`lease_key`].
    pub fn encode(&self) -> Vec<u8> {
        // A plain struct of a string, a timestamp string and a number.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Writes `node`'s lease as renewed at `now`, as a key that expires with
/// its writer on stores that can do that ([`Store::put_expiring`]).
pub fn renew(store: &dyn Store, node: &str, now: SystemTime) -> Result<Revision, StoreError> {
    let lease = NodeLease::renewed(node, now);
    store.put_expiring(&lease_key(node), &lease.encode(), LEASE_DURATION)
}

/// Why a node is not Ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReadyReason {
    /// No lease in the store (never written, deleted, or expired by the
    /// store itself).
    NoLease,
    /// The last renewal is too old.
    Expired { renewed: SystemTime },
}

/// A node's liveness at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// The lease is current.
    Ready { renewed: SystemTime },
    /// Registered by an agent, but the lease is missing or expired.
    NotReady(NotReadyReason),
    /// A Node without an agent (no [`KUBELET_LABEL`]): not judged.
    Unmanaged,
}

impl Liveness {
    /// Whether the node's routes and pods are in use: Ready or Unmanaged.
    pub fn is_usable(&self) -> bool {
        !matches!(self, Liveness::NotReady(_))
    }

    /// The `STATUS` column of `tapestry get nodes`.
    pub fn status(&self) -> &'static str {
        match self {
            Liveness::Ready { .. } => "Ready",
            Liveness::NotReady(_) => "NotReady",
            Liveness::Unmanaged => "Unmanaged",
        }
    }
}

/// Whether `node` runs an agent that renews a lease.
pub fn is_managed(node: &Node) -> bool {
    node.metadata.labels.get(KUBELET_LABEL).map(String::as_str) == Some("true")
}

/// `node`'s liveness at `now` given its lease, if any.
pub fn judge(node: &Node, lease: Option<&NodeLease>, now: SystemTime) -> Liveness {
    if !is_managed(node) {
        return Liveness::Unmanaged;
    }
    match lease {
        None => Liveness::NotReady(NotReadyReason::NoLease),
        Some(l) if now < l.expires() => Liveness::Ready {
            renewed: l.renew_time,
        },
        Some(l) => Liveness::NotReady(NotReadyReason::Expired {
            renewed: l.renew_time,
        }),
    }
}

/// The names of the NotReady nodes among `nodes` at `now`.
pub fn not_ready_nodes(
    nodes: &BTreeMap<String, Node>,
    leases: &BTreeMap<String, NodeLease>,
    now: SystemTime,
) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|(name, n)| !judge(n, leases.get(*name), now).is_usable())
        .map(|(name, _)| name.clone())
        .collect()
}

/// The earliest instant after `now` at which a node that is Ready now turns
/// NotReady, if none renews first: when a reader must judge again even if
/// the store stays silent.
pub fn next_expiry(
    nodes: &BTreeMap<String, Node>,
    leases: &BTreeMap<String, NodeLease>,
    now: SystemTime,
) -> Option<SystemTime> {
    nodes
        .iter()
        .filter(|(_, n)| is_managed(n))
        .filter_map(|(name, _)| leases.get(name))
        .map(NodeLease::expires)
        .filter(|&t| t > now)
        .min()
}

/// A pod's kubelet status as its readers take it: not ready when the node
/// it runs on (the status's, else the pod's `spec.nodeName`) is in
/// `not_ready`, as Kubernetes' node lifecycle controller marks the pods of a
/// NotReady node. The stored status is not changed.
pub fn status_on_node(
    status: Option<&PodRunStatus>,
    pod: &Pod,
    not_ready: &BTreeSet<String>,
) -> Option<PodRunStatus> {
    let mut status = status?.clone();
    let node = Some(status.node.as_str())
        .filter(|n| !n.is_empty())
        .or(pod.spec.node_name.as_deref());
    if node.is_some_and(|n| not_ready.contains(n)) {
        status.ready = false;
    }
    Some(status)
}

/// The NotReady nodes of the store at `now`: every Node and lease listed
/// once, as a one-shot reader (the CLI) needs them.
pub fn not_ready_in_store(
    store: &dyn Store,
    now: SystemTime,
) -> Result<BTreeSet<String>, StoreError> {
    let (nodes, leases) = nodes_and_leases(store)?;
    Ok(not_ready_nodes(&nodes, &leases, now))
}

/// Nodes by name.
pub type Nodes = BTreeMap<String, Node>;
/// Node leases by node name.
pub type Leases = BTreeMap<String, NodeLease>;

/// Every decodable Node and node lease in the store, by node name.
pub fn nodes_and_leases(store: &dyn Store) -> Result<(Nodes, Leases), StoreError> {
    let (entries, _) = store.list("nodes/")?;
    let nodes = entries
        .iter()
        .filter_map(|e| match Object::from_json(&e.value, &e.key) {
            Ok(Object::Node(n)) => Some((n.metadata.name.clone(), n)),
            _ => None,
        })
        .collect();
    let (entries, _) = store.list(NODE_LEASE_PREFIX)?;
    let leases = entries
        .iter()
        .filter_map(|e| {
            let name = e.key.strip_prefix(NODE_LEASE_PREFIX)?;
            Some((name.to_owned(), NodeLease::decode(&e.key, &e.value).ok()?))
        })
        .collect();
    Ok((nodes, leases))
}

/// Where readers get `now`: the system clock, or a test's hand-moved one.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

/// The system's wall clock (leases carry wall-clock times, so readers on
/// other hosts can compare them).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to, for tests.
#[cfg(test)]
#[derive(Debug)]
pub struct ManualClock(parking_lot::Mutex<SystemTime>);

#[cfg(test)]
impl ManualClock {
    pub fn new(at: SystemTime) -> Self {
        Self(parking_lot::Mutex::new(at))
    }

    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock();
        *t += by;
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.0.lock()
    }
}

/// `renewTime` as RFC 3339 with microseconds, like Kubernetes' `MicroTime`.
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[path = "liveness_tests.rs"]
mod tests;
