//! Tests of the Service object: decoding, defaults, validation, round trips.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use crate::manifest::{emit_yaml, parse_manifests, Object};

const DNS: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
spec:
  selector:
    k8s-app: kube-dns
  clusterIP: 10.96.0.10
  ports:
  - name: dns
    port: 53
    protocol: UDP
    targetPort: 53
  - name: dns-tcp
    port: 53
    protocol: TCP
    targetPort: dns-tcp
  - name: metrics
    port: 9153
status:
  loadBalancer: {}     # ignored
";

fn service(text: &str) -> Service {
    match parse_manifests(text, "svc.yaml").unwrap().remove(0) {
        Object::Service(s) => s,
        other => panic!("not a service: {other:?}"),
    }
}

fn err(text: &str) -> String {
    parse_manifests(text, "svc.yaml").unwrap_err().to_string()
}

/// A minimal service manifest with `spec` as flow YAML.
fn svc(spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {spec}\n")
}

#[test]
fn parses_kube_dns() {
    let s = service(DNS);
    assert_eq!(s.key(), "services/kube-system/kube-dns");
    assert_eq!(s.namespaced_name(), "kube-system/kube-dns");
    assert_eq!(s.spec.type_, ServiceType::ClusterIp);
    assert_eq!(
        s.spec.cluster_ip,
        ClusterIp::Ip(Ipv4Addr::new(10, 96, 0, 10))
    );
    assert_eq!(s.spec.session_affinity, SessionAffinity::None);
    assert_eq!(s.spec.selector["k8s-app"], "kube-dns");
    let p = &s.spec.ports;
    assert_eq!(p.len(), 3);
    assert_eq!(p[0].protocol, Protocol::Udp);
    assert_eq!(p[0].target_port, Some(TargetPort::Number(53)));
    assert_eq!(p[1].target_port, Some(TargetPort::Name("dns-tcp".into())));
    assert_eq!(p[2].protocol, Protocol::Tcp);
    assert_eq!(p[2].target_port, None);
    assert_eq!(p[2].target(), TargetPort::Number(9153));
    assert!(!s.is_headless());
}

#[test]
fn cluster_ip_forms() {
    let ip = |v: &str| service(&svc(&format!("{{clusterIP: {v}, ports: [{{port: 80}}]}}")));
    assert_eq!(ip("\"\"").spec.cluster_ip, ClusterIp::Auto);
    assert_eq!(
        service(&svc("{ports: [{port: 80}]}")).spec.cluster_ip,
        ClusterIp::Auto
    );
    assert_eq!(ip("None").spec.cluster_ip, ClusterIp::Headless);
    assert!(ip("None").is_headless());
    assert_eq!(
        ip("10.96.5.5").spec.cluster_ip.ip(),
        Some(Ipv4Addr::new(10, 96, 5, 5))
    );
    let e = err(&svc("{clusterIP: 10.96.0.300, ports: [{port: 80}]}"));
    assert!(
        e.contains("spec.clusterIP: `10.96.0.300` is not valid"),
        "{e}"
    );
    assert!(e.contains("`None`"), "{e}");
    let e = err(&svc("{clusterIP: none, ports: [{port: 80}]}"));
    assert!(e.contains("spec.clusterIP"), "{e}");
}

#[test]
fn target_port_int_or_string() {
    let tp = |v: &str| {
        service(&svc(&format!("{{ports: [{{port: 80, targetPort: {v}}}]}}")))
            .spec
            .ports
            .remove(0)
            .target_port
    };
    assert_eq!(tp("8080"), Some(TargetPort::Number(8080)));
    assert_eq!(tp("http"), Some(TargetPort::Name("http".into())));
    // Zero and empty mean "same as port", as the API server defaults them.
    assert_eq!(tp("0"), None);
    assert_eq!(tp("\"\""), None);
    assert_eq!(tp("null"), None);
    let e = err(&svc("{ports: [{port: 80, targetPort: 70000}]}"));
    assert!(
        e.contains("spec.ports[0].targetPort: 70000 is out of range"),
        "{e}"
    );
    // A quoted number is a string, and not a valid port name (Kubernetes
    // rejects it the same way).
    let e = err(&svc("{ports: [{port: 80, targetPort: \"8080\"}]}"));
    assert!(
        e.contains("spec.ports[0].targetPort: `8080` is not valid: a port name"),
        "{e}"
    );
    let e = err(&svc("{ports: [{port: 80, targetPort: HTTP}]}"));
    assert!(e.contains("spec.ports[0].targetPort"), "{e}");
}

