//! The policy stage's flow table: the connections NetworkPolicy allowed, each judged
//! once, found again by either direction's packets with one probe.
//!
//! A flow is keyed by its first packet as the policy stage saw it: the 5-tuple after
//! the load balancer (`after`) and before it (`before`, equal unless it was NATed).
//! Its replies carry `before` reversed after the load balancer and `after` reversed
//! before it, so a hash that ignores the direction of each tuple and adds the two
//! (one when they are equal) is the same for every packet of the flow: both
//! directions land in the same set, and a miss already holds the place to insert
//! into. Nothing is hashed twice.
//!
//! Set-associative, allocated once (zeroed: untouched pages cost no memory until
//! flows arrive), never reallocated. A set has eight ways: one cache line of way
//! words in `meta` (eight tags, 0 = empty, else the hash's upper half with bit 0 set;
//! then eight stamps, each way's expiry in units of 2^26 ns), and one line per way in
//! `flows` holding the flow (both arrays aligned on 64 bytes). A lookup compares the
//! eight tags at once and reads the flow line of a way whose tag matches: two lines. An insert takes a free way
//! of the set, else evicts the way that expires first (read from the stamps, without
//! touching the flows; ties, flows that expire within the same 67 ms, are broken by
//! a position that turns with every eviction; a flow whose stamp is before now's
//! counts `conntrack_expired`, any other `conntrack_evicted`). A first packet thus
//! reads one line of the table and writes one. Memory is bounded (`capacity` rounded up to a power of two
//! flows, 72 bytes each); a set can fill while others have room, which the eviction
//! order makes cheap (flows about to expire go first: half-open TCP and UDP, 30 s,
//! before established TCP, an hour).
//!
//! The last flow found or inserted is remembered with its keys in both directions
//! (forgotten when its slot is emptied or overwritten): the next packet of the same
//! connection, either way, is matched by comparing four words, with no hash and no
//! set to read. Consecutive packets of one connection are the rule on a pod's port
//! (a TSO segment, its ACK); anything else costs the four-word comparison.
//!
//! In full: docs/dataplane.md, "The policy stage".

use core::hash::BuildHasher;
use core::net::Ipv4Addr;
use std::collections::hash_map::RandomState;

use crate::drops::{Counter, Counters};
use crate::hash::fmix64;
use crate::tables::conntrack::{
    advance, timeout, ConntrackTimeouts, Dir, FlowState, Tuple, MAX_CONNTRACK_CAPACITY,
};
use crate::types::{L4Proto, Nanos};
use crate::wire::tcp::{TCP_FIN, TCP_RST};

/// Flows per set.
pub const WAYS: usize = 8;

/// `meta` words of a set: eight tags, then eight stamps (one cache line).
const META_WORDS: usize = 2 * WAYS;

/// `flows` words of one way (one cache line).
const FLOW_WORDS: usize = 8;

/// A stamp is an expiry in units of 2^STAMP_SHIFT ns (67 ms; a `u32` of them
/// covers nine years of the clock, after which stamps saturate and every choice is
/// a tie).
const STAMP_SHIFT: u32 = 26;

// The words of a flow: its keys (`Probe::keys`: the addresses, then the ports and
// protocol, of `after`, then of `before`), then:
const AFTER_L4: usize = 1;
const EXPIRES: usize = 4;
const GENERATION: usize = 5;
/// State (bits 0-7), FIN bits (8-15), host-port bit (16).
const STATUS: usize = 6;

/// An allowed flow, as stored (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PolicyFlow {
    /// Its first packet after the load balancer.
    pub after: Tuple,
    /// Its first packet before the load balancer; `before.src` is the sender.
    pub before: Tuple,
    pub state: FlowState,
    /// FIN seen: bit 0 forward, bit 1 reply.
    pub fins: u8,
    /// Its first packet came in on the host port.
    pub from_host_port: bool,
    pub expires: Nanos,
    /// The policy table generation it was last judged under.
    pub generation: u64,
}

/// Where a flow is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    set: usize,
    way: usize,
}

/// A packet's keys as the table compares them, and their hash: computed once per
/// packet, used for the lookup and, on a miss, the insert.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Probe {
    /// `[after addresses, after ports and protocol, the same before]`.
    keys: [u64; 4],
    /// Computed on the first need (a packet of the last flow met needs none).
    hash: Option<u64>,
}

