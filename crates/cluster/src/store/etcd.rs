//! The etcd store backend: the [`Store`] interface on an etcd v3 cluster, the
//! store a cluster of real hosts shares (the directory store is one
//! machine's).
//!
//! Mapping, chosen so an operator's `etcdctl` sees what Kubernetes would
//! show: store key `pods/default/web` is etcd key `/tapestry/pods/default/web`
//! (the prefix is configurable); a value is the same bytes; our revision *is*
//! etcd's revision (etcd's global revision, and each key's `mod_revision`),
//! so a revision read through `etcdctl` means the same thing here. A fresh
//! etcd is at revision 1, not 0: nothing here assumes revisions start
//! anywhere.
//!
//! - [`Store::compare_and_swap`] and [`Store::compare_and_delete`] are one
//!   etcd transaction each: `if mod_revision(key) == expected` (expected 0:
//!   `version(key) == 0`, the key is absent) `then put/delete else get`, so
//!   a conflict reports the revision that won, read atomically in the same
//!   transaction.
//! - [`Store::list`] reads pages of 1,000 keys, every page after the first
//!   pinned to the first page's revision, so the listing is one consistent
//!   snapshot however large, and returns that revision.
//! - [`Store::watch`] is an etcd watch from `after + 1`. A watch stream that
//!   breaks (a member killed, the connection lost, the member losing its
//!   leader) is opened again, with backoff, from the revision after the last
//!   event delivered: no gap, no duplicate. A start revision etcd has
//!   compacted away gives [`StoreError::Compacted`], from `watch` itself when
//!   it is known at once, else as the stream's last item.
//!
//! The [`Store`] trait is synchronous: the store owns a small tokio runtime
//! (one worker thread, which also runs the watch streams) and blocks on it.
//! Every call has a deadline ([`EtcdStoreOptions::request_timeout`]), so a
//! store whose etcd is down answers [`StoreError::Unavailable`] instead of
//! hanging; the client spreads requests over every endpoint and stops using
//! one that does not answer. etcd keeps all history until it is compacted:
//! run etcd with `--auto-compaction-mode`/`--auto-compaction-retention` (as
//! Kubernetes deployments do), or call [`EtcdStore::compact`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue,
    PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::runtime::Runtime;

use super::{check_key, Entry, Event, Revision, Store, StoreError, Watch};

/// The etcd key prefix every store key lives under by default.
pub const DEFAULT_PREFIX: &str = "/tapestry/";

/// Keys per page of a [`Store::list`].
const PAGE: i64 = 1000;

/// First and longest wait between attempts to reopen a broken watch.
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(100);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdStoreOptions {
    /// `HOST:PORT` of each member (plain HTTP; the client fails over
    /// between them).
    pub endpoints: Vec<String>,
    /// Prefix of every etcd key, ending in `/` (default [`DEFAULT_PREFIX`]).
    pub prefix: String,
    /// Longest wait for a TCP connection to one member.
    pub connect_timeout: Duration,
    /// Longest wait for any one store call, connection included.
    pub request_timeout: Duration,
}

impl EtcdStoreOptions {
    /// Defaults for `endpoints`: prefix `/tapestry/`, 2 s to connect, 5 s a
    /// call.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// A [`Store`] on etcd. Cheap to share behind an `Arc`; every clone of the
/// client inside uses the same connections.
pub struct EtcdStore {
    rt: Arc<Runtime>,
    client: Client,
    prefix: String,
    /// The endpoints, comma-separated, for error messages.
    endpoints: String,
    timeout: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Why one etcd call failed, before it becomes a [`StoreError`].
enum CallError {
    /// No answer: connection refused or lost, timeout, no leader.
    /// `unapplied`: certainly not applied (no connection, or refused before
    /// any effect), so a write may be sent again.
    Unreachable { message: String, unapplied: bool },
    /// etcd answered with an error.
    Refused(String),
}

fn classify(e: etcd_client::Error) -> CallError {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            // The status message, then its causes ("tcp connect error:
            // Connection refused (os error 111)").
            let mut message = status.message().to_string();
            let mut cause = std::error::Error::source(&status);
            while let Some(c) = cause {
                let text = c.to_string();
                if !message.contains(&text) {
                    message = format!("{message}: {text}");
                }
                cause = c.source();
            }
            // The client picked a member it could not connect to (the
            // request never left), or a member without a leader refused it
            // ("etcdserver: no leader", with require-leader).
            let unapplied = message.contains("connect error") || message.contains("no leader");
            match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                    CallError::Unreachable { message, unapplied }
                }
                _ if unapplied => CallError::Unreachable { message, unapplied },
                _ => CallError::Refused(format!("{message} ({:?})", status.code())),
            }
        }
        etcd_client::Error::TransportError(e) => CallError::Unreachable {
            message: e.to_string(),
            unapplied: false,
        },
        etcd_client::Error::IoError(e) => CallError::Unreachable {
            message: e.to_string(),
            unapplied: false,
        },
        other => CallError::Refused(other.to_string()),
    }
}

