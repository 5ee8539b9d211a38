//! The gateway: the pods' default gateway (`.1` of the node's /24), answering for its
//! own address. Routing is not done here: that is `forward.rs`.
//!
//! It is an internal port of the bridge, not a [`crate::PortId`]: the pipeline hands it
//! frames addressed to the gateway MAC and ARP requests for the gateway IP. For now it
//! answers, in the caller's `out` buffer:
//!
//! - ARP requests for the gateway IP (RFC 826), broadcast or unicast (Linux confirms
//!   neighbours with unicast requests), including RFC 5227 probes from 0.0.0.0;
//! - ICMP echo requests to the gateway IP (RFC 792, RFC 1122 §3.2.2.6): the reply swaps
//!   MACs and IPs, keeps identifier, sequence and data, has TTL 64, a 20-byte IPv4
//!   header (request options such as Record Route are not echoed: a SHOULD we skip)
//!   and fresh checksums.
//!
//! Everything else addressed to the gateway IP is a named drop. Packets sent to the
//! gateway MAC for *other* addresses are transit traffic: the pipeline's forwarding
//! path (`forward.rs`) routes them, locally or through the tunnel. Echo
//! replies are built by [`Gateway::answer_echo`] as a bare IPv4 packet so that the
//! same code answers a pod on this node (virtio-net + Ethernet in front) and a pod on
//! another node (VXLAN + Ethernet in front).
//!
//! The ICMP checksum of a request is verified unless the virtio-net header says it is
//! partial (`NEEDS_CSUM`: the sender left it to "hardware") or already validated
//! (`DATA_VALID`). Replies always carry a zeroed virtio-net header: checksums final,
//! no GSO.

use core::net::Ipv4Addr;

use crate::drops::{drop_for, DropReason};
use crate::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetFrame, EthernetRepr, Icmpv4Packet,
    Icmpv4Repr, IpProtocol, Ipv4Packet, Ipv4Repr, MacAddr, VnetHdrRepr, ETHERNET_HEADER_LEN,
    IPV4_MIN_HEADER_LEN, VNET_HDR_LEN,
};
use tapestry_net::Ipv4Cidr;

/// TTL of packets the gateway originates (Linux's default `ip_default_ttl`).
pub const REPLY_TTL: u8 = 64;

/// The gateway's addresses and the local subnet it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gateway {
    ip: Ipv4Addr,
    mac: MacAddr,
    subnet: Ipv4Cidr,
}

impl Gateway {
    /// A gateway answering as `ip`/`mac` for `subnet`.
    pub fn new(ip: Ipv4Addr, mac: MacAddr, subnet: Ipv4Cidr) -> Self {
        Gateway { ip, mac, subnet }
    }

    /// `true` if `addr` is in the local subnet.
    pub fn is_local(&self, addr: Ipv4Addr) -> bool {
        self.subnet.contains(addr)
    }

    /// Handles ARP sent to the gateway MAC or a broadcast ARP request for the gateway IP.
    /// Writes the reply (virtio-net header + frame) into `out` and returns its length.
    pub fn handle_arp(&self, arp: &ArpRepr, out: &mut [u8]) -> Result<usize, DropReason> {
        match arp.operation {
            ArpOperation::Request if arp.target_protocol_addr == self.ip => {}
            ArpOperation::Request => return Err(DropReason::NotForUs),
            // The gateway sends no requests yet, so replies to it answer nothing.
            _ => return Err(DropReason::UnsupportedProtocol),
        }
        let reply = ArpRepr {
            operation: ArpOperation::Reply,
            source_hardware_addr: self.mac,
            source_protocol_addr: self.ip,
            target_hardware_addr: arp.source_hardware_addr,
            target_protocol_addr: arp.source_protocol_addr,
        };
        let len = VNET_HDR_LEN + ETHERNET_HEADER_LEN + reply.buffer_len();
        let frame = begin_reply(out, len)?;
        let mut eth = EthernetFrame::new_unchecked(frame);
        EthernetRepr {
            src_addr: self.mac,
            dst_addr: arp.source_hardware_addr,
            ethertype: EtherType::Arp,
        }
        .emit(&mut eth);
        reply.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
        Ok(len)
    }

