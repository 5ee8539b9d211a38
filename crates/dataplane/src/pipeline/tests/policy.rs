//! NetworkPolicy through the whole pipeline: egress at the sender's node, ingress at
//! the receiver's, replies of allowed flows, a new table cutting flows, the node's own
//! traffic, and service traffic judged on the backend.

use super::lb::{endpoints, go, ip_of, lb_node, tcp, to_gw, udp, VIP};
use super::routing::{
    datagrams_of, node1, node2, tunnel_in, C, C_IP, C_MAC, GW2_MAC, N1_UNDERLAY, N2_UNDERLAY,
};
use super::*;
use crate::tables::policy::{
    IpBlock, PodPolicy, PolicyId, PolicyPeers, PolicyPort, PolicyPorts, PolicyRule, PolicyTable,
    PortProtocol, RuleSetSpec,
};
use crate::wire::tcp::{TCP_ACK, TCP_SYN};

const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 254);

fn publish(p: &Pipeline, pods: &[PodPolicy]) {
    p.policies()
        .store(Arc::new(PolicyTable::build(pods).unwrap()));
}

/// Default deny, by policy `id`.
fn deny(id: u16) -> Option<RuleSetSpec> {
    Some(RuleSetSpec {
        policies: vec![PolicyId(id)],
        rules: vec![],
    })
}

/// Allows `peer` on `proto` `port` only, by policy `id`.
fn allow(id: u16, peer: Ipv4Addr, protocol: PortProtocol, port: u16) -> Option<RuleSetSpec> {
    Some(RuleSetSpec {
        policies: vec![PolicyId(id)],
        rules: vec![PolicyRule {
            peers: PolicyPeers::Blocks(vec![IpBlock::new(Ipv4Cidr::new(peer, 32).unwrap())]),
            ports: PolicyPorts::List(vec![PolicyPort {
                protocol,
                first: port,
                last: port,
            }]),
        }],
    })
}

fn pod(ip: Ipv4Addr, ingress: Option<RuleSetSpec>, egress: Option<RuleSetSpec>) -> PodPolicy {
    PodPolicy {
        pod: ip,
        ingress,
        egress,
    }
}

/// A TCP segment from `src` to `dst`, bridged to `dst_mac`.
fn seg(
    dst_mac: MacAddr,
    src_mac: MacAddr,
    (src, sport): (Ipv4Addr, u16),
    (dst, dport): (Ipv4Addr, u16),
    flags: u8,
) -> Vec<u8> {
    frame(
        dst_mac,
        src_mac,
        0x0800,
        &tcp(src, sport, dst, dport, 1, 1, flags, b"x"),
    )
}

/// Pods A and B and the host, with A's and B's MACs learned (so that bridged frames
/// are forwarded, not flooded), before any policy.
fn learned() -> Pipeline {
    let mut p = pipeline();
    for (port, mac, ip) in [(A, A_MAC, A_IP), (B, B_MAC, B_IP)] {
        let hello = data_frame(HOST_MAC, mac, ip, Ipv4Addr::new(10, 244, 1, 9));
        assert!(go(&mut p, port, &hello, 0).0.is_ok());
    }
    p
}

fn denied(p: &Pipeline) -> u64 {
    p.counters().drop_count(DropReason::PolicyDenied)
}

