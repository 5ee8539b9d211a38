//! Service load balancer tests: DNAT, replies on every path (bridged, routed, tunnel,
//! hairpin), connection tracking with a stepped clock, rejections, checksums full and
//! partial — every header checked from the bytes.

use super::routing::{
    assert_ip_icmp_error, assert_vxlan, datagrams_of, node1, node2, tunnel_in, C, C_IP, C_MAC,
    GW2_MAC, N1_UNDERLAY, N2_UNDERLAY, VTEP1, VTEP2,
};
use super::*;
use crate::codec::vxlan::complete_partial_checksum;
use crate::tables::service_table::{Affinity, ServiceEntry, ServiceTable};
use crate::types::{Backend, L4Proto};
use crate::wire::tcp::{pseudo_header_partial, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crate::wire::{TcpPacket, UdpPacket, VNET_HDR_F_NEEDS_CSUM, VNET_HDR_GSO_TCPV4};
use crate::FlowState;

pub(super) const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const D: PortId = PortId(3);
const D_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
const D_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x04);

fn be(ip: Ipv4Addr, port: u16) -> Backend {
    Backend { ip, port }
}

fn svc(vip: Ipv4Addr, port: u16, proto: L4Proto, backends: Vec<Backend>) -> ServiceEntry {
    ServiceEntry {
        name: format!("default/s:{port}"),
        vip,
        port,
        proto,
        backends,
        affinity: Affinity::None,
    }
}

fn install(p: &Pipeline, entries: Vec<ServiceEntry>) {
    p.services()
        .store(Arc::new(ServiceTable::build(entries).unwrap()));
}

/// Pods A, B, D and the host; services: VIP:53/UDP → B:5353, VIP:80/TCP → B:8080,
/// VIP:8080/TCP → A:80 (hairpin for A), EMPTY_VIP:80/TCP and :53/UDP → nobody.
fn lb_node_with(cfg: impl FnOnce(&mut PipelineConfig)) -> Pipeline {
    let mut c = config();
    cfg(&mut c);
    let mut p = pipeline_with(c);
    p.add_port(
        D,
        PortRole::Pod {
            mac: D_MAC,
            ip: D_IP,
        },
    );
    install(
        &p,
        vec![
            svc(VIP, 53, L4Proto::Udp, vec![be(B_IP, 5353)]),
            svc(VIP, 80, L4Proto::Tcp, vec![be(B_IP, 8080)]),
            svc(VIP, 8080, L4Proto::Tcp, vec![be(A_IP, 80)]),
            svc(EMPTY_VIP, 80, L4Proto::Tcp, vec![]),
            svc(EMPTY_VIP, 53, L4Proto::Udp, vec![]),
        ],
    );
    p
}

pub(super) fn lb_node() -> Pipeline {
    lb_node_with(|_| {})
}

/// A TCP header with the flags byte `flags` (`TCP_FIN` … `TCP_CWR`), window 0xffff.
fn tcp_header(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8) -> etherparse::TcpHeader {
    let mut t = etherparse::TcpHeader::new(sport, dport, seq, 0xffff);
    t.acknowledgment_number = ack;
    [t.fin, t.syn, t.rst, t.psh, t.ack, t.urg, t.ece, t.cwr] =
        core::array::from_fn(|i| flags & (1 << i) != 0);
    t
}

/// An IPv4/TCP packet with full checksums (20-byte TCP header, no options), the
/// TCP header and checksum from etherparse.
#[allow(clippy::too_many_arguments)]
pub(super) fn tcp(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut t = tcp_header(sport, dport, seq, ack, flags);
    t.checksum = t
        .calc_checksum_ipv4_raw(src.octets(), dst.octets(), data)
        .unwrap();
    let mut seg = t.to_bytes().to_vec();
    seg.extend_from_slice(data);
    ipv4(src, dst, 6, &seg)
}

/// An IPv4/UDP packet with a full checksum (the UDP header from etherparse).
pub(super) fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = etherparse::UdpHeader {
        source_port: sport,
        destination_port: dport,
        length: (8 + data.len()) as u16,
        checksum: 0,
    };
    u.checksum = u
        .calc_checksum_ipv4_raw(src.octets(), dst.octets(), data)
        .unwrap();
    let mut d = u.to_bytes().to_vec();
    d.extend_from_slice(data);
    ipv4(src, dst, 17, &d)
}

pub(super) fn to_gw(src_mac: MacAddr, ip: &[u8]) -> Vec<u8> {
    frame(GW_MAC, src_mac, 0x0800, ip)
}

/// Runs a frame; returns the outcome and the (possibly rewritten) input.
pub(super) fn go(
    p: &mut Pipeline,
    port: PortId,
    pkt: &[u8],
    now: Nanos,
) -> (Result<Outcome, DropReason>, Vec<u8>) {
    let mut buf = pkt.to_vec();
    let mut out = vec![0u8; OUT_BUF_LEN];
    let o = Outcome::of(p.process(port, &mut buf, now, &mut out));
    (o, buf)
}

/// Checks the IPv4 header and the TCP/UDP checksum of `ip`, returns
/// `(src, sport, dst, dport)`.
pub(super) fn endpoints(ip: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let p = Ipv4Packet::new_checked(ip).unwrap();
    assert!(p.verify_checksum(), "IPv4 checksum");
    let (s, d) = (p.src_addr(), p.dst_addr());
    let l4 = p.payload();
    let ok = match p.protocol() {
        crate::wire::IpProtocol::Tcp => TcpPacket::new_checked(l4).unwrap().verify_checksum(s, d),
        _ => UdpPacket::new_checked(l4).unwrap().verify_checksum(s, d),
    };
    assert!(ok, "L4 checksum");
    let ports = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    (s, ports(0), d, ports(2))
}

/// The IPv4 packet of a virtio-net + Ethernet frame, after checking its MACs.
pub(super) fn ip_of(f: &[u8], dst: MacAddr, src: MacAddr) -> &[u8] {
    assert_eq!(&f[10..16], &dst.0, "destination MAC");
    assert_eq!(&f[16..22], &src.0, "source MAC");
    &f[24..]
}

// ---------------------------------------------------------------- same node

#[test]
fn udp_dnat_to_a_local_backend_and_bridged_reply() {
    let mut p = lb_node();
    let q = to_gw(A_MAC, &udp(A_IP, 40000, VIP, 53, b"query"));
    let (o, buf) = go(&mut p, A, &q, SEC);
    assert_eq!(o, Ok(Forward(B)));
    let ip = ip_of(&buf, B_MAC, GW_MAC);
    assert_eq!(endpoints(ip), (A_IP, 40000, B_IP, 5353));
    assert_eq!(ip[8], 63, "routed: TTL − 1");
    // B answers A's MAC directly: bridged, un-NATed in place, TTL untouched.
    let r = frame(
        A_MAC,
        B_MAC,
        0x0800,
        &udp(B_IP, 5353, A_IP, 40000, b"answer"),
    );
    let (o, buf) = go(&mut p, B, &r, 2 * SEC);
    assert_eq!(o, Ok(Forward(A)));
    let ip = ip_of(&buf, A_MAC, B_MAC);
    assert_eq!(endpoints(ip), (VIP, 53, A_IP, 40000));
    assert_eq!(ip[8], 64);
    let s = p.counters().snapshot();
    assert_eq!(
        (
            s.get(Counter::LbNewFlows),
            s.get(Counter::LbEstablished),
            s.get(Counter::LbReplies)
        ),
        (1, 0, 1)
    );
    let flows = p.flows(3 * SEC);
    assert_eq!(flows.len(), 1);
    let f = flows[0];
    assert_eq!(f.client, SocketAddrV4::new(A_IP, 40000));
    assert_eq!(f.vip, SocketAddrV4::new(VIP, 53));
    assert_eq!(f.backend, be(B_IP, 5353));
    assert_eq!(
        (f.proto, f.state, f.age),
        (L4Proto::Udp, FlowState::Udp, 2 * SEC)
    );
    assert_eq!(f.expires_in, 29 * SEC, "refreshed by the reply");
    // Unrelated bridged traffic is left alone.
    let other = frame(A_MAC, B_MAC, 0x0800, &udp(B_IP, 5353, A_IP, 40001, b"x"));
    let (_, buf) = go(&mut p, B, &other, 3 * SEC);
    assert_eq!(&buf[10..], &other[10..]);
    assert_counters_balance(&p);
}

