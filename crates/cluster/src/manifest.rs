//! Kubernetes-shaped manifests: the object types, and loading them from YAML.
//!
//! Why Kubernetes' shape: a learner should be able to take a manifest they
//! already have, strip it to what matters for networking, and apply it here
//! unchanged. So the types use Kubernetes' field names (`nodeName`,
//! `containerPort`, `podCIDR`) and every field Tapestry does not model
//! (`image`, `resources`, `status.conditions`, …) is ignored rather than
//! rejected. What *is* modelled is validated with Kubernetes' own rules, and
//! every error names the file, the document (1-based, counting `---`
//! separators), the object and the field path, so the user knows what to fix.
//!
//! Loading: [`parse_manifests`] takes one text with any number of `---`
//! separated documents; [`load_path`] takes a file or a directory (every
//! `*.yaml` / `*.yml` file directly inside it, sorted by name). Empty
//! documents are skipped. The same kind/namespace/name twice in one load is an
//! error naming both places.
//!
//! Emitting: [`Object`] serializes with `apiVersion` and `kind` first, so
//! [`emit_yaml`] output parses back into equal objects (`get -o yaml`), and
//! [`Object::to_json`] / [`Object::from_json`] are the encoding the store keeps.
//!
//! Kinds: Node here; Pod in [`crate::pod`] and Service in [`crate::service`]
//! (both re-exported here), Namespace in [`crate::namespace`] and
//! NetworkPolicy (`networking.k8s.io/v1`) in [`crate::policy`], because their
//! rules are a module's worth on their own. What they all share
//! ([`ObjectMeta`], [`Protocol`], also re-exported here) is defined in
//! [`crate::meta`], below them, so no kind imports this module.
//!
//! Deviation from Kubernetes: a Node's underlay address and VTEP MAC are the
//! plain fields `status.underlayIP` and `status.vtepMAC` (Kubernetes keeps the
//! first in `status.addresses[type=InternalIP]`, which is also read as a
//! fallback, and flannel keeps the second in an annotation).

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::meta::null_default;
pub use crate::meta::{ObjectMeta, Protocol};
use crate::namespace::Namespace;
use crate::net::{Ipv4Cidr, MacAddr};
pub use crate::pod::{Container, ContainerPort, EnvVar, Pod, PodSpec, PodStatus};
use crate::policy::NetworkPolicy;
pub use crate::service::{
    service_key, ClusterIp, Service, ServicePort, ServiceSpec, ServiceType, SessionAffinity,
    TargetPort,
};
use crate::validate::{check_name, FieldError, NameRule, Problem};

/// The kinds [`parse_manifests`] accepts, for error messages.
pub const SUPPORTED_KINDS: &str = "Pod, Node, Service, Namespace, NetworkPolicy";

/// Where a document came from: file (or other source name) and 1-based index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// File path or other source name as given by the caller.
    pub file: String,
    /// 1-based document index inside the file.
    pub document: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} document {}", self.file, self.document)
    }
}

