//! NetworkPolicy, compiled: which peers and ports each local pod may talk to.
//!
//! The control side turns the policies that select this node's pods into plain
//! data-plane values ([`PodPolicy`]: for each local pod IP, an optional ingress and an
//! optional egress [`RuleSetSpec`]) and builds one immutable [`PolicyTable`] from them,
//! published RCU-style through [`crate::Pipeline::policies`] like routes and services
//! (compare with `==` first and publish only on change: every publish re-judges the
//! tracked flows). Nothing here knows Kubernetes objects: selectors are already
//! resolved to address blocks, named ports to numbers.
//!
//! Semantics (networking.k8s.io/v1): a pod with no rule set of a direction (`None`) is
//! selected by no policy of that direction and is open in it; `Some` with no rules is
//! a default deny; otherwise a packet is allowed if *any* rule admits it (the union).
//! A rule admits a packet if its peer is among the rule's peers (every peer, or a set
//! of address blocks, each minus its `except` blocks) and its protocol and destination
//! port are among the rule's ports (every port of every protocol, or a list of
//! protocol and port range). As in Kubernetes, a port list restricts to TCP, UDP and
//! SCTP: ICMP and other protocols (and later IPv4 fragments, which carry no port) are
//! admitted only by rules without a port list.
//!
//! A [`RuleSet`] is compiled so that the decision does not depend on the number of
//! rules: the address space is cut into disjoint intervals at every block boundary,
//! and each interval points to the union of the port sets of the rules that cover it
//! (deduplicated). A decision finds the packet's interval, then searches the
//! (sorted, merged) port ranges of its protocol; it allocates nothing. Above
//! [`RADIX_MIN`] intervals, a radix over the span of the starts (about one bucket per
//! four intervals, each naming the interval its first address falls in) narrows the
//! search to a bucket's few starts, so that 10,000 rules cost one index load and a
//! search within a cache line or two, not fifteen dependent loads across the array;
//! rules packed in one corner of the address space fall back to the binary search
//! within their bucket. Building costs O(intervals x port groups active on them); rules with equal
//! port lists are grouped first, so the usual shapes (many pods, few port lists) build
//! in O(n log n).

use core::hash::BuildHasherDefault;
use core::net::Ipv4Addr;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tapestry_net::Ipv4Cidr;

use crate::tables::routes::PrefixHasher;
use crate::wire::IpProtocol;

/// Policy ids are below this: the size of the per-policy counter array.
pub const MAX_POLICY_IDS: usize = 4_096;

/// One end past the last IPv4 address.
const END: u64 = 1 << 32;

/// An interval no rule covers.
const NO_RULE: u32 = u32::MAX;

/// Next table generation; 0 is never handed out.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// A policy, as numbered by the control side (below [`MAX_POLICY_IDS`]). Denials are
/// counted per id ([`PolicyCounters`]); keep a policy's id stable across tables so
/// that its count means one thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(pub u16);

/// Which side of a pod a rule set guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyDirection {
    /// Traffic to the pod (judged at the pod's node, peer = the packet's source).
    Ingress,
    /// Traffic from the pod (judged at the pod's node, peer = the destination).
    Egress,
}

/// The protocol of a port entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortProtocol {
    Tcp,
    Udp,
    Sctp,
    /// TCP, UDP and SCTP.
    Any,
}

/// One port entry of a rule: `first..=last` (one port: `first == last`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyPort {
    pub protocol: PortProtocol,
    pub first: u16,
    pub last: u16,
}

/// An address block minus its exceptions (`ipBlock`, or a selected pod as a /32).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IpBlock {
    pub cidr: Ipv4Cidr,
    /// Each inside `cidr`.
    pub except: Vec<Ipv4Cidr>,
}

impl IpBlock {
    /// A block without exceptions.
    pub fn new(cidr: Ipv4Cidr) -> IpBlock {
        IpBlock {
            cidr,
            except: Vec::new(),
        }
    }
}