#[test]
fn egress_default_deny_drops_a_pods_syn() {
    let mut p = learned();
    publish(&p, &[pod(A_IP, None, deny(1))]);
    let syn = seg(B_MAC, A_MAC, (A_IP, 40000), (B_IP, 80), TCP_SYN);
    assert_eq!(go(&mut p, A, &syn, SEC).0, Err(DropReason::PolicyDenied));
    // UDP and ping too; nothing is tracked for denied packets.
    let q = frame(B_MAC, A_MAC, 0x0800, &udp(A_IP, 40000, B_IP, 53, b"q"));
    assert_eq!(go(&mut p, A, &q, SEC).0, Err(DropReason::PolicyDenied));
    let ping = frame(
        B_MAC,
        A_MAC,
        0x0800,
        &ipv4(A_IP, B_IP, 1, &echo_request(1, 1, b"")),
    );
    assert_eq!(go(&mut p, A, &ping, SEC).0, Err(DropReason::PolicyDenied));
    assert_eq!(p.policy_flows_len(), 0);
    assert_eq!(denied(&p), 3);
    assert_eq!(p.policy_counters().denied(PolicyId(1)), 3);
    // B is selected by nothing: it still reaches A.
    let syn = seg(A_MAC, B_MAC, (B_IP, 40000), (A_IP, 80), TCP_SYN);
    assert!(go(&mut p, B, &syn, SEC).0.is_ok());
    assert_counters_balance(&p);
}

#[test]
fn an_allowed_connections_replies_pass_whatever_the_client_ingress_says() {
    let mut p = learned();
    publish(
        &p,
        &[pod(A_IP, deny(1), allow(2, B_IP, PortProtocol::Tcp, 80))],
    );
    let syn = seg(B_MAC, A_MAC, (A_IP, 40000), (B_IP, 80), TCP_SYN);
    assert_eq!(go(&mut p, A, &syn, SEC).0, Ok(Forward(B)));
    assert_eq!(p.policy_flows_len(), 1);
    // B's answer enters A, whose ingress is a default deny: a reply, it passes.
    let synack = seg(A_MAC, B_MAC, (B_IP, 80), (A_IP, 40000), TCP_SYN | TCP_ACK);
    assert_eq!(go(&mut p, B, &synack, SEC).0, Ok(Forward(A)));
    let ack = seg(B_MAC, A_MAC, (A_IP, 40000), (B_IP, 80), TCP_ACK);
    assert_eq!(go(&mut p, A, &ack, 2 * SEC).0, Ok(Forward(B)));
    assert_eq!(p.policy_flows_len(), 1, "one entry, both directions");
    // The rule is TCP 80 to B: not 81, not UDP 80, not B connecting to A.
    let other = seg(B_MAC, A_MAC, (A_IP, 40001), (B_IP, 81), TCP_SYN);
    assert_eq!(
        go(&mut p, A, &other, 2 * SEC).0,
        Err(DropReason::PolicyDenied)
    );
    let u = frame(B_MAC, A_MAC, 0x0800, &udp(A_IP, 40000, B_IP, 80, b"q"));
    assert_eq!(go(&mut p, A, &u, 2 * SEC).0, Err(DropReason::PolicyDenied));
    let back = seg(A_MAC, B_MAC, (B_IP, 5000), (A_IP, 80), TCP_SYN);
    assert_eq!(
        go(&mut p, B, &back, 2 * SEC).0,
        Err(DropReason::PolicyDenied)
    );
    assert_eq!(p.policy_counters().denied(PolicyId(2)), 2, "egress");
    assert_eq!(p.policy_counters().denied(PolicyId(1)), 1, "ingress");
    assert_counters_balance(&p);
}

#[test]
fn replies_pass_an_egress_default_deny_on_the_server() {
    let mut p = learned();
    publish(&p, &[pod(B_IP, None, deny(4))]);
    let q = frame(B_MAC, A_MAC, 0x0800, &udp(A_IP, 40000, B_IP, 53, b"q"));
    assert_eq!(go(&mut p, A, &q, SEC).0, Ok(Forward(B)));
    let r = frame(A_MAC, B_MAC, 0x0800, &udp(B_IP, 53, A_IP, 40000, b"r"));
    assert_eq!(go(&mut p, B, &r, SEC).0, Ok(Forward(A)));
    // Expired (UDP: 30 s), the reply is a new flow from B: denied.
    assert_eq!(go(&mut p, B, &r, 40 * SEC).0, Err(DropReason::PolicyDenied));
}

