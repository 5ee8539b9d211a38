#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use core::net::Ipv4Addr;

use super::*;
use crate::wire::tcp::{TCP_ACK, TCP_FIN, TCP_SYN};

const SEC: Nanos = 1_000_000_000;

fn tuple(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: L4Proto) -> Tuple {
    Tuple {
        src: Ipv4Addr::from(src),
        sport,
        dst: Ipv4Addr::from(dst),
        dport,
        proto,
    }
}

fn rev(t: &Tuple) -> Tuple {
    Tuple {
        src: t.dst,
        sport: t.dport,
        dst: t.src,
        dport: t.sport,
        proto: t.proto,
    }
}

/// Flow `i`: a TCP connection from 10.0.x.y:(1000 + i % 50000) to 10.1.0.1:80.
fn conn(i: u32) -> Tuple {
    let [_, _, x, y] = i.to_be_bytes();
    tuple(
        [10, 0, x, y],
        1_000 + (i % 50_000) as u16,
        [10, 1, 0, 1],
        80,
        L4Proto::Tcp,
    )
}

fn flow(after: Tuple, before: Tuple, expires: Nanos, generation: u64) -> PolicyFlow {
    PolicyFlow {
        after,
        before,
        state: FlowState::SynSent,
        fins: 0,
        from_host_port: false,
        expires,
        generation,
    }
}

/// Inserts the flow of `after`/`before` (it must be absent), returning its probe.
fn add(t: &mut PolicyFlows, f: &PolicyFlow, now: Nanos, c: &Counters) -> Probe {
    let mut p = t.probe(&f.after, &f.before);
    assert!(t.find(&mut p, now, c).is_none(), "{f:?} already stored");
    t.insert(&mut p, f, now, c);
    p
}

fn find(t: &mut PolicyFlows, after: &Tuple, before: &Tuple, now: Nanos) -> Option<(Slot, Dir)> {
    let mut p = t.probe(after, before);
    let hit = t.find(&mut p, now, &Counters::default())?;
    let f = t.get(hit.slot).unwrap();
    assert_eq!((hit.state, hit.generation), (f.state, f.generation));
    Some((hit.slot, hit.dir))
}

#[test]
fn sets_are_aligned_on_cache_lines() {
    for capacity in [1, 8, 100, 4_096] {
        let t = PolicyFlows::new(capacity);
        assert_eq!((t.meta.as_ptr() as usize + t.meta_base * 4) % 64, 0);
        assert_eq!((t.flows.as_ptr() as usize + t.flows_base * 8) % 64, 0);
        assert!(t.capacity() >= capacity);
        let sets = t.mask + 1;
        assert!(t.meta.len() >= t.meta_base + sets * META_WORDS);
        assert!(t.flows.len() >= t.flows_base + sets * WAYS * FLOW_WORDS);
        // The last way of the last set is reachable.
        let last = Slot {
            set: t.mask,
            way: WAYS - 1,
        };
        assert!(t.flow(last).is_some() && t.meta(last.set).is_some());
    }
}

#[test]
fn both_directions_find_one_flow() {
    let c = Counters::default();
    let mut t = PolicyFlows::new(64);
    let a = tuple([10, 0, 0, 2], 40_000, [10, 0, 0, 3], 80, L4Proto::Tcp);
    let f = flow(a, a, 30 * SEC, 7);
    add(&mut t, &f, 0, &c);
    assert_eq!(t.len(), 1);
    let (s, dir) = find(&mut t, &a, &a, SEC).unwrap();
    assert_eq!(dir, Dir::Forward);
    assert_eq!(t.get(s), Some(f));
    assert_eq!(find(&mut t, &rev(&a), &rev(&a), SEC), Some((s, Dir::Reply)));
    // Another port, another protocol, another address: other flows.
    let mut other = a;
    other.sport += 1;
    assert_eq!(find(&mut t, &other, &other, SEC), None);
    other = a;
    other.proto = L4Proto::Udp;
    assert_eq!(find(&mut t, &other, &other, SEC), None);
    other = a;
    other.dst = Ipv4Addr::new(10, 0, 0, 4);
    assert_eq!(find(&mut t, &other, &other, SEC), None);
    assert_eq!(c.snapshot().get(Counter::ConntrackEvicted), 0);
}

#[test]
fn a_natted_flow_is_found_by_its_keys_only() {
    let c = Counters::default();
    let mut t = PolicyFlows::new(64);
    // Client 10.0.0.2 to ClusterIP 10.96.0.10:53, DNATed to 10.0.1.5:5353.
    let before = tuple([10, 0, 0, 2], 40_000, [10, 96, 0, 10], 53, L4Proto::Udp);
    let after = tuple([10, 0, 0, 2], 40_000, [10, 0, 1, 5], 5353, L4Proto::Udp);
    add(&mut t, &flow(after, before, 30 * SEC, 1), 0, &c);
    let (s, dir) = find(&mut t, &after, &before, SEC).unwrap();
    assert_eq!(dir, Dir::Forward);
    // The reply: from the backend before the balancer, from the ClusterIP after it.
    assert_eq!(
        find(&mut t, &rev(&before), &rev(&after), SEC),
        Some((s, Dir::Reply))
    );
    // Half a match is no match: the DNATed tuple alone, the reply not un-NATed.
    assert_eq!(find(&mut t, &after, &after, SEC), None);
    assert_eq!(find(&mut t, &rev(&after), &rev(&after), SEC), None);
    assert_eq!(find(&mut t, &before, &before, SEC), None);
    assert_eq!(find(&mut t, &rev(&after), &rev(&before), SEC), None);
}

