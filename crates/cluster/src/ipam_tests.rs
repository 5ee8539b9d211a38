//! Tests of subnet leases and pod IP allocation.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::HashSet;

use super::*;
use crate::store::{DirStore, DirStoreOptions, MemStore};

fn cidr(s: &str) -> Ipv4Cidr {
    Ipv4Cidr::parse(s).unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn dir_store(tag: &str) -> (Arc<dyn Store>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tapestry-ipam-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = DirStoreOptions {
        sync: false,
        max_events: 10_000,
    };
    (Arc::new(DirStore::open_with(&dir, opts).unwrap()), dir)
}

#[test]
fn default_cluster_cidr() {
    assert_eq!(DEFAULT_CLUSTER_CIDR.to_string(), "10.244.0.0/16");
    assert_eq!(lease_key(&cidr("10.244.1.0/24")), "leases/10.244.1.0-24");
}

#[test]
fn leases_lowest_free_skipping_index_zero_and_keeps_them() {
    let s = MemStore::new();
    let c = DEFAULT_CLUSTER_CIDR;
    assert_eq!(
        lease_node_subnet(&s, "node1", c, 24).unwrap(),
        cidr("10.244.1.0/24")
    );
    assert_eq!(
        lease_node_subnet(&s, "node2", c, 24).unwrap(),
        cidr("10.244.2.0/24")
    );
    // Asking again (an agent restart) returns the same lease.
    assert_eq!(
        lease_node_subnet(&s, "node1", c, 24).unwrap(),
        cidr("10.244.1.0/24")
    );
    let leases = list_leases(&s).unwrap();
    assert_eq!(leases.len(), 2);
    assert_eq!(leases[&cidr("10.244.2.0/24")].0, "node2");
    // Released blocks are reused.
    assert_eq!(
        release_node_subnet(&s, "node1").unwrap(),
        [cidr("10.244.1.0/24")]
    );
    assert_eq!(
        lease_node_subnet(&s, "node3", c, 24).unwrap(),
        cidr("10.244.1.0/24")
    );
}

#[test]
fn lease_survives_store_reopen() {
    let (s, dir) = dir_store("reopen");
    let got = lease_node_subnet(&*s, "node1", DEFAULT_CLUSTER_CIDR, 24).unwrap();
    drop(s);
    let opts = DirStoreOptions {
        sync: false,
        max_events: 10_000,
    };
    let s2 = DirStore::open_with(&dir, opts).unwrap();
    lease_node_subnet(&s2, "node2", DEFAULT_CLUSTER_CIDR, 24).unwrap();
    assert_eq!(
        lease_node_subnet(&s2, "node1", DEFAULT_CLUSTER_CIDR, 24).unwrap(),
        got
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn node_object_pod_cidr_is_claimed() {
    let s = MemStore::new();
    let node = |name: &str, podcidr: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}"}},"spec":{{"podCIDR":"{podcidr}"}}}}"#
        )
    };
    s.put("nodes/n7", node("n7", "10.244.7.0/24").as_bytes())
        .unwrap();
    assert_eq!(
        lease_node_subnet(&s, "n7", DEFAULT_CLUSTER_CIDR, 24).unwrap(),
        cidr("10.244.7.0/24")
    );
    // Another node asking for the same block is refused, naming the holder.
    s.put("nodes/n8", node("n8", "10.244.7.0/24").as_bytes())
        .unwrap();
    let err = lease_node_subnet(&s, "n8", DEFAULT_CLUSTER_CIDR, 24).unwrap_err();
    assert!(
        matches!(&err, IpamError::PodCidrTaken { holder, .. } if holder == "n7"),
        "{err}"
    );
    s.put("nodes/n9", node("n9", "10.99.0.0/24").as_bytes())
        .unwrap();
    let err = lease_node_subnet(&s, "n9", DEFAULT_CLUSTER_CIDR, 24).unwrap_err();
    assert!(
        err.to_string()
            .contains("not a /24 inside cluster CIDR 10.244.0.0/16"),
        "{err}"
    );
    // Automatic leases skip the claimed block.
    for i in 1..=7 {
        let got = lease_node_subnet(&s, &format!("auto{i}"), DEFAULT_CLUSTER_CIDR, 24).unwrap();
        assert_ne!(got, cidr("10.244.7.0/24"));
    }
}

