//! Routing and tunnel tests: two pipelines (node 1 and node 2, each the other's peer)
//! exchange VXLAN datagrams; every header and checksum is checked from the bytes.

use super::*;
use crate::hash::flow_hash_of;
use crate::tables::routes::Peer;
use crate::wire::tcp::{pseudo_header_partial, pseudo_header_sum};
use crate::wire::{
    IpProtocol, TcpPacket, UdpPacket, VNET_HDR_F_DATA_VALID, VNET_HDR_F_NEEDS_CSUM,
    VNET_HDR_GSO_ECN, VNET_HDR_GSO_TCPV4,
};

const CLUSTER: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 0);
pub(super) const N1_UNDERLAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub(super) const N2_UNDERLAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub(super) const VTEP1: MacAddr = MacAddr::new(0x0a, 0x58, 0xc6, 0x12, 0x00, 0x01);
pub(super) const VTEP2: MacAddr = MacAddr::new(0x0a, 0x58, 0xc6, 0x12, 0x00, 0x02);
pub(super) const GW2_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 1);
pub(super) const GW2_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x01);
pub(super) const C: PortId = PortId(1);
pub(super) const C_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
pub(super) const C_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x02);
const HOST2_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 254);
const HOST2_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x02, 0xfe);
const MTU: u16 = 1450;

/// The /24 at `net`.
fn net24(net: Ipv4Addr) -> Ipv4Cidr {
    Ipv4Cidr::new(net, 24).unwrap()
}

/// The cluster CIDR, 10.244.0.0/16.
fn cluster() -> Ipv4Cidr {
    Ipv4Cidr::new(CLUSTER, 16).unwrap()
}

fn peer(name: &str, underlay: Ipv4Addr, vtep: MacAddr, subnet: Ipv4Addr) -> Peer {
    Peer {
        name: name.into(),
        underlay_ip: underlay,
        vtep_mac: vtep,
        subnet: net24(subnet),
    }
}

/// Node 1: pods A and B, a host port; node 2 is its peer.
fn node1_with(cfg: impl FnOnce(&mut PipelineConfig)) -> Pipeline {
    let mut c = config();
    c.tunnel = Some(TunnelConfig::new(N1_UNDERLAY, VTEP1, 1500));
    cfg(&mut c);
    let p = pipeline_with(c);
    let n2 = peer("node-2", N2_UNDERLAY, VTEP2, Ipv4Addr::new(10, 244, 2, 0));
    let snap = RouteSnapshot::build(net24(Ipv4Addr::new(10, 244, 1, 0)), cluster(), vec![n2]);
    p.routes().store(Arc::new(snap.unwrap()));
    p
}

pub(super) fn node1() -> Pipeline {
    node1_with(|_| {})
}

/// Node 2: pod C, a host port at 10.244.2.254; node 1 is its peer.
pub(super) fn node2() -> Pipeline {
    let mut c = PipelineConfig::new(GW2_IP, GW2_MAC, net24(Ipv4Addr::new(10, 244, 2, 0)));
    c.tunnel = Some(TunnelConfig::new(N2_UNDERLAY, VTEP2, 1500));
    c.host_ip = Some(HOST2_IP);
    let mut p = Pipeline::new(c);
    p.add_port(HOST, PortRole::Host);
    p.add_port(
        C,
        PortRole::Pod {
            mac: C_MAC,
            ip: C_IP,
        },
    );
    let n1 = peer("node-1", N1_UNDERLAY, VTEP1, Ipv4Addr::new(10, 244, 1, 0));
    let snap = RouteSnapshot::build(net24(Ipv4Addr::new(10, 244, 2, 0)), cluster(), vec![n1]);
    p.routes().store(Arc::new(snap.unwrap()));
    p
}

/// An IPv4 packet with the given TTL and flags/fragment word, ident 0x4321 (built
/// by etherparse, which takes DF, MF and the offset from `ff`).
fn ip_pkt(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, ff: u16, l4: &[u8]) -> Vec<u8> {
    let mut h = etherparse::Ipv4Header::new(
        l4.len() as u16,
        ttl,
        etherparse::IpNumber(proto),
        src.octets(),
        dst.octets(),
    )
    .unwrap();
    h.identification = 0x4321;
    h.dont_fragment = ff & 0x4000 != 0;
    h.more_fragments = ff & 0x2000 != 0;
    h.fragment_offset = etherparse::IpFragOffset::try_new(ff & 0x1fff).unwrap();
    h.header_checksum = h.calc_header_checksum();
    let mut p = h.to_bytes().to_vec();
    p.extend_from_slice(l4);
    p
}

/// A UDP datagram without checksum.
fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let u = etherparse::UdpHeader {
        source_port: sport,
        destination_port: dport,
        length: (8 + data.len()) as u16,
        checksum: 0,
    };
    let mut d = u.to_bytes().to_vec();
    d.extend_from_slice(data);
    d
}

/// From pod A to the gateway MAC.
fn from_a(ip: &[u8]) -> Vec<u8> {
    frame(GW_MAC, A_MAC, 0x0800, ip)
}

/// A datagram fed to `p`'s tunnel socket from `src`:4789.
pub(super) fn tunnel_in(
    p: &mut Pipeline,
    src: Ipv4Addr,
    dgram: &[u8],
    now: Nanos,
) -> Result<Outcome, DropReason> {
    let mut buf = dgram.to_vec();
    let mut out = vec![0u8; OUT_BUF_LEN];
    let a = p.process_tunnel(SocketAddrV4::new(src, 4789), &mut buf, now, &mut out);
    Outcome::of(a)
}

/// Runs a frame and also returns the (possibly rewritten) input buffer.
fn run_inplace(
    p: &mut Pipeline,
    port: PortId,
    pkt: &[u8],
) -> (Result<Outcome, DropReason>, Vec<u8>) {
    let mut buf = pkt.to_vec();
    let mut out = vec![0u8; OUT_BUF_LEN];
    let a = p.process(port, &mut buf, 0, &mut out);
    let o = Outcome::of(a);
    (o, buf)
}

pub(super) fn datagrams_of(o: Result<Outcome, DropReason>, to: Ipv4Addr) -> Vec<Vec<u8>> {
    match o {
        Ok(Outcome::Tunnel {
            peer, datagrams, ..
        }) => {
            assert_eq!(peer, to);
            datagrams
        }
        other => panic!("expected Tunnel, got {other:?}"),
    }
}

