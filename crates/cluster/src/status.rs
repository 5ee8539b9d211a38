//! What node agents report about the pods they run: `podstatus/NAMESPACE/NAME`.
//!
//! Kept apart from the Pod object (which `tapestry apply` owns) so that the
//! kubelet's writes never race a user's apply; readers join the two.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A pod's runtime status, written by the kubelet of the node running it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodRunStatus {
    pub node: String,
    #[serde(rename = "podIP")]
    pub pod_ip: Option<Ipv4Addr>,
    /// `Pending`, `Running` or `Failed`.
    pub phase: String,
    /// The pod answers ping and accepts connections on its declared TCP ports.
    pub ready: bool,
    #[serde(default)]
    pub message: String,
}

/// Store key of a pod's status.
pub fn status_key(namespace: &str, name: &str) -> String {
    format!("podstatus/{namespace}/{name}")
}
