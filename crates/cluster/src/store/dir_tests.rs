//! Tests specific to the directory backend: restarts, crash recovery, other
//! processes, torn writes. The behaviour every backend shares is tested in
//! `conformance.rs`.
// Tests measure real elapsed time to check notification is prompt.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods
)]

use std::time::{Duration, Instant};

use super::super::conformance::{cas_increment, temp_dir};
use super::*;

fn fast() -> DirStoreOptions {
    DirStoreOptions {
        sync: false,
        max_events: 10_000,
    }
}

#[test]
fn key_file_names_round_trip() {
    for key in [
        "pods/default/web-a",
        "leases/10.244.1.0-24",
        "a b%c",
        "ключ",
        "..",
        "k-x",
    ] {
        let name = key_to_file(key);
        assert!(!name.contains('/') && name.starts_with("k-"), "{name}");
        assert_eq!(file_to_key(&name).as_deref(), Some(key));
    }
    assert_eq!(
        key_to_file("pods/default/web-a"),
        "k-pods%2Fdefault%2Fweb-a"
    );
    assert_eq!(file_to_key(".tmp-1-2"), None);
    assert_eq!(file_to_key("k-%zz"), None);
}

#[test]
fn survives_restart_and_watch_catches_up() {
    let dir = temp_dir("restart");
    let seen = {
        let s = DirStore::open_with(&dir, fast()).unwrap();
        s.put("pods/default/a", b"1").unwrap();
        s.put("pods/default/b", b"2").unwrap()
    };
    // While the "agent" is down, another writer changes things.
    {
        let other = DirStore::open_with(&dir, fast()).unwrap();
        other.delete("pods/default/a").unwrap();
        other.put("pods/default/c", b"3").unwrap();
    }
    let s = DirStore::open_with(&dir, fast()).unwrap();
    assert_eq!(s.revision().unwrap(), 4);
    assert_eq!(s.get("pods/default/b").unwrap().unwrap().revision, 2);
    let w = s.watch("pods/", seen).unwrap();
    let a = w.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    let b = w.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(
        a,
        Event::Delete {
            key: "pods/default/a".into(),
            revision: 3
        }
    );
    assert_eq!(b.key(), "pods/default/c");
    assert_eq!(b.revision(), 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn watch_sees_other_instance_promptly() {
    let dir = temp_dir("notify");
    let a = DirStore::open_with(&dir, fast()).unwrap();
    let b = DirStore::open_with(&dir, fast()).unwrap();
    let w = a.watch("nodes/", a.revision().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    b.put("nodes/n2", b"{}").unwrap();
    let ev = w.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(ev.key(), "nodes/n2");
    // Notification, not a poll interval: generous bound for a loaded CI box.
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop(w);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn recovers_from_crash_between_log_and_apply() {
    let dir = temp_dir("crash");
    let s = DirStore::open_with(&dir, fast()).unwrap();
    s.put("pods/default/a", b"1").unwrap();
    // Simulate a writer that appended and synced its log line, then died
    // before touching the key file and state, plus a torn line after it.
    let log = dir.join("log").join("events.log");
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"{\"rev\":2,\"key\":\"pods/default/a\",\"op\":\"put\",\"value\":\"2\"}\n")
        .unwrap();
    f.write_all(b"{\"rev\":3,\"key\":\"pods/def").unwrap();
    drop(f);
    // A reader sees the committed write (recovery runs before the read).
    let e = s.get("pods/default/a").unwrap().unwrap();
    assert_eq!((e.value.as_slice(), e.revision), (&b"2"[..], 2));
    // The torn line is gone and the next write continues cleanly.
    assert_eq!(s.put("pods/default/b", b"x").unwrap(), 3);
    let w = s.watch("", 0).unwrap();
    let revs: Vec<_> = (0..3)
        .map(|_| {
            w.recv_timeout(Duration::from_secs(10))
                .unwrap()
                .unwrap()
                .revision()
        })
        .collect();
    assert_eq!(revs, [1, 2, 3]);
    // Reopening finds a consistent store.
    drop(s);
    let s = DirStore::open_with(&dir, fast()).unwrap();
    assert_eq!(s.revision().unwrap(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Files in `dir` whose names start with `prefix`.
fn files_starting(dir: &std::path::Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn unreadable_state_is_moved_aside_and_rebuilt_from_the_log() {
    let dir = temp_dir("corrupt");
    let s = DirStore::open_with(&dir, fast()).unwrap();
    s.put("k", b"v").unwrap();
    s.put("j", b"w").unwrap();
    std::fs::write(dir.join("state"), "banana\n").unwrap();
    let e = s.get("k").unwrap().unwrap();
    assert_eq!((e.value.as_slice(), e.revision), (&b"v"[..], 1));
    assert_eq!(s.revision().unwrap(), 2);
    let aside = files_starting(&dir, "state.corrupt-");
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(dir.join(&aside[0])).unwrap(), b"banana\n");
    assert_eq!(s.faults().state_rebuilds, 1);
    // A compaction point past the revision would underflow "events since
    // compaction": it is refused the same way, and writes go on.
    std::fs::write(dir.join("state"), "1 9 100000\n").unwrap();
    assert_eq!(s.put("k", b"v2").unwrap(), 3);
    assert_eq!(files_starting(&dir, "state.corrupt-").len(), 2);
    // A key file that lost its revision line is rewritten from the log when
    // the state no longer describes the log and every line is replayed.
    std::fs::write(dir.join("keys").join("k-j"), "no newline").unwrap();
    std::fs::remove_file(dir.join("state")).unwrap();
    let s = DirStore::open_with(&dir, fast()).unwrap();
    assert_eq!(s.get("j").unwrap().unwrap().value, b"w");
    assert_eq!(s.revision().unwrap(), 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_key_file_costs_its_key_not_the_list() {
    let dir = temp_dir("badkey");
    let s = DirStore::open_with(&dir, fast()).unwrap();
    for k in ["pods/a", "pods/b", "pods/c"] {
        s.put(k, b"{}").unwrap();
    }
    std::fs::write(dir.join("keys").join("k-pods%2Fb"), "garbage").unwrap();
    let (entries, rev) = s.list("pods/").unwrap();
    let keys: Vec<_> = entries.iter().map(|e| e.key.as_str()).collect();
    assert_eq!((keys, rev), (vec!["pods/a", "pods/c"], 3));
    assert_eq!(s.faults().bad_key_files, 1);
    // Reading that key says what is wrong; comparing with it is refused.
    let err = s.get("pods/b").unwrap_err();
    assert!(
        matches!(err, StoreError::Corrupt { .. }) && err.to_string().contains("k-pods%2Fb"),
        "{err}"
    );
    assert!(s.compare_and_swap("pods/b", 2, b"{}").is_err());
    // An unconditional write replaces it.
    assert_eq!(s.put("pods/b", b"[]").unwrap(), 4);
    assert_eq!(s.get("pods/b").unwrap().unwrap().value, b"[]");
    std::fs::write(dir.join("keys").join("k-pods%2Fc"), "").unwrap();
    assert_eq!(s.delete("pods/c").unwrap(), Some(5));
    assert_eq!(s.list("pods/").unwrap().0.len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Replaces the log line holding `needle` with `with` (same line count).
fn corrupt_log_line(dir: &std::path::Path, needle: &str, with: &str) {
    let log = dir.join("log").join("events.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let mut hit = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.contains(needle) {
                hit = true;
                with.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(hit, "no line with {needle}");
    std::fs::write(&log, out.join("\n") + "\n").unwrap();
}

fn next(w: &Watch) -> Result<Event, StoreError> {
    w.recv_timeout(Duration::from_secs(10)).unwrap()
}

#[test]
fn corrupt_and_truncated_log_lines_are_skipped_and_reported() {
    let dir = temp_dir("badline");
    let s = DirStore::open_with(&dir, fast()).unwrap();
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")] {
        s.put(k, v.as_bytes()).unwrap();
    }
    // Revision 2 becomes garbage, revision 3 is cut short.
    corrupt_log_line(&dir, "\"key\":\"b\"", "\u{1}\u{2}not json");
    corrupt_log_line(&dir, "\"key\":\"c\"", "{\"rev\":3,\"key\":\"c\",\"op");
    // Key files are intact: reads and lists are unaffected.
    assert_eq!(s.list("").unwrap().0.len(), 4);
    // A watch from before the damage gets what it can, then an error that
    // says to list again (not silence about the changes it missed).
    let w = s.watch("", 0).unwrap();
    assert_eq!(next(&w).unwrap().revision(), 1);
    let err = next(&w).unwrap_err();
    assert!(
        err.to_string().contains("revisions 2..=3 are missing"),
        "{err}"
    );
    assert!(s.faults().bad_log_lines >= 2);
    // A watch from after the damage sees every later change.
    let w = s.watch("", 3).unwrap();
    assert_eq!(next(&w).unwrap().key(), "d");
    s.put("e", b"5").unwrap();
    assert_eq!(next(&w).unwrap().key(), "e");
    drop(w);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compaction_drops_corrupt_lines_into_a_quarantine_file() {
    let dir = temp_dir("badcompact");
    let opts = DirStoreOptions {
        sync: false,
        max_events: 6,
    };
    let s = DirStore::open_with(&dir, opts).unwrap();
    for i in 0..4 {
        s.put(&format!("k{i}"), b"x").unwrap();
    }
    corrupt_log_line(&dir, "\"key\":\"k1\"", "{{{{");
    // Writes go on past the compaction point (7 > 6 events).
    for i in 4..8 {
        s.put(&format!("k{i}"), b"x").unwrap();
    }
    let log = std::fs::read_to_string(dir.join("log").join("events.log")).unwrap();
    assert!(log.starts_with("{\"compacted\":4}"), "{log}");
    assert!(!log.contains("{{{{"));
    let saved = files_starting(&dir.join("log"), "events.log.corrupt-");
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("log").join(&saved[0])).unwrap(),
        "{{{{\n"
    );
    assert_eq!(s.list("").unwrap().0.len(), 8);
    assert_eq!(s.faults().compaction_failures, 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_corrupt_line_a_crashed_writer_left_is_skipped_and_the_rest_applied() {
    let dir = temp_dir("badtail");
    let s = DirStore::open_with(&dir, fast()).unwrap();
    s.put("a", b"1").unwrap();
    // Committed but not applied (the writer died): a good line, a corrupt
    // one, another good one.
    let log = dir.join("log").join("events.log");
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"{\"rev\":2,\"key\":\"b\",\"op\":\"put\",\"value\":\"2\"}\n")
        .unwrap();
    f.write_all(b"\xff\xfe\n").unwrap();
    f.write_all(b"{\"rev\":4,\"key\":\"d\",\"op\":\"put\",\"value\":\"4\"}\n")
        .unwrap();
    drop(f);
    assert_eq!(s.get("b").unwrap().unwrap().value, b"2");
    assert_eq!(s.get("d").unwrap().unwrap().revision, 4);
    assert_eq!(s.revision().unwrap(), 4);
    assert_eq!(s.put("e", b"5").unwrap(), 5);
    assert_eq!(s.faults().bad_log_lines, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn readers_never_see_torn_values() {
    let dir = temp_dir("torn");
    let s = DirStore::open_with(&dir, fast()).unwrap();
    let big_a = vec![b'a'; 256 * 1024];
    let big_b = vec![b'b'; 256 * 1024];
    s.put("big", &big_a).unwrap();
    let reader_store = s.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let reader = std::thread::spawn(move || {
        let mut reads = 0;
        while !stop2.load(Ordering::Relaxed) {
            let v = reader_store.get("big").unwrap().unwrap().value;
            assert_eq!(v.len(), 256 * 1024);
            assert!(v.iter().all(|b| *b == v[0]), "torn value");
            // Also read the file directly, without the lock.
            let raw = std::fs::read(reader_store.key_path("big")).unwrap();
            let body = &raw[raw.iter().position(|b| *b == b'\n').unwrap() + 1..];
            assert!(body.len() == 256 * 1024 && body.iter().all(|b| *b == body[0]));
            reads += 1;
        }
        reads
    });
    for i in 0..40 {
        s.put("big", if i % 2 == 0 { &big_b } else { &big_a })
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Environment variable naming the store directory for the child process
/// spawned by `cas_increments_across_processes`.
const CHILD_ENV: &str = "TAPESTRY_STORE_TEST_CHILD_DIR";
const CHILD_INCREMENTS: u64 = 100;

/// Not a test on its own: the body the two-process test runs in children.
#[test]
#[ignore = "helper run as a child process by cas_increments_across_processes"]
fn child_incrementer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let s = DirStore::open(&dir).unwrap();
    for _ in 0..CHILD_INCREMENTS {
        cas_increment(&s, "counter");
    }
}

#[test]
fn cas_increments_across_processes() {
    let dir = temp_dir("procs");
    let s = DirStore::open(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "store::dir::tests::child_incrementer",
                    "--ignored",
                    "--quiet",
                ])
                .env(CHILD_ENV, &dir)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // And this process increments concurrently, from a thread.
    for _ in 0..CHILD_INCREMENTS {
        cas_increment(&s, "counter");
    }
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let v = s.get("counter").unwrap().unwrap();
    assert_eq!(
        String::from_utf8(v.value).unwrap(),
        (3 * CHILD_INCREMENTS).to_string()
    );
    assert_eq!(v.revision, 3 * CHILD_INCREMENTS);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A small tmpfs mounted on a fresh directory, unmounted and removed when
/// dropped (also when the test fails).
struct SmallTmpfs {
    dir: std::path::PathBuf,
}

impl SmallTmpfs {
    /// `None` (after saying why) when not root or `mount` fails.
    fn mount(size: &str) -> Option<SmallTmpfs> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping: mounting a tmpfs needs root");
            return None;
        }
        let dir = temp_dir("fullfs");
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "skipping: cannot mount a tmpfs: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let _ = std::fs::remove_dir(&dir);
            return None;
        }
        Some(SmallTmpfs { dir })
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn a_full_filesystem_fails_writes_cleanly_and_loses_nothing_committed() {
    let Some(fs) = SmallTmpfs::mount("64k") else {
        return;
    };
    let root = fs.dir.join("store");
    // Frequent compactions, so some run out of space too.
    let opts = DirStoreOptions {
        sync: true,
        max_events: 4,
    };
    let s = DirStore::open_with(&root, opts.clone()).unwrap();
    // Room to give back later.
    let spare = fs.dir.join("spare");
    std::fs::write(&spare, vec![0u8; 8192]).unwrap();
    let value = |i: usize| format!("{i}:{}", "v".repeat(1500)).into_bytes();
    let mut committed = Vec::new();
    let mut failure = None;
    for i in 0..200 {
        let key = format!("pods/p{i}");
        match s.put(&key, &value(i)) {
            Ok(rev) => committed.push((key, rev)),
            Err(e) => {
                failure = Some((key, e));
                break;
            }
        }
    }
    let (failed_key, err) = failure.expect("the filesystem never filled");
    assert!(
        err.to_string().contains("No space left") || err.to_string().contains("os error 28"),
        "{err}"
    );
    assert!(committed.len() > 3, "only {} writes fit", committed.len());
    let check = |s: &DirStore| {
        let (entries, rev) = s.list("pods/").unwrap();
        assert_eq!(
            rev,
            committed.len() as u64,
            "one revision per committed write"
        );
        assert_eq!(entries.len(), committed.len());
        for (key, want_rev) in &committed {
            let e = s.get(key).unwrap().unwrap();
            let i: usize = key.trim_start_matches("pods/p").parse().unwrap();
            assert_eq!((&e.value, e.revision), (&value(i), *want_rev), "{key}");
        }
        assert!(s.get(&failed_key).unwrap().is_none());
    };
    check(&s);
    // Still full: more writes fail the same way and change nothing.
    assert!(s.put(&failed_key, &value(999)).is_err());
    let faults = s.faults();
    assert!(faults.rolled_back_writes >= 2, "{faults:?}");
    // Some writes committed, then could not compact (or record the state):
    // they still reported success, and `check` finds them.
    assert!(faults.compaction_failures >= 1, "{faults:?}");
    check(&s);
    // Another process opening the full store finds the same.
    check(&DirStore::open_with(&root, opts.clone()).unwrap());
    // With space back, writes succeed again and the log compacts.
    std::fs::remove_file(&spare).unwrap();
    let rev = s.put(&failed_key, b"late").unwrap();
    assert_eq!(rev, committed.len() as u64 + 1);
    drop(s);
    let s = DirStore::open_with(&root, opts).unwrap();
    assert_eq!(s.get(&failed_key).unwrap().unwrap().value, b"late");
    assert_eq!(s.list("pods/").unwrap().0.len(), committed.len() + 1);
    eprintln!(
        "{} writes committed before the disk filled; faults while full: {faults:?}",
        committed.len()
    );
}

/// Every truncation of the log and every byte of it replaced by a newline,
/// a brace or 0xff: the store opens (or says why not), never panics, and
/// lists exactly what it held (key files are intact), whatever happened to
/// the history. The exhaustive small cousin of the `store_files` fuzz target.
#[test]
fn any_single_damage_to_the_log_keeps_every_object() {
    let dir = temp_dir("damage");
    let s = DirStore::open_with(&dir, fast()).unwrap();
    s.put("pods/a", b"{\"x\":1}").unwrap();
    s.put("pods/b", &[0xff, 0]).unwrap();
    s.delete("pods/a").unwrap();
    s.put("pods/a", b"again").unwrap();
    let (want, want_rev) = s.list("").unwrap();
    drop(s);
    let log = dir.join("log").join("events.log");
    let state = dir.join("state");
    let good_log = std::fs::read(&log).unwrap();
    let good_state = std::fs::read(&state).unwrap();
    let mut damaged: Vec<Vec<u8>> = (0..good_log.len())
        .map(|n| good_log[..n].to_vec())
        .collect();
    for i in 0..good_log.len() {
        for b in [b'\n', b'{', 0xff] {
            let mut d = good_log.clone();
            d[i] = b;
            damaged.push(d);
        }
    }
    let mut opened = 0;
    for d in &damaged {
        std::fs::write(&log, d).unwrap();
        std::fs::write(&state, &good_state).unwrap();
        let Ok(s) = DirStore::open_with(&dir, fast()) else {
            continue;
        };
        opened += 1;
        let (got, rev) = s.list("").unwrap();
        assert_eq!(got, want, "log {:?}", String::from_utf8_lossy(d));
        assert!(rev >= want_rev);
        // And it takes writes that another process then reads.
        let next = s.put("pods/c", b"new").unwrap();
        assert!(next > rev);
        let again = DirStore::open_with(&dir, fast()).unwrap();
        assert_eq!(again.list("").unwrap().0.len(), want.len() + 1);
        assert_eq!(again.get("pods/c").unwrap().unwrap().revision, next);
        std::fs::remove_file(dir.join("keys").join("k-pods%2Fc")).unwrap();
    }
    // Only a log without a usable first line can refuse to open.
    assert!(
        opened * 10 > damaged.len() * 9,
        "{opened} of {}",
        damaged.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
