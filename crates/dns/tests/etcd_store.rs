//! The `tapestry-dns` binary on the etcd store: `TAPESTRY_STORE=etcd://…`
//! (what the kubelet hands a container when its agent runs on etcd) is
//! watched, so a Service written to etcd is answered, and its change is
//! answered too, without a restart.
#![cfg(feature = "etcd")]
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tapestry_cluster::store::etcd_harness::EtcdCluster;
use tapestry_cluster::{parse_manifests, Store};

/// The tapestry-dns process, killed on drop.
struct Dns(Child);

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn service(ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n\
         spec:\n  clusterIP: {ip}\n  selector:\n    app: web\n  ports:\n  - port: 80\n"
    )
}

fn write_service(store: &dyn Store, ip: &str) {
    for obj in parse_manifests(&service(ip), "test").unwrap() {
        store.put(&obj.key(), &obj.to_json().unwrap()).unwrap();
    }
}

/// The A answer for web.default.svc.cluster.local, if any.
fn ask(sock: &UdpSocket, server: SocketAddr, id: u16) -> Option<Ipv4Addr> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    let name = Name::from_ascii("web.default.svc.cluster.local.").unwrap();
    m.add_query(Query::query(name, RecordType::A));
    sock.send_to(&m.to_vec().unwrap(), server).ok()?;
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    let reply = Message::from_vec(&buf[..n]).ok()?;
    reply.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

/// Asks until the answer is `want`, for at most 20 s.
fn wait_for(sock: &UdpSocket, server: SocketAddr, want: Ipv4Addr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut id = 1u16;
    loop {
        id = id.wrapping_add(1);
        let got = ask(sock, server, id);
        if got == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "still {got:?}, want {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn tapestry_dns_answers_from_an_etcd_store_and_follows_it() {
    let Some(etcd) = EtcdCluster::start(1) else {
        return;
    };
    let store = etcd.store();
    write_service(&store, "10.96.0.20");
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _dns = Dns(Command::new(env!("CARGO_BIN_EXE_tapestry-dns"))
        .args(["--listen", &server.to_string()])
        .env("TAPESTRY_STORE", etcd.spec())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    wait_for(&sock, server, Ipv4Addr::new(10, 96, 0, 20));
    // A change in etcd reaches DNS through the watch.
    write_service(&store, "10.96.0.21");
    wait_for(&sock, server, Ipv4Addr::new(10, 96, 0, 21));
}

#[test]
fn a_bad_tapestry_store_is_refused_with_the_reason() {
    let out = Command::new(env!("CARGO_BIN_EXE_tapestry-dns"))
        .args(["--listen", "127.0.0.1:0"])
        .env("TAPESTRY_STORE", "etcd://127.0.0.1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("TAPESTRY_STORE") && stderr.contains("not HOST:PORT"),
        "{stderr}"
    );
}
