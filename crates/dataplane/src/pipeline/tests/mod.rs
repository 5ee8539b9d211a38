//! Tests of the whole pipeline over byte-array frames, with a stepped clock.

#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::cast_possible_truncation
)]

use super::*;
use crate::wire::checksum;
use crate::wire::VNET_HDR_LEN;
use core::net::Ipv4Addr;
use proptest::prelude::*;
use tapestry_net::Ipv4Cidr;

const SEC: Nanos = 1_000_000_000;
const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const GW_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01);
const A_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02);
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const B_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x03);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const HOST_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0xfe);
const HOST: PortId = PortId(0);
const A: PortId = PortId(1);
const B: PortId = PortId(2);
/// The largest frame a TAP hands over (and the request size of the largest echo).
const OUT_LEN: usize = 65_546;

fn config() -> PipelineConfig {
    PipelineConfig::new(
        GW_IP,
        GW_MAC,
        Ipv4Cidr::new(Ipv4Addr::new(10, 244, 1, 0), 24).unwrap(),
    )
}

fn pipeline_with(cfg: PipelineConfig) -> Pipeline {
    let mut p = Pipeline::new(cfg);
    p.add_port(HOST, PortRole::Host);
    p.add_port(
        A,
        PortRole::Pod {
            mac: A_MAC,
            ip: A_IP,
        },
    );
    p.add_port(
        B,
        PortRole::Pod {
            mac: B_MAC,
            ip: B_IP,
        },
    );
    p
}

fn pipeline() -> Pipeline {
    pipeline_with(config())
}

/// A zeroed virtio-net header, then an Ethernet header, then `payload`.
fn frame(dst: MacAddr, src: MacAddr, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let eth = etherparse::Ethernet2Header {
        source: src.0,
        destination: dst.0,
        ether_type: etherparse::EtherType(ethertype),
    };
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&eth.to_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 packet with `options` (a multiple of 4 bytes) and a valid header checksum:
/// identification 0x4321, DF, TTL 64 (built by etherparse).
fn ipv4_opts(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut h = etherparse::Ipv4Header {
        identification: 0x4321,
        dont_fragment: true,
        time_to_live: 64,
        protocol: etherparse::IpNumber(proto),
        source: src.octets(),
        destination: dst.octets(),
        options: options.try_into().unwrap(),
        ..Default::default()
    };
    h.set_payload_len(payload.len()).unwrap();
    h.header_checksum = h.calc_header_checksum();
    let mut p = h.to_bytes().to_vec();
    p.extend_from_slice(payload);
    p
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_opts(src, dst, proto, &[], payload)
}

/// An ICMP echo request with a valid checksum (built by etherparse).
fn echo_request(ident: u16, seq: u16, data: &[u8]) -> Vec<u8> {
    let echo = etherparse::IcmpEchoHeader { id: ident, seq };
    let h =
        etherparse::Icmpv4Header::with_checksum(etherparse::Icmpv4Type::EchoRequest(echo), data);
    let mut m = h.to_bytes().to_vec();
    m.extend_from_slice(data);
    m
}

/// An Ethernet/IPv4 ARP packet with opcode `op` (built by etherparse).
fn arp(op: u16, sha: MacAddr, spa: Ipv4Addr, tha: MacAddr, tpa: Ipv4Addr) -> Vec<u8> {
    etherparse::ArpPacket::new(
        etherparse::ArpHardwareId::ETHERNET,
        etherparse::EtherType::IPV4,
        etherparse::ArpOperation(op),
        &sha.0,
        &spa.octets(),
        &tha.0,
        &tpa.octets(),
    )
    .unwrap()
    .to_bytes()
    .to_vec()
}

/// An IPv4/UDP-ish frame from `src` (a pod or the host) to `dst`.
fn data_frame(dst: MacAddr, src: MacAddr, src_ip: Ipv4Addr, dst_ip: Ipv4Addr) -> Vec<u8> {
    frame(dst, src, 0x0800, &ipv4(src_ip, dst_ip, 17, &[0u8; 12]))
}

/// Runs one frame and returns the action with the reply (if any) copied out.
fn run(p: &mut Pipeline, port: PortId, pkt: &[u8], now: Nanos) -> Result<Outcome, DropReason> {
    let mut buf = pkt.to_vec();
    let mut out = vec![0u8; OUT_BUF_LEN];
    let action = p.process(port, &mut buf, now, &mut out);
    Outcome::of(action)
}

/// An [`Action`] with its bytes copied out (and, for `Forward`, the rewritten input).
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Forward(PortId),
    Flood,
    Reply(Vec<u8>),
    ToPort(PortId, Vec<u8>),
    Tunnel {
        peer: Ipv4Addr,
        flow_hash: u32,
        datagrams: Vec<Vec<u8>>,
    },
}

