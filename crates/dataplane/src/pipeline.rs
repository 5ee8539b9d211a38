//! The per-node pipeline: ports, anti-spoofing, the learning bridge and the gateway
//! router, as one function from (ingress port, frame, `now`) to an [`Action`].
//!
//! Order of work for each frame (every failure is a named [`DropReason`]):
//!
//! 1. the ingress port must be attached (`UnknownIngress`);
//! 2. the virtio-net header must be present and sane (`Truncated`, `BadVnetHeader`),
//!    then an Ethernet header (`Truncated`);
//! 3. a multicast/broadcast source MAC is never valid (`SourceMulticast`);
//! 4. ARP is always parsed (it is rare and the router must see requests for the
//!    gateway); IPv4 is parsed when it comes from a pod (anti-spoofing) or goes to the
//!    gateway MAC. Host-port IPv4 to other MACs — the bulk of host traffic — is
//!    bridged without touching L3. Parse errors: `Truncated`, `BadHeader`,
//!    `UnsupportedProtocol` (non-Ethernet/IPv4 ARP);
//! 5. pod anti-spoofing: source MAC must be the pod's (`SpoofedMac`), and so must the
//!    ARP sender hardware address (ARP cache poisoning); IPv4 source and ARP sender IP
//!    must be the pod's IP, 0.0.0.0 allowed for ARP probes (`SpoofedIp`). Other
//!    EtherTypes (IPv6, VLAN) are bridged unchecked beyond the source MAC: the cluster
//!    is IPv4-only;
//! 6. learn the source MAC on the ingress port;
//! 7. the service load balancer (`service_path.rs`, Kubernetes fact 4): IPv4 TCP/UDP
//!    from a pod that is a tracked service flow's reply is un-NATed (bridged on, or
//!    routed when sent to the gateway MAC — hairpin replies to the gateway IP
//!    included); IPv4 to the gateway MAC for a ClusterIP (or the service CIDR) is
//!    DNATed to a backend and routed, or rejected;
//! 8. to the gateway MAC → router: ARP and IPv4 for the gateway IP are answered,
//!    other IPv4 is *routed* (below); a broadcast ARP request for
//!    the gateway IP → router (answered, never flooded); other multicast/broadcast →
//!    `Flood`; known unicast → `Forward`, or `HairpinSelf` if it was learned on the
//!    ingress port; unknown unicast → `Flood`.
//!
//! VXLAN datagrams from other nodes come in through [`Pipeline::process_tunnel`]:
//! the outer source must be a known peer (`NotClusterNode`), the VXLAN header valid
//! (`BadVxlan`) with our VNI (`WrongVni`), the inner frame addressed to our VTEP MAC
//! (`NotOurVtep`) and IPv4 (`UnsupportedProtocol`); then it is routed like a frame from
//! a port, except that it may not go back into the tunnel (`TunnelLoop`), and that a
//! TCP/UDP packet delivered to a local port has its checksum verified or, when a
//! Linux VXLAN sender left it partial, completed (`BadInnerChecksum` otherwise; see
//! `forward.rs` for why).
//!
//! Routing (Kubernetes fact 3, pods on different nodes talk): the destination is
//! looked up in the current [`RouteSnapshot`] (published by the control thread through
//! [`Pipeline::routes`]); a local pod gets the frame with its MAC and the gateway's as
//! source, TTL decremented; a peer's pod gets it through the tunnel ([`crate::tunnel`]:
//! VXLAN, software TSO, fragmentation); anything else gets the ICMP error RFC 1812
//! asks for, rate-limited. Details in `forward.rs` (the `pipeline::forward` module).
//!
//! `Flood` always means "every attached port except the ingress one". Nothing here
//! allocates: the MAC table is allocated in [`Pipeline::new`], replies and tunnel
//! datagrams are written into the caller's `out` ([`OUT_BUF_LEN`] bytes), and the port
//! tables grow only in [`Pipeline::add_port`].

