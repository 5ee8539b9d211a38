//! The etcd store against real etcd processes (the conformance suite's
//! etcd factory is in conformance.rs): faults the other backends do not
//! have: etcd killed under a watch, history compacted, members down.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use super::etcd_harness::EtcdCluster;
use super::*;

const WAIT: Duration = Duration::from_secs(15);

fn next(w: &Watch) -> Event {
    w.recv_timeout(WAIT)
        .expect("watch delivered nothing")
        .unwrap()
}

#[test]
fn keys_live_under_the_prefix_in_etcd() {
    let Some(etcd) = EtcdCluster::start(1) else {
        return;
    };
    let store = etcd.store();
    store.put("pods/default/web", b"{}").unwrap();
    let mut opts = EtcdStoreOptions::new(vec![etcd.endpoint(0)]);
    opts.prefix = "/".into();
    let raw = EtcdStore::connect(opts).unwrap();
    // Seen with prefix `/`, the store's key is /tapestry/pods/default/web.
    let (all, _) = raw.list("").unwrap_err_or_list();
    assert_eq!(all, ["tapestry/pods/default/web"]);
    // Keys outside the prefix are not the store's.
    raw.put("elsewhere/x", b"x").unwrap();
    assert_eq!(store.list("").unwrap_err_or_list().0, ["pods/default/web"]);
}

/// `list` keys only, for a short assertion.
trait ListKeys {
    fn unwrap_err_or_list(self) -> (Vec<String>, Revision);
}

impl ListKeys for Result<(Vec<Entry>, Revision), StoreError> {
    fn unwrap_err_or_list(self) -> (Vec<String>, Revision) {
        let (entries, rev) = self.unwrap();
        (entries.into_iter().map(|e| e.key).collect(), rev)
    }
}

#[test]
fn list_pages_through_more_than_one_page_at_one_revision() {
    let Some(etcd) = EtcdCluster::start(1) else {
        return;
    };
    let store = Arc::new(etcd.store());
    for i in 0..2500u32 {
        store.put(&format!("ips/{i:05}"), b"x").unwrap();
    }
    store.put("other", b"y").unwrap();
    let (keys, rev) = store.list("ips/").unwrap_err_or_list();
    assert_eq!(keys.len(), 2500);
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicate");
    assert_eq!(rev, store.revision().unwrap());
}

#[test]
fn watch_survives_kill_9_and_restart_without_gap_or_duplicate() {
    let Some(mut etcd) = EtcdCluster::start(1) else {
        return;
    };
    let store = etcd.store_on(&[0], Duration::from_secs(2));
    let base = store.revision().unwrap();
    for i in 0..5 {
        store.put(&format!("w/{i:02}"), b"before").unwrap();
    }
    store.put("elsewhere", b"x").unwrap();
    let w = store.watch("w/", base).unwrap();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next(&w));
    }
    // Written just before the kill: delivered before or after it, once.
    for i in 5..8 {
        store.put(&format!("w/{i:02}"), b"racing").unwrap();
    }
    let old_pid = etcd.pid(0);
    etcd.kill(0);
    assert!(
        matches!(store.get("w/00"), Err(StoreError::Unavailable { .. })),
        "etcd is down"
    );
    etcd.restart(0);
    assert_ne!(etcd.pid(0), old_pid, "a new etcd process");
    for i in 8..12 {
        store.put(&format!("w/{i:02}"), b"after").unwrap();
    }
    while seen.len() < 12 {
        seen.push(next(&w));
    }
    assert!(
        w.recv_timeout(Duration::from_millis(500)).is_none(),
        "nothing more: no duplicate"
    );
    let keys: Vec<String> = seen.iter().map(|e| e.key().to_string()).collect();
    let want: Vec<String> = (0..12).map(|i| format!("w/{i:02}")).collect();
    assert_eq!(keys, want, "every event once, in order");
    // No gap: the revisions are exactly those of the writes under w/.
    let revs: Vec<Revision> = seen.iter().map(Event::revision).collect();
    let (entries, _) = store.list("w/").unwrap();
    let truth: Vec<Revision> = entries.iter().map(|e| e.revision).collect();
    assert_eq!(revs, truth);
}

#[test]
fn watch_from_a_compacted_revision_is_compacted() {
    let Some(etcd) = EtcdCluster::start(1) else {
        return;
    };
    let store = etcd.store();
    let base = store.revision().unwrap();
    for i in 0..10u32 {
        store.put("k", &i.to_le_bytes()).unwrap();
    }
    store.compact(base + 8).unwrap();
    let err = store.watch("", base).unwrap_err();
    assert!(
        matches!(err, StoreError::Compacted { requested, oldest } if requested == base && oldest == base + 7),
        "{err}"
    );
    assert!(err.to_string().contains("list again"), "{err}");
    // The oldest revision it names is one a watch can start from.
    let w = store.watch("", base + 7).unwrap();
    assert_eq!(next(&w).revision(), base + 8);
    // Compacting to an older point again is harmless.
    store.compact(base + 2).unwrap();
}

