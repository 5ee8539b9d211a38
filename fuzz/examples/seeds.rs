//! Writes the seed corpora the fuzz targets start from into `ROOT/TARGET/` (ROOT
//! defaults to `seeds`); `scripts/test.sh` runs every target from `fuzz/seeds/`,
//! where their output is checked in.
//!
//! - `pipeline`: frames, built with etherparse, that take the paths the primed
//!   service flow opens (see `fuzz_targets/pipeline.rs`). A backend's SYN-ACK and
//!   ICMP port unreachable, bridged from pod 10.244.1.3 and through the tunnel
//!   from 10.244.2.2 (Maglev picks one of the two for the primed flow), and a
//!   later fragment of the primed datagram. The first byte is the target's
//!   selector: the ingress, with the top bit set so the harness fixes the IPv4
//!   header checksum after mutation.
//! - `dns_answer`: queries for the names of the target's zone (A, SRV, PTR, AAAA,
//!   with and without EDNS) and one outside it.
//! - `manifest`: some of the lab's manifests (pods, services, policies).
//! - `control`: request lines of every kind and replies (an ADD's result, a
//!   status), behind the target's two selector bytes.
//!
//! ```sh
//! cargo run --example seeds [ROOT]
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use etherparse::{Icmpv4Type, IpHeaders, IpNumber, Ipv4Header, PacketBuilder};

const POD1: [u8; 4] = [10, 244, 1, 2];
const POD2: [u8; 4] = [10, 244, 1, 3];
const REMOTE: [u8; 4] = [10, 244, 2, 2];
const VIP: [u8; 4] = [10, 96, 1, 0];
const GW: [u8; 6] = [0x0a, 0x58, 10, 244, 1, 1];
const MAC1: [u8; 6] = [0x0a, 0x58, 10, 244, 1, 2];
const MAC2: [u8; 6] = [0x0a, 0x58, 10, 244, 1, 3];
const VTEP1: [u8; 6] = [0x0a, 0x58, 198, 18, 0, 1];
const VTEP2: [u8; 6] = [0x0a, 0x58, 198, 18, 0, 2];
/// A zeroed virtio-net header.
const VNET: [u8; 10] = [0; 10];
/// VXLAN with the I flag and VNI 1.
const VXLAN: [u8; 8] = [0x08, 0, 0, 0, 0, 0, 1, 0];

type Built = Result<(), Box<dyn std::error::Error>>;

/// IPv4 `src` → `dst`, identification 0x1234, TTL 64, `more_frags` and `offset`
/// (in 8-byte units).
fn ip(
    src: [u8; 4],
    dst: [u8; 4],
    more_frags: bool,
    offset: u16,
) -> Result<IpHeaders, Box<dyn std::error::Error>> {
    let h = Ipv4Header {
        identification: 0x1234,
        more_fragments: more_frags,
        fragment_offset: etherparse::IpFragOffset::try_new(offset)?,
        time_to_live: 64,
        source: src,
        destination: dst,
        ..Default::default()
    };
    Ok(IpHeaders::Ipv4(h, Default::default()))
}

/// `prefix`, then a SYN-ACK 8080 → 40000 from `backend` to pod 1.
fn synack(
    prefix: &[u8],
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    backend: [u8; 4],
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut f = prefix.to_vec();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ip(ip(backend, POD1, false, 0)?)
        .tcp(8080, 40_000, 9, 0xffff)
        .syn()
        .ack(2)
        .write(&mut f, &[])?;
    Ok(f)
}

/// `prefix`, then `backend`'s ICMP port unreachable about the primed flow's first
/// fragment (pod 1:40000 → backend:8080, SYN), quoting its IPv4 and TCP headers.
fn port_unreachable(
    prefix: &[u8],
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    backend: [u8; 4],
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut quote = Vec::new();
    let IpHeaders::Ipv4(mut quoted_ip, _) = ip(POD1, backend, true, 0)? else {
        return Err("not IPv4".into());
    };
    quoted_ip.protocol = IpNumber::TCP;
    quoted_ip.set_payload_len(20)?;
    quoted_ip.header_checksum = quoted_ip.calc_header_checksum();
    quote.extend_from_slice(&quoted_ip.to_bytes());
    let mut syn = etherparse::TcpHeader::new(40_000, 8080, 1, 0);
    syn.syn = true;
    quote.extend_from_slice(&syn.to_bytes());
    let unreachable =
        Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port);
    let mut f = prefix.to_vec();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ip(ip(backend, POD1, false, 0)?)
        .icmpv4(unreachable)
        .write(&mut f, &quote)?;
    Ok(f)
}