/// The peers of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PolicyPeers {
    /// Every address (a rule without `from`/`to`).
    Any,
    /// The union of these blocks (not empty).
    Blocks(Vec<IpBlock>),
}

/// The ports of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PolicyPorts {
    /// Every protocol and port, ICMP included (a rule without `ports`).
    Any,
    /// The union of these entries (not empty).
    List(Vec<PolicyPort>),
}

/// One rule: a packet whose peer is in `peers` and whose port is in `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PolicyRule {
    pub peers: PolicyPeers,
    pub ports: PolicyPorts,
}

/// The rules of one direction of one pod: the union of the rules of every policy
/// that selects it in that direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSetSpec {
    /// The policies selecting the pod in this direction: a denial is counted under
    /// each.
    pub policies: Vec<PolicyId>,
    /// No rule: default deny.
    pub rules: Vec<PolicyRule>,
}

/// What applies to one local pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPolicy {
    pub pod: Ipv4Addr,
    /// `None`: selected by no ingress policy (open).
    pub ingress: Option<RuleSetSpec>,
    /// `None`: selected by no egress policy (open).
    pub egress: Option<RuleSetSpec>,
}

/// Why a table cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("pod {pod} appears twice in the policy table")]
    DuplicatePod { pod: Ipv4Addr },
    #[error("pod {pod}: except {except} is not inside its block {block}")]
    ExceptOutsideBlock {
        pod: Ipv4Addr,
        block: Ipv4Cidr,
        except: Ipv4Cidr,
    },
    #[error("pod {pod}: port range {first}-{last} is empty")]
    EmptyPortRange {
        pod: Ipv4Addr,
        first: u16,
        last: u16,
    },
    #[error("pod {pod}: a rule with an empty peer list (every peer is PolicyPeers::Any)")]
    EmptyPeers { pod: Ipv4Addr },
    #[error("pod {pod}: a rule with an empty port list (every port is PolicyPorts::Any)")]
    EmptyPorts { pod: Ipv4Addr },
    #[error("policy id {id} is not below {max}", max = MAX_POLICY_IDS)]
    PolicyIdTooLarge { id: u16 },
}

/// Sorted, disjoint, non-adjacent inclusive port ranges.
type Ranges = Box<[(u16, u16)]>;

/// The ports some rules admit together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct PortSet {
    /// Every protocol and port.
    any: bool,
    tcp: Ranges,
    udp: Ranges,
    sctp: Ranges,
}

fn in_ranges(ranges: &[(u16, u16)], port: u16) -> bool {
    let i = ranges.partition_point(|r| r.0 <= port);
    i.checked_sub(1)
        .and_then(|i| ranges.get(i))
        .is_some_and(|r| port <= r.1)
}

/// Sorts and merges overlapping or adjacent ranges.
fn merge(mut v: Vec<(u16, u16)>) -> Ranges {
    v.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out.into_boxed_slice()
}

impl PortSet {
    #[inline]
    fn admits(&self, proto: IpProtocol, dport: Option<u16>) -> bool {
        if self.any {
            return true;
        }
        let ranges = match u8::from(proto) {
            6 => &self.tcp,
            17 => &self.udp,
            132 => &self.sctp,
            _ => return false,
        };
        dport.is_some_and(|p| in_ranges(ranges, p))
    }

    /// The union of port groups (`None`: every port).
    fn union<'a>(groups: impl Iterator<Item = &'a Option<Vec<PolicyPort>>>) -> PortSet {
        let (mut tcp, mut udp, mut sctp) = (Vec::new(), Vec::new(), Vec::new());
        for g in groups {
            let Some(list) = g else {
                return PortSet {
                    any: true,
                    ..PortSet::default()
                };
            };
            for p in list {
                let r = (p.first, p.last);
                match p.protocol {
                    PortProtocol::Tcp => tcp.push(r),
                    PortProtocol::Udp => udp.push(r),
                    PortProtocol::Sctp => sctp.push(r),
                    PortProtocol::Any => {
                        tcp.push(r);
                        udp.push(r);
                        sctp.push(r);
                    }
                }
            }
        }
        PortSet {
            any: false,
            tcp: merge(tcp),
            udp: merge(udp),
            sctp: merge(sctp),
        }
    }
}

