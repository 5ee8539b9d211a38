//! The NetworkPolicy object (networking.k8s.io/v1): which traffic the pods a
//! policy selects may receive (ingress) and send (egress).
//!
//! The shape and semantics are the upstream API's
//! (<https://kubernetes.io/docs/concepts/services-networking/network-policies/>):
//!
//! - `spec.podSelector` picks pods in the policy's own namespace; `{}` (or
//!   absent) picks every pod there.
//! - A pod selected by no policy of a direction is open in that direction;
//!   selected by any, only the union of the rules of those policies is
//!   allowed. So `ingress: []` (or absent) with `Ingress` in `policyTypes`
//!   denies all ingress, while `ingress: [{}]` allows all.
//! - Within a rule, the peers (`from`/`to`) are ORed and the ports too; an
//!   absent or empty peer list means every peer, an absent or empty port list
//!   every port. A rule allows a connection when a peer AND a port match.
//! - Within one peer, `podSelector` and `namespaceSelector` together are
//!   ANDed (those pods in those namespaces); `podSelector` alone means pods
//!   in the policy's namespace; `namespaceSelector` alone means every pod of
//!   those namespaces; `ipBlock` (which may not be combined with the others)
//!   matches addresses in `cidr` but not in any `except`.
//! - A port is a number (with an optional `endPort` range) or a container
//!   port name, resolved per destination pod by name and protocol
//!   ([`NetworkPolicyPort::resolve`]); a name no container port of that pod
//!   has matches nothing. `protocol` defaults to TCP.
//! - `policyTypes` defaults as the API server's defaulting does
//!   ([`NetworkPolicy::policy_types`]): `Ingress` always, plus `Egress` when
//!   `spec.egress` has at least one rule; an explicit list is kept.
//!   Admission stores the defaulted list, as the API server does.
//!
//! Validation follows `ValidateNetworkPolicy` of Kubernetes'
//! `pkg/apis/networking/validation`; every error names the field
//! (`spec.ingress[0].from[1].ipBlock.cidr`).
//!
//! Tapestry carries IPv4 only, so `ipBlock` CIDRs are IPv4 (written without
//! host bits). Container ports have no SCTP here, so a named SCTP port never
//! resolves.
//!
//! Store key: `networkpolicies/<namespace>/<name>`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::meta::{null_default, ObjectMeta, Protocol};
use crate::net::Ipv4Cidr;
use crate::pod::Pod;
use crate::selector::LabelSelector;
use crate::validate::{check_labels, check_name, FieldError, NameRule, Problem};

/// Store key of a network policy: `networkpolicies/NAMESPACE/NAME`.
pub fn network_policy_key(namespace: &str, name: &str) -> String {
    format!("networkpolicies/{namespace}/{name}")
}

/// A NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NetworkPolicySpec,
}

/// `spec` of a NetworkPolicy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// The pods of the policy's namespace it applies to; `{}` is all.
    #[serde(default, deserialize_with = "null_default")]
    pub pod_selector: LabelSelector,
    /// Allowed incoming traffic (when `Ingress` is a policy type).
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ingress: Vec<NetworkPolicyIngressRule>,
    /// Allowed outgoing traffic (when `Egress` is a policy type).
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub egress: Vec<NetworkPolicyEgressRule>,
    /// The directions the policy isolates; see [`NetworkPolicy::policy_types`].
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub policy_types: Vec<PolicyType>,
}

/// One ingress rule: traffic from any of `from` to any of `ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicyIngressRule {
    /// Destination ports on the selected pod; empty is every port.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<NetworkPolicyPort>,
    /// Sources; empty is every source.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub from: Vec<NetworkPolicyPeer>,
}

/// One egress rule: traffic to any of `to` on any of `ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicyEgressRule {
    /// Destination ports on the peer; empty is every port.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<NetworkPolicyPort>,
    /// Destinations; empty is every destination.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub to: Vec<NetworkPolicyPeer>,
}

/// A rule of either direction: its ports and its peers (`from` or `to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRule<'a> {
    pub ports: &'a [NetworkPolicyPort],
    pub peers: &'a [NetworkPolicyPeer],
}

/// One peer of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPeer {
    /// Pods (in the policy's namespace, or in the namespaces of
    /// `namespaceSelector` when both are set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces whose pods (all, or those of `podSelector`) match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// An address block; not combined with the selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// `ipBlock`: addresses in `cidr` and in none of `except`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpBlock {
    pub cidr: Ipv4Cidr,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub except: Vec<Ipv4Cidr>,
}