    /// An unsolicited ARP reply from the gateway to one pod (`to`: its MAC and IP),
    /// written into `out` (virtio-net header + frame); returns its length. Sent when
    /// a pod's port is attached: a pod whose neighbour entry for the gateway failed
    /// while no agent answered (an agent restart) takes the gateway's address at once
    /// (RFC 826 merge: Linux updates an existing entry from any ARP from that sender)
    /// instead of at its next ARP retry, up to a second later, and sends what it
    /// queued.
    pub fn announce(&self, to: (MacAddr, Ipv4Addr), out: &mut [u8]) -> Result<usize, DropReason> {
        let reply = ArpRepr {
            operation: ArpOperation::Reply,
            source_hardware_addr: self.mac,
            source_protocol_addr: self.ip,
            target_hardware_addr: to.0,
            target_protocol_addr: to.1,
        };
        let len = VNET_HDR_LEN + ETHERNET_HEADER_LEN + reply.buffer_len();
        let frame = begin_reply(out, len)?;
        let mut eth = EthernetFrame::new_unchecked(frame);
        EthernetRepr {
            src_addr: self.mac,
            dst_addr: to.0,
            ethertype: EtherType::Arp,
        }
        .emit(&mut eth);
        reply.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
        Ok(len)
    }

    /// Handles an IPv4 packet sent to the gateway MAC from a port. `src_mac` is the
    /// frame's source. Returns the length of the reply (virtio-net header + frame)
    /// written into `out`, or why it was dropped. Only packets for the gateway IP are
    /// answered here: the pipeline routes the rest (see [`crate::pipeline`]), so a
    /// call with another destination gets `NotForUs` (local subnet) or `NoRoute`.
    pub fn handle_ipv4(
        &self,
        vnet: &VnetHdrRepr,
        src_mac: MacAddr,
        ip: &Ipv4Packet<&[u8]>,
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        let dst = ip.dst_addr();
        if dst != self.ip {
            return Err(if self.is_local(dst) {
                DropReason::NotForUs
            } else {
                DropReason::NoRoute
            });
        }
        let prefix = VNET_HDR_LEN + ETHERNET_HEADER_LEN;
        let frame = begin_reply(out, prefix)?;
        EthernetRepr {
            src_addr: self.mac,
            dst_addr: src_mac,
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut EthernetFrame::new_unchecked(frame));
        let rest = out.get_mut(prefix..).ok_or(DropReason::ReplyTooLarge)?;
        Ok(prefix + self.answer_echo(vnet, ip, rest)?)
    }

    /// Answers an IPv4 packet addressed to the gateway IP: writes the echo reply IPv4
    /// packet (no link-layer header) at the start of `out` and returns its length.
    /// Used for requests from a port (behind [`Gateway::handle_ipv4`]) and from the
    /// tunnel (the pipeline puts the VXLAN framing in front).
    pub fn answer_echo(
        &self,
        vnet: &VnetHdrRepr,
        ip: &Ipv4Packet<&[u8]>,
        out: &mut [u8],
    ) -> Result<usize, DropReason> {
        if !ip.verify_checksum() {
            return Err(DropReason::BadChecksum);
        }
        if ip.is_fragment() {
            return Err(DropReason::FragmentToGateway);
        }
        if ip.protocol() != IpProtocol::Icmp {
            return Err(DropReason::UnsupportedProtocol);
        }
        let icmp = Icmpv4Packet::new_checked(ip.payload()).map_err(drop_for)?;
        let request = Icmpv4Repr::parse(&icmp).map_err(drop_for)?;
        let Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        } = request
        else {
            return Err(DropReason::UnsupportedProtocol);
        };
        if !vnet.needs_csum() && !vnet.data_valid() && !icmp.verify_checksum() {
            return Err(DropReason::BadChecksum);
        }
        let reply = Icmpv4Repr::EchoReply {
            ident,
            seq_no,
            data,
        };
        let ip_reply = Ipv4Repr {
            src_addr: self.ip,
            dst_addr: ip.src_addr(),
            protocol: IpProtocol::Icmp,
            payload_len: reply.buffer_len(),
            ttl: REPLY_TTL,
            dscp_ecn: ip.dscp_ecn() & !0x03, // keep DSCP, clear ECN
            ident: ip.ident(),
            dont_frag: false,
        };
        let len = IPV4_MIN_HEADER_LEN + reply.buffer_len();
        let buf = out.get_mut(..len).ok_or(DropReason::ReplyTooLarge)?;
        let mut ipv4 = Ipv4Packet::new_unchecked(buf);
        ip_reply
            .emit(&mut ipv4)
            .map_err(|_| DropReason::ReplyTooLarge)?;
        reply.emit(&mut Icmpv4Packet::new_unchecked(ipv4.payload_mut()));
        Ok(len)
    }
}

