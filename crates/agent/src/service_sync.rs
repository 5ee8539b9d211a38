//! Keeps the data plane's service table in step with the cluster: every
//! ClusterIP Service port becomes one load-balancer entry whose backends are
//! the service's ready endpoints (target ports resolved per pod).
//!
//! On every change of Services, Pods or pod status the entries are computed
//! again and compared with the entries of the table the pipeline holds; only
//! when they differ is a new table built and published into the pipeline's
//! `ArcSwap` (CONVENTIONS.md §17, as pingora's `Backends::update` reports
//! whether anything changed). A publication is not free: each new table
//! generation makes the packet thread re-check every tracked flow
//! (`Pipeline::maintain`), so a pod status change that moves no endpoint, or
//! a change to a pod no Service selects, publishes nothing. The pipeline
//! flushes flows of backends that left.
//!
//! This is kube-proxy's job; like kube-proxy every node programs every
//! Service, because the load balancing happens on the client's node.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tapestry_cluster::cache::{ClusterCache, ClusterState};
use tapestry_cluster::service::{ClusterIp, ServiceType, SessionAffinity};
use tapestry_cluster::Protocol;
use tapestry_dataplane::{Affinity, Backend, L4Proto, LbError, ServiceEntry, ServiceTable};

use crate::problems::{Problems, Source};
use crate::reflected::Reflected;