/// The VXLAN + inner Ethernet header of a datagram from node `from` to node `to`.
pub(super) fn assert_vxlan(d: &[u8], src_vtep: MacAddr, dst_vtep: MacAddr) -> &[u8] {
    assert_eq!(&d[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0], "flags I, VNI 1");
    assert_eq!(&d[8..14], &dst_vtep.0, "inner dst = peer VTEP");
    assert_eq!(&d[14..20], &src_vtep.0, "inner src = our VTEP");
    assert_eq!(&d[20..22], &[0x08, 0x00]);
    &d[22..]
}

/// Checks an ICMP error (virtio-net + Ethernet + IPv4 + ICMP) and returns the ICMP
/// message.
fn assert_icmp_error<'b>(
    r: &'b [u8],
    dst_mac: MacAddr,
    src_mac: MacAddr,
    from: Ipv4Addr,
    to: Ipv4Addr,
    type_code: [u8; 2],
    original: &[u8],
) -> &'b [u8] {
    assert_eq!(&r[..10], &[0; 10]);
    assert_eq!(&r[10..16], &dst_mac.0);
    assert_eq!(&r[16..22], &src_mac.0);
    assert_ip_icmp_error(&r[24..], from, to, type_code, original)
}

pub(super) fn assert_ip_icmp_error<'b>(
    ip: &'b [u8],
    from: Ipv4Addr,
    to: Ipv4Addr,
    type_code: [u8; 2],
    original: &[u8],
) -> &'b [u8] {
    let p = Ipv4Packet::new_checked(ip).unwrap();
    assert!(p.verify_checksum(), "IPv4 header checksum");
    assert_eq!(p.src_addr(), from);
    assert_eq!(p.dst_addr(), to);
    assert_eq!(p.protocol(), crate::wire::IpProtocol::Icmp);
    assert_eq!(p.dscp_ecn(), 0xc0);
    assert!(usize::from(p.total_len()) <= 576);
    let icmp = &ip[20..usize::from(p.total_len())];
    assert_eq!(&icmp[..2], &type_code);
    assert!(checksum::verify(icmp), "ICMP checksum");
    let quoted = &icmp[8..];
    assert_eq!(quoted, &original[..quoted.len()], "quotes the original");
    assert!(
        quoted.len() >= 28.min(original.len()),
        "header + 8 bytes at least"
    );
    icmp
}

fn assert_balanced(p: &Pipeline) {
    assert_counters_balance(p);
}

// ---------------------------------------------------------------- local routing

#[test]
fn routed_to_a_local_pod_in_place_with_ttl_decrement() {
    let mut p = node1();
    let ip = ip_pkt(A_IP, B_IP, 17, 64, 0x4000, &udp(1, 2, b"via gw"));
    let (o, buf) = run_inplace(&mut p, A, &from_a(&ip));
    assert_eq!(o, Ok(Forward(B)));
    assert_eq!(&buf[10..16], &B_MAC.0, "dst = the pod's MAC");
    assert_eq!(&buf[16..22], &GW_MAC.0, "src = the gateway");
    let out_ip = &buf[24..];
    assert_eq!(out_ip[8], 63, "TTL decremented");
    assert!(
        checksum::verify(&out_ip[..20]),
        "incremental checksum valid"
    );
    let mut expect = ip.clone();
    expect[8] = 63;
    expect[10..12].copy_from_slice(&out_ip[10..12]);
    assert_eq!(out_ip, &expect[..]);
    let s = p.counters().snapshot();
    assert_eq!((s.get(Counter::Routed), s.get(Counter::Forwarded)), (1, 1));
    // To its own IP through the gateway: never back out of the ingress port.
    let own = ip_pkt(A_IP, A_IP, 17, 64, 0, &udp(1, 2, b""));
    assert_eq!(
        run(&mut p, A, &from_a(&own), 0),
        Err(DropReason::HairpinSelf)
    );
    assert_balanced(&p);
}

#[test]
fn ttl_expiry_sends_time_exceeded() {
    let mut p = node1();
    let ip = ip_pkt(A_IP, C_IP, 17, 1, 0x4000, &udp(33434, 33434, &[0x40; 32]));
    let Ok(Reply(r)) = run(&mut p, A, &from_a(&ip), 0) else {
        panic!("no time exceeded")
    };
    let icmp = assert_icmp_error(&r, A_MAC, GW_MAC, GW_IP, A_IP, [11, 0], &ip);
    assert_eq!(&icmp[4..8], &[0; 4]);
    assert_eq!(&icmp[8..], &ip[..], "small packets are quoted whole");
    assert_eq!(r[24 + 8], 64, "TTL of the error");
    // A local destination expires too (TTL 1 is never forwarded).
    let local = ip_pkt(A_IP, B_IP, 17, 1, 0, &udp(1, 2, b""));
    assert!(matches!(run(&mut p, A, &from_a(&local), 0), Ok(Reply(_))));
    let s = p.counters().snapshot();
    assert_eq!(
        (
            s.get(Counter::IcmpErrorsSent),
            s.get(Counter::Replies),
            s.get(Counter::Routed)
        ),
        (2, 2, 0)
    );
    assert_balanced(&p);
}

#[test]
fn large_packets_are_quoted_up_to_576_bytes() {
    let mut p = node1();
    let ip = ip_pkt(A_IP, C_IP, 17, 1, 0x4000, &udp(1, 2, &[0x77; 1400]));
    let Ok(Reply(r)) = run(&mut p, A, &from_a(&ip), 0) else {
        panic!("no error")
    };
    assert_eq!(r.len(), 24 + 576);
    assert_icmp_error(&r, A_MAC, GW_MAC, GW_IP, A_IP, [11, 0], &ip);
}

#[test]
fn unreachable_host_and_net() {
    let mut p = node1();
    for (dst, code) in [
        (Ipv4Addr::new(10, 244, 1, 99), 1), // local subnet, no such pod
        (Ipv4Addr::new(10, 244, 9, 9), 1),  // in the cluster, no node owns it
        (Ipv4Addr::new(8, 8, 8, 8), 0),     // outside the cluster
    ] {
        let ip = ip_pkt(A_IP, dst, 6, 64, 0x4000, &[0x11; 20]);
        let Ok(Reply(r)) = run(&mut p, A, &from_a(&ip), 0) else {
            panic!("no error for {dst}")
        };
        assert_icmp_error(&r, A_MAC, GW_MAC, GW_IP, A_IP, [3, code], &ip);
    }
    // Never routed, never answered: multicast, broadcast, the subnet broadcast.
    for dst in [
        Ipv4Addr::new(224, 0, 0, 251),
        Ipv4Addr::BROADCAST,
        Ipv4Addr::new(10, 244, 1, 255),
    ] {
        let ip = ip_pkt(A_IP, dst, 17, 64, 0, &udp(1, 2, b""));
        assert_eq!(run(&mut p, A, &from_a(&ip), 0), Err(DropReason::NoRoute));
    }
    assert_eq!(p.counters().snapshot().get(Counter::IcmpErrorsSent), 3);
    assert_balanced(&p);
}

