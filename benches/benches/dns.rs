//! Benchmarks of cluster DNS answering (`tapestry_dns::answer_into`, the call
//! the server's UDP loop makes with a reused buffer): an A answer for a
//! ClusterIP service, and the NXDOMAIN that a pod's `ndots:5` search path
//! produces for most names, both against a zone of 1,000 services and 3,000
//! pods. Throughput is one query per iteration.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tapestry_dns::wire::encode_name;
use tapestry_dns::{
    answer_into, DnsData, Outcome, PodRecord, Rcode, ServiceKind, ServiceRecord, Transport, Zone,
};

const SERVICES: u8 = 250; // per namespace, 4 namespaces

fn zone() -> Zone {
    let mut data = DnsData::default();
    for (n, ns) in ["default", "kube-system", "shop", "monitoring"]
        .iter()
        .enumerate()
    {
        let n = u8::try_from(n).unwrap_or(0);
        for i in 0..SERVICES {
            data.services.push(ServiceRecord {
                name: format!("svc-{i}"),
                namespace: (*ns).to_owned(),
                kind: ServiceKind::ClusterIp(Ipv4Addr::new(10, 96, n, i)),
                ports: vec![],
                endpoints: vec![],
            });
            for p in 0..3u8 {
                data.pods.push(PodRecord {
                    name: format!("pod-{i}-{p}"),
                    namespace: (*ns).to_owned(),
                    ip: Ipv4Addr::new(10, 244, n * 3 + p, i),
                });
            }
        }
    }
    Zone::build(&data, "cluster.local", 5)
}

/// A standard query with RD set and no EDNS, as glibc's stub resolver sends it.
fn query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend(encode_name(name).unwrap_or_else(|e| panic!("bench name: {e}")));
    q.extend_from_slice(&[0, 1, 0, 1]); // A, IN
    q
}

fn bench_answer(c: &mut Criterion) {
    let zone = zone();
    let mut g = c.benchmark_group("dns_answer");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    let transport = Transport::Udp { max: 1232 };
    let mut out = Vec::with_capacity(1232);

    let a = query("svc-123.shop.svc.cluster.local");
    let expect = Outcome::Answered {
        rcode: Rcode::NoError,
        truncated: false,
    };
    assert_eq!(answer_into(&zone, &a, transport, None, &mut out), expect);
    g.bench_function("a_cluster_ip", |b| {
        b.iter(|| answer_into(&zone, black_box(&a), transport, None, &mut out))
    });

    // "svc-123.shop" from a pod in "default": the first search-path try.
    let nx = query("svc-123.shop.default.svc.cluster.local");
    let expect = Outcome::Answered {
        rcode: Rcode::NxDomain,
        truncated: false,
    };
    assert_eq!(answer_into(&zone, &nx, transport, None, &mut out), expect);
    g.bench_function("nxdomain_search_path", |b| {
        b.iter(|| answer_into(&zone, black_box(&nx), transport, None, &mut out))
    });
    g.finish();
}

criterion_group!(benches, bench_answer);
criterion_main!(benches);
