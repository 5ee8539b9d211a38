//! Behaviour every [`Store`] backend must show, run against each backend.
//!
//! Revisions are checked relative to the fresh store's revision (`base`): a
//! new directory or memory store is at 0, a new etcd at 1.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;

/// A fresh empty store per test, with a small compaction limit.
pub(crate) trait Factory {
    /// A store keeping at least the last `history` revisions for watches.
    fn make(&self, history: u64) -> Arc<dyn Store>;
    /// True when this backend's tests are explicitly skipped (etcd:
    /// `TAPESTRY_SKIP_ETCD_TESTS=1`).
    fn skipped(&self) -> bool {
        false
    }
}

struct Mem;
impl Factory for Mem {
    fn make(&self, history: u64) -> Arc<dyn Store> {
        Arc::new(MemStore::with_history(usize::try_from(history).unwrap()))
    }
}

static DIRS: AtomicU64 = AtomicU64::new(0);

/// A unique empty directory under the system temp dir.
pub(crate) fn temp_dir(tag: &str) -> std::path::PathBuf {
    let n = DIRS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tapestry-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

struct Dir;
impl Factory for Dir {
    fn make(&self, history: u64) -> Arc<dyn Store> {
        let opts = DirStoreOptions {
            sync: false,
            max_events: history,
        };
        Arc::new(Cleanup(
            DirStore::open_with(temp_dir("store"), opts).unwrap(),
        ))
    }
}

/// A directory store that removes its directory when the last handle goes.
struct Cleanup(DirStore);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.root());
    }
}

impl Store for Cleanup {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.0.get(key)
    }
    fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError> {
        self.0.list(prefix)
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError> {
        self.0.put(key, value)
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: &[u8],
    ) -> Result<Revision, StoreError> {
        self.0.compare_and_swap(key, expected, value)
    }
    fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        self.0.delete(key)
    }
    fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<Revision, StoreError> {
        self.0.compare_and_delete(key, expected)
    }
    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError> {
        self.0.watch(prefix, after)
    }
    fn revision(&self) -> Result<Revision, StoreError> {
        self.0.revision()
    }
    fn put_expiring(&self, key: &str, value: &[u8], ttl: Duration) -> Result<Revision, StoreError> {
        self.0.put_expiring(key, value, ttl)
    }
}

const WAIT: Duration = Duration::from_secs(10);

fn next(w: &Watch) -> Event {
    w.recv_timeout(WAIT)
        .expect("watch delivered nothing")
        .unwrap()
}

fn put_get_revisions(f: &dyn Factory) {
    let s = f.make(1000);
    let base = s.revision().unwrap();
    assert!(base <= 1, "a fresh store is at revision {base}");
    assert_eq!(s.get("nodes/n1").unwrap(), None);
    assert_eq!(s.put("nodes/n1", b"{\"a\":1}").unwrap(), base + 1);
    assert_eq!(s.put("nodes/n2", b"x").unwrap(), base + 2);
    assert_eq!(s.put("nodes/n1", b"{\"a\":2}").unwrap(), base + 3);
    let e = s.get("nodes/n1").unwrap().unwrap();
    assert_eq!(
        (e.value.as_slice(), e.revision),
        (&b"{\"a\":2}"[..], base + 3)
    );
    assert_eq!(s.revision().unwrap(), base + 3);
    // Binary and empty values survive.
    s.put("bin", &[0, 255, 10, 13]).unwrap();
    assert_eq!(s.get("bin").unwrap().unwrap().value, [0, 255, 10, 13]);
    s.put("empty", b"").unwrap();
    assert_eq!(s.get("empty").unwrap().unwrap().value, b"");
}