#[test]
fn ingress_deny_at_the_destination_node_for_tunnel_traffic() {
    let mut n1 = node1();
    let mut n2 = node2();
    publish(
        &n2,
        &[pod(C_IP, allow(9, A_IP, PortProtocol::Tcp, 80), None)],
    );
    let send = |n1: &mut Pipeline, sport, dport| {
        let syn = to_gw(A_MAC, &tcp(A_IP, sport, C_IP, dport, 1, 0, TCP_SYN, b""));
        datagrams_of(go(n1, A, &syn, SEC).0, N2_UNDERLAY)
    };
    // Node 1 has no policy: A's egress is open; node 2 judges C's ingress.
    let d = send(&mut n1, 40000, 81);
    assert_eq!(
        tunnel_in(&mut n2, N1_UNDERLAY, &d[0], SEC),
        Err(DropReason::PolicyDenied)
    );
    assert_eq!(n2.policy_counters().denied(PolicyId(9)), 1);
    let d = send(&mut n1, 40000, 80);
    let Ok(Outcome::ToPort(port, f)) = tunnel_in(&mut n2, N1_UNDERLAY, &d[0], SEC) else {
        panic!("allowed SYN not delivered")
    };
    assert_eq!(port, C);
    assert_eq!(
        endpoints(ip_of(&f, C_MAC, GW2_MAC)),
        (A_IP, 40000, C_IP, 80)
    );
    // C's answer goes out through the tunnel (a reply of a tracked flow).
    let synack = frame(
        GW2_MAC,
        C_MAC,
        0x0800,
        &tcp(C_IP, 80, A_IP, 40000, 9, 2, TCP_SYN | TCP_ACK, b""),
    );
    datagrams_of(go(&mut n2, C, &synack, SEC).0, N1_UNDERLAY);
    assert_eq!(n2.policy_flows_len(), 1);
    assert_eq!(n1.policy_flows_len(), 0, "node 1 tracks nothing: no policy");
}

#[test]
fn a_new_table_cuts_a_flow_it_no_longer_allows_at_its_next_packet() {
    let mut p = learned();
    publish(
        &p,
        &[pod(A_IP, None, allow(2, B_IP, PortProtocol::Tcp, 80))],
    );
    let syn = seg(B_MAC, A_MAC, (A_IP, 40000), (B_IP, 80), TCP_SYN);
    assert_eq!(go(&mut p, A, &syn, SEC).0, Ok(Forward(B)));
    let synack = seg(A_MAC, B_MAC, (B_IP, 80), (A_IP, 40000), TCP_SYN | TCP_ACK);
    assert_eq!(go(&mut p, B, &synack, SEC).0, Ok(Forward(A)));
    // An equal table: the flow is judged again and still allowed.
    publish(
        &p,
        &[pod(A_IP, None, allow(2, B_IP, PortProtocol::Tcp, 80))],
    );
    let ack = seg(B_MAC, A_MAC, (A_IP, 40000), (B_IP, 80), TCP_ACK);
    assert_eq!(go(&mut p, A, &ack, 2 * SEC).0, Ok(Forward(B)));
    // Now A may reach B on 443 only: the established flow is cut at its next packet,
    // whichever direction it comes from.
    publish(
        &p,
        &[pod(A_IP, None, allow(2, B_IP, PortProtocol::Tcp, 443))],
    );
    let data = seg(A_MAC, B_MAC, (B_IP, 80), (A_IP, 40000), TCP_ACK);
    assert_eq!(
        go(&mut p, B, &data, 3 * SEC).0,
        Err(DropReason::PolicyDenied)
    );
    assert_eq!(p.policy_flows_len(), 0);
    assert_eq!(
        go(&mut p, A, &ack, 3 * SEC).0,
        Err(DropReason::PolicyDenied)
    );
    assert_eq!(p.counters().snapshot().get(Counter::ConntrackFlushed), 1);
    // No policy at all: everything passes again, untracked.
    p.policies().store(Arc::new(PolicyTable::empty()));
    assert_eq!(go(&mut p, A, &ack, 4 * SEC).0, Ok(Forward(B)));
    assert_eq!(p.policy_flows_len(), 0);
    assert_counters_balance(&p);
}

