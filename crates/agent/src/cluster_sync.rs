//! The agent's side of the cluster store: it registers this node (pod subnet,
//! underlay address, VTEP MAC) and keeps the data plane's route table in step
//! with every Node in the store.
//!
//! Routes are rebuilt whole from the current Node list on every change and
//! published into the pipeline's `ArcSwap`: the data plane never waits for
//! this, and never sees half a table.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tapestry_cluster::store::{Store, StoreError};
use tapestry_cluster::ClusterCache;
use tapestry_cluster::{
    Ipv4Cidr, MacAddr, Node, NodeSpec, NodeStatus, Object, ObjectMeta, KUBELET_LABEL,
};
use tapestry_dataplane::{Peer, RouteSnapshot};

/// Writes (or updates) `nodes/NAME` with this node's subnet and tunnel endpoint.
pub fn register(
    store: &dyn Store,
    name: &str,
    subnet: Ipv4Cidr,
    underlay_ip: Ipv4Addr,
    vtep_mac: MacAddr,
) -> Result<(), String> {
    let key = format!("nodes/{name}");
    for _ in 0..20 {
        let current = store.get(&key).map_err(|e| e.to_string())?;
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
        let bytes = Object::Node(node).to_json().map_err(|e| e.to_string())?;
        match store.compare_and_swap(&key, rev, &bytes) {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!(
        "cannot register {key}: too many concurrent writers"
    ))
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
                vtep_mac: tapestry_dataplane::MacAddr(n.status.vtep_mac?.0),
                subnet: subnet.network(),
                prefix_len: subnet.prefix_len(),
            })
        })
        .collect()
}

/// Publishes a new route snapshot whenever the cluster's Nodes change, forever:
/// the agent's one [`ClusterCache`] does the listing and watching.
pub fn watch_routes(
    cache: Arc<ClusterCache>,
    me: String,
    local: Ipv4Cidr,
    cluster: Ipv4Cidr,
    routes: Arc<ArcSwap<RouteSnapshot>>,
) {
    let changes = cache.subscribe();
    let mut last: Option<BTreeMap<String, Node>> = None;
    loop {
        let state = cache.snapshot();
        if last.as_ref() != Some(&state.nodes) {
            publish(&me, local, cluster, &state.nodes, &routes);
            last = Some(state.nodes.clone());
        }
        if changes.recv().is_err() {
            return;
        }
    }
}

fn publish(
    me: &str,
    local: Ipv4Cidr,
    cluster: Ipv4Cidr,
    nodes: &BTreeMap<String, Node>,
    routes: &ArcSwap<RouteSnapshot>,
) {
    let peers = peers(me, nodes);
    let names: Vec<String> = peers
        .iter()
        .map(|p| format!("{}={}/{}@{}", p.name, p.subnet, p.prefix_len, p.underlay_ip))
        .collect();
    match RouteSnapshot::build(
        local.network(),
        local.prefix_len(),
        cluster.network(),
        cluster.prefix_len(),
        peers,
    ) {
        Ok(snap) => {
            routes.store(Arc::new(snap));
            tracing::info!(peers = ?names, "routes updated");
        }
        Err(e) => {
            tracing::error!(error = %e, peers = ?names, "route table rejected; keeping the previous one")
        }
    }
}
