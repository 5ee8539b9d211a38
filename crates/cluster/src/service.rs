//! The Service object: one stable virtual IP (or DNS name) in front of the
//! pods a label selector picks — Kubernetes fact 4's input.
//!
//! Why Kubernetes' shape again: a Service manifest a Kubernetes user already
//! has must apply unchanged, so the fields keep their API names (`clusterIP`,
//! `targetPort`, `sessionAffinity`) and their API semantics:
//!
//! - `type` is `ClusterIP` (the default) or `ExternalName` (a DNS `CNAME`,
//!   no proxying). `NodePort` and `LoadBalancer` need a path from outside the
//!   cluster that Tapestry does not build, so they are rejected by name
//!   rather than silently treated as `ClusterIP`.
//! - `clusterIP` absent or `""` means "allocate one" ([`ClusterIp::Auto`],
//!   see `cluster_ip`), `None` makes the service headless (DNS returns the
//!   pods' own addresses, nothing is load-balanced), and an address asks for
//!   exactly that address.
//! - `targetPort` is an int or a string: a number is the pod port, a name is
//!   looked up in each selected pod's container ports (so pods may listen on
//!   different numbers); absent, `0` or `""` means "same as `port`", as the
//!   API server defaults it.
//! - An empty selector computes no endpoints (Kubernetes leaves such a
//!   service's endpoints to be managed by hand).
//!
//! Validation follows `ValidateService` of Kubernetes' `pkg/apis/core`:
//! service names are DNS-1035 labels (they become DNS labels under
//! `svc.cluster.local`), ports are required unless the service is headless or
//! `ExternalName`, port names are IANA service names, unique, and mandatory
//! once there is more than one port, and `(port, protocol)` pairs are unique.
//! Every error names the field. `status` (load-balancer ingress) is not
//! modelled: nothing here has an external load balancer.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::meta::{null_default, port_number, ObjectMeta, Protocol};
use crate::validate::{check_labels, check_name, FieldError, NameRule, Problem};

/// A Service: a stable address for the pods its selector picks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
}

/// The networking part of a Service spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// `ClusterIP` (default) or `ExternalName`.
    #[serde(rename = "type", default, deserialize_with = "null_default")]
    pub type_: ServiceType,
    /// The virtual IP: to be allocated, none (headless), or a fixed one.
    #[serde(
        rename = "clusterIP",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "ClusterIp::is_auto"
    )]
    pub cluster_ip: ClusterIp,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<ServicePort>,
    /// Labels a pod must all carry to be a backend; empty selects nothing.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub selector: BTreeMap<String, String>,
    /// `None` (default) or `ClientIP`: keep a client on one backend.
    #[serde(default, deserialize_with = "null_default")]
    pub session_affinity: SessionAffinity,
    /// The DNS name an `ExternalName` service is an alias of.
    #[serde(
        default,
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub external_name: Option<String>,
}

/// `spec.type`. Only the types Tapestry implements are values; the others
/// are a decode error that says so.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ServiceType {
    /// A virtual IP inside the cluster, load-balanced to the endpoints.
    #[default]
    ClusterIp,
    /// A DNS alias (`CNAME`) of `spec.externalName`; no virtual IP.
    ExternalName,
}

impl ServiceType {
    /// The API spelling, `ClusterIP` or `ExternalName`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ServiceType::ClusterIp => "ClusterIP",
            ServiceType::ExternalName => "ExternalName",
        }
    }
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ServiceType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ServiceType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ServiceType;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a service type, ClusterIP or ExternalName")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ServiceType, E> {
                match v {
                    "ClusterIP" | "" => Ok(ServiceType::ClusterIp),
                    "ExternalName" => Ok(ServiceType::ExternalName),
                    "NodePort" | "LoadBalancer" => Err(E::custom(format!(
                        "`{v}` is not supported: Tapestry has no path into the cluster from \
                         outside; use ClusterIP (reached from pods) or ExternalName"
                    ))),
                    _ => Err(E::custom(format!(
                        "unknown service type `{v}`; expected ClusterIP or ExternalName"
                    ))),
                }
            }
        }
        d.deserialize_str(V)
    }
}

/// `spec.clusterIP`: how the service's virtual IP is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ClusterIp {
    /// Absent or `""`: the control plane allocates one from the service CIDR.
    #[default]
    Auto,
    /// `None`: a headless service; DNS answers with the pods' addresses.
    Headless,
    /// This exact address (which must be inside the service CIDR and free).
    Ip(Ipv4Addr),
}