/// Why manifests could not be loaded. Every variant says where.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The document is not well-formed YAML.
    #[error("{at}{}: YAML syntax error: {message}", line_suffix(*line))]
    Syntax {
        at: Location,
        line: Option<usize>,
        message: String,
    },
    /// The document is YAML but not a mapping (a list or a bare scalar).
    #[error("{at}: expected an object with apiVersion, kind, metadata and spec")]
    NotAnObject { at: Location },
    /// A field has the wrong type or an unparseable value (reported by the
    /// decoder with the field path, e.g. `spec.podCIDR: ...`).
    #[error("{at}{}: {message}", line_suffix(*line))]
    Schema {
        at: Location,
        line: Option<usize>,
        message: String,
    },
    /// `kind` names a kind Tapestry does not model.
    #[error("{at}: unknown kind `{kind}`; supported: {SUPPORTED_KINDS}")]
    UnknownKind { at: Location, kind: String },
    /// `apiVersion` is not the one this kind is served at.
    #[error("{at}: kind {kind} does not support apiVersion `{api_version}`; use `{supported}`")]
    UnsupportedApiVersion {
        at: Location,
        kind: String,
        api_version: String,
        supported: &'static str,
    },
    /// A field breaks a validation rule.
    #[error("{at} ({object}): {error}")]
    Invalid {
        at: Location,
        /// `Pod default/web-a`, or the kind alone when the name is unknown.
        object: String,
        error: Box<FieldError>,
    },
    /// The same object appears twice in one load.
    #[error("{second}: duplicate {key} (first defined at {first})")]
    Duplicate {
        key: String,
        first: Location,
        second: Location,
    },
    /// An object could not be encoded (should not happen for valid objects).
    #[error("cannot encode {key}: {message}")]
    Emit { key: String, message: String },
    /// A stored JSON value could not be decoded into an object.
    #[error("cannot decode object from {origin}: {message}")]
    Decode { origin: String, message: String },
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

/// The label an agent puts on its Node (value `true`): the node runs a kubelet,
/// so admission may schedule pods there. A Node registered by hand (a kernel
/// VXLAN peer, say) has no such label and gets no pods.
pub const KUBELET_LABEL: &str = "node.tapestry.io/kubelet";

/// A node: one agent, one pod subnet, one tunnel endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: NodeSpec,
    #[serde(default)]
    pub status: NodeStatus,
}

/// Node spec: the pod subnet leased to the node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    #[serde(default, rename = "podCIDR", skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<Ipv4Cidr>,
}

/// Node status: where to send tunnelled traffic for this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Address of the node on the underlay network (VXLAN outer IP).
    #[serde(
        default,
        rename = "underlayIP",
        skip_serializing_if = "Option::is_none"
    )]
    pub underlay_ip: Option<Ipv4Addr>,
    /// MAC address of the node's VXLAN tunnel endpoint.
    #[serde(default, rename = "vtepMAC", skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<MacAddr>,
    /// Kubernetes' address list; an `InternalIP` entry is the underlay
    /// address when `underlayIP` is absent.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub addresses: Vec<NodeAddress>,
}

/// One entry of `status.addresses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddress {
    #[serde(rename = "type")]
    pub kind: String,
    pub address: String,
}

impl Node {
    /// The underlay address: `status.underlayIP`, else the first parseable
    /// `InternalIP` of `status.addresses`.
    pub fn underlay_ip(&self) -> Option<Ipv4Addr> {
        self.status.underlay_ip.or_else(|| {
            self.status
                .addresses
                .iter()
                .filter(|a| a.kind == "InternalIP")
                .find_map(|a| a.address.parse().ok())
        })
    }

    /// Store key, `nodes/<name>`.
    pub fn key(&self) -> String {
        format!("nodes/{}", self.metadata.name)
    }

    /// Checks every modelled field.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_name(
            "metadata.name",
            &self.metadata.name,
            NameRule::Dns1123Subdomain,
        )
    }
}

/// Any object Tapestry models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Pod(Pod),
    Node(Node),
    Service(Service),
    Namespace(Namespace),
    NetworkPolicy(NetworkPolicy),
}

/// The apiVersion NetworkPolicy is served at.
pub const NETWORKING_API_VERSION: &str = "networking.k8s.io/v1";

/// The apiVersion a kind is served at, if Tapestry models the kind.
fn api_version_of(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" | "Node" | "Service" | "Namespace" => Some("v1"),
        "NetworkPolicy" => Some(NETWORKING_API_VERSION),
        _ => None,
    }
}