/// A resolver's A and AAAA queries from one socket, back to back: both reach one
/// backend and both replies are un-NATed. (The Kubernetes 5-second DNS delay is a
/// conntrack insert race between CPUs; one worker owns this table, see `conntrack`.)
#[test]
fn two_udp_queries_back_to_back_share_one_flow() {
    let mut p = lb_node();
    install(
        &p,
        vec![svc(VIP, 53, L4Proto::Udp, vec![be(B_IP, 53), be(D_IP, 53)])],
    );
    let mut backends = std::collections::BTreeSet::new();
    for sport in [33000u16, 33001, 33002, 33003] {
        let chosen = p
            .services()
            .load()
            .pick(VIP, 53, L4Proto::Udp, (A_IP, sport))
            .unwrap();
        backends.insert(chosen.ip);
        let (port, mac) = if chosen.ip == B_IP {
            (B, B_MAC)
        } else {
            (D, D_MAC)
        };
        for q in [&b"A?"[..], b"AAAA?"] {
            let (o, buf) = go(&mut p, A, &to_gw(A_MAC, &udp(A_IP, sport, VIP, 53, q)), SEC);
            assert_eq!(o, Ok(Forward(port)));
            assert_eq!(
                endpoints(ip_of(&buf, mac, GW_MAC)),
                (A_IP, sport, chosen.ip, 53)
            );
        }
        for a in [&b"A!"[..], b"AAAA!"] {
            let r = frame(A_MAC, mac, 0x0800, &udp(chosen.ip, 53, A_IP, sport, a));
            let (o, buf) = go(&mut p, port, &r, SEC);
            assert_eq!(o, Ok(Forward(A)));
            assert_eq!(endpoints(ip_of(&buf, A_MAC, mac)), (VIP, 53, A_IP, sport));
        }
    }
    assert_eq!(backends.len(), 2, "both backends used over four sockets");
    let s = p.counters().snapshot();
    assert_eq!(
        (
            s.get(Counter::LbNewFlows),
            s.get(Counter::LbEstablished),
            s.get(Counter::LbReplies)
        ),
        (4, 4, 8)
    );
    assert_eq!(p.conntrack_len(), 4);
}

#[test]
fn hairpin_is_masqueraded_to_the_gateway() {
    let mut p = lb_node();
    let syn = to_gw(A_MAC, &tcp(A_IP, 50000, VIP, 8080, 7, 0, TCP_SYN, b""));
    let (o, buf) = go(&mut p, A, &syn, SEC);
    assert_eq!(o, Ok(Forward(A)), "back out of its own port");
    assert_eq!(
        endpoints(ip_of(&buf, A_MAC, GW_MAC)),
        (GW_IP, 50000, A_IP, 80)
    );
    // A (as the backend) answers the gateway IP: un-NATed before the gateway's own
    // handling, then routed back to A.
    let synack = to_gw(
        A_MAC,
        &tcp(A_IP, 80, GW_IP, 50000, 99, 8, TCP_SYN | TCP_ACK, b""),
    );
    let (o, buf) = go(&mut p, A, &synack, SEC);
    assert_eq!(o, Ok(Forward(A)));
    assert_eq!(
        endpoints(ip_of(&buf, A_MAC, GW_MAC)),
        (VIP, 8080, A_IP, 50000)
    );
    assert_eq!(p.flows(SEC)[0].state, FlowState::Established);
    assert_eq!(p.flows(SEC)[0].nat_source, SocketAddrV4::new(GW_IP, 50000));
    // Without a flow, TCP to the gateway IP is still the gateway's to refuse.
    let stray = to_gw(A_MAC, &tcp(A_IP, 80, GW_IP, 50001, 1, 0, TCP_ACK, b""));
    assert_eq!(
        go(&mut p, A, &stray, SEC).0,
        Err(DropReason::UnsupportedProtocol)
    );
}

/// One UDP socket talking to two services that share a backend port: the second
/// flow's reply key would collide with the first's, so its source port is remapped.
#[test]
fn colliding_reply_keys_get_another_source_port() {
    let mut p = lb_node();
    let other_vip = Ipv4Addr::new(10, 96, 0, 11);
    install(
        &p,
        vec![
            svc(VIP, 53, L4Proto::Udp, vec![be(B_IP, 5353)]),
            svc(other_vip, 53, L4Proto::Udp, vec![be(B_IP, 5353)]),
        ],
    );
    let (_, one) = go(
        &mut p,
        A,
        &to_gw(A_MAC, &udp(A_IP, 4000, VIP, 53, b"1")),
        SEC,
    );
    let (_, two) = go(
        &mut p,
        A,
        &to_gw(A_MAC, &udp(A_IP, 4000, other_vip, 53, b"2")),
        SEC,
    );
    assert_eq!(endpoints(&one[24..]).1, 4000);
    let remapped = endpoints(&two[24..]).1;
    assert_ne!(remapped, 4000);
    for (port, vip) in [(4000, VIP), (remapped, other_vip)] {
        let r = frame(A_MAC, B_MAC, 0x0800, &udp(B_IP, 5353, A_IP, port, b"r"));
        let (_, buf) = go(&mut p, B, &r, SEC);
        assert_eq!(endpoints(&buf[24..]), (vip, 53, A_IP, 4000));
    }
}

/// `dig -b 0.0.0.0#41002 @VIP`, then `dig -b 0.0.0.0#41002 @<the backend it chose>`
/// while the first flow lives: the direct query's reply key (backend → client:41002)
/// is the service flow's. As Linux's NAT clash resolution does, the later, direct
/// flow is tracked with another source port; both conversations get their answers
/// from the address they asked.
#[test]
fn direct_udp_flow_on_a_service_flows_reply_key_gets_another_source_port() {
    let mut p = lb_node();
    let lb_query = to_gw(A_MAC, &udp(A_IP, 41002, VIP, 53, b"via the service"));
    let (o, buf) = go(&mut p, A, &lb_query, SEC);
    assert_eq!(o, Ok(Forward(B)));
    assert_eq!(
        endpoints(ip_of(&buf, B_MAC, GW_MAC)),
        (A_IP, 41002, B_IP, 5353)
    );
    let r_lb = frame(A_MAC, B_MAC, 0x0800, &udp(B_IP, 5353, A_IP, 41002, b"s"));
    let (o, buf) = go(&mut p, B, &r_lb, SEC);
    assert_eq!(o, Ok(Forward(A)));
    assert_eq!(endpoints(ip_of(&buf, A_MAC, B_MAC)), (VIP, 53, A_IP, 41002));
    // The same socket port, straight to the backend: bridged, source port remapped.
    let direct = frame(
        B_MAC,
        A_MAC,
        0x0800,
        &udp(A_IP, 41002, B_IP, 5353, b"direct"),
    );
    let (o, buf) = go(&mut p, A, &direct, 2 * SEC);
    assert_eq!(o, Ok(Forward(B)));
    let (src, remapped, dst, dport) = endpoints(ip_of(&buf, B_MAC, A_MAC));
    assert_eq!((src, dst, dport), (A_IP, B_IP, 5353));
    assert_ne!(remapped, 41002, "the reply key backend → A:41002 is taken");
    assert_eq!(&buf[24 + 28..], b"direct");
    // A second direct datagram keeps the port it was given.
    let (_, buf) = go(&mut p, A, &direct, 2 * SEC);
    assert_eq!(endpoints(&buf[24..]), (A_IP, remapped, B_IP, 5353));
    // B's port unreachable about it quotes A's datagram as A sent it.
    let err = frame(
        A_MAC,
        B_MAC,
        0x0800,
        &ipv4(B_IP, A_IP, 1, &icmp_error([3, 3], &buf[24..])),
    );
    let (o, e) = go(&mut p, B, &err, 2 * SEC);
    assert_eq!(o, Ok(Forward(A)));
    let quote = icmp_quote(ip_of(&e, A_MAC, B_MAC), B_IP, A_IP, [3, 3]);
    assert_eq!(endpoints(quote), (A_IP, 41002, B_IP, 5353));
    // The backend answers each conversation: each reply reaches A from the address
    // A asked.
    let r_direct = frame(A_MAC, B_MAC, 0x0800, &udp(B_IP, 5353, A_IP, remapped, b"d"));
    let (o, buf) = go(&mut p, B, &r_direct, 3 * SEC);
    assert_eq!(o, Ok(Forward(A)));
    assert_eq!(
        endpoints(ip_of(&buf, A_MAC, B_MAC)),
        (B_IP, 5353, A_IP, 41002)
    );
    let (o, buf) = go(&mut p, B, &r_lb, 3 * SEC);
    assert_eq!(o, Ok(Forward(A)));
    assert_eq!(endpoints(ip_of(&buf, A_MAC, B_MAC)), (VIP, 53, A_IP, 41002));
    // The service flow goes on as before.
    let (_, buf) = go(&mut p, A, &lb_query, 4 * SEC);
    assert_eq!(endpoints(&buf[24..]), (A_IP, 41002, B_IP, 5353));
    let s = p.counters().snapshot();
    assert_eq!(
        (
            s.get(Counter::LbNewFlows),
            s.get(Counter::LbClashRemaps),
            s.get(Counter::LbReplies)
        ),
        (1, 1, 3)
    );
    assert_eq!(p.conntrack_len(), 2);
    // Once both have expired, a direct datagram from that port is left alone.
    let later = 4 * SEC + p.config().conntrack_timeouts.udp;
    let (_, buf) = go(&mut p, A, &direct, later);
    assert_eq!(&buf[10..], &direct[10..]);
    assert_eq!(p.conntrack_len(), 0);
    assert_counters_balance(&p);
}

