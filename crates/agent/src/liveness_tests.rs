//! Node liveness through the agent's own reconcilers, on a hand-moved clock:
//! a node that stops renewing is NotReady, its route is withdrawn and its pod
//! leaves the service's backends; a renewal brings both back; a renewal that
//! moves nothing publishes no new route or service table.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use crossbeam_channel::Receiver;
use tapestry_cluster::cache::{ClusterCache, ClusterState};
use tapestry_cluster::liveness::{renew, Clock};
use tapestry_cluster::status::status_key;
use tapestry_cluster::{parse_manifests, MemStore, PodRunStatus, Store};
use tapestry_dataplane::{RouteSnapshot, ServiceTable};

use crate::{cluster_sync, service_sync};

struct TestClock(parking_lot::Mutex<SystemTime>);

impl Clock for TestClock {
    fn now(&self) -> SystemTime {
        *self.0.lock()
    }
}

impl TestClock {
    fn advance(&self, by: Duration) {
        *self.0.lock() += by;
    }
}

fn node(name: &str, i: u8) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{node.tapestry.io/kubelet: \"true\"}}}}\n\
         spec: {{podCIDR: 10.244.{i}.0/24}}\nstatus: {{underlayIP: 198.18.0.{i}, vtepMAC: \"0a:58:c6:12:00:0{i}\"}}\n"
    )
}

fn pod(name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: web}}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: web, ports: [{{containerPort: 80}}]}}]}}\n"
    )
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n\
    spec: {clusterIP: 10.96.0.20, selector: {app: web}, ports: [{port: 80}]}\n";

fn put(store: &dyn Store, text: &str) {
    for obj in parse_manifests(text, "test").unwrap() {
        store.put(&obj.key(), &obj.to_json().unwrap()).unwrap();
    }
}

fn put_status(store: &dyn Store, pod: &str, node: &str, ip: &str) {
    let s = PodRunStatus {
        node: node.into(),
        pod_ip: Some(ip.parse().unwrap()),
        phase: "Running".into(),
        ready: true,
        message: String::new(),
    };
    store
        .put(
            &status_key("default", pod),
            &serde_json::to_vec(&s).unwrap(),
        )
        .unwrap();
}

fn wait_for(
    cache: &ClusterCache,
    rx: &Receiver<u64>,
    what: &str,
    cond: impl Fn(&ClusterState) -> bool,
) -> Arc<ClusterState> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let snap = cache.snapshot();
        if cond(&snap) {
            return snap;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for {what}");
        let _ = rx.recv_timeout(left);
    }
}

fn peer_names(routes: &ArcSwap<RouteSnapshot>) -> Vec<String> {
    routes
        .load()
        .peers()
        .iter()
        .map(|p| p.name.clone())
        .collect()
}

fn backends(table: &ArcSwap<ServiceTable>) -> Vec<String> {
    let t = table.load();
    t.entries()
        .flat_map(|e| e.backends.iter().map(|b| b.ip.to_string()))
        .collect()
}

