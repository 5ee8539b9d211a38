//! `tapestryd`, the node agent, as a library: the agent itself ([`node`]) and
//! the server side of its control socket ([`control`]; the protocol is the
//! `tapestry-proto` crate, which the CLI speaks without linking the agent).
//!
//! One agent runs per node. It owns the node's data-plane worker (the bridge and
//! gateway router over TAP devices), the node's host port `cbr0`, and the pods'
//! `eth0` TAPs, which it creates, configures and removes on CNI-style ADD / DEL /
//! CHECK requests on its Unix control socket.
#![forbid(unsafe_code)]

pub mod cluster_sync;
pub mod control;
pub mod handoff;
pub mod kubelet;
pub mod lease;
#[cfg(test)]
mod liveness_tests;
pub mod netconf;
pub mod netns;
pub mod node;
pub mod policy_gate;
pub mod policy_sync;
pub mod problems;
pub mod procid;
pub mod reflected;
pub mod service_sync;
pub mod watchdog;