/// The same over TCP, across nodes: A keeps a connection through VIP:80 to C:8080
/// open and opens a second one from the same port straight to C:8080 (routed, into
/// the tunnel). The direct connection is remapped at node 1; segments of both
/// connections, either way, keep their own addresses.
#[test]
fn direct_tcp_connection_on_a_service_flows_reply_key_across_nodes() {
    let mut n1 = node1();
    let mut n2 = node2();
    install(&n1, vec![svc(VIP, 80, L4Proto::Tcp, vec![be(C_IP, 8080)])]);
    // Sends an IPv4 packet from A to node 1's gateway; returns what reaches C.
    let a_sends = |n1: &mut Pipeline, n2: &mut Pipeline, ip: &[u8], now| {
        let (o, _) = go(n1, A, &to_gw(A_MAC, ip), now);
        let d = datagrams_of(o, N2_UNDERLAY);
        let Ok(Outcome::ToPort(port, f)) = tunnel_in(n2, N1_UNDERLAY, &d[0], now) else {
            panic!("not delivered at node 2")
        };
        assert_eq!(port, C);
        endpoints(ip_of(&f, C_MAC, GW2_MAC))
    };
    // Sends an IPv4 packet from C to node 2's gateway; returns what reaches A.
    let c_sends = |n1: &mut Pipeline, n2: &mut Pipeline, ip: &[u8], now| {
        let (o, _) = go(n2, C, &frame(GW2_MAC, C_MAC, 0x0800, ip), now);
        let d = datagrams_of(o, N1_UNDERLAY);
        let Ok(Outcome::ToPort(port, f)) = tunnel_in(n1, N2_UNDERLAY, &d[0], now) else {
            panic!("not delivered at node 1")
        };
        assert_eq!(port, A);
        endpoints(ip_of(&f, A_MAC, GW_MAC))
    };
    let lb = |seq, ack, flags| tcp(A_IP, 40000, VIP, 80, seq, ack, flags, b"");
    let lb_back = |port, seq, ack, flags| tcp(C_IP, 8080, A_IP, port, seq, ack, flags, b"");
    assert_eq!(
        a_sends(&mut n1, &mut n2, &lb(1, 0, TCP_SYN), SEC),
        (A_IP, 40000, C_IP, 8080)
    );
    assert_eq!(
        c_sends(
            &mut n1,
            &mut n2,
            &lb_back(40000, 9, 2, TCP_SYN | TCP_ACK),
            SEC
        ),
        (VIP, 80, A_IP, 40000)
    );
    // A second connection from port 40000, to C itself.
    let direct = |seq, ack, flags| tcp(A_IP, 40000, C_IP, 8080, seq, ack, flags, b"");
    let (src, remapped, dst, dport) = a_sends(&mut n1, &mut n2, &direct(500, 0, TCP_SYN), 2 * SEC);
    assert_eq!((src, dst, dport), (A_IP, C_IP, 8080));
    assert_ne!(remapped, 40000);
    assert_eq!(
        c_sends(
            &mut n1,
            &mut n2,
            &lb_back(remapped, 70, 501, TCP_SYN | TCP_ACK),
            2 * SEC
        ),
        (C_IP, 8080, A_IP, 40000),
        "the direct SYN-ACK comes from C"
    );
    assert_eq!(
        a_sends(&mut n1, &mut n2, &direct(501, 71, TCP_ACK), 2 * SEC),
        (A_IP, remapped, C_IP, 8080)
    );
    // Both connections carry on, each under its own addresses.
    assert_eq!(
        a_sends(&mut n1, &mut n2, &lb(2, 10, TCP_ACK), 3 * SEC),
        (A_IP, 40000, C_IP, 8080)
    );
    assert_eq!(
        c_sends(&mut n1, &mut n2, &lb_back(40000, 10, 2, TCP_ACK), 3 * SEC),
        (VIP, 80, A_IP, 40000)
    );
    assert_eq!(
        c_sends(
            &mut n1,
            &mut n2,
            &lb_back(remapped, 71, 501, TCP_ACK),
            3 * SEC
        ),
        (C_IP, 8080, A_IP, 40000)
    );
    let mut states: Vec<_> = n1.flows(3 * SEC).iter().map(|f| (f.vip, f.state)).collect();
    states.sort_by_key(|s| s.0);
    assert_eq!(
        states,
        vec![
            (SocketAddrV4::new(VIP, 80), FlowState::Established),
            (SocketAddrV4::new(C_IP, 8080), FlowState::Established),
        ]
    );
    assert_eq!(n2.conntrack_len(), 0, "node 2 tracks nothing");
    assert_eq!(n1.counters().snapshot().get(Counter::LbClashRemaps), 1);
    assert_counters_balance(&n1);
    assert_counters_balance(&n2);
}

/// TCP on one node: A's connection through VIP:80 to B:8080 is closing (the flow
/// lives on for `tcp_closing`) when A connects to B:8080 straight from the same port.
/// The direct connection is remapped, the late segments of the old one still come
/// from the VIP; a new SYN after the direct connection closed is remapped again.
#[test]
fn direct_tcp_connection_while_the_service_flow_is_closing() {
    let mut p = lb_node();
    let lb = |seq, ack, flags| to_gw(A_MAC, &tcp(A_IP, 40000, VIP, 80, seq, ack, flags, b""));
    let from_b = |port, seq, ack, flags| {
        frame(
            A_MAC,
            B_MAC,
            0x0800,
            &tcp(B_IP, 8080, A_IP, port, seq, ack, flags, b""),
        )
    };
    let direct = |seq, ack, flags| {
        frame(
            B_MAC,
            A_MAC,
            0x0800,
            &tcp(A_IP, 40000, B_IP, 8080, seq, ack, flags, b""),
        )
    };
    assert_eq!(go(&mut p, A, &lb(1, 0, TCP_SYN), SEC).0, Ok(Forward(B)));
    assert!(go(&mut p, B, &from_b(40000, 9, 2, TCP_SYN | TCP_ACK), SEC)
        .0
        .is_ok());
    assert!(go(&mut p, A, &lb(2, 10, TCP_FIN | TCP_ACK), SEC).0.is_ok());
    assert!(go(&mut p, B, &from_b(40000, 10, 3, TCP_FIN | TCP_ACK), SEC)
        .0
        .is_ok());
    assert_eq!(p.flows(SEC)[0].state, FlowState::Closing);

    let (o, buf) = go(&mut p, A, &direct(700, 0, TCP_SYN), 2 * SEC);
    assert_eq!(o, Ok(Forward(B)));
    let (_, remapped, _, _) = endpoints(ip_of(&buf, B_MAC, A_MAC));
    assert_ne!(remapped, 40000);
    let (_, buf) = go(
        &mut p,
        B,
        &from_b(remapped, 50, 701, TCP_SYN | TCP_ACK),
        2 * SEC,
    );
    assert_eq!(endpoints(&buf[24..]), (B_IP, 8080, A_IP, 40000));
    // B retransmits its FIN of the old connection: still from the VIP.
    let (_, buf) = go(&mut p, B, &from_b(40000, 10, 3, TCP_FIN | TCP_ACK), 2 * SEC);
    assert_eq!(endpoints(&buf[24..]), (VIP, 80, A_IP, 40000));
    let (_, buf) = go(&mut p, A, &direct(701, 51, TCP_ACK), 2 * SEC);
    assert_eq!(endpoints(&buf[24..]), (A_IP, remapped, B_IP, 8080));

    // The direct connection closes; A connects again from the same port.
    let (_, buf) = go(&mut p, A, &direct(701, 51, TCP_FIN | TCP_ACK), 3 * SEC);
    assert_eq!(endpoints(&buf[24..]).1, remapped);
    let (_, buf) = go(
        &mut p,
        B,
        &from_b(remapped, 51, 702, TCP_FIN | TCP_ACK),
        3 * SEC,
    );
    assert_eq!(endpoints(&buf[24..]), (B_IP, 8080, A_IP, 40000));
    let (_, buf) = go(&mut p, A, &direct(900, 0, TCP_SYN), 4 * SEC);
    let (_, again, _, _) = endpoints(&buf[24..]);
    assert_ne!(again, 40000, "the closing service flow still holds the key");
    let direct_flow = |p: &Pipeline, now| {
        p.flows(now)
            .into_iter()
            .find(|f| f.vip == SocketAddrV4::new(B_IP, 8080))
            .unwrap()
    };
    let f = direct_flow(&p, 4 * SEC);
    assert_eq!((f.state, f.age), (FlowState::SynSent, 0), "a fresh flow");
    assert_eq!(f.nat_source, SocketAddrV4::new(A_IP, again));
    assert_eq!(f.backend, be(B_IP, 8080));
    // A table change does not flush it: it is no service's.
    install(&p, vec![svc(VIP, 53, L4Proto::Udp, vec![be(B_IP, 5353)])]);
    assert_eq!(
        p.maintain(4 * SEC),
        1,
        "the service flow of the removed service"
    );
    let (_, buf) = go(
        &mut p,
        B,
        &from_b(again, 80, 901, TCP_SYN | TCP_ACK),
        4 * SEC,
    );
    assert_eq!(endpoints(&buf[24..]), (B_IP, 8080, A_IP, 40000));
    assert_eq!(direct_flow(&p, 4 * SEC).state, FlowState::Established);
    assert_eq!(p.counters().snapshot().get(Counter::LbClashRemaps), 2);
    assert_counters_balance(&p);
}

