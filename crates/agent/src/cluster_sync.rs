//! The agent's side of the cluster store: it registers this node (pod subnet,
//! underlay address, VTEP MAC) and keeps the data plane's route table in step
//! with every Node in the store.
//!
//! On every change the peers are computed again from the Node list and
//! compared with the published snapshot's; only a different route table is
//! built and published into the pipeline's `ArcSwap` (CONVENTIONS.md §17), so
//! a Node update that moves no route (a label, a heartbeat) publishes nothing.
//! The data plane never waits for this, and never sees half a table.
//!
//! A NotReady node (its liveness lease missing or expired, judged by the
//! [`ClusterCache`], see `tapestry_cluster::liveness`) is no peer: its route is
//! withdrawn, so packets for its subnet are dropped here as `no route` instead
//! of being tunnelled to a dead agent, and it is listed under PROBLEMS. Its
//! route returns with its first renewal.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tapestry_cluster::store::{Store, StoreError};
use tapestry_cluster::ClusterCache;
use tapestry_cluster::{
    Ipv4Cidr, MacAddr, ManifestError, Node, NodeSpec, NodeStatus, Object, ObjectMeta, KUBELET_LABEL,
};
use tapestry_dataplane::{Peer, RouteError, RouteSnapshot};

use crate::problems::{Problems, Source};
use crate::reflected::Reflected;

/// How often [`register`] retries a compare-and-swap that lost to another writer.
const REGISTER_ATTEMPTS: usize = 20;

/// Why this node could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("cannot register {key}: {source}")]
    Store {
        key: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot register {key}: {source}")]
    Encode {
        key: String,
        #[source]
        source: ManifestError,
    },
    #[error("cannot register {key}: too many concurrent writers ({attempts} attempts)")]
    Contended { key: String, attempts: usize },
}

/// Writes (or updates) `nodes/NAME` with this node's subnet and tunnel endpoint.
pub fn register(
    store: &dyn Store,
    name: &str,
    subnet: Ipv4Cidr,
    underlay_ip: Ipv4Addr,
    vtep_mac: MacAddr,
) -> Result<(), RegisterError> {
    let key = format!("nodes/{name}");
    let store_err = |source| RegisterError::Store {
        key: key.clone(),
        source,
    };
    for _ in 0..REGISTER_ATTEMPTS {
        let current = store.get(&key).map_err(store_err)?;
        let (mut node, rev) = match &current {
            Some(e) => match Object::from_json(&e.value, &key) {
                Ok(Object::Node(n)) => (n, e.revision),
                _ => (blank(name), e.revision),
            },
            None => (blank(name), 0),
        };
        node.spec.pod_cidr = Some(subnet);
        // This node runs a kubelet: `tapestry apply` may schedule pods here (a
        // Node registered by hand, e.g. a kernel VXLAN peer, has no such label).
        node.metadata
            .labels
            .insert(KUBELET_LABEL.to_owned(), "true".to_owned());
        node.status.underlay_ip = Some(underlay_ip);
        node.status.vtep_mac = Some(vtep_mac);
        let bytes = Object::Node(node)
            .to_json()
            .map_err(|source| RegisterError::Encode {
                key: key.clone(),
                source,
            })?;
        match store.compare_and_swap(&key, rev, &bytes) {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(store_err(e)),
        }
    }
    Err(RegisterError::Contended {
        key,
        attempts: REGISTER_ATTEMPTS,
    })
}

fn blank(name: &str) -> Node {
    Node {
        metadata: ObjectMeta::named(name),
        spec: NodeSpec::default(),
        status: NodeStatus::default(),
    }
}

/// The peers among `nodes`: every other node with a subnet, an underlay IP and a
/// VTEP MAC (a node still registering is skipped until it has all three) that
/// is not in `not_ready`.
pub fn peers(me: &str, nodes: &BTreeMap<String, Node>, not_ready: &BTreeSet<String>) -> Vec<Peer> {
    nodes
        .values()
        .filter(|n| n.metadata.name != me && !not_ready.contains(&n.metadata.name))
        .filter_map(|n| {
            let subnet = n.spec.pod_cidr?;
            Some(Peer {
                name: n.metadata.name.clone(),
                underlay_ip: n.underlay_ip()?,
                vtep_mac: n.status.vtep_mac?,
                subnet,
            })
        })
        .collect()
}

/// What one [`reconcile_routes`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutesReconciled {
    /// Whether a new snapshot was built and stored (else the published one
    /// already routes to exactly the admitted peers).
    pub published: bool,
    /// The new table could not be built and the previous one was kept: it
    /// does not reflect the state reconciled.
    pub failed: bool,
    /// Nodes left out of the table, each with the error it would cause.
    pub rejected: Vec<(String, RouteError)>,
}

