//! A live, decoded view of the cluster for everything that reacts to it:
//! the agent's service tables, cluster DNS, `tapestry get`.
//!
//! Why one cache: the load balancer, DNS and the router all need the same
//! join of nodes, pods, pod status and services, and each decoding the store
//! on its own would multiply the watches and disagree for a moment about
//! what the cluster looks like. [`ClusterCache`] runs the informer pattern of
//! Kubernetes' client-go once: one background thread lists the store, then
//! watches it from the listed revision (so nothing between the two is lost),
//! keeps decoded maps of `nodes/`, `pods/`, `podstatus/`, `services/`,
//! `namespaces/` and `networkpolicies/`,
//! and after every batch of events publishes a new immutable
//! [`ClusterState`] (RCU through `arc-swap`, CONVENTIONS.md §6): readers call
//! [`ClusterCache::snapshot`] and never wait on the writer. A watch that ends
//! with an error (for example [`StoreError::Compacted`] after falling behind
//! compaction) is answered by a fresh list and watch, and the rebuilt state
//! is published whole, so a reader never sees half of a relist.
//!
//! Subscribers get a wakeup per publication through a `bounded(1)` channel
//! filled with `try_send`: a slow subscriber is never queued up behind, and
//! when it wakes, [`ClusterCache::snapshot`] is at least as new as the
//! generation it received. Latency from a store change to a snapshot is the
//! store's watch latency (inotify for the directory store: milliseconds).
//!
//! Values that do not decode are dropped from the maps and recorded in
//! [`ClusterState::decode_errors`], so one bad object cannot hide the rest.
//!
//! Node liveness ([`crate::liveness`]) is judged here too, with the cache's
//! [`Clock`]: the worker keeps the `nodeleases/` values to itself and
//! publishes only the set they imply, [`ClusterState::not_ready_nodes`].
//! A renewal that leaves every node as it was publishes nothing (a live
//! cluster renews a lease every 2 s per node). Because a dead node makes no
//! event, the worker also judges again on a timer: at the next lease expiry
//! ([`next_expiry`]) and at least every [`RECHECK_AT_LEAST`]. Pods on a
//! NotReady node count as not ready ([`ClusterState::pods_with_status`]),
//! which takes them out of every Service's ready endpoints and so out of the
//! load balancer and DNS, as Kubernetes' node lifecycle controller does by
//! setting their Ready condition to false.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::endpoints::{compute_endpoints, Endpoints};
use crate::liveness::{
    next_expiry, not_ready_nodes, status_on_node, Clock, Leases, NodeLease, SystemClock,
    NODE_LEASE_PREFIX,
};
use crate::manifest::{Node, Object, Pod};
use crate::namespace::Namespace;
use crate::policy::NetworkPolicy;
use crate::service::Service;
use crate::status::PodRunStatus;
use crate::store::{Entry, Event, Revision, Store, StoreError, Watch};

/// The key prefixes the cache keeps.
pub const CACHED_PREFIXES: [&str; 6] = [
    "nodes/",
    "pods/",
    "podstatus/",
    "services/",
    "namespaces/",
    "networkpolicies/",
];

/// First wait before retrying a failed list or a watch that keeps breaking;
/// doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between list retries.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest the worker goes without judging node liveness again, whatever
/// the next expiry (a wall clock that jumps is caught up with this soon).
pub const RECHECK_AT_LEAST: Duration = Duration::from_secs(1);
/// Added to the wait for the next expiry, so the judgement falls after it.
const EXPIRY_MARGIN: Duration = Duration::from_millis(20);

/// Why a stored value was left out of the [`ClusterState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The value is not an object (or status) of the kind its key holds;
    /// `message` is the decoder's.
    #[error("{message}")]
    Undecodable { message: String },
    /// The value is an object of another kind than its key prefix holds.
    #[error("holds a {found}, expected a {expected}")]
    WrongKind {
        found: &'static str,
        expected: &'static str,
    },
}

