//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, §3.4): the backend choice of the service load
//! balancer.
//!
//! In full: docs/dataplane.md, "Maglev".

use crate::hash::fmix64;
use crate::types::Backend;

/// The paper's table size, and the largest `table_size_for` picks.
pub const MAGLEV_DEFAULT_SIZE: usize = 65_537;

/// The primes [`table_size_for`] chooses from, roughly doubling.
pub const TABLE_SIZES: [usize; 9] = [251, 503, 1021, 2039, 4093, 8191, 16_381, 32_749, 65_537];

/// Slots per backend a table should have at least (the paper's `M ≫ N`).
pub const SLOTS_PER_BACKEND: usize = 100;

/// An empty slot while populating (never left in a finished table with backends).
const EMPTY: u32 = u32::MAX;

const SEED_OFFSET: u64 = 0x6d61_676c_6576_3031; // "maglev01"
const SEED_SKIP: u64 = 0x6d61_676c_6576_3032; // "maglev02"

/// The smallest size of [`TABLE_SIZES`] with at least [`SLOTS_PER_BACKEND`] slots per
/// backend; [`MAGLEV_DEFAULT_SIZE`] when none is large enough.
pub fn table_size_for(backends: usize) -> usize {
    let want = backends.saturating_mul(SLOTS_PER_BACKEND);
    TABLE_SIZES
        .iter()
        .copied()
        .find(|&m| m >= want)
        .unwrap_or(MAGLEV_DEFAULT_SIZE)
}

/// FNV-1a over `bytes` from `seed`, finalised with [`fmix64`]. Stable forever.
fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(h)
}

/// The name a backend is hashed by: its IP and port, network order.
fn backend_name(b: &Backend) -> [u8; 6] {
    let [a, bb, c, d] = b.ip.octets();
    let [p, q] = b.port.to_be_bytes();
    [a, bb, c, d, p, q]
}

/// A populated Maglev lookup table over a list of backends. See the module docs.
#[derive(Clone)]
pub struct Maglev {
    /// Backend index per slot; empty when there are no backends.
    table: Box<[u32]>,
    backends: usize,
}

impl core::fmt::Debug for Maglev {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Maglev")
            .field("size", &self.table.len())
            .field("backends", &self.backends)
            .finish()
    }
}

