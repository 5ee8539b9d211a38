//! In-memory store backend: same semantics as [`super::DirStore`], for unit
//! tests of code built on the store and for single-process simulations of a
//! whole cluster. Not shared between processes and not persistent.
//!
//! One mutex guards the map, the event history and the watcher list, so a
//! watch registered while replaying history cannot miss or duplicate an
//! event (replay and registration happen under the same lock).

use std::collections::{BTreeMap, VecDeque};
// The Mutex ban in clippy.toml is for the packet path; this is control-plane
// test and simulation code where one lock per store operation is the point.
#[allow(clippy::disallowed_types)]
use std::sync::{Mutex, MutexGuard};

use crossbeam_channel::Sender;

use super::{check_key, Entry, Event, Revision, Store, StoreError, Watch, WriteOp};

/// History kept for watches, in events, by default.
const DEFAULT_HISTORY: usize = 10_000;

/// An in-memory [`Store`].
pub struct MemStore {
    #[allow(clippy::disallowed_types)]
    inner: Mutex<Inner>,
    history_limit: usize,
}

struct Inner {
    revision: Revision,
    /// Watches may start from any revision >= this.
    compacted: Revision,
    data: BTreeMap<String, (Vec<u8>, Revision)>,
    history: VecDeque<Event>,
    watchers: Vec<(String, Sender<Result<Event, StoreError>>)>,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    /// An empty store keeping the last 10,000 events for watches.
    pub fn new() -> Self {
        Self::with_history(DEFAULT_HISTORY)
    }

    /// An empty store keeping the last `limit` events (at least 1).
    #[allow(clippy::disallowed_types)]
    pub fn with_history(limit: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                revision: 0,
                compacted: 0,
                data: BTreeMap::new(),
                history: VecDeque::new(),
                watchers: Vec::new(),
            }),
            history_limit: limit.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated
        // (every update is a single insert/remove), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, key: &str, op: WriteOp<'_>) -> Result<Option<Revision>, StoreError> {
        check_key(key)?;
        let mut inner = self.lock();
        let current = inner.data.get(key).map_or(0, |(_, r)| *r);
        let Some(mutation) = op.decide(key, current)? else {
            return Ok(None);
        };
        inner.revision += 1;
        let revision = inner.revision;
        let event = match mutation {
            super::Mutation::Put(value) => {
                inner
                    .data
                    .insert(key.to_string(), (value.clone(), revision));
                Event::Put(Entry {
                    key: key.to_string(),
                    value,
                    revision,
                })
            }
            super::Mutation::Delete => {
                inner.data.remove(key);
                Event::Delete {
                    key: key.to_string(),
                    revision,
                }
            }
        };
        inner.watchers.retain(|(prefix, tx)| {
            !key.starts_with(prefix.as_str()) || tx.send(Ok(event.clone())).is_ok()
        });
        inner.history.push_back(event);
        while inner.history.len() > self.history_limit {
            if let Some(old) = inner.history.pop_front() {
                inner.compacted = old.revision();
            }
        }
        Ok(Some(revision))
    }
}

impl Store for MemStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        check_key(key)?;
        Ok(self.lock().data.get(key).map(|(value, revision)| Entry {
            key: key.to_string(),
            value: value.clone(),
            revision: *revision,
        }))
    }

    fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError> {
        let inner = self.lock();
        let entries = inner
            .data
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, r))| Entry {
                key: k.clone(),
                value: v.clone(),
                revision: *r,
            })
            .collect();
        Ok((entries, inner.revision))
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError> {
        self.write(key, WriteOp::Put(value))
            .map(|r| r.unwrap_or_default())
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: &[u8],
    ) -> Result<Revision, StoreError> {
        self.write(key, WriteOp::Cas(expected, value))
            .map(|r| r.unwrap_or_default())
    }

    fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        self.write(key, WriteOp::Delete)
    }

    fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<Revision, StoreError> {
        self.write(key, WriteOp::CasDelete(expected))
            .map(|r| r.unwrap_or_default())
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError> {
        let mut inner = self.lock();
        if after < inner.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                oldest: inner.compacted,
            });
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        for event in inner.history.iter() {
            if event.revision() > after && event.key().starts_with(prefix) {
                // The receiver is alive: it is in our hands.
                let _ = tx.send(Ok(event.clone()));
            }
        }
        inner.watchers.push((prefix.to_string(), tx));
        Ok(Watch::new(rx, None))
    }

    fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.lock().revision)
    }
}
