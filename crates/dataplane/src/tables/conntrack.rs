//! Connection tracking for the service load balancer: which backend each flow to a
//! ClusterIP went to, and how to rewrite its replies.
//!
//! Each flow has two keys, forward (`client → vip`) and reply (`backend → nat
//! source`). The hash is symmetric (a tuple and its reverse hash alike), so one probe
//! of `Conntrack::lookup` finds a packet's flow under either key, or else a flow
//! whose reply key is the packet reversed (`Hit::Clash`: a client sending straight
//! to the backend from the source port a service flow's replies go to, tracked as a
//! `FlowKind::Direct` flow with another source port; see `pipeline/service.rs`).
//!
//! In full: docs/dataplane.md, "Connection tracking".

use core::hash::BuildHasher;
use std::collections::hash_map::RandomState;

#[cfg(test)]
use super::flow::SEC;
pub(crate) use super::flow::{advance, clamp_capacity, timeout, Dir, Flow, FlowKind, Tuple};
pub use super::flow::{
    ConntrackTimeouts, FlowInfo, FlowState, DEFAULT_CONNTRACK_CAPACITY, MAX_CONNTRACK_CAPACITY,
};
use super::flow_file::{check_flow_file, decode, BadRecord, FlowFileError, FlowMemory, Mirror};
use crate::drops::{Counter, Counters};
use crate::hash::fmix64;
use crate::types::Nanos;

/// What [`Conntrack::attach`] restored from a flow file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Flows restored.
    pub flows: usize,
    /// Records refused: torn or corrupt (checksum), meaningless, a key already
    /// restored, or rejected by the caller's check.
    pub rejected: usize,
}

/// Flows looked at to choose one to evict.
pub const EVICTION_SAMPLE: usize = 8;

/// How [`Conntrack::lookup`] found a packet's tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hit {
    /// The flow's forward key: a packet from its client.
    Forward,
    /// The flow's reply key: a packet from its backend.
    Reply,
    /// The flow's reply key reversed, i.e. its forward packet as translated: not the
    /// flow's own (that one was translated already), a new conversation whose replies
    /// the flow would take.
    Clash,
}

/// The fixed-capacity flow table. See the module docs.
pub struct Conntrack {
    flows: Vec<Flow>,
    /// 0 = empty; else `tag << 32 | ((flow << 1 | dir) + 1)`.
    index: Box<[u64]>,
    mask: usize,
    capacity: usize,
    seed: u64,
    evict_cursor: usize,
    sweep_cursor: usize,
    /// The flow file every change is written to, if any (`tables/flow_file.rs`).
    mirror: Option<Mirror>,
}