#[test]
fn types() {
    let e = err(&svc("{type: NodePort, ports: [{port: 80}]}"));
    assert!(e.contains("spec.type: `NodePort` is not supported"), "{e}");
    let e = err(&svc("{type: LoadBalancer, ports: [{port: 80}]}"));
    assert!(
        e.contains("spec.type: `LoadBalancer` is not supported"),
        "{e}"
    );
    let e = err(&svc("{type: Weird}"));
    assert!(e.contains("spec.type: unknown service type `Weird`"), "{e}");
    let s = service(&svc("{type: ExternalName, externalName: db.example.com.}"));
    assert_eq!(s.spec.type_, ServiceType::ExternalName);
    assert_eq!(s.spec.external_name.as_deref(), Some("db.example.com."));
    assert!(s.spec.ports.is_empty());
}

#[test]
fn external_name_rules() {
    let e = err(&svc("{type: ExternalName}"));
    assert!(
        e.ends_with("spec.externalName: is required for type ExternalName"),
        "{e}"
    );
    let e = err(&svc("{type: ExternalName, externalName: \"\"}"));
    assert!(e.contains("spec.externalName: is required"), "{e}");
    let e = err(&svc("{type: ExternalName, externalName: Not_A_Name}"));
    assert!(
        e.contains("spec.externalName: `Not_A_Name` is not valid"),
        "{e}"
    );
    let e = err(&svc(
        "{type: ExternalName, externalName: db.example.com, clusterIP: 10.96.0.5}",
    ));
    assert!(
        e.contains("spec.clusterIP: `10.96.0.5` is not valid: must not be set for ExternalName"),
        "{e}"
    );
    let e = err(&svc(
        "{type: ExternalName, externalName: db.example.com, sessionAffinity: ClientIP}",
    ));
    assert!(e.contains("spec.sessionAffinity"), "{e}");
}

#[test]
fn ports_required_unless_headless() {
    let e = err(&svc("{selector: {app: web}}"));
    assert!(
        e.ends_with("(Service default/web): spec.ports: is required unless the service is headless (clusterIP: None)"),
        "{e}"
    );
    let e = err(&svc("{ports: []}"));
    assert!(e.contains("spec.ports: is required"), "{e}");
    let s = service(&svc("{clusterIP: None, selector: {app: web}}"));
    assert!(s.is_headless() && s.spec.ports.is_empty());
}

#[test]
fn port_rules() {
    let e = err(&svc("{ports: [{port: 0}]}"));
    assert!(e.contains("spec.ports[0].port: 0 is out of range"), "{e}");
    let e = err(&svc("{ports: [{port: 65536}]}"));
    assert!(
        e.contains("spec.ports[0].port: 65536 is out of range"),
        "{e}"
    );
    let e = err(&svc("{ports: [{name: a, port: 80}, {port: 81}]}"));
    assert!(
        e.ends_with("spec.ports[1].name: is required when a service has more than one port"),
        "{e}"
    );
    let e = err(&svc("{ports: [{name: a, port: 80}, {name: a, port: 81}]}"));
    assert!(
        e.ends_with("spec.ports[1].name: `a` appears more than once"),
        "{e}"
    );
    let e = err(&svc("{ports: [{name: Web, port: 80}]}"));
    assert!(
        e.contains("spec.ports[0].name: `Web` is not valid: a port name"),
        "{e}"
    );
    let e = err(&svc("{ports: [{name: a, port: 80}, {name: b, port: 80}]}"));
    assert!(
        e.ends_with("spec.ports[1]: `80/TCP` appears more than once"),
        "{e}"
    );
    // The same number over two protocols is fine (DNS).
    service(&svc(
        "{ports: [{name: a, port: 53, protocol: UDP}, {name: b, port: 53}]}",
    ));
    // One port may stay unnamed; an empty name is no name.
    assert_eq!(
        service(&svc("{ports: [{name: \"\", port: 80}]}"))
            .spec
            .ports[0]
            .name,
        None
    );
    let e = err(&svc("{ports: [{port: 80, protocol: SCTP}]}"));
    assert!(e.contains("protocol: unknown variant `SCTP`"), "{e}");
}