/// Whether a call is safe to send again after an ambiguous failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// A read: send again after any failure to reach etcd.
    Read,
    /// A write: send again only if it certainly was not applied.
    Write,
}

fn revision_of(r: i64) -> Revision {
    // etcd revisions are positive; a negative one cannot come from etcd.
    Revision::try_from(r).unwrap_or(0)
}

fn to_etcd(r: Revision) -> i64 {
    // No etcd revision is above i64::MAX: such an `expected` simply never
    // matches.
    i64::try_from(r).unwrap_or(i64::MAX)
}

/// The smallest key after every key starting with `prefix` (etcd's range end
/// for a prefix). `prefix` is never empty here (it starts with the store's
/// prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: no end; etcd reads "\0" as "to the end of the keyspace".
    vec![0]
}

impl EtcdStore {
    /// A store on the etcd members `opts.endpoints`. Does not wait for etcd:
    /// connections are made on first use (and made again after a failure),
    /// so a daemon can start before etcd does; a call while no member
    /// answers fails with [`StoreError::Unavailable`] within
    /// `request_timeout`.
    pub fn connect(opts: EtcdStoreOptions) -> Result<Self, StoreError> {
        let endpoints = opts.endpoints.join(",");
        let spec_error = |reason: String| StoreError::Spec {
            spec: format!("etcd://{endpoints}"),
            reason,
        };
        if opts.endpoints.is_empty() {
            return Err(spec_error("no etcd endpoints".into()));
        }
        if !opts.prefix.starts_with('/') || !opts.prefix.ends_with('/') {
            return Err(spec_error(format!(
                "etcd key prefix `{}` must start and end with `/`",
                opts.prefix
            )));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tapestry-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend {
                endpoints: endpoints.clone(),
                op: "start the etcd client runtime",
                message: e.to_string(),
            })?;
        let urls: Vec<String> = opts
            .endpoints
            .iter()
            .map(|e| format!("http://{e}"))
            .collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(opts.connect_timeout)
            .with_timeout(opts.request_timeout)
            // Notice a member that vanished without closing the connection
            // (a partition, a frozen host) under an open watch stream: an
            // HTTP/2 ping every 10 s, dead after 5 s without its answer.
            // Slower than etcd's --grpc-keepalive-min-time (5 s), and none
            // without a stream open, which etcd also counts as abuse
            // (GOAWAY "too_many_pings").
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(false)
            // A member cut off from the quorum refuses requests and cancels
            // watches rather than serving stale data.
            .with_require_leader(true);
        let client = rt
            .block_on(async {
                tokio::time::timeout(opts.connect_timeout, Client::connect(urls, Some(options)))
                    .await
            })
            .map_err(|_| StoreError::Unavailable {
                endpoints: endpoints.clone(),
                message: format!("no connection within {:?}", opts.connect_timeout),
            })?
            .map_err(|e| match classify(e) {
                CallError::Unreachable { message, .. } => StoreError::Unavailable {
                    endpoints: endpoints.clone(),
                    message,
                },
                CallError::Refused(message) => spec_error(message),
            })?;
        Ok(Self {
            rt: Arc::new(rt),
            client,
            prefix: opts.prefix,
            endpoints,
            timeout: opts.request_timeout,
        })
    }

