//! The cluster store: a revisioned key-value map with compare-and-swap and
//! watch, the one source of truth every agent and the CLI share.
//!
//! Why this shape: it is the subset of etcd's v3 API that Kubernetes-style
//! controllers need. Every change bumps one global revision; each key carries
//! the revision of its last change (its *mod revision*), which is what
//! [`Store::compare_and_swap`] compares, so two agents racing for the same key
//! (a subnet lease, a pod IP) cannot both win. [`Store::watch`] replays every
//! change after a given revision, in order, then streams new ones, so the
//! list-then-watch pattern loses nothing and a restarted watcher catches up
//! from the last revision it saw. History is finite: a watch from before the
//! compaction point fails with [`StoreError::Compacted`] and the caller
//! relists.
//!
//! Backends: [`DirStore`], a directory on disk that several processes on one
//! machine share (the lab's default); `EtcdStore` (cargo feature `etcd`), an
//! etcd v3 cluster that many hosts share; and [`MemStore`], in memory, for
//! tests and single-process simulations. [`StoreSpec`] names a store as a
//! string (a directory path, or `etcd://HOST:PORT[,HOST:PORT…]`), the form
//! every binary's `--store` and `TAPESTRY_STORE` take. Keys are `/`-separated paths such as
//! `pods/default/web-a`; values are opaque bytes (JSON by convention).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;

mod dir;
pub mod dir_format;
#[cfg(feature = "etcd")]
mod etcd;
mod memory;
mod notify;
mod spec;

pub use dir::{DirStore, DirStoreOptions, StoreFaults};
#[cfg(feature = "etcd")]
pub use etcd::{EtcdStore, EtcdStoreOptions, DEFAULT_PREFIX as ETCD_DEFAULT_PREFIX};
pub use memory::MemStore;
pub use spec::StoreSpec;

/// A store revision. 0 means "nothing yet"; the first change is revision 1.
pub type Revision = u64;

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 200;

/// One key's current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    /// The value bytes (JSON by convention).
    pub value: Vec<u8>,
    /// Revision of the change that wrote this value (mod revision).
    pub revision: Revision,
}

/// One change, as a watch delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The key was created or overwritten.
    Put(Entry),
    /// The key was deleted at `revision`.
    Delete { key: String, revision: Revision },
}

impl Event {
    /// The key that changed.
    pub fn key(&self) -> &str {
        match self {
            Event::Put(e) => &e.key,
            Event::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put(e) => e.revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The filesystem refused an operation.
    #[error("store: cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A compare-and-swap found another revision than expected
    /// (`actual` 0: the key does not exist).
    #[error("conflict on {key}: expected revision {expected}, found {actual}; re-read and retry")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    /// The watch asked for history that was compacted away.
    #[error(
        "cannot watch from revision {requested}: history before revision {oldest} was compacted; \
         list again and watch from the list's revision"
    )]
    Compacted {
        requested: Revision,
        /// The smallest `after` a watch may start from now.
        oldest: Revision,
    },
    /// Store files do not have the expected format.
    #[error("store file {} is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// A key that cannot be stored.
    #[error("invalid store key `{key}`: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// The value is not valid JSON for the expected type.
    #[error("cannot decode value of {key}: {message}")]
    Decode { key: String, message: String },
    /// No etcd member answered in time (down, unreachable, or without a
    /// leader).
    #[error("store: etcd at {endpoints} unreachable: {message}")]
    Unavailable { endpoints: String, message: String },
    /// etcd answered a request with an error.
    #[error("store: etcd at {endpoints} refused {op}: {message}")]
    Backend {
        endpoints: String,
        op: &'static str,
        message: String,
    },
    /// A store named by a string (`--store`, `TAPESTRY_STORE`) that cannot
    /// be opened as given.
    #[error("invalid store `{spec}`: {reason}")]
    Spec { spec: String, reason: String },
}

