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
//! (so `pods/default/web-a` is `k-pods%2Fdefault%2Fweb-a`).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};

use super::notify::{DirWaiter, StopSignal};
use super::{check_key, Entry, Event, Mutation, Revision, Store, StoreError, Watch, WriteOp};

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

/// A [`Store`] in a directory shared by processes on one machine.
#[derive(Debug, Clone)]
pub struct DirStore {
    paths: Arc<Paths>,
    opts: DirStoreOptions,
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

/// What the `state` file records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    revision: Revision,
    compacted: Revision,
    log_len: u64,
}

#[derive(Serialize, Deserialize)]
struct LogHeader {
    compacted: Revision,
}

#[derive(Serialize, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum LogOp {
    Put,
    Delete,
}

/// One line of the event log. A value that is UTF-8 (JSON always is) is kept
/// readable in `value`; anything else goes hex-encoded in `hex`.
#[derive(Serialize, Deserialize)]
struct LogRecord {
    rev: Revision,
    key: String,
    op: LogOp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hex: Option<String>,
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

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

impl LogRecord {
    fn new(rev: Revision, key: &str, mutation: &Mutation) -> Self {
        let (op, value, hex) = match mutation {
            Mutation::Put(v) => match std::str::from_utf8(v) {
                Ok(s) => (LogOp::Put, Some(s.to_string()), None),
                Err(_) => (LogOp::Put, None, Some(hex_encode(v))),
            },
            Mutation::Delete => (LogOp::Delete, None, None),
        };
        Self {
            rev,
            key: key.to_string(),
            op,
            value,
            hex,
        }
    }

    fn parse(line: &[u8], log: &Path) -> Result<Self, StoreError> {
        serde_json::from_slice(line).map_err(|e| corrupt(log, format!("bad log record: {e}")))
    }

