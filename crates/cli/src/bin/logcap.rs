//! `tapestry-logcap`: copies its standard input to a log file that never grows
//! past a cap.
//!
//! The lab's supervisor runs each agent's output through it, and the kubelet
//! each container's: the logs sit on the tmpfs that also holds the cluster
//! store, so a chatty program must not be able to fill it. When the next chunk
//! would take `FILE` past `--max-bytes`, `FILE` becomes `FILE.1` (`FILE.1`
//! becomes `FILE.2`, … up to `--keep` rotated files; the oldest is dropped) and
//! a new `FILE` is started, the way logrotate's `size` and `rotate` options
//! work, or Docker's json-file `max-size` and `max-file`. At most
//! `(keep + 1) × max-bytes` bytes are on disk. It appends to an existing `FILE`
//! (a restarted program's log continues) and exits when its input closes.
//!
//! A write that fails (the filesystem is full) drops that chunk, counts it, and
//! says so once in the log when writes succeed again: the program whose output
//! this is keeps running and is never blocked by its log.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "tapestry-logcap",
    about = "Copy standard input to FILE, capped at --max-bytes, rotating to FILE.1 … FILE.KEEP"
)]
struct Args {
    /// The largest FILE may grow (bytes, at least 4096).
    #[arg(long, default_value_t = 8 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(4096..))]
    max_bytes: u64,
    /// How many rotated files to keep (FILE.1 is the newest).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9))]
    keep: u32,
    /// The log file.
    file: PathBuf,
}

/// A log file with a size cap and rotation.
struct CappedLog {
    path: PathBuf,
    max: u64,
    keep: u32,
    file: Option<File>,
    size: u64,
    /// Bytes dropped because a write failed, not yet reported in the log.
    dropped: u64,
}

impl CappedLog {
    fn open(path: &Path, max: u64, keep: u32) -> Self {
        let mut log = CappedLog {
            path: path.to_owned(),
            max,
            keep,
            file: None,
            size: 0,
            dropped: 0,
        };
        log.reopen();
        log
    }

    fn reopen(&mut self) {
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.size = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// FILE → FILE.1 → … → FILE.keep (the oldest is replaced), a new FILE.
    fn rotate(&mut self) {
        self.file = None;
        for n in (1..self.keep).rev() {
            let _ = fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        let _ = fs::rename(&self.path, self.rotated(1));
        self.reopen();
    }

    /// Appends `data`, rotating first whenever it would pass the cap (so a
    /// chunk is kept whole in one file); only a chunk larger than the cap is
    /// split.
    fn write(&mut self, mut data: &[u8]) {
        if self.dropped > 0 {
            let note = format!(
                "tapestry-logcap: {} bytes of output were lost (the log could not be written)\n",
                self.dropped
            );
            self.dropped = 0;
            self.write_piece(note.as_bytes());
        }
        while !data.is_empty() {
            let want = (data.len() as u64).min(self.max);
            if self.size > 0 && self.size + want > self.max {
                self.rotate();
            }
            let room = usize::try_from(self.max.saturating_sub(self.size)).unwrap_or(usize::MAX);
            let (piece, rest) = data.split_at(room.min(data.len()));
            self.write_piece(piece);
            data = rest;
        }
    }

    fn write_piece(&mut self, piece: &[u8]) {
        if self.file.is_none() {
            self.reopen();
        }
        let len = piece.len() as u64;
        match self.file.as_mut().map(|f| f.write_all(piece)) {
            Some(Ok(())) => self.size += len,
            _ => {
                self.dropped += len;
                // Counted against the cap all the same, so that a full
                // filesystem leads to a rotation, which frees space.
                self.size += len;
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut log = CappedLog::open(&args.file, args.max_bytes, args.keep);
    let mut buf = vec![0u8; 64 * 1024];
    let mut stdin = io::stdin().lock();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => return ExitCode::SUCCESS,
            Ok(n) => log.write(buf.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("tapestry-logcap: cannot read standard input: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tapestry-logcap-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn size(p: &Path) -> u64 {
        fs::metadata(p).map_or(0, |m| m.len())
    }

    #[test]
    fn never_passes_the_cap_and_keeps_the_newest_bytes() {
        let dir = temp_dir("cap");
        let path = dir.join("c.log");
        let mut log = CappedLog::open(&path, 4096, 2);
        for i in 0..1000u32 {
            log.write(format!("line {i:05} of a chatty container\n").as_bytes());
            assert!(size(&path) <= 4096, "FILE passed its cap");
        }
        // A chunk larger than the cap is split, not written whole.
        log.write(&[b'x'; 10_000]);
        assert!(size(&path) <= 4096);
        assert!(size(&log.rotated(1)) <= 4096);
        assert!(size(&log.rotated(2)) <= 4096);
        assert!(!log.rotated(3).exists(), "only --keep rotated files");
        // Nothing lost between FILE.1 and FILE: the split chunk's bytes run on.
        let newest = fs::read(&path).expect("read");
        assert!(newest.iter().all(|&b| b == b'x'));
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn appends_to_an_existing_log_within_the_cap() {
        let dir = temp_dir("append");
        let path = dir.join("a.log");
        fs::write(&path, vec![b'o'; 4000]).expect("write");
        let mut log = CappedLog::open(&path, 4096, 1);
        // What fits is appended.
        log.write(b"0123456789\n");
        assert_eq!(size(&path), 4011);
        assert!(!log.rotated(1).exists());
        // What does not fit starts a new file, whole.
        log.write(&[b'n'; 200]);
        assert_eq!(size(&log.rotated(1)), 4011);
        assert_eq!(fs::read(&path).expect("new"), vec![b'n'; 200]);
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
