//! Benchmarks of the bridge decision (`Pipeline::process`), one group per outcome:
//! known-destination forward, broadcast flood, and learning a new source MAC, each with
//! the MAC table prefilled to 10, 1,000 and 16,384 entries. Throughput is one packet
//! per iteration, so criterion reports packets per second. Only the decision is timed:
//! frames are prebuilt, no I/O happens, and state resets run outside the timing.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tapestry_benches::{eth_ipv4, tap_frame};
use tapestry_dataplane::{
    Action, MacAddr, Pipeline, PipelineConfig, PortId, PortRole, VNET_HDR_LEN,
};

const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const GW_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01);
const POD_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02);
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
/// Port of the learning-bench source MACs (forgotten between timed chunks).
const HOST: PortId = PortId(0);
/// The pod sending the forward and flood frames.
const POD: PortId = PortId(1);
/// Port on which the prefilled MACs were learned.
const FILL: PortId = PortId(2);
const SIZES: [usize; 3] = [10, 1_000, 16_384];
/// Distinct frames cycled through (distinct destinations or sources), so a large table
/// is exercised beyond one hot cache line.
const ROTATION: usize = 1_024;
/// What the I/O layer passes as `out`.
const OUT_LEN: usize = 65_546;
/// Everything is fresh: one second after start, far from the 300 s aging time.
const NOW: u64 = 1_000_000_000;

fn mac(i: usize) -> MacAddr {
    let [_, _, _, _, a, b, c, d] = (i as u64).to_be_bytes();
    MacAddr::new(0x0a, 0x00, a, b, c, d)
}

/// A 60-byte IPv4/UDP frame (after the zeroed virtio-net header): 12345 → 53,
/// 18 bytes of data.
fn frame(dst: MacAddr, src: MacAddr, src_ip: Ipv4Addr) -> Vec<u8> {
    tap_frame([0; VNET_HDR_LEN], |f| {
        eth_ipv4(dst, src, src_ip, Ipv4Addr::new(10, 244, 1, 3), 0)
            .udp(12_345, 53)
            .write(f, &[0x42; 18])
    })
}

/// A pipeline with a pod, a host port and `n` MACs learned on `FILL`.
fn prefilled(n: usize, capacity: usize) -> Pipeline {
    let mut cfg = PipelineConfig::new(
        GW_IP,
        GW_MAC,
        tapestry_benches::cidr(Ipv4Addr::new(10, 244, 1, 0), 24),
    );
    cfg.mac_capacity = capacity;
    let mut p = Pipeline::new(cfg);
    p.add_port(HOST, PortRole::Host);
    p.add_port(
        POD,
        PortRole::Pod {
            mac: POD_MAC,
            ip: POD_IP,
        },
    );
    p.add_port(FILL, PortRole::Host);
    let mut out = vec![0u8; OUT_LEN];
    for i in 0..n {
        let mut f = frame(MacAddr::BROADCAST, mac(i), Ipv4Addr::new(10, 244, 9, 9));
        let _ = p.process(FILL, &mut f, NOW, &mut out);
    }
    assert_eq!(p.mac_table_len(), n, "prefill");
    p
}

fn configure<'c>(
    c: &'c mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    g.sample_size(30);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    g
}

/// Pod → a known MAC on another port: learn-refresh the source, look up, `Forward`.
fn bench_forward(c: &mut Criterion) {
    let mut g = configure(c, "forward");
    for n in SIZES {
        let mut p = prefilled(n, 16_384 + 8);
        let k = n.min(ROTATION);
        // Spread the destinations over the whole prefilled range.
        let mut frames: Vec<Vec<u8>> = (0..k)
            .map(|j| frame(mac(j * n / k), POD_MAC, POD_IP))
            .collect();
        let mut out = vec![0u8; OUT_LEN];
        let mut check = frames.first().cloned().unwrap_or_default();
        assert_eq!(
            p.process(POD, &mut check, NOW, &mut out),
            Action::Forward(FILL)
        );
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            let mut i = 0;
            b.iter(|| {
                if let Some(f) = frames.get_mut(i) {
                    black_box(p.process(POD, black_box(f), NOW, &mut out));
                }
                i += 1;
                if i == k {
                    i = 0;
                }
            });
        });
    }
    g.finish();
}

/// Pod → broadcast: learn-refresh the source, `Flood`.
fn bench_flood(c: &mut Criterion) {
    let mut g = configure(c, "flood");
    for n in SIZES {
        let mut p = prefilled(n, 16_384 + 8);
        let mut f = frame(MacAddr::BROADCAST, POD_MAC, POD_IP);
        let mut out = vec![0u8; OUT_LEN];
        assert_eq!(p.process(POD, &mut f.clone(), NOW, &mut out), Action::Flood);
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                black_box(p.process(POD, black_box(&mut f), NOW, &mut out));
            });
        });
    }
    g.finish();
}

/// Times `frames` processed from `HOST` in chunks of at most `ROTATION`; between
/// chunks (untimed) the `HOST` port is re-added, which forgets what it learned.
#[allow(clippy::disallowed_methods)] // a benchmark measures wall time by definition
fn timed_learning(
    p: &mut Pipeline,
    frames: &mut [Vec<u8>],
    out: &mut [u8],
    iters: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let chunk = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(frames.len());
        let start = Instant::now();
        for f in frames.iter_mut().take(chunk) {
            black_box(p.process(HOST, black_box(f), NOW, out));
        }
        total += start.elapsed();
        p.remove_port(HOST);
        p.add_port(HOST, PortRole::Host);
        left -= chunk as u64;
    }
    total
}

/// Host → broadcast from a MAC never seen before: insert a new entry, `Flood`.
/// The table has room for `ROTATION` more entries above the prefill; a last case
/// shows the table-full path (default capacity 16,384, prefilled to capacity).
fn bench_learn(c: &mut Criterion) {
    let mut g = configure(c, "learn");
    let mut frames: Vec<Vec<u8>> = (0..ROTATION)
        .map(|j| {
            frame(
                MacAddr::BROADCAST,
                mac(1_000_000 + j),
                Ipv4Addr::new(10, 244, 9, 9),
            )
        })
        .collect();
    let mut out = vec![0u8; OUT_LEN];
    for n in SIZES {
        let mut p = prefilled(n, 16_384 + ROTATION + 8);
        g.bench_function(BenchmarkId::new("new_mac", n), |b| {
            b.iter_custom(|iters| timed_learning(&mut p, &mut frames, &mut out, iters));
        });
        let s = p.counters().snapshot();
        assert_eq!(
            s.get(tapestry_dataplane::Counter::TableFull),
            0,
            "learn bench must not hit a full table"
        );
    }
    let mut p = prefilled(16_384, 16_384);
    g.bench_function(BenchmarkId::new("table_full", 16_384), |b| {
        b.iter_custom(|iters| timed_learning(&mut p, &mut frames, &mut out, iters));
    });
    g.finish();
}

criterion_group!(benches, bench_forward, bench_flood, bench_learn);
criterion_main!(benches);
