//! Benchmarks of NetworkPolicy enforcement, with 10, 1,000 and 10,000 rules selecting
//! the sending pod (its egress):
//!
//! - `policy/decision`: `PolicyTable::allows` alone, the peer drawn from 1,024
//!   addresses spread over every rule's block;
//! - `policy/first_packet`: the whole pipeline for a TCP SYN of a new flow from pod A,
//!   bridged (anti-spoofing, learn, the decision, the flow inserted into the policy
//!   stage's table — every set of its 262,144 flows kept full, so one eviction —,
//!   MAC lookup); a
//!   new destination or port every iteration; `no_policy` is the same SYN without a
//!   published table; `tcp_syn_flows_4096` the same with a 4,096-flow table (it fits
//!   the caches: the policy work without the flow table's cache misses);
//! - `policy/established`: a 1,400-byte TCP data segment of a tracked flow (one flow
//!   lookup), beside the same segment with no table published.
//!
//! The rules are the shape a compiler produces from pod selectors and ipBlocks: rule
//! `i` admits the /24 `11.x.y.0/24` (x.y = 2i, so that rules leave gaps between them),
//! every tenth one minus its first 16 addresses, on TCP 80 and on one of 50 port
//! ranges; the first also admits pod B's /24. One packet per iteration; setup stays
//! out of the timing (`iter_batched_ref`).

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion};
use tapestry_benches::{
    cidr, packet_group, retarget, tcp_frame, Rng, Tcp, NOW, TCP_ACK, TCP_PSH, TCP_SYN,
};
use tapestry_dataplane::wire::IpProtocol;
use tapestry_dataplane::{
    Action, IpBlock, MacAddr, Pipeline, PipelineConfig, PodPolicy, PolicyDirection, PolicyId,
    PolicyPeers, PolicyPort, PolicyPorts, PolicyRule, PolicyTable, PortId, PortProtocol, PortRole,
    RuleSetSpec, OUT_BUF_LEN,
};

const RULES: [usize; 3] = [10, 1_000, 10_000];
const POD_A: PortId = PortId(1);
const POD_B: PortId = PortId(2);
const POD_A_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0x80, 0x00, 0x02);
const POD_B_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0x80, 0x00, 0x03);
const GW_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0x80, 0x00, 0x01);
const POD_A_IP: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 2);
const POD_B_IP: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 3);
/// Data bytes of a 1,400-byte IPv4/TCP packet.
const DATA_1400: usize = 1_400 - 40;
/// A flow table that fits the caches: what the first packet costs without the
/// cache misses of a 262,144-flow table.
const SMALL_TABLE: usize = 4_096;

/// Rule `i`'s block: 11.x.y.0/24 with x.y = 2i.
fn block(i: usize) -> Ipv4Addr {
    let [_, _, x, y] = u32::try_from(2 * i).unwrap_or(0).to_be_bytes();
    Ipv4Addr::new(11, x, y, 0)
}

/// An address rule `i` admits: host 16..=250 of its block, by `h`.
fn peer(i: usize, h: usize) -> Ipv4Addr {
    let [a, b, c, _] = block(i).octets();
    Ipv4Addr::new(a, b, c, 16 + u8::try_from(h % 235).unwrap_or(0))
}

fn rules(n: usize) -> Vec<PolicyRule> {
    (0..n)
        .map(|i| {
            let mut blocks = vec![IpBlock {
                cidr: cidr(block(i), 24),
                except: if i % 10 == 0 {
                    vec![cidr(block(i), 28)]
                } else {
                    vec![]
                },
            }];
            if i == 0 {
                blocks.push(IpBlock::new(cidr(Ipv4Addr::new(10, 128, 0, 0), 24)));
            }
            let first = 1_000 + 10 * u16::try_from(i % 50).unwrap_or(0);
            PolicyRule {
                peers: PolicyPeers::Blocks(blocks),
                ports: PolicyPorts::List(vec![
                    PolicyPort {
                        protocol: PortProtocol::Tcp,
                        first: 80,
                        last: 80,
                    },
                    PolicyPort {
                        protocol: PortProtocol::Any,
                        first,
                        last: first + 5,
                    },
                ]),
            }
        })
        .collect()
}

/// A table where pod A's egress has `n` rules.
fn table(n: usize) -> PolicyTable {
    let a = PodPolicy {
        pod: POD_A_IP,
        ingress: None,
        egress: Some(RuleSetSpec {
            policies: vec![PolicyId(1)],
            rules: rules(n),
        }),
    };
    PolicyTable::build(&[a]).unwrap_or_else(|e| panic!("bench policies: {e}"))
}

fn bench_decision(c: &mut Criterion) {
    let mut g = packet_group(c, "policy/decision");
    for n in RULES {
        let t = table(n);
        let mut rng = Rng::new(0x5eed);
        let peers: Vec<Ipv4Addr> = (0..1_024).map(|h| peer(rng.below(n), h)).collect();
        let mut k = 0;
        g.bench_function(BenchmarkId::new("tcp/rules", n), |b| {
            b.iter(|| {
                k = (k + 1) & 1_023;
                let remote = peers.get(k).copied().unwrap_or(POD_B_IP);
                black_box(t.allows(
                    PolicyDirection::Egress,
                    POD_A_IP,
                    black_box(remote),
                    IpProtocol::Tcp,
                    Some(80),
                ))
                .is_ok()
            });
        });
        assert!(peers.iter().all(|r| t
            .allows(
                PolicyDirection::Egress,
                POD_A_IP,
                *r,
                IpProtocol::Tcp,
                Some(80)
            )
            .is_ok()));
    }
    g.finish();
}

