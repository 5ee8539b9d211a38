//! Why a frame was dropped, and the counters the control thread reads.
//!
//! [`DropReason`] is both the value [`crate::Pipeline::process`] returns and the metric
//! label (`DropReason::name`), in the spirit of the kernel's `skb_drop_reason`: a
//! drop nobody can name is a bug. Every drop path goes through one place in the
//! pipeline that bumps the matching counter, so `rx_frames` always equals
//! forwarded + flooded + replies + delivered + tunneled_out + the sum of drops: one
//! outcome per frame or datagram handed in. `routed`, `tunneled_in`,
//! `tunnel_datagrams_out`, `inner_checksums_completed` and the ICMP counters count
//! along the way.
//!
//! Counters are relaxed `AtomicU64`s shared through an `Arc` with the control thread.
//! The owning [`crate::Pipeline`] is their only writer (it needs `&mut self` to process
//! a frame), so an increment is a relaxed load and store rather than a locked
//! read-modify-write: no `lock xadd` on the packet path. Readers may see a snapshot
//! that is a few frames behind and whose fields are not mutually consistent; that is
//! fine for stats.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::wire::WireError;

/// Maps a parse error to the drop reason it stands for.
pub(crate) fn drop_for(err: WireError) -> DropReason {
    match err {
        WireError::Truncated { .. } => DropReason::Truncated,
        WireError::Malformed { .. } => DropReason::BadHeader,
        WireError::Unsupported { .. } => DropReason::UnsupportedProtocol,
    }
}

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
    /// Routed to a destination outside the cluster (no ICMP net unreachable was sent:
    /// rate limit, or RFC 1122 forbids it), to a multicast or broadcast address, or to
    /// another node while no tunnel is configured.
    NoRoute,
    /// An ARP request sent to the gateway MAC for an address that is not the gateway's:
    /// the sender should have broadcast it, so the owner could answer.
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
    /// What the pipeline had to write (a reply, a delivered frame, tunnel datagrams)
    /// would not fit the caller's `out` buffer.
    ReplyTooLarge,
    /// TTL would reach 0 (RFC 1812 §5.3.1) and no ICMP time exceeded was sent (rate
    /// limit, or not allowed: an error about an error, a non-first fragment, ...).
    /// When the error is sent, the frame's outcome is that error instead.
    TtlExpired,
    /// No node or pod owns the destination (in the cluster CIDR but unrouted, or in the
    /// local subnet with no pod of that IP), and no ICMP host unreachable was sent.
    HostUnreachable,
    /// Larger than the tunnel's inner MTU with DF set, and no ICMP "fragmentation
    /// needed" was sent; or an MTU too small to fragment into.
    PacketTooBig,
    /// A VXLAN datagram from an underlay address that is not a known peer.
    NotClusterNode,
    /// A VXLAN datagram with another VNI than ours.
    WrongVni,
    /// A VXLAN header that is truncated or lacks the I flag.
    BadVxlan,
    /// A decapsulated frame not addressed to our VTEP MAC.
    NotOurVtep,
    /// A decapsulated packet that routes back into the tunnel (peer → us → peer).
    TunnelLoop,
    /// A GSO frame bound for the tunnel of a kind we do not segment (UDP, TCPv6, or
    /// TCPv4 GSO on a non-TCP packet or a fragment).
    UnsupportedGso,
    /// Local delivery to the host port, whose MAC is neither configured nor learned yet.
    HostMacUnknown,
    /// A VXLAN datagram while no tunnel is configured.
    TunnelNotConfigured,
    /// A decapsulated, unfragmented TCP or UDP packet for a local port whose L4
    /// checksum is wrong and is not a sender's partial (offloaded) checksum either: a
    /// packet corrupted on the way. Kept apart from `BadChecksum` (IPv4 header, ICMP to
    /// the gateway) because it names the tunnel's inner payload, the one place we
    /// check L4 checksums; see `crate::codec::vxlan::settle_l4_checksum`.
    BadInnerChecksum,
    /// To a ClusterIP on a port or protocol no service of that IP serves (TCP/UDP to an
    /// unknown port, ICMP such as ping, anything else), and no ICMP unreachable was
    /// sent (rate limit). Nothing listens on a ClusterIP itself.
    NoServicePort,
    /// To an address in the service CIDR that is no service's ClusterIP, and no ICMP
    /// host unreachable was sent.
    NotAService,
    /// To a service with no ready backend, and no TCP reset or ICMP port unreachable
    /// was sent (rate limit, or a reset is never answered with a reset).
    LbNoEndpoint,
    /// A later IPv4 fragment to a ClusterIP whose first fragment (the one with the
    /// ports) was not seen, or was seen over 30 s ago: without ports it cannot be
    /// matched to a flow, and the load balancer does not reassemble.
    ServiceFragment,
    /// No source port left for the NAT of a new flow: every candidate port gives a
    /// reply 5-tuple another live flow already uses.
    NatPortsExhausted,
    /// A pod sent a frame that is neither ARP nor IPv4 (IPv6, router advertisements
    /// included, VLAN tags, any other EtherType): a pod port carries only what
    /// Tapestry routes and checks. The host port is not restricted.
    ForbiddenEthertype,
    /// A decapsulated packet whose inner source is outside the pod subnet of the node
    /// that sent it (the peer of the outer source address), and that is no reply of a
    /// flow the load balancer tracks: a node cannot speak for another node's pods.
    SpoofedTunnelSource,
    /// NetworkPolicy: the first packet of a connection (or any packet of an untracked
    /// protocol) that no rule of the policies selecting its sender (egress) or its
    /// receiver (ingress) admits, or a packet of a flow a newly published policy table
    /// no longer allows. Dropped without a reset; also counted per policy.
    PolicyDenied,
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
        DropReason::TtlExpired,
        DropReason::HostUnreachable,
        DropReason::PacketTooBig,
        DropReason::NotClusterNode,
        DropReason::WrongVni,
        DropReason::BadVxlan,
        DropReason::NotOurVtep,
        DropReason::TunnelLoop,
        DropReason::UnsupportedGso,
        DropReason::HostMacUnknown,
        DropReason::TunnelNotConfigured,
        DropReason::BadInnerChecksum,
        DropReason::NoServicePort,
        DropReason::NotAService,
        DropReason::LbNoEndpoint,
        DropReason::ServiceFragment,
        DropReason::NatPortsExhausted,
        DropReason::ForbiddenEthertype,
        DropReason::SpoofedTunnelSource,
        DropReason::PolicyDenied,
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
            DropReason::TtlExpired => "ttl_expired",
            DropReason::HostUnreachable => "host_unreachable",
            DropReason::PacketTooBig => "packet_too_big",
            DropReason::NotClusterNode => "not_cluster_node",
            DropReason::WrongVni => "wrong_vni",
            DropReason::BadVxlan => "bad_vxlan",
            DropReason::NotOurVtep => "not_our_vtep",
            DropReason::TunnelLoop => "tunnel_loop",
            DropReason::UnsupportedGso => "unsupported_gso",
            DropReason::HostMacUnknown => "host_mac_unknown",
            DropReason::TunnelNotConfigured => "tunnel_not_configured",
            DropReason::BadInnerChecksum => "bad_inner_checksum",
            DropReason::NoServicePort => "no_service_port",
            DropReason::NotAService => "not_a_service",
            DropReason::LbNoEndpoint => "lb_no_endpoint",
            DropReason::ServiceFragment => "service_fragment",
            DropReason::NatPortsExhausted => "nat_ports_exhausted",
            DropReason::ForbiddenEthertype => "forbidden_ethertype",
            DropReason::SpoofedTunnelSource => "spoofed_tunnel_source",
            DropReason::PolicyDenied => "policy_denied",
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

