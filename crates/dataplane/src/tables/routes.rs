//! The route table: which node owns a pod IP. One immutable [`RouteSnapshot`] per
//! version of the cluster's node list, built by the control thread and published
//! RCU-style through an `ArcSwap` (see [`crate::Pipeline::routes`]); the worker
//! `load()`s it per packet, takes no lock and allocates nothing.
//!
//! Kubernetes gives each node one pod CIDR (flannel's model: one `/24` per node out of
//! `10.244.0.0/16`), so a snapshot is the local subnet ([`RouteTarget::Local`]) plus one
//! subnet per peer node ([`RouteTarget::Peer`]), and a longest-prefix match picks the
//! owner. [`RouteSnapshot::build`] rejects overlapping subnets, so in practice the
//! "longest" part only matters if someone adds more specific routes later; the
//! structure ([`Lpm`]) supports it anyway and is checked against a linear scan.
//!
//! [`Lpm`] keeps one hash map per prefix length present, probed longest first. Real
//! tables have one or two lengths, so a lookup is one or two hash probes whatever the
//! number of routes (measured in `benches/benches/route.rs`: flat from 10 to 5,000).
//! The hasher is a fixed 64-bit mixer (murmur3's finaliser), not SipHash: keys are
//! network addresses, not attacker-chosen strings that could be flooded into a map —
//! only the control thread inserts.
//!
//! The cluster CIDR separates two kinds of "no route" (RFC 1812 §5.2.7.1): a
//! destination inside the cluster that no node owns is *host* unreachable (a node
//! went away), one outside the cluster is *net* unreachable (the lab never routes
//! outside).

use core::hash::{BuildHasherDefault, Hasher};
use core::net::Ipv4Addr;
use std::collections::HashMap;

use crate::wire::MacAddr;
use tapestry_net::Ipv4Cidr;

/// Mask of a prefix length (0..=32; longer lengths are treated as 32).
#[inline]
pub const fn prefix_mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        p if p >= 32 => u32::MAX,
        p => u32::MAX << (32 - p as u32),
    }
}

/// A hasher for `u32` keys: murmur3's 64-bit finaliser. Deterministic (no random
/// seed): see the module docs for why that is fine here.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.0 ^= u64::from(v);
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

type PrefixMap<T> = HashMap<u32, T, BuildHasherDefault<PrefixHasher>>;

/// Routes of one prefix length.
#[derive(Clone, Debug)]
struct Level<T> {
    prefix_len: u8,
    mask: u32,
    map: PrefixMap<T>,
}

/// A longest-prefix-match table from IPv4 prefixes to `T`. Built by inserting (which
/// allocates); looked up without allocating.
#[derive(Clone, Debug)]
pub struct Lpm<T> {
    /// One level per prefix length present, longest first.
    levels: Vec<Level<T>>,
    len: usize,
}

