//! `apply`, `get`, `delete` and `wait`: the CLI's view of the cluster store, in
//! the manner of `kubectl`.
//!
//! What `apply` does to an object before storing it (a Pod without
//! `spec.nodeName` is scheduled, a Service gets its ClusterIP from the
//! cluster's Service CIDR) is `tapestry_cluster::admission`, as it is the API
//! server's in Kubernetes.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use tapestry_cluster::liveness::{self, judge, status_on_node, Liveness};
use tapestry_cluster::status::{status_key, PodRunStatus};
use tapestry_cluster::{
    admission, compute_endpoints, load_path, ClusterIp, Namespace, NetworkPolicy, Node, Object,
    Pod, PolicyType, Protocol, Service, ServiceType, Store,
};

use crate::error::CliError;

/// Output formats of `get`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Wide,
    Yaml,
    Json,
}

/// The objects stored under `prefix` that `pick` keeps (undecodable ones skipped).
fn list<T>(
    store: &dyn Store,
    prefix: &str,
    pick: fn(Object) -> Option<T>,
) -> Result<Vec<T>, CliError> {
    let (entries, _) = store.list(prefix)?;
    Ok(entries
        .iter()
        .filter_map(|e| Object::from_json(&e.value, &e.key).ok().and_then(pick))
        .collect())
}

fn nodes(store: &dyn Store) -> Result<Vec<Node>, CliError> {
    list(store, "nodes/", |o| {
        if let Object::Node(n) = o {
            Some(n)
        } else {
            None
        }
    })
}

fn pods(store: &dyn Store) -> Result<Vec<Pod>, CliError> {
    list(store, "pods/", |o| {
        if let Object::Pod(p) = o {
            Some(p)
        } else {
            None
        }
    })
}

fn services(store: &dyn Store) -> Result<Vec<Service>, CliError> {
    list(store, "services/", |o| {
        if let Object::Service(s) = o {
            Some(s)
        } else {
            None
        }
    })
}

fn namespaces(store: &dyn Store) -> Result<Vec<Namespace>, CliError> {
    list(store, "namespaces/", |o| {
        if let Object::Namespace(n) = o {
            Some(n)
        } else {
            None
        }
    })
}

fn network_policies(store: &dyn Store) -> Result<Vec<NetworkPolicy>, CliError> {
    list(store, "networkpolicies/", |o| {
        if let Object::NetworkPolicy(p) = o {
            Some(p)
        } else {
            None
        }
    })
}

/// The pod's kubelet status as endpoints take it: not ready on a NotReady
/// node (`not_ready`, judged once per command on this machine's clock).
fn status(store: &dyn Store, pod: &Pod, not_ready: &BTreeSet<String>) -> Option<PodRunStatus> {
    let e = store
        .get(&status_key(&pod.metadata.namespace, &pod.metadata.name))
        .ok()??;
    let stored = serde_json::from_slice(&e.value).ok()?;
    status_on_node(Some(&stored), pod, not_ready)
}

/// The NotReady nodes, now.
fn not_ready(store: &dyn Store) -> Result<BTreeSet<String>, CliError> {
    Ok(liveness::not_ready_in_store(store, SystemTime::now())?)
}

/// `tapestry apply -f PATH`: admission (scheduling, ClusterIPs) is the
/// cluster crate's; this prints what it did, as `kubectl apply` does.
pub fn apply(store: &dyn Store, path: &Path) -> Result<(), CliError> {
    let objects = load_path(path)?;
    // Every object is applied even if standard output went away; the first
    // write error is reported at the end.
    let mut written = Ok(());
    admission::apply(store, objects, |obj, outcome| {
        use std::io::Write as _;
        let line = writeln!(
            std::io::stdout().lock(),
            "{} {}",
            obj.display_name(),
            outcome.as_str()
        );
        if written.is_ok() {
            written = line;
        }
    })?;
    written.map_err(CliError::Stdout)
}

/// `tapestry delete -f PATH` or `tapestry delete KIND NAME…`.
pub fn delete(store: &dyn Store, keys: Vec<(String, String)>, force: bool) -> Result<(), CliError> {
    let mut missing = Vec::new();
    for (key, shown) in keys {
        if let Some(name) = key.strip_prefix("nodes/") {
            if !delete_node(store, name, force)? {
                missing.push(shown);
            }
        } else if admission::delete(store, &key)? {
            outln!("{shown} deleted");
        } else {
            missing.push(shown);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CliError::NotFound { missing })
    }
}

