//! The arithmetic of `tapestry-scale`: a consumer's revision over time, the
//! latency of each object to a set of consumers, percentiles, and the DNS
//! query and answer that carry a DNS server's revision.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

/// The revision of the last write; 0 until the writes are done. A poller
/// stops once its consumer reflects it.
pub static LAST: AtomicU64 = AtomicU64::new(0);

/// When one consumer's revision first took each value, as polled.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// (first poll that showed it, revision), revisions increasing.
    changes: Vec<(Instant, u64)>,
    pub polls: u64,
    last_poll: Option<Instant>,
}

impl Timeline {
    pub fn new() -> Timeline {
        Timeline {
            changes: Vec::new(),
            polls: 0,
            last_poll: None,
        }
    }

    /// A poll at `at` saw `revision`. A revision lower than one seen before
    /// (an agent restarted and relisted) is recorded too: the consumer
    /// reflects an object only from a poll at or above its revision.
    pub fn observe(&mut self, at: Instant, revision: u64) {
        self.polls += 1;
        self.last_poll = Some(at);
        if self.changes.last().map(|&(_, r)| r) != Some(revision) {
            self.changes.push((at, revision));
        }
    }

    /// The first poll at or after `since` from which the consumer showed a
    /// revision ≥ `revision` and never again a lower one; `None` if it never
    /// did.
    pub fn reflected(&self, revision: u64, since: Instant) -> Option<Instant> {
        let mut found = None;
        for &(at, r) in &self.changes {
            if r >= revision {
                found.get_or_insert(at.max(since));
            } else {
                found = None;
            }
        }
        found
    }

    /// Mean time between polls, in milliseconds (the figures' resolution).
    pub fn mean_poll_ms(&self) -> Option<f64> {
        let last = self.last_poll?;
        let first = self.changes.first()?.0;
        (self.polls > 1).then(|| (last - first).as_secs_f64() * 1000.0 / (self.polls - 1) as f64)
    }
}

/// Per object (`(write returned, revision)`), the milliseconds until the
/// slowest of `consumers` reflected it; and how many object/consumer pairs
/// never did (left out of the figures).
pub fn latencies(objects: &[(Instant, u64)], consumers: &[&Timeline]) -> (Vec<f64>, u64) {
    let mut out = Vec::with_capacity(objects.len());
    let mut missing = 0u64;
    for &(at, revision) in objects {
        let mut worst: Option<Instant> = None;
        let mut complete = true;
        for c in consumers {
            match c.reflected(revision, at) {
                Some(t) => worst = Some(worst.map_or(t, |w| w.max(t))),
                None => {
                    complete = false;
                    missing += 1;
                }
            }
        }
        if let (true, Some(t)) = (complete, worst) {
            out.push((t - at).as_secs_f64() * 1000.0);
        }
    }
    (out, missing)
}

/// The nearest-rank percentile of sorted `values`: the value at rank
/// ⌈n·p/100⌉ (at least 1); p in percent, at most 100.
pub fn percentile(sorted: &[f64], p: usize) -> Option<f64> {
    let n = sorted.len();
    let rank = (n * p.min(100)).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

const TYPE_TXT: u16 = 16;
const CLASS_IN: u16 = 1;

/// A DNS query (id `id`, RD clear) for TXT `name`; `None` if `name` is not
/// a DNS name.
pub fn txt_query(id: u16, name: &str) -> Option<Vec<u8>> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len())
            .ok()
            .filter(|&l| l > 0 && l < 64)?;
        q.push(len);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&TYPE_TXT.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    Some(q)
}

