//! Benchmarks of the cross-node path, one group per stage: encapsulation of a routed
//! 1,400-byte packet (`Pipeline::process` → `Action::Tunnel`), decapsulation plus
//! local delivery (`Pipeline::process_tunnel` → `Action::ToPort`, which verifies the
//! inner UDP checksum, or completes it when a Linux VXLAN sender left it partial),
//! software TSO of a 64 KiB GSO TCP frame into 47 VXLAN datagrams (in packets and in
//! bytes per second), and the staging of single 64-byte-payload datagrams into one
//! UDP GSO send (`tapestry_io::txbatch`: 64 datagrams staged per send, then cleared).
//! Routing rewrites the input in place (TTL), so each timed run gets a fresh copy of
//! the frame, made outside the timing by `iter_batched_ref`.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use etherparse::{IpHeaders, PacketBuilderStep, TcpOptionElement};
use tapestry_benches::{eth_ipv4, put16, tap_frame, tcp_header, L4_AT, TCP_ACK, TCP_PSH};
use tapestry_dataplane::wire::tcp::pseudo_header_partial;
use tapestry_dataplane::wire::{VnetHdr, VnetHdrRepr, VNET_HDR_F_NEEDS_CSUM, VNET_HDR_GSO_TCPV4};
use tapestry_dataplane::{
    Action, MacAddr, Peer, Pipeline, PipelineConfig, PortId, PortRole, RouteSnapshot, TunnelConfig,
    OUT_BUF_LEN, VNET_HDR_LEN,
};

const NOW: u64 = 1_000_000_000;
const POD: PortId = PortId(1);
const POD1_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD1_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02);
const POD2_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const POD2_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x02);
const GW1_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01);
const GW2_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x01);
const UNDERLAY1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const UNDERLAY2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const VTEP1: MacAddr = MacAddr::new(0x0a, 0x58, 0xc6, 0x12, 0, 1);
const VTEP2: MacAddr = MacAddr::new(0x0a, 0x58, 0xc6, 0x12, 0, 2);

/// Node `n` (1 or 2) with one pod and the other node as its peer.
fn node(n: u8) -> Pipeline {
    let (gw_mac, pod_mac, pod_ip, underlay, vtep) = if n == 1 {
        (GW1_MAC, POD1_MAC, POD1_IP, UNDERLAY1, VTEP1)
    } else {
        (GW2_MAC, POD2_MAC, POD2_IP, UNDERLAY2, VTEP2)
    };
    let other = 3 - n;
    let mut cfg = PipelineConfig::new(
        Ipv4Addr::new(10, 244, n, 1),
        gw_mac,
        tapestry_benches::cidr(Ipv4Addr::new(10, 244, n, 0), 24),
    );
    cfg.tunnel = Some(TunnelConfig::new(underlay, vtep, 1500));
    let mut p = Pipeline::new(cfg);
    p.add_port(PortId(0), PortRole::Host);
    p.add_port(
        POD,
        PortRole::Pod {
            mac: pod_mac,
            ip: pod_ip,
        },
    );
    let peer = Peer {
        name: format!("node-{other}"),
        underlay_ip: if n == 1 { UNDERLAY2 } else { UNDERLAY1 },
        vtep_mac: if n == 1 { VTEP2 } else { VTEP1 },
        subnet: tapestry_benches::cidr(Ipv4Addr::new(10, 244, other, 0), 24),
    };
    let snap = RouteSnapshot::build(
        tapestry_benches::cidr(Ipv4Addr::new(10, 244, n, 0), 24),
        tapestry_benches::cidr(Ipv4Addr::new(10, 244, 0, 0), 16),
        vec![peer],
    );
    p.routes()
        .store(Arc::new(snap.unwrap_or_else(|e| panic!("{e}"))));
    p
}

/// etherparse's builder for Ethernet (pod 1 → gateway) and IPv4 (pod 1 → pod 2).
fn pod1_to_pod2() -> PacketBuilderStep<IpHeaders> {
    eth_ipv4(GW1_MAC, POD1_MAC, POD1_IP, POD2_IP, 0x1234)
}

/// Offset of the inner UDP checksum in a VXLAN datagram (VXLAN 8, Ethernet 14, IPv4 20).
const DGRAM_UDP_CSUM: usize = 8 + 14 + 20 + 6;

/// A 1,400-byte IPv4/UDP packet from pod 1 to pod 2, complete UDP checksum.
fn udp_frame() -> Vec<u8> {
    tap_frame([0; VNET_HDR_LEN], |f| {
        pod1_to_pod2().udp(12_345, 53).write(f, &[0x42; 1372])
    })
}

/// A 65,483-byte TSO frame (MSS 1398, NEEDS_CSUM) from pod 1 to pod 2: TCP with
/// timestamps, its checksum field holding the pseudo-header sum as the kernel
/// leaves it for the device to finish.
fn gso_frame() -> Vec<u8> {
    let mut tcp = tcp_header(40_000, 5201, 1, 1, TCP_PSH | TCP_ACK, 0x01f5);
    let options = [
        TcpOptionElement::Noop,
        TcpOptionElement::Noop,
        TcpOptionElement::Timestamp(1, 2),
    ];
    tcp.set_options(&options).unwrap_or_else(|e| panic!("{e}"));
    let data = vec![0x5a; 65_483 - 20 - 32];
    let vnet = VnetHdrRepr {
        flags: VNET_HDR_F_NEEDS_CSUM,
        gso_type: VNET_HDR_GSO_TCPV4,
        hdr_len: 66,
        gso_size: 1398,
        csum_start: 34,
        csum_offset: 16,
    };
    let mut vnet_bytes = [0u8; VNET_HDR_LEN];
    vnet.emit(&mut VnetHdr::new_unchecked(&mut vnet_bytes[..]));
    let mut f = tap_frame(vnet_bytes, |f| {
        pod1_to_pod2().tcp_header(tcp).write(f, &data)
    });
    let partial = pseudo_header_partial(POD1_IP, POD2_IP, 6, 65_483 - 20);
    put16(&mut f, L4_AT + 16, partial);
    f
}