/// Store keys of the objects in a manifest file or directory.
pub fn keys_of(path: &Path) -> Result<Vec<(String, String)>, CliError> {
    let objects = load_path(path)?;
    Ok(objects
        .iter()
        .map(|o| (o.key(), o.display_name()))
        .collect())
}

/// `tapestry get nodes|pods|services|endpoints|namespaces|networkpolicies`.
pub fn get(
    store: &dyn Store,
    kind: &str,
    namespace: Option<&str>,
    format: Format,
) -> Result<(), CliError> {
    let in_namespace = |ns: &str| namespace.is_none_or(|want| ns == want);
    match kind {
        "nodes" | "node" | "no" => get_nodes(store, nodes(store)?, format),
        "pods" | "pod" | "po" => {
            let pods = pods(store)?
                .into_iter()
                .filter(|p| in_namespace(&p.metadata.namespace))
                .collect();
            get_pods(store, pods, format)
        }
        "services" | "service" | "svc" => {
            let services = services(store)?
                .into_iter()
                .filter(|svc| in_namespace(&svc.metadata.namespace))
                .collect();
            get_services(services, format)
        }
        "endpoints" | "ep" => {
            let services = services(store)?
                .into_iter()
                .filter(|svc| in_namespace(&svc.metadata.namespace))
                .collect();
            get_endpoints(store, services, format)
        }
        // Cluster-scoped: every namespace, whatever -n says.
        "namespaces" | "namespace" | "ns" => get_namespaces(namespaces(store)?, format),
        "networkpolicies" | "networkpolicy" | "netpol" => {
            let policies = network_policies(store)?
                .into_iter()
                .filter(|p| in_namespace(&p.metadata.namespace))
                .collect();
            get_network_policies(policies, format)
        }
        other => Err(CliError::UnknownKind {
            kind: other.to_owned(),
            expected: "nodes, pods, services, endpoints, namespaces or networkpolicies",
        }),
    }
}

/// Prints `objects` as YAML or JSON; `false` (nothing printed) for the
/// table formats.
fn print_documents(objects: Vec<Object>, format: Format) -> Result<bool, CliError> {
    match format {
        Format::Yaml => out!("{}", tapestry_cluster::emit_yaml(&objects)?),
        Format::Json => outln!("{}", tapestry_cluster::emit_json(&objects)?),
        Format::Table | Format::Wide => return Ok(false),
    }
    Ok(true)
}

fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

/// `get nodes`: STATUS is the node's liveness now on this machine's clock
/// (Ready, NotReady, or Unmanaged for a Node registered by hand, which no
/// agent renews); RENEWED the age of its lease's last renewal.
fn get_nodes(store: &dyn Store, nodes: Vec<Node>, format: Format) -> Result<(), CliError> {
    if print_documents(nodes.iter().cloned().map(Object::Node).collect(), format)? {
        return Ok(());
    }
    let (_, leases) = liveness::nodes_and_leases(store)?;
    let now = SystemTime::now();
    outln!(
        "{:<14} {:<9} {:<16} {:<15} {:<17} RENEWED",
        "NAME",
        "STATUS",
        "POD-CIDR",
        "UNDERLAY-IP",
        "VTEP-MAC"
    );
    for n in nodes {
        let lease = leases.get(&n.metadata.name);
        let renewed = match (judge(&n, lease, now), lease) {
            (Liveness::Unmanaged, _) | (_, None) => "-".to_owned(),
            (_, Some(l)) => match now.duration_since(l.renew_time) {
                Ok(ago) => format!("{:.1}s ago", ago.as_secs_f64()),
                Err(_) => "in the future".to_owned(),
            },
        };
        outln!(
            "{:<14} {:<9} {:<16} {:<15} {:<17} {}",
            n.metadata.name,
            judge(&n, lease, now).status(),
            or_dash(n.spec.pod_cidr),
            or_dash(n.underlay_ip()),
            or_dash(n.status.vtep_mac),
            renewed
        );
    }
    Ok(())
}

