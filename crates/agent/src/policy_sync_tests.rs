//! The policy compiler over hand-built cluster states, and a differential test
//! against the cluster crate's interpreter.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use tapestry_cluster::manifest::parse_manifests;
use tapestry_cluster::{ports_allow, Object, PodRunStatus};
use tapestry_dataplane::wire::ipv4::IpProtocol;
use tapestry_dataplane::PolicyDirection;

use super::*;

const ME: &str = "node1";

/// The pods every test starts from: namespaces `x` (team=blue) and `y`
/// (team=red); pods on node1 (local) and node2.
const PODS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: blue}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {team: red}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec:
  nodeName: node1
  containers:
  - name: web
    command: [web]
    ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 5353, protocol: UDP}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: client}}
spec:
  nodeName: node2
  containers:
  - name: web
    command: [web]
    ports: [{name: http, containerPort: 9090}]
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {app: client}}
spec:
  nodeName: node1
  containers:
  - {name: sh, command: [sh]}
---
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: y, labels: {app: web}}
spec:
  nodeName: node2
  containers:
  - name: web
    command: [web]
    ports: [{name: http, containerPort: 8080}]
";

const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const C: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const D: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn add(state: &mut ClusterState, yaml: &str) {
    for obj in parse_manifests(yaml, "test").unwrap() {
        match obj {
            Object::Pod(p) => {
                let key = format!("{}/{}", p.metadata.namespace, p.metadata.name);
                state.pods.insert(key, p);
            }
            Object::Namespace(n) => {
                state.namespaces.insert(n.metadata.name.clone(), n);
            }
            Object::NetworkPolicy(mut p) => {
                p.apply_defaults();
                state
                    .network_policies
                    .insert(p.key()["networkpolicies/".len()..].into(), p);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn status(node: &str, ip: Ipv4Addr) -> PodRunStatus {
    PodRunStatus {
        node: node.into(),
        pod_ip: Some(ip),
        phase: "Running".into(),
        ready: true,
        message: String::new(),
    }
}

/// [`PODS`] with addresses, and `policies`.
fn cluster(policies: &str) -> ClusterState {
    let mut state = ClusterState::default();
    add(&mut state, PODS);
    for (key, node, ip) in [
        ("x/a", "node1", A),
        ("x/b", "node2", B),
        ("y/c", "node1", C),
        ("y/d", "node2", D),
    ] {
        state.pod_status.insert(key.into(), status(node, ip));
    }
    if !policies.is_empty() {
        add(&mut state, policies);
    }
    state
}

fn compiled(state: &ClusterState) -> Vec<PodPolicy> {
    compile(
        ME,
        state,
        &mut PolicyIds::default(),
        &PolicyCounters::default(),
    )
}

fn table(state: &ClusterState) -> PolicyTable {
    PolicyTable::build(&compiled(state)).unwrap()
}

fn proto_number(p: PolicyProtocol) -> u8 {
    match p {
        PolicyProtocol::Tcp => 6,
        PolicyProtocol::Udp => 17,
        PolicyProtocol::Sctp => 132,
    }
}

/// Whether the table lets `pod` talk with `remote` in `dir` on TCP `port`.
fn tcp(t: &PolicyTable, dir: PolicyDirection, pod: Ipv4Addr, remote: Ipv4Addr, port: u16) -> bool {
    allows(t, dir, pod, remote, PolicyProtocol::Tcp, port)
}

fn allows(
    t: &PolicyTable,
    dir: PolicyDirection,
    pod: Ipv4Addr,
    remote: Ipv4Addr,
    proto: PolicyProtocol,
    port: u16,
) -> bool {
    t.allows(
        dir,
        pod,
        remote,
        IpProtocol::from(proto_number(proto)),
        Some(port),
    )
    .is_ok()
}

use PolicyDirection::{Egress as Out, Ingress as In};

fn host_block(ip: Ipv4Addr) -> IpBlock {
    IpBlock::new(Ipv4Cidr::new(ip, 32).unwrap())
}

fn tcp_port(first: u16, last: u16) -> PolicyPort {
    PolicyPort {
        protocol: PortProtocol::Tcp,
        first,
        last,
    }
}

#[test]
fn no_policy_compiles_to_nothing() {
    assert!(compiled(&cluster("")).is_empty());
}

#[test]
fn default_deny_ingress_selects_only_its_namespace() {
    let state = cluster(
        "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}
",
    );
    let pods = compiled(&state);
    // Only a: c is local but in y; b is in x but not local.
    assert_eq!(
        pods,
        [PodPolicy {
            pod: A,
            ingress: Some(RuleSetSpec {
                policies: vec![PolicyId(0)],
                rules: vec![],
            }),
            egress: None,
        }]
    );
    let t = table(&state);
    assert!(!tcp(&t, In, A, C, 80));
    assert!(tcp(&t, Out, A, C, 80), "egress stays open");
    assert!(tcp(&t, In, C, A, 80), "y is not selected");
}

#[test]
fn default_deny_egress() {
    let state = cluster(
        "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-out, namespace: y}
spec: {podSelector: {}, policyTypes: [Egress]}
",
    );
    let pods = compiled(&state);
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].pod, C);
    assert!(pods[0].ingress.is_none());
    assert_eq!(pods[0].egress.as_ref().unwrap().rules, []);
    let t = table(&state);
    assert!(!tcp(&t, Out, C, A, 80));
    assert!(!tcp(&t, Out, C, OUTSIDE, 443));
    assert!(tcp(&t, In, C, A, 80));
}

#[test]
fn namespace_label_selects_pods_of_every_node() {
    let state = cluster(
        "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-blue, namespace: y}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]
",
    );
    let pods = compiled(&state);
    let rules = &pods[0].ingress.as_ref().unwrap().rules;
    assert_eq!(
        rules,
        &[PolicyRule {
            peers: PolicyPeers::Blocks(vec![host_block(A), host_block(B)]),
            ports: PolicyPorts::Any,
        }]
    );
    let t = table(&state);
    assert!(tcp(&t, In, C, B, 1), "b is on another node");
    assert!(!tcp(&t, In, C, D, 1), "d is in y");
}

#[test]
fn a_namespace_label_change_moves_the_peers() {
    let policy = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-blue, namespace: y}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]
";
    let mut state = cluster(policy);
    let t = table(&state);
    assert!(tcp(&t, In, C, A, 80));
    state
        .namespaces
        .get_mut("x")
        .unwrap()
        .metadata
        .labels
        .insert("team".into(), "green".into());
    let t = table(&state);
    assert!(!tcp(&t, In, C, A, 80));
    assert!(!tcp(&t, In, C, B, 80));
}

