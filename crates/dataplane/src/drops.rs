//! Why a frame was dropped, and the counters the control thread reads.
//!
//! [`DropReason`] is both the value [`crate::Pipeline::process`] returns and the metric
//! label (`DropReason::name`), in the spirit of the kernel's `skb_drop_reason`: a
//! drop nobody can name is a bug. Every drop path goes through one place in the
//! pipeline that bumps the matching counter, so `rx_frames` always equals
//! forwarded + flooded + replies + the sum of drops.
//!
//! Counters are relaxed `AtomicU64`s shared through an `Arc` with the control thread.
//! The owning [`crate::Pipeline`] is their only writer (it needs `&mut self` to process
//! a frame), so an increment is a relaxed load and store rather than a locked
//! read-modify-write: no `lock xadd` on the packet path. Readers may see a snapshot
//! that is a few frames behind and whose fields are not mutually consistent; that is
//! fine for stats.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why the pipeline dropped a frame. Also the metric label, see [`DropReason::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Shorter than the virtio-net header plus an Ethernet header, or an ARP/IPv4/ICMP
    /// packet the pipeline had to parse ends early.
    Truncated,
    /// The virtio-net header has unknown flags or GSO type, or points its checksum
    /// field outside the frame.
    BadVnetHeader,
    /// An inconsistent header: IPv4 version, IHL or total length.
    BadHeader,
    /// A pod sent a frame (or an ARP sender hardware address) that is not its own MAC.
    SpoofedMac,
    /// A pod sent IPv4 from, or ARP as, an IP that is not its own.
    SpoofedIp,
    /// The ingress port is not (or no longer) attached.
    UnknownIngress,
    /// The destination MAC was learned on the ingress port: a bridge never sends a
    /// frame back where it came from.
    HairpinSelf,
    /// Sent to the gateway for a destination outside the local subnet; cross-node
    /// routing is not implemented yet.
    NoRoute,
    /// Sent to the gateway MAC for an address in the local subnet other than the
    /// gateway's: the sender should have ARPed for it. We drop rather than route back.
    NotForUs,
    /// Addressed to the gateway with a protocol it does not serve (non-echo ICMP, TCP,
    /// UDP, IPv6, ARP replies, non-Ethernet/IPv4 ARP).
    UnsupportedProtocol,
    /// An IPv4 header or an ICMP echo to the gateway failed its checksum.
    BadChecksum,
    /// The source MAC is multicast or broadcast: never a valid sender, never learned.
    SourceMulticast,
    /// An IPv4 fragment addressed to the gateway: the router does not reassemble.
    FragmentToGateway,
    /// A reply would not fit the caller's `out` buffer.
    ReplyTooLarge,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: &'static [DropReason] = &[
        DropReason::Truncated,
        DropReason::BadVnetHeader,
        DropReason::BadHeader,
        DropReason::SpoofedMac,
        DropReason::SpoofedIp,
        DropReason::UnknownIngress,
        DropReason::HairpinSelf,
        DropReason::NoRoute,
        DropReason::NotForUs,
        DropReason::UnsupportedProtocol,
        DropReason::BadChecksum,
        DropReason::SourceMulticast,
        DropReason::FragmentToGateway,
        DropReason::ReplyTooLarge,
    ];

    /// Number of reasons.
    pub const COUNT: usize = Self::ALL.len();

    /// The snake_case metric label.
    pub const fn name(&self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadVnetHeader => "bad_vnet_header",
            DropReason::BadHeader => "bad_header",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedIp => "spoofed_ip",
            DropReason::UnknownIngress => "unknown_ingress",
            DropReason::HairpinSelf => "hairpin_self",
            DropReason::NoRoute => "no_route",
            DropReason::NotForUs => "not_for_us",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::BadChecksum => "bad_checksum",
            DropReason::SourceMulticast => "source_multicast",
            DropReason::FragmentToGateway => "fragment_to_gateway",
            DropReason::ReplyTooLarge => "reply_too_large",
        }
    }

    /// Position in [`DropReason::ALL`] and in the counter array.
    const fn index(self) -> usize {
        self as usize
    }
}

