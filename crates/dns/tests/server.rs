//! The server over real sockets on 127.0.0.1: the `dig` binary against it
//! (skipped with a note when `dig` is not installed), TCP framing, pipelining
//! and idle timeout, zone replacement while serving, and forwarding to a fake
//! upstream on 127.0.0.1. Nothing here talks to any other address.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tapestry_dns::{
    DnsData, EndpointRecord, PortRecord, Server, ServerConfig, ServiceKind, ServiceRecord, Zone,
};

fn sample() -> DnsData {
    let mut data: DnsData = serde_json::from_str(include_str!("../testdata/sample.json")).unwrap();
    data.services.push(ServiceRecord {
        name: "big".into(),
        namespace: "default".into(),
        kind: ServiceKind::Headless,
        ports: vec![],
        endpoints: (1..=60)
            .map(|i| EndpointRecord {
                ip: Ipv4Addr::new(10, 244, 3, i),
                hostname: None,
                ports: vec![PortRecord {
                    name: Some("http".into()),
                    protocol: "TCP".into(),
                    port: 8080,
                }],
            })
            .collect(),
    });
    data
}

struct Running {
    addr: SocketAddr,
    zone: Arc<ArcSwap<Zone>>,
}

/// Starts a server on 127.0.0.1:0 in a background thread (it lives until the
/// test process ends).
fn start(upstream: Option<SocketAddr>, config: ServerConfig) -> Running {
    let zone = Arc::new(ArcSwap::from_pointee(Zone::build(
        &sample(),
        "cluster.local",
        5,
    )));
    let server = Server::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        Arc::clone(&zone),
        upstream,
    )
    .unwrap()
    .with_config(config);
    let addr = server.local_addr().unwrap();
    thread::spawn(move || server.run());
    Running { addr, zone }
}

fn have_dig() -> bool {
    let found = Command::new("dig").arg("-v").output().is_ok();
    if !found {
        eprintln!("note: `dig` not on PATH (Debian: dnsutils); skipping the dig checks");
    }
    found
}

fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn short(addr: SocketAddr, args: &[&str]) -> Vec<String> {
    let mut all = args.to_vec();
    all.push("+short");
    let mut v: Vec<String> = dig(addr, &all).lines().map(str::to_owned).collect();
    v.sort();
    v
}

