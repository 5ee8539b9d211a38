//! `tapestry-scale`: how long until every consumer of the cluster store
//! reflects each of N pods and M services written to it (scripts/scale_bench.sh
//! runs it against a lab; docs/benchmarks.md has the figures).
//!
//! What "reflects" means, without guessing: each consumer reports the store
//! revision its published state was built from, and the cluster cache that
//! feeds it applies the store's watch events in revision order (the `Store`
//! contract) and publishes whole batches, so a consumer showing revision
//! ≥ R holds every change up to R, the object written at R included.
//! - every agent's route table and service table: `routes_revision` and
//!   `services_revision` in its status (the control socket);
//! - every cluster DNS server: TXT `tapestry-revision.<zone>` (UDP query).
//!
//! The bench writes the objects one after another through admission (a
//! Service gets its ClusterIP as `tapestry apply` would give it), as fast as
//! the store takes them, and records when each write returned and at which
//! revision. One thread per consumer polls it every `--poll-ms` and records
//! when its revision first changed; an object's latency to a consumer is the
//! first poll that showed a revision ≥ its own minus the moment its write
//! returned (so a figure is late by at most one poll period plus the poll's
//! own round trip), and its latency to a kind of consumer is the slowest
//! consumer of that kind.

mod reflect;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tapestry_cluster::admission::Admission;
use tapestry_cluster::manifest::parse_manifests;
use tapestry_cluster::store::{Store, StoreSpec};
use tapestry_cluster::PodRunStatus;
use tapestry_proto::{call, Request};

use reflect::{latencies, percentile, Timeline};

