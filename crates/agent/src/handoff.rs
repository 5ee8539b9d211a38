//! The upgrade hand-off: a running agent gives its open descriptors to a new
//! `tapestryd --upgrade` over the control socket, so that a planned restart
//! closes nothing (docs/architecture.md, "Restart without a gap").
//!
//! The new process connects to the control socket and sends
//! `{"op":"upgrade"}`. The old one stops its packet worker (which detaches the
//! flow file, so that only one process ever writes it) and sends, in messages
//! of at most [`BATCH`] descriptors, one JSON [`Batch`] line each with the
//! descriptors attached (`SCM_RIGHTS`): the state directory's lock, the control
//! socket's listener, the tunnel's receive socket, and every port's TAP (the
//! host port as port 0, each pod's under its bridge port). The last batch says
//! so. The new process serves with them and writes [`ACK`]; the old one exits 0
//! on reading it, or 70 ([`crate::watchdog::EXIT_WORKER_STOPPED`]) if the new
//! one never takes them (its data plane is stopped either way; the supervisor
//! then starts a fresh agent, which restarts without loss).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::UdpSocket;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tapestry_io::Tap;
use tapestry_proto::{encode_request, Request};

/// Descriptors per message (well under the kernel's 253).
pub const BATCH: usize = 64;
/// What the new process writes once it serves with the descriptors.
pub const ACK: &[u8] = b"taken\n";
/// How long either side waits for the other.
pub const WAIT: Duration = Duration::from_secs(5);
/// Largest batch line accepted (64 entries with their names and paths).
const MAX_LINE: usize = 64 * 1024;

/// What one handed-over descriptor is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Role {
    /// The state directory's lock file (its `flock` goes with it).
    Lock,
    /// The control socket's listener.
    Control,
    /// The tunnel's receive socket, bound to the VXLAN port.
    Tunnel,
    /// A bridge port's TAP: the host port is port 0.
    Port {
        id: u16,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<PathBuf>,
    },
}

/// One message's line: the roles of the descriptors it carries, in order.
#[derive(Debug, Serialize, Deserialize)]
pub struct Batch {
    pub fds: Vec<Role>,
    pub last: bool,
}

/// What the new process received.
#[derive(Debug, Default)]
pub struct Inherited {
    pub lock: Option<File>,
    pub control: Option<UnixListener>,
    pub tunnel: Option<UdpSocket>,
    /// TAPs by bridge port.
    pub ports: BTreeMap<u16, Tap>,
}

/// Why a hand-off failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("cannot reach the running agent at {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("hand-off: {0}")]
    Io(#[from] io::Error),
    #[error("the running agent refused the hand-off: {0}")]
    Refused(String),
    #[error("hand-off message is not a batch ({0})")]
    BadBatch(String),
    #[error("hand-off message names {named} descriptors but carries {carried}")]
    Count { named: usize, carried: usize },
    #[error("hand-off message has {0} descriptors (at most {BATCH})")]
    TooMany(usize),
}

/// Sends `items` in batches on `stream` (the old process's side).
pub fn send(stream: &UnixStream, items: Vec<(Role, OwnedFd)>) -> io::Result<()> {
    let mut items = items.into_iter().peekable();
    loop {
        let chunk: Vec<(Role, OwnedFd)> = items.by_ref().take(BATCH).collect();
        let batch = Batch {
            fds: chunk.iter().map(|(r, _)| r.clone()).collect(),
            last: items.peek().is_none(),
        };
        let mut line = serde_json::to_vec(&batch).map_err(io::Error::other)?;
        line.push(b'\n');
        let fds: Vec<_> = chunk.iter().map(|(_, fd)| fd.as_fd()).collect();
        tapestry_io::send_fds(stream.as_fd(), &line, &fds)?;
        if batch.last {
            return Ok(());
        }
    }
}

/// Waits up to [`WAIT`] for the new process's [`ACK`] (the old process's side).
pub fn taken(stream: &UnixStream) -> bool {
    if stream.set_read_timeout(Some(WAIT)).is_err() {
        return false;
    }
    let mut got = [0u8; ACK.len()];
    (&*stream).read_exact(&mut got).is_ok() && got == ACK
}

