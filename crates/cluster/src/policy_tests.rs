//! Tests of NetworkPolicy decoding, validation, defaulting, peer matching
//! and port resolution.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use crate::manifest::{parse_manifests, ManifestError, Object};

fn policy(yaml: &str) -> NetworkPolicy {
    match parse_manifests(yaml, "test").unwrap().remove(0) {
        Object::NetworkPolicy(p) => p,
        other => panic!("not a policy: {other:?}"),
    }
}

fn error(yaml: &str) -> String {
    parse_manifests(yaml, "test").unwrap_err().to_string()
}

/// The field an `Invalid` manifest error names.
fn invalid_field(yaml: &str) -> String {
    match parse_manifests(yaml, "test").unwrap_err() {
        ManifestError::Invalid { error, .. } => error.field,
        other => panic!("not a field error: {other}"),
    }
}

const HEAD: &str =
    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: x\n";

fn with_spec(spec: &str) -> String {
    format!("{HEAD}spec:\n{spec}")
}

const FULL: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: full
  namespace: x
spec:
  podSelector:
    matchLabels: {pod: a}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector:
        matchLabels: {ns: y}
      podSelector:
        matchExpressions:
        - {key: pod, operator: In, values: [b, c]}
    - podSelector: {}
    - ipBlock:
        cidr: 10.0.0.0/8
        except: [10.1.0.0/16]
    ports:
    - port: 80
    - port: http
      protocol: TCP
    - protocol: UDP
      port: 8000
      endPort: 8100
  egress:
  - to:
    - namespaceSelector: {}
    ports:
    - protocol: SCTP
";

#[test]
fn full_spec_decodes_and_round_trips() {
    let p = policy(FULL);
    assert_eq!(p.key(), "networkpolicies/x/full");
    let rule = &p.spec.ingress[0];
    assert_eq!(rule.from.len(), 3);
    assert!(rule.from[0].pod_selector.is_some() && rule.from[0].namespace_selector.is_some());
    assert_eq!(rule.from[1].pod_selector, Some(LabelSelector::default()));
    assert_eq!(rule.from[1].namespace_selector, None);
    let block = rule.from[2].ip_block.as_ref().unwrap();
    assert_eq!(block.cidr.to_string(), "10.0.0.0/8");
    assert_eq!(rule.ports[0].port, Some(PolicyPortRef::Number(80)));
    assert_eq!(rule.ports[0].protocol, PolicyProtocol::Tcp);
    assert_eq!(rule.ports[1].port, Some(PolicyPortRef::Name("http".into())));
    assert_eq!(rule.ports[2].end_port, Some(8100));
    assert_eq!(p.spec.egress[0].ports[0].protocol, PolicyProtocol::Sctp);
    assert_eq!(p.spec.egress[0].ports[0].port, None);

    let obj = Object::NetworkPolicy(p.clone());
    let yaml = obj.to_yaml().unwrap();
    assert!(yaml.starts_with("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"));
    assert_eq!(policy(&yaml), p, "{yaml}");
    let json = obj.to_json().unwrap();
    assert_eq!(Object::from_json(&json, "k").unwrap(), obj);
}

#[test]
fn empty_selector_and_absent_selector_stay_apart() {
    // `podSelector: {}` in a peer is "every pod of this namespace"; absent
    // with a namespaceSelector is "every pod of those namespaces".
    let p = policy(&with_spec(
        "  ingress:\n  - from:\n    - namespaceSelector: {}\n",
    ));
    let peer = &p.spec.ingress[0].from[0];
    assert_eq!(peer.pod_selector, None);
    let yaml = Object::NetworkPolicy(p.clone()).to_yaml().unwrap();
    assert!(yaml.contains("namespaceSelector: {}"), "{yaml}");
    let back = policy(&yaml);
    assert_eq!(back.spec.ingress[0].from[0].pod_selector, None);
    assert_eq!(back, p, "{yaml}");
}

