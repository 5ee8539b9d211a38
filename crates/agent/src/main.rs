//! `tapestryd`: the Tapestry node agent. One runs per node, in the node's network
//! namespace; see `tapestryd --help` and docs/architecture.md.
#![forbid(unsafe_code)]

use std::fs::{self, File};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use tapestry_agent::cluster_sync::RegisterError;
use tapestry_agent::control::{self, BindError};
use tapestry_agent::handoff::{self, HandoffError, Inherited, Role};
use tapestry_agent::kubelet::{ClusterDns, Kubelet};
use tapestry_agent::netconf::mac_for;
use tapestry_agent::node::{Node, NodeConfig, NodeError, TunnelSetup};
use tapestry_agent::{cluster_sync, lease, policy_sync, service_sync, watchdog};
use tapestry_cluster::ipam::{self, PodIpam};
use tapestry_cluster::{
    ensure_cluster_config, ClusterCache, ConfigError, IpamError, Ipv4Cidr, MacAddr, Networking,
    Store, StoreError, StoreSpec,
};
use tapestry_dataplane::{TunnelConfig, VXLAN_OVERHEAD};

/// The smallest IPv4 MTU every host must accept (RFC 791).
const MIN_MTU: u32 = 576;

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
    /// Directory for the agent's state (pod attachments, the flow file that keeps
    /// service connections across a restart, lock file, pod run files); tmpfs is best.
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// Control socket path [default: STATE_DIR/tapestryd.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The cluster store: a directory (shared by every node of a one-machine
    /// cluster) or etcd://HOST:PORT[,HOST:PORT...] (an etcd cluster, for nodes on
    /// several hosts). Without it the agent runs one standalone node on --pod-cidr.
    #[arg(long, value_name = "DIR|etcd://HOST:PORT,...")]
    store: Option<StoreSpec>,
    /// This node's address on the underlay network: the VXLAN endpoint (with --store).
    #[arg(long, value_name = "IP")]
    underlay_ip: Option<Ipv4Addr>,
    /// MTU of the underlay network; pods get this minus the 50-byte VXLAN overhead.
    #[arg(long, default_value_t = 1500)]
    underlay_mtu: u16,
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
    /// Route pods' packets for addresses outside the cluster and service CIDRs to
    /// the host port, for the node's kernel to forward (it must forward and
    /// masquerade pod sources, as flannel's nodes do: docs/deploy.md). Without it
    /// they get ICMP net unreachable.
    #[arg(long)]
    egress_via_host: bool,
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
    /// Take over from the agent running on this state dir, without a gap: give
    /// the same arguments as it was started with. This process publishes its
    /// tables, then asks the running agent over the control socket for its
    /// descriptors (TAPs, tunnel socket, control socket, state-dir lock; passed
    /// with SCM_RIGHTS); that one stops its packet worker, hands them over and
    /// exits, and this one serves the same TAPs and flows. Under
    /// scripts/supervise.sh, send the supervisor SIGUSR2 instead: it starts this
    /// itself and keeps supervising the new process.
    #[arg(long)]
    upgrade: bool,
}