impl core::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Conntrack")
            .field("len", &self.flows.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Conntrack {
    /// Allocates room for `capacity` flows (clamped to 1..=[`MAX_CONNTRACK_CAPACITY`])
    /// and the index.
    pub fn new(capacity: usize) -> Conntrack {
        let capacity = clamp_capacity(capacity);
        let slots = (capacity * 4).next_power_of_two();
        Conntrack {
            flows: Vec::with_capacity(capacity),
            // All zeros: the allocator hands out untouched pages until flows arrive.
            index: vec![0u64; slots].into_boxed_slice(),
            mask: slots - 1,
            capacity,
            seed: RandomState::new().hash_one(0x636f_6e6e_7472_6163_u64),
            evict_cursor: 0,
            sweep_cursor: 0,
            mirror: None,
        }
    }

    /// Restores the flows recorded in `mem` (a flow file whose header is checked
    /// here) into this empty table, then mirrors every later change into it.
    /// Each record is checked (checksum, meaning, `valid`, keys not already
    /// taken); what fails is counted `conntrack_restore_rejected` and dropped, what
    /// passes `conntrack_restored`. The file is rewritten to match the table.
    /// An unusable header is an error and `mem` is not used.
    pub fn attach(
        &mut self,
        mut mem: Box<dyn FlowMemory>,
        now: Nanos,
        timeouts: &ConntrackTimeouts,
        counters: &Counters,
        valid: impl Fn(&Flow) -> bool,
    ) -> Result<Restored, FlowFileError> {
        check_flow_file(mem.bytes(), self.capacity)?;
        let mut mirror = Mirror::new(mem);
        let mut restored = Restored::default();
        let mut flows = Vec::new();
        for rec in mirror.records() {
            match decode(rec, now, timeouts) {
                Ok(None) => {}
                Ok(Some(flow)) if valid(&flow) => flows.push(flow),
                Ok(Some(_)) | Err(BadRecord::Checksum | BadRecord::Insane) => {
                    restored.rejected += 1;
                }
            }
        }
        for flow in flows {
            let taken = [Dir::Forward, Dir::Reply]
                .iter()
                .any(|d| self.find(*d, &flow.key(*d), now, counters).is_some());
            if taken || self.flows.len() >= self.capacity {
                restored.rejected += 1;
                continue;
            }
            self.insert(flow, now, counters);
            restored.flows += 1;
        }
        // Records 0..len in table order; a kill meanwhile leaves every flow in
        // some record (old or new), duplicates restored once.
        for (f, flow) in self.flows.iter().enumerate() {
            mirror.store(f, flow);
        }
        mirror.truncate(self.flows.len());
        self.mirror = Some(mirror);
        counters.add(Counter::ConntrackRestored, restored.flows as u64);
        counters.add(Counter::ConntrackRestoreRejected, restored.rejected as u64);
        Ok(restored)
    }

    /// Stops mirroring; the flow file's memory, as last written.
    pub(crate) fn detach(&mut self) -> Option<Box<dyn FlowMemory>> {
        self.mirror.take().map(Mirror::into_memory)
    }

    /// Writes flow `f` to the flow file again (its state changed).
    #[inline]
    pub(crate) fn persist(&mut self, f: usize) {
        if let (Some(m), Some(flow)) = (self.mirror.as_mut(), self.flows.get(f)) {
            m.store(f, flow);
        }
    }

    /// Flows stored (expired ones not yet reclaimed included).
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// `true` when no flow is stored.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Symmetric: a tuple and its reverse hash alike, so that one probe finds both
    /// (see [`Conntrack::lookup`]).
    #[inline]
    fn hash(&self, t: &Tuple) -> u64 {
        let a = (u64::from(t.src.to_bits()) << 16) | u64::from(t.sport);
        let b = (u64::from(t.dst.to_bits()) << 16) | u64::from(t.dport);
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        fmix64(fmix64(lo ^ self.seed) ^ (hi << 8) ^ u64::from(t.proto.number()))
    }

    /// The index slot holding `(flow, dir)` for key `t`.
    fn slot_of(&self, t: &Tuple, value_low: u64) -> Option<usize> {
        let tag = self.hash(t) >> 32;
        let mut i = (tag as usize) & self.mask;
        for _ in 0..=self.mask {
            let v = *self.index.get(i)?;
            if v == 0 {
                return None;
            }
            if v >> 32 == tag && v & 0xffff_ffff == value_low {
                return Some(i);
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    /// The flow whose `dir` key is `t`. An expired one is removed (counted) and not
    /// returned.
    #[inline]
    pub(crate) fn find(
        &mut self,
        dir: Dir,
        t: &Tuple,
        now: Nanos,
        counters: &Counters,
    ) -> Option<usize> {
        if self.flows.is_empty() {
            return None;
        }
        let tag = self.hash(t) >> 32;
        let mut i = (tag as usize) & self.mask;
        for _ in 0..=self.mask {
            let v = *self.index.get(i)?;
            if v == 0 {
                return None;
            }
            let low = (v & 0xffff_ffff).wrapping_sub(1);
            if v >> 32 == tag && low & 1 == dir as u64 {
                let f = (low >> 1) as usize;
                if let Some(flow) = self.flows.get(f) {
                    if flow.key(dir) == *t {
                        if flow.expires <= now {
                            self.remove(f);
                            counters.bump(Counter::ConntrackExpired);
                            return None;
                        }
                        return Some(f);
                    }
                }
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    /// The flow `t` belongs to, in one probe: the flow whose forward or reply key is
    /// `t`, else the flow whose reply key is `t` reversed ([`Hit::Clash`]). Expired
    /// flows are removed (counted) and not returned.
    #[inline]
    pub(crate) fn lookup(
        &mut self,
        t: &Tuple,
        now: Nanos,
        counters: &Counters,
    ) -> Option<(usize, Hit)> {
        // Each round that does not return removes an expired flow: a match and a
        // clash at most.
        for _ in 0..3 {
            let (f, hit) = self.probe(t)?;
            let expired = self.flows.get(f).is_none_or(|fl| fl.expires <= now);
            if !expired {
                return Some((f, hit));
            }
            self.remove(f);
            counters.bump(Counter::ConntrackExpired);
        }
        None
    }

    /// `lookup` without the expiry check. A key and its reverse share a probe
    /// sequence (the hash is symmetric): an exact match ends it, a clash is kept
    /// while the rest is searched for one.
    #[inline]
    fn probe(&self, t: &Tuple) -> Option<(usize, Hit)> {
        if self.flows.is_empty() {
            return None;
        }
        let tag = self.hash(t) >> 32;
        let mut i = (tag as usize) & self.mask;
        let mut clash = None;
        for _ in 0..=self.mask {
            let v = *self.index.get(i)?;
            if v == 0 {
                break;
            }
            if v >> 32 == tag {
                let low = (v & 0xffff_ffff).wrapping_sub(1);
                let f = (low >> 1) as usize;
                let (dir, hit) = if low & 1 == 0 {
                    (Dir::Forward, Hit::Forward)
                } else {
                    (Dir::Reply, Hit::Reply)
                };
                if let Some(flow) = self.flows.get(f) {
                    let key = flow.key(dir);
                    if key == *t {
                        return Some((f, hit));
                    }
                    if dir == Dir::Reply && key == t.reversed() {
                        clash = Some((f, Hit::Clash));
                    }
                }
            }
            i = (i + 1) & self.mask;
        }
        clash
    }

    #[cfg(test)]
    pub(crate) fn get(&self, f: usize) -> Option<&Flow> {
        self.flows.get(f)
    }

    pub(crate) fn get_mut(&mut self, f: usize) -> Option<&mut Flow> {
        self.flows.get_mut(f)
    }

    fn link(&mut self, t: &Tuple, f: usize, dir: Dir) {
        let tag = self.hash(t) >> 32;
        let low = (((f as u64) << 1) | dir as u64) + 1;
        let mut i = (tag as usize) & self.mask;
        for _ in 0..=self.mask {
            match self.index.get_mut(i) {
                Some(v) if *v == 0 => {
                    *v = (tag << 32) | low;
                    return;
                }
                Some(_) => i = (i + 1) & self.mask,
                None => return,
            }
        }
    }

    /// Empties index slot `slot` by backward shift (no tombstones).
    fn unlink_slot(&mut self, slot: usize) {
        let mask = self.mask;
        let mut hole = slot;
        let mut j = slot;
        loop {
            j = (j + 1) & mask;
            let v = self.index.get(j).copied().unwrap_or(0);
            if v == 0 || j == slot {
                break;
            }
            let home = ((v >> 32) as usize) & mask;
            // `v` may fill the hole if the hole lies on its probe path home..=j.
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                if let Some(h) = self.index.get_mut(hole) {
                    *h = v;
                }
                hole = j;
            }
        }
        if let Some(h) = self.index.get_mut(hole) {
            *h = 0;
        }
    }

    /// Inserts a flow whose keys are both absent (the caller looked them up). Evicts
    /// one when full. Returns its index.
    pub(crate) fn insert(&mut self, flow: Flow, now: Nanos, counters: &Counters) -> usize {
        if self.flows.len() >= self.capacity {
            self.evict(now, counters);
        }
        let f = self.flows.len();
        self.flows.push(flow);
        self.link(&flow.key(Dir::Forward), f, Dir::Forward);
        self.link(&flow.key(Dir::Reply), f, Dir::Reply);
        if let Some(m) = self.mirror.as_mut() {
            m.store(f, &flow);
        }
        f
    }

    /// Removes flow `f` from the index and the dense array.
    pub(crate) fn remove(&mut self, f: usize) {
        let Some(flow) = self.flows.get(f).copied() else {
            return;
        };
        for dir in [Dir::Forward, Dir::Reply] {
            let low = (((f as u64) << 1) | dir as u64) + 1;
            if let Some(s) = self.slot_of(&flow.key(dir), low) {
                self.unlink_slot(s);
            }
        }
        let last = self.flows.len() - 1;
        if f != last {
            if let Some(moved) = self.flows.get(last).copied() {
                for dir in [Dir::Forward, Dir::Reply] {
                    let old = (((last as u64) << 1) | dir as u64) + 1;
                    let new = (((f as u64) << 1) | dir as u64) + 1;
                    if let Some(s) = self.slot_of(&moved.key(dir), old) {
                        if let Some(v) = self.index.get_mut(s) {
                            *v = (*v & !0xffff_ffff) | new;
                        }
                    }
                }
            }
        }
        self.flows.swap_remove(f);
        if let Some(m) = self.mirror.as_mut() {
            // The moved flow's record first, so it is never in none.
            if let Some(moved) = self.flows.get(f) {
                m.store(f, moved);
            }
            m.clear(last);
        }
    }

    /// Frees one flow: see the module docs.
    fn evict(&mut self, now: Nanos, counters: &Counters) {
        let len = self.flows.len();
        if len == 0 {
            return;
        }
        let start = self.evict_cursor % len;
        let mut victim = start;
        let mut best = (true, Nanos::MAX);
        for k in 0..EVICTION_SAMPLE.min(len) {
            let i = (start + k) % len;
            if let Some(fl) = self.flows.get(i) {
                let rank = (fl.state == FlowState::Established, fl.expires);
                if rank < best {
                    best = rank;
                    victim = i;
                }
            }
        }
        self.evict_cursor = start + EVICTION_SAMPLE;
        let expired = self.flows.get(victim).is_some_and(|f| f.expires <= now);
        self.remove(victim);
        counters.bump(if expired {
            Counter::ConntrackExpired
        } else {
            Counter::ConntrackEvicted
        });
    }

    /// Visits up to `budget` flows from a rotating cursor, removing expired ones
    /// (counted `conntrack_expired`) and those `keep` rejects (counted
    /// `conntrack_flushed`). `full`: start from the first flow, so that a budget of
    /// `len` visits every flow exactly once. Returns how many were removed.
    pub(crate) fn sweep(
        &mut self,
        now: Nanos,
        budget: usize,
        full: bool,
        counters: &Counters,
        mut keep: impl FnMut(&mut Flow) -> bool,
    ) -> usize {
        let mut removed = 0;
        let mut i = if !full && self.sweep_cursor < self.flows.len() {
            self.sweep_cursor
        } else {
            0
        };
        let mut visited = 0;
        while visited < budget && !self.flows.is_empty() {
            if i >= self.flows.len() {
                i = 0;
            }
            visited += 1;
            let verdict = match self.flows.get_mut(i) {
                Some(f) if f.expires <= now => Some(Counter::ConntrackExpired),
                Some(f) => (!keep(f)).then_some(Counter::ConntrackFlushed),
                None => None,
            };
            match verdict {
                Some(c) => {
                    // The last flow moves into `i`: look at `i` again.
                    self.remove(i);
                    counters.bump(c);
                    removed += 1;
                }
                None => i += 1,
            }
        }
        self.sweep_cursor = i;
        removed
    }

    /// Live flows for status (allocates).
    pub(crate) fn infos(&self, now: Nanos) -> Vec<FlowInfo> {
        self.flows
            .iter()
            .filter(|f| f.expires > now)
            .map(|f| f.info(now))
            .collect()
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]
mod tests {
    use super::*;
    use crate::types::{Backend, L4Proto};
    use crate::wire::tcp::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
    use core::net::Ipv4Addr;

    fn flow(i: u32, now: Nanos) -> Flow {
        let c = Ipv4Addr::from_bits(0x0af4_0100 + i);
        Flow {
            client: (c, 40_000 + (i % 1000) as u16),
            vip: (Ipv4Addr::new(10, 96, 0, 10), 53),
            backend: Backend {
                ip: Ipv4Addr::new(10, 244, 2, 2),
                port: 53,
            },
            nat: (c, 40_000 + (i % 1000) as u16),
            proto: L4Proto::Udp,
            kind: FlowKind::Service,
            state: FlowState::Udp,
            fins: 0,
            created: now,
            expires: now + 30 * SEC,
            generation: 0,
        }
    }

    fn check_all_findable(ct: &mut Conntrack, c: &Counters) {
        for f in 0..ct.len() {
            let fl = *ct.get(f).unwrap();
            assert_eq!(ct.find(Dir::Forward, &fl.key(Dir::Forward), 0, c), Some(f));
            assert_eq!(ct.find(Dir::Reply, &fl.key(Dir::Reply), 0, c), Some(f));
        }
    }

    #[test]
    fn insert_find_remove_keep_the_index_consistent() {
        let c = Counters::default();
        let mut ct = Conntrack::new(64);
        for i in 0..64 {
            ct.insert(flow(i, 0), 0, &c);
        }
        assert_eq!(ct.len(), 64);
        check_all_findable(&mut ct, &c);
        // Remove every third flow: swap-remove moves others, the index follows.
        for i in (0..64).step_by(3) {
            let key = flow(i, 0).key(Dir::Forward);
            let f = ct.find(Dir::Forward, &key, 0, &c).unwrap();
            ct.remove(f);
            assert_eq!(ct.find(Dir::Forward, &key, 0, &c), None);
        }
        assert_eq!(ct.len(), 64 - 22);
        check_all_findable(&mut ct, &c);
        // The reply key is not found as a forward key.
        let fl = *ct.get(0).unwrap();
        assert_eq!(ct.find(Dir::Forward, &fl.key(Dir::Reply), 0, &c), None);
    }

    #[test]
    fn lookup_finds_either_key_or_a_clash_in_one_probe() {
        let c = Counters::default();
        let mut ct = Conntrack::new(64);
        for i in 0..40 {
            ct.insert(flow(i, 0), 0, &c);
        }
        let fl = flow(7, 0);
        let f = ct.find(Dir::Forward, &fl.key(Dir::Forward), 0, &c).unwrap();
        let (fwd, reply) = (fl.key(Dir::Forward), fl.key(Dir::Reply));
        assert_eq!(ct.hash(&reply), ct.hash(&reply.reversed()), "symmetric");
        assert_ne!(ct.hash(&reply), ct.hash(&fwd));
        assert_eq!(ct.lookup(&fwd, 0, &c), Some((f, Hit::Forward)));
        assert_eq!(ct.lookup(&reply, 0, &c), Some((f, Hit::Reply)));
        // The forward packet as translated (client → backend) is a clash...
        assert_eq!(ct.lookup(&reply.reversed(), 0, &c), Some((f, Hit::Clash)));
        // ... the forward key reversed (from the VIP) is nothing.
        assert_eq!(ct.lookup(&fwd.reversed(), 0, &c), None);
        // An exact match wins over a clash on the same probe sequence: flow 7's
        // reply key is `reply`, flow `y`'s reply key is `reply` reversed.
        let mut y = flow(100, 0);
        y.backend = Backend {
            ip: reply.dst,
            port: reply.dport,
        };
        y.nat = (reply.src, reply.sport);
        let yf = ct.insert(y, 0, &c);
        assert_eq!(ct.lookup(&reply, 0, &c), Some((f, Hit::Reply)));
        assert_eq!(ct.lookup(&reply.reversed(), 0, &c), Some((yf, Hit::Reply)));
        // Expired flows are removed, the clash too, and counted.
        ct.remove(yf);
        assert_eq!(ct.lookup(&reply.reversed(), 30 * SEC, &c), None);
        assert_eq!(ct.len(), 39);
        assert_eq!(c.snapshot().get(Counter::ConntrackExpired), 1);
        check_all_findable(&mut ct, &c);
    }

    #[test]
    fn full_table_evicts_unestablished_first() {
        let c = Counters::default();
        let mut ct = Conntrack::new(8);
        for i in 0..8 {
            let mut f = flow(i, 0);
            f.proto = L4Proto::Tcp;
            f.state = if i == 5 {
                FlowState::SynSent
            } else {
                FlowState::Established
            };
            f.expires = 100 * SEC + Nanos::from(i);
            ct.insert(f, 0, &c);
        }
        ct.insert(flow(100, 0), SEC, &c);
        assert_eq!(ct.len(), 8);
        assert_eq!(c.snapshot().get(Counter::ConntrackEvicted), 1);
        let k5 = flow(5, 0).key(Dir::Forward);
        let mut k5t = k5;
        k5t.proto = L4Proto::Tcp;
        assert_eq!(ct.find(Dir::Forward, &k5t, SEC, &c), None, "the SYN went");
        check_all_findable(&mut ct, &c);
    }

    #[test]
    fn expired_flows_vanish_on_lookup_and_sweep() {
        let c = Counters::default();
        let mut ct = Conntrack::new(16);
        for i in 0..10 {
            ct.insert(flow(i, 0), 0, &c);
        }
        let k = flow(3, 0).key(Dir::Reply);
        assert!(ct.find(Dir::Reply, &k, 30 * SEC - 1, &c).is_some());
        assert_eq!(ct.find(Dir::Reply, &k, 30 * SEC, &c), None);
        assert_eq!(ct.len(), 9);
        assert_eq!(c.snapshot().get(Counter::ConntrackExpired), 1);
        // A sweep with a budget removes what it visits.
        assert_eq!(ct.sweep(30 * SEC, 4, false, &c, |_| true), 4);
        assert_eq!(ct.sweep(30 * SEC, 100, false, &c, |_| true), 5);
        assert!(ct.is_empty());
        for i in 0..4 {
            ct.insert(flow(i, 0), 0, &c);
        }
        assert_eq!(
            ct.sweep(0, 100, true, &c, |f| f.client.0 != flow(2, 0).client.0),
            1
        );
        assert_eq!(c.snapshot().get(Counter::ConntrackFlushed), 1);
        assert_eq!(ct.infos(0).len(), 3);
    }

    #[test]
    fn tcp_states() {
        let t = ConntrackTimeouts::default();
        let mut f = flow(1, 0);
        f.proto = L4Proto::Tcp;
        f.state = Flow::initial_state(L4Proto::Tcp, TCP_SYN);
        assert_eq!(f.state, FlowState::SynSent);
        f.on_packet(Dir::Forward, TCP_ACK, SEC, &t);
        assert_eq!(f.state, FlowState::SynSent, "a client ACK is not an answer");
        assert_eq!(f.expires, SEC + t.tcp_syn);
        f.on_packet(Dir::Reply, TCP_SYN | TCP_ACK, 2 * SEC, &t);
        assert_eq!(f.state, FlowState::Established);
        assert_eq!(f.expires, 2 * SEC + t.tcp_established);
        f.on_packet(Dir::Forward, TCP_FIN | TCP_ACK, 3 * SEC, &t);
        assert_eq!(f.state, FlowState::Established);
        f.on_packet(Dir::Reply, TCP_FIN | TCP_ACK, 4 * SEC, &t);
        assert_eq!(f.state, FlowState::Closing);
        assert_eq!(f.expires, 4 * SEC + t.tcp_closing);
        assert_eq!(
            Flow::initial_state(L4Proto::Tcp, TCP_ACK),
            FlowState::Established
        );
        assert_eq!(
            Flow::initial_state(L4Proto::Tcp, TCP_RST),
            FlowState::Closing
        );
        let mut g = flow(2, 0);
        g.proto = L4Proto::Tcp;
        g.state = FlowState::Established;
        g.on_packet(Dir::Reply, TCP_RST, 5 * SEC, &t);
        assert_eq!(g.state, FlowState::Closing);
    }
}