/// UDP: the direct flow lives by its own timeout. It expires (swept by `maintain`)
/// while the service flow, refreshed, lives on: a late answer to the remapped port is
/// no longer rewritten, and the next direct datagram is remapped afresh. A direct flow
/// that outlives the service flow keeps its port until it expires itself; the
/// client's next query through the VIP is then a service flow on its own port again.
#[test]
fn direct_udp_flow_expires_and_is_swept_on_its_own() {
    let mut p = lb_node();
    let udp_timeout = p.config().conntrack_timeouts.udp;
    let lb_query = to_gw(A_MAC, &udp(A_IP, 41002, VIP, 53, b"q"));
    let r_lb = frame(A_MAC, B_MAC, 0x0800, &udp(B_IP, 5353, A_IP, 41002, b"s"));
    let direct = frame(B_MAC, A_MAC, 0x0800, &udp(A_IP, 41002, B_IP, 5353, b"d"));
    let r_direct = |port| frame(A_MAC, B_MAC, 0x0800, &udp(B_IP, 5353, A_IP, port, b"r"));
    let direct_out = |p: &mut Pipeline, now| {
        let (o, buf) = go(p, A, &direct, now);
        assert_eq!(o, Ok(Forward(B)));
        let (src, port, dst, dport) = endpoints(ip_of(&buf, B_MAC, A_MAC));
        assert_eq!((src, dst, dport), (A_IP, B_IP, 5353));
        port
    };
    assert_eq!(go(&mut p, A, &lb_query, SEC).0, Ok(Forward(B)));
    assert_eq!(
        go(&mut p, B, &r_lb, SEC).0,
        Ok(Forward(A)),
        "B's MAC learned"
    );
    let first = direct_out(&mut p, 2 * SEC);
    assert_ne!(first, 41002);
    // The service flow is refreshed; the direct one is not.
    for t in [20, 31] {
        assert_eq!(go(&mut p, A, &lb_query, t * SEC).0, Ok(Forward(B)));
    }
    let expired = 2 * SEC + udp_timeout;
    assert_eq!(p.maintain(expired - 1), 0);
    assert_eq!(p.maintain(expired), 1, "the direct flow");
    assert_eq!(p.conntrack_len(), 1);
    let (_, buf) = go(&mut p, B, &r_direct(first), expired);
    assert_eq!(
        endpoints(&buf[24..]),
        (B_IP, 5353, A_IP, first),
        "no longer tracked: left alone"
    );
    let (_, buf) = go(&mut p, B, &r_lb, expired);
    assert_eq!(endpoints(&buf[24..]), (VIP, 53, A_IP, 41002));
    // The service flow still holds the reply key: remapped again, a new flow.
    let second = direct_out(&mut p, 40 * SEC);
    assert_ne!(second, 41002);
    assert_eq!(p.conntrack_len(), 2);

    // The service flow (last refreshed by the answer at 32 s) expires first; the
    // direct flow, kept busy, keeps its port and its answers still reach A's own
    // port, from B.
    for t in [55, 69] {
        assert_eq!(direct_out(&mut p, t * SEC), second);
    }
    assert_eq!(p.maintain(expired + udp_timeout), 1, "the service flow");
    assert_eq!(direct_out(&mut p, 71 * SEC), second);
    let (o, buf) = go(&mut p, B, &r_direct(second), 71 * SEC);
    assert_eq!(o, Ok(Forward(A)));
    assert_eq!(
        endpoints(ip_of(&buf, A_MAC, B_MAC)),
        (B_IP, 5353, A_IP, 41002)
    );
    // A new query through the VIP: the reply key B:5353 → A:41002 is free.
    assert_eq!(go(&mut p, A, &lb_query, 72 * SEC).0, Ok(Forward(B)));
    let (_, buf) = go(&mut p, B, &r_lb, 72 * SEC);
    assert_eq!(endpoints(&buf[24..]), (VIP, 53, A_IP, 41002));
    let mut nat: Vec<_> = p
        .flows(72 * SEC)
        .iter()
        .map(|f| (f.vip, f.nat_source.port()))
        .collect();
    nat.sort();
    assert_eq!(
        nat,
        vec![
            (SocketAddrV4::new(VIP, 53), 41002),
            (SocketAddrV4::new(B_IP, 5353), second),
        ]
    );
    assert_eq!(p.maintain(200 * SEC), 2);
    let s = p.counters().snapshot();
    assert_eq!(
        (
            s.get(Counter::LbNewFlows),
            s.get(Counter::LbClashRemaps),
            s.get(Counter::ConntrackExpired)
        ),
        (2, 2, 4)
    );
    assert_counters_balance(&p);
}

/// TCP: an ICMP error about the direct connection reaches A quoting its segment as A
/// sent it (from B, not the VIP). The service connection is reset and expires; the
/// direct one, still open, keeps its port. Once A resets it too, a new SYN from the
/// same port (no service flow holds the reply key any more) goes out unchanged and is
/// not tracked.
#[test]
fn direct_tcp_connection_icmp_error_reset_and_port_reuse() {
    let mut p = lb_node();
    let closing = p.config().conntrack_timeouts.tcp_closing;
    let lb = |seq, ack, flags| to_gw(A_MAC, &tcp(A_IP, 40000, VIP, 80, seq, ack, flags, b""));
    let from_b = |port, seq, ack, flags| {
        frame(
            A_MAC,
            B_MAC,
            0x0800,
            &tcp(B_IP, 8080, A_IP, port, seq, ack, flags, b""),
        )
    };
    let direct = |seq, ack, flags| {
        frame(
            B_MAC,
            A_MAC,
            0x0800,
            &tcp(A_IP, 40000, B_IP, 8080, seq, ack, flags, b""),
        )
    };
    assert_eq!(go(&mut p, A, &lb(1, 0, TCP_SYN), SEC).0, Ok(Forward(B)));
    let (_, buf) = go(&mut p, B, &from_b(40000, 9, 2, TCP_SYN | TCP_ACK), SEC);
    assert_eq!(endpoints(&buf[24..]), (VIP, 80, A_IP, 40000));

    let (o, sent) = go(&mut p, A, &direct(700, 0, TCP_SYN), 2 * SEC);
    assert_eq!(o, Ok(Forward(B)));
    let seen_by_b = ip_of(&sent, B_MAC, A_MAC).to_vec();
    let (_, remapped, _, _) = endpoints(&seen_by_b);
    assert_ne!(remapped, 40000);
    let (_, buf) = go(
        &mut p,
        B,
        &from_b(remapped, 50, 701, TCP_SYN | TCP_ACK),
        2 * SEC,
    );
    assert_eq!(endpoints(&buf[24..]), (B_IP, 8080, A_IP, 40000));
    // Fragmentation needed from a router on the way (D), and from B itself.
    for (from, port, mac) in [(D_IP, D, D_MAC), (B_IP, B, B_MAC)] {
        let err = frame(
            A_MAC,
            mac,
            0x0800,
            &ipv4(from, A_IP, 1, &icmp_error([3, 4], &seen_by_b)),
        );
        let (o, buf) = go(&mut p, port, &err, 2 * SEC);
        assert_eq!(o, Ok(Forward(A)));
        let quote = icmp_quote(ip_of(&buf, A_MAC, mac), from, A_IP, [3, 4]);
        assert_eq!(endpoints(quote), (A_IP, 40000, B_IP, 8080));
    }
    assert_eq!(p.counters().snapshot().get(Counter::LbIcmpErrors), 2);
    let (_, buf) = go(&mut p, A, &direct(701, 51, TCP_ACK), 2 * SEC);
    assert_eq!(endpoints(&buf[24..]), (A_IP, remapped, B_IP, 8080));

    // B resets the service connection; it expires after `tcp_closing`.
    let (_, buf) = go(&mut p, B, &from_b(40000, 10, 0, TCP_RST), 3 * SEC);
    assert_eq!(endpoints(&buf[24..]), (VIP, 80, A_IP, 40000));
    assert_eq!(p.maintain(3 * SEC + closing), 1, "the service flow");
    let t = 4 * SEC + closing;
    let (_, buf) = go(&mut p, A, &direct(701, 51, TCP_ACK), t);
    assert_eq!(endpoints(&buf[24..]), (A_IP, remapped, B_IP, 8080));
    let (_, buf) = go(&mut p, B, &from_b(remapped, 51, 701, TCP_ACK), t);
    assert_eq!(endpoints(&buf[24..]), (B_IP, 8080, A_IP, 40000));
    let f = p.flows(t)[0];
    assert_eq!(
        (f.vip, f.state),
        (SocketAddrV4::new(B_IP, 8080), FlowState::Established)
    );

    // A resets the direct connection, remapped like the rest of it.
    let (_, buf) = go(&mut p, A, &direct(701, 0, TCP_RST), t);
    assert_eq!(endpoints(&buf[24..]), (A_IP, remapped, B_IP, 8080));
    assert_eq!(p.flows(t)[0].state, FlowState::Closing);
    // A new connection from the same port: the closed flow is dropped, nothing
    // clashes any more, the SYN goes out as A sent it and is not tracked.
    let syn = direct(900, 0, TCP_SYN);
    let (o, buf) = go(&mut p, A, &syn, t + SEC);
    assert_eq!(o, Ok(Forward(B)));
    assert_eq!(&buf[10..], &syn[10..], "untouched");
    assert_eq!(p.conntrack_len(), 0);
    let back = from_b(40000, 80, 901, TCP_SYN | TCP_ACK);
    let (_, buf) = go(&mut p, B, &back, t + SEC);
    assert_eq!(&buf[10..], &back[10..], "untouched");
    let s = p.counters().snapshot();
    assert_eq!(
        (
            s.get(Counter::LbNewFlows),
            s.get(Counter::LbClashRemaps),
            s.get(Counter::LbReplies)
        ),
        (1, 1, 4)
    );
    assert_counters_balance(&p);
}