fn main() -> ExitCode {
    #[allow(clippy::disallowed_methods)] // the start-to-serving figure in the log
    let started = Instant::now();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TAPESTRY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    #[allow(clippy::disallowed_methods)] // wall clock, to line the log up with captures
    let start_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    tracing::info!(node = %args.node, pid = std::process::id(), start_unix_ms, "tapestryd starting");
    match run(args, started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tapestryd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("cannot {op} {}: {source}", path.display())]
    StateDir {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another tapestryd (pid {pid}) already uses state dir {}: stop it first", dir.display())]
    Locked { pid: String, dir: PathBuf },
    #[error("--underlay-mtu {0} is out of range ({min} to 65535)", min = MIN_MTU + u32::from(VXLAN_OVERHEAD))]
    UnderlayMtu(u16),
    #[error("--mtu {0} is out of range ({MIN_MTU} to 65535)")]
    Mtu(u32),
    #[error("--mtu {mtu} is larger than the tunnel allows ({inner})")]
    MtuOverTunnel { mtu: u32, inner: u16 },
    #[error("--store needs --underlay-ip (this node's tunnel address)")]
    NoUnderlayIp,
    #[error("give --pod-cidr (standalone) or --store (cluster)")]
    NoPodCidr,
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot open store {spec}: {source}")]
    Store {
        spec: StoreSpec,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error("cannot lease a pod subnet: {0}")]
    Lease(#[source] IpamError),
    #[error(transparent)]
    ClusterConfig(#[from] ConfigError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("cannot watch the cluster store: {0}")]
    Watch(#[source] StoreError),
    #[error(transparent)]
    Handoff(#[from] HandoffError),
    #[error("upgrade: the running agent did not hand over its {0}")]
    Missing(&'static str),
    #[error("cannot start the {name} thread: {source}")]
    Thread {
        name: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Takes the state directory's lock for the life of the process: one agent per
/// state directory.
fn lock_state_dir(dir: &Path) -> Result<File, StartError> {
    let failed = |op, path: &Path| {
        let path = path.to_owned();
        move |source| StartError::StateDir { op, path, source }
    };
    fs::create_dir_all(dir).map_err(failed("create", dir))?;
    let lock_path = dir.join("tapestryd.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(failed("open", &lock_path))?;
    if lock.try_lock().is_err() {
        let holder = fs::read_to_string(&lock_path).unwrap_or_default();
        return Err(StartError::Locked {
            pid: holder.trim().to_owned(),
            dir: dir.to_owned(),
        });
    }
    record_pid(&lock);
    Ok(lock)
}

/// Writes this process's PID into the state directory's lock file (whoever held
/// it before, and wherever its offset is: an inherited lock's is the old agent's).
fn record_pid(lock: &File) {
    let _ = lock.set_len(0);
    let _ = lock.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0);
}

fn run(args: Args, started: Instant) -> Result<(), StartError> {
    if u32::from(args.underlay_mtu) < MIN_MTU + u32::from(VXLAN_OVERHEAD) {
        return Err(StartError::UnderlayMtu(args.underlay_mtu));
    }
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| args.state_dir.join("tapestryd.sock"));
    // An upgrade takes the running agent's lock and listener instead.
    let (lock, listener) = if args.upgrade {
        (None, None)
    } else {
        let lock = lock_state_dir(&args.state_dir)?;
        (Some(lock), Some(control::bind(&socket)?))
    };
    let upgrade_from = args.upgrade.then_some(socket.as_path());

    let store: Option<Arc<dyn Store>> = match &args.store {
        Some(spec) => Some(spec.open().map_err(|source| StartError::Store {
            spec: spec.clone(),
            source,
        })?),
        None => None,
    };
    let (subnet, tunnel) = match &store {
        Some(store) => {
            let (subnet, tunnel) = join_cluster(&args, &**store)?;
            (subnet, Some(tunnel))
        }
        None => (args.pod_cidr.ok_or(StartError::NoPodCidr)?, None),
    };
    let mtu = pod_mtu(args.mtu, tunnel.as_ref().map(|t| t.config.inner_mtu))?;
    let ipam = store
        .as_ref()
        .map(|s| PodIpam::new(Arc::clone(s), &args.node, subnet));
    // The one place the node's subnet enters the data plane; route sync reads it
    // back from the node's route table.
    let node = Arc::new(Node::start(NodeConfig {
        name: args.node.clone(),
        subnet,
        mtu,
        host_port: args.host_port.clone(),
        egress_via_host: args.egress_via_host,
        state_dir: args.state_dir.clone(),
        ipam,
        tunnel: tunnel.clone(),
        upgrade: args.upgrade,
    })?);

    // From here on, a worker that stops ends the process (the supervisor
    // starts it again) rather than leaving a control socket over a dead data plane.
    spawn("watchdog", {
        let exits = node.worker_exits();
        move || watchdog::watch(exits)
    })?;

    let taken = if let (Some(store), Some(t)) = (&store, &tunnel) {
        let underlay_ip = t.config.underlay_ip;
        // The lease first, so that no reader sees this Node without one (which
        // would be NotReady); then renewed every 2 s on a thread of its own.
        if let Err(e) = lease::renew_now(&**store, &args.node) {
            tracing::warn!(error = %e, "cannot write the liveness lease yet; the renewal thread retries");
        }
        spawn("lease", {
            let (store, name, problems) = (Arc::clone(store), args.node.clone(), node.problems());
            move || lease::renew_forever(store, name, problems, crossbeam_channel::never())
        })?;
        cluster_sync::register(
            &**store,
            &args.node,
            subnet,
            underlay_ip,
            vtep_mac(underlay_ip),
        )?;
        tracing::info!(node = %args.node, %subnet, underlay = %underlay_ip, "registered in the cluster store");
        start_cluster_sync(&args, store, &node, started, upgrade_from)?
    } else {
        let mut taken = take_over(upgrade_from)?;
        node.serve(taken.as_mut().map(|(_, i)| i))?;
        serving(started);
        taken
    };
    let (lock, listener) = adopt(taken, lock, listener)?;
    let dup = |what, fd: io::Result<OwnedFd>| {
        fd.map_err(|source| StartError::StateDir {
            op: what,
            path: socket.clone(),
            source,
        })
    };
    let keep = vec![
        (
            Role::Lock,
            dup("duplicate the lock of", lock.try_clone().map(OwnedFd::from))?,
        ),
        (
            Role::Control,
            dup(
                "duplicate the listener of",
                listener.try_clone().map(OwnedFd::from),
            )?,
        ),
    ];
    tracing::info!(socket = %socket.display(), "control socket ready");
    control::serve(listener, node, keep);
    drop(lock);
    Ok(())
}

/// The lock and control listener this process serves with: its own, or after an
/// upgrade those `taken` from the old agent, whose hand-off is acknowledged here.
fn adopt(
    taken: Option<(UnixStream, Inherited)>,
    lock: Option<File>,
    listener: Option<UnixListener>,
) -> Result<(File, UnixListener), StartError> {
    let (lock, listener) = match taken {
        None => (lock, listener),
        Some((stream, inherited)) => {
            if let Err(e) = handoff::acknowledge(&stream) {
                tracing::warn!(error = %e, "upgrade: cannot confirm the hand-off to the old agent (it exits all the same)");
            }
            let lock = inherited
                .lock
                .ok_or(StartError::Missing("state-dir lock"))?;
            record_pid(&lock);
            let listener = inherited
                .control
                .ok_or(StartError::Missing("control socket"))?;
            tracing::info!(
                "upgrade: the old agent's lock and control socket are this process's now"
            );
            (Some(lock), Some(listener))
        }
    };
    match (lock, listener) {
        (Some(lock), Some(listener)) => Ok((lock, listener)),
        _ => Err(StartError::Missing("state-dir lock or control socket")),
    }
}

/// With `--upgrade`: asks the agent on `socket` for its descriptors (it stops
/// its data plane now; docs/architecture.md, "Restart without a gap").
fn take_over(socket: Option<&Path>) -> Result<Option<(UnixStream, Inherited)>, StartError> {
    let Some(socket) = socket else {
        return Ok(None);
    };
    #[allow(clippy::disallowed_methods)] // the hand-off's duration, for the log
    let t0 = Instant::now();
    let (stream, inherited) = handoff::request(socket)?;
    tracing::info!(
        ports = inherited.ports.len(),
        tunnel = inherited.tunnel.is_some(),
        ms = format!("{:.1}", t0.elapsed().as_secs_f64() * 1e3),
        "upgrade: descriptors received from the running agent"
    );
    Ok(Some((stream, inherited)))
}

/// Cluster mode: records a wanted subnet, leases this node's pod subnet and
/// sets up its tunnel endpoint (the one place the underlay MTU becomes the
/// tunnel's inner MTU, by [`TunnelConfig::new`]).
fn join_cluster(args: &Args, store: &dyn Store) -> Result<(Ipv4Cidr, TunnelSetup), StartError> {
    let underlay_ip = args.underlay_ip.ok_or(StartError::NoUnderlayIp)?;
    // The first agent records the cluster's CIDRs (admission allocates ClusterIPs
    // from it); every later one must agree.
    let networking = Networking {
        service_subnet: args.service_cidr,
        pod_subnet: args.cluster_cidr,
    };
    ensure_cluster_config(store, networking)?;
    if let Some(want) = args.pod_cidr {
        // Record the wish in the Node object; the lease claims exactly that block.
        cluster_sync::register(store, &args.node, want, underlay_ip, vtep_mac(underlay_ip))?;
    }
    let subnet = ipam::lease_node_subnet(store, &args.node, args.cluster_cidr, args.node_prefix)
        .map_err(StartError::Lease)?;
    let tunnel = TunnelSetup {
        config: TunnelConfig::new(underlay_ip, mac_for(underlay_ip), args.underlay_mtu),
        port: args.vxlan_port,
        cluster: args.cluster_cidr,
        service_cidr: args.service_cidr,
    };
    Ok((subnet, tunnel))
}

/// The pods' MTU: `--mtu`, else the tunnel's inner MTU (cluster mode) or 1500;
/// never more than the tunnel carries.
fn pod_mtu(wanted: Option<u32>, tunnel_inner: Option<u16>) -> Result<u32, StartError> {
    let mtu = wanted.unwrap_or(tunnel_inner.map_or(1500, u32::from));
    if !(MIN_MTU..=65_535).contains(&mtu) {
        return Err(StartError::Mtu(mtu));
    }
    match tunnel_inner {
        Some(inner) if mtu > u32::from(inner) => Err(StartError::MtuOverTunnel { mtu, inner }),
        _ => Ok(mtu),
    }
}

/// Starts the threads that follow the cluster store: routes, services,
/// network policies and the kubelet, fed by one list-and-watch ([`ClusterCache`]).
///
/// Routes, services and policies are computed from the cache's first listing and
/// published here, on this thread, before the node serves anything
/// ([`Node::serve`]): a restarted agent never answers a ClusterIP with "host
/// unreachable" nor flushes a restored flow against an empty table. The kubelet
/// starts last.
fn start_cluster_sync(
    args: &Args,
    store: &Arc<dyn Store>,
    node: &Arc<Node>,
    started: Instant,
    upgrade_from: Option<&Path>,
) -> Result<Option<(UnixStream, Inherited)>, StartError> {
    let cache = Arc::new(ClusterCache::start(Arc::clone(store)).map_err(StartError::Watch)?);
    let (me, cluster, routes) = (args.node.clone(), args.cluster_cidr, node.routes());
    let first = cache.snapshot();
    // What a table cannot hold is left out here and reported (log, PROBLEMS) by
    // the sync threads' first pass below, which finds the same.
    let routed =
        cluster_sync::reconcile_routes(&me, cluster, &first.nodes, &first.not_ready_nodes, &routes);
    let services = node.services();
    let served = service_sync::reconcile(&first, &services);
    tracing::info!(
        nodes_left_out = routed.rejected.len(),
        service_ports_left_out = served.rejected.len(),
        "first route and service tables published"
    );
    let reflected = node.reflected();
    if !routed.failed {
        reflected.routes_at(first.revision);
    }
    if !served.failed {
        reflected.services_at(first.revision);
    }
    let policies = node.policies();
    let mut ids = policy_sync::PolicyIds::default();
    if let Err(e) = policy_sync::reconcile(&me, &first, &mut ids, &policies) {
        tracing::error!(error = %e, "first policy table rejected");
    }
    let mut taken = take_over(upgrade_from)?;
    node.serve(taken.as_mut().map(|(_, i)| i))?;
    serving(started);
    spawn("routes", {
        let cache = Arc::clone(&cache);
        let problems = node.problems();
        let reflected = node.reflected();
        move || cluster_sync::watch_routes(cache, me, cluster, routes, problems, reflected)
    })?;
    spawn("services", {
        let cache = Arc::clone(&cache);
        let problems = node.problems();
        move || service_sync::run(cache, services, problems, reflected)
    })?;
    let me = args.node.clone();
    spawn("policies", {
        let cache = Arc::clone(&cache);
        move || policy_sync::run_with(cache, me, policies, ids)
    })?;
    let kubelet = Arc::new(Kubelet {
        node: Arc::clone(node),
        store: Arc::clone(store),
        node_name: args.node.clone(),
        netns_prefix: args.netns_prefix.clone(),
        run_dir: args.state_dir.join("pods"),
        store_spec: args
            .store
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        dns: args.cluster_dns.map(|server| ClusterDns {
            server,
            domain: args.cluster_domain.clone(),
        }),
        problems: node.problems(),
        restarts: Default::default(),
        bin_dir: std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(PathBuf::from))
            .unwrap_or_default(),
    });
    spawn("kubelet", move || kubelet.run(cache))?;
    Ok(taken)
}

/// Logs how long the agent took from `main` to serving its ports.
fn serving(started: Instant) {
    let ms = started.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        ms = format!("{ms:.1}"),
        "serving: pods, tunnel and host port read again"
    );
}

/// Starts a named thread.
fn spawn(name: &'static str, f: impl FnOnce() + Send + 'static) -> Result<(), StartError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
        .map_err(|source| StartError::Thread { name, source })
}

/// A node's VTEP MAC: `0a:58:` + its underlay address, like pod MACs.
fn vtep_mac(underlay_ip: Ipv4Addr) -> MacAddr {
    MacAddr(mac_for(underlay_ip).0)
}