/// The last flow found or inserted: its keys as each direction's packets carry them
/// (consecutive packets of one connection, either way, skip the hash and the set).
#[derive(Clone, Copy, Debug)]
struct Last {
    forward: [u64; 4],
    reply: [u64; 4],
    slot: Slot,
}

/// The keys the replies of a flow with keys `k` carry.
#[inline]
fn reply_keys(k: [u64; 4]) -> [u64; 4] {
    let [a0, a1, b0, b1] = k;
    let ((ra0, ra1), (rb0, rb1)) = (reversed(a0, a1), reversed(b0, b1));
    [rb0, rb1, ra0, ra1]
}

/// What a lookup found: where, the packet's direction, and the flow's state and
/// generation (read with its keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hit {
    pub slot: Slot,
    pub dir: Dir,
    pub state: FlowState,
    pub generation: u64,
}

#[inline]
fn addrs(t: &Tuple) -> u64 {
    (u64::from(t.src.to_bits()) << 32) | u64::from(t.dst.to_bits())
}

#[inline]
fn l4(t: &Tuple) -> u64 {
    (u64::from(t.sport) << 24) | (u64::from(t.dport) << 8) | u64::from(t.proto.number())
}

/// `addrs` and `l4` of the reversed tuple.
#[inline]
fn reversed(addrs: u64, l4: u64) -> (u64, u64) {
    let (sport, dport) = ((l4 >> 24) & 0xffff, (l4 >> 8) & 0xffff);
    (
        addrs.rotate_left(32),
        (dport << 24) | (sport << 8) | (l4 & 0xff),
    )
}

fn proto_of(l4: u64) -> L4Proto {
    if l4 & 0xff == u64::from(L4Proto::Udp.number()) {
        L4Proto::Udp
    } else {
        L4Proto::Tcp
    }
}

fn decode(addrs: u64, l4: u64) -> Tuple {
    Tuple {
        src: Ipv4Addr::from_bits((addrs >> 32) as u32),
        sport: ((l4 >> 24) & 0xffff) as u16,
        dst: Ipv4Addr::from_bits((addrs & 0xffff_ffff) as u32),
        dport: ((l4 >> 8) & 0xffff) as u16,
        proto: proto_of(l4),
    }
}

fn state_code(s: FlowState) -> u64 {
    match s {
        FlowState::SynSent => 0,
        FlowState::Established => 1,
        FlowState::Closing => 2,
        FlowState::Udp => 3,
    }
}

#[inline]
fn state_of(status: u64) -> FlowState {
    match status & 0xff {
        0 => FlowState::SynSent,
        1 => FlowState::Established,
        2 => FlowState::Closing,
        _ => FlowState::Udp,
    }
}

#[inline]
fn stamp(expires: Nanos) -> u32 {
    u32::try_from(expires >> STAMP_SHIFT).unwrap_or(u32::MAX)
}

/// A zeroed array of `len` words whose element `base` is aligned on 64 bytes.
fn aligned<T: Clone + Default>(len: usize) -> (Box<[T]>, usize) {
    let size = core::mem::size_of::<T>();
    let per_line = 64 / size;
    let words = vec![T::default(); len + per_line].into_boxed_slice();
    let misaligned = (words.as_ptr() as usize % 64) / size;
    (words, (per_line - misaligned) % per_line)
}

/// The fixed-capacity table. See the module docs.
pub(crate) struct PolicyFlows {
    /// Per set: tags, then stamps.
    meta: Box<[u32]>,
    meta_base: usize,
    /// Per set: eight flows.
    flows: Box<[u64]>,
    flows_base: usize,
    /// Sets minus one (their number is a power of two).
    mask: usize,
    seed: u64,
    len: usize,
    sweep_cursor: usize,
    /// Where the scan for a victim starts (turns with every eviction).
    evict_turn: usize,
    /// Forgotten whenever its slot is removed or overwritten.
    last: Option<Last>,
}