impl Maglev {
    /// Populates a table of `table_size` slots (should be prime: see the module docs)
    /// over `backends`, whose order breaks ties (callers sort them). No backends: an
    /// empty table whose lookups all miss. A non-prime size never hangs: a backend
    /// whose list runs out stops claiming, and slots nobody reached are dealt out in
    /// turn, at the cost of the balance and disruption guarantees.
    pub fn new(backends: &[Backend], table_size: usize) -> Maglev {
        let n = backends.len().min(EMPTY as usize);
        let m = table_size.max(1);
        if n == 0 {
            return Maglev {
                table: Box::new([]),
                backends: 0,
            };
        }
        let m64 = m as u64;
        // (offset, skip, next preference index) per backend.
        let mut lists: Vec<(u64, u64, u64)> = backends
            .iter()
            .take(n)
            .map(|b| {
                let name = backend_name(b);
                let offset = hash_bytes(SEED_OFFSET, &name) % m64;
                let skip = hash_bytes(SEED_SKIP, &name)
                    .checked_rem(m64 - 1)
                    .map_or(1, |s| s + 1);
                (offset, skip, 0)
            })
            .collect();
        let mut table = vec![EMPTY; m].into_boxed_slice();
        let mut filled = 0usize;
        'rounds: loop {
            let mut progress = false;
            for (i, (offset, skip, next)) in lists.iter_mut().enumerate() {
                while *next < m64 {
                    // offset, skip < m <= usize::MAX, and next < m: no overflow in u64
                    // for any table that fits in memory (m < 2^32).
                    let c = usize::try_from((*offset + *next * *skip) % m64).unwrap_or(0);
                    *next += 1;
                    if let Some(slot) = table.get_mut(c) {
                        if *slot == EMPTY {
                            // i < n <= u32::MAX - 1.
                            *slot = u32::try_from(i).unwrap_or(0);
                            filled += 1;
                            progress = true;
                            if filled == m {
                                break 'rounds;
                            }
                            break;
                        }
                    }
                }
            }
            if !progress {
                break;
            }
        }
        if filled < m {
            // Only for a non-prime size: hand the unreached slots out in turn.
            for (k, slot) in table.iter_mut().filter(|s| **s == EMPTY).enumerate() {
                *slot = u32::try_from(k % n).unwrap_or(0);
            }
        }
        Maglev { table, backends: n }
    }

    /// The backend index (into the list given to [`Maglev::new`]) for a flow hash;
    /// `None` when there are no backends.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        let len = self.table.len() as u64;
        let slot = hash.checked_rem(len)?;
        let i = *self.table.get(usize::try_from(slot).ok()?)?;
        (i != EMPTY).then_some(i as usize)
    }

    /// The populated table: a backend index per slot (empty without backends).
    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// Number of backends.
    pub fn backends(&self) -> usize {
        self.backends
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    fn backends(n: usize) -> Vec<Backend> {
        (0..n)
            .map(|i| Backend {
                ip: Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250) as u8 + 2),
                port: 8080,
            })
            .collect()
    }

    fn is_prime(n: usize) -> bool {
        n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| (n / d) * d != n)
    }

    #[test]
    fn sizes_are_prime_and_sized_by_backends() {
        assert!(TABLE_SIZES.iter().all(|m| is_prime(*m)));
        assert!(TABLE_SIZES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(table_size_for(0), 251);
        assert_eq!(table_size_for(2), 251);
        assert_eq!(table_size_for(3), 503);
        assert_eq!(table_size_for(10), 1021);
        assert_eq!(table_size_for(327), 32_749);
        assert_eq!(table_size_for(328), 65_537);
        assert_eq!(table_size_for(100_000), MAGLEV_DEFAULT_SIZE);
    }

    #[test]
    fn every_slot_filled_and_shares_balanced() {
        let m = MAGLEV_DEFAULT_SIZE;
        for n in [1, 3, 7, 10, 100] {
            let t = Maglev::new(&backends(n), m);
            assert_eq!(t.table().len(), m);
            let mut counts = vec![0usize; n];
            for &i in t.table() {
                counts[i as usize] += 1;
            }
            let ideal = m as f64 / n as f64;
            for c in &counts {
                let off = (*c as f64 - ideal).abs() / ideal;
                assert!(off < 0.01, "n={n}: share {c} vs ideal {ideal}");
                // Round-robin population: shares differ by at most one slot.
                assert!(c.abs_diff(m / n) <= 1, "n={n}: {c}");
            }
        }
    }

    /// Fraction of slots whose backend changed when `removed` leaves.
    fn disruption(n: usize, removed: usize, m: usize) -> (f64, f64) {
        let all = backends(n);
        let before = Maglev::new(&all, m);
        let rest: Vec<Backend> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != removed)
            .map(|(_, b)| *b)
            .collect();
        let after = Maglev::new(&rest, m);
        let mut moved = 0;
        let mut owned = 0;
        for (a, b) in before.table().iter().zip(after.table()) {
            let old = all[*a as usize];
            if *a as usize == removed {
                owned += 1;
            }
            if old != rest[*b as usize] {
                moved += 1;
            }
        }
        (moved as f64 / m as f64, owned as f64 / m as f64)
    }

    #[test]
    fn removing_a_backend_moves_few_slots() {
        for n in [3, 7, 10, 100] {
            for removed in [0, n / 2, n - 1] {
                for m in [MAGLEV_DEFAULT_SIZE, table_size_for(n)] {
                    let (moved, owned) = disruption(n, removed, m);
                    // Every slot of the removed backend moves, and a few more.
                    assert!(moved >= owned, "n={n} m={m}");
                    // The paper's bound at its size; our smaller per-service sizes
                    // move a little more (measured up to 2.27/N at N = 100).
                    let bound = if m == MAGLEV_DEFAULT_SIZE { 2.0 } else { 2.5 };
                    assert!(moved < bound / n as f64, "n={n} m={m}: moved {moved}");
                }
            }
        }
    }

    /// Pins the table so that an upgrade cannot silently move every flow: if this
    /// fails, the hashes or the population order changed, and every node of a
    /// mixed-version cluster would disagree about where flows go.
    #[test]
    fn golden_first_slots() {
        let t = Maglev::new(&backends(5), MAGLEV_DEFAULT_SIZE);
        let first: Vec<u32> = t.table()[..32].to_vec();
        assert_eq!(first, GOLDEN);
        let small = Maglev::new(&backends(3), 503);
        assert_eq!(&small.table()[..16], &GOLDEN_SMALL);
    }

    const GOLDEN: [u32; 32] = [
        1, 0, 4, 1, 0, 3, 3, 2, 0, 1, 2, 4, 1, 3, 4, 1, 4, 4, 1, 3, 4, 3, 0, 1, 3, 4, 0, 3, 2, 2,
        0, 2,
    ];
    const GOLDEN_SMALL: [u32; 16] = [1, 1, 2, 2, 1, 0, 0, 2, 2, 0, 1, 1, 1, 1, 0, 0];

    #[test]
    fn empty_and_tiny_tables() {
        let t = Maglev::new(&[], 251);
        assert!(t.table().is_empty());
        assert_eq!(t.lookup(42), None);
        let one = Maglev::new(&backends(1), 1);
        assert_eq!(one.table(), &[0]);
        assert_eq!(one.lookup(u64::MAX), Some(0));
        // Non-prime sizes still fill every slot and terminate.
        for m in [4, 100, 1000] {
            let t = Maglev::new(&backends(7), m);
            assert!(t.table().iter().all(|i| *i < 7));
        }
        // More backends than slots: every slot still names a backend.
        let crowded = Maglev::new(&backends(20), 7);
        assert!(crowded.table().iter().all(|i| *i < 20));
    }
}
