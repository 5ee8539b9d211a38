//! Keeps this node's liveness lease fresh ([`tapestry_cluster::liveness`]):
//! `nodeleases/NODE` rewritten every 2 s with a 6 s duration, the way the
//! kubelet renews its Lease in `kube-node-lease`.
//!
//! Its own thread, never the packet thread: a slow or unreachable store
//! delays only the next renewal. A failed renewal is retried sooner (from
//! 250 ms, doubling up to the renewal interval), logged on the 1st, 2nd,
//! 4th, 8th… failure in a row and listed under PROBLEMS in `tapestry
//! status`, and never ends the agent: the data plane keeps forwarding with
//! the tables it has. If failures outlast the lease, the other nodes judge
//! this one NotReady until a renewal gets through.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tapestry_cluster::liveness::{self, lease_key, RENEW_INTERVAL};
use tapestry_cluster::store::{Store, StoreError};

use crate::problems::{Problems, Source};

/// The first retry after a failed renewal.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// Writes the lease once, now (before the node registers, so no reader
/// sees the Node without a lease).
pub fn renew_now(store: &dyn Store, node: &str) -> Result<(), StoreError> {
    liveness::renew(store, node, SystemTime::now()).map(drop)
}

/// What the loop does after one renewal attempt.
#[derive(Debug, Default)]
pub struct Renewer {
    /// Failures in a row.
    failures: u32,
}

impl Renewer {
    /// Records the outcome of one renewal and says how long to wait before
    /// the next: [`RENEW_INTERVAL`] after a success, a doubling retry from
    /// [`FIRST_RETRY`] (never longer than the interval) after a failure.
    /// Logs the 1st, 2nd, 4th, … failure in a row and the recovery.
    pub fn outcome(
        &mut self,
        node: &str,
        result: Result<(), StoreError>,
        problems: &Problems,
    ) -> Duration {
        match result {
            Ok(()) => {
                if self.failures > 0 {
                    tracing::info!(%node, failures = self.failures, "liveness lease renewed again");
                    problems.set(Source::Lease, Vec::new());
                }
                self.failures = 0;
                RENEW_INTERVAL
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                if self.failures.is_power_of_two() {
                    tracing::warn!(%node, failures = self.failures, error = %e,
                        "cannot renew the liveness lease; retrying (the data plane keeps forwarding)");
                }
                problems.set(
                    Source::Lease,
                    vec![(
                        lease_key(node),
                        format!("not renewed ({} failures in a row): {e}", self.failures),
                    )],
                );
                self.retry_in()
            }
        }
    }

    /// The wait before the next attempt after `self.failures` failures.
    pub fn retry_in(&self) -> Duration {
        let shift = self.failures.saturating_sub(1).min(8);
        FIRST_RETRY.saturating_mul(1 << shift).min(RENEW_INTERVAL)
    }
}

/// Renews `node`'s lease forever; returns only if the thread is asked to
/// stop (`stop` disconnected).
pub fn renew_forever(
    store: Arc<dyn Store>,
    node: String,
    problems: Arc<Problems>,
    stop: crossbeam_channel::Receiver<()>,
) {
    let mut renewer = Renewer::default();
    loop {
        let wait = renewer.outcome(&node, renew_now(&*store, &node), &problems);
        if !matches!(
            stop.recv_timeout(wait),
            Err(crossbeam_channel::RecvTimeoutError::Timeout)
        ) {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn refused() -> StoreError {
        StoreError::Io {
            op: "write",
            path: "/store".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        }
    }

    #[test]
    fn failures_retry_sooner_are_reported_and_clear_on_success() {
        let problems = Problems::default();
        let mut r = Renewer::default();
        assert_eq!(r.outcome("n1", Ok(()), &problems), RENEW_INTERVAL);
        let waits: Vec<_> = (0..5)
            .map(|_| r.outcome("n1", Err(refused()), &problems))
            .collect();
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 2000].map(Duration::from_millis)
        );
        let listed = problems.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].source, "lease");
        assert_eq!(listed[0].object, "nodeleases/n1");
        assert!(
            listed[0].reason.contains("5 failures"),
            "{}",
            listed[0].reason
        );
        assert_eq!(r.outcome("n1", Ok(()), &problems), RENEW_INTERVAL);
        assert!(problems.list().is_empty());
    }

    #[test]
    fn the_loop_renews_and_stops_when_told() {
        let store: Arc<dyn Store> = Arc::new(tapestry_cluster::MemStore::new());
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let t = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || renew_forever(store, "n1".into(), Arc::default(), stop_rx))
        };
        // The first renewal is immediate.
        let mut found = None;
        for _ in 0..200 {
            found = store.get("nodeleases/n1").unwrap();
            if found.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let e = found.expect("a lease within 2 s");
        let lease = liveness::NodeLease::decode(&e.key, &e.value).unwrap();
        assert_eq!(lease.holder, "n1");
        drop(stop_tx);
        t.join().unwrap();
    }
}