    fn into_event(self, log: &Path) -> Result<Event, StoreError> {
        Ok(match self.op {
            LogOp::Delete => Event::Delete {
                key: self.key,
                revision: self.rev,
            },
            LogOp::Put => {
                let value = match (self.value, self.hex) {
                    (Some(v), _) => v.into_bytes(),
                    (None, Some(h)) => hex_decode(&h).ok_or_else(|| {
                        corrupt(log, format!("bad hex value at revision {}", self.rev))
                    })?,
                    (None, None) => Vec::new(),
                };
                Event::Put(Entry {
                    key: self.key,
                    value,
                    revision: self.rev,
                })
            }
        })
    }
}

/// Splits `buf` into complete `\n`-terminated lines; returns them and the
/// number of bytes they span (a trailing partial line is not consumed).
fn complete_lines(buf: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut lines = Vec::new();
    let mut consumed = 0;
    while let Some(pos) = buf
        .get(consumed..)
        .and_then(|rest| rest.iter().position(|b| *b == b'\n'))
    {
        if let Some(line) = buf.get(consumed..consumed + pos) {
            lines.push(line);
        }
        consumed += pos + 1;
    }
    (lines, consumed)
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
        };
        let _lock = store.lock(true)?;
        store.remove_temp_files();
        let p = &store.paths;
        let have_log = p.log.exists();
        let mut state = if p.state.exists() {
            if !have_log {
                return Err(corrupt(&p.log, "missing, but the state file exists"));
            }
            store.read_state()?
        } else {
            if !have_log {
                let header = Self::header_line(0)?;
                store.write_atomic(&p.log_dir, &p.log, &header)?;
            }
            // No state yet (new store, or a crash during creation): start
            // from the log's header and let recovery replay every record.
            let (compacted, header_len) = store.read_header()?;
            State {
                revision: compacted,
                compacted,
                log_len: header_len,
            }
        };
        store.recover(&mut state)?;
        store.write_state(&state)?;
        Ok(store)
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.paths.root
    }

    fn header_line(compacted: Revision) -> Result<Vec<u8>, StoreError> {
        let mut line =
            serde_json::to_vec(&LogHeader { compacted }).map_err(|e| StoreError::Corrupt {
                path: PathBuf::new(),
                reason: e.to_string(),
            })?;
        line.push(b'\n');
        Ok(line)
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
    /// exclusive lock only when a crashed writer left work to replay.
    fn read_guard(&self) -> Result<(File, State), StoreError> {
        let guard = self.lock(false)?;
        let state = self.read_state()?;
        if self.log_len()? == state.log_len {
            return Ok((guard, state));
        }
        drop(guard);
        let guard = self.lock(true)?;
        let mut state = self.read_state()?;
        self.recover(&mut state)?;
        Ok((guard, state))
    }

    fn log_len(&self) -> Result<u64, StoreError> {
        let p = &self.paths.log;
        Ok(fs::metadata(p).map_err(io_err("stat", p))?.len())
    }

    fn read_state(&self) -> Result<State, StoreError> {
        let p = &self.paths.state;
        let text = fs::read_to_string(p).map_err(io_err("read", p))?;
        let nums: Vec<u64> = text
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| {
                corrupt(
                    p,
                    format!("expected three numbers, found `{}`", text.trim()),
                )
            })?;
        match nums.as_slice() {
            [revision, compacted, log_len] => Ok(State {
                revision: *revision,
                compacted: *compacted,
                log_len: *log_len,
            }),
            _ => Err(corrupt(
                p,
                format!("expected three numbers, found `{}`", text.trim()),
            )),
        }
    }

    fn write_state(&self, s: &State) -> Result<(), StoreError> {
        let text = format!("{} {} {}\n", s.revision, s.compacted, s.log_len);
        self.write_atomic(&self.paths.root, &self.paths.state, text.as_bytes())
    }

    /// Writes `path` via a temporary file in `dir`, fsync and rename, so
    /// readers see the old or the new content, never a mix.
    fn write_atomic(&self, dir: &Path, path: &Path, data: &[u8]) -> Result<(), StoreError> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".tmp-{}-{n}", std::process::id()));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
            f.write_all(data).map_err(io_err("write", &tmp))?;
            if self.opts.sync {
                f.sync_all().map_err(io_err("sync", &tmp))?;
            }
            fs::rename(&tmp, path).map_err(io_err("rename", path))?;
            self.sync_dir(dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), StoreError> {
        if self.opts.sync {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("sync", dir))?;
        }
        Ok(())
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

    /// The log header's compaction revision and the header's length.
    fn read_header(&self) -> Result<(Revision, u64), StoreError> {
        let p = &self.paths.log;
        let mut f = File::open(p).map_err(io_err("open", p))?;
        read_header_from(&mut f, p)
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
        let nl = data
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| corrupt(&p, "no revision line"))?;
        let (head, rest) = data.split_at(nl);
        let rev = std::str::from_utf8(head)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt(&p, "first line is not a revision number"))?;
        Ok(Some((rev, rest.get(1..).unwrap_or_default().to_vec())))
    }

    /// Makes the key file reflect `mutation` at `rev`.
    fn apply(&self, key: &str, rev: Revision, mutation: &Mutation) -> Result<(), StoreError> {
        let p = self.key_path(key);
        match mutation {
            Mutation::Put(value) => {
                let mut data = format!("{rev}\n").into_bytes();
                data.extend_from_slice(value);
                self.write_atomic(&self.paths.keys, &p, &data)
            }
            Mutation::Delete => match fs::remove_file(&p) {
                Ok(()) => self.sync_dir(&self.paths.keys),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err("remove", &p)(e)),
            },
        }
    }

    /// Brings key files and `state` up to the log (exclusive lock held):
    /// replays lines a crashed writer committed but did not apply, cuts off
    /// a torn last line, and adopts a compaction whose state write was lost.
    fn recover(&self, state: &mut State) -> Result<(), StoreError> {
        let p = &self.paths.log;
        let len = self.log_len()?;
        if len == state.log_len {
            return Ok(());
        }
        let (compacted, header_len) = self.read_header()?;
        if compacted != state.compacted {
            // A compaction replaced the log after the last state write; the
            // compacted log holds only applied events.
            state.compacted = compacted;
            state.log_len = len;
            return self.write_state(state);
        }
        if len < state.log_len || state.log_len < header_len {
            return Err(corrupt(
                p,
                format!(
                    "{len} bytes long, but the state file records {}",
                    state.log_len
                ),
            ));
        }
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(p)
            .map_err(io_err("open", p))?;
        f.seek(SeekFrom::Start(state.log_len))
            .map_err(io_err("seek", p))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(io_err("read", p))?;
        let (lines, consumed) = complete_lines(&buf);
        for line in lines {
            let event = LogRecord::parse(line, p)?.into_event(p)?;
            if event.revision() != state.revision + 1 {
                return Err(corrupt(
                    p,
                    format!(
                        "record revision {} follows revision {}",
                        event.revision(),
                        state.revision
                    ),
                ));
            }
            let (key, mutation) = match event {
                Event::Put(e) => (e.key, Mutation::Put(e.value)),
                Event::Delete { key, .. } => (key, Mutation::Delete),
            };
            self.apply(&key, state.revision + 1, &mutation)?;
            state.revision += 1;
        }
        let good_len = state.log_len + u64::try_from(consumed).unwrap_or(u64::MAX);
        if good_len < len {
            f.set_len(good_len).map_err(io_err("truncate", p))?;
            if self.opts.sync {
                f.sync_all().map_err(io_err("sync", p))?;
            }
        }
        state.log_len = good_len;
        self.write_state(state)
    }

    /// Every write: lock, recover, decide, log, apply, record state.
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
        let mut state = self.read_state()?;
        self.recover(&mut state)?;
        let current = self.read_key(key)?.map_or(0, |(rev, _)| rev);
        let Some(mutation) = op.decide(key, current)? else {
            return Ok(None);
        };
        let rev = state.revision + 1;
        let mut line = serde_json::to_vec(&LogRecord::new(rev, key, &mutation))
            .map_err(|e| corrupt(&self.paths.log, e.to_string()))?;
        line.push(b'\n');
        let p = &self.paths.log;
        let mut log = OpenOptions::new()
            .append(true)
            .open(p)
            .map_err(io_err("open", p))?;
        log.write_all(&line).map_err(io_err("append to", p))?;
        if self.opts.sync {
            log.sync_data().map_err(io_err("sync", p))?;
        }
        drop(log);
        self.apply(key, rev, &mutation)?;
        state.revision = rev;
        state.log_len += u64::try_from(line.len()).unwrap_or(u64::MAX);
        self.write_state(&state)?;
        if state.revision - state.compacted > self.opts.max_events {
            self.compact(&mut state)?;
        }
        Ok(Some(rev))
    }

    /// Keeps the newest `max_events / 2` log records (exclusive lock held).
    fn compact(&self, state: &mut State) -> Result<(), StoreError> {
        let p = &self.paths.log;
        let keep_after = state.revision - self.opts.max_events / 2;
        let mut f = File::open(p).map_err(io_err("open", p))?;
        read_header_from(&mut f, p)?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(io_err("read", p))?;
        let mut out = Self::header_line(keep_after)?;
        let (lines, _) = complete_lines(&buf);
        for line in lines {
            if LogRecord::parse(line, p)?.rev > keep_after {
                out.extend_from_slice(line);
                out.push(b'\n');
            }
        }
        self.write_atomic(&self.paths.log_dir, p, &out)?;
        state.compacted = keep_after;
        state.log_len = u64::try_from(out.len()).unwrap_or(u64::MAX);
        self.write_state(state)
    }
}

