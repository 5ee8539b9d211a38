//! Keeps the data plane's service table in step with the cluster: every
//! ClusterIP Service port becomes one load-balancer entry whose backends are
//! the service's ready endpoints (target ports resolved per pod), rebuilt whole
//! on every change of Services, Pods or pod status and published into the
//! pipeline's `ArcSwap`. The pipeline flushes flows of backends that left.
//!
//! This is kube-proxy's job; like kube-proxy every node programs every
//! Service, because the load balancing happens on the client's node.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tapestry_cluster::cache::{ClusterCache, ClusterState};
use tapestry_cluster::service::{ClusterIp, ServiceType, SessionAffinity};
use tapestry_cluster::Protocol;
use tapestry_dataplane::{Affinity, Backend, L4Proto, ServiceEntry, ServiceTable};

/// The load-balancer entries for the cluster state.
pub fn entries(state: &ClusterState) -> Vec<ServiceEntry> {
    let mut out = Vec::new();
    for (key, svc) in &state.services {
        let ClusterIp::Ip(vip) = svc.spec.cluster_ip else {
            continue;
        };
        if svc.spec.type_ != ServiceType::ClusterIp {
            continue;
        }
        let endpoints = state.endpoints(key);
        for sp in &svc.spec.ports {
            let backends = endpoints
                .iter()
                .flat_map(|e| e.addresses.iter())
                .filter_map(|a| {
                    a.ports
                        .iter()
                        .find(|p| p.name == sp.name && p.protocol == sp.protocol)
                        .map(|p| Backend {
                            ip: a.ip,
                            port: p.port,
                        })
                })
                .collect();
            out.push(ServiceEntry {
                name: format!(
                    "{key}:{}",
                    sp.name.clone().unwrap_or_else(|| sp.port.to_string())
                ),
                vip,
                port: sp.port,
                proto: match sp.protocol {
                    Protocol::Tcp => L4Proto::Tcp,
                    Protocol::Udp => L4Proto::Udp,
                },
                backends,
                affinity: match svc.spec.session_affinity {
                    SessionAffinity::ClientIp => Affinity::ClientIp,
                    SessionAffinity::None => Affinity::None,
                },
            });
        }
    }
    out
}

/// Rebuilds and publishes the service table on every cluster change, forever.
pub fn run(cache: Arc<ClusterCache>, table: Arc<ArcSwap<ServiceTable>>) {
    let changes = cache.subscribe();
    let mut last: Vec<String> = Vec::new();
    loop {
        let state = cache.snapshot();
        let entries = entries(&state);
        let summary: Vec<String> = entries
            .iter()
            .map(|e| format!("{}={}:{}->{}", e.name, e.vip, e.port, e.backends.len()))
            .collect();
        match ServiceTable::build(entries) {
            Ok(t) => {
                table.store(Arc::new(t));
                if summary != last {
                    tracing::info!(services = ?summary, "service table updated");
                    last = summary;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "service table rejected; keeping the previous one")
            }
        }
        if changes.recv().is_err() {
            return;
        }
    }
}