/// One port entry of a rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPort {
    /// TCP (the default), UDP or SCTP.
    #[serde(default, deserialize_with = "null_default")]
    pub protocol: PolicyProtocol,
    /// A number or a container port name; absent is every port.
    #[serde(
        default,
        deserialize_with = "policy_port_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<PolicyPortRef>,
    /// With a numeric `port`, the last port of the range `port..=endPort`.
    #[serde(
        default,
        deserialize_with = "end_port_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub end_port: Option<u16>,
}

/// `port` of a policy port: a number or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PolicyPortRef {
    Number(u16),
    Name(String),
}

/// The transport protocols a policy port may name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyProtocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

/// `spec.policyTypes` entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyType {
    Ingress,
    Egress,
}

/// An inclusive port range with its protocol: a policy port resolved for
/// one destination pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub protocol: PolicyProtocol,
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Whether `(protocol, port)` falls in the range.
    pub fn contains(&self, protocol: PolicyProtocol, port: u16) -> bool {
        self.protocol == protocol && (self.first..=self.last).contains(&port)
    }
}

/// The labels of a pod a peer is matched against, and of its namespace.
#[derive(Debug, Clone, Copy)]
pub struct PodRef<'a> {
    /// The pod's namespace.
    pub namespace: &'a str,
    /// The pod's labels.
    pub labels: &'a BTreeMap<String, String>,
    /// The labels of the pod's Namespace object (with
    /// `kubernetes.io/metadata.name`).
    pub namespace_labels: &'a BTreeMap<String, String>,
}

impl PolicyProtocol {
    /// `TCP`, `UDP`, `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyProtocol::Tcp => "TCP",
            PolicyProtocol::Udp => "UDP",
            PolicyProtocol::Sctp => "SCTP",
        }
    }
}

impl From<Protocol> for PolicyProtocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => PolicyProtocol::Tcp,
            Protocol::Udp => PolicyProtocol::Udp,
        }
    }
}

impl fmt::Display for PolicyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for PolicyProtocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PolicyProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The error is raised inside the visitor so the decoder reports it
        // at the field's own path.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PolicyProtocol;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a protocol, TCP, UDP or SCTP")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PolicyProtocol, E> {
                match v {
                    "TCP" | "" => Ok(PolicyProtocol::Tcp),
                    "UDP" => Ok(PolicyProtocol::Udp),
                    "SCTP" => Ok(PolicyProtocol::Sctp),
                    other => Err(E::custom(format!(
                        "unsupported protocol `{other}`; expected TCP, UDP or SCTP"
                    ))),
                }
            }
        }
        d.deserialize_str(V)
    }
}

impl fmt::Display for PolicyPortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyPortRef::Number(n) => write!(f, "{n}"),
            PolicyPortRef::Name(s) => f.write_str(s),
        }
    }
}

impl Serialize for PolicyPortRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PolicyPortRef::Number(n) => s.serialize_u16(*n),
            PolicyPortRef::Name(name) => s.serialize_str(name),
        }
    }
}

/// `N is out of range` for numbers that are no u16 (0 is left to
/// validation, which names the field).
fn port_in_range<E: serde::de::Error>(n: i64) -> Result<u16, E> {
    u16::try_from(n).map_err(|_| E::custom(format!("{n} is out of range; must be from 1 to 65535")))
}

/// Decodes an optional int-or-string `port`.
fn policy_port_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PolicyPortRef>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<PolicyPortRef>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a port number from 1 to 65535 or a port name")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
            port_in_range(n).map(|p| Some(PolicyPortRef::Number(p)))
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
            self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(PolicyPortRef::Name(v.to_string())))
        }
    }
    d.deserialize_any(V)
}

/// Decodes an optional numeric `endPort`.
fn end_port_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<u16>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a port number from 1 to 65535")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
            port_in_range(n).map(Some)
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
            self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
        }
    }
    d.deserialize_any(V)
}

impl IpBlock {
    /// Whether `ip` is in `cidr` and in no `except` block.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

impl NetworkPolicyPeer {
    /// Whether traffic whose other end is `ip` (the pod `pod`, if it is
    /// one) matches this peer of a policy in `policy_namespace`.
    pub fn matches(&self, policy_namespace: &str, ip: Ipv4Addr, pod: Option<PodRef<'_>>) -> bool {
        if let Some(block) = &self.ip_block {
            return block.contains(ip);
        }
        pod.is_some_and(|pod| self.matches_pod(policy_namespace, pod))
    }

