//! The node: its data-plane worker, host port and pod attachments.
//!
//! Pod attachments are kept in `STATE_DIR/pods.json` (written atomically: temp
//! file, fsync, rename) so that an agent that restarts reattaches the pods'
//! persistent TAPs where they are and traffic resumes.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tapestry_cluster::ipam::PodIpam;
use tapestry_cluster::Ipv4Cidr;
use tapestry_dataplane::RouteSnapshot;
use tapestry_dataplane::ServiceTable;
use tapestry_dataplane::TunnelConfig;
use tapestry_dataplane::{
    Counters, DropReason, MacAddr, Pipeline, PipelineConfig, PortId, PortRole,
};
use tapestry_io::tunnel::TunnelSocket;
use tapestry_io::{Command, PortCounters, Tap, WorkerHandle};
use tapestry_proto::{
    AgentStatus, AttachResult, Attachment, FlowEntry, Interface, IpConfig, MacEntry, PortStatus,
    Route, RouteEntry,
};

use crate::netconf::{self, mac_for, mac_string};

/// The host port's bridge port number; pods take 1 and up.
pub const HOST_PORT: PortId = PortId(0);

/// How the node is set up (from the command line).
pub struct NodeConfig {
    pub name: String,
    pub subnet: Ipv4Cidr,
    pub mtu: u32,
    pub host_port: String,
    pub state_dir: PathBuf,
    /// Store-backed pod IP allocation (cluster mode); `None` allocates from the
    /// subnet locally, remembering only this agent's own attachments.
    pub ipam: Option<PodIpam>,
    /// The VXLAN tunnel to other nodes (cluster mode).
    pub tunnel: Option<TunnelSetup>,
}

/// This node's tunnel endpoint.
#[derive(Debug, Clone)]
pub struct TunnelSetup {
    pub underlay_ip: Ipv4Addr,
    pub vtep_mac: MacAddr,
    pub port: u16,
    /// Largest inner IPv4 packet: underlay MTU minus the VXLAN overhead.
    pub inner_mtu: u32,
    /// The cluster's pod network (routed via the gateway from the node itself).
    pub cluster: Ipv4Cidr,
    /// The Service network (ClusterIPs), load-balanced by the router.
    pub service_cidr: Ipv4Cidr,
}

/// One attached pod, as remembered across restarts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodRecord {
    pub attachment: Attachment,
    pub ip: Ipv4Addr,
    pub port: u16,
}

struct Attached {
    record: PodRecord,
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
    mac_capacity: usize,
    /// Control-path state; serialises attach/detach (never touched per packet).
    state: Mutex<State>,
}

fn err<E: std::fmt::Display>(ctx: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{ctx}: {e}")
}

impl Node {
    /// Builds the pipeline, starts the worker, opens the host port and reattaches
    /// the pods remembered in the state directory.
    pub fn start(cfg: NodeConfig) -> Result<Node, String> {
        let gateway = PodIpam::gateway(&cfg.subnet).ok_or("subnet has no gateway address")?;
        let host_ip =
            PodIpam::host_port_ip(&cfg.subnet).ok_or("subnet has no host port address")?;
        let gateway_mac = mac_for(gateway);
        let mut pcfg = PipelineConfig::new(
            gateway,
            gateway_mac,
            cfg.subnet.network(),
            cfg.subnet.prefix_len(),
        );
        pcfg.host_ip = Some(host_ip);
        pcfg.host_mac = Some(mac_for(host_ip));
        let mut socket = None;
        if let Some(t) = &cfg.tunnel {
            pcfg.tunnel = Some(TunnelConfig {
                underlay_ip: t.underlay_ip,
                vtep_mac: t.vtep_mac,
                vni: 1,
                inner_mtu: u16::try_from(t.inner_mtu).map_err(err("inner MTU"))?,
            });
            socket = Some(TunnelSocket::bind(t.underlay_ip, t.port).map_err(err("tunnel"))?);
            pcfg.service_cidr = Some((t.service_cidr.network(), t.service_cidr.prefix_len()));
        }
        let mac_capacity = pcfg.mac_capacity;
        let pipeline = Pipeline::new(pcfg);
        let counters = Arc::clone(pipeline.counters());
        let routes = Arc::clone(pipeline.routes());
        let services = Arc::clone(pipeline.services());
        let worker = tapestry_io::spawn(pipeline, socket)
            .map_err(err("cannot start the data-plane worker"))?;

        let host_tap = Tap::open(&cfg.host_port, true)
            .map_err(|e| format!("cannot open host port TAP {}: {e}", cfg.host_port))?;
        netconf::configure_interface(
            host_tap.name(),
            mac_for(host_ip),
            cfg.mtu,
            host_ip,
            cfg.subnet.prefix_len(),
            None,
        )?;
        let host_counters = add_port(&worker, HOST_PORT, PortRole::Host, host_tap)?;
        if let Some(t) = &cfg.tunnel {
            // The node itself reaches other nodes' pods through its gateway, as pods do.
            netconf::ip(&[
                "route",
                "replace",
                &t.cluster.to_string(),
                "via",
                &gateway.to_string(),
                "dev",
                &cfg.host_port,
            ])?;
        }
        tracing::info!(node = %cfg.name, subnet = %cfg.subnet, %gateway, host_port = %cfg.host_port, %host_ip, "node up");

        let node = Node {
            gateway,
            gateway_mac,
            host_ip,
            worker: Mutex::new(worker),
            counters,
            routes,
            services,
            mac_capacity,
            state: Mutex::new(State {
                pods: BTreeMap::new(),
                host_counters,
            }),
            cfg,
        };
        node.reattach();
        Ok(node)
    }

