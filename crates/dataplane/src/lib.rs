//! Tapestry's data plane: the I/O-free packet pipeline of one node.
//!
//! Every pod packet on a node passes through here: the I/O crate reads a frame (with
//! its virtio-net header) from a pod's TAP, calls [`Pipeline::process`] with the
//! ingress port and the current time, and does what the returned [`Action`] says:
//! forward to one port, flood, send the reply bytes built in its own buffer, tunnel to
//! a peer, or drop (already counted under a [`DropReason`]). VXLAN datagrams from
//! other nodes enter through [`Pipeline::process_tunnel`].
//!
//! This crate contains no sockets, threads or clock reads (time is always passed in as
//! [`Nanos`], so tests step it), never allocates per packet, and cannot panic on any
//! input: all packet bytes are read through checked views in [`wire`].
//!
//! Modules, from the bottom up (each imports only modules below it):
//!
//! - `types`, `hash`, `drops`, `ratelimit`: leaf values, hashes, drop reasons and
//!   counters, the ICMP token bucket; [`wire`]: views and `Repr`s of each header;
//! - `codec`: VXLAN encapsulation and software TSO, NAT rewrites, software GRO;
//! - `tables`: ports, MAC table, routes, service table and Maglev, conntrack,
//!   fragment translations, the compiled NetworkPolicy table;
//! - `pipeline`: the stages (parse, admit, service, policy, forward, gateway, emit) and the
//!   driver that sequences them.

#![forbid(unsafe_code)]

mod codec;
mod drops;
mod hash;
mod pipeline;
mod ratelimit;
mod tables;
mod types;
pub mod wire;

pub use codec::gro::{Coalescer, GRO_MAX};
pub use drops::{Counter, Counters, CountersSnapshot, DropReason};
pub use hash::{flow_hash, flow_hash_of};
pub use pipeline::{
    Action, Pipeline, PipelineConfig, TunnelConfig, DEFAULT_ICMP_ERRORS_PER_SEC, DEFAULT_MAC_AGING,
    DEFAULT_MAC_CAPACITY, DEFAULT_SERVICE_CIDR, MAINTAIN_BUDGET, OUT_BUF_LEN, VXLAN_OVERHEAD,
};
pub use tables::conntrack::{
    ConntrackTimeouts, FlowInfo, FlowState, Restored, DEFAULT_CONNTRACK_CAPACITY,
};
pub use tables::flow_file::{
    check_flow_file, flow_file_len, init_flow_file, FlowFileError, FlowMemory,
};
pub use tables::maglev::{Maglev, MAGLEV_DEFAULT_SIZE};
pub use tables::policy::{
    IpBlock, PodPolicy, PolicyCounters, PolicyDirection, PolicyError, PolicyId, PolicyPeers,
    PolicyPort, PolicyPorts, PolicyRule, PolicyTable, PortProtocol, RuleSet, RuleSetSpec,
    MAX_POLICY_IDS,
};
pub use tables::routes::{Peer, RouteError, RouteSnapshot, RouteTarget};
pub use tables::service_table::{Affinity, LbError, ServiceEntry, ServiceTable};
pub use tapestry_net::Ipv4Cidr;
pub use types::{Backend, Ingress, L4Proto, Nanos, PortId, PortRole};
pub use wire::{MacAddr, VNET_HDR_LEN};
