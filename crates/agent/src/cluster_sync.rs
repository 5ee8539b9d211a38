//! The agent's side of the cluster store: it registers this node (pod subnet,
//! underlay address, VTEP MAC) and keeps the data plane's route table in step
//! with every Node in the store.
//!
//! On every change the peers are computed again from the Node list and
//! compared with the published snapshot's; only a different route table is
//! built and published into the pipeline's `ArcSwap` (CONVENTIONS.md §17), so
//! a Node update that moves no route (a label, a heartbeat) publishes nothing.
//! The data plane never waits for this, and never sees half a table.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tapestry_cluster::store::{Store, StoreError};
use tapestry_cluster::ClusterCache;
use tapestry_cluster::{
    Ipv4Cidr, MacAddr, ManifestError, Node, NodeSpec, NodeStatus, Object, ObjectMeta, KUBELET_LABEL,
};
use tapestry_dataplane::{Peer, RouteError, RouteSnapshot};

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
/// VTEP MAC (a node still registering is skipped until it has all three).
pub fn peers(me: &str, nodes: &BTreeMap<String, Node>) -> Vec<Peer> {
    nodes
        .values()
        .filter(|n| n.metadata.name != me)
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutesReconciled {
    /// The published snapshot already routes to exactly these peers.
    Unchanged,
    /// A new snapshot was built and stored.
    Published,
}

/// Builds the route snapshot for `nodes` and publishes it into `routes` only if
/// it differs from the current one (peers, their order, the cluster CIDR).
///
/// The local subnet is the current snapshot's: the one the pipeline was built
/// with ([`tapestry_dataplane::PipelineConfig`]), so the pipeline and its route
/// table cannot disagree about it. A node list the table rejects (overlapping
/// subnets, a shared underlay address) is an error and leaves the current
/// snapshot in place.
pub fn reconcile_routes(
    me: &str,
    cluster: Ipv4Cidr,
    nodes: &BTreeMap<String, Node>,
    routes: &ArcSwap<RouteSnapshot>,
) -> Result<RoutesReconciled, RouteError> {
    let current = routes.load();
    let peers = peers(me, nodes);
    if current.peers() == peers.as_slice() && current.cluster() == cluster {
        return Ok(RoutesReconciled::Unchanged);
    }
    let snap = RouteSnapshot::build(current.local_subnet(), cluster, peers)?;
    routes.store(Arc::new(snap));
    Ok(RoutesReconciled::Published)
}

/// Reconciles the route table whenever the cluster changes, forever: the
/// agent's one [`ClusterCache`] does the listing and watching.
pub fn watch_routes(
    cache: Arc<ClusterCache>,
    me: String,
    cluster: Ipv4Cidr,
    routes: Arc<ArcSwap<RouteSnapshot>>,
) {
    let changes = cache.subscribe();
    loop {
        let state = cache.snapshot();
        let describe = || -> Vec<String> {
            peers(&me, &state.nodes)
                .iter()
                .map(|p| format!("{}={}@{}", p.name, p.subnet, p.underlay_ip))
                .collect()
        };
        match reconcile_routes(&me, cluster, &state.nodes, &routes) {
            Ok(RoutesReconciled::Unchanged) => {}
            Ok(RoutesReconciled::Published) => {
                tracing::info!(peers = ?describe(), "routes updated")
            }
            Err(e) => {
                tracing::error!(error = %e, peers = ?describe(), "route table rejected; keeping the previous one")
            }
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
        let published = || RoutesReconciled::Published;

        assert_eq!(
            reconcile_routes("node1", cluster, &all, &routes).unwrap(),
            published()
        );
        let first = routes.load_full();
        assert_eq!(first.local_subnet(), cidr("10.244.1.0/24"));
        assert_eq!(first.peers().len(), 1);

        // Same nodes; then a label on a node: nothing moves.
        assert_eq!(
            reconcile_routes("node1", cluster, &all, &routes).unwrap(),
            RoutesReconciled::Unchanged
        );
        all.get_mut("node2")
            .unwrap()
            .metadata
            .labels
            .insert("zone".into(), "b".into());
        assert_eq!(
            reconcile_routes("node1", cluster, &all, &routes).unwrap(),
            RoutesReconciled::Unchanged
        );
        // A node still registering (no underlay address yet) is no peer.
        let mut half = node("node3", "10.244.3.0/24", [198, 18, 0, 3]);
        half.status.underlay_ip = None;
        all.insert("node3".into(), half);
        assert_eq!(
            reconcile_routes("node1", cluster, &all, &routes).unwrap(),
            RoutesReconciled::Unchanged
        );
        assert!(Arc::ptr_eq(&first, &routes.load_full()));

        // node3 gets its address: a new peer, a new snapshot.
        all.insert(
            "node3".into(),
            node("node3", "10.244.3.0/24", [198, 18, 0, 3]),
        );
        assert_eq!(
            reconcile_routes("node1", cluster, &all, &routes).unwrap(),
            published()
        );
        assert_eq!(routes.load().peers().len(), 2);
        assert_eq!(routes.load().local_subnet(), first.local_subnet());
    }

    #[test]
    fn a_rejected_route_table_keeps_the_current_one() {
        let routes = ArcSwap::from_pointee(RouteSnapshot::empty_for(cidr("10.244.1.0/24")));
        let before = routes.load_full();
        // node2 claims this node's subnet.
        let all = nodes(&[node("node2", "10.244.1.0/24", [198, 18, 0, 2])]);
        assert!(matches!(
            reconcile_routes("node1", cidr("10.244.0.0/16"), &all, &routes),
            Err(RouteError::Overlap { .. })
        ));
        assert!(Arc::ptr_eq(&before, &routes.load_full()));
    }
}