#[test]
fn pod_label_selects_in_the_policy_namespace_only() {
    let state = cluster(
        "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-clients, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
",
    );
    let t = table(&state);
    assert!(tcp(&t, In, A, B, 80), "b: a client in x");
    assert!(!tcp(&t, In, A, C, 80), "c: a client, but in y");
}

#[test]
fn both_selectors_in_one_peer_are_anded_separate_peers_ored() {
    let and = cluster(
        "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: and, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - {namespaceSelector: {matchLabels: {team: red}}, podSelector: {matchLabels: {app: client}}}
",
    );
    let t = table(&and);
    assert!(tcp(&t, In, A, C, 80), "a client in a red namespace");
    assert!(!tcp(&t, In, A, D, 80), "red but not a client");
    assert!(!tcp(&t, In, A, B, 80), "a client but blue");
    let or = cluster(
        "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: or, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - {namespaceSelector: {matchLabels: {team: red}}}
    - {podSelector: {matchLabels: {app: client}}}
",
    );
    let t = table(&or);
    assert!(tcp(&t, In, A, C, 80));
    assert!(tcp(&t, In, A, D, 80), "any pod of a red namespace");
    assert!(tcp(&t, In, A, B, 80), "a client of x");
    assert!(!tcp(&t, In, A, OUTSIDE, 80));
}

#[test]
fn named_ports_resolve_on_the_local_pod_for_ingress() {
    let state = cluster(
        "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: http-in, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http}, {port: dns, protocol: UDP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: http-in, namespace: y}
spec:
  podSelector: {}
  ingress: [{ports: [{port: http}]}]
",
    );
    let pods = compiled(&state);
    let a = pods.iter().find(|p| p.pod == A).unwrap();
    assert_eq!(
        a.ingress.as_ref().unwrap().rules,
        [PolicyRule {
            peers: PolicyPeers::Any,
            ports: PolicyPorts::List(vec![
                tcp_port(8080, 8080),
                PolicyPort {
                    protocol: PortProtocol::Udp,
                    first: 5353,
                    last: 5353
                }
            ]),
        }]
    );
    // c has no port named http: the rule matches nothing there.
    let c = pods.iter().find(|p| p.pod == C).unwrap();
    assert_eq!(c.ingress.as_ref().unwrap().rules, []);
    let t = table(&state);
    assert!(tcp(&t, In, A, B, 8080));
    assert!(!tcp(&t, In, A, B, 9090));
    assert!(!tcp(&t, In, C, A, 8080));
}

