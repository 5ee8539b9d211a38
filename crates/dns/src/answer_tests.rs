//! Tests of [`crate::answer`] over byte-level queries, built and read back
//! with hickory-proto, an independent DNS codec.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::cell::Cell;
use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::answer::{answer, Transport, Upstream};
use crate::model::*;
use crate::zone::Zone;

const UDP: Transport = Transport::Udp { max: 4096 };

fn port(name: Option<&str>, protocol: &str, port: u16) -> PortRecord {
    PortRecord {
        name: name.map(str::to_owned),
        protocol: protocol.to_owned(),
        port,
    }
}

fn ep(ip: [u8; 4], hostname: Option<&str>, ports: Vec<PortRecord>) -> EndpointRecord {
    EndpointRecord {
        ip: Ipv4Addr::from(ip),
        hostname: hostname.map(str::to_owned),
        ports,
    }
}

fn svc(
    name: &str,
    kind: ServiceKind,
    ports: Vec<PortRecord>,
    eps: Vec<EndpointRecord>,
) -> ServiceRecord {
    ServiceRecord {
        name: name.to_owned(),
        namespace: "default".to_owned(),
        kind,
        ports,
        endpoints: eps,
    }
}

pub(crate) fn sample_data() -> DnsData {
    let big = (1..=60)
        .map(|i| ep([10, 244, 3, i], None, vec![port(Some("http"), "TCP", 8080)]))
        .collect();
    DnsData {
        services: vec![
            svc(
                "web",
                ServiceKind::ClusterIp(Ipv4Addr::new(10, 96, 0, 20)),
                vec![
                    port(Some("http"), "TCP", 80),
                    port(None, "TCP", 81),
                    port(Some("dns"), "UDP", 53),
                ],
                vec![ep(
                    [10, 244, 1, 5],
                    None,
                    vec![port(Some("http"), "TCP", 8080)],
                )],
            ),
            svc(
                "db",
                ServiceKind::Headless,
                vec![port(Some("pg"), "TCP", 5432)],
                vec![
                    ep(
                        [10, 244, 1, 7],
                        Some("db-0"),
                        vec![port(Some("pg"), "TCP", 15432)],
                    ),
                    ep([10, 244, 2, 7], None, vec![port(Some("pg"), "TCP", 15432)]),
                ],
            ),
            svc("empty", ServiceKind::Headless, vec![], vec![]),
            svc(
                "big",
                ServiceKind::Headless,
                vec![port(Some("http"), "TCP", 80)],
                big,
            ),
            svc(
                "search",
                ServiceKind::ExternalName("search.example.com".into()),
                vec![],
                vec![],
            ),
            svc(
                "alias",
                ServiceKind::ExternalName("web.default.svc.cluster.local.".into()),
                vec![],
                vec![],
            ),
            svc(
                "dangling",
                ServiceKind::ExternalName("gone.default.svc.cluster.local".into()),
                vec![],
                vec![],
            ),
        ],
        pods: vec![
            PodRecord {
                name: "web-a".into(),
                namespace: "default".into(),
                ip: Ipv4Addr::new(10, 244, 1, 5),
            },
            PodRecord {
                name: "db-0".into(),
                namespace: "default".into(),
                ip: Ipv4Addr::new(10, 244, 1, 7),
            },
        ],
        revision: None,
    }
}

fn zone() -> Zone {
    Zone::build(&sample_data(), "cluster.local", 5)
}

fn query_msg(name: &str, rtype: RecordType) -> Message {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m
}

fn query(name: &str, rtype: RecordType) -> Vec<u8> {
    query_msg(name, rtype).to_vec().unwrap()
}

fn query_edns(name: &str, rtype: RecordType, payload: u16) -> Vec<u8> {
    let mut m = query_msg(name, rtype);
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    m.set_edns(edns);
    m.to_vec().unwrap()
}

fn ask_with(zone: &Zone, q: &[u8], t: Transport, up: Option<&dyn Upstream>) -> (Message, usize) {
    let bytes = answer(zone, q, t, up).expect("a response");
    (Message::from_vec(&bytes).unwrap(), bytes.len())
}

fn ask(name: &str, rtype: RecordType) -> Message {
    ask_with(&zone(), &query(name, rtype), UDP, None).0
}

