//! `tapestryd`, the node agent, as a library: the control-socket protocol the CLI
//! speaks ([`api`]), and the agent itself ([`node`], [`control`]).
//!
//! One agent runs per node. It owns the node's data-plane worker (the bridge and
//! gateway router over TAP devices), the node's host port `cbr0`, and the pods'
//! `eth0` TAPs, which it creates, configures and removes on CNI-style ADD / DEL /
//! CHECK requests on its Unix control socket.
#![forbid(unsafe_code)]

pub mod api;
pub mod cluster_sync;
pub mod control;
pub mod kubelet;
pub mod netconf;
pub mod node;
pub mod service_sync;
