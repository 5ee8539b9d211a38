//! From cluster state to [`DnsData`]: the Services (with their ready
//! endpoints, target ports resolved per pod) and the pods that have an
//! address, as the node agents and `tapestry apply` recorded them in the store.
//! Pods on a NotReady node (`ClusterState::not_ready_nodes`, judged by the
//! server's cache on its own clock) are not ready endpoints, so Service and
//! headless names stop answering with them; their pod records stay.

use tapestry_cluster::{ClusterIp, ClusterState, Protocol, ServiceType};

use crate::model::{DnsData, EndpointRecord, PodRecord, PortRecord, ServiceKind, ServiceRecord};

fn port_record(name: &Option<String>, protocol: Protocol, port: u16) -> PortRecord {
    PortRecord {
        name: name.clone(),
        protocol: protocol.to_string(),
        port,
    }
}

/// The DNS view of `state`.
pub fn dns_data(state: &ClusterState) -> DnsData {
    let mut services = Vec::new();
    for (key, svc) in &state.services {
        let kind = match (&svc.spec.type_, &svc.spec.cluster_ip) {
            (ServiceType::ExternalName, _) => match &svc.spec.external_name {
                Some(name) => ServiceKind::ExternalName(name.clone()),
                None => continue,
            },
            (_, ClusterIp::Ip(ip)) => ServiceKind::ClusterIp(*ip),
            (_, ClusterIp::Headless) => ServiceKind::Headless,
            // Not allocated yet: nothing to answer.
            (_, ClusterIp::Auto) => continue,
        };
        let endpoints = state
            .endpoints(key)
            .map(|e| {
                e.addresses
                    .iter()
                    .map(|a| EndpointRecord {
                        ip: a.ip,
                        hostname: a.hostname.clone(),
                        ports: a
                            .ports
                            .iter()
                            .map(|p| port_record(&p.name, p.protocol, p.port))
                            .collect(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        services.push(ServiceRecord {
            name: svc.metadata.name.clone(),
            namespace: svc.metadata.namespace.clone(),
            kind,
            ports: svc
                .spec
                .ports
                .iter()
                .map(|p| port_record(&p.name, p.protocol, p.port))
                .collect(),
            endpoints,
        });
    }
    let pods = state
        .pods
        .iter()
        .filter_map(|(key, pod)| {
            let ip = state.pod_status.get(key).and_then(|s| s.pod_ip)?;
            Some(PodRecord {
                name: pod.metadata.name.clone(),
                namespace: pod.metadata.namespace.clone(),
                ip,
            })
        })
        .collect();
    DnsData {
        services,
        pods,
        revision: Some(state.revision),
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tapestry_cluster::{parse_manifests, Object, PodRunStatus};

    const OBJECTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.1.5
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-pods}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: pending}
spec:
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, labels: {app: web}}
spec:
  hostname: web-a
  subdomain: web-pods
  containers: [{name: web, command: [x], ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-b, labels: {app: web}}
spec:
  containers: [{name: web, command: [x], ports: [{name: http, containerPort: 8080}]}]
"#;

    #[test]
    fn services_endpoints_and_pods_reach_dns() {
        let mut state = ClusterState::default();
        for obj in parse_manifests(OBJECTS, "test").expect("valid") {
            match obj {
                Object::Service(s) => {
                    state.services.insert(s.namespaced_name(), s);
                }
                Object::Pod(p) => {
                    let key = format!("{}/{}", p.metadata.namespace, p.metadata.name);
                    let ip = if p.metadata.name == "web-a" {
                        Ipv4Addr::new(10, 244, 1, 3)
                    } else {
                        Ipv4Addr::new(10, 244, 2, 2)
                    };
                    // web-b is up but not ready: it is a pod (A record) but no endpoint.
                    let ready = p.metadata.name == "web-a";
                    state.pod_status.insert(
                        key.clone(),
                        PodRunStatus {
                            node: "node1".into(),
                            pod_ip: Some(ip),
                            phase: "Running".into(),
                            ready,
                            message: String::new(),
                        },
                    );
                    state.pods.insert(key, p);
                }
                _ => {}
            }
        }
        let data = dns_data(&state);
        assert_eq!(
            data.services.len(),
            2,
            "the unallocated service is left out"
        );
        let web = data.services.iter().find(|s| s.name == "web").expect("web");
        assert_eq!(
            web.kind,
            ServiceKind::ClusterIp(Ipv4Addr::new(10, 96, 1, 5))
        );
        assert_eq!(web.endpoints.len(), 1);
        let ep = &web.endpoints[0];
        assert_eq!(ep.ip, Ipv4Addr::new(10, 244, 1, 3));
        assert_eq!(ep.ports[0].port, 8080, "the named target port is resolved");
        let headless = data
            .services
            .iter()
            .find(|s| s.name == "web-pods")
            .expect("headless");
        assert_eq!(headless.kind, ServiceKind::Headless);
        assert_eq!(headless.endpoints[0].hostname.as_deref(), Some("web-a"));
        assert_eq!(data.pods.len(), 2);

        // node1 stops renewing its lease: its pods leave both services'
        // answers (they are no longer ready endpoints); their pod records stay.
        state.not_ready_nodes.insert("node1".into());
        let data = dns_data(&state);
        for svc in &data.services {
            assert!(svc.endpoints.is_empty(), "{} still answers", svc.name);
        }
        assert_eq!(data.pods.len(), 2);
    }
}