/// The revision in the answer to `query` (the first TXT record's first
/// string, in decimal); `None` for another message, an error, or anything
/// malformed.
pub fn txt_revision(msg: &[u8], query: &[u8]) -> Option<u64> {
    let be16 =
        |at: usize| -> Option<u16> { Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?])) };
    // Same id, a response, rcode 0, one question echoed, at least one answer.
    if msg.get(..2)? != query.get(..2)? || msg.get(2)? & 0x80 == 0 || msg.get(3)? & 0x0f != 0 {
        return None;
    }
    let question = query.get(12..)?;
    if be16(4)? != 1 || be16(6)? == 0 || msg.get(12..12 + question.len())? != question {
        return None;
    }
    let mut at = 12 + question.len();
    for _ in 0..be16(6)? {
        // Owner: a pointer (what the server writes) or labels.
        loop {
            let len = *msg.get(at)?;
            if len & 0xc0 == 0xc0 {
                at += 2;
                break;
            }
            at += 1 + usize::from(len);
            if len == 0 {
                break;
            }
        }
        let rtype = be16(at)?;
        let rdlen = usize::from(be16(at + 8)?);
        let rdata = msg.get(at + 10..at + 10 + rdlen)?;
        at += 10 + rdlen;
        if rtype == TYPE_TXT {
            let n = usize::from(*rdata.first()?);
            return std::str::from_utf8(rdata.get(1..1 + n)?).ok()?.parse().ok();
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn an_object_is_reflected_from_the_first_poll_at_or_above_its_revision() {
        let t0 = Instant::now();
        let mut t = Timeline::new();
        t.observe(ms(t0, 0), 5);
        t.observe(ms(t0, 10), 5);
        t.observe(ms(t0, 20), 9);
        t.observe(ms(t0, 30), 12);
        assert_eq!(t.reflected(5, t0), Some(t0));
        assert_eq!(t.reflected(6, t0), Some(ms(t0, 20)));
        assert_eq!(t.reflected(9, t0), Some(ms(t0, 20)));
        assert_eq!(t.reflected(10, t0), Some(ms(t0, 30)));
        assert_eq!(t.reflected(13, t0), None);
        // Reflected before the write returned (the write's reply was slow):
        // counted from the write, 0 ms, never negative.
        assert_eq!(t.reflected(9, ms(t0, 25)), Some(ms(t0, 25)));
        assert_eq!(t.polls, 4);
        assert!((t.mean_poll_ms().unwrap() - 10.0).abs() < 1e-6);
    }

    #[test]
    fn a_consumer_that_went_back_reflects_only_from_its_recovery() {
        let t0 = Instant::now();
        let mut t = Timeline::new();
        t.observe(ms(t0, 0), 10);
        t.observe(ms(t0, 10), 3); // restarted, relisting
        t.observe(ms(t0, 20), 11);
        assert_eq!(t.reflected(10, t0), Some(ms(t0, 20)));
    }

    #[test]
    fn latency_is_the_slowest_consumer_and_misses_are_counted() {
        let t0 = Instant::now();
        let mut fast = Timeline::new();
        let mut slow = Timeline::new();
        fast.observe(ms(t0, 0), 0);
        slow.observe(ms(t0, 0), 0);
        fast.observe(ms(t0, 5), 2);
        slow.observe(ms(t0, 40), 1);
        slow.observe(ms(t0, 50), 2);
        let objects = [(ms(t0, 1), 1), (ms(t0, 2), 2)];
        let (lat, missing) = latencies(&objects, &[&fast, &slow]);
        assert_eq!(missing, 0);
        assert_eq!(lat, vec![39.0, 48.0]);
        let (lat, missing) = latencies(&[(ms(t0, 3), 3)], &[&fast, &slow]);
        assert!(lat.is_empty());
        assert_eq!(missing, 2);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50), Some(50.0));
        assert_eq!(percentile(&v, 99), Some(99.0));
        assert_eq!(percentile(&v, 100), Some(100.0));
        assert_eq!(percentile(&[7.0], 99), Some(7.0));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn txt_query_and_answer_round_trip_through_the_dns_server_code() {
        use tapestry_dns::answer::{answer, Transport};
        use tapestry_dns::model::DnsData;
        use tapestry_dns::zone::Zone;
        let q = txt_query(0x1234, "tapestry-revision.cluster.local").unwrap();
        let data = DnsData {
            revision: Some(4242),
            ..DnsData::default()
        };
        let zone = Zone::build(&data, "cluster.local", 5);
        let reply = answer(&zone, &q, Transport::Udp { max: 1232 }, None).unwrap();
        assert_eq!(txt_revision(&reply, &q), Some(4242));
        // Another id, or a zone without the name: no revision.
        let other = txt_query(0x1235, "tapestry-revision.cluster.local").unwrap();
        assert_eq!(txt_revision(&reply, &other), None);
        let empty = Zone::build(&DnsData::default(), "cluster.local", 5);
        let reply = answer(&empty, &q, Transport::Udp { max: 1232 }, None).unwrap();
        assert_eq!(txt_revision(&reply, &q), None);
        assert_eq!(txt_revision(&reply[..5], &q), None);
        assert!(txt_query(1, "a..b").is_none());
    }
}
