//! Benchmarks of the whole pipeline per packet, one group per path a pod's packet
//! takes through a node (`Pipeline::process` / `Pipeline::process_tunnel`, from the
//! frame as the TAP or the tunnel socket hands it over to the returned `Action`):
//!
//! - `pipeline/pod_to_pod_same_node`: a 1,400-byte TCP packet bridged between two pod
//!   ports (anti-spoofing, learn, MAC lookup), MAC table full at 16,384 entries;
//! - `pipeline/pod_to_remote_pod`: to the gateway, route lookup, TTL, VXLAN
//!   encapsulation, with 10, 1,000 and 5,000 routes (destinations spread over them);
//! - `pipeline/remote_to_pod`: a VXLAN datagram from a peer, peer check, decapsulation,
//!   route lookup, inner TCP checksum verified, frame for the pod built, with 10, 1,000
//!   and 5,000 routes (sources spread over them);
//! - `pipeline/pod_to_cluster_ip_established`: a 1,400-byte TCP packet of a tracked
//!   flow to a ClusterIP: conntrack hit, DNAT, routed to a local backend pod, with
//!   1,000 services and 1,000, 100,000 and 250,000 live flows, each packet of a flow
//!   drawn at random (so a large table costs its cache misses);
//! - `pipeline/pod_to_cluster_ip_first_packet`: a SYN of a new flow (a new client
//!   port each iteration): Maglev pick, reply-key probe, conntrack insert — with the
//!   table kept full (262,144 flows), so one eviction — DNAT, routed to a backend.
//!
//! The ClusterIP groups run with a flow file attached, as the agent does: every flow
//! change is written to it (`tables/flow_file.rs`; here plain memory, in the agent a
//! shared mapping: the same stores).
//!
//! The per-stage groups (bridge, route, tunnel, lb, dns) are in the other files.
//! Throughput is one packet per iteration: criterion's `elem/s` is packets per second
//! on one core, since the data plane runs one worker thread per node. Frames are
//! built before the timing; where the pipeline rewrites the frame in place (routing:
//! MACs and TTL; DNAT) each iteration gets a fresh copy made outside the timing
//! (`iter_batched_ref`).

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion};
use tapestry_benches::{
    cidr, mac, packet_group, retarget, tcp_frame, vxlan_datagram, Rng, Tcp, NOW, TCP_ACK, TCP_PSH,
    TCP_SYN,
};
use tapestry_dataplane::{
    Action, Affinity, Backend, L4Proto, MacAddr, Peer, Pipeline, PipelineConfig, PortId, PortRole,
    RouteSnapshot, ServiceEntry, ServiceTable, TunnelConfig, OUT_BUF_LEN,
};

/// This node's host port.
const HOST: PortId = PortId(0);
/// The client pod (sender in every bench but `remote_to_pod`, receiver there).
const POD_A: PortId = PortId(1);
/// A second pod on this node.
const POD_B: PortId = PortId(2);
/// Data bytes of a 1,400-byte IPv4/TCP packet.
const DATA_1400: usize = 1_400 - 40;
/// Destinations (or sources) cycled through, spread over the whole table.
const ROTATION: usize = 1_024;
const ROUTES: [usize; 3] = [10, 1_000, 5_000];
const FLOWS: [usize; 3] = [1_000, 100_000, 250_000];
const SERVICES: usize = 1_000;
/// Backend pods of every service (on this node, ports 3..).
const BACKENDS: u8 = 3;
const VNI: u32 = 1;

/// Node `i`'s pod subnet: 10.(128 + i / 256).(i % 256).0/24 in the cluster 10.128.0.0/9
/// (clear of the service CIDR 10.96.0.0/12). Node 0 is this node.
fn subnet(i: usize) -> Ipv4Addr {
    let [_, _, a, b] = u32::try_from(i).unwrap_or(0).to_be_bytes();
    Ipv4Addr::new(10, 128 + a, b, 0)
}

