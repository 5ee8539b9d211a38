//! Address translation for IPv4 fragments of service flows.
//!
//! Only the first fragment of a datagram carries its TCP/UDP ports, so only it can be
//! matched to a flow. When the load balancer rewrites a first fragment (DNAT to the
//! backend, or a reply back to the ClusterIP), it records here what the datagram's
//! addresses became, keyed by what identifies a datagram's fragments (RFC 791: source,
//! destination, protocol, identification). The later fragments are then rewritten the
//! same way, addresses only: they hold no L4 header, and the L4 checksum, which covers
//! the whole datagram, was updated in the first fragment.
//!
//! Linux's conntrack reassembles instead (`nf_defrag_ipv4`). Translating fragment by
//! fragment keeps the data path free of reassembly buffers; the cost is that a later
//! fragment arriving before its first one is not translated (dropped as
//! `service_fragment` when it was sent to a ClusterIP, passed on untouched otherwise),
//! which Linux senders, emitting fragments in order, do not provoke.
//!
//! The table is a fixed array of [`FRAG_SLOTS`] entries, direct-mapped by a hash of the
//! key: no allocation after construction, one probe per lookup. A newer datagram that
//! hashes to a busy slot takes it over; entries live [`FRAG_TIMEOUT`] (Linux's
//! `ipfrag_time`).

use core::net::Ipv4Addr;

use crate::hash::fmix64;
use crate::types::Nanos;

/// Entries in the table.
pub const FRAG_SLOTS: usize = 1024;
/// How long a datagram's translation is kept: 30 s, as Linux keeps fragments.
pub const FRAG_TIMEOUT: Nanos = 30_000_000_000;

/// What the fragments of one datagram carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FragKey {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ident: u16,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    key: FragKey,
    /// The addresses the datagram's fragments get.
    to: (Ipv4Addr, Ipv4Addr),
    expires: Nanos,
}

/// Recorded translations of fragmented datagrams.
pub(crate) struct FragTable {
    slots: Vec<Option<Entry>>,
    /// Entries recorded and not yet found expired: lets callers skip the lookup.
    live: usize,
}

impl core::fmt::Debug for FragTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "FragTable {{ live: {}, slots: {} }}",
            self.live,
            self.slots.len()
        )
    }
}

impl FragTable {
    pub(crate) fn new() -> FragTable {
        FragTable {
            slots: vec![None; FRAG_SLOTS],
            live: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn slot(key: &FragKey) -> usize {
        let k = (u64::from(key.src.to_bits()) << 32) | u64::from(key.dst.to_bits());
        let h = fmix64(k ^ (u64::from(key.ident) << 8 | u64::from(key.proto)).rotate_left(17));
        usize::try_from(h % FRAG_SLOTS as u64).unwrap_or(0)
    }

    /// Records that the fragments of `key` become `to` (source, destination).
    pub(crate) fn insert(&mut self, key: FragKey, to: (Ipv4Addr, Ipv4Addr), now: Nanos) {
        let i = Self::slot(&key);
        if let Some(slot) = self.slots.get_mut(i) {
            if slot.is_none() {
                self.live += 1;
            }
            *slot = Some(Entry {
                key,
                to,
                expires: now.saturating_add(FRAG_TIMEOUT),
            });
        }
    }

    /// The addresses recorded for `key`, if any and not expired.
    pub(crate) fn find(&mut self, key: &FragKey, now: Nanos) -> Option<(Ipv4Addr, Ipv4Addr)> {
        let i = Self::slot(key);
        let slot = self.slots.get_mut(i)?;
        let e = (*slot)?;
        if e.key != *key {
            return None;
        }
        if e.expires <= now {
            *slot = None;
            self.live = self.live.saturating_sub(1);
            return None;
        }
        Some(e.to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ident: u16) -> FragKey {
        FragKey {
            src: Ipv4Addr::new(10, 244, 1, 2),
            dst: Ipv4Addr::new(10, 96, 0, 10),
            proto: 17,
            ident,
        }
    }

    #[test]
    fn records_finds_and_expires() {
        let mut t = FragTable::new();
        assert!(t.is_empty());
        let to = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 7));
        t.insert(key(7), to, 0);
        assert!(!t.is_empty());
        assert_eq!(t.find(&key(7), 1), Some(to));
        assert_eq!(t.find(&key(8), 1), None, "another datagram");
        assert_eq!(t.find(&key(7), FRAG_TIMEOUT), None, "expired");
        assert!(t.is_empty());
    }

    #[test]
    fn a_newer_datagram_takes_over_a_busy_slot() {
        let mut t = FragTable::new();
        let to = (Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(2, 2, 2, 2));
        // Find two keys sharing a slot.
        let a = key(1);
        let b = (2..=u16::MAX)
            .map(key)
            .find(|k| FragTable::slot(k) == FragTable::slot(&a))
            .expect("a collision among 65,535 keys in 1,024 slots");
        t.insert(a, to, 0);
        t.insert(b, to, 0);
        assert_eq!(t.find(&a, 1), None);
        assert_eq!(t.find(&b, 1), Some(to));
        assert_eq!(t.live, 1);
    }
}