/// The compiled rules of one direction of one pod. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    /// Interval starts, ascending; the first is 0.0.0.0. Interval `i` runs to the
    /// next start (or the end of the address space).
    starts: Box<[u32]>,
    /// Per interval: index into `port_sets`, or [`NO_RULE`].
    sets: Box<[u32]>,
    port_sets: Box<[PortSet]>,
    policies: Box<[PolicyId]>,
    /// Over `starts` (empty below [`RADIX_MIN`] intervals).
    radix: Radix,
}

/// Rule sets with fewer intervals are searched without a radix.
const RADIX_MIN: usize = 64;

/// A radix over the span of a rule set's interval starts: bucket `b` begins at address
/// `lo + (b << shift)`, and `index[b]` is the interval that address falls in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Radix {
    /// The second start (below it: interval 0).
    lo: u32,
    /// The last start (from it: the last interval).
    hi: u32,
    shift: u32,
    index: Box<[u32]>,
}

impl Radix {
    fn build(starts: &[u32]) -> Radix {
        let (Some(&lo), Some(&hi)) = (starts.get(1), starts.last()) else {
            return Radix::default();
        };
        if starts.len() < RADIX_MIN {
            return Radix::default();
        }
        let buckets = (starts.len() / 4).next_power_of_two();
        let span = u64::from(hi - lo);
        let mut shift = 0;
        while span >> shift >= buckets as u64 {
            shift += 1;
        }
        let index = (0..=span >> shift)
            .map(|b| {
                let addr = u64::from(lo) + (b << shift);
                let i = starts
                    .partition_point(|s| u64::from(*s) <= addr)
                    .saturating_sub(1);
                u32::try_from(i).unwrap_or(u32::MAX)
            })
            .collect();
        Radix {
            lo,
            hi,
            shift,
            index,
        }
    }
}

/// `[lo, hi)` intervals of `peers`, blocks minus their exceptions.
fn peer_intervals(pod: Ipv4Addr, peers: &PolicyPeers) -> Result<Vec<(u64, u64)>, PolicyError> {
    let blocks = match peers {
        PolicyPeers::Any => return Ok(vec![(0, END)]),
        PolicyPeers::Blocks(b) if b.is_empty() => return Err(PolicyError::EmptyPeers { pod }),
        PolicyPeers::Blocks(b) => b,
    };
    let span = |c: &Ipv4Cidr| {
        let lo = u64::from(u32::from(c.network()));
        (lo, lo + c.size())
    };
    let mut out = Vec::with_capacity(blocks.len());
    for b in blocks {
        let mut holes = Vec::with_capacity(b.except.len());
        for e in &b.except {
            if !b.cidr.contains_net(e) {
                return Err(PolicyError::ExceptOutsideBlock {
                    pod,
                    block: b.cidr,
                    except: *e,
                });
            }
            holes.push(span(e));
        }
        holes.sort_unstable();
        let (lo, hi) = span(&b.cidr);
        let mut cur = lo;
        for (elo, ehi) in holes {
            if elo > cur {
                out.push((cur, elo));
            }
            cur = cur.max(ehi);
        }
        if cur < hi {
            out.push((cur, hi));
        }
    }
    Ok(out)
}