#[test]
fn the_node_reaches_its_pods_whatever_their_policies() {
    let mut c = config();
    c.host_ip = Some(HOST_IP);
    let mut p = pipeline_with(c);
    publish(&p, &[pod(A_IP, deny(1), deny(1))]);
    // A kubelet probe from the host, routed through the gateway.
    let probe = to_gw(
        HOST_MAC,
        &tcp(HOST_IP, 50000, A_IP, 8080, 1, 0, TCP_SYN, b""),
    );
    assert_eq!(go(&mut p, HOST, &probe, SEC).0, Ok(Forward(A)));
    // The answer, bridged to the host's MAC: to the node, allowed.
    let answer = seg(
        HOST_MAC,
        A_MAC,
        (A_IP, 8080),
        (HOST_IP, 50000),
        TCP_SYN | TCP_ACK,
    );
    assert_eq!(go(&mut p, A, &answer, SEC).0, Ok(Forward(HOST)));
    // Bridged from the host port straight to A's MAC.
    let direct = seg(A_MAC, HOST_MAC, (HOST_IP, 50001), (A_IP, 8080), TCP_SYN);
    assert_eq!(go(&mut p, HOST, &direct, SEC).0, Ok(Forward(A)));
    // From the host port with another source (the host routes for someone): still
    // the node's own port.
    let routed = to_gw(
        HOST_MAC,
        &tcp(
            Ipv4Addr::new(192, 0, 2, 1),
            1,
            A_IP,
            8080,
            1,
            0,
            TCP_SYN,
            b"",
        ),
    );
    assert_eq!(go(&mut p, HOST, &routed, SEC).0, Ok(Forward(A)));
    // But B, a pod, is refused.
    let syn = seg(A_MAC, B_MAC, (B_IP, 40000), (A_IP, 8080), TCP_SYN);
    assert_eq!(go(&mut p, B, &syn, SEC).0, Err(DropReason::PolicyDenied));
    assert_eq!(denied(&p), 1);
}

#[test]
fn service_traffic_is_judged_on_the_backend() {
    // VIP:80/TCP → B:8080.
    let mut p = lb_node();
    let syn = to_gw(A_MAC, &tcp(A_IP, 40000, VIP, 80, 1, 0, TCP_SYN, b""));
    // A may reach the ClusterIP's address, but policy is about pods: denied.
    publish(&p, &[pod(A_IP, None, allow(1, VIP, PortProtocol::Tcp, 80))]);
    assert_eq!(go(&mut p, A, &syn, SEC).0, Err(DropReason::PolicyDenied));
    // A may reach B:8080: the DNATed SYN passes.
    publish(
        &p,
        &[pod(A_IP, deny(3), allow(1, B_IP, PortProtocol::Tcp, 8080))],
    );
    let (o, buf) = go(&mut p, A, &syn, 2 * SEC);
    assert_eq!(o, Ok(Forward(B)));
    assert_eq!(
        endpoints(ip_of(&buf, B_MAC, GW_MAC)),
        (A_IP, 40000, B_IP, 8080)
    );
    // B's reply is un-NATed to come from the ClusterIP, and passes A's ingress deny.
    let synack = seg(A_MAC, B_MAC, (B_IP, 8080), (A_IP, 40000), TCP_SYN | TCP_ACK);
    let (o, buf) = go(&mut p, B, &synack, 2 * SEC);
    assert_eq!(o, Ok(Forward(A)));
    assert_eq!(endpoints(ip_of(&buf, A_MAC, B_MAC)), (VIP, 80, A_IP, 40000));
    // The backend's ingress is judged on its own port, after DNAT.
    publish(
        &p,
        &[pod(B_IP, allow(5, A_IP, PortProtocol::Tcp, 80), None)],
    );
    let syn2 = to_gw(A_MAC, &tcp(A_IP, 40001, VIP, 80, 1, 0, TCP_SYN, b""));
    assert_eq!(
        go(&mut p, A, &syn2, 3 * SEC).0,
        Err(DropReason::PolicyDenied)
    );
    assert_eq!(p.policy_counters().denied(PolicyId(5)), 1);
    publish(
        &p,
        &[pod(B_IP, allow(5, A_IP, PortProtocol::Tcp, 8080), None)],
    );
    let syn3 = to_gw(A_MAC, &tcp(A_IP, 40002, VIP, 80, 1, 0, TCP_SYN, b""));
    assert_eq!(go(&mut p, A, &syn3, 3 * SEC).0, Ok(Forward(B)));
    // UDP to the DNS service (VIP:53 → B:5353) is not opened by a TCP rule.
    let q = to_gw(A_MAC, &udp(A_IP, 40000, VIP, 53, b"q"));
    publish(
        &p,
        &[pod(B_IP, allow(5, A_IP, PortProtocol::Tcp, 5353), None)],
    );
    assert_eq!(go(&mut p, A, &q, 3 * SEC).0, Err(DropReason::PolicyDenied));
    assert_counters_balance(&p);
}