impl core::fmt::Debug for PolicyFlows {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PolicyFlows")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl PolicyFlows {
    /// Room for `capacity` flows (clamped to 1..=[`MAX_CONNTRACK_CAPACITY`], rounded
    /// up to a power of two, at least one set).
    pub(crate) fn new(capacity: usize) -> PolicyFlows {
        let slots = capacity
            .clamp(1, MAX_CONNTRACK_CAPACITY)
            .next_power_of_two()
            .max(WAYS);
        let sets = slots / WAYS;
        // `vec!` of zeros: the allocator hands out untouched pages.
        let (meta, meta_base) = aligned::<u32>(sets * META_WORDS);
        let (flows, flows_base) = aligned::<u64>(slots * FLOW_WORDS);
        PolicyFlows {
            meta,
            meta_base,
            flows,
            flows_base,
            mask: sets - 1,
            seed: RandomState::new().hash_one(0x706f_6c69_6379_666c_u64),
            len: 0,
            sweep_cursor: 0,
            evict_turn: 0,
            last: None,
        }
    }

    /// Flows stored (expired ones not yet reclaimed included).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Flows it can hold.
    pub(crate) fn capacity(&self) -> usize {
        (self.mask + 1) * WAYS
    }

    /// A hash of a tuple (`addrs`, `l4` words) that does not depend on its direction.
    #[inline]
    fn side(&self, addrs: u64, l4: u64) -> u64 {
        let a = ((addrs >> 32) << 16) | ((l4 >> 24) & 0xffff);
        let b = ((addrs & 0xffff_ffff) << 16) | ((l4 >> 8) & 0xffff);
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        fmix64(fmix64(lo ^ self.seed) ^ hi ^ ((l4 & 0xff) << 56))
    }

    /// The probe for a packet that is `after` after the load balancer and `before`
    /// before it.
    #[cfg(test)]
    pub(crate) fn probe(&self, after: &Tuple, before: &Tuple) -> Probe {
        self.probe_keys([addrs(after), l4(after), addrs(before), l4(before)])
    }

    /// [`PolicyFlows::probe`] of a packet of protocol `proto` whose addresses and
    /// ports are `after` (source, destination) after the load balancer and
    /// `before` before it: what the stage has at hand.
    #[inline]
    pub(crate) fn probe_parts(
        &self,
        proto: L4Proto,
        after: ([Ipv4Addr; 2], (u16, u16)),
        before: ([Ipv4Addr; 2], (u16, u16)),
    ) -> Probe {
        let words = |([src, dst], (sport, dport)): ([Ipv4Addr; 2], (u16, u16))| {
            let t = Tuple {
                src,
                sport,
                dst,
                dport,
                proto,
            };
            (addrs(&t), l4(&t))
        };
        let ((a0, a1), (b0, b1)) = (words(after), words(before));
        self.probe_keys([a0, a1, b0, b1])
    }

    #[inline]
    fn probe_keys(&self, keys: [u64; 4]) -> Probe {
        Probe { keys, hash: None }
    }

    /// The probe's hash (computed once).
    #[inline]
    fn hash(&self, p: &mut Probe) -> u64 {
        *p.hash.get_or_insert_with(|| {
            let [a0, a1, b0, b1] = p.keys;
            let h = self.side(a0, a1);
            if (a0, a1) == (b0, b1) {
                h
            } else {
                h.wrapping_add(self.side(b0, b1))
            }
        })
    }

    #[inline]
    fn set_of(&self, hash: u64) -> usize {
        usize::try_from(hash & 0xffff_ffff).unwrap_or(0) & self.mask
    }

    #[inline]
    fn tag_of(hash: u64) -> u32 {
        ((hash >> 32) as u32) | 1
    }

    #[inline]
    fn meta(&self, set: usize) -> Option<&[u32; META_WORDS]> {
        let at = self.meta_base + set * META_WORDS;
        self.meta.get(at..at + META_WORDS)?.try_into().ok()
    }

    #[inline]
    fn meta_mut(&mut self, set: usize) -> Option<&mut [u32; META_WORDS]> {
        let at = self.meta_base + set * META_WORDS;
        self.meta.get_mut(at..at + META_WORDS)?.try_into().ok()
    }

    #[inline]
    fn flow(&self, s: Slot) -> Option<&[u64; FLOW_WORDS]> {
        let at = self.flows_base + (s.set * WAYS + s.way) * FLOW_WORDS;
        self.flows.get(at..at + FLOW_WORDS)?.try_into().ok()
    }

