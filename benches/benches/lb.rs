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
use tapestry_benches::{eth_ipv4, put16, tap_frame, L4_AT};
use tapestry_dataplane::{
    Action, Affinity, Backend, L4Proto, MacAddr, Maglev, Pipeline, PipelineConfig, PortId,
    PortRole, ServiceEntry, ServiceTable, MAGLEV_DEFAULT_SIZE, OUT_BUF_LEN, VNET_HDR_LEN,
};

const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const GW_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01);
const CLIENT: PortId = PortId(1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const CLIENT_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02);
const SIZES: [usize; 3] = [10, 1_000, 10_000];
const NOW: u64 = 1_000_000_000;

fn vip(i: usize) -> Ipv4Addr {
    let [_, _, a, b] = u32::try_from(i).unwrap_or(0).to_be_bytes();
    Ipv4Addr::new(10, 96, a, b)
}

fn backend_ip(k: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, 10 + k)
}

/// A client pod, three backend pods, and `n` UDP services on port 53 over them.
fn node(n: usize) -> Pipeline {
    let cfg = PipelineConfig::new(
        GW_IP,
        GW_MAC,
        tapestry_benches::cidr(Ipv4Addr::new(10, 244, 1, 0), 24),
    );
    let mut p = Pipeline::new(cfg);
    p.add_port(
        CLIENT,
        PortRole::Pod {
            mac: CLIENT_MAC,
            ip: CLIENT_IP,
        },
    );
    for k in 0..3u8 {
        p.add_port(
            PortId(2 + u16::from(k)),
            PortRole::Pod {
                mac: MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 10 + k),
                ip: backend_ip(k),
            },
        );
    }
    let entries = (0..n)
        .map(|i| ServiceEntry {
            name: format!("default/svc-{i}:53"),
            vip: vip(i),
            port: 53,
            proto: L4Proto::Udp,
            backends: (0..3)
                .map(|k| Backend {
                    ip: backend_ip(k),
                    port: 5353,
                })
                .collect(),
            affinity: Affinity::None,
        })
        .collect();
    let table = ServiceTable::build(entries).unwrap_or_else(|e| panic!("bench table: {e}"));
    p.services().store(std::sync::Arc::new(table));
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