#[test]
fn a_watch_that_reconnects_past_a_compaction_ends_with_compacted() {
    let Some(mut etcd) = EtcdCluster::start(1) else {
        return;
    };
    let store = etcd.store_on(&[0], Duration::from_secs(2));
    let base = store.revision().unwrap();
    let first = store.put("w/1", b"seen").unwrap();
    let w = store.watch("w/", base).unwrap();
    assert_eq!(next(&w).revision(), first);
    // While the watch cannot reach etcd (same data, another client port),
    // history it has not seen is written and compacted away.
    let elsewhere = etcd.restart_elsewhere(0);
    let other = EtcdStore::connect(EtcdStoreOptions::new(vec![elsewhere])).unwrap();
    other.put("w/2", b"missed").unwrap();
    let third = other.put("w/3", b"missed").unwrap();
    other.compact(third).unwrap();
    drop(other);
    etcd.restart(0);
    // Back on its port: the watch cannot resume without a gap, so it says
    // so, and ends.
    let item = w.recv_timeout(WAIT).expect("the watch reports");
    let err = item.expect_err("no event past a compaction");
    assert!(
        matches!(err, StoreError::Compacted { requested, oldest } if requested == first && oldest == third - 1),
        "{err}"
    );
    assert!(w.recv_timeout(Duration::from_secs(1)).is_none(), "ended");
}

#[test]
fn compare_and_swap_races_between_two_threads_have_one_winner() {
    let Some(etcd) = EtcdCluster::start(1) else {
        return;
    };
    let store = Arc::new(etcd.store());
    let mut current = store.put("lease", b"start").unwrap();
    for round in 0..20 {
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|who| {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    let value = format!("{who}{round}");
                    (
                        who,
                        store.compare_and_swap("lease", current, value.as_bytes()),
                    )
                })
            })
            .collect();
        let results: Vec<_> = racers.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let (winner, won) = winners[0];
        let won = *won.as_ref().unwrap();
        for (_, r) in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e, StoreError::Conflict { expected, actual, .. } if *expected == current && *actual == won),
                    "the loser sees the winner's revision: {e}"
                );
            }
        }
        let entry = store.get("lease").unwrap().unwrap();
        assert_eq!(entry.value, format!("{winner}{round}").as_bytes());
        assert_eq!(entry.revision, won);
        current = won;
    }
}

/// One store call, by name, with its result's value dropped.
type NamedCall<'a> = (&'static str, Box<dyn Fn() -> Result<(), StoreError> + 'a>);

/// Every store call against `store` fails with `Unavailable` within `bound`.
fn all_calls_unavailable(store: &EtcdStore, bound: Duration) {
    let calls: Vec<NamedCall<'_>> = vec![
        ("get", Box::new(|| store.get("k").map(drop))),
        ("list", Box::new(|| store.list("").map(drop))),
        ("put", Box::new(|| store.put("k", b"v").map(drop))),
        (
            "cas",
            Box::new(|| store.compare_and_swap("k", 3, b"v").map(drop)),
        ),
        ("delete", Box::new(|| store.delete("k").map(drop))),
        (
            "compare_and_delete",
            Box::new(|| store.compare_and_delete("k", 3).map(drop)),
        ),
        ("watch", Box::new(|| store.watch("", 1).map(drop))),
        ("revision", Box::new(|| store.revision().map(drop))),
    ];
    for (name, call) in calls {
        let t = Instant::now();
        let err = call().expect_err(name);
        let took = t.elapsed();
        assert!(
            matches!(err, StoreError::Unavailable { .. }),
            "{name}: {err}"
        );
        assert!(
            err.to_string().contains("unreachable"),
            "{name}: clear message: {err}"
        );
        assert!(took < bound, "{name} took {took:?}");
    }
}

#[test]
fn calls_against_a_stopped_etcd_fail_with_unavailable_in_bounded_time() {
    let Some(mut etcd) = EtcdCluster::start(1) else {
        return;
    };
    let store = etcd.store_on(&[0], Duration::from_secs(1));
    store.put("k", b"v").unwrap();
    etcd.kill(0);
    all_calls_unavailable(&store, Duration::from_secs(3));
    // A store whose etcd never ran at all: the same.
    let endpoint = etcd.endpoint(0);
    drop(etcd);
    let mut opts = EtcdStoreOptions::new(vec![endpoint.clone()]);
    opts.connect_timeout = Duration::from_secs(1);
    opts.request_timeout = Duration::from_secs(1);
    let never = EtcdStore::connect(opts).unwrap();
    all_calls_unavailable(&never, Duration::from_secs(3));
    let msg = never.get("k").unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("store: etcd at {endpoint} unreachable")),
        "{msg}"
    );
}