/// Asks the agent on `socket` for its descriptors (the new process's side).
/// The returned stream is where [`acknowledge`] writes once they serve.
pub fn request(socket: &Path) -> Result<(UnixStream, Inherited), HandoffError> {
    let stream = UnixStream::connect(socket).map_err(|source| HandoffError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.set_write_timeout(Some(WAIT))?;
    let req = encode_request(&Request::Upgrade).map_err(io::Error::other)?;
    (&stream).write_all(&req)?;
    let inherited = receive(&stream)?;
    Ok((stream, inherited))
}

/// Receives batches until the last (the new process's side).
pub fn receive(stream: &UnixStream) -> Result<Inherited, HandoffError> {
    let mut got = Inherited::default();
    let mut buf = vec![0u8; MAX_LINE];
    loop {
        let (n, fds) = tapestry_io::recv_fds(stream.as_fd(), &mut buf, BATCH + 1)?;
        let data = buf.get(..n).unwrap_or_default();
        if n == 0 {
            return Err(HandoffError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the running agent closed the connection",
            )));
        }
        if fds.len() > BATCH {
            return Err(HandoffError::TooMany(fds.len()));
        }
        let batch: Batch = match serde_json::from_slice(data.trim_ascii_end()) {
            Ok(b) => b,
            // No descriptors and not a batch: the agent's error reply.
            Err(e) => {
                let text = String::from_utf8_lossy(data).trim().to_owned();
                return Err(match serde_json::from_str::<tapestry_proto::Reply>(&text) {
                    Ok(r) if fds.is_empty() => HandoffError::Refused(r.error.unwrap_or(text)),
                    _ => HandoffError::BadBatch(e.to_string()),
                });
            }
        };
        if batch.fds.len() != fds.len() {
            return Err(HandoffError::Count {
                named: batch.fds.len(),
                carried: fds.len(),
            });
        }
        for (role, fd) in batch.fds.into_iter().zip(fds) {
            match role {
                Role::Lock => got.lock = Some(File::from(fd)),
                Role::Control => got.control = Some(UnixListener::from(fd)),
                Role::Tunnel => got.tunnel = Some(UdpSocket::from(fd)),
                Role::Port { id, name, netns } => {
                    got.ports.insert(id, Tap::from_fd(fd, name, netns));
                }
            }
        }
        if batch.last {
            return Ok(got);
        }
    }
}

/// Tells the old process that the descriptors serve here now.
pub fn acknowledge(stream: &UnixStream) -> io::Result<()> {
    (&*stream).write_all(ACK)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use std::io::Seek;
    use std::os::fd::AsRawFd;

    #[test]
    fn every_role_crosses_in_batches_and_the_ack_comes_back() {
        let (old, new) = UnixStream::pair().unwrap();
        let dir = std::env::temp_dir().join(format!("tapestry-handoff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lock_path = dir.join("lock");
        std::fs::write(&lock_path, "123\n").unwrap();
        let lock = File::open(&lock_path).unwrap();
        let listener = UnixListener::bind(dir.join("sock")).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_addr = udp.local_addr().unwrap();
        let mut items = vec![
            (Role::Lock, OwnedFd::from(lock)),
            (Role::Control, OwnedFd::from(listener)),
            (Role::Tunnel, OwnedFd::from(udp)),
        ];
        // More "ports" than one batch holds (any descriptor stands in for a TAP).
        for id in 0..u16::try_from(BATCH + 10).unwrap() {
            let f = File::open(&lock_path).unwrap();
            items.push((
                Role::Port {
                    id,
                    name: format!("tap{id}"),
                    netns: (id > 0).then(|| PathBuf::from(format!("/run/netns/p{id}"))),
                },
                OwnedFd::from(f),
            ));
        }
        let sender = std::thread::spawn(move || {
            send(&old, items).unwrap();
            taken(&old)
        });
        let got = receive(&new).unwrap();
        let mut lock = got.lock.unwrap();
        let mut text = String::new();
        lock.seek(io::SeekFrom::Start(0)).unwrap();
        lock.read_to_string(&mut text).unwrap();
        assert_eq!(text, "123\n");
        // The listener is the one bound: a client connecting there is accepted.
        let _client = UnixStream::connect(dir.join("sock")).unwrap();
        got.control.unwrap().accept().unwrap();
        assert_eq!(got.tunnel.unwrap().local_addr().unwrap(), udp_addr);
        assert_eq!(got.ports.len(), BATCH + 10);
        let p5 = &got.ports[&5];
        assert_eq!(
            (p5.name(), p5.netns()),
            ("tap5", Some(Path::new("/run/netns/p5")))
        );
        assert!(got.ports[&0].netns().is_none() && got.ports[&0].as_raw_fd() >= 0);
        acknowledge(&new).unwrap();
        assert!(sender.join().unwrap(), "the old side saw the ack");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_refusal_or_a_lying_batch_is_an_error() {
        let (old, new) = UnixStream::pair().unwrap();
        (&old)
            .write_all(b"{\"ok\":false,\"error\":\"data-plane worker has stopped\"}\n")
            .unwrap();
        let e = receive(&new).unwrap_err();
        assert!(
            matches!(&e, HandoffError::Refused(m) if m.contains("worker has stopped")),
            "{e}"
        );
        // Two roles named, one descriptor carried.
        let f = File::open("/proc/self/stat").unwrap();
        tapestry_io::send_fds(
            old.as_fd(),
            b"{\"fds\":[{\"kind\":\"lock\"},{\"kind\":\"tunnel\"}],\"last\":true}\n",
            &[f.as_fd()],
        )
        .unwrap();
        assert!(matches!(
            receive(&new).unwrap_err(),
            HandoffError::Count {
                named: 2,
                carried: 1
            }
        ));
        drop(old);
        assert!(matches!(receive(&new).unwrap_err(), HandoffError::Io(_)));
        // Without an ack the old side says so.
        let (old, new) = UnixStream::pair().unwrap();
        drop(new);
        assert!(!taken(&old));
    }
}