/// A node with pods A and B, B's MAC learned, and `rules` egress rules on A (`None`:
/// no table published); flow tables of `flows` entries.
fn node(rules: Option<usize>, flows: usize) -> Pipeline {
    let mut cfg = PipelineConfig::new(
        Ipv4Addr::new(10, 128, 0, 1),
        GW_MAC,
        cidr(Ipv4Addr::new(10, 128, 0, 0), 24),
    );
    cfg.conntrack_capacity = flows;
    let mut p = Pipeline::new(cfg);
    for (port, mac, ip) in [(POD_A, POD_A_MAC, POD_A_IP), (POD_B, POD_B_MAC, POD_B_IP)] {
        p.add_port(port, PortRole::Pod { mac, ip });
    }
    let mut out = vec![0u8; OUT_BUF_LEN];
    let mut hello = tcp_frame(
        POD_A_MAC,
        POD_B_MAC,
        &segment(POD_B_IP, POD_A_IP, 1, TCP_ACK, 0),
    );
    let _ = p.process(POD_B, &mut hello, NOW, &mut out);
    if let Some(n) = rules {
        p.policies().store(Arc::new(table(n)));
    }
    p
}

fn segment(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, flags: u8, data_len: usize) -> Tcp {
    Tcp {
        src,
        dst,
        sport,
        dport: 80,
        flags,
        data_len,
    }
}

fn forwarded(a: &Action<'_>) -> bool {
    matches!(a, Action::Forward(POD_B))
}

fn bench_first_packet(c: &mut Criterion) {
    let mut g = packet_group(c, "policy/first_packet");
    let mut out = vec![0u8; OUT_BUF_LEN];
    let syn = tcp_frame(
        POD_B_MAC,
        POD_A_MAC,
        &segment(POD_A_IP, POD_B_IP, 1024, TCP_SYN, 0),
    );
    let full = tapestry_dataplane::DEFAULT_CONNTRACK_CAPACITY;
    let runs = [
        (None, full),
        (Some(10), full),
        (Some(1_000), full),
        (Some(10_000), full),
        (Some(10_000), SMALL_TABLE),
    ];
    for (n, capacity) in runs {
        let mut p = node(n, capacity);
        let rules = n.unwrap_or(1);
        // Flow k: rule k % n's block, host (k / n) % 235, port 1024 + ...: a tuple
        // repeats only after n x 235 x 64,512 packets, far beyond a run.
        let mut k: usize = 0;
        let mut next = || {
            let dst = peer(k % rules, k / rules);
            let sport = u16::try_from(1024 + (k / rules / 235) % 64_512).unwrap_or(1024);
            k += 1;
            let mut fr = syn.clone();
            retarget(&mut fr, dst, sport);
            fr
        };
        if n.is_some() {
            // Four flows per way: every set of the table is full (a set-associative
            // table fills set by set), so each new flow evicts one.
            for _ in 0..4 * capacity {
                assert!(forwarded(&p.process(POD_A, &mut next(), NOW, &mut out)));
            }
            assert!(p.policy_flows_len() >= capacity * 99 / 100);
            assert!(p.policy_flows_len() <= capacity);
        }
        let id = n.map_or_else(|| "no_policy".to_string(), |n| format!("rules/{n}"));
        let name = if capacity == full {
            "tcp_syn".to_string()
        } else {
            format!("tcp_syn_flows_{capacity}")
        };
        g.bench_function(BenchmarkId::new(name, id), |b| {
            b.iter_batched_ref(
                &mut next,
                |f| black_box(forwarded(&p.process(POD_A, f, NOW, &mut out))),
                BatchSize::SmallInput,
            );
        });
        let s = p.counters().snapshot();
        assert_eq!(s.dropped, 0, "{s:?}");
    }
    g.finish();
}

fn bench_established(c: &mut Criterion) {
    let mut g = packet_group(c, "policy/established");
    let mut out = vec![0u8; OUT_BUF_LEN];
    let data = Tcp {
        flags: TCP_ACK | TCP_PSH,
        ..segment(POD_A_IP, POD_B_IP, 40_000, 0, DATA_1400)
    };
    let mut data = tcp_frame(POD_B_MAC, POD_A_MAC, &data);
    for n in [None, Some(10_000)] {
        let mut p = node(n, tapestry_dataplane::DEFAULT_CONNTRACK_CAPACITY);
        assert!(forwarded(&p.process(POD_A, &mut data, NOW, &mut out)));
        assert_eq!(p.policy_flows_len(), usize::from(n.is_some()));
        let id = n.map_or_else(|| "no_policy".to_string(), |n| format!("rules/{n}"));
        g.bench_function(BenchmarkId::new("tcp_1400", id), |b| {
            b.iter(|| {
                black_box(forwarded(&p.process(
                    POD_A,
                    black_box(&mut data),
                    NOW,
                    &mut out,
                )))
            });
        });
        assert_eq!(p.policy_flows_len(), usize::from(n.is_some()));
    }
    g.finish();
}

criterion::criterion_group! {
    name = benches;
    config = tapestry_benches::config();
    targets = bench_decision, bench_first_packet, bench_established
}

fn main() {
    eprintln!("policy: one element = one packet (or one decision)");
    benches();
    tapestry_benches::config()
        .configure_from_args()
        .final_summary();
}
