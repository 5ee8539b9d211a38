//! Tests of cluster IP allocation.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::HashSet;
use std::sync::{Arc, Barrier};

use super::*;
use crate::store::{DirStore, DirStoreOptions, MemStore};

fn cidr(s: &str) -> Ipv4Cidr {
    Ipv4Cidr::parse(s).unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

const CIDR: Ipv4Cidr = DEFAULT_SERVICE_CIDR;

#[test]
fn defaults() {
    assert_eq!(DEFAULT_SERVICE_CIDR.to_string(), "10.96.0.0/12");
    assert_eq!(CIDR.nth(CLUSTER_DNS_OFFSET), Some(CLUSTER_DNS_IP));
    assert_eq!(cluster_ip_key(CLUSTER_DNS_IP), "clusterips/10.96.0.10");
}

#[test]
fn requested_address_and_idempotence() {
    let s = MemStore::new();
    let dns = allocate_cluster_ip(&s, "kube-system/kube-dns", Some(CLUSTER_DNS_IP), CIDR).unwrap();
    assert_eq!(dns, CLUSTER_DNS_IP);
    // Again, by either spelling of the service: the same address.
    for key in ["kube-system/kube-dns", "services/kube-system/kube-dns"] {
        assert_eq!(
            allocate_cluster_ip(&s, key, Some(CLUSTER_DNS_IP), CIDR).unwrap(),
            dns
        );
        assert_eq!(allocate_cluster_ip(&s, key, None, CIDR).unwrap(), dns);
    }
    let stored = s.get("clusterips/10.96.0.10").unwrap().unwrap();
    let alloc: ClusterIpAllocation = serde_json::from_slice(&stored.value).unwrap();
    assert_eq!(alloc.service, "kube-system/kube-dns");
    assert_eq!(
        lookup_cluster_ip(&s, "kube-system/kube-dns").unwrap(),
        Some(dns)
    );
    assert_eq!(lookup_cluster_ip(&s, "default/none").unwrap(), None);
    // The address is immutable once held.
    let e =
        allocate_cluster_ip(&s, "kube-system/kube-dns", Some(ip("10.96.0.11")), CIDR).unwrap_err();
    assert!(matches!(e, ServiceError::Immutable { .. }), "{e}");
    assert!(e.to_string().contains("immutable"), "{e}");
}

#[test]
fn taken_address_names_both_services() {
    let s = MemStore::new();
    allocate_cluster_ip(&s, "kube-system/kube-dns", Some(CLUSTER_DNS_IP), CIDR).unwrap();
    let e = allocate_cluster_ip(&s, "default/web", Some(CLUSTER_DNS_IP), CIDR).unwrap_err();
    assert_eq!(
        e.to_string(),
        "service default/web: spec.clusterIP 10.96.0.10 is already allocated to service \
         kube-system/kube-dns"
    );
}

#[test]
fn requested_outside_or_unusable() {
    let s = MemStore::new();
    let e = allocate_cluster_ip(&s, "default/web", Some(ip("10.0.0.1")), CIDR).unwrap_err();
    assert_eq!(
        e.to_string(),
        "service default/web: spec.clusterIP 10.0.0.1 is not inside the service CIDR \
         10.96.0.0/12; choose an address in it or leave clusterIP empty"
    );
    let e = allocate_cluster_ip(&s, "default/web", Some(ip("10.96.0.0")), CIDR).unwrap_err();
    assert!(e.to_string().contains("network address"), "{e}");
    let e = allocate_cluster_ip(&s, "default/web", Some(ip("10.111.255.255")), CIDR).unwrap_err();
    assert!(e.to_string().contains("broadcast address"), "{e}");
    // The kubernetes service's own address is fine on request.
    assert_eq!(
        allocate_cluster_ip(&s, "default/kubernetes", Some(ip("10.96.0.1")), CIDR).unwrap(),
        ip("10.96.0.1")
    );
    assert!(s.list("clusterips/").unwrap().0.len() == 1);
}

#[test]
fn bad_service_keys() {
    let s = MemStore::new();
    for key in ["", "web", "services/web", "/web", "a/", "a/b/c"] {
        let e = allocate_cluster_ip(&s, key, None, CIDR).unwrap_err();
        assert!(
            matches!(e, ServiceError::BadServiceKey { .. }),
            "{key}: {e}"
        );
    }
}

#[test]
fn automatic_prefers_upper_band_lowest_first() {
    let s = MemStore::new();
    let a = allocate_cluster_ip(&s, "default/a", None, CIDR).unwrap();
    let b = allocate_cluster_ip(&s, "default/b", None, CIDR).unwrap();
    assert_eq!((a, b), (ip("10.96.1.0"), ip("10.96.1.1")));
    // Released addresses are reused.
    assert_eq!(release_cluster_ip(&s, "default/a").unwrap(), [a]);
    assert!(release_cluster_ip(&s, "default/a").unwrap().is_empty());
    assert_eq!(lookup_cluster_ip(&s, "default/a").unwrap(), None);
    assert_eq!(allocate_cluster_ip(&s, "default/c", None, CIDR).unwrap(), a);
}

#[test]
fn automatic_never_gives_reserved_addresses() {
    // A /28: the band covers all of it, so automatic allocation walks the
    // whole block: 16 addresses minus network, broadcast, .1 and .10.
    let s = MemStore::new();
    let small = cidr("10.96.0.0/28");
    let mut got = Vec::new();
    for i in 0..12 {
        got.push(allocate_cluster_ip(&s, &format!("default/s{i}"), None, small).unwrap());
    }
    for reserved in ["10.96.0.0", "10.96.0.1", "10.96.0.10", "10.96.0.15"] {
        assert!(!got.contains(&ip(reserved)), "{reserved} in {got:?}");
    }
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), 12);
    let e = allocate_cluster_ip(&s, "default/full", None, small).unwrap_err();
    assert!(
        matches!(e, ServiceError::Exhausted { assignable: 12, .. }),
        "{e}"
    );
    // .1 and .10 are still there for the services that ask for them.
    assert_eq!(
        allocate_cluster_ip(&s, "kube-system/kube-dns", Some(ip("10.96.0.10")), small).unwrap(),
        ip("10.96.0.10")
    );
    assert_eq!(
        allocate_cluster_ip(&s, "default/kubernetes", Some(ip("10.96.0.1")), small).unwrap(),
        ip("10.96.0.1")
    );
}

