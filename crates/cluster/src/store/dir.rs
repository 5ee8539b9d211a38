//! Directory store backend: the cluster store as files in one directory that
//! every agent process on the machine opens (the lab's default).
//!
//! Layout under the root:
//!
//! ```text
//! lock               flock(2) target: exclusive for writes, shared for reads
//! state              "<revision> <compacted> <log_len>\n", replaced atomically
//! log/events.log     {"compacted":C} header, then one JSON line per change
//! keys/k-<escaped>   "<mod revision>\n<value bytes>", replaced atomically
//! ```
//!
//! Why this design: the event log is the commit point (a write-ahead log).
//! A write takes the exclusive lock, appends its line to the log and syncs
//! it, then replaces the key file (temporary file, fsync, rename) and finally
//! the `state` file. A process that dies between those steps leaves a log
//! longer than `state.log_len`; the next process to take the lock replays the
//! missing lines into the key files before doing anything else, and cuts off
//! a torn last line. Readers hold the shared lock, so they never see a
//! half-done write; key files are only ever renamed into place, so even a
//! reader without the lock never sees a partial value.
//!
//! `flock` locks belong to an open file description, so every operation opens
//! the lock file afresh: two threads of one process exclude each other just
//! like two processes do. Watches tail the log from their last revision,
//! woken by inotify (see `notify`); the log is compacted to the newest
//! `max_events / 2` changes once it holds more than `max_events`, and a watch
//! from before the compaction point gets [`StoreError::Compacted`].
//! Keys map to file names by percent-escaping everything but `[A-Za-z0-9._-]`
//! (so `pods/default/web-a` is `k-pods%2Fdefault%2Fweb-a`). The formats are
//! decoded in [`super::dir_format`].
//!
//! Faults, and what each costs (each is logged and counted in
//! [`StoreFaults`]; the tests inject every one for real):
//! - a write that fails before it commits (a full disk while appending or
//!   writing the key file) is undone: its log line is cut off again and the
//!   caller gets the error. Once the line is logged and applied the write
//!   has happened and reports success, even if recording `state` or
//!   compacting then fails (the next operation rebuilds `state` from the
//!   log; the next write compacts again);
//! - an unreadable `state` file (or one whose compaction point is past its
//!   revision) is moved aside to `state.corrupt-<time>`, never overwritten,
//!   and rebuilt from the log, replaying every line (replay is idempotent);
//! - an unreadable log line is skipped; a watch that would miss a revision
//!   because of it ends with an error, so its owner lists again; compaction
//!   drops it into `events.log.corrupt-<time>`;
//! - an unreadable key file is skipped by `list`, is an error for `get` and
//!   compare-and-swap, and is replaced by an unconditional put or delete.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use super::dir_format::{
    decode_key_file, decode_lines, decode_log, decode_state, encode_header, encode_key_file,
    encode_record, encode_state, DecodedLog, LogLine, State,
};
use super::notify::{DirWaiter, StopSignal};
use super::{
    check_key, quarantine_file, Entry, Event, Mutation, Revision, Store, StoreError, Watch, WriteOp,
};

/// Tuning for [`DirStore`].
#[derive(Debug, Clone)]
pub struct DirStoreOptions {
    /// fsync files and directories on every write (default true). Off only
    /// for tests that do not simulate power loss.
    pub sync: bool,
    /// Compact the event log once it holds more than this many events,
    /// keeping the newest half (default 10,000; at least 2).
    pub max_events: u64,
}

impl Default for DirStoreOptions {
    fn default() -> Self {
        Self {
            sync: true,
            max_events: 10_000,
        }
    }
}

/// Faults a [`DirStore`] handle met and survived since it was opened (its
/// clones share the counts). Each is also logged when it happens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreFaults {
    /// Key files a list skipped because they could not be read.
    pub bad_key_files: u64,
    /// Event log lines skipped because they could not be decoded.
    pub bad_log_lines: u64,
    /// Compactions that failed after their write committed (a later write
    /// tries again).
    pub compaction_failures: u64,
    /// Unreadable `state` files moved aside and rebuilt from the log.
    pub state_rebuilds: u64,
    /// `state` files that could not be rewritten after a change committed
    /// (the state is derived from the log again by the next operation).
    pub state_write_failures: u64,
    /// Writes that failed before they committed and were undone.
    pub rolled_back_writes: u64,
}

