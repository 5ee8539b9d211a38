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
//! flows arrive), never reallocated. A set is nine cache lines, the first aligned on
//! 64 bytes: one line of eight way words (`tag << 32 | stamp`; tag 0 = empty, else
//! the hash's upper half with bit 0 set; stamp = the flow's expiry in units of 2^26
//! ns), then one line per way holding the flow. A lookup reads the way words, and
//! the flow line of a way whose tag matches: two lines. An insert takes a free way
//! of the set, else evicts the way that expires first (read from the stamps, without
//! touching the flows; ties, flows that expire within the same 67 ms, are broken by
//! a position that turns with every eviction; an expired flow counts
//! `conntrack_expired`, a live one `conntrack_evicted`). Memory is bounded (`capacity` rounded up to a power of two
//! flows, 72 bytes each); a set can fill while others have room, which the eviction
//! order makes cheap (flows about to expire go first: half-open TCP and UDP, 30 s,
//! before established TCP, an hour).
//!
//! In full: docs/dataplane.md, "The policy stage".

use core::hash::BuildHasher;
use std::collections::hash_map::RandomState;

use crate::drops::{Counter, Counters};
use crate::hash::fmix64;
use crate::tables::conntrack::{
    advance, timeout, ConntrackTimeouts, Dir, FlowState, Tuple, MAX_CONNTRACK_CAPACITY,
};
use crate::types::{L4Proto, Nanos};

/// Flows per set.
pub const WAYS: usize = 8;

/// Words of one way's flow (one cache line).
const FLOW_WORDS: usize = 8;

/// Words of one set: the way words, then the flows.
const SET_WORDS: usize = WAYS + WAYS * FLOW_WORDS;

/// Words of a cache line.
const LINE_WORDS: usize = 8;

/// A stamp is an expiry in units of 2^STAMP_SHIFT ns (67 ms; a `u32` of them
/// covers nine years of the clock, after which stamps saturate and every choice is
/// a tie).
const STAMP_SHIFT: u32 = 26;

// The flow words, in order.
const AFTER_ADDRS: usize = 0;
const AFTER_L4: usize = 1;
const BEFORE_ADDRS: usize = 2;
const BEFORE_L4: usize = 3;
const EXPIRES: usize = 4;
const GENERATION: usize = 5;
/// State, FIN bits, host-port bit.
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
    after: [u64; 2],
    before: [u64; 2],
    hash: u64,
}

fn addrs(t: &Tuple) -> u64 {
    (u64::from(t.src.to_bits()) << 32) | u64::from(t.dst.to_bits())
}

fn l4(t: &Tuple) -> u64 {
    (u64::from(t.sport) << 24) | (u64::from(t.dport) << 8) | u64::from(t.proto.number())
}

/// `l4` of the reversed tuple.
fn l4_reversed(w: u64) -> u64 {
    let (sport, dport) = ((w >> 24) & 0xffff, (w >> 8) & 0xffff);
    (dport << 24) | (sport << 8) | (w & 0xff)
}

fn state_code(s: FlowState) -> u64 {
    match s {
        FlowState::SynSent => 0,
        FlowState::Established => 1,
        FlowState::Closing => 2,
        FlowState::Udp => 3,
    }
}

fn state_of(code: u64) -> FlowState {
    match code & 0xff {
        0 => FlowState::SynSent,
        1 => FlowState::Established,
        2 => FlowState::Closing,
        _ => FlowState::Udp,
    }
}

fn stamp(expires: Nanos) -> u64 {
    (expires >> STAMP_SHIFT).min(u64::from(u32::MAX))
}

fn decode(addrs: u64, l4: u64) -> Tuple {
    let proto = if l4 & 0xff == u64::from(L4Proto::Udp.number()) {
        L4Proto::Udp
    } else {
        L4Proto::Tcp
    };
    Tuple {
        src: core::net::Ipv4Addr::from_bits((addrs >> 32) as u32),
        sport: ((l4 >> 24) & 0xffff) as u16,
        dst: core::net::Ipv4Addr::from_bits((addrs & 0xffff_ffff) as u32),
        dport: ((l4 >> 8) & 0xffff) as u16,
        proto,
    }
}