/// `delete node NAME`: the Node and what its agent held
/// ([`admission::delete_node`]); refused while the node is Ready unless
/// `force`. `false` if nothing of the node was found.
pub fn delete_node(store: &dyn Store, name: &str, force: bool) -> Result<bool, CliError> {
    let done = admission::delete_node(store, name, SystemTime::now(), force)?;
    if !done.found_anything() {
        return Ok(false);
    }
    let subnets: Vec<String> = done.subnets.iter().map(ToString::to_string).collect();
    outln!(
        "Node {name} deleted (subnet lease released: {}; pod IPs released: {}; liveness lease {}; pod statuses cleared: {})",
        joined_or_none(&subnets),
        done.pod_ips,
        if done.lease { "deleted" } else { "none" },
        done.pod_statuses
    );
    if !done.pods_bound.is_empty() {
        outln!(
            "warning: {} pod(s) still name node {name} in spec.nodeName and stay off every endpoint until a node {name} registers again; delete them or apply them to another node: {}",
            done.pods_bound.len(),
            done.pods_bound.join(", ")
        );
    }
    Ok(true)
}

fn get_pods(store: &dyn Store, mut pods: Vec<Pod>, format: Format) -> Result<(), CliError> {
    let not_ready = not_ready(store)?;
    let statuses: Vec<Option<PodRunStatus>> =
        pods.iter().map(|p| status(store, p, &not_ready)).collect();
    for (p, st) in pods.iter_mut().zip(&statuses) {
        if let Some(st) = st {
            p.status.pod_ip = st.pod_ip;
        }
    }
    if print_documents(pods.iter().cloned().map(Object::Pod).collect(), format)? {
        return Ok(());
    }
    let wide = format == Format::Wide;
    out!(
        "{:<12} {:<16} {:<6} {:<8} {:<15} {:<8}",
        "NAMESPACE",
        "NAME",
        "READY",
        "STATUS",
        "IP",
        "NODE"
    );
    outln!("{}", if wide { " CONTAINERS" } else { "" });
    for (p, st) in pods.iter().zip(&statuses) {
        let ready = if st.as_ref().is_some_and(|s| s.ready) {
            "1/1"
        } else {
            "0/1"
        };
        let phase = st
            .as_ref()
            .map_or("Pending".to_owned(), |s| s.phase.clone());
        out!(
            "{:<12} {:<16} {:<6} {:<8} {:<15} {:<8}",
            p.metadata.namespace,
            p.metadata.name,
            ready,
            phase,
            or_dash(st.as_ref().and_then(|s| s.pod_ip)),
            p.spec.node_name.as_deref().unwrap_or("-")
        );
        if wide {
            let cs: Vec<&str> = p.spec.containers.iter().map(|c| c.name.as_str()).collect();
            out!(" {}", cs.join(","));
        }
        outln!();
    }
    Ok(())
}

/// `items` joined by commas, or `<none>`.
fn joined_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "<none>".into()
    } else {
        items.join(",")
    }
}

fn get_services(services: Vec<Service>, format: Format) -> Result<(), CliError> {
    if print_documents(
        services.iter().cloned().map(Object::Service).collect(),
        format,
    )? {
        return Ok(());
    }
    outln!(
        "{:<12} {:<12} {:<13} {:<17} {:<20} SELECTOR",
        "NAMESPACE",
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "PORT(S)"
    );
    for svc in services {
        let ip = match svc.spec.cluster_ip {
            ClusterIp::Ip(ip) => ip.to_string(),
            ClusterIp::Headless => "None".into(),
            ClusterIp::Auto => "<pending>".into(),
        };
        let ip = if svc.spec.type_ == ServiceType::ExternalName {
            svc.spec.external_name.clone().unwrap_or_default()
        } else {
            ip
        };
        let ports: Vec<String> = svc
            .spec
            .ports
            .iter()
            .map(|p| format!("{}/{}", p.port, p.protocol))
            .collect();
        let sel: Vec<String> = svc
            .spec
            .selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        outln!(
            "{:<12} {:<12} {:<13} {:<17} {:<20} {}",
            svc.metadata.namespace,
            svc.metadata.name,
            svc.spec.type_.as_str(),
            ip,
            joined_or_none(&ports),
            joined_or_none(&sel)
        );
    }
    Ok(())
}

fn get_namespaces(namespaces: Vec<Namespace>, format: Format) -> Result<(), CliError> {
    if print_documents(
        namespaces.iter().cloned().map(Object::Namespace).collect(),
        format,
    )? {
        return Ok(());
    }
    let wide = format == Format::Wide;
    out!("{:<16} {:<8}", "NAME", "STATUS");
    outln!("{}", if wide { " LABELS" } else { "" });
    for ns in namespaces {
        out!("{:<16} {:<8}", ns.metadata.name, "Active");
        if wide {
            let labels: Vec<String> = ns
                .metadata
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out!(" {}", joined_or_none(&labels));
        }
        outln!();
    }
    Ok(())
}