#[test]
fn named_ports_resolve_per_destination_pod_for_egress() {
    let state = cluster(
        "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: http-out, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}, {port: 53, protocol: UDP}]}]
",
    );
    let pods = compiled(&state);
    assert_eq!(pods.len(), 1);
    let rules = &pods[0].egress.as_ref().unwrap().rules;
    assert_eq!(
        rules,
        &[
            PolicyRule {
                peers: PolicyPeers::Any,
                ports: PolicyPorts::List(vec![PolicyPort {
                    protocol: PortProtocol::Udp,
                    first: 53,
                    last: 53
                }]),
            },
            // a and d name 8080 `http`, b names 9090; c has none.
            PolicyRule {
                peers: PolicyPeers::Blocks(vec![host_block(A), host_block(D)]),
                ports: PolicyPorts::List(vec![tcp_port(8080, 8080)]),
            },
            PolicyRule {
                peers: PolicyPeers::Blocks(vec![host_block(B)]),
                ports: PolicyPorts::List(vec![tcp_port(9090, 9090)]),
            },
        ]
    );
    let t = table(&state);
    assert!(tcp(&t, Out, C, A, 8080));
    assert!(!tcp(&t, Out, C, A, 9090));
    assert!(tcp(&t, Out, C, B, 9090));
    assert!(!tcp(&t, Out, C, B, 8080));
    assert!(
        !tcp(&t, Out, C, OUTSIDE, 8080),
        "a name resolves on pods only"
    );
    assert!(allows(&t, Out, C, OUTSIDE, PolicyProtocol::Udp, 53));
}

#[test]
fn end_port_is_a_range() {
    let state = cluster(
        "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 8000, endPort: 8100}]}]
",
    );
    let pods = compiled(&state);
    assert_eq!(
        pods[0].ingress.as_ref().unwrap().rules[0].ports,
        PolicyPorts::List(vec![tcp_port(8000, 8100)])
    );
    let t = table(&state);
    assert!(!tcp(&t, In, A, B, 7999));
    assert!(tcp(&t, In, A, B, 8000));
    assert!(tcp(&t, In, A, B, 8100));
    assert!(!tcp(&t, In, A, B, 8101));
}

#[test]
fn ip_block_with_except() {
    let state = cluster(
        "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: block, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.2.0/24]}}]}]
",
    );
    let pods = compiled(&state);
    assert_eq!(
        pods[0].egress.as_ref().unwrap().rules[0].peers,
        PolicyPeers::Blocks(vec![IpBlock {
            cidr: "10.244.0.0/16".parse().unwrap(),
            except: vec!["10.244.2.0/24".parse().unwrap()],
        }])
    );
    let t = table(&state);
    assert!(tcp(&t, Out, C, A, 80));
    assert!(!tcp(&t, Out, C, B, 80), "in the except");
    assert!(!tcp(&t, Out, C, OUTSIDE, 80), "outside the cidr");
}

#[test]
fn a_udp_rule_does_not_open_tcp() {
    let state = cluster(
        "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: udp, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 80, protocol: UDP}]}]
",
    );
    let t = table(&state);
    assert!(allows(&t, In, A, C, PolicyProtocol::Udp, 80));
    assert!(!allows(&t, In, A, C, PolicyProtocol::Tcp, 80));
    assert!(!allows(&t, In, A, C, PolicyProtocol::Sctp, 80));
}

#[test]
fn stacked_policies_are_a_union() {
    let state = cluster(
        "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: one, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: two, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: red}}}], ports: [{port: 81}]}]
",
    );
    let pods = compiled(&state);
    let spec = pods[0].ingress.as_ref().unwrap();
    assert_eq!(spec.policies, [PolicyId(0), PolicyId(1)]);
    assert_eq!(spec.rules.len(), 2);
    let t = table(&state);
    assert!(tcp(&t, In, A, B, 80));
    assert!(!tcp(&t, In, A, B, 81));
    assert!(tcp(&t, In, A, C, 81));
    assert!(!tcp(&t, In, A, C, 80));
}

