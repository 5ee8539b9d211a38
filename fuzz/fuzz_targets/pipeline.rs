//! The whole data plane on arbitrary input: the first byte picks the ingress
//! (a pod port, the host port, or the tunnel), the rest is the packet. Routes to a
//! peer node and a service with two backends are loaded, so every stage — bridge,
//! router, load balancer, tunnel encapsulation and decapsulation — is reachable.
//! Nothing may panic; Forward/Flood never target the ingress port.
//!
//! Before the input, one tracked service flow is primed: a TCP SYN from pod
//! 10.244.1.2:40000 to the ClusterIP, sent as the first fragment of a datagram
//! (identification 0x1234), so the flow table and the fragment table both hold
//! an entry and the paths that need one (replies, ICMP errors about the flow,
//! later fragments) are reachable from the input.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tapestry_dataplane::{
    Action, Affinity, Backend, L4Proto, MacAddr, Peer, Pipeline, PipelineConfig, PortId, PortRole, RouteSnapshot,
    ServiceEntry, ServiceTable, TunnelConfig, Ipv4Cidr, OUT_BUF_LEN,
};

/// The network `addr/len` (setup only: a bad prefix here is a bug in this file).
fn net(addr: Ipv4Addr, len: u8) -> Ipv4Cidr {
    Ipv4Cidr::new(addr, len).unwrap_or_else(|| panic!("bad CIDR {addr}/{len}"))
}

fn pipeline() -> Pipeline {
    let gw = Ipv4Addr::new(10, 244, 1, 1);
    let mut cfg = PipelineConfig::new(gw, MacAddr([0x0a, 0x58, 10, 244, 1, 1]), net(Ipv4Addr::new(10, 244, 1, 0), 24));
    cfg.tunnel = Some(TunnelConfig::new(Ipv4Addr::new(198, 18, 0, 1), MacAddr([0x0a, 0x58, 198, 18, 0, 1]), 1500));
    cfg.host_ip = Some(Ipv4Addr::new(10, 244, 1, 254));
    // Small tables: a fresh pipeline per input must be cheap.
    cfg.mac_capacity = 64;
    cfg.conntrack_capacity = 256;
    let mut p = Pipeline::new(cfg);
    p.add_port(PortId(0), PortRole::Host);
    p.add_port(PortId(1), PortRole::Pod { mac: MacAddr([0x0a, 0x58, 10, 244, 1, 2]), ip: Ipv4Addr::new(10, 244, 1, 2) });
    p.add_port(PortId(2), PortRole::Pod { mac: MacAddr([0x0a, 0x58, 10, 244, 1, 3]), ip: Ipv4Addr::new(10, 244, 1, 3) });
    let peers = vec![Peer {
        name: "node2".into(),
        underlay_ip: Ipv4Addr::new(198, 18, 0, 2),
        vtep_mac: MacAddr([0x0a, 0x58, 198, 18, 0, 2]),
        subnet: net(Ipv4Addr::new(10, 244, 2, 0), 24),
    }];
    if let Ok(routes) = RouteSnapshot::build(net(Ipv4Addr::new(10, 244, 1, 0), 24), net(Ipv4Addr::new(10, 244, 0, 0), 16), peers) {
        p.routes().store(Arc::new(routes));
    }
    let svc = ServiceEntry {
        name: "default/web:http".into(),
        vip: Ipv4Addr::new(10, 96, 1, 0),
        port: 80,
        proto: L4Proto::Tcp,
        backends: vec![
            Backend { ip: Ipv4Addr::new(10, 244, 1, 3), port: 8080 },
            Backend { ip: Ipv4Addr::new(10, 244, 2, 2), port: 8080 },
        ],
        affinity: Affinity::None,
    };
    if let Ok(table) = ServiceTable::build(vec![svc]) {
        p.services().store(Arc::new(table));
    }
    p
}

/// The priming frame: virtio-net header, Ethernet to the gateway, IPv4 first
/// fragment (MF, id 0x1234), TCP SYN 10.244.1.2:40000 → 10.96.1.0:80.
fn priming_syn() -> Vec<u8> {
    let ip = etherparse::Ipv4Header {
        identification: 0x1234,
        more_fragments: true,
        time_to_live: 64,
        source: [10, 244, 1, 2],
        destination: [10, 96, 1, 0],
        ..Default::default()
    };
    let mut f = vec![0u8; 10];
    let built = etherparse::PacketBuilder::ethernet2([0x0a, 0x58, 10, 244, 1, 2], [0x0a, 0x58, 10, 244, 1, 1])
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(40_000, 80, 1, 0xffff)
        .syn()
        .write(&mut f, &[]);
    assert!(built.is_ok(), "the priming SYN builds");
    f
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, pkt)) = data.split_first() else { return };
    let mut p = pipeline();
    let mut out = vec![0u8; OUT_BUF_LEN];
    let mut syn = priming_syn();
    let _ = p.process(PortId(1), &mut syn, 0, &mut out);
    assert_eq!(p.conntrack_len(), 1, "the priming SYN starts a flow");
    let mut pkt = pkt.to_vec();
    // With the selector's top bit set, an IPv4 header where a port's frame has
    // one (after the virtio-net and Ethernet headers; after VXLAN and Ethernet
    // from the tunnel) gets a valid checksum, so mutations get past the router's
    // first check and reach the deeper stages.
    if sel & 0x80 != 0 {
        let at = if sel % 4 == 3 { 8 + 14 } else { 10 + 14 };
        if let Some(hdr) = pkt.get_mut(at..) {
            let hlen = usize::from(hdr.first().copied().unwrap_or(0) & 0x0f) * 4;
            if hlen >= 20 && hdr.len() >= hlen {
                hdr[10] = 0;
                hdr[11] = 0;
                let sum = tapestry_dataplane::wire::checksum::checksum(&hdr[..hlen]);
                hdr[10..12].copy_from_slice(&sum.to_be_bytes());
            }
        }
    }
    let now = u64::from(sel & 0x7f) * 1_000_000;
    match sel % 4 {
        3 => {
            let from = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40_000);
            let _ = p.process_tunnel(from, &mut pkt, now, &mut out);
        }
        port => {
            let ingress = PortId(u16::from(port));
            if let Action::Forward(to) = p.process(ingress, &mut pkt, now, &mut out) {
                assert_ne!(to, ingress, "forwarded back out of the ingress port");
            }
        }
    }
    let _ = p.maintain(now + 1);
});
