//! The client side of the control socket: one request, one reply.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{decode_reply, encode_request, Reply, Request};

/// How long a client waits for the agent's reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing accepts connections at the socket.
    #[error("cannot reach tapestryd at {}: {source} (is the agent running?)", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The request could not be written.
    #[error("send to tapestryd at {}: {source}", path.display())]
    Send {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The reply could not be read (the agent closed the connection or timed out).
    #[error("read from tapestryd at {}: {source}", path.display())]
    Receive {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The request could not be encoded.
    #[error("cannot encode the request: {0}")]
    Encode(#[source] serde_json::Error),
    /// The reply is not a [`Reply`].
    #[error("bad reply from tapestryd at {}: {source}", path.display())]
    BadReply {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Sends one request to the agent at `path` and returns its reply, which may
/// itself report a failure (`ok: false`).
pub fn call(path: &Path, req: &Request) -> Result<Reply, CallError> {
    let at = || path.to_path_buf();
    let mut stream =
        UnixStream::connect(path).map_err(|source| CallError::Connect { path: at(), source })?;
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(|source| CallError::Connect { path: at(), source })?;
    let msg = encode_request(req).map_err(CallError::Encode)?;
    stream
        .write_all(&msg)
        .map_err(|source| CallError::Send { path: at(), source })?;
    let mut line = Vec::new();
    BufReader::new(stream)
        .read_until(b'\n', &mut line)
        .map_err(|source| CallError::Receive { path: at(), source })?;
    decode_reply(&line).map_err(|source| CallError::BadReply { path: at(), source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn socket_path(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tapestry-proto-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("s.sock")
    }

    /// Serves one connection: reads one line, answers `answer`, returns the line read.
    fn serve_once(listener: UnixListener, answer: &'static str) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut line = String::new();
            BufReader::new(stream).read_line(&mut line).unwrap();
            writer.write_all(answer.as_bytes()).unwrap();
            line
        })
    }

    #[test]
    fn a_request_is_one_json_line_and_the_reply_is_decoded() {
        let path = socket_path("ok");
        let server = serve_once(
            UnixListener::bind(&path).unwrap(),
            "{\"ok\":false,\"error\":\"no such pod\"}\n",
        );
        let reply = call(&path, &Request::Status).unwrap();
        assert!(!reply.ok);
        assert_eq!(reply.error.as_deref(), Some("no such pod"));
        assert_eq!(server.join().unwrap(), "{\"op\":\"status\"}\n");
    }

    #[test]
    fn no_agent_is_a_connect_error_naming_the_socket() {
        let path = socket_path("none");
        let err = call(&path, &Request::Status).unwrap_err();
        assert!(matches!(err, CallError::Connect { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_reply_that_is_not_json_is_a_bad_reply() {
        let path = socket_path("bad");
        let server = serve_once(UnixListener::bind(&path).unwrap(), "hello\n");
        let err = call(&path, &Request::Status).unwrap_err();
        assert!(matches!(err, CallError::BadReply { .. }), "{err:?}");
        server.join().unwrap();
    }

    #[test]
    fn attachment_defaults_fill_missing_fields() {
        let a: crate::Attachment = serde_json::from_str("{\"container_id\":\"c1\"}").unwrap();
        assert_eq!(a.ifname, "eth0");
        assert!(a.pod_name.is_empty());
    }
}