#[test]
fn peers_that_match_no_pod_match_nothing() {
    let state = cluster(
        "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: nobody, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {matchLabels: {app: nobody}}}]}]
  egress: [{to: [{namespaceSelector: {matchLabels: {team: none}}}], ports: [{port: http}]}]
",
    );
    let pods = compiled(&state);
    assert_eq!(pods[0].ingress.as_ref().unwrap().rules, []);
    assert_eq!(pods[0].egress.as_ref().unwrap().rules, []);
    let t = table(&state);
    for remote in [B, C, D, OUTSIDE] {
        assert!(!tcp(&t, In, A, remote, 80));
        assert!(!tcp(&t, Out, A, remote, 8080));
    }
}

#[test]
fn pods_without_an_address_or_terminated_are_no_peers() {
    let mut state = cluster(
        "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-clients, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
",
    );
    state.pod_status.get_mut("x/b").unwrap().phase = "Failed".into();
    let pods = compiled(&state);
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].ingress.as_ref().unwrap().rules, []);
    // a loses its address: no local pod is left to compile for.
    state.pod_status.get_mut("x/a").unwrap().pod_ip = None;
    assert!(compiled(&state).is_empty());
}

#[test]
fn ids_stay_with_their_policy_and_names_count_since_assignment() {
    let deny = |ns: &str, name: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: {name}, namespace: {ns}}}\nspec: {{podSelector: {{}}}}\n"
        )
    };
    let counters = PolicyCounters::default();
    let mut ids = PolicyIds::default();
    let mut state = cluster(&deny("x", "m"));
    compile(ME, &state, &mut ids, &counters);
    assert_eq!(ids.get("x/m"), Some(PolicyId(0)));
    // A policy sorting before it does not renumber it.
    add(&mut state, &deny("x", "a"));
    compile(ME, &state, &mut ids, &counters);
    assert_eq!(ids.get("x/m"), Some(PolicyId(0)));
    assert_eq!(ids.get("x/a"), Some(PolicyId(1)));
    // A policy selecting no local pod gets no id.
    add(&mut state, &deny("z", "far"));
    compile(ME, &state, &mut ids, &counters);
    assert_eq!(ids.get("z/far"), None);
    assert_eq!(
        ids.names()
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.id))
            .collect::<Vec<_>>(),
        [("x/a", PolicyId(1)), ("x/m", PolicyId(0))]
    );
    // Deleted: the id is released, and not handed out again at once.
    state.network_policies.remove("x/m");
    ids.retain(|k| state.network_policies.contains_key(k));
    assert_eq!(ids.get("x/m"), None);
    add(&mut state, &deny("x", "n"));
    compile(ME, &state, &mut ids, &counters);
    assert_eq!(ids.get("x/n"), Some(PolicyId(2)));
}

/// Denial counts set by hand (the pipeline's counters count only packets).
#[derive(Default)]
struct Counts(std::cell::RefCell<BTreeMap<u16, u64>>);

impl DenialCounts for Counts {
    fn denied(&self, id: PolicyId) -> u64 {
        self.0.borrow().get(&id.0).copied().unwrap_or(0)
    }
}

#[test]
fn a_policy_counts_denials_since_it_got_its_id() {
    let counts = Counts::default();
    // Id 0 counted 5 denials for an earlier policy.
    counts.0.borrow_mut().insert(0, 5);
    let mut ids = PolicyIds::default();
    assert_eq!(ids.id("x/a", &counts), PolicyId(0));
    assert_eq!(ids.names().denials(&counts), [("x/a".to_owned(), 0)]);
    counts.0.borrow_mut().insert(0, 8);
    assert_eq!(ids.names().denials(&counts), [("x/a".to_owned(), 3)]);
    // Released, then the ids after it are handed out before it again.
    ids.retain(|_| false);
    assert_eq!(ids.id("x/b", &counts), PolicyId(1));
    assert_eq!(ids.names().denials(&counts), [("x/b".to_owned(), 0)]);
}