#[derive(Debug, Default)]
struct FaultCounters {
    bad_key_files: AtomicU64,
    bad_log_lines: AtomicU64,
    compaction_failures: AtomicU64,
    state_rebuilds: AtomicU64,
    state_write_failures: AtomicU64,
    rolled_back_writes: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A [`Store`] in a directory shared by processes on one machine.
#[derive(Debug, Clone)]
pub struct DirStore {
    paths: Arc<Paths>,
    opts: DirStoreOptions,
    faults: Arc<FaultCounters>,
}

#[derive(Debug)]
struct Paths {
    root: PathBuf,
    lock: PathBuf,
    state: PathBuf,
    keys: PathBuf,
    log_dir: PathBuf,
    log: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// `pods/default/web-a` → `k-pods%2Fdefault%2Fweb-a`.
fn key_to_file(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    out.push_str("k-");
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Inverse of [`key_to_file`]; `None` for names that are not key files.
fn file_to_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix("k-")?;
    let mut bytes = Vec::with_capacity(rest.len());
    let mut it = rest.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hi = char::from(it.next()?).to_digit(16)?;
            let lo = char::from(it.next()?).to_digit(16)?;
            bytes.push(u8::try_from(hi * 16 + lo).ok()?);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

/// The key and the mutation an event records.
fn mutation_of(ev: &Event) -> (&str, Mutation) {
    match ev {
        Event::Put(e) => (&e.key, Mutation::Put(e.value.clone())),
        Event::Delete { key, .. } => (key, Mutation::Delete),
    }
}

/// The bytes of `line` in `buf`, newline included.
fn line_bytes<'a>(buf: &'a [u8], line: &LogLine) -> &'a [u8] {
    buf.get(line.offset..line.offset + line.len + 1)
        .unwrap_or_default()
}

impl DirStore {
    /// Opens (creating if needed) the store at `root` with default options.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(root, DirStoreOptions::default())
    }

    /// Opens (creating if needed) the store at `root`.
    pub fn open_with(root: impl AsRef<Path>, opts: DirStoreOptions) -> Result<Self, StoreError> {
        let root = root.as_ref().to_path_buf();
        let paths = Paths {
            lock: root.join("lock"),
            state: root.join("state"),
            keys: root.join("keys"),
            log_dir: root.join("log"),
            log: root.join("log").join("events.log"),
            root,
        };
        for dir in [&paths.root, &paths.keys, &paths.log_dir] {
            fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        }
        let store = Self {
            paths: Arc::new(paths),
            opts: DirStoreOptions {
                max_events: opts.max_events.max(2),
                ..opts
            },
            faults: Arc::default(),
        };
        let _lock = store.lock(true)?;
        store.remove_temp_files();
        let p = &store.paths;
        if !p.log.exists() {
            if p.state.exists() {
                return Err(corrupt(&p.log, "missing, but the state file exists"));
            }
            // A new store (or a crash during creation): an empty log.
            store.write_atomic(&p.log_dir, &p.log, &encode_header(0))?;
        }
        store.recovered_state()?;
        Ok(store)
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.paths.root
    }

    /// The faults this handle (and its clones) met and survived so far.
    pub fn faults(&self) -> StoreFaults {
        let f = &self.faults;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StoreFaults {
            bad_key_files: load(&f.bad_key_files),
            bad_log_lines: load(&f.bad_log_lines),
            compaction_failures: load(&f.compaction_failures),
            state_rebuilds: load(&f.state_rebuilds),
            state_write_failures: load(&f.state_write_failures),
            rolled_back_writes: load(&f.rolled_back_writes),
        }
    }

