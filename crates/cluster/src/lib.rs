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
//!   Namespace, NetworkPolicy) and YAML loading; [`pod`] holds the Pod type
//!   and its rules, [`service`] the Service, [`namespace`] the Namespace,
//!   [`policy`] the NetworkPolicy and its matching logic, [`selector`] label
//!   selectors, and [`meta`] what they all share (object metadata, the port
//!   protocol), at the bottom so imports run one way.
//! - [`validate`]: Kubernetes naming rules and field errors.
//! - [`store`]: the revisioned key-value store with watch, and its backends.
//! - [`ipam`]: node subnet leases and pod IP allocation over the store.
//! - [`liveness`]: node leases, and whether a node is Ready.
//! - [`cluster_ip`]: service virtual IP allocation over the store.
//! - [`config`]: the cluster's Service and pod CIDRs, recorded in the store,
//!   and the built-in namespaces created with them.
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
pub mod liveness;
pub mod manifest;
pub mod meta;
pub mod namespace;
pub mod net;
pub mod pod;
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
    ensure_cluster_config, ensure_namespace, read_cluster_config, ClusterConfig, ConfigError,
    NamespaceError, Networking,
};
pub use endpoints::{compute_endpoints, EndpointAddress, EndpointPort, Endpoints};
pub use ipam::{lease_node_subnet, IpamError, PodIpam};
pub use manifest::{
    emit_json, emit_yaml, load_path, parse_manifests, ManifestError, Node, NodeSpec, NodeStatus,
    Object, KUBELET_LABEL,
};
pub use meta::{ObjectMeta, Protocol};
pub use namespace::{namespace_key, Namespace, BUILTIN_NAMESPACES, NAMESPACE_NAME_LABEL};
pub use net::{Ipv4Cidr, MacAddr};
pub use pod::{Container, ContainerPort, EnvVar, Pod, PodSpec, PodStatus};
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
    DirStore, DirStoreOptions, Entry, Event, MemStore, Revision, Store, StoreError, StoreFaults,
    StoreSpec, Watch,
};
#[cfg(feature = "etcd")]
pub use store::{EtcdStore, EtcdStoreOptions};