    /// Whether the pod matches this peer's selectors (an `ipBlock` peer
    /// matches no pod by labels; see [`NetworkPolicyPeer::matches`]).
    pub fn matches_pod(&self, policy_namespace: &str, pod: PodRef<'_>) -> bool {
        match (&self.pod_selector, &self.namespace_selector) {
            (Some(ps), None) => pod.namespace == policy_namespace && ps.matches(pod.labels),
            (None, Some(ns)) => ns.matches(pod.namespace_labels),
            (Some(ps), Some(ns)) => ns.matches(pod.namespace_labels) && ps.matches(pod.labels),
            (None, None) => false,
        }
    }
}

impl NetworkPolicyPort {
    /// The ports this entry allows on the destination pod `dest`: a number
    /// (or `port..=endPort`), every port when `port` is absent, or the
    /// container port of `dest` with that name and this protocol. `None`
    /// when the name resolves to nothing on `dest` (the entry matches no
    /// traffic to that pod) or when the destination is not a pod (`None`
    /// for `dest`) and the port is named.
    pub fn resolve(&self, dest: Option<&Pod>) -> Option<PortRange> {
        let (first, last) = match &self.port {
            None => (0, u16::MAX),
            Some(PolicyPortRef::Number(p)) => (*p, self.end_port.unwrap_or(*p).max(*p)),
            Some(PolicyPortRef::Name(name)) => {
                let p = dest?
                    .spec
                    .containers
                    .iter()
                    .flat_map(|c| &c.ports)
                    .find(|cp| {
                        cp.name.as_deref() == Some(name.as_str())
                            && PolicyProtocol::from(cp.protocol) == self.protocol
                    })?
                    .container_port;
                (p, p)
            }
        };
        Some(PortRange {
            protocol: self.protocol,
            first,
            last,
        })
    }
}

/// Whether a rule's `ports` allow `(protocol, port)` on `dest`: an empty
/// list allows every port of every protocol.
pub fn ports_allow(
    ports: &[NetworkPolicyPort],
    dest: Option<&Pod>,
    protocol: PolicyProtocol,
    port: u16,
) -> bool {
    ports.is_empty()
        || ports
            .iter()
            .filter_map(|p| p.resolve(dest))
            .any(|r| r.contains(protocol, port))
}

impl NetworkPolicy {
    /// Store key, `networkpolicies/<namespace>/<name>`.
    pub fn key(&self) -> String {
        network_policy_key(&self.metadata.namespace, &self.metadata.name)
    }

    /// `namespace/name`.
    pub fn namespaced_name(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// The directions this policy isolates, after the API's defaulting: an
    /// explicit `policyTypes` as given (without repeats); otherwise
    /// `Ingress`, plus `Egress` when `spec.egress` has a rule.
    pub fn policy_types(&self) -> Vec<PolicyType> {
        let mut types = if self.spec.policy_types.is_empty() {
            let mut t = vec![PolicyType::Ingress];
            if !self.spec.egress.is_empty() {
                t.push(PolicyType::Egress);
            }
            t
        } else {
            self.spec.policy_types.clone()
        };
        types.sort_unstable();
        types.dedup();
        types
    }

    /// Whether the policy isolates `direction` for the pods it selects.
    pub fn has_policy_type(&self, direction: PolicyType) -> bool {
        self.policy_types().contains(&direction)
    }

    /// Writes the defaulted `policyTypes` into the spec (admission does,
    /// as the API server's defaulting does).
    pub fn apply_defaults(&mut self) {
        self.spec.policy_types = self.policy_types();
    }

    /// Whether the policy selects the pod `namespace`/`labels`.
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.metadata.namespace == namespace && self.spec.pod_selector.matches(labels)
    }

    /// The rules of one direction, as ports and peers; empty if the policy
    /// does not isolate that direction.
    pub fn rules(&self, direction: PolicyType) -> Vec<PolicyRule<'_>> {
        if !self.has_policy_type(direction) {
            return Vec::new();
        }
        match direction {
            PolicyType::Ingress => self
                .spec
                .ingress
                .iter()
                .map(|r| PolicyRule {
                    ports: &r.ports,
                    peers: &r.from,
                })
                .collect(),
            PolicyType::Egress => self
                .spec
                .egress
                .iter()
                .map(|r| PolicyRule {
                    ports: &r.ports,
                    peers: &r.to,
                })
                .collect(),
        }
    }