#[test]
fn policies_beyond_the_id_space_share_the_overflow_id() {
    let counts = Counts::default();
    let mut ids = PolicyIds::default();
    for i in 0..OVERFLOW_ID.0 {
        assert_eq!(ids.id(&format!("x/p{i:04}"), &counts), PolicyId(i));
    }
    assert_eq!(ids.id("x/q1", &counts), OVERFLOW_ID);
    assert_eq!(ids.id("x/q2", &counts), OVERFLOW_ID);
    let names = ids.names();
    assert_eq!(names.entries.len(), usize::from(OVERFLOW_ID.0) + 1);
    assert_eq!(names.entries.last().unwrap().name, OVERFLOW_NAME);
    // One released: the next policy takes its id, wrapping round.
    ids.retain(|k| k != "x/p0007");
    assert_eq!(ids.id("x/r", &counts), PolicyId(7));
}

fn handles() -> PolicyHandles {
    PolicyHandles {
        table: Arc::new(ArcSwap::from_pointee(PolicyTable::empty())),
        counters: Arc::new(PolicyCounters::default()),
        names: Arc::new(ArcSwap::from_pointee(PolicyNames::default())),
        coverage: Arc::new(PolicyCoverage::default()),
    }
}

#[test]
fn only_a_change_of_rules_publishes_a_new_table() {
    let handles = handles();
    let mut ids = PolicyIds::default();
    let mut state = cluster(
        "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-clients, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
",
    );
    let first = match reconcile(ME, &state, &mut ids, &handles).unwrap() {
        Reconciled::Published { generation, pods } => {
            assert_eq!(pods, 1);
            generation
        }
        Reconciled::Unchanged => panic!("expected a table"),
    };
    assert_eq!(
        reconcile(ME, &state, &mut ids, &handles).unwrap(),
        Reconciled::Unchanged
    );
    // A label no selector reads, a status message: nothing moves.
    let d = state.pods.get_mut("y/d").unwrap();
    d.metadata.labels.insert("colour".into(), "blue".into());
    state.pod_status.get_mut("x/b").unwrap().message = "probed".into();
    assert_eq!(
        reconcile(ME, &state, &mut ids, &handles).unwrap(),
        Reconciled::Unchanged
    );
    assert_eq!(handles.table.load().generation(), first);
    // A pod becomes a client: a new table that admits it.
    let d = state.pods.get_mut("y/d").unwrap();
    d.metadata.namespace = "x".into();
    let d = state.pods.remove("y/d").unwrap();
    state.pods.insert("x/d".into(), d);
    state.pods.get_mut("x/d").unwrap().metadata.labels = [("app".into(), "client".into())].into();
    state.pod_status.insert("x/d".into(), status("node2", D));
    assert!(matches!(
        reconcile(ME, &state, &mut ids, &handles).unwrap(),
        Reconciled::Published { .. }
    ));
    assert!(tcp(&handles.table.load(), In, A, D, 80));
    // The policy is deleted: an empty table, the id and its name released.
    state.network_policies.clear();
    assert!(matches!(
        reconcile(ME, &state, &mut ids, &handles).unwrap(),
        Reconciled::Published { pods: 0, .. }
    ));
    assert!(handles.table.load().is_empty());
    assert!(handles.names.load().entries.is_empty());
}

/// Every local pod a held table was compiled with is covered, selected by a
/// policy or by none; remote pods, pods without an address and deleted pods
/// are not.
#[test]
fn the_coverage_names_every_local_pod_of_the_held_table() {
    let handles = handles();
    let mut ids = PolicyIds::default();
    let mut state = cluster("");
    // No policy at all: an empty table, unchanged, still covers x/a and y/c.
    assert_eq!(
        reconcile(ME, &state, &mut ids, &handles).unwrap(),
        Reconciled::Unchanged
    );
    let cov = &handles.coverage;
    assert!(cov.covers("x/a", A) && cov.covers("y/c", C));
    assert!(!cov.covers("x/b", B), "x/b runs on node2");
    // A new local pod, in a namespace with a default deny, not yet addressed.
    add(
        &mut state,
        "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: y}
spec: {podSelector: {}}
---
apiVersion: v1
kind: Pod
metadata: {name: e, namespace: y}
spec:
  nodeName: node1
  containers: [{name: sh, command: [sh]}]
",
    );
    let e = Ipv4Addr::new(10, 244, 1, 4);
    reconcile(ME, &state, &mut ids, &handles).unwrap();
    assert!(!cov.covers("y/e", e));
    // Its address published: covered once the table holding its deny is.
    let mut pending = status(ME, e);
    pending.phase = "Pending".into();
    pending.ready = false;
    state.pod_status.insert("y/e".into(), pending);
    assert!(matches!(
        reconcile(ME, &state, &mut ids, &handles).unwrap(),
        Reconciled::Published { pods: 2, .. }
    ));
    assert!(cov.covers("y/e", e));
    assert!(!tcp(&handles.table.load(), In, e, A, 80));
    // Covered at its address only (an address another pod held before is not it).
    assert!(!cov.covers("y/e", C));
    // Deleted: no longer covered.
    state.pods.remove("y/e");
    reconcile(ME, &state, &mut ids, &handles).unwrap();
    assert!(!cov.covers("y/e", e));
}

