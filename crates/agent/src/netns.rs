//! What a network namespace path from the control socket must be before the agent
//! enters it (CNI ADD and CHECK): a namespace file (on nsfs, as `/run/netns/NAME`
//! bind mounts and `/proc/PID/ns/net` are), and neither the host's namespace
//! (`/proc/1/ns/net`) nor the agent's own (`/proc/self/ns/net`), where a pod's
//! `eth0` would land among the node's own interfaces.
//!
//! The path is opened with `O_NONBLOCK` before anything else: opening a FIFO for
//! reading blocks until a writer appears, so a FIFO at that path would hang the
//! thread serving the request; without blocking it opens at once and is refused
//! by its file type.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

/// `NSFS_MAGIC` (linux/magic.h): the file system of namespace files.
const NSFS_MAGIC: u64 = 0x6e73_6673;

/// The host's network namespace (that of init).
const HOST_NETNS: &str = "/proc/1/ns/net";
/// The agent's own network namespace.
const OWN_NETNS: &str = "/proc/self/ns/net";

/// Why a path is not accepted as a pod's network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is a FIFO, not a network namespace", path.display())]
    Fifo { path: PathBuf },
    #[error("{} is not a namespace file (not on nsfs)", path.display())]
    NotNsfs { path: PathBuf },
    #[error("{} is the host's network namespace, not a pod's", path.display())]
    Host { path: PathBuf },
    #[error("{} is the agent's own network namespace, not a pod's", path.display())]
    Agent { path: PathBuf },
}

/// Device and inode: what identifies a namespace.
fn identity(fd: impl AsFd) -> std::io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// The identity of the namespace at a well-known path, if it can be read.
fn known(path: &str) -> Option<(u64, u64)> {
    let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    identity(fd).ok()
}

/// Accepts `path` as a pod's network namespace: see the module docs.
pub fn check_pod_netns(path: &Path) -> Result<(), NetnsError> {
    let open_err = |e: rustix::io::Errno| NetnsError::Open {
        path: path.to_owned(),
        source: e.into(),
    };
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(open_err)?;
    let st = rustix::fs::fstat(&fd).map_err(open_err)?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Fifo {
        return Err(NetnsError::Fifo {
            path: path.to_owned(),
        });
    }
    let fs = rustix::fs::fstatfs(&fd).map_err(open_err)?;
    // The field's integer type differs between architectures.
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    let magic = fs.f_type as u64;
    if magic != NSFS_MAGIC {
        return Err(NetnsError::NotNsfs {
            path: path.to_owned(),
        });
    }
    let id = (st.st_dev, st.st_ino);
    if known(HOST_NETNS) == Some(id) {
        return Err(NetnsError::Host {
            path: path.to_owned(),
        });
    }
    if known(OWN_NETNS) == Some(id) {
        return Err(NetnsError::Agent {
            path: path.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::{Duration, Instant};

    fn scratch(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("tapestry-netns-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let p = scratch("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let start = Instant::now();
        let err = check_pod_netns(&p).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(matches!(err, NetnsError::Fifo { .. }), "{err:?}");
        assert!(err.to_string().contains("FIFO"), "{err}");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_regular_file_or_directory_is_refused() {
        let p = scratch("file");
        std::fs::write(&p, b"not a namespace").unwrap();
        let err = check_pod_netns(&p).unwrap_err();
        assert!(matches!(err, NetnsError::NotNsfs { .. }), "{err:?}");
        std::fs::remove_file(&p).unwrap();
        let err = check_pod_netns(&std::env::temp_dir()).unwrap_err();
        assert!(matches!(err, NetnsError::NotNsfs { .. }), "{err:?}");
    }

    #[test]
    fn a_missing_path_is_an_open_error() {
        let err = check_pod_netns(&scratch("missing")).unwrap_err();
        assert!(matches!(err, NetnsError::Open { .. }), "{err:?}");
    }

    #[test]
    fn the_agents_own_and_the_hosts_namespace_are_refused() {
        // The test runs in one of them: it is refused as either (the host's when
        // the tests run in the host's namespace, the agent's own otherwise).
        let err = check_pod_netns(Path::new(OWN_NETNS)).unwrap_err();
        assert!(
            matches!(err, NetnsError::Agent { .. } | NetnsError::Host { .. }),
            "{err:?}"
        );
        // The same namespace through another path, by its PID.
        let by_pid = PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
        let err = check_pod_netns(&by_pid).unwrap_err();
        assert!(
            matches!(err, NetnsError::Agent { .. } | NetnsError::Host { .. }),
            "{err:?}"
        );
        if known(HOST_NETNS).is_some() {
            let err = check_pod_netns(Path::new(HOST_NETNS)).unwrap_err();
            assert!(matches!(err, NetnsError::Host { .. }), "{err:?}");
        }
    }
}
