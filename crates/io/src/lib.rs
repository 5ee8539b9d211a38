//! Tapestry's I/O layer: everything that touches the kernel on the packet path.
//!
//! - `sys` (private): the TAP ioctls, sockets, `setns` and descriptor passing
//!   (`SCM_RIGHTS`, for the upgrade hand-off: [`send_fds`], [`recv_fds`]), the only `unsafe` code in
//!   the project, behind safe functions ([`in_netns`] is the one other crates use).
//! - [`tap`]: TAP queues with virtio-net headers and offloads, optionally persistent.
//! - [`tunnel`], [`txbatch`]: the VXLAN underlay sockets, and the coalescing of
//!   single tunnel datagrams into UDP GSO sends.
//! - [`flowfile`]: the flow file, mapped shared, that keeps the load balancer's
//!   flows across a restart.
//! - [`worker`]: the event loop that feeds frames from TAPs through the
//!   I/O-free [`tapestry_dataplane::Pipeline`] and writes out what it decides.
#![deny(unsafe_code)]

pub mod flowfile;
mod sys;
pub mod tap;
pub mod tunnel;
pub mod txbatch;
pub mod worker;

pub use sys::{in_netns, recv_fds, send_fds, IFNAME_MAX, MAX_FDS_PER_MESSAGE};
pub use tap::Tap;
pub use worker::{spawn, Command, Handover, PortCounters, WorkerExit, WorkerHandle};