impl Object {
    /// `Pod`, `Node`, `Service`, `Namespace`, `NetworkPolicy`.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Pod(_) => "Pod",
            Object::Node(_) => "Node",
            Object::Service(_) => "Service",
            Object::Namespace(_) => "Namespace",
            Object::NetworkPolicy(_) => "NetworkPolicy",
        }
    }

    /// The apiVersion the kind is served at.
    pub fn api_version(&self) -> &'static str {
        match self {
            Object::NetworkPolicy(_) => NETWORKING_API_VERSION,
            Object::Pod(_) | Object::Node(_) | Object::Service(_) | Object::Namespace(_) => "v1",
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Pod(p) => &p.metadata,
            Object::Node(n) => &n.metadata,
            Object::Service(s) => &s.metadata,
            Object::Namespace(n) => &n.metadata,
            Object::NetworkPolicy(p) => &p.metadata,
        }
    }

    /// Whether the kind lives in a namespace (Node and Namespace do not).
    pub fn is_namespaced(&self) -> bool {
        !matches!(self, Object::Node(_) | Object::Namespace(_))
    }

    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// The namespace; empty for cluster-scoped kinds.
    pub fn namespace(&self) -> &str {
        &self.metadata().namespace
    }

    /// Store key: `pods/default/web-a`, `nodes/node1`,
    /// `services/kube-system/kube-dns`, `namespaces/default`,
    /// `networkpolicies/default/deny-all`.
    pub fn key(&self) -> String {
        match self {
            Object::Pod(p) => p.key(),
            Object::Node(n) => n.key(),
            Object::Service(s) => s.key(),
            Object::Namespace(n) => n.key(),
            Object::NetworkPolicy(p) => p.key(),
        }
    }

    /// `Pod default/web-a`, `Node node1`: how messages name an object.
    pub fn display_name(&self) -> String {
        describe(self.kind(), self.namespace(), self.name())
    }

    /// Checks every modelled field.
    pub fn validate(&self) -> Result<(), FieldError> {
        match self {
            Object::Pod(p) => p.validate(),
            Object::Node(n) => n.validate(),
            Object::Service(s) => s.validate(),
            Object::Namespace(n) => n.validate(),
            Object::NetworkPolicy(p) => p.validate(),
        }
    }

    /// JSON encoding with apiVersion and kind (the store's value format).
    pub fn to_json(&self) -> Result<Vec<u8>, ManifestError> {
        serde_json::to_vec(self).map_err(|e| ManifestError::Emit {
            key: self.key(),
            message: e.to_string(),
        })
    }

    /// Decodes and validates an object from JSON written by
    /// [`Object::to_json`]; `origin` (e.g. the store key) names it in errors.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Object, ManifestError> {
        serde_json::from_slice(bytes).map_err(|e| ManifestError::Decode {
            origin: origin.into(),
            message: e.to_string(),
        })
    }

    /// One YAML document (without a leading `---`).
    pub fn to_yaml(&self) -> Result<String, ManifestError> {
        serde_yaml::to_string(self).map_err(|e| ManifestError::Emit {
            key: self.key(),
            message: e.to_string(),
        })
    }

    /// Sets cluster-scoped kinds' namespace to empty.
    fn normalize(&mut self) {
        match self {
            Object::Node(Node { metadata, .. }) | Object::Namespace(Namespace { metadata }) => {
                metadata.namespace.clear()
            }
            Object::Pod(_) | Object::Service(_) | Object::NetworkPolicy(_) => {}
        }
    }
}

fn describe(kind: &str, namespace: &str, name: &str) -> String {
    match (namespace.is_empty(), name.is_empty()) {
        (_, true) => kind.to_string(),
        (true, false) => format!("{kind} {name}"),
        (false, false) => format!("{kind} {namespace}/{name}"),
    }
}

/// Serialization helper putting apiVersion and kind before the fields.
#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    #[serde(flatten)]
    inner: &'a T,
}

