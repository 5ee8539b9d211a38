//! Tests of endpoint computation.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;

use super::*;
use crate::meta::ObjectMeta;
use crate::pod::{Container, ContainerPort, PodSpec, PodStatus};
use crate::service::{ClusterIp, ServicePort, ServiceSpec};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn port(
    name: Option<&str>,
    protocol: Protocol,
    port: u16,
    target: Option<TargetPort>,
) -> ServicePort {
    ServicePort {
        name: name.map(str::to_string),
        protocol,
        port,
        target_port: target,
    }
}

fn service(name: &str, selector: &[(&str, &str)], ports: Vec<ServicePort>) -> Service {
    Service {
        metadata: ObjectMeta::named(name),
        spec: ServiceSpec {
            selector: labels(selector),
            ports,
            ..ServiceSpec::default()
        },
    }
}

/// A pod labelled `app=<app>` with the given named container ports.
fn pod(name: &str, app: &str, ports: &[(&str, Protocol, u16)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            labels: labels(&[("app", app), ("tier", "backend")]),
            ..ObjectMeta::named(name)
        },
        spec: PodSpec {
            node_name: Some("node1".into()),
            containers: vec![Container {
                name: "c".into(),
                ports: ports
                    .iter()
                    .map(|(n, protocol, p)| ContainerPort {
                        name: Some(n.to_string()),
                        container_port: *p,
                        protocol: *protocol,
                    })
                    .collect(),
                ..Container::default()
            }],
            ..PodSpec::default()
        },
        status: PodStatus::default(),
    }
}

fn status(node: &str, ip: Option<&str>, ready: bool) -> Option<PodRunStatus> {
    Some(PodRunStatus {
        node: node.into(),
        pod_ip: ip.map(|i| i.parse().unwrap()),
        phase: "Running".into(),
        ready,
        message: String::new(),
    })
}

fn ips(list: &[EndpointAddress]) -> Vec<String> {
    list.iter().map(|a| a.ip.to_string()).collect()
}

#[test]
fn selects_by_namespace_and_every_label_pair() {
    let svc = service(
        "web",
        &[("app", "web"), ("tier", "backend")],
        vec![port(None, Protocol::Tcp, 80, None)],
    );
    let mut other_ns = pod("web-x", "web", &[]);
    other_ns.metadata.namespace = "prod".into();
    let pods = vec![
        (
            pod("web-b", "web", &[]),
            status("node2", Some("10.244.2.5"), true),
        ),
        (
            pod("web-a", "web", &[]),
            status("node1", Some("10.244.1.9"), true),
        ),
        (
            pod("db", "db", &[]),
            status("node1", Some("10.244.1.3"), true),
        ),
        (other_ns, status("node1", Some("10.244.1.4"), true)),
    ];
    let ep = compute_endpoints(&svc, &pods);
    assert_eq!(ep.service, "default/web");
    // Sorted by IP, not by input order or name.
    assert_eq!(ips(&ep.addresses), ["10.244.1.9", "10.244.2.5"]);
    assert_eq!(ep.addresses[0].pod, "web-a");
    assert_eq!(ep.addresses[0].node, "node1");
    assert_eq!(ep.addresses[1].node, "node2");
    assert_eq!(
        ep.addresses[0].ports,
        [EndpointPort {
            name: None,
            protocol: Protocol::Tcp,
            port: 80
        }]
    );
    assert!(ep.not_ready.is_empty());
    // A pod missing one selector pair is not selected.
    let strict = service(
        "web",
        &[("app", "web"), ("tier", "frontend")],
        vec![port(None, Protocol::Tcp, 80, None)],
    );
    assert!(compute_endpoints(&strict, &pods).is_empty());
}

#[test]
fn empty_selector_and_external_name_have_no_endpoints() {
    let pods = vec![(
        pod("web-a", "web", &[]),
        status("node1", Some("10.244.1.9"), true),
    )];
    let none = service("web", &[], vec![port(None, Protocol::Tcp, 80, None)]);
    let ep = compute_endpoints(&none, &pods);
    assert!(ep.is_empty());
    assert_eq!(ep.service, "default/web");
    let mut ext = service("web", &[("app", "web")], vec![]);
    ext.spec.type_ = ServiceType::ExternalName;
    ext.spec.external_name = Some("db.example.com".into());
    assert!(compute_endpoints(&ext, &pods).is_empty());
}

#[test]
fn readiness_and_addresses() {
    let svc = service(
        "web",
        &[("app", "web")],
        vec![port(None, Protocol::Tcp, 80, None)],
    );
    let mut from_pod_status = pod("web-e", "web", &[]);
    from_pod_status.status.pod_ip = Some("10.244.1.50".parse().unwrap());
    let mut failed = status("node1", Some("10.244.1.60"), false);
    if let Some(s) = failed.as_mut() {
        s.phase = "Failed".into();
    }
    let pods = vec![
        (
            pod("web-a", "web", &[]),
            status("node1", Some("10.244.1.10"), true),
        ),
        // Running but not ready: listed as not ready.
        (
            pod("web-b", "web", &[]),
            status("node1", Some("10.244.1.2"), false),
        ),
        // Ready but no address yet: nowhere.
        (pod("web-c", "web", &[]), status("node1", None, true)),
        // No status at all, no address: nowhere.
        (pod("web-d", "web", &[]), None),
        // No status, but the pod object carries an address: not ready.
        (from_pod_status, None),
        // Ended pods are never endpoints.
        (pod("web-f", "web", &[]), failed),
    ];
    let ep = compute_endpoints(&svc, &pods);
    assert_eq!(ips(&ep.addresses), ["10.244.1.10"]);
    assert_eq!(ips(&ep.not_ready), ["10.244.1.2", "10.244.1.50"]);
    // Without a status the node comes from spec.nodeName.
    assert_eq!(ep.not_ready[1].node, "node1");
}

