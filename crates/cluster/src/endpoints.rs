//! A service's endpoints: which pod addresses and ports stand behind it,
//! computed from the pods and their run status rather than stored.
//!
//! Why computed: Kubernetes' endpoints controller writes Endpoints objects
//! that are a pure function of (service, pods); every Tapestry agent already
//! watches both (see `cache`), so it derives the same answer locally and no
//! controller has to run, be elected or lag behind. The function follows the
//! controller (`pkg/controller/endpoint`):
//!
//! - A pod is selected when it is in the service's namespace and its labels
//!   include every selector pair. An empty selector selects nothing, and an
//!   `ExternalName` service has no endpoints.
//! - Pods that ended (`Failed`, `Succeeded`) and pods without an address are
//!   left out. A pod is *ready* when its kubelet status says ready and has a
//!   pod IP; the others are listed in `not_ready` (DNS and load balancer use
//!   only `addresses`).
//! - Each service port becomes one endpoint port per pod with the target
//!   resolved: a number as is, a name against the pod's container ports with
//!   the same name and protocol. A pod lacking a named port gets no entry
//!   for that service port, and a pod left with no ports at all (while the
//!   service has some) is not an endpoint. A headless service without ports
//!   lists its pods with no ports (DNS still answers with them).
//! - `hostname` is the pod's `spec.hostname` when its `spec.subdomain` is the
//!   service's name, which is what gives headless services per-pod DNS names
//!   (`web-0.web.default.svc.cluster.local`).
//!
//! Both lists are sorted by IP (then pod name), so equal inputs give equal
//! outputs and consumers can diff snapshots.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::meta::Protocol;
use crate::pod::Pod;
use crate::service::{Service, ServiceType, TargetPort};
use crate::status::PodRunStatus;

/// The backends of one service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// `NAMESPACE/NAME` of the service.
    pub service: String,
    /// Ready backends, sorted by IP.
    pub addresses: Vec<EndpointAddress>,
    /// Selected pods that have an address but are not ready, sorted by IP.
    pub not_ready: Vec<EndpointAddress>,
}

impl Endpoints {
    /// Whether there is no backend at all, ready or not.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.not_ready.is_empty()
    }
}

/// One pod behind a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAddress {
    pub ip: Ipv4Addr,
    /// The pod's name (its namespace is the service's).
    pub pod: String,
    /// The node running the pod; empty if not yet known.
    pub node: String,
    /// The pod's `spec.hostname`, set only when its `spec.subdomain` names
    /// this service (per-pod DNS names of headless services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The service ports this pod serves, in service port order.
    pub ports: Vec<EndpointPort>,
}

/// One service port as served by one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    /// The service port's name (what DNS SRV records and the load balancer
    /// match on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub protocol: Protocol,
    /// The resolved port on the pod.
    pub port: u16,
}

/// Whether `pod` is one of `svc`'s backends (namespace and selector only).
pub fn selects(svc: &Service, pod: &Pod) -> bool {
    svc.spec.type_ == ServiceType::ClusterIp
        && !svc.spec.selector.is_empty()
        && pod.metadata.namespace == svc.metadata.namespace
        && svc
            .spec
            .selector
            .iter()
            .all(|(k, v)| pod.metadata.labels.get(k) == Some(v))
}

/// The container port of `pod` named `name` with `protocol`, if any.
fn named_port(pod: &Pod, name: &str, protocol: Protocol) -> Option<u16> {
    pod.spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter())
        .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
        .map(|p| p.container_port)
}

/// The service's endpoints among `pods`.
pub fn compute_endpoints(svc: &Service, pods: &[(Pod, Option<PodRunStatus>)]) -> Endpoints {
    let mut out = Endpoints {
        service: svc.namespaced_name(),
        ..Endpoints::default()
    };
    for (pod, status) in pods.iter().filter(|(p, _)| selects(svc, p)) {
        let phase = status.as_ref().map(|s| s.phase.as_str());
        if matches!(phase, Some("Failed" | "Succeeded")) {
            continue;
        }
        let status_ip = status.as_ref().and_then(|s| s.pod_ip);
        let Some(ip) = status_ip.or(pod.status.pod_ip) else {
            continue;
        };
        let ready = status.as_ref().is_some_and(|s| s.ready) && status_ip.is_some();
        let ports: Vec<EndpointPort> = svc
            .spec
            .ports
            .iter()
            .filter_map(|sp| {
                let port = match sp.target() {
                    TargetPort::Number(n) => n,
                    TargetPort::Name(name) => named_port(pod, &name, sp.protocol)?,
                };
                Some(EndpointPort {
                    name: sp.name.clone(),
                    protocol: sp.protocol,
                    port,
                })
            })
            .collect();
        if ports.is_empty() && !svc.spec.ports.is_empty() {
            continue;
        }
        let node = status
            .as_ref()
            .map(|s| s.node.clone())
            .filter(|n| !n.is_empty())
            .or_else(|| pod.spec.node_name.clone())
            .unwrap_or_default();
        let hostname = pod
            .spec
            .hostname
            .clone()
            .filter(|_| pod.spec.subdomain.as_deref() == Some(svc.metadata.name.as_str()));
        let address = EndpointAddress {
            ip,
            pod: pod.metadata.name.clone(),
            node,
            hostname,
            ports,
        };
        if ready {
            out.addresses.push(address);
        } else {
            out.not_ready.push(address);
        }
    }
    let order = |a: &EndpointAddress, b: &EndpointAddress| (a.ip, &a.pod).cmp(&(b.ip, &b.pod));
    out.addresses.sort_by(order);
    out.not_ready.sort_by(order);
    out
}

#[cfg(test)]
#[path = "endpoints_tests.rs"]
mod tests;