fn get_network_policies(policies: Vec<NetworkPolicy>, format: Format) -> Result<(), CliError> {
    if print_documents(
        policies
            .iter()
            .cloned()
            .map(Object::NetworkPolicy)
            .collect(),
        format,
    )? {
        return Ok(());
    }
    let wide = format == Format::Wide;
    // Policy names and selectors run long: size the columns to them.
    let selectors: Vec<String> = policies
        .iter()
        .map(|p| p.spec.pod_selector.to_string())
        .collect();
    let name_w = policies
        .iter()
        .map(|p| p.metadata.name.len())
        .chain([4])
        .max()
        .unwrap_or(4);
    let sel_w = selectors
        .iter()
        .map(String::len)
        .chain([12])
        .max()
        .unwrap_or(12);
    out!(
        "{:<12} {:<name_w$} {:<sel_w$}",
        "NAMESPACE",
        "NAME",
        "POD-SELECTOR"
    );
    outln!(
        "{}",
        if wide {
            " POLICY-TYPES    INGRESS-RULES EGRESS-RULES"
        } else {
            ""
        }
    );
    for (p, selector) in policies.iter().zip(&selectors) {
        out!(
            "{:<12} {:<name_w$} {:<sel_w$}",
            p.metadata.namespace,
            p.metadata.name,
            selector
        );
        if wide {
            let types: Vec<String> = p.policy_types().iter().map(|t| format!("{t:?}")).collect();
            // `-` for a direction the policy does not isolate, else the
            // number of rules (0 is deny all).
            let count = |t: PolicyType, n: usize| {
                if p.has_policy_type(t) {
                    n.to_string()
                } else {
                    "-".into()
                }
            };
            out!(
                " {:<15} {:<13} {}",
                types.join(","),
                count(PolicyType::Ingress, p.spec.ingress.len()),
                count(PolicyType::Egress, p.spec.egress.len())
            );
        }
        outln!();
    }
    Ok(())
}

fn get_endpoints(
    store: &dyn Store,
    services: Vec<Service>,
    format: Format,
) -> Result<(), CliError> {
    let not_ready = not_ready(store)?;
    let with_status: Vec<(Pod, Option<PodRunStatus>)> = pods(store)?
        .into_iter()
        .map(|p| {
            let st = status(store, &p, &not_ready);
            (p, st)
        })
        .collect();
    outln!("{:<12} {:<12} ENDPOINTS", "NAMESPACE", "NAME");
    for svc in services {
        if svc.spec.type_ == ServiceType::ExternalName {
            continue;
        }
        let eps = compute_endpoints(&svc, &with_status);
        let list: Vec<String> = eps
            .addresses
            .iter()
            .flat_map(|a| {
                if a.ports.is_empty() {
                    vec![a.ip.to_string()]
                } else {
                    a.ports
                        .iter()
                        .map(|p| {
                            let proto = if p.protocol == Protocol::Udp {
                                "/UDP"
                            } else {
                                ""
                            };
                            format!("{}:{}{proto}", a.ip, p.port)
                        })
                        .collect()
                }
            })
            .collect();
        let shown = if format == Format::Wide || list.len() <= 6 {
            joined_or_none(&list)
        } else {
            format!(
                "{} + {} more",
                list.get(..6).unwrap_or_default().join(","),
                list.len() - 6
            )
        };
        outln!(
            "{:<12} {:<12} {}",
            svc.metadata.namespace,
            svc.metadata.name,
            shown
        );
    }
    Ok(())
}

/// `tapestry wait`: polls (bounded) until every Pod in the store is ready.
/// Reports what it still waits for when time runs out.
pub fn wait_ready(store: &dyn Store, timeout: Duration) -> Result<(), CliError> {
    let started = Instant::now();
    loop {
        let pods = pods(store)?;
        let not_ready = not_ready(store)?;
        let waiting: Vec<String> = pods
            .iter()
            .filter(|p| !status(store, p, &not_ready).is_some_and(|s| s.ready))
            .map(|p| format!("{}/{}", p.metadata.namespace, p.metadata.name))
            .collect();
        if waiting.is_empty() {
            outln!("{} pod(s) ready", pods.len());
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(CliError::NotReady {
                seconds: timeout.as_secs(),
                waiting,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