/// One immutable, decoded view of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    /// Bumped by one per publication; 0 is the empty state before the first
    /// list.
    pub generation: u64,
    /// The store revision this state reflects (every change up to it).
    pub revision: Revision,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// Pods by `NAMESPACE/NAME`.
    pub pods: BTreeMap<String, Pod>,
    /// Kubelet status by pod `NAMESPACE/NAME`.
    pub pod_status: BTreeMap<String, PodRunStatus>,
    /// Services by `NAMESPACE/NAME`.
    pub services: BTreeMap<String, Service>,
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Network policies by `NAMESPACE/NAME`.
    pub network_policies: BTreeMap<String, NetworkPolicy>,
    /// Nodes registered by an agent whose liveness lease is missing or
    /// expired, judged when this state was published
    /// ([`crate::liveness`]). Their routes are withdrawn and their pods are
    /// not ready.
    pub not_ready_nodes: BTreeSet<String>,
    /// Store keys whose values could not be decoded, with the reason.
    pub decode_errors: BTreeMap<String, DecodeError>,
    /// How often the watch broke (e.g. compacted) and the cache relisted.
    pub relists: u64,
}

impl ClusterState {
    /// The endpoints of the service `NAMESPACE/NAME`, if it exists.
    pub fn endpoints(&self, svc_key: &str) -> Option<Endpoints> {
        let svc = self.services.get(svc_key)?;
        // Only the service's namespace can hold its backends.
        let prefix = format!("{}/", svc.metadata.namespace);
        let pods: Vec<_> = self
            .pods
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, p)| (p.clone(), self.status_of(k, p)))
            .collect();
        Some(compute_endpoints(svc, &pods))
    }

    /// The endpoints of every service, by `NAMESPACE/NAME`.
    pub fn all_endpoints(&self) -> BTreeMap<String, Endpoints> {
        let pods = self.pods_with_status();
        self.services
            .iter()
            .map(|(k, svc)| (k.clone(), compute_endpoints(svc, &pods)))
            .collect()
    }

    /// Every pod with its kubelet status, if reported, in key order; a pod
    /// on a NotReady node is not ready, whatever its last status said.
    pub fn pods_with_status(&self) -> Vec<(Pod, Option<PodRunStatus>)> {
        self.pods
            .iter()
            .map(|(k, p)| (p.clone(), self.status_of(k, p)))
            .collect()
    }

    /// Whether `node` is NotReady in this state.
    pub fn node_not_ready(&self, node: &str) -> bool {
        self.not_ready_nodes.contains(node)
    }

    /// The pod's kubelet status as endpoints take it
    /// ([`crate::liveness::status_on_node`]).
    fn status_of(&self, key: &str, pod: &Pod) -> Option<PodRunStatus> {
        status_on_node(self.pod_status.get(key), pod, &self.not_ready_nodes)
    }

    /// The labels of the namespace `name` as namespace selectors see them:
    /// its Namespace object's (none when none is stored yet), always with
    /// `kubernetes.io/metadata.name` set to `name`, which every namespace
    /// carries.
    pub fn namespace_labels(&self, name: &str) -> BTreeMap<String, String> {
        let mut ns = self
            .namespaces
            .get(name)
            .cloned()
            .unwrap_or_else(|| Namespace::new(name));
        ns.set_name_label();
        ns.metadata.labels
    }

    /// Applies one store change; `false` if the key is not one the cache
    /// keeps.
    fn apply(&mut self, event: Event) -> bool {
        match event {
            Event::Put(entry) => {
                self.revision = self.revision.max(entry.revision);
                self.put(entry)
            }
            Event::Delete { key, revision } => {
                self.revision = self.revision.max(revision);
                self.remove(&key)
            }
        }
    }

    fn put(&mut self, entry: Entry) -> bool {
        let Entry { key, value, .. } = entry;
        let decoded = if let Some(name) = key.strip_prefix("nodes/") {
            decode_object(&value, &key).and_then(|o| match o {
                Object::Node(n) => {
                    self.nodes.insert(name.to_string(), n);
                    Ok(())
                }
                other => Err(wrong_kind(&other, "Node")),
            })
        } else if let Some(name) = key.strip_prefix("pods/") {
            decode_object(&value, &key).and_then(|o| match o {
                Object::Pod(p) => {
                    self.pods.insert(name.to_string(), p);
                    Ok(())
                }
                other => Err(wrong_kind(&other, "Pod")),
            })
        } else if let Some(name) = key.strip_prefix("podstatus/") {
            serde_json::from_slice::<PodRunStatus>(&value)
                .map(|s| {
                    self.pod_status.insert(name.to_string(), s);
                })
                .map_err(|e| DecodeError::Undecodable {
                    message: e.to_string(),
                })
        } else if let Some(name) = key.strip_prefix("services/") {
            decode_object(&value, &key).and_then(|o| match o {
                Object::Service(s) => {
                    self.services.insert(name.to_string(), s);
                    Ok(())
                }
                other => Err(wrong_kind(&other, "Service")),
            })
        } else if let Some(name) = key.strip_prefix("namespaces/") {
            decode_object(&value, &key).and_then(|o| match o {
                Object::Namespace(n) => {
                    self.namespaces.insert(name.to_string(), n);
                    Ok(())
                }
                other => Err(wrong_kind(&other, "Namespace")),
            })
        } else if let Some(name) = key.strip_prefix("networkpolicies/") {
            decode_object(&value, &key).and_then(|o| match o {
                Object::NetworkPolicy(p) => {
                    self.network_policies.insert(name.to_string(), p);
                    Ok(())
                }
                other => Err(wrong_kind(&other, "NetworkPolicy")),
            })
        } else {
            return false;
        };
        match decoded {
            Ok(()) => {
                self.decode_errors.remove(&key);
            }
            Err(message) => {
                // The new value replaced the old one in the store: do not
                // keep serving the old one.
                self.remove(&key);
                self.decode_errors.insert(key, message);
            }
        }
        true
    }

    fn remove(&mut self, key: &str) -> bool {
        self.decode_errors.remove(key);
        if let Some(name) = key.strip_prefix("nodes/") {
            self.nodes.remove(name);
        } else if let Some(name) = key.strip_prefix("pods/") {
            self.pods.remove(name);
        } else if let Some(name) = key.strip_prefix("podstatus/") {
            self.pod_status.remove(name);
        } else if let Some(name) = key.strip_prefix("services/") {
            self.services.remove(name);
        } else if let Some(name) = key.strip_prefix("namespaces/") {
            self.namespaces.remove(name);
        } else if let Some(name) = key.strip_prefix("networkpolicies/") {
            self.network_policies.remove(name);
        } else {
            return false;
        }
        true
    }
}

