//! `apply`, `get`, `delete` and `wait`: the CLI's view of the cluster store, in
//! the manner of `kubectl`.
//!
//! `apply` also schedules: a Pod without `spec.nodeName` is placed on the
//! registered node running the fewest pods (ties by name), and that choice is
//! written into the stored Pod, so it never moves afterwards.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use tapestry_cluster::status::{status_key, PodRunStatus};
use tapestry_cluster::{
    allocate_cluster_ip, compute_endpoints, load_path, release_cluster_ip, ClusterIp, Node, Object,
    Pod, Protocol, Service, ServiceType, Store, DEFAULT_SERVICE_CIDR, KUBELET_LABEL,
};

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
) -> Result<Vec<T>, String> {
    let (entries, _) = store.list(prefix).map_err(|e| e.to_string())?;
    Ok(entries
        .iter()
        .filter_map(|e| Object::from_json(&e.value, &e.key).ok().and_then(pick))
        .collect())
}

fn nodes(store: &dyn Store) -> Result<Vec<Node>, String> {
    list(store, "nodes/", |o| {
        if let Object::Node(n) = o {
            Some(n)
        } else {
            None
        }
    })
}

fn pods(store: &dyn Store) -> Result<Vec<Pod>, String> {
    list(store, "pods/", |o| {
        if let Object::Pod(p) = o {
            Some(p)
        } else {
            None
        }
    })
}

fn services(store: &dyn Store) -> Result<Vec<Service>, String> {
    list(store, "services/", |o| {
        if let Object::Service(s) = o {
            Some(s)
        } else {
            None
        }
    })
}

fn status(store: &dyn Store, pod: &Pod) -> Option<PodRunStatus> {
    let e = store
        .get(&status_key(&pod.metadata.namespace, &pod.metadata.name))
        .ok()??;
    serde_json::from_slice(&e.value).ok()
}

/// `tapestry apply -f PATH`.
pub fn apply(store: &dyn Store, path: &Path) -> Result<(), String> {
    let objects = load_path(path).map_err(|e| e.to_string())?;
    // Only nodes with a kubelet can run pods.
    let node_names: Vec<String> = nodes(store)?
        .into_iter()
        .filter(|n| {
            n.metadata
                .labels
                .get(KUBELET_LABEL)
                .is_some_and(|v| v == "true")
        })
        .map(|n| n.metadata.name)
        .collect();
    let mut load: BTreeMap<String, usize> = node_names.iter().map(|n| (n.clone(), 0)).collect();
    for p in pods(store)? {
        if let Some(count) = p.spec.node_name.and_then(|n| load.get_mut(&n)) {
            *count += 1;
        }
    }
    // Pods of this batch already placed by their manifest count too.
    for obj in &objects {
        if let Object::Pod(p) = obj {
            if let Some(n) = &p.spec.node_name {
                if store.get(&obj.key()).map_err(|e| e.to_string())?.is_none() {
                    if let Some(count) = load.get_mut(n) {
                        *count += 1;
                    }
                }
            }
        }
    }
    for obj in objects {
        let key = obj.key();
        let current = store.get(&key).map_err(|e| e.to_string())?;
        let obj = match (obj, &current) {
            (Object::Pod(mut pod), cur) if pod.spec.node_name.is_none() => {
                let stored = cur
                    .as_ref()
                    .and_then(|e| match Object::from_json(&e.value, &key) {
                        Ok(Object::Pod(p)) => p.spec.node_name,
                        _ => None,
                    });
                let chosen = match stored {
                    Some(n) => n,
                    None => {
                        let (n, _) = load
                            .iter()
                            .min_by_key(|(name, count)| (**count, (*name).clone()))
                            .ok_or("no node with a kubelet has registered yet: start the node agents first")?;
                        n.clone()
                    }
                };
                if let Some(count) = load.get_mut(&chosen) {
                    *count += 1;
                }
                pod.spec.node_name = Some(chosen);
                Object::Pod(pod)
            }
            (Object::Service(mut svc), _)
                if svc.spec.type_ == ServiceType::ClusterIp && !svc.is_headless() =>
            {
                // As the API server does: allocate (or confirm) the ClusterIP and
                // record it in the stored object.
                let ip = allocate_cluster_ip(
                    store,
                    &svc.key(),
                    svc.spec.cluster_ip.ip(),
                    DEFAULT_SERVICE_CIDR,
                )
                .map_err(|e| e.to_string())?;
                svc.spec.cluster_ip = ClusterIp::Ip(ip);
                Object::Service(svc)
            }
            (obj, _) => obj,
        };
        let bytes = obj.to_json().map_err(|e| e.to_string())?;
        let verb = match &current {
            Some(e) if e.value == bytes => "unchanged",
            Some(_) => "configured",
            None => "created",
        };
        if verb != "unchanged" {
            let expected = current.as_ref().map_or(0, |e| e.revision);
            store
                .compare_and_swap(&key, expected, &bytes)
                .map_err(|e| format!("{key}: {e} (changed meanwhile; apply again)"))?;
        }
        println!("{} {verb}", obj.display_name());
    }
    Ok(())
}

