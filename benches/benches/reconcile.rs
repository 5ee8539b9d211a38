//! Benchmarks of the service reconcile: what one cluster change costs, on the
//! control thread (the agent's `service_sync::reconcile`) and on the packet thread
//! (`Pipeline::maintain`, which re-checks every tracked flow after a new service
//! table generation).
//!
//! - `service_reconcile/maintain_after_publish`: a conntrack holding 10,000 flows
//!   (over 100 TCP services of 3 local backends each) and a new table with the same
//!   entries published just before the call (a new generation): the full sweep,
//!   every flow looked up in the new table — what each publication costs the packet
//!   thread. The table is built outside the timing; the swap is inside.
//! - `service_reconcile/maintain_unchanged`: the same conntrack, no new table: the
//!   periodic visit that only expires flows.
//! - `agent_reconcile/unchanged`: the agent's reconcile of a cluster state whose
//!   entries equal the published table's (100 services, 1,000 ready pods): entries
//!   computed and compared, nothing built or published.
//! - `agent_reconcile/rebuild`: what the agent did before it compared: the same
//!   entries computed, every Maglev table built, the table published.
//! - `agent_reconcile/endpoint_changed`: one pod's readiness flips each iteration, so
//!   every reconcile builds and publishes a new table.
//!
//! Throughput is one reconcile (or one `maintain`) per iteration.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use tapestry_agent::service_sync;
use tapestry_benches::lb_node::{self, table, vip, CLIENT, CLIENT_IP, CLIENT_MAC, GW_MAC};
use tapestry_benches::{group, retarget, tcp_frame, Tcp, NOW, TCP_SYN};
use tapestry_cluster::{parse_manifests, ClusterState, Object, PodRunStatus};
use tapestry_dataplane::{Action, L4Proto, Pipeline, ServiceEntry, ServiceTable, OUT_BUF_LEN};

const FLOWS: usize = 10_000;
/// Services, in both groups.
const SERVICES: usize = 100;
/// Ready pods per service in the agent benches.
const PODS_PER_SERVICE: usize = 10;

/// `SERVICES` TCP services on port 80, each over the three local backends.
fn pipeline_entries() -> Vec<ServiceEntry> {
    lb_node::services(SERVICES, 80, L4Proto::Tcp, 8080)
}

/// A node with a client pod, three backend pods, the services, and `FLOWS` flows
/// the client opened (SYNs from distinct ports, spread over the services).
fn node_with_flows() -> Pipeline {
    let mut p = lb_node::node();
    p.services().store(table(pipeline_entries()));
    let syn = tcp_frame(
        GW_MAC,
        CLIENT_MAC,
        &Tcp {
            src: CLIENT_IP,
            dst: vip(0),
            sport: 1024,
            dport: 80,
            flags: TCP_SYN,
            data_len: 0,
        },
    );
    let mut out = vec![0u8; OUT_BUF_LEN];
    for k in 0..FLOWS {
        let mut f = syn.clone();
        let sport = u16::try_from(1024 + k).unwrap_or(u16::MAX);
        retarget(&mut f, vip(k % SERVICES), sport);
        let action = p.process(CLIENT, &mut f, NOW, &mut out);
        assert!(
            matches!(action, Action::Forward(_)),
            "flow {k} not forwarded"
        );
    }
    assert_eq!(p.conntrack_len(), FLOWS);
    p
}

fn bench_maintain(c: &mut Criterion) {
    let mut g = group(c, "service_reconcile", Throughput::Elements(1));
    let mut p = node_with_flows();
    let entries = pipeline_entries();
    g.bench_function(BenchmarkId::new("maintain_after_publish", FLOWS), |b| {
        b.iter_batched(
            || table(entries.clone()),
            |t| {
                let old = p.services().swap(t);
                black_box(p.maintain(NOW));
                old // dropped outside the timing
            },
            BatchSize::PerIteration,
        );
    });
    assert_eq!(p.conntrack_len(), FLOWS, "a sweep removed live flows");
    g.bench_function(BenchmarkId::new("maintain_unchanged", FLOWS), |b| {
        b.iter(|| black_box(p.maintain(NOW)));
    });
    assert_eq!(p.conntrack_len(), FLOWS);
    g.finish();
}