fn decode_object(value: &[u8], key: &str) -> Result<Object, DecodeError> {
    Object::from_json(value, key).map_err(|e| DecodeError::Undecodable {
        message: e.to_string(),
    })
}

fn wrong_kind(obj: &Object, expected: &'static str) -> DecodeError {
    DecodeError::WrongKind {
        found: obj.kind(),
        expected,
    }
}

fn is_cached(key: &str) -> bool {
    CACHED_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// What the publisher and the readers share.
struct Shared {
    state: ArcSwap<ClusterState>,
    /// Control path only (a subscribe or a publication), never the packet
    /// path: a `parking_lot` lock is the simple correct choice here.
    subscribers: parking_lot::Mutex<Vec<Sender<u64>>>,
}

impl Shared {
    /// Swaps `state` in as the next generation and wakes subscribers.
    fn publish(&self, mut state: ClusterState) {
        let generation = self.state.load().generation + 1;
        state.generation = generation;
        self.state.store(Arc::new(state));
        self.subscribers
            .lock()
            .retain(|tx| !matches!(tx.try_send(generation), Err(TrySendError::Disconnected(_))));
    }
}

/// The background list-and-watch of the cluster; see the module docs.
/// Dropping it stops the thread.
pub struct ClusterCache {
    shared: Arc<Shared>,
    /// Dropped to stop the thread (its receiver then disconnects).
    stop: Option<Sender<()>>,
    /// Asks the worker to judge node liveness now.
    recheck: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ClusterCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCache")
            .field("generation", &self.shared.state.load().generation)
            .finish()
    }
}

impl ClusterCache {
    /// Lists the store, publishes the first snapshot (generation 1) and
    /// starts the watch thread. Fails only if that first list or watch
    /// fails; later failures are retried in the background. Node liveness
    /// is judged on the system clock.
    pub fn start(store: Arc<dyn Store>) -> Result<ClusterCache, StoreError> {
        Self::start_with_clock(store, Arc::new(SystemClock))
    }