    #[inline]
    fn flow_mut(&mut self, s: Slot) -> Option<&mut [u64; FLOW_WORDS]> {
        let at = self.flows_base + (s.set * WAYS + s.way) * FLOW_WORDS;
        self.flows.get_mut(at..at + FLOW_WORDS)?.try_into().ok()
    }

    /// The flow the probed packet belongs to, and the packet's direction in it. An
    /// expired one is removed (counted) and not returned.
    #[inline]
    pub(crate) fn find(&mut self, p: &mut Probe, now: Nanos, counters: &Counters) -> Option<Hit> {
        if self.len == 0 {
            return None;
        }
        let last = self.last.and_then(|l| {
            if p.keys == l.forward {
                Some((l.slot, Dir::Forward))
            } else if p.keys == l.reply {
                Some((l.slot, Dir::Reply))
            } else {
                None
            }
        });
        let (slot, dir, [expires, generation, status]) = match last {
            Some((slot, dir)) => {
                let f = self.flow(slot)?;
                (slot, dir, [f[EXPIRES], f[GENERATION], f[STATUS]])
            }
            None => self.search(p)?,
        };
        if expires <= now {
            self.remove(slot);
            counters.bump(Counter::ConntrackExpired);
            return None;
        }
        Some(Hit {
            slot,
            dir,
            state: state_of(status),
            generation,
        })
    }

    /// [`PolicyFlows::find`] in the probe's set: the slot, the direction, and the
    /// flow's expiry, generation and status words. Remembers the flow as the last.
    fn search(&mut self, p: &mut Probe) -> Option<(Slot, Dir, [u64; 3])> {
        let hash = self.hash(p);
        let (set, tag) = (self.set_of(hash), Self::tag_of(hash));
        let (tags, _) = self.meta(set)?.split_first_chunk::<WAYS>()?;
        let mut ways = tags.iter().enumerate().filter(|(_, t)| **t == tag);
        let found = ways.find_map(|(way, _)| {
            let slot = Slot { set, way };
            let [a0, a1, b0, b1, expires, generation, status, _] = *self.flow(slot)?;
            let keys = [a0, a1, b0, b1];
            let reply = reply_keys(keys);
            let dir = if keys == p.keys {
                Dir::Forward
            } else if reply == p.keys {
                Dir::Reply
            } else {
                return None;
            };
            let last = Last {
                forward: keys,
                reply,
                slot,
            };
            Some((last, dir, [expires, generation, status]))
        })?;
        self.last = Some(found.0);
        Some((found.0.slot, found.1, found.2))
    }

    /// The flow stored at `s`.
    pub(crate) fn get(&self, s: Slot) -> Option<PolicyFlow> {
        let (tags, _) = self.meta(s.set)?.split_first_chunk::<WAYS>()?;
        if tags.get(s.way).is_none_or(|t| *t == 0) {
            return None;
        }
        let [a0, a1, b0, b1, expires, generation, status, _] = *self.flow(s)?;
        Some(PolicyFlow {
            after: decode(a0, a1),
            before: decode(b0, b1),
            state: state_of(status),
            fins: ((status >> 8) & 0xff) as u8,
            from_host_port: (status >> 16) & 1 != 0,
            expires,
            generation,
        })
    }

    /// The flow at `s` was judged again under `generation`.
    pub(crate) fn set_generation(&mut self, s: Slot, generation: u64) {
        if let Some(f) = self.flow_mut(s) {
            f[GENERATION] = generation;
        }
    }

    /// A packet of the flow at `s`: its state advances and its expiry is refreshed.
    #[inline]
    pub(crate) fn on_packet(
        &mut self,
        s: Slot,
        dir: Dir,
        flags: u8,
        now: Nanos,
        timeouts: &ConntrackTimeouts,
    ) {
        let Some(f) = self.flow_mut(s) else {
            return;
        };
        let status = f[STATUS];
        let mut state = state_of(status);
        if flags & (TCP_FIN | TCP_RST) != 0 || state == FlowState::SynSent {
            let mut fins = ((status >> 8) & 0xff) as u8;
            advance(proto_of(f[AFTER_L4]), &mut state, &mut fins, dir, flags);
            f[STATUS] = (status & !0xffff) | (u64::from(fins) << 8) | state_code(state);
        }
        let expires = now.saturating_add(timeout(state, timeouts));
        f[EXPIRES] = expires;
        let fresh = stamp(expires);
        if let Some(st) = self.meta_mut(s.set).and_then(|m| m.get_mut(WAYS + s.way)) {
            if *st != fresh {
                *st = fresh;
            }
        }
    }