    /// Opens the lock file and takes the lock; released when the file drops.
    fn lock(&self, exclusive: bool) -> Result<File, StoreError> {
        let p = &self.paths.lock;
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(p)
            .map_err(io_err("open", p))?;
        if exclusive { f.lock() } else { f.lock_shared() }.map_err(io_err("lock", p))?;
        Ok(f)
    }

    /// Takes the shared lock with fully recovered state; upgrades to the
    /// exclusive lock only when the state file is unreadable or a crashed
    /// writer left work to replay.
    fn read_guard(&self) -> Result<(File, State), StoreError> {
        let guard = self.lock(false)?;
        if let Ok(state) = self.read_state() {
            if self.log_len()? == state.log_len {
                return Ok((guard, state));
            }
        }
        drop(guard);
        let guard = self.lock(true)?;
        let state = self.recovered_state()?;
        Ok((guard, state))
    }

    fn log_len(&self) -> Result<u64, StoreError> {
        let p = &self.paths.log;
        Ok(fs::metadata(p).map_err(io_err("stat", p))?.len())
    }

    fn read_state(&self) -> Result<State, StoreError> {
        let p = &self.paths.state;
        let bytes = fs::read(p).map_err(io_err("read", p))?;
        decode_state(&bytes).map_err(|e| corrupt(p, e.to_string()))
    }