impl core::fmt::Display for DropReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Packet counters of one pipeline. Written only by the pipeline, read by anyone.
#[derive(Debug, Default)]
pub struct Counters {
    rx_frames: AtomicU64,
    forwarded: AtomicU64,
    flooded: AtomicU64,
    replies: AtomicU64,
    learned: AtomicU64,
    moved: AtomicU64,
    table_full: AtomicU64,
    aged_out: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
}

/// Which counter to bump (crate-internal: only the pipeline writes).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Counter {
    RxFrames,
    Forwarded,
    Flooded,
    Replies,
    Learned,
    Moved,
    TableFull,
    AgedOut,
}

/// Single-writer increment: see the module docs for why this is not `fetch_add`.
#[inline]
fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

impl Counters {
    #[inline]
    pub(crate) fn bump(&self, which: Counter) {
        self.add(which, 1);
    }

    #[inline]
    pub(crate) fn add(&self, which: Counter, n: u64) {
        let c = match which {
            Counter::RxFrames => &self.rx_frames,
            Counter::Forwarded => &self.forwarded,
            Counter::Flooded => &self.flooded,
            Counter::Replies => &self.replies,
            Counter::Learned => &self.learned,
            Counter::Moved => &self.moved,
            Counter::TableFull => &self.table_full,
            Counter::AgedOut => &self.aged_out,
        };
        add(c, n);
    }

    #[inline]
    pub(crate) fn bump_drop(&self, reason: DropReason) {
        if let Some(c) = self.drops.get(reason.index()) {
            add(c, 1);
        }
    }

    /// Frames dropped for `reason` so far.
    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops
            .get(reason.index())
            .map_or(0, |c| c.load(Relaxed))
    }

    /// A plain copy of every counter (control path: allocates the drop list).
    pub fn snapshot(&self) -> CountersSnapshot {
        let drops: Vec<(&'static str, u64)> = DropReason::ALL
            .iter()
            .map(|r| (r.name(), self.drop_count(*r)))
            .filter(|(_, n)| *n != 0)
            .collect();
        CountersSnapshot {
            rx_frames: self.rx_frames.load(Relaxed),
            forwarded: self.forwarded.load(Relaxed),
            flooded: self.flooded.load(Relaxed),
            replies: self.replies.load(Relaxed),
            learned: self.learned.load(Relaxed),
            moved: self.moved.load(Relaxed),
            table_full: self.table_full.load(Relaxed),
            aged_out: self.aged_out.load(Relaxed),
            dropped: drops.iter().map(|(_, n)| n).sum(),
            drops,
        }
    }
}

/// Counter values at one moment, for status output and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// Frames handed to `process`.
    pub rx_frames: u64,
    /// Unicast frames sent to the one port their destination was learned on.
    pub forwarded: u64,
    /// Broadcast, multicast and unknown-unicast frames sent to every other port.
    pub flooded: u64,
    /// Frames the gateway router answered (ARP, ICMP echo).
    pub replies: u64,
    /// New MAC table entries (including re-learning an entry that had aged out).
    pub learned: u64,
    /// Live entries whose MAC appeared on another port.
    pub moved: u64,
    /// New MACs not learned because the table was full.
    pub table_full: u64,
    /// Entries found older than the aging time and forgotten.
    pub aged_out: u64,
    /// Sum of all drops.
    pub dropped: u64,
    /// `(DropReason::name, count)` for each reason with a nonzero count.
    pub drops: Vec<(&'static str, u64)>,
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case_and_indexed_in_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?} out of order in ALL");
            assert!(r.name().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            for other in &DropReason::ALL[i + 1..] {
                assert_ne!(r.name(), other.name());
            }
        }
    }

    #[test]
    fn snapshot_lists_nonzero_drops() {
        let c = Counters::default();
        c.bump(Counter::RxFrames);
        c.bump(Counter::RxFrames);
        c.bump_drop(DropReason::SpoofedIp);
        c.add(Counter::AgedOut, 3);
        assert_eq!(c.drop_count(DropReason::SpoofedIp), 1);
        assert_eq!(c.drop_count(DropReason::Truncated), 0);
        let s = c.snapshot();
        assert_eq!(s.rx_frames, 2);
        assert_eq!(s.aged_out, 3);
        assert_eq!(s.dropped, 1);
        assert_eq!(s.drops, vec![("spoofed_ip", 1)]);
        assert_eq!(DropReason::HairpinSelf.to_string(), "hairpin_self");
    }
}