use core::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::bridge::MacTable;
use crate::conntrack::{Conntrack, ConntrackTimeouts, DEFAULT_CONNTRACK_CAPACITY};
use crate::drops::{Counter, Counters, DropReason};
use crate::lb::ServiceTable;
use crate::ratelimit::TokenBucket;
use crate::router::{drop_for, Router};
use crate::routes::RouteSnapshot;
use crate::wire::{
    ArpPacket, ArpRepr, EtherType, EthernetFrame, Ipv4Packet, MacAddr, VnetHdr, VnetHdrRepr,
    WireError, VNET_HDR_LEN,
};
use crate::Nanos;

#[path = "forward.rs"]
mod forward;
#[path = "service_path.rs"]
mod service_path;

pub use service_path::MAINTAIN_BUDGET;

/// The least `out` buffer the I/O layer must pass to [`Pipeline::process`] and
/// [`Pipeline::process_tunnel`]: 256 KiB. The largest thing written there is the
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

/// A bridge port: one TAP device, numbered by the I/O layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

/// What is behind a port, which decides how far its frames are trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRole {
    /// A pod's eth0. Anti-spoofing: frames whose source MAC is not `mac` are dropped
    /// (`SpoofedMac`); IPv4 frames whose source IP is not `ip`, and ARP whose sender IP
    /// is not `ip` (0.0.0.0 allowed for ARP probes), are dropped (`SpoofedIp`).
    Pod { mac: MacAddr, ip: Ipv4Addr },
    /// The node's own host port (TAP `cbr0` in the node namespace): trusted, no
    /// anti-spoofing.
    Host,
}

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
    /// The node's pod subnet, e.g. 10.244.1.0 ...
    pub subnet: Ipv4Addr,
    /// ... /24.
    pub prefix_len: u8,
    /// Entries not refreshed for this long are treated as unknown (default 300 s).
    pub mac_aging: Nanos,
    /// Most MACs learned at once (default 16,384; clamped to `bridge::MAX_CAPACITY`).
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
    pub service_cidr: Option<(Ipv4Addr, u8)>,
    /// Most service flows tracked at once (default 262,144; allocated up front).
    pub conntrack_capacity: usize,
    /// How long tracked flows live without traffic.
    pub conntrack_timeouts: ConntrackTimeouts,
}

/// Kubernetes' default service CIDR, 10.96.0.0/12.
pub const DEFAULT_SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);

impl PipelineConfig {
    /// A configuration with the default aging time and table capacity.
    pub fn new(
        gateway_ip: Ipv4Addr,
        gateway_mac: MacAddr,
        subnet: Ipv4Addr,
        prefix_len: u8,
    ) -> Self {
        PipelineConfig {
            gateway_ip,
            gateway_mac,
            subnet,
            prefix_len,
            mac_aging: DEFAULT_MAC_AGING,
            mac_capacity: DEFAULT_MAC_CAPACITY,
            tunnel: None,
            icmp_errors_per_sec: DEFAULT_ICMP_ERRORS_PER_SEC,
            host_ip: None,
            host_mac: None,
            service_cidr: Some(DEFAULT_SERVICE_CIDR),
            conntrack_capacity: DEFAULT_CONNTRACK_CAPACITY,
            conntrack_timeouts: ConntrackTimeouts::default(),
        }
    }
}

