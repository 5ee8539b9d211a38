//! Tests of manifest parsing, validation and emitting.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;

const POD: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: web-a
  labels:
    app: web
spec:
  nodeName: node1
  containers:
  - name: web
    image: busybox:1.36        # ignored
    command: [\"httpd\", \"-f\"]
    args: [\"-p\", \"80\"]
    resources: {limits: {cpu: 100m}}   # ignored
    ports:
    - name: http
      containerPort: 80
    - containerPort: 53
      protocol: UDP
    env:
    - name: MODE
      value: demo
status:
  phase: Running      # ignored
";

const NODE: &str = "\
apiVersion: v1
kind: Node
metadata:
  name: node1
spec:
  podCIDR: 10.244.1.0/24
status:
  underlayIP: 198.18.0.1
  vtepMAC: 02:00:c6:12:00:01
";

fn err(text: &str) -> String {
    parse_manifests(text, "lab/x.yaml").unwrap_err().to_string()
}

#[test]
fn parses_pod_ignoring_unknown_fields() {
    let objs = parse_manifests(POD, "pod.yaml").unwrap();
    assert_eq!(objs.len(), 1);
    let Object::Pod(p) = &objs[0] else {
        panic!("not a pod")
    };
    assert_eq!(p.metadata.name, "web-a");
    assert_eq!(p.metadata.namespace, "default");
    assert_eq!(p.metadata.labels["app"], "web");
    assert_eq!(p.spec.node_name.as_deref(), Some("node1"));
    let c = &p.spec.containers[0];
    assert_eq!(c.command, ["httpd", "-f"]);
    assert_eq!(c.args, ["-p", "80"]);
    assert_eq!(c.ports[0].name.as_deref(), Some("http"));
    assert_eq!(c.ports[0].container_port, 80);
    assert_eq!(c.ports[0].protocol, Protocol::Tcp);
    assert_eq!(c.ports[1].protocol, Protocol::Udp);
    assert_eq!(c.env[0].value, "demo");
    assert_eq!(objs[0].key(), "pods/default/web-a");
    assert_eq!(objs[0].kind(), "Pod");
}

#[test]
fn parses_node() {
    let objs = parse_manifests(NODE, "node.yaml").unwrap();
    let Object::Node(n) = &objs[0] else {
        panic!("not a node")
    };
    assert_eq!(
        n.spec.pod_cidr,
        Some(Ipv4Cidr::parse("10.244.1.0/24").unwrap())
    );
    assert_eq!(n.underlay_ip(), Some(Ipv4Addr::new(198, 18, 0, 1)));
    assert_eq!(n.status.vtep_mac.unwrap().to_string(), "02:00:c6:12:00:01");
    assert_eq!(objs[0].namespace(), "");
    assert_eq!(objs[0].key(), "nodes/node1");
}

#[test]
fn node_internal_ip_fallback() {
    let text = "apiVersion: v1\nkind: Node\nmetadata: {name: n2}\nstatus:\n  addresses:\n  - {type: Hostname, address: n2}\n  - {type: InternalIP, address: 198.18.0.2}\n";
    let objs = parse_manifests(text, "n.yaml").unwrap();
    let Object::Node(n) = &objs[0] else { panic!() };
    assert_eq!(n.underlay_ip(), Some(Ipv4Addr::new(198, 18, 0, 2)));
}

#[test]
fn multi_document_with_empty_documents() {
    let text = format!("---\n{POD}---\n---\n# only a comment\n---\n{NODE}...\n");
    let objs = parse_manifests(&text, "all.yaml").unwrap();
    assert_eq!(objs.len(), 2);
    assert_eq!(objs[1].kind(), "Node");
}

#[test]
fn unknown_kind_names_file_document_and_kinds() {
    let text = format!("{NODE}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: x}}\n");
    assert_eq!(
        err(&text),
        "lab/x.yaml document 2: unknown kind `Deployment`; supported: Pod, Node, Service, Namespace, NetworkPolicy"
    );
}

#[test]
fn unsupported_api_version() {
    let e = err("apiVersion: v2\nkind: Pod\nmetadata: {name: a}\n");
    assert!(e.contains("apiVersion `v2`") && e.contains("`v1`"), "{e}");
}

#[test]
fn missing_kind_and_name() {
    assert!(err("apiVersion: v1\nmetadata: {name: a}\n").contains("kind: is required"));
    let e = err("apiVersion: v1\nkind: Pod\nmetadata: {}\nspec: {containers: [{name: a}]}\n");
    assert_eq!(e, "lab/x.yaml document 1 (Pod): metadata.name: is required");
}

#[test]
fn invalid_names() {
    let e = err(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: Web_A}\nspec: {containers: [{name: a}]}\n",
    );
    assert!(
        e.contains("metadata.name: `Web_A` is not valid: a DNS-1123 subdomain"),
        "{e}"
    );
    let e = err("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: a.b}\nspec: {containers: [{name: a}]}\n");
    assert!(e.contains("metadata.namespace: `a.b`"), "{e}");
    let e =
        err("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: A}]}\n");
    assert!(
        e.contains("(Pod default/a): spec.containers[0].name: `A`"),
        "{e}"
    );
}

#[test]
fn container_rules() {
    let e = err("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: []}\n");
    assert!(
        e.ends_with("spec.containers: must list at least one entry"),
        "{e}"
    );
    let e = err("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n");
    assert!(
        e.ends_with("spec.containers: must list at least one entry"),
        "{e}"
    );
    let e = err("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: x}, {name: x}]}\n");
    assert!(
        e.ends_with("spec.containers[1].name: `x` appears more than once"),
        "{e}"
    );
}

#[test]
fn port_rules() {
    let pod = |ports: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: a}}\nspec:\n  containers:\n  - name: c\n    ports: {ports}\n")
    };
    let e = err(&pod("[{containerPort: 0}]"));
    assert!(
        e.contains("spec.containers[0].ports[0].containerPort: 0 is out of range"),
        "{e}"
    );
    assert!(e.contains("(line 7)"), "{e}");
    let e = err(&pod("[{containerPort: 70000}]"));
    assert!(
        e.contains("containerPort: 70000 is out of range; must be from 1 to 65535"),
        "{e}"
    );
    let e = err(&pod(
        "[{containerPort: 80, name: http}, {containerPort: 81, name: http}]",
    ));
    assert!(
        e.ends_with("spec.containers[0].ports[1].name: `http` appears more than once"),
        "{e}"
    );
    let e = err(&pod("[{containerPort: 80, name: HTTP}]"));
    assert!(
        e.contains("ports[0].name: `HTTP` is not valid: a port name"),
        "{e}"
    );
    let e = err(&pod("[{containerPort: 80, protocol: SCTP}]"));
    assert!(e.contains("protocol: unknown variant `SCTP`"), "{e}");
    // Port names are unique across the pod's containers.
    let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - {name: c, ports: [{name: p, containerPort: 1}]}\n  - {name: d, ports: [{name: p, containerPort: 2}]}\n";
    assert!(err(text).contains("spec.containers[1].ports[0].name: `p` appears more than once"));
}