    /// The state, brought up to the log (exclusive lock held). A `state`
    /// file that cannot be decoded is moved aside, never overwritten, and
    /// the state is rebuilt from the log; a missing one (a new store) too.
    fn recovered_state(&self) -> Result<State, StoreError> {
        let p = &self.paths.state;
        let mut state = match self.read_state() {
            Ok(s) => s,
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                State {
                    revision: 0,
                    compacted: 0,
                    log_len: 0,
                }
            }
            Err(StoreError::Corrupt { reason, .. }) => {
                let aside = quarantine_file(p).map_err(io_err("move aside unreadable", p))?;
                bump(&self.faults.state_rebuilds);
                tracing::error!(
                    file = %p.display(),
                    moved_to = %aside.display(),
                    %reason,
                    "store state file unreadable: moved aside; rebuilding it from the event log"
                );
                State {
                    revision: 0,
                    compacted: 0,
                    log_len: 0,
                }
            }
            Err(e) => return Err(e),
        };
        self.recover(&mut state)?;
        Ok(state)
    }

    /// Records `s` after a change committed (to the log and the key files).
    /// Failing to is not the change's failure: the state file only caches
    /// what the log says, and the next operation derives it again.
    fn record_state(&self, s: &State) {
        if let Err(e) = self.write_atomic(&self.paths.root, &self.paths.state, &encode_state(s)) {
            bump(&self.faults.state_write_failures);
            tracing::warn!(error = %e, "cannot record the store state; it is rebuilt from the log next time");
        }
    }

    /// Writes `path` via a temporary file in `dir`, fsync and rename, so
    /// readers see the old or the new content, never a mix. An error means
    /// `path` was not replaced (failing to sync the directory after the
    /// rename, which every process already sees, is only logged).
    fn write_atomic(&self, dir: &Path, path: &Path, data: &[u8]) -> Result<(), StoreError> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".tmp-{}-{n}", std::process::id()));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
            f.write_all(data).map_err(io_err("write", &tmp))?;
            if self.opts.sync {
                f.sync_all().map_err(io_err("sync", &tmp))?;
            }
            fs::rename(&tmp, path).map_err(io_err("rename", path))
        })();
        match result {
            Ok(()) => self.sync_dir(dir),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) {
        if self.opts.sync {
            if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot sync the store directory");
            }
        }
    }

    /// Removes temporary files a crashed writer left (exclusive lock held).
    fn remove_temp_files(&self) {
        let p = &self.paths;
        for dir in [&p.root, &p.keys, &p.log_dir] {
            let Ok(entries) = fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }

    fn key_path(&self, key: &str) -> PathBuf {
        self.paths.keys.join(key_to_file(key))
    }

    /// Reads a key file: `(mod revision, value)`, `None` if absent.
    fn read_key(&self, key: &str) -> Result<Option<(Revision, Vec<u8>)>, StoreError> {
        let p = self.key_path(key);
        let data = match fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &p)(e)),
        };
        let (rev, value) = decode_key_file(&data).map_err(|e| corrupt(&p, e.to_string()))?;
        Ok(Some((rev, value.to_vec())))
    }

    /// Makes the key file reflect `mutation` at `rev`; an error means the
    /// key file is unchanged.
    fn apply(&self, key: &str, rev: Revision, mutation: &Mutation) -> Result<(), StoreError> {
        let p = self.key_path(key);
        match mutation {
            Mutation::Put(value) => {
                self.write_atomic(&self.paths.keys, &p, &encode_key_file(rev, value))
            }
            Mutation::Delete => match fs::remove_file(&p) {
                Ok(()) => {
                    self.sync_dir(&self.paths.keys);
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err("remove", &p)(e)),
            },
        }
    }

    /// Applies a logged event unless its key file already reflects it or a
    /// later change (so replaying a line twice, or after later ones, is
    /// harmless). An unreadable key file is rewritten from the event.
    fn replay(&self, ev: &Event) -> Result<(), StoreError> {
        let (key, mutation) = mutation_of(ev);
        let current = match self.read_key(key) {
            Ok(found) => found.map_or(0, |(rev, _)| rev),
            Err(StoreError::Corrupt { reason, .. }) => {
                tracing::warn!(key, %reason, revision = ev.revision(), "rewriting an unreadable key file from the event log");
                0
            }
            Err(e) => return Err(e),
        };
        if current >= ev.revision() {
            return Ok(());
        }
        self.apply(key, ev.revision(), &mutation)
    }

    fn report_bad_line(&self, offset: u64, reason: &str) {
        bump(&self.faults.bad_log_lines);
        tracing::error!(
            log = %self.paths.log.display(),
            offset,
            %reason,
            "skipping an unreadable event log line"
        );
    }

    fn read_log(&self) -> Result<(Vec<u8>, DecodedLog), StoreError> {
        let p = &self.paths.log;
        let buf = fs::read(p).map_err(io_err("read", p))?;
        let log = decode_log(&buf).map_err(|e| corrupt(p, e.to_string()))?;
        if let Some(reason) = &log.header_error {
            tracing::error!(log = %p.display(), %reason, compacted = log.compacted, "event log header unreadable; compaction point inferred from the first record");
        }
        Ok((buf, log))
    }

    /// Brings key files and `state` up to the log (exclusive lock held):
    /// replays lines a crashed writer committed but did not apply, skips
    /// (and reports) lines that cannot be decoded, cuts off a torn last
    /// line, and adopts a compaction whose state write was lost. When the
    /// state does not describe this log (rebuilt, or the log was replaced),
    /// every line is replayed; replaying is idempotent.
    fn recover(&self, state: &mut State) -> Result<(), StoreError> {
        let p = &self.paths.log;
        let len = self.log_len()?;
        if len == state.log_len && state.log_len > 0 {
            return Ok(());
        }
        let (_, log) = self.read_log()?;
        let on_boundary = log.compacted == state.compacted
            && (state.log_len == to_u64(log.header_len)
                || log
                    .lines
                    .iter()
                    .any(|l| to_u64(l.offset + l.len + 1) == state.log_len));
        if state.log_len > len {
            tracing::error!(log = %p.display(), len, recorded = state.log_len, "event log is shorter than the state records; replaying what it holds");
        }
        let from = if on_boundary { state.log_len } else { 0 };
        for line in log.lines.iter().filter(|l| to_u64(l.offset) >= from) {
            match &line.event {
                Ok(ev) => self.replay(ev)?,
                Err(reason) => self.report_bad_line(to_u64(line.offset), reason),
            }
        }
        let good_len = to_u64(log.consumed);
        if good_len < len {
            // A torn last line: its writer died before it committed.
            let f = OpenOptions::new()
                .write(true)
                .open(p)
                .map_err(io_err("open", p))?;
            f.set_len(good_len).map_err(io_err("truncate", p))?;
            if self.opts.sync {
                f.sync_all().map_err(io_err("sync", p))?;
            }
        }
        *state = State {
            revision: state.revision.max(log.last_revision()),
            compacted: log.compacted,
            log_len: good_len,
        };
        self.record_state(state);
        Ok(())
    }

    /// Appends a log line and syncs it: the commit point.
    fn append(&self, line: &[u8]) -> Result<(), StoreError> {
        let p = &self.paths.log;
        let mut log = OpenOptions::new()
            .append(true)
            .open(p)
            .map_err(io_err("open", p))?;
        log.write_all(line).map_err(io_err("append to", p))?;
        if self.opts.sync {
            log.sync_data().map_err(io_err("sync", p))?;
        }
        Ok(())
    }

    /// Undoes a write that failed before it committed: cuts the log back to
    /// `log_len` (shrinking a file needs no free space).
    fn roll_back(&self, log_len: u64, cause: &StoreError) {
        bump(&self.faults.rolled_back_writes);
        let p = &self.paths.log;
        let cut = OpenOptions::new().write(true).open(p).and_then(|f| {
            f.set_len(log_len)?;
            if self.opts.sync {
                f.sync_all()?;
            }
            Ok(())
        });
        match cut {
            Ok(()) => tracing::warn!(error = %cause, "store write failed; undone"),
            Err(e) => tracing::error!(
                error = %cause,
                undo_error = %e,
                "store write failed and its log line could not be cut off: a later open may still apply it"
            ),
        }
    }

    /// Every write: lock, recover, decide, log (the commit point), apply,
    /// record state, maybe compact. A failure before the commit is undone
    /// and returned; once the line is logged and applied the write has
    /// happened, and failing to record the state or to compact is only
    /// logged (and repaired or retried by later operations).
    fn write(&self, key: &str, op: WriteOp<'_>) -> Result<Option<Revision>, StoreError> {
        check_key(key)?;
        let file_name_len = key_to_file(key).len();
        if file_name_len > 250 {
            return Err(StoreError::InvalidKey {
                key: key.into(),
                reason: "too long once escaped for a file name",
            });
        }
        let _lock = self.lock(true)?;
        let mut state = self.recovered_state()?;
        let current = match (self.read_key(key), &op) {
            (Ok(found), _) => found.map_or(0, |(rev, _)| rev),
            // An unconditional put or delete replaces an unreadable key
            // file; a compare-and-swap cannot compare with it.
            (Err(StoreError::Corrupt { reason, .. }), WriteOp::Put(_) | WriteOp::Delete) => {
                tracing::warn!(key, %reason, "replacing an unreadable key file");
                Revision::MAX
            }
            (Err(e), _) => return Err(e),
        };
        let Some(mutation) = op.decide(key, current)? else {
            return Ok(None);
        };
        let rev = state
            .revision
            .checked_add(1)
            .ok_or_else(|| corrupt(&self.paths.state, "revision counter exhausted"))?;
        let line = encode_record(rev, key, &mutation);
        if let Err(e) = self
            .append(&line)
            .and_then(|()| self.apply(key, rev, &mutation))
        {
            self.roll_back(state.log_len, &e);
            return Err(e);
        }
        state.revision = rev;
        state.log_len += to_u64(line.len());
        self.record_state(&state);
        if state.revision.saturating_sub(state.compacted) > self.opts.max_events {
            if let Err(e) = self.compact(&mut state) {
                bump(&self.faults.compaction_failures);
                tracing::warn!(error = %e, "cannot compact the event log; the next write tries again");
            }
        }
        Ok(Some(rev))
    }

    /// Keeps the newest `max_events / 2` log records (exclusive lock held).
    /// Lines that cannot be decoded are dropped, copied first to
    /// `events.log.corrupt-<time>` beside the log for inspection.
    fn compact(&self, state: &mut State) -> Result<(), StoreError> {
        let p = &self.paths.log;
        let keep_after = state.revision.saturating_sub(self.opts.max_events / 2);
        let (buf, log) = self.read_log()?;
        let mut out = encode_header(keep_after);
        let mut bad = Vec::new();
        for line in &log.lines {
            match &line.event {
                Ok(ev) if ev.revision() > keep_after => {
                    out.extend_from_slice(line_bytes(&buf, line))
                }
                Ok(_) => {}
                Err(_) => bad.extend_from_slice(line_bytes(&buf, line)),
            }
        }
        if !bad.is_empty() {
            self.quarantine_lines(&bad);
        }
        self.write_atomic(&self.paths.log_dir, p, &out)?;
        state.compacted = keep_after;
        state.log_len = to_u64(out.len());
        self.record_state(state);
        Ok(())
    }

    /// Saves unreadable log lines that compaction drops (best effort).
    fn quarantine_lines(&self, bad: &[u8]) {
        let p = &self.paths.log;
        let tmp = self.paths.log_dir.join(".quarantine");
        let saved = self
            .write_atomic(&self.paths.log_dir, &tmp, bad)
            .map_err(|e| e.to_string())
            .and_then(|()| quarantine_file_as(&tmp, p).map_err(|e| e.to_string()));
        match saved {
            Ok(to) => {
                tracing::error!(saved_to = %to.display(), "compaction dropped unreadable event log lines")
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                tracing::error!(error = %e, "compaction dropped unreadable event log lines and could not save them")
            }
        }
    }
}