    /// The etcd key prefix of this store (e.g. `/tapestry/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Runs one etcd call to completion within the request deadline.
    /// `attempt` makes the request; it is made again (the client then picks
    /// another member) while the failure allows it (see [`Retry`]) and time
    /// is left.
    fn call<T, F, Fut>(
        &self,
        op: &'static str,
        retry: Retry,
        mut attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let timeout = self.timeout;
        let result = self.rt.block_on(async {
            let start = tokio::time::Instant::now();
            let mut pause = Duration::from_millis(10);
            loop {
                let left = timeout.saturating_sub(start.elapsed());
                let failure = match tokio::time::timeout(left, attempt()).await {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(e)) => classify(e),
                    Err(_) => {
                        return Err(CallError::Unreachable {
                            message: format!("no answer to {op} within {timeout:?}"),
                            unapplied: false,
                        })
                    }
                };
                let again = match &failure {
                    CallError::Unreachable { unapplied, .. } => *unapplied || retry == Retry::Read,
                    CallError::Refused(_) => false,
                };
                if !again || start.elapsed() + pause >= timeout {
                    return Err(failure);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
        });
        result.map_err(|e| self.error(op, e))
    }

    fn error(&self, op: &'static str, e: CallError) -> StoreError {
        match e {
            CallError::Unreachable { message, .. } => StoreError::Unavailable {
                endpoints: self.endpoints.clone(),
                message: if message.contains(op) {
                    message
                } else {
                    format!("{op}: {message}")
                },
            },
            CallError::Refused(message) => StoreError::Backend {
                endpoints: self.endpoints.clone(),
                op,
                message,
            },
        }
    }

    /// An unconditional put of a checked key, with `options` (a lease);
    /// returns the new revision.
    fn put_with(
        &self,
        key: &str,
        value: &[u8],
        options: Option<PutOptions>,
    ) -> Result<Revision, StoreError> {
        let ekey = self.etcd_key(key);
        let resp = self.call("put", Retry::Write, || {
            let mut kv = self.client.kv_client();
            let (ekey, value, options) = (ekey.clone(), value.to_vec(), options.clone());
            async move { kv.put(ekey, value, options).await }
        })?;
        Ok(resp.header().map_or(0, |h| revision_of(h.revision())))
    }

    fn etcd_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The entry for an etcd key-value, `None` for a key outside the prefix
    /// or not UTF-8 (not written by a store; logged and skipped).
    fn entry(&self, kv: &KeyValue) -> Option<Entry> {
        let key = store_key(&self.prefix, kv.key())?;
        Some(Entry {
            key,
            value: kv.value().to_vec(),
            revision: revision_of(kv.mod_revision()),
        })
    }

    /// Compacts etcd's history up to `revision`: afterwards a watch from
    /// before `revision - 1` fails with [`StoreError::Compacted`]. Waits
    /// until the compaction is applied. Compacting to a revision at or
    /// below the current compaction point is not an error.
    pub fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let rev = to_etcd(revision);
        match self.call("compact", Retry::Read, || {
            let mut kv = self.client.kv_client();
            async move {
                kv.compact(rev, Some(CompactionOptions::new().with_physical()))
                    .await
            }
        }) {
            Ok(_) => Ok(()),
            Err(StoreError::Backend { message, .. }) if message.contains("compacted") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether the member this store talks to is the raft leader (tests
    /// that kill the leader or a follower use it on one-endpoint stores).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn is_leader(&self) -> Result<bool, StoreError> {
        let status = self.call("status", Retry::Read, || {
            let mut m = self.client.maintenance_client();
            async move { m.status().await }
        })?;
        Ok(status.header().map(|h| h.member_id()) == Some(status.leader()))
    }

    /// A conditional write: `when` holds → `op`, else read the key's
    /// current revision for the conflict.
    fn txn(
        &self,
        op_name: &'static str,
        key: &str,
        expected: Revision,
        op: TxnOp,
    ) -> Result<Revision, StoreError> {
        let ekey = self.etcd_key(key);
        let when = if expected == 0 {
            Compare::version(ekey.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(ekey.clone(), CompareOp::Equal, to_etcd(expected))
        };
        let txn = Txn::new()
            .when([when])
            .and_then([op])
            .or_else([TxnOp::get(ekey, None)]);
        let resp = self.call(op_name, Retry::Write, || {
            let mut kv = self.client.kv_client();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })?;
        let revision = resp.header().map_or(0, |h| revision_of(h.revision()));
        if resp.succeeded() {
            return Ok(revision);
        }
        let actual = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => Some(g.kvs().first().map_or(0, |kv| kv.mod_revision())),
                _ => None,
            })
            .map_or(0, revision_of);
        Err(StoreError::Conflict {
            key: key.into(),
            expected,
            actual,
        })
    }

    /// Fails with `Compacted` if etcd no longer has revision `after + 1`
    /// under `eprefix`. A read at that revision tells whether it was
    /// compacted; only a watch tells the compaction point.
    fn check_not_compacted(&self, eprefix: &str, after: Revision) -> Result<(), StoreError> {
        let start = to_etcd(after.saturating_add(1));
        let read = self.call("watch", Retry::Read, || {
            let mut kv = self.client.kv_client();
            let key = eprefix.to_string();
            async move {
                kv.get(
                    key,
                    Some(
                        GetOptions::new()
                            .with_revision(start)
                            .with_count_only()
                            .with_limit(1),
                    ),
                )
                .await
            }
        });
        match read {
            Err(StoreError::Backend { message, .. }) if message.contains("compacted") => {}
            // A future revision: nothing to replay, nothing compacted.
            Err(StoreError::Backend { message, .. }) if message.contains("future revision") => {
                return Ok(())
            }
            Err(e) => return Err(e),
            Ok(_) => return Ok(()),
        }
        let compacted = self.call("watch", Retry::Read, || {
            let mut watch = self.client.watch_client();
            let key = eprefix.to_string();
            async move {
                let mut stream = watch
                    .watch(
                        key,
                        Some(WatchOptions::new().with_prefix().with_start_revision(start)),
                    )
                    .await?;
                while let Some(resp) = stream.message().await? {
                    if resp.compact_revision() != 0 {
                        return Ok(resp.compact_revision());
                    }
                    if resp.canceled() {
                        break;
                    }
                }
                Err(etcd_client::Error::WatchError(
                    "watch ended without telling the compaction revision".into(),
                ))
            }
        })?;
        Err(StoreError::Compacted {
            requested: after,
            oldest: revision_of(compacted).saturating_sub(1),
        })
    }
}

/// The store key of an etcd key under `prefix`; `None` (logged) for one a
/// store cannot have written.
fn store_key(prefix: &str, ekey: &[u8]) -> Option<String> {
    let Some(rest) = ekey.strip_prefix(prefix.as_bytes()) else {
        tracing::warn!(key = %String::from_utf8_lossy(ekey), prefix, "etcd key outside the store prefix, skipped");
        return None;
    };
    match std::str::from_utf8(rest) {
        Ok(k) => Some(k.to_string()),
        Err(_) => {
            tracing::warn!(key = %String::from_utf8_lossy(ekey), "etcd key under the store prefix is not UTF-8, skipped");
            None
        }
    }
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        check_key(key)?;
        let ekey = self.etcd_key(key);
        let resp = self.call("get", Retry::Read, || {
            let mut kv = self.client.kv_client();
            let ekey = ekey.clone();
            async move { kv.get(ekey, None).await }
        })?;
        Ok(resp.kvs().first().and_then(|kv| self.entry(kv)))
    }

    fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError> {
        let eprefix = self.etcd_key(prefix);
        let end = prefix_end(eprefix.as_bytes());
        let mut from = eprefix.into_bytes();
        let mut entries = Vec::new();
        let mut pinned: Option<i64> = None;
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if let Some(rev) = pinned {
                opts = opts.with_revision(rev);
            }
            let resp = self.call("list", Retry::Read, || {
                let mut kv = self.client.kv_client();
                let (key, opts) = (from.clone(), opts.clone());
                async move { kv.get(key, Some(opts)).await }
            })?;
            let rev = *pinned.get_or_insert(resp.header().map_or(0, |h| h.revision()));
            entries.extend(resp.kvs().iter().filter_map(|kv| self.entry(kv)));
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((entries, revision_of(rev))),
            }
        }
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError> {
        check_key(key)?;
        self.put_with(key, value, None)
    }

    /// A fresh etcd lease of `ttl` (whole seconds, rounded up) per write,
    /// and the key put under it: the key moves to the new lease, the
    /// previous one expires with nothing attached, and when the writer stops
    /// rewriting, etcd deletes the key `ttl` after the last write (a delete
    /// event every watcher sees). A lease per write, not one kept alive,
    /// because the write carries the new renewTime anyway and it leaves no
    /// client-side lease state to lose on a reconnect; a renewing node holds
    /// at most `ttl / period + 1` leases at once.
    fn put_expiring(&self, key: &str, value: &[u8], ttl: Duration) -> Result<Revision, StoreError> {
        check_key(key)?;
        let secs = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
            .unwrap_or(i64::MAX)
            .max(1);
        // Granting twice is harmless (the unused lease expires), so a grant
        // is retried like a read.
        let lease = self
            .call("grant a lease", Retry::Read, || {
                let mut leases = self.client.lease_client();
                async move { leases.grant(secs, None).await }
            })?
            .id();
        self.put_with(key, value, Some(PutOptions::new().with_lease(lease)))
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: &[u8],
    ) -> Result<Revision, StoreError> {
        check_key(key)?;
        let op = TxnOp::put(self.etcd_key(key), value.to_vec(), None);
        self.txn("compare-and-swap", key, expected, op)
    }

    fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        check_key(key)?;
        let ekey = self.etcd_key(key);
        let resp = self.call("delete", Retry::Write, || {
            let mut kv = self.client.kv_client();
            let ekey = ekey.clone();
            async move { kv.delete(ekey, None).await }
        })?;
        Ok((resp.deleted() > 0).then(|| resp.header().map_or(0, |h| revision_of(h.revision()))))
    }

    fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<Revision, StoreError> {
        check_key(key)?;
        if expected == 0 {
            // Deleting "a key that must not exist" always conflicts; report
            // what is there.
            let actual = self.get(key)?.map_or(0, |e| e.revision);
            return Err(StoreError::Conflict {
                key: key.into(),
                expected,
                actual,
            });
        }
        let op = TxnOp::delete(self.etcd_key(key), None);
        self.txn("compare-and-delete", key, expected, op)
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError> {
        let eprefix = self.etcd_key(prefix);
        self.check_not_compacted(&eprefix, after)?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let feeder = WatchFeeder {
            client: self.client.clone(),
            prefix: self.prefix.clone(),
            eprefix,
            next: to_etcd(after.saturating_add(1)),
            tx,
            endpoints: self.endpoints.clone(),
        };
        let task = self.rt.spawn(feeder.run());
        Ok(Watch::new(
            rx,
            Some(Box::new(StopOnDrop {
                task,
                _rt: Arc::clone(&self.rt),
            })),
        ))
    }

    fn revision(&self) -> Result<Revision, StoreError> {
        let resp = self.call("revision", Retry::Read, || {
            let mut kv = self.client.kv_client();
            let key = self.prefix.clone();
            async move { kv.get(key, Some(GetOptions::new().with_count_only())).await }
        })?;
        Ok(resp.header().map_or(0, |h| revision_of(h.revision())))
    }
}

