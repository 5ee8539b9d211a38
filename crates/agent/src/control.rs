//! The control socket's server side: a Unix stream socket, one JSON [`Request`]
//! per line, one JSON [`Reply`] per line (the protocol and the client call are in
//! `tapestry-proto`). Each connection is served on its own thread; the node
//! serialises changes itself.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tapestry_proto::{Reply, Request};

use crate::node::Node;

/// Longest request line accepted (a request is a few hundred bytes).
const MAX_LINE: u64 = 64 * 1024;

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
    UnixListener::bind(path).map_err(|source| BindError::Listen {
        path: path.to_owned(),
        source,
    })
}

/// Serves requests until the listener fails.
pub fn serve(listener: UnixListener, node: Arc<Node>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let node = Arc::clone(&node);
                let spawned = std::thread::Builder::new()
                    .name("control".into())
                    .spawn(move || handle(stream, &node));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot spawn a control thread");
                }
            }
            Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
        }
    }
}

fn handle(stream: UnixStream, node: &Node) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(std::io::Read::take(stream, MAX_LINE));
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(req) => dispatch(node, req),
            Err(e) => Reply::error(format!("bad request: {e}")),
        };
        let Ok(mut out) = serde_json::to_vec(&reply) else {
            return;
        };
        out.push(b'\n');
        if writer.write_all(&out).is_err() {
            return;
        }
    }
}

/// Runs one request against the node.
pub fn dispatch(node: &Node, req: Request) -> Reply {
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
    };
    res.unwrap_or_else(|e| Reply::error(e.to_string()))
}