/// A stream of changes under a prefix. Dropping it stops the watch.
///
/// Items are `Ok(event)` in revision order; an `Err` (e.g. `Compacted` when
/// the watcher fell behind compaction) ends the stream.
pub struct Watch {
    rx: Receiver<Result<Event, StoreError>>,
    _guard: Option<Box<dyn Send>>,
}

impl Watch {
    /// Wraps a receiver; `guard` is dropped with the watch (to stop a
    /// backend's feeder thread).
    pub fn new(rx: Receiver<Result<Event, StoreError>>, guard: Option<Box<dyn Send>>) -> Self {
        Self { rx, _guard: guard }
    }

    /// Blocks for the next item; `None` when the store side has closed.
    pub fn recv(&self) -> Option<Result<Event, StoreError>> {
        self.rx.recv().ok()
    }

    /// Waits at most `timeout`; `None` on timeout or when the store side
    /// has closed.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Result<Event, StoreError>> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// The next item if one is ready.
    pub fn try_recv(&self) -> Option<Result<Event, StoreError>> {
        self.rx.try_recv().ok()
    }

    /// The underlying channel, for `crossbeam_channel::select!` over several
    /// watches.
    pub fn receiver(&self) -> &Receiver<Result<Event, StoreError>> {
        &self.rx
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("pending", &self.rx.len())
            .finish()
    }
}

/// The store interface every backend implements.
pub trait Store: Send + Sync {
    /// The key's current value, if any.
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;

    /// Every entry whose key starts with `prefix`, sorted by key, and the
    /// store revision the listing reflects (watch from it to miss nothing).
    fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError>;

    /// Writes unconditionally; returns the new revision.
    fn put(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError>;

    /// Writes only if the key's current mod revision is `expected`
    /// (0 = must not exist). `Err(StoreError::Conflict{..})` otherwise.
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: &[u8],
    ) -> Result<Revision, StoreError>;

    /// Deletes the key; `Some(revision)` of the deletion, `None` if it did not exist.
    fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError>;

    /// Deletes only if the key's current mod revision is `expected`.
    /// `Err(StoreError::Conflict{..})` otherwise (including a missing key).
    fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<Revision, StoreError>;

    /// Events for keys under `prefix` with revision > `after`, in revision
    /// order — including those that happened before this call.
    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError>;

    /// The current store revision.
    fn revision(&self) -> Result<Revision, StoreError>;

    /// Writes a key that should live only as long as its writer keeps
    /// rewriting it (a node's liveness lease, [`crate::liveness`]): `ttl`
    /// after the last write it may vanish. A store with real leases (etcd)
    /// should override this to attach one of `ttl`, so the key is deleted
    /// when the writer stops; the default, for stores without (the directory
    /// and memory stores, and for now the etcd one), is a plain
    /// [`Store::put`], and readers judge expiry from the value itself.
    /// Readers must therefore treat a missing key like an expired one.
    fn put_expiring(&self, key: &str, value: &[u8], ttl: Duration) -> Result<Revision, StoreError> {
        let _ = ttl;
        self.put(key, value)
    }
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        (**self).get(key)
    }
    fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError> {
        (**self).list(prefix)
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError> {
        (**self).put(key, value)
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: &[u8],
    ) -> Result<Revision, StoreError> {
        (**self).compare_and_swap(key, expected, value)
    }
    fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        (**self).delete(key)
    }
    fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<Revision, StoreError> {
        (**self).compare_and_delete(key, expected)
    }
    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError> {
        (**self).watch(prefix, after)
    }
    fn revision(&self) -> Result<Revision, StoreError> {
        (**self).revision()
    }
    fn put_expiring(&self, key: &str, value: &[u8], ttl: Duration) -> Result<Revision, StoreError> {
        (**self).put_expiring(key, value, ttl)
    }
}