#[test]
fn dig_against_the_server() {
    if !have_dig() {
        return;
    }
    let s = start(None, ServerConfig::default());
    let a = s.addr;
    assert_eq!(short(a, &["web.default.svc.cluster.local"]), ["10.96.0.20"]);
    assert_eq!(
        short(a, &["web.default.svc.cluster.local", "+tcp"]),
        ["10.96.0.20"]
    );
    assert_eq!(
        short(a, &["_http._tcp.web.default.svc.cluster.local", "SRV"]),
        ["0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(
        short(a, &["_pg._tcp.db.default.svc.cluster.local", "SRV"]),
        [
            "0 50 5432 10-244-2-7.db.default.svc.cluster.local.",
            "0 50 5432 db-0.db.default.svc.cluster.local."
        ]
    );
    assert_eq!(
        short(a, &["-x", "10.96.0.20"]),
        ["web.default.svc.cluster.local."]
    );
    assert_eq!(
        short(a, &["-x", "10.244.1.7"]),
        ["db-0.db.default.svc.cluster.local."]
    );
    assert_eq!(
        short(a, &["-x", "10.244.2.5"]),
        ["10-244-2-5.default.pod.cluster.local."]
    );
    assert_eq!(
        short(a, &["dns-version.cluster.local", "TXT"]),
        ["\"1.1.0\""]
    );
    assert_eq!(
        short(a, &["search.default.svc.cluster.local", "CNAME"]),
        ["search.example.com."]
    );

    let full = dig(a, &["nope.default.svc.cluster.local"]);
    assert!(full.contains("status: NXDOMAIN"), "{full}");
    assert!(
        full.contains("SOA\tns.dns.cluster.local. hostmaster.cluster.local."),
        "{full}"
    );
    let full = dig(a, &["web.default.svc.cluster.local", "AAAA"]);
    assert!(
        full.contains("status: NOERROR") && full.contains("ANSWER: 0"),
        "{full}"
    );
    let full = dig(a, &["example.com"]);
    assert!(full.contains("status: REFUSED"), "{full}");

    // 60 A records do not fit 512 bytes: dig sees TC and retries over TCP.
    let full = dig(a, &["big.default.svc.cluster.local", "+noedns"]);
    assert!(full.contains("Truncated, retrying in TCP mode"), "{full}");
    assert!(full.contains("ANSWER: 60"), "{full}");
    let full = dig(a, &["_http._tcp.big.default.svc.cluster.local", "SRV"]);
    assert!(
        full.contains("ANSWER: 60") && full.contains("ADDITIONAL: 61"),
        "{full}"
    );
}

fn query(name: &str, id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

fn read_frame(stream: &mut TcpStream) -> Message {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut body).unwrap();
    Message::from_vec(&body).unwrap()
}

fn first_a(m: &Message) -> Option<Ipv4Addr> {
    m.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

#[test]
fn tcp_pipelining_and_idle_timeout() {
    let config = ServerConfig {
        tcp_idle_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let s = start(None, config);
    let mut stream = TcpStream::connect(s.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // Two queries in one write; answers come back in order.
    let mut frames = Vec::new();
    for (name, id) in [
        ("web.default.svc.cluster.local.", 1),
        ("big.default.svc.cluster.local.", 2),
    ] {
        let q = query(name, id);
        frames.extend_from_slice(&u16::try_from(q.len()).unwrap().to_be_bytes());
        frames.extend_from_slice(&q);
    }
    stream.write_all(&frames).unwrap();
    let first = read_frame(&mut stream);
    assert_eq!(first.metadata.id, 1);
    assert_eq!(first_a(&first), Some(Ipv4Addr::new(10, 96, 0, 20)));
    let second = read_frame(&mut stream);
    assert_eq!(second.metadata.id, 2);
    assert_eq!(second.answers.len(), 60);
    assert!(!second.metadata.truncation);
    // Idle: the server closes the connection.
    let mut rest = Vec::new();
    assert_eq!(stream.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn zone_swap_while_serving() {
    let s = start(None, ServerConfig::default());
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let ask = |name: &str| {
        client.send_to(&query(name, 7), s.addr).unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = client.recv_from(&mut buf).unwrap();
        Message::from_vec(&buf[..n]).unwrap()
    };
    assert_eq!(first_a(&ask("new.default.svc.cluster.local.")), None);
    let mut data = sample();
    data.services.push(ServiceRecord {
        name: "new".into(),
        namespace: "default".into(),
        kind: ServiceKind::ClusterIp(Ipv4Addr::new(10, 96, 0, 99)),
        ports: vec![],
        endpoints: vec![],
    });
    s.zone
        .store(Arc::new(Zone::build(&data, "cluster.local", 5)));
    assert_eq!(
        first_a(&ask("new.default.svc.cluster.local.")),
        Some(Ipv4Addr::new(10, 96, 0, 99))
    );
}

/// A fake upstream on 127.0.0.1 answering every A query with 192.0.2.1.
fn fake_upstream() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
            r.metadata.recursion_desired = q.metadata.recursion_desired;
            r.metadata.recursion_available = true;
            r.add_queries(q.queries.clone());
            r.add_answer(Record::from_rdata(
                q.queries[0].name.clone(),
                60,
                RData::A(Ipv4Addr::new(192, 0, 2, 1).into()),
            ));
            let _ = socket.send_to(&r.to_vec().unwrap(), peer);
        }
    });
    addr
}

#[test]
fn forwards_outside_names_to_the_upstream() {
    let s = start(Some(fake_upstream()), ServerConfig::default());
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.send_to(&query("example.com.", 9), s.addr).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = client.recv_from(&mut buf).unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, 9);
    assert_eq!(first_a(&m), Some(Ipv4Addr::new(192, 0, 2, 1)));
    // Cluster names are still answered locally.
    client
        .send_to(&query("web.default.svc.cluster.local.", 10), s.addr)
        .unwrap();
    let (n, _) = client.recv_from(&mut buf).unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(first_a(&m), Some(Ipv4Addr::new(10, 96, 0, 20)));
    if have_dig() {
        assert_eq!(short(s.addr, &["example.org"]), ["192.0.2.1"]);
    }
}
