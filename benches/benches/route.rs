//! Benchmarks of the route lookup (`RouteSnapshot::lookup`): a longest-prefix match
//! over the local subnet plus one /24 per peer node, with 10, 1,000 and 5,000 routes.
//! Lookups rotate over addresses spread across the whole table (all hits), and a
//! separate case looks up addresses no route covers (every prefix length probed).
//! Throughput is one lookup per iteration.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tapestry_dataplane::{MacAddr, Peer, RouteSnapshot};

const SIZES: [usize; 3] = [10, 1_000, 5_000];
const ROTATION: usize = 1_024;

/// The /24 of route `i`: 10.(i / 256).(i % 256).0 within the cluster 10.0.0.0/8.
fn subnet(i: usize) -> Ipv4Addr {
    let [_, _, a, b] = u32::try_from(i).unwrap_or(0).to_be_bytes();
    Ipv4Addr::new(10, a, b, 0)
}

/// Route 0 is local, routes 1..n are peers.
fn snapshot(n: usize) -> RouteSnapshot {
    let peers = (1..n)
        .map(|i| {
            let [_, _, a, b] = u32::try_from(i).unwrap_or(0).to_be_bytes();
            Peer {
                name: format!("node-{i}"),
                underlay_ip: Ipv4Addr::new(198, 18, a, b),
                vtep_mac: MacAddr::new(0x0a, 0x58, 0, 0, a, b),
                subnet: tapestry_benches::cidr(subnet(i), 24),
            }
        })
        .collect();
    let snap = RouteSnapshot::build(
        tapestry_benches::cidr(subnet(0), 24),
        tapestry_benches::cidr(Ipv4Addr::new(10, 0, 0, 0), 8),
        peers,
    );
    snap.unwrap_or_else(|e| panic!("bench table: {e}"))
}

fn bench_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_lookup");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    for n in SIZES {
        let snap = snapshot(n);
        assert_eq!(snap.len(), n);
        let k = n.min(ROTATION);
        let hits: Vec<Ipv4Addr> = (0..k)
            .map(|j| {
                let [a, b, c, _] = subnet(j * n / k).octets();
                Ipv4Addr::new(a, b, c, u8::try_from(j % 250).unwrap_or(0) + 2)
            })
            .collect();
        assert!(hits.iter().all(|a| snap.lookup(*a).is_some()));
        g.bench_function(BenchmarkId::new("hit", n), |b| {
            let mut i = 0;
            b.iter(|| {
                if let Some(a) = hits.get(i) {
                    black_box(snap.lookup(black_box(*a)));
                }
                i = (i + 1) % k;
            });
        });
        let miss = Ipv4Addr::new(10, 250, 250, 9);
        assert!(snap.lookup(miss).is_none());
        g.bench_function(BenchmarkId::new("miss", n), |b| {
            b.iter(|| black_box(snap.lookup(black_box(miss))));
        });
    }
    g.finish();
}

criterion_group!(benches, bench_lookup);
criterion_main!(benches);