/// Host `h` of node `i`'s subnet (1 is the gateway).
fn host(i: usize, h: u8) -> Ipv4Addr {
    let [a, b, c, _] = subnet(i).octets();
    Ipv4Addr::new(a, b, c, h)
}

/// Node `i`'s underlay address and VTEP MAC.
fn underlay(i: usize) -> Ipv4Addr {
    let [_, _, a, b] = u32::try_from(i + 1).unwrap_or(0).to_be_bytes();
    Ipv4Addr::new(198, 18, a, b)
}

fn vtep(i: usize) -> MacAddr {
    let [_, _, a, b] = u32::try_from(i + 1).unwrap_or(0).to_be_bytes();
    MacAddr::new(0x0a, 0x58, 0xc6, 0x12, a, b)
}

const GW_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0x80, 0x00, 0x01);
const POD_A_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0x80, 0x00, 0x02);
const POD_B_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0x80, 0x00, 0x03);

fn pod_a_ip() -> Ipv4Addr {
    host(0, 2)
}

fn pod_b_ip() -> Ipv4Addr {
    host(0, 3)
}

/// Node 0 with a host port, pods A and B, the tunnel, and `routes` routes (its own
/// subnet and `routes - 1` peers).
fn node(routes: usize) -> Pipeline {
    let mut cfg = PipelineConfig::new(host(0, 1), GW_MAC, cidr(subnet(0), 24));
    cfg.tunnel = Some(TunnelConfig::new(underlay(0), vtep(0), 1500));
    let mut p = Pipeline::new(cfg);
    p.add_port(HOST, PortRole::Host);
    p.add_port(
        POD_A,
        PortRole::Pod {
            mac: POD_A_MAC,
            ip: pod_a_ip(),
        },
    );
    p.add_port(
        POD_B,
        PortRole::Pod {
            mac: POD_B_MAC,
            ip: pod_b_ip(),
        },
    );
    let peers = (1..routes)
        .map(|i| Peer {
            name: format!("node-{i}"),
            underlay_ip: underlay(i),
            vtep_mac: vtep(i),
            subnet: cidr(subnet(i), 24),
        })
        .collect();
    let snap = RouteSnapshot::build(
        cidr(subnet(0), 24),
        cidr(Ipv4Addr::new(10, 128, 0, 0), 9),
        peers,
    );
    let snap = snap.unwrap_or_else(|e| panic!("bench routes: {e}"));
    assert_eq!(snap.len(), routes);
    p.routes().store(Arc::new(snap));
    p
}

/// `k` of the peers 1..n, spread evenly (all of them when there are fewer).
fn spread_peers(n: usize) -> Vec<usize> {
    let peers = n.saturating_sub(1);
    let k = peers.min(ROTATION);
    (0..k).map(|t| 1 + t * peers / k).collect()
}