fn pipeline(out: &Path) -> Built {
    let local = [&[0x82][..], &VNET].concat();
    let tunnel = [&[0x83][..], &VXLAN].concat();
    let mut later_fragment = [&[0x81][..], &VNET].concat();
    PacketBuilder::ethernet2(MAC1, GW)
        .ip(ip(POD1, VIP, false, 1)?)
        .write(&mut later_fragment, IpNumber::TCP, &[0xab; 8])?;
    write(
        out,
        &[
            ("synack_local", synack(&local, MAC1, MAC2, POD2)?),
            ("icmp_local", port_unreachable(&local, MAC1, MAC2, POD2)?),
            ("synack_tunnel", synack(&tunnel, VTEP1, VTEP2, REMOTE)?),
            (
                "icmp_tunnel",
                port_unreachable(&tunnel, VTEP1, VTEP2, REMOTE)?,
            ),
            ("later_fragment", later_fragment),
        ],
    )
}

/// A DNS query (RD set) for `name`, type `qtype`, class IN, with an OPT record
/// advertising `edns` bytes when given.
fn query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(u8::try_from(label.len()).unwrap_or(63).min(63));
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    if let Some(size) = edns {
        // Root owner, TYPE OPT (41), CLASS = payload size, TTL 0, no options.
        q.extend_from_slice(&[0, 0, 41]);
        q.extend_from_slice(&size.to_be_bytes());
        q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    q
}

fn dns_answer(out: &Path) -> Built {
    const A: u16 = 1;
    const PTR: u16 = 12;
    const AAAA: u16 = 28;
    const SRV: u16 = 33;
    write(
        out,
        &[
            (
                "a_service",
                query(1, "web.default.svc.cluster.local", A, None),
            ),
            (
                "a_service_edns",
                query(2, "web.default.svc.cluster.local", A, Some(4096)),
            ),
            (
                "aaaa_service",
                query(3, "web.default.svc.cluster.local", AAAA, None),
            ),
            (
                "srv_port",
                query(
                    4,
                    "_http._tcp.web.default.svc.cluster.local",
                    SRV,
                    Some(1232),
                ),
            ),
            (
                "a_headless_pod",
                query(5, "web-a.web-pods.default.svc.cluster.local", A, None),
            ),
            (
                "a_headless",
                query(6, "web-pods.default.svc.cluster.local", A, None),
            ),
            (
                "a_pod",
                query(7, "10-244-1-3.default.pod.cluster.local", A, None),
            ),
            ("ptr", query(8, "3.1.244.10.in-addr.arpa", PTR, None)),
            (
                "ptr_service",
                query(10, "0.1.96.10.in-addr.arpa", PTR, None),
            ),
            ("a_elsewhere", query(9, "example.com", A, None)),
        ],
    )
}

fn manifest(out: &Path) -> Built {
    write(
        out,
        &[
            ("pods_web", include_str!("../../lab/pods/web.yaml").into()),
            (
                "services_web",
                include_str!("../../lab/services/web.yaml").into(),
            ),
            (
                "policy_namespaces",
                include_str!("../../lab/policy/00-namespaces.yaml").into(),
            ),
            (
                "policy_and_or",
                include_str!("../../lab/policy/40-and-versus-or.yaml").into(),
            ),
            (
                "policy_egress",
                include_str!("../../lab/policy/60-egress-ipblock-and-ports.yaml").into(),
            ),
        ],
    )
}