#[test]
fn policy_types_defaulting() {
    let ingress_only = policy(&with_spec("  podSelector: {}\n"));
    assert_eq!(ingress_only.policy_types(), vec![PolicyType::Ingress]);
    assert!(ingress_only.rules(PolicyType::Ingress).is_empty());
    // An egress rule adds Egress.
    let both = policy(&with_spec("  egress:\n  - {}\n"));
    assert_eq!(
        both.policy_types(),
        vec![PolicyType::Ingress, PolicyType::Egress]
    );
    assert_eq!(both.rules(PolicyType::Egress).len(), 1);
    // An empty egress list does not (the API's `len(egress) != 0`).
    let empty = policy(&with_spec("  egress: []\n"));
    assert_eq!(empty.policy_types(), vec![PolicyType::Ingress]);
    // An explicit list is kept: egress-only, even with ingress rules.
    let egress_only = policy(&with_spec("  policyTypes: [Egress]\n  ingress:\n  - {}\n"));
    assert_eq!(egress_only.policy_types(), vec![PolicyType::Egress]);
    assert!(egress_only.rules(PolicyType::Ingress).is_empty());
    // Defaults are written by apply_defaults.
    let mut p = both.clone();
    p.apply_defaults();
    assert_eq!(
        p.spec.policy_types,
        vec![PolicyType::Ingress, PolicyType::Egress]
    );
}