/// A 1,400-byte TCP data segment.
fn data_segment(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Tcp {
    Tcp {
        src,
        dst,
        sport,
        dport,
        flags: TCP_ACK | TCP_PSH,
        data_len: DATA_1400,
    }
}

/// Pod A → pod B's MAC, bridged; 16,384 MACs learned (the default capacity, full).
fn bench_same_node(c: &mut Criterion) {
    const MACS: usize = 16_384;
    let mut g = packet_group(c, "pipeline/pod_to_pod_same_node");
    let mut p = node(10);
    let mut out = vec![0u8; OUT_BUF_LEN];
    let mut ab = tcp_frame(
        POD_B_MAC,
        POD_A_MAC,
        &data_segment(pod_a_ip(), pod_b_ip(), 40_000, 80),
    );
    let mut ba = tcp_frame(
        POD_A_MAC,
        POD_B_MAC,
        &data_segment(pod_b_ip(), pod_a_ip(), 80, 40_000),
    );
    // B answers first (so A's frames find B's MAC), then the rest of the table fills
    // up with MACs seen on the host port.
    let _ = p.process(POD_B, &mut ba, NOW, &mut out);
    assert_eq!(
        p.process(POD_A, &mut ab, NOW, &mut out),
        Action::Forward(POD_B)
    );
    let mut fill = tcp_frame(
        MacAddr::BROADCAST,
        mac(0),
        &data_segment(host(0, 254), host(0, 255), 1, 1),
    );
    for i in 0..MACS - 2 {
        if let Some(src) = fill.get_mut(tapestry_dataplane::VNET_HDR_LEN + 6..) {
            if let Some(d) = src.get_mut(..6) {
                d.copy_from_slice(&mac(i).octets());
            }
        }
        let _ = p.process(HOST, &mut fill, NOW, &mut out);
    }
    assert_eq!(p.mac_table_len(), MACS, "prefill");
    assert_eq!(
        p.counters()
            .snapshot()
            .get(tapestry_dataplane::Counter::TableFull),
        0
    );
    g.bench_function(BenchmarkId::new("tcp_1400/macs", MACS), |b| {
        b.iter(|| {
            black_box(p.process(POD_A, black_box(&mut ab), NOW, &mut out));
        });
    });
    assert_eq!(
        p.process(POD_A, &mut ab, NOW, &mut out),
        Action::Forward(POD_B)
    );
    g.finish();
}

/// Pod A → gateway → a pod on another node: route lookup, TTL, VXLAN datagram.
fn bench_to_remote(c: &mut Criterion) {
    let mut g = packet_group(c, "pipeline/pod_to_remote_pod");
    let mut out = vec![0u8; OUT_BUF_LEN];
    for n in ROUTES {
        let mut p = node(n);
        let peers = spread_peers(n);
        let frames: Vec<Vec<u8>> = peers
            .iter()
            .map(|&j| {
                tcp_frame(
                    GW_MAC,
                    POD_A_MAC,
                    &data_segment(pod_a_ip(), host(j, 2), 40_000, 80),
                )
            })
            .collect();
        for (&j, f) in peers.iter().zip(&frames) {
            match p.process(POD_A, &mut f.clone(), NOW, &mut out) {
                Action::Tunnel { peer, .. } => assert_eq!(peer, underlay(j)),
                other => panic!("{other:?}"),
            }
        }
        let mut i = 0;
        g.bench_function(BenchmarkId::new("tcp_1400/routes", n), |b| {
            b.iter_batched_ref(
                || {
                    i = (i + 1) % frames.len();
                    frames.get(i).cloned().unwrap_or_default()
                },
                |f| {
                    black_box(p.process(POD_A, f, NOW, &mut out));
                },
                BatchSize::SmallInput,
            );
        });
        assert_eq!(p.counters().snapshot().dropped, 0);
    }
    g.finish();
}

/// A VXLAN datagram from a peer → checks → decapsulation → pod A (`ToPort`).
fn bench_from_remote(c: &mut Criterion) {
    let mut g = packet_group(c, "pipeline/remote_to_pod");
    let mut out = vec![0u8; OUT_BUF_LEN];
    for n in ROUTES {
        let mut p = node(n);
        let mut dgrams: Vec<(SocketAddrV4, Vec<u8>)> = spread_peers(n)
            .into_iter()
            .map(|j| {
                let seg = data_segment(host(j, 2), pod_a_ip(), 80, 40_000);
                let inner = tcp_frame(vtep(0), vtep(j), &seg);
                (
                    SocketAddrV4::new(underlay(j), 40_000),
                    vxlan_datagram(VNI, &inner),
                )
            })
            .collect();
        for (src, d) in &mut dgrams {
            let before = d.clone();
            assert!(matches!(
                p.process_tunnel(*src, d, NOW, &mut out),
                Action::ToPort(POD_A, _)
            ));
            // Delivery builds the frame in `out`: the datagram can be reused as is.
            assert_eq!(*d, before);
        }
        let k = dgrams.len();
        let mut i = 0;
        g.bench_function(BenchmarkId::new("tcp_1400/routes", n), |b| {
            b.iter(|| {
                if let Some((src, d)) = dgrams.get_mut(i) {
                    black_box(p.process_tunnel(*src, black_box(d), NOW, &mut out));
                }
                i += 1;
                if i == k {
                    i = 0;
                }
            });
        });
        let s = p.counters().snapshot();
        assert_eq!(
            (
                s.dropped,
                s.get(tapestry_dataplane::Counter::InnerChecksumsCompleted)
            ),
            (0, 0),
            "{s:?}"
        );
    }
    g.finish();
}

/// ClusterIP of service `i`.
fn vip(i: usize) -> Ipv4Addr {
    let [_, _, a, b] = u32::try_from(i + 1).unwrap_or(0).to_be_bytes();
    Ipv4Addr::new(10, 96, a, b)
}

/// Client port and service of flow `f`: service `f % SERVICES`, port 1024 + f / SERVICES.
fn flow(f: usize) -> (Ipv4Addr, u16) {
    let port = u16::try_from(1024 + (f / SERVICES) % 64_512).unwrap_or(1024);
    (vip(f % SERVICES), port)
}

/// Node 0 with `BACKENDS` backend pods and `SERVICES` TCP services on port 80. Each
/// service has its own target port (10,000 + i), so flows from one client port to
/// different services never share a reply key (no NAT port reallocation).
fn lb_node() -> Pipeline {
    let mut p = node(10);
    for k in 0..BACKENDS {
        p.add_port(
            PortId(3 + u16::from(k)),
            PortRole::Pod {
                mac: MacAddr::new(0x0a, 0x58, 0x0a, 0x80, 0x00, 10 + k),
                ip: host(0, 10 + k),
            },
        );
    }
    let entries = (0..SERVICES)
        .map(|i| ServiceEntry {
            name: format!("default/svc-{i}:80"),
            vip: vip(i),
            port: 80,
            proto: L4Proto::Tcp,
            backends: (0..BACKENDS)
                .map(|k| Backend {
                    ip: host(0, 10 + k),
                    port: u16::try_from(10_000 + i).unwrap_or(u16::MAX),
                })
                .collect(),
            affinity: Affinity::None,
        })
        .collect();
    let table = ServiceTable::build(entries).unwrap_or_else(|e| panic!("bench services: {e}"));
    p.services().store(Arc::new(table));
    // As the agent runs: every flow change mirrored into a flow file (here plain
    // memory; in the agent a shared mapping, the same stores).
    let capacity = p.config().conntrack_capacity;
    let mut mem = vec![0u8; tapestry_dataplane::flow_file_len(capacity)];
    tapestry_dataplane::init_flow_file(&mut mem, capacity);
    p.attach_flow_file(Box::new(mem), NOW)
        .unwrap_or_else(|e| panic!("bench flow file: {e}"));
    p
}

fn forwarded(a: &Action<'_>) -> bool {
    matches!(a, Action::Forward(_))
}

/// Pod A → ClusterIP, a flow already tracked: conntrack hit, DNAT, route to a backend.
fn bench_cluster_ip_established(c: &mut Criterion) {
    let mut g = packet_group(c, "pipeline/pod_to_cluster_ip_established");
    let mut out = vec![0u8; OUT_BUF_LEN];
    for flows in FLOWS {
        let mut p = lb_node();
        // Mid-connection ACKs: each flow is tracked as established.
        let ack = Tcp {
            flags: TCP_ACK,
            data_len: 0,
            ..data_segment(pod_a_ip(), vip(0), 1024, 80)
        };
        let ack = tcp_frame(GW_MAC, POD_A_MAC, &ack);
        for f in 0..flows {
            let (dst, sport) = flow(f);
            let mut fr = ack.clone();
            retarget(&mut fr, dst, sport);
            assert!(forwarded(&p.process(POD_A, &mut fr, NOW, &mut out)));
        }
        assert_eq!(p.conntrack_len(), flows);
        assert_eq!(
            p.counters()
                .snapshot()
                .get(tapestry_dataplane::Counter::LbNewFlows),
            flows as u64
        );
        let data = tcp_frame(
            GW_MAC,
            POD_A_MAC,
            &data_segment(pod_a_ip(), vip(0), 1024, 80),
        );
        let mut rng = Rng::new(0x5eed);
        g.bench_function(BenchmarkId::new("tcp_1400/flows", flows), |b| {
            b.iter_batched_ref(
                || {
                    let (dst, sport) = flow(rng.below(flows));
                    let mut fr = data.clone();
                    retarget(&mut fr, dst, sport);
                    fr
                },
                |f| black_box(forwarded(&p.process(POD_A, f, NOW, &mut out))),
                BatchSize::SmallInput,
            );
        });
        let s = p.counters().snapshot();
        assert_eq!(
            s.get(tapestry_dataplane::Counter::LbNewFlows),
            flows as u64,
            "every timed packet hit a flow"
        );
        assert_eq!(s.dropped, 0, "{s:?}");
    }
    g.finish();
}

/// Pod A → ClusterIP, a SYN from a new client port each iteration: Maglev, conntrack
/// insert (evicting one flow: the table is kept full), DNAT, route to a backend.
fn bench_cluster_ip_first_packet(c: &mut Criterion) {
    let mut g = packet_group(c, "pipeline/pod_to_cluster_ip_first_packet");
    let mut out = vec![0u8; OUT_BUF_LEN];
    let mut p = lb_node();
    let syn = Tcp {
        flags: TCP_SYN,
        data_len: 0,
        ..data_segment(pod_a_ip(), vip(0), 1024, 80)
    };
    let syn = tcp_frame(GW_MAC, POD_A_MAC, &syn);
    // Flow k goes to service k % 1,000 from port 1024 + (k / 1,000) % 64,512: a tuple
    // repeats only after 64.5 million packets, far beyond a run.
    let mut k: usize = 0;
    let mut next = || {
        let (dst, sport) = flow(k);
        k += 1;
        let mut fr = syn.clone();
        retarget(&mut fr, dst, sport);
        fr
    };
    let capacity = tapestry_dataplane::DEFAULT_CONNTRACK_CAPACITY;
    for _ in 0..capacity + SERVICES {
        assert!(forwarded(&p.process(POD_A, &mut next(), NOW, &mut out)));
    }
    assert_eq!(p.conntrack_len(), capacity);
    g.bench_function(BenchmarkId::new("tcp_syn/services", SERVICES), |b| {
        b.iter_batched_ref(
            &mut next,
            |f| black_box(forwarded(&p.process(POD_A, f, NOW, &mut out))),
            BatchSize::SmallInput,
        );
    });
    let s = p.counters().snapshot();
    assert!(
        s.get(tapestry_dataplane::Counter::ConntrackEvicted) > 0,
        "{s:?}"
    );
    assert_eq!(
        s.get(tapestry_dataplane::Counter::LbEstablished),
        0,
        "every timed packet was a new flow"
    );
    assert_eq!(s.dropped, 0, "{s:?}");
    g.finish();
}

criterion::criterion_group! {
    name = benches;
    config = tapestry_benches::config();
    targets = bench_same_node,
        bench_to_remote,
        bench_from_remote,
        bench_cluster_ip_established,
        bench_cluster_ip_first_packet
}

fn main() {
    eprintln!(
        "pipeline: throughput = packets per second on one core \
         (the data plane runs one worker thread per node); one element = one packet"
    );
    benches();
    tapestry_benches::config()
        .configure_from_args()
        .final_summary();
}