#[test]
fn upper_band_full_falls_back_to_lower() {
    // A /27: band = 16, so offsets 16..31 first, then 2..15.
    let s = MemStore::new();
    let c = cidr("10.96.0.0/27");
    let first = allocate_cluster_ip(&s, "default/x0", None, c).unwrap();
    assert_eq!(first, ip("10.96.0.16"));
    for i in 1..15 {
        allocate_cluster_ip(&s, &format!("default/x{i}"), None, c).unwrap();
    }
    // 15 upper addresses (16..=30) are used; the next comes from below.
    assert_eq!(
        allocate_cluster_ip(&s, "default/low", None, c).unwrap(),
        ip("10.96.0.2")
    );
}

#[test]
fn unreadable_allocation_is_not_reused() {
    let s = MemStore::new();
    let small = cidr("10.96.0.0/28");
    s.put("clusterips/10.96.0.2", b"garbage").unwrap();
    assert_eq!(
        allocate_cluster_ip(&s, "default/a", None, small).unwrap(),
        ip("10.96.0.3")
    );
    let e = allocate_cluster_ip(&s, "default/b", Some(ip("10.96.0.2")), small).unwrap_err();
    assert!(e.to_string().contains("unreadable"), "{e}");
}

fn dir_store(tag: &str) -> (Arc<dyn Store>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tapestry-clusterip-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = DirStoreOptions {
        sync: false,
        max_events: 10_000,
    };
    (Arc::new(DirStore::open_with(&dir, opts).unwrap()), dir)
}

/// Runs `f(thread index)` on `n` threads started together; returns results.
fn race<T: Send + 'static>(n: usize, f: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let f = Arc::new(f);
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (f, barrier) = (Arc::clone(&f), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                f(i)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn concurrent_services_never_share_an_address() {
    for (store, dir) in [(Arc::new(MemStore::new()) as Arc<dyn Store>, None), {
        let (s, d) = dir_store("distinct");
        (s, Some(d))
    }] {
        let s = Arc::clone(&store);
        let got = race(8, move |i| {
            allocate_cluster_ip(&*s, &format!("default/svc{i}"), None, CIDR).unwrap()
        });
        assert_eq!(got.iter().collect::<HashSet<_>>().len(), 8, "{got:?}");
        assert_eq!(list_cluster_ips(&*store).unwrap().len(), 8);
        // Two services racing for one requested address: exactly one wins.
        let s = Arc::clone(&store);
        let got = race(2, move |i| {
            allocate_cluster_ip(
                &*s,
                &format!("default/want{i}"),
                Some(ip("10.96.0.50")),
                CIDR,
            )
        });
        assert_eq!(got.iter().filter(|r| r.is_ok()).count(), 1, "{got:?}");
        assert!(got.iter().any(|r| matches!(
            r,
            Err(ServiceError::AlreadyAllocated { holder, .. }) if holder.starts_with("default/want")
        )));
        if let Some(d) = dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

#[test]
fn concurrent_calls_for_one_service_agree() {
    let (store, dir) = dir_store("same");
    for round in 0..5 {
        let s = Arc::clone(&store);
        let service = format!("default/same{round}");
        let name = service.clone();
        let got = race(2, move |_| {
            allocate_cluster_ip(&*s, &name, None, CIDR).unwrap()
        });
        assert_eq!(got[0], got[1], "round {round}");
        // Exactly one address is left held by the service.
        let held: Vec<_> = list_cluster_ips(&*store)
            .unwrap()
            .into_iter()
            .filter(|(_, (svc, _))| *svc == service)
            .collect();
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(held[0].0, got[0]);
    }
    let _ = std::fs::remove_dir_all(dir);
}