/// What the caller must do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Send the input buffer (virtio-net header included) out of this port. Bridged
    /// frames are unchanged; routed ones were rewritten in place (MACs, TTL, IPv4
    /// checksum).
    Forward(PortId),
    /// Send the input buffer out of every port except the ingress one.
    Flood,
    /// Send these bytes (a zeroed virtio-net header followed by an Ethernet frame,
    /// built in the caller's `out` buffer) back out of the ingress port.
    Reply(&'a [u8]),
    /// Send these bytes (virtio-net header + Ethernet frame, built in `out`) to this
    /// port.
    ToPort(PortId, &'a [u8]),
    /// Send UDP datagrams to `peer`:4789. `datagrams` holds one or more VXLAN
    /// datagrams back to back (UDP payloads: VXLAN header + inner frame), each exactly
    /// `segment_len` bytes except possibly the last, which is shorter (the layout UDP
    /// GSO `UDP_SEGMENT` wants). `flow_hash` is a hash of the inner flow (src/dst IP,
    /// protocol, ports of unfragmented TCP/UDP): pick the outer UDP source port from
    /// it (ECMP entropy, RFC 7348 §5).
    Tunnel {
        peer: Ipv4Addr,
        flow_hash: u32,
        datagrams: &'a [u8],
        segment_len: usize,
    },
    /// Do nothing with it; the reason has been counted.
    Drop(DropReason),
}

/// The decision before it borrows `out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Forward(PortId),
    Flood,
    Reply(usize),
    ToPort(PortId, usize),
    Tunnel {
        peer: Ipv4Addr,
        flow_hash: u32,
        len: usize,
        segment_len: usize,
        count: usize,
    },
    Drop(DropReason),
}

impl From<DropReason> for Verdict {
    fn from(r: DropReason) -> Self {
        Verdict::Drop(r)
    }
}

/// One node's bridge + router. Owned by one worker; see the module docs.
#[derive(Debug)]
pub struct Pipeline {
    cfg: PipelineConfig,
    router: Router,
    /// Indexed by `PortId.0`; grows only in `add_port`.
    ports: Vec<Option<PortRole>>,
    /// Pod IPs with their port and MAC, sorted by IP, for routed local delivery;
    /// maintained by `add_port`/`remove_port`.
    pods: Vec<(Ipv4Addr, PortId, MacAddr)>,
    /// The lowest-numbered attached `PortRole::Host` port.
    host_port: Option<PortId>,
    /// The host port's MAC: configured, or learned (see `PipelineConfig::host_mac`).
    host_mac: Option<MacAddr>,
    table: MacTable,
    routes: Arc<ArcSwap<RouteSnapshot>>,
    icmp_bucket: TokenBucket,
    /// Identification of the next ICMP error (or reset) we originate.
    icmp_ident: u16,
    counters: Arc<Counters>,
    services: Arc<ArcSwap<ServiceTable>>,
    conntrack: Conntrack,
    /// Translations of fragmented datagrams of service flows (`fragments.rs`).
    frags: crate::fragments::FragTable,
    /// Generation of the service table `maintain` last reconciled every flow with.
    ct_reconciled: u64,
}