impl ClusterIp {
    /// Whether the address is still to be allocated.
    pub fn is_auto(&self) -> bool {
        matches!(self, ClusterIp::Auto)
    }

    /// The fixed address, if one is set.
    pub fn ip(&self) -> Option<Ipv4Addr> {
        match self {
            ClusterIp::Ip(ip) => Some(*ip),
            ClusterIp::Auto | ClusterIp::Headless => None,
        }
    }
}

impl fmt::Display for ClusterIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterIp::Auto => Ok(()),
            ClusterIp::Headless => f.write_str("None"),
            ClusterIp::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl Serialize for ClusterIp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ClusterIp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ClusterIp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an IPv4 address, `None`, or empty")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ClusterIp, E> {
                match v {
                    "" => Ok(ClusterIp::Auto),
                    "None" => Ok(ClusterIp::Headless),
                    _ => v.parse().map(ClusterIp::Ip).map_err(|_| {
                        E::custom(format!(
                            "`{v}` is not valid: must be an IPv4 address, `None` for a \
                             headless service, or empty to have one allocated"
                        ))
                    }),
                }
            }
        }
        d.deserialize_str(V)
    }
}

/// `spec.sessionAffinity`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SessionAffinity {
    /// Every new connection may go to any backend.
    #[default]
    None,
    /// Connections from one client IP go to the same backend.
    #[serde(rename = "ClientIP")]
    ClientIp,
}

/// One port the service exposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Required once the service has more than one port; the DNS SRV name.
    #[serde(
        default,
        deserialize_with = "empty_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub protocol: Protocol,
    /// The port on the cluster IP.
    #[serde(deserialize_with = "port_number")]
    pub port: u16,
    /// The pod port; `None` means the same number as `port`.
    #[serde(
        default,
        deserialize_with = "target_port_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub target_port: Option<TargetPort>,
}

impl ServicePort {
    /// The target with the default applied: `targetPort`, else `port`.
    pub fn target(&self) -> TargetPort {
        self.target_port
            .clone()
            .unwrap_or(TargetPort::Number(self.port))
    }
}

/// `targetPort`: a pod port number, or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Name(s) => f.write_str(s),
        }
    }
}

impl Serialize for TargetPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TargetPort::Number(n) => s.serialize_u16(*n),
            TargetPort::Name(name) => s.serialize_str(name),
        }
    }
}

/// Decodes int-or-string; `0` and `""` are "unset", as the API server's
/// defaulting treats them. Out-of-range numbers are an error at the field.
fn decode_target_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TargetPort>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<TargetPort>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a port number from 1 to 65535 or a port name")
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
            match u16::try_from(n) {
                Ok(0) => Ok(None),
                Ok(p) => Ok(Some(TargetPort::Number(p))),
                Err(_) => Err(E::custom(format!(
                    "{n} is out of range; must be from 1 to 65535"
                ))),
            }
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
            self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok((!v.is_empty()).then(|| TargetPort::Name(v.to_string())))
        }
    }
    d.deserialize_any(V)
}

impl<'de> Deserialize<'de> for TargetPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        decode_target_port(d)?
            .ok_or_else(|| serde::de::Error::custom("a target port must not be 0 or empty"))
    }
}

/// `targetPort` as an optional field: absent, `null`, `0` and `""` are `None`.
fn target_port_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TargetPort>, D::Error> {
    struct Opt;
    impl<'de> serde::de::Visitor<'de> for Opt {
        type Value = Option<TargetPort>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a port number from 1 to 65535 or a port name")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            decode_target_port(d)
        }
    }
    d.deserialize_option(Opt)
}

/// An optional string where `""` (and `null`) means absent, as Kubernetes
/// treats unset string fields.
fn empty_as_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

/// Store key of a service: `services/NAMESPACE/NAME`.
pub fn service_key(namespace: &str, name: &str) -> String {
    format!("services/{namespace}/{name}")
}

impl Service {
    /// Store key, `services/<namespace>/<name>`.
    pub fn key(&self) -> String {
        service_key(&self.metadata.namespace, &self.metadata.name)
    }

