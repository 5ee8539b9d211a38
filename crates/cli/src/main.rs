//! `tapestry`: the command-line client. It talks to node agents over their control
//! sockets (the `tapestry-proto` protocol) and to the cluster store (`apply`, `get`,
//! `delete`, `wait`; admission itself is the cluster crate's).
#![forbid(unsafe_code)]

/// `print!` that returns a closed pipe or any write error as `CliError::Stdout`
/// (the standard macros panic on them).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*).map_err($crate::error::CliError::Stdout)?
    }};
}

/// `println!`, as [`out!`] is `print!`.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::error::CliError::Stdout)?
    }};
}

mod error;
mod objects;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tapestry_proto::{AgentStatus, Attachment, Request};

use error::CliError;
use objects::Format;
use tapestry_cluster::{Store, StoreSpec};

/// Tapestry: Kubernetes pod networking in userspace.
#[derive(Parser, Debug)]
#[command(name = "tapestry", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show a node's ports, pods, MAC table, counters, policy denials and problems
    /// (objects and files it skipped or set aside).
    Status {
        /// The node agent's control socket.
        #[arg(long)]
        socket: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Print only this counter's value (e.g. `forwarded`, `flooded`, a drop
        /// reason, or a policy's `namespace/name` for its denials).
        #[arg(long)]
        counter: Option<String>,
    },
    /// Speak CNI ADD / DEL / CHECK to a node agent.
    Cni {
        #[arg(value_enum)]
        op: CniOp,
        /// The node agent's control socket.
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        container_id: String,
        /// Path of the pod's network namespace.
        #[arg(long, default_value = "")]
        netns: PathBuf,
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// The pod as NAMESPACE/NAME.
        #[arg(long, default_value = "default/unnamed")]
        pod: String,
    },
    /// Create or update the objects of a manifest file or directory in the cluster store.
    Apply {
        #[command(flatten)]
        store: StoreArg,
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// List nodes, pods, services, endpoints, namespaces or network policies.
    Get {
        #[command(flatten)]
        store: StoreArg,
        /// `nodes` (`no`), `pods` (`po`), `services` (`svc`), `endpoints` (`ep`),
        /// `namespaces` (`ns`) or `networkpolicies` (`netpol`).
        kind: String,
        /// Only this namespace (pods, services, endpoints, networkpolicies) [default: default].
        #[arg(short, long)]
        namespace: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Delete the objects of a manifest (-f), or `KIND NAME…` (pod, service, node,
    /// namespace, networkpolicy). Deleting a node also releases its pod subnet
    /// lease, its pod IPs and its liveness lease; it is refused while the node is
    /// Ready (its agent would register it again) unless --force.
    Delete {
        #[command(flatten)]
        store: StoreArg,
        #[arg(short = 'f', long = "filename")]
        file: Option<PathBuf>,
        /// Namespace of the pods, services or network policies named.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Delete a node even though its agent still renews its lease.
        #[arg(long)]
        force: bool,
        /// KIND NAME…
        args: Vec<String>,
    },
    /// Wait until every pod in the store is running and answering.
    Wait {
        #[command(flatten)]
        store: StoreArg,
        /// Seconds to wait.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Exit 0 if a TCP connection to ADDR:PORT opens within a second.
    Probe { addr: SocketAddr },
}

#[derive(clap::Args, Debug)]
struct StoreArg {
    /// The cluster store: a directory or etcd://HOST:PORT[,HOST:PORT...]
    /// [default: $TAPESTRY_STORE, else the default lab's /run/tapestry/tapestry/store].
    #[arg(long, value_name = "DIR|etcd://HOST:PORT,...")]
    store: Option<StoreSpec>,
}

impl StoreArg {
    fn open(&self) -> Result<Arc<dyn Store>, CliError> {
        let spec = match (&self.store, std::env::var_os("TAPESTRY_STORE")) {
            (Some(spec), _) => spec.clone(),
            (None, Some(env)) => StoreSpec::parse_os(&env)?,
            (None, None) => StoreSpec::Dir(PathBuf::from("/run/tapestry/tapestry/store")),
        };
        // Only an existing directory store: the CLI never turns another directory
        // into one (node agents create the store when they first open it). An etcd
        // store is always there; an unreachable one fails the first request.
        if let Some(dir) = spec.dir() {
            if !dir.join("state").is_file() || !dir.join("keys").is_dir() {
                return Err(CliError::NoStore {
                    dir: dir.to_path_buf(),
                });
            }
        }
        spec.open()
            .map_err(|source| CliError::OpenStore { spec, source })
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum CniOp {
    Add,
    Del,
    Check,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): what it wanted it got.
        Err(CliError::Stdout(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tapestry: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    match cli.cmd {
        Cmd::Status {
            socket,
            output,
            counter,
        } => status(&socket, output, counter),
        Cmd::Cni {
            op,
            socket,
            container_id,
            netns,
            ifname,
            pod,
        } => {
            let (pod_namespace, pod_name) =
                pod.split_once('/').unwrap_or(("default", pod.as_str()));
            let a = Attachment {
                container_id,
                netns,
                ifname,
                pod_namespace: pod_namespace.to_owned(),
                pod_name: pod_name.to_owned(),
            };
            cni(&socket, op, a)
        }
        Cmd::Apply { store, file } => objects::apply(&store.open()?, &file),
        Cmd::Get {
            store,
            kind,
            namespace,
            all_namespaces,
            output,
        } => {
            let ns = if all_namespaces {
                None
            } else {
                Some(namespace.unwrap_or_else(|| "default".into()))
            };
            objects::get(&store.open()?, &kind, ns.as_deref(), output)
        }
        Cmd::Delete {
            store,
            file,
            namespace,
            force,
            args,
        } => {
            let keys = match (file, args.as_slice()) {
                (Some(f), []) => objects::keys_of(&f)?,
                (None, [kind, names @ ..]) if !names.is_empty() => {
                    let (prefix, shown) = match kind.as_str() {
                        "pod" | "pods" | "po" => (format!("pods/{namespace}/"), "Pod"),
                        "node" | "nodes" | "no" => ("nodes/".to_owned(), "Node"),
                        "service" | "services" | "svc" => {
                            (format!("services/{namespace}/"), "Service")
                        }
                        "namespace" | "namespaces" | "ns" => {
                            ("namespaces/".to_owned(), "Namespace")
                        }
                        "networkpolicy" | "networkpolicies" | "netpol" => {
                            (format!("networkpolicies/{namespace}/"), "NetworkPolicy")
                        }
                        other => {
                            return Err(CliError::UnknownKind {
                                kind: other.to_owned(),
                                expected: "pod, service, node, namespace or networkpolicy",
                            })
                        }
                    };
                    names
                        .iter()
                        .map(|n| (format!("{prefix}{n}"), format!("{shown} {n}")))
                        .collect()
                }
                _ => return Err(CliError::DeleteUsage),
            };
            objects::delete(&store.open()?, keys, force)
        }
        Cmd::Wait { store, timeout } => {
            objects::wait_ready(&store.open()?, Duration::from_secs(timeout))
        }
        Cmd::Probe { addr } => TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .map(|_| ())
            .map_err(|source| CliError::Probe { addr, source }),
    }
}

/// `tapestry status`.
fn status(socket: &Path, output: Output, counter: Option<String>) -> Result<(), CliError> {
    let reply = tapestry_proto::call(socket, &Request::Status)?;
    let status = match (reply.status, reply.error) {
        (Some(status), _) => status,
        (None, Some(message)) => return Err(CliError::Agent { message }),
        (None, None) => return Err(CliError::NoStatus),
    };
    if let Some(name) = counter {
        let value = status
            .counters
            .iter()
            .chain(status.drops.iter())
            .chain(status.policy_denials.iter())
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v);
        match value {
            Some(v) => outln!("{v}"),
            None => return Err(CliError::NoCounter { name }),
        }
        return Ok(());
    }
    if output == Output::Json {
        outln!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_status(&status)?;
    }
    Ok(())
}

/// `tapestry cni add|del|check`.
fn cni(socket: &Path, op: CniOp, a: Attachment) -> Result<(), CliError> {
    let req = match op {
        CniOp::Add => Request::Add(a),
        CniOp::Del => Request::Del(a),
        CniOp::Check => Request::Check(a),
    };
    let reply = tapestry_proto::call(socket, &req)?;
    if !reply.ok {
        return Err(CliError::Agent {
            message: reply.error.unwrap_or_default(),
        });
    }
    if let Some(r) = reply.result {
        outln!("{}", serde_json::to_string_pretty(&r)?);
    }
    Ok(())
}

fn print_status(s: &AgentStatus) -> Result<(), CliError> {
    outln!(
        "node {}  subnet {}  gateway {} ({})  mtu {}",
        s.node,
        s.subnet,
        s.gateway_ip,
        s.gateway_mac,
        s.mtu
    );
    outln!();
    outln!(
        "{:<5} {:<5} {:<8} {:<24} {:<15} {:<18} {:>10} {:>10}",
        "PORT",
        "KIND",
        "TAP",
        "OWNER",
        "IP",
        "MAC",
        "RX",
        "TX"
    );
    for p in &s.ports {
        outln!(
            "{:<5} {:<5} {:<8} {:<24} {:<15} {:<18} {:>10} {:>10}",
            p.port,
            p.kind,
            p.tap,
            p.owner,
            p.ip,
            p.mac,
            p.rx_frames,
            p.tx_frames
        );
    }
    outln!();
    outln!(
        "{:<18} {:<14} {:<15} VTEP-MAC",
        "ROUTE",
        "VIA",
        "UNDERLAY-IP"
    );
    for r in &s.routes {
        outln!(
            "{:<18} {:<14} {:<15} {}",
            r.subnet,
            r.via,
            r.underlay_ip,
            r.vtep_mac
        );
    }
    outln!();
    outln!(
        "MAC table ({} of {} entries)",
        s.mac_table.len(),
        s.mac_table_capacity
    );
    for m in &s.mac_table {
        outln!("  {}  port {:<3} age {} ms", m.mac, m.port, m.age_ms);
    }
    outln!();
    if !s.flows.is_empty() {
        outln!("Service flows ({})", s.flows.len());
        for f in s.flows.iter().take(20) {
            outln!(
                "  {:<4} {:<21} -> {:<21} -> {:<21} {:<12} age {} ms, expires in {} ms",
                f.proto,
                f.client,
                f.service,
                f.backend,
                f.state,
                f.age_ms,
                f.expires_in_ms
            );
        }
        outln!();
    }
    let mut counters: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    counters.push(format!("tunnel_tx_errors={}", s.tunnel_tx_errors));
    outln!("counters: {}", counters.join(" "));
    let drops: Vec<String> = s
        .drops
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if drops.is_empty() {
        outln!("drops: none");
    } else {
        outln!("drops: {}", drops.join(" "));
    }
    let denials: Vec<String> = s
        .policy_denials
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    match (s.policy_denials.is_empty(), denials.is_empty()) {
        (true, _) => {}
        (false, true) => outln!("policy denials: none ({} policies)", s.policy_denials.len()),
        (false, false) => outln!("policy denials: {}", denials.join(" ")),
    }
    outln!(
        "store revision reflected: routes {}, services {}",
        s.routes_revision,
        s.services_revision
    );
    if s.problems.is_empty() {
        outln!("problems: none");
    } else {
        outln!();
        outln!("PROBLEMS (skipped or set aside, not failed on)");
        for p in &s.problems {
            outln!("{:<9} {}: {}", p.source, p.object, p.reason);
        }
    }
    Ok(())
}
