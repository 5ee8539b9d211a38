//! Tests of the cluster cache against real stores: first list, live
//! updates, deletes, subscriber wakeups, relisting after a broken watch.
// Tests measure elapsed time to bound their waits.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::time::Instant;

use crossbeam_channel::Sender;

use super::*;
use crate::manifest::parse_manifests;
use crate::status::status_key;
use crate::store::{DirStore, DirStoreOptions, MemStore};

/// Longest any test waits for the cache; a healthy cache takes
/// milliseconds, the bound is for a loaded CI machine.
const WAIT: Duration = Duration::from_secs(5);

const WEB_POD: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: web-a, labels: {app: web}}
spec:
  nodeName: node1
  containers:
  - name: web
    ports: [{name: http, containerPort: 8080}]
";

const WEB_SVC: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
";

const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node1}\n";

fn put_object(store: &dyn Store, text: &str) {
    for obj in parse_manifests(text, "test").unwrap() {
        store.put(&obj.key(), &obj.to_json().unwrap()).unwrap();
    }
}

fn put_status(store: &dyn Store, ready: bool) {
    let status = PodRunStatus {
        node: "node1".into(),
        pod_ip: Some("10.244.1.2".parse().unwrap()),
        phase: "Running".into(),
        ready,
        message: String::new(),
    };
    store
        .put(
            &status_key("default", "web-a"),
            &serde_json::to_vec(&status).unwrap(),
        )
        .unwrap();
}

