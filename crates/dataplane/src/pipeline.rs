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
//! 7. to the gateway MAC → router; a broadcast ARP request for the gateway IP →
//!    router (answered, never flooded); other multicast/broadcast → `Flood`; known
//!    unicast → `Forward`, or `HairpinSelf` if it was learned on the ingress port;
//!    unknown unicast → `Flood`.
//!
//! `Flood` always means "every attached port except the ingress one". Nothing here
//! allocates: the MAC table is allocated in [`Pipeline::new`], replies are written
//! into the caller's `out`, and the port table grows only in [`Pipeline::add_port`].

use core::net::Ipv4Addr;
use std::sync::Arc;

use crate::bridge::MacTable;
use crate::drops::{Counter, Counters, DropReason};
use crate::router::{drop_for, Router};
use crate::wire::{
    ArpPacket, ArpRepr, EtherType, EthernetFrame, Ipv4Packet, MacAddr, VnetHdr, VnetHdrRepr,
    WireError, VNET_HDR_LEN,
};
use crate::Nanos;

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
}

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
        }
    }
}

/// What the caller must do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Send the input buffer unchanged (virtio-net header included) out of this port.
    Forward(PortId),
    /// Send the input buffer out of every port except the ingress one.
    Flood,
    /// Send these bytes (a zeroed virtio-net header followed by an Ethernet frame,
    /// built in the caller's `out` buffer) back out of the ingress port.
    Reply(&'a [u8]),
    /// Do nothing with it; the reason has been counted.
    Drop(DropReason),
}

/// The decision before it borrows `out`.
enum Verdict {
    Forward(PortId),
    Flood,
    Reply(usize),
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
    table: MacTable,
    counters: Arc<Counters>,
}

impl Pipeline {
    /// Builds the pipeline and allocates its MAC table (`cfg.mac_capacity`) up front.
    pub fn new(cfg: PipelineConfig) -> Self {
        Pipeline {
            router: Router::new(cfg.gateway_ip, cfg.gateway_mac, cfg.subnet, cfg.prefix_len),
            ports: Vec::new(),
            table: MacTable::new(cfg.mac_capacity, cfg.mac_aging),
            counters: Arc::new(Counters::default()),
            cfg,
        }
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
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
    }

    /// Detaches a port and forgets every MAC learned on it.
    pub fn remove_port(&mut self, id: PortId) {
        if let Some(slot) = self.ports.get_mut(usize::from(id.0)) {
            if slot.take().is_some() {
                self.table.forget_port(id);
            }
        }
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
    /// the TAP. `out` is scratch space for replies (pass at least 65,546 bytes).
    /// Never panics, never allocates; every outcome is counted.
    pub fn process<'a>(
        &mut self,
        ingress: PortId,
        pkt: &mut [u8],
        now: Nanos,
        out: &'a mut [u8],
    ) -> Action<'a> {
        self.counters.bump(Counter::RxFrames);
        match self.decide(ingress, pkt, now, out) {
            Verdict::Forward(p) => {
                self.counters.bump(Counter::Forwarded);
                Action::Forward(p)
            }
            Verdict::Flood => {
                self.counters.bump(Counter::Flooded);
                Action::Flood
            }
            Verdict::Reply(len) => match out.get(..len) {
                Some(bytes) => {
                    self.counters.bump(Counter::Replies);
                    Action::Reply(bytes)
                }
                None => {
                    self.counters.bump_drop(DropReason::ReplyTooLarge);
                    Action::Drop(DropReason::ReplyTooLarge)
                }
            },
            Verdict::Drop(reason) => {
                self.counters.bump_drop(reason);
                Action::Drop(reason)
            }
        }
    }

    fn decide(&mut self, ingress: PortId, pkt: &[u8], now: Nanos, out: &mut [u8]) -> Verdict {
        let Some(role) = self.port_role(ingress) else {
            return DropReason::UnknownIngress.into();
        };
        if pkt.len() < VNET_HDR_LEN {
            return DropReason::Truncated.into();
        }
        let (vnet_bytes, frame) = pkt.split_at(VNET_HDR_LEN);
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

        self.table.learn(src, ingress, now, &self.counters);

        if to_router {
            let result = match (&arp, &ipv4) {
                (Some(a), _) => self.router.handle_arp(a, out),
                (None, Some(p)) => self.router.handle_ipv4(&vnet, src, p, out),
                (None, None) => Err(DropReason::UnsupportedProtocol),
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