/// The load-balancer entries for the cluster state, in service key order,
/// each with its backends sorted and deduplicated (the order
/// [`ServiceTable::build`] keeps them in, so entries compare equal to a
/// table's).
pub fn entries(state: &ClusterState) -> Vec<ServiceEntry> {
    // One pass over the pods for every service (`ClusterState::endpoints` per
    // service would copy the namespace's pods once per service).
    let all_endpoints = state.all_endpoints();
    let mut out = Vec::new();
    for (key, svc) in &state.services {
        let ClusterIp::Ip(vip) = svc.spec.cluster_ip else {
            continue;
        };
        if svc.spec.type_ != ServiceType::ClusterIp {
            continue;
        }
        let endpoints = all_endpoints.get(key);
        for sp in &svc.spec.ports {
            let mut backends: Vec<Backend> = endpoints
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
            backends.sort_unstable();
            backends.dedup();
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

/// `true` if `table` holds exactly `entries`, in order (names, addresses,
/// ports, protocols, backends, affinity).
pub fn same_entries(table: &ServiceTable, entries: &[ServiceEntry]) -> bool {
    table.len() == entries.len() && table.entries().zip(entries).all(|(a, b)| a == b)
}

/// What one [`reconcile`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// The generation of the new table, if one was built and stored (else
    /// the published table already holds the admitted entries).
    pub published: Option<u64>,
    /// The new table could not be built and the previous one was kept: it
    /// does not reflect the state reconciled.
    pub failed: bool,
    /// Entries left out, each with the error it would cause.
    pub rejected: Vec<LbError>,
}

/// Splits `entries` into those one table can hold together and those it
/// cannot (a VIP or backend that is not one unicast host, port 0, a
/// `(vip, port, proto)` another entry already claims), each with its error.
/// Entries the `current` table holds claim first, so a newcomer cannot
/// push out a published service; then the rest in order. The admitted keep
/// `entries`' order.
pub fn admit(
    entries: Vec<ServiceEntry>,
    current: &ServiceTable,
) -> (Vec<ServiceEntry>, Vec<LbError>) {
    let published: HashSet<&str> = current.entries().map(|e| e.name.as_str()).collect();
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| {
        entries
            .get(i)
            .is_none_or(|e| !published.contains(e.name.as_str()))
    });
    let mut claimed: HashMap<(Ipv4Addr, u16, L4Proto), String> = HashMap::new();
    let mut admitted = vec![false; entries.len()];
    let mut rejected = Vec::new();
    for i in order {
        let Some(e) = entries.get(i) else { continue };
        if let Some(first) = claimed.get(&(e.vip, e.port, e.proto)) {
            rejected.push(LbError::Duplicate {
                first: first.clone(),
                second: e.name.clone(),
                vip: e.vip,
                port: e.port,
                proto: e.proto,
            });
            continue;
        }
        // The table's own checks of one entry (address, port, backends).
        if let Err(err) = e.check() {
            rejected.push(err);
            continue;
        }
        claimed.insert((e.vip, e.port, e.proto), e.name.clone());
        if let Some(a) = admitted.get_mut(i) {
            *a = true;
        }
    }
    let kept = entries
        .into_iter()
        .zip(admitted)
        .filter_map(|(e, a)| a.then_some(e))
        .collect();
    (kept, rejected)
}

/// Computes the entries for `state` and publishes a new table into `table`
/// only if the admitted ones differ from the current table's. An entry the
/// table cannot hold (e.g. a second service claiming one ClusterIP and
/// port) is left out and returned; the rest are published ([`admit`]).
pub fn reconcile(state: &ClusterState, table: &ArcSwap<ServiceTable>) -> Reconciled {
    let all = entries(state);
    // The common case, kept cheap: the table already holds every entry, so
    // none is rejected.
    if same_entries(&table.load(), &all) {
        return Reconciled {
            published: None,
            rejected: Vec::new(),
            failed: false,
        };
    }
    let (entries, rejected) = admit(all, &table.load());
    if same_entries(&table.load(), &entries) {
        return Reconciled {
            published: None,
            rejected,
            failed: false,
        };
    }
    match ServiceTable::build(entries) {
        Ok(built) => {
            let generation = built.generation();
            table.store(Arc::new(built));
            Reconciled {
                published: Some(generation),
                rejected,
                failed: false,
            }
        }
        // Unreachable: every admitted entry passed the same checks.
        Err(e) => {
            tracing::error!(error = %e, "service table rejected; keeping the previous one");
            Reconciled {
                published: None,
                rejected,
                failed: true,
            }
        }
    }
}

/// Reconciles the service table on every cluster change, forever. Entries
/// left out are logged when the set changes and listed in `problems`.
pub fn run(
    cache: Arc<ClusterCache>,
    table: Arc<ArcSwap<ServiceTable>>,
    problems: Arc<Problems>,
    reflected: Arc<Reflected>,
) {
    let changes = cache.subscribe();
    let mut reported: Vec<(String, String)> = Vec::new();
    loop {
        let state = cache.snapshot();
        let done = reconcile(&state, &table);
        if !done.failed {
            reflected.services_at(state.revision);
        }
        if let Some(generation) = done.published {
            let summary: Vec<String> = table
                .load()
                .entries()
                .map(|e| format!("{}={}:{}->{}", e.name, e.vip, e.port, e.backends.len()))
                .collect();
            tracing::info!(generation, services = ?summary, "service table updated");
        }
        let now: Vec<(String, String)> = done
            .rejected
            .iter()
            .map(|e| {
                (
                    format!("services/{}", rejected_name(e)),
                    format!("left out of the service table: {e}"),
                )
            })
            .collect();
        if now != reported {
            for (object, reason) in now.iter().filter(|p| !reported.contains(p)) {
                tracing::error!(%object, %reason, "service port skipped; serving the rest");
            }
            problems.set(Source::Services, now.clone());
            reported = now;
        }
        if changes.recv().is_err() {
            return;
        }
    }
}

/// The entry (`NAMESPACE/NAME:PORT`) an error is about: the one left out.
fn rejected_name(e: &LbError) -> &str {
    match e {
        LbError::Duplicate { second, .. } => second,
        LbError::BadVip { name, .. }
        | LbError::ZeroPort { name }
        | LbError::BadBackend { name, .. } => name,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use std::net::Ipv4Addr;

    use tapestry_cluster::manifest::parse_manifests;
    use tapestry_cluster::service::ClusterIp;
    use tapestry_cluster::{Object, PodRunStatus};

    use super::*;

    const OBJECTS: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.96.0.20
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-a, labels: {app: web}}
spec:
  nodeName: node1
  containers:
  - name: web
    command: [web]
    ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-b, labels: {app: web}}
spec:
  nodeName: node1
  containers:
  - name: web
    command: [web]
    ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: tools}
spec:
  nodeName: node1
  containers:
  - {name: sh, command: [sh]}