    /// [`ClusterCache::start`], judging node liveness on `clock`.
    pub fn start_with_clock(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<ClusterCache, StoreError> {
        let (mut state, leases, watch) = list_and_watch(&*store)?;
        state.not_ready_nodes = not_ready_nodes(&state.nodes, &leases, clock.now());
        let shared = Arc::new(Shared {
            state: ArcSwap::from_pointee(ClusterState::default()),
            subscribers: parking_lot::Mutex::new(Vec::new()),
        });
        shared.publish(state.clone());
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (recheck_tx, recheck_rx) = crossbeam_channel::bounded::<()>(1);
        let worker = Worker {
            store,
            shared: Arc::clone(&shared),
            stop: stop_rx,
            recheck: recheck_rx,
            clock,
            state,
            leases,
        };
        let thread = std::thread::Builder::new()
            .name("cluster-cache".into())
            .spawn(move || worker.run(watch))
            .map_err(|source| StoreError::Io {
                op: "spawn the cluster cache thread for",
                path: "cluster cache".into(),
                source,
            })?;
        Ok(ClusterCache {
            shared,
            stop: Some(stop_tx),
            recheck: recheck_tx,
            thread: Some(thread),
        })
    }

    /// The newest published state. Cheap (an `Arc` clone); never blocks on
    /// the writer.
    pub fn snapshot(&self) -> Arc<ClusterState> {
        self.shared.state.load_full()
    }

    /// A channel that receives a generation number after each publication
    /// from now on. It holds at most one: a subscriber that falls behind
    /// wakes once and reads [`ClusterCache::snapshot`], which is at least
    /// that generation. Dropping the receiver unsubscribes.
    pub fn subscribe(&self) -> Receiver<u64> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.shared.subscribers.lock().push(tx);
        rx
    }

    /// Asks the worker to judge node liveness now rather than at its next
    /// timer (tests that move a hand-held clock; the worker's own timer
    /// needs no help).
    pub fn recheck(&self) {
        let _ = self.recheck.try_send(());
    }
}

impl Drop for ClusterCache {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // A panicked worker has nothing left to clean up.
            let _ = t.join();
        }
    }
}

/// One consistent list of everything cached, and a watch from its revision.
fn list_and_watch(store: &dyn Store) -> Result<(ClusterState, Leases, Watch), StoreError> {
    // One list of the whole store, not one per prefix, so the first state
    // is a single point in time (the other keys are few and small).
    let (entries, revision) = store.list("")?;
    let mut state = ClusterState {
        revision,
        ..ClusterState::default()
    };
    let mut leases = Leases::new();
    for entry in entries {
        if entry.key.starts_with(NODE_LEASE_PREFIX) {
            apply_lease(&mut state, &mut leases, Event::Put(entry));
        } else if is_cached(&entry.key) {
            state.put(entry);
        }
    }
    let watch = store.watch("", revision)?;
    Ok((state, leases, watch))
}

/// Applies a change of a `nodeleases/` key to `leases`; an undecodable
/// value counts as no lease and is listed in `decode_errors`. `true` if
/// that list changed (a renewal alone changes nothing published).
fn apply_lease(state: &mut ClusterState, leases: &mut Leases, event: Event) -> bool {
    let Some(name) = event.key().strip_prefix(NODE_LEASE_PREFIX) else {
        return false;
    };
    let name = name.to_owned();
    let key = crate::liveness::lease_key(&name);
    state.revision = state.revision.max(event.revision());
    let error = match event {
        Event::Put(e) => match NodeLease::decode(&e.key, &e.value) {
            Ok(lease) => {
                leases.insert(name, lease);
                None
            }
            Err(err) => {
                leases.remove(&name);
                Some(err.to_string())
            }
        },
        Event::Delete { .. } => {
            leases.remove(&name);
            None
        }
    };
    match error {
        None => state.decode_errors.remove(&key).is_some(),
        Some(message) => {
            let new = DecodeError::Undecodable { message };
            state.decode_errors.insert(key, new.clone()) != Some(new)
        }
    }
}

/// The background thread's own state.
struct Worker {
    store: Arc<dyn Store>,
    shared: Arc<Shared>,
    stop: Receiver<()>,
    recheck: Receiver<()>,
    clock: Arc<dyn Clock>,
    /// The working copy; clones of it are published.
    state: ClusterState,
    /// The node leases, kept out of the published state: only the
    /// liveness they imply is published.
    leases: Leases,
}

