//! The bridge's ports: what is attached to each [`PortId`], the pod IPs behind them
//! (for routed local delivery, no ARP needed) and the host port with its MAC.
//!
//! Changed only by the control side of the worker (`add_port`, `remove_port`); read
//! per packet. It grows only when a port is added.

use core::net::Ipv4Addr;

use crate::drops::DropReason;
use crate::types::{PortId, PortRole};
use crate::wire::MacAddr;

/// The port table. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Ports {
    /// Indexed by `PortId.0`.
    roles: Vec<Option<PortRole>>,
    /// Pod IPs with their port and MAC, sorted by IP.
    pods: Vec<(Ipv4Addr, PortId, MacAddr)>,
    /// The lowest-numbered attached `PortRole::Host` port.
    host_port: Option<PortId>,
    /// The host port's IP and MAC (configured, or learned: see `learn_host_mac`).
    host_ip: Option<Ipv4Addr>,
    host_mac: Option<MacAddr>,
    host_mac_configured: bool,
}

impl Ports {
    pub(crate) fn new(host_ip: Option<Ipv4Addr>, host_mac: Option<MacAddr>) -> Ports {
        Ports {
            host_ip,
            host_mac,
            host_mac_configured: host_mac.is_some(),
            ..Ports::default()
        }
    }

    /// Attaches a port; `true` if it replaced one (whose MACs must be forgotten).
    pub(crate) fn add(&mut self, id: PortId, role: PortRole) -> bool {
        let i = usize::from(id.0);
        if self.roles.len() <= i {
            self.roles.resize(i + 1, None);
        }
        let replaced = self
            .roles
            .get_mut(i)
            .is_some_and(|slot| slot.replace(role).is_some());
        self.reindex();
        replaced
    }

    /// Detaches a port; `true` if it was attached.
    pub(crate) fn remove(&mut self, id: PortId) -> bool {
        let removed = self
            .roles
            .get_mut(usize::from(id.0))
            .is_some_and(|slot| slot.take().is_some());
        self.reindex();
        removed
    }

    /// Rebuilds the pod-IP index and the host port after a change.
    fn reindex(&mut self) {
        self.pods.clear();
        self.host_port = None;
        for (i, role) in self.roles.iter().enumerate() {
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

    /// Attached ports in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (PortId, PortRole)> + '_ {
        self.roles.iter().enumerate().filter_map(|(i, r)| {
            let id = PortId(u16::try_from(i).ok()?);
            r.map(|role| (id, role))
        })
    }

    /// The role of an attached port.
    pub(crate) fn role(&self, id: PortId) -> Option<PortRole> {
        self.roles.get(usize::from(id.0)).copied().flatten()
    }

    /// The host port's MAC, configured or learned.
    pub(crate) fn host_mac(&self) -> Option<MacAddr> {
        self.host_mac
    }

    /// Remembers the host port's MAC from what it sends as `host_ip` (ARP sender or
    /// IPv4 source), unless it was configured.
    pub(crate) fn learn_host_mac(&mut self, mac: MacAddr, sender: Option<Ipv4Addr>) {
        if !self.host_mac_configured && sender.is_some() && sender == self.host_ip {
            self.host_mac = Some(mac);
        }
    }

    /// A local port for `dst`: a pod's, or the host port for `host_ip`.
    /// `HostUnreachable` if nobody has it, `HostMacUnknown` if the host MAC is unknown.
    pub(crate) fn local_dest(&self, dst: Ipv4Addr) -> Result<(PortId, MacAddr), DropReason> {
        if let Ok(i) = self.pods.binary_search_by_key(&dst, |e| e.0) {
            if let Some(&(_, port, mac)) = self.pods.get(i) {
                return Ok((port, mac));
            }
        }
        match (self.host_ip == Some(dst), self.host_port, self.host_mac) {
            (true, Some(port), Some(mac)) => Ok((port, mac)),
            (true, Some(_), None) => Err(DropReason::HostMacUnknown),
            _ => Err(DropReason::HostUnreachable),
        }
    }
}
