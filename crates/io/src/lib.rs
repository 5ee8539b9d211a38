//! Tapestry's I/O layer: everything that touches the kernel on the packet path.
//!
//! - [`sys`]: the TAP ioctls and `setns`, the only `unsafe` code in the project.
//! - [`tap`]: TAP queues with virtio-net headers and offloads, optionally persistent.
//! - [`tunnel`], [`txbatch`]: the VXLAN underlay sockets, and the coalescing of
//!   single tunnel datagrams into UDP GSO sends.
//! - [`worker`]: the event loop that feeds frames from TAPs through the
//!   I/O-free [`tapestry_dataplane::Pipeline`] and writes out what it decides.
#![deny(unsafe_code)]

pub mod sys;
pub mod tap;
pub mod tunnel;
pub mod txbatch;
pub mod worker;

pub use tap::Tap;
pub use worker::{spawn, Command, PortCounters, WorkerHandle};