fn cas_and_delete(f: &dyn Factory) {
    let s = f.make(1000);
    let r1 = s
        .compare_and_swap("leases/10.244.1.0-24", 0, b"node1")
        .unwrap();
    let err = s
        .compare_and_swap("leases/10.244.1.0-24", 0, b"node2")
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { expected: 0, actual, .. } if actual == r1),
        "{err}"
    );
    assert!(matches!(
        s.compare_and_swap("missing", 5, b"x"),
        Err(StoreError::Conflict { actual: 0, .. })
    ));
    let r2 = s
        .compare_and_swap("leases/10.244.1.0-24", r1, b"node1b")
        .unwrap();
    assert!(r2 > r1);
    assert!(matches!(
        s.compare_and_delete("leases/10.244.1.0-24", r1),
        Err(StoreError::Conflict { .. })
    ));
    let before = s.revision().unwrap();
    assert_eq!(s.delete("nope").unwrap(), None);
    assert_eq!(
        s.revision().unwrap(),
        before,
        "deleting nothing is no change"
    );
    let r3 = s.compare_and_delete("leases/10.244.1.0-24", r2).unwrap();
    assert!(r3 > r2);
    assert_eq!(s.get("leases/10.244.1.0-24").unwrap(), None);
    s.put("k", b"v").unwrap();
    let r4 = s.delete("k").unwrap().unwrap();
    assert_eq!(s.revision().unwrap(), r4);
    assert!(matches!(
        s.compare_and_delete("k", 0),
        Err(StoreError::Conflict { .. })
    ));
}

fn list_by_prefix(f: &dyn Factory) {
    let s = f.make(1000);
    let base = s.revision().unwrap();
    for k in [
        "pods/default/b",
        "pods/default/a",
        "pods/kube-system/dns",
        "nodes/n1",
        "podsx",
    ] {
        s.put(k, k.as_bytes()).unwrap();
    }
    s.delete("pods/default/b").unwrap();
    let (entries, rev) = s.list("pods/").unwrap();
    let keys: Vec<_> = entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["pods/default/a", "pods/kube-system/dns"]);
    assert_eq!(rev, base + 6);
    assert_eq!(s.list("").unwrap().0.len(), 4);
    assert!(s.list("services/").unwrap().0.is_empty());
}

fn invalid_keys(f: &dyn Factory) {
    let s = f.make(1000);
    for k in ["", "/abs", "a\nb", &"x".repeat(201)] {
        assert!(
            matches!(s.put(k, b"v"), Err(StoreError::InvalidKey { .. })),
            "{k:?}"
        );
    }
    // Characters that need escaping on disk are fine.
    for k in ["a b/c%d", "leases/10.244.1.0/24", "ünïcode/ключ", "..", "."] {
        s.put(k, k.as_bytes()).unwrap();
        assert_eq!(s.get(k).unwrap().unwrap().value, k.as_bytes());
    }
    assert_eq!(s.list("").unwrap().0.len(), 5);
}

fn watch_replays_then_follows_in_order(f: &dyn Factory) {
    let s = f.make(1000);
    let base = s.revision().unwrap();
    s.put("pods/default/a", b"1").unwrap();
    s.put("nodes/n1", b"n").unwrap();
    s.put("pods/default/b", b"2").unwrap();
    s.delete("pods/default/a").unwrap();
    let w = s.watch("pods/", base).unwrap();
    assert_eq!(
        next(&w),
        Event::Put(Entry {
            key: "pods/default/a".into(),
            value: b"1".to_vec(),
            revision: base + 1
        })
    );
    assert_eq!(next(&w).revision(), base + 3);
    assert_eq!(
        next(&w),
        Event::Delete {
            key: "pods/default/a".into(),
            revision: base + 4
        }
    );
    // Live events, from another thread.
    let s2 = Arc::clone(&s);
    let writer = std::thread::spawn(move || {
        for i in 0..20u32 {
            s2.put(&format!("pods/default/p{i}"), &i.to_le_bytes())
                .unwrap();
            s2.put("nodes/n1", b"ignored").unwrap();
        }
    });
    let mut last = base + 4;
    for i in 0..20u32 {
        let ev = next(&w);
        assert_eq!(ev.key(), format!("pods/default/p{i}"));
        assert!(ev.revision() > last);
        last = ev.revision();
    }
    writer.join().unwrap();
    // Watching from the middle skips what came before.
    let w2 = s.watch("pods/default/b", base + 2).unwrap();
    assert_eq!(next(&w2).revision(), base + 3);
    assert!(w2.recv_timeout(Duration::from_millis(100)).is_none());
}

