//! The learning bridge's MAC table (IEEE 802.1D §7.8 filtering database, simplified).
//!
//! The bridge learns each frame's source MAC on its ingress port, forwards frames for
//! a known destination to that one port, and floods the rest. Entries age: one not
//! refreshed for `aging` nanoseconds is treated as unknown (and counted `aged_out` when
//! found), like the kernel bridge's `ageing_time` (default 300 s).
//!
//! # Why a hand-written table
//!
//! The table sits on the per-packet path (one lookup and one learn per frame), so it
//! must never allocate and never rehash. A `std` `HashMap` preallocated with
//! `with_capacity` still may grow when deletions leave tombstones, so this is a fixed
//! open-addressing table instead:
//!
//! - all slots are allocated in [`MacTable::new`]; the number of slots is the next
//!   power of two ≥ 2 × capacity, so the load factor stays ≤ 50 % and linear probes
//!   stay short (a few slots on average);
//! - deletion is backward-shift (no tombstones), so a full-then-drained table probes
//!   as fast as a fresh one;
//! - the hash is Fibonacci hashing of the MAC as a `u64` (multiply by 2^64/φ, keep the
//!   top bits), one multiply and one shift. It is not keyed: anti-spoofing pins every
//!   pod port to one MAC, so only the trusted host port can present arbitrary source
//!   MACs, and the capacity bound caps the damage of a bad one.
//!
//! When the table is full, a new MAC first triggers a sweep of aged entries, at most
//! once per [`SWEEP_INTERVAL`] of `now` (a sweep walks every slot); if still full, the
//! MAC is not learned and `table_full` is counted: its frames still flood, which is
//! correct, just slower.

use crate::drops::{Counter, Counters};
use crate::types::{Nanos, PortId};
use crate::wire::MacAddr;

/// Minimum time between two full-table sweeps triggered by a full table (1 s).
pub const SWEEP_INTERVAL: Nanos = 1_000_000_000;

/// Largest capacity the table accepts (larger requests are clamped): 2^20 entries,
/// 2^21 slots of 24 bytes = 48 MiB.
pub const MAX_CAPACITY: usize = 1 << 20;

/// Fibonacci-hashing multiplier, 2^64 / φ.
const HASH_MUL: u64 = 0x9e37_79b9_7f4a_7c15;

/// Marks an occupied slot's key; MACs use only the low 48 bits.
const OCCUPIED: u64 = 1 << 63;

#[derive(Clone, Copy, Debug)]
struct Slot {
    /// 0 when empty, else `OCCUPIED | mac`.
    key: u64,
    /// Last time the MAC was seen as a source.
    seen: Nanos,
    port: PortId,
}

impl Slot {
    const EMPTY: Slot = Slot {
        key: 0,
        seen: 0,
        port: PortId(0),
    };
}

/// What [`MacTable::learn`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// Known on this port: timestamp refreshed.
    Refreshed,
    /// New entry (or one that had aged out, re-learned).
    New,
    /// Known live on another port: moved here.
    Moved { from: PortId },
    /// Not learned: the table is full of live entries.
    TableFull,
}

/// A fixed-capacity MAC → port table with aging. See the module docs.
#[derive(Clone)]
pub struct MacTable {
    slots: Box<[Slot]>,
    /// `slots.len() - 1`; slots.len() is a power of two.
    mask: usize,
    /// `64 - log2(slots.len())`: keep the top bits of the product.
    shift: u32,
    len: usize,
    capacity: usize,
    aging: Nanos,
    last_sweep: Option<Nanos>,
}

impl core::fmt::Debug for MacTable {
    /// Summary only: the slots would be tens of thousands of lines.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MacTable")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("slots", &self.slots.len())
            .field("aging", &self.aging)
            .field("last_sweep", &self.last_sweep)
            .finish()
    }
}

impl MacTable {
    /// Allocates every slot for `capacity` entries (clamped to [`MAX_CAPACITY`]) now;
    /// nothing later allocates. Entries older than `aging` count as unknown.
    pub fn new(capacity: usize, aging: Nanos) -> Self {
        let capacity = capacity.min(MAX_CAPACITY);
        // ≥ 2 × capacity keeps the load ≤ 50 %; ≥ 8 keeps tiny tables sane.
        let slots_len = (capacity * 2).max(8).next_power_of_two();
        MacTable {
            slots: vec![Slot::EMPTY; slots_len].into_boxed_slice(),
            mask: slots_len - 1,
            shift: 64 - slots_len.trailing_zeros(),
            len: 0,
            capacity,
            aging,
            last_sweep: None,
        }
    }