/// The fixed-capacity table. See the module docs.
pub(crate) struct PolicyFlows {
    words: Box<[u64]>,
    /// Index of set 0's first word (aligned on 64 bytes).
    base: usize,
    /// Sets minus one (their number is a power of two).
    mask: usize,
    seed: u64,
    len: usize,
    sweep_cursor: usize,
    /// Where the scan for a victim starts (turns with every eviction).
    evict_turn: usize,
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
        // Zeroed: the allocator hands out untouched pages. One spare line to align.
        let words = vec![0u64; sets * SET_WORDS + LINE_WORDS].into_boxed_slice();
        let misaligned = (words.as_ptr() as usize / 8) % LINE_WORDS;
        PolicyFlows {
            base: (LINE_WORDS - misaligned) % LINE_WORDS,
            words,
            mask: sets - 1,
            seed: RandomState::new().hash_one(0x706f_6c69_6379_666c_u64),
            len: 0,
            sweep_cursor: 0,
            evict_turn: 0,
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

    /// A hash of `t` that does not depend on its direction.
    #[inline]
    fn side(&self, t: &Tuple) -> u64 {
        let a = (u64::from(t.src.to_bits()) << 16) | u64::from(t.sport);
        let b = (u64::from(t.dst.to_bits()) << 16) | u64::from(t.dport);
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        fmix64(fmix64(lo ^ self.seed) ^ hi ^ (u64::from(t.proto.number()) << 56))
    }

    /// The probe for a packet that is `after` after the load balancer and `before`
    /// before it.
    #[inline]
    pub(crate) fn probe(&self, after: &Tuple, before: &Tuple) -> Probe {
        let mut hash = self.side(after);
        if after != before {
            hash = hash.wrapping_add(self.side(before));
        }
        Probe {
            after: [addrs(after), l4(after)],
            before: [addrs(before), l4(before)],
            hash,
        }
    }

    #[inline]
    fn set_of(&self, p: &Probe) -> usize {
        usize::try_from(p.hash & 0xffff_ffff).unwrap_or(0) & self.mask
    }

    #[inline]
    fn tag_of(p: &Probe) -> u64 {
        (p.hash >> 32) | 1
    }

    #[inline]
    fn set_at(&self, set: usize) -> usize {
        self.base + set * SET_WORDS
    }

    #[inline]
    fn way_word(&self, s: Slot) -> usize {
        self.set_at(s.set) + s.way
    }

    #[inline]
    fn flow_at(&self, s: Slot) -> usize {
        self.set_at(s.set) + WAYS + s.way * FLOW_WORDS
    }

    #[inline]
    fn word(&self, i: usize) -> u64 {
        self.words.get(i).copied().unwrap_or(0)
    }

    #[inline]
    fn set_word(&mut self, i: usize, v: u64) {
        if let Some(w) = self.words.get_mut(i) {
            *w = v;
        }
    }

    /// The flow the probed packet belongs to, and the packet's direction in it. An
    /// expired one is removed (counted) and not returned.
    #[inline]
    pub(crate) fn find(
        &mut self,
        p: &Probe,
        now: Nanos,
        counters: &Counters,
    ) -> Option<(Slot, Dir)> {
        if self.len == 0 {
            return None;
        }
        let set = self.set_of(p);
        let tag = Self::tag_of(p);
        let at = self.set_at(set);
        let ways = self.words.get(at..at + WAYS)?;
        let mut hits = 0u32;
        for (i, w) in ways.iter().enumerate() {
            hits |= u32::from(*w >> 32 == tag) << i;
        }
        while hits != 0 {
            let way = hits.trailing_zeros() as usize;
            hits &= hits - 1;
            let s = Slot { set, way };
            let f = self.flow_at(s);
            let Some(&[a0, a1, b0, b1, expires]) = self.words.get(f..f + 5) else {
                continue;
            };
            let dir = if [a0, a1, b0, b1] == [p.after[0], p.after[1], p.before[0], p.before[1]] {
                Dir::Forward
            } else if [
                b0.rotate_left(32),
                l4_reversed(b1),
                a0.rotate_left(32),
                l4_reversed(a1),
            ] == [p.after[0], p.after[1], p.before[0], p.before[1]]
            {
                Dir::Reply
            } else {
                continue;
            };
            if expires <= now {
                self.remove(s);
                counters.bump(Counter::ConntrackExpired);
                return None;
            }
            return Some((s, dir));
        }
        None
    }

    /// The flow stored at `s`.
    pub(crate) fn get(&self, s: Slot) -> Option<PolicyFlow> {
        if self.word(self.way_word(s)) == 0 {
            return None;
        }
        let f = self.flow_at(s);
        let status = self.word(f + STATUS);
        Some(PolicyFlow {
            after: decode(self.word(f + AFTER_ADDRS), self.word(f + AFTER_L4)),
            before: decode(self.word(f + BEFORE_ADDRS), self.word(f + BEFORE_L4)),
            state: state_of(status),
            fins: ((status >> 8) & 0xff) as u8,
            from_host_port: (status >> 16) & 1 != 0,
            expires: self.word(f + EXPIRES),
            generation: self.word(f + GENERATION),
        })
    }

    /// The state and the generation of the flow at `s`: what an established packet
    /// reads.
    #[inline]
    pub(crate) fn status(&self, s: Slot) -> (FlowState, u64) {
        let f = self.flow_at(s);
        (state_of(self.word(f + STATUS)), self.word(f + GENERATION))
    }

    /// The flow at `s` was judged again under `generation`.
    pub(crate) fn set_generation(&mut self, s: Slot, generation: u64) {
        let f = self.flow_at(s);
        self.set_word(f + GENERATION, generation);
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
        let f = self.flow_at(s);
        let status = self.word(f + STATUS);
        let mut state = state_of(status);
        let mut fins = ((status >> 8) & 0xff) as u8;
        let proto = if self.word(f + AFTER_L4) & 0xff == u64::from(L4Proto::Udp.number()) {
            L4Proto::Udp
        } else {
            L4Proto::Tcp
        };
        advance(proto, &mut state, &mut fins, dir, flags);
        let expires = now.saturating_add(timeout(state, timeouts));
        self.set_word(
            f + STATUS,
            (status & !0xffff) | (u64::from(fins) << 8) | state_code(state),
        );
        self.set_word(f + EXPIRES, expires);
        let w = self.way_word(s);
        let way = self.word(w);
        let fresh = (way & !0xffff_ffff) | stamp(expires);
        if fresh != way {
            self.set_word(w, fresh);
        }
    }

    /// Removes the flow at `s`.
    pub(crate) fn remove(&mut self, s: Slot) {
        let w = self.way_word(s);
        if self.word(w) != 0 {
            self.set_word(w, 0);
            self.len = self.len.saturating_sub(1);
        }
    }

    /// Stores `flow` for the probed packet (its first; the caller looked it up and
    /// missed): in a free way of its set, else in place of the one that expires
    /// first (counted).
    pub(crate) fn insert(&mut self, p: &Probe, flow: &PolicyFlow, now: Nanos, counters: &Counters) {
        let set = self.set_of(p);
        let at = self.set_at(set);
        let Some(ways) = self.words.get(at..at + WAYS) else {
            return;
        };
        let way = match ways.iter().position(|w| *w == 0) {
            Some(free) => {
                self.len += 1;
                free
            }
            None => {
                let turn = self.evict_turn;
                self.evict_turn = turn.wrapping_add(1);
                let way = (0..WAYS)
                    .map(|k| (turn + k) % WAYS)
                    .min_by_key(|i| ways.get(*i).map_or(0, |w| w & 0xffff_ffff))
                    .unwrap_or(0);
                let expires = self.word(self.flow_at(Slot { set, way }) + EXPIRES);
                counters.bump(if expires <= now {
                    Counter::ConntrackExpired
                } else {
                    Counter::ConntrackEvicted
                });
                way
            }
        };
        let f = self.flow_at(Slot { set, way });
        let status = state_code(flow.state)
            | (u64::from(flow.fins) << 8)
            | (u64::from(flow.from_host_port) << 16);
        if let Some(dst) = self.words.get_mut(f..f + FLOW_WORDS) {
            dst.copy_from_slice(&[
                p.after[0],
                p.after[1],
                p.before[0],
                p.before[1],
                flow.expires,
                flow.generation,
                status,
                0,
            ]);
        }
        self.set_word(at + way, (Self::tag_of(p) << 32) | stamp(flow.expires));
    }

    /// Visits up to `budget` ways from a rotating cursor and removes the expired
    /// flows it meets (counted `conntrack_expired`). Returns how many it removed.
    pub(crate) fn sweep(&mut self, now: Nanos, budget: usize, counters: &Counters) -> usize {
        let sets = self.mask + 1;
        let mut removed = 0;
        let mut set = self.sweep_cursor & self.mask;
        for _ in 0..budget.div_ceil(WAYS).min(sets) {
            if self.len == 0 {
                break;
            }
            for way in 0..WAYS {
                let s = Slot { set, way };
                if self.word(self.way_word(s)) != 0 && self.word(self.flow_at(s) + EXPIRES) <= now {
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
