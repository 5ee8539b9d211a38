//! `tapestry-pause`: the process that holds a pod's network namespace open, like
//! Kubernetes' pause container. It does nothing and exits on SIGTERM/SIGINT
//! (their default action).
#![forbid(unsafe_code)]

fn main() {
    loop {
        std::thread::park();
    }
}
