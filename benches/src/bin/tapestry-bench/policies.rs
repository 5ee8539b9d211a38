//! `tapestry-bench policies`: the NetworkPolicies of the lab benchmark's
//! policy rows, as one multi-document YAML manifest.
//!
//! Every policy selects the server pods (label `--server KEY=VALUE`) of one
//! namespace, so an agent compiles all of them into each server's lookup.
//! The last one allows the client pods (`--client KEY=VALUE`) on TCP
//! `--port`; the others (fillers) are realistic rules that allow other
//! traffic, and the lookup has to hold and walk them:
//!
//! - an `ipBlock` outside the pod network, with an `except`, on a TCP port range;
//! - a pod selector by label, on a TCP port and on UDP at the benchmark's port
//!   number (the same number on another protocol must not open TCP);
//! - a namespace selector ANDed with a pod selector, on every port;
//! - no peers (every source) on a TCP port range (`endPort`);
//! - an `ipBlock` in an unused pod subnet ORed with a `matchExpressions` pod
//!   selector, on a named port no pod has and a TCP port.
//!
//! No filler allows TCP `--port` from a pod of the lab: their selectors match
//! labels no lab pod carries, their blocks hold no lab pod address, and their
//! port ranges step around `--port`. So a pod that is not a client (the
//! benchmark's probe) must get no connection on that port when policy is
//! enforced, and the tests below check that against the policy semantics of
//! `tapestry-cluster`.

use std::fmt::Write as _;

/// Why no policies were generated.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoliciesError {
    /// At least the client's allow policy is needed.
    #[error("--count must be at least 1 (the policy that allows the client)")]
    NoPolicies,
    /// A label is not `KEY=VALUE`.
    #[error("{flag}: {value:?} is not KEY=VALUE")]
    BadLabel { flag: &'static str, value: String },
    /// Port 0 is no port.
    #[error("--port must be 1 to 65535")]
    BadPort,
}

/// A label `KEY=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub key: String,
    pub value: String,
}