#[test]
fn validation_errors_name_the_field() {
    let cases = [
        (
            "  ingress:\n  - from:\n    - podSelector: {}\n    - ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}\n",
            "spec.ingress[0].from[1].ipBlock.except[0]",
        ),
        (
            "  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}\n",
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        (
            "  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}\n",
            "spec.ingress[0].from[0]",
        ),
        ("  egress:\n  - to:\n    - {}\n", "spec.egress[0].to[0]"),
        (
            "  ingress:\n  - ports:\n    - {port: http, endPort: 90}\n",
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            "  ingress:\n  - ports:\n    - {endPort: 90}\n",
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            "  ingress:\n  - ports:\n    - {port: 90, endPort: 80}\n",
            "spec.ingress[0].ports[0].endPort",
        ),
        (
            "  ingress:\n  - ports:\n    - {port: 0}\n",
            "spec.ingress[0].ports[0].port",
        ),
        (
            "  egress:\n  - ports:\n    - {port: 80}\n    - {port: Not_A_Name}\n",
            "spec.egress[0].ports[1].port",
        ),
        (
            "  podSelector:\n    matchExpressions:\n    - {key: a, operator: In}\n",
            "spec.podSelector.matchExpressions[0].values",
        ),
        (
            "  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions:\n        - {key: a, operator: DoesNotExist, values: [x]}\n",
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values",
        ),
        (
            "  policyTypes: [Ingress, Egress, Ingress]\n",
            "spec.policyTypes",
        ),
    ];
    for (spec, field) in cases {
        assert_eq!(invalid_field(&with_spec(spec)), field, "{spec}");
    }
}

#[test]
fn decode_errors_name_the_field() {
    let e = error(&with_spec(
        "  ingress:\n  - from:\n    - podSelector: {}\n    - ipBlock: {cidr: 10.0.0.1/8}\n",
    ));
    assert!(e.contains("spec.ingress[0].from[1].ipBlock.cidr"), "{e}");
    assert!(e.contains("10.0.0.0/8"), "{e}");
    let e = error(&with_spec(
        "  ingress:\n  - from:\n    - ipBlock: {cidr: fd00::/8}\n",
    ));
    assert!(e.contains("spec.ingress[0].from[0].ipBlock.cidr"), "{e}");
    let e = error(&with_spec(
        "  ingress:\n  - ports:\n    - {protocol: ICMP}\n",
    ));
    assert!(e.contains("spec.ingress[0].ports[0].protocol"), "{e}");
    assert!(e.contains("TCP, UDP or SCTP"), "{e}");
    let e = error(&with_spec("  ingress:\n  - ports:\n    - {port: 70000}\n"));
    assert!(e.contains("spec.ingress[0].ports[0].port"), "{e}");
    let e = error(&with_spec("  policyTypes: [Sideways]\n"));
    assert!(e.contains("spec.policyTypes"), "{e}");
    let e = error(&HEAD.replace("networking.k8s.io/v1", "v1"));
    assert!(e.contains("use `networking.k8s.io/v1`"), "{e}");
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn peers_and_or_semantics() {
    let p = policy(FULL);
    let peers = &p.spec.ingress[0].from;
    let ns_y = labels(&[("ns", "y")]);
    let ns_x = labels(&[("ns", "x")]);
    let b = labels(&[("pod", "b")]);
    let a = labels(&[("pod", "a")]);
    let pod = |namespace, labels, namespace_labels| PodRef {
        namespace,
        labels,
        namespace_labels,
    };
    let ip = Ipv4Addr::new(192, 168, 1, 1);
    // Peer 0: namespaceSelector AND podSelector.
    assert!(peers[0].matches("x", ip, Some(pod("y", &b, &ns_y))));
    assert!(!peers[0].matches("x", ip, Some(pod("y", &a, &ns_y))));
    assert!(!peers[0].matches("x", ip, Some(pod("x", &b, &ns_x))));
    // Peer 1: podSelector {} alone: every pod of the policy's namespace only.
    assert!(peers[1].matches("x", ip, Some(pod("x", &a, &ns_x))));
    assert!(!peers[1].matches("x", ip, Some(pod("y", &a, &ns_y))));
    assert!(!peers[1].matches("x", ip, None));
    // Peer 2: ipBlock with except, by address, pod or not.
    assert!(peers[2].matches("x", Ipv4Addr::new(10, 2, 0, 1), None));
    assert!(!peers[2].matches("x", Ipv4Addr::new(10, 1, 0, 1), None));
    assert!(!peers[2].matches("x", ip, Some(pod("x", &a, &ns_x))));
    // namespaceSelector {} alone: every pod of every namespace.
    let any_ns = &p.spec.egress[0].to[0];
    assert!(any_ns.matches("x", ip, Some(pod("y", &a, &ns_y))));
    assert!(!any_ns.matches("x", ip, None));
    // The policy selects pod=a in x only.
    assert!(p.selects("x", &a));
    assert!(!p.selects("y", &a));
    assert!(!p.selects("x", &b));
}

const DEST: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: dest, namespace: x}
spec:
  containers:
  - name: web
    ports:
    - {name: http, containerPort: 8080}
    - {name: dns, containerPort: 5353, protocol: UDP}
  - name: side
    ports:
    - {name: metrics, containerPort: 9090}
";

#[test]
fn named_ports_resolve_per_destination_pod() {
    let Object::Pod(dest) = parse_manifests(DEST, "t").unwrap().remove(0) else {
        panic!()
    };
    let port = |yaml: &str| -> NetworkPolicyPort { serde_yaml::from_str(yaml).unwrap() };
    let range = |protocol, first, last| PortRange {
        protocol,
        first,
        last,
    };
    use PolicyProtocol::*;
    assert_eq!(
        port("port: http").resolve(Some(&dest)),
        Some(range(Tcp, 8080, 8080))
    );
    assert_eq!(
        port("port: metrics").resolve(Some(&dest)),
        Some(range(Tcp, 9090, 9090))
    );
    assert_eq!(
        port("{port: dns, protocol: UDP}").resolve(Some(&dest)),
        Some(range(Udp, 5353, 5353))
    );
    // The name with another protocol, an unknown name, no pod: nothing.
    assert_eq!(port("port: dns").resolve(Some(&dest)), None);
    assert_eq!(
        port("{port: http, protocol: UDP}").resolve(Some(&dest)),
        None
    );
    assert_eq!(port("port: nope").resolve(Some(&dest)), None);
    assert_eq!(port("port: http").resolve(None), None);
    // Numbers and ranges need no pod; absent port is every port.
    assert_eq!(port("port: 80").resolve(None), Some(range(Tcp, 80, 80)));
    assert_eq!(
        port("{port: 80, endPort: 90, protocol: UDP}").resolve(None),
        Some(range(Udp, 80, 90))
    );
    assert_eq!(
        port("protocol: SCTP").resolve(None),
        Some(range(Sctp, 0, 65535))
    );

    let ports = vec![port("port: http"), port("{port: 53, protocol: UDP}")];
    assert!(ports_allow(&ports, Some(&dest), Tcp, 8080));
    assert!(!ports_allow(&ports, Some(&dest), Tcp, 80));
    assert!(ports_allow(&ports, Some(&dest), Udp, 53));
    assert!(!ports_allow(&ports, Some(&dest), Tcp, 53));
    assert!(!ports_allow(&ports, None, Tcp, 8080));
    assert!(ports_allow(&[], None, Sctp, 1));
    let r = port("{port: 80, endPort: 90}").resolve(None).unwrap();
    assert!(r.contains(Tcp, 80) && r.contains(Tcp, 90) && !r.contains(Tcp, 91));
    assert!(!r.contains(Udp, 85));
}