impl Pipeline {
    /// Builds the pipeline and allocates its MAC table (`cfg.mac_capacity`) up front.
    pub fn new(cfg: PipelineConfig) -> Self {
        Pipeline {
            router: Router::new(cfg.gateway_ip, cfg.gateway_mac, cfg.subnet, cfg.prefix_len),
            ports: Vec::new(),
            pods: Vec::new(),
            host_port: None,
            host_mac: cfg.host_mac,
            table: MacTable::new(cfg.mac_capacity, cfg.mac_aging),
            routes: Arc::new(ArcSwap::from_pointee(RouteSnapshot::empty_for(
                cfg.subnet,
                cfg.prefix_len,
            ))),
            icmp_bucket: TokenBucket::new(cfg.icmp_errors_per_sec),
            icmp_ident: 0,
            counters: Arc::new(Counters::default()),
            services: Arc::new(ArcSwap::from_pointee(ServiceTable::empty())),
            conntrack: Conntrack::new(cfg.conntrack_capacity),
            frags: crate::fragments::FragTable::new(),
            ct_reconciled: 0,
            cfg,
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    /// The handle the control thread stores new route snapshots into; the pipeline
    /// `load()`s it per packet (no lock, no allocation). Initially
    /// `RouteSnapshot::empty_for(subnet, prefix_len)`.
    pub fn routes(&self) -> &Arc<ArcSwap<RouteSnapshot>> {
        &self.routes
    }

    /// The handle the control thread stores new service tables into; the pipeline
    /// `load()`s it per packet (no lock). Initially [`ServiceTable::empty`].
    pub fn services(&self) -> &Arc<ArcSwap<ServiceTable>> {
        &self.services
    }

    /// The host port's MAC, configured or learned.
    pub fn host_mac(&self) -> Option<MacAddr> {
        self.host_mac
    }

    /// Rebuilds the pod-IP index and the host port after a port change.
    fn reindex_ports(&mut self) {
        self.pods.clear();
        self.host_port = None;
        for (i, role) in self.ports.iter().enumerate() {
            let Ok(raw) = u16::try_from(i) else { break };
            match role {
                Some(PortRole::Pod { mac, ip }) => self.pods.push((*ip, PortId(raw), *mac)),
                Some(PortRole::Host) if self.host_port.is_none() => {
                    self.host_port = Some(PortId(raw));
                }
                _ => {}
            }
        }
        // On a duplicate IP the highest-numbered port wins (stable sort keeps port order).
        self.pods.sort_by_key(|(ip, _, _)| *ip);
        self.pods.reverse();
        self.pods.dedup_by_key(|(ip, _, _)| *ip);
        self.pods.reverse();
    }

    /// Attaches a port; replaces an existing port of that id and forgets its MACs.
    pub fn add_port(&mut self, id: PortId, role: PortRole) {
        let i = usize::from(id.0);
        if self.ports.len() <= i {
            self.ports.resize(i + 1, None);
        }
        if let Some(slot) = self.ports.get_mut(i) {
            if slot.replace(role).is_some() {
                self.table.forget_port(id);
            }
        }
        self.reindex_ports();
    }

    /// Detaches a port and forgets every MAC learned on it.
    pub fn remove_port(&mut self, id: PortId) {
        if let Some(slot) = self.ports.get_mut(usize::from(id.0)) {
            if slot.take().is_some() {
                self.table.forget_port(id);
            }
        }
        self.reindex_ports();
    }

    /// Attached ports in id order.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, PortRole)> + '_ {
        self.ports.iter().enumerate().filter_map(|(i, r)| {
            let id = PortId(u16::try_from(i).ok()?);
            r.map(|role| (id, role))
        })
    }

    /// The ports a [`Action::Flood`] from `ingress` goes to: every attached port but
    /// `ingress`, in id order. Does not allocate.
    pub fn flood_targets(&self, ingress: PortId) -> impl Iterator<Item = PortId> + '_ {
        self.ports()
            .map(|(id, _)| id)
            .filter(move |id| *id != ingress)
    }

    /// The role of an attached port.
    pub fn port_role(&self, id: PortId) -> Option<PortRole> {
        self.ports.get(usize::from(id.0)).copied().flatten()
    }

