//! The node agent's control protocol: one JSON [`Request`] per line on its Unix
//! socket, one JSON [`Reply`] per line back, and [`call`], the client side.
//! The agent reads a connection's requests with [`Requests`] (the line framing
//! and its bound, [`MAX_REQUEST_LINE`]), so the code the `control` fuzz target
//! feeds is the agent's own.
//!
//! A crate of its own so that the clients (`tapestry`, `tapestry-cni`) speak to
//! the agent without linking it: this crate depends on serde and nothing of
//! ours. The server side (`tapestryd`'s `control` module) stays in the agent.
//!
//! ADD / DEL / CHECK follow the CNI specification's semantics (CNI 1.0,
//! `SPEC.md`, "Container Network Interface (CNI) Specification"): ADD attaches a
//! container's network namespace and returns the interface and address it got
//! (here ADD of a container already attached returns the same result, so the lab
//! can repeat it safely); DEL releases everything ADD made and succeeds when
//! there is nothing to release; CHECK reports any drift from what ADD set up.
#![forbid(unsafe_code)]

mod client;
mod codec;

pub use client::{call, CallError};
pub use codec::{
    decode_reply, decode_request, encode_reply, encode_request, read_line, RequestError, Requests,
    MAX_REQUEST_LINE,
};

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// CNI ADD.
    Add(Attachment),
    /// CNI DEL.
    Del(Attachment),
    /// CNI CHECK.
    Check(Attachment),
    /// The node's ports, pods, MAC table and counters.
    Status,
    /// From a new `tapestryd --upgrade`: stop the data plane and hand over its
    /// descriptors (`SCM_RIGHTS`, see the agent's `handoff` module); the agent
    /// exits once the new one has them.
    Upgrade,
}

fn default_ifname() -> String {
    "eth0".to_owned()
}

/// What identifies one pod's attachment, as CNI passes it
/// (`CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, and the pod's name in `CNI_ARGS`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    /// Path of the pod's network namespace (`/run/netns/NAME` or `/proc/PID/ns/net`).
    #[serde(default)]
    pub netns: PathBuf,
    #[serde(default = "default_ifname")]
    pub ifname: String,
    #[serde(default)]
    pub pod_namespace: String,
    #[serde(default)]
    pub pod_name: String,
}

/// A reply: `ok` with an optional body, or an error message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<AttachResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<AgentStatus>,
}

impl Reply {
    pub fn error(msg: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(msg.into()),
            result: None,
            status: None,
        }
    }
    pub fn done() -> Reply {
        Reply {
            ok: true,
            error: None,
            result: None,
            status: None,
        }
    }
}

/// The CNI result of an ADD (field names as in the CNI result type).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AttachResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub mtu: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub sandbox: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with prefix length, e.g. `10.244.1.2/24`.
    pub address: String,
    pub gateway: Ipv4Addr,
    pub interface: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Route {
    pub dst: String,
    pub gw: Ipv4Addr,
}

/// Everything `tapestry status` shows about a node, as its agent reports it:
/// the data plane's ports, tables and counters. (Not the cluster's Node
/// `.status`, `tapestry_cluster::NodeStatus`, which says where to tunnel to.)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentStatus {
    pub node: String,
    pub subnet: String,
    pub gateway_ip: Ipv4Addr,
    pub gateway_mac: String,
    pub mtu: u32,
    pub ports: Vec<PortStatus>,
    pub mac_table: Vec<MacEntry>,
    pub mac_table_capacity: usize,
    pub counters: Vec<(String, u64)>,
    pub drops: Vec<(String, u64)>,
    /// The router's table: `local` for this node's subnet, else the peer node.
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
    /// Tunnel datagrams the kernel refused to send.
    #[serde(default)]
    pub tunnel_tx_errors: u64,
    /// The service load balancer's tracked flows (client -> ClusterIP -> backend).
    #[serde(default)]
    pub flows: Vec<FlowEntry>,
    /// Packets denied by NetworkPolicy, per policy (`namespace/name`) selecting a
    /// pod of this node, since the agent gave it its id. A denial counts under
    /// every policy selecting the pod in that direction.
    #[serde(default)]
    pub policy_denials: Vec<(String, u64)>,
    /// What the agent skipped or set aside instead of failing (a state file
    /// moved aside, an object left out of a table, a pod kept on its last
    /// good spec), each with why.
    #[serde(default)]
    pub problems: Vec<Problem>,
    /// The cluster store revision the route table reflects: built from a
    /// cluster cache snapshot holding every change up to it (0 before the
    /// first table, or from an agent that does not report it).
    #[serde(default)]
    pub routes_revision: u64,
    /// The same for the service table.
    #[serde(default)]
    pub services_revision: u64,
}

/// One thing the agent skipped or set aside instead of failing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Problem {
    /// Who reported it: `state`, `routes`, `services` or `kubelet`.
    pub source: String,
    /// The file or object concerned (`services/default/web`).
    pub object: String,
    pub reason: String,
}

/// One tracked flow of the service load balancer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowEntry {
    pub proto: String,
    pub client: String,
    pub service: String,
    pub backend: String,
    pub state: String,
    pub age_ms: u64,
    pub expires_in_ms: u64,
}

/// One route of the router's table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteEntry {
    pub subnet: String,
    /// `local` (the bridge) or the node it is tunnelled to.
    pub via: String,
    /// The node's underlay address (VXLAN destination), empty for local.
    pub underlay_ip: String,
    pub vtep_mac: String,
}

/// One bridge port: the host port or a pod's `eth0`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortStatus {
    pub port: u16,
    /// `host` or `pod`.
    pub kind: String,
    pub tap: String,
    /// `namespace/name` for pods, the node name for the host port.
    pub owner: String,
    pub container_id: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub rx_frames: u64,
    pub tx_frames: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub tx_errors: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MacEntry {
    pub mac: String,
    pub port: u16,
    pub age_ms: u64,
}
