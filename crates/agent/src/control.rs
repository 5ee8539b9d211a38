//! The control socket's server side: a Unix stream socket, one JSON [`Request`]
//! per line, one JSON [`Reply`] per line (the protocol and the client call are in
//! `tapestry-proto`). Each connection is served on its own thread; the node
//! serialises changes itself.
//!
//! The socket attaches interfaces into namespaces as root, so it is guarded: the
//! file is mode `0600`; a client must be root or the agent's own user
//! (`SO_PEERCRED`); at most [`MAX_CLIENTS`] are served at once (one more is told so
//! and closed, not queued); a client that sends or reads nothing for
//! [`IO_TIMEOUT`] is dropped; and the namespace of an ADD or CHECK must be a pod's
//! ([`crate::netns::check_pod_netns`]).

use std::io::{BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use tapestry_proto::{encode_reply, Reply, Request, RequestError, Requests};

use crate::handoff::{self, Role};
use crate::netns::check_pod_netns;
use crate::node::Node;
use crate::watchdog::EXIT_WORKER_STOPPED;

/// Clients served at once (CNI calls and `tapestry` commands are short).
pub const MAX_CLIENTS: usize = 8;

/// How long a read or a write on a client connection may wait.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the control socket could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another tapestryd is already serving {}: stop it first (scripts/lab.sh down, or kill the process)", .0.display())]
    InUse(PathBuf),
    #[error("cannot remove stale socket {}: {source}", path.display())]
    Stale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {}: {source}", path.display())]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make {} mode 0600: {source}", path.display())]
    Mode {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `path`. Refuses when another agent answers there; removes a stale
/// socket file left by an agent that died.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(BindError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(|source| BindError::Stale {
            path: path.to_owned(),
            source,
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| BindError::Listen {
        path: path.to_owned(),
        source,
    })?;
    // Until this returns the mode follows the umask; the credential check guards
    // that moment.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        BindError::Mode {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(listener)
}

/// Serves requests until the listener fails. `keep` is what an upgrade
/// hand-off passes on besides the node's own descriptors (the state
/// directory's lock and this listener, [`crate::handoff`]).
pub fn serve(listener: UnixListener, node: Arc<Node>, keep: Vec<(Role, OwnedFd)>) {
    let keep = Mutex::new(Some(keep));
    serve_with(listener, IO_TIMEOUT, move |req, stream| match req {
        Request::Upgrade => upgrade(&node, &keep, stream),
        req => dispatch(&node, req),
    });
}

/// The old process's side of `tapestryd --upgrade`: stops the data plane,
/// sends every descriptor and exits once the new process has them (0), or
/// with [`EXIT_WORKER_STOPPED`] if it never says so. Only a refusal before the
/// data plane stopped (a second request, a worker that does not answer)
/// returns, as an error reply.
fn upgrade(node: &Node, keep: &Mutex<Option<Vec<(Role, OwnedFd)>>>, stream: &UnixStream) -> Reply {
    let Some(mut items) = keep.lock().take() else {
        return Reply::error("an upgrade hand-off is already under way".to_owned());
    };
    let t0 = std::time::Instant::now();
    match node.hand_over() {
        Ok(fds) => items.extend(fds),
        Err(e) => return Reply::error(format!("cannot stop the data plane for the hand-off: {e}")),
    }
    let stopped = t0.elapsed();
    let count = items.len();
    let status = match handoff::send(stream, items) {
        Ok(()) if handoff::taken(stream) => {
            tracing::info!(
                descriptors = count,
                worker_stop_ms = format!("{:.1}", stopped.as_secs_f64() * 1e3),
                total_ms = format!("{:.1}", t0.elapsed().as_secs_f64() * 1e3),
                "upgrade: handed over to the new agent; exiting"
            );
            0
        }
        Ok(()) => {
            tracing::error!("upgrade: the new agent did not confirm the hand-off; exiting (the supervisor starts a fresh agent)");
            EXIT_WORKER_STOPPED
        }
        Err(e) => {
            tracing::error!(error = %e, "upgrade: cannot send the descriptors; exiting (the supervisor starts a fresh agent)");
            EXIT_WORKER_STOPPED
        }
    };
    std::process::exit(status);
}

/// Serves requests with `handler`: the guards of the module docs, with reads and
/// writes bounded by `timeout`.
pub fn serve_with<H>(listener: UnixListener, timeout: Duration, handler: H)
where
    H: Fn(Request, &UnixStream) -> Reply + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                continue;
            }
        };
        if let Err(why) = permitted(&stream) {
            tracing::warn!(%why, "control client refused");
            refuse(stream, timeout, &why);
            continue;
        }
        let Some(slot) = Slot::take(&active) else {
            refuse(stream, timeout, "too many control clients: try again");
            continue;
        };
        let handler = Arc::clone(&handler);
        let spawned = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                let _slot = slot;
                handle(stream, timeout, &*handler);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot spawn a control thread");
        }
    }
}