#[test]
fn bad_cidr_and_ip() {
    let e =
        err("apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {podCIDR: 10.244.1.7/24}\n");
    assert!(
        e.contains("spec.podCIDR") && e.contains("10.244.1.0/24"),
        "{e}"
    );
    let e = err("apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {podCIDR: banana}\n");
    assert!(
        e.contains("spec.podCIDR: `banana` is not a CIDR block"),
        "{e}"
    );
    let e = err(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n}\nstatus: {underlayIP: 198.18.0.300}\n",
    );
    assert!(e.contains("status.underlayIP"), "{e}");
    let e = err("apiVersion: v1\nkind: Node\nmetadata: {name: n}\nstatus: {vtepMAC: 02:00}\n");
    assert!(
        e.contains("status.vtepMAC") && e.contains("not a MAC address"),
        "{e}"
    );
}

#[test]
fn syntax_error_reports_absolute_line() {
    let text = format!("{NODE}---\napiVersion: v1\nkind: [Pod\n");
    let e = err(&text);
    assert!(e.starts_with("lab/x.yaml document 2 (line 1"), "{e}");
    assert!(e.contains("YAML syntax error"), "{e}");
    let e = err("- a\n- b\n");
    assert!(e.contains("expected an object"), "{e}");
}

#[test]
fn duplicate_objects() {
    let text = format!("{NODE}---\n{NODE}");
    assert_eq!(
        err(&text),
        "lab/x.yaml document 2: duplicate nodes/node1 (first defined at lab/x.yaml document 1)"
    );
    // Same name in different namespaces is fine.
    let p = |ns: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: {ns}}}\nspec: {{containers: [{{name: c}}]}}\n")
    };
    assert_eq!(
        parse_manifests(&format!("{}---\n{}", p("x"), p("y")), "f")
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn null_lists_and_maps_are_empty() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  labels:\nspec:\n  containers:\n  - name: c\n    args:\n    env:\n    - name: X\n      value:\n";
    let objs = parse_manifests(text, "f").unwrap();
    let Object::Pod(p) = &objs[0] else { panic!() };
    assert!(p.metadata.labels.is_empty());
    assert!(p.spec.containers[0].args.is_empty());
    assert_eq!(p.spec.containers[0].env[0].value, "");
}