#[derive(Parser, Debug)]
#[command(
    name = "tapestry-scale",
    about = "Writes N pods and M services to the cluster store and measures, per object, how long until every agent's route and service tables and every cluster DNS server reflect it"
)]
struct Args {
    /// The cluster store (a directory or etcd://HOST:PORT,...).
    #[arg(long)]
    store: String,
    /// An agent's control socket; give one per node.
    #[arg(long = "agent")]
    agents: Vec<PathBuf>,
    /// A cluster DNS server (IP:PORT); give one per DNS pod.
    #[arg(long = "dns")]
    dns: Vec<SocketAddr>,
    /// A cluster DNS pod (NAMESPACE/NAME): its IP, port 53, from its status
    /// in the store.
    #[arg(long = "dns-pod")]
    dns_pods: Vec<String>,
    /// The cluster DNS zone.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// Pods to write, spread round-robin over the nodes (`--node`).
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Services to write; pod i is selected by service i mod M.
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// The nodes the pods go to (nodeName), round-robin.
    #[arg(long = "node", required = true)]
    nodes: Vec<String>,
    /// The namespace of the objects (must exist).
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Poll period per consumer, in milliseconds.
    #[arg(long, default_value_t = 10)]
    poll_ms: u64,
    /// How long to wait for the consumers to catch up, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// A label for the run (the store kind), carried into the JSON.
    #[arg(long, default_value = "")]
    label: String,
    /// Write the result as JSON here (else only the table on stdout).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One consumer polled: its kind (`routes`, `services`, `dns`) and name.
struct Consumer {
    kind: &'static str,
    name: String,
    probe: Probe,
}

enum Probe {
    /// An agent's status; `services` picks the service table, else routes.
    Agent {
        socket: PathBuf,
        services: bool,
    },
    Dns {
        server: SocketAddr,
        query: Vec<u8>,
    },
}

impl Probe {
    /// The revision the consumer reflects now, or `None` if it did not answer.
    fn revision(&self, udp: &UdpSocket, buf: &mut [u8]) -> Option<u64> {
        match self {
            Probe::Agent { socket, services } => {
                let reply = call(socket, &Request::Status).ok()?;
                let status = reply.status?;
                Some(if *services {
                    status.services_revision
                } else {
                    status.routes_revision
                })
            }
            Probe::Dns { server, query } => {
                udp.send_to(query, server).ok()?;
                // Answers to earlier, timed-out queries are skipped by id.
                loop {
                    let (n, from) = udp.recv_from(buf).ok()?;
                    if from == *server {
                        if let Some(r) = reflect::txt_revision(buf.get(..n)?, query) {
                            return Some(r);
                        }
                    }
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tapestry-scale: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The objects to write, as manifests (so they pass the same parsing and
/// validation as `tapestry apply -f`).
fn manifests(args: &Args) -> String {
    let mut text = String::new();
    let ns = &args.namespace;
    for s in 0..args.services {
        text.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: scale-s{s}\n  namespace: {ns}\nspec:\n  selector:\n    scale: s{s}\n  ports:\n    - port: 80\n      targetPort: 8080\n---\n"
        ));
    }
    for p in 0..args.pods {
        let node = args
            .nodes
            .get(p % args.nodes.len().max(1))
            .map_or("", String::as_str);
        let svc = p % args.services.max(1);
        text.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: scale-p{p}\n  namespace: {ns}\n  labels:\n    scale: s{svc}\nspec:\n  nodeName: {node}\n  containers:\n    - name: idle\n      command: [\"sleep\", \"infinity\"]\n---\n"
        ));
    }
    text
}

/// One written object: its kind, when its write returned, its revision.
struct Written {
    kind: &'static str,
    at: Instant,
    revision: u64,
}

fn run(args: &Args) -> Result<(), String> {
    let spec = StoreSpec::parse(&args.store).map_err(|e| format!("--store: {e}"))?;
    let store: Arc<dyn Store> = spec.open().map_err(|e| format!("store {spec}: {e}"))?;
    let objects = parse_manifests(&manifests(args), "tapestry-scale").map_err(|e| e.to_string())?;

    let mut consumers = Vec::new();
    for socket in &args.agents {
        for (kind, services) in [("routes", false), ("services", true)] {
            consumers.push(Consumer {
                kind,
                name: socket.display().to_string(),
                probe: Probe::Agent {
                    socket: socket.clone(),
                    services,
                },
            });
        }
    }
    let mut dns = args.dns.clone();
    for pod in &args.dns_pods {
        let entry = store
            .get(&format!("podstatus/{pod}"))
            .map_err(|e| format!("--dns-pod {pod}: {e}"))?
            .ok_or_else(|| format!("--dns-pod {pod}: no status in the store"))?;
        let status: PodRunStatus = serde_json::from_slice(&entry.value)
            .map_err(|e| format!("--dns-pod {pod}: status: {e}"))?;
        let ip = status
            .pod_ip
            .ok_or_else(|| format!("--dns-pod {pod}: no IP yet"))?;
        dns.push(SocketAddr::from((ip, 53)));
    }
    for (i, server) in dns.iter().enumerate() {
        let id = u16::try_from(i).unwrap_or(0).wrapping_add(0x5ca1);
        consumers.push(Consumer {
            kind: "dns",
            name: server.to_string(),
            probe: Probe::Dns {
                server: *server,
                query: reflect::txt_query(id, &format!("tapestry-revision.{}", args.domain))
                    .ok_or("--domain: not a DNS name")?,
            },
        });
    }
    if consumers.is_empty() {
        return Err("nothing to measure: give --agent, --dns or --dns-pod".to_owned());
    }
    // Every consumer must answer before anything is written: a consumer
    // that cannot be polled would make every figure a timeout.
    let probe_socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("udp socket: {e}"))?;
    probe_socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1500];
    for c in &consumers {
        c.probe
            .revision(&probe_socket, &mut buf)
            .ok_or_else(|| format!("{} {} does not report a revision", c.kind, c.name))?;
    }

    let poll = Duration::from_millis(args.poll_ms.max(1));
    let stop = Arc::new(AtomicBool::new(false));
    let pollers: Vec<_> = consumers
        .into_iter()
        .map(|c| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || poll_consumer(c, poll, &stop))
        })
        .collect();

    let mut admission = Admission::new(&*store, &[]).map_err(|e| e.to_string())?;
    let mut written = Vec::with_capacity(objects.len());
    let started = Instant::now();
    for obj in objects {
        let kind = match obj.kind() {
            "Pod" => "pod",
            _ => "service",
        };
        let key = obj.key();
        let obj = admission
            .admit(obj, None)
            .map_err(|e| format!("{key}: {e}"))?;
        let bytes = obj.to_json().map_err(|e| e.to_string())?;
        let revision = store
            .compare_and_swap(&key, 0, &bytes)
            .map_err(|e| format!("{key}: {e} (run against a lab without these objects)"))?;
        written.push(Written {
            kind,
            at: Instant::now(),
            revision,
        });
    }
    let write_time = started.elapsed();
    let last = written.iter().map(|w| w.revision).max().unwrap_or(0);
    eprintln!(
        "tapestry-scale: wrote {} objects in {:.2} s (revisions up to {last}); waiting for every consumer",
        written.len(),
        write_time.as_secs_f64()
    );