impl Worker {
    fn run(mut self, mut watch: Watch) {
        // Watches that broke in a row without delivering anything: the
        // first relist is immediate (a compacted watch should catch up at
        // once), repeated ones back off so a failing store is not spun on.
        let mut barren_breaks = 0u32;
        loop {
            let wait = self.judge_again_in();
            // `None`: a timer or a recheck request, no store event.
            let first = crossbeam_channel::select! {
                recv(self.stop) -> _ => return,
                recv(watch.receiver()) -> item => Some(item.ok()),
                recv(self.recheck) -> _ => None,
                default(wait) => None,
            };
            let mut changed = false;
            let mut broken = false;
            // `None`: the store side closed the watch; treat like an error.
            let mut next = first;
            while let Some(item) = next {
                match item {
                    Some(Ok(event)) => {
                        changed |= self.apply(event);
                        barren_breaks = 0;
                    }
                    Some(Err(_)) | None => {
                        broken = true;
                        break;
                    }
                }
                // Take what has already arrived, so a burst is one snapshot.
                next = watch.try_recv().map(Some);
            }
            if broken {
                drop(watch);
                if barren_breaks > 0 && !self.pause(backoff(barren_breaks)) {
                    return;
                }
                barren_breaks = barren_breaks.saturating_add(1);
                match self.relist() {
                    Some((mut state, leases, w)) => {
                        state.relists = self.state.relists + 1;
                        // Judged again below; kept so that only real
                        // transitions are logged.
                        state.not_ready_nodes = std::mem::take(&mut self.state.not_ready_nodes);
                        self.state = state;
                        self.leases = leases;
                        watch = w;
                        changed = true;
                    }
                    None => return,
                }
            }
            changed |= self.judge();
            if changed {
                self.shared.publish(self.state.clone());
            }
        }
    }

    /// Applies one store change; `true` if the published state changes.
    fn apply(&mut self, event: Event) -> bool {
        if event.key().starts_with(NODE_LEASE_PREFIX) {
            apply_lease(&mut self.state, &mut self.leases, event)
        } else {
            self.state.apply(event)
        }
    }

    /// Judges every node's liveness now; `true` if the NotReady set changed.
    fn judge(&mut self) -> bool {
        let now = self.clock.now();
        let judged = not_ready_nodes(&self.state.nodes, &self.leases, now);
        if judged == self.state.not_ready_nodes {
            return false;
        }
        for node in judged.difference(&self.state.not_ready_nodes) {
            let renewed = self.leases.get(node).map(|l| l.renew_time);
            let ago = renewed.and_then(|t| now.duration_since(t).ok());
            tracing::warn!(
                %node,
                last_renewal_s_ago = ago.map(|d| format!("{:.1}", d.as_secs_f64())),
                "node NotReady: its liveness lease is missing or expired"
            );
        }
        for node in self.state.not_ready_nodes.difference(&judged) {
            tracing::info!(%node, "node Ready again (or gone)");
        }
        self.state.not_ready_nodes = judged;
        true
    }

    /// How long until liveness must be judged again with no store event:
    /// just after the next lease expiry, and never longer than
    /// [`RECHECK_AT_LEAST`].
    fn judge_again_in(&self) -> Duration {
        let now: SystemTime = self.clock.now();
        next_expiry(&self.state.nodes, &self.leases, now)
            .and_then(|t| t.duration_since(now).ok())
            .map_or(RECHECK_AT_LEAST, |d| d + EXPIRY_MARGIN)
            .min(RECHECK_AT_LEAST)
    }

    /// Waits `d`, but returns `false` at once when the cache is dropped.
    fn pause(&self, d: Duration) -> bool {
        matches!(
            self.stop.recv_timeout(d),
            Err(crossbeam_channel::RecvTimeoutError::Timeout)
        )
    }

    /// Lists and watches again, retrying with backoff; `None` if told to
    /// stop meanwhile.
    fn relist(&self) -> Option<(ClusterState, Leases, Watch)> {
        let mut attempt = 0u32;
        loop {
            match list_and_watch(&*self.store) {
                Ok(done) => return Some(done),
                Err(_) => {
                    attempt = attempt.saturating_add(1);
                    if !self.pause(backoff(attempt)) {
                        return None;
                    }
                }
            }
        }
    }
}

/// The wait before retry number `n` (1-based): doubling from
/// [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`].
fn backoff(n: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