    /// Decides what to do with one frame. `pkt` is the virtio-net header
    /// ([`VNET_HDR_LEN`] bytes) followed by the Ethernet frame, exactly as read from
    /// the TAP; routed frames are rewritten in place. `out` is scratch space for
    /// replies and tunnel datagrams (pass [`OUT_BUF_LEN`] bytes).
    /// Never panics, never allocates; every outcome is counted.
    pub fn process<'a>(
        &mut self,
        ingress: PortId,
        pkt: &mut [u8],
        now: Nanos,
        out: &'a mut [u8],
    ) -> Action<'a> {
        self.counters.bump(Counter::RxFrames);
        let verdict = self.decide(ingress, pkt, now, out);
        self.finish(verdict, out)
    }

    /// A VXLAN datagram (UDP payload: VXLAN header + inner Ethernet frame) received
    /// from `src` (outer source address and port) on the tunnel socket. The inner
    /// packet is routed: delivered to a local port (`ToPort`; its virtio-net header says
    /// `DATA_VALID` if the packet's TCP/UDP checksum was verified or completed, and is
    /// zeroed otherwise), answered (echo to the gateway, ICMP errors: `Tunnel` back),
    /// or dropped.
    /// `payload` may be rewritten in place. Same `out` contract as [`Pipeline::process`].
    pub fn process_tunnel<'a>(
        &mut self,
        src: SocketAddrV4,
        payload: &mut [u8],
        now: Nanos,
        out: &'a mut [u8],
    ) -> Action<'a> {
        self.counters.bump(Counter::RxFrames);
        let verdict = self.decide_tunnel(*src.ip(), payload, now, out);
        self.finish(verdict, out)
    }

    /// Counts the outcome and lends the caller the bytes it refers to.
    fn finish<'a>(&self, verdict: Verdict, out: &'a [u8]) -> Action<'a> {
        let c = &self.counters;
        let too_large = || {
            c.bump_drop(DropReason::ReplyTooLarge);
            Action::Drop(DropReason::ReplyTooLarge)
        };
        match verdict {
            Verdict::Forward(p) => {
                c.bump(Counter::Forwarded);
                Action::Forward(p)
            }
            Verdict::Flood => {
                c.bump(Counter::Flooded);
                Action::Flood
            }
            Verdict::Reply(len) => match out.get(..len) {
                Some(bytes) => {
                    c.bump(Counter::Replies);
                    Action::Reply(bytes)
                }
                None => too_large(),
            },
            Verdict::ToPort(port, len) => match out.get(..len) {
                Some(bytes) => {
                    c.bump(Counter::Delivered);
                    Action::ToPort(port, bytes)
                }
                None => too_large(),
            },
            Verdict::Tunnel {
                peer,
                flow_hash,
                len,
                segment_len,
                count,
            } => match out.get(..len) {
                Some(datagrams) => {
                    c.bump(Counter::TunneledOut);
                    c.add(Counter::TunnelDatagramsOut, count as u64);
                    Action::Tunnel {
                        peer,
                        flow_hash,
                        datagrams,
                        segment_len,
                    }
                }
                None => too_large(),
            },
            Verdict::Drop(reason) => {
                c.bump_drop(reason);
                Action::Drop(reason)
            }
        }
    }

    fn decide(&mut self, ingress: PortId, pkt: &mut [u8], now: Nanos, out: &mut [u8]) -> Verdict {
        let Some(role) = self.port_role(ingress) else {
            return DropReason::UnknownIngress.into();
        };
        if pkt.len() < VNET_HDR_LEN {
            return DropReason::Truncated.into();
        }
        let (vnet_bytes, frame) = pkt.split_at(VNET_HDR_LEN.min(pkt.len()));
        let vnet = match VnetHdrRepr::parse(&VnetHdr::new_unchecked(vnet_bytes), frame.len()) {
            Ok(v) => v,
            Err(WireError::Truncated { .. }) => return DropReason::Truncated.into(),
            Err(_) => return DropReason::BadVnetHeader.into(),
        };
        let eth = match EthernetFrame::new_checked(frame) {
            Ok(e) => e,
            Err(e) => return drop_for(e).into(),
        };
        let src = eth.src_addr();
        if src.is_multicast() {
            return DropReason::SourceMulticast.into();
        }
        let dst = eth.dst_addr();
        let to_router = dst == self.cfg.gateway_mac;
        let ethertype = eth.ethertype();

        let arp = if ethertype == EtherType::Arp {
            match ArpPacket::new_checked(eth.payload()).and_then(|p| ArpRepr::parse(&p)) {
                Ok(a) => Some(a),
                Err(e) => return drop_for(e).into(),
            }
        } else {
            None
        };
        let is_pod = matches!(role, PortRole::Pod { .. });
        let ipv4 = if ethertype == EtherType::Ipv4 && (to_router || is_pod) {
            match Ipv4Packet::new_checked(eth.payload()) {
                Ok(p) => Some(p),
                Err(e) => return drop_for(e).into(),
            }
        } else {
            None
        };

        if let PortRole::Pod { mac, ip } = role {
            if src != mac {
                return DropReason::SpoofedMac.into();
            }
            if let Some(a) = &arp {
                if a.source_hardware_addr != mac {
                    return DropReason::SpoofedMac.into();
                }
                if a.source_protocol_addr != ip && !a.source_protocol_addr.is_unspecified() {
                    return DropReason::SpoofedIp.into();
                }
            }
            if let Some(p) = &ipv4 {
                if p.src_addr() != ip {
                    return DropReason::SpoofedIp.into();
                }
            }
        }

        if role == PortRole::Host {
            self.learn_host_mac(src, arp.as_ref(), ipv4.as_ref());
        }
        self.table.learn(src, ingress, now, &self.counters);

        let transit = arp.is_none()
            && ipv4
                .as_ref()
                .is_some_and(|p| p.dst_addr() != self.cfg.gateway_ip);
        let info = ipv4.as_ref().map(service_path::L4Info::of);
        let has_ipv4 = ipv4.is_some();
        // The service load balancer (module `service_path`): DNAT to a backend, or
        // un-NAT a reply (routed, or bridged on with the frame rewritten in place).
        if let Some(info) = info {
            let v = self.service_stage(ingress, src, to_router, vnet, info, pkt, now, out);
            if let Some(v) = v {
                return v;
            }
        }
        if to_router && transit {
            return self.route_from_port(ingress, src, false, vnet, pkt, now, out);
        }
        if to_router {
            let result = match (&arp, has_ipv4) {
                (Some(a), _) => self.router.handle_arp(a, out),
                (None, true) => {
                    let ip = pkt.get(VNET_HDR_LEN + crate::wire::ETHERNET_HEADER_LEN..);
                    match ip.map(Ipv4Packet::new_checked) {
                        Some(Ok(p)) => self.router.handle_ipv4(&vnet, src, &p, out),
                        Some(Err(e)) => Err(drop_for(e)),
                        None => Err(DropReason::Truncated),
                    }
                }
                (None, false) => Err(DropReason::UnsupportedProtocol),
            };
            return match result {
                Ok(len) => Verdict::Reply(len),
                Err(reason) => reason.into(),
            };
        }
        if let Some(a) = &arp {
            if dst.is_broadcast() && self.router.is_arp_request_for_us(a) {
                return match self.router.handle_arp(a, out) {
                    Ok(len) => Verdict::Reply(len),
                    Err(reason) => reason.into(),
                };
            }
        }
        if dst.is_multicast() {
            return Verdict::Flood;
        }
        match self.table.lookup(dst, now, &self.counters) {
            Some(p) if p == ingress => DropReason::HairpinSelf.into(),
            Some(p) => Verdict::Forward(p),
            None => Verdict::Flood,
        }
    }

    /// Remembers the host port's MAC from what it sends as `host_ip` (when the MAC is
    /// not configured).
    fn learn_host_mac(
        &mut self,
        src: MacAddr,
        arp: Option<&ArpRepr>,
        ipv4: Option<&Ipv4Packet<&[u8]>>,
    ) {
        let (Some(host_ip), None) = (self.cfg.host_ip, self.cfg.host_mac) else {
            return;
        };
        let sender = match (arp, ipv4) {
            (Some(a), _) => a.source_protocol_addr,
            (None, Some(p)) => p.src_addr(),
            (None, None) => return,
        };
        if sender == host_ip {
            self.host_mac = Some(src);
        }
    }

    /// The counters, shared with the control thread for stats.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// MAC table entries stored (aged entries not yet swept included).
    pub fn mac_table_len(&self) -> usize {
        self.table.len()
    }

    /// Live MAC table entries as `(mac, port, age)` for status output (allocates).
    pub fn mac_entries(&self, now: Nanos) -> Vec<(MacAddr, PortId, Nanos)> {
        self.table.entries(now)
    }

    /// Removes aged MAC entries now (the control thread may call this on a timer so
    /// that `mac_table_len` stays meaningful); returns how many.
    pub fn sweep_macs(&mut self, now: Nanos) -> usize {
        self.table.sweep(now, &self.counters)
    }
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