#[test]
fn a_full_set_evicts_the_flow_that_expires_first() {
    let c = Counters::default();
    // One set of eight ways.
    let mut t = PolicyFlows::new(WAYS);
    assert_eq!(t.capacity(), WAYS);
    for i in 0..8 {
        let a = conn(i);
        // Flow 5 expires first.
        let expires = if i == 5 {
            40 * SEC
        } else {
            100 * SEC + Nanos::from(i) * SEC
        };
        add(&mut t, &flow(a, a, expires, 1), 0, &c);
    }
    assert_eq!(t.len(), 8);
    let a = conn(100);
    add(&mut t, &flow(a, a, 130 * SEC, 1), SEC, &c);
    assert_eq!(t.len(), 8);
    assert_eq!(c.snapshot().get(Counter::ConntrackEvicted), 1);
    assert_eq!(find(&mut t, &conn(5), &conn(5), SEC), None, "5 went");
    for i in [0, 1, 2, 3, 4, 6, 7, 100] {
        assert!(find(&mut t, &conn(i), &conn(i), SEC).is_some(), "{i}");
    }
    // An expired flow is taken before any live one, and counted as expired.
    let a = conn(101);
    add(&mut t, &flow(a, a, 200 * SEC, 1), 101 * SEC, &c);
    assert_eq!(c.snapshot().get(Counter::ConntrackExpired), 1);
    assert_eq!(c.snapshot().get(Counter::ConntrackEvicted), 1);
    assert_eq!(
        find(&mut t, &conn(0), &conn(0), 0),
        None,
        "0 expired at 100 s"
    );
}

#[test]
fn a_packet_refreshes_the_eviction_order() {
    let c = Counters::default();
    let timeouts = ConntrackTimeouts::default();
    let mut t = PolicyFlows::new(WAYS);
    for i in 0..8 {
        let a = conn(i);
        add(
            &mut t,
            &flow(a, a, 30 * SEC + Nanos::from(i) * SEC, 1),
            0,
            &c,
        );
    }
    // Flow 0 would go first; its SYN/ACK establishes it (an hour).
    let (s, dir) = find(&mut t, &rev(&conn(0)), &rev(&conn(0)), SEC).unwrap();
    assert_eq!(dir, Dir::Reply);
    t.on_packet(s, dir, TCP_SYN | TCP_ACK, SEC, &timeouts);
    let f = t.get(s).unwrap();
    assert_eq!(f.state, FlowState::Established);
    assert_eq!(f.expires, SEC + timeouts.tcp_established);
    let a = conn(100);
    add(&mut t, &flow(a, a, 200 * SEC, 1), 2 * SEC, &c);
    assert!(find(&mut t, &conn(0), &conn(0), 2 * SEC).is_some());
    assert_eq!(find(&mut t, &conn(1), &conn(1), 2 * SEC), None, "1 went");
}

#[test]
fn tcp_state_and_generation_are_kept() {
    let c = Counters::default();
    let timeouts = ConntrackTimeouts::default();
    let mut t = PolicyFlows::new(64);
    let a = conn(1);
    let mut f = flow(a, a, 30 * SEC, 3);
    f.from_host_port = true;
    add(&mut t, &f, 0, &c);
    let (s, _) = find(&mut t, &a, &a, 0).unwrap();
    t.set_generation(s, 4);
    let g = t.get(s).unwrap();
    assert_eq!((g.state, g.generation), (FlowState::SynSent, 4));
    t.on_packet(s, Dir::Reply, TCP_SYN | TCP_ACK, SEC, &timeouts);
    t.on_packet(s, Dir::Forward, TCP_FIN | TCP_ACK, 2 * SEC, &timeouts);
    assert_eq!(t.get(s).unwrap().fins, 0b01);
    t.on_packet(s, Dir::Reply, TCP_FIN | TCP_ACK, 3 * SEC, &timeouts);
    let g = t.get(s).unwrap();
    assert_eq!(
        (g.state, g.fins, g.generation),
        (FlowState::Closing, 0b11, 4)
    );
    assert_eq!(g.expires, 3 * SEC + timeouts.tcp_closing);
    assert!(g.from_host_port);
    assert_eq!((g.after, g.before), (a, a));
}

