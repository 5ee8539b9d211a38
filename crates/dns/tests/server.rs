//! The server over real sockets on 127.0.0.1: the `dig` binary against it
//! (skipped with a note when `dig` is not installed), TCP framing, pipelining
//! and idle timeout, zone replacement while serving, forwarding to a fake
//! upstream on 127.0.0.1, and abuse: trickling TCP clients (slowloris), a
//! blackholed upstream, ANY. Nothing here talks to any other address.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tapestry_dns::{
    Counters, DnsData, EndpointRecord, PortRecord, Server, ServerConfig, ServiceKind,
    ServiceRecord, Zone,
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
    counters: Arc<Counters>,
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
    let counters = server.counters();
    thread::spawn(move || server.run());
    Running {
        addr,
        zone,
        counters,
    }
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
    // ANY: the one RFC 8482 HINFO, over UDP and TCP, even for 60 A records.
    for name in [
        "web.default.svc.cluster.local",
        "big.default.svc.cluster.local",
    ] {
        assert_eq!(short(a, &[name, "ANY"]), ["\"RFC8482\" \"\""]);
        assert_eq!(short(a, &[name, "ANY", "+tcp"]), ["\"RFC8482\" \"\""]);
    }

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

/// A query in DNS-over-TCP framing: its length, then the message.
fn tcp_frame(name: &str, id: u16) -> Vec<u8> {
    let q = query(name, id);
    let mut frame = u16::try_from(q.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(&q);
    frame
}

fn read_frame(stream: &mut TcpStream) -> Message {
    try_read_frame(stream).expect("the server closed the connection before its answer")
}

/// The next framed answer; `None` if the server closed the connection
/// before it began.
fn try_read_frame(stream: &mut TcpStream) -> Option<Message> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
        other => other.unwrap(),
    }
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut body).unwrap();
    Some(Message::from_vec(&body).unwrap())
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
        frames.extend_from_slice(&tcp_frame(name, id));
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

/// One framed query over a fresh TCP connection; the answer and how long it took.
fn tcp_ask(addr: SocketAddr, name: &str, id: u16) -> (Message, Duration) {
    let t0 = Instant::now();
    let mut stream = tcp_send(addr, name, id).unwrap();
    let m = read_frame(&mut stream);
    (m, t0.elapsed())
}

/// One TCP query on a new connection; `None` if the server closed it
/// before the answer.
fn tcp_try(addr: SocketAddr, name: &str, id: u16) -> Option<Message> {
    try_read_frame(&mut tcp_send(addr, name, id).ok()?)
}

/// A new connection (answers awaited at most 3 s) with one query sent on
/// it; the error if the server closed it before the query was written.
fn tcp_send(addr: SocketAddr, name: &str, id: u16) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    stream.write_all(&tcp_frame(name, id))?;
    Ok(stream)
}