impl Outcome {
    fn of(action: Action<'_>) -> Result<Outcome, DropReason> {
        match action {
            Action::Forward(to) => Ok(Outcome::Forward(to)),
            Action::Flood => Ok(Outcome::Flood),
            Action::Reply(bytes) => Ok(Outcome::Reply(bytes.to_vec())),
            Action::ToPort(to, bytes) => Ok(Outcome::ToPort(to, bytes.to_vec())),
            Action::Tunnel {
                peer,
                flow_hash,
                datagrams,
                segment_len,
            } => {
                assert!(segment_len > 0);
                let v: Vec<Vec<u8>> = datagrams.chunks(segment_len).map(<[u8]>::to_vec).collect();
                Ok(Outcome::Tunnel {
                    peer,
                    flow_hash,
                    datagrams: v,
                })
            }
            Action::Drop(r) => Err(r),
        }
    }
}
use Outcome::{Flood, Forward, Reply};

fn assert_counters_balance(p: &Pipeline) {
    let s = p.counters().snapshot();
    assert_eq!(
        s.get(Counter::RxFrames),
        s.get(Counter::Forwarded)
            + s.get(Counter::Flooded)
            + s.get(Counter::Replies)
            + s.get(Counter::Delivered)
            + s.get(Counter::TunneledOut)
            + s.dropped,
        "{s:?}"
    );
}

// ---------------------------------------------------------------- bridge

#[test]
fn learns_then_forwards_known_unicast() {
    let mut p = pipeline();
    // B unknown: flood. A is learned on the way.
    assert_eq!(
        run(&mut p, A, &data_frame(B_MAC, A_MAC, A_IP, B_IP), 0),
        Ok(Flood)
    );
    // B answers A: A is known.
    assert_eq!(
        run(&mut p, B, &data_frame(A_MAC, B_MAC, B_IP, A_IP), 1),
        Ok(Forward(A))
    );
    assert_eq!(
        run(&mut p, A, &data_frame(B_MAC, A_MAC, A_IP, B_IP), 2),
        Ok(Forward(B))
    );
    assert_eq!(p.mac_table_len(), 2);
    let s = p.counters().snapshot();
    assert_eq!(
        (
            s.get(Counter::RxFrames),
            s.get(Counter::Forwarded),
            s.get(Counter::Flooded),
            s.get(Counter::Learned)
        ),
        (3, 2, 1, 2)
    );
    let mut entries = p.mac_entries(3);
    entries.sort();
    assert_eq!(entries, vec![(A_MAC, A, 1), (B_MAC, B, 2)]);
}

#[test]
fn broadcast_and_multicast_flood() {
    let mut p = pipeline();
    let bcast = data_frame(
        MacAddr::BROADCAST,
        A_MAC,
        A_IP,
        Ipv4Addr::new(10, 244, 1, 255),
    );
    assert_eq!(run(&mut p, A, &bcast, 0), Ok(Flood));
    let mcast = data_frame(
        MacAddr::new(0x01, 0x00, 0x5e, 0, 0, 0xfb),
        B_MAC,
        B_IP,
        Ipv4Addr::new(224, 0, 0, 251),
    );
    assert_eq!(run(&mut p, B, &mcast, 0), Ok(Flood));
    assert_eq!(p.counters().snapshot().get(Counter::Flooded), 2);
}

#[test]
fn flood_excludes_ingress() {
    let mut p = pipeline();
    p.add_port(PortId(9), PortRole::Host);
    let bcast = data_frame(MacAddr::BROADCAST, A_MAC, A_IP, B_IP);
    assert_eq!(run(&mut p, A, &bcast, 0), Ok(Flood));
    assert_eq!(
        p.flood_targets(A).collect::<Vec<_>>(),
        vec![HOST, B, PortId(9)]
    );
    assert_eq!(
        p.flood_targets(PortId(9)).collect::<Vec<_>>(),
        vec![HOST, A, B]
    );
    // A frame from a pod to its own MAC (learned on its own port) is not flooded back.
    assert_eq!(
        run(&mut p, A, &data_frame(A_MAC, A_MAC, A_IP, A_IP), 1),
        Err(DropReason::HairpinSelf)
    );
}

#[test]
fn unknown_unicast_floods() {
    let mut p = pipeline();
    let unknown = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x77);
    let f = data_frame(unknown, A_MAC, A_IP, Ipv4Addr::new(10, 244, 1, 77));
    assert_eq!(run(&mut p, A, &f, 0), Ok(Flood));
}

#[test]
fn aged_destination_floods_and_is_counted() {
    let mut p = pipeline();
    run(&mut p, B, &data_frame(A_MAC, B_MAC, B_IP, A_IP), 0).unwrap();
    let to_b = data_frame(B_MAC, A_MAC, A_IP, B_IP);
    assert_eq!(run(&mut p, A, &to_b, DEFAULT_MAC_AGING), Ok(Forward(B)));
    assert_eq!(run(&mut p, A, &to_b, DEFAULT_MAC_AGING + 1), Ok(Flood));
    assert_eq!(p.counters().snapshot().get(Counter::AgedOut), 1);
    // B speaks again: re-learned.
    run(
        &mut p,
        B,
        &data_frame(A_MAC, B_MAC, B_IP, A_IP),
        DEFAULT_MAC_AGING + 2,
    )
    .unwrap();
    assert_eq!(run(&mut p, A, &to_b, DEFAULT_MAC_AGING + 3), Ok(Forward(B)));
}

