//! Admission: what happens to an object between `tapestry apply` and the
//! store, in one place, as the API server and the scheduler do it in
//! Kubernetes.
//!
//! - A Pod without `spec.nodeName` is scheduled: placed on the Ready node
//!   with a kubelet ([`KUBELET_LABEL`]) running the fewest pods, ties by name. A Pod
//!   already stored keeps the node it has, so a pod never moves.
//! - A `ClusterIP` Service (not headless) gets its `spec.clusterIP` allocated,
//!   or its requested one confirmed, from the cluster's Service CIDR as
//!   recorded in the store by the first agent ([`crate::config`]), the way
//!   kube-apiserver allocates from its `--service-cluster-ip-range`.
//! - A Namespace gets the label `kubernetes.io/metadata.name` set to its
//!   name ([`crate::namespace`]).
//! - A NetworkPolicy gets its `policyTypes` defaulted and stored, as the API
//!   server's defaulting does ([`crate::policy`]).
//! - An object in a namespace that has no Namespace object creates that
//!   Namespace (with only its name label) before the object is stored: an
//!   implicit namespace, where Kubernetes would reject the object.
//! - The result is validated again, and written with compare-and-swap, so a
//!   concurrent writer is reported rather than overwritten.
//!
//! Deleting a Service releases its ClusterIP ([`delete`]). Deleting a
//! Namespace is refused for `default` and `kube-system`, and while any pod,
//! service or network policy is stored in it (there is no cascading
//! deletion). Deleting a Node ([`delete_node`]) gives up what its agent held:
//! its subnet lease, its pod IP allocations, its liveness lease and the pod
//! statuses its kubelet reported; it is refused while the node's liveness
//! lease is current (its agent would register it again at once) unless
//! forced.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::cluster_ip::{allocate_cluster_ip, release_cluster_ip, ServiceError};
use crate::config::{
    ensure_namespace, read_cluster_config, ConfigError, NamespaceError, CLUSTER_CONFIG_KEY,
};
use crate::ipam::{ip_prefix, release_node_subnet, IpamError};
use crate::liveness::{judge, lease_key, nodes_and_leases, Liveness, NodeLease};
use crate::manifest::{ManifestError, Object, Pod, KUBELET_LABEL};
use crate::namespace::BUILTIN_NAMESPACES;
use crate::net::Ipv4Cidr;
use crate::service::{ClusterIp, ServiceType};
use crate::store::{Entry, Store, StoreError};
use crate::validate::FieldError;

/// What [`apply`] did with one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl Outcome {
    /// `created`, `configured`, `unchanged`: as `kubectl apply` prints them.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// Why an object was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// The store failed.
    #[error(transparent)]
    Store {
        #[from]
        source: StoreError,
    },
    /// A Pod to schedule, and no node to schedule it on.
    #[error(
        "{object}: spec.nodeName: no Ready node with a kubelet to schedule it on; \
         start the node agents first (`tapestry get nodes` shows their status)"
    )]
    NoNode { object: String },
    /// A ClusterIP to allocate, and no Service CIDR recorded to allocate from.
    #[error(
        "{object}: spec.clusterIP: the cluster store holds no cluster configuration \
         ({CLUSTER_CONFIG_KEY}) with the Service CIDR; start a node agent first (it records \
         its --service-cidr)"
    )]
    NoServiceCidr { object: String },
    /// The ClusterIP could not be allocated (the message names the field).
    #[error(transparent)]
    ClusterIp {
        #[from]
        source: ServiceError,
    },
    /// The cluster configuration could not be read.
    #[error(transparent)]
    Config {
        #[from]
        source: ConfigError,
    },
    /// A field is invalid after admission.
    #[error("{object}: {source}")]
    Invalid { object: String, source: FieldError },
    /// The object could not be encoded for the store.
    #[error(transparent)]
    Encode {
        #[from]
        source: ManifestError,
    },
    /// Another writer changed the object between our read and our write.
    #[error("{key}: changed meanwhile by another writer; apply again")]
    Conflict { key: String },
    /// The implicit Namespace of an object could not be created.
    #[error("namespace {namespace}: {source}")]
    Namespace {
        namespace: String,
        source: NamespaceError,
    },
    /// `default` and `kube-system` always exist.
    #[error("namespaces/{name}: namespace {name} may not be deleted")]
    BuiltinNamespace { name: String },
    /// A namespace still holding objects (deletion does not cascade).
    #[error(
        "namespaces/{name}: namespace {name} still holds {count} object(s) (first: {first}); \
         delete them first"
    )]
    NamespaceNotEmpty {
        name: String,
        count: usize,
        first: String,
    },
    /// A Node whose agent is alive: deleting it would only see it registered
    /// again, with its pods and subnet in flux.
    #[error(
        "nodes/{name}: node {name} is Ready (its agent renewed its lease {ago:.1?} ago) and \
         would register again at once; stop tapestryd on {name} first (the node turns \
         NotReady within 7 s), or delete with --force"
    )]
    NodeAlive { name: String, ago: Duration },
    /// The node's subnet lease could not be released.
    #[error("nodes/{name}: cannot release its subnet: {source}")]
    Release { name: String, source: IpamError },
}