/// Renames `from` to `like`'s quarantine name (`like.corrupt-<time>`).
fn quarantine_file_as(from: &Path, like: &Path) -> std::io::Result<PathBuf> {
    super::quarantine_file_to(from, like)
}

impl Store for DirStore {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        check_key(key)?;
        let _guard = self.read_guard()?;
        Ok(self.read_key(key)?.map(|(revision, value)| Entry {
            key: key.to_string(),
            value,
            revision,
        }))
    }

    fn list(&self, prefix: &str) -> Result<(Vec<Entry>, Revision), StoreError> {
        let (_guard, state) = self.read_guard()?;
        let dir = &self.paths.keys;
        let mut entries = Vec::new();
        for item in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let item = item.map_err(io_err("list", dir))?;
            let Some(key) = item.file_name().to_str().and_then(file_to_key) else {
                continue;
            };
            if !key.starts_with(prefix) {
                continue;
            }
            match self.read_key(&key) {
                Ok(Some((revision, value))) => entries.push(Entry {
                    key,
                    value,
                    revision,
                }),
                Ok(None) => {}
                // One bad file costs its key, not the list.
                Err(e) => {
                    bump(&self.faults.bad_key_files);
                    tracing::error!(key, error = %e, "list skips an unreadable key file");
                }
            }
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((entries, state.revision))
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError> {
        self.write(key, WriteOp::Put(value))
            .map(Option::unwrap_or_default)
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: &[u8],
    ) -> Result<Revision, StoreError> {
        self.write(key, WriteOp::Cas(expected, value))
            .map(Option::unwrap_or_default)
    }

    fn delete(&self, key: &str) -> Result<Option<Revision>, StoreError> {
        self.write(key, WriteOp::Delete)
    }

    fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<Revision, StoreError> {
        self.write(key, WriteOp::CasDelete(expected))
            .map(Option::unwrap_or_default)
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<Watch, StoreError> {
        let (guard, state) = self.read_guard()?;
        drop(guard);
        if after < state.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                oldest: state.compacted,
            });
        }
        // Set up notification before the first read, so no change between
        // the read and the first wait goes unnoticed.
        let waiter = DirWaiter::new(&self.paths.log_dir);
        let stop = Arc::new(StopSignal::new());
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut tailer = Tailer {
            store: self.clone(),
            prefix: prefix.to_string(),
            last: after,
            prev: 0,
            file: None,
            offset: 0,
            tx,
        };
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("store-watch".into())
            .spawn(move || loop {
                match tailer.poll_once() {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        let _ = tailer.tx.send(Err(e));
                        return;
                    }
                }
                if !waiter.wait(&thread_stop) {
                    return;
                }
            })
            .map_err(io_err("spawn watch thread for", &self.paths.root))?;
        Ok(Watch::new(
            rx,
            Some(Box::new(WatchGuard {
                stop,
                thread: Some(thread),
            })),
        ))
    }

    fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.read_guard()?.1.revision)
    }
}