/// Splits `peers` into those one route table can hold together and those it
/// cannot (a subnet overlapping this node's or an admitted peer's, an
/// underlay address already taken), each with its error. Peers in the
/// `current` snapshot are admitted first, so a newcomer cannot push out a
/// node that is already routed to; then the rest in name order. The
/// admitted keep `peers`' order.
pub fn admit_peers(
    local: Ipv4Cidr,
    cluster: Ipv4Cidr,
    peers: Vec<Peer>,
    current: &[Peer],
) -> (Vec<Peer>, Vec<(String, RouteError)>) {
    let mut order: Vec<usize> = (0..peers.len()).collect();
    order.sort_by_key(|&i| peers.get(i).is_none_or(|p| !current.contains(p)));
    let mut admitted: Vec<bool> = vec![false; peers.len()];
    let mut rejected = Vec::new();
    for i in order {
        let Some(p) = peers.get(i) else { continue };
        let mut trial: Vec<Peer> = peers
            .iter()
            .zip(&admitted)
            .filter(|(_, a)| **a)
            .map(|(p, _)| p.clone())
            .collect();
        trial.push(p.clone());
        match RouteSnapshot::build(local, cluster, trial) {
            Ok(_) => {
                if let Some(a) = admitted.get_mut(i) {
                    *a = true;
                }
            }
            Err(e) => rejected.push((p.name.clone(), e)),
        }
    }
    rejected.sort_by(|a, b| a.0.cmp(&b.0));
    let kept = peers
        .into_iter()
        .zip(admitted)
        .filter_map(|(p, a)| a.then_some(p))
        .collect();
    (kept, rejected)
}

/// Builds the route snapshot for `nodes` less the `not_ready` ones and
/// publishes it into `routes` only if it differs from the current one (peers,
/// their order, the cluster CIDR).
///
/// The local subnet is the current snapshot's: the one the pipeline was built
/// with ([`tapestry_dataplane::PipelineConfig`]), so the pipeline and its route
/// table cannot disagree about it. A Node the table cannot hold (a subnet
/// overlapping another's, a shared underlay address) is left out and
/// returned with its error; the rest are routed ([`admit_peers`]).
pub fn reconcile_routes(
    me: &str,
    cluster: Ipv4Cidr,
    nodes: &BTreeMap<String, Node>,
    not_ready: &BTreeSet<String>,
    routes: &ArcSwap<RouteSnapshot>,
) -> RoutesReconciled {
    let current = routes.load();
    let all = peers(me, nodes, not_ready);
    // The common case, kept cheap: the table already routes to every peer,
    // so none is rejected.
    if current.peers() == all.as_slice() && current.cluster() == cluster {
        return RoutesReconciled {
            published: false,
            rejected: Vec::new(),
            failed: false,
        };
    }
    let (peers, rejected) = admit_peers(current.local_subnet(), cluster, all, current.peers());
    if current.peers() == peers.as_slice() && current.cluster() == cluster {
        return RoutesReconciled {
            published: false,
            rejected,
            failed: false,
        };
    }
    match RouteSnapshot::build(current.local_subnet(), cluster, peers) {
        Ok(snap) => {
            routes.store(Arc::new(snap));
            RoutesReconciled {
                published: true,
                rejected,
                failed: false,
            }
        }
        // Unreachable: the admitted peers built together once already.
        Err(e) => {
            tracing::error!(error = %e, "route table rejected; keeping the previous one");
            RoutesReconciled {
                published: false,
                rejected,
                failed: true,
            }
        }
    }
}