/// Declares [`Counter`] once: each variant with its metric name and meaning, in the
/// order status output lists them.
macro_rules! counters {
    ($($(#[doc = $doc:literal])+ $variant:ident => $name:literal,)+) => {
        /// A pipeline counter (besides the per-reason drops). The name is the metric
        /// label and the status line; [`Counter::ALL`] lists them in output order.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Counter {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl Counter {
            /// Every counter, in output order (the index of each is its discriminant).
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)+];

            /// The metric name, e.g. `rx_frames`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)+
                }
            }
        }
    };
}

counters! {
    /// Frames (and tunnel datagrams) handed to the pipeline.
    RxFrames => "rx_frames",
    /// Unicast frames sent to the one port their destination was learned on.
    Forwarded => "forwarded",
    /// Broadcast, multicast and unknown-unicast frames sent to every other port.
    Flooded => "flooded",
    /// Frames the gateway answered back out of the ingress port (ARP, ICMP echo, ICMP
    /// errors to a local sender).
    Replies => "replies",
    /// New MAC table entries (including re-learning an entry that had aged out).
    Learned => "learned",
    /// Live entries whose MAC appeared on another port.
    Moved => "moved",
    /// New MACs not learned because the table was full.
    TableFull => "table_full",
    /// Entries found older than the aging time and forgotten.
    AgedOut => "aged_out",
    /// Packets the router forwarded with a TTL decrement (local delivery or tunnel).
    Routed => "routed",
    /// Frames built in `out` for one port (`Action::ToPort`): decapsulated packets
    /// delivered locally, ICMP errors to a local pod about a remote packet.
    Delivered => "delivered",
    /// Packets sent into the tunnel (`Action::Tunnel`), before segmentation.
    TunneledOut => "tunneled_out",
    /// VXLAN datagrams in those actions (after TSO and fragmentation).
    TunnelDatagramsOut => "tunnel_datagrams_out",
    /// VXLAN datagrams accepted (known peer, our VNI) from the tunnel.
    TunneledIn => "tunneled_in",
    /// ICMP errors the node originated (time exceeded, unreachable, frag needed).
    IcmpErrorsSent => "icmp_errors_sent",
    /// ICMP errors owed but not sent: rate limit (RFC 1812 §4.3.2.8) or forbidden
    /// (RFC 1122 §3.2.2: about an error, a fragment, a broadcast, ...).
    IcmpErrorsSuppressed => "icmp_errors_suppressed",
    /// Decapsulated TCP/UDP packets whose L4 checksum arrived partial (a Linux VXLAN
    /// sender's `CHECKSUM_PARTIAL`) and was completed before delivery.
    InnerChecksumsCompleted => "inner_checksums_completed",
    /// Flows to a service the load balancer started (backend picked, flow tracked).
    LbNewFlows => "lb_new_flows",
    /// Packets of tracked service flows, client to backend (after the first).
    LbEstablished => "lb_established",
    /// Replies from a backend rewritten back to the ClusterIP.
    LbReplies => "lb_replies",
    /// ICMP errors about a tracked flow rewritten for its client (conntrack's
    /// `RELATED` translation).
    LbIcmpErrors => "lb_icmp_errors",
    /// Flows not to a service whose reply key a tracked flow already held (a client
    /// reusing a source port straight to the backend its service flow went to),
    /// tracked with another source port (Linux's NAT clash resolution).
    LbClashRemaps => "lb_clash_remaps",
    /// Packets to a service without a ready backend (answered with a TCP reset or
    /// ICMP port unreachable, or dropped).
    LbNoEndpoint => "lb_no_endpoint",
    /// Live flows evicted because the connection table was full.
    ConntrackEvicted => "conntrack_evicted",
    /// Flows removed after their timeout (on lookup, eviction or `maintain`).
    ConntrackExpired => "conntrack_expired",
    /// Flows removed because their backend left the service (or the service went).
    ConntrackFlushed => "conntrack_flushed",
    /// Flows restored from the flow file when the agent started.
    ConntrackRestored => "conntrack_restored",
    /// Flow file records not restored: torn or corrupt, meaningless, duplicate.
    ConntrackRestoreRejected => "conntrack_restore_rejected",
    /// Flow files found unusable at start (bad header, size, version) and moved aside.
    FlowFileDiscarded => "flow_file_discarded",
}