#[test]
fn exhaustion_and_bad_prefix() {
    let s = MemStore::new();
    let c = cidr("10.0.0.0/22");
    for i in 1..=3 {
        lease_node_subnet(&s, &format!("n{i}"), c, 24).unwrap();
    }
    let err = lease_node_subnet(&s, "n4", c, 24).unwrap_err();
    assert!(
        matches!(err, IpamError::SubnetsExhausted { available: 3, .. }),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("no free /24 left in cluster CIDR 10.0.0.0/22"));
    assert!(matches!(
        lease_node_subnet(&s, "x", c, 16),
        Err(IpamError::BadNodePrefix { .. })
    ));
    assert!(matches!(
        lease_node_subnet(&s, "x", c, 31),
        Err(IpamError::BadNodePrefix { .. })
    ));
}

#[test]
fn racing_agents_get_distinct_subnets() {
    let (s, dir) = dir_store("race");
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                lease_node_subnet(&*s, &format!("node{i}"), DEFAULT_CLUSTER_CIDR, 24).unwrap()
            })
        })
        .collect();
    let got: HashSet<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(got.len(), 8);
    assert!(!got.contains(&cidr("10.244.0.0/24")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gateway_and_host_port() {
    let n = cidr("10.244.1.0/24");
    assert_eq!(PodIpam::gateway(&n), Some(ip("10.244.1.1")));
    assert_eq!(PodIpam::host_port_ip(&n), Some(ip("10.244.1.254")));
}

#[test]
fn allocates_idempotently_and_never_reserved() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let ipam = PodIpam::new(Arc::clone(&store), "node1", cidr("10.244.1.0/24"));
    let a = ipam.allocate("pods/default/a").unwrap();
    assert_eq!(a, ip("10.244.1.2"));
    assert_eq!(ipam.allocate("pods/default/a").unwrap(), a);
    assert_eq!(ipam.lookup("pods/default/a").unwrap(), Some(a));
    let mut all = HashSet::from([a]);
    for i in 0..251 {
        assert!(all.insert(ipam.allocate(&format!("pods/default/p{i}")).unwrap()));
    }
    for reserved in ["10.244.1.0", "10.244.1.1", "10.244.1.254", "10.244.1.255"] {
        assert!(!all.contains(&ip(reserved)), "{reserved}");
    }
    let err = ipam.allocate("pods/default/one-too-many").unwrap_err();
    assert!(
        matches!(err, IpamError::PodIpsExhausted { in_use: 252, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("node node1"), "{err}");
    assert_eq!(
        store.get("ips/node1/10.244.1.2").unwrap().unwrap().value,
        br#"{"pod":"pods/default/a"}"#
    );
}

#[test]
fn persists_across_restart_and_releases() {
    let (store, dir) = dir_store("pods");
    let subnet = cidr("10.244.3.0/29"); // .2 to .5 assignable
    let first = PodIpam::new(Arc::clone(&store), "node3", subnet);
    let a = first.allocate("pods/default/a").unwrap();
    let b = first.allocate("pods/default/b").unwrap();
    drop(first);
    // A restarted agent sees the same allocations.
    let ipam = PodIpam::new(Arc::clone(&store), "node3", subnet);
    assert_eq!(ipam.allocate("pods/default/a").unwrap(), a);
    assert_eq!(ipam.lookup("pods/default/b").unwrap(), Some(b));
    let c = ipam.allocate("pods/default/c").unwrap();
    let d = ipam.allocate("pods/default/d").unwrap();
    assert_eq!(
        [a, b, c, d],
        [
            ip("10.244.3.2"),
            ip("10.244.3.3"),
            ip("10.244.3.4"),
            ip("10.244.3.5")
        ]
    );
    assert!(ipam.allocate("pods/default/e").is_err());
    assert_eq!(ipam.release("pods/default/b").unwrap(), [b]);
    assert!(ipam.release("pods/default/b").unwrap().is_empty());
    assert_eq!(ipam.lookup("pods/default/b").unwrap(), None);
    assert_eq!(ipam.allocate("pods/default/e").unwrap(), b);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn round_robin_does_not_reuse_at_once() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let ipam = PodIpam::new(store, "n", cidr("10.244.1.0/24"));
    let a = ipam.allocate("pods/default/a").unwrap();
    ipam.release("pods/default/a").unwrap();
    let b = ipam.allocate("pods/default/b").unwrap();
    assert_ne!(a, b);
}

#[test]
fn custom_reserved_addresses() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let reserved = [ip("10.244.1.1"), ip("10.244.1.2"), ip("10.244.1.3")];
    let ipam = PodIpam::with_reserved(store, "n", cidr("10.244.1.0/24"), reserved);
    assert_eq!(ipam.allocate("pods/default/a").unwrap(), ip("10.244.1.4"));
}

#[test]
fn concurrent_allocators_never_share_an_ip() {
    let (store, dir) = dir_store("concurrent");
    let subnet = cidr("10.244.1.0/24");
    let shared = Arc::new(PodIpam::new(Arc::clone(&store), "node1", subnet));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            // Two threads share one allocator, two have their own (as two
            // processes would).
            let ipam = if t % 2 == 0 {
                Arc::clone(&shared)
            } else {
                Arc::new(PodIpam::new(Arc::clone(&store), "node1", subnet))
            };
            std::thread::spawn(move || {
                (0..25)
                    .map(|i| ipam.allocate(&format!("pods/default/t{t}-{i}")).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<Ipv4Addr> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), 100);
    assert_eq!(shared.allocations().unwrap().len(), 100);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A node that went NotReady (its liveness lease ran out) and comes back
/// takes its old subnet again, and its pods their old addresses; a node that
/// joined meanwhile did not take that subnet.
#[test]
fn a_node_back_from_not_ready_takes_its_old_subnet_again() {
    use crate::liveness::{judge, renew, Liveness, NodeLease, LEASE_DURATION};
    use crate::manifest::{Node, KUBELET_LABEL};
    use crate::meta::ObjectMeta;
    use std::time::{Duration, SystemTime};

    let (s, dir) = dir_store("notready");
    let c = DEFAULT_CLUSTER_CIDR;
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    assert_eq!(
        lease_node_subnet(&*s, "node1", c, 24).unwrap(),
        cidr("10.244.1.0/24")
    );
    assert_eq!(
        lease_node_subnet(&*s, "node2", c, 24).unwrap(),
        cidr("10.244.2.0/24")
    );
    renew(&*s, "node2", t0).unwrap();
    let ipam = PodIpam::new(Arc::clone(&s), "node2", cidr("10.244.2.0/24"));
    let pod_ip = ipam.allocate("pods/default/web").unwrap();

    // node2's agent dies: NotReady 7 s after its last renewal.
    let mut node2 = Node {
        metadata: ObjectMeta::named("node2"),
        spec: Default::default(),
        status: Default::default(),
    };
    node2
        .metadata
        .labels
        .insert(KUBELET_LABEL.into(), "true".into());
    let e = s.get("nodeleases/node2").unwrap().unwrap();
    let lease = NodeLease::decode(&e.key, &e.value).unwrap();
    let later = t0 + LEASE_DURATION + Duration::from_secs(5);
    assert!(matches!(
        judge(&node2, Some(&lease), later),
        Liveness::NotReady(_)
    ));

    // A node joining meanwhile gets a free block, not node2's.
    assert_eq!(
        lease_node_subnet(&*s, "node3", c, 24).unwrap(),
        cidr("10.244.3.0/24")
    );
    // node2's agent restarts (another process: the store reopened).
    drop(ipam);
    let s2: Arc<dyn Store> = Arc::new(DirStore::open(&dir).unwrap());
    assert_eq!(
        lease_node_subnet(&*s2, "node2", c, 24).unwrap(),
        cidr("10.244.2.0/24")
    );
    let ipam = PodIpam::new(Arc::clone(&s2), "node2", cidr("10.244.2.0/24"));
    assert_eq!(ipam.allocate("pods/default/web").unwrap(), pod_ip);
    renew(&*s2, "node2", later).unwrap();
    let e = s2.get("nodeleases/node2").unwrap().unwrap();
    let lease = NodeLease::decode(&e.key, &e.value).unwrap();
    assert!(matches!(
        judge(&node2, Some(&lease), later),
        Liveness::Ready { .. }
    ));
    drop((s, s2, ipam));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_reattached_pod_claims_its_address_again() {
    let s: Arc<dyn Store> = Arc::new(MemStore::new());
    let ipam = PodIpam::new(Arc::clone(&s), "node1", cidr("10.244.1.0/24"));
    let a = ipam.allocate("pods/default/a").unwrap();
    // Held already: nothing to do.
    assert!(ipam.claim("pods/default/a", a).unwrap());
    // Released behind the pod's back (its node was deleted): claimed again.
    ipam.release("pods/default/a").unwrap();
    assert!(ipam.claim("pods/default/a", a).unwrap());
    assert_eq!(ipam.lookup("pods/default/a").unwrap(), Some(a));
    // Not the pod's to claim: another pod's, outside the subnet, reserved.
    assert!(!ipam.claim("pods/default/b", a).unwrap());
    assert!(!ipam.claim("pods/default/b", ip("10.244.2.9")).unwrap());
    assert!(!ipam.claim("pods/default/b", ip("10.244.1.1")).unwrap());
    assert_eq!(ipam.allocations().unwrap().len(), 1);
}
