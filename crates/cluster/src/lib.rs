//! Tapestry's cluster control plane: the object model, manifests, the store
//! every agent shares, and address management.
//!
//! Why one crate: these are the parts of Kubernetes' API server and
//! controllers that Tapestry needs, and they are pure data plus a store — no
//! packets. The agent and the CLI both build on them; nothing here depends on
//! the data plane or does network I/O.
//!
//! - [`net`]: IPv4 CIDR and MAC address types.
//! - [`manifest`]: Kubernetes-shaped objects (Pod, Node) and YAML loading.
//! - [`validate`]: Kubernetes naming rules and field errors.
//! - [`store`]: the revisioned key-value store with watch, and its backends.
//! - [`ipam`]: node subnet leases and pod IP allocation over the store.
#![forbid(unsafe_code)]

pub mod ipam;
pub mod manifest;
pub mod net;
pub mod store;
pub mod status;
pub mod validate;

pub use ipam::{lease_node_subnet, IpamError, PodIpam};
pub use manifest::{
    emit_json, emit_yaml, load_path, parse_manifests, Container, ContainerPort, EnvVar,
    ManifestError, Node, NodeSpec, NodeStatus, Object, ObjectMeta, Pod, PodSpec, PodStatus,
    Protocol,
};
pub use net::{Ipv4Cidr, MacAddr};
pub use store::{
    DirStore, DirStoreOptions, Entry, Event, MemStore, Revision, Store, StoreError, Watch,
};