impl RuleSet {
    /// Compiles the rules of `spec` (for error messages, of pod `pod`).
    pub fn compile(pod: Ipv4Addr, spec: &RuleSetSpec) -> Result<RuleSet, PolicyError> {
        for id in &spec.policies {
            if usize::from(id.0) >= MAX_POLICY_IDS {
                return Err(PolicyError::PolicyIdTooLarge { id: id.0 });
            }
        }
        // Rules with equal ports form one group; a group's peers are its rules' union.
        let mut groups: Vec<Option<Vec<PolicyPort>>> = Vec::new();
        let mut group_of: HashMap<&PolicyPorts, u32> = HashMap::new();
        // (position, +1 start / -1 end as 1 / 0 so that ends sort first, group)
        let mut events: Vec<(u64, u8, u32)> = Vec::new();
        for rule in &spec.rules {
            let g = match group_of.get(&rule.ports) {
                Some(g) => *g,
                None => {
                    let ports = match &rule.ports {
                        PolicyPorts::Any => None,
                        PolicyPorts::List(l) if l.is_empty() => {
                            return Err(PolicyError::EmptyPorts { pod })
                        }
                        PolicyPorts::List(l) => {
                            if let Some(p) = l.iter().find(|p| p.first > p.last) {
                                return Err(PolicyError::EmptyPortRange {
                                    pod,
                                    first: p.first,
                                    last: p.last,
                                });
                            }
                            Some(l.clone())
                        }
                    };
                    let g = u32::try_from(groups.len()).unwrap_or(u32::MAX);
                    groups.push(ports);
                    group_of.insert(&rule.ports, g);
                    g
                }
            };
            for (lo, hi) in peer_intervals(pod, &rule.peers)? {
                events.push((lo, 1, g));
                events.push((hi, 0, g));
            }
        }
        events.sort_unstable();
        Ok(Self::sweep(&events, &groups, &spec.policies))
    }

    /// Cuts the address space at every event and gives each interval the union of
    /// the port groups active on it.
    fn sweep(
        events: &[(u64, u8, u32)],
        groups: &[Option<Vec<PolicyPort>>],
        policies: &[PolicyId],
    ) -> RuleSet {
        let mut count = vec![0u32; groups.len()];
        let mut active: Vec<u32> = Vec::new();
        let mut starts = vec![0u32];
        let mut sets = vec![NO_RULE];
        let mut port_sets: Vec<PortSet> = Vec::new();
        let mut ids: HashMap<PortSet, u32> = HashMap::new();
        let mut i = 0;
        while let Some(&(pos, _, _)) = events.get(i) {
            while let Some(&(p, kind, g)) = events.get(i) {
                if p != pos {
                    break;
                }
                if let Some(c) = count.get_mut(g as usize) {
                    if kind == 1 {
                        *c += 1;
                        if *c == 1 {
                            active.push(g);
                        }
                    } else {
                        *c = c.saturating_sub(1);
                        if *c == 0 {
                            active.retain(|a| *a != g);
                        }
                    }
                }
                i += 1;
            }
            let Ok(start) = u32::try_from(pos) else {
                break; // the end of the address space
            };
            let id = if active.is_empty() {
                NO_RULE
            } else {
                let set = PortSet::union(active.iter().filter_map(|g| groups.get(*g as usize)));
                let next = u32::try_from(port_sets.len()).unwrap_or(NO_RULE);
                *ids.entry(set.clone()).or_insert_with(|| {
                    port_sets.push(set);
                    next
                })
            };
            if starts.last() == Some(&start) {
                if let Some(s) = sets.last_mut() {
                    *s = id;
                }
            } else if sets.last() != Some(&id) {
                starts.push(start);
                sets.push(id);
            }
        }
        let mut policies = policies.to_vec();
        policies.sort_unstable();
        policies.dedup();
        RuleSet {
            radix: Radix::build(&starts),
            starts: starts.into_boxed_slice(),
            sets: sets.into_boxed_slice(),
            port_sets: port_sets.into_boxed_slice(),
            policies: policies.into_boxed_slice(),
        }
    }

    /// Whether some rule admits a packet from or to `peer` with this protocol and
    /// destination port (`None`: the packet carries none). No allocation.
    #[inline]
    pub fn admits(&self, peer: Ipv4Addr, proto: IpProtocol, dport: Option<u16>) -> bool {
        match self.sets.get(self.interval(u32::from(peer))) {
            Some(&s) if s != NO_RULE => self
                .port_sets
                .get(s as usize)
                .is_some_and(|ps| ps.admits(proto, dport)),
            _ => false,
        }
    }