#[test]
fn expiry_withdraws_routes_and_endpoints_and_renewal_restores_them() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let clock = Arc::new(TestClock(parking_lot::Mutex::new(t0)));
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    for (i, n) in ["node1", "node2", "node3"].iter().enumerate() {
        put(&*store, &node(n, u8::try_from(i + 1).unwrap()));
        renew(&*store, n, t0).unwrap();
    }
    put(&*store, &pod("web-b", "node2"));
    put(&*store, &pod("web-c", "node3"));
    put(&*store, SERVICE);
    put_status(&*store, "web-b", "node2", "10.244.2.2");
    put_status(&*store, "web-c", "node3", "10.244.3.2");
    let cache = ClusterCache::start_with_clock(Arc::clone(&store), clock.clone()).unwrap();
    let rx = cache.subscribe();
    let cluster = "10.244.0.0/16".parse().unwrap();
    let routes = ArcSwap::from_pointee(RouteSnapshot::empty_for("10.244.1.0/24".parse().unwrap()));
    let table = ArcSwap::from_pointee(ServiceTable::empty());
    let sync = |s: &ClusterState| {
        let r =
            cluster_sync::reconcile_routes("node1", cluster, &s.nodes, &s.not_ready_nodes, &routes);
        let t = service_sync::reconcile(s, &table);
        (r.published, t.published.is_some())
    };

    let first = cache.snapshot();
    assert_eq!(sync(&first), (true, true));
    assert_eq!(peer_names(&routes), ["node2", "node3"]);
    assert_eq!(backends(&table), ["10.244.2.2", "10.244.3.2"]);
    let (routes_before, table_before) = (routes.load_full(), table.load_full());

    // node1 and node2 renew at t0+4 s, node3 does not. The renewals publish
    // no cluster state (a marker written after them is the next one), and
    // reconciling publishes no table.
    clock.advance(Duration::from_secs(4));
    renew(&*store, "node1", clock.now()).unwrap();
    renew(&*store, "node2", clock.now()).unwrap();
    put(
        &*store,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: marker}\n",
    );
    let marked = wait_for(&cache, &rx, "the marker", |s| {
        s.namespaces.contains_key("marker")
    });
    assert_eq!(marked.generation, first.generation + 1);
    assert_eq!(sync(&marked), (false, false));
    assert!(Arc::ptr_eq(&routes_before, &routes.load_full()));
    assert!(Arc::ptr_eq(&table_before, &table.load_full()));

    // t0+7 s: node3's lease (6 s + 1 s of skew) has run out.
    clock.advance(Duration::from_secs(3));
    cache.recheck();
    let expired = wait_for(&cache, &rx, "node3 NotReady", |s| s.node_not_ready("node3"));
    assert_eq!(expired.not_ready_nodes.len(), 1);
    assert_eq!(sync(&expired), (true, true));
    assert_eq!(peer_names(&routes), ["node2"]);
    assert_eq!(backends(&table), ["10.244.2.2"]);

    // node3's agent comes back and renews: routed and serving again.
    renew(&*store, "node3", clock.now()).unwrap();
    let back = wait_for(&cache, &rx, "node3 Ready", |s| s.not_ready_nodes.is_empty());
    assert_eq!(sync(&back), (true, true));
    assert_eq!(peer_names(&routes), ["node2", "node3"]);
    assert_eq!(backends(&table), ["10.244.2.2", "10.244.3.2"]);
}

/// An expiry that moves no endpoint (a node without pods of any Service)
/// publishes no new service table; the route table does change.
#[test]
fn an_expiry_that_moves_no_endpoint_publishes_no_service_table() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let clock = Arc::new(TestClock(parking_lot::Mutex::new(t0)));
    for (i, n) in ["node1", "node2", "node3"].iter().enumerate() {
        put(&*store, &node(n, u8::try_from(i + 1).unwrap()));
        renew(&*store, n, t0).unwrap();
    }
    put(&*store, &pod("web-b", "node2"));
    put(&*store, SERVICE);
    put_status(&*store, "web-b", "node2", "10.244.2.2");
    let cache = ClusterCache::start_with_clock(Arc::clone(&store), clock.clone()).unwrap();
    let rx = cache.subscribe();
    let cluster = "10.244.0.0/16".parse().unwrap();
    let routes = ArcSwap::from_pointee(RouteSnapshot::empty_for("10.244.1.0/24".parse().unwrap()));
    let table = ArcSwap::from_pointee(ServiceTable::empty());
    let first = cache.snapshot();
    cluster_sync::reconcile_routes(
        "node1",
        cluster,
        &first.nodes,
        &first.not_ready_nodes,
        &routes,
    );
    assert!(service_sync::reconcile(&first, &table).published.is_some());
    let before = table.load_full();

    // node3, which runs nothing, stops renewing; the others renew.
    clock.advance(Duration::from_secs(4));
    renew(&*store, "node1", clock.now()).unwrap();
    renew(&*store, "node2", clock.now()).unwrap();
    clock.advance(Duration::from_secs(3));
    cache.recheck();
    let s = wait_for(&cache, &rx, "node3 NotReady", |s| s.node_not_ready("node3"));
    let r = cluster_sync::reconcile_routes("node1", cluster, &s.nodes, &s.not_ready_nodes, &routes);
    assert!(r.published);
    assert_eq!(peer_names(&routes), ["node2"]);
    assert_eq!(service_sync::reconcile(&s, &table).published, None);
    assert!(Arc::ptr_eq(&before, &table.load_full()));
}