impl Serialize for Object {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (api_version, kind) = (self.api_version(), self.kind());
        match self {
            Object::Pod(p) => Tagged {
                api_version,
                kind,
                inner: p,
            }
            .serialize(s),
            Object::Node(n) => Tagged {
                api_version,
                kind,
                inner: n,
            }
            .serialize(s),
            Object::Service(svc) => Tagged {
                api_version,
                kind,
                inner: svc,
            }
            .serialize(s),
            Object::Namespace(ns) => Tagged {
                api_version,
                kind,
                inner: ns,
            }
            .serialize(s),
            Object::NetworkPolicy(np) => Tagged {
                api_version,
                kind,
                inner: np,
            }
            .serialize(s),
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "kind")]
enum TaggedIn {
    Pod(Pod),
    Node(Node),
    Service(Service),
    Namespace(Namespace),
    NetworkPolicy(NetworkPolicy),
}

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut obj = match TaggedIn::deserialize(d)? {
            TaggedIn::Pod(p) => Object::Pod(p),
            TaggedIn::Node(n) => Object::Node(n),
            TaggedIn::Service(s) => Object::Service(s),
            TaggedIn::Namespace(n) => Object::Namespace(n),
            TaggedIn::NetworkPolicy(p) => Object::NetworkPolicy(p),
        };
        obj.normalize();
        obj.validate()
            .map_err(|e| serde::de::Error::custom(format!("{}: {e}", obj.display_name())))?;
        Ok(obj)
    }
}

/// YAML for several objects, `---` separated (`get -o yaml`).
pub fn emit_yaml(objects: &[Object]) -> Result<String, ManifestError> {
    let mut out = String::new();
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&o.to_yaml()?);
    }
    Ok(out)
}

/// Pretty JSON (`get -o json`): the object itself when there is exactly one,
/// else a Kubernetes `List` with `items`, as kubectl prints.
pub fn emit_json(objects: &[Object]) -> Result<String, ManifestError> {
    let result = match objects {
        [one] => serde_json::to_string_pretty(one),
        many => serde_json::to_string_pretty(&serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "items": many,
        })),
    };
    result.map_err(|e| ManifestError::Emit {
        key: "list".into(),
        message: e.to_string(),
    })
}

/// One document's text and the 1-based line it starts on.
struct Document<'a> {
    text: &'a str,
    first_line: usize,
}

/// Splits YAML text at `---` lines (and `...` end markers). A leading blank
/// segment before the first `---` does not count as a document.
fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_end_matches(['\n', '\r']);
        let is_marker = |m: &str| {
            trimmed
                .strip_prefix(m)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        };
        if is_marker("---") || is_marker("...") {
            docs.push(Document {
                text: text.get(start..offset).unwrap_or(""),
                first_line: start_line,
            });
            // Content after `--- ` on the marker line belongs to the next
            // document; keep it, blanking the marker itself.
            start = offset + 3;
            start_line = line_no + 1;
        }
        offset += line.len();
    }
    docs.push(Document {
        text: text.get(start..).unwrap_or(""),
        first_line: start_line,
    });
    if docs.first().is_some_and(|d| is_blank(d.text)) && docs.len() > 1 {
        docs.remove(0);
    }
    docs
}

/// Whether a document has only whitespace and comments.
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#')
    })
}

/// Turns a serde_yaml error into (message without location, absolute line).
fn yaml_error(e: &serde_yaml::Error, first_line: usize) -> (String, Option<usize>) {
    let mut message = e.to_string();
    let line = e.location().map(|l| {
        if let Some((m, _)) = message.rsplit_once(" at line ") {
            message = m.to_string();
        }
        first_line + l.line().saturating_sub(1)
    });
    (message, line)
}

/// Collects objects from several sources, rejecting duplicates.
#[derive(Default)]
struct Loader {
    objects: Vec<Object>,
    seen: HashMap<String, Location>,
}

impl Loader {
    fn add_text(&mut self, text: &str, file: &str) -> Result<(), ManifestError> {
        for (i, doc) in split_documents(text).into_iter().enumerate() {
            let at = Location {
                file: file.to_string(),
                document: i + 1,
            };
            if let Some(obj) = parse_document(&doc, &at)? {
                let key = obj.key();
                if let Some(first) = self.seen.get(&key) {
                    return Err(ManifestError::Duplicate {
                        key,
                        first: first.clone(),
                        second: at,
                    });
                }
                self.seen.insert(key, at);
                self.objects.push(obj);
            }
        }
        Ok(())
    }
}