/// Held by a [`Watch`]: stops its feeder task when the watch is dropped, and
/// keeps the runtime alive while the watch is (it may outlive the store).
struct StopOnDrop {
    task: tokio::task::JoinHandle<()>,
    _rt: Arc<Runtime>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How one watch stream ended.
enum StreamEnd {
    /// The watcher dropped its receiver.
    Closed,
    /// etcd compacted the revision the stream needed next.
    Compacted(i64),
    /// The stream broke; open another.
    Broken(String),
}

/// The task behind one [`Watch`]: an etcd watch stream, reopened from the
/// next undelivered revision whenever it breaks.
struct WatchFeeder {
    client: Client,
    prefix: String,
    eprefix: String,
    /// The first revision not yet delivered.
    next: i64,
    tx: Sender<Result<Event, StoreError>>,
    endpoints: String,
}

impl WatchFeeder {
    async fn run(mut self) {
        let mut backoff = WATCH_BACKOFF_MIN;
        loop {
            let before = self.next;
            match self.stream().await {
                StreamEnd::Closed => return,
                StreamEnd::Compacted(compact) => {
                    let _ = self.tx.send(Err(StoreError::Compacted {
                        requested: revision_of(self.next.saturating_sub(1)),
                        oldest: revision_of(compact).saturating_sub(1),
                    }));
                    return;
                }
                StreamEnd::Broken(why) => {
                    if self.next > before {
                        backoff = WATCH_BACKOFF_MIN;
                    }
                    tracing::warn!(
                        endpoints = %self.endpoints,
                        prefix = %self.eprefix,
                        from_revision = self.next,
                        retry_in = ?backoff,
                        "store: etcd watch broken ({why}); reopening"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
                }
            }
        }
    }

    /// One watch stream from `self.next`, until it ends.
    async fn stream(&mut self) -> StreamEnd {
        let mut watch = self.client.watch_client();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.next);
        let mut stream = match watch.watch(self.eprefix.clone(), Some(opts)).await {
            Ok(s) => s,
            Err(e) => return StreamEnd::Broken(e.to_string()),
        };
        loop {
            let resp = match stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => return StreamEnd::Broken("stream closed by etcd".into()),
                Err(e) => return StreamEnd::Broken(e.to_string()),
            };
            if resp.compact_revision() != 0 {
                return StreamEnd::Compacted(resp.compact_revision());
            }
            if resp.canceled() {
                return StreamEnd::Broken(format!("canceled: {}", resp.cancel_reason()));
            }
            let first_new = self.next;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let rev = kv.mod_revision();
                // Never deliver what an earlier stream already did.
                if rev < first_new {
                    continue;
                }
                let Some(key) = store_key(&self.prefix, kv.key()) else {
                    continue;
                };
                let event = match ev.event_type() {
                    EventType::Put => Event::Put(Entry {
                        key,
                        value: kv.value().to_vec(),
                        revision: revision_of(rev),
                    }),
                    EventType::Delete => Event::Delete {
                        key,
                        revision: revision_of(rev),
                    },
                };
                if self.tx.send(Ok(event)).is_err() {
                    return StreamEnd::Closed;
                }
                self.next = self.next.max(rev.saturating_add(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/tapestry/"), b"/tapestry0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}
