//! The static configuration of a node's pipeline: addresses, table sizes, the tunnel,
//! and the limits every stage reads.

use core::net::Ipv4Addr;

use crate::tables::conntrack::{ConntrackTimeouts, DEFAULT_CONNTRACK_CAPACITY};
use crate::types::Nanos;
use crate::wire::MacAddr;
use tapestry_net::Ipv4Cidr;

/// The least `out` buffer the I/O layer must pass to [`crate::Pipeline::process`] and
/// [`crate::Pipeline::process_tunnel`]: 256 KiB. The largest thing written there is the
/// software-TSO run of a 65,535-byte GSO frame: with an MSS of 536 (the IPv4 minimum
/// a peer may announce) that is 123 segments × 74 bytes of headers + 64 KiB of
/// payload ≈ 73 KiB; an echo reply to a 64 KiB ping is 65,546 bytes. The rest is
/// headroom for smaller MSSs. A run that would not fit is dropped as `ReplyTooLarge`.
pub const OUT_BUF_LEN: usize = 256 * 1024;

/// VXLAN's overhead on the underlay: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u16 = 50;

/// Default ICMP error rate limit (Linux's `icmp_msgs_per_sec`).
pub const DEFAULT_ICMP_ERRORS_PER_SEC: u32 = 1000;

/// Default MAC aging time: 300 s, as the Linux bridge and IEEE 802.1D.
pub const DEFAULT_MAC_AGING: Nanos = 300 * 1_000_000_000;

/// Default MAC table capacity.
pub const DEFAULT_MAC_CAPACITY: usize = 16_384;

/// This node's end of the VXLAN tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelConfig {
    /// Our underlay address (the I/O layer binds the tunnel socket to it; datagrams
    /// claiming to come from it are not from a peer).
    pub underlay_ip: Ipv4Addr,
    /// Our VTEP MAC: inner source MAC of what we send, inner destination MAC of what
    /// we accept.
    pub vtep_mac: MacAddr,
    /// The VXLAN network identifier: 1, as flannel.
    pub vni: u32,
    /// Largest inner IPv4 packet: the underlay MTU − [`VXLAN_OVERHEAD`] (1450 on a
    /// 1500-byte underlay). Larger packets are segmented, fragmented, or refused with
    /// ICMP "fragmentation needed".
    pub inner_mtu: u16,
}

impl TunnelConfig {
    /// VNI 1 and `inner_mtu = underlay_mtu - 50`.
    pub const fn new(underlay_ip: Ipv4Addr, vtep_mac: MacAddr, underlay_mtu: u16) -> Self {
        TunnelConfig {
            underlay_ip,
            vtep_mac,
            vni: 1,
            inner_mtu: underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
        }
    }
}

/// Static configuration of a node's pipeline.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// The pods' default gateway, e.g. 10.244.1.1.
    pub gateway_ip: Ipv4Addr,
    /// The MAC the gateway answers ARP with.
    pub gateway_mac: MacAddr,
    /// The node's pod subnet, e.g. 10.244.1.0/24.
    pub subnet: Ipv4Cidr,
    /// Entries not refreshed for this long are treated as unknown (default 300 s).
    pub mac_aging: Nanos,
    /// Most MACs learned at once (default 16,384; clamped to `tables::mac_table::MAX_CAPACITY`).
    pub mac_capacity: usize,
    /// The VXLAN tunnel to other nodes. `None` (the default): packets for other
    /// subnets are dropped as `NoRoute`, and `process_tunnel` drops everything.
    pub tunnel: Option<TunnelConfig>,
    /// ICMP errors originated per second at most (default 1000, burst a tenth of
    /// that; 0 sends none). RFC 1812 §4.3.2.8; excess counted as suppressed.
    pub icmp_errors_per_sec: u32,
    /// The host port's IP (the agent uses the subnet's last usable address), so that
    /// routed packets for it — e.g. from a pod on another node — reach the host port.
    /// `None`: no routed delivery to the host.
    pub host_ip: Option<Ipv4Addr>,
    /// The host port's MAC. `None`: learned from the ARP requests and IPv4 the host
    /// port sends with `host_ip` as source (the host ARPs for the gateway before it
    /// routes anything through it); until then delivery to it is `HostMacUnknown`.
    pub host_mac: Option<MacAddr>,
    /// The service CIDR (default 10.96.0.0/12): traffic for an address in it that is
    /// no service's ClusterIP gets ICMP host unreachable instead of a route lookup.
    /// `None`: only ClusterIPs of the current service table are intercepted.
    pub service_cidr: Option<Ipv4Cidr>,
    /// Pod egress through the node: a pod's packet for an address outside the
    /// cluster and service CIDRs is routed to the host port (`host_ip`'s MAC), and
    /// the node's kernel takes it from there (it forwards, and masquerades the pod
    /// source, as flannel's nodes do). `false` (the default): such a packet gets
    /// ICMP net unreachable. Only packets from a pod's port go this way, never
    /// decapsulated ones or the host port's own.
    pub egress_via_host: bool,
    /// Most service flows tracked at once (default 262,144; allocated up front).
    pub conntrack_capacity: usize,
    /// How long tracked flows live without traffic.
    pub conntrack_timeouts: ConntrackTimeouts,
}

/// Kubernetes' default service CIDR, 10.96.0.0/12.
pub const DEFAULT_SERVICE_CIDR: Ipv4Cidr =
    match Ipv4Cidr::new_const(Ipv4Addr::new(10, 96, 0, 0), 12) {
        Some(cidr) => cidr,
        None => panic!("10.96.0.0/12 is a network"), // evaluated at compile time
    };

impl PipelineConfig {
    /// A configuration with the default aging time and table capacity.
    pub fn new(gateway_ip: Ipv4Addr, gateway_mac: MacAddr, subnet: Ipv4Cidr) -> Self {
        PipelineConfig {
            gateway_ip,
            gateway_mac,
            subnet,
            mac_aging: DEFAULT_MAC_AGING,
            mac_capacity: DEFAULT_MAC_CAPACITY,
            tunnel: None,
            icmp_errors_per_sec: DEFAULT_ICMP_ERRORS_PER_SEC,
            host_ip: None,
            host_mac: None,
            service_cidr: Some(DEFAULT_SERVICE_CIDR),
            egress_via_host: false,
            conntrack_capacity: DEFAULT_CONNTRACK_CAPACITY,
            conntrack_timeouts: ConntrackTimeouts::default(),
        }
    }
}