/// Stops and joins a watch's feeder thread when the watch is dropped.
struct WatchGuard {
    stop: Arc<StopSignal>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Follows the event log from a revision, sending matching events.
///
/// Unreadable lines are skipped and reported. A watch that would miss a
/// revision after its start (a gap between two readable records: an
/// unreadable line, or one that compaction dropped) ends with
/// [`StoreError::Corrupt`], so its owner lists again instead of silently
/// missing a change; a watch started after the gap does not notice it.
struct Tailer {
    store: DirStore,
    prefix: String,
    last: Revision,
    /// The revision of the last readable record read (or the compaction
    /// point); the next one must be `prev + 1` or revisions are missing.
    prev: Revision,
    /// Open log file and its inode (a compaction replaces the file).
    file: Option<(File, u64)>,
    offset: u64,
    tx: Sender<Result<Event, StoreError>>,
}

impl Tailer {
    /// Reads new complete log lines. `Ok(false)` when the watch was dropped.
    fn poll_once(&mut self) -> Result<bool, StoreError> {
        let p = self.store.paths.log.clone();
        let buf = {
            let _guard = self.store.lock(false)?;
            let ino = fs::metadata(&p).map_err(io_err("stat", &p))?.ino();
            if self.file.as_ref().is_none_or(|(_, i)| *i != ino) {
                let mut f = File::open(&p).map_err(io_err("open", &p))?;
                let mut whole = Vec::new();
                f.read_to_end(&mut whole).map_err(io_err("read", &p))?;
                let log = decode_log(&whole).map_err(|e| corrupt(&p, e.to_string()))?;
                if log.compacted > self.last {
                    return Err(StoreError::Compacted {
                        requested: self.last,
                        oldest: log.compacted,
                    });
                }
                let ino = f.metadata().map_err(io_err("stat", &p))?.ino();
                self.file = Some((f, ino));
                self.offset = to_u64(log.header_len);
                self.prev = log.compacted;
            }
            let mut buf = Vec::new();
            if let Some((f, _)) = self.file.as_mut() {
                f.seek(SeekFrom::Start(self.offset))
                    .map_err(io_err("seek", &p))?;
                f.read_to_end(&mut buf).map_err(io_err("read", &p))?;
            }
            buf
        };
        let (lines, consumed) = decode_lines(&buf, self.prev);
        for line in lines {
            let ev = match line.event {
                Ok(ev) => ev,
                Err(reason) => {
                    self.store
                        .report_bad_line(self.offset + to_u64(line.offset), &reason);
                    continue;
                }
            };
            let rev = ev.revision();
            // Revisions prev+1 ..= rev-1 are missing; this watch needs those above `last`.
            if rev > self.prev.saturating_add(1) && rev - 1 > self.last {
                return Err(corrupt(
                    &p,
                    format!(
                        "revisions {}..={} are missing (unreadable or dropped lines); list again",
                        self.prev.max(self.last) + 1,
                        rev - 1
                    ),
                ));
            }
            self.prev = rev;
            if rev <= self.last {
                continue;
            }
            self.last = rev;
            if ev.key().starts_with(&self.prefix) && self.tx.send(Ok(ev)).is_err() {
                return Ok(false);
            }
        }
        self.offset += to_u64(consumed);
        Ok(true)
    }
}

#[cfg(test)]
#[path = "dir_tests.rs"]
mod tests;
