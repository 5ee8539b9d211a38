//! `tapestryd`: the Tapestry node agent. One runs per node, in the node's network
//! namespace; see `tapestryd --help` and docs/architecture.md.
#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tapestry_agent::control;
use tapestry_agent::kubelet::{ClusterDns, Kubelet};
use tapestry_agent::netconf::mac_for;
use tapestry_agent::node::{Node, NodeConfig, TunnelSetup};
use tapestry_agent::{cluster_sync, service_sync};
use tapestry_cluster::ipam::{self, PodIpam};
use tapestry_cluster::{
    ensure_cluster_config, ClusterCache, DirStore, Ipv4Cidr, MacAddr, Networking, Store,
};

/// VXLAN's overhead on the underlay: outer IPv4 (20) + UDP (8) + VXLAN (8) +
/// inner Ethernet (14) bytes (RFC 7348).
const VXLAN_OVERHEAD: u32 = 50;

/// Tapestry node agent: switches, routes and tunnels this node's pod traffic in
/// userspace, attaches pods (CNI ADD/DEL/CHECK) over its control socket, and,
/// with --store, joins the cluster: registers the node, leases a pod subnet,
/// routes to every other node over VXLAN and runs the pods assigned to it.
#[derive(Parser, Debug)]
#[command(name = "tapestryd", version)]
struct Args {
    /// This node's name.
    #[arg(long)]
    node: String,
    /// Directory for the agent's state (pod attachments, lock file, pod run files).
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// Control socket path [default: STATE_DIR/tapestryd.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Cluster store directory (shared by every node of a one-machine cluster).
    /// Without it the agent runs one standalone node on --pod-cidr.
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// This node's address on the underlay network: the VXLAN endpoint (with --store).
    #[arg(long, value_name = "IP")]
    underlay_ip: Option<Ipv4Addr>,
    /// MTU of the underlay network; pods get this minus the 50-byte VXLAN overhead.
    #[arg(long, default_value_t = 1500)]
    underlay_mtu: u32,
    /// The cluster's pod network, split into per-node subnets.
    #[arg(long, value_name = "CIDR", default_value = "10.244.0.0/16")]
    cluster_cidr: Ipv4Cidr,
    /// The Service network: ClusterIPs are load-balanced by each node's router.
    #[arg(long, value_name = "CIDR", default_value = "10.96.0.0/12")]
    service_cidr: Ipv4Cidr,
    /// Prefix length of each node's pod subnet.
    #[arg(long, default_value_t = 24)]
    node_prefix: u8,
    /// This node's pod subnet. Standalone: required. With --store: claimed instead of the next free one.
    #[arg(long, value_name = "CIDR")]
    pod_cidr: Option<Ipv4Cidr>,
    /// MTU of pod interfaces and the host port [default: underlay MTU - 50 with --store, else 1500].
    #[arg(long)]
    mtu: Option<u32>,
    /// Name of the host port TAP in the node's namespace.
    #[arg(long, default_value = "cbr0")]
    host_port: String,
    /// Prefix of the pod network namespaces this node's kubelet creates (PREFIX-NAMESPACE-NAME).
    #[arg(long, default_value = "tapestry")]
    netns_prefix: String,
    /// Cluster DNS server written into pods' resolv.conf (with --store); none if not given.
    #[arg(long, value_name = "IP")]
    cluster_dns: Option<Ipv4Addr>,
    /// Cluster DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// UDP port of the VXLAN tunnel.
    #[arg(long, default_value_t = 4789)]
    vxlan_port: u16,
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

/// Takes the state directory's lock for the life of the process: one agent per
/// state directory.
fn lock_state_dir(dir: &std::path::Path) -> Result<File, String> {
    fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create state dir {}: {e}", dir.display()))?;
    let lock_path = dir.join("tapestryd.lock");
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
            dir.display()
        ));
    }
    let _ = lock.set_len(0);
    let _ = writeln!(lock, "{}", std::process::id());
    Ok(lock)
}

