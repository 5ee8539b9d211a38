//! Liveness judged from leases at chosen instants.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::time::UNIX_EPOCH;

use super::*;
use crate::meta::ObjectMeta;
use crate::store::MemStore;

fn t(secs: u64, millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs) + Duration::from_millis(millis)
}

fn node(name: &str, agent: bool) -> Node {
    let mut n = Node {
        metadata: ObjectMeta::named(name),
        spec: Default::default(),
        status: Default::default(),
    };
    if agent {
        n.metadata
            .labels
            .insert(KUBELET_LABEL.into(), "true".into());
    }
    n
}

#[test]
fn a_lease_is_stored_as_kubernetes_writes_one() {
    let lease = NodeLease::renewed("node1", t(0, 123));
    let json: serde_json::Value = serde_json::from_slice(&lease.encode()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "holder": "node1",
            "renewTime": "2027-01-15T08:00:00.123000Z",
            "durationSeconds": 6,
        })
    );
    assert_eq!(NodeLease::decode("k", &lease.encode()).unwrap(), lease);
    // Bad values are errors naming the key, never a panic.
    for bad in [
        &b"{"[..],
        br#"{"holder":"n","renewTime":"yesterday","durationSeconds":6}"#,
        br#"{"holder":"n","renewTime":"2027-01-15T08:00:00Z","durationSeconds":-1}"#,
        br#"{"holder":"n","renewTime":"2027-01-15T08:00:00Z"}"#,
    ] {
        let e = NodeLease::decode("nodeleases/n", bad).unwrap_err();
        assert!(e.to_string().contains("nodeleases/n"), "{e}");
    }
}

#[test]
fn ready_until_duration_plus_skew_after_the_renewal() {
    let n = node("node1", true);
    let lease = NodeLease::renewed("node1", t(100, 0));
    assert_eq!(
        judge(&n, Some(&lease), t(100, 0)),
        Liveness::Ready { renewed: t(100, 0) }
    );
    // 6 s of lease and 1 s of skew: ready just before 7 s, not at 7 s.
    assert!(judge(&n, Some(&lease), t(106, 999)).is_usable());
    assert_eq!(
        judge(&n, Some(&lease), t(107, 0)),
        Liveness::NotReady(NotReadyReason::Expired { renewed: t(100, 0) })
    );
    // A reader whose clock is a little behind the writer's still says Ready.
    assert!(judge(&n, Some(&lease), t(99, 500)).is_usable());
}

#[test]
fn a_missing_lease_is_an_expired_one_and_hand_written_nodes_are_not_judged() {
    assert_eq!(
        judge(&node("node1", true), None, t(0, 0)),
        Liveness::NotReady(NotReadyReason::NoLease)
    );
    let by_hand = node("kernel-vxlan", false);
    assert_eq!(judge(&by_hand, None, t(0, 0)), Liveness::Unmanaged);
    assert!(Liveness::Unmanaged.is_usable());
    assert_eq!(Liveness::Unmanaged.status(), "Unmanaged");
}

#[test]
fn the_not_ready_set_and_the_next_expiry() {
    let nodes: BTreeMap<String, Node> = [
        node("a", true),
        node("b", true),
        node("c", true),
        node("static", false),
    ]
    .into_iter()
    .map(|n| (n.metadata.name.clone(), n))
    .collect();
    let leases: BTreeMap<String, NodeLease> = [
        ("a", NodeLease::renewed("a", t(10, 0))),
        ("b", NodeLease::renewed("b", t(12, 0))),
        // A lease of a node that is not registered counts for nothing.
        ("ghost", NodeLease::renewed("ghost", t(0, 0))),
    ]
    .into_iter()
    .map(|(k, l)| (k.to_owned(), l))
    .collect();
    let names = |s: BTreeSet<String>| s.into_iter().collect::<Vec<_>>();
    // c has no lease at all.
    assert_eq!(names(not_ready_nodes(&nodes, &leases, t(12, 0))), ["c"]);
    assert_eq!(next_expiry(&nodes, &leases, t(12, 0)), Some(t(17, 0)));
    assert_eq!(
        names(not_ready_nodes(&nodes, &leases, t(17, 0))),
        ["a", "c"]
    );
    assert_eq!(next_expiry(&nodes, &leases, t(17, 0)), Some(t(19, 0)));
    assert_eq!(
        names(not_ready_nodes(&nodes, &leases, t(19, 0))),
        ["a", "b", "c"]
    );
    // Nothing left to expire: no deadline.
    assert_eq!(next_expiry(&nodes, &leases, t(19, 0)), None);
}

#[test]
fn renew_writes_the_lease_through_put_expiring() {
    let store = MemStore::new();
    renew(&store, "node1", t(5, 0)).unwrap();
    let e = store.get("nodeleases/node1").unwrap().unwrap();
    let lease = NodeLease::decode(&e.key, &e.value).unwrap();
    assert_eq!(lease, NodeLease::renewed("node1", t(5, 0)));
    let rev = renew(&store, "node1", t(7, 0)).unwrap();
    assert!(rev > e.revision);
}