#[test]
fn target_ports_resolve_per_pod() {
    let svc = service(
        "web",
        &[("app", "web")],
        vec![
            port(
                Some("http"),
                Protocol::Tcp,
                80,
                Some(TargetPort::Name("http".into())),
            ),
            port(
                Some("metrics"),
                Protocol::Tcp,
                9100,
                Some(TargetPort::Number(9000)),
            ),
            port(
                Some("dns"),
                Protocol::Udp,
                53,
                Some(TargetPort::Name("dns".into())),
            ),
        ],
    );
    let pods = vec![
        // Serves http on 8080 and dns over UDP.
        (
            pod(
                "web-a",
                "web",
                &[("http", Protocol::Tcp, 8080), ("dns", Protocol::Udp, 5353)],
            ),
            status("node1", Some("10.244.1.2"), true),
        ),
        // Serves http on another number; its `dns` port is TCP, which does
        // not match the UDP service port.
        (
            pod(
                "web-b",
                "web",
                &[("http", Protocol::Tcp, 8081), ("dns", Protocol::Tcp, 53)],
            ),
            status("node1", Some("10.244.1.3"), true),
        ),
    ];
    let ep = compute_endpoints(&svc, &pods);
    let a = &ep.addresses[0];
    assert_eq!(
        a.ports,
        [
            EndpointPort {
                name: Some("http".into()),
                protocol: Protocol::Tcp,
                port: 8080
            },
            EndpointPort {
                name: Some("metrics".into()),
                protocol: Protocol::Tcp,
                port: 9000
            },
            EndpointPort {
                name: Some("dns".into()),
                protocol: Protocol::Udp,
                port: 5353
            },
        ]
    );
    let b = &ep.addresses[1];
    assert_eq!(
        b.ports,
        [
            EndpointPort {
                name: Some("http".into()),
                protocol: Protocol::Tcp,
                port: 8081
            },
            EndpointPort {
                name: Some("metrics".into()),
                protocol: Protocol::Tcp,
                port: 9000
            },
        ]
    );
}

#[test]
fn pod_with_no_resolvable_port_is_left_out() {
    let svc = service(
        "web",
        &[("app", "web")],
        vec![port(
            Some("http"),
            Protocol::Tcp,
            80,
            Some(TargetPort::Name("http".into())),
        )],
    );
    let pods = vec![
        (
            pod("web-a", "web", &[("http", Protocol::Tcp, 8080)]),
            status("node1", Some("10.244.1.2"), true),
        ),
        (
            pod("web-b", "web", &[("grpc", Protocol::Tcp, 9090)]),
            status("node1", Some("10.244.1.3"), true),
        ),
        (
            pod("web-c", "web", &[]),
            status("node1", Some("10.244.1.4"), false),
        ),
    ];
    let ep = compute_endpoints(&svc, &pods);
    assert_eq!(ips(&ep.addresses), ["10.244.1.2"]);
    assert!(ep.not_ready.is_empty());
}

#[test]
fn headless_without_ports_lists_pods_and_hostnames() {
    let mut svc = service("web", &[("app", "web")], vec![]);
    svc.spec.cluster_ip = ClusterIp::Headless;
    let mut a = pod("web-0", "web", &[]);
    a.spec.hostname = Some("web-0".into());
    a.spec.subdomain = Some("web".into());
    // A hostname under another subdomain is not this service's.
    let mut b = pod("web-1", "web", &[]);
    b.spec.hostname = Some("web-1".into());
    b.spec.subdomain = Some("other".into());
    let pods = vec![
        (a, status("node1", Some("10.244.1.2"), true)),
        (b, status("node2", Some("10.244.2.2"), true)),
    ];
    let ep = compute_endpoints(&svc, &pods);
    assert_eq!(ips(&ep.addresses), ["10.244.1.2", "10.244.2.2"]);
    assert_eq!(ep.addresses[0].hostname.as_deref(), Some("web-0"));
    assert_eq!(ep.addresses[1].hostname, None);
    assert!(ep.addresses.iter().all(|a| a.ports.is_empty()));
}

#[test]
fn equal_ips_sort_by_pod_name() {
    let svc = service(
        "web",
        &[("app", "web")],
        vec![port(None, Protocol::Tcp, 80, None)],
    );
    let pods = vec![
        (
            pod("web-b", "web", &[]),
            status("node1", Some("10.244.1.2"), true),
        ),
        (
            pod("web-a", "web", &[]),
            status("node1", Some("10.244.1.2"), true),
        ),
    ];
    let ep = compute_endpoints(&svc, &pods);
    assert_eq!(ep.addresses[0].pod, "web-a");
}
