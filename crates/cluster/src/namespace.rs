//! The Namespace object (v1): a cluster-scoped name with labels, which
//! NetworkPolicy `namespaceSelector`s select by.
//!
//! As in Kubernetes:
//!
//! - Every namespace carries the label [`NAMESPACE_NAME_LABEL`]
//!   (`kubernetes.io/metadata.name`) with its own name; admission sets it
//!   (overwriting any other value), as the API server does since 1.21, so a
//!   policy can select one namespace by name.
//! - `default` and `kube-system` always exist: they are created (if absent)
//!   when a node agent records the cluster configuration
//!   ([`crate::config::ensure_cluster_config`], run by every agent at start,
//!   through [`crate::config::ensure_namespace`]), and they cannot be deleted.
//!
//! Deviation: Kubernetes rejects a namespaced object whose namespace does
//! not exist; Tapestry's admission creates the Namespace instead (an
//! implicit namespace, no labels but the name label, written by
//! [`crate::config::ensure_namespace`]), so manifests that
//! never declare their namespace keep applying. Deleting a namespace does not
//! cascade: it is refused while pods, services or network policies are
//! stored in it (see [`crate::admission::delete`]).
//!
//! Store key: `namespaces/<name>`.

use serde::{Deserialize, Serialize};

use crate::meta::ObjectMeta;
use crate::validate::{check_labels, check_name, FieldError, NameRule};

/// The label every namespace carries, with its own name as the value.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The namespaces that exist from the start and may not be deleted.
pub const BUILTIN_NAMESPACES: [&str; 2] = ["default", "kube-system"];

/// Store key of a namespace: `namespaces/NAME`.
pub fn namespace_key(name: &str) -> String {
    format!("namespaces/{name}")
}

/// A Namespace: a name and labels (status and finalizers are not modelled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub metadata: ObjectMeta,
}

impl Namespace {
    /// A namespace with only its name label, as admission creates it.
    pub fn new(name: &str) -> Self {
        let mut ns = Self {
            metadata: ObjectMeta {
                namespace: String::new(),
                ..ObjectMeta::named(name)
            },
        };
        ns.set_name_label();
        ns
    }

    /// Store key, `namespaces/<name>`.
    pub fn key(&self) -> String {
        namespace_key(&self.metadata.name)
    }

    /// Sets [`NAMESPACE_NAME_LABEL`] to the namespace's name.
    pub fn set_name_label(&mut self) {
        self.metadata
            .labels
            .insert(NAMESPACE_NAME_LABEL.into(), self.metadata.name.clone());
    }

    /// Checks the name (a DNS-1123 label) and the labels.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_name("metadata.name", &self.metadata.name, NameRule::Dns1123Label)?;
        check_labels("metadata.labels", &self.metadata.labels)
    }
}
