//! Waiting for a directory to change, without a polling interval.
//!
//! Why: a watcher on the directory store must see another process's write
//! within milliseconds, yet must not spin on the 2 shared cores. Linux
//! inotify (`inotify(7)`) wakes the watcher when the event log is appended to
//! or replaced; an eventfd wakes it when the watch is dropped, so the feeder
//! thread exits promptly. Both come from `rustix`, so no `unsafe` here.
//! If inotify is unavailable (no instances left, an exotic filesystem) the
//! waiter falls back to re-checking every [`FALLBACK_POLL`].

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::fs::inotify;

/// Re-check interval when inotify cannot be used.
pub(crate) const FALLBACK_POLL: Duration = Duration::from_millis(200);

/// Tells a waiter to stop; shared between the watch handle and its thread.
pub(crate) struct StopSignal {
    stopped: AtomicBool,
    efd: Option<OwnedFd>,
}

impl StopSignal {
    pub(crate) fn new() -> Self {
        Self {
            stopped: AtomicBool::new(false),
            efd: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).ok(),
        }
    }

    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        if let Some(fd) = &self.efd {
            // Failure means the counter is saturated: already signalled.
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

/// Blocks until a directory changes or a [`StopSignal`] fires.
pub(crate) struct DirWaiter {
    inotify: Option<OwnedFd>,
}

impl DirWaiter {
    /// Watches `dir` for appends, renames into it and new files. Never
    /// fails: without inotify it falls back to timed re-checks.
    pub(crate) fn new(dir: &Path) -> Self {
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .ok()
            .filter(|fd| {
                let flags = inotify::WatchFlags::MODIFY
                    | inotify::WatchFlags::MOVED_TO
                    | inotify::WatchFlags::CREATE
                    | inotify::WatchFlags::CLOSE_WRITE;
                inotify::add_watch(fd, dir, flags).is_ok()
            });
        Self { inotify: fd }
    }

    /// Whether change notification works (false: timed fallback).
    #[cfg(test)]
    pub(crate) fn is_notifying(&self) -> bool {
        self.inotify.is_some()
    }

    /// Waits for a change (or the fallback interval). Returns `false` once
    /// `stop` has fired. Spurious wake-ups are allowed: the caller re-reads.
    pub(crate) fn wait(&self, stop: &StopSignal) -> bool {
        if stop.is_stopped() {
            return false;
        }
        let fallback = Timespec {
            tv_sec: 0,
            tv_nsec: i64::from(FALLBACK_POLL.subsec_nanos()),
        };
        let mut fds = Vec::with_capacity(2);
        if let Some(fd) = &self.inotify {
            fds.push(PollFd::new(fd, PollFlags::IN));
        }
        if let Some(fd) = &stop.efd {
            fds.push(PollFd::new(fd, PollFlags::IN));
        }
        let timeout = (self.inotify.is_none() || stop.efd.is_none()).then_some(&fallback);
        if fds.is_empty() {
            std::thread::sleep(FALLBACK_POLL);
        } else {
            // EINTR or any other error: treat as a spurious wake-up.
            let _ = poll(&mut fds, timeout);
        }
        drop(fds);
        if let Some(fd) = &self.inotify {
            let mut buf = [0u8; 4096];
            // Drain queued notifications; we only need to know "something changed".
            while matches!(rustix::io::read(fd, &mut buf[..]), Ok(n) if n > 0) {}
        }
        !stop.is_stopped()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::disallowed_methods)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn wakes_on_change_and_on_stop() {
        let dir = std::env::temp_dir().join(format!("tapestry-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let waiter = DirWaiter::new(&dir);
        assert!(waiter.is_notifying());
        let stop = Arc::new(StopSignal::new());
        let d2 = dir.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(d2.join("f"), b"x").unwrap();
        });
        let t = Instant::now();
        assert!(waiter.wait(&stop));
        assert!(t.elapsed() < Duration::from_secs(5));
        writer.join().unwrap();
        let s2 = Arc::clone(&stop);
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s2.stop();
        });
        let mut woke = 0;
        while waiter.wait(&stop) {
            woke += 1;
            assert!(woke < 100, "never saw stop");
        }
        stopper.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