    /// Checks every field; the error names the field path.
    pub fn validate(&self) -> Result<(), FieldError> {
        let m = &self.metadata;
        check_name("metadata.name", &m.name, NameRule::Dns1123Subdomain)?;
        check_name("metadata.namespace", &m.namespace, NameRule::Dns1123Label)?;
        check_labels("metadata.labels", &m.labels)?;
        let s = &self.spec;
        s.pod_selector.validate("spec.podSelector")?;
        for (i, r) in s.ingress.iter().enumerate() {
            validate_rule(&format!("spec.ingress[{i}]"), "from", &r.ports, &r.from)?;
        }
        for (i, r) in s.egress.iter().enumerate() {
            validate_rule(&format!("spec.egress[{i}]"), "to", &r.ports, &r.to)?;
        }
        if s.policy_types.len() > 2 {
            return Err(FieldError::new(
                "spec.policyTypes",
                Problem::Invalid {
                    value: format!("{} entries", s.policy_types.len()),
                    reason: "may not specify more than two policyTypes".into(),
                },
            ));
        }
        Ok(())
    }
}

/// Checks the ports and peers of one rule at `at` (`spec.ingress[0]`).
fn validate_rule(
    at: &str,
    peers_field: &str,
    ports: &[NetworkPolicyPort],
    peers: &[NetworkPolicyPeer],
) -> Result<(), FieldError> {
    for (j, p) in ports.iter().enumerate() {
        validate_port(&format!("{at}.ports[{j}]"), p)?;
    }
    for (j, peer) in peers.iter().enumerate() {
        validate_peer(&format!("{at}.{peers_field}[{j}]"), peer)?;
    }
    Ok(())
}

fn out_of_range(field: String, value: u16) -> FieldError {
    FieldError::new(
        field,
        Problem::OutOfRange {
            value: i64::from(value),
            min: 1,
            max: 65535,
        },
    )
}

/// `ValidateNetworkPolicyPort`: port numbers, names, and `endPort` rules.
fn validate_port(at: &str, p: &NetworkPolicyPort) -> Result<(), FieldError> {
    let end_field = format!("{at}.endPort");
    let invalid_end = |end: u16, reason: &str| {
        FieldError::new(
            end_field.clone(),
            Problem::Invalid {
                value: end.to_string(),
                reason: reason.into(),
            },
        )
    };
    match (&p.port, p.end_port) {
        (Some(PolicyPortRef::Number(0)), _) => return Err(out_of_range(format!("{at}.port"), 0)),
        (Some(PolicyPortRef::Number(_)), Some(0)) => return Err(out_of_range(end_field, 0)),
        (Some(PolicyPortRef::Number(port)), Some(end)) if end < *port => {
            return Err(invalid_end(end, "must be greater than or equal to `port`"))
        }
        (Some(PolicyPortRef::Number(_)), _) => {}
        (Some(PolicyPortRef::Name(name)), end) => {
            if let Some(end) = end {
                return Err(invalid_end(
                    end,
                    "may not be specified when `port` is a name",
                ));
            }
            check_name(&format!("{at}.port"), name, NameRule::IanaServiceName)?;
        }
        (None, Some(end)) => {
            return Err(invalid_end(
                end,
                "may not be specified when `port` is not specified",
            ))
        }
        (None, None) => {}
    }
    Ok(())
}

/// `ValidateNetworkPolicyPeer`: at least one of the three, `ipBlock` alone,
/// valid selectors, `except` strictly inside `cidr`.
fn validate_peer(at: &str, peer: &NetworkPolicyPeer) -> Result<(), FieldError> {
    let mut count = 0;
    if let Some(s) = &peer.pod_selector {
        count += 1;
        s.validate(&format!("{at}.podSelector"))?;
    }
    if let Some(s) = &peer.namespace_selector {
        count += 1;
        s.validate(&format!("{at}.namespaceSelector"))?;
    }
    if let Some(block) = &peer.ip_block {
        count += 1;
        if count > 1 {
            return Err(FieldError::new(
                at,
                Problem::Invalid {
                    value: "ipBlock".into(),
                    reason: "may not specify both ipBlock and another peer".into(),
                },
            ));
        }
        for (k, e) in block.except.iter().enumerate() {
            if !block.cidr.contains_net(e) || e.prefix_len() <= block.cidr.prefix_len() {
                return Err(FieldError::new(
                    format!("{at}.ipBlock.except[{k}]"),
                    Problem::Invalid {
                        value: e.to_string(),
                        reason: format!("must be a strict subset of cidr {}", block.cidr),
                    },
                ));
            }
        }
    }
    if count == 0 {
        return Err(FieldError::new(
            at,
            Problem::RequiredWhen {
                condition: "(podSelector, namespaceSelector or ipBlock): a peer must name one",
            },
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