fn run(args: Args) -> Result<(), String> {
    if args.underlay_mtu < 576 + VXLAN_OVERHEAD || args.underlay_mtu > 65_535 {
        return Err(format!(
            "--underlay-mtu {} is out of range ({} to 65535)",
            args.underlay_mtu,
            576 + VXLAN_OVERHEAD
        ));
    }
    let lock = lock_state_dir(&args.state_dir)?;
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| args.state_dir.join("tapestryd.sock"));
    let listener = control::bind(&socket)?;

    let store: Option<Arc<dyn Store>> = match &args.store {
        Some(dir) => {
            Some(Arc::new(DirStore::open(dir).map_err(|e| {
                format!("cannot open store {}: {e}", dir.display())
            })?))
        }
        None => None,
    };
    let (subnet, tunnel) = match &store {
        Some(store) => {
            let underlay_ip = args
                .underlay_ip
                .ok_or("--store needs --underlay-ip (this node's tunnel address)")?;
            // The first agent records the cluster's CIDRs (admission allocates
            // ClusterIPs from it); every later one must agree.
            let networking = Networking {
                service_subnet: args.service_cidr,
                pod_subnet: args.cluster_cidr,
            };
            ensure_cluster_config(&**store, networking).map_err(|e| e.to_string())?;
            if let Some(want) = args.pod_cidr {
                // Record the wish in the Node object; the lease claims exactly that block.
                cluster_sync::register(
                    &**store,
                    &args.node,
                    want,
                    underlay_ip,
                    vtep_mac(underlay_ip),
                )?;
            }
            let subnet =
                ipam::lease_node_subnet(&**store, &args.node, args.cluster_cidr, args.node_prefix)
                    .map_err(|e| format!("cannot lease a pod subnet: {e}"))?;
            let tunnel = TunnelSetup {
                underlay_ip,
                vtep_mac: tapestry_dataplane::MacAddr(vtep_mac(underlay_ip).0),
                port: args.vxlan_port,
                inner_mtu: args.underlay_mtu - VXLAN_OVERHEAD,
                cluster: args.cluster_cidr,
                service_cidr: args.service_cidr,
            };
            (subnet, Some(tunnel))
        }
        None => (
            args.pod_cidr
                .ok_or("give --pod-cidr (standalone) or --store (cluster)")?,
            None,
        ),
    };
    let mtu = args.mtu.unwrap_or(if tunnel.is_some() {
        args.underlay_mtu - VXLAN_OVERHEAD
    } else {
        1500
    });
    if !(576..=65_535).contains(&mtu) {
        return Err(format!("--mtu {mtu} is out of range (576 to 65535)"));
    }
    if let Some(t) = &tunnel {
        if mtu > t.inner_mtu {
            return Err(format!(
                "--mtu {mtu} is larger than the tunnel allows ({})",
                t.inner_mtu
            ));
        }
    }
    let ipam = store
        .as_ref()
        .map(|s| PodIpam::new(Arc::clone(s), &args.node, subnet));
    let node = Arc::new(Node::start(NodeConfig {
        name: args.node.clone(),
        subnet,
        mtu,
        host_port: args.host_port.clone(),
        state_dir: args.state_dir.clone(),
        ipam,
        tunnel: tunnel.clone(),
    })?);

    if let (Some(store), Some(t)) = (&store, &tunnel) {
        cluster_sync::register(
            &**store,
            &args.node,
            subnet,
            t.underlay_ip,
            vtep_mac(t.underlay_ip),
        )?;
        tracing::info!(node = %args.node, %subnet, underlay = %t.underlay_ip, "registered in the cluster store");
        // One list-and-watch of the store feeds routes, services and the kubelet.
        let cache = Arc::new(
            ClusterCache::start(Arc::clone(store))
                .map_err(|e| format!("cannot watch the cluster store: {e}"))?,
        );
        let (cache2, me, routes, cluster) = (
            Arc::clone(&cache),
            args.node.clone(),
            node.routes(),
            args.cluster_cidr,
        );
        std::thread::Builder::new()
            .name("routes".into())
            .spawn(move || cluster_sync::watch_routes(cache2, me, subnet, cluster, routes))
            .map_err(|e| e.to_string())?;
        let services = node.services();
        std::thread::Builder::new()
            .name("services".into())
            .spawn({
                let cache = Arc::clone(&cache);
                move || service_sync::run(cache, services)
            })
            .map_err(|e| e.to_string())?;
        let kubelet = Arc::new(Kubelet {
            node: Arc::clone(&node),
            store: Arc::clone(store),
            node_name: args.node.clone(),
            netns_prefix: args.netns_prefix.clone(),
            run_dir: args.state_dir.join("pods"),
            store_dir: args.store.clone().unwrap_or_default(),
            dns: args.cluster_dns.map(|server| ClusterDns {
                server,
                domain: args.cluster_domain.clone(),
            }),
            bin_dir: std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(PathBuf::from))
                .unwrap_or_default(),
        });
        std::thread::Builder::new()
            .name("kubelet".into())
            .spawn(move || kubelet.run(cache))
            .map_err(|e| e.to_string())?;
    }
    tracing::info!(socket = %socket.display(), "control socket ready");
    control::serve(listener, node);
    drop(lock);
    Ok(())
}

/// A node's VTEP MAC: `0a:58:` + its underlay address, like pod MACs.
fn vtep_mac(underlay_ip: Ipv4Addr) -> MacAddr {
    MacAddr(mac_for(underlay_ip).0)
}
