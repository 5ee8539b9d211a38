//! The data-plane watchdog: the agent exits when its packet worker stops.
//!
//! A worker thread that panicked or left its loop would leave a black hole: the
//! control socket still answers (`tapestry status`, CNI ADD), so nothing looks
//! wrong, while no packet moves. A thread of its own blocks on the worker's
//! exit channel ([`tapestry_io::WorkerHandle::exits`]; no polling) and, unless
//! the worker was asked to stop, exits the process with [`EXIT_WORKER_STOPPED`],
//! so that its supervisor (`scripts/supervise.sh` in the lab, systemd's
//! `Restart=always` on a real node) starts it again; the pods' TAPs are
//! persistent and are reattached by the new process. In the release build a
//! panic anywhere aborts the process outright (`panic = "abort"` in the
//! workspace's release profile); this covers the worker leaving its loop on
//! an error, and builds whose panics unwind.

use crossbeam_channel::{Receiver, RecvError};
use tapestry_io::WorkerExit;

/// The agent's exit status when its data-plane worker stopped unasked
/// (`EX_SOFTWARE` of sysexits.h).
pub const EXIT_WORKER_STOPPED: i32 = 70;

/// What the process does about how the worker ended: `Some(status)` to exit.
pub fn verdict(how: Result<WorkerExit, RecvError>) -> Option<i32> {
    match how {
        Ok(WorkerExit::Shutdown) => None,
        Ok(WorkerExit::Failed | WorkerExit::Panicked) | Err(RecvError) => Some(EXIT_WORKER_STOPPED),
    }
}

/// Blocks until the worker ends; exits the process unless it was asked to stop.
pub fn watch(exits: Receiver<WorkerExit>) {
    let how = exits.recv();
    if let Some(status) = verdict(how) {
        tracing::error!(
            ?how,
            status,
            "the data-plane worker stopped: exiting so that the supervisor starts the agent again"
        );
        std::process::exit(status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_asked_stop_keeps_the_process() {
        assert_eq!(verdict(Ok(WorkerExit::Shutdown)), None);
        assert_eq!(verdict(Ok(WorkerExit::Failed)), Some(EXIT_WORKER_STOPPED));
        assert_eq!(verdict(Ok(WorkerExit::Panicked)), Some(EXIT_WORKER_STOPPED));
        // The worker's sender dropped without a word: it is gone all the same.
        assert_eq!(verdict(Err(RecvError)), Some(EXIT_WORKER_STOPPED));
    }
}
