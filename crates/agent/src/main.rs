//! `tapestryd`: the Tapestry node agent. One runs per node, in the node's network
//! namespace; see `tapestryd --help` and docs/architecture.md.
#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tapestry_agent::control;
use tapestry_agent::netconf::Subnet;
use tapestry_agent::node::{Node, NodeConfig};

/// Tapestry node agent: switches and routes this node's pod traffic in userspace,
/// and attaches pods (CNI ADD/DEL/CHECK) over its control socket.
#[derive(Parser, Debug)]
#[command(name = "tapestryd", version)]
struct Args {
    /// This node's name.
    #[arg(long)]
    node: String,
    /// This node's pod subnet; `.1` is the gateway, the last usable address is the host port.
    #[arg(long, value_name = "CIDR")]
    pod_cidr: Subnet,
    /// Directory for the agent's state (pod attachments, lock file).
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// Control socket path [default: STATE_DIR/tapestryd.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// MTU of pod interfaces and the host port.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// Name of the host port TAP in the node's namespace.
    #[arg(long, default_value = "cbr0")]
    host_port: String,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TAPESTRY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tapestryd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    if !(576..=65_535).contains(&args.mtu) {
        return Err(format!("--mtu {} is out of range (576 to 65535)", args.mtu));
    }
    fs::create_dir_all(&args.state_dir)
        .map_err(|e| format!("cannot create state dir {}: {e}", args.state_dir.display()))?;
    // One agent per state directory: an exclusive lock held for the process's life.
    let lock_path = args.state_dir.join("tapestryd.lock");
    let mut lock = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        let holder = fs::read_to_string(&lock_path).unwrap_or_default();
        return Err(format!(
            "another tapestryd (pid {}) already uses state dir {}: stop it first",
            holder.trim(),
            args.state_dir.display()
        ));
    }
    let _ = lock.set_len(0);
    let _ = writeln!(lock, "{}", std::process::id());

    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| args.state_dir.join("tapestryd.sock"));
    let listener = control::bind(&socket)?;
    let node = Arc::new(Node::start(NodeConfig {
        name: args.node,
        subnet: args.pod_cidr,
        mtu: args.mtu,
        host_port: args.host_port,
        state_dir: args.state_dir,
    })?);
    tracing::info!(socket = %socket.display(), "control socket ready");
    control::serve(listener, node);
    drop(lock);
    Ok(())
}
