//! Restart without loss: the load balancer's flows written to a flow file by one
//! pipeline are restored by the next (`tables/flow_file.rs`), replies first or
//! client first, with the service's endpoints changed in between.

use super::lb::{endpoints, go, ip_of, tcp, to_gw, udp, VIP};
use super::*;
use crate::tables::flow_file::{flow_file_len, init_flow_file, FLOW_FILE_HEADER_LEN};
use crate::tables::service_table::{Affinity, ServiceEntry, ServiceTable};
use crate::types::{Backend, L4Proto};
use crate::wire::tcp::{TCP_ACK, TCP_RST, TCP_SYN};

const D: PortId = PortId(3);
const D_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
const D_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x04);

fn web(backends: &[Ipv4Addr]) -> ServiceTable {
    let entry = |port, proto, target| ServiceEntry {
        name: format!("default/web:{port}"),
        vip: VIP,
        port,
        proto,
        backends: backends
            .iter()
            .map(|ip| Backend {
                ip: *ip,
                port: target,
            })
            .collect(),
        affinity: Affinity::None,
    };
    ServiceTable::build(vec![
        entry(80, L4Proto::Tcp, 8080),
        entry(53, L4Proto::Udp, 5353),
    ])
    .unwrap()
}

/// A node with pods A, B, D, nothing published, and a flow file attached.
fn node(mem: Vec<u8>) -> (Pipeline, crate::Restored) {
    let mut p = pipeline_with(config());
    p.add_port(
        D,
        PortRole::Pod {
            mac: D_MAC,
            ip: D_IP,
        },
    );
    let restored = p.attach_flow_file(Box::new(mem), 0).unwrap();
    (p, restored)
}

fn fresh_file() -> Vec<u8> {
    let cap = config().conntrack_capacity;
    let mut mem = vec![0u8; flow_file_len(cap)];
    init_flow_file(&mut mem, cap);
    mem
}

/// The bytes a first agent leaves: A talks to web:80 over TCP (two
/// connections) and web:53 over UDP, all to backend B, the only one.
fn first_life() -> Vec<u8> {
    let (mut p, r) = node(fresh_file());
    assert_eq!(r, crate::Restored::default());
    p.services().store(Arc::new(web(&[B_IP])));
    for sport in [40_000, 40_001] {
        let syn = to_gw(A_MAC, &tcp(A_IP, sport, VIP, 80, 1, 0, TCP_SYN, b""));
        assert_eq!(go(&mut p, A, &syn, SEC).0, Ok(Forward(B)));
        let synack = frame(
            A_MAC,
            B_MAC,
            0x0800,
            &tcp(B_IP, 8080, A_IP, sport, 9, 2, TCP_SYN | TCP_ACK, b""),
        );
        assert_eq!(go(&mut p, B, &synack, SEC).0, Ok(Forward(A)));
    }
    let q = to_gw(A_MAC, &udp(A_IP, 33_000, VIP, 53, b"q"));
    assert_eq!(go(&mut p, A, &q, SEC).0, Ok(Forward(B)));
    assert_eq!(p.conntrack_len(), 3);
    let mut mem = p.detach_flow_file().unwrap();
    mem.bytes().to_vec()
}

#[test]
fn flows_survive_a_restart_server_first_and_client_first_with_new_endpoints() {
    let (mut p, r) = node(first_life());
    assert_eq!((r.flows, r.rejected), (3, 0));
    let s = p.counters().snapshot();
    assert_eq!(s.get(Counter::ConntrackRestored), 3);
    // Upkeep before the cluster's services are read judges no backend.
    p.maintain(SEC);
    assert_eq!(p.conntrack_len(), 3);
    // While the agent was down, D became an endpoint: Maglev now sends some of
    // A's ports to D, but a restored connection stays on B.
    p.services().store(Arc::new(web(&[B_IP, D_IP])));
    let moved = (40_002u16..41_000)
        .find(|sport| {
            p.services()
                .load()
                .pick(VIP, 80, L4Proto::Tcp, (A_IP, *sport))
                .is_some_and(|b| b.ip == D_IP)
        })
        .unwrap();
    assert!(moved > 0);
    // Server first: B speaks on the first connection before A does.
    let push = frame(
        A_MAC,
        B_MAC,
        0x0800,
        &tcp(B_IP, 8080, A_IP, 40_000, 10, 2, TCP_ACK, b"hello"),
    );
    let (o, buf) = go(&mut p, B, &push, 2 * SEC);
    // The MAC table starts empty: A's MAC is flooded until A is heard from.
    assert_eq!(o, Ok(Flood));
    assert_eq!(
        endpoints(ip_of(&buf, A_MAC, B_MAC)),
        (VIP, 80, A_IP, 40_000),
        "the reply is un-NATed"
    );
    // Client first on both, whatever Maglev now says.
    for sport in [40_000, 40_001] {
        let data = to_gw(A_MAC, &tcp(A_IP, sport, VIP, 80, 2, 15, TCP_ACK, b"x"));
        let (o, buf) = go(&mut p, A, &data, 2 * SEC);
        assert_eq!(o, Ok(Forward(B)), "port {sport}");
        assert_eq!(
            endpoints(ip_of(&buf, B_MAC, GW_MAC)),
            (A_IP, sport, B_IP, 8080)
        );
    }
    let q = to_gw(A_MAC, &udp(A_IP, 33_000, VIP, 53, b"q"));
    assert_eq!(go(&mut p, A, &q, 2 * SEC).0, Ok(Forward(B)));
    // A flow whose backend left is dropped at the first table that lacks it.
    p.services().store(Arc::new(web(&[D_IP])));
    p.maintain(3 * SEC);
    assert_eq!(p.conntrack_len(), 0);
    assert_eq!(p.counters().snapshot().get(Counter::ConntrackFlushed), 3);
}

