//! The node: its data-plane worker, host port and pod attachments.
//!
//! Pod attachments are kept in `STATE_DIR/pods.json` (written atomically: temp
//! file, fsync, rename) so that an agent that restarts reattaches the pods'
//! persistent TAPs where they are and traffic resumes. A `pods.json` that
//! cannot be read is moved aside to `pods.json.corrupt-<time>` (never
//! overwritten), logged and listed under PROBLEMS in `tapestry status`; the
//! agent then starts with no pods attached and serves, and in cluster mode
//! its kubelet attaches its pods again from the store (same addresses: the
//! store's IPAM remembers them; the persistent TAPs are reopened where they
//! are).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tapestry_cluster::ipam::PodIpam;
use tapestry_cluster::{IpamError, Ipv4Cidr};
use tapestry_dataplane::RouteSnapshot;
use tapestry_dataplane::{
    Counters, CountersSnapshot, DropReason, FlowFileError, FlowMemory, MacAddr, Pipeline,
    PipelineConfig, PortId, PortRole, Restored, ServiceTable, TunnelConfig,
};
use tapestry_io::flowfile::Opened;
use tapestry_io::tunnel::TunnelSocket;
use tapestry_io::{Command, PortCounters, Tap, WorkerHandle};

use crate::handoff::{Inherited, Role};
use crate::netconf::{self, mac_for, mac_string, NetconfError};
use crate::policy_sync::{PolicyHandles, PolicyNames};
use crate::problems::{Problems, Source};
use crate::reflected::Reflected;
use tapestry_proto::{
    AgentStatus, AttachResult, Attachment, FlowEntry, Interface, IpConfig, MacEntry, PortStatus,
    Route, RouteEntry,
};

/// The host port's bridge port number; pods take 1 and up.
pub const HOST_PORT: PortId = PortId(0);

/// How long a status request waits for the data-plane worker's answer.
const WORKER_ANSWER: Duration = Duration::from_secs(2);
/// How long adding a port waits for the worker.
const ADD_PORT_ANSWER: Duration = Duration::from_secs(5);

/// How the node is set up (from the command line).
pub struct NodeConfig {
    pub name: String,
    /// This node's pod subnet: the pipeline's local subnet, and the one its
    /// route table keeps (route sync reads it back from there).
    pub subnet: Ipv4Cidr,
    pub mtu: u32,
    pub host_port: String,
    /// Pods' packets for outside addresses go to the host port
    /// (`PipelineConfig::egress_via_host`).
    pub egress_via_host: bool,
    pub state_dir: PathBuf,
    /// Store-backed pod IP allocation (cluster mode); `None` allocates from the
    /// subnet locally, remembering only this agent's own attachments.
    pub ipam: Option<PodIpam>,
    /// The VXLAN tunnel to other nodes (cluster mode).
    pub tunnel: Option<TunnelSetup>,
    /// Started by `--upgrade`: the tunnel socket, the TAPs and the flow file
    /// come from the running agent ([`Node::serve`] with what it handed over),
    /// so none is bound, opened or attached at start.
    pub upgrade: bool,
}

/// This node's tunnel endpoint.
#[derive(Debug, Clone)]
pub struct TunnelSetup {
    /// The data plane's side: underlay IP, VTEP MAC, VNI and the largest inner
    /// packet, as [`TunnelConfig::new`] derives it from the underlay MTU.
    pub config: TunnelConfig,
    /// UDP port of the tunnel socket.
    pub port: u16,
    /// The cluster's pod network (routed via the gateway from the node itself).
    pub cluster: Ipv4Cidr,
    /// The Service network (ClusterIPs), load-balanced by the router.
    pub service_cidr: Ipv4Cidr,
}