fn control(out: &Path) -> Built {
    use tapestry_proto::{
        AgentStatus, AttachResult, Attachment, FlowEntry, Interface, IpConfig, MacEntry,
        PortStatus, Reply, Request, Route, RouteEntry,
    };
    let attachment = Attachment {
        container_id: "3f2a9c".into(),
        netns: "/run/netns/web-a".into(),
        ifname: "eth0".into(),
        pod_namespace: "default".into(),
        pod_name: "web-a".into(),
    };
    let result = AttachResult {
        cni_version: "1.0.0".into(),
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: "0a:58:0a:f4:01:03".into(),
            sandbox: "/run/netns/web-a".into(),
        }],
        ips: vec![IpConfig {
            address: "10.244.1.3/24".into(),
            gateway: Ipv4Addr::new(10, 244, 1, 1),
            interface: 0,
        }],
        routes: vec![Route {
            dst: "0.0.0.0/0".into(),
            gw: Ipv4Addr::new(10, 244, 1, 1),
        }],
        mtu: 1450,
    };
    let status = AgentStatus {
        node: "node-1".into(),
        subnet: "10.244.1.0/24".into(),
        gateway_ip: Ipv4Addr::new(10, 244, 1, 1),
        gateway_mac: "0a:58:0a:f4:01:01".into(),
        mtu: 1450,
        ports: vec![PortStatus {
            port: 1,
            kind: "pod".into(),
            tap: "tp3f2a9c".into(),
            owner: "default/web-a".into(),
            container_id: "3f2a9c".into(),
            netns: "/run/netns/web-a".into(),
            ip: Ipv4Addr::new(10, 244, 1, 3),
            mac: "0a:58:0a:f4:01:03".into(),
            rx_frames: 12,
            tx_frames: 10,
            rx_bytes: 1400,
            tx_bytes: 1200,
            tx_errors: 0,
        }],
        mac_table: vec![MacEntry {
            mac: "0a:58:0a:f4:01:03".into(),
            port: 1,
            age_ms: 20,
        }],
        mac_table_capacity: 4096,
        counters: vec![("bridged".into(), 7)],
        drops: vec![("ttl_exceeded".into(), 1)],
        routes: vec![RouteEntry {
            subnet: "10.244.2.0/24".into(),
            via: "node-2".into(),
            underlay_ip: "198.18.0.2".into(),
            vtep_mac: "0a:58:c6:12:00:02".into(),
        }],
        tunnel_tx_errors: 0,
        flows: vec![FlowEntry {
            proto: "tcp".into(),
            client: "10.244.1.2:40000".into(),
            service: "10.96.1.0:80".into(),
            backend: "10.244.1.3:8080".into(),
            state: "established".into(),
            age_ms: 5,
            expires_in_ms: 86_000,
        }],
        policy_denials: vec![("default/deny".into(), 2)],
        problems: vec![tapestry_proto::Problem {
            source: "routes".into(),
            object: "nodes/rogue".into(),
            reason: "subnet overlaps node3's".into(),
        }],
        routes_revision: 41,
        services_revision: 42,
    };
    let lines = |parts: &[Vec<u8>]| -> Vec<u8> { [&[7u8, 0xff][..], &parts.concat()].concat() };
    let add = tapestry_proto::encode_request(&Request::Add(attachment.clone()))?;
    let del = tapestry_proto::encode_request(&Request::Del(attachment.clone()))?;
    let check = tapestry_proto::encode_request(&Request::Check(attachment))?;
    let status_req = tapestry_proto::encode_request(&Request::Status)?;
    let added = tapestry_proto::encode_reply(&Reply {
        result: Some(result),
        ..Reply::done()
    })?;
    let status_reply = tapestry_proto::encode_reply(&Reply {
        status: Some(status),
        ..Reply::done()
    })?;
    let refused =
        tapestry_proto::encode_reply(&Reply::error("too many control clients: try again"))?;
    write(
        out,
        &[
            ("requests", lines(&[add, b"\n".to_vec(), check, del])),
            ("status", lines(&[status_req])),
            (
                "minimal_del",
                lines(&[b"{\"op\":\"del\",\"container_id\":\"c1\"}".to_vec()]),
            ),
            ("reply_added", lines(&[added])),
            ("reply_status", lines(&[status_reply])),
            ("reply_refused", lines(&[refused])),
        ],
    )
}

/// The directory store's files as the store writes them: an event log (header,
/// puts and a delete), a `state` file and a key file.
fn store_files(out: &Path) -> Built {
    use tapestry_cluster::store::dir_format::{
        encode_event, encode_header, encode_key_file, encode_state, State,
    };
    use tapestry_cluster::store::{Entry, Event};
    let pod =
        br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-a","namespace":"default"}}"#;
    let put = |key: &str, revision| {
        Event::Put(Entry {
            key: key.into(),
            value: pod.to_vec(),
            revision,
        })
    };
    let log = [
        encode_header(3),
        encode_event(&put("/pods/default/web-a", 4)),
        encode_event(&put("/pods/default/web-b", 5)),
        encode_event(&Event::Delete {
            key: "/pods/default/web-a".into(),
            revision: 6,
        }),
    ]
    .concat();
    let state = encode_state(&State {
        revision: 6,
        compacted: 3,
        log_len: log.len() as u64,
    });
    write(
        out,
        &[
            ("log", log),
            ("state", state),
            ("key_file", encode_key_file(5, pod)),
        ],
    )
}

fn write(dir: &Path, seeds: &[(&str, Vec<u8>)]) -> Built {
    std::fs::create_dir_all(dir)?;
    for (name, data) in seeds {
        std::fs::write(dir.join(name), data)?;
    }
    println!("{} seeds in {}", seeds.len(), dir.display());
    Ok(())
}

fn main() -> Built {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "seeds".into()));
    pipeline(&root.join("pipeline"))?;
    dns_answer(&root.join("dns_answer"))?;
    manifest(&root.join("manifest"))?;
    control(&root.join("control"))?;
    store_files(&root.join("store_files"))?;
    Ok(())
}