#[test]
fn no_error_about_errors_fragments_or_when_rate_limited() {
    let mut p = node1_with(|c| c.icmp_errors_per_sec = 10); // burst of 1
                                                            // An ICMP time exceeded (an error) with TTL 1: no error about it.
    let err = ip_pkt(A_IP, C_IP, 1, 1, 0, &[11, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        run(&mut p, A, &from_a(&err), 0),
        Err(DropReason::TtlExpired)
    );
    // A non-first fragment.
    let frag = ip_pkt(A_IP, C_IP, 17, 1, 0x0010, &[0; 16]);
    assert_eq!(
        run(&mut p, A, &from_a(&frag), 0),
        Err(DropReason::TtlExpired)
    );
    // An echo request is not an error: it gets one (the burst's token) ...
    let echo = ip_pkt(A_IP, C_IP, 1, 1, 0, &echo_request(1, 1, b"x"));
    assert!(matches!(run(&mut p, A, &from_a(&echo), 0), Ok(Reply(_))));
    // ... the next one within 100 ms does not ...
    assert_eq!(
        run(&mut p, A, &from_a(&echo), 50_000_000),
        Err(DropReason::TtlExpired)
    );
    // ... and after 100 ms one more does.
    assert!(matches!(
        run(&mut p, A, &from_a(&echo), 100_000_000),
        Ok(Reply(_))
    ));
    let s = p.counters().snapshot();
    assert_eq!(
        (
            s.get(Counter::IcmpErrorsSent),
            s.get(Counter::IcmpErrorsSuppressed)
        ),
        (2, 3)
    );
    assert_eq!(p.counters().drop_count(DropReason::TtlExpired), 3);
    // Rate 0: never.
    let mut off = node1_with(|c| c.icmp_errors_per_sec = 0);
    let ip = ip_pkt(A_IP, Ipv4Addr::new(8, 8, 8, 8), 17, 64, 0, &udp(1, 2, b""));
    assert_eq!(run(&mut off, A, &from_a(&ip), 0), Err(DropReason::NoRoute));
    assert_balanced(&p);
}

// ---------------------------------------------------------------- tunnel out and in

#[test]
fn encap_decap_round_trip_between_two_nodes() {
    let (mut n1, mut n2) = (node1(), node2());
    let ip = ip_pkt(A_IP, C_IP, 17, 64, 0x4000, &udp(1234, 53, b"hello node 2"));
    let Ok(Outcome::Tunnel {
        peer,
        flow_hash,
        datagrams,
    }) = run(&mut n1, A, &from_a(&ip), 0)
    else {
        panic!("not tunneled")
    };
    assert_eq!(peer, N2_UNDERLAY);
    assert_eq!(flow_hash, flow_hash_of(A_IP, C_IP, 17, (1234 << 16) | 53));
    assert_eq!(datagrams.len(), 1);
    let inner = assert_vxlan(&datagrams[0], VTEP1, VTEP2);
    assert_eq!(inner.len(), ip.len());
    assert_eq!(inner[8], 63);
    assert!(checksum::verify(&inner[..20]));
    assert_eq!(&inner[20..], &ip[20..], "payload untouched");

    let Ok(Outcome::ToPort(port, bytes)) = tunnel_in(&mut n2, N1_UNDERLAY, &datagrams[0], 0) else {
        panic!("not delivered")
    };
    assert_eq!(port, C);
    assert_eq!(
        &bytes[..10],
        &[VNET_HDR_F_DATA_VALID, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        "UDP without checksum: nothing to verify, DATA_VALID"
    );
    assert_eq!(&bytes[10..16], &C_MAC.0);
    assert_eq!(&bytes[16..22], &GW2_MAC.0);
    assert_eq!(&bytes[22..24], &[0x08, 0x00]);
    let delivered = &bytes[24..];
    assert_eq!(delivered[8], 62, "decremented on both nodes");
    assert!(checksum::verify(&delivered[..20]));
    assert_eq!(
        &delivered[12..],
        &ip[12..],
        "addresses and payload untouched"
    );

    let (s1, s2) = (n1.counters().snapshot(), n2.counters().snapshot());
    assert_eq!(
        (
            s1.get(Counter::Routed),
            s1.get(Counter::TunneledOut),
            s1.get(Counter::TunnelDatagramsOut)
        ),
        (1, 1, 1)
    );
    assert_eq!(
        (
            s2.get(Counter::TunneledIn),
            s2.get(Counter::Routed),
            s2.get(Counter::Delivered)
        ),
        (1, 1, 1)
    );
    assert_balanced(&n1);
    assert_balanced(&n2);
}

#[test]
fn traceroute_shows_both_gateways_then_the_pod() {
    let (mut n1, mut n2) = (node1(), node2());
    let probe = |ttl| {
        ip_pkt(
            A_IP,
            C_IP,
            17,
            ttl,
            0,
            &udp(40000, 33434 + u16::from(ttl), b"probe"),
        )
    };
    // Hop 1: node 1's gateway.
    let Ok(Reply(r)) = run(&mut n1, A, &from_a(&probe(1)), 0) else {
        panic!("hop 1")
    };
    assert_icmp_error(&r, A_MAC, GW_MAC, GW_IP, A_IP, [11, 0], &probe(1));
    // Hop 2: node 2's gateway; the error crosses the tunnel back to node 1.
    let d = datagrams_of(run(&mut n1, A, &from_a(&probe(2)), 0), N2_UNDERLAY);
    let back = datagrams_of(tunnel_in(&mut n2, N1_UNDERLAY, &d[0], 0), N1_UNDERLAY);
    let err = assert_vxlan(&back[0], VTEP2, VTEP1);
    let mut as_arrived = probe(2);
    as_arrived[8] = 1;
    as_arrived[10..12].copy_from_slice(&d[0][22 + 10..22 + 12]);
    assert_ip_icmp_error(err, GW2_IP, A_IP, [11, 0], &as_arrived);
    let Ok(Outcome::ToPort(port, bytes)) = tunnel_in(&mut n1, N2_UNDERLAY, &back[0], 0) else {
        panic!("error not delivered to A")
    };
    assert_eq!(port, A);
    assert_eq!(&bytes[10..16], &A_MAC.0);
    assert_eq!(bytes[24 + 8], 63, "the error is routed too");
    assert_ip_icmp_error(&bytes[24..], GW2_IP, A_IP, [11, 0], &as_arrived);
    // Hop 3: the pod itself gets the probe, TTL 1.
    let d = datagrams_of(run(&mut n1, A, &from_a(&probe(3)), 0), N2_UNDERLAY);
    let Ok(Outcome::ToPort(C, bytes)) = tunnel_in(&mut n2, N1_UNDERLAY, &d[0], 0) else {
        panic!("hop 3")
    };
    assert_eq!(bytes[24 + 8], 1);
}

#[test]
fn ping_the_remote_gateway() {
    let (mut n1, mut n2) = (node1(), node2());
    let ip = ip_pkt(A_IP, GW2_IP, 1, 64, 0, &echo_request(7, 9, b"remote gw"));
    let d = datagrams_of(run(&mut n1, A, &from_a(&ip), 0), N2_UNDERLAY);
    let back = datagrams_of(tunnel_in(&mut n2, N1_UNDERLAY, &d[0], 0), N1_UNDERLAY);
    assert_vxlan(&back[0], VTEP2, VTEP1);
    let Ok(Outcome::ToPort(A, bytes)) = tunnel_in(&mut n1, N2_UNDERLAY, &back[0], 0) else {
        panic!("reply not delivered")
    };
    let reply = &bytes[24..];
    assert!(checksum::verify(&reply[..20]));
    assert_eq!(&reply[12..16], &GW2_IP.octets());
    assert_eq!(&reply[16..20], &A_IP.octets());
    assert_eq!(&reply[20..22], &[0, 0], "echo reply");
    assert_eq!(&reply[28..], b"remote gw");
    assert!(checksum::verify(&reply[20..]));
}

#[test]
fn egress_via_host_sends_outside_addresses_to_the_host_port() {
    let host_ip = Ipv4Addr::new(10, 244, 1, 254);
    let mut p = node1_with(|c| {
        c.egress_via_host = true;
        c.host_ip = Some(host_ip);
        c.host_mac = Some(HOST_MAC);
    });
    // A pod's packet for the underlay leaves through the host port, routed: the
    // host's MAC, the gateway's as source, TTL - 1.
    let out = Ipv4Addr::new(198, 18, 0, 101);
    let ip = ip_pkt(A_IP, out, 6, 64, 0x4000, &[0x11; 20]);
    let (r, bytes) = run_inplace(&mut p, A, &from_a(&ip));
    assert_eq!(r, Ok(Forward(HOST)));
    assert_eq!(&bytes[10..16], &HOST_MAC.0);
    assert_eq!(&bytes[16..22], &GW_MAC.0);
    assert_eq!(bytes[10 + 14 + 8], 63);
    // Still the cluster's own errors for cluster addresses, and the service
    // CIDR stays the load balancer's.
    for (dst, code) in [
        (Ipv4Addr::new(10, 244, 9, 9), 1),
        (Ipv4Addr::new(10, 96, 7, 7), 1),
    ] {
        let ip = ip_pkt(A_IP, dst, 6, 64, 0x4000, &[0x11; 20]);
        let Ok(Reply(r)) = run(&mut p, A, &from_a(&ip), 0) else {
            panic!("no error for {dst}")
        };
        assert_icmp_error(&r, A_MAC, GW_MAC, GW_IP, A_IP, [3, code], &ip);
    }
    // The host port's own packet through the gateway is not sent back to it.
    let ip = ip_pkt(host_ip, out, 6, 64, 0x4000, &[0x11; 20]);
    let f = frame(GW_MAC, HOST_MAC, 0x0800, &ip);
    let Ok(Reply(r)) = run(&mut p, HOST, &f, 0) else {
        panic!("the host's packet was not refused")
    };
    assert_icmp_error(&r, HOST_MAC, GW_MAC, GW_IP, host_ip, [3, 0], &ip);
    // Off (the default): net unreachable, as before.
    let mut off = node1_with(|c| {
        c.host_ip = Some(host_ip);
        c.host_mac = Some(HOST_MAC);
    });
    let ip = ip_pkt(A_IP, out, 6, 64, 0x4000, &[0x11; 20]);
    let Ok(Reply(r)) = run(&mut off, A, &from_a(&ip), 0) else {
        panic!("no error with egress off")
    };
    assert_icmp_error(&r, A_MAC, GW_MAC, GW_IP, A_IP, [3, 0], &ip);
}

#[test]
fn host_port_is_reached_once_its_mac_is_known() {
    let (mut n1, mut n2) = (node1(), node2());
    let ip = ip_pkt(A_IP, HOST2_IP, 6, 64, 0x4000, &[0x22; 20]);
    let d = datagrams_of(run(&mut n1, A, &from_a(&ip), 0), N2_UNDERLAY);
    assert_eq!(
        tunnel_in(&mut n2, N1_UNDERLAY, &d[0], 0),
        Err(DropReason::HostMacUnknown)
    );
    // The host ARPs for its gateway: its MAC is learned.
    let req = arp(1, HOST2_MAC, HOST2_IP, MacAddr::ZERO, GW2_IP);
    let f = frame(MacAddr::BROADCAST, HOST2_MAC, 0x0806, &req);
    assert!(matches!(run(&mut n2, HOST, &f, 0), Ok(Reply(_))));
    assert_eq!(n2.host_mac(), Some(HOST2_MAC));
    let Ok(Outcome::ToPort(HOST, bytes)) = tunnel_in(&mut n2, N1_UNDERLAY, &d[0], 0) else {
        panic!("not delivered to the host")
    };
    assert_eq!(&bytes[10..16], &HOST2_MAC.0);
    // A configured MAC needs no learning.
    let mut cfg = n2.config().clone();
    cfg.host_mac = Some(HOST2_MAC);
    let p = Pipeline::new(cfg);
    assert_eq!(p.host_mac(), Some(HOST2_MAC));
}

#[test]
fn frag_needed_carries_the_inner_mtu() {
    let mut p = node1();
    let big = ip_pkt(A_IP, C_IP, 17, 64, 0x4000, &udp(1, 2, &[0x33; 1451 - 28]));
    let Ok(Reply(r)) = run(&mut p, A, &from_a(&big), 0) else {
        panic!("no frag needed")
    };
    let icmp = assert_icmp_error(&r, A_MAC, GW_MAC, GW_IP, A_IP, [3, 4], &big);
    assert_eq!(&icmp[4..8], &[0, 0, 0x05, 0xaa], "next-hop MTU 1450");
    // Exactly the MTU fits.
    let fits = ip_pkt(A_IP, C_IP, 17, 64, 0x4000, &udp(1, 2, &[0x33; 1450 - 28]));
    let d = datagrams_of(run(&mut p, A, &from_a(&fits), 0), N2_UNDERLAY);
    assert_eq!(d[0].len(), 22 + 1450);
}

#[test]
fn fragments_large_packets_without_df() {
    let (mut n1, mut n2) = (node1(), node2());
    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let ip = ip_pkt(A_IP, C_IP, 17, 64, 0, &udp(5, 6, &payload));
    let d = datagrams_of(run(&mut n1, A, &from_a(&ip), 0), N2_UNDERLAY);
    assert_eq!(d.len(), 3);
    assert_eq!(d[0].len(), d[1].len());
    let mut joined = vec![0u8; ip.len() - 20];
    for (k, dg) in d.iter().enumerate() {
        let inner = assert_vxlan(dg, VTEP1, VTEP2);
        let f = Ipv4Packet::new_checked(inner).unwrap();
        assert!(f.verify_checksum());
        assert!(usize::from(f.total_len()) <= usize::from(MTU));
        assert_eq!(f.ttl(), 63);
        assert_eq!(f.more_frags(), k < 2);
        let off = usize::from(f.frag_offset());
        joined[off..off + f.payload().len()].copy_from_slice(f.payload());
        // Node 2 delivers each fragment; the pod's kernel reassembles.
        let Ok(Outcome::ToPort(C, _)) = tunnel_in(&mut n2, N1_UNDERLAY, dg, 0) else {
            panic!("fragment {k} not delivered")
        };
    }
    assert_eq!(joined, &ip[20..]);
    assert_eq!(n1.counters().snapshot().get(Counter::TunnelDatagramsOut), 3);
}

/// A vnet header: flags, gso type, hdr_len, gso_size, csum_start, csum_offset.
fn vnet(flags: u8, gso: u8, hdr_len: u16, gso_size: u16, start: u16, off: u16) -> Vec<u8> {
    let mut v = vec![flags, gso];
    for x in [hdr_len, gso_size, start, off] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// A TCP segment (32-byte header) with the partial checksum a TSO frame carries.
fn tcp_partial(src: Ipv4Addr, dst: Ipv4Addr, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0x9c, 0x40, 0x14, 0x51];
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&7u32.to_be_bytes());
    t.extend_from_slice(&[0x80, flags, 0x01, 0xf5, 0, 0, 0, 0]);
    t.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    let partial = checksum::fold(pseudo_header_sum(src, dst, 6, t.len() + payload.len()));
    t[16..18].copy_from_slice(&partial.to_be_bytes());
    t.extend_from_slice(payload);
    t
}

fn tcp_ok(ip: &[u8]) -> bool {
    let p = Ipv4Packet::new_checked(ip).unwrap();
    TcpPacket::new_checked(p.payload())
        .unwrap()
        .verify_checksum(p.src_addr(), p.dst_addr())
}

#[test]
fn gso_frame_is_segmented_and_each_segment_delivered() {
    let (mut n1, mut n2) = (node1(), node2());
    let mss = 1398u16; // 1450 - 20 - 32
    let payload: Vec<u8> = (0..65_431u32).map(|i| (i * 13 % 256) as u8).collect();
    let tcp = tcp_partial(A_IP, C_IP, 1000, 0x18 | 0x01, &payload); // PSH|ACK|FIN
    let ip = ip_pkt(A_IP, C_IP, 6, 64, 0x4000, &tcp);
    assert_eq!(ip.len(), 65_483);
    let mut f = vnet(
        VNET_HDR_F_NEEDS_CSUM,
        VNET_HDR_GSO_TCPV4 | VNET_HDR_GSO_ECN,
        66,
        mss,
        34,
        16,
    );
    f.extend_from_slice(&from_a(&ip)[10..]);
    let d = datagrams_of(run(&mut n1, A, &f, 0), N2_UNDERLAY);
    assert_eq!(d.len(), payload.len().div_ceil(usize::from(mss)));
    let mut next_seq = 1000u32;
    for (k, dg) in d.iter().enumerate() {
        let last = k + 1 == d.len();
        if !last {
            assert_eq!(dg.len(), 22 + 1450, "full-size segments");
        }
        let inner = assert_vxlan(dg, VTEP1, VTEP2);
        assert!(tcp_ok(inner), "segment {k} checksum");
        let Ok(Outcome::ToPort(C, bytes)) = tunnel_in(&mut n2, N1_UNDERLAY, dg, 0) else {
            panic!("segment {k} not delivered")
        };
        let p = Ipv4Packet::new_checked(&bytes[24..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(p.ttl(), 62);
        let t = TcpPacket::new_checked(p.payload()).unwrap();
        assert!(t.verify_checksum(A_IP, C_IP));
        assert_eq!(t.seq_number(), next_seq);
        assert_eq!(t.flags() & 0x09 != 0, last, "FIN/PSH on the last only");
        next_seq += t.payload().len() as u32;
    }
    assert_eq!(next_seq, 1000 + payload.len() as u32);
    let s = n1.counters().snapshot();
    assert_eq!(
        (
            s.get(Counter::TunneledOut),
            s.get(Counter::TunnelDatagramsOut)
        ),
        (1, d.len() as u64)
    );
}

#[test]
fn gso_segments_too_big_for_the_tunnel() {
    let mut p = node1();
    let tcp = tcp_partial(A_IP, C_IP, 1, 0x10, &[5; 4000]);
    let mut f = vnet(VNET_HDR_F_NEEDS_CSUM, VNET_HDR_GSO_TCPV4, 66, 1448, 34, 16);
    // DF: the sender must lower its MSS.
    f.extend_from_slice(&from_a(&ip_pkt(A_IP, C_IP, 6, 64, 0x4000, &tcp))[10..]);
    let Ok(Reply(r)) = run(&mut p, A, &f, 0) else {
        panic!("no frag needed")
    };
    assert_eq!(&r[24 + 20..24 + 22], &[3, 4]);
    assert_eq!(&r[24 + 26..24 + 28], &MTU.to_be_bytes());
    // Without DF: cut at the MSS that fits.
    let mut f = vnet(VNET_HDR_F_NEEDS_CSUM, VNET_HDR_GSO_TCPV4, 66, 1448, 34, 16);
    f.extend_from_slice(&from_a(&ip_pkt(A_IP, C_IP, 6, 64, 0, &tcp))[10..]);
    let d = datagrams_of(run(&mut p, A, &f, 0), N2_UNDERLAY);
    assert_eq!(d.len(), 3);
    assert_eq!(d[0].len(), 22 + 1450);
    assert!(d.iter().all(|dg| tcp_ok(&dg[22..])));
    // UDP GSO and TCPv6 GSO are not ours to segment.
    for gso in [3u8, 4, 5] {
        let mut f = vnet(0, gso, 42, 1400, 0, 0);
        f.extend_from_slice(&from_a(&ip_pkt(A_IP, C_IP, 17, 64, 0, &udp(1, 2, &[0; 3000])))[10..]);
        assert_eq!(run(&mut p, A, &f, 0), Err(DropReason::UnsupportedGso));
    }
}

#[test]
fn partial_checksum_is_completed_before_the_tunnel() {
    let mut p = node1();
    let mut u = udp(4000, 53, b"query bytes");
    let partial = checksum::fold(pseudo_header_sum(A_IP, C_IP, 17, u.len()));
    u[6..8].copy_from_slice(&partial.to_be_bytes());
    let ip = ip_pkt(A_IP, C_IP, 17, 64, 0x4000, &u);
    let mut f = vnet(VNET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 6);
    f.extend_from_slice(&from_a(&ip)[10..]);
    let d = datagrams_of(run(&mut p, A, &f, 0), N2_UNDERLAY);
    let inner = &d[0][22..];
    let l4 = &inner[20..];
    let sum = checksum::accumulate(pseudo_header_sum(A_IP, C_IP, 17, l4.len()), l4);
    assert_eq!(checksum::fold(sum), 0xffff, "UDP checksum now complete");
    assert_ne!(&l4[6..8], &partial.to_be_bytes());
}

// ------------------------------------------- checksums of decapsulated TCP/UDP

/// A datagram as a Linux `flannel.1` on node 1 sends it: VXLAN, inner Ethernet VTEP1 →
/// VTEP2, and `ip` exactly as given (no TTL decrement, no checksum completion).
fn kernel_datagram(ip: &[u8]) -> Vec<u8> {
    let mut d = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    d.extend_from_slice(&VTEP2.0);
    d.extend_from_slice(&VTEP1.0);
    d.extend_from_slice(&[0x08, 0x00]);
    d.extend_from_slice(ip);
    d
}

/// A SYN from A to C: 40000 -> 80, MSS 1460; checksum field `csum`.
fn syn(csum: [u8; 2]) -> Vec<u8> {
    let mut t = vec![
        0x9c, 0x40, 0x00, 0x50, 0x01, 0x02, 0x03, 0x04, 0, 0, 0, 0, 0x60, 0x02, 0xfa, 0xf0,
    ];
    t.extend_from_slice(&csum);
    t.extend_from_slice(&[0, 0, 0x02, 0x04, 0x05, 0xb4]);
    t
}

/// The complete checksum of `l4` (protocol `proto`) from A to C.
fn full_checksum(proto: u8, l4: &[u8], field: usize) -> [u8; 2] {
    let mut z = l4.to_vec();
    z[field..field + 2].fill(0);
    let c = !checksum::fold(checksum::accumulate(
        pseudo_header_sum(A_IP, C_IP, proto, z.len()),
        &z,
    ));
    c.to_be_bytes()
}

/// The TCP or UDP checksum of an IPv4 packet is right (UDP 0: none, also right).
fn l4_checksum_ok(ip: &[u8]) -> bool {
    let Ok(p) = Ipv4Packet::new_checked(ip) else {
        return false;
    };
    match p.protocol() {
        IpProtocol::Tcp => TcpPacket::new_checked(p.payload())
            .is_ok_and(|t| t.verify_checksum(p.src_addr(), p.dst_addr())),
        IpProtocol::Udp => UdpPacket::new_checked(p.payload())
            .is_ok_and(|u| u.checksum() == 0 || u.verify_checksum(p.src_addr(), p.dst_addr())),
        _ => false,
    }
}

/// Delivers `dgram` to node 2 and returns the delivered frame; checks the framing.
fn delivered_to_c(n2: &mut Pipeline, dgram: &[u8]) -> Vec<u8> {
    let Ok(Outcome::ToPort(C, bytes)) = tunnel_in(n2, N1_UNDERLAY, dgram, 0) else {
        panic!("not delivered to C")
    };
    assert_eq!(&bytes[1..10], &[0; 9], "no GSO, no NEEDS_CSUM");
    assert_eq!(&bytes[10..16], &C_MAC.0);
    assert_eq!(&bytes[16..22], &GW2_MAC.0);
    let ip = &bytes[24..];
    assert!(checksum::verify(&ip[..20]));
    bytes
}

#[test]
fn decapsulated_valid_tcp_is_delivered_data_valid_and_unchanged() {
    let mut n2 = node2();
    let tcp = syn(full_checksum(6, &syn([0, 0]), 16));
    let ip = ip_pkt(A_IP, C_IP, 6, 64, 0x4000, &tcp);
    let bytes = delivered_to_c(&mut n2, &kernel_datagram(&ip));
    assert_eq!(bytes[0], VNET_HDR_F_DATA_VALID);
    assert_eq!(&bytes[24 + 20..], &tcp[..], "TCP segment untouched");
    assert_eq!(bytes[24 + 8], 63);
    assert_eq!(
        n2.counters()
            .snapshot()
            .get(Counter::InnerChecksumsCompleted),
        0
    );
    assert_balanced(&n2);
}

#[test]
fn kernel_vxlan_partial_checksums_are_completed() {
    let mut n2 = node2();
    // TCP: the SYN of the lab capture, "cksum incorrect" at the pod before the fix.
    let partial = pseudo_header_partial(A_IP, C_IP, 6, 24).to_be_bytes();
    let tcp = syn(partial);
    let ip = ip_pkt(A_IP, C_IP, 6, 64, 0x4000, &tcp);
    let bytes = delivered_to_c(&mut n2, &kernel_datagram(&ip));
    assert_eq!(bytes[0], VNET_HDR_F_DATA_VALID);
    let got = &bytes[24 + 20..];
    assert_eq!(&got[16..18], &full_checksum(6, &tcp, 16), "completed");
    assert_ne!(&got[16..18], &partial);
    assert_eq!((&got[..16], &got[18..]), (&tcp[..16], &tcp[18..]));
    assert!(l4_checksum_ok(&bytes[24..]));
    // UDP, the same way (a DNS query, say).
    let mut u = udp(4000, 53, b"partial udp");
    let partial = pseudo_header_partial(A_IP, C_IP, 17, u.len());
    u[6..8].copy_from_slice(&partial.to_be_bytes());
    let ip = ip_pkt(A_IP, C_IP, 17, 64, 0, &u);
    let bytes = delivered_to_c(&mut n2, &kernel_datagram(&ip));
    assert_eq!(bytes[0], VNET_HDR_F_DATA_VALID);
    let got = &bytes[24 + 20..];
    assert_eq!(&got[6..8], &full_checksum(17, &u, 6));
    assert_eq!((&got[..6], &got[8..]), (&u[..6], &u[8..]));
    assert!(l4_checksum_ok(&bytes[24..]));
    let s = n2.counters().snapshot();
    assert_eq!(
        (
            s.get(Counter::InnerChecksumsCompleted),
            s.get(Counter::Delivered)
        ),
        (2, 2)
    );
    assert_balanced(&n2);
}

#[test]
fn corrupt_inner_checksum_is_a_named_drop() {
    let mut n2 = node2();
    let mut tcp = syn(full_checksum(6, &syn([0, 0]), 16));
    tcp[14] ^= 0x01; // the window changed on the way
    let ip = ip_pkt(A_IP, C_IP, 6, 64, 0x4000, &tcp);
    assert_eq!(
        tunnel_in(&mut n2, N1_UNDERLAY, &kernel_datagram(&ip), 0),
        Err(DropReason::BadInnerChecksum)
    );
    let mut u = udp(4000, 53, b"abc");
    u[6..8].copy_from_slice(&[0x12, 0x34]);
    let ip = ip_pkt(A_IP, C_IP, 17, 64, 0, &u);
    assert_eq!(
        tunnel_in(&mut n2, N1_UNDERLAY, &kernel_datagram(&ip), 0),
        Err(DropReason::BadInnerChecksum)
    );
    let c = n2.counters();
    assert_eq!(c.drop_count(DropReason::BadInnerChecksum), 2);
    assert_eq!(
        c.snapshot().drops,
        vec![("bad_inner_checksum", 2)],
        "named in the metrics"
    );
    assert_balanced(&n2);
}

#[test]
fn udp_without_checksum_and_fragments_are_delivered_unchanged() {
    let mut n2 = node2();
    // UDP checksum 0 (RFC 768: none computed): DATA_VALID, bytes unchanged.
    let u = udp(4000, 53, b"no checksum");
    let ip = ip_pkt(A_IP, C_IP, 17, 64, 0, &u);
    let bytes = delivered_to_c(&mut n2, &kernel_datagram(&ip));
    assert_eq!(bytes[0], VNET_HDR_F_DATA_VALID);
    assert_eq!(&bytes[24 + 20..], &u[..]);
    // A first fragment with a checksum that cannot be verified alone: flags 0.
    let mut t = syn([0xde, 0xad]);
    t.extend_from_slice(&[7; 16]);
    let ip = ip_pkt(A_IP, C_IP, 6, 64, 0x2000, &t);
    let bytes = delivered_to_c(&mut n2, &kernel_datagram(&ip));
    assert_eq!(bytes[0], 0, "fragment: the pod reassembles and verifies");
    assert_eq!(&bytes[24 + 20..], &t[..]);
    // ICMP is not ours to check either.
    let ip = ip_pkt(A_IP, C_IP, 1, 64, 0, &echo_request(1, 1, b"icmp"));
    assert_eq!(delivered_to_c(&mut n2, &kernel_datagram(&ip))[0], 0);
    assert_eq!(
        n2.counters()
            .snapshot()
            .get(Counter::InnerChecksumsCompleted),
        0
    );
    assert_balanced(&n2);
}

#[test]
fn needs_csum_tcp_from_a_pod_leaves_through_the_tunnel_complete() {
    let (mut n1, mut n2) = (node1(), node2());
    let tcp = tcp_partial(A_IP, C_IP, 77, 0x18, b"GET / HTTP/1.1\r\n\r\n");
    let ip = ip_pkt(A_IP, C_IP, 6, 64, 0x4000, &tcp);
    let mut f = vnet(VNET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 16);
    f.extend_from_slice(&from_a(&ip)[10..]);
    let d = datagrams_of(run(&mut n1, A, &f, 0), N2_UNDERLAY);
    assert_eq!(d.len(), 1);
    let inner = assert_vxlan(&d[0], VTEP1, VTEP2);
    assert!(tcp_ok(inner), "complete TCP checksum inside the tunnel");
    // Node 2 finds it valid: nothing to complete.
    let bytes = delivered_to_c(&mut n2, &d[0]);
    assert_eq!(bytes[0], VNET_HDR_F_DATA_VALID);
    assert_eq!(&bytes[24 + 20..], &inner[20..]);
    assert_eq!(
        n2.counters()
            .snapshot()
            .get(Counter::InnerChecksumsCompleted),
        0
    );
    // Routed between local ports, the same frame keeps its header: the receiving
    // pod's TAP finishes the checksum.
    let ip_b = ip_pkt(
        A_IP,
        B_IP,
        6,
        64,
        0x4000,
        &tcp_partial(A_IP, B_IP, 1, 0x18, b"x"),
    );
    let mut f = vnet(VNET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 16);
    f.extend_from_slice(&from_a(&ip_b)[10..]);
    let (o, buf) = run_inplace(&mut n1, A, &f);
    assert_eq!(o, Ok(Forward(B)));
    assert_eq!(&buf[..10], &f[..10], "virtio-net header untouched");
    assert_eq!(
        &buf[24 + 20..],
        &ip_b[20..],
        "partial checksum left to the TAP"
    );
}

// ---------------------------------------------------------------- decapsulation drops

/// A valid datagram from node 1 to pod C.
fn datagram_to_c() -> Vec<u8> {
    let ip = ip_pkt(A_IP, C_IP, 17, 64, 0, &udp(1, 2, b"abcdefgh"));
    datagrams_of(run(&mut node1(), A, &from_a(&ip), 0), N2_UNDERLAY).remove(0)
}

#[test]
fn decapsulation_drops_are_named() {
    let mut n2 = node2();
    let good = datagram_to_c();
    assert!(matches!(
        tunnel_in(&mut n2, N1_UNDERLAY, &good, 0),
        Ok(Outcome::ToPort(C, _))
    ));
    let cases: Vec<(Ipv4Addr, Vec<u8>, DropReason)> = vec![
        (
            Ipv4Addr::new(198, 18, 0, 9),
            good.clone(),
            DropReason::NotClusterNode,
        ),
        (N2_UNDERLAY, good.clone(), DropReason::NotClusterNode),
        (
            N1_UNDERLAY,
            {
                let mut d = good.clone();
                d[6] = 2;
                d
            },
            DropReason::WrongVni,
        ),
        (
            N1_UNDERLAY,
            {
                let mut d = good.clone();
                d[0] = 0;
                d
            },
            DropReason::BadVxlan,
        ),
        (
            N1_UNDERLAY,
            {
                let mut d = good.clone();
                d[8] = 0x0b;
                d
            },
            DropReason::NotOurVtep,
        ),
        (
            N1_UNDERLAY,
            {
                let mut d = good.clone();
                d[20] = 0x86;
                d[21] = 0xdd;
                d
            },
            DropReason::UnsupportedProtocol,
        ),
        (
            N1_UNDERLAY,
            {
                let mut d = good.clone();
                d[22 + 10] ^= 1;
                d
            },
            DropReason::BadChecksum,
        ),
        (
            N1_UNDERLAY,
            {
                let mut d = good.clone();
                d[22] = 0x65;
                d
            },
            DropReason::BadHeader,
        ),
    ];
    for (src, d, want) in cases {
        assert_eq!(tunnel_in(&mut n2, src, &d, 0), Err(want), "{want:?}");
    }
    // Reserved bits are ignored (RFC 7348).
    let mut d = good.clone();
    d[1] = 0xff;
    d[7] = 0xff;
    assert!(matches!(
        tunnel_in(&mut n2, N1_UNDERLAY, &d, 0),
        Ok(Outcome::ToPort(C, _))
    ));
    // Without a tunnel configured, nothing is accepted.
    let mut plain = pipeline();
    assert_eq!(
        tunnel_in(&mut plain, N1_UNDERLAY, &good, 0),
        Err(DropReason::TunnelNotConfigured)
    );
    assert_balanced(&n2);
}

#[test]
fn truncated_at_every_length() {
    let good = datagram_to_c();
    for len in 0..good.len() {
        let mut n2 = node2();
        let want = if len < 8 {
            DropReason::BadVxlan
        } else {
            DropReason::Truncated
        };
        assert_eq!(
            tunnel_in(&mut n2, N1_UNDERLAY, &good[..len], 0),
            Err(want),
            "len {len}"
        );
        assert_balanced(&n2);
    }
}

#[test]
fn decapsulated_traffic_never_goes_back_into_the_tunnel() {
    let mut n2 = node2();
    // Node 1 sends node 2 a packet from one of its pods for its own subnet.
    let ip = ip_pkt(A_IP, B_IP, 17, 64, 0, &udp(1, 2, b"loop"));
    let mut d = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    d.extend_from_slice(&VTEP2.0);
    d.extend_from_slice(&VTEP1.0);
    d.extend_from_slice(&[0x08, 0x00]);
    d.extend_from_slice(&ip);
    assert_eq!(
        tunnel_in(&mut n2, N1_UNDERLAY, &d, 0),
        Err(DropReason::TunnelLoop)
    );
}

#[test]
fn route_snapshots_are_swapped_in() {
    let mut p = node1();
    p.routes()
        .store(Arc::new(RouteSnapshot::empty_for(net24(Ipv4Addr::new(
            10, 244, 1, 0,
        )))));
    let ip = ip_pkt(A_IP, C_IP, 17, 64, 0, &udp(1, 2, b""));
    // Without the peer (and with the cluster = the local subnet): net unreachable.
    let Ok(Reply(r)) = run(&mut p, A, &from_a(&ip), 0) else {
        panic!("no error")
    };
    assert_eq!(&r[24 + 20..24 + 22], &[3, 0]);
    let n2 = peer("node-2", N2_UNDERLAY, VTEP2, Ipv4Addr::new(10, 244, 2, 0));
    let snap = RouteSnapshot::build(net24(Ipv4Addr::new(10, 244, 1, 0)), cluster(), vec![n2]);
    p.routes().store(Arc::new(snap.unwrap()));
    assert_eq!(
        datagrams_of(run(&mut p, A, &from_a(&ip), 0), N2_UNDERLAY).len(),
        1
    );
    assert_eq!(p.routes().load().len(), 2);
}

// ---------------------------------------------------------------- properties

/// A datagram that gets past the VXLAN checks often: our VNI, our VTEP MAC or
/// another, an interesting EtherType, and arbitrary or mutated bytes after.
fn tunnel_datagram() -> impl Strategy<Value = Vec<u8>> {
    let good = datagram_to_c();
    let mutated = (
        Just(good),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    )
        .prop_map(|(mut d, flips)| {
            for (i, v) in flips {
                let at = i.index(d.len());
                d[at] = v;
            }
            d
        });
    let semi = (
        prop::sample::select(vec![VTEP2, VTEP1, MacAddr::BROADCAST]),
        prop::collection::vec(any::<u8>(), 0..120),
    )
        .prop_map(|(dst, rest)| {
            let mut d = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
            d.extend_from_slice(&dst.0);
            d.extend_from_slice(&VTEP1.0);
            d.extend_from_slice(&[0x08, 0x00, 0x45, 0x00]);
            d.extend_from_slice(&rest);
            d
        });
    prop_oneof![prop::collection::vec(any::<u8>(), 0..200), semi, mutated]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn process_tunnel_never_panics(
        inputs in prop::collection::vec((any::<bool>(), tunnel_datagram()), 1..10)
    ) {
        let mut n2 = node2();
        let mut out = vec![0u8; OUT_BUF_LEN];
        for (known, mut d) in inputs {
            let src = if known { N1_UNDERLAY } else { Ipv4Addr::new(198, 18, 0, 7) };
            match n2.process_tunnel(SocketAddrV4::new(src, 4789), &mut d, 0, &mut out) {
                Action::ToPort(port, bytes) => {
                    prop_assert!(n2.port_role(port).is_some());
                    prop_assert!(bytes[1..VNET_HDR_LEN].iter().all(|b| *b == 0));
                    match bytes[0] {
                        0 => {}
                        VNET_HDR_F_DATA_VALID => prop_assert!(l4_checksum_ok(&bytes[24..])),
                        f => prop_assert!(false, "flags {:#x}", f),
                    }
                }
                Action::Tunnel { peer, datagrams, segment_len, .. } => {
                    prop_assert_eq!(peer, N1_UNDERLAY);
                    prop_assert!(segment_len > 0 && !datagrams.is_empty());
                }
                Action::Drop(reason) => prop_assert!(DropReason::ALL.contains(&reason)),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        assert_balanced(&n2);
    }

    #[test]
    fn routed_frames_never_panic(
        inputs in prop::collection::vec((0u16..4, any_frame(), 0u8..4), 1..20)
    ) {
        let mut n1 = node1();
        let mut out = vec![0u8; OUT_BUF_LEN];
        for (port, mut f, ttl) in inputs {
            // Point some frames at the gateway and at node 2 with a small TTL.
            if f.len() > 24 + 20 && ttl > 0 {
                f[10..16].copy_from_slice(&GW_MAC.0);
                f[24 + 8] = ttl;
                f[24 + 16..24 + 20].copy_from_slice(&C_IP.octets());
            }
            let ingress = PortId(port);
            match n1.process(ingress, &mut f, 0, &mut out) {
                Action::Forward(to) => prop_assert_ne!(to, ingress),
                Action::Tunnel { peer, .. } => prop_assert_eq!(peer, N2_UNDERLAY),
                Action::ToPort(..) => prop_assert!(false, "ToPort only comes from the tunnel"),
                _ => {}
            }
        }
        assert_balanced(&n1);
    }
}
