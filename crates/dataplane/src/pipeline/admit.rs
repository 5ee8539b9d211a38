//! Stage 2, admit: what a port may send, and what the bridge learns from it.
//!
//! A pod port is trusted with nothing: the frame's source MAC must be the pod's
//! (`SpoofedMac`), and so must the ARP sender hardware address (ARP cache poisoning);
//! the IPv4 source and the ARP sender IP must be the pod's IP, 0.0.0.0 allowed for ARP
//! probes (`SpoofedIp`). A pod port carries only ARP and IPv4: every other EtherType
//! (IPv6 and its router advertisements, VLAN tags, anything) is dropped
//! (`ForbiddenEthertype`) before it is learned or bridged. The host port is trusted;
//! the host's MAC is learned from what it sends as the host IP. Then the source MAC is
//! learned on the ingress port.
//!
//! From the tunnel ([`admit_tunnel`]): the decapsulated packet's source must lie in
//! the pod subnet of the peer that sent the datagram (its gateway, pods and host port
//! all do), or the packet must be the reply of a flow the load balancer tracks (a
//! backend that is not a pod of that node: a host-network endpoint answers from the
//! node's underlay address); anything else is `SpoofedTunnelSource`.

use super::context::{Ctx, Ip, Verdict};
use crate::drops::{Counters, DropReason};
use crate::tables::mac_table::MacTable;
use crate::tables::ports::Ports;
use crate::types::{Nanos, PortId, PortRole};

/// Anti-spoofing for a pod port; `Continue` when the frame is the pod's own.
#[inline]
fn check_pod(ctx: &Ctx, role: PortRole) -> Verdict {
    let PortRole::Pod { mac, ip } = role else {
        return Verdict::Continue;
    };
    if ctx.src_mac != mac {
        return DropReason::SpoofedMac.into();
    }
    // Parse fills `arp` for every ARP frame and `ip` for every IPv4 frame from a pod
    // (or drops it): neither set means another EtherType.
    if ctx.arp.is_none() && ctx.ip.is_none() {
        return DropReason::ForbiddenEthertype.into();
    }
    if let Some(a) = &ctx.arp {
        if a.source_hardware_addr != mac {
            return DropReason::SpoofedMac.into();
        }
        if a.source_protocol_addr != ip && !a.source_protocol_addr.is_unspecified() {
            return DropReason::SpoofedIp.into();
        }
    }
    if ctx.ip.is_some_and(|p| p.src != ip) {
        return DropReason::SpoofedIp.into();
    }
    Verdict::Continue
}

/// Admits a frame from `port` (role `role`): anti-spoofing, then learning.
#[inline]
pub(crate) fn admit(
    ctx: &Ctx,
    port: PortId,
    role: PortRole,
    ports: &mut Ports,
    macs: &mut MacTable,
    now: Nanos,
    counters: &Counters,
) -> Verdict {
    let v = check_pod(ctx, role);
    if v != Verdict::Continue {
        return v;
    }
    if role == PortRole::Host {
        let sender = match (&ctx.arp, &ctx.ip) {
            (Some(a), _) => Some(a.source_protocol_addr),
            (None, Some(p)) => Some(p.src),
            (None, None) => None,
        };
        ports.learn_host_mac(ctx.src_mac, sender);
    }
    macs.learn(ctx.src_mac, port, now, counters);
    Verdict::Continue
}

/// Admits a decapsulated packet (`ctx` from `parse::from_tunnel`, which recorded the
/// sending peer's pod subnet): its inner source must be in that subnet, or
/// `expected_reply` must say it answers a tracked service flow (asked only then).
#[inline]
pub(crate) fn admit_tunnel(ctx: &Ctx, expected_reply: impl FnOnce(&Ip) -> bool) -> Verdict {
    let Some(ip) = &ctx.ip else {
        return DropReason::SpoofedTunnelSource.into();
    };
    let inside = ctx.peer_subnet.is_some_and(|s| s.contains(ip.src));
    if inside || expected_reply(ip) {
        Verdict::Continue
    } else {
        DropReason::SpoofedTunnelSource.into()
    }
}