    /// The interval address `a` falls in.
    #[inline]
    fn interval(&self, a: u32) -> usize {
        let r = &self.radix;
        let window = if r.index.is_empty() {
            0..self.starts.len()
        } else if a < r.lo {
            return 0;
        } else if a >= r.hi {
            return self.starts.len().saturating_sub(1);
        } else {
            // `a` lies between the start of its bucket and that of the next.
            let b = ((a - r.lo) >> r.shift) as usize;
            match (r.index.get(b), r.index.get(b + 1)) {
                (Some(&i), Some(&j)) => i as usize..j as usize + 1,
                (Some(&i), None) => i as usize..self.starts.len(),
                _ => 0..self.starts.len(),
            }
        };
        let first = window.start;
        let starts = self.starts.get(window).unwrap_or(&[]);
        (first + starts.partition_point(|s| *s <= a)).saturating_sub(1)
    }

    /// The policies selecting the pod in this direction (sorted, each once).
    pub fn policies(&self) -> &[PolicyId] {
        &self.policies
    }

    /// Number of address intervals it was compiled into.
    pub fn intervals(&self) -> usize {
        self.starts.len()
    }
}

/// The compiled rule sets of one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PodRules {
    ingress: Option<RuleSet>,
    egress: Option<RuleSet>,
}

impl PodRules {
    /// [`PolicyTable::allows`] for this pod.
    #[inline]
    pub(crate) fn allows(
        &self,
        dir: PolicyDirection,
        remote: Ipv4Addr,
        proto: IpProtocol,
        dport: Option<u16>,
    ) -> Result<(), &[PolicyId]> {
        let rules = match dir {
            PolicyDirection::Ingress => self.ingress.as_ref(),
            PolicyDirection::Egress => self.egress.as_ref(),
        };
        match rules {
            Some(r) if !r.admits(remote, proto, dport) => Err(r.policies()),
            _ => Ok(()),
        }
    }
}

type PodMap = HashMap<u32, PodRules, BuildHasherDefault<PrefixHasher>>;

/// Bits of the selected-pod filter: one per value of an address's low 12 bits.
const FILTER_BITS: u32 = 4_096;

/// Words of the filter.
const FILTER_WORDS: usize = FILTER_BITS as usize / 64;

/// Every local pod's compiled rules: one immutable snapshot. See the module docs.
#[derive(Clone, Debug)]
pub struct PolicyTable {
    pods: PodMap,
    /// Bit `a & 0xfff` set for every selected pod `a`: a clear bit proves an address
    /// selected by nothing without a hash probe (a node's pods share a /24, so they
    /// never share a bit; other addresses may, and then take the probe).
    filter: [u64; FILTER_WORDS],
    generation: u64,
}

/// The filter bit of `a`: (word, mask).
#[inline]
fn filter_bit(a: Ipv4Addr) -> (usize, u64) {
    let b = a.to_bits() & (FILTER_BITS - 1);
    ((b >> 6) as usize, 1 << (b & 63))
}

/// Equal tables hold equal rules; the generation is not compared.
impl PartialEq for PolicyTable {
    fn eq(&self, other: &Self) -> bool {
        self.pods == other.pods
    }
}

impl Eq for PolicyTable {}

impl PolicyTable {
    /// A table selecting no pod: every pod is open and the policy stage does nothing.
    pub fn empty() -> PolicyTable {
        PolicyTable {
            pods: PodMap::default(),
            filter: [0; FILTER_WORDS],
            generation: NEXT_GENERATION.fetch_add(1, Relaxed),
        }
    }