#[test]
fn names_and_labels() {
    // Service names are DNS-1035 labels: no leading digit, no dots.
    let e =
        err("apiVersion: v1\nkind: Service\nmetadata: {name: 1web}\nspec: {ports: [{port: 80}]}\n");
    assert!(
        e.contains("metadata.name: `1web` is not valid: a DNS-1035"),
        "{e}"
    );
    let e = err(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web.a}\nspec: {ports: [{port: 80}]}\n",
    );
    assert!(e.contains("metadata.name"), "{e}");
    let e = err(&svc("{ports: [{port: 80}], selector: {\"bad key\": x}}"));
    assert!(
        e.contains("spec.selector: `bad key` is not valid: a label key"),
        "{e}"
    );
    let e = err(&svc("{ports: [{port: 80}], selector: {app: \"-x\"}}"));
    assert!(
        e.contains("spec.selector[app]: `-x` is not valid: a label value"),
        "{e}"
    );
    let e = err("apiVersion: v1\nkind: Service\nmetadata: {name: w, labels: {\"a/b/c\": x}}\nspec: {ports: [{port: 80}]}\n");
    assert!(e.contains("metadata.labels: `a/b/c`"), "{e}");
    service(&svc(
        "{ports: [{port: 80}], selector: {app.kubernetes.io/name: web, tier: \"\"}}",
    ));
}

#[test]
fn session_affinity() {
    let s = service(&svc("{ports: [{port: 80}], sessionAffinity: ClientIP}"));
    assert_eq!(s.spec.session_affinity, SessionAffinity::ClientIp);
    let e = err(&svc("{clusterIP: None, sessionAffinity: ClientIP}"));
    assert!(
        e.contains("spec.sessionAffinity: `ClientIP` is not valid: must be None when spec.clusterIP is None"),
        "{e}"
    );
    let e = err(&svc("{ports: [{port: 80}], sessionAffinity: Sticky}"));
    assert!(
        e.contains("sessionAffinity: unknown variant `Sticky`"),
        "{e}"
    );
}

#[test]
fn api_version_and_kind_list() {
    let e = err("apiVersion: apps/v1\nkind: Service\nmetadata: {name: a}\n");
    assert!(
        e.contains("kind Service does not support apiVersion `apps/v1`"),
        "{e}"
    );
}

#[test]
fn yaml_and_json_round_trip() {
    let texts = [
        DNS.to_string(),
        svc("{ports: [{port: 80, targetPort: http}], selector: {app: web}, sessionAffinity: ClientIP}"),
        svc("{clusterIP: None, selector: {app: web}}"),
        svc("{type: ExternalName, externalName: db.example.com}"),
    ];
    for text in texts {
        let objs = parse_manifests(&text, "f").unwrap();
        let yaml = emit_yaml(&objs).unwrap();
        assert!(
            yaml.starts_with("apiVersion: v1\nkind: Service\n"),
            "{yaml}"
        );
        assert_eq!(parse_manifests(&yaml, "emitted").unwrap(), objs, "{yaml}");
        let json = objs[0].to_json().unwrap();
        assert_eq!(Object::from_json(&json, "k").unwrap(), objs[0]);
    }
    // The emitted forms are Kubernetes' own.
    let yaml = emit_yaml(&parse_manifests(DNS, "f").unwrap()).unwrap();
    assert!(yaml.contains("clusterIP: 10.96.0.10"), "{yaml}");
    assert!(yaml.contains("targetPort: dns-tcp"), "{yaml}");
    assert!(yaml.contains("targetPort: 53"), "{yaml}");
    assert!(yaml.contains("type: ClusterIP"), "{yaml}");
    let headless = emit_yaml(&parse_manifests(&svc("{clusterIP: None}"), "f").unwrap()).unwrap();
    assert!(headless.contains("clusterIP: None"), "{headless}");
    let auto = emit_yaml(&parse_manifests(&svc("{ports: [{port: 1}]}"), "f").unwrap()).unwrap();
    assert!(!auto.contains("clusterIP"), "{auto}");
}

#[test]
fn from_json_validates_services() {
    let bad = br#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"web"},"spec":{}}"#;
    let e = Object::from_json(bad, "services/default/web")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("services/default/web") && e.contains("spec.ports"),
        "{e}"
    );
}

#[test]
fn service_object_accessors() {
    let obj = parse_manifests(DNS, "f").unwrap().remove(0);
    assert_eq!(obj.kind(), "Service");
    assert_eq!(obj.namespace(), "kube-system");
    assert_eq!(obj.key(), "services/kube-system/kube-dns");
    assert_eq!(obj.display_name(), "Service kube-system/kube-dns");
    assert_eq!(service_key("a", "b"), "services/a/b");
}
