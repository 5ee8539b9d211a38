//! `tapestry` on the etcd store: `--store etcd://…` and `TAPESTRY_STORE`
//! reach a real etcd (started here, killed at the end), objects land under
//! `/tapestry/` where etcdctl would show them, and a bad or unreachable store
//! says so instead of hanging.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tapestry_cluster::store::etcd_harness::EtcdCluster;
use tapestry_cluster::{EtcdStore, EtcdStoreOptions, Store};

const NAMESPACES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../lab/policy/00-namespaces.yaml"
);

fn tapestry(args: &[&str], env_store: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tapestry"));
    cmd.args(args).env_remove("TAPESTRY_STORE");
    if let Some(spec) = env_store {
        cmd.env("TAPESTRY_STORE", spec);
    }
    cmd.output().expect("tapestry runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn apply_and_get_through_store_etcd() {
    let Some(etcd) = EtcdCluster::start(1) else {
        return;
    };
    let spec = etcd.spec();
    let out = tapestry(&["apply", "--store", &spec, "-f", NAMESPACES], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // TAPESTRY_STORE names the same store.
    let out = tapestry(&["get", "namespaces"], Some(&spec));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    assert!(
        listed.contains("shop") && listed.contains("monitoring"),
        "{listed}"
    );
    // Laid out like Kubernetes': the objects are under /tapestry/ in etcd.
    let mut opts = EtcdStoreOptions::new(vec![etcd.endpoint(0)]);
    opts.prefix = "/".into();
    let raw = EtcdStore::connect(opts).expect("connect");
    let (entries, _) = raw.list("tapestry/namespaces/").expect("list");
    let keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.contains(&"tapestry/namespaces/shop"), "{keys:?}");
}

#[test]
fn an_unreachable_etcd_is_a_clear_error_in_bounded_time() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let spec = format!("etcd://127.0.0.1:{port}");
    let t = Instant::now();
    let out = tapestry(&["get", "pods", "--store", &spec], None);
    let took = t.elapsed();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("etcd at 127.0.0.1:{port} unreachable")),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn a_bad_store_spec_is_refused_with_the_reason() {
    let out = tapestry(&["get", "pods", "--store", "etcd://nohost"], None);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not HOST:PORT"),
        "{}",
        text(&out.stderr)
    );
    let out = tapestry(&["get", "pods"], Some("etc://127.0.0.1:2379"));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unknown scheme `etc://`"),
        "{}",
        text(&out.stderr)
    );
    // A directory that is not a store is still reported as before.
    let out = tapestry(
        &["get", "pods", "--store", "/nonexistent/tapestry-store"],
        None,
    );
    assert!(
        text(&out.stderr).contains("no cluster store at"),
        "{}",
        text(&out.stderr)
    );
}