/// Reconciles the route table whenever the cluster changes, forever: the
/// agent's one [`ClusterCache`] does the listing and watching. Nodes left
/// out are logged when the set changes and listed in `problems`.
pub fn watch_routes(
    cache: Arc<ClusterCache>,
    me: String,
    cluster: Ipv4Cidr,
    routes: Arc<ArcSwap<RouteSnapshot>>,
    problems: Arc<Problems>,
    reflected: Arc<Reflected>,
) {
    let changes = cache.subscribe();
    let mut reported: Vec<(String, String)> = Vec::new();
    loop {
        let state = cache.snapshot();
        let done = reconcile_routes(&me, cluster, &state.nodes, &state.not_ready_nodes, &routes);
        if !done.failed {
            reflected.routes_at(state.revision);
        }
        if done.published {
            let peers: Vec<String> = routes
                .load()
                .peers()
                .iter()
                .map(|p| format!("{}={}@{}", p.name, p.subnet, p.underlay_ip))
                .collect();
            tracing::info!(?peers, "routes updated");
        }
        let mut now: Vec<(String, String)> = done
            .rejected
            .iter()
            .map(|(name, e)| {
                (
                    format!("nodes/{name}"),
                    format!("left out of the route table: {e}"),
                )
            })
            .collect();
        now.extend(state.not_ready_nodes.iter().filter(|n| **n != me).map(|n| {
            (
                format!("nodes/{n}"),
                "NotReady (liveness lease missing or expired): route withdrawn".to_owned(),
            )
        }));
        if now != reported {
            for (object, reason) in now.iter().filter(|p| !reported.contains(p)) {
                tracing::warn!(%object, %reason, "node skipped; routing to the rest");
            }
            problems.set(Source::Routes, now.clone());
            reported = now;
        }
        if changes.recv().is_err() {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    fn node(name: &str, subnet: &str, underlay: [u8; 4]) -> Node {
        let mut n = blank(name);
        n.spec.pod_cidr = Some(cidr(subnet));
        n.status.underlay_ip = Some(Ipv4Addr::from(underlay));
        n.status.vtep_mac = Some(MacAddr([0x0a, 0x58, 198, 18, 0, underlay[3]]));
        n
    }

    fn none() -> BTreeSet<String> {
        BTreeSet::new()
    }

    fn nodes(list: &[Node]) -> BTreeMap<String, Node> {
        list.iter()
            .map(|n| (n.metadata.name.clone(), n.clone()))
            .collect()
    }

    #[test]
    fn routes_are_published_only_when_they_change() {
        let routes = ArcSwap::from_pointee(RouteSnapshot::empty_for(cidr("10.244.1.0/24")));
        let cluster = cidr("10.244.0.0/16");
        let me = node("node1", "10.244.1.0/24", [198, 18, 0, 1]);
        let two = node("node2", "10.244.2.0/24", [198, 18, 0, 2]);
        let mut all = nodes(&[me.clone(), two.clone()]);
        let published = || RoutesReconciled {
            published: true,
            rejected: Vec::new(),
            failed: false,
        };
        let unchanged = || RoutesReconciled {
            published: false,
            rejected: Vec::new(),
            failed: false,
        };

        assert_eq!(
            reconcile_routes("node1", cluster, &all, &none(), &routes),
            published()
        );
        let first = routes.load_full();
        assert_eq!(first.local_subnet(), cidr("10.244.1.0/24"));
        assert_eq!(first.peers().len(), 1);

        // Same nodes; then a label on a node: nothing moves.
        assert_eq!(
            reconcile_routes("node1", cluster, &all, &none(), &routes),
            unchanged()
        );
        all.get_mut("node2")
            .unwrap()
            .metadata
            .labels
            .insert("zone".into(), "b".into());
        assert_eq!(
            reconcile_routes("node1", cluster, &all, &none(), &routes),
            unchanged()
        );
        // A node still registering (no underlay address yet) is no peer.
        let mut half = node("node3", "10.244.3.0/24", [198, 18, 0, 3]);
        half.status.underlay_ip = None;
        all.insert("node3".into(), half);
        assert_eq!(
            reconcile_routes("node1", cluster, &all, &none(), &routes),
            unchanged()
        );
        assert!(Arc::ptr_eq(&first, &routes.load_full()));

        // node3 gets its address: a new peer, a new snapshot.
        all.insert(
            "node3".into(),
            node("node3", "10.244.3.0/24", [198, 18, 0, 3]),
        );
        assert_eq!(
            reconcile_routes("node1", cluster, &all, &none(), &routes),
            published()
        );
        assert_eq!(routes.load().peers().len(), 2);
        assert_eq!(routes.load().local_subnet(), first.local_subnet());
    }

    #[test]
    fn a_node_the_table_cannot_hold_is_left_out_and_the_rest_routed() {
        let routes = ArcSwap::from_pointee(RouteSnapshot::empty_for(cidr("10.244.1.0/24")));
        let cluster = cidr("10.244.0.0/16");
        let mut all = nodes(&[
            node("node2", "10.244.2.0/24", [198, 18, 0, 2]),
            // Claims this node's subnet.
            node("node3", "10.244.1.0/24", [198, 18, 0, 3]),
            node("node4", "10.244.4.0/24", [198, 18, 0, 4]),
        ]);
        let done = reconcile_routes("node1", cluster, &all, &none(), &routes);
        assert!(done.published);
        let names: Vec<_> = routes
            .load()
            .peers()
            .iter()
            .map(|p| p.name.clone())
            .collect();
        assert_eq!(names, ["node2", "node4"]);
        assert_eq!(done.rejected.len(), 1);
        assert_eq!(done.rejected[0].0, "node3");
        assert!(matches!(done.rejected[0].1, RouteError::Overlap { .. }));

        // A newcomer claiming a routed node's subnet or underlay address
        // does not push it out, whatever its name.
        all.insert(
            "a-dup".into(),
            node("a-dup", "10.244.2.0/25", [198, 18, 0, 9]),
        );
        all.insert(
            "b-dup".into(),
            node("b-dup", "10.244.9.0/24", [198, 18, 0, 4]),
        );
        let before = routes.load_full();
        let done = reconcile_routes("node1", cluster, &all, &none(), &routes);
        assert!(!done.published);
        assert!(Arc::ptr_eq(&before, &routes.load_full()));
        let rejected: Vec<_> = done.rejected.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(rejected, ["a-dup", "b-dup", "node3"]);
        assert!(matches!(
            done.rejected[1].1,
            RouteError::DuplicateUnderlay { .. }
        ));

        // Fixed: node3 moves to a free subnet and is routed.
        all.insert(
            "node3".into(),
            node("node3", "10.244.3.0/24", [198, 18, 0, 3]),
        );
        let done = reconcile_routes("node1", cluster, &all, &none(), &routes);
        assert!(done.published);
        assert_eq!(routes.load().peers().len(), 3);
        assert_eq!(done.rejected.len(), 2);
    }
}
