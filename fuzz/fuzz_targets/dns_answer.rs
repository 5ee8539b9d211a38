//! Cluster DNS on arbitrary query bytes, over UDP and TCP framing: an answer or
//! a drop, never a panic.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tapestry_dns::{answer, DnsData, EndpointRecord, PodRecord, PortRecord, ServiceKind, ServiceRecord, Transport, Zone};

fn zone() -> &'static Zone {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let port = PortRecord { name: Some("http".into()), protocol: "TCP".into(), port: 80 };
        let data = DnsData {
            services: vec![
                ServiceRecord {
                    name: "web".into(),
                    namespace: "default".into(),
                    kind: ServiceKind::ClusterIp(Ipv4Addr::new(10, 96, 1, 0)),
                    ports: vec![port.clone()],
                    endpoints: vec![EndpointRecord { ip: Ipv4Addr::new(10, 244, 1, 3), hostname: None, ports: vec![port.clone()] }],
                },
                ServiceRecord {
                    name: "web-pods".into(),
                    namespace: "default".into(),
                    kind: ServiceKind::Headless,
                    ports: vec![port.clone()],
                    endpoints: vec![EndpointRecord { ip: Ipv4Addr::new(10, 244, 1, 3), hostname: Some("web-a".into()), ports: vec![port] }],
                },
            ],
            pods: vec![PodRecord { name: "web-a".into(), namespace: "default".into(), ip: Ipv4Addr::new(10, 244, 1, 3) }],
            revision: None,
        };
        Zone::build(&data, "cluster.local", 5)
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = answer(zone(), data, Transport::Udp { max: 1232 }, None);
    let _ = answer(zone(), data, Transport::Tcp, None);
});