/// Checks `out` can hold `len` bytes, zeroes the virtio-net header and returns the
/// frame part (`out[VNET_HDR_LEN..len]`).
fn begin_reply(out: &mut [u8], len: usize) -> Result<&mut [u8], DropReason> {
    let buf = out.get_mut(..len).ok_or(DropReason::ReplyTooLarge)?;
    let (vnet, frame) = buf.split_at_mut(VNET_HDR_LEN.min(len));
    vnet.fill(0);
    Ok(frame)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::wire::WireError;

    const GW_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01);
    const POD_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02);

    fn gateway() -> Gateway {
        Gateway::new(
            Ipv4Addr::new(10, 244, 1, 1),
            GW_MAC,
            Ipv4Cidr::new(Ipv4Addr::new(10, 244, 1, 0), 24).unwrap(),
        )
    }

    #[test]
    fn subnet_membership() {
        let r = gateway();
        assert!(r.is_local(Ipv4Addr::new(10, 244, 1, 200)));
        assert!(!r.is_local(Ipv4Addr::new(10, 244, 2, 1)));
        let cidr = |len| Ipv4Cidr::new(Ipv4Addr::new(1, 2, 3, 4), len).unwrap();
        let all = Gateway::new(Ipv4Addr::UNSPECIFIED, GW_MAC, cidr(0));
        assert!(all.is_local(Ipv4Addr::new(8, 8, 8, 8)));
        let host = Gateway::new(Ipv4Addr::UNSPECIFIED, GW_MAC, cidr(32));
        assert!(host.is_local(Ipv4Addr::new(1, 2, 3, 4)));
        assert!(!host.is_local(Ipv4Addr::new(1, 2, 3, 5)));
    }

    #[test]
    fn arp_reply_needs_room() {
        let req = ArpRepr {
            operation: ArpOperation::Request,
            source_hardware_addr: POD_MAC,
            source_protocol_addr: Ipv4Addr::new(10, 244, 1, 2),
            target_hardware_addr: MacAddr::ZERO,
            target_protocol_addr: Ipv4Addr::new(10, 244, 1, 1),
        };
        let mut small = [0u8; 51];
        assert_eq!(
            gateway().handle_arp(&req, &mut small),
            Err(DropReason::ReplyTooLarge)
        );
        let mut out = [0u8; 52];
        assert_eq!(gateway().handle_arp(&req, &mut out), Ok(52));
        let other = ArpRepr {
            target_protocol_addr: Ipv4Addr::new(10, 244, 1, 9),
            ..req
        };
        assert_eq!(
            gateway().handle_arp(&other, &mut out),
            Err(DropReason::NotForUs)
        );
        let reply = ArpRepr {
            operation: ArpOperation::Reply,
            ..req
        };
        assert_eq!(
            gateway().handle_arp(&reply, &mut out),
            Err(DropReason::UnsupportedProtocol)
        );
    }

    #[test]
    fn drop_for_maps_every_error_kind() {
        use crate::wire::Layer;
        assert_eq!(
            drop_for(WireError::Truncated {
                layer: Layer::Ipv4,
                need: 1,
                have: 0
            }),
            DropReason::Truncated
        );
        assert_eq!(
            drop_for(WireError::Malformed {
                layer: Layer::Ipv4,
                what: ""
            }),
            DropReason::BadHeader
        );
        assert_eq!(
            drop_for(WireError::Unsupported {
                layer: Layer::Arp,
                what: ""
            }),
            DropReason::UnsupportedProtocol
        );
    }
}
