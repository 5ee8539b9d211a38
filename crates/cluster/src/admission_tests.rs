//! Tests of admission: scheduling, ClusterIP allocation from the recorded
//! Service CIDR, and errors that name the field.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::Ipv4Addr;

use super::*;
use crate::config::{ensure_cluster_config, Networking};
use crate::manifest::parse_manifests;
use crate::store::MemStore;

fn cidr(s: &str) -> Ipv4Cidr {
    Ipv4Cidr::parse(s).unwrap()
}

fn objects(yaml: &str) -> Vec<Object> {
    parse_manifests(yaml, "test").unwrap()
}

/// A store as the first agent leaves it, with `service_cidr` recorded.
fn cluster(service_cidr: &str) -> MemStore {
    let s = MemStore::new();
    ensure_cluster_config(
        &s,
        Networking {
            service_subnet: cidr(service_cidr),
            pod_subnet: cidr("10.244.0.0/16"),
        },
    )
    .unwrap();
    s
}

fn node(store: &MemStore, name: &str, kubelet: bool) {
    let label = if kubelet {
        format!("\n  labels:\n    {KUBELET_LABEL}: \"true\"")
    } else {
        String::new()
    };
    let yaml = format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}{label}\n");
    apply(store, objects(&yaml), |_, _| {}).unwrap();
    // Its agent is alive: the scheduler places pods only on Ready nodes.
    if kubelet {
        crate::liveness::renew(store, name, std::time::SystemTime::now()).unwrap();
    }
}

fn pod_yaml(name: &str, node_name: Option<&str>) -> String {
    let node = node_name.map_or(String::new(), |n| format!("\n  nodeName: {n}"));
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:{node}\n  containers:\n  - name: c\n    image: busybox\n"
    )
}

fn service_yaml(name: &str, cluster_ip: Option<&str>) -> String {
    let ip = cluster_ip.map_or(String::new(), |ip| format!("\n  clusterIP: {ip}"));
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:{ip}\n  selector:\n    app: {name}\n  ports:\n  - port: 80\n"
    )
}

fn stored(store: &MemStore, key: &str) -> Object {
    let e = store.get(key).unwrap().unwrap();
    Object::from_json(&e.value, key).unwrap()
}

fn node_of(store: &MemStore, pod: &str) -> String {
    match stored(store, &format!("pods/default/{pod}")) {
        Object::Pod(p) => p.spec.node_name.unwrap(),
        other => panic!("not a pod: {other:?}"),
    }
}

fn cluster_ip_of(store: &MemStore, svc: &str) -> Ipv4Addr {
    match stored(store, &format!("services/default/{svc}")) {
        Object::Service(s) => s.spec.cluster_ip.ip().unwrap(),
        other => panic!("not a service: {other:?}"),
    }
}

