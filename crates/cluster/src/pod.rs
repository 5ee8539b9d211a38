//! The Pod object (v1): one network namespace, the containers that share it,
//! and what the cluster recorded about it (its address and its node's).
//!
//! Only the networking-relevant part of the spec is modelled: `nodeName`,
//! `hostname`, `subdomain`, and per container its command, arguments,
//! environment and ports. Every other field (`image`, `resources`, …) is
//! ignored rather than rejected, as [`crate::manifest`] explains. Container
//! ports are what Service `targetPort`s and NetworkPolicy ports name
//! ([`crate::service`], [`crate::policy`]).
//!
//! Those fields are validated with Kubernetes' rules: names are DNS-1123
//! labels or subdomains, a pod has at least one container, container names
//! and port names are unique within the pod, port names are IANA service
//! names, and every error names the field (`spec.containers[0].ports[1].name`).
//!
//! Store key: `pods/<namespace>/<name>`.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::meta::{null_default, port_number, ObjectMeta, Protocol};
use crate::validate::{check_name, FieldError, NameRule, Problem};

/// A pod: one network namespace, its containers share it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default, skip_serializing_if = "PodStatus::is_empty")]
    pub status: PodStatus,
}

/// The networking-relevant part of a pod spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// The node the pod runs on: the manifest says, or admission schedules
    /// it (`crate::admission`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub containers: Vec<Container>,
}

/// What the cluster recorded about a running pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<Ipv4Addr>,
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
}

impl PodStatus {
    fn is_empty(&self) -> bool {
        self.pod_ip.is_none() && self.host_ip.is_none()
    }
}

/// One process started inside the pod's network namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub command: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub args: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<ContainerPort>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<EnvVar>,
}

/// A port a container listens on (informational, and the target of named
/// service ports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(deserialize_with = "port_number")]
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

/// An environment variable with a literal value (`valueFrom` is ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    #[serde(default)]
    pub name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub value: String,
}

impl Pod {
    /// Store key, `pods/<namespace>/<name>`.
    pub fn key(&self) -> String {
        format!("pods/{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// Checks every modelled field.
    pub fn validate(&self) -> Result<(), FieldError> {
        let m = &self.metadata;
        check_name("metadata.name", &m.name, NameRule::Dns1123Subdomain)?;
        check_name("metadata.namespace", &m.namespace, NameRule::Dns1123Label)?;
        let s = &self.spec;
        if let Some(n) = &s.node_name {
            check_name("spec.nodeName", n, NameRule::Dns1123Subdomain)?;
        }
        if let Some(h) = &s.hostname {
            check_name("spec.hostname", h, NameRule::Dns1123Label)?;
        }
        if let Some(d) = &s.subdomain {
            check_name("spec.subdomain", d, NameRule::Dns1123Label)?;
        }
        if s.containers.is_empty() {
            return Err(FieldError::new("spec.containers", Problem::Empty));
        }
        let mut names = HashMap::new();
        let mut port_names = HashMap::new();
        for (i, c) in s.containers.iter().enumerate() {
            let at = format!("spec.containers[{i}]");
            check_name(&format!("{at}.name"), &c.name, NameRule::Dns1123Label)?;
            if names.insert(c.name.as_str(), i).is_some() {
                return Err(FieldError::new(
                    format!("{at}.name"),
                    Problem::Duplicate {
                        value: c.name.clone(),
                    },
                ));
            }
            for (j, p) in c.ports.iter().enumerate() {
                let pat = format!("{at}.ports[{j}]");
                if p.container_port == 0 {
                    return Err(FieldError::new(
                        format!("{pat}.containerPort"),
                        Problem::OutOfRange {
                            value: 0,
                            min: 1,
                            max: 65535,
                        },
                    ));
                }
                if let Some(name) = &p.name {
                    check_name(&format!("{pat}.name"), name, NameRule::IanaServiceName)?;
                    if port_names.insert(name.as_str(), (i, j)).is_some() {
                        return Err(FieldError::new(
                            format!("{pat}.name"),
                            Problem::Duplicate {
                                value: name.clone(),
                            },
                        ));
                    }
                }
            }
            for (j, e) in c.env.iter().enumerate() {
                check_name(
                    &format!("{at}.env[{j}].name"),
                    &e.name,
                    NameRule::EnvVarName,
                )?;
            }
        }
        Ok(())
    }
}