    /// Removes the flow at `s`.
    pub(crate) fn remove(&mut self, s: Slot) {
        let Some(tag) = self.meta_mut(s.set).and_then(|m| m.get_mut(s.way)) else {
            return;
        };
        if *tag != 0 {
            *tag = 0;
            self.len = self.len.saturating_sub(1);
        }
        if self.last.is_some_and(|l| l.slot == s) {
            self.last = None;
        }
    }

    /// Stores `flow` for the probed packet (its first; the caller looked it up and
    /// missed; `flow`'s keys are the probe's): in a free way of its set, else in place
    /// of the one that expires first (counted).
    pub(crate) fn insert(
        &mut self,
        p: &mut Probe,
        flow: &PolicyFlow,
        now: Nanos,
        counters: &Counters,
    ) {
        let hash = self.hash(p);
        let set = self.set_of(hash);
        let turn = self.evict_turn;
        let Some(meta) = self.meta(set) else {
            return;
        };
        let Some((tags, stamps)) = meta.split_first_chunk::<WAYS>() else {
            return;
        };
        let free = tags.iter().position(|t| *t == 0);
        let (way, oldest) = match free {
            Some(way) => (way, 0),
            None => {
                // The first way that expires first, from a turning position.
                let mut way = turn % WAYS;
                let mut oldest = u32::MAX;
                for k in 0..WAYS {
                    let i = (turn + k) % WAYS;
                    if let Some(st) = stamps.get(i).filter(|st| **st < oldest) {
                        (way, oldest) = (i, *st);
                    }
                }
                (way, oldest)
            }
        };
        if free.is_some() {
            self.len += 1;
        } else {
            self.evict_turn = turn.wrapping_add(1);
            // Judged from the stamp, without reading the flow's line: expired if it
            // expired in an earlier 67 ms unit than now.
            counters.bump(if oldest < stamp(now) {
                Counter::ConntrackExpired
            } else {
                Counter::ConntrackEvicted
            });
        }
        let slot = Slot { set, way };
        let status = state_code(flow.state)
            | (u64::from(flow.fins) << 8)
            | (u64::from(flow.from_host_port) << 16);
        let [a0, a1, b0, b1] = p.keys;
        if let Some(f) = self.flow_mut(slot) {
            *f = [a0, a1, b0, b1, flow.expires, flow.generation, status, 0];
        }
        // Its next packet is likely the answer.
        self.last = Some(Last {
            forward: p.keys,
            reply: reply_keys(p.keys),
            slot,
        });
        let tag = Self::tag_of(hash);
        if let Some(m) = self.meta_mut(set) {
            if let Some(t) = m.get_mut(way) {
                *t = tag;
            }
            if let Some(st) = m.get_mut(WAYS + way) {
                *st = stamp(flow.expires);
            }
        }
    }

    /// Visits up to `budget` ways (whole sets) from a rotating cursor and removes the
    /// expired flows it meets (counted `conntrack_expired`). Returns how many it
    /// removed.
    pub(crate) fn sweep(&mut self, now: Nanos, budget: usize, counters: &Counters) -> usize {
        let mut removed = 0;
        let mut set = self.sweep_cursor & self.mask;
        for _ in 0..budget.div_ceil(WAYS).min(self.mask + 1) {
            if self.len == 0 {
                break;
            }
            for way in 0..WAYS {
                let s = Slot { set, way };
                let used = self
                    .meta(set)
                    .and_then(|m| m.get(way))
                    .is_some_and(|t| *t != 0);
                if used && self.flow(s).is_some_and(|f| f[EXPIRES] <= now) {
                    self.remove(s);
                    counters.bump(Counter::ConntrackExpired);
                    removed += 1;
                }
            }
            set = (set + 1) & self.mask;
        }
        self.sweep_cursor = set;
        removed
    }
}

#[cfg(test)]
#[path = "policy_flows_tests.rs"]
mod tests;