/// The cluster crate's reading of the policies: whether local pod `pod`
/// may talk with `remote` in `dir` (the interpreter the compiler must agree
/// with).
fn interpret(
    state: &ClusterState,
    pod_key: &str,
    dir: PolicyType,
    remote: Ipv4Addr,
    proto: PolicyProtocol,
    port: u16,
) -> bool {
    let labels = namespace_labels(state);
    let pods = addressed(state, &labels);
    let me = &state.pods[pod_key];
    let peer = pods.iter().find(|q| q.ip == remote);
    let selecting: Vec<&NetworkPolicy> = state
        .network_policies
        .values()
        .filter(|np| np.selects(&me.metadata.namespace, &me.metadata.labels))
        .filter(|np| np.has_policy_type(dir))
        .collect();
    if selecting.is_empty() {
        return true;
    }
    selecting.iter().any(|np| {
        np.rules(dir).iter().any(|r| {
            let peer_ok = r.peers.is_empty()
                || r.peers
                    .iter()
                    .any(|p| p.matches(&np.metadata.namespace, remote, peer.map(|q| q.peer_ref())));
            let dest = match dir {
                PolicyType::Ingress => Some(me),
                PolicyType::Egress => peer.map(|q| q.pod),
            };
            peer_ok && ports_allow(r.ports, dest, proto, port)
        })
    })
}