    fn state_file(&self) -> PathBuf {
        self.cfg.state_dir.join("pods.json")
    }

    /// Reattaches every pod in the state file whose namespace still exists.
    fn reattach(&self) {
        let records: Vec<PodRecord> = match fs::read(self.state_file()) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(file = %self.state_file().display(), error = %e, "state file unreadable; starting with no pods");
                    Vec::new()
                }
            },
            Err(_) => Vec::new(),
        };
        let mut st = self.state.lock();
        for rec in records {
            let a = &rec.attachment;
            let tap = match Tap::open_in(&a.netns, &a.ifname, true) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(container = %a.container_id, netns = %a.netns.display(), error = %e, "pod gone; forgetting it");
                    if let Some(ipam) = &self.cfg.ipam {
                        let _ = ipam.release(&a.container_id);
                    }
                    continue;
                }
            };
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
    }

    fn save(&self, st: &State) -> Result<(), String> {
        let records: Vec<&PodRecord> = st.pods.values().map(|a| &a.record).collect();
        let bytes = serde_json::to_vec_pretty(&records).map_err(err("encode state"))?;
        let path = self.state_file();
        let tmp = path.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp).map_err(err("write state"))?;
        f.write_all(&bytes).map_err(err("write state"))?;
        f.sync_all().map_err(err("sync state"))?;
        fs::rename(&tmp, &path).map_err(err("replace state"))
    }

    fn result_for(&self, rec: &PodRecord) -> AttachResult {
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
    pub fn add(&self, a: &Attachment) -> Result<AttachResult, String> {
        validate(a)?;
        let mut st = self.state.lock();
        if let Some(existing) = st.pods.get(&a.container_id) {
            if existing.record.attachment.netns != a.netns
                || existing.record.attachment.ifname != a.ifname
            {
                return Err(format!(
                    "container {} is already attached to {} as {}",
                    a.container_id,
                    existing.record.attachment.netns.display(),
                    existing.record.attachment.ifname
                ));
            }
            return Ok(self.result_for(&existing.record));
        }
        if let Some(other) = st.pods.values().find(|p| {
            p.record.attachment.netns == a.netns && p.record.attachment.ifname == a.ifname
        }) {
            return Err(format!(
                "{} in {} already belongs to container {}",
                a.ifname,
                a.netns.display(),
                other.record.attachment.container_id
            ));
        }
        let ip = match &self.cfg.ipam {
            Some(ipam) => ipam
                .allocate(&a.container_id)
                .map_err(|e| format!("pod IP: {e}"))?,
            None => self.free_ip(&st)?,
        };
        let port = (1..=u16::MAX)
            .find(|p| !st.pods.values().any(|x| x.record.port == *p))
            .ok_or("no free bridge port")?;
        let mac = mac_for(ip);
        let (mtu, prefix, gw, ifname) = (
            self.cfg.mtu,
            self.cfg.subnet.prefix_len(),
            self.gateway,
            a.ifname.clone(),
        );
        let tap = tapestry_io::in_netns(&a.netns, move || {
            let tap = Tap::open(&ifname, true)?;
            let setup = netconf::ip(&["link", "set", "dev", "lo", "up"]).and_then(|_| {
                netconf::configure_interface(&ifname, mac, mtu, ip, prefix, Some(gw))
            });
            if let Err(e) = setup {
                let _ = tap.unpersist();
                return Err(std::io::Error::other(e));
            }
            Ok(tap)
        })
        .map_err(|e| format!("cannot set up {} in {}: {e}", a.ifname, a.netns.display()))?;
        let counters = match add_port(
            &self.worker.lock(),
            PortId(port),
            PortRole::Pod { mac, ip },
            tap,
        ) {
            Ok(c) => c,
            Err(e) => {
                if let Some(ipam) = &self.cfg.ipam {
                    let _ = ipam.release(&a.container_id);
                }
                return Err(e);
            }
        };
        let record = PodRecord {
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

    /// CNI DEL: removes the TAP and releases the address. Nothing to do is success.
    pub fn del(&self, a: &Attachment) -> Result<(), String> {
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
            .map_err(err("data plane"))?;
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
    pub fn check(&self, a: &Attachment) -> Result<(), String> {
        let st = self.state.lock();
        let pod = st
            .pods
            .get(&a.container_id)
            .ok_or_else(|| format!("container {} is not attached", a.container_id))?;
        let rec = pod.record.clone();
        drop(st);
        if rec.attachment.netns != a.netns {
            return Err(format!(
                "container {} is attached to {}, not {}",
                a.container_id,
                rec.attachment.netns.display(),
                a.netns.display()
            ));
        }
        let want_mac = mac_string(mac_for(rec.ip));
        let want_addr = format!("{}/{}", rec.ip, self.cfg.subnet.prefix_len());
        let (mtu, ifname, gw) = (self.cfg.mtu, rec.attachment.ifname.clone(), self.gateway);
        tapestry_io::in_netns(&rec.attachment.netns, move || {
            let check = || -> Result<(), String> {
                let (mac, got_mtu, addrs, up) = netconf::inspect_interface(&ifname)?;
                if mac != want_mac {
                    return Err(format!("{ifname} has MAC {mac}, want {want_mac}"));
                }
                if got_mtu != mtu {
                    return Err(format!("{ifname} has MTU {got_mtu}, want {mtu}"));
                }
                if !up {
                    return Err(format!("{ifname} is down"));
                }
                if !addrs.contains(&want_addr) {
                    return Err(format!(
                        "{ifname} lacks address {want_addr} (has {addrs:?})"
                    ));
                }
                let routes = netconf::ip(&["route", "show", "default"])?;
                if !routes.contains(&format!("via {gw} dev {ifname}")) {
                    return Err(format!(
                        "no default route via {gw} dev {ifname} (have {:?})",
                        routes.trim()
                    ));
                }
                Ok(())
            };
            check().map_err(std::io::Error::other)
        })
        .map_err(|e| e.to_string())
    }

    fn free_ip(&self, st: &State) -> Result<Ipv4Addr, String> {
        let used: Vec<Ipv4Addr> = st.pods.values().map(|p| p.record.ip).collect();
        let hosts = self.cfg.subnet.size().saturating_sub(1);
        (2..hosts)
            .filter_map(|n| self.cfg.subnet.nth(n))
            .find(|ip| *ip != self.host_ip && *ip != self.gateway && !used.contains(ip))
            .ok_or_else(|| {
                format!(
                    "subnet {} is exhausted: every pod address is in use",
                    self.cfg.subnet
                )
            })
    }

    /// Everything `tapestry status` shows.
    pub fn status(&self) -> Result<AgentStatus, String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.worker
            .lock()
            .send(Command::MacTable { done: tx })
            .map_err(err("data plane"))?;
        let macs = rx
            .recv_timeout(std::time::Duration::from_secs(2))
            .map_err(err("data plane did not answer"))?;
        let st = self.state.lock();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let port_status = |port: u16,
                           kind: &str,
                           tap: String,
                           owner: String,
                           cid: String,
                           netns: String,
                           ip: Ipv4Addr,
                           c: &PortCounters| PortStatus {
            port,
            kind: kind.into(),
            tap,
            owner,
            container_id: cid,
            netns,
            ip,
            mac: mac_string(mac_for(ip)),
            rx_frames: load(&c.rx_frames),
            tx_frames: load(&c.tx_frames),
            rx_bytes: load(&c.rx_bytes),
            tx_bytes: load(&c.tx_bytes),
            tx_errors: load(&c.tx_errors),
        };
        let mut ports = vec![port_status(
            HOST_PORT.0,
            "host",
            self.cfg.host_port.clone(),
            self.cfg.name.clone(),
            String::new(),
            String::new(),
            self.host_ip,
            &st.host_counters,
        )];
        for p in st.pods.values() {
            let a = &p.record.attachment;
            ports.push(port_status(
                p.record.port,
                "pod",
                a.ifname.clone(),
                format!("{}/{}", a.pod_namespace, a.pod_name),
                a.container_id.clone(),
                a.netns.display().to_string(),
                p.record.ip,
                &p.counters,
            ));
        }
        let snap = self.counters.snapshot();
        let table = self.routes.load();
        let mut routes = vec![RouteEntry {
            subnet: self.cfg.subnet.to_string(),
            via: "local".into(),
            underlay_ip: String::new(),
            vtep_mac: String::new(),
        }];
        routes.extend(table.peers().iter().map(|p| RouteEntry {
            subnet: format!("{}/{}", p.subnet, p.prefix_len),
            via: p.name.clone(),
            underlay_ip: p.underlay_ip.to_string(),
            vtep_mac: mac_string(p.vtep_mac),
        }));
        let tunnel_tx_errors = self.worker.lock().tunnel_tx_errors();
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.worker
            .lock()
            .send(Command::Flows { done: tx })
            .map_err(err("data plane"))?;
        let flows = rx
            .recv_timeout(std::time::Duration::from_secs(2))
            .map_err(err("data plane did not answer"))?
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
            .collect();
        Ok(AgentStatus {
            node: self.cfg.name.clone(),
            subnet: self.cfg.subnet.to_string(),
            gateway_ip: self.gateway,
            gateway_mac: mac_string(self.gateway_mac),
            mtu: self.cfg.mtu,
            ports,
            mac_table: macs
                .into_iter()
                .map(|(mac, port, age)| MacEntry {
                    mac: mac_string(mac),
                    port: port.0,
                    age_ms: age / 1_000_000,
                })
                .collect(),
            mac_table_capacity: self.mac_capacity,
            counters: snap.iter().map(|(name, n)| (name.to_owned(), n)).collect(),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.name().to_owned(), self.counters.drop_count(*r)))
                .collect(),
            routes,
            tunnel_tx_errors,
            flows,
        })
    }

    /// The handle service tables are published into.
    pub fn services(&self) -> Arc<ArcSwap<ServiceTable>> {
        Arc::clone(&self.services)
    }

    /// The handle route snapshots are published into.
    pub fn routes(&self) -> Arc<ArcSwap<RouteSnapshot>> {
        Arc::clone(&self.routes)
    }

    /// Stops the data plane; persistent TAPs stay for the next start.
    pub fn shutdown(&self) {
        self.worker.lock().shutdown();
    }
}

fn add_port(
    worker: &WorkerHandle,
    id: PortId,
    role: PortRole,
    tap: Tap,
) -> Result<Arc<PortCounters>, String> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    worker
        .send(Command::AddPort {
            id,
            role,
            tap,
            done: tx,
        })
        .map_err(err("data plane"))?;
    rx.recv_timeout(std::time::Duration::from_secs(5))
        .map_err(err("data plane did not answer"))?
        .map_err(err("cannot add port"))
}

fn validate(a: &Attachment) -> Result<(), String> {
    if a.container_id.is_empty() {
        return Err("container_id is empty".into());
    }
    if a.netns.as_os_str().is_empty() {
        return Err("netns is empty: give the path of the pod's network namespace".into());
    }
    if !Path::new(&a.netns).exists() {
        return Err(format!(
            "network namespace {} does not exist",
            a.netns.display()
        ));
    }
    if a.ifname.is_empty() || a.ifname.len() > tapestry_io::IFNAME_MAX || a.ifname.contains('/') {
        return Err(format!(
            "ifname {:?} is not a valid interface name",
            a.ifname
        ));
    }
    Ok(())
}
