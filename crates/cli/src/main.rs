//! `tapestry`: the command-line client. It talks to node agents over their control
//! sockets, and runs the lab's pods (see [`runtime`]).
#![forbid(unsafe_code)]

mod runtime;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tapestry_agent::api::{Attachment, NodeStatus, Request};
use tapestry_agent::control;

use runtime::Lab;

/// Tapestry: Kubernetes pod networking in userspace.
#[derive(Parser, Debug)]
#[command(name = "tapestry", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Show a node's ports, pods, MAC table and counters.
    Status {
        /// The node agent's control socket.
        #[arg(long)]
        socket: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Print only this counter's value (e.g. `forwarded`, `flooded`, a drop reason).
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
    /// Lab runtime: create, list or remove the pods of manifests.
    Pods {
        #[command(subcommand)]
        op: PodsOp,
    },
    /// Exit 0 if a TCP connection to ADDR:PORT opens within a second.
    Probe { addr: SocketAddr },
}

#[derive(Subcommand, Debug)]
enum PodsOp {
    /// Create every Pod of the manifests (file or directory) that is not running yet, and wait until each answers.
    Up {
        #[command(flatten)]
        lab: LabArgs,
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Seconds to wait for each pod to answer.
        #[arg(long, default_value_t = 20)]
        timeout: u64,
    },
    /// Remove pods: those named, or all of the lab.
    Down {
        #[command(flatten)]
        lab: LabArgs,
        /// NAMESPACE/NAME or NAME (namespace `default`); none means every pod.
        pods: Vec<String>,
    },
    /// List the lab's pods: namespace, name, node, IP, network namespace.
    List {
        #[command(flatten)]
        lab: LabArgs,
    },
}

#[derive(clap::Args, Debug)]
struct LabArgs {
    /// The lab's state directory.
    #[arg(long)]
    lab_dir: PathBuf,
    /// Prefix of the lab's network namespace names.
    #[arg(long, default_value = "tapestry")]
    prefix: String,
    /// Directory of the lab's binaries (put first on the containers' PATH).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

impl LabArgs {
    fn lab(&self) -> Lab {
        let bin_dir = self.bin_dir.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(PathBuf::from))
                .unwrap_or_default()
        });
        Lab {
            dir: self.lab_dir.clone(),
            prefix: self.prefix.clone(),
            bin_dir,
        }
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
        Err(e) => {
            eprintln!("tapestry: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Status {
            socket,
            output,
            counter,
        } => {
            let reply = control::call(&socket, &Request::Status)?;
            let status = reply
                .status
                .ok_or_else(|| reply.error.unwrap_or_else(|| "no status in reply".into()))?;
            if let Some(name) = counter {
                let value = status
                    .counters
                    .iter()
                    .chain(status.drops.iter())
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| *v);
                match value {
                    Some(v) => println!("{v}"),
                    None => return Err(format!("no counter {name:?}")),
                }
                return Ok(());
            }
            if output == Output::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?
                );
            } else {
                print_status(&status);
            }
            Ok(())
        }
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
            let req = match op {
                CniOp::Add => Request::Add(a),
                CniOp::Del => Request::Del(a),
                CniOp::Check => Request::Check(a),
            };
            let reply = control::call(&socket, &req)?;
            if !reply.ok {
                return Err(reply.error.unwrap_or_default());
            }
            if let Some(r) = reply.result {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?
                );
            }
            Ok(())
        }
        Cmd::Pods { op } => pods(op),
        Cmd::Probe { addr } => TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .map(|_| ())
            .map_err(|e| format!("{addr}: {e}")),
    }
}

fn pods(op: PodsOp) -> Result<(), String> {
    match op {
        PodsOp::Up { lab, file, timeout } => {
            let lab = lab.lab();
            let objects =
                tapestry_cluster::manifest::load_path(&file).map_err(|e| e.to_string())?;
            let placed = lab.place(objects)?;
            let mut ips = Vec::new();
            for p in &placed {
                let ip = lab.up(p)?;
                println!(
                    "pod {}/{} on {}: {ip}",
                    p.pod.metadata.namespace, p.pod.metadata.name, p.node
                );
                ips.push(ip);
            }
            for (p, ip) in placed.iter().zip(ips) {
                lab.wait_ready(p, ip, Duration::from_secs(timeout))?;
            }
            println!("{} pod(s) answering", placed.len());
            Ok(())
        }
        PodsOp::Down { lab, pods } => {
            let lab = lab.lab();
            let targets: Vec<(String, String)> = if pods.is_empty() {
                lab.existing()
            } else {
                pods.iter()
                    .map(|p| match p.split_once('/') {
                        Some((ns, n)) => (ns.to_owned(), n.to_owned()),
                        None => ("default".to_owned(), p.clone()),
                    })
                    .collect()
            };
            for (ns, name) in targets {
                lab.down(&ns, &name)?;
                println!("pod {ns}/{name} removed");
            }
            Ok(())
        }
        PodsOp::List { lab } => {
            let lab = lab.lab();
            println!(
                "{:<12} {:<16} {:<8} {:<15} NETNS",
                "NAMESPACE", "NAME", "NODE", "IP"
            );
            for (ns, name) in lab.existing() {
                let dir = lab.dir.join("pods").join(format!("{ns}_{name}"));
                let read = |f: &str| {
                    std::fs::read_to_string(dir.join(f))
                        .map(|s| s.trim().to_owned())
                        .unwrap_or_else(|_| "-".into())
                };
                println!(
                    "{:<12} {:<16} {:<8} {:<15} {}-{ns}-{name}",
                    ns,
                    name,
                    read("node"),
                    read("ip"),
                    lab.prefix
                );
            }
            Ok(())
        }
    }
}

fn print_status(s: &NodeStatus) {
    println!(
        "node {}  subnet {}  gateway {} ({})  mtu {}",
        s.node, s.subnet, s.gateway_ip, s.gateway_mac, s.mtu
    );
    println!();
    println!(
        "{:<5} {:<5} {:<8} {:<24} {:<15} {:<18} {:>10} {:>10}",
        "PORT", "KIND", "TAP", "OWNER", "IP", "MAC", "RX", "TX"
    );
    for p in &s.ports {
        println!(
            "{:<5} {:<5} {:<8} {:<24} {:<15} {:<18} {:>10} {:>10}",
            p.port, p.kind, p.tap, p.owner, p.ip, p.mac, p.rx_frames, p.tx_frames
        );
    }
    println!();
    println!(
        "MAC table ({} of {} entries)",
        s.mac_table.len(),
        s.mac_table_capacity
    );
    for m in &s.mac_table {
        println!("  {}  port {:<3} age {} ms", m.mac, m.port, m.age_ms);
    }
    println!();
    let counters: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("counters: {}", counters.join(" "));
    let drops: Vec<String> = s
        .drops
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if drops.is_empty() {
        println!("drops: none");
    } else {
        println!("drops: {}", drops.join(" "));
    }
}
