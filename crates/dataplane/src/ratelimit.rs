//! A token bucket for ICMP errors, on the caller's clock.
//!
//! RFC 1812 §4.3.2.8: a router MUST be able to limit the rate at which it originates
//! ICMP errors, so that a flood of TTL-expired or unroutable packets cannot turn it
//! into a packet cannon (each error is addressed to a source the flood may have forged).
//! Linux does the same per destination (`icmp_ratelimit`, 1 per second per host after a
//! burst) and globally (`icmp_msgs_per_sec` = 1000, burst 50). We keep the global one:
//! `rate` tokens per second, a burst of `max(rate / 10, 1)` — 100 at the default 1000/s,
//! enough for `traceroute`'s 16 probes in flight — and `rate = 0` sends nothing.
//!
//! Tokens are kept in nanotokens (1 token = 10^9) so refilling is exact integer
//! arithmetic on `now` (nanoseconds): elapsed × rate nanotokens.

use crate::types::Nanos;

const SCALE: u64 = 1_000_000_000;

/// A token bucket; starts full.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: u64,
    capacity: u64,
    level: u64,
    last: Option<Nanos>,
}

impl TokenBucket {
    /// `rate` tokens per second, burst `max(rate / 10, 1)` (none at all if `rate` is 0).
    pub fn new(rate: u32) -> Self {
        let rate = u64::from(rate);
        let burst = if rate == 0 { 0 } else { (rate / 10).max(1) };
        let capacity = burst.saturating_mul(SCALE);
        TokenBucket {
            rate,
            capacity,
            level: capacity,
            last: None,
        }
    }

    /// Takes one token if there is one at `now`. Time going backwards refills nothing.
    pub fn take(&mut self, now: Nanos) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_sub(last);
            let add = elapsed.saturating_mul(self.rate);
            self.level = self.level.saturating_add(add).min(self.capacity);
        }
        if now >= self.last.unwrap_or(0) {
            self.last = Some(now);
        }
        if self.level >= SCALE {
            self.level -= SCALE;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    #[test]
    fn burst_then_rate() {
        let mut b = TokenBucket::new(1000);
        let t0 = 5_000 * MS;
        let sent = (0..1000).filter(|_| b.take(t0)).count();
        assert_eq!(sent, 100, "burst of rate/10");
        // One token per millisecond afterwards.
        assert!(!b.take(t0));
        assert!(b.take(t0 + MS));
        assert!(!b.take(t0 + MS));
        // Half a millisecond is half a token: not enough, but it accumulates.
        assert!(!b.take(t0 + MS + MS / 2));
        assert!(b.take(t0 + 2 * MS));
        // A long idle period refills to the burst, not beyond.
        let later = t0 + 3_600_000 * MS;
        assert_eq!((0..1000).filter(|_| b.take(later)).count(), 100);
    }

    #[test]
    fn zero_rate_sends_nothing_and_small_rates_still_send() {
        let mut off = TokenBucket::new(0);
        assert!(!off.take(0));
        assert!(!off.take(u64::MAX));
        let mut slow = TokenBucket::new(1);
        assert!(slow.take(0));
        assert!(!slow.take(500 * MS));
        assert!(slow.take(1000 * MS));
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let mut b = TokenBucket::new(10);
        assert!(b.take(10 * 1000 * MS));
        assert!(!b.take(0));
        assert!(!b.take(10 * 1000 * MS));
        assert!(b.take(10 * 1000 * MS + 100 * MS));
    }
}
