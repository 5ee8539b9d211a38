//! The cluster store revision each of the agent's tables reflects, for
//! `tapestry status` (and the scale bench, which waits on it).
//!
//! Route sync and service sync each reconcile from a [`ClusterCache`]
//! snapshot; once a table built from (or checked against) a snapshot is
//! published, the sync loop records that snapshot's revision here. The cache
//! applies watch events in revision order and publishes whole batches, so a
//! snapshot at revision R holds every change up to R: a table showing R
//! reflects every object written at R or before. (A revision that moves only
//! keys the cache does not keep is published with the next change it does
//! keep: the figure can lag the store, never lead it.)
//!
//! [`ClusterCache`]: tapestry_cluster::cache::ClusterCache

use std::sync::atomic::{AtomicU64, Ordering};

/// Per table, the newest revision reflected; 0 before the first publication.
#[derive(Debug, Default)]
pub struct Reflected {
    routes: AtomicU64,
    services: AtomicU64,
}

impl Reflected {
    /// The route table now reflects `revision`. Never moves backwards (a
    /// relist after a compaction cannot return an older revision, but a
    /// stale writer must not undo a newer one either).
    pub fn routes_at(&self, revision: u64) {
        self.routes.fetch_max(revision, Ordering::Release);
    }

    /// The service table now reflects `revision`; see [`Reflected::routes_at`].
    pub fn services_at(&self, revision: u64) {
        self.services.fetch_max(revision, Ordering::Release);
    }

    pub fn routes(&self) -> u64 {
        self.routes.load(Ordering::Acquire)
    }

    pub fn services(&self) -> u64 {
        self.services.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_zero_and_tracks_each_table_on_its_own() {
        let r = Reflected::default();
        assert_eq!((r.routes(), r.services()), (0, 0));
        r.routes_at(7);
        assert_eq!((r.routes(), r.services()), (7, 0));
        r.services_at(9);
        assert_eq!((r.routes(), r.services()), (7, 9));
    }

    #[test]
    fn never_moves_backwards() {
        let r = Reflected::default();
        r.services_at(12);
        r.services_at(5);
        assert_eq!(r.services(), 12);
        r.routes_at(3);
        r.routes_at(2);
        assert_eq!(r.routes(), 3);
    }
}