fn parse_document(doc: &Document<'_>, at: &Location) -> Result<Option<Object>, ManifestError> {
    if is_blank(doc.text) {
        return Ok(None);
    }
    let value: serde_yaml::Value = serde_yaml::from_str(doc.text).map_err(|e| {
        let (message, line) = yaml_error(&e, doc.first_line);
        ManifestError::Syntax {
            at: at.clone(),
            line,
            message,
        }
    })?;
    let map = match value {
        serde_yaml::Value::Null => return Ok(None),
        serde_yaml::Value::Mapping(m) => m,
        _ => return Err(ManifestError::NotAnObject { at: at.clone() }),
    };
    let field = |name: &str| -> Result<String, ManifestError> {
        match map.get(name) {
            Some(serde_yaml::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(serde_yaml::Value::String(_)) | Some(serde_yaml::Value::Null) | None => {
                Err(ManifestError::Invalid {
                    at: at.clone(),
                    object: "object".into(),
                    error: Box::new(FieldError::new(name, Problem::Required)),
                })
            }
            Some(_) => Err(ManifestError::Schema {
                at: at.clone(),
                line: None,
                message: format!("{name}: must be a string"),
            }),
        }
    };
    let kind = field("kind")?;
    let api_version = field("apiVersion")?;
    let schema = |e: serde_yaml::Error| {
        let (message, line) = yaml_error(&e, doc.first_line);
        ManifestError::Schema {
            at: at.clone(),
            line,
            message,
        }
    };
    let Some(supported) = api_version_of(&kind) else {
        return Err(ManifestError::UnknownKind {
            at: at.clone(),
            kind,
        });
    };
    if api_version != supported {
        return Err(ManifestError::UnsupportedApiVersion {
            at: at.clone(),
            kind,
            api_version,
            supported,
        });
    }
    let mut obj = match kind.as_str() {
        "Pod" => Object::Pod(serde_yaml::from_str(doc.text).map_err(schema)?),
        "Node" => Object::Node(serde_yaml::from_str(doc.text).map_err(schema)?),
        "Service" => Object::Service(serde_yaml::from_str(doc.text).map_err(schema)?),
        "Namespace" => Object::Namespace(serde_yaml::from_str(doc.text).map_err(schema)?),
        "NetworkPolicy" => Object::NetworkPolicy(serde_yaml::from_str(doc.text).map_err(schema)?),
        _ => {
            return Err(ManifestError::UnknownKind {
                at: at.clone(),
                kind,
            })
        }
    };
    obj.normalize();
    obj.validate().map_err(|error| ManifestError::Invalid {
        at: at.clone(),
        object: obj.display_name(),
        error: Box::new(error),
    })?;
    Ok(Some(obj))
}

/// Parses every document of `text`; `source` names it in errors (a path or
/// `<stdin>`).
pub fn parse_manifests(text: &str, source: &str) -> Result<Vec<Object>, ManifestError> {
    let mut loader = Loader::default();
    loader.add_text(text, source)?;
    Ok(loader.objects)
}

/// Loads a manifest file, or every `*.yaml` / `*.yml` file directly inside a
/// directory in name order (not recursive, like `kubectl apply -f DIR`).
pub fn load_path(path: &Path) -> Result<Vec<Object>, ManifestError> {
    let io_err = |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    let files = if meta.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(io_err)? {
            let p = entry.map_err(io_err)?.path();
            let is_yaml = p.extension().is_some_and(|e| e == "yaml" || e == "yml");
            if is_yaml && p.is_file() {
                files.push(p);
            }
        }
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut loader = Loader::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Io {
            path: file.clone(),
            source,
        })?;
        loader.add_text(&text, &file.display().to_string())?;
    }
    Ok(loader.objects)
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;