/// What [`delete_node`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeDeleted {
    /// Whether the Node object existed.
    pub node: bool,
    /// Subnet leases given up.
    pub subnets: Vec<Ipv4Cidr>,
    /// Pod IP allocations (`ips/NODE/…`) given up.
    pub pod_ips: usize,
    /// Whether a liveness lease was deleted.
    pub lease: bool,
    /// Pod statuses the node's kubelet had reported, deleted.
    pub pod_statuses: usize,
    /// Pods (`NAMESPACE/NAME`) still bound to the node by `spec.nodeName`:
    /// left as they are, to run again if a node of that name returns.
    pub pods_bound: Vec<String>,
}

impl NodeDeleted {
    /// Whether anything of the node was found.
    pub fn found_anything(&self) -> bool {
        self.node || !self.subnets.is_empty() || self.pod_ips > 0 || self.lease
    }
}

/// Deletes the Node `name` and gives up what its agent held (see the module
/// docs), refusing while its liveness lease is current at `now` unless
/// `force`. Also cleans up after a Node already deleted by hand.
pub fn delete_node(
    store: &dyn Store,
    name: &str,
    now: SystemTime,
    force: bool,
) -> Result<NodeDeleted, AdmissionError> {
    let key = format!("nodes/{name}");
    let node = match store.get(&key)? {
        Some(e) => match Object::from_json(&e.value, &e.key) {
            Ok(Object::Node(n)) => Some(n),
            _ => None,
        },
        None => None,
    };
    let lease = store
        .get(&lease_key(name))?
        .and_then(|e| NodeLease::decode(&e.key, &e.value).ok());
    if let (Some(n), false) = (&node, force) {
        if let Liveness::Ready { renewed } = judge(n, lease.as_ref(), now) {
            return Err(AdmissionError::NodeAlive {
                name: name.to_owned(),
                ago: now.duration_since(renewed).unwrap_or_default(),
            });
        }
    }
    let mut done = NodeDeleted {
        node: store.delete(&key)?.is_some(),
        ..NodeDeleted::default()
    };
    done.subnets = release_node_subnet(store, name).map_err(|source| AdmissionError::Release {
        name: name.to_owned(),
        source,
    })?;
    let (ips, _) = store.list(&ip_prefix(name))?;
    for e in ips {
        if store.delete(&e.key)?.is_some() {
            done.pod_ips += 1;
        }
    }
    done.lease = store.delete(&lease_key(name))?.is_some();
    let (statuses, _) = store.list("podstatus/")?;
    for e in statuses {
        let on_node = serde_json::from_slice::<crate::status::PodRunStatus>(&e.value)
            .is_ok_and(|s| s.node == name);
        if on_node && store.delete(&e.key)?.is_some() {
            done.pod_statuses += 1;
        }
    }
    let (pods, _) = store.list("pods/")?;
    done.pods_bound = pods
        .iter()
        .filter_map(|e| match Object::from_json(&e.value, &e.key) {
            Ok(Object::Pod(p)) if p.spec.node_name.as_deref() == Some(name) => {
                Some(format!("{}/{}", p.metadata.namespace, p.metadata.name))
            }
            _ => None,
        })
        .collect();
    Ok(done)
}

