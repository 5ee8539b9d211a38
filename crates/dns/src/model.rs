//! The input model: what cluster DNS needs to know about the cluster.
//!
//! Why its own types: the zone is built from the few facts DNS answers with, not
//! from the cluster objects. The `--store` source (`cluster.rs`) converts
//! Services, EndpointSlices and Pods into a [`DnsData`]; tests and the
//! `--data FILE.json` source write it directly. Names here are Kubernetes
//! names (DNS-1123 labels); [`crate::Zone::build`] lowercases them and skips,
//! with a warning, any that cannot be DNS names.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Everything the zone is built from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsData {
    #[serde(default)]
    pub services: Vec<ServiceRecord>,
    #[serde(default)]
    pub pods: Vec<PodRecord>,
    /// The cluster store revision this data was read at (every change up to
    /// it), when it came from the store: served as TXT at
    /// `tapestry-revision.<zone>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

/// A Service and its ready endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub name: String,
    pub namespace: String,
    pub kind: ServiceKind,
    #[serde(default)]
    pub ports: Vec<PortRecord>,
    /// Ready endpoints only (the spec answers for ready endpoints).
    #[serde(default)]
    pub endpoints: Vec<EndpointRecord>,
}

/// How a Service is reached. JSON: `{"clusterIp": "10.96.0.1"}`, `"headless"`,
/// `{"externalName": "example.com"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ServiceKind {
    ClusterIp(Ipv4Addr),
    /// `clusterIP: None`: the name resolves to the ready endpoints.
    Headless,
    /// `type: ExternalName`: the name is a CNAME.
    ExternalName(String),
}

/// A port. Only named ports get SRV records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRecord {
    #[serde(default)]
    pub name: Option<String>,
    /// `"TCP"`, `"UDP"` or `"SCTP"`; the SRV label is its lowercase form.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// The service port; on an [`EndpointRecord`], the resolved target port.
    pub port: u16,
}

fn default_protocol() -> String {
    "TCP".to_owned()
}

/// One ready endpoint address of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub ip: Ipv4Addr,
    /// The pod's `spec.hostname` when its `spec.subdomain` is this service.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Resolved target ports, named like the service's ports.
    #[serde(default)]
    pub ports: Vec<PortRecord>,
}

/// A pod that exists, for `a-b-c-d.ns.pod.<zone>` ("pods verified").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub name: String,
    pub namespace: String,
    pub ip: Ipv4Addr,
}

/// Why a data file could not be loaded.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl DnsData {
    /// Reads a JSON file in the shape of [`DnsData`].
    pub fn load(path: &Path) -> Result<DnsData, DataError> {
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| DataError::Json {
            path: path.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let text = r#"{
          "services": [
            {"name": "web", "namespace": "default", "kind": {"clusterIp": "10.96.0.20"},
             "ports": [{"name": "http", "port": 80}]},
            {"name": "db", "namespace": "default", "kind": "headless",
             "endpoints": [{"ip": "10.244.1.5", "hostname": "db-0",
                            "ports": [{"name": "pg", "protocol": "TCP", "port": 5432}]}]},
            {"name": "ext", "namespace": "default", "kind": {"externalName": "example.com"}}
          ],
          "pods": [{"name": "db-0", "namespace": "default", "ip": "10.244.1.5"}]
        }"#;
        let data: DnsData = serde_json::from_str(text).unwrap();
        assert_eq!(data.services.len(), 3);
        assert_eq!(data.services[0].ports[0].protocol, "TCP");
        assert_eq!(data.services[1].kind, ServiceKind::Headless);
        let back: DnsData = serde_json::from_str(&serde_json::to_string(&data).unwrap()).unwrap();
        assert_eq!(back, data);
    }
}