impl Label {
    /// Parses `KEY=VALUE` given to `flag` (named in the error).
    pub fn parse(flag: &'static str, text: &str) -> Result<Label, PoliciesError> {
        match text.split_once('=') {
            Some((key, value)) if !key.is_empty() && !value.is_empty() => Ok(Label {
                key: key.to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(PoliciesError::BadLabel {
                flag,
                value: text.to_owned(),
            }),
        }
    }
}

/// What to generate.
pub struct PolicySet {
    pub namespace: String,
    pub count: usize,
    pub port: u16,
    pub server: Label,
    pub client: Label,
}

/// A TCP port range of `len + 1` ports for filler `i`, in 1024..=61023,
/// moved past `avoid` if it would contain it.
fn filler_range(i: usize, len: u16, avoid: u16) -> (u16, u16) {
    let offset = u16::try_from(i.wrapping_mul(37) % 60_000).unwrap_or(0);
    let first = 1024 + offset;
    let last = first + len;
    if (first..=last).contains(&avoid) {
        (avoid + 1, avoid + 1 + len)
    } else {
        (first, last)
    }
}

/// The `podSelector` that picks the servers: `matchLabels` for even `i`,
/// the same as a `matchExpressions` `In` for odd `i` (both are common).
fn server_selector(out: &mut String, i: usize, server: &Label) {
    let Label { key, value } = server;
    if i.is_multiple_of(2) {
        let _ = write!(
            out,
            "  podSelector:\n    matchLabels:\n      {key}: {value}\n"
        );
    } else {
        let _ = write!(
            out,
            "  podSelector:\n    matchExpressions:\n      - key: {key}\n        operator: In\n        values: [{value}]\n"
        );
    }
}

/// The ingress rules of filler `i` (see the module's list).
fn filler_rules(out: &mut String, i: usize, port: u16) {
    let (a, b) = (16 + (i / 256) % 16, i % 256);
    match i % 5 {
        0 => {
            let (first, last) = filler_range(i, 15, port);
            let _ = write!(
                out,
                "  ingress:\n    - from:\n        - ipBlock:\n            cidr: 172.{a}.{b}.0/24\n            except: [172.{a}.{b}.128/25]\n      ports:\n        - protocol: TCP\n          port: {first}\n          endPort: {last}\n"
            );
        }
        1 => {
            let (tcp, _) = filler_range(i, 0, port);
            let _ = write!(
                out,
                "  ingress:\n    - from:\n        - podSelector:\n            matchLabels:\n              app: peer-{i}\n      ports:\n        - protocol: TCP\n          port: {tcp}\n        - protocol: UDP\n          port: {port}\n"
            );
        }
        2 => {
            let _ = write!(
                out,
                "  ingress:\n    - from:\n        - namespaceSelector:\n            matchLabels:\n              team: team-{i}\n          podSelector:\n            matchLabels:\n              app: peer-{i}\n"
            );
        }
        3 => {
            let (first, last) = filler_range(i, 7, port);
            let _ = write!(
                out,
                "  policyTypes: [Ingress]\n  ingress:\n    - ports:\n        - protocol: TCP\n          port: {first}\n          endPort: {last}\n"
            );
        }
        _ => {
            let (tcp, _) = filler_range(i, 0, port);
            let subnet = 128 + i % 120;
            let _ = write!(
                out,
                "  ingress:\n    - from:\n        - ipBlock:\n            cidr: 10.244.{subnet}.0/24\n        - podSelector:\n            matchExpressions:\n              - key: app\n                operator: In\n                values: [peer-{i}, peer-{i}-canary]\n      ports:\n        - protocol: TCP\n          port: metrics\n        - protocol: TCP\n          port: {tcp}\n"
            );
        }
    }
}

/// The manifest: `count - 1` fillers, then the client's allow policy.
pub fn generate(set: &PolicySet) -> Result<String, PoliciesError> {
    if set.count == 0 {
        return Err(PoliciesError::NoPolicies);
    }
    if set.port == 0 {
        return Err(PoliciesError::BadPort);
    }
    let mut out = format!(
        "# {} NetworkPolicies selecting {}={} in {}, generated by `tapestry-bench policies`:\n# {} fillers allowing other traffic, then the one allowing {}={} on TCP {}.\n",
        set.count,
        set.server.key,
        set.server.value,
        set.namespace,
        set.count - 1,
        set.client.key,
        set.client.value,
        set.port
    );
    for i in 0..set.count - 1 {
        let _ = write!(
            out,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: bench-filler-{i:05}\n  namespace: {}\nspec:\n",
            set.namespace
        );
        server_selector(&mut out, i, &set.server);
        filler_rules(&mut out, i, set.port);
    }
    let _ = write!(
        out,
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: allow-bench-client\n  namespace: {ns}\nspec:\n  podSelector:\n    matchLabels:\n      {sk}: {sv}\n  ingress:\n    - from:\n        - podSelector:\n            matchLabels:\n              {ck}: {cv}\n      ports:\n        - protocol: TCP\n          port: {port}\n",
        ns = set.namespace,
        sk = set.server.key,
        sv = set.server.value,
        ck = set.client.key,
        cv = set.client.value,
        port = set.port
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use tapestry_cluster::{
        parse_manifests, ports_allow, NetworkPolicy, Object, Pod, PodRef, PolicyProtocol,
        PolicyType,
    };

    use super::*;

    fn set(count: usize) -> PolicySet {
        PolicySet {
            namespace: "bench-policy".into(),
            count,
            port: 5201,
            server: Label::parse("--server", "role=server").expect("label"),
            client: Label::parse("--client", "role=client").expect("label"),
        }
    }

    fn policies(count: usize) -> Vec<NetworkPolicy> {
        let text = generate(&set(count)).expect("generates");
        parse_manifests(&text, "generated")
            .expect("parses")
            .into_iter()
            .map(|o| match o {
                Object::NetworkPolicy(p) => p,
                other => panic!("not a policy: {}", other.kind()),
            })
            .collect()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The server as bench.yaml has it: iperf3 on TCP 5201.
    fn server_pod() -> Pod {
        let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: server\n  namespace: bench-policy\n  labels:\n    role: server\nspec:\n  containers:\n    - name: iperf3\n      command: [iperf3, -s]\n      ports:\n        - containerPort: 5201\n";
        match parse_manifests(text, "server").expect("pod").pop() {
            Some(Object::Pod(p)) => p,
            _ => panic!("not a pod"),
        }
    }

    /// The names of the policies whose ingress rules allow `(protocol, port)`
    /// to the server from `ip`, a pod with `pod_labels` in `namespace`.
    fn allowing(
        policies: &[NetworkPolicy],
        namespace: &str,
        pod_labels: &BTreeMap<String, String>,
        ip: Ipv4Addr,
        protocol: PolicyProtocol,
        port: u16,
    ) -> Vec<String> {
        let ns_labels = labels(&[("kubernetes.io/metadata.name", namespace)]);
        allowing_in(
            policies, namespace, &ns_labels, pod_labels, ip, protocol, port,
        )
    }

    /// [`allowing`], with the namespace's labels given.
    fn allowing_in(
        policies: &[NetworkPolicy],
        namespace: &str,
        ns_labels: &BTreeMap<String, String>,
        pod_labels: &BTreeMap<String, String>,
        ip: Ipv4Addr,
        protocol: PolicyProtocol,
        port: u16,
    ) -> Vec<String> {
        let server = server_pod();
        let pod = PodRef {
            namespace,
            labels: pod_labels,
            namespace_labels: ns_labels,
        };
        policies
            .iter()
            .filter(|p| {
                p.rules(PolicyType::Ingress).iter().any(|r| {
                    (r.peers.is_empty()
                        || r.peers
                            .iter()
                            .any(|peer| peer.matches(&p.metadata.namespace, ip, Some(pod))))
                        && ports_allow(r.ports, Some(&server), protocol, port)
                })
            })
            .map(|p| p.metadata.name.clone())
            .collect()
    }

    #[test]
    fn a_thousand_valid_policies_all_select_the_server() {
        let policies = policies(1000);
        assert_eq!(policies.len(), 1000);
        let server = labels(&[("role", "server")]);
        for p in &policies {
            p.validate().expect("valid");
            assert!(p.selects("bench-policy", &server), "{}", p.metadata.name);
            assert!(!p.selects("default", &server), "{}", p.metadata.name);
            assert!(!p.selects("bench-policy", &labels(&[("role", "client")])));
        }
        assert_eq!(
            policies.last().map(|p| p.metadata.name.as_str()),
            Some("allow-bench-client")
        );
    }

    #[test]
    fn only_the_client_reaches_the_port_from_any_lab_address() {
        let policies = policies(1000);
        let client = labels(&[("role", "client")]);
        let intruder = labels(&[("role", "intruder")]);
        let plain = BTreeMap::new();
        for subnet in [1u8, 2] {
            for host in 1..=254u8 {
                let ip = Ipv4Addr::new(10, 244, subnet, host);
                let tcp = PolicyProtocol::Tcp;
                assert_eq!(
                    allowing(&policies, "bench-policy", &client, ip, tcp, 5201),
                    ["allow-bench-client"],
                    "client at {ip}"
                );
                assert!(allowing(&policies, "bench-policy", &intruder, ip, tcp, 5201).is_empty());
                assert!(allowing(&policies, "default", &client, ip, tcp, 5201).is_empty());
                assert!(allowing(&policies, "bench-policy", &plain, ip, tcp, 5201).is_empty());
                // The UDP fillers on the same number do not open it for the client either.
                let udp = PolicyProtocol::Udp;
                assert!(allowing(&policies, "bench-policy", &client, ip, udp, 5201).is_empty());
            }
        }
    }

    #[test]
    fn fillers_do_allow_their_own_traffic() {
        // The rules are live, not dead weight: each kind admits something.
        let policies = policies(10);
        let any = BTreeMap::new();
        let tcp = PolicyProtocol::Tcp;
        // Filler 0: its ipBlock on its port range (not in the except).
        let (first, _) = filler_range(0, 15, 5201);
        let ip = Ipv4Addr::new(172, 16, 0, 9);
        assert_eq!(
            allowing(&policies, "x", &any, ip, tcp, first),
            ["bench-filler-00000"]
        );
        assert!(allowing(
            &policies,
            "x",
            &any,
            Ipv4Addr::new(172, 16, 0, 200),
            tcp,
            first
        )
        .is_empty());
        // Filler 3: any source on its range.
        let (first, last) = filler_range(3, 7, 5201);
        let lab = Ipv4Addr::new(10, 244, 1, 7);
        assert!(allowing(&policies, "default", &any, lab, tcp, last)
            .contains(&"bench-filler-00003".to_owned()));
        assert!(first < last);
        // Filler 1: by pod label, in the policy's namespace only.
        let (port1, _) = filler_range(1, 0, 5201);
        let peer = labels(&[("app", "peer-1")]);
        assert_eq!(
            allowing(&policies, "bench-policy", &peer, lab, tcp, port1),
            ["bench-filler-00001"]
        );
        assert!(allowing(&policies, "default", &peer, lab, tcp, port1).is_empty());
        // Filler 2: namespace label AND pod label, every port.
        let peer = labels(&[("app", "peer-2")]);
        let team = labels(&[("kubernetes.io/metadata.name", "ops"), ("team", "team-2")]);
        assert_eq!(
            allowing_in(&policies, "ops", &team, &peer, lab, tcp, 5201),
            ["bench-filler-00002"]
        );
        assert!(allowing(&policies, "ops", &peer, lab, tcp, 5201).is_empty());
        // Filler 4: its unused pod subnet, OR its labels; not the named port.
        let (port4, _) = filler_range(4, 0, 5201);
        let spare = Ipv4Addr::new(10, 244, 132, 3);
        assert_eq!(
            allowing(&policies, "x", &any, spare, tcp, port4),
            ["bench-filler-00004"]
        );
        let canary = labels(&[("app", "peer-4-canary")]);
        assert_eq!(
            allowing(&policies, "bench-policy", &canary, lab, tcp, port4),
            ["bench-filler-00004"]
        );
    }

    #[test]
    fn ranges_step_around_the_port() {
        for i in 0..100_000 {
            let (first, last) = filler_range(i, 15, 5201);
            assert!(!(first..=last).contains(&5201), "filler {i}");
            assert!(first >= 1024 && last > first);
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert_eq!(generate(&set(0)), Err(PoliciesError::NoPolicies));
        let mut s = set(3);
        s.port = 0;
        assert_eq!(generate(&s), Err(PoliciesError::BadPort));
        assert!(matches!(
            Label::parse("--server", "role"),
            Err(PoliciesError::BadLabel {
                flag: "--server",
                ..
            })
        ));
        assert!(Label::parse("--client", "=x").is_err());
        let one = generate(&set(1)).expect("one");
        assert_eq!(one.matches("kind: NetworkPolicy").count(), 1);
    }
}