    /// `namespace/name`, how caches and messages name a service.
    pub fn namespaced_name(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// Whether `clusterIP: None`: DNS answers with the pods, nothing is
    /// load-balanced.
    pub fn is_headless(&self) -> bool {
        self.spec.cluster_ip == ClusterIp::Headless
    }

    /// Checks every modelled field.
    pub fn validate(&self) -> Result<(), FieldError> {
        let m = &self.metadata;
        check_name("metadata.name", &m.name, NameRule::Dns1035Label)?;
        check_name("metadata.namespace", &m.namespace, NameRule::Dns1123Label)?;
        check_labels("metadata.labels", &m.labels)?;
        self.validate_type()?;
        self.validate_ports()?;
        check_labels("spec.selector", &self.spec.selector)
    }

    /// The fields each service type requires or forbids.
    fn validate_type(&self) -> Result<(), FieldError> {
        let s = &self.spec;
        let invalid = |field: &str, value: String, reason: &str| {
            Err(FieldError::new(
                field,
                Problem::Invalid {
                    value,
                    reason: reason.into(),
                },
            ))
        };
        match s.type_ {
            ServiceType::ExternalName => {
                let Some(name) = &s.external_name else {
                    return Err(FieldError::new(
                        "spec.externalName",
                        Problem::RequiredWhen {
                            condition: "for type ExternalName",
                        },
                    ));
                };
                // A fully qualified name may end in the root dot.
                let bare = name.strip_suffix('.').unwrap_or(name);
                check_name("spec.externalName", bare, NameRule::Dns1123Subdomain).map_err(
                    |_| {
                        FieldError::new(
                            "spec.externalName",
                            Problem::InvalidName {
                                value: name.clone(),
                                rule: NameRule::Dns1123Subdomain,
                            },
                        )
                    },
                )?;
                if !s.cluster_ip.is_auto() {
                    return invalid(
                        "spec.clusterIP",
                        s.cluster_ip.to_string(),
                        "must not be set for ExternalName services",
                    );
                }
                if s.session_affinity != SessionAffinity::None {
                    return invalid(
                        "spec.sessionAffinity",
                        "ClientIP".into(),
                        "must be None for ExternalName services",
                    );
                }
            }
            ServiceType::ClusterIp => {
                if self.is_headless() {
                    if s.session_affinity != SessionAffinity::None {
                        return invalid(
                            "spec.sessionAffinity",
                            "ClientIP".into(),
                            "must be None when spec.clusterIP is None",
                        );
                    }
                } else if s.ports.is_empty() {
                    return Err(FieldError::new(
                        "spec.ports",
                        Problem::RequiredWhen {
                            condition: "unless the service is headless (clusterIP: None)",
                        },
                    ));
                }
            }
        }
        Ok(())
    }

    /// Port names (unique, required for several ports), numbers and target ports.
    fn validate_ports(&self) -> Result<(), FieldError> {
        let s = &self.spec;
        let mut names = HashMap::new();
        let mut pairs = HashMap::new();
        for (i, p) in s.ports.iter().enumerate() {
            let at = format!("spec.ports[{i}]");
            match &p.name {
                Some(name) => {
                    check_name(&format!("{at}.name"), name, NameRule::IanaServiceName)?;
                    if names.insert(name.as_str(), i).is_some() {
                        return Err(FieldError::new(
                            format!("{at}.name"),
                            Problem::Duplicate {
                                value: name.clone(),
                            },
                        ));
                    }
                }
                None if s.ports.len() > 1 => {
                    // DNS SRV records and named endpoints need to tell the
                    // ports apart.
                    return Err(FieldError::new(
                        format!("{at}.name"),
                        Problem::RequiredWhen {
                            condition: "when a service has more than one port",
                        },
                    ));
                }
                None => {}
            }
            if p.port == 0 {
                return Err(FieldError::new(
                    format!("{at}.port"),
                    Problem::OutOfRange {
                        value: 0,
                        min: 1,
                        max: 65535,
                    },
                ));
            }
            match &p.target_port {
                Some(TargetPort::Number(0)) => {
                    return Err(FieldError::new(
                        format!("{at}.targetPort"),
                        Problem::OutOfRange {
                            value: 0,
                            min: 1,
                            max: 65535,
                        },
                    ))
                }
                Some(TargetPort::Name(n)) => {
                    check_name(&format!("{at}.targetPort"), n, NameRule::IanaServiceName)?
                }
                Some(TargetPort::Number(_)) | None => {}
            }
            if pairs.insert((p.port, p.protocol), i).is_some() {
                return Err(FieldError::new(
                    at,
                    Problem::Duplicate {
                        value: format!("{}/{}", p.port, p.protocol),
                    },
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