    /// Compiles the table (allocates; the control side's job). Pods with neither
    /// direction selected are left out.
    pub fn build<'a>(pods: impl IntoIterator<Item = &'a PodPolicy>) -> Result<Self, PolicyError> {
        let mut map = PodMap::default();
        for p in pods {
            let compile = |s: &Option<RuleSetSpec>| {
                s.as_ref().map(|s| RuleSet::compile(p.pod, s)).transpose()
            };
            let rules = PodRules {
                ingress: compile(&p.ingress)?,
                egress: compile(&p.egress)?,
            };
            if map.contains_key(&u32::from(p.pod)) {
                return Err(PolicyError::DuplicatePod { pod: p.pod });
            }
            if rules.ingress.is_some() || rules.egress.is_some() {
                map.insert(u32::from(p.pod), rules);
            }
        }
        let mut filter = [0; FILTER_WORDS];
        for pod in map.keys() {
            let (word, bit) = filter_bit(Ipv4Addr::from_bits(*pod));
            if let Some(w) = filter.get_mut(word) {
                *w |= bit;
            }
        }
        Ok(PolicyTable {
            pods: map,
            filter,
            generation: NEXT_GENERATION.fetch_add(1, Relaxed),
        })
    }

    /// No pod is selected by any policy.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// Pods selected in at least one direction.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// This table's identity among the tables of this process (never 0): a flow
    /// judged under another generation is judged again.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// `pod` is selected by some policy, in either direction.
    #[inline]
    pub fn selects(&self, pod: Ipv4Addr) -> bool {
        self.pods.contains_key(&u32::from(pod))
    }

    /// `false`: `a` is selected by no policy (proved by one bit). `true`: it may be
    /// ([`PolicyTable::pod`] says).
    #[inline]
    pub(crate) fn may_select(&self, a: Ipv4Addr) -> bool {
        let (word, bit) = filter_bit(a);
        self.filter.get(word).is_some_and(|w| w & bit != 0)
    }

    /// The rules of a selected pod; `None`: selected by no policy.
    #[inline]
    pub(crate) fn pod(&self, pod: Ipv4Addr) -> Option<&PodRules> {
        if !self.may_select(pod) {
            return None;
        }
        self.pods.get(&u32::from(pod))
    }

    /// The rules of `pod` in `dir`; `None`: open.
    #[inline]
    pub fn rules(&self, dir: PolicyDirection, pod: Ipv4Addr) -> Option<&RuleSet> {
        let r = self.pods.get(&u32::from(pod))?;
        match dir {
            PolicyDirection::Ingress => r.ingress.as_ref(),
            PolicyDirection::Egress => r.egress.as_ref(),
        }
    }

    /// The decision for a packet of local pod `pod` in direction `dir` with peer
    /// `remote` (the source for ingress, the destination for egress), protocol
    /// `proto`, destination port `dport` (`None`: none carried). `Ok`: allowed (open,
    /// or admitted by a rule); `Err`: denied, with the policies that select the pod
    /// in that direction. No allocation.
    #[inline]
    pub fn allows(
        &self,
        dir: PolicyDirection,
        pod: Ipv4Addr,
        remote: Ipv4Addr,
        proto: IpProtocol,
        dport: Option<u16>,
    ) -> Result<(), &[PolicyId]> {
        self.pod(pod)
            .map_or(Ok(()), |r| r.allows(dir, remote, proto, dport))
    }
}

/// Denials per policy id: a fixed array of relaxed atomics, shared with the control
/// thread (see [`crate::Pipeline::policy_counters`]).
#[derive(Debug)]
pub struct PolicyCounters {
    denied: Box<[AtomicU64]>,
}

impl Default for PolicyCounters {
    fn default() -> Self {
        PolicyCounters {
            denied: (0..MAX_POLICY_IDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl PolicyCounters {
    /// Packets denied while `id` selected the pod (a packet denied while several
    /// policies select the pod counts under each).
    pub fn denied(&self, id: PolicyId) -> u64 {
        self.denied
            .get(usize::from(id.0))
            .map_or(0, |c| c.load(Relaxed))
    }

    pub(crate) fn bump_denied(&self, ids: &[PolicyId]) {
        for id in ids {
            if let Some(c) = self.denied.get(usize::from(id.0)) {
                c.fetch_add(1, Relaxed);
            }
        }
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
