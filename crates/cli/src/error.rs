//! What can go wrong in `tapestry`, one variant per cause.

use std::net::SocketAddr;
use std::path::PathBuf;

use tapestry_cluster::{AdmissionError, ManifestError, StoreError, StoreSpec};
use tapestry_proto::CallError;

/// An error of one `tapestry` command; printed as `tapestry: <message>`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Standard output could not be written (a closed pipe is not reported:
    /// `tapestry get pods | head -1` ends quietly).
    #[error("cannot write to standard output: {0}")]
    Stdout(#[source] std::io::Error),
    /// The agent could not be asked.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The agent answered with an error.
    #[error("tapestryd: {message}")]
    Agent { message: String },
    /// A status request answered without a status.
    #[error("tapestryd answered without a status")]
    NoStatus,
    /// `status --counter NAME` for a counter the agent does not have.
    #[error("no counter {name:?}")]
    NoCounter { name: String },
    /// JSON output could not be encoded.
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The store directory (a directory store) is not a cluster store.
    #[error(
        "no cluster store at {} (is the lab up? give --store or set TAPESTRY_STORE)",
        dir.display()
    )]
    NoStore { dir: PathBuf },
    /// The store could not be opened.
    #[error("cannot open store {spec}: {source}")]
    OpenStore { spec: StoreSpec, source: StoreError },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manifest could not be read or encoded.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// `apply` or `delete` was refused.
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    /// A resource type this command does not know.
    #[error("unknown resource type {kind:?}: use {expected}")]
    UnknownKind {
        kind: String,
        expected: &'static str,
    },
    /// `delete` without a file or names.
    #[error("give -f FILE, or KIND NAME… (e.g. `delete pod web-a`)")]
    DeleteUsage,
    /// `delete` named objects that do not exist.
    #[error("not found: {}", missing.join(", "))]
    NotFound { missing: Vec<String> },
    /// `wait` ran out of time.
    #[error("not ready after {seconds}s: {}", waiting.join(", "))]
    NotReady { seconds: u64, waiting: Vec<String> },
    /// `probe` could not connect.
    #[error("{addr}: {source}")]
    Probe {
        addr: SocketAddr,
        source: std::io::Error,
    },
}