";

    fn status(ip: [u8; 4], phase: &str, ready: bool) -> PodRunStatus {
        PodRunStatus {
            node: "node1".into(),
            pod_ip: Some(Ipv4Addr::from(ip)),
            phase: phase.into(),
            ready,
            message: String::new(),
        }
    }

    /// The service `web` over two ready pods and one pod no service selects.
    fn cluster() -> ClusterState {
        let mut state = ClusterState::default();
        for obj in parse_manifests(OBJECTS, "test").unwrap() {
            match obj {
                Object::Pod(p) => {
                    let key = format!("{}/{}", p.metadata.namespace, p.metadata.name);
                    state.pods.insert(key, p);
                }
                Object::Service(s) => {
                    let key = format!("{}/{}", s.metadata.namespace, s.metadata.name);
                    state.services.insert(key, s);
                }
                _ => {}
            }
        }
        let statuses = [
            ("default/web-a", status([10, 244, 1, 2], "Running", true)),
            ("default/web-b", status([10, 244, 1, 3], "Running", true)),
            ("default/tools", status([10, 244, 1, 4], "Pending", false)),
        ];
        for (k, s) in statuses {
            state.pod_status.insert(k.into(), s);
        }
        state
    }

    fn published(r: Reconciled) -> u64 {
        assert!(r.rejected.is_empty(), "{:?}", r.rejected);
        r.published.expect("expected a new table")
    }

    fn unchanged() -> Reconciled {
        Reconciled {
            published: None,
            rejected: Vec::new(),
            failed: false,
        }
    }

    #[test]
    fn entries_have_sorted_ready_backends() {
        let e = entries(&cluster());
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].name, "default/web:http");
        assert_eq!(e[0].vip, Ipv4Addr::new(10, 96, 0, 20));
        let ips: Vec<_> = e[0].backends.iter().map(|b| (b.ip, b.port)).collect();
        assert_eq!(
            ips,
            [
                (Ipv4Addr::new(10, 244, 1, 2), 8080),
                (Ipv4Addr::new(10, 244, 1, 3), 8080)
            ]
        );
    }

    #[test]
    fn only_a_change_of_entries_publishes_a_new_generation() {
        let table = ArcSwap::from_pointee(ServiceTable::empty());
        let mut state = cluster();
        let first = published(reconcile(&state, &table));
        assert_eq!(table.load().generation(), first);

        // The same state again: nothing built, nothing stored.
        assert_eq!(reconcile(&state, &table), unchanged());

        // A status change that moves no endpoint: web-a stays ready at its address.
        let a = state.pod_status.get_mut("default/web-a").unwrap();
        a.message = "probed again".into();
        assert_eq!(reconcile(&state, &table), unchanged());

        // A pod no service selects becomes ready, gets a label and a new IP.
        state.pod_status.insert(
            "default/tools".into(),
            status([10, 244, 1, 9], "Running", true),
        );
        let tools = state.pods.get_mut("default/tools").unwrap();
        tools.metadata.labels.insert("role".into(), "debug".into());
        assert_eq!(reconcile(&state, &table), unchanged());
        assert_eq!(table.load().generation(), first);

        // A real endpoint change: web-b stops being ready.
        state.pod_status.get_mut("default/web-b").unwrap().ready = false;
        let second = published(reconcile(&state, &table));
        assert_ne!(second, first);
        assert_eq!(table.load().generation(), second);
        assert_eq!(table.load().entries().next().unwrap().backends.len(), 1);

        // And back: another new table (the flows' backends are checked again).
        state.pod_status.get_mut("default/web-b").unwrap().ready = true;
        let third = published(reconcile(&state, &table));
        assert_ne!(third, second);
        assert_eq!(reconcile(&state, &table), unchanged());
    }

    #[test]
    fn a_service_the_table_cannot_hold_is_left_out_and_the_rest_published() {
        let table = ArcSwap::from_pointee(ServiceTable::empty());
        let mut state = cluster();
        let first = published(reconcile(&state, &table));
        // A second service claiming web's ClusterIP and port, named to sort
        // first, and a good one.
        let web = state.services.get("default/web").unwrap().clone();
        let mut twin = web.clone();
        twin.metadata.name = "a-twin".into();
        state.services.insert("default/a-twin".into(), twin);
        let mut other = web.clone();
        other.metadata.name = "other".into();
        other.spec.cluster_ip = ClusterIp::Ip(Ipv4Addr::new(10, 96, 0, 21));
        state.services.insert("default/other".into(), other);
        let done = reconcile(&state, &table);
        let second = done.published.expect("the good service is published");
        assert_ne!(second, first);
        let names: Vec<_> = table.load().entries().map(|e| e.name.clone()).collect();
        assert_eq!(names, ["default/other:http", "default/web:http"]);
        assert_eq!(done.rejected.len(), 1);
        assert!(
            matches!(&done.rejected[0], LbError::Duplicate { first, second, .. }
                if first == "default/web:http" && second == "default/a-twin:http"),
            "{:?}",
            done.rejected
        );
        assert_eq!(rejected_name(&done.rejected[0]), "default/a-twin:http");
        // Nothing else changed: nothing published, still reported.
        let again = reconcile(&state, &table);
        assert_eq!((again.published, again.rejected.len()), (None, 1));
        // The twin goes away: the problem does too.
        state.services.remove("default/a-twin");
        assert_eq!(reconcile(&state, &table), unchanged());
    }
}