#[test]
fn full_table_counts_and_still_floods() {
    let mut cfg = config();
    cfg.mac_capacity = 2;
    let mut p = pipeline_with(cfg);
    for i in 0..4u8 {
        let src = MacAddr::new(0x0a, 0, 0, 0, 0, i);
        let f = data_frame(MacAddr::BROADCAST, src, A_IP, B_IP);
        assert_eq!(run(&mut p, HOST, &f, 0), Ok(Flood));
    }
    let s = p.counters().snapshot();
    assert_eq!((s.get(Counter::Learned), s.get(Counter::TableFull)), (2, 2));
    assert_eq!(p.mac_table_len(), 2);
    // The unlearned MAC is unknown: frames to it flood.
    let to_3 = data_frame(MacAddr::new(0x0a, 0, 0, 0, 0, 3), A_MAC, A_IP, B_IP);
    assert_eq!(run(&mut p, A, &to_3, 0), Ok(Flood));
}

#[test]
fn removed_and_replaced_ports_are_forgotten() {
    let mut p = pipeline();
    run(&mut p, B, &data_frame(A_MAC, B_MAC, B_IP, A_IP), 0).unwrap();
    let to_b = data_frame(B_MAC, A_MAC, A_IP, B_IP);
    assert_eq!(run(&mut p, A, &to_b, 1), Ok(Forward(B)));
    p.remove_port(B);
    assert_eq!(run(&mut p, A, &to_b, 2), Ok(Flood));
    assert_eq!(
        run(&mut p, B, &data_frame(A_MAC, B_MAC, B_IP, A_IP), 3),
        Err(DropReason::UnknownIngress)
    );
    assert_eq!(
        p.ports().map(|(id, _)| id).collect::<Vec<_>>(),
        vec![HOST, A]
    );

    // Replacing a port forgets what it learned.
    p.add_port(
        B,
        PortRole::Pod {
            mac: B_MAC,
            ip: B_IP,
        },
    );
    run(&mut p, B, &data_frame(A_MAC, B_MAC, B_IP, A_IP), 4).unwrap();
    assert_eq!(run(&mut p, A, &to_b, 5), Ok(Forward(B)));
    p.add_port(B, PortRole::Host);
    assert_eq!(run(&mut p, A, &to_b, 6), Ok(Flood));
    assert_eq!(p.port_role(B), Some(PortRole::Host));
    p.remove_port(PortId(999)); // never attached: nothing happens
    assert_eq!(
        run(&mut p, PortId(999), &to_b, 7),
        Err(DropReason::UnknownIngress)
    );
}

#[test]
fn mac_move_is_followed_and_counted() {
    let mut p = pipeline();
    let host2 = PortId(7);
    p.add_port(host2, PortRole::Host);
    let vm = MacAddr::new(0x0a, 0, 0, 0, 0, 0x42);
    let from_vm = data_frame(MacAddr::BROADCAST, vm, A_IP, B_IP);
    run(&mut p, HOST, &from_vm, 0).unwrap();
    let to_vm = data_frame(vm, A_MAC, A_IP, B_IP);
    assert_eq!(run(&mut p, A, &to_vm, 1), Ok(Forward(HOST)));
    run(&mut p, host2, &from_vm, 2).unwrap();
    assert_eq!(run(&mut p, A, &to_vm, 3), Ok(Forward(host2)));
    assert_eq!(p.counters().snapshot().get(Counter::Moved), 1);
}

#[test]
fn known_destination_on_ingress_port_is_hairpin_drop() {
    let mut p = pipeline();
    let x = MacAddr::new(0x0a, 0, 0, 0, 0, 0x10);
    let y = MacAddr::new(0x0a, 0, 0, 0, 0, 0x11);
    run(
        &mut p,
        HOST,
        &data_frame(MacAddr::BROADCAST, x, A_IP, B_IP),
        0,
    )
    .unwrap();
    assert_eq!(
        run(&mut p, HOST, &data_frame(x, y, A_IP, B_IP), 1),
        Err(DropReason::HairpinSelf)
    );
    assert_eq!(p.counters().drop_count(DropReason::HairpinSelf), 1);
}

#[test]
fn multicast_source_is_dropped_and_not_learned() {
    let mut p = pipeline();
    let f = data_frame(B_MAC, MacAddr::BROADCAST, A_IP, B_IP);
    assert_eq!(run(&mut p, HOST, &f, 0), Err(DropReason::SourceMulticast));
    let f = data_frame(B_MAC, MacAddr::new(0x01, 0, 0x5e, 0, 0, 1), A_IP, B_IP);
    assert_eq!(run(&mut p, HOST, &f, 0), Err(DropReason::SourceMulticast));
    assert_eq!(p.mac_table_len(), 0);
}

// ---------------------------------------------------------------- anti-spoofing