// ---------------------------------------------------------------- conntrack life cycle

#[test]
fn tcp_life_cycle_with_stepped_time() {
    let mut p = lb_node();
    let t = p.config().conntrack_timeouts;
    let c = |seq, ack, flags| to_gw(A_MAC, &tcp(A_IP, 40000, VIP, 80, seq, ack, flags, b""));
    let s = |seq, ack, flags| {
        frame(
            A_MAC,
            B_MAC,
            0x0800,
            &tcp(B_IP, 8080, A_IP, 40000, seq, ack, flags, b""),
        )
    };
    assert_eq!(go(&mut p, A, &c(1, 0, TCP_SYN), 0).0, Ok(Forward(B)));
    assert_eq!(p.flows(0)[0].state, FlowState::SynSent);
    assert_eq!(p.flows(0)[0].expires_in, t.tcp_syn);
    assert!(go(&mut p, B, &s(100, 2, TCP_SYN | TCP_ACK), SEC).0.is_ok());
    assert_eq!(p.flows(SEC)[0].state, FlowState::Established);
    assert!(go(&mut p, A, &c(2, 101, TCP_FIN | TCP_ACK), 2 * SEC)
        .0
        .is_ok());
    assert_eq!(p.flows(2 * SEC)[0].state, FlowState::Established, "one FIN");
    assert!(go(&mut p, B, &s(101, 3, TCP_FIN | TCP_ACK), 3 * SEC)
        .0
        .is_ok());
    assert_eq!(p.flows(3 * SEC)[0].state, FlowState::Closing);
    assert!(go(&mut p, A, &c(3, 102, TCP_ACK), 4 * SEC).0.is_ok());
    let end = 4 * SEC + t.tcp_closing;
    assert_eq!(p.maintain(end - 1), 0);
    assert_eq!(p.maintain(end), 1);
    assert_eq!(p.conntrack_len(), 0);
    assert_eq!(p.counters().snapshot().get(Counter::ConntrackExpired), 1);

    // RST from the backend closes at once; a new SYN on the same 5-tuple starts over.
    assert!(go(&mut p, A, &c(1, 0, TCP_SYN), 10 * SEC).0.is_ok());
    assert!(go(&mut p, B, &s(100, 2, TCP_SYN | TCP_ACK), 10 * SEC)
        .0
        .is_ok());
    assert!(go(&mut p, B, &s(101, 0, TCP_RST), 11 * SEC).0.is_ok());
    assert_eq!(p.flows(11 * SEC)[0].state, FlowState::Closing);
    assert!(go(&mut p, A, &c(5000, 0, TCP_SYN), 12 * SEC).0.is_ok());
    assert_eq!(p.flows(12 * SEC)[0].state, FlowState::SynSent);
    assert_eq!(p.flows(12 * SEC)[0].age, 0, "a fresh flow");

    // A SYN nobody answers expires after tcp_syn; expired flows are ignored on lookup.
    assert_eq!(p.maintain(12 * SEC + t.tcp_syn), 1);
    // A flow first seen mid-connection is taken as established.
    assert!(go(&mut p, A, &c(9, 9, TCP_ACK), 100 * SEC).0.is_ok());
    assert_eq!(p.flows(100 * SEC)[0].state, FlowState::Established);
}

#[test]
fn udp_flows_time_out_and_replies_refresh_them() {
    let mut p = lb_node();
    let q = to_gw(A_MAC, &udp(A_IP, 40000, VIP, 53, b"q"));
    let r = frame(A_MAC, B_MAC, 0x0800, &udp(B_IP, 5353, A_IP, 40000, b"r"));
    assert!(go(&mut p, A, &q, 0).0.is_ok());
    assert!(go(&mut p, B, &r, 20 * SEC).0.is_ok());
    assert_eq!(p.maintain(49 * SEC), 0, "refreshed at 20 s");
    // Expired: the late reply is not un-NATed (the flow is gone) ...
    let (_, buf) = go(&mut p, B, &r, 50 * SEC);
    assert_eq!(endpoints(&buf[24..]).0, B_IP);
    assert_eq!(p.conntrack_len(), 0);
    // ... and a new query is a new flow.
    assert!(go(&mut p, A, &q, 51 * SEC).0.is_ok());
    let s = p.counters().snapshot();
    assert_eq!(
        (s.get(Counter::LbNewFlows), s.get(Counter::ConntrackExpired)),
        (2, 1)
    );
}

#[test]
fn full_table_evicts_and_counts() {
    let mut p = lb_node_with(|c| c.conntrack_capacity = 4);
    for sport in 0..10u16 {
        let q = to_gw(A_MAC, &udp(A_IP, 1000 + sport, VIP, 53, b"q"));
        assert_eq!(
            go(&mut p, A, &q, SEC + Nanos::from(sport)).0,
            Ok(Forward(B))
        );
    }
    assert_eq!(p.conntrack_len(), 4);
    assert_eq!(p.counters().snapshot().get(Counter::ConntrackEvicted), 6);
    // Stored flows are intact.
    for f in p.flows(2 * SEC) {
        let r = frame(
            A_MAC,
            B_MAC,
            0x0800,
            &udp(B_IP, 5353, A_IP, f.client.port(), b"r"),
        );
        let (_, buf) = go(&mut p, B, &r, 2 * SEC);
        assert_eq!(endpoints(&buf[24..]).0, VIP);
    }
}

/// A backend leaves: the next packet of its flows goes to a live backend (never to
/// the removed one), and `maintain` flushes flows no packet touched.
#[test]
fn removed_backend_flows_are_flushed_on_a_new_table() {
    let mut p = lb_node();
    install(
        &p,
        vec![svc(VIP, 53, L4Proto::Udp, vec![be(B_IP, 53), be(D_IP, 53)])],
    );
    let on = |p: &Pipeline, ip| {
        (1000..2000u16)
            .find(|s| {
                p.services()
                    .load()
                    .pick(VIP, 53, L4Proto::Udp, (A_IP, *s))
                    .unwrap()
                    .ip
                    == ip
            })
            .unwrap()
    };
    let (to_b, to_d) = (on(&p, B_IP), on(&p, D_IP));
    let q = |s| to_gw(A_MAC, &udp(A_IP, s, VIP, 53, b"q"));
    assert_eq!(go(&mut p, A, &q(to_b), SEC).0, Ok(Forward(B)));
    assert_eq!(go(&mut p, A, &q(to_d), SEC).0, Ok(Forward(D)));
    // Another B flow that sees no packet after the change.
    let idle = (to_b + 1..3000)
        .find(|s| {
            p.services()
                .load()
                .pick(VIP, 53, L4Proto::Udp, (A_IP, *s))
                .unwrap()
                .ip
                == B_IP
        })
        .unwrap();
    assert!(go(&mut p, A, &q(idle), SEC).0.is_ok());
    assert_eq!(p.conntrack_len(), 3);
    // B is no longer ready.
    install(&p, vec![svc(VIP, 53, L4Proto::Udp, vec![be(D_IP, 53)])]);
    assert_eq!(go(&mut p, A, &q(to_b), 2 * SEC).0, Ok(Forward(D)));
    assert_eq!(go(&mut p, A, &q(to_d), 2 * SEC).0, Ok(Forward(D)), "kept");
    assert_eq!(p.counters().snapshot().get(Counter::ConntrackFlushed), 1);
    assert_eq!(p.maintain(2 * SEC), 1, "the idle flow");
    assert_eq!(p.conntrack_len(), 2);
    assert!(p.flows(2 * SEC).iter().all(|f| f.backend.ip == D_IP));
    // Service gone: its flows go too.
    install(&p, vec![]);
    assert_eq!(p.maintain(3 * SEC), 2);
    assert_eq!(p.counters().snapshot().get(Counter::ConntrackFlushed), 4);
}

// ---------------------------------------------------------------- rejections

#[test]
fn no_endpoint_tcp_gets_a_reset() {
    let mut p = lb_node();
    let syn = to_gw(
        A_MAC,
        &tcp(A_IP, 40000, EMPTY_VIP, 80, 0x1000, 0, TCP_SYN, b""),
    );
    let Ok(Reply(r)) = go(&mut p, A, &syn, SEC).0 else {
        panic!()
    };
    let ip = ip_of(&r, A_MAC, GW_MAC);
    assert_eq!(endpoints(ip), (EMPTY_VIP, 80, A_IP, 40000));
    let t = TcpPacket::new_checked(&ip[20..]).unwrap();
    assert_eq!(
        (t.seq_number(), t.ack_number(), t.flags()),
        (0, 0x1001, TCP_RST | TCP_ACK)
    );
    // A segment with ACK: the reset takes its sequence number from that ACK.
    let ack = to_gw(
        A_MAC,
        &tcp(A_IP, 40000, EMPTY_VIP, 80, 5, 0xabcd, TCP_ACK, b"data"),
    );
    let Ok(Reply(r)) = go(&mut p, A, &ack, SEC).0 else {
        panic!()
    };
    let t = TcpPacket::new_checked(&r[44..]).unwrap();
    assert_eq!((t.seq_number(), t.flags()), (0xabcd, TCP_RST));
    // Never a reset for a reset.
    let rst = to_gw(A_MAC, &tcp(A_IP, 40000, EMPTY_VIP, 80, 5, 0, TCP_RST, b""));
    assert_eq!(go(&mut p, A, &rst, SEC).0, Err(DropReason::LbNoEndpoint));
    assert_eq!(p.counters().snapshot().get(Counter::LbNoEndpoint), 3);
    assert_eq!(p.conntrack_len(), 0);
}