fn list_then_watch_loses_nothing(f: &dyn Factory) {
    let s = f.make(100_000);
    let s2 = Arc::clone(&s);
    let writer = std::thread::spawn(move || {
        for i in 0..200u32 {
            let key = format!("ips/n1/{}", i % 17);
            if i % 5 == 4 {
                s2.delete(&key).unwrap();
            } else {
                s2.put(&key, &i.to_le_bytes()).unwrap();
            }
        }
        s2.put("ips/done", b"").unwrap()
    });
    std::thread::sleep(Duration::from_millis(5));
    let (entries, rev) = s.list("ips/").unwrap();
    let mut view: BTreeMap<String, Vec<u8>> =
        entries.into_iter().map(|e| (e.key, e.value)).collect();
    let w = s.watch("ips/", rev).unwrap();
    let done = writer.join().unwrap();
    let mut last = rev;
    while last < done {
        let ev = next(&w);
        assert!(ev.revision() > last, "out of order");
        last = ev.revision();
        match ev {
            Event::Put(e) => view.insert(e.key, e.value),
            Event::Delete { key, .. } => view.remove(&key),
        };
    }
    let truth: BTreeMap<String, Vec<u8>> = s
        .list("ips/")
        .unwrap()
        .0
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    assert_eq!(view, truth);
}