fn read_header_from(f: &mut File, p: &Path) -> Result<(Revision, u64), StoreError> {
    let mut buf = [0u8; 256];
    let n = f.read(&mut buf).map_err(io_err("read", p))?;
    let head = buf.get(..n).unwrap_or_default();
    let nl = head
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt(p, "no header line"))?;
    let header: LogHeader = serde_json::from_slice(head.get(..nl).unwrap_or_default())
        .map_err(|e| corrupt(p, format!("bad header: {e}")))?;
    let len = u64::try_from(nl + 1).unwrap_or(u64::MAX);
    f.seek(SeekFrom::Start(len)).map_err(io_err("seek", p))?;
    Ok((header.compacted, len))
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
            if let Some((revision, value)) = self.read_key(&key)? {
                entries.push(Entry {
                    key,
                    value,
                    revision,
                });
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
struct Tailer {
    store: DirStore,
    prefix: String,
    last: Revision,
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
                let (compacted, header_len) = read_header_from(&mut f, &p)?;
                if compacted > self.last {
                    return Err(StoreError::Compacted {
                        requested: self.last,
                        oldest: compacted,
                    });
                }
                let ino = f.metadata().map_err(io_err("stat", &p))?.ino();
                self.file = Some((f, ino));
                self.offset = header_len;
            }
            let mut buf = Vec::new();
            if let Some((f, _)) = self.file.as_mut() {
                f.seek(SeekFrom::Start(self.offset))
                    .map_err(io_err("seek", &p))?;
                f.read_to_end(&mut buf).map_err(io_err("read", &p))?;
            }
            buf
        };
        let (lines, consumed) = complete_lines(&buf);
        for line in lines {
            let rec = LogRecord::parse(line, &p)?;
            if rec.rev <= self.last {
                continue;
            }
            self.last = rec.rev;
            if rec.key.starts_with(&self.prefix) && self.tx.send(Ok(rec.into_event(&p)?)).is_err() {
                return Ok(false);
            }
        }
        self.offset += u64::try_from(consumed).unwrap_or(u64::MAX);
        Ok(true)
    }
}

#[cfg(test)]
#[path = "dir_tests.rs"]
mod tests;