#[test]
fn yaml_and_json_round_trip() {
    let objs = parse_manifests(&format!("{POD}---\n{NODE}"), "f").unwrap();
    let yaml = emit_yaml(&objs).unwrap();
    assert!(yaml.starts_with("apiVersion: v1\nkind: Pod\n"), "{yaml}");
    assert_eq!(parse_manifests(&yaml, "emitted").unwrap(), objs);
    for o in &objs {
        let json = o.to_json().unwrap();
        assert_eq!(&Object::from_json(&json, "k").unwrap(), o);
    }
    let list = emit_json(&objs).unwrap();
    assert!(list.contains("\"kind\": \"List\""));
    let one = emit_json(&objs[1..]).unwrap();
    assert!(one.contains("\"kind\": \"Node\"") && !one.contains("List"));
}

#[test]
fn from_json_validates() {
    let bad =
        br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"},"spec":{"containers":[]}}"#;
    let e = Object::from_json(bad, "pods/default/a")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pods/default/a") && e.contains("spec.containers"),
        "{e}"
    );
    let unknown = br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"a"}}"#;
    assert!(Object::from_json(unknown, "k").is_err());
}

#[test]
fn load_directory_sorted_yaml_only() {
    let dir = std::env::temp_dir().join(format!("tapestry-manifest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("b-pod.yml"), POD).unwrap();
    std::fs::write(dir.join("a-node.yaml"), NODE).unwrap();
    std::fs::write(dir.join("notes.txt"), "not yaml").unwrap();
    let objs = load_path(&dir).unwrap();
    assert_eq!(
        objs.iter().map(Object::kind).collect::<Vec<_>>(),
        ["Node", "Pod"]
    );
    let single = load_path(&dir.join("b-pod.yml")).unwrap();
    assert_eq!(single.len(), 1);
    // A duplicate across files names both files.
    std::fs::write(dir.join("c-again.yaml"), NODE).unwrap();
    let e = load_path(&dir).unwrap_err().to_string();
    assert!(
        e.contains("c-again.yaml document 1: duplicate nodes/node1") && e.contains("a-node.yaml"),
        "{e}"
    );
    let missing = load_path(&dir.join("nope.yaml")).unwrap_err().to_string();
    assert!(missing.starts_with("cannot read"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}