fn line(r: &Record) -> String {
    format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data)
}

fn lines(records: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = records.iter().map(line).collect();
    v.sort();
    v
}

fn assert_soa_authority(m: &Message) {
    assert_eq!(m.authorities.len(), 1, "{m:?}");
    let soa = &m.authorities[0];
    assert_eq!(soa.name.to_ascii(), "cluster.local.");
    let RData::SOA(s) = &soa.data else {
        panic!("{soa:?}")
    };
    assert_eq!(s.mname.to_ascii(), "ns.dns.cluster.local.");
    assert_eq!(s.rname.to_ascii(), "hostmaster.cluster.local.");
    assert_eq!(
        (s.refresh, s.retry, s.expire, s.minimum),
        (7200, 1800, 86400, 5)
    );
}

fn assert_ok(m: &Message) {
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
    assert!(m.metadata.authoritative);
    assert!(!m.metadata.truncation);
    assert_eq!(m.metadata.id, 0x4242);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert!(m.metadata.recursion_desired);
}

#[test]
fn dns_version_txt() {
    let m = ask("dns-version.cluster.local.", RecordType::TXT);
    assert_ok(&m);
    assert_eq!(
        lines(&m.answers),
        ["dns-version.cluster.local. 5 TXT 1.1.0"]
    );
}

#[test]
fn store_revision_txt_only_when_built_from_the_store() {
    // sample_data() is file-like data: no revision, no name.
    let m = ask("tapestry-revision.cluster.local.", RecordType::TXT);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let mut data = sample_data();
    data.revision = Some(18_446_744_073_709_551_615);
    let built = Zone::build(&data, "cluster.local", 5);
    let q = query("tapestry-revision.cluster.local.", RecordType::TXT);
    let m = ask_with(&built, &q, UDP, None).0;
    assert_ok(&m);
    assert_eq!(
        lines(&m.answers),
        ["tapestry-revision.cluster.local. 5 TXT 18446744073709551615"]
    );
    // Another revision, another answer (and another serial).
    data.revision = Some(7);
    let again = Zone::build(&data, "cluster.local", 5);
    let m = ask_with(&again, &q, UDP, None).0;
    assert_eq!(
        lines(&m.answers),
        ["tapestry-revision.cluster.local. 5 TXT 7"]
    );
    assert_ne!(built.serial(), again.serial());
}