fn concurrent_cas_increments(f: &dyn Factory) {
    let s = f.make(100_000);
    let threads = 4;
    let per_thread = 50;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for _ in 0..per_thread {
                    cas_increment(&*s, "counter");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let v = s.get("counter").unwrap().unwrap();
    assert_eq!(
        String::from_utf8(v.value).unwrap(),
        (threads * per_thread).to_string()
    );
}

/// Reads the counter, adds one, writes it back with CAS; retries on conflict.
pub(crate) fn cas_increment(s: &dyn Store, key: &str) {
    loop {
        let (n, rev) = match s.get(key).unwrap() {
            Some(e) => (
                String::from_utf8(e.value).unwrap().parse::<u64>().unwrap(),
                e.revision,
            ),
            None => (0, 0),
        };
        match s.compare_and_swap(key, rev, (n + 1).to_string().as_bytes()) {
            Ok(_) => return,
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => panic!("{e}"),
        }
    }
}

fn compaction(f: &dyn Factory) {
    let s = f.make(10);
    let base = s.revision().unwrap();
    for i in 0..30u32 {
        s.put("k", &i.to_le_bytes()).unwrap();
    }
    let err = s.watch("", base).unwrap_err();
    let StoreError::Compacted {
        oldest, requested, ..
    } = err
    else {
        panic!("{err}")
    };
    assert_eq!(requested, base);
    assert!(oldest > base && oldest < base + 30, "{oldest}");
    // Watching from the compaction point works and replays what is left.
    let w = s.watch("", oldest).unwrap();
    assert_eq!(next(&w).revision(), oldest + 1);
    let w = s.watch("", base + 30).unwrap();
    s.put("k", b"new").unwrap();
    assert_eq!(next(&w).revision(), base + 31);
    assert_eq!(s.get("k").unwrap().unwrap().value, b"new");
}

/// A write that expires with its writer (a liveness lease) is, while it
/// lasts, an ordinary key: read, listed, watched, overwritten and deleted
/// like any other. (Whether and when it vanishes on its own is the
/// backend's: never for these two, after `ttl` for one with leases.)
fn put_expiring_is_an_ordinary_key_while_it_lasts(f: &dyn Factory) {
    let s = f.make(1000);
    let ttl = Duration::from_secs(6);
    let w = s.watch("nodeleases/", 0).unwrap();
    let r1 = s.put_expiring("nodeleases/n1", b"first", ttl).unwrap();
    let r2 = s.put_expiring("nodeleases/n1", b"second", ttl).unwrap();
    assert!(r2 > r1);
    let e = s.get("nodeleases/n1").unwrap().unwrap();
    assert_eq!((e.value.as_slice(), e.revision), (&b"second"[..], r2));
    assert_eq!(s.list("nodeleases/").unwrap().0, vec![e]);
    for (want, rev) in [(&b"first"[..], r1), (&b"second"[..], r2)] {
        match next(&w) {
            Event::Put(got) => assert_eq!((got.value.as_slice(), got.revision), (want, rev)),
            other => panic!("expected a put, got {other:?}"),
        }
    }
    let rev = s.delete("nodeleases/n1").unwrap().unwrap();
    assert_eq!(
        next(&w),
        Event::Delete {
            key: "nodeleases/n1".into(),
            revision: rev
        }
    );
    assert_eq!(s.get("nodeleases/n1").unwrap(), None);
}

macro_rules! conformance {
    ($backend:ident, $factory:expr) => {
        mod $backend {
            use super::*;
            #[test]
            fn put_get_revisions() {
                if Factory::skipped(&$factory) {
                    return;
                }
                super::put_get_revisions(&$factory)
            }
            #[test]
            fn cas_and_delete() {
                if Factory::skipped(&$factory) {
                    return;
                }
                super::cas_and_delete(&$factory)
            }
            #[test]
            fn list_by_prefix() {
                if Factory::skipped(&$factory) {
                    return;
                }
                super::list_by_prefix(&$factory)
            }
            #[test]
            fn invalid_keys() {
                if Factory::skipped(&$factory) {
                    return;
                }
                super::invalid_keys(&$factory)
            }
            #[test]
            fn watch_replays_then_follows_in_order() {
                if Factory::skipped(&$factory) {
                    return;
                }
                super::watch_replays_then_follows_in_order(&$factory)
            }
            #[test]
            fn list_then_watch_loses_nothing() {
                if Factory::skipped(&$factory) {
                    return;
                }
                super::list_then_watch_loses_nothing(&$factory)
            }
            #[test]
            fn concurrent_cas_increments() {
                if Factory::skipped(&$factory) {
                    return;
                }
                super::concurrent_cas_increments(&$factory)
            }
            #[test]
            fn compaction() {
                if Factory::skipped(&$factory) {
                    return;
                }
                super::compaction(&$factory)
            }
            #[test]
            fn put_expiring_is_an_ordinary_key_while_it_lasts() {
                if Factory::skipped(&$factory) {
                    return;
                }
                super::put_expiring_is_an_ordinary_key_while_it_lasts(&$factory)
            }
        }
    };
}

conformance!(mem, Mem);
conformance!(dir, Dir);
#[cfg(feature = "etcd")]
mod etcd_factory {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::etcd_harness::{etcd_or_skip, EtcdCluster};
    use super::super::{Entry, EtcdStore, Revision, Store, StoreError, Watch};
    use super::Factory;

    /// A fresh one-member etcd per store.
    pub(super) struct Etcd;

    impl Factory for Etcd {
        fn make(&self, history: u64) -> Arc<dyn Store> {
            let etcd = EtcdCluster::start(1).expect("not skipped");
            let store = etcd.store();
            let base = store.revision().unwrap();
            Arc::new(Compacting {
                store,
                history,
                compacted: AtomicU64::new(base),
                _etcd: etcd,
            })
        }

        fn skipped(&self) -> bool {
            etcd_or_skip().is_none()
        }
    }

    /// The etcd store with a history bound, as the conformance suite expects of
    /// a backend: after a write, once `2 * history` revisions have passed since
    /// the last compaction, compacts etcd (its real compaction API) to keep the
    /// last `history`. In a deployment etcd's own `--auto-compaction-*` does
    /// this job.
    struct Compacting {
        store: EtcdStore,
        history: u64,
        compacted: AtomicU64,
        _etcd: EtcdCluster,
    }

    impl Compacting {
        fn wrote(&self, revision: Revision) -> Revision {
            let last = self.compacted.load(Ordering::Relaxed);
            if revision >= last + 2 * self.history {
                let to = revision - self.history;
                self.store.compact(to).unwrap();
                self.compacted.fetch_max(to, Ordering::Relaxed);
            }
            revision
        }
    }

    impl Store for Compacting {
        fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
            self.store.get(key)
        }
        fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError> {
            self.store.list(prefix)
        }
        fn put(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError> {
            self.store.put(key, value).map(|r| self.wrote(r))
        }
        fn compare_and_swap(
            &self,
            key: &str,
            expected: Revision,
            value: &[u8],
        ) -> Result<Revision, StoreError> {
            self.store
                .compare_and_swap(key, expected, value)
                .map(|r| self.wrote(r))
        }
        fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
            self.store.delete(key).map(|r| r.map(|r| self.wrote(r)))
        }
        fn compare_and_delete(
            &self,
            key: &str,
            expected: Revision,
        ) -> Result<Revision, StoreError> {
            self.store
                .compare_and_delete(key, expected)
                .map(|r| self.wrote(r))
        }
        fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError> {
            self.store.watch(prefix, after)
        }
        fn revision(&self) -> Result<Revision, StoreError> {
            self.store.revision()
        }
        fn put_expiring(
            &self,
            key: &str,
            value: &[u8],
            ttl: Duration,
        ) -> Result<Revision, StoreError> {
            self.store
                .put_expiring(key, value, ttl)
                .map(|r| self.wrote(r))
        }
    }
}
#[cfg(feature = "etcd")]
use etcd_factory::Etcd;
#[cfg(feature = "etcd")]
conformance!(etcd, Etcd);