    // Wait (bounded) until every consumer reflects the last write.
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let timelines: Vec<(&'static str, String, Timeline)> = {
        while Instant::now() < deadline && !pollers.iter().all(|p| p.is_finished()) {
            // The pollers stop by themselves once they see `last`.
            reflect::LAST.store(last, Ordering::Release);
            std::thread::sleep(poll);
        }
        stop.store(true, Ordering::Release);
        pollers
            .into_iter()
            .map(|p| p.join().map_err(|_| "a poller panicked".to_owned()))
            .collect::<Result<_, _>>()?
    };

    let mut rows = Vec::new();
    for object_kind in ["pod", "service"] {
        let objs: Vec<(Instant, u64)> = written
            .iter()
            .filter(|w| w.kind == object_kind)
            .map(|w| (w.at, w.revision))
            .collect();
        if objs.is_empty() {
            continue;
        }
        for consumer_kind in ["routes", "services", "dns", "all"] {
            let tls: Vec<&Timeline> = timelines
                .iter()
                .filter(|(k, _, _)| consumer_kind == "all" || *k == consumer_kind)
                .map(|(_, _, t)| t)
                .collect();
            if tls.is_empty() {
                continue;
            }
            let (mut ms, missing) = latencies(&objs, &tls);
            ms.sort_by(f64::total_cmp);
            rows.push(serde_json::json!({
                "object": object_kind,
                "consumer": consumer_kind,
                "consumers": tls.len(),
                "objects": objs.len(),
                "not_reflected": missing,
                "p50_ms": percentile(&ms, 50),
                "p99_ms": percentile(&ms, 99),
                "max_ms": ms.last().copied(),
            }));
        }
    }
    let polls: Vec<serde_json::Value> = timelines
        .iter()
        .map(|(k, n, t)| {
            serde_json::json!({"kind": k, "name": n, "polls": t.polls, "mean_poll_ms": t.mean_poll_ms()})
        })
        .collect();

    println!(
        "{:<8} {:<9} {:>9} {:>8} {:>10} {:>10} {:>10} {:>7}",
        "object", "consumer", "consumers", "objects", "p50_ms", "p99_ms", "max_ms", "missing"
    );
    for r in &rows {
        let f = |k: &str| r[k].as_f64().map_or("-".to_owned(), |v| format!("{v:.1}"));
        println!(
            "{:<8} {:<9} {:>9} {:>8} {:>10} {:>10} {:>10} {:>7}",
            r["object"].as_str().unwrap_or(""),
            r["consumer"].as_str().unwrap_or(""),
            r["consumers"].as_u64().unwrap_or(0),
            r["objects"].as_u64().unwrap_or(0),
            f("p50_ms"),
            f("p99_ms"),
            f("max_ms"),
            r["not_reflected"].as_u64().unwrap_or(0)
        );
    }
    let report = serde_json::json!({
        "label": args.label,
        "store": args.store,
        "pods": args.pods,
        "services": args.services,
        "nodes": args.nodes.len(),
        "poll_ms": args.poll_ms,
        "write_seconds": write_time.as_secs_f64(),
        "rows": rows,
        "consumers": polls,
    });
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{report:#}\n"))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let missing: u64 = rows
        .iter()
        .filter_map(|r| r["not_reflected"].as_u64())
        .sum();
    if missing > 0 {
        return Err(format!(
            "{missing} object/consumer pairs not reflected within {} s",
            args.timeout_s
        ));
    }
    Ok(())
}

/// Polls one consumer every `poll` until it reflects [`reflect::LAST`] (once
/// set) or `stop`; returns when its revision first took each value.
fn poll_consumer(
    c: Consumer,
    poll: Duration,
    stop: &AtomicBool,
) -> (&'static str, String, Timeline) {
    let mut timeline = Timeline::new();
    let Ok(udp) = UdpSocket::bind("0.0.0.0:0") else {
        return (c.kind, c.name, timeline);
    };
    let _ = udp.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; 1500];
    let mut next = Instant::now();
    while !stop.load(Ordering::Acquire) {
        if let Some(rev) = c.probe.revision(&udp, &mut buf) {
            timeline.observe(Instant::now(), rev);
            let last = reflect::LAST.load(Ordering::Acquire);
            if last > 0 && rev >= last {
                break;
            }
        }
        next += poll;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    (c.kind, c.name, timeline)
}