#[test]
fn cluster_ip_a_srv_ptr() {
    let m = ask("web.default.svc.cluster.local.", RecordType::A);
    assert_ok(&m);
    assert_eq!(
        lines(&m.answers),
        ["web.default.svc.cluster.local. 5 A 10.96.0.20"]
    );

    let m = ask("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV);
    assert_ok(&m);
    assert_eq!(
        lines(&m.answers),
        ["_http._tcp.web.default.svc.cluster.local. 5 SRV 0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(
        lines(&m.additionals),
        ["web.default.svc.cluster.local. 5 A 10.96.0.20"]
    );

    let m = ask("_dns._udp.web.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        lines(&m.answers),
        ["_dns._udp.web.default.svc.cluster.local. 5 SRV 0 100 53 web.default.svc.cluster.local."]
    );
    // Unnamed ports have no SRV; the protocol is part of the name.
    let m = ask("_dns._tcp.web.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    let m = ask("20.0.96.10.in-addr.arpa.", RecordType::PTR);
    assert_ok(&m);
    assert_eq!(
        lines(&m.answers),
        ["20.0.96.10.in-addr.arpa. 5 PTR web.default.svc.cluster.local."]
    );
}

#[test]
fn headless_records() {
    let m = ask("db.default.svc.cluster.local.", RecordType::A);
    assert_ok(&m);
    assert_eq!(
        lines(&m.answers),
        [
            "db.default.svc.cluster.local. 5 A 10.244.1.7",
            "db.default.svc.cluster.local. 5 A 10.244.2.7"
        ]
    );
    let m = ask("db-0.db.default.svc.cluster.local.", RecordType::A);
    assert_eq!(
        lines(&m.answers),
        ["db-0.db.default.svc.cluster.local. 5 A 10.244.1.7"]
    );
    let m = ask("10-244-2-7.db.default.svc.cluster.local.", RecordType::A);
    assert_eq!(
        lines(&m.answers),
        ["10-244-2-7.db.default.svc.cluster.local. 5 A 10.244.2.7"]
    );

    // SRV: one per endpoint, its own port, priority 0, weights sharing 100.
    let m = ask("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV);
    assert_ok(&m);
    assert_eq!(
        lines(&m.answers),
        [
            "_pg._tcp.db.default.svc.cluster.local. 5 SRV 0 50 15432 10-244-2-7.db.default.svc.cluster.local.",
            "_pg._tcp.db.default.svc.cluster.local. 5 SRV 0 50 15432 db-0.db.default.svc.cluster.local.",
        ]
    );
    assert_eq!(
        lines(&m.additionals),
        [
            "10-244-2-7.db.default.svc.cluster.local. 5 A 10.244.2.7",
            "db-0.db.default.svc.cluster.local. 5 A 10.244.1.7",
        ]
    );

    // PTR: the endpoint hostname wins over the pod name.
    let m = ask("7.1.244.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        lines(&m.answers),
        ["7.1.244.10.in-addr.arpa. 5 PTR db-0.db.default.svc.cluster.local."]
    );

    // A headless service without ready endpoints has no name.
    let m = ask("empty.default.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_soa_authority(&m);
}

#[test]
fn external_name_cname() {
    let m = ask("search.default.svc.cluster.local.", RecordType::A);
    assert_ok(&m);
    assert_eq!(
        lines(&m.answers),
        ["search.default.svc.cluster.local. 5 CNAME search.example.com."]
    );
    let m = ask("search.default.svc.cluster.local.", RecordType::CNAME);
    assert_eq!(m.answers.len(), 1);

    // A target inside the zone is followed.
    let m = ask("alias.default.svc.cluster.local.", RecordType::A);
    assert_ok(&m);
    assert_eq!(
        lines(&m.answers),
        [
            "alias.default.svc.cluster.local. 5 CNAME web.default.svc.cluster.local.",
            "web.default.svc.cluster.local. 5 A 10.96.0.20",
        ]
    );
    // ... to NODATA, and to a name that does not exist.
    let m = ask("alias.default.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(m.answers.len(), 1);
    assert_soa_authority(&m);
    let m = ask("dangling.default.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.answers.len(), 1);
    assert_soa_authority(&m);
}

#[test]
fn pods_verified_and_pod_ptr() {
    let m = ask("10-244-1-5.default.pod.cluster.local.", RecordType::A);
    assert_ok(&m);
    assert_eq!(
        lines(&m.answers),
        ["10-244-1-5.default.pod.cluster.local. 5 A 10.244.1.5"]
    );
    for absent in [
        "10-244-1-6.default.pod.cluster.local.", // no such pod
        "10-244-1-5.other.pod.cluster.local.",   // wrong namespace
        "1-2-3-4.default.pod.cluster.local.",
    ] {
        let m = ask(absent, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{absent}");
    }
    let m = ask("5.1.244.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        lines(&m.answers),
        ["5.1.244.10.in-addr.arpa. 5 PTR 10-244-1-5.default.pod.cluster.local."]
    );
}

#[test]
fn nodata_for_existing_names() {
    for (name, rtype) in [
        ("web.default.svc.cluster.local.", RecordType::AAAA),
        ("web.default.svc.cluster.local.", RecordType::MX),
        ("default.svc.cluster.local.", RecordType::A),
        ("svc.cluster.local.", RecordType::A),
        ("pod.cluster.local.", RecordType::A),
        ("default.pod.cluster.local.", RecordType::A),
        ("cluster.local.", RecordType::A),
        ("_tcp.web.default.svc.cluster.local.", RecordType::SRV),
        ("20.0.96.10.in-addr.arpa.", RecordType::A),
    ] {
        let m = ask(name, rtype);
        assert_ok(&m);
        assert!(m.answers.is_empty(), "{name}");
        assert_soa_authority(&m);
    }
    // The apex answers its SOA.
    let m = ask("cluster.local.", RecordType::SOA);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::SOA);
}

#[test]
fn nxdomain_with_soa() {
    for name in [
        "nope.default.svc.cluster.local.",
        "web.default.svc.cluster.local.default.svc.cluster.local.", // ndots search path
        "web.default.svc.cluster.local.svc.cluster.local.",
        "example.com.cluster.local.",
        "x.web.default.svc.cluster.local.",
        "web.nons.svc.cluster.local.",
        "other.cluster.local.",
    ] {
        let m = ask(name, RecordType::A);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(m.metadata.authoritative);
        assert!(m.answers.is_empty());
        assert_soa_authority(&m);
    }
}

#[test]
fn case_insensitive_and_echoes_case() {
    let name = "WeB.DeFault.SVC.Cluster.LOCAL.";
    let q = query(name, RecordType::A);
    let bytes = answer(&zone(), &q, UDP, None).unwrap();
    let m = Message::from_vec(&bytes).unwrap();
    assert_ok(&m);
    assert_eq!(m.queries[0].name.to_ascii(), name);
    assert_eq!(m.answers[0].name.to_ascii(), name);
    assert_eq!(lines(&m.answers), [format!("{name} 5 A 10.96.0.20")]);
    // Byte for byte, the question section is the client's.
    assert_eq!(bytes[12..12 + 35], q[12..12 + 35]);
    let m = ask("_HTTP._TCP.web.default.svc.cluster.local.", RecordType::SRV);
    assert_eq!(m.answers.len(), 1);
}

#[test]
fn truncation_and_tcp() {
    let zone = zone();
    let name = "big.default.svc.cluster.local.";
    // No EDNS: 512 bytes; 60 A records (960 bytes) do not fit.
    let (m, len) = ask_with(&zone, &query(name, RecordType::A), UDP, None);
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty(), "no partial RRsets");
    assert_eq!(m.queries.len(), 1);
    assert!(len <= 512);
    // EDNS 1232 fits them.
    let (m, len) = ask_with(&zone, &query_edns(name, RecordType::A, 1232), UDP, None);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    assert!(len <= 1232);
    assert_eq!(m.max_payload(), 1232);
    // ... unless the server's own ceiling is lower.
    let (m, _) = ask_with(
        &zone,
        &query_edns(name, RecordType::A, 4096),
        Transport::Udp { max: 512 },
        None,
    );
    assert!(m.metadata.truncation);
    // TCP takes everything.
    let (m, _) = ask_with(&zone, &query(name, RecordType::A), Transport::Tcp, None);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);

    // SRV: 60 targets; over TCP all of them with all their A records.
    let srv = "_http._tcp.big.default.svc.cluster.local.";
    let (m, _) = ask_with(&zone, &query(srv, RecordType::SRV), Transport::Tcp, None);
    assert_eq!(m.answers.len(), 60);
    assert_eq!(m.additionals.len(), 60);
    let RData::SRV(s) = &m.answers[0].data else {
        panic!()
    };
    assert_eq!((s.priority, s.weight, s.port), (0, 1, 8080));
    // Over UDP at 4096 the answer fits but not all additional data: no TC.
    let (m, len) = ask_with(&zone, &query_edns(srv, RecordType::SRV, 4096), UDP, None);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    assert!(m.additionals.len() < 60);
    assert!(len <= 4096);
    let (m, _) = ask_with(&zone, &query_edns(srv, RecordType::SRV, 1232), UDP, None);
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
}

#[test]
fn malformed_and_unsupported() {
    let zone = zone();
    let good = query("web.default.svc.cluster.local.", RecordType::A);
    // Too short for a header: dropped. A response: dropped.
    assert_eq!(answer(&zone, &good[..11], UDP, None), None);
    assert_eq!(answer(&zone, &[], UDP, None), None);
    let mut response = good.clone();
    response[2] |= 0x80;
    assert_eq!(answer(&zone, &response, UDP, None), None);

    let formerr = |bytes: &[u8]| {
        let m = Message::from_vec(&answer(&zone, bytes, UDP, None).unwrap()).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(m.metadata.id, 0x4242);
        assert!(m.queries.is_empty());
    };
    formerr(&good[..20]); // cut inside the name
    formerr(&good[..good.len() - 2]); // cut inside the question
    let mut junk = good[..12].to_vec();
    junk.extend_from_slice(&[0x41, 0xFF, 0x00, 0x13, 0x37]);
    formerr(&junk);
    let mut two = good.clone();
    two[5] = 2; // QDCOUNT 2
    formerr(&two);
    let mut zero = good.clone();
    zero[5] = 0;
    formerr(&zero);

    // Opcode STATUS (2): NOTIMP.
    let mut status = good.clone();
    status[2] = (status[2] & 0x87) | (2 << 3);
    let m = Message::from_vec(&answer(&zone, &status, UDP, None).unwrap()).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);

    // No zone transfers; other classes are refused.
    let m = ask("cluster.local.", RecordType::AXFR);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let mut chaos = query_msg("version.bind.", RecordType::TXT);
    chaos.queries[0].query_class = DNSClass::CH;
    let (m, _) = ask_with(&zone, &chaos.to_vec().unwrap(), UDP, None);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);

    // EDNS version 1: BADVERS, with our OPT record.
    let mut v1 = query_msg("web.default.svc.cluster.local.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_version(1);
    v1.set_edns(edns);
    let (m, _) = ask_with(&zone, &v1.to_vec().unwrap(), UDP, None);
    assert_eq!(
        u16::from(m.metadata.response_code),
        16,
        "BADVERS (RFC 6891 §9)"
    );
}

#[test]
fn never_panics_on_mangled_queries() {
    let zone = zone();
    let base = query_edns(
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
        1232,
    );
    for i in 0..base.len() {
        for bit in 0..8 {
            let mut m = base.clone();
            m[i] ^= 1 << bit;
            let _ = answer(&zone, &m, UDP, None);
            let _ = answer(&zone, &m[..i], Transport::Tcp, None);
        }
    }
}

struct FakeUpstream {
    calls: Cell<usize>,
    reply: Option<Vec<u8>>,
}

impl Upstream for FakeUpstream {
    fn forward(&self, query: &[u8]) -> Option<Vec<u8>> {
        self.calls.set(self.calls.get() + 1);
        let mut reply = self.reply.clone()?;
        reply[..2].copy_from_slice(&query[..2]);
        Some(reply)
    }
}

#[test]
fn outside_names_refused_or_forwarded() {
    let zone = zone();
    for (name, rtype) in [
        ("example.com.", RecordType::A),
        ("8.8.8.8.in-addr.arpa.", RecordType::PTR),
        ("local.", RecordType::A),
        ("xcluster.local.", RecordType::A),
    ] {
        let (m, _) = ask_with(&zone, &query(name, rtype), UDP, None);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{name}");
        assert!(!m.metadata.authoritative);
    }

    let mut canned = Message::new(0, MessageType::Response, OpCode::Query);
    canned.add_query(Query::query(
        Name::from_ascii("example.com.").unwrap(),
        RecordType::A,
    ));
    canned.add_answer(Record::from_rdata(
        Name::from_ascii("example.com.").unwrap(),
        60,
        RData::A(Ipv4Addr::new(192, 0, 2, 1).into()),
    ));
    let up = FakeUpstream {
        calls: Cell::new(0),
        reply: Some(canned.to_vec().unwrap()),
    };
    let (m, _) = ask_with(&zone, &query("example.com.", RecordType::A), UDP, Some(&up));
    assert_eq!(up.calls.get(), 1);
    assert_eq!(m.metadata.id, 0x4242);
    assert_eq!(lines(&m.answers), ["example.com. 60 A 192.0.2.1"]);
    // Names in the zone never reach the upstream, not even NXDOMAIN ones.
    let (m, _) = ask_with(
        &zone,
        &query("nope.svc.cluster.local.", RecordType::A),
        UDP,
        Some(&up),
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.recursion_available);
    assert_eq!(up.calls.get(), 1);

    let dead = FakeUpstream {
        calls: Cell::new(0),
        reply: None,
    };
    let (m, _) = ask_with(
        &zone,
        &query("example.com.", RecordType::A),
        UDP,
        Some(&dead),
    );
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(m.queries.len(), 1);
}

/// The one record an ANY query gets (RFC 8482 §4.2): HINFO "RFC8482" "".
fn assert_rfc8482_hinfo(m: &Message, owner: &str) {
    assert_ok(m);
    assert_eq!(m.answers.len(), 1, "{m:?}");
    let r = &m.answers[0];
    assert_eq!(r.name.to_ascii(), owner);
    assert_eq!(r.ttl, 5);
    let RData::HINFO(h) = &r.data else {
        panic!("{r:?}")
    };
    assert_eq!((&*h.cpu, &*h.os), (&b"RFC8482"[..], &b""[..]));
}

#[test]
fn any_is_answered_minimally() {
    // A name with one A record, the apex (SOA), a reverse name (PTR) and a
    // headless name with 60 A records: each gets the one HINFO, never its RRsets.
    for name in [
        "web.default.svc.cluster.local.",
        "cluster.local.",
        "20.0.96.10.in-addr.arpa.",
        "big.default.svc.cluster.local.",
    ] {
        let m = ask(name, RecordType::ANY);
        assert_rfc8482_hinfo(&m, name);
        assert!(m.metadata.authoritative);
        // Over TCP too, and in the client's case.
        let upper = name.to_ascii_uppercase();
        let q = query(&upper, RecordType::ANY);
        let (m, len) = ask_with(&zone(), &q, Transport::Tcp, None);
        assert_rfc8482_hinfo(&m, &upper);
        // The query echoed, plus one record: owner pointer, fixed part, 9 bytes of RDATA.
        assert_eq!(len, q.len() + 2 + 10 + 9, "ANY {name}");
    }
    // The SRV and A sets of `big` are 60 records each; ANY stays one small record.
    let (_, all_a) = ask_with(
        &zone(),
        &query("big.default.svc.cluster.local.", RecordType::A),
        Transport::Tcp,
        None,
    );
    let (_, any) = ask_with(
        &zone(),
        &query("big.default.svc.cluster.local.", RecordType::ANY),
        Transport::Tcp,
        None,
    );
    assert!(all_a > 900 && any < 100, "A {all_a} bytes, ANY {any} bytes");
    // A CNAME owner answers its CNAME (RFC 8482 §4.2), not followed.
    let m = ask("alias.default.svc.cluster.local.", RecordType::ANY);
    assert_ok(&m);
    assert_eq!(
        lines(&m.answers),
        ["alias.default.svc.cluster.local. 5 CNAME web.default.svc.cluster.local."]
    );
    // An empty non-terminal holds nothing: NODATA with the SOA.
    let m = ask("svc.cluster.local.", RecordType::ANY);
    assert_ok(&m);
    assert!(m.answers.is_empty());
    assert_soa_authority(&m);
    // An absent name is still NXDOMAIN.
    let m = ask("nope.default.svc.cluster.local.", RecordType::ANY);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn deferred_and_shed_forwarding() {
    use crate::answer::{respond, Forwarding, Outcome};
    let zone = zone();
    let mut out = Vec::new();
    // Outside names: deferred with nothing written, and the upstream never asked.
    let q = query("example.com.", RecordType::A);
    assert_eq!(
        respond(&zone, &q, UDP, Forwarding::Defer, &mut out),
        Outcome::Deferred
    );
    assert!(out.is_empty());
    // Cluster names are answered as ever, with RA since forwarding exists.
    let q2 = query("web.default.svc.cluster.local.", RecordType::A);
    let outcome = respond(&zone, &q2, UDP, Forwarding::Defer, &mut out);
    assert!(matches!(outcome, Outcome::Answered { .. }), "{outcome:?}");
    let m = Message::from_vec(&out).unwrap();
    assert_eq!(
        lines(&m.answers),
        ["web.default.svc.cluster.local. 5 A 10.96.0.20"]
    );
    assert!(m.metadata.recursion_available);
    // A full pool: SERVFAIL at once, counted as shed.
    assert_eq!(
        respond(&zone, &q, UDP, Forwarding::Shed, &mut out),
        Outcome::Shed
    );
    let m = Message::from_vec(&out).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(m.metadata.id, 0x4242);
    assert_eq!(
        respond(&zone, &q, UDP, Forwarding::Failed, &mut out),
        Outcome::Forwarded { ok: false }
    );
    assert_eq!(
        Message::from_vec(&out).unwrap().metadata.response_code,
        ResponseCode::ServFail
    );
    // Without an upstream, outside names stay REFUSED.
    respond(&zone, &q, UDP, Forwarding::Refuse, &mut out);
    let m = Message::from_vec(&out).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}