fn configure<'c>(
    c: &'c mut Criterion,
    name: &str,
    throughput: Throughput,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(throughput);
    g.sample_size(30);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    g
}

/// Pod → gateway → route lookup → TTL → VXLAN datagram for node 2.
fn bench_encap(c: &mut Criterion) {
    let mut g = configure(c, "tunnel_encap", Throughput::Elements(1));
    let mut p = node(1);
    let f = udp_frame();
    let mut out = vec![0u8; OUT_BUF_LEN];
    let mut check = f.clone();
    assert!(matches!(
        p.process(POD, &mut check, NOW, &mut out),
        Action::Tunnel { .. }
    ));
    g.bench_function("udp_1400", |b| {
        b.iter_batched_ref(
            || f.clone(),
            |f| {
                black_box(p.process(POD, f, NOW, &mut out));
            },
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

/// VXLAN datagram from node 1 → checks → route lookup → TTL → frame for the pod.
fn bench_decap(c: &mut Criterion) {
    let mut g = configure(c, "tunnel_decap", Throughput::Elements(1));
    let mut n1 = node(1);
    let mut n2 = node(2);
    let mut out = vec![0u8; OUT_BUF_LEN];
    let mut f = udp_frame();
    let mut dgram = match n1.process(POD, &mut f, NOW, &mut out) {
        Action::Tunnel { datagrams, .. } => datagrams.to_vec(),
        other => panic!("{other:?}"),
    };
    let src = SocketAddrV4::new(UNDERLAY1, 40_000);
    assert!(matches!(
        n2.process_tunnel(src, &mut dgram, NOW, &mut out),
        Action::ToPort(POD, _)
    ));
    g.bench_function("udp_1400_to_pod", |b| {
        b.iter(|| {
            black_box(n2.process_tunnel(src, black_box(&mut dgram), NOW, &mut out));
        });
    });
    // As a Linux `flannel.1` on a veth underlay sends it: checksum still partial.
    // `process_tunnel` completes it in `out` and leaves the input as it was.
    let partial = pseudo_header_partial(POD1_IP, POD2_IP, 17, 1380);
    if let Some(field) = dgram.get_mut(DGRAM_UDP_CSUM..DGRAM_UDP_CSUM + 2) {
        field.copy_from_slice(&partial.to_be_bytes());
    }
    assert!(matches!(
        n2.process_tunnel(src, &mut dgram, NOW, &mut out),
        Action::ToPort(POD, _)
    ));
    assert_eq!(
        n2.counters()
            .snapshot()
            .get(tapestry_dataplane::Counter::InnerChecksumsCompleted),
        1
    );
    g.bench_function("udp_1400_partial_csum_to_pod", |b| {
        b.iter(|| {
            black_box(n2.process_tunnel(src, black_box(&mut dgram), NOW, &mut out));
        });
    });
    g.finish();
}

/// One 64 KiB GSO frame → 47 segments with fresh checksums, as packets and as bytes.
fn bench_tso(c: &mut Criterion) {
    let f = gso_frame();
    let mut p = node(1);
    let mut out = vec![0u8; OUT_BUF_LEN];
    let mut check = f.clone();
    match p.process(POD, &mut check, NOW, &mut out) {
        Action::Tunnel {
            datagrams,
            segment_len,
            ..
        } => assert_eq!(datagrams.len().div_ceil(segment_len), 47),
        other => panic!("{other:?}"),
    }
    let bytes = u64::try_from(f.len() - VNET_HDR_LEN).unwrap_or(0);
    for (name, tp) in [
        ("tunnel_tso", Throughput::Elements(1)),
        ("tunnel_tso_bytes", Throughput::Bytes(bytes)),
    ] {
        let mut g = configure(c, name, tp);
        g.bench_function("tcp_64k_mss_1398", |b| {
            b.iter_batched_ref(
                || f.clone(),
                |f| {
                    black_box(p.process(POD, f, NOW, &mut out));
                },
                BatchSize::LargeInput,
            );
        });
        g.finish();
    }
}

/// 64 datagrams of one flow (a 64-byte UDP payload each, encapsulated: 114 bytes)
/// staged for one GSO send, then the stage is cleared as after the send.
fn bench_stage(c: &mut Criterion) {
    use tapestry_io::txbatch::{Push, TxBatch};
    let mut g = configure(c, "tunnel_stage", Throughput::Elements(64));
    let mut batch = TxBatch::new();
    let datagram = [0x5au8; 114];
    g.bench_function("64_datagrams_114B", |b| {
        b.iter(|| {
            for _ in 0..64 {
                let r = batch.push(UNDERLAY2, 7, black_box(&datagram));
                debug_assert_eq!(r, Push::Staged);
            }
            black_box(batch.staged().map(|(run, _)| run.count));
            batch.clear();
        });
    });
    g.finish();
}

criterion_group!(benches, bench_encap, bench_decap, bench_tso, bench_stage);
criterion_main!(benches);
