//! The whole data plane on arbitrary input: the first byte picks the ingress
//! (a pod port, the host port, or the tunnel), the rest is the packet. Routes to a
//! peer node and a service with two backends are loaded, so every stage — bridge,
//! router, load balancer, tunnel encapsulation and decapsulation — is reachable.
//! Nothing may panic; Forward/Flood never target the ingress port.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tapestry_dataplane::{
    Action, Affinity, Backend, L4Proto, MacAddr, Peer, Pipeline, PipelineConfig, PortId, PortRole, RouteSnapshot,
    ServiceEntry, ServiceTable, TunnelConfig, OUT_BUF_LEN,
};

fn pipeline() -> Pipeline {
    let gw = Ipv4Addr::new(10, 244, 1, 1);
    let mut cfg = PipelineConfig::new(gw, MacAddr([0x0a, 0x58, 10, 244, 1, 1]), Ipv4Addr::new(10, 244, 1, 0), 24);
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
        subnet: Ipv4Addr::new(10, 244, 2, 0),
        prefix_len: 24,
    }];
    if let Ok(routes) = RouteSnapshot::build(Ipv4Addr::new(10, 244, 1, 0), 24, Ipv4Addr::new(10, 244, 0, 0), 16, peers) {
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

fuzz_target!(|data: &[u8]| {
    let Some((&sel, pkt)) = data.split_first() else { return };
    let mut p = pipeline();
    let mut out = vec![0u8; OUT_BUF_LEN];
    let mut pkt = pkt.to_vec();
    let now = u64::from(sel) * 1_000_000;
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