/// `SERVICES` ClusterIP services, each selecting its own `PODS_PER_SERVICE` ready
/// pods by the named port `http` (8080): manifests as `tapestry apply` reads them,
/// and the kubelet's status per pod.
fn cluster() -> ClusterState {
    let mut yaml = String::new();
    for s in 0..SERVICES {
        let vip = vip(s);
        yaml += &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}}}\n\
             spec:\n  clusterIP: {vip}\n  selector: {{app: app-{s}}}\n  \
             ports: [{{name: http, port: 80, targetPort: http}}]\n---\n"
        );
        for k in 0..PODS_PER_SERVICE {
            yaml += &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{s}-{k}, labels: {{app: app-{s}}}}}\n\
                 spec:\n  nodeName: node1\n  containers:\n  - name: web\n    command: [web]\n    \
                 ports: [{{name: http, containerPort: 8080}}]\n---\n"
            );
        }
    }
    let mut state = ClusterState::default();
    let objects = parse_manifests(&yaml, "bench").unwrap_or_else(|e| panic!("manifests: {e}"));
    for (n, obj) in objects.into_iter().enumerate() {
        match obj {
            Object::Service(svc) => {
                state
                    .services
                    .insert(format!("default/{}", svc.metadata.name), svc);
            }
            Object::Pod(pod) => {
                let key = format!("default/{}", pod.metadata.name);
                let ip = Ipv4Addr::new(10, 244, 2, 0)
                    .to_bits()
                    .wrapping_add(u32::try_from(n).unwrap_or(0));
                let status = PodRunStatus {
                    node: "node1".into(),
                    pod_ip: Some(Ipv4Addr::from(ip)),
                    phase: "Running".into(),
                    ready: true,
                    message: String::new(),
                };
                state.pod_status.insert(key.clone(), status);
                state.pods.insert(key, pod);
            }
            _ => {}
        }
    }
    state
}

fn bench_agent(c: &mut Criterion) {
    let mut g = group(c, "agent_reconcile", Throughput::Elements(1));
    let state = cluster();
    let published = ArcSwap::from_pointee(ServiceTable::empty());
    let first = service_sync::reconcile(&state, &published);
    assert!(
        first.published.is_some() && first.rejected.is_empty(),
        "{first:?}"
    );
    let n = published
        .load()
        .entries()
        .map(|e| e.backends.len())
        .sum::<usize>();
    assert_eq!(n, SERVICES * PODS_PER_SERVICE, "backends in the table");
    g.bench_function(BenchmarkId::new("unchanged", SERVICES), |b| {
        b.iter(|| {
            let r = service_sync::reconcile(black_box(&state), &published);
            assert!(r.published.is_none() && r.rejected.is_empty());
        });
    });
    g.bench_function(BenchmarkId::new("rebuild", SERVICES), |b| {
        b.iter(|| {
            let t = ServiceTable::build(service_sync::entries(black_box(&state)));
            published.store(Arc::new(t.unwrap_or_else(|e| panic!("{e}"))));
        });
    });
    let mut flipped = state.clone();
    if let Some(s) = flipped.pod_status.get_mut("default/pod-0-0") {
        s.ready = false;
    }
    // References: cycling never clones a state inside the timing.
    // The table holds `state` now: `flipped` first.
    let mut states = [&flipped, &state].into_iter().cycle();
    g.bench_function(BenchmarkId::new("endpoint_changed", SERVICES), |b| {
        b.iter(|| {
            let Some(next) = states.next() else { return };
            let r = service_sync::reconcile(black_box(next), &published);
            assert!(r.published.is_some());
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = tapestry_benches::config();
    targets = bench_maintain, bench_agent
}
criterion_main!(benches);