/// `tapestry delete -f PATH` or `tapestry delete KIND NAME…`.
pub fn delete(store: &dyn Store, keys: Vec<(String, String)>) -> Result<(), String> {
    let mut missing = Vec::new();
    for (key, shown) in keys {
        match store.delete(&key).map_err(|e| e.to_string())? {
            Some(_) => println!("{shown} deleted"),
            None => missing.push(shown),
        }
        if key.starts_with("services/") {
            release_cluster_ip(store, &key).map_err(|e| e.to_string())?;
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("not found: {}", missing.join(", ")))
    }
}

/// Store keys of the objects in a manifest file or directory.
pub fn keys_of(path: &Path) -> Result<Vec<(String, String)>, String> {
    let objects = load_path(path).map_err(|e| e.to_string())?;
    Ok(objects
        .iter()
        .map(|o| (o.key(), o.display_name()))
        .collect())
}

/// `tapestry get nodes|pods`.
pub fn get(
    store: &dyn Store,
    kind: &str,
    namespace: Option<&str>,
    format: Format,
) -> Result<(), String> {
    match kind {
        "nodes" | "node" | "no" => {
            let nodes = nodes(store)?;
            match format {
                Format::Yaml => print!(
                    "{}",
                    tapestry_cluster::emit_yaml(
                        &nodes.into_iter().map(Object::Node).collect::<Vec<_>>()
                    )
                    .map_err(|e| e.to_string())?
                ),
                Format::Json => println!(
                    "{}",
                    tapestry_cluster::emit_json(
                        &nodes.into_iter().map(Object::Node).collect::<Vec<_>>()
                    )
                    .map_err(|e| e.to_string())?
                ),
                Format::Table | Format::Wide => {
                    println!(
                        "{:<14} {:<16} {:<15} VTEP-MAC",
                        "NAME", "POD-CIDR", "UNDERLAY-IP"
                    );
                    for n in nodes {
                        println!(
                            "{:<14} {:<16} {:<15} {}",
                            n.metadata.name,
                            n.spec
                                .pod_cidr
                                .map(|c| c.to_string())
                                .unwrap_or_else(|| "-".into()),
                            n.underlay_ip()
                                .map(|i| i.to_string())
                                .unwrap_or_else(|| "-".into()),
                            n.status
                                .vtep_mac
                                .map(|m| m.to_string())
                                .unwrap_or_else(|| "-".into())
                        );
                    }
                }
            }
            Ok(())
        }
        "pods" | "pod" | "po" => {
            let mut pods: Vec<Pod> = pods(store)?
                .into_iter()
                .filter(|p| namespace.is_none_or(|ns| p.metadata.namespace == ns))
                .collect();
            for p in &mut pods {
                if let Some(st) = status(store, p) {
                    p.status.pod_ip = st.pod_ip;
                }
            }
            match format {
                Format::Yaml => print!(
                    "{}",
                    tapestry_cluster::emit_yaml(
                        &pods.into_iter().map(Object::Pod).collect::<Vec<_>>()
                    )
                    .map_err(|e| e.to_string())?
                ),
                Format::Json => println!(
                    "{}",
                    tapestry_cluster::emit_json(
                        &pods.into_iter().map(Object::Pod).collect::<Vec<_>>()
                    )
                    .map_err(|e| e.to_string())?
                ),
                Format::Table | Format::Wide => {
                    let wide = format == Format::Wide;
                    print!(
                        "{:<12} {:<16} {:<6} {:<8} {:<15} {:<8}",
                        "NAMESPACE", "NAME", "READY", "STATUS", "IP", "NODE"
                    );
                    println!("{}", if wide { " CONTAINERS" } else { "" });
                    for p in &pods {
                        let st = status(store, p);
                        let ready = if st.as_ref().is_some_and(|s| s.ready) {
                            "1/1"
                        } else {
                            "0/1"
                        };
                        let phase = st
                            .as_ref()
                            .map_or("Pending".to_owned(), |s| s.phase.clone());
                        print!(
                            "{:<12} {:<16} {:<6} {:<8} {:<15} {:<8}",
                            p.metadata.namespace,
                            p.metadata.name,
                            ready,
                            phase,
                            st.as_ref()
                                .and_then(|s| s.pod_ip)
                                .map(|i| i.to_string())
                                .unwrap_or_else(|| "-".into()),
                            p.spec.node_name.as_deref().unwrap_or("-")
                        );
                        if wide {
                            let cs: Vec<&str> =
                                p.spec.containers.iter().map(|c| c.name.as_str()).collect();
                            print!(" {}", cs.join(","));
                        }
                        println!();
                    }
                }
            }
            Ok(())
        }
        "services" | "service" | "svc" => {
            let services: Vec<Service> = services(store)?
                .into_iter()
                .filter(|svc| namespace.is_none_or(|ns| svc.metadata.namespace == ns))
                .collect();
            match format {
                Format::Yaml => print!(
                    "{}",
                    tapestry_cluster::emit_yaml(
                        &services
                            .into_iter()
                            .map(Object::Service)
                            .collect::<Vec<_>>()
                    )
                    .map_err(|e| e.to_string())?
                ),
                Format::Json => println!(
                    "{}",
                    tapestry_cluster::emit_json(
                        &services
                            .into_iter()
                            .map(Object::Service)
                            .collect::<Vec<_>>()
                    )
                    .map_err(|e| e.to_string())?
                ),
                Format::Table | Format::Wide => {
                    println!(
                        "{:<12} {:<12} {:<13} {:<17} {:<20} SELECTOR",
                        "NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "PORT(S)"
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
                        println!(
                            "{:<12} {:<12} {:<13} {:<17} {:<20} {}",
                            svc.metadata.namespace,
                            svc.metadata.name,
                            svc.spec.type_.as_str(),
                            ip,
                            if ports.is_empty() {
                                "<none>".into()
                            } else {
                                ports.join(",")
                            },
                            if sel.is_empty() {
                                "<none>".into()
                            } else {
                                sel.join(",")
                            }
                        );
                    }
                }
            }
            Ok(())
        }
        "endpoints" | "ep" => {
            let pods = pods(store)?;
            let with_status: Vec<(Pod, Option<PodRunStatus>)> =
                pods.iter().map(|p| (p.clone(), status(store, p))).collect();
            println!("{:<12} {:<12} ENDPOINTS", "NAMESPACE", "NAME");
            for svc in services(store)?
                .into_iter()
                .filter(|svc| namespace.is_none_or(|ns| svc.metadata.namespace == ns))
            {
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
                let shown = if list.is_empty() {
                    "<none>".to_owned()
                } else {
                    list.join(",")
                };
                let shown = if format == Format::Wide || list.len() <= 6 {
                    shown
                } else {
                    format!(
                        "{} + {} more",
                        list.get(..6).unwrap_or_default().join(","),
                        list.len() - 6
                    )
                };
                println!(
                    "{:<12} {:<12} {}",
                    svc.metadata.namespace, svc.metadata.name, shown
                );
            }
            Ok(())
        }
        other => Err(format!(
            "unknown resource type {other:?}: use nodes, pods, services or endpoints"
        )),
    }
}

/// `tapestry wait`: polls (bounded) until every Pod in the store is ready, or
/// every Pod of `only` is. Prints what it still waits for when time runs out.
pub fn wait_ready(store: &dyn Store, timeout: Duration) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let pods = pods(store)?;
        let waiting: Vec<String> = pods
            .iter()
            .filter(|p| !status(store, p).is_some_and(|s| s.ready))
            .map(|p| format!("{}/{}", p.metadata.namespace, p.metadata.name))
            .collect();
        if waiting.is_empty() {
            println!("{} pod(s) ready", pods.len());
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "not ready after {}s: {}",
                timeout.as_secs(),
                waiting.join(", ")
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