#[test]
fn pod_cannot_spoof_mac_or_ip() {
    let mut p = pipeline();
    // Source MAC of B from A's port.
    let f = data_frame(MacAddr::BROADCAST, B_MAC, B_IP, A_IP);
    assert_eq!(run(&mut p, A, &f, 0), Err(DropReason::SpoofedMac));
    // Right MAC, wrong IP.
    let f = data_frame(MacAddr::BROADCAST, A_MAC, B_IP, A_IP);
    assert_eq!(run(&mut p, A, &f, 0), Err(DropReason::SpoofedIp));
    // Nothing was learned from spoofed frames.
    assert_eq!(p.mac_table_len(), 0);
    // The host port is trusted.
    let f = data_frame(MacAddr::BROADCAST, B_MAC, B_IP, A_IP);
    assert_eq!(run(&mut p, HOST, &f, 0), Ok(Flood));
    let s = p.counters().snapshot();
    assert_eq!(s.drops, vec![("spoofed_mac", 1), ("spoofed_ip", 1)]);
}

#[test]
fn pod_arp_sender_is_checked() {
    let mut p = pipeline();
    let who_has = |sha, spa| {
        frame(
            MacAddr::BROADCAST,
            A_MAC,
            0x0806,
            &arp(1, sha, spa, MacAddr::ZERO, B_IP),
        )
    };
    assert_eq!(run(&mut p, A, &who_has(A_MAC, A_IP), 0), Ok(Flood));
    // RFC 5227 probe: sender IP 0.0.0.0.
    assert_eq!(
        run(&mut p, A, &who_has(A_MAC, Ipv4Addr::UNSPECIFIED), 0),
        Ok(Flood)
    );
    // Claiming B's IP (cache poisoning) or the gateway's.
    assert_eq!(
        run(&mut p, A, &who_has(A_MAC, B_IP), 0),
        Err(DropReason::SpoofedIp)
    );
    assert_eq!(
        run(&mut p, A, &who_has(A_MAC, GW_IP), 0),
        Err(DropReason::SpoofedIp)
    );
    // Sender hardware address that is not the pod's.
    assert_eq!(
        run(&mut p, A, &who_has(B_MAC, A_IP), 0),
        Err(DropReason::SpoofedMac)
    );
}