#[test]
fn expired_flows_vanish_on_lookup_and_sweep() {
    let c = Counters::default();
    let mut t = PolicyFlows::new(64);
    for i in 0..10 {
        let a = conn(i);
        add(&mut t, &flow(a, a, 30 * SEC, 1), 0, &c);
    }
    let mut p = t.probe(&conn(3), &conn(3));
    assert!(t.find(&mut p, 30 * SEC - 1, &c).is_some());
    assert_eq!(t.find(&mut p, 30 * SEC, &c), None);
    assert_eq!(t.len(), 9);
    assert_eq!(c.snapshot().get(Counter::ConntrackExpired), 1);
    // Nothing expired yet: a sweep of the whole table removes nothing.
    assert_eq!(t.sweep(SEC, 64, &c), 0);
    // A sweep visits `budget` ways (whole sets) in turn, from where it stopped.
    let mut removed = 0;
    for _ in 0..8 {
        removed += t.sweep(30 * SEC, 8, &c);
    }
    assert_eq!(removed, 9);
    assert_eq!(t.len(), 0);
    assert_eq!(c.snapshot().get(Counter::ConntrackExpired), 10);
    assert_eq!(t.find(&mut t.probe(&conn(4), &conn(4)), 0, &c), None);
}

#[test]
fn a_full_table_stays_bounded_and_counts_every_eviction() {
    let c = Counters::default();
    let mut t = PolicyFlows::new(1_024);
    let n = 20_000;
    for i in 0..n {
        let a = conn(i);
        // Each expires 100 ms after the one before: the older go first.
        let expires = 30 * SEC + Nanos::from(i) * SEC / 10;
        add(&mut t, &flow(a, a, expires, 1), 0, &c);
        assert!(t.len() <= t.capacity());
    }
    let evicted = c.snapshot().get(Counter::ConntrackEvicted);
    assert_eq!(evicted, u64::from(n) - t.len() as u64);
    // Nearly every way is in use (a set fills before the table does).
    assert!(t.len() > t.capacity() * 9 / 10, "{}", t.len());
    // The most recent flows are all there (each set evicts its oldest first), and
    // exactly `len` flows are found.
    for i in n - 64..n {
        assert!(find(&mut t, &conn(i), &conn(i), 0).is_some(), "{i}");
    }
    let found = (0..n)
        .filter(|i| find(&mut t, &conn(*i), &conn(*i), 0).is_some())
        .count();
    assert_eq!(found, t.len());
    // Removing empties ways for new flows without eviction.
    let (s, _) = find(&mut t, &conn(n - 1), &conn(n - 1), 0).unwrap();
    t.remove(s);
    t.remove(s);
    assert_eq!(found - 1, t.len());
}

#[test]
fn ties_are_evicted_in_turn() {
    let c = Counters::default();
    let mut t = PolicyFlows::new(WAYS);
    // Sixteen flows expiring at the same time into one set of eight: the second
    // eight replace the first eight, not one way eight times.
    for i in 0..16 {
        let a = conn(i);
        add(&mut t, &flow(a, a, 30 * SEC, 1), 0, &c);
    }
    assert_eq!(c.snapshot().get(Counter::ConntrackEvicted), 8);
    for i in 0..16 {
        assert_eq!(find(&mut t, &conn(i), &conn(i), 0).is_some(), i >= 8, "{i}");
    }
}

#[test]
fn the_last_flow_is_forgotten_with_its_slot() {
    let c = Counters::default();
    let mut t = PolicyFlows::new(WAYS);
    let a = conn(0);
    add(&mut t, &flow(a, a, 30 * SEC, 1), 0, &c);
    // Both directions of the last flow, without a search.
    let (s, _) = find(&mut t, &rev(&a), &rev(&a), 0).unwrap();
    assert_eq!(t.last.unwrap().slot, s);
    assert_eq!(find(&mut t, &a, &a, 0), Some((s, Dir::Forward)));
    // Its slot emptied: gone, cache and all.
    t.remove(s);
    assert!(t.last.is_none());
    assert_eq!(find(&mut t, &a, &a, 0), None);
    // Its slot taken by another flow (a full set of ties evicts each way in turn).
    add(&mut t, &flow(a, a, 30 * SEC, 1), 0, &c);
    for i in 1..=8 {
        let b = conn(i);
        add(&mut t, &flow(b, b, 30 * SEC, 1), 0, &c);
        assert_eq!(t.last.unwrap().forward, t.probe(&b, &b).keys);
    }
    assert_eq!(find(&mut t, &a, &a, 0), None, "overwritten");
    assert_eq!(find(&mut t, &rev(&a), &rev(&a), 0), None);
    // The last flow expired: removed and counted as any other.
    let b = conn(8);
    assert!(find(&mut t, &b, &b, 0).is_some());
    assert_eq!(t.find(&mut t.probe(&b, &b), 30 * SEC, &c), None);
    assert!(t.last.is_none());
    assert_eq!(c.snapshot().get(Counter::ConntrackExpired), 1);
}