/// Waits, woken by the cache's own notifications, until `cond` holds for
/// a snapshot; panics with the last snapshot after [`WAIT`].
fn wait_for(
    cache: &ClusterCache,
    rx: &Receiver<u64>,
    what: &str,
    cond: impl Fn(&ClusterState) -> bool,
) -> Arc<ClusterState> {
    let deadline = Instant::now() + WAIT;
    loop {
        let snap = cache.snapshot();
        if cond(&snap) {
            return snap;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for {what}: {snap:#?}");
        // A wakeup or the deadline; either way look again.
        let _ = rx.recv_timeout(left);
    }
}

fn temp_store(tag: &str) -> (Arc<dyn Store>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tapestry-cache-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = DirStoreOptions {
        sync: false,
        max_events: 10_000,
    };
    (Arc::new(DirStore::open_with(&dir, opts).unwrap()), dir)
}

#[test]
fn endpoints_appear_and_disappear_with_the_store() {
    let (store, dir) = temp_store("live");
    // Something before the start: found by the first list.
    put_object(&*store, NODE);
    let cache = ClusterCache::start(Arc::clone(&store)).unwrap();
    let first = cache.snapshot();
    assert_eq!(first.generation, 1);
    assert!(first.nodes.contains_key("node1"));
    assert!(first.endpoints("default/web").is_none());
    let rx = cache.subscribe();

    // Another handle on the same directory, as another process would be.
    let writer = DirStore::open_with(
        &dir,
        DirStoreOptions {
            sync: false,
            max_events: 10_000,
        },
    )
    .unwrap();
    let t = Instant::now();
    put_object(&writer, WEB_POD);
    put_object(&writer, WEB_SVC);
    put_status(&writer, true);
    let snap = wait_for(&cache, &rx, "a ready endpoint", |s| {
        s.endpoints("default/web")
            .is_some_and(|e| e.addresses.len() == 1)
    });
    let latency = t.elapsed();
    eprintln!("store change -> snapshot: {latency:?}");
    assert!(snap.generation > first.generation);
    assert!(snap.revision >= writer.revision().unwrap());
    let ep = snap.endpoints("default/web").unwrap();
    assert_eq!(ep.addresses[0].ip.to_string(), "10.244.1.2");
    assert_eq!(ep.addresses[0].ports[0].port, 8080);
    assert_eq!(snap.all_endpoints()["default/web"], ep);
    assert_eq!(snap.pods_with_status().len(), 1);
    assert!(snap.pods_with_status()[0].1.as_ref().unwrap().ready);

    // Not ready: moves to not_ready.
    put_status(&writer, false);
    wait_for(&cache, &rx, "a not-ready endpoint", |s| {
        s.endpoints("default/web")
            .is_some_and(|e| e.addresses.is_empty() && e.not_ready.len() == 1)
    });

    // The pod goes: no endpoints left; the service goes: no entry at all.
    writer.delete("pods/default/web-a").unwrap();
    wait_for(&cache, &rx, "no endpoints", |s| {
        s.endpoints("default/web").is_some_and(|e| e.is_empty())
    });
    writer.delete("services/default/web").unwrap();
    let snap = wait_for(&cache, &rx, "no service", |s| s.services.is_empty());
    assert!(snap.endpoints("default/web").is_none());
    // An old snapshot is never changed under its reader.
    assert!(first.services.is_empty() && first.generation == 1);
    drop(cache);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn slow_subscriber_holds_one_wakeup() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let cache = ClusterCache::start(Arc::clone(&store)).unwrap();
    let rx = cache.subscribe();
    let dropped = cache.subscribe();
    drop(dropped);
    for i in 0..20 {
        put_object(
            &*store,
            &format!("apiVersion: v1\nkind: Node\nmetadata: {{name: n{i}}}\n"),
        );
    }
    let snap = wait_for(&cache, &rx, "20 nodes", |s| s.nodes.len() == 20);
    // Never more than one wakeup queued, however many publications.
    assert!(rx.len() <= 1);
    let _ = rx.try_recv();
    assert!(rx.try_recv().is_err());
    assert!(snap.generation >= 2);
    // The dropped subscriber was pruned on publication.
    assert_eq!(cache.shared.subscribers.lock().len(), 1);
}

#[test]
fn undecodable_values_are_reported_not_served() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    put_object(&*store, WEB_SVC);
    let cache = ClusterCache::start(Arc::clone(&store)).unwrap();
    assert_eq!(cache.snapshot().services.len(), 1);
    let rx = cache.subscribe();
    store.put("services/default/web", b"not json").unwrap();
    store.put("nodes/bad", br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"},"spec":{"containers":[{"name":"c"}]}}"#).unwrap();
    let snap = wait_for(&cache, &rx, "two decode errors", |s| {
        s.decode_errors.len() == 2
    });
    assert!(snap.services.is_empty() && snap.nodes.is_empty());
    assert!(
        snap.decode_errors["nodes/bad"]
            == DecodeError::WrongKind {
                found: "Pod",
                expected: "Node"
            },
        "{:?}",
        snap.decode_errors
    );
    // Other keys are not the cache's business.
    store.put("leases/10.244.1.0-24", b"x").unwrap();
    put_object(&*store, WEB_SVC);
    let snap = wait_for(&cache, &rx, "the service back", |s| s.services.len() == 1);
    assert_eq!(snap.decode_errors.len(), 1);
    assert!(
        snap.decode_errors["nodes/bad"]
            .to_string()
            .contains("expected a Node"),
        "{:?}",
        snap.decode_errors
    );
}

/// A store whose watches the test breaks on purpose.
struct BreakableStore {
    inner: MemStore,
    /// Senders feeding the watches handed out; the test pushes errors.
    feeds: parking_lot::Mutex<Vec<Sender<Result<Event, StoreError>>>>,
}

impl Store for BreakableStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.get(key)
    }
    fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError> {
        self.inner.list(prefix)
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError> {
        self.inner.put(key, value)
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: &[u8],
    ) -> Result<Revision, StoreError> {
        self.inner.compare_and_swap(key, expected, value)
    }
    fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        self.inner.delete(key)
    }
    fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<Revision, StoreError> {
        self.inner.compare_and_delete(key, expected)
    }
    /// A watch that delivers nothing until the test sends into it.
    fn watch(&self, _prefix: &str, _after: Revision) -> Result<Watch, StoreError> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.feeds.lock().push(tx);
        Ok(Watch::new(rx, None))
    }
    fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision()
    }
}