#[test]
fn changes_after_a_restart_are_written_too() {
    let (mut p, _) = node(first_life());
    p.services().store(Arc::new(web(&[B_IP])));
    let q = to_gw(A_MAC, &udp(A_IP, 33_001, VIP, 53, b"q"));
    assert_eq!(go(&mut p, A, &q, SEC).0, Ok(Forward(B)));
    // The connection on port 40_000 is reset: its state change is written.
    let rst = to_gw(A_MAC, &tcp(A_IP, 40_000, VIP, 80, 2, 0, TCP_RST, b""));
    assert_eq!(go(&mut p, A, &rst, SEC).0, Ok(Forward(B)));
    let bytes = p.detach_flow_file().unwrap().bytes().to_vec();
    let (p2, r) = node(bytes);
    assert_eq!((r.flows, r.rejected), (4, 0));
    let closing: Vec<u16> = p2
        .flows(0)
        .iter()
        .filter(|f| f.state == crate::FlowState::Closing)
        .map(|f| f.client.port())
        .collect();
    assert_eq!(closing, vec![40_000]);
}

#[test]
fn a_torn_record_is_skipped_and_counted_the_rest_restored() {
    let mut bytes = first_life();
    // A kill in the middle of writing record 1: half of it from another flow.
    let at = FLOW_FILE_HEADER_LEN + 64;
    for b in &mut bytes[at + 20..at + 64] {
        *b ^= 0x5a;
    }
    let (p, r) = node(bytes);
    assert_eq!((r.flows, r.rejected), (2, 1));
    let s = p.counters().snapshot();
    assert_eq!(s.get(Counter::ConntrackRestored), 2);
    assert_eq!(s.get(Counter::ConntrackRestoreRejected), 1);
    // The rewritten file holds exactly what was restored.
    let mut p = p;
    let bytes = p.detach_flow_file().unwrap().bytes().to_vec();
    let (_, r) = node(bytes);
    assert_eq!((r.flows, r.rejected), (2, 0));
}

#[test]
fn a_duplicated_record_is_restored_once() {
    let mut bytes = first_life();
    // A kill between "move the last record into the hole" and "clear the last".
    let rec = |i: usize| FLOW_FILE_HEADER_LEN + 64 * i;
    let copy = bytes[rec(2)..rec(3)].to_vec();
    bytes[rec(0)..rec(1)].copy_from_slice(&copy);
    let (p, r) = node(bytes);
    assert_eq!((r.flows, r.rejected), (2, 1));
    assert_eq!(p.conntrack_len(), 2);
}

#[test]
fn a_bad_header_is_refused_and_nothing_restored() {
    let mut bytes = first_life();
    bytes[8] ^= 1;
    let mut p = pipeline_with(config());
    assert!(p.attach_flow_file(Box::new(bytes), 0).is_err());
    assert_eq!(p.conntrack_len(), 0);
}

#[test]
fn an_attached_pod_is_told_the_gateway_address() {
    use crate::wire::{ArpOperation, ArpPacket, ArpRepr};
    let p = pipeline_with(config());
    let mut out = [0u8; 128];
    let f = p.gateway_announcement(A, &mut out).unwrap().to_vec();
    assert_eq!(&f[10..16], &A_MAC.0, "unicast to the pod");
    assert_eq!(&f[16..22], &GW_MAC.0);
    assert_eq!(&f[22..24], &[0x08, 0x06]);
    let arp = ArpRepr::parse(&ArpPacket::new_checked(&f[24..]).unwrap()).unwrap();
    assert_eq!(arp.operation, ArpOperation::Reply);
    assert_eq!(
        (arp.source_hardware_addr, arp.source_protocol_addr),
        (GW_MAC, GW_IP)
    );
    assert_eq!(
        (arp.target_hardware_addr, arp.target_protocol_addr),
        (A_MAC, A_IP)
    );
    assert!(p.gateway_announcement(HOST, &mut out).is_none());
    assert!(p.gateway_announcement(PortId(99), &mut out).is_none());
}
