//! Processes named for good: a PID and its start time, and signals sent only
//! through a pidfd.
//!
//! The kubelet records each process it starts (pause, containers, their log
//! writers) in a pid file as `PID STARTTIME`, STARTTIME being field 22 of
//! `/proc/PID/stat` (clock ticks since boot, fixed at fork). A PID alone is not
//! a name: once the process is gone the kernel hands the number to the next
//! process, so an agent restarted later that trusted the PID could signal an
//! unrelated program. Before signalling, the kubelet opens a pidfd
//! (`pidfd_open`, Linux 5.3) for the PID and only then checks the start time:
//! the pidfd refers to one process for its whole life, so if the start time
//! matches after it was opened, every signal sent through it
//! (`pidfd_send_signal`) reaches that process and no other, and its exit can
//! be awaited by polling the pidfd (readable once the process has exited) with
//! no sleep loop. A pid file with a bare PID (or anything else) names nothing.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

/// One process: its PID and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId {
    pub pid: u32,
    pub start: u64,
}

/// What `/proc/PID/stat` says of a process: whether it has exited (a zombie)
/// and when it started. `None` when the line cannot be read that way.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // "PID (COMM) STATE PPID …": COMM may hold spaces and parentheses, so the
    // fields start after the last ") ".
    let (_, rest) = stat.rsplit_once(") ")?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // STATE is field 3; STARTTIME is field 22, 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

fn read_stat(pid: u32) -> Option<(char, u64)> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

impl ProcId {
    /// The process `pid` now, if there is one.
    pub fn of(pid: u32) -> Option<ProcId> {
        let (_, start) = read_stat(pid)?;
        Some(ProcId { pid, start })
    }

    /// The pid file's line for this process.
    pub fn line(&self) -> String {
        format!("{} {}\n", self.pid, self.start)
    }

    /// Reads `PID STARTTIME` (a bare PID is refused: it names no process for good).
    pub fn parse(text: &str) -> Option<ProcId> {
        let mut words = text.split_ascii_whitespace();
        let pid = words.next()?.parse().ok()?;
        let start = words.next()?.parse().ok()?;
        if words.next().is_some() || pid == 0 {
            return None;
        }
        Some(ProcId { pid, start })
    }

    /// The process a pid file names.
    pub fn read(pidfile: &Path) -> Option<ProcId> {
        Self::parse(&fs::read_to_string(pidfile).ok()?)
    }

    /// Writes the pid file (to a temporary name, then renamed).
    pub fn write(&self, pidfile: &Path) -> std::io::Result<()> {
        let tmp = pidfile.with_extension("pid.tmp");
        fs::write(&tmp, self.line())?;
        fs::rename(&tmp, pidfile)
    }

    /// This very process is still running (it exists, has not exited, and its
    /// PID was not reused).
    pub fn is_running(&self) -> bool {
        read_stat(self.pid).is_some_and(|(state, start)| start == self.start && state != 'Z')
    }

    /// A pidfd for this very process, or `None` if it is gone (whatever now
    /// holds its PID).
    pub fn open(&self) -> Option<ProcHandle> {
        let pid = Pid::from_raw(i32::try_from(self.pid).ok()?)?;
        let fd = pidfd_open(pid, PidfdFlags::empty()).ok()?;
        // Checked after the pidfd is open: the pidfd pins whichever process
        // held the PID at that moment, and the start time says whether that
        // is the recorded one (a PID reused before, or after, does not match).
        self.is_running().then_some(ProcHandle { fd })
    }
}

/// An open pidfd: signals reach its process or nobody.
pub struct ProcHandle {
    fd: OwnedFd,
}

impl ProcHandle {
    pub fn signal(&self, sig: Signal) -> std::io::Result<()> {
        pidfd_send_signal(&self.fd, sig).map_err(Into::into)
    }

    /// Waits until the process has exited, at most `timeout`; true if it has.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ts = Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(n) if n > 0 => return true,
                Ok(_) => return false,
                Err(rustix::io::Errno::INTR) if !left.is_zero() => {}
                Err(_) => return false,
            }
        }
    }
}

/// SIGTERM to the process `pidfile` names (if it is still that process),
/// SIGKILL if it has not exited within `grace`; then removes the pid file.
/// Returns once the process has exited (or after the SIGKILL's own bound).
pub fn stop(pidfile: &Path, grace: Duration) {
    if let Some(h) = ProcId::read(pidfile).and_then(|p| p.open()) {
        let _ = h.signal(Signal::TERM);
        if !h.wait_exit(grace) {
            let _ = h.signal(Signal::KILL);
            h.wait_exit(Duration::from_secs(2));
        }
    }
    let _ = fs::remove_file(pidfile);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const STAT: &str =
        "4242 (we) ird (name)) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1000 100";

    #[test]
    fn stat_fields_after_an_awkward_command_name() {
        assert_eq!(parse_stat(STAT), Some(('S', 987_654)));
        assert_eq!(parse_stat("12 (x) Z 1 2"), None, "too short");
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn pid_files_need_a_start_time() {
        assert_eq!(
            ProcId::parse("17 99\n"),
            Some(ProcId { pid: 17, start: 99 })
        );
        assert_eq!(ProcId::parse("17"), None, "a bare PID names nothing");
        assert_eq!(ProcId::parse("17 99 3"), None);
        assert_eq!(ProcId::parse("0 99"), None);
        assert_eq!(ProcId::parse("x 99"), None);
        let me = ProcId::of(std::process::id()).expect("myself");
        assert_eq!(ProcId::parse(&me.line()), Some(me));
    }

    #[test]
    fn a_reused_pid_is_not_the_recorded_process() {
        let me = ProcId::of(std::process::id()).expect("myself");
        assert!(me.is_running());
        assert!(me.open().is_some());
        // The same PID with another start time: what a reused PID looks like.
        let other = ProcId {
            pid: me.pid,
            start: me.start + 1,
        };
        assert!(!other.is_running());
        assert!(
            other.open().is_none(),
            "no handle, so no signal can be sent"
        );
    }

    #[test]
    fn stop_ends_the_recorded_process_and_waits_for_it() {
        let dir = std::env::temp_dir().join(format!("tapestry-procid-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let id = ProcId::of(child.id()).expect("child");
        let pidfile = dir.join("sleep.pid");
        id.write(&pidfile).expect("pid file");
        // A record of the same PID with a wrong start time is left alone.
        let wrong = dir.join("wrong.pid");
        fs::write(&wrong, format!("{} {}", id.pid, id.start + 7)).expect("write");
        stop(&wrong, Duration::from_secs(1));
        assert_eq!(child.try_wait().expect("try_wait"), None, "still running");
        let t0 = Instant::now();
        stop(&pidfile, Duration::from_secs(5));
        let status = child.wait().expect("wait");
        assert!(!status.success(), "ended by SIGTERM");
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(!pidfile.exists());
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