impl<T> Default for Lpm<T> {
    fn default() -> Self {
        Lpm {
            levels: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Lpm<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `prefix/prefix_len -> value` (host bits of `prefix` are ignored) and
    /// returns the value it replaced. `Err(value)`, nothing inserted, if
    /// `prefix_len > 32`.
    pub fn insert(&mut self, prefix: Ipv4Addr, prefix_len: u8, value: T) -> Result<Option<T>, T> {
        if prefix_len > 32 {
            return Err(value);
        }
        let mask = prefix_mask(prefix_len);
        let pos = match self
            .levels
            .binary_search_by(|l| prefix_len.cmp(&l.prefix_len))
        {
            Ok(i) => i,
            Err(i) => {
                self.levels.insert(
                    i,
                    Level {
                        prefix_len,
                        mask,
                        map: PrefixMap::default(),
                    },
                );
                i
            }
        };
        let Some(level) = self.levels.get_mut(pos) else {
            return Err(value);
        };
        let old = level.map.insert(u32::from(prefix) & mask, value);
        if old.is_none() {
            self.len += 1;
        }
        Ok(old)
    }

    /// The value of the longest prefix containing `addr`.
    #[inline]
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<&T> {
        self.lookup_prefix(addr).map(|(_, _, v)| v)
    }

    /// The longest prefix containing `addr`, with its value.
    #[inline]
    pub fn lookup_prefix(&self, addr: Ipv4Addr) -> Option<(Ipv4Addr, u8, &T)> {
        let a = u32::from(addr);
        self.levels.iter().find_map(|l| {
            let net = a & l.mask;
            l.map
                .get(&net)
                .map(|v| (Ipv4Addr::from(net), l.prefix_len, v))
        })
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` if there are no prefixes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of distinct prefix lengths (= hash probes of a missing lookup).
    /// Every prefix, longest first (order within a length unspecified).
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, u8, &T)> + '_ {
        self.levels.iter().flat_map(|l| {
            l.map
                .iter()
                .map(move |(net, v)| (Ipv4Addr::from(*net), l.prefix_len, v))
        })
    }

    #[cfg(test)]
    pub fn prefix_lengths(&self) -> usize {
        self.levels.len()
    }
}

/// Another node of the cluster: where its pods live and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The Kubernetes Node name (for status output and errors).
    pub name: String,
    /// The node's address on the underlay: VXLAN datagrams go to `underlay_ip:4789`.
    pub underlay_ip: Ipv4Addr,
    /// The MAC of the node's VTEP: the inner destination MAC of frames sent to it
    /// (flannel publishes it as the `flannel.alpha.coreos.com/backend-data` VtepMAC).
    pub vtep_mac: MacAddr,
    /// The node's pod subnet.
    pub subnet: Ipv4Cidr,
}

/// Where a route leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteTarget {
    /// This node's pod subnet: deliver to a local port.
    Local,
    /// Another node: index into [`RouteSnapshot::peers`].
    Peer(usize),
}

/// Why a route snapshot could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Two nodes' subnets overlap (the local node is named "local").
    #[error("{first}'s subnet {first_subnet} overlaps {second}'s {second_subnet}")]
    Overlap {
        first: String,
        first_subnet: Ipv4Cidr,
        second: String,
        second_subnet: Ipv4Cidr,
    },
    /// Two peers claim the same underlay address: ingress could not tell them apart.
    #[error("peers {first} and {second} share the underlay IP {underlay_ip}")]
    DuplicateUnderlay {
        first: String,
        second: String,
        underlay_ip: Ipv4Addr,
    },
}

/// The name [`RouteError`] gives the local node.
pub const LOCAL_NAME: &str = "local";

/// A peer's pod subnet as the tunnel's ingress check reads it: its network and mask
/// worked out once, when the snapshot is built, not per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerSubnet {
    net: u32,
    mask: u32,
}

impl PeerSubnet {
    /// The network and mask of `subnet`.
    pub(crate) fn of(subnet: Ipv4Cidr) -> PeerSubnet {
        PeerSubnet {
            net: u32::from(subnet.network()),
            mask: u32::from(subnet.netmask()),
        }
    }

    /// Whether `ip` lies inside the subnet.
    #[inline]
    pub(crate) fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask == self.net
    }
}

/// An immutable route table: the local subnet, the peers and their subnets, and the
/// cluster CIDR. See the module docs.
#[derive(Clone, Debug)]
pub struct RouteSnapshot {
    table: Lpm<RouteTarget>,
    peers: Vec<Peer>,
    /// Underlay address → the peer's index and pod subnet.
    by_underlay: PrefixMap<(usize, PeerSubnet)>,
    local: Ipv4Cidr,
    cluster: Ipv4Cidr,
}

impl RouteSnapshot {
    /// Routes `local` to [`RouteTarget::Local`] and each peer's subnet to
    /// [`RouteTarget::Peer`] (its index in `peers`). `cluster` (e.g. 10.244.0.0/16)
    /// tells "in the cluster but nobody owns it" (ICMP host unreachable) from
    /// "outside the cluster" (ICMP net unreachable). Errors: overlapping subnets
    /// (local included), two peers with one underlay IP.
    pub fn build(
        local: Ipv4Cidr,
        cluster: Ipv4Cidr,
        peers: Vec<Peer>,
    ) -> Result<RouteSnapshot, RouteError> {
        // (first address, last address, owner index: 0 = local, i + 1 = peer i)
        let mut ranges: Vec<(u32, u32, usize)> = Vec::with_capacity(peers.len() + 1);
        let range = |net: Ipv4Cidr| (u32::from(net.network()), u32::from(net.broadcast()));
        let (f, l) = range(local);
        ranges.push((f, l, 0));
        let mut by_underlay = PrefixMap::default();
        for (i, p) in peers.iter().enumerate() {
            let (f, l) = range(p.subnet);
            ranges.push((f, l, i + 1));
            let entry = (i, PeerSubnet::of(p.subnet));
            if let Some((prev, _)) = by_underlay.insert(u32::from(p.underlay_ip), entry) {
                return Err(RouteError::DuplicateUnderlay {
                    first: peers.get(prev).map(|p| p.name.clone()).unwrap_or_default(),
                    second: p.name.clone(),
                    underlay_ip: p.underlay_ip,
                });
            }
        }
        ranges.sort_unstable();
        let describe = |owner: usize| -> (String, Ipv4Cidr) {
            match owner.checked_sub(1).and_then(|i| peers.get(i)) {
                Some(p) => (p.name.clone(), p.subnet),
                None => (LOCAL_NAME.to_string(), local),
            }
        };
        // Sorted by first address: disjoint iff each range starts after the furthest
        // end seen so far.
        let mut furthest: Option<(u32, usize)> = None;
        for &(first, last, owner) in &ranges {
            if let Some((end, prev)) = furthest {
                if first <= end {
                    let (first, first_subnet) = describe(prev);
                    let (second, second_subnet) = describe(owner);
                    return Err(RouteError::Overlap {
                        first,
                        first_subnet,
                        second,
                        second_subnet,
                    });
                }
            }
            match furthest {
                Some((end, _)) if last <= end => {}
                _ => furthest = Some((last, owner)),
            }
        }
        let mut table = Lpm::new();
        // An Ipv4Cidr's prefix length is at most 32, so these inserts cannot fail.
        let _ = table.insert(local.network(), local.prefix_len(), RouteTarget::Local);
        for (i, p) in peers.iter().enumerate() {
            let (net, len) = (p.subnet.network(), p.subnet.prefix_len());
            let _ = table.insert(net, len, RouteTarget::Peer(i));
        }
        Ok(RouteSnapshot {
            table,
            peers,
            by_underlay,
            local,
            cluster,
        })
    }

    /// Only the local subnet: no peers, and the cluster is the local subnet.
    pub fn empty_for(local: Ipv4Cidr) -> RouteSnapshot {
        let mut table = Lpm::new();
        let _ = table.insert(local.network(), local.prefix_len(), RouteTarget::Local);
        RouteSnapshot {
            table,
            peers: Vec::new(),
            by_underlay: PrefixMap::default(),
            local,
            cluster: local,
        }
    }

    /// Longest-prefix match; allocation-free.
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<RouteTarget> {
        self.table.lookup(dst).copied()
    }

    /// The peer at `idx`.
    #[inline]
    pub fn peer(&self, idx: usize) -> Option<&Peer> {
        self.peers.get(idx)
    }

    /// The peer whose underlay IP is `ip` (ingress validation of VXLAN datagrams).
    #[inline]
    pub fn peer_by_underlay(&self, ip: Ipv4Addr) -> Option<usize> {
        self.by_underlay.get(&u32::from(ip)).map(|&(i, _)| i)
    }

    /// The pod subnet of the peer whose underlay IP is `ip` (what a decapsulated
    /// packet's source must lie in), found by the same lookup.
    #[inline]
    pub(crate) fn peer_subnet_by_underlay(&self, ip: Ipv4Addr) -> Option<PeerSubnet> {
        self.by_underlay.get(&u32::from(ip)).map(|&(_, s)| s)
    }

    /// Every peer, indexed as in [`RouteTarget::Peer`].
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// `true` if `dst` is inside the cluster CIDR.
    #[inline]
    pub fn in_cluster(&self, dst: Ipv4Addr) -> bool {
        self.cluster.contains(dst)
    }

    /// Number of routes (the local subnet plus one per peer).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// `true` if there are no routes (never, in practice: the local subnet is one).
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The local subnet.
    pub fn local_subnet(&self) -> Ipv4Cidr {
        self.local
    }

    /// The cluster CIDR.
    pub fn cluster(&self) -> Ipv4Cidr {
        self.cluster
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
        Ipv4Addr::new(a, b, c, d)
    }

    fn net(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Cidr {
        Ipv4Cidr::new(ip(a, b, c, d), len).unwrap()
    }

    fn peer(n: u8) -> Peer {
        Peer {
            name: format!("node-{n}"),
            underlay_ip: ip(198, 18, 0, n),
            vtep_mac: MacAddr::new(0x0a, 0x58, 0xc6, 0x12, 0, n),
            subnet: net(10, 244, n, 0, 24),
        }
    }

    fn three_nodes() -> RouteSnapshot {
        RouteSnapshot::build(
            net(10, 244, 1, 0, 24),
            net(10, 244, 0, 0, 16),
            vec![peer(2), peer(3)],
        )
        .unwrap()
    }

    #[test]
    fn routes_local_peers_and_the_rest() {
        let r = three_nodes();
        assert_eq!(r.len(), 3);
        assert_eq!(r.lookup(ip(10, 244, 1, 7)), Some(RouteTarget::Local));
        assert_eq!(r.lookup(ip(10, 244, 2, 7)), Some(RouteTarget::Peer(0)));
        assert_eq!(r.lookup(ip(10, 244, 3, 255)), Some(RouteTarget::Peer(1)));
        assert_eq!(r.lookup(ip(10, 244, 4, 1)), None);
        assert!(r.in_cluster(ip(10, 244, 4, 1)));
        assert!(!r.in_cluster(ip(10, 245, 0, 1)));
        assert_eq!(r.lookup(ip(8, 8, 8, 8)), None);
        assert_eq!(r.peer(1).unwrap().name, "node-3");
        assert!(r.peer(2).is_none());
        assert_eq!(r.peer_by_underlay(ip(198, 18, 0, 3)), Some(1));
        assert_eq!(r.peer_by_underlay(ip(198, 18, 0, 1)), None);
        let sub = r.peer_subnet_by_underlay(ip(198, 18, 0, 3)).unwrap();
        assert_eq!(sub, PeerSubnet::of(net(10, 244, 3, 0, 24)));
        assert!(sub.contains(ip(10, 244, 3, 0)) && sub.contains(ip(10, 244, 3, 255)));
        assert!(!sub.contains(ip(10, 244, 2, 7)) && !sub.contains(ip(10, 244, 4, 0)));
        assert_eq!(r.peer_subnet_by_underlay(ip(198, 18, 0, 1)), None);
        let everything = PeerSubnet::of(net(0, 0, 0, 0, 0));
        assert!(everything.contains(ip(255, 255, 255, 255)));
        assert_eq!(r.peers().len(), 2);
        assert_eq!(r.local_subnet(), net(10, 244, 1, 0, 24));
        assert_eq!(r.cluster(), net(10, 244, 0, 0, 16));
    }

    #[test]
    fn empty_snapshot_is_just_the_local_subnet() {
        let r = RouteSnapshot::empty_for(net(10, 244, 1, 9, 24));
        assert_eq!(r.len(), 1);
        assert!(!r.is_empty());
        assert_eq!(r.lookup(ip(10, 244, 1, 200)), Some(RouteTarget::Local));
        assert_eq!(r.lookup(ip(10, 244, 2, 1)), None);
        assert!(r.in_cluster(ip(10, 244, 1, 3)));
        assert!(!r.in_cluster(ip(10, 244, 2, 3)));
        assert_eq!(r.local_subnet(), net(10, 244, 1, 0, 24));
        let r = RouteSnapshot::empty_for(net(10, 244, 1, 9, 32));
        assert_eq!(r.lookup(ip(10, 244, 1, 9)), Some(RouteTarget::Local));
        assert_eq!(r.lookup(ip(10, 244, 1, 8)), None);
    }

    #[test]
    fn build_rejects_overlap_and_duplicate_underlay() {
        let local = net(10, 244, 1, 0, 24);
        let cl = net(10, 244, 0, 0, 16);
        let mut same = peer(2);
        same.subnet = local;
        let err = RouteSnapshot::build(local, cl, vec![same]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "local's subnet 10.244.1.0/24 overlaps node-2's 10.244.1.0/24"
        );
        // A wider peer subnet swallowing another peer.
        let mut wide = peer(4);
        wide.subnet = net(10, 244, 0, 0, 22);
        let nine = net(10, 244, 9, 0, 24);
        let err = RouteSnapshot::build(nine, cl, vec![peer(2), wide]).unwrap_err();
        assert!(matches!(err, RouteError::Overlap { .. }), "{err}");
        let mut twin = peer(3);
        twin.underlay_ip = peer(2).underlay_ip;
        let err = RouteSnapshot::build(local, cl, vec![peer(2), twin]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "peers node-2 and node-3 share the underlay IP 198.18.0.2"
        );
    }

    #[test]
    fn adjacent_subnets_do_not_overlap() {
        let mut a = peer(2);
        a.subnet = net(10, 244, 2, 0, 23); // 10.244.2.0 - 10.244.3.255
        let mut b = peer(4);
        b.subnet = net(10, 244, 4, 0, 22);
        let (local, cluster) = (net(10, 244, 1, 0, 24), net(10, 244, 0, 0, 16));
        let r = RouteSnapshot::build(local, cluster, vec![a, b]).unwrap();
        assert_eq!(r.lookup(ip(10, 244, 3, 1)), Some(RouteTarget::Peer(0)));
        assert_eq!(r.lookup(ip(10, 244, 7, 1)), Some(RouteTarget::Peer(1)));
        assert_eq!(r.lookup(ip(10, 244, 8, 1)), None);
    }

    #[test]
    fn lpm_prefers_the_longest_and_handles_extremes() {
        let mut t = Lpm::new();
        assert!(t.is_empty());
        assert_eq!(t.insert(ip(0, 0, 0, 0), 0, "default"), Ok(None));
        assert_eq!(t.insert(ip(10, 0, 0, 0), 8, "ten"), Ok(None));
        assert_eq!(t.insert(ip(10, 244, 1, 77), 24, "pods"), Ok(None));
        assert_eq!(t.insert(ip(10, 244, 1, 5), 32, "host"), Ok(None));
        assert_eq!(t.insert(ip(10, 244, 1, 0), 24, "pods2"), Ok(Some("pods")));
        assert_eq!(t.insert(ip(1, 2, 3, 4), 33, "bad"), Err("bad"));
        assert_eq!(t.len(), 4);
        assert_eq!(t.prefix_lengths(), 4);
        assert_eq!(t.lookup(ip(10, 244, 1, 5)), Some(&"host"));
        assert_eq!(t.lookup(ip(10, 244, 1, 6)), Some(&"pods2"));
        assert_eq!(
            t.lookup_prefix(ip(10, 9, 9, 9)),
            Some((ip(10, 0, 0, 0), 8, &"ten"))
        );
        assert_eq!(t.lookup(ip(192, 0, 2, 1)), Some(&"default"));
        let lens: Vec<u8> = t.iter().map(|(_, l, _)| l).collect();
        assert_eq!(lens, vec![32, 24, 8, 0]);
        assert_eq!(Lpm::<u8>::new().lookup(ip(1, 1, 1, 1)), None);
    }

    #[test]
    fn masks() {
        assert_eq!(prefix_mask(0), 0);
        assert_eq!(prefix_mask(1), 0x8000_0000);
        assert_eq!(prefix_mask(24), 0xffff_ff00);
        assert_eq!(prefix_mask(32), u32::MAX);
        assert_eq!(prefix_mask(200), u32::MAX);
    }

    /// The reference: scan every prefix, keep the longest match (last insert wins).
    fn linear(prefixes: &[(u32, u8, usize)], addr: u32) -> Option<usize> {
        let mut best: Option<(u8, usize)> = None;
        for &(net, len, v) in prefixes {
            let m = prefix_mask(len);
            let longer = match best {
                Some((l, _)) => len >= l,
                None => true,
            };
            if addr & m == net & m && longer {
                best = Some((len, v));
            }
        }
        best.map(|(_, v)| v)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn lpm_matches_linear_scan(
            prefixes in prop::collection::vec((any::<u32>(), 0u8..=32), 0..60),
            probes in prop::collection::vec((any::<prop::sample::Index>(), any::<u32>(), any::<bool>()), 1..60),
        ) {
            // Cluster the prefixes so they nest and collide: keep the top byte in 4 values.
            let prefixes: Vec<(u32, u8, usize)> = prefixes
                .iter()
                .enumerate()
                .map(|(i, &(a, l))| ((a & 0x03ff_ffff) | 0x0a00_0000, l, i))
                .collect();
            let mut t = Lpm::new();
            for &(net, len, v) in &prefixes {
                t.insert(Ipv4Addr::from(net), len, v).unwrap();
            }
            for (idx, noise, near) in probes {
                // Half the probes land inside a known prefix, half anywhere.
                let addr = match (near, prefixes.is_empty()) {
                    (true, false) => {
                        let (net, len, _) = prefixes[idx.index(prefixes.len())];
                        (net & prefix_mask(len)) | (noise & !prefix_mask(len))
                    }
                    _ => noise,
                };
                prop_assert_eq!(t.lookup(Ipv4Addr::from(addr)).copied(), linear(&prefixes, addr));
            }
        }
    }
}
