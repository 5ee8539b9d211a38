//! Tapestry's cluster control plane: the object model, manifests, the store
//! every agent shares, and address management.
//!
//! Why one crate: these are the parts of Kubernetes' API server and
//! controllers that Tapestry needs, and they are pure data plus a store — no
//! packets. The agent and the CLI both build on them; nothing here depends on
//! the data plane or does network I/O.
//!
//! - [`net`]: IPv4 CIDR and MAC address types.
//! - [`manifest`]: Kubernetes-shaped objects (Pod, Node, Service,
//!   Namespace, NetworkPolicy) and YAML loading; [`service`] holds the
//!   Service type and its rules, [`namespace`] the Namespace, [`policy`] the
//!   NetworkPolicy and its matching logic, [`selector`] label selectors.
//! - [`validate`]: Kubernetes naming rules and field errors.
//! - [`store`]: the revisioned key-value store with watch, and its backends.
//! - [`ipam`]: node subnet leases and pod IP allocation over the store.
//! - [`cluster_ip`]: service virtual IP allocation over the store.
//! - [`config`]: the cluster's Service and pod CIDRs, recorded in the store.
//! - [`admission`]: what `apply` does before storing: scheduling pods,
//!   allocating ClusterIPs from the recorded Service CIDR.
//! - [`endpoints`]: a service's backends, computed from pods and status.
//! - [`cache`]: a live decoded view of the cluster, published as snapshots.
#![forbid(unsafe_code)]

pub mod admission;
pub mod cache;
pub mod cluster_ip;
pub mod config;
pub mod endpoints;
pub mod ipam;
pub mod manifest;
pub mod namespace;
pub mod net;
pub mod policy;
pub mod selector;
pub mod service;
pub mod status;
pub mod store;
pub mod validate;

pub use admission::{AdmissionError, Outcome};
pub use cache::{ClusterCache, ClusterState, DecodeError};
pub use cluster_ip::{
    allocate_cluster_ip, list_cluster_ips, lookup_cluster_ip, release_cluster_ip, ServiceError,
    CLUSTER_DNS_IP, DEFAULT_SERVICE_CIDR,
};
pub use config::{
    ensure_cluster_config, read_cluster_config, ClusterConfig, ConfigError, Networking,
};
pub use endpoints::{compute_endpoints, EndpointAddress, EndpointPort, Endpoints};
pub use ipam::{lease_node_subnet, IpamError, PodIpam};
pub use manifest::{
    emit_json, emit_yaml, load_path, parse_manifests, Container, ContainerPort, EnvVar,
    ManifestError, Node, NodeSpec, NodeStatus, Object, ObjectMeta, Pod, PodSpec, PodStatus,
    Protocol, KUBELET_LABEL,
};
pub use namespace::{
    ensure_namespace, namespace_key, Namespace, NamespaceError, BUILTIN_NAMESPACES,
    NAMESPACE_NAME_LABEL,
};
pub use net::{Ipv4Cidr, MacAddr};
pub use policy::{
    network_policy_key, ports_allow, IpBlock, NetworkPolicy, NetworkPolicyEgressRule,
    NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec, PodRef,
    PolicyPortRef, PolicyProtocol, PolicyRule, PolicyType, PortRange,
};
pub use selector::{LabelSelector, LabelSelectorRequirement, SelectorOperator};
pub use service::{
    ClusterIp, Service, ServicePort, ServiceSpec, ServiceType, SessionAffinity, TargetPort,
};
pub use status::PodRunStatus;
pub use store::{
    DirStore, DirStoreOptions, Entry, Event, MemStore, Revision, Store, StoreError, Watch,
};
