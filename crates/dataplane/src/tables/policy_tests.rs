//! The compiled lookup against the rules as written, by hand and by a linear
//! reference.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use proptest::prelude::*;

const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const TCP: IpProtocol = IpProtocol::Tcp;
const UDP: IpProtocol = IpProtocol::Udp;
const SCTP: IpProtocol = IpProtocol::Unknown(132);
const ICMP: IpProtocol = IpProtocol::Icmp;

fn cidr(s: &str) -> Ipv4Cidr {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn block(c: &str, except: &[&str]) -> IpBlock {
    IpBlock {
        cidr: cidr(c),
        except: except.iter().map(|e| cidr(e)).collect(),
    }
}

fn port(protocol: PortProtocol, first: u16, last: u16) -> PolicyPort {
    PolicyPort {
        protocol,
        first,
        last,
    }
}

fn rule(peers: PolicyPeers, ports: PolicyPorts) -> PolicyRule {
    PolicyRule { peers, ports }
}

fn table(ingress: Option<Vec<PolicyRule>>, egress: Option<Vec<PolicyRule>>) -> PolicyTable {
    let spec = |r: Option<Vec<PolicyRule>>| {
        r.map(|rules| RuleSetSpec {
            policies: vec![PolicyId(7), PolicyId(3)],
            rules,
        })
    };
    PolicyTable::build(&[PodPolicy {
        pod: POD,
        ingress: spec(ingress),
        egress: spec(egress),
    }])
    .unwrap()
}

fn ok(
    t: &PolicyTable,
    dir: PolicyDirection,
    remote: &str,
    proto: IpProtocol,
    port: Option<u16>,
) -> bool {
    t.allows(dir, POD, ip(remote), proto, port).is_ok()
}

#[test]
fn none_is_open_and_empty_is_default_deny() {
    let t = table(None, Some(vec![]));
    assert!(ok(&t, PolicyDirection::Ingress, "1.2.3.4", TCP, Some(80)));
    assert!(ok(&t, PolicyDirection::Ingress, "1.2.3.4", ICMP, None));
    assert_eq!(
        t.allows(PolicyDirection::Egress, POD, ip("1.2.3.4"), TCP, Some(80)),
        Err(&[PolicyId(3), PolicyId(7)][..]),
        "denied, with the selecting policies sorted"
    );
    assert!(!ok(&t, PolicyDirection::Egress, "0.0.0.0", ICMP, None));
    // Another pod is open everywhere.
    assert!(t
        .allows(
            PolicyDirection::Egress,
            ip("10.244.1.3"),
            ip("1.2.3.4"),
            TCP,
            Some(1)
        )
        .is_ok());
    assert!(t.selects(POD) && !t.selects(ip("10.244.1.3")));
    // A pod selected in no direction is left out: the table is empty.
    let e = PolicyTable::build(&[PodPolicy {
        pod: POD,
        ingress: None,
        egress: None,
    }])
    .unwrap();
    assert!(e.is_empty());
    assert_eq!(e, PolicyTable::empty());
}

#[test]
fn blocks_with_except() {
    let t = table(
        Some(vec![rule(
            PolicyPeers::Blocks(vec![block(
                "10.0.0.0/8",
                &["10.1.0.0/16", "10.1.2.0/24", "10.9.9.9/32"],
            )]),
            PolicyPorts::Any,
        )]),
        None,
    );
    let i = PolicyDirection::Ingress;
    for (a, want) in [
        ("10.0.0.0", true),
        ("10.0.255.255", true),
        ("10.1.0.0", false),
        ("10.1.2.3", false),
        ("10.1.255.255", false),
        ("10.2.0.0", true),
        ("10.9.9.8", true),
        ("10.9.9.9", false),
        ("10.9.9.10", true),
        ("10.255.255.255", true),
        ("9.255.255.255", false),
        ("11.0.0.0", false),
        ("255.255.255.255", false),
        ("0.0.0.0", false),
    ] {
        assert_eq!(ok(&t, i, a, TCP, Some(1)), want, "{a}");
    }
    // Any ports: ICMP too.
    assert!(ok(&t, i, "10.0.0.1", ICMP, None));
}

#[test]
fn port_ranges_and_protocols() {
    let t = table(
        Some(vec![rule(
            PolicyPeers::Any,
            PolicyPorts::List(vec![
                port(PortProtocol::Tcp, 80, 80),
                port(PortProtocol::Udp, 1000, 2000),
                port(PortProtocol::Sctp, 9, 9),
                port(PortProtocol::Any, 65535, 65535),
            ]),
        )]),
        None,
    );
    let i = PolicyDirection::Ingress;
    assert!(ok(&t, i, "1.1.1.1", TCP, Some(80)));
    assert!(!ok(&t, i, "1.1.1.1", TCP, Some(81)));
    assert!(
        !ok(&t, i, "1.1.1.1", UDP, Some(80)),
        "a TCP port does not open UDP"
    );
    assert!(ok(&t, i, "1.1.1.1", UDP, Some(1000)));
    assert!(ok(&t, i, "1.1.1.1", UDP, Some(2000)));
    assert!(!ok(&t, i, "1.1.1.1", UDP, Some(2001)));
    assert!(!ok(&t, i, "1.1.1.1", UDP, Some(999)));
    assert!(!ok(&t, i, "1.1.1.1", TCP, Some(1500)));
    assert!(ok(&t, i, "1.1.1.1", SCTP, Some(9)));
    assert!(!ok(&t, i, "1.1.1.1", SCTP, Some(80)));
    for p in [TCP, UDP, SCTP] {
        assert!(ok(&t, i, "1.1.1.1", p, Some(65535)));
    }
    assert!(
        !ok(&t, i, "1.1.1.1", ICMP, None),
        "ports restrict to TCP/UDP/SCTP"
    );
    assert!(
        !ok(&t, i, "1.1.1.1", TCP, None),
        "a later fragment has no port"
    );
}

#[test]
fn union_of_rules() {
    let t = table(
        None,
        Some(vec![
            rule(
                PolicyPeers::Blocks(vec![block("10.244.2.0/24", &[])]),
                PolicyPorts::List(vec![port(PortProtocol::Tcp, 80, 80)]),
            ),
            rule(
                PolicyPeers::Blocks(vec![block("10.244.0.0/16", &["10.244.2.0/25"])]),
                PolicyPorts::List(vec![port(PortProtocol::Tcp, 443, 443)]),
            ),
            rule(
                PolicyPeers::Blocks(vec![block("10.96.0.10/32", &[])]),
                PolicyPorts::Any,
            ),
        ]),
    );
    let e = PolicyDirection::Egress;
    assert!(ok(&t, e, "10.244.2.1", TCP, Some(80)));
    assert!(!ok(&t, e, "10.244.2.1", TCP, Some(443)), "excepted for 443");
    assert!(ok(&t, e, "10.244.2.200", TCP, Some(443)));
    assert!(ok(&t, e, "10.244.2.200", TCP, Some(80)), "both rules");
    assert!(ok(&t, e, "10.244.9.9", TCP, Some(443)));
    assert!(!ok(&t, e, "10.244.9.9", TCP, Some(80)));
    assert!(ok(&t, e, "10.96.0.10", UDP, Some(53)));
    assert!(ok(&t, e, "10.96.0.10", ICMP, None));
    assert!(!ok(&t, e, "10.96.0.11", UDP, Some(53)));
}

#[test]
fn build_errors_are_named() {
    let bad = |r: PolicyRule| {
        PolicyTable::build(&[PodPolicy {
            pod: POD,
            ingress: Some(RuleSetSpec {
                policies: vec![],
                rules: vec![r],
            }),
            egress: None,
        }])
        .unwrap_err()
    };
    assert_eq!(
        bad(rule(
            PolicyPeers::Blocks(vec![block("10.0.0.0/16", &["10.1.0.0/24"])]),
            PolicyPorts::Any
        )),
        PolicyError::ExceptOutsideBlock {
            pod: POD,
            block: cidr("10.0.0.0/16"),
            except: cidr("10.1.0.0/24")
        }
    );
    assert_eq!(
        bad(rule(
            PolicyPeers::Any,
            PolicyPorts::List(vec![port(PortProtocol::Tcp, 90, 80)])
        )),
        PolicyError::EmptyPortRange {
            pod: POD,
            first: 90,
            last: 80
        }
    );
    assert_eq!(
        bad(rule(PolicyPeers::Blocks(vec![]), PolicyPorts::Any)),
        PolicyError::EmptyPeers { pod: POD }
    );
    assert_eq!(
        bad(rule(PolicyPeers::Any, PolicyPorts::List(vec![]))),
        PolicyError::EmptyPorts { pod: POD }
    );
    let twice = PodPolicy {
        pod: POD,
        ingress: Some(RuleSetSpec::default()),
        egress: None,
    };
    assert_eq!(
        PolicyTable::build(&[twice.clone(), twice]).unwrap_err(),
        PolicyError::DuplicatePod { pod: POD }
    );
    let big = PodPolicy {
        pod: POD,
        ingress: Some(RuleSetSpec {
            policies: vec![PolicyId(4096)],
            rules: vec![],
        }),
        egress: None,
    };
    assert_eq!(
        PolicyTable::build(&[big]).unwrap_err(),
        PolicyError::PolicyIdTooLarge { id: 4096 }
    );
    assert!(PolicyError::EmptyPorts { pod: POD }
        .to_string()
        .contains("10.244.1.2"));
}

#[test]
fn equality_ignores_generation_and_sees_rules() {
    let a = table(Some(vec![]), None);
    let b = table(Some(vec![]), None);
    assert_ne!(a.generation(), b.generation());
    assert_eq!(a, b);
    assert_ne!(a, table(None, Some(vec![])));
}

#[test]
fn counters_count_per_policy() {
    let c = PolicyCounters::default();
    c.bump_denied(&[PolicyId(1), PolicyId(4095)]);
    c.bump_denied(&[PolicyId(1)]);
    assert_eq!(c.denied(PolicyId(1)), 2);
    assert_eq!(c.denied(PolicyId(4095)), 1);
    assert_eq!(c.denied(PolicyId(2)), 0);
    assert_eq!(c.denied(PolicyId(9999)), 0);
}

/// A small rule for the property test: blocks in 10.0.0.0/24 (so that they overlap),
/// ports in 1..=8.
fn small_rule() -> impl Strategy<Value = PolicyRule> {
    let blk = (
        0u8..=255,
        24u8..=32,
        proptest::option::of((0u8..=255, 26u8..=32)),
    )
        .prop_map(|(a, len, ex)| {
            let c = Ipv4Cidr::new(Ipv4Addr::new(10, 0, 0, a), len).unwrap();
            let except = ex
                .and_then(|(e, elen)| Ipv4Cidr::new(Ipv4Addr::new(10, 0, 0, e), elen))
                .filter(|e| c.contains_net(e) && e.prefix_len() > c.prefix_len())
                .into_iter()
                .collect();
            IpBlock { cidr: c, except }
        });
    let peers = prop_oneof![
        1 => Just(PolicyPeers::Any),
        4 => proptest::collection::vec(blk, 1..3).prop_map(PolicyPeers::Blocks),
    ];
    let p = (0u8..4, 1u16..=8, 0u16..3).prop_map(|(k, first, w)| {
        let protocol = [
            PortProtocol::Tcp,
            PortProtocol::Udp,
            PortProtocol::Sctp,
            PortProtocol::Any,
        ][usize::from(k)];
        port(protocol, first, first + w)
    });
    let ports = prop_oneof![
        1 => Just(PolicyPorts::Any),
        3 => proptest::collection::vec(p, 1..3).prop_map(PolicyPorts::List),
    ];
    (peers, ports).prop_map(|(peers, ports)| rule(peers, ports))
}

/// The rules read literally.
fn reference(
    rules: &[PolicyRule],
    remote: Ipv4Addr,
    proto: IpProtocol,
    dport: Option<u16>,
) -> bool {
    rules.iter().any(|r| {
        let peer = match &r.peers {
            PolicyPeers::Any => true,
            PolicyPeers::Blocks(b) => b
                .iter()
                .any(|b| b.cidr.contains(remote) && !b.except.iter().any(|e| e.contains(remote))),
        };
        let port = match &r.ports {
            PolicyPorts::Any => true,
            PolicyPorts::List(l) => l.iter().any(|p| {
                let proto_ok = match p.protocol {
                    PortProtocol::Tcp => proto == TCP,
                    PortProtocol::Udp => proto == UDP,
                    PortProtocol::Sctp => proto == SCTP,
                    PortProtocol::Any => [TCP, UDP, SCTP].contains(&proto),
                };
                proto_ok && dport.is_some_and(|d| p.first <= d && d <= p.last)
            }),
        };
        peer && port
    })
}

proptest! {
    #[test]
    fn compiled_matches_the_rules(rules in proptest::collection::vec(small_rule(), 0..6)) {
        let t = table(Some(rules.clone()), None);
        let i = PolicyDirection::Ingress;
        for a in (0u8..=255).step_by(3).chain([255]) {
            let remote = Ipv4Addr::new(10, 0, 0, a);
            for proto in [TCP, UDP, SCTP, ICMP] {
                for dport in [None, Some(1), Some(4), Some(8), Some(9), Some(11)] {
                    prop_assert_eq!(
                        t.allows(i, POD, remote, proto, dport).is_ok(),
                        reference(&rules, remote, proto, dport),
                        "{} {:?} {:?}", remote, proto, dport
                    );
                }
            }
        }
        prop_assert_eq!(t.allows(i, POD, Ipv4Addr::new(10, 0, 1, 0), TCP, Some(1)).is_ok(),
            reference(&rules, Ipv4Addr::new(10, 0, 1, 0), TCP, Some(1)));
    }
}

/// A rule set over these interval starts (sorted, unique, the first 0), with the
/// radix its size calls for.
fn over(starts: Vec<u32>) -> RuleSet {
    let n = starts.len();
    RuleSet {
        radix: Radix::build(&starts),
        starts: starts.into_boxed_slice(),
        sets: vec![0; n].into_boxed_slice(),
        port_sets: Box::new([]),
        policies: Box::new([]),
    }
}

/// The interval of `a` by a plain binary search over every start.
fn plain(r: &RuleSet, a: u32) -> usize {
    r.starts.partition_point(|s| *s <= a) - 1
}

fn starts_strategy() -> impl Strategy<Value = Vec<u32>> {
    // Spread over the whole space, or packed in one corner (one /20), and sizes on
    // both sides of the radix threshold.
    (
        proptest::collection::btree_set(any::<u32>(), 1..400),
        any::<bool>(),
        any::<u32>(),
    )
        .prop_map(|(set, packed, base)| {
            let mut v: Vec<u32> = set
                .into_iter()
                .map(|s| {
                    if packed {
                        (base & !0xfff) | (s & 0xfff)
                    } else {
                        s
                    }
                })
                .collect();
            v.push(0);
            v.sort_unstable();
            v.dedup();
            v
        })
}

proptest! {
    #[test]
    fn the_radix_finds_the_interval_a_binary_search_finds(
        starts in starts_strategy(),
        probes in proptest::collection::vec(any::<u32>(), 64),
    ) {
        let r = over(starts.clone());
        prop_assert_eq!(r.radix.index.is_empty(), starts.len() < RADIX_MIN);
        let edges = starts
            .iter()
            .flat_map(|s| [s.saturating_sub(1), *s, s.saturating_add(1)]);
        for a in edges.chain(probes).chain([0, u32::MAX]) {
            prop_assert_eq!(r.interval(a), plain(&r, a), "address {:#x}", a);
        }
    }
}

#[test]
fn the_radix_spreads_rules_over_buckets() {
    // 10,000 /24s every other /24 of 11.0.0.0/8, as the benchmark has them: about
    // four starts a bucket, none with more than a handful.
    let mut starts = vec![0u32];
    for i in 0..10_000u32 {
        let lo = u32::from(Ipv4Addr::new(11, 0, 0, 0)) + ((2 * i) << 8);
        starts.extend([lo, lo + 256]);
    }
    let r = over(starts);
    let widest = r.radix.index.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(r.radix.index.len() >= 4_096, "{}", r.radix.index.len());
    assert!(widest <= 8, "{widest}");
    for a in [0, u32::from(Ipv4Addr::new(11, 0, 0, 5)), u32::MAX] {
        assert_eq!(r.interval(a), plain(&r, a));
    }
}