#[test]
fn broken_watch_relists() {
    let store = Arc::new(BreakableStore {
        inner: MemStore::new(),
        feeds: parking_lot::Mutex::new(Vec::new()),
    });
    let cache = ClusterCache::start(Arc::clone(&store) as Arc<dyn Store>).unwrap();
    let rx = cache.subscribe();
    // A change the (silent) watch never delivers...
    put_object(&store.inner, WEB_POD);
    assert!(cache.snapshot().pods.is_empty());
    // ...is found by the relist after the watch reports compaction.
    let feed = store.feeds.lock()[0].clone();
    feed.send(Err(StoreError::Compacted {
        requested: 0,
        oldest: 5,
    }))
    .unwrap();
    let snap = wait_for(&cache, &rx, "the relisted pod", |s| s.pods.len() == 1);
    assert_eq!(snap.relists, 1);
    assert!(snap.pods.contains_key("default/web-a"));
    // The cache watches again, from the relisted revision.
    assert_eq!(store.feeds.lock().len(), 2);
}

#[test]
fn backoff_doubles_to_a_cap() {
    assert_eq!(backoff(1), FIRST_BACKOFF);
    assert_eq!(backoff(2), FIRST_BACKOFF * 2);
    assert_eq!(backoff(3), FIRST_BACKOFF * 4);
    assert_eq!(backoff(40), MAX_BACKOFF);
    assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
}

#[test]
fn drop_stops_promptly() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let cache = ClusterCache::start(store).unwrap();
    let t = Instant::now();
    drop(cache);
    assert!(t.elapsed() < WAIT);
}

#[test]
fn namespaces_and_network_policies_are_cached() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let cache = ClusterCache::start(Arc::clone(&store)).unwrap();
    let rx = cache.subscribe();
    // No Namespace object yet: the name label alone.
    assert_eq!(
        cache.snapshot().namespace_labels("shop"),
        BTreeMap::from([("kubernetes.io/metadata.name".into(), "shop".into())])
    );
    put_object(
        &*store,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: a}}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: shop}\n\
         spec: {podSelector: {}}\n",
    );
    let snap = wait_for(&cache, &rx, "a namespace and a policy", |s| {
        s.namespaces.contains_key("shop") && s.network_policies.contains_key("shop/deny")
    });
    // Stored without the name label (not through admission): still there.
    assert_eq!(
        snap.namespace_labels("shop"),
        BTreeMap::from([
            ("kubernetes.io/metadata.name".into(), "shop".into()),
            ("team".into(), "a".into())
        ])
    );
    store.delete("networkpolicies/shop/deny").unwrap();
    store.delete("namespaces/shop").unwrap();
    wait_for(&cache, &rx, "both gone", |s| {
        s.namespaces.is_empty() && s.network_policies.is_empty()
    });
}