#[test]
fn no_endpoint_udp_unknown_port_ping_and_unused_service_ips() {
    let mut p = lb_node();
    let cases: [(Vec<u8>, Ipv4Addr, [u8; 2], DropReason); 4] = [
        (
            udp(A_IP, 4000, EMPTY_VIP, 53, b"q"),
            EMPTY_VIP,
            [3, 3],
            DropReason::LbNoEndpoint,
        ),
        (
            udp(A_IP, 4000, VIP, 54, b"q"),
            VIP,
            [3, 3],
            DropReason::NoServicePort,
        ),
        (
            ipv4(A_IP, VIP, 1, &echo_request(1, 1, b"ping")),
            GW_IP,
            [3, 1],
            DropReason::NoServicePort,
        ),
        (
            udp(A_IP, 4000, Ipv4Addr::new(10, 100, 0, 1), 53, b"q"),
            GW_IP,
            [3, 1],
            DropReason::NotAService,
        ),
    ];
    for (pkt, from, code, _) in &cases {
        let Ok(Reply(r)) = go(&mut p, A, &to_gw(A_MAC, pkt), SEC).0 else {
            panic!("{code:?}")
        };
        assert_ip_icmp_error(ip_of(&r, A_MAC, GW_MAC), *from, A_IP, *code, pkt);
    }
    assert_eq!(p.counters().snapshot().get(Counter::LbNoEndpoint), 1);
    // With the ICMP budget spent, the reasons are counted instead.
    let mut quiet = lb_node_with(|c| c.icmp_errors_per_sec = 0);
    for (pkt, _, _, reason) in &cases {
        assert_eq!(go(&mut quiet, A, &to_gw(A_MAC, pkt), SEC).0, Err(*reason));
    }
    // A later fragment to a ClusterIP whose first fragment was never seen.
    let mut frag = udp(A_IP, 4000, VIP, 53, b"q");
    frag[6..8].copy_from_slice(&185u16.to_be_bytes()); // offset 1480, last fragment
    frag[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum::checksum(&frag[..20]);
    frag[10..12].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(
        go(&mut p, A, &to_gw(A_MAC, &frag), SEC).0,
        Err(DropReason::ServiceFragment)
    );
    // Without a service CIDR, an unused service IP is routed like any other address.
    let mut open = lb_node_with(|c| c.service_cidr = None);
    let stray = to_gw(
        A_MAC,
        &udp(A_IP, 4000, Ipv4Addr::new(10, 100, 0, 1), 53, b"q"),
    );
    assert_eq!(go(&mut open, A, &stray, SEC).0, Err(DropReason::NoRoute));
    assert_counters_balance(&p);
}

// ---------------------------------------------------------------- checksums

/// A TSO frame (virtio GSO TCPv4, partial checksum): DNATed as one frame, virtio-net
/// header kept, the partial field moved by the address change only.
#[test]
fn gso_frame_with_partial_checksum_is_dnated_whole() {
    let mut p = lb_node();
    let data = vec![0x5a; 3000];
    let mut ip = tcp(A_IP, 40000, VIP, 80, 1, 1, TCP_ACK, &data);
    let l4_len = ip.len() - 20;
    let partial = pseudo_header_partial(A_IP, VIP, 6, l4_len);
    ip[36..38].copy_from_slice(&partial.to_be_bytes());
    let mut f = to_gw(A_MAC, &ip);
    let vnet = [
        VNET_HDR_F_NEEDS_CSUM,
        VNET_HDR_GSO_TCPV4,
        54,
        0,
        0x78,
        0x05,
        34,
        0,
        16,
        0,
    ];
    f[..10].copy_from_slice(&vnet);
    let (o, mut buf) = go(&mut p, A, &f, SEC);
    assert_eq!(o, Ok(Forward(B)));
    assert_eq!(&buf[..10], &vnet, "virtio-net header kept");
    let want = pseudo_header_partial(A_IP, B_IP, 6, l4_len);
    assert_eq!(&buf[10 + 14 + 36..10 + 14 + 38], &want.to_be_bytes());
    let end = buf.len();
    complete_partial_checksum(&mut buf[10..], 34, 16, end - 10).unwrap();
    assert_eq!(endpoints(&buf[24..]), (A_IP, 40000, B_IP, 8080));
    // The partial form of a non-GSO frame too, and a full checksum next to it.
    let mut small = tcp(A_IP, 40001, VIP, 80, 1, 1, TCP_SYN, b"");
    small[36..38].copy_from_slice(&pseudo_header_partial(A_IP, VIP, 6, 20).to_be_bytes());
    let mut f = to_gw(A_MAC, &small);
    f[..10].copy_from_slice(&[VNET_HDR_F_NEEDS_CSUM, 0, 0, 0, 0, 0, 34, 0, 16, 0]);
    let (_, buf) = go(&mut p, A, &f, SEC);
    let want = pseudo_header_partial(A_IP, B_IP, 6, 20);
    assert_eq!(&buf[60..62], &want.to_be_bytes());
}

// ---------------------------------------------------------------- across nodes

/// Client A on node 1, backend C on node 2: DNAT at node 1, tunnel, delivery at node
/// 2; C's reply is routed into the tunnel at node 2 and un-NATed at node 1.
#[test]
fn cross_node_flow_through_the_tunnel() {
    let mut n1 = node1();
    let mut n2 = node2();
    install(&n1, vec![svc(VIP, 80, L4Proto::Tcp, vec![be(C_IP, 8080)])]);
    let syn = to_gw(A_MAC, &tcp(A_IP, 40000, VIP, 80, 1, 0, TCP_SYN, b"hello"));
    let (o, _) = go(&mut n1, A, &syn, SEC);
    let d = datagrams_of(o, N2_UNDERLAY);
    assert_eq!(d.len(), 1);
    assert_eq!(
        endpoints(assert_vxlan(&d[0], VTEP1, VTEP2)),
        (A_IP, 40000, C_IP, 8080)
    );
    let Ok(Outcome::ToPort(port, f)) = tunnel_in(&mut n2, N1_UNDERLAY, &d[0], SEC) else {
        panic!()
    };
    assert_eq!(port, C);
    let ip = ip_of(&f, C_MAC, GW2_MAC);
    assert_eq!(endpoints(ip), (A_IP, 40000, C_IP, 8080));
    assert_eq!(ip[8], 62, "two routers");
    assert_eq!(n2.conntrack_len(), 0, "node 2 tracks nothing");

    // C answers A (another subnet): to its gateway, into the tunnel, un-NATed at node 1.
    let synack = frame(
        GW2_MAC,
        C_MAC,
        0x0800,
        &tcp(C_IP, 8080, A_IP, 40000, 9, 7, TCP_SYN | TCP_ACK, b""),
    );
    let (o, _) = go(&mut n2, C, &synack, SEC);
    let d = datagrams_of(o, N1_UNDERLAY);
    let Ok(Outcome::ToPort(port, f)) = tunnel_in(&mut n1, N2_UNDERLAY, &d[0], SEC) else {
        panic!()
    };
    assert_eq!(port, A);
    assert_eq!(endpoints(ip_of(&f, A_MAC, GW_MAC)), (VIP, 80, A_IP, 40000));
    assert_eq!(n1.flows(SEC)[0].state, FlowState::Established);

    // A kernel VXLAN sender may leave the inner checksum partial: settled first.
    let mut dgram = d[0].clone();
    let inner = 8 + 14;
    let l4_len = dgram.len() - inner - 20;
    let partial = pseudo_header_partial(C_IP, A_IP, 6, l4_len);
    dgram[inner + 36..inner + 38].copy_from_slice(&partial.to_be_bytes());
    let Ok(Outcome::ToPort(_, f)) = tunnel_in(&mut n1, N2_UNDERLAY, &dgram, 2 * SEC) else {
        panic!()
    };
    assert_eq!(endpoints(&f[24..]), (VIP, 80, A_IP, 40000));
    assert_eq!(n1.counters().snapshot().get(Counter::LbReplies), 2);
    assert_counters_balance(&n1);
    assert_counters_balance(&n2);
}

// ---------------------------------------------------------------- ICMP errors

/// An ICMP error of `type_code` quoting `quote`, with a valid checksum.
fn icmp_error(type_code: [u8; 2], quote: &[u8]) -> Vec<u8> {
    let mut m = vec![type_code[0], type_code[1], 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(quote);
    let sum = checksum::checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// Checks an ICMP error's headers and checksums; returns its quote.
fn icmp_quote(ip: &[u8], from: Ipv4Addr, to: Ipv4Addr, type_code: [u8; 2]) -> &[u8] {
    let p = Ipv4Packet::new_checked(ip).unwrap();
    assert!(p.verify_checksum(), "outer IPv4 checksum");
    assert_eq!((p.src_addr(), p.dst_addr()), (from, to), "outer addresses");
    let icmp = &ip[20..usize::from(p.total_len())];
    assert_eq!(&icmp[..2], &type_code);
    assert!(checksum::verify(icmp), "ICMP checksum");
    let quote = &icmp[8..];
    assert!(
        Ipv4Packet::new_unchecked(quote).verify_checksum(),
        "quoted IPv4 checksum"
    );
    quote
}

/// B has no one on UDP 5353: its kernel's port unreachable to A quotes A → B:5353.
/// A must see its own datagram to VIP:53 quoted, from the VIP, or its socket never
/// hears of it (a DNS client would wait for its timeout instead of failing at once).
#[test]
fn port_unreachable_from_a_local_backend_quotes_the_cluster_ip() {
    let mut p = lb_node();
    let q = to_gw(A_MAC, &udp(A_IP, 40000, VIP, 53, b"query"));
    let (o, sent) = go(&mut p, A, &q, SEC);
    assert_eq!(o, Ok(Forward(B)));
    let seen_by_b = ip_of(&sent, B_MAC, GW_MAC).to_vec();
    let err = frame(
        A_MAC,
        B_MAC,
        0x0800,
        &ipv4(B_IP, A_IP, 1, &icmp_error([3, 3], &seen_by_b)),
    );
    let (o, buf) = go(&mut p, B, &err, SEC);
    assert_eq!(o, Ok(Forward(A)), "bridged on, as the reply would be");
    let quote = icmp_quote(ip_of(&buf, A_MAC, B_MAC), VIP, A_IP, [3, 3]);
    assert_eq!(endpoints(quote), (A_IP, 40000, VIP, 53));
    assert_eq!(&quote[28..], b"query");
    let s = p.counters().snapshot();
    assert_eq!(
        (s.get(Counter::LbIcmpErrors), s.get(Counter::LbReplies)),
        (1, 0)
    );
    assert_eq!(p.flows(SEC)[0].state, FlowState::Udp, "state untouched");

    // A quote cut to the IPv4 header and 8 bytes: ports and UDP checksum still
    // rewritten; the checksum of the whole quoted datagram verifies again.
    let err = frame(
        A_MAC,
        B_MAC,
        0x0800,
        &ipv4(B_IP, A_IP, 1, &icmp_error([3, 3], &seen_by_b[..28])),
    );
    let (o, buf) = go(&mut p, B, &err, SEC);
    assert_eq!(o, Ok(Forward(A)));
    let quote = icmp_quote(ip_of(&buf, A_MAC, B_MAC), VIP, A_IP, [3, 3]);
    let mut whole = quote.to_vec();
    whole.extend_from_slice(b"query");
    assert_eq!(endpoints(&whole), (A_IP, 40000, VIP, 53));
    assert_counters_balance(&p);
}

/// An error from a router on the way (not the backend) keeps its source; an error
/// about a flow nobody tracks is left alone.
#[test]
fn icmp_errors_from_elsewhere_or_about_other_flows() {
    let mut p = lb_node();
    let syn = to_gw(A_MAC, &tcp(A_IP, 40000, VIP, 80, 1, 0, TCP_SYN, b""));
    let (o, sent) = go(&mut p, A, &syn, SEC);
    assert_eq!(o, Ok(Forward(B)));
    let seen = ip_of(&sent, B_MAC, GW_MAC).to_vec();
    let router = D_IP; // a pod that is not the backend (anti-spoofing: its own IP)
    let err = frame(
        A_MAC,
        D_MAC,
        0x0800,
        &ipv4(router, A_IP, 1, &icmp_error([11, 0], &seen)),
    );
    let (o, buf) = go(&mut p, D, &err, SEC);
    assert_eq!(o, Ok(Forward(A)));
    let quote = icmp_quote(ip_of(&buf, A_MAC, D_MAC), router, A_IP, [11, 0]);
    assert_eq!(endpoints(quote), (A_IP, 40000, VIP, 80));

    let other = tcp(A_IP, 40001, B_IP, 8080, 1, 0, TCP_SYN, b"");
    let err_ip = ipv4(B_IP, A_IP, 1, &icmp_error([3, 3], &other));
    let err = frame(A_MAC, B_MAC, 0x0800, &err_ip);
    let (o, buf) = go(&mut p, B, &err, SEC);
    assert_eq!(o, Ok(Forward(A)));
    assert_eq!(&buf[24..], &err_ip[..], "untouched");
    assert_eq!(p.counters().snapshot().get(Counter::LbIcmpErrors), 1);
}

/// The router's own time exceeded about a DNATed packet (TTL 1) quotes the client's
/// packet to the ClusterIP.
#[test]
fn our_own_time_exceeded_about_a_service_packet_quotes_the_cluster_ip() {
    let mut p = lb_node();
    let mut ip = udp(A_IP, 40000, VIP, 53, b"query");
    ip[8] = 1;
    ip[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let (o, _) = go(&mut p, A, &to_gw(A_MAC, &ip), SEC);
    let Ok(Outcome::Reply(r)) = o else {
        panic!("{o:?}")
    };
    let quote = icmp_quote(ip_of(&r, A_MAC, GW_MAC), GW_IP, A_IP, [11, 0]);
    assert_eq!(endpoints(quote), (A_IP, 40000, VIP, 53));
    assert_eq!(p.counters().snapshot().get(Counter::LbIcmpErrors), 1);
}

/// Backend C on node 2 sends port unreachable to A on node 1 through the tunnel.
#[test]
fn icmp_error_from_a_remote_backend_through_the_tunnel() {
    let mut n1 = node1();
    let mut n2 = node2();
    install(&n1, vec![svc(VIP, 53, L4Proto::Udp, vec![be(C_IP, 5353)])]);
    let q = to_gw(A_MAC, &udp(A_IP, 40000, VIP, 53, b"query"));
    let (o, _) = go(&mut n1, A, &q, SEC);
    let d = datagrams_of(o, N2_UNDERLAY);
    let Ok(Outcome::ToPort(_, f)) = tunnel_in(&mut n2, N1_UNDERLAY, &d[0], SEC) else {
        panic!()
    };
    let seen_by_c = ip_of(&f, C_MAC, GW2_MAC).to_vec();
    let err = frame(
        GW2_MAC,
        C_MAC,
        0x0800,
        &ipv4(C_IP, A_IP, 1, &icmp_error([3, 3], &seen_by_c)),
    );
    let (o, _) = go(&mut n2, C, &err, SEC);
    let d = datagrams_of(o, N1_UNDERLAY);
    let Ok(Outcome::ToPort(port, f)) = tunnel_in(&mut n1, N2_UNDERLAY, &d[0], SEC) else {
        panic!()
    };
    assert_eq!(port, A);
    let quote = icmp_quote(ip_of(&f, A_MAC, GW_MAC), VIP, A_IP, [3, 3]);
    assert_eq!(endpoints(quote), (A_IP, 40000, VIP, 53));
    assert_eq!(n1.counters().snapshot().get(Counter::LbIcmpErrors), 1);
}

// ---------------------------------------------------------------- fragments

/// Cuts the IPv4 packet `ip` (20-byte header) into fragments of at most `max`
/// payload bytes (a multiple of 8), each with a valid header checksum.
fn fragments(ip: &[u8], max: usize) -> Vec<Vec<u8>> {
    let payload = &ip[20..];
    let mut out = Vec::new();
    for (k, piece) in payload.chunks(max).enumerate() {
        let mut h = ip[..20].to_vec();
        let last = (k + 1) * max >= payload.len();
        let off = (k * max / 8) as u16 | if last { 0 } else { 0x2000 };
        h[2..4].copy_from_slice(&((20 + piece.len()) as u16).to_be_bytes());
        h[6..8].copy_from_slice(&off.to_be_bytes());
        h[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum::checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h.extend_from_slice(piece);
        out.push(h);
    }
    out
}

/// Reassembles fragments (in order) into one packet, checking each header checksum.
fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
    let mut ip = frags[0][..20].to_vec();
    for f in frags {
        assert!(
            Ipv4Packet::new_unchecked(&f[..]).verify_checksum(),
            "fragment header checksum"
        );
        assert_eq!(
            &f[12..20],
            &frags[0][12..20],
            "every fragment has the same addresses"
        );
        ip.extend_from_slice(&f[20..]);
    }
    let total = ip.len() as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6..8].copy_from_slice(&[0x40, 0]);
    ip[10..12].copy_from_slice(&[0, 0]);
    let sum = checksum::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip
}

/// A 4,000-byte UDP datagram to VIP:53 in three fragments: the first picks the flow
/// and is DNATed with ports and checksum, the others get the same addresses; B's
/// fragmented answer comes back from VIP:53 in every fragment.
#[test]
fn fragmented_datagrams_to_and_from_a_service() {
    let mut p = lb_node();
    let data: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
    let query = udp(A_IP, 40000, VIP, 53, &data);
    let mut seen_by_b = Vec::new();
    for f in fragments(&query, 1480) {
        let (o, buf) = go(&mut p, A, &to_gw(A_MAC, &f), SEC);
        assert_eq!(o, Ok(Forward(B)));
        seen_by_b.push(ip_of(&buf, B_MAC, GW_MAC).to_vec());
    }
    assert_eq!(seen_by_b.len(), 3);
    let whole = reassemble(&seen_by_b);
    assert_eq!(endpoints(&whole), (A_IP, 40000, B_IP, 5353));
    assert_eq!(&whole[28..], &data[..]);
    assert_eq!(p.counters().snapshot().get(Counter::LbNewFlows), 1);

    // B answers with 3,000 bytes, fragmented, bridged to A's MAC.
    let answer = udp(B_IP, 5353, A_IP, 40000, &data[..3000]);
    let mut seen_by_a = Vec::new();
    for f in fragments(&answer, 1480) {
        let (o, buf) = go(&mut p, B, &frame(A_MAC, B_MAC, 0x0800, &f), 2 * SEC);
        assert_eq!(o, Ok(Forward(A)));
        seen_by_a.push(ip_of(&buf, A_MAC, B_MAC).to_vec());
    }
    let whole = reassemble(&seen_by_a);
    assert_eq!(endpoints(&whole), (VIP, 53, A_IP, 40000));
    assert_eq!(&whole[28..], &data[..3000]);

    // The translation of a datagram is forgotten after 30 s: a stray later fragment
    // with the same identification is dropped then.
    let late = fragments(&query, 1480).pop().unwrap();
    assert_eq!(
        go(&mut p, A, &to_gw(A_MAC, &late), 40 * SEC).0,
        Err(DropReason::ServiceFragment)
    );
    assert_counters_balance(&p);
}

/// The same across nodes: fragments DNATed on node 1 cross the tunnel; C's
/// fragmented reply is un-NATed on node 1 as it comes out of the tunnel.
#[test]
fn fragmented_datagrams_through_the_tunnel() {
    let mut n1 = node1();
    let mut n2 = node2();
    install(&n1, vec![svc(VIP, 53, L4Proto::Udp, vec![be(C_IP, 5353)])]);
    let data: Vec<u8> = (0..2500u32).map(|i| (i * 13) as u8).collect();
    let query = udp(A_IP, 40000, VIP, 53, &data);
    let mut seen_by_c = Vec::new();
    for f in fragments(&query, 1400) {
        let (o, _) = go(&mut n1, A, &to_gw(A_MAC, &f), SEC);
        let d = datagrams_of(o, N2_UNDERLAY);
        let Ok(Outcome::ToPort(port, fr)) = tunnel_in(&mut n2, N1_UNDERLAY, &d[0], SEC) else {
            panic!()
        };
        assert_eq!(port, C);
        seen_by_c.push(ip_of(&fr, C_MAC, GW2_MAC).to_vec());
    }
    let whole = reassemble(&seen_by_c);
    assert_eq!(endpoints(&whole), (A_IP, 40000, C_IP, 5353));

    let answer = udp(C_IP, 5353, A_IP, 40000, &data);
    let mut seen_by_a = Vec::new();
    for f in fragments(&answer, 1400) {
        let (o, _) = go(&mut n2, C, &frame(GW2_MAC, C_MAC, 0x0800, &f), SEC);
        let d = datagrams_of(o, N1_UNDERLAY);
        let Ok(Outcome::ToPort(port, fr)) = tunnel_in(&mut n1, N2_UNDERLAY, &d[0], SEC) else {
            panic!()
        };
        assert_eq!(port, A);
        seen_by_a.push(ip_of(&fr, A_MAC, GW_MAC).to_vec());
    }
    let whole = reassemble(&seen_by_a);
    assert_eq!(endpoints(&whole), (VIP, 53, A_IP, 40000));
    assert_eq!(&whole[28..], &data[..]);
}

// ---------------------------------------------------------------- properties

fn lb_frame() -> impl Strategy<Value = Vec<u8>> {
    let base = prop::sample::select(vec![
        to_gw(A_MAC, &udp(A_IP, 40000, VIP, 53, b"q")),
        to_gw(A_MAC, &tcp(A_IP, 40000, VIP, 80, 1, 0, TCP_SYN, b"")),
        to_gw(A_MAC, &tcp(A_IP, 40000, VIP, 8080, 1, 0, TCP_SYN, b"")),
        to_gw(A_MAC, &tcp(A_IP, 40000, EMPTY_VIP, 80, 1, 0, TCP_SYN, b"")),
        to_gw(A_MAC, &tcp(A_IP, 80, GW_IP, 40000, 1, 0, TCP_ACK, b"")),
        frame(A_MAC, B_MAC, 0x0800, &udp(B_IP, 5353, A_IP, 40000, b"r")),
        frame(
            A_MAC,
            B_MAC,
            0x0800,
            &tcp(B_IP, 8080, A_IP, 40000, 1, 2, TCP_ACK, b"r"),
        ),
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    #[test]
    fn never_panics_with_services_loaded(
        inputs in prop::collection::vec(
            (0u16..4, prop_oneof![lb_frame(), any_frame()], 0u64..100 * SEC), 1..30)
    ) {
        let mut p = lb_node_with(|c| c.conntrack_capacity = 8);
        let mut out = vec![0u8; OUT_BUF_LEN];
        for (port, mut pkt, now) in inputs {
            match p.process(PortId(port), &mut pkt, now, &mut out) {
                Action::Drop(reason) => prop_assert!(DropReason::ALL.contains(&reason)),
                Action::Forward(to) => prop_assert!(p.port_role(to).is_some()),
                _ => {}
            }
            if now % 7 == 0 {
                p.maintain(now);
            }
        }
        prop_assert!(p.conntrack_len() <= 8);
        assert_counters_balance(&p);
    }
}

// ---------------------------------------------------------------- tunnel sources

/// What node 2's host port sends through its gateway to `ip`'s destination: the
/// host is trusted, so whatever source it writes reaches the tunnel.
fn from_node2_host(n2: &mut Pipeline, ip: &[u8]) -> Vec<u8> {
    let f = frame(
        GW2_MAC,
        MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x02, 0xfe),
        0x0800,
        ip,
    );
    let (o, _) = go(n2, HOST, &f, SEC);
    datagrams_of(o, N1_UNDERLAY).remove(0)
}

#[test]
fn tunnel_sources_must_belong_to_the_sending_node() {
    let mut n1 = node1();
    let mut n2 = node2();
    let host2 = Ipv4Addr::new(10, 244, 2, 254);
    // Node 2's pod, host port and gateway are in its subnet: delivered.
    for src in [C_IP, host2, Ipv4Addr::new(10, 244, 2, 1)] {
        let d = from_node2_host(&mut n2, &udp(src, 1000, A_IP, 53, b"q"));
        assert!(
            matches!(
                tunnel_in(&mut n1, N2_UNDERLAY, &d, SEC),
                Ok(Outcome::ToPort(A, _))
            ),
            "{src}"
        );
    }
    // Another node's pod, one of node 1's own pods, an address outside the cluster:
    // node 2 cannot speak for them.
    let spoofed = [
        Ipv4Addr::new(10, 244, 3, 9),
        B_IP,
        Ipv4Addr::new(192, 0, 2, 7),
    ];
    for src in spoofed {
        let d = from_node2_host(&mut n2, &udp(src, 1000, A_IP, 53, b"q"));
        assert_eq!(
            tunnel_in(&mut n1, N2_UNDERLAY, &d, SEC),
            Err(DropReason::SpoofedTunnelSource),
            "{src}"
        );
    }
    assert_eq!(
        n1.counters().drop_count(DropReason::SpoofedTunnelSource),
        spoofed.len() as u64
    );
    assert_counters_balance(&n1);
}

/// A backend that is no pod of its node (a host-network endpoint answers from the
/// node's underlay address): its replies to a tracked flow pass, nothing else does.
#[test]
fn tunnel_replies_of_tracked_flows_pass_from_outside_the_subnet() {
    let mut n1 = node1();
    let mut n2 = node2();
    install(
        &n1,
        vec![svc(VIP, 80, L4Proto::Tcp, vec![be(N2_UNDERLAY, 6443)])],
    );
    let syn = to_gw(A_MAC, &tcp(A_IP, 40000, VIP, 80, 1, 0, TCP_SYN, b""));
    let _ = go(&mut n1, A, &syn, SEC);
    assert_eq!(n1.conntrack_len(), 1);
    let reply = tcp(N2_UNDERLAY, 6443, A_IP, 40000, 9, 2, TCP_SYN | TCP_ACK, b"");
    let d = from_node2_host(&mut n2, &reply);
    let Ok(Outcome::ToPort(port, f)) = tunnel_in(&mut n1, N2_UNDERLAY, &d, SEC) else {
        panic!("the reply of a tracked flow is dropped")
    };
    assert_eq!(port, A);
    assert_eq!(endpoints(ip_of(&f, A_MAC, GW_MAC)), (VIP, 80, A_IP, 40000));
    // The same source on a port no flow expects.
    let stray = tcp(N2_UNDERLAY, 6443, A_IP, 40001, 9, 2, TCP_SYN | TCP_ACK, b"");
    let d = from_node2_host(&mut n2, &stray);
    assert_eq!(
        tunnel_in(&mut n1, N2_UNDERLAY, &d, SEC),
        Err(DropReason::SpoofedTunnelSource)
    );
    assert_counters_balance(&n1);
}