#[test]
fn a_non_default_service_cidr_is_honoured() {
    let s = cluster("10.100.0.0/16");
    apply(&s, objects(&service_yaml("web", None)), |_, _| {}).unwrap();
    let ip = cluster_ip_of(&s, "web");
    assert!(cidr("10.100.0.0/16").contains(ip), "{ip}");
    // The first automatic address above the /16's static band of 256.
    assert_eq!(ip, Ipv4Addr::new(10, 100, 1, 0));
    // An address of the default CIDR is outside this cluster's: refused.
    let err = apply(
        &s,
        objects(&service_yaml("dns", Some("10.96.0.10"))),
        |_, _| {},
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            AdmissionError::ClusterIp {
                source: ServiceError::OutsideCidr { .. }
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("spec.clusterIP"), "{err}");
    assert!(err.to_string().contains("10.100.0.0/16"), "{err}");
    // One requested inside it is granted.
    apply(
        &s,
        objects(&service_yaml("dns", Some("10.100.0.10"))),
        |_, _| {},
    )
    .unwrap();
    assert_eq!(cluster_ip_of(&s, "dns"), Ipv4Addr::new(10, 100, 0, 10));
}

#[test]
fn a_pod_without_node_name_is_scheduled_on_the_least_loaded_kubelet_node() {
    let s = cluster("10.96.0.0/12");
    node(&s, "node2", true);
    node(&s, "node1", true);
    // A Node without a kubelet (a kernel VXLAN peer) never gets pods.
    node(&s, "kernel", false);
    // One pod already placed on node1 by its manifest, in the same batch.
    let batch = [
        pod_yaml("a", None),
        pod_yaml("pinned", Some("node1")),
        pod_yaml("b", None),
        pod_yaml("c", None),
    ]
    .join("---\n");
    let mut seen = Vec::new();
    apply(&s, objects(&batch), |o, out| {
        seen.push((o.name().to_owned(), out))
    })
    .unwrap();
    assert!(seen.iter().all(|(_, o)| *o == Outcome::Created), "{seen:?}");
    // node1 has `pinned`: `a` goes to node2, then ties go by name.
    assert_eq!(node_of(&s, "a"), "node2");
    assert_eq!(node_of(&s, "pinned"), "node1");
    assert_eq!(node_of(&s, "b"), "node1");
    assert_eq!(node_of(&s, "c"), "node2");
    // Applying again moves nothing and writes nothing.
    let mut again = Vec::new();
    apply(&s, objects(&batch), |o, out| {
        again.push((o.name().to_owned(), out))
    })
    .unwrap();
    assert!(
        again.iter().all(|(_, o)| *o == Outcome::Unchanged),
        "{again:?}"
    );
    assert_eq!(node_of(&s, "a"), "node2");
}

#[test]
fn a_not_ready_node_gets_no_new_pods() {
    let s = cluster("10.96.0.0/12");
    node(&s, "node1", true);
    node(&s, "node2", true);
    // node2's agent died: its lease is gone (or expired).
    s.delete("nodeleases/node2").unwrap();
    let batch = [pod_yaml("a", None), pod_yaml("b", None)].join("---\n");
    apply(&s, objects(&batch), |_, _| {}).unwrap();
    assert_eq!(node_of(&s, "a"), "node1");
    assert_eq!(node_of(&s, "b"), "node1");
    // With no Ready node at all, nothing is scheduled, and the error says why.
    s.delete("nodeleases/node1").unwrap();
    let err = apply(&s, objects(&pod_yaml("c", None)), |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("no Ready node"), "{err}");
}

#[test]
fn errors_name_the_field() {
    // No node yet: the pod cannot be scheduled.
    let s = cluster("10.96.0.0/12");
    let err = apply(&s, objects(&pod_yaml("web", None)), |_, _| {}).unwrap_err();
    assert!(matches!(err, AdmissionError::NoNode { .. }), "{err:?}");
    assert!(err.to_string().contains("Pod default/web"), "{err}");
    assert!(err.to_string().contains("spec.nodeName"), "{err}");
    assert!(s.get("pods/default/web").unwrap().is_none());

    // No cluster configuration: no Service CIDR to allocate from.
    let bare = MemStore::new();
    let err = apply(&bare, objects(&service_yaml("web", None)), |_, _| {}).unwrap_err();
    assert!(
        matches!(err, AdmissionError::NoServiceCidr { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("spec.clusterIP"), "{err}");
    assert!(err.to_string().contains("--service-cidr"), "{err}");

    // The network address of the CIDR is not usable.
    let err = apply(
        &s,
        objects(&service_yaml("net", Some("10.96.0.0"))),
        |_, _| {},
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("spec.clusterIP 10.96.0.0"),
        "{err}"
    );
}

#[test]
fn a_stored_pod_keeps_its_node_and_a_changed_object_is_configured() {
    let s = cluster("10.96.0.0/12");
    node(&s, "node1", true);
    apply(&s, objects(&pod_yaml("web", None)), |_, _| {}).unwrap();
    assert_eq!(node_of(&s, "web"), "node1");
    // A less loaded node appears: the stored pod stays where it is.
    node(&s, "node0", true);
    let changed = pod_yaml("web", None).replace("- name: c", "- name: d");
    let mut outcome = None;
    apply(&s, objects(&changed), |_, o| outcome = Some(o)).unwrap();
    assert_eq!(outcome, Some(Outcome::Configured));
    assert_eq!(node_of(&s, "web"), "node1");
}

#[test]
fn deleting_a_service_releases_its_cluster_ip() {
    let s = cluster("10.96.0.0/12");
    apply(
        &s,
        objects(&service_yaml("web", Some("10.96.0.20"))),
        |_, _| {},
    )
    .unwrap();
    assert!(delete(&s, "services/default/web").unwrap());
    assert!(!delete(&s, "services/default/web").unwrap());
    // The address is free for another service.
    apply(
        &s,
        objects(&service_yaml("api", Some("10.96.0.20"))),
        |_, _| {},
    )
    .unwrap();
    assert_eq!(cluster_ip_of(&s, "api"), Ipv4Addr::new(10, 96, 0, 20));
}

#[test]
fn the_cluster_configuration_is_recorded_once_and_checked() {
    let s = MemStore::new();
    let first = Networking {
        service_subnet: cidr("10.100.0.0/16"),
        pod_subnet: cidr("10.244.0.0/16"),
    };
    assert_eq!(ensure_cluster_config(&s, first).unwrap().networking, first);
    // The same again: fine, and the stored one is returned.
    assert_eq!(ensure_cluster_config(&s, first).unwrap().networking, first);
    let other = Networking {
        service_subnet: cidr("10.96.0.0/12"),
        ..first
    };
    let err = ensure_cluster_config(&s, other).unwrap_err();
    assert!(matches!(err, ConfigError::Mismatch { .. }), "{err:?}");
    assert!(
        err.to_string().contains("networking.serviceSubnet"),
        "{err}"
    );
    assert!(err.to_string().contains("--service-cidr"), "{err}");
    let pods = Networking {
        pod_subnet: cidr("10.245.0.0/16"),
        ..first
    };
    let err = ensure_cluster_config(&s, pods).unwrap_err();
    assert!(err.to_string().contains("networking.podSubnet"), "{err}");
    assert_eq!(read_cluster_config(&s).unwrap().unwrap().networking, first);
}

fn namespace_labels(store: &MemStore, name: &str) -> BTreeMap<String, String> {
    match stored(store, &format!("namespaces/{name}")) {
        Object::Namespace(ns) => ns.metadata.labels,
        other => panic!("not a namespace: {other:?}"),
    }
}

#[test]
fn builtin_namespaces_exist_once_the_configuration_is_recorded() {
    let store = cluster("10.96.0.0/16");
    for name in ["default", "kube-system"] {
        assert_eq!(
            namespace_labels(&store, name),
            BTreeMap::from([("kubernetes.io/metadata.name".into(), name.into())])
        );
    }
    // A second agent's start leaves them as they are (labels added by a user stay).
    apply(
        &store,
        objects(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  labels: {team: core}\n",
        ),
        |_, _| {},
    )
    .unwrap();
    ensure_cluster_config(
        &store,
        Networking {
            service_subnet: cidr("10.96.0.0/16"),
            pod_subnet: cidr("10.244.0.0/16"),
        },
    )
    .unwrap();
    assert_eq!(
        namespace_labels(&store, "default").get("team").unwrap(),
        "core"
    );
    for name in ["default", "kube-system"] {
        let e = delete(&store, &format!("namespaces/{name}")).unwrap_err();
        assert!(e.to_string().contains("may not be deleted"), "{e}");
    }
}

#[test]
fn an_object_in_an_unknown_namespace_creates_it() {
    let store = cluster("10.96.0.0/16");
    node(&store, "node1", true);
    let yaml = pod_yaml("web", None).replace("name: web\n", "name: web\n  namespace: shop\n");
    let mut seen = Vec::new();
    apply(&store, objects(&yaml), |o, outcome| {
        seen.push((o.display_name(), outcome))
    })
    .unwrap();
    assert_eq!(seen, vec![("Pod shop/web".to_string(), Outcome::Created)]);
    assert_eq!(
        namespace_labels(&store, "shop"),
        BTreeMap::from([("kubernetes.io/metadata.name".into(), "shop".into())])
    );
    // A policy in another new namespace creates that one too.
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny\n  namespace: bank\nspec:\n  podSelector: {}\n";
    apply(&store, objects(np), |_, _| {}).unwrap();
    assert!(store.get("namespaces/bank").unwrap().is_some());
    // Declaring the namespace later adds its labels; the name label is
    // admission's, whatever the manifest says.
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    env: prod\n    kubernetes.io/metadata.name: other\n";
    let mut outcome = None;
    apply(&store, objects(ns), |_, o| outcome = Some(o)).unwrap();
    assert_eq!(outcome, Some(Outcome::Configured));
    let labels = namespace_labels(&store, "shop");
    assert_eq!(labels.get("env").unwrap(), "prod");
    assert_eq!(labels.get("kubernetes.io/metadata.name").unwrap(), "shop");
    // A namespace is not deleted while it holds objects; then it is.
    let e = delete(&store, "namespaces/shop").unwrap_err();
    assert!(e.to_string().contains("pods/shop/web"), "{e}");
    assert!(delete(&store, "pods/shop/web").unwrap());
    assert!(delete(&store, "namespaces/shop").unwrap());
    assert!(!delete(&store, "namespaces/shop").unwrap());
}

#[test]
fn a_policy_is_stored_with_its_policy_types_defaulted() {
    let store = cluster("10.96.0.0/16");
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\nspec:\n  podSelector: {}\n  egress:\n  - {}\n";
    apply(&store, objects(np), |_, _| {}).unwrap();
    let Object::NetworkPolicy(p) = stored(&store, "networkpolicies/default/p") else {
        panic!("not a policy")
    };
    assert_eq!(
        p.spec.policy_types,
        vec![
            crate::policy::PolicyType::Ingress,
            crate::policy::PolicyType::Egress
        ]
    );
    // Applying the same manifest again changes nothing.
    let mut outcome = None;
    apply(&store, objects(np), |_, o| outcome = Some(o)).unwrap();
    assert_eq!(outcome, Some(Outcome::Unchanged));
}

/// `delete node`: refused while the node's lease is current; once it has
/// run out, the Node, its subnet lease, pod IPs, liveness lease and pod
/// statuses go, and its subnet is free for the next node.
#[test]
fn deleting_a_node_gives_up_what_its_agent_held() {
    use crate::ipam::{lease_node_subnet, PodIpam};
    use crate::liveness::{renew, LEASE_DURATION};
    use crate::status::{status_key, PodRunStatus};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    let s = Arc::new(cluster("10.96.0.0/12"));
    let c = crate::ipam::DEFAULT_CLUSTER_CIDR;
    node(&s, "node1", true);
    node(&s, "node2", true);
    assert_eq!(
        lease_node_subnet(&*s, "node1", c, 24).unwrap(),
        cidr("10.244.1.0/24")
    );
    assert_eq!(
        lease_node_subnet(&*s, "node2", c, 24).unwrap(),
        cidr("10.244.2.0/24")
    );
    // Now, not a fixed instant: `delete` below judges on the system clock.
    let t0 = SystemTime::now();
    renew(&*s, "node1", t0).unwrap();
    renew(&*s, "node2", t0).unwrap();
    apply(&*s, objects(&pod_yaml("p2", Some("node2"))), |_, _| {}).unwrap();
    let ipam = PodIpam::new(
        Arc::clone(&s) as Arc<dyn Store>,
        "node2",
        cidr("10.244.2.0/24"),
    );
    let ip = ipam.allocate("pods/default/p2").unwrap();
    let status = PodRunStatus {
        node: "node2".into(),
        pod_ip: Some(ip),
        phase: "Running".into(),
        ready: true,
        message: String::new(),
    };
    s.put(
        &status_key("default", "p2"),
        &serde_json::to_vec(&status).unwrap(),
    )
    .unwrap();

    // Alive: refused, with what to do, and nothing touched.
    let e = delete_node(&*s, "node2", t0 + Duration::from_secs(2), false).unwrap_err();
    assert!(matches!(e, AdmissionError::NodeAlive { .. }), "{e}");
    assert!(e.to_string().contains("stop tapestryd on node2"), "{e}");
    assert!(matches!(
        delete(&*s, "nodes/node2"),
        Err(AdmissionError::NodeAlive { .. })
    ));
    assert!(s.get("nodes/node2").unwrap().is_some());

    // Its lease has run out: deleted, with everything it held.
    let later = t0 + LEASE_DURATION + Duration::from_secs(2);
    let done = delete_node(&*s, "node2", later, false).unwrap();
    assert_eq!(
        done,
        NodeDeleted {
            node: true,
            subnets: vec![cidr("10.244.2.0/24")],
            pod_ips: 1,
            lease: true,
            pod_statuses: 1,
            pods_bound: vec!["default/p2".into()],
        }
    );
    for gone in [
        "nodes/node2",
        "leases/10.244.2.0-24",
        "nodeleases/node2",
        "podstatus/default/p2",
    ] {
        assert!(s.get(gone).unwrap().is_none(), "{gone} is still there");
    }
    assert!(s.list("ips/node2/").unwrap().0.is_empty());
    // node1 and its lease are untouched; the freed subnet goes to a new node.
    assert!(s.get("nodeleases/node1").unwrap().is_some());
    assert_eq!(
        lease_node_subnet(&*s, "node3", c, 24).unwrap(),
        cidr("10.244.2.0/24")
    );
    // Nothing left: a second delete finds nothing.
    assert!(!delete_node(&*s, "node2", later, false)
        .unwrap()
        .found_anything());

    // A live node may be deleted with force.
    let done = delete_node(&*s, "node1", t0, true).unwrap();
    assert!(done.node && done.lease);
}