impl<S: Store + ?Sized> Store for &S {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        (**self).get(key)
    }
    fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError> {
        (**self).list(prefix)
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError> {
        (**self).put(key, value)
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: &[u8],
    ) -> Result<Revision, StoreError> {
        (**self).compare_and_swap(key, expected, value)
    }
    fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        (**self).delete(key)
    }
    fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<Revision, StoreError> {
        (**self).compare_and_delete(key, expected)
    }
    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError> {
        (**self).watch(prefix, after)
    }
    fn revision(&self) -> Result<Revision, StoreError> {
        (**self).revision()
    }
    fn put_expiring(&self, key: &str, value: &[u8], ttl: Duration) -> Result<Revision, StoreError> {
        (**self).put_expiring(key, value, ttl)
    }
}

/// Moves a file that cannot be read aside to `NAME.corrupt-<unix seconds>`
/// (with `-N` appended if that name is taken) and returns where it went, so
/// it is kept for inspection and never overwritten (CONVENTIONS.md §19).
pub fn quarantine_file(path: &Path) -> std::io::Result<PathBuf> {
    quarantine_file_to(path, path)
}

/// Moves `from` to `like`'s quarantine name (see [`quarantine_file`]). The
/// hard link fails rather than replace an existing file, so two processes
/// quarantining at once cannot overwrite each other's copy.
pub(crate) fn quarantine_file_to(from: &Path, like: &Path) -> std::io::Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = like.file_name().map_or_else(
        || std::ffi::OsString::from("file"),
        std::ffi::OsStr::to_os_string,
    );
    for n in 0u32..1000 {
        let mut candidate = name.clone();
        candidate.push(format!(".corrupt-{secs}"));
        if n > 0 {
            candidate.push(format!("-{n}"));
        }
        let to = like.with_file_name(candidate);
        match std::fs::hard_link(from, &to) {
            Ok(()) => {
                std::fs::remove_file(from)?;
                return Ok(to);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "every quarantine name is taken",
    ))
}

/// Rejects keys no backend can hold: empty, too long, control characters,
/// or a leading `/`.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let reason = if key.is_empty() {
        "empty"
    } else if key.len() > MAX_KEY_LEN {
        "longer than 200 bytes"
    } else if key.chars().any(char::is_control) {
        "contains a control character"
    } else if key.starts_with('/') {
        "starts with `/`"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidKey {
        key: key.into(),
        reason,
    })
}

/// What a write decided to do with a key, given its current mod revision.
pub(crate) enum Mutation {
    Put(Vec<u8>),
    Delete,
}

/// The write rules shared by every backend: given the key's current mod
/// revision (0 = absent), what to do, or why not. `Ok(None)` is a no-op
/// (deleting a missing key).
pub(crate) enum WriteOp<'a> {
    Put(&'a [u8]),
    Cas(Revision, &'a [u8]),
    Delete,
    CasDelete(Revision),
}

impl WriteOp<'_> {
    pub(crate) fn decide(
        &self,
        key: &str,
        current: Revision,
    ) -> Result<Option<Mutation>, StoreError> {
        let conflict = |expected| StoreError::Conflict {
            key: key.into(),
            expected,
            actual: current,
        };
        match *self {
            WriteOp::Put(v) => Ok(Some(Mutation::Put(v.to_vec()))),
            WriteOp::Cas(expected, v) if expected == current => Ok(Some(Mutation::Put(v.to_vec()))),
            WriteOp::Cas(expected, _) => Err(conflict(expected)),
            WriteOp::Delete if current == 0 => Ok(None),
            WriteOp::Delete => Ok(Some(Mutation::Delete)),
            WriteOp::CasDelete(expected) if expected == current && current != 0 => {
                Ok(Some(Mutation::Delete))
            }
            WriteOp::CasDelete(expected) => Err(conflict(expected)),
        }
    }
}

#[cfg(test)]
mod conformance;
#[cfg(all(any(test, feature = "test-utils"), feature = "etcd"))]
pub mod etcd_harness;
#[cfg(all(test, feature = "etcd"))]
mod etcd_tests;
