//! The cluster's network configuration, kept in the store: the Service CIDR
//! ClusterIPs come from and the pod CIDR node subnets are leased from.
//!
//! In Kubernetes the API server owns `--service-cluster-ip-range`, and kubeadm
//! records the networking it was set up with in its `ClusterConfiguration`
//! (`networking.serviceSubnet`, `networking.podSubnet`). Tapestry has no API
//! server process: the store is the API, so the configuration is an object in
//! it, `config/cluster`. The first node agent to start writes it from its
//! `--service-cidr` and `--cluster-cidr` (a compare-and-swap create, so two
//! agents starting at once agree on one); every later agent must have been
//! given the same values and refuses to start otherwise. Admission reads it
//! to allocate ClusterIPs (see [`crate::admission`]).
//!
//! Recording the configuration also creates the built-in namespaces
//! `default` and `kube-system` if they are absent ([`ensure_cluster_config`]
//! on every agent start), so they exist from the cluster's first moment.
//! [`ensure_namespace`], which does that, lives here rather than in
//! [`crate::namespace`] because it stores an [`Object`], and
//! [`crate::manifest`] (where `Object` is) is built on the Namespace type;
//! admission uses it too, for implicit namespaces.

use serde::{Deserialize, Serialize};

use crate::manifest::{ManifestError, Object};
use crate::namespace::{namespace_key, Namespace, BUILTIN_NAMESPACES};
use crate::net::Ipv4Cidr;
use crate::store::{Store, StoreError};

/// Store key of the cluster configuration.
pub const CLUSTER_CONFIG_KEY: &str = "config/cluster";

/// The cluster's address plan (kubeadm's `ClusterConfiguration.networking`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Networking {
    /// Where ClusterIPs are allocated (`--service-cidr` of the agents).
    pub service_subnet: Ipv4Cidr,
    /// The pod network that node subnets are leased from (`--cluster-cidr`).
    pub pod_subnet: Ipv4Cidr,
}

/// The value stored under [`CLUSTER_CONFIG_KEY`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    pub api_version: String,
    pub kind: String,
    pub networking: Networking,
}

impl ClusterConfig {
    pub const API_VERSION: &'static str = "tapestry.io/v1";
    pub const KIND: &'static str = "ClusterConfiguration";

    pub fn new(networking: Networking) -> Self {
        Self {
            api_version: Self::API_VERSION.into(),
            kind: Self::KIND.into(),
            networking,
        }
    }
}

/// Why the configuration could not be read or recorded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The store failed.
    #[error(transparent)]
    Store {
        #[from]
        source: StoreError,
    },
    /// The stored value is not a cluster configuration.
    #[error("{CLUSTER_CONFIG_KEY}: not a cluster configuration: {source}")]
    Decode { source: serde_json::Error },
    /// The configuration could not be encoded.
    #[error("{CLUSTER_CONFIG_KEY}: cannot encode the cluster configuration: {source}")]
    Encode { source: serde_json::Error },
    /// The stored configuration disagrees with this agent's flags.
    #[error(
        "{CLUSTER_CONFIG_KEY}: networking.{field} is {stored} in the cluster store, \
         but this agent was given {given} ({flag}); every node of a cluster must use the same"
    )]
    Mismatch {
        field: &'static str,
        flag: &'static str,
        stored: Ipv4Cidr,
        given: Ipv4Cidr,
    },
    /// A built-in namespace could not be created.
    #[error("namespace {name}: {source}")]
    Namespace {
        name: &'static str,
        source: NamespaceError,
    },
}

/// The stored configuration, if an agent has recorded one.
pub fn read_cluster_config(store: &dyn Store) -> Result<Option<ClusterConfig>, ConfigError> {
    let Some(entry) = store.get(CLUSTER_CONFIG_KEY)? else {
        return Ok(None);
    };
    serde_json::from_slice(&entry.value)
        .map(Some)
        .map_err(|source| ConfigError::Decode { source })
}

/// Records `want` unless a configuration is already stored, and returns the
/// stored one; an existing configuration that differs is an error naming the
/// field. Creates the namespaces `default` and `kube-system` if absent.
pub fn ensure_cluster_config(
    store: &dyn Store,
    want: Networking,
) -> Result<ClusterConfig, ConfigError> {
    let config = record_cluster_config(store, want)?;
    for name in BUILTIN_NAMESPACES {
        ensure_namespace(store, name).map_err(|source| ConfigError::Namespace { name, source })?;
    }
    Ok(config)
}

/// [`ensure_cluster_config`] without the namespaces.
fn record_cluster_config(
    store: &dyn Store,
    want: Networking,
) -> Result<ClusterConfig, ConfigError> {
    let config = ClusterConfig::new(want);
    let stored = match read_cluster_config(store)? {
        Some(stored) => stored,
        None => {
            let bytes =
                serde_json::to_vec(&config).map_err(|source| ConfigError::Encode { source })?;
            match store.compare_and_swap(CLUSTER_CONFIG_KEY, 0, &bytes) {
                Ok(_) => return Ok(config),
                // Another agent recorded one first: it must agree with ours.
                Err(StoreError::Conflict { .. }) => {
                    read_cluster_config(store)?.unwrap_or_else(|| config.clone())
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let (have, given) = (stored.networking, want);
    if have.service_subnet != given.service_subnet {
        return Err(ConfigError::Mismatch {
            field: "serviceSubnet",
            flag: "--service-cidr",
            stored: have.service_subnet,
            given: given.service_subnet,
        });
    }
    if have.pod_subnet != given.pod_subnet {
        return Err(ConfigError::Mismatch {
            field: "podSubnet",
            flag: "--cluster-cidr",
            stored: have.pod_subnet,
            given: given.pod_subnet,
        });
    }
    Ok(stored)
}

/// Why [`ensure_namespace`] failed.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// The store failed.
    #[error(transparent)]
    Store {
        #[from]
        source: StoreError,
    },
    /// The namespace could not be encoded.
    #[error(transparent)]
    Encode {
        #[from]
        source: ManifestError,
    },
}

/// Creates the Namespace `name` (with only its name label) unless one is
/// stored; `true` if this call created it. Two writers racing agree: the
/// loser of the compare-and-swap finds it stored.
pub fn ensure_namespace(store: &dyn Store, name: &str) -> Result<bool, NamespaceError> {
    let key = namespace_key(name);
    if store.get(&key)?.is_some() {
        return Ok(false);
    }
    let bytes = Object::Namespace(Namespace::new(name)).to_json()?;
    match store.compare_and_swap(&key, 0, &bytes) {
        Ok(_) => Ok(true),
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
