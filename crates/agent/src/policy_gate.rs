//! The gate between the policy compiler and the kubelet: which local pods the
//! policy table in the pipeline reflects, and a bounded wait for one of them.
//!
//! A pod's containers must not serve before the data plane enforces the
//! policies that select it (as Calico and Cilium program a pod's policy
//! before its workload gets traffic). The kubelet publishes a new pod's
//! address first (status `Pending`, not ready), the policy compiler
//! ([`crate::policy_sync`]) compiles the pod from the cluster cache and
//! publishes its table, then [records](PolicyCoverage::record) here every
//! local pod (key and address) that compilation saw; the kubelet
//! [waits](PolicyCoverage::wait) for its pod to be among them before it
//! starts the containers.
//!
//! "Covered" means the compiler has *seen* the pod at that address, not that
//! the table has a rule for it: a pod selected by no policy has no entry in
//! the table (it is open), and that is exactly what the table must say about
//! it. The record is made only once the table compiled from that state is the
//! one the pipeline holds (stored, or already equal to it), never for a
//! table the data plane rejected.
//!
//! Control path only: a `parking_lot` mutex and condition variable guard the
//! record; the packet path never touches it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// What the pipeline's policy table was last compiled from.
#[derive(Debug, Default)]
struct Covered {
    /// Local pods (`namespace/name`) and the address each was compiled at.
    pods: BTreeMap<String, Ipv4Addr>,
    /// How many times a table was recorded as the pipeline's.
    records: u64,
    /// Threads blocked in [`PolicyCoverage::wait`].
    waiters: usize,
}

/// The local pods the pipeline's policy table reflects; see the module docs.
#[derive(Debug, Default)]
pub struct PolicyCoverage {
    covered: Mutex<Covered>,
    changed: Condvar,
    /// Waits that hit their bound.
    timed_out: AtomicU64,
}

/// How a [`PolicyCoverage::wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The table reflects the pod; `waited` is how long that took.
    Covered { waited: Duration },
    /// The bound passed first; `total` waits have now timed out on this node.
    TimedOut { waited: Duration, total: u64 },
}

impl PolicyCoverage {
    /// Records that the table the pipeline now holds was compiled with these
    /// local pods (key → address), and wakes the waiters.
    pub fn record(&self, pods: BTreeMap<String, Ipv4Addr>) {
        let mut covered = self.covered.lock();
        covered.pods = pods;
        covered.records = covered.records.wrapping_add(1);
        drop(covered);
        self.changed.notify_all();
    }

    /// Whether the table reflects the pod `key` at `ip`.
    pub fn covers(&self, key: &str, ip: Ipv4Addr) -> bool {
        self.covered.lock().pods.get(key) == Some(&ip)
    }

    /// Blocks until the table reflects the pod `key` at `ip`, or `bound`
    /// has passed (counted in [`Self::timed_out`]).
    pub fn wait(&self, key: &str, ip: Ipv4Addr, bound: Duration) -> Gate {
        let started = Instant::now();
        let deadline = started.checked_add(bound);
        let mut covered = self.covered.lock();
        loop {
            if covered.pods.get(key) == Some(&ip) {
                return Gate::Covered {
                    waited: started.elapsed(),
                };
            }
            covered.waiters += 1;
            let timed_out = match deadline {
                Some(d) => self.changed.wait_until(&mut covered, d).timed_out(),
                // A bound past the clock's range: no deadline.
                None => {
                    self.changed.wait(&mut covered);
                    false
                }
            };
            covered.waiters -= 1;
            if timed_out && covered.pods.get(key) != Some(&ip) {
                let total = self.timed_out.fetch_add(1, Ordering::Relaxed) + 1;
                return Gate::TimedOut {
                    waited: started.elapsed(),
                    total,
                };
            }
        }
    }

    /// How many waits have hit their bound on this node.
    pub fn timed_out(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// How many tables have been recorded.
    pub fn records(&self) -> u64 {
        self.covered.lock().records
    }

    /// How many threads are blocked in [`Self::wait`].
    pub fn waiters(&self) -> usize {
        self.covered.lock().waiters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);

    fn pods(entries: &[(&str, Ipv4Addr)]) -> BTreeMap<String, Ipv4Addr> {
        entries
            .iter()
            .map(|(k, ip)| ((*k).to_owned(), *ip))
            .collect()
    }

    #[test]
    fn a_covered_pod_passes_at_once() {
        let c = PolicyCoverage::default();
        c.record(pods(&[("x/a", IP)]));
        assert!(c.covers("x/a", IP));
        // A long bound, never waited for.
        match c.wait("x/a", IP, Duration::from_secs(3600)) {
            Gate::Covered { waited } => assert!(waited < Duration::from_secs(1), "{waited:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.timed_out(), 0);
    }

    #[test]
    fn a_pod_is_covered_by_a_later_record() {
        let c = Arc::new(PolicyCoverage::default());
        // Another pod, and this pod at another (a previous owner's) address:
        // neither covers it.
        c.record(pods(&[("x/b", IP), ("x/a", Ipv4Addr::new(10, 244, 1, 9))]));
        let waiter = std::thread::spawn({
            let c = Arc::clone(&c);
            move || c.wait("x/a", IP, Duration::from_secs(60))
        });
        // Records that still do not cover it leave the waiter waiting.
        while c.waiters() == 0 {
            std::thread::yield_now();
        }
        c.record(pods(&[("x/b", IP)]));
        while c.waiters() == 0 {
            std::thread::yield_now();
        }
        assert!(!waiter.is_finished());
        assert_eq!(c.records(), 2);
        c.record(pods(&[("x/a", IP), ("x/b", Ipv4Addr::new(10, 244, 1, 8))]));
        match waiter.join().expect("waiter") {
            Gate::Covered { waited } => assert!(waited < Duration::from_secs(60)),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.timed_out(), 0);
    }

    #[test]
    fn the_bound_ends_the_wait_and_is_counted() {
        let c = PolicyCoverage::default();
        c.record(pods(&[("x/b", IP)]));
        let bound = Duration::from_millis(50);
        match c.wait("x/a", IP, bound) {
            Gate::TimedOut { waited, total } => {
                assert!(waited >= bound, "{waited:?}");
                assert_eq!(total, 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            c.wait("x/a", IP, Duration::ZERO),
            Gate::TimedOut { total: 2, .. }
        ));
        assert_eq!(c.timed_out(), 2);
    }
}
