//! Tapestry's data plane: the I/O-free packet pipeline of one node.
//!
//! Every pod packet on a node passes through here: the I/O crate reads a frame (with
//! its virtio-net header) from a pod's TAP, calls [`Pipeline::process`] with the
//! ingress port and the current time, and does what the returned [`Action`] says —
//! forward to one port, flood, send the reply bytes built in its own buffer, or drop
//! (already counted under a [`DropReason`]).
//!
//! This crate contains no sockets, threads or clock reads (time is always passed in as
//! [`Nanos`], so tests step it), never allocates per packet, and cannot panic on any
//! input: all packet bytes are read through checked views in [`wire`]. That makes every
//! stage testable and benchmarkable with plain byte arrays.
//!
//! VXLAN datagrams from other nodes enter through [`Pipeline::process_tunnel`]; routed
//! packets for other nodes leave as [`Action::Tunnel`].
//!
//! - [`wire`]: views and `Repr`s for the virtio-net header, Ethernet, ARP, IPv4, ICMP,
//!   TCP, UDP, VXLAN;
//! - [`bridge`]: the learning bridge's MAC table;
//! - [`router`]: the gateway port (ARP and ICMP echo for the gateway IP);
//! - [`routes`]: the route table (longest-prefix match, immutable snapshots);
//! - [`tunnel`]: VXLAN encapsulation, software TSO, fragmentation, flow hash;
//! - [`gro`]: software GRO, merging a receive batch's TCP segments per flow before
//!   they are written to a pod's TAP;
//! - [`lb`]: the service table (ClusterIP → ready backends), Kubernetes fact 4;
//! - [`maglev`]: Maglev consistent hashing, the backend choice;
//! - [`conntrack`]: connection tracking of service flows (fixed capacity, timeouts);
//! - [`nat`]: in-place address/port rewriting with incremental checksums;
//! - [`ratelimit`]: the ICMP error token bucket;
//! - [`pipeline`]: ports, anti-spoofing, the service load balancer, routing, and the
//!   decision that ties them together;
//! - [`drops`]: drop reasons and counters.

#![forbid(unsafe_code)]

pub mod bridge;
pub mod conntrack;
pub mod drops;
pub mod fragments;
pub mod gro;
pub mod lb;
pub mod maglev;
pub mod nat;
pub mod pipeline;
pub mod ratelimit;
pub mod router;
pub mod routes;
pub mod tunnel;
pub mod wire;

pub use conntrack::{ConntrackTimeouts, FlowInfo, FlowState, DEFAULT_CONNTRACK_CAPACITY};
pub use drops::{Counters, CountersSnapshot, DropReason};
pub use gro::{Coalescer, GRO_MAX};
pub use lb::{Affinity, Backend, L4Proto, LbError, ServiceEntry, ServiceTable};
pub use maglev::{Maglev, MAGLEV_DEFAULT_SIZE};
pub use pipeline::{
    Action, Pipeline, PipelineConfig, PortId, PortRole, TunnelConfig, DEFAULT_SERVICE_CIDR,
    OUT_BUF_LEN, VXLAN_OVERHEAD,
};
pub use routes::{Peer, RouteError, RouteSnapshot, RouteTarget};
pub use wire::{MacAddr, VNET_HDR_LEN};

/// Monotonic time in nanoseconds, always passed in by the caller.
pub type Nanos = u64;
