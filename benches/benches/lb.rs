//! Benchmarks of the service load balancer in `Pipeline::process`: the first packet
//! of a flow (Maglev pick + conntrack insert + DNAT + routing to a local pod) and a
//! packet of an established flow (conntrack hit + DNAT + routing), with 10, 1,000 and
//! 10,000 services in the table; and building one Maglev table (10 backends,
//! M = 65,537), the control thread's cost per service change.
//!
//! Frames are IPv4/UDP without a UDP checksum, so the benchmark can change the client
//! port (one new flow per iteration) without recomputing anything; the pipeline's
//! checksum work is then the IPv4 header update only (TCP/UDP checksums add two more
//! incremental updates, a few ns). Each timed iteration processes a fresh copy of the
//! frame (`iter_batched`: the copy is outside the timing), because DNAT rewrites it in
//! place. The first-packet case cycles through 64,512 client ports × the services, so
//! the conntrack table (262,144 flows by default) fills up and the steady state
//! includes evicting one flow per new one — what a busy node does. Throughput is one
//! packet per iteration.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use tapestry_benches::lb_node::{self, backend_ip, vip, CLIENT, CLIENT_IP, CLIENT_MAC, GW_MAC};
use tapestry_benches::{eth_ipv4, put16, tap_frame, L4_AT};
use tapestry_dataplane::{
    Action, Backend, L4Proto, Maglev, Pipeline, MAGLEV_DEFAULT_SIZE, OUT_BUF_LEN, VNET_HDR_LEN,
};

const SIZES: [usize; 3] = [10, 1_000, 10_000];
const NOW: u64 = 1_000_000_000;

/// A client pod, three backend pods, and `n` UDP services on port 53 over them.
fn node(n: usize) -> Pipeline {
    let p = lb_node::node();
    p.services()
        .store(lb_node::table(lb_node::services(n, 53, L4Proto::Udp, 5353)));
    p
}

/// A UDP query from the client to `dst`:53 from `sport`, built by etherparse, with
/// the UDP checksum then cleared (see the module comment).
fn query(dst: Ipv4Addr, sport: u16) -> Vec<u8> {
    let mut f = tap_frame([0; VNET_HDR_LEN], |f| {
        eth_ipv4(GW_MAC, CLIENT_MAC, CLIENT_IP, dst, 0)
            .udp(sport, 53)
            .write(f, &[0x42; 18])
    });
    put16(&mut f, L4_AT + 6, 0);
    f
}

fn forwarded(a: &Action<'_>) -> bool {
    matches!(a, Action::Forward(_))
}

fn bench_lb(c: &mut Criterion) {
    let mut g = c.benchmark_group("lb");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    let mut out = vec![0u8; OUT_BUF_LEN];
    for n in SIZES {
        let mut p = node(n);
        let templates: Vec<Vec<u8>> = (0..n.min(1_024))
            .map(|i| query(vip(i * n / n.min(1_024)), 1024))
            .collect();
        assert!(forwarded(&p.process(
            CLIENT,
            &mut query(vip(0), 1024),
            NOW,
            &mut out
        )));
        let mut k: usize = 1;
        g.bench_function(BenchmarkId::new("first_packet", n), |b| {
            b.iter_batched_ref(
                || {
                    k += 1;
                    let port = 1024 + (k % 64_512);
                    let i = (k / 64_512) % templates.len();
                    let mut f = templates.get(i).cloned().unwrap_or_default();
                    let port = u16::try_from(port).unwrap_or(1024);
                    put16(&mut f, L4_AT, port);
                    f
                },
                |f| black_box(forwarded(&p.process(CLIENT, f, NOW, &mut out))),
                BatchSize::SmallInput,
            );
        });
        let s = p.counters().snapshot();
        assert!(s.get(tapestry_dataplane::Counter::LbNewFlows) > 1, "{s:?}");
        let mut p = node(n);
        let est = query(vip(n / 2), 40_000);
        assert!(forwarded(&p.process(
            CLIENT,
            &mut est.clone(),
            NOW,
            &mut out
        )));
        g.bench_function(BenchmarkId::new("established", n), |b| {
            b.iter_batched_ref(
                || est.clone(),
                |f| black_box(forwarded(&p.process(CLIENT, f, NOW, &mut out))),
                BatchSize::SmallInput,
            );
        });
        assert_eq!(
            p.counters()
                .snapshot()
                .get(tapestry_dataplane::Counter::LbNewFlows),
            1
        );
    }
    g.finish();

    let mut g = c.benchmark_group("maglev_build");
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    let backends: Vec<Backend> = (0..10)
        .map(|k| Backend {
            ip: backend_ip(k),
            port: 8080,
        })
        .collect();
    g.bench_function(BenchmarkId::new("backends_10", MAGLEV_DEFAULT_SIZE), |b| {
        b.iter(|| black_box(Maglev::new(black_box(&backends), MAGLEV_DEFAULT_SIZE)));
    });
    g.finish();
}

criterion_group!(benches, bench_lb);
criterion_main!(benches);