/// Pods per node that can run them: what the scheduler places by.
#[derive(Debug, Default)]
struct Scheduler {
    load: BTreeMap<String, usize>,
}

impl Scheduler {
    /// The Ready nodes with a kubelet and the pods bound to them, counting
    /// the batch's pods that name a node and are not stored yet. A NotReady
    /// node ([`crate::liveness`]) gets no new pods, as Kubernetes' scheduler
    /// keeps them off a node tainted `not-ready`.
    fn new(store: &dyn Store, batch: &[Object]) -> Result<Self, AdmissionError> {
        let (nodes, leases) = nodes_and_leases(store)?;
        let now = SystemTime::now();
        let mut load: BTreeMap<String, usize> = nodes
            .into_iter()
            .filter(|(name, n)| {
                n.metadata
                    .labels
                    .get(KUBELET_LABEL)
                    .is_some_and(|v| v == "true")
                    && judge(n, leases.get(name), now).is_usable()
            })
            .map(|(name, _)| (name, 0))
            .collect();
        let (entries, _) = store.list("pods/")?;
        let stored = entries
            .iter()
            .filter_map(|e| match Object::from_json(&e.value, &e.key) {
                Ok(Object::Pod(p)) => p.spec.node_name,
                _ => None,
            });
        let mut new_in_batch = Vec::new();
        for obj in batch {
            if let Object::Pod(p) = obj {
                if let Some(n) = &p.spec.node_name {
                    if store.get(&obj.key())?.is_none() {
                        new_in_batch.push(n.clone());
                    }
                }
            }
        }
        for node in stored.chain(new_in_batch) {
            if let Some(count) = load.get_mut(&node) {
                *count += 1;
            }
        }
        Ok(Self { load })
    }

    /// The least loaded node (ties by name), which then counts one pod more.
    fn place(&mut self) -> Option<String> {
        let (name, count) = self
            .load
            .iter_mut()
            .min_by(|(a, x), (b, y)| x.cmp(y).then_with(|| a.cmp(b)))?;
        *count += 1;
        Some(name.clone())
    }
}

/// Admits the objects of one `apply`: schedules, allocates, validates.
pub struct Admission<'s> {
    store: &'s dyn Store,
    scheduler: Scheduler,
    service_cidr: Option<Ipv4Cidr>,
}

impl<'s> Admission<'s> {
    /// Reads what admission decides by: the nodes, their pods (and the
    /// pods of `batch` that name a node), the cluster's Service CIDR.
    pub fn new(store: &'s dyn Store, batch: &[Object]) -> Result<Self, AdmissionError> {
        Ok(Self {
            store,
            scheduler: Scheduler::new(store, batch)?,
            service_cidr: read_cluster_config(store)?.map(|c| c.networking.service_subnet),
        })
    }

    /// The object as it is to be stored, given what is stored now under its
    /// key.
    pub fn admit(
        &mut self,
        obj: Object,
        current: Option<&Entry>,
    ) -> Result<Object, AdmissionError> {
        let obj = match obj {
            Object::Pod(pod) if pod.spec.node_name.is_none() => {
                Object::Pod(self.schedule(pod, current)?)
            }
            Object::Service(mut svc)
                if svc.spec.type_ == ServiceType::ClusterIp && !svc.is_headless() =>
            {
                let Some(cidr) = self.service_cidr else {
                    return Err(AdmissionError::NoServiceCidr {
                        object: Object::Service(svc).display_name(),
                    });
                };
                let ip =
                    allocate_cluster_ip(self.store, &svc.key(), svc.spec.cluster_ip.ip(), cidr)?;
                svc.spec.cluster_ip = ClusterIp::Ip(ip);
                Object::Service(svc)
            }
            Object::Namespace(mut ns) => {
                ns.set_name_label();
                Object::Namespace(ns)
            }
            Object::NetworkPolicy(mut np) => {
                np.apply_defaults();
                Object::NetworkPolicy(np)
            }
            other => other,
        };
        obj.validate().map_err(|source| AdmissionError::Invalid {
            object: obj.display_name(),
            source,
        })?;
        Ok(obj)
    }