impl Counter {
    /// How many counters there are.
    pub const COUNT: usize = Counter::ALL.len();

    const fn index(self) -> usize {
        self as usize
    }
}

/// Packet counters of one pipeline. Written only by the pipeline, read by anyone.
#[derive(Debug)]
pub struct Counters {
    counts: [AtomicU64; Counter::COUNT],
    drops: [AtomicU64; DropReason::COUNT],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            counts: core::array::from_fn(|_| AtomicU64::new(0)),
            drops: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
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
        if let Some(c) = self.counts.get(which.index()) {
            add(c, n);
        }
    }

    #[inline]
    pub(crate) fn bump_drop(&self, reason: DropReason) {
        if let Some(c) = self.drops.get(reason.index()) {
            add(c, 1);
        }
    }

    /// The value of one counter so far.
    pub fn get(&self, which: Counter) -> u64 {
        self.counts
            .get(which.index())
            .map_or(0, |c| c.load(Relaxed))
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
            counts: core::array::from_fn(|i| self.counts.get(i).map_or(0, |c| c.load(Relaxed))),
            dropped: drops.iter().map(|(_, n)| n).sum(),
            drops,
        }
    }
}

/// Counter values at one moment, for status output and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountersSnapshot {
    counts: [u64; Counter::COUNT],
    /// Sum of all drops.
    pub dropped: u64,
    /// `(DropReason::name, count)` for each reason with a nonzero count.
    pub drops: Vec<(&'static str, u64)>,
}

impl Default for CountersSnapshot {
    fn default() -> Self {
        CountersSnapshot {
            counts: [0; Counter::COUNT],
            dropped: 0,
            drops: Vec::new(),
        }
    }
}

impl CountersSnapshot {
    /// The value of one counter.
    pub fn get(&self, which: Counter) -> u64 {
        self.counts.get(which.index()).copied().unwrap_or(0)
    }

    /// `(name, value)` of every counter in output order, then `("dropped", total)`.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL
            .iter()
            .map(|c| (c.name(), self.get(*c)))
            .chain(core::iter::once(("dropped", self.dropped)))
    }
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
    fn counter_names_are_unique_snake_case_and_indexed_in_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index(), i, "{c:?} out of order in ALL");
            assert!(c
                .name()
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch == '_'));
            for other in &Counter::ALL[i + 1..] {
                assert_ne!(c.name(), other.name());
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
        assert_eq!(s.get(Counter::RxFrames), 2);
        assert_eq!(s.get(Counter::AgedOut), 3);
        let listed: Vec<_> = s.iter().collect();
        assert_eq!(listed.len(), Counter::COUNT + 1);
        assert_eq!(listed[0], ("rx_frames", 2));
        assert_eq!(listed[Counter::AgedOut as usize], ("aged_out", 3));
        assert_eq!(listed[Counter::COUNT], ("dropped", 1));
        assert_eq!(s.dropped, 1);
        assert_eq!(s.drops, vec![("spoofed_ip", 1)]);
        assert_eq!(DropReason::HairpinSelf.to_string(), "hairpin_self");
    }
}