#[test]
fn calls_against_a_frozen_etcd_fail_with_unavailable_and_the_watch_carries_on() {
    let Some(etcd) = EtcdCluster::start(1) else {
        return;
    };
    let store = etcd.store_on(&[0], Duration::from_secs(1));
    let base = store.revision().unwrap();
    let w = store.watch("f/", base).unwrap();
    let first = store.put("f/1", b"x").unwrap();
    assert_eq!(next(&w).revision(), first);
    // Connections stay open but nothing answers: every call still ends.
    etcd.freeze(0, true);
    all_calls_unavailable(&store, Duration::from_secs(3));
    etcd.freeze(0, false);
    let second = store.put("f/2", b"y").unwrap();
    assert_eq!(next(&w).revision(), second);
    assert!(
        w.recv_timeout(Duration::from_millis(500)).is_none(),
        "no duplicate"
    );
}

#[test]
fn a_three_member_cluster_serves_through_a_member_down() {
    let Some(mut etcd) = EtcdCluster::start(3) else {
        return;
    };
    let store = Arc::new(etcd.store());
    let base = store.revision().unwrap();
    let w = store.watch("n/", base).unwrap();
    let mut written = BTreeSet::new();
    // A follower down: the client stops using it, and no call fails.
    let leader = etcd.leader();
    let follower = (leader + 1) % 3;
    etcd.kill(follower);
    for i in 0..20 {
        let key = format!("n/follower-{i:02}");
        let t = Instant::now();
        store.put(&key, b"y").unwrap();
        assert!(store.get(&key).unwrap().is_some());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        written.insert(key);
    }
    cas_increment_checked(&store);
    etcd.restart(follower);
    // The leader down: a write in flight when it dies may time out
    // (`Unavailable`, as with any etcd client) until the two members left
    // elect a new leader; then every call succeeds again, within a bound.
    etcd.kill(leader);
    let t = Instant::now();
    let mut failed = 0;
    for i in 0..20 {
        let key = format!("n/leader-{i:02}");
        loop {
            match store.put(&key, b"z") {
                Ok(_) => break,
                Err(StoreError::Unavailable { .. }) if t.elapsed() < Duration::from_secs(20) => {
                    failed += 1
                }
                Err(e) => panic!("{e}"),
            }
        }
        written.insert(key);
    }
    assert!(failed <= 3, "{failed} writes failed over the election");
    cas_increment_checked(&store);
    etcd.restart(leader);
    // The watch saw every write once, in order, through both.
    let mut seen = BTreeSet::new();
    let mut last = base;
    while seen.len() < written.len() {
        let ev = next(&w);
        assert!(ev.revision() > last, "in order, no duplicate");
        last = ev.revision();
        seen.insert(ev.key().to_string());
    }
    assert_eq!(seen, written);
}

fn cas_increment_checked(store: &EtcdStore) {
    let before = store.get("counter").unwrap().map_or(0, |e| {
        String::from_utf8(e.value).unwrap().parse::<u64>().unwrap()
    });
    super::conformance::cas_increment(store, "counter");
    let after: u64 = String::from_utf8(store.get("counter").unwrap().unwrap().value)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(after, before + 1);
}

#[test]
fn an_expiring_key_lives_while_rewritten_and_etcd_deletes_it_after_the_writer_stops() {
    let Some(etcd) = EtcdCluster::start(1) else {
        return;
    };
    let store = etcd.store();
    let ttl = Duration::from_secs(2);
    let first = store.put_expiring("nodeleases/n1", b"1", ttl).unwrap();
    let w = store.watch("nodeleases/", first).unwrap();
    // Rewritten every 500 ms for longer than the TTL: it stays.
    let start = Instant::now();
    let mut n = 1u32;
    while start.elapsed() < ttl * 2 {
        std::thread::sleep(Duration::from_millis(500));
        n += 1;
        store
            .put_expiring("nodeleases/n1", n.to_string().as_bytes(), ttl)
            .unwrap();
    }
    let last = Instant::now();
    assert_eq!(
        store.get("nodeleases/n1").unwrap().unwrap().value,
        n.to_string().as_bytes()
    );
    // The writer stops: etcd deletes the key (a delete event), ttl after the
    // last write and not before (etcd may round a lease up, not down).
    let deleted = loop {
        match w
            .recv_timeout(WAIT)
            .expect("no delete within the wait")
            .unwrap()
        {
            Event::Put(_) => continue,
            Event::Delete { key, .. } => break key,
        }
    };
    let after = last.elapsed();
    assert_eq!(deleted, "nodeleases/n1");
    assert!(
        after >= ttl - Duration::from_millis(100),
        "deleted {after:?} after the last write"
    );
    assert!(store.get("nodeleases/n1").unwrap().is_none());
}