/// One UDP query; the answer and how long it took (panics after 3 s).
fn udp_ask(client: &UdpSocket, addr: SocketAddr, name: &str, id: u16) -> (Message, Duration) {
    let t0 = Instant::now();
    client.send_to(&query(name, id), addr).unwrap();
    let mut buf = [0u8; 1500];
    loop {
        let (n, _) = client.recv_from(&mut buf).unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        if m.metadata.id == id {
            return (m, t0.elapsed());
        }
    }
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

/// Sends a valid query one byte every `gap`; returns how long after its first
/// byte the server cut the connection (None: it sent the whole query uncut).
fn trickle(addr: SocketAddr, gap: Duration) -> Option<Duration> {
    let mut stream = TcpStream::connect(addr).unwrap();
    let frame = tcp_frame("web.default.svc.cluster.local.", 77);
    let t0 = Instant::now();
    for byte in &frame {
        if stream.write_all(std::slice::from_ref(byte)).is_err() {
            return Some(t0.elapsed());
        }
        // A closed connection shows as EOF on a non-blocking peek.
        stream.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let closed = matches!(stream.peek(&mut b), Ok(0));
        stream.set_nonblocking(false).unwrap();
        if closed {
            return Some(t0.elapsed());
        }
        thread::sleep(gap);
    }
    None
}

#[test]
fn trickling_tcp_client_is_cut_at_the_query_deadline() {
    let config = ServerConfig {
        tcp_query_timeout: Duration::from_millis(400),
        tcp_idle_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    let s = start(None, config);
    // 2 + 47 bytes at one per 100 ms would take ~5 s: every byte arrives well
    // inside any per-read timeout, but the query as a whole is late.
    let cut = trickle(s.addr, Duration::from_millis(100)).expect("cut");
    eprintln!(
        "trickling client cut {} ms after its first byte",
        cut.as_millis()
    );
    assert!(
        cut >= Duration::from_millis(350) && cut < Duration::from_millis(1500),
        "{cut:?}"
    );
    assert_eq!(count(&s.counters.tcp_query_timeouts), 1);
    // A normal client is served meanwhile and after.
    let (m, took) = tcp_ask(s.addr, "web.default.svc.cluster.local.", 5);
    assert_eq!(first_a(&m), Some(Ipv4Addr::new(10, 96, 0, 20)));
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn slowloris_flood_does_not_lock_out_other_clients() {
    // 8 slots, 32 trickling attackers that reconnect whenever they are cut.
    let config = ServerConfig {
        max_tcp_connections: 8,
        tcp_query_timeout: Duration::from_secs(1),
        tcp_idle_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    };
    let s = start(None, config);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    for _ in 0..32 {
        let (addr, stop) = (s.addr, Arc::clone(&stop));
        attackers.push(thread::spawn(move || {
            let mut cuts = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if trickle(addr, Duration::from_millis(50)).is_some() {
                    cuts += 1;
                }
            }
            cuts
        }));
    }
    // Let the flood fill every slot before measuring.
    let filled = Instant::now();
    while count(&s.counters.tcp_evicted) == 0 {
        assert!(
            filled.elapsed() < Duration::from_secs(5),
            "slots never filled"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let (mut worst_tcp, mut worst_udp) = (Duration::ZERO, Duration::ZERO);
    // A resolver whose TCP connection is closed before the answer asks
    // again on a new one (RFC 7766 §6.2.3 lets a server close any
    // connection); a connection whose thread the loaded machine had not run
    // yet can still be the stalest, so a retry is allowed, counted and
    // bounded, and the time includes it.
    let mut retried = 0u32;
    for id in 0..20u16 {
        let t0 = Instant::now();
        let m = match tcp_try(s.addr, "web.default.svc.cluster.local.", id) {
            Some(m) => m,
            None => {
                retried += 1;
                tcp_ask(s.addr, "web.default.svc.cluster.local.", id).0
            }
        };
        let took = t0.elapsed();
        assert_eq!(first_a(&m), Some(Ipv4Addr::new(10, 96, 0, 20)));
        worst_tcp = worst_tcp.max(took);
        let (m, took) = udp_ask(&client, s.addr, "web.default.svc.cluster.local.", id);
        assert_eq!(first_a(&m), Some(Ipv4Addr::new(10, 96, 0, 20)));
        worst_udp = worst_udp.max(took);
        thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let cuts: u32 = attackers.into_iter().map(|h| h.join().unwrap()).sum();
    eprintln!(
        "under 32 trickling clients on 8 slots: worst TCP answer {} ms, worst UDP {} ms; \
         attackers cut {cuts} times; TCP queries asked again {retried}; counters: {}",
        worst_tcp.as_millis(),
        worst_udp.as_millis(),
        s.counters
    );
    assert!(
        retried <= 2,
        "{retried} of 20 TCP queries cut before their answer"
    );
    assert!(worst_tcp < Duration::from_millis(1000), "{worst_tcp:?}");
    assert!(worst_udp < Duration::from_millis(1000), "{worst_udp:?}");
    assert!(cuts > 0);
    assert!(count(&s.counters.tcp_evicted) > 0);
    assert_eq!(count(&s.counters.tcp_rejected), 0);
}

/// A local UDP socket that receives forwarded queries and never answers;
/// returns its address and a count of what it received.
fn blackhole_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = Arc::clone(&seen);
    thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while socket.recv_from(&mut buf).is_ok() {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    (addr, seen)
}

#[test]
fn blackholed_upstream_does_not_delay_cluster_names() {
    let (upstream, seen) = blackhole_upstream();
    let config = ServerConfig {
        upstream_timeout: Duration::from_secs(2),
        forward_workers: 2,
        forward_queue: 4,
        ..ServerConfig::default()
    };
    let s = start(Some(upstream), config);
    // 40 outside names at once: 2 are with the upstream, 4 queue, the rest
    // get SERVFAIL at once.
    let outside = UdpSocket::bind("127.0.0.1:0").unwrap();
    for id in 0..40u16 {
        outside
            .send_to(&query(&format!("n{id}.example.com."), id), s.addr)
            .unwrap();
    }
    // Cluster names, over UDP and TCP, while the forwarding threads are stuck.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let t0 = Instant::now();
    let (mut worst_udp, mut worst_tcp) = (Duration::ZERO, Duration::ZERO);
    for id in 100..120u16 {
        let (m, took) = udp_ask(&client, s.addr, "web.default.svc.cluster.local.", id);
        assert_eq!(first_a(&m), Some(Ipv4Addr::new(10, 96, 0, 20)));
        worst_udp = worst_udp.max(took);
        let (m, took) = tcp_ask(s.addr, "web.default.svc.cluster.local.", id);
        assert_eq!(first_a(&m), Some(Ipv4Addr::new(10, 96, 0, 20)));
        worst_tcp = worst_tcp.max(took);
    }
    let during = t0.elapsed();
    // The shed ones got SERVFAIL without waiting.
    outside
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut servfail = 0;
    let mut buf = [0u8; 1500];
    while let Ok((n, _)) = outside.recv_from(&mut buf) {
        let m = Message::from_vec(&buf[..n]).unwrap();
        if m.metadata.response_code == hickory_proto::op::ResponseCode::ServFail {
            servfail += 1;
        }
    }
    eprintln!(
        "blackholed upstream: 20 cluster lookups each over UDP and TCP in {} ms \
         (worst UDP {} ms, worst TCP {} ms); {servfail} outside names shed with SERVFAIL; \
         upstream saw {}; counters: {}",
        during.as_millis(),
        worst_udp.as_millis(),
        worst_tcp.as_millis(),
        count(&seen),
        s.counters
    );
    assert!(worst_udp < Duration::from_millis(500), "{worst_udp:?}");
    assert!(worst_tcp < Duration::from_millis(500), "{worst_tcp:?}");
    assert!(during < Duration::from_millis(1500), "{during:?}");
    assert!(servfail >= 30, "{servfail}");
    assert!(count(&s.counters.forward_shed) >= 30);
    assert!(count(&seen) <= 6, "{}", count(&seen));
    // The accepted ones end as failures (upstream timeout) or expire in the
    // queue; a TCP forward to the dead upstream gets SERVFAIL, not a hang.
    let accepted = 40 - count(&s.counters.forward_shed);
    let waited = Instant::now();
    while count(&s.counters.forward_failed) + count(&s.counters.forward_expired) < accepted {
        assert!(waited.elapsed() < Duration::from_secs(10), "{}", s.counters);
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(count(&s.counters.forwarded), 0);
    let (m, took) = tcp_ask(s.addr, "late.example.com.", 500);
    assert_eq!(
        m.metadata.response_code,
        hickory_proto::op::ResponseCode::ServFail
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn forwards_over_tcp_through_the_pool() {
    let s = start(Some(fake_upstream()), ServerConfig::default());
    let (m, _) = tcp_ask(s.addr, "example.com.", 11);
    assert_eq!(m.metadata.id, 11);
    assert_eq!(first_a(&m), Some(Ipv4Addr::new(192, 0, 2, 1)));
    assert_eq!(count(&s.counters.forwarded), 1);
}