/// A's flow through the ClusterIP and its direct connection from the same port to
/// the same backend (remapped by the load balancer, see `lb.rs`) are two flows to
/// policy too: under A's default deny ingress, each one's replies pass as replies.
#[test]
fn a_remapped_direct_connection_is_its_own_flow_to_policy() {
    // VIP:80/TCP → B:8080.
    let mut p = lb_node();
    publish(
        &p,
        &[pod(A_IP, deny(3), allow(1, B_IP, PortProtocol::Tcp, 8080))],
    );
    let syn = to_gw(A_MAC, &tcp(A_IP, 40000, VIP, 80, 1, 0, TCP_SYN, b""));
    assert_eq!(go(&mut p, A, &syn, SEC).0, Ok(Forward(B)));
    let synack = seg(A_MAC, B_MAC, (B_IP, 8080), (A_IP, 40000), TCP_SYN | TCP_ACK);
    let (o, buf) = go(&mut p, B, &synack, SEC);
    assert_eq!(o, Ok(Forward(A)));
    assert_eq!(endpoints(ip_of(&buf, A_MAC, B_MAC)), (VIP, 80, A_IP, 40000));

    let direct = seg(B_MAC, A_MAC, (A_IP, 40000), (B_IP, 8080), TCP_SYN);
    let (o, buf) = go(&mut p, A, &direct, 2 * SEC);
    assert_eq!(o, Ok(Forward(B)));
    let (_, remapped, _, _) = endpoints(ip_of(&buf, B_MAC, A_MAC));
    assert_ne!(remapped, 40000);
    let direct_synack = seg(
        A_MAC,
        B_MAC,
        (B_IP, 8080),
        (A_IP, remapped),
        TCP_SYN | TCP_ACK,
    );
    let (o, buf) = go(&mut p, B, &direct_synack, 2 * SEC);
    assert_eq!(o, Ok(Forward(A)), "a reply of the direct flow");
    assert_eq!(
        endpoints(ip_of(&buf, A_MAC, B_MAC)),
        (B_IP, 8080, A_IP, 40000)
    );
    let (o, buf) = go(&mut p, B, &synack, 2 * SEC);
    assert_eq!(o, Ok(Forward(A)), "still a reply of the service flow");
    assert_eq!(endpoints(ip_of(&buf, A_MAC, B_MAC)), (VIP, 80, A_IP, 40000));
    // B opening a connection of its own to A is still denied.
    let syn_b = seg(A_MAC, B_MAC, (B_IP, 8080), (A_IP, 40001), TCP_SYN);
    assert_eq!(
        go(&mut p, B, &syn_b, 2 * SEC).0,
        Err(DropReason::PolicyDenied)
    );
    assert_counters_balance(&p);
}