    /// Binds `pod` to the node it is stored with, else to the scheduler's
    /// choice.
    fn schedule(&mut self, mut pod: Pod, current: Option<&Entry>) -> Result<Pod, AdmissionError> {
        let stored = current.and_then(|e| match Object::from_json(&e.value, &e.key) {
            Ok(Object::Pod(p)) => p.spec.node_name,
            _ => None,
        });
        let node = match stored {
            Some(n) => n,
            None => self
                .scheduler
                .place()
                .ok_or_else(|| AdmissionError::NoNode {
                    object: Object::Pod(pod.clone()).display_name(),
                })?,
        };
        pod.spec.node_name = Some(node);
        Ok(pod)
    }
}

/// `apply`: admits and stores each object in order, calling `applied` with
/// each stored object and what was done; stops at the first error.
pub fn apply(
    store: &dyn Store,
    objects: Vec<Object>,
    mut applied: impl FnMut(&Object, Outcome),
) -> Result<(), AdmissionError> {
    let mut admission = Admission::new(store, &objects)?;
    for obj in objects {
        let key = obj.key();
        let current = store.get(&key)?;
        let obj = admission.admit(obj, current.as_ref())?;
        if obj.is_namespaced() {
            let namespace = obj.namespace();
            ensure_namespace(store, namespace).map_err(|source| AdmissionError::Namespace {
                namespace: namespace.to_owned(),
                source,
            })?;
        }
        let bytes = obj.to_json()?;
        let outcome = match &current {
            Some(e) if e.value == bytes => Outcome::Unchanged,
            Some(_) => Outcome::Configured,
            None => Outcome::Created,
        };
        if outcome != Outcome::Unchanged {
            let expected = current.as_ref().map_or(0, |e| e.revision);
            match store.compare_and_swap(&key, expected, &bytes) {
                Ok(_) => {}
                Err(StoreError::Conflict { .. }) => return Err(AdmissionError::Conflict { key }),
                Err(e) => return Err(e.into()),
            }
        }
        applied(&obj, outcome);
    }
    Ok(())
}

/// Deletes the object stored under `key`; a Service's ClusterIP is released,
/// a Node is deleted with what its agent held ([`delete_node`], not forced).
/// `false` if nothing was stored there. A built-in or non-empty Namespace is
/// an error and stays.
pub fn delete(store: &dyn Store, key: &str) -> Result<bool, AdmissionError> {
    if let Some(name) = key.strip_prefix("nodes/") {
        let done = delete_node(store, name, SystemTime::now(), false)?;
        return Ok(done.node);
    }
    if let Some(name) = key.strip_prefix("namespaces/") {
        check_namespace_deletable(store, name)?;
    }
    let deleted = store.delete(key)?.is_some();
    if key.starts_with("services/") {
        release_cluster_ip(store, key)?;
    }
    Ok(deleted)
}

/// The prefixes of the namespaced kinds, whose objects keep a namespace
/// from being deleted.
const NAMESPACED_PREFIXES: [&str; 3] = ["pods/", "services/", "networkpolicies/"];

/// Refuses to delete `default`, `kube-system` and namespaces with objects.
fn check_namespace_deletable(store: &dyn Store, name: &str) -> Result<(), AdmissionError> {
    if BUILTIN_NAMESPACES.contains(&name) {
        return Err(AdmissionError::BuiltinNamespace { name: name.into() });
    }
    let mut held = Vec::new();
    for prefix in NAMESPACED_PREFIXES {
        let (entries, _) = store.list(&format!("{prefix}{name}/"))?;
        held.extend(entries.into_iter().map(|e| e.key));
    }
    match held.first() {
        None => Ok(()),
        Some(first) => Err(AdmissionError::NamespaceNotEmpty {
            name: name.into(),
            count: held.len(),
            first: first.clone(),
        }),
    }
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
