//! Every example under `lab/policy/` parses, validates and is admitted into a
//! store as `tapestry apply -f lab/policy` would, and the examples mean what
//! their comments say.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use tapestry_cluster::{
    admission, ensure_cluster_config, load_path, parse_manifests, Ipv4Cidr, MemStore, Networking,
    Object, PodRef, PolicyProtocol, PolicyType, Store,
};

fn policy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../lab/policy")
}

fn store() -> MemStore {
    let store = MemStore::new();
    ensure_cluster_config(
        &store,
        Networking {
            service_subnet: Ipv4Cidr::parse("10.96.0.0/16").unwrap(),
            pod_subnet: Ipv4Cidr::parse("10.244.0.0/16").unwrap(),
        },
    )
    .unwrap();
    store
}

#[test]
fn every_file_parses_and_applies() {
    let dir = policy_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    let store = store();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        assert!(
            text.trim_start().starts_with('#'),
            "{} must open with a comment saying what it does",
            file.display()
        );
        let objects =
            parse_manifests(&text, &file.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!objects.is_empty(), "{}", file.display());
        admission::apply(&store, objects, |_, _| {}).unwrap_or_else(|e| panic!("{e}"));
    }
    // The whole directory at once, as `apply -f lab/policy`: unchanged now.
    let mut outcomes = Vec::new();
    admission::apply(&store, load_path(&dir).unwrap(), |o, outcome| {
        outcomes.push((o.display_name(), outcome))
    })
    .unwrap();
    assert!(outcomes
        .iter()
        .all(|(_, o)| *o == admission::Outcome::Unchanged));
    let (policies, _) = store.list("networkpolicies/shop/").unwrap();
    assert_eq!(policies.len(), 7);
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn examples_mean_what_their_comments_say() {
    let objects = load_path(&policy_dir()).unwrap();
    let policy = |name: &str| {
        objects
            .iter()
            .find_map(|o| match o {
                Object::NetworkPolicy(p) if p.metadata.name == name => Some(p.clone()),
                _ => None,
            })
            .expect(name)
    };
    let web = labels(&[("app", "web")]);
    let deny = policy("default-deny-ingress");
    assert!(deny.selects("shop", &web) && !deny.selects("default", &web));
    assert_eq!(deny.policy_types(), vec![PolicyType::Ingress]);
    assert!(deny.rules(PolicyType::Ingress).is_empty());

    let ops = labels(&[
        ("team", "ops"),
        ("kubernetes.io/metadata.name", "monitoring"),
    ]);
    let shop = labels(&[("team", "shop"), ("kubernetes.io/metadata.name", "shop")]);
    let any = labels(&[]);
    let scraper = labels(&[("role", "scraper")]);
    let pod = |namespace, labels, namespace_labels| {
        Some(PodRef {
            namespace,
            labels,
            namespace_labels,
        })
    };
    let ip = Ipv4Addr::new(10, 244, 1, 5);
    let allow = policy("allow-ops-to-web-http");
    let rule = allow.rules(PolicyType::Ingress)[0];
    assert!(rule.peers[0].matches("shop", ip, pod("monitoring", &any, &ops)));
    assert!(!rule.peers[0].matches("shop", ip, pod("shop", &any, &shop)));
    assert!(tapestry_cluster::ports_allow(
        rule.ports,
        None,
        PolicyProtocol::Tcp,
        80
    ));
    assert!(!tapestry_cluster::ports_allow(
        rule.ports,
        None,
        PolicyProtocol::Udp,
        80
    ));

    // AND: a scraper outside ops does not match; OR: any monitoring pod does.
    let scrapers = policy("allow-ops-scrapers");
    let and = scrapers.rules(PolicyType::Ingress)[0];
    assert!(and.peers[0].matches("shop", ip, pod("monitoring", &scraper, &ops)));
    assert!(!and.peers[0].matches("shop", ip, pod("shop", &scraper, &shop)));
    assert!(!and.peers[0].matches("shop", ip, pod("monitoring", &any, &ops)));
    let frontend_or_monitoring = policy("allow-frontend-or-monitoring");
    let or = frontend_or_monitoring.rules(PolicyType::Ingress)[0];
    assert!(or
        .peers
        .iter()
        .any(|p| p.matches("shop", ip, pod("monitoring", &any, &ops))));

    let batch = policy("batch-egress");
    assert!(batch.selects("shop", &labels(&[("app", "batch")])));
    assert!(!batch.selects("shop", &labels(&[("app", "batch"), ("debug", "1")])));
    assert!(!batch.selects("shop", &labels(&[("app", "batch"), ("tier", "test")])));
    let rules = batch.rules(PolicyType::Egress);
    assert!(rules[0].peers[0].matches("shop", Ipv4Addr::new(10, 1, 2, 3), None));
    assert!(!rules[0].peers[0].matches("shop", ip, None));
    assert!(tapestry_cluster::ports_allow(
        rules[0].ports,
        None,
        PolicyProtocol::Tcp,
        8050
    ));
    assert!(rules[1].peers.is_empty());
}
