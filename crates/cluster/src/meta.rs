//! What every object kind shares: the object metadata (`metadata.name`,
//! `namespace`, `labels`, `annotations`), the transport [`Protocol`] of a
//! port, and the serde helpers the kinds decode their fields with.
//!
//! Why a module of its own: each kind ([`crate::pod`], [`crate::service`],
//! [`crate::namespace`], [`crate::policy`], and Node in [`crate::manifest`])
//! is built from these, and [`crate::manifest`]'s `Object` is built from the
//! kinds. Keeping the shared parts here, below all of them, lets imports run
//! one way: kinds take from here, `manifest` takes from the kinds.
//!
//! Decoding: an explicit YAML `null` where a value is expected (`labels:`
//! with nothing after it) means the default, as in Kubernetes
//! (`null_default`); a port number outside 1..=65535 is rejected with a
//! message that says so, at the field's own path (`port_number`).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

fn default_namespace() -> String {
    "default".to_string()
}

/// Accepts an explicit YAML `null` (`labels:` with nothing after it) as the
/// default value, as Kubernetes does.
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A port number 1..=65535 with a message that says so, instead of serde's
/// "expected u16".
/// The error is raised inside the visitor so the decoder reports it at the
/// field's own path.
pub(crate) fn port_number<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    struct PortVisitor;
    impl serde::de::Visitor<'_> for PortVisitor {
        type Value = u16;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a port number from 1 to 65535")
        }
        fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<u16, E> {
            u16::try_from(n)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| E::custom(format!("{n} is out of range; must be from 1 to 65535")))
        }
        fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<u16, E> {
            self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
        }
    }
    d.deserialize_any(PortVisitor)
}

/// Standard object metadata. `namespace` defaults to `default` for
/// namespaced kinds and is empty for cluster-scoped ones (Node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(
        default = "default_namespace",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ObjectMeta {
    fn default() -> Self {
        Self {
            name: String::new(),
            namespace: default_namespace(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }
}

impl ObjectMeta {
    /// Metadata with a name in the `default` namespace.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }
}

/// Transport protocol of a port.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}