/// A corrupt line in the store's event log (here the Node's) costs the
/// cache nothing: the first list reads key files, the watch skips the line,
/// and later changes arrive. Before, every watch broke on that line, so the
/// cache relisted forever and never saw another change.
#[test]
fn a_corrupt_log_line_does_not_stop_the_cache() {
    let (store, dir) = temp_store("badline");
    put_object(&*store, NODE);
    put_object(&*store, WEB_POD);
    let log = dir.join("log").join("events.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let damaged: Vec<&str> = text
        .lines()
        .map(|l| {
            if l.contains("\"nodes/node1\"") {
                "{\"rev\":1,\"ke"
            } else {
                l
            }
        })
        .collect();
    std::fs::write(&log, damaged.join("\n") + "\n").unwrap();
    let cache = ClusterCache::start(Arc::clone(&store)).unwrap();
    let rx = cache.subscribe();
    assert!(cache.snapshot().nodes.contains_key("node1"));
    put_object(&*store, WEB_SVC);
    let snap = wait_for(&cache, &rx, "the service", |s| {
        s.services.contains_key("default/web")
    });
    assert_eq!((snap.pods.len(), snap.relists), (1, 0));
    drop(cache);
    std::fs::remove_dir_all(&dir).unwrap();
}

// --- node liveness ----------------------------------------------------------------

const AGENT_NODES: &str = "\
apiVersion: v1
kind: Node
metadata: {name: node1, labels: {node.tapestry.io/kubelet: \"true\"}}
---
apiVersion: v1
kind: Node
metadata: {name: node2, labels: {node.tapestry.io/kubelet: \"true\"}}
";

fn lease(store: &dyn Store, node: &str, at: SystemTime) {
    crate::liveness::renew(store, node, at).unwrap();
}

fn ready_ips(s: &ClusterState) -> Vec<String> {
    s.endpoints("default/web")
        .map(|e| e.addresses.iter().map(|a| a.pod.clone()).collect())
        .unwrap_or_default()
}

/// Expiry on a hand-moved clock: node1 (web-a's node) stops renewing, is
/// NotReady once its lease runs out and web-a leaves the ready endpoints;
/// a renewal makes it Ready again. A renewal that moves nothing publishes
/// nothing; a deleted lease counts as expired.
#[test]
fn a_node_whose_lease_runs_out_is_not_ready_and_its_pods_leave_endpoints() {
    use crate::liveness::ManualClock;
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let clock = Arc::new(ManualClock::new(t0));
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    put_object(&*store, AGENT_NODES);
    put_object(&*store, WEB_POD);
    put_object(&*store, WEB_SVC);
    put_status(&*store, true);
    lease(&*store, "node1", t0);
    lease(&*store, "node2", t0);
    let cache = ClusterCache::start_with_clock(Arc::clone(&store), clock.clone()).unwrap();
    let rx = cache.subscribe();
    let first = cache.snapshot();
    assert!(first.not_ready_nodes.is_empty());
    assert_eq!(ready_ips(&first), ["web-a"]);

    // node2 renews at t0+5 s: nothing published for it. A namespace written
    // after it is the next generation, so the renewal made none.
    clock.advance(Duration::from_secs(5));
    lease(&*store, "node2", clock.now());
    put_object(
        &*store,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: marker}\n",
    );
    let marked = wait_for(&cache, &rx, "the marker namespace", |s| {
        s.namespaces.contains_key("marker")
    });
    assert_eq!(marked.generation, first.generation + 1);

    // t0+7 s: node1's lease (6 s + 1 s of skew) has run out; node2's has not.
    clock.advance(Duration::from_secs(2));
    cache.recheck();
    let expired = wait_for(&cache, &rx, "node1 NotReady", |s| s.node_not_ready("node1"));
    assert_eq!(expired.not_ready_nodes.len(), 1);
    let ep = expired.endpoints("default/web").unwrap();
    assert!(ep.addresses.is_empty());
    assert_eq!(ep.not_ready[0].pod, "web-a");
    // The pod's own status is untouched: only the view of it changed.
    assert!(expired.pod_status["default/web-a"].ready);

    // node1's agent is back and renews: Ready, web-a an endpoint again.
    lease(&*store, "node1", clock.now());
    let back = wait_for(&cache, &rx, "node1 Ready", |s| s.not_ready_nodes.is_empty());
    assert_eq!(ready_ips(&back), ["web-a"]);

    // A lease deleted (as etcd does when its TTL runs out) is an expired one.
    store.delete("nodeleases/node2").unwrap();
    wait_for(&cache, &rx, "node2 NotReady", |s| s.node_not_ready("node2"));
    // An unreadable lease too, and it is reported.
    store.put("nodeleases/node1", b"{garbage").unwrap();
    let bad = wait_for(&cache, &rx, "node1 NotReady on a bad lease", |s| {
        s.node_not_ready("node1")
    });
    assert!(bad.decode_errors.contains_key("nodeleases/node1"));
}

/// With the system clock and no store event at all, the worker's own timer
/// notices a lease that runs out.
#[test]
fn expiry_is_noticed_without_any_store_event() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    put_object(&*store, AGENT_NODES);
    let now = SystemTime::now();
    lease(&*store, "node1", now);
    // node2's lease runs out 300 ms from now.
    let old = now - crate::liveness::LEASE_DURATION - crate::liveness::CLOCK_SKEW
        + Duration::from_millis(300);
    lease(&*store, "node2", old);
    let cache = ClusterCache::start(Arc::clone(&store)).unwrap();
    let rx = cache.subscribe();
    assert!(cache.snapshot().not_ready_nodes.is_empty());
    let t = Instant::now();
    let snap = wait_for(&cache, &rx, "node2 NotReady by the timer", |s| {
        s.node_not_ready("node2")
    });
    // The timer aims just past the expiry; well under the 1 s recheck bound.
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert!(!snap.node_not_ready("node1"));
}