/// Draws choices from proptest's bytes.
struct Draw<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Draw<'_> {
    fn pick(&mut self, n: usize) -> usize {
        let b = self.bytes.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        usize::from(b) % n
    }

    fn one<'s>(&mut self, of: &[&'s str]) -> &'s str {
        of[self.pick(of.len())]
    }

    fn selector(&mut self) -> String {
        match self.pick(5) {
            0 => "{}".into(),
            1 => format!(
                "{{matchLabels: {{app: {}}}}}",
                self.one(&["web", "client", "db"])
            ),
            2 => format!(
                "{{matchExpressions: [{{key: app, operator: {}, values: [web]}}]}}",
                self.one(&["In", "NotIn"])
            ),
            3 => format!(
                "{{matchExpressions: [{{key: tier, operator: {}}}]}}",
                self.one(&["Exists", "DoesNotExist"])
            ),
            _ => format!("{{matchLabels: {{team: {}}}}}", self.one(&["blue", "red"])),
        }
    }

    fn peer(&mut self) -> String {
        match self.pick(5) {
            0 => format!("{{podSelector: {}}}", self.selector()),
            1 => format!("{{namespaceSelector: {}}}", self.selector()),
            2 => format!(
                "{{podSelector: {}, namespaceSelector: {}}}",
                self.selector(),
                self.selector()
            ),
            3 => format!(
                "{{ipBlock: {{cidr: {}}}}}",
                self.one(&["10.244.1.0/24", "10.244.0.0/16", "192.0.2.0/24"])
            ),
            _ => format!(
                "{{ipBlock: {{cidr: 10.244.0.0/16, except: [{}]}}}}",
                self.one(&["10.244.1.0/24", "10.244.2.3/32", "10.244.2.0/25"])
            ),
        }
    }

    fn port(&mut self) -> String {
        let proto = self.one(&["TCP", "UDP", "SCTP"]);
        match self.pick(4) {
            0 => format!("{{protocol: {proto}, port: {}}}", self.one(&["80", "81"])),
            1 => format!("{{protocol: {proto}, port: 80, endPort: 81}}"),
            2 => format!(
                "{{protocol: {proto}, port: {}}}",
                self.one(&["http", "dns"])
            ),
            _ => format!("{{protocol: {proto}}}"),
        }
    }

    fn list(&mut self, max: usize, mut item: impl FnMut(&mut Self) -> String) -> String {
        let n = self.pick(max + 1);
        let items: Vec<String> = (0..n).map(|_| item(self)).collect();
        format!("[{}]", items.join(", "))
    }

    fn rule(&mut self, peers: &str) -> String {
        let ports = self.list(2, Self::port);
        let peer_list = self.list(2, Self::peer);
        format!("{{{peers}: {peer_list}, ports: {ports}}}")
    }

    /// A random cluster of namespaces, pods over two nodes and policies.
    fn cluster(&mut self) -> ClusterState {
        let mut yaml = String::new();
        for ns in ["x", "y"] {
            let team = self.one(&["blue", "red"]);
            yaml += &format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{team: {team}}}}}\n");
        }
        let mut statuses = Vec::new();
        for i in 0..(2 + self.pick(5)) {
            let ns = self.one(&["x", "y", "z"]);
            let node = self.pick(2) + 1;
            let mut labels = format!("app: {}", self.one(&["web", "client", "db"]));
            if self.pick(2) == 0 {
                labels += ", tier: back";
            }
            let ports = match self.pick(4) {
                0 => "[]".to_owned(),
                1 => "[{name: http, containerPort: 80}]".to_owned(),
                2 => "[{name: http, containerPort: 81}, {name: dns, containerPort: 80, protocol: UDP}]"
                    .to_owned(),
                _ => "[{name: dns, containerPort: 81, protocol: UDP}]".to_owned(),
            };
            yaml += &format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: {ns}, labels: {{{labels}}}}}\n\
                 spec: {{nodeName: node{node}, containers: [{{name: c, command: [c], ports: {ports}}}]}}\n"
            );
            let ip = Ipv4Addr::new(
                10,
                244,
                u8::try_from(node).unwrap(),
                u8::try_from(i).unwrap() + 2,
            );
            statuses.push((format!("{ns}/p{i}"), format!("node{node}"), ip));
        }
        for i in 0..self.pick(4) {
            let ns = self.one(&["x", "y", "z"]);
            let selector = self.selector();
            let types = self.one(&["[]", "[Ingress]", "[Egress]", "[Ingress, Egress]"]);
            let ingress = self.list(2, |d| d.rule("from"));
            let egress = self.list(2, |d| d.rule("to"));
            yaml += &format!(
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                 metadata: {{name: np{i}, namespace: {ns}}}\n\
                 spec: {{podSelector: {selector}, policyTypes: {types}, ingress: {ingress}, egress: {egress}}}\n"
            );
        }
        let mut state = ClusterState::default();
        add(&mut state, &yaml);
        for (key, node, ip) in statuses {
            state.pod_status.insert(key, status(&node, ip));
        }
        state
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

    /// For random small clusters, the compiled table decides every pod pair,
    /// protocol and port as the cluster crate's interpreter does.
    #[test]
    fn the_compiled_table_agrees_with_the_interpreter(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 256)
    ) {
        let state = Draw { bytes: &bytes, at: 0 }.cluster();
        let t = table(&state);
        let mut remotes: Vec<Ipv4Addr> =
            state.pod_status.values().filter_map(|s| s.pod_ip).collect();
        remotes.extend([Ipv4Addr::new(10, 244, 1, 200), Ipv4Addr::new(192, 0, 2, 7)]);
        for (key, pod) in &state.pods {
            if pod.spec.node_name.as_deref() != Some(ME) {
                continue;
            }
            let ip = state.pod_status[key].pod_ip.unwrap();
            for (dir, pdir) in [(PolicyType::Ingress, In), (PolicyType::Egress, Out)] {
                for &remote in &remotes {
                    for proto in [PolicyProtocol::Tcp, PolicyProtocol::Udp, PolicyProtocol::Sctp] {
                        for port in [53, 80, 81, 82] {
                            let want = interpret(&state, key, dir, remote, proto, port);
                            let got = allows(&t, pdir, ip, remote, proto, port);
                            proptest::prop_assert_eq!(
                                got, want,
                                "{:?} {} {} {} {}/{}\n{:#?}",
                                dir, key, remote, proto, port, proto,
                                state.network_policies
                            );
                        }
                    }
                }
            }
        }
    }
}