/// One of the [`MAX_CLIENTS`] places, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>) -> Option<Slot> {
        let taken = active.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_CLIENTS).then_some(n + 1)
        });
        taken.ok().map(|_| Slot(Arc::clone(active)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Root or the agent's own user may talk to the agent (`SO_PEERCRED`).
fn permitted(stream: &UnixStream) -> Result<(), String> {
    let cred = rustix::net::sockopt::socket_peercred(stream)
        .map_err(|e| format!("cannot read the client's credentials: {e}"))?;
    let me = rustix::process::getuid();
    if cred.uid.is_root() || cred.uid == me {
        Ok(())
    } else {
        Err(format!(
            "uid {} may not use the control socket (root or uid {} only)",
            cred.uid.as_raw(),
            me.as_raw()
        ))
    }
}

/// Tells a client why it is not served, without waiting on it for long.
fn refuse(mut stream: UnixStream, timeout: Duration, why: &str) {
    let _ = stream.set_write_timeout(Some(timeout));
    if let Ok(mut out) = serde_json::to_vec(&Reply::error(why.to_owned())) {
        out.push(b'\n');
        let _ = stream.write_all(&out);
    }
}

fn handle(stream: UnixStream, timeout: Duration, handler: &dyn Fn(Request, &UnixStream) -> Reply) {
    if stream.set_read_timeout(Some(timeout)).is_err()
        || stream.set_write_timeout(Some(timeout)).is_err()
    {
        return;
    }
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let Ok(raw) = stream.try_clone() else {
        return;
    };
    // The protocol crate's reader, so that the `control` fuzz target feeds this
    // very path: blank lines skipped, a line that is not a request (not JSON, not
    // UTF-8) answered with an error, a line over `MAX_REQUEST_LINE` answered and
    // the connection closed.
    for next in Requests::new(BufReader::new(stream)) {
        let reply = match next {
            Ok(req) => handler(req, &raw),
            Err(RequestError::Io(_)) => return,
            Err(e) => Reply::error(e.to_string()),
        };
        let Ok(out) = encode_reply(&reply) else {
            return;
        };
        if writer.write_all(&out).is_err() {
            return;
        }
    }
}

/// Runs one request against the node.
pub fn dispatch(node: &Node, req: Request) -> Reply {
    if let Request::Add(a) | Request::Check(a) = &req {
        // An empty path is the node's to name (`netns is empty`).
        if !a.netns.as_os_str().is_empty() {
            if let Err(e) = check_pod_netns(&a.netns) {
                return Reply::error(e.to_string());
            }
        }
    }
    let res = match req {
        Request::Add(a) => node.add(&a).map(|r| Reply {
            result: Some(r),
            ..Reply::done()
        }),
        Request::Del(a) => node.del(&a).map(|()| Reply::done()),
        Request::Check(a) => node.check(&a).map(|()| Reply::done()),
        Request::Status => node.status().map(|s| Reply {
            status: Some(s),
            ..Reply::done()
        }),
        Request::Upgrade => Ok(Reply::error(
            "upgrade is served by the control socket itself".to_owned(),
        )),
    };
    res.unwrap_or_else(|e| Reply::error(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use std::io::{BufRead, Read};
    use std::os::unix::fs::FileTypeExt;
    use std::time::Instant;

    fn socket_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tapestry-ctl-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("sock")
    }

    fn read_reply(s: &mut UnixStream) -> String {
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    }

    #[test]
    fn a_bad_line_gets_an_error_and_the_connection_goes_on_until_one_is_too_long() {
        let path = socket_path("bad");
        let listener = bind(&path).unwrap();
        std::thread::spawn(move || {
            serve_with(listener, Duration::from_secs(5), |_, _| Reply::done())
        });
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut replies = BufReader::new(s.try_clone().unwrap());
        let mut next = || {
            let mut line = String::new();
            replies.read_line(&mut line).unwrap();
            line
        };
        // Not UTF-8 (the connection used to be closed with no reply), then a
        // request on the same connection.
        s.write_all(b"\xff\xfe\n{\"op\":\"status\"}\n").unwrap();
        let bad = next();
        assert!(
            bad.contains("\"ok\":false") && bad.contains("bad request"),
            "{bad}"
        );
        assert!(next().contains("\"ok\":true"));
        // One byte over the bound: told so, then closed.
        s.write_all(&vec![b' '; tapestry_proto::MAX_REQUEST_LINE + 1])
            .unwrap();
        let long = next();
        assert!(long.contains("request longer than 65536 bytes"), "{long}");
        assert_eq!(next(), "", "closed after a line over the bound");
    }

    #[test]
    fn socket_is_mode_0600() {
        let path = socket_path("mode");
        let _l = bind(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn excess_clients_are_refused_and_slow_ones_dropped() {
        let path = socket_path("limits");
        let listener = bind(&path).unwrap();
        let timeout = Duration::from_millis(1500);
        std::thread::spawn(move || serve_with(listener, timeout, |_, _| Reply::done()));
        // MAX_CLIENTS clients that send nothing hold every place.
        let mut idle: Vec<UnixStream> = (0..MAX_CLIENTS)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let mut extra = UnixStream::connect(&path).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let start = Instant::now();
        let reply = read_reply(&mut extra);
        assert!(reply.contains("too many control clients"), "{reply}");
        assert!(start.elapsed() < timeout, "refused at once, not queued");
        // The idle ones are closed once the timeout passes.
        for s in &mut idle {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 1];
            assert_eq!(s.read(&mut buf).unwrap(), 0, "closed by the agent");
        }
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(idle);
        // Their places are free again: a client is served. (The slots are given
        // back when the threads end, just after they close the connections.)
        let served = (0..50).any(|_| {
            let mut s = UnixStream::connect(&path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"{\"op\":\"status\"}\n").unwrap();
            let r = read_reply(&mut s);
            if r.contains("\"ok\":true") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
            false
        });
        assert!(served);
    }
}