/// Why a node could not start or a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("subnet {subnet} has no {what} address")]
    NoAddress {
        subnet: Ipv4Cidr,
        what: &'static str,
    },
    #[error("cannot bind the tunnel socket {ip}:{port}: {source}")]
    Tunnel {
        ip: Ipv4Addr,
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the data-plane worker: {0}")]
    Worker(#[source] io::Error),
    #[error("cannot open host port TAP {name}: {source}")]
    HostTap {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Netconf(#[from] NetconfError),
    #[error("data plane: {0}")]
    DataPlane(#[source] io::Error),
    #[error("data plane did not answer within {0:?}")]
    DataPlaneSilent(Duration),
    #[error("cannot add port {port}: {source}")]
    AddPort {
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    BadAttachment(#[from] AttachmentError),
    #[error("container {container} is already attached to {} as {ifname}", netns.display())]
    AlreadyAttached {
        container: String,
        netns: PathBuf,
        ifname: String,
    },
    #[error("{ifname} in {} already belongs to container {container}", netns.display())]
    InterfaceTaken {
        ifname: String,
        netns: PathBuf,
        container: String,
    },
    #[error("pod IP: {0}")]
    PodIp(#[source] IpamError),
    #[error("no free bridge port")]
    NoFreePort,
    #[error("subnet {subnet} is exhausted: every pod address is in use")]
    SubnetExhausted { subnet: Ipv4Cidr },
    #[error("cannot set up {ifname} in {}: {source}", netns.display())]
    PodSetup {
        ifname: String,
        netns: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {op} state file {}: {source}", path.display())]
    StateFile {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("state file {} is unreadable and cannot be moved aside ({source}); move it away by hand", path.display())]
    StateFileStuck {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode state: {0}")]
    EncodeState(#[source] serde_json::Error),
    #[error("container {container} is not attached")]
    NotAttached { container: String },
    #[error("container {container} is attached to {}, not {}", attached.display(), asked.display())]
    OtherNetns {
        container: String,
        attached: PathBuf,
        asked: PathBuf,
    },
    /// CHECK found the pod's interface unlike ADD left it (the source is a [`Drift`]
    /// or the failure to enter the namespace).
    #[error("{source}")]
    Check {
        #[source]
        source: io::Error,
    },
}

/// An attachment request that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    #[error("container_id is empty")]
    NoContainerId,
    #[error("netns is empty: give the path of the pod's network namespace")]
    NoNetns,
    #[error("network namespace {} does not exist", .0.display())]
    MissingNetns(PathBuf),
    #[error("ifname {0:?} is not a valid interface name")]
    BadIfname(String),
}

/// How a pod's interface differs from what ADD set up (CNI CHECK).
#[derive(Debug, thiserror::Error)]
pub enum Drift {
    #[error("{ifname} has MAC {got}, want {want}")]
    Mac {
        ifname: String,
        got: String,
        want: String,
    },
    #[error("{ifname} has MTU {got}, want {want}")]
    Mtu { ifname: String, got: u32, want: u32 },
    #[error("{ifname} is down")]
    Down { ifname: String },
    #[error("{ifname} lacks address {want} (has {have:?})")]
    Address {
        ifname: String,
        want: String,
        have: Vec<String>,
    },
    #[error("no default route via {gateway} dev {ifname} (have {have:?})")]
    DefaultRoute {
        ifname: String,
        gateway: Ipv4Addr,
        have: String,
    },
    #[error(transparent)]
    Netconf(#[from] NetconfError),
}

/// One pod attachment as the state file remembers it across restarts: what
/// CNI ADD was given, the address it got and its bridge port. (Not the DNS
/// crate's `PodRecord`, which is a pod's name and address for `pod.<zone>`
/// answers.)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedAttachment {
    pub attachment: Attachment,
    pub ip: Ipv4Addr,
    pub port: u16,
}

struct Attached {
    record: SavedAttachment,
    counters: Arc<PortCounters>,
}

struct State {
    pods: BTreeMap<String, Attached>,
    host_counters: Arc<PortCounters>,
}

/// The running node.
pub struct Node {
    cfg: NodeConfig,
    gateway: Ipv4Addr,
    gateway_mac: MacAddr,
    host_ip: Ipv4Addr,
    worker: Mutex<WorkerHandle>,
    counters: Arc<Counters>,
    routes: Arc<ArcSwap<RouteSnapshot>>,
    services: Arc<ArcSwap<ServiceTable>>,
    /// The policy table, its denial counters and the names of its ids.
    policies: PolicyHandles,
    mac_capacity: usize,
    /// Flows the load balancer holds (the flow file's size).
    conntrack_capacity: usize,
    /// Control-path state; serialises attach/detach (never touched per packet).
    state: Mutex<State>,
    /// What was skipped or set aside, for `tapestry status`.
    problems: Arc<Problems>,
    /// The store revisions the route and service tables reflect.
    reflected: Arc<Reflected>,
}

impl Node {
    /// Builds the pipeline, starts the worker, opens the host port and reattaches
    /// the pods remembered in the state directory.
    pub fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        let no_address = |what| NodeError::NoAddress {
            subnet: cfg.subnet,
            what,
        };
        let gateway = PodIpam::gateway(&cfg.subnet).ok_or_else(|| no_address("gateway"))?;
        let host_ip = PodIpam::host_port_ip(&cfg.subnet).ok_or_else(|| no_address("host port"))?;
        let gateway_mac = mac_for(gateway);
        let mut pcfg = PipelineConfig::new(gateway, gateway_mac, cfg.subnet);
        pcfg.host_ip = Some(host_ip);
        pcfg.host_mac = Some(mac_for(host_ip));
        pcfg.egress_via_host = cfg.egress_via_host;
        let mut socket = None;
        if let Some(t) = &cfg.tunnel {
            pcfg.tunnel = Some(t.config);
            if !cfg.upgrade {
                socket = Some(bind_tunnel(t)?);
            }
            pcfg.service_cidr = Some(t.service_cidr);
        }
        let mac_capacity = pcfg.mac_capacity;
        let conntrack_capacity = pcfg.conntrack_capacity;
        let mut pipeline = Pipeline::new(pcfg);
        if !cfg.upgrade {
            attach_flow_file(&mut pipeline, &cfg.state_dir);
        }
        let counters = Arc::clone(pipeline.counters());
        let routes = Arc::clone(pipeline.routes());
        let services = Arc::clone(pipeline.services());
        let policies = PolicyHandles {
            table: Arc::clone(pipeline.policies()),
            counters: Arc::clone(pipeline.policy_counters()),
            names: Arc::new(ArcSwap::from_pointee(PolicyNames::default())),
            coverage: Arc::default(),
        };
        let worker = tapestry_io::spawn(pipeline, socket).map_err(NodeError::Worker)?;
        tracing::info!(node = %cfg.name, subnet = %cfg.subnet, %gateway, host_port = %cfg.host_port, %host_ip, "node up; serving nothing until its tables are published");

        let node = Node {
            gateway,
            gateway_mac,
            host_ip,
            worker: Mutex::new(worker),
            counters,
            routes,
            services,
            policies,
            mac_capacity,
            conntrack_capacity,
            state: Mutex::new(State {
                pods: BTreeMap::new(),
                host_counters: Arc::default(),
            }),
            problems: Arc::default(),
            reflected: Arc::default(),
            cfg,
        };
        Ok(node)
    }

    /// Starts serving traffic, once the routes, services and policies the node
    /// needs are published (the caller's job; standalone there are none): the
    /// pods remembered in the state directory first, then the tunnel, then the
    /// host port. Before this, no packet is read, so none meets an empty table
    /// (a ClusterIP answered "host unreachable", a restored flow flushed).
    ///
    /// With `inherited` (an upgrade hand-off, [`crate::handoff`]) the tunnel
    /// socket, the flow file and the TAPs are the ones the old process served:
    /// taken as they are, nothing reopened or configured again.
    pub fn serve(&self, inherited: Option<&mut Inherited>) -> Result<(), NodeError> {
        let mut ports = BTreeMap::new();
        if let Some(inh) = inherited {
            self.adopt(inh.tunnel.take())?;
            ports = std::mem::take(&mut inh.ports);
        }
        let host_tap = ports.remove(&HOST_PORT.0);
        self.reattach(&mut ports)?;
        for (id, tap) in ports {
            tracing::warn!(
                port = id,
                tap = tap.name(),
                "handed-over TAP matches no pod in the state file; closed"
            );
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.worker
            .lock()
            .send(Command::ServeTunnel { done: tx })
            .map_err(NodeError::DataPlane)?;
        rx.recv_timeout(ADD_PORT_ANSWER)
            .map_err(|_| NodeError::DataPlaneSilent(ADD_PORT_ANSWER))?
            .map_err(NodeError::DataPlane)?;
        let cfg = &self.cfg;
        let (host_tap, inherited_host) = match host_tap {
            Some(tap) if tap.name() == cfg.host_port => (tap, true),
            _ => {
                let tap = Tap::open(&cfg.host_port, true).map_err(|source| NodeError::HostTap {
                    name: cfg.host_port.clone(),
                    source,
                })?;
                netconf::configure_interface(
                    tap.name(),
                    mac_for(self.host_ip),
                    cfg.mtu,
                    self.host_ip,
                    cfg.subnet.prefix_len(),
                    None,
                )?;
                (tap, false)
            }
        };
        let host_counters = add_port(&self.worker.lock(), HOST_PORT, PortRole::Host, host_tap)?;
        self.state.lock().host_counters = host_counters;
        // A handed-over host port comes configured, its route in place.
        if let Some(t) = cfg.tunnel.as_ref().filter(|_| !inherited_host) {
            // The node itself reaches other nodes' pods through its gateway, as pods do.
            netconf::ip(&[
                "route",
                "replace",
                &t.cluster.to_string(),
                "via",
                &self.gateway.to_string(),
                "dev",
                &cfg.host_port,
            ])?;
        }
        Ok(())
    }

    fn state_file(&self) -> PathBuf {
        self.cfg.state_dir.join("pods.json")
    }

    /// Reads the state file: no file is no pods; a file that cannot be read
    /// or decoded is moved aside (and reported) and is no pods too. Only a
    /// file that cannot even be moved aside stops the start, so that it is
    /// never overwritten.
    fn read_state_file(&self) -> Result<Vec<SavedAttachment>, NodeError> {
        let path = self.state_file();
        let why = match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(records) => return Ok(records),
                Err(e) => e.to_string(),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => e.to_string(),
        };
        let aside = tapestry_cluster::store::quarantine_file(&path).map_err(|source| {
            NodeError::StateFileStuck {
                path: path.clone(),
                source,
            }
        })?;
        tracing::error!(file = %path.display(), moved_to = %aside.display(), error = %why, "state file unreadable: moved aside; starting with no pods attached (the kubelet attaches its pods again)");
        self.problems.add(
            Source::State,
            path.display().to_string(),
            format!("unreadable ({why}); moved aside to {}", aside.display()),
        );
        Ok(Vec::new())
    }

    /// Takes over the tunnel's receive socket and the flow file from an upgrade
    /// hand-off (the old worker has stopped writing the file), before any port
    /// is served.
    fn adopt(&self, rx: Option<std::net::UdpSocket>) -> Result<(), NodeError> {
        let tunnel = match (&self.cfg.tunnel, rx) {
            (Some(t), Some(rx)) => {
                let ip = t.config.underlay_ip;
                Some(
                    TunnelSocket::with_rx(rx, ip, t.port).map_err(|source| NodeError::Tunnel {
                        ip,
                        port: t.port,
                        source,
                    })?,
                )
            }
            // The old agent had no tunnel: bound here.
            (Some(t), None) => Some(bind_tunnel(t)?),
            (None, _) => None,
        };
        let path = self.cfg.state_dir.join(FLOW_FILE);
        let flows = open_flow_file(&path, self.conntrack_capacity);
        let restored = ask(&self.worker.lock(), ADD_PORT_ANSWER, |done| {
            Command::Adopt {
                tunnel,
                flows,
                done,
            }
        })?;
        log_restored(&path, restored, true);
        Ok(())
    }

    /// The old process's side of the upgrade hand-off: stops the packet worker
    /// (it detaches the flow file as it stands) and returns the tunnel socket
    /// and every port's TAP, open, for [`crate::handoff::send`].
    ///
    /// Taken under the attachments' lock, so that no ADD or DEL is half done
    /// (port attached, `pods.json` not yet written) when the new process reads
    /// `pods.json`; one that comes after finds the worker stopped and fails.
    pub fn hand_over(&self) -> Result<Vec<(Role, OwnedFd)>, NodeError> {
        let _st = self.state.lock();
        let handed = ask(&self.worker.lock(), ADD_PORT_ANSWER, |done| {
            Command::Handover { done }
        })?;
        let mut out = Vec::with_capacity(handed.ports.len() + 1);
        if let Some(t) = handed.tunnel {
            out.push((Role::Tunnel, OwnedFd::from(t.into_rx().0)));
        }
        for (id, tap) in handed.ports {
            let role = Role::Port {
                id: id.0,
                name: tap.name().to_owned(),
                netns: tap.netns().map(Path::to_path_buf),
            };
            out.push((role, tap.into_fd()));
        }
        Ok(out)
    }

    /// Reattaches every pod in the state file whose namespace still exists:
    /// with the TAP handed over for its port if there is one, else reopened.
    fn reattach(&self, inherited: &mut BTreeMap<u16, Tap>) -> Result<(), NodeError> {
        let records = self.read_state_file()?;
        let mut st = self.state.lock();
        for rec in records {
            let a = &rec.attachment;
            // Its port and name identify it (a TAP created by ADD does not
            // record its namespace; the old process's worker knew it by port).
            let handed = inherited.remove(&rec.port).filter(|t| t.name() == a.ifname);
            let opened = match handed {
                Some(t) => Ok(t),
                None => Tap::open_in(&a.netns, &a.ifname, true),
            };
            let tap = match opened {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(container = %a.container_id, netns = %a.netns.display(), error = %e, "pod gone; forgetting it");
                    if let Some(ipam) = &self.cfg.ipam {
                        let _ = ipam.release(&a.container_id);
                    }
                    continue;
                }
            };
            // Its address is recorded as its own again if it was released
            // meanwhile (`tapestry delete node` while this agent was down).
            if let Some(ipam) = &self.cfg.ipam {
                match ipam.claim(&a.container_id, rec.ip) {
                    Ok(true) => {}
                    Ok(false) => {
                        let reason = format!(
                            "reattached with {}, which is not its to hold (another pod's, or outside {}); delete and apply the pod again",
                            rec.ip,
                            ipam.subnet()
                        );
                        tracing::error!(container = %a.container_id, %reason, "pod address conflict");
                        self.problems
                            .add(Source::State, a.container_id.clone(), reason);
                    }
                    Err(e) => {
                        tracing::warn!(container = %a.container_id, error = %e, "cannot confirm the pod's address in the store")
                    }
                }
            }
            let role = PortRole::Pod {
                mac: mac_for(rec.ip),
                ip: rec.ip,
            };
            match add_port(&self.worker.lock(), PortId(rec.port), role, tap) {
                Ok(counters) => {
                    tracing::info!(pod = %format!("{}/{}", a.pod_namespace, a.pod_name), ip = %rec.ip, port = rec.port, "reattached");
                    st.pods.insert(
                        a.container_id.clone(),
                        Attached {
                            record: rec,
                            counters,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(container = %a.container_id, error = %e, "cannot reattach")
                }
            }
        }
        if let Err(e) = self.save(&st) {
            tracing::error!(error = %e, "cannot write state");
        }
        Ok(())
    }

    /// Writes the state file: temporary name, fsync, rename.
    fn save(&self, st: &State) -> Result<(), NodeError> {
        let records: Vec<&SavedAttachment> = st.pods.values().map(|a| &a.record).collect();
        let bytes = serde_json::to_vec_pretty(&records).map_err(NodeError::EncodeState)?;
        let path = self.state_file();
        let tmp = path.with_extension("json.tmp");
        let failed = |op, path: &Path| {
            let path = path.to_owned();
            move |source| NodeError::StateFile { op, path, source }
        };
        let mut f = fs::File::create(&tmp).map_err(failed("create", &tmp))?;
        f.write_all(&bytes).map_err(failed("write", &tmp))?;
        f.sync_all().map_err(failed("sync", &tmp))?;
        fs::rename(&tmp, &path).map_err(failed("replace", &path))
    }

    fn result_for(&self, rec: &SavedAttachment) -> AttachResult {
        let a = &rec.attachment;
        AttachResult {
            cni_version: "1.0.0".into(),
            interfaces: vec![Interface {
                name: a.ifname.clone(),
                mac: mac_string(mac_for(rec.ip)),
                sandbox: a.netns.display().to_string(),
            }],
            ips: vec![IpConfig {
                address: format!("{}/{}", rec.ip, self.cfg.subnet.prefix_len()),
                gateway: self.gateway,
                interface: 0,
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: self.gateway,
            }],
            mtu: self.cfg.mtu,
        }
    }

    /// CNI ADD. Repeating it for an attached container returns the same result.
    pub fn add(&self, a: &Attachment) -> Result<AttachResult, NodeError> {
        validate(a)?;
        let mut st = self.state.lock();
        if let Some(existing) = st.pods.get(&a.container_id) {
            let had = &existing.record.attachment;
            if had.netns != a.netns || had.ifname != a.ifname {
                return Err(NodeError::AlreadyAttached {
                    container: a.container_id.clone(),
                    netns: had.netns.clone(),
                    ifname: had.ifname.clone(),
                });
            }
            return Ok(self.result_for(&existing.record));
        }
        if let Some(other) = st.pods.values().find(|p| {
            p.record.attachment.netns == a.netns && p.record.attachment.ifname == a.ifname
        }) {
            return Err(NodeError::InterfaceTaken {
                ifname: a.ifname.clone(),
                netns: a.netns.clone(),
                container: other.record.attachment.container_id.clone(),
            });
        }
        let ip = match &self.cfg.ipam {
            Some(ipam) => ipam.allocate(&a.container_id).map_err(NodeError::PodIp)?,
            None => self.free_ip(&st)?,
        };
        let release = || {
            if let Some(ipam) = &self.cfg.ipam {
                let _ = ipam.release(&a.container_id);
            }
        };
        let Some(port) = (1..=u16::MAX).find(|p| !st.pods.values().any(|x| x.record.port == *p))
        else {
            release();
            return Err(NodeError::NoFreePort);
        };
        let mac = mac_for(ip);
        let tap = self.open_pod_tap(a, mac, ip).inspect_err(|_| release())?;
        let counters = add_port(
            &self.worker.lock(),
            PortId(port),
            PortRole::Pod { mac, ip },
            tap,
        )
        .inspect_err(|_| release())?;
        let record = SavedAttachment {
            attachment: a.clone(),
            ip,
            port,
        };
        let result = self.result_for(&record);
        tracing::info!(pod = %format!("{}/{}", a.pod_namespace, a.pod_name), %ip, port, netns = %a.netns.display(), "attached");
        st.pods
            .insert(a.container_id.clone(), Attached { record, counters });
        self.save(&st)?;
        Ok(result)
    }

    /// Creates the pod's TAP inside its namespace and configures it (MAC, MTU,
    /// address, default route via the gateway); a TAP that cannot be set up is
    /// removed again.
    fn open_pod_tap(&self, a: &Attachment, mac: MacAddr, ip: Ipv4Addr) -> Result<Tap, NodeError> {
        let (mtu, prefix, gw, ifname) = (
            self.cfg.mtu,
            self.cfg.subnet.prefix_len(),
            self.gateway,
            a.ifname.clone(),
        );
        tapestry_io::in_netns(&a.netns, move || {
            let tap = Tap::open(&ifname, true)?;
            let setup = netconf::ip(&["link", "set", "dev", "lo", "up"]).and_then(|_| {
                netconf::configure_interface(&ifname, mac, mtu, ip, prefix, Some(gw))
            });
            if let Err(e) = setup {
                let _ = tap.unpersist();
                return Err(io::Error::other(e));
            }
            Ok(tap)
        })
        .map_err(|source| NodeError::PodSetup {
            ifname: a.ifname.clone(),
            netns: a.netns.clone(),
            source,
        })
    }

    /// CNI DEL: removes the TAP and releases the address. Nothing to do is success.
    pub fn del(&self, a: &Attachment) -> Result<(), NodeError> {
        let mut st = self.state.lock();
        let Some(pod) = st.pods.remove(&a.container_id) else {
            return Ok(());
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.worker
            .lock()
            .send(Command::RemovePort {
                id: PortId(pod.record.port),
                done: tx,
            })
            .map_err(NodeError::DataPlane)?;
        if let Ok(Some(tap)) = rx.recv() {
            // Closing a non-persistent TAP removes the interface, wherever it is.
            if let Err(e) = tap.unpersist() {
                tracing::warn!(error = %e, "cannot clear persistence of the pod TAP");
            }
        }
        if let Some(ipam) = &self.cfg.ipam {
            if let Err(e) = ipam.release(&a.container_id) {
                tracing::warn!(error = %e, "cannot release the pod's IP");
            }
        }
        tracing::info!(pod = %format!("{}/{}", pod.record.attachment.pod_namespace, pod.record.attachment.pod_name), ip = %pod.record.ip, "detached");
        self.save(&st)
    }

    /// CNI CHECK: the interface exists in the pod with the MAC, MTU, address and
    /// route ADD gave it, and its TAP is served by the data plane.
    pub fn check(&self, a: &Attachment) -> Result<(), NodeError> {
        let st = self.state.lock();
        let pod = st
            .pods
            .get(&a.container_id)
            .ok_or_else(|| NodeError::NotAttached {
                container: a.container_id.clone(),
            })?;
        let rec = pod.record.clone();
        drop(st);
        if rec.attachment.netns != a.netns {
            return Err(NodeError::OtherNetns {
                container: a.container_id.clone(),
                attached: rec.attachment.netns,
                asked: a.netns.clone(),
            });
        }
        let want = Expected {
            ifname: rec.attachment.ifname.clone(),
            mac: mac_string(mac_for(rec.ip)),
            mtu: self.cfg.mtu,
            addr: format!("{}/{}", rec.ip, self.cfg.subnet.prefix_len()),
            gateway: self.gateway,
        };
        tapestry_io::in_netns(&rec.attachment.netns, move || {
            want.check().map_err(io::Error::other)
        })
        .map_err(|source| NodeError::Check { source })
    }

    fn free_ip(&self, st: &State) -> Result<Ipv4Addr, NodeError> {
        let used: Vec<Ipv4Addr> = st.pods.values().map(|p| p.record.ip).collect();
        let hosts = self.cfg.subnet.size().saturating_sub(1);
        (2..hosts)
            .filter_map(|n| self.cfg.subnet.nth(n))
            .find(|ip| *ip != self.host_ip && *ip != self.gateway && !used.contains(ip))
            .ok_or(NodeError::SubnetExhausted {
                subnet: self.cfg.subnet,
            })
    }

    /// Everything `tapestry status` shows.
    pub fn status(&self) -> Result<AgentStatus, NodeError> {
        let mac_table = self.mac_entries()?;
        let ports = self.port_statuses();
        let snap = self.counters.snapshot();
        let tunnel_tx_errors = self.worker.lock().tunnel_tx_errors();
        let flows = self.flow_entries()?;
        Ok(AgentStatus {
            node: self.cfg.name.clone(),
            subnet: self.cfg.subnet.to_string(),
            gateway_ip: self.gateway,
            gateway_mac: mac_string(self.gateway_mac),
            mtu: self.cfg.mtu,
            ports,
            mac_table,
            mac_table_capacity: self.mac_capacity,
            counters: counter_list(&snap),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.name().to_owned(), self.counters.drop_count(*r)))
                .collect(),
            routes: self.route_entries(),
            tunnel_tx_errors,
            flows,
            policy_denials: self.policies.names.load().denials(&*self.policies.counters),
            problems: self.problems.list(),
            routes_revision: self.reflected.routes(),
            services_revision: self.reflected.services(),
        })
    }

    /// The bridge's learned MACs, from the worker.
    fn mac_entries(&self) -> Result<Vec<MacEntry>, NodeError> {
        let macs = ask(&self.worker.lock(), WORKER_ANSWER, |done| {
            Command::MacTable { done }
        })?;
        Ok(macs
            .into_iter()
            .map(|(mac, port, age)| MacEntry {
                mac: mac_string(mac),
                port: port.0,
                age_ms: age / 1_000_000,
            })
            .collect())
    }

    /// The host port, then every pod port, with their counters.
    fn port_statuses(&self) -> Vec<PortStatus> {
        let st = self.state.lock();
        let mut ports = vec![PortStatus {
            tap: self.cfg.host_port.clone(),
            owner: self.cfg.name.clone(),
            ..port_status(HOST_PORT.0, "host", self.host_ip, &st.host_counters)
        }];
        for p in st.pods.values() {
            let a = &p.record.attachment;
            ports.push(PortStatus {
                tap: a.ifname.clone(),
                owner: format!("{}/{}", a.pod_namespace, a.pod_name),
                container_id: a.container_id.clone(),
                netns: a.netns.display().to_string(),
                ..port_status(p.record.port, "pod", p.record.ip, &p.counters)
            });
        }
        ports
    }

    /// The local subnet, then one route per peer of the published snapshot.
    fn route_entries(&self) -> Vec<RouteEntry> {
        let table = self.routes.load();
        let mut routes = vec![RouteEntry {
            subnet: self.cfg.subnet.to_string(),
            via: "local".into(),
            underlay_ip: String::new(),
            vtep_mac: String::new(),
        }];
        routes.extend(table.peers().iter().map(|p| RouteEntry {
            subnet: p.subnet.to_string(),
            via: p.name.clone(),
            underlay_ip: p.underlay_ip.to_string(),
            vtep_mac: mac_string(p.vtep_mac),
        }));
        routes
    }

    /// The load balancer's tracked flows, from the worker.
    fn flow_entries(&self) -> Result<Vec<FlowEntry>, NodeError> {
        let flows = ask(&self.worker.lock(), WORKER_ANSWER, |done| Command::Flows {
            done,
        })?;
        Ok(flows
            .into_iter()
            .map(|f| FlowEntry {
                proto: format!("{:?}", f.proto).to_lowercase(),
                client: f.client.to_string(),
                service: f.vip.to_string(),
                backend: format!("{}:{}", f.backend.ip, f.backend.port),
                state: format!("{:?}", f.state),
                age_ms: f.age / 1_000_000,
                expires_in_ms: f.expires_in / 1_000_000,
            })
            .collect())
    }

    /// Where route sync, service sync and the kubelet report what they skip.
    pub fn problems(&self) -> Arc<Problems> {
        Arc::clone(&self.problems)
    }

    /// The store revisions the route and service tables reflect.
    pub fn reflected(&self) -> Arc<Reflected> {
        Arc::clone(&self.reflected)
    }

    /// The handle service tables are published into.
    pub fn services(&self) -> Arc<ArcSwap<ServiceTable>> {
        Arc::clone(&self.services)
    }

    /// The handles policy tables and their names are published into.
    pub fn policies(&self) -> PolicyHandles {
        self.policies.clone()
    }

    /// The handle route snapshots are published into. Its snapshot carries this
    /// node's subnet ([`NodeConfig::subnet`]).
    pub fn routes(&self) -> Arc<ArcSwap<RouteSnapshot>> {
        Arc::clone(&self.routes)
    }

    /// Receives how the data-plane worker ended, once it has ([`crate::watchdog`]).
    pub fn worker_exits(&self) -> crossbeam_channel::Receiver<tapestry_io::WorkerExit> {
        self.worker.lock().exits()
    }

    /// Stops the data plane; persistent TAPs stay for the next start.
    pub fn shutdown(&self) {
        self.worker.lock().shutdown();
    }
}

/// Name of the flow file in the state directory.
pub const FLOW_FILE: &str = "conntrack.flows";

/// Opens `STATE_DIR/conntrack.flows` and restores the load balancer's flows from
/// it (docs/architecture.md, "Restarts without loss"). A file that cannot be
/// trusted is moved aside (logged, counted `flow_file_discarded`); without a
/// usable file at all the node runs on, its flows in memory only.
fn attach_flow_file(pipeline: &mut Pipeline, state_dir: &Path) {
    let path = state_dir.join(FLOW_FILE);
    let capacity = pipeline.config().conntrack_capacity;
    let (file, opened) = match tapestry_io::flowfile::open(&path, capacity) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "no flow file: flows will not survive a restart");
            return;
        }
    };
    if let Opened::Discarded { why, moved_to } = &opened {
        tracing::error!(file = %path.display(), moved_to = %moved_to.display(), error = %why, "flow file unusable: moved aside, starting with no flows");
        pipeline.flow_file_discarded();
    }
    let restored = pipeline.attach_flow_file(Box::new(file), 0);
    log_restored(&path, Some(restored), matches!(opened, Opened::Existing));
}

/// Opens the flow file for an upgrade hand-off's worker to attach (errors are
/// logged; without a file the flows live in memory only).
fn open_flow_file(path: &Path, capacity: usize) -> Option<Box<dyn FlowMemory>> {
    match tapestry_io::flowfile::open(path, capacity) {
        Ok((file, opened)) => {
            if let Opened::Discarded { why, moved_to } = &opened {
                tracing::error!(file = %path.display(), moved_to = %moved_to.display(), error = %why, "flow file unusable: moved aside, starting with no flows");
            }
            Some(Box::new(file))
        }
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "no flow file: flows will not survive a restart");
            None
        }
    }
}

/// Logs what attaching the flow file restored (when it held flows to restore).
fn log_restored(path: &Path, restored: Option<Result<Restored, FlowFileError>>, existing: bool) {
    match restored {
        Some(Ok(r)) if existing => {
            tracing::info!(
                restored = r.flows,
                rejected = r.rejected,
                "service flows restored from the flow file"
            );
        }
        Some(Ok(_)) | None => {}
        Some(Err(e)) => {
            tracing::error!(file = %path.display(), error = %e, "flow file refused: flows will not survive a restart");
        }
    }
}

/// Binds the node's tunnel socket.
fn bind_tunnel(t: &TunnelSetup) -> Result<TunnelSocket, NodeError> {
    let ip = t.config.underlay_ip;
    TunnelSocket::bind(ip, t.port).map_err(|source| NodeError::Tunnel {
        ip,
        port: t.port,
        source,
    })
}

/// What CHECK expects of a pod's interface.
struct Expected {
    ifname: String,
    mac: String,
    mtu: u32,
    addr: String,
    gateway: Ipv4Addr,
}

impl Expected {
    /// Compares with what `ip` reports, in the calling thread's namespace.
    fn check(&self) -> Result<(), Drift> {
        let ifname = || self.ifname.clone();
        let (mac, mtu, addrs, up) = netconf::inspect_interface(&self.ifname)?;
        if mac != self.mac {
            return Err(Drift::Mac {
                ifname: ifname(),
                got: mac,
                want: self.mac.clone(),
            });
        }
        if mtu != self.mtu {
            return Err(Drift::Mtu {
                ifname: ifname(),
                got: mtu,
                want: self.mtu,
            });
        }
        if !up {
            return Err(Drift::Down { ifname: ifname() });
        }
        if !addrs.contains(&self.addr) {
            return Err(Drift::Address {
                ifname: ifname(),
                want: self.addr.clone(),
                have: addrs,
            });
        }
        let routes = netconf::ip(&["route", "show", "default"])?;
        if !routes.contains(&format!("via {} dev {}", self.gateway, self.ifname)) {
            return Err(Drift::DefaultRoute {
                ifname: ifname(),
                gateway: self.gateway,
                have: routes.trim().to_owned(),
            });
        }
        Ok(())
    }
}

/// A port's status without its owner's names (the caller fills them in).
fn port_status(port: u16, kind: &str, ip: Ipv4Addr, c: &PortCounters) -> PortStatus {
    let load = |c: &AtomicU64| c.load(Relaxed);
    PortStatus {
        port,
        kind: kind.into(),
        tap: String::new(),
        owner: String::new(),
        container_id: String::new(),
        netns: String::new(),
        ip,
        mac: mac_string(mac_for(ip)),
        rx_frames: load(&c.rx_frames),
        tx_frames: load(&c.tx_frames),
        rx_bytes: load(&c.rx_bytes),
        tx_bytes: load(&c.tx_bytes),
        tx_errors: load(&c.tx_errors),
    }
}

/// The pipeline's counters by name, in the order `tapestry status` prints them.
fn counter_list(snap: &CountersSnapshot) -> Vec<(String, u64)> {
    snap.iter().map(|(name, n)| (name.to_owned(), n)).collect()
}

/// Sends the worker a request built around a reply channel and waits up to
/// `wait` for its answer.
fn ask<T>(
    worker: &WorkerHandle,
    wait: Duration,
    request: impl FnOnce(crossbeam_channel::Sender<T>) -> Command,
) -> Result<T, NodeError> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    worker.send(request(tx)).map_err(NodeError::DataPlane)?;
    rx.recv_timeout(wait)
        .map_err(|_| NodeError::DataPlaneSilent(wait))
}

fn add_port(
    worker: &WorkerHandle,
    id: PortId,
    role: PortRole,
    tap: Tap,
) -> Result<Arc<PortCounters>, NodeError> {
    ask(worker, ADD_PORT_ANSWER, |done| Command::AddPort {
        id,
        role,
        tap,
        done,
    })?
    .map_err(|source| NodeError::AddPort { port: id.0, source })
}

fn validate(a: &Attachment) -> Result<(), AttachmentError> {
    if a.container_id.is_empty() {
        return Err(AttachmentError::NoContainerId);
    }
    if a.netns.as_os_str().is_empty() {
        return Err(AttachmentError::NoNetns);
    }
    if !Path::new(&a.netns).exists() {
        return Err(AttachmentError::MissingNetns(a.netns.clone()));
    }
    if a.ifname.is_empty() || a.ifname.len() > tapestry_io::IFNAME_MAX || a.ifname.contains('/') {
        return Err(AttachmentError::BadIfname(a.ifname.clone()));
    }
    Ok(())
}