    /// Entries stored, including aged ones not yet found and removed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// `true` if no entries are stored.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most entries the table will hold.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Slots allocated (fixed for the table's life; exposed so tests can show it).
    #[cfg(test)]
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        let h = key.wrapping_mul(HASH_MUL) >> self.shift;
        usize::try_from(h).unwrap_or(0) & self.mask
    }

    #[inline]
    fn expired(&self, slot: &Slot, now: Nanos) -> bool {
        now.saturating_sub(slot.seen) > self.aging
    }

    /// Finds `key`: `Ok(index)` if present, `Err(first empty index)` if not.
    #[inline]
    fn probe(&self, key: u64) -> Result<usize, usize> {
        let mut i = self.home(key);
        // The load is ≤ 50 %, so an empty slot always exists and the loop ends well
        // before this bound; the bound only makes termination obvious.
        for _ in 0..self.slots.len() {
            match self.slots.get(i) {
                Some(s) if s.key == key => return Ok(i),
                Some(s) if s.key == 0 => return Err(i),
                _ => i = (i + 1) & self.mask,
            }
        }
        Err(usize::MAX)
    }

    /// Removes the entry at `i`, shifting later members of its probe run back so that
    /// no tombstone is left (Knuth vol. 3, algorithm R).
    fn remove_at(&mut self, i: usize) {
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let Some(&s) = self.slots.get(j) else { break };
            if s.key == 0 {
                break;
            }
            let home = self.home(s.key);
            // `s` may move into the hole if the hole lies on its probe path home..=j.
            if j.wrapping_sub(home) & self.mask >= j.wrapping_sub(hole) & self.mask {
                if let Some(h) = self.slots.get_mut(hole) {
                    *h = s;
                }
                hole = j;
            }
        }
        if let Some(h) = self.slots.get_mut(hole) {
            *h = Slot::EMPTY;
        }
        self.len = self.len.saturating_sub(1);
    }

    /// Removes every entry for which `pred` holds; returns how many.
    fn retain_not(&mut self, mut pred: impl FnMut(&Slot) -> bool) -> usize {
        let mut removed = 0;
        let mut i = 0;
        while i < self.slots.len() {
            match self.slots.get(i) {
                Some(s) if s.key != 0 && pred(s) => {
                    // Re-examine `i`: the shift may have moved another entry into it.
                    self.remove_at(i);
                    removed += 1;
                }
                _ => i += 1,
            }
        }
        removed
    }

    /// Looks up the port for `mac`. An aged entry is removed (counted `aged_out`) and
    /// reported unknown.
    #[inline]
    pub fn lookup(&mut self, mac: MacAddr, now: Nanos, counters: &Counters) -> Option<PortId> {
        let Ok(i) = self.probe(OCCUPIED | mac.to_u64()) else {
            return None;
        };
        let slot = *self.slots.get(i)?;
        if self.expired(&slot, now) {
            self.remove_at(i);
            counters.bump(Counter::AgedOut);
            return None;
        }
        Some(slot.port)
    }

    /// Records that `mac` was seen as a source on `port` at `now`. Bumps `learned`,
    /// `moved`, `aged_out` or `table_full` on `counters` as appropriate.
    #[inline]
    pub fn learn(
        &mut self,
        mac: MacAddr,
        port: PortId,
        now: Nanos,
        counters: &Counters,
    ) -> Learned {
        let key = OCCUPIED | mac.to_u64();
        match self.probe(key) {
            Ok(i) => {
                let aging = self.aging;
                let Some(slot) = self.slots.get_mut(i) else {
                    return Learned::TableFull;
                };
                let expired = now.saturating_sub(slot.seen) > aging;
                let from = slot.port;
                slot.seen = now;
                slot.port = port;
                if expired {
                    counters.bump(Counter::AgedOut);
                    counters.bump(Counter::Learned);
                    Learned::New
                } else if from != port {
                    counters.bump(Counter::Moved);
                    Learned::Moved { from }
                } else {
                    Learned::Refreshed
                }
            }
            Err(mut i) => {
                if self.len >= self.capacity {
                    let due = match self.last_sweep {
                        None => true,
                        Some(t) => now.saturating_sub(t) >= SWEEP_INTERVAL,
                    };
                    if !due || self.sweep(now, counters) == 0 {
                        counters.bump(Counter::TableFull);
                        return Learned::TableFull;
                    }
                    // The sweep shifted entries: find the insertion slot again.
                    match self.probe(key) {
                        Err(j) => i = j,
                        Ok(_) => return Learned::Refreshed,
                    }
                }
                match self.slots.get_mut(i) {
                    Some(slot) => {
                        *slot = Slot {
                            key,
                            seen: now,
                            port,
                        };
                        self.len += 1;
                        counters.bump(Counter::Learned);
                        Learned::New
                    }
                    None => {
                        counters.bump(Counter::TableFull);
                        Learned::TableFull
                    }
                }
            }
        }
    }

    /// Removes every aged entry now (counted `aged_out`); returns how many. Walks every
    /// slot: the pipeline calls it at most once per [`SWEEP_INTERVAL`], and the control
    /// thread may call it on a timer.
    pub fn sweep(&mut self, now: Nanos, counters: &Counters) -> usize {
        self.last_sweep = Some(now);
        let aging = self.aging;
        let n = self.retain_not(|s| now.saturating_sub(s.seen) > aging);
        counters.add(Counter::AgedOut, u64::try_from(n).unwrap_or(u64::MAX));
        n
    }

    /// Forgets every MAC learned on `port` (it was removed or replaced); returns how many.
    pub fn forget_port(&mut self, port: PortId) -> usize {
        self.retain_not(|s| s.port == port)
    }

    /// Live entries as `(mac, port, age)`, in slot order (control path: allocates).
    pub fn entries(&self, now: Nanos) -> Vec<(MacAddr, PortId, Nanos)> {
        self.slots
            .iter()
            .filter(|s| s.key != 0 && !self.expired(s, now))
            .map(|s| (MacAddr::from_u64(s.key), s.port, now.saturating_sub(s.seen)))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;

    fn mac(i: u32) -> MacAddr {
        let [a, b, c, d] = i.to_be_bytes();
        MacAddr::new(0x02, 0x00, a, b, c, d)
    }

    /// Checks the table invariant: every entry is reachable from its home slot
    /// without crossing an empty slot, and `len` matches.
    fn assert_consistent(t: &MacTable) {
        let mut n = 0;
        for (i, s) in t.slots.iter().enumerate() {
            if s.key == 0 {
                continue;
            }
            n += 1;
            assert_eq!(t.probe(s.key), Ok(i), "entry at {i} unreachable");
        }
        assert_eq!(n, t.len);
    }

    #[test]
    fn learn_lookup_refresh_move() {
        let c = Counters::default();
        let mut t = MacTable::new(16, 300 * SEC);
        assert_eq!(t.learn(mac(1), PortId(1), 0, &c), Learned::New);
        assert_eq!(t.learn(mac(1), PortId(1), 5, &c), Learned::Refreshed);
        assert_eq!(t.lookup(mac(1), 10, &c), Some(PortId(1)));
        assert_eq!(t.lookup(mac(2), 10, &c), None);
        assert_eq!(
            t.learn(mac(1), PortId(2), 20, &c),
            Learned::Moved { from: PortId(1) }
        );
        assert_eq!(t.lookup(mac(1), 30, &c), Some(PortId(2)));
        let s = c.snapshot();
        assert_eq!((s.get(Counter::Learned), s.get(Counter::Moved)), (1, 1));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn aged_entries_are_unknown_and_counted() {
        let c = Counters::default();
        let mut t = MacTable::new(16, 10 * SEC);
        t.learn(mac(1), PortId(1), 0, &c);
        t.learn(mac(2), PortId(1), 0, &c);
        assert_eq!(t.lookup(mac(1), 10 * SEC, &c), Some(PortId(1)));
        assert_eq!(t.lookup(mac(1), 10 * SEC + 1, &c), None);
        assert_eq!(t.len(), 1);
        // Re-learning an aged entry on another port is a new learn, not a move.
        assert_eq!(t.learn(mac(2), PortId(3), 11 * SEC, &c), Learned::New);
        let s = c.snapshot();
        assert_eq!(
            (
                s.get(Counter::AgedOut),
                s.get(Counter::Learned),
                s.get(Counter::Moved)
            ),
            (2, 3, 0)
        );
        assert_eq!(t.entries(11 * SEC), vec![(mac(2), PortId(3), 0)]);
    }

    #[test]
    fn full_table_sweeps_at_most_once_per_interval() {
        let c = Counters::default();
        let mut t = MacTable::new(4, 10 * SEC);
        for i in 0..4 {
            assert_eq!(t.learn(mac(i), PortId(1), 0, &c), Learned::New);
        }
        assert_eq!(t.learn(mac(9), PortId(1), SEC, &c), Learned::TableFull);
        // Entries 0 and 1 refreshed; 2 and 3 will age.
        t.learn(mac(0), PortId(1), 5 * SEC, &c);
        t.learn(mac(1), PortId(1), 5 * SEC, &c);
        // At 11 s a sweep is due and entries 2 and 3 have aged: they make room.
        assert_eq!(t.learn(mac(9), PortId(1), 11 * SEC, &c), Learned::New);
        assert_eq!(c.snapshot().get(Counter::AgedOut), 2);
        assert_eq!(t.len(), 3);
        assert_eq!(t.learn(mac(10), PortId(1), 11 * SEC, &c), Learned::New);
        // Full again: the sweep at 12 s finds nothing aged, and none is due 1 ns later.
        assert_eq!(
            t.learn(mac(11), PortId(1), 12 * SEC, &c),
            Learned::TableFull
        );
        assert_eq!(
            t.learn(mac(11), PortId(1), 12 * SEC + 1, &c),
            Learned::TableFull
        );
        let s = c.snapshot();
        assert_eq!(s.get(Counter::TableFull), 3);
        assert_consistent(&t);
    }

    #[test]
    fn sweep_is_rate_limited() {
        let c = Counters::default();
        let mut t = MacTable::new(2, SEC);
        t.learn(mac(0), PortId(1), 0, &c);
        t.learn(mac(1), PortId(1), SEC / 2, &c);
        // Full; at 1.2 s entry 0 is aged: the first sweep frees it.
        assert_eq!(t.learn(mac(2), PortId(1), SEC + SEC / 5, &c), Learned::New);
        // At 1.8 s entry 1 is aged, but the last sweep was 0.6 s ago: no sweep.
        assert_eq!(
            t.learn(mac(3), PortId(1), SEC + 4 * SEC / 5, &c),
            Learned::TableFull
        );
        // At 2.3 s a sweep is due again.
        assert_eq!(
            t.learn(mac(3), PortId(1), 2 * SEC + 3 * SEC / 10, &c),
            Learned::New
        );
    }

    #[test]
    fn forget_port_removes_only_that_port() {
        let c = Counters::default();
        let mut t = MacTable::new(1024, 300 * SEC);
        for i in 0..600 {
            t.learn(mac(i), PortId(u16::try_from(i % 3).unwrap()), 0, &c);
        }
        assert_eq!(t.forget_port(PortId(1)), 200);
        assert_eq!(t.len(), 400);
        assert_consistent(&t);
        for i in 0..600 {
            let want = (i % 3 != 1).then(|| PortId(u16::try_from(i % 3).unwrap()));
            assert_eq!(t.lookup(mac(i), 1, &c), want, "mac {i}");
        }
    }

    #[test]
    fn filled_to_capacity_never_reallocates() {
        let c = Counters::default();
        let cap = 16_384;
        let mut t = MacTable::new(cap, 300 * SEC);
        let slots = t.slot_count();
        let ptr = t.slots.as_ptr();
        // Churn: fill, overfill, forget, refill, age out and replace.
        for round in 0..3u32 {
            for i in 0..u32::try_from(cap).unwrap() + 100 {
                t.learn(
                    mac(round * 100_000 + i),
                    PortId(1),
                    u64::from(round) * 400 * SEC,
                    &c,
                );
            }
            assert_eq!(t.len(), cap);
            assert_eq!(t.slot_count(), slots);
            assert_eq!(t.slots.as_ptr(), ptr);
        }
        t.forget_port(PortId(1));
        assert!(t.is_empty());
        assert_eq!(t.slots.as_ptr(), ptr);
        assert_eq!(slots, 32_768);
        assert!(c.snapshot().get(Counter::TableFull) >= 300);
        assert!(c.snapshot().get(Counter::AgedOut) >= 2 * u64::try_from(cap).unwrap());
    }

    #[test]
    fn removal_keeps_probe_runs_intact() {
        // A tiny table forces long runs and wrap-around; compare with a model.
        let c = Counters::default();
        let mut t = MacTable::new(4, 300 * SEC);
        let mut model = std::collections::HashMap::new();
        let mut x: u32 = 12345;
        for step in 0..5_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let m = mac((x >> 16) % 12);
            let port = PortId(u16::try_from(step % 3).unwrap());
            if x & 0x100 == 0 {
                if t.learn(m, port, 0, &c) != Learned::TableFull {
                    model.insert(m, port);
                }
            } else {
                let removed = t.retain_not(|s| s.key == OCCUPIED | m.to_u64());
                assert_eq!(removed == 1, model.remove(&m).is_some());
            }
            assert_consistent(&t);
            assert_eq!(t.len(), model.len());
            for (k, v) in &model {
                assert_eq!(t.lookup(*k, 0, &c), Some(*v));
            }
        }
    }

    #[test]
    fn zero_and_huge_capacity_are_safe() {
        let c = Counters::default();
        let mut t = MacTable::new(0, SEC);
        assert_eq!(t.learn(mac(1), PortId(1), 0, &c), Learned::TableFull);
        assert_eq!(t.lookup(mac(1), 0, &c), None);
        let t = MacTable::new(usize::MAX, SEC);
        assert_eq!(t.capacity(), MAX_CAPACITY);
    }
}