#[test]
fn pod_may_send_only_arp_and_ipv4() {
    let mut p = pipeline();
    // An IPv6 router advertisement (ICMPv6 type 134) to all-nodes, built by etherparse.
    let ra = {
        let icmp = [134u8, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut h = etherparse::Ipv6Header {
            next_header: etherparse::IpNumber::IPV6_ICMP,
            hop_limit: 255,
            source: [
                0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x08, 0x58, 0x0a, 0xff, 0xfe, 0xf4, 1, 2,
            ],
            destination: [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            ..Default::default()
        };
        h.set_payload_length(icmp.len()).unwrap();
        let mut v = h.to_bytes().to_vec();
        v.extend_from_slice(&icmp);
        v
    };
    let all_nodes = MacAddr::new(0x33, 0x33, 0, 0, 0, 1);
    let cases = [
        frame(all_nodes, A_MAC, 0x86dd, &ra),
        frame(B_MAC, A_MAC, 0x86dd, &[0x60; 40]),
        frame(GW_MAC, A_MAC, 0x86dd, &[0x60; 40]),
        // A VLAN tag in front of IPv4, and an unknown EtherType.
        frame(B_MAC, A_MAC, 0x8100, &[0, 5, 0x08, 0x00, 0x45, 0, 0, 20]),
        frame(MacAddr::BROADCAST, A_MAC, 0x1234, &[0; 46]),
    ];
    for f in &cases {
        assert_eq!(run(&mut p, A, f, 0), Err(DropReason::ForbiddenEthertype));
    }
    assert_eq!(
        p.counters().drop_count(DropReason::ForbiddenEthertype),
        cases.len() as u64
    );
    // Nothing was learned from them: B's frame to A's MAC is flooded, not forwarded.
    let to_a = frame(A_MAC, B_MAC, 0x0800, &ipv4(B_IP, A_IP, 17, &[0; 8]));
    assert_eq!(run(&mut p, B, &to_a, 0), Ok(Flood));
    // ARP and IPv4 still pass; the host port may still send anything.
    assert_eq!(
        run(&mut p, A, &data_frame(B_MAC, A_MAC, A_IP, B_IP), 0),
        Ok(Forward(B))
    );
    let v6_host = frame(all_nodes, HOST_MAC, 0x86dd, &ra);
    assert_eq!(run(&mut p, HOST, &v6_host, 0), Ok(Flood));
    assert_counters_balance(&p);
}

// ---------------------------------------------------------------- router: ARP

/// "Who has 10.244.1.1? Tell 10.244.1.2", broadcast from pod A, after a zero vnet header.
static ARP_REQUEST: [u8; 52] = [
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // virtio-net header
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02, 0x08, 0x06, // eth
    0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // Ethernet/IPv4, request
    0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02, 10, 244, 1, 2, // sender
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 10, 244, 1, 1, // target
];

/// The reply the gateway must send.
static ARP_REPLY: [u8; 52] = [
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // virtio-net header: all zero
    0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02, 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01, 0x08, 0x06, // eth
    0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, // Ethernet/IPv4, reply
    0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01, 10, 244, 1, 1, // sender: the gateway
    0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02, 10, 244, 1, 2, // target: the requester
];

#[test]
fn gateway_answers_arp_field_by_field() {
    let mut p = pipeline();
    let Ok(Reply(r)) = run(&mut p, A, &ARP_REQUEST, 0) else {
        panic!("no reply")
    };
    assert_eq!(r.len(), 52);
    assert_eq!(&r[..10], &[0; 10], "vnet header");
    assert_eq!(&r[10..16], &A_MAC.0, "eth dst: requester");
    assert_eq!(&r[16..22], &GW_MAC.0, "eth src: gateway");
    assert_eq!(&r[22..24], &[0x08, 0x06], "ethertype ARP");
    assert_eq!(&r[24..26], &[0, 1], "htype Ethernet");
    assert_eq!(&r[26..28], &[0x08, 0x00], "ptype IPv4");
    assert_eq!(&r[28..30], &[6, 4], "hlen, plen");
    assert_eq!(&r[30..32], &[0, 2], "op reply");
    assert_eq!(&r[32..38], &GW_MAC.0, "sha");
    assert_eq!(&r[38..42], &GW_IP.octets(), "spa");
    assert_eq!(&r[42..48], &A_MAC.0, "tha");
    assert_eq!(&r[48..52], &A_IP.octets(), "tpa");
    assert_eq!(r, ARP_REPLY);
    let s = p.counters().snapshot();
    assert_eq!((s.get(Counter::Replies), s.get(Counter::Flooded)), (1, 0));
    // The requester was learned.
    assert_eq!(p.mac_entries(0), vec![(A_MAC, A, 0)]);
}

#[test]
fn gateway_answers_unicast_arp_and_probes() {
    let mut p = pipeline();
    // Unicast refresh (Linux NUD probe) to the gateway MAC.
    let mut unicast = ARP_REQUEST;
    unicast[10..16].copy_from_slice(&GW_MAC.0);
    assert_eq!(run(&mut p, A, &unicast, 0), Ok(Reply(ARP_REPLY.to_vec())));
    // RFC 5227 probe from the host port: reply goes to the prober with tpa 0.0.0.0.
    let probe = frame(
        MacAddr::BROADCAST,
        HOST_MAC,
        0x0806,
        &arp(1, HOST_MAC, Ipv4Addr::UNSPECIFIED, MacAddr::ZERO, GW_IP),
    );
    let Ok(Reply(r)) = run(&mut p, HOST, &probe, 0) else {
        panic!("no reply")
    };
    assert_eq!(&r[10..16], &HOST_MAC.0);
    assert_eq!(&r[42..48], &HOST_MAC.0);
    assert_eq!(&r[48..52], &[0, 0, 0, 0]);
    // Unicast ARP to the gateway for someone else, and ARP replies to it, are dropped.
    let other = frame(
        GW_MAC,
        A_MAC,
        0x0806,
        &arp(1, A_MAC, A_IP, MacAddr::ZERO, B_IP),
    );
    assert_eq!(run(&mut p, A, &other, 0), Err(DropReason::NotForUs));
    let reply = frame(GW_MAC, A_MAC, 0x0806, &arp(2, A_MAC, A_IP, GW_MAC, GW_IP));
    assert_eq!(
        run(&mut p, A, &reply, 0),
        Err(DropReason::UnsupportedProtocol)
    );
}

#[test]
fn other_arp_is_bridged() {
    let mut p = pipeline();
    let for_b = frame(
        MacAddr::BROADCAST,
        A_MAC,
        0x0806,
        &arp(1, A_MAC, A_IP, MacAddr::ZERO, B_IP),
    );
    assert_eq!(run(&mut p, A, &for_b, 0), Ok(Flood));
    let is_at = frame(A_MAC, B_MAC, 0x0806, &arp(2, B_MAC, B_IP, A_MAC, A_IP));
    assert_eq!(run(&mut p, B, &is_at, 1), Ok(Forward(A)));
    // Gratuitous ARP (announcement) floods.
    let garp = frame(
        MacAddr::BROADCAST,
        B_MAC,
        0x0806,
        &arp(2, B_MAC, B_IP, MacAddr::BROADCAST, B_IP),
    );
    assert_eq!(run(&mut p, B, &garp, 2), Ok(Flood));
    // Non-Ethernet/IPv4 ARP is not something we bridge.
    let mut weird = arp(1, A_MAC, A_IP, MacAddr::ZERO, B_IP);
    weird[1] = 6;
    let f = frame(MacAddr::BROADCAST, HOST_MAC, 0x0806, &weird);
    assert_eq!(
        run(&mut p, HOST, &f, 3),
        Err(DropReason::UnsupportedProtocol)
    );
}

// ---------------------------------------------------------------- router: ICMP

fn echo_frame_from_a(data: &[u8]) -> Vec<u8> {
    frame(
        GW_MAC,
        A_MAC,
        0x0800,
        &ipv4(A_IP, GW_IP, 1, &echo_request(0x0b0c, 7, data)),
    )
}

/// Checks `r` is a well-formed echo reply from the gateway to A carrying `data`.
fn assert_echo_reply(r: &[u8], data: &[u8]) {
    assert_eq!(&r[..10], &[0; 10], "vnet header zeroed");
    assert_eq!(&r[10..16], &A_MAC.0);
    assert_eq!(&r[16..22], &GW_MAC.0);
    assert_eq!(&r[22..24], &[0x08, 0x00]);
    let ip = &r[24..];
    assert_eq!(ip[0], 0x45, "no options in the reply");
    assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len());
    assert_eq!(ip[8], 64, "TTL");
    assert_eq!(ip[9], 1, "ICMP");
    assert_eq!(&ip[12..16], &GW_IP.octets());
    assert_eq!(&ip[16..20], &A_IP.octets());
    assert!(checksum::verify(&ip[..20]), "IPv4 header checksum");
    let icmp = &ip[20..];
    assert_eq!(&icmp[..2], &[0, 0], "echo reply, code 0");
    assert_eq!(&icmp[4..8], &[0x0b, 0x0c, 0, 7], "ident and sequence kept");
    assert_eq!(&icmp[8..], data);
    // Recompute from scratch with the field zeroed.
    let mut zeroed = icmp.to_vec();
    zeroed[2] = 0;
    zeroed[3] = 0;
    assert_eq!(
        u16::from_be_bytes([icmp[2], icmp[3]]),
        checksum::checksum(&zeroed)
    );
}

#[test]
fn gateway_answers_echo_with_valid_checksums() {
    let mut p = pipeline();
    for data in [&b""[..], b"x", b"abcdefgh", &[0xa5; 1472][..]] {
        let Ok(Reply(r)) = run(&mut p, A, &echo_frame_from_a(data), 0) else {
            panic!("no reply for {} bytes", data.len())
        };
        assert_echo_reply(&r, data);
    }
    assert_eq!(p.counters().snapshot().get(Counter::Replies), 4);
}

#[test]
fn gateway_answers_largest_echo_that_fits_the_buffers() {
    let mut p = pipeline();
    // Request frame = the caller's whole read buffer (65,546 bytes).
    let data = vec![0x5a; OUT_LEN - VNET_HDR_LEN - 14 - 20 - 8];
    let Ok(Reply(r)) = run(&mut p, A, &echo_frame_from_a(&data), 0) else {
        panic!("no reply")
    };
    assert_eq!(r.len(), OUT_LEN);
    assert_echo_reply(&r, &data);
    // With a smaller `out` the reply does not fit: named drop.
    let mut pkt = echo_frame_from_a(&data);
    let mut small = vec![0u8; 1000];
    assert_eq!(
        p.process(A, &mut pkt, 0, &mut small),
        Action::Drop(DropReason::ReplyTooLarge)
    );
}

#[test]
fn echo_with_ip_options_and_padding() {
    let mut p = pipeline();
    let nops = [1, 1, 1, 1, 1, 1, 1, 0]; // IHL 7
    let mut payload = ipv4_opts(A_IP, GW_IP, 1, &nops, &echo_request(0x0b0c, 7, b"opts"));
    payload.extend_from_slice(&[0xee; 6]); // Ethernet padding after the datagram
    let f = frame(GW_MAC, A_MAC, 0x0800, &payload);
    let Ok(Reply(r)) = run(&mut p, A, &f, 0) else {
        panic!("no reply")
    };
    assert_echo_reply(&r, b"opts");
}

#[test]
fn partial_checksum_is_not_verified() {
    let mut p = pipeline();
    let mut f = echo_frame_from_a(b"partial");
    // Corrupt the ICMP checksum, as a partial (pseudo) sum would look.
    let icmp_csum = VNET_HDR_LEN + 14 + 20 + 2;
    f[icmp_csum] ^= 0xff;
    assert_eq!(run(&mut p, A, &f, 0), Err(DropReason::BadChecksum));
    // NEEDS_CSUM, csum_start at the ICMP header, offset 2.
    f[0] = crate::wire::VNET_HDR_F_NEEDS_CSUM;
    f[6..8].copy_from_slice(&34u16.to_le_bytes());
    f[8..10].copy_from_slice(&2u16.to_le_bytes());
    let Ok(Reply(r)) = run(&mut p, A, &f, 0) else {
        panic!("no reply")
    };
    assert_echo_reply(&r, b"partial");
}

#[test]
fn gateway_drops_what_it_does_not_serve() {
    let mut p = pipeline();
    let to_gw = |proto: u8, l4: &[u8]| frame(GW_MAC, A_MAC, 0x0800, &ipv4(A_IP, GW_IP, proto, l4));
    // UDP and TCP to the gateway.
    assert_eq!(
        run(&mut p, A, &to_gw(17, &[0; 8]), 0),
        Err(DropReason::UnsupportedProtocol)
    );
    assert_eq!(
        run(&mut p, A, &to_gw(6, &[0; 20]), 0),
        Err(DropReason::UnsupportedProtocol)
    );
    // ICMP that is not an echo request (an echo reply, a timestamp).
    let mut reply = echo_request(1, 1, b"");
    reply[0] = 0;
    assert_eq!(
        run(&mut p, A, &to_gw(1, &reply), 0),
        Err(DropReason::UnsupportedProtocol)
    );
    // Truncated ICMP (under 8 bytes).
    assert_eq!(
        run(&mut p, A, &to_gw(1, &[8, 0, 0]), 0),
        Err(DropReason::Truncated)
    );
    // Outside the subnet, no tunnel configured: no route, as before tunnels existed.
    let remote = frame(
        GW_MAC,
        A_MAC,
        0x0800,
        &ipv4(A_IP, Ipv4Addr::new(10, 244, 2, 5), 17, &[0; 8]),
    );
    assert_eq!(run(&mut p, A, &remote, 0), Err(DropReason::NoRoute));
    // Inside the subnet but not the gateway: routed to the pod (see routing tests).
    let local = frame(GW_MAC, A_MAC, 0x0800, &ipv4(A_IP, B_IP, 17, &[0; 8]));
    assert_eq!(run(&mut p, A, &local, 0), Ok(Forward(B)));
    // IPv6 to the gateway MAC: from the host port, the gateway does not serve it (a
    // pod may not send it at all: `pod_may_send_only_arp_and_ipv4`).
    let v6 = frame(GW_MAC, HOST_MAC, 0x86dd, &[0x60; 40]);
    assert_eq!(
        run(&mut p, HOST, &v6, 0),
        Err(DropReason::UnsupportedProtocol)
    );
    // A fragment of an echo request.
    let mut frag = ipv4(A_IP, GW_IP, 1, &echo_request(1, 1, b"frag"));
    frag[6] = 0x20; // MF
    let sum = {
        frag[10] = 0;
        frag[11] = 0;
        checksum::checksum(&frag[..20])
    };
    frag[10..12].copy_from_slice(&sum.to_be_bytes());
    let f = frame(GW_MAC, A_MAC, 0x0800, &frag);
    assert_eq!(run(&mut p, A, &f, 0), Err(DropReason::FragmentToGateway));
    // Bad IPv4 header checksum.
    let mut bad = echo_frame_from_a(b"x");
    bad[VNET_HDR_LEN + 14 + 10] ^= 1;
    assert_eq!(run(&mut p, A, &bad, 0), Err(DropReason::BadChecksum));
    assert_counters_balance(&p);
}

// ---------------------------------------------------------------- malformed input

#[test]
fn malformed_headers_are_named() {
    let mut p = pipeline();
    // IPv4 version 6 in an IPv4 EtherType frame from a pod.
    let mut f = data_frame(B_MAC, A_MAC, A_IP, B_IP);
    f[VNET_HDR_LEN + 14] = 0x65;
    assert_eq!(run(&mut p, A, &f, 0), Err(DropReason::BadHeader));
    // IHL 4.
    f[VNET_HDR_LEN + 14] = 0x44;
    assert_eq!(run(&mut p, A, &f, 0), Err(DropReason::BadHeader));
    // Total length shorter than the header.
    let mut f = data_frame(B_MAC, A_MAC, A_IP, B_IP);
    f[VNET_HDR_LEN + 14 + 3] = 10;
    assert_eq!(run(&mut p, A, &f, 0), Err(DropReason::BadHeader));
    // Total length beyond the frame.
    f[VNET_HDR_LEN + 14 + 2] = 0x05;
    assert_eq!(run(&mut p, A, &f, 0), Err(DropReason::Truncated));
    // Unknown vnet flag; GSO type without size; checksum offset past the frame.
    let mut f = data_frame(B_MAC, A_MAC, A_IP, B_IP);
    f[0] = 0x10;
    assert_eq!(run(&mut p, A, &f, 0), Err(DropReason::BadVnetHeader));
    f[0] = 0;
    f[1] = 1;
    assert_eq!(run(&mut p, A, &f, 0), Err(DropReason::BadVnetHeader));
    f[1] = 0;
    f[0] = 1;
    f[6..8].copy_from_slice(&60000u16.to_le_bytes());
    assert_eq!(run(&mut p, A, &f, 0), Err(DropReason::BadVnetHeader));
}

#[test]
fn every_truncation_is_a_named_drop() {
    let frames: Vec<(PortId, Vec<u8>)> = vec![
        (A, ARP_REQUEST.to_vec()),
        (A, echo_frame_from_a(b"0123456789")),
        (A, data_frame(B_MAC, A_MAC, A_IP, B_IP)),
        (
            A,
            frame(
                GW_MAC,
                A_MAC,
                0x0800,
                &ipv4_opts(A_IP, GW_IP, 1, &[1, 1, 1, 0], &echo_request(1, 2, b"ab")),
            ),
        ),
        (
            HOST,
            frame(
                GW_MAC,
                HOST_MAC,
                0x0800,
                &ipv4(
                    Ipv4Addr::new(10, 244, 1, 254),
                    GW_IP,
                    1,
                    &echo_request(3, 4, b""),
                ),
            ),
        ),
    ];
    for (port, full) in frames {
        let mut p = pipeline();
        assert!(
            run(&mut p, port, &full, 0).is_ok(),
            "the full frame must pass: {full:02x?}"
        );
        for len in 0..full.len() {
            let mut p = pipeline();
            let got = run(&mut p, port, &full[..len], 0);
            assert_eq!(got, Err(DropReason::Truncated), "len {len} of {full:02x?}");
            assert_counters_balance(&p);
        }
    }
}

#[test]
fn counters_balance_and_drop_counts_match() {
    let mut p = pipeline();
    run(&mut p, A, &ARP_REQUEST, 0).ok();
    run(&mut p, A, &ARP_REQUEST[..3], 0).ok();
    run(&mut p, PortId(50), &ARP_REQUEST, 0).ok();
    run(&mut p, B, &data_frame(A_MAC, B_MAC, B_IP, A_IP), 0).ok();
    run(&mut p, A, &data_frame(B_MAC, A_MAC, A_IP, B_IP), 0).ok();
    assert_counters_balance(&p);
    let c = p.counters();
    assert_eq!(c.drop_count(DropReason::Truncated), 1);
    assert_eq!(c.drop_count(DropReason::UnknownIngress), 1);
    // The Arc is shared: a clone sees the same numbers.
    let shared = Arc::clone(c);
    assert_eq!(shared.snapshot().get(Counter::RxFrames), 5);
}

#[test]
fn config_and_ports_are_reported() {
    let p = pipeline();
    assert_eq!(p.config().gateway_ip, GW_IP);
    assert_eq!(p.config().mac_capacity, DEFAULT_MAC_CAPACITY);
    assert_eq!(p.config().mac_aging, 300 * SEC);
    let ports: Vec<_> = p.ports().collect();
    assert_eq!(ports.len(), 3);
    assert_eq!(ports[0], (HOST, PortRole::Host));
}

// ---------------------------------------------------------------- properties

/// A frame that gets past the Ethernet header often: a valid zero vnet header, a
/// destination and source drawn from the interesting MACs, an interesting EtherType,
/// and arbitrary bytes after.
fn semi_valid_frame() -> impl Strategy<Value = Vec<u8>> {
    let macs = prop::sample::select(vec![A_MAC, B_MAC, GW_MAC, HOST_MAC, MacAddr::BROADCAST]);
    let types = prop::sample::select(vec![0x0800u16, 0x0806, 0x86dd, 0x1234]);
    (
        macs.clone(),
        macs,
        types,
        prop::collection::vec(any::<u8>(), 0..120),
    )
        .prop_map(|(dst, src, et, rest)| frame(dst, src, et, &rest))
}

/// A structurally valid IPv4 or ARP frame with a few bytes flipped.
fn mutated_frame() -> impl Strategy<Value = Vec<u8>> {
    let base = prop::sample::select(vec![
        ARP_REQUEST.to_vec(),
        echo_frame_from_a(b"hello"),
        data_frame(B_MAC, A_MAC, A_IP, B_IP),
    ]);
    (
        base,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    )
        .prop_map(|(mut f, flips)| {
            for (i, v) in flips {
                let at = i.index(f.len());
                f[at] = v;
            }
            f
        })
}

fn any_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        semi_valid_frame(),
        mutated_frame(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn never_panics_nor_sends_back_out_of_ingress(
        inputs in prop::collection::vec((0u16..5, any_frame(), 0u64..1_000 * SEC), 1..20)
    ) {
        let mut p = pipeline();
        p.add_port(PortId(3), PortRole::Host);
        let mut out = vec![0u8; OUT_BUF_LEN];
        for (port, mut pkt, now) in inputs {
            let ingress = PortId(port);
            let attached = p.port_role(ingress).is_some();
            match p.process(ingress, &mut pkt, now, &mut out) {
                Action::Forward(to) => {
                    prop_assert_ne!(to, ingress);
                    prop_assert!(p.port_role(to).is_some());
                }
                Action::Flood => prop_assert!(attached),
                Action::Reply(bytes) => {
                    prop_assert!(attached);
                    prop_assert!(bytes.len() >= VNET_HDR_LEN + 14);
                    prop_assert!(bytes[..VNET_HDR_LEN].iter().all(|b| *b == 0));
                }
                Action::ToPort(..) | Action::Tunnel { .. } => {
                    prop_assert!(false, "no tunnel configured, nothing to deliver from it");
                }
                Action::Drop(reason) => prop_assert!(DropReason::ALL.contains(&reason)),
            }
        }
        assert_counters_balance(&p);
    }
}

mod routing;

mod lb;

mod policy;

mod restart;
