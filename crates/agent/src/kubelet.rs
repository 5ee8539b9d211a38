//! The agent's kubelet: it runs the pods the cluster store assigns to this node.
//!
//! It follows the Pods of the agent's `ClusterCache` (one list-and-watch of the
//! store, shared with route and service sync). For each Pod whose
//! `spec.nodeName` is this node it creates the pod's network namespace
//! (`PREFIX-NAMESPACE-NAME`, IPv6 disabled until Tapestry carries it), starts the pause process that holds it, attaches
//! the pod (the same code path as CNI ADD on the control socket), publishes its
//! address (`podstatus/NAMESPACE/NAME`: IP, node, `Pending`, not ready), waits
//! (bounded) until the data plane's policy table reflects the pod
//! ([`crate::policy_gate`]), starts each container as a process inside the
//! namespace, and publishes the pod `Running` and ready once it answers ping
//! and accepts connections on its declared TCP ports. A Pod deleted from the
//! store is stopped and detached within a watch event's delay. Every few
//! seconds it reconciles everything, so a missed event is repaired.
//!
//! A container that exits is started again (`restartPolicy: Always`), as soon
//! as its reaper sees it go and its backoff allows: 100 ms, doubling at each
//! quick exit up to 5 s, back to 100 ms after a run of 10 s (systemd's
//! `Restart=always` with `RestartSec` steps; Kubernetes' CrashLoopBackOff
//! has the same shape on a scale of minutes). A container that died while
//! the agent was down is found by the next reconcile.
//!
//! Processes are named by PID and start time ([`crate::procid`]) and signalled
//! through a pidfd, so an agent restarted after the PIDs were reused never
//! signals an unrelated process. Each container's stdout and stderr go through
//! its own `tapestry-logcap` (a process of its own, so it outlives an agent
//! restart, as CRI-O's conmon does), which caps the log at [`LOG_MAX_BYTES`]
//! plus one rotated file: the logs sit on the tmpfs that holds the store.
//!
//! A Pod whose stored object stops decoding (a bad write, a damaged file) is
//! not stopped: it keeps running on the last spec the kubelet decoded for
//! it, or, if the agent restarted since and never saw one, is left running
//! as it is; either is logged and listed under PROBLEMS in `tapestry
//! status` until the object decodes again or is deleted.
//!
//! Files per pod under `STATE_DIR/pods/NAMESPACE_NAME/`: `pause.pid`,
//! `CONTAINER.pid`, `CONTAINER.log` (and `.log.1`), `CONTAINER.logcap.pid`,
//! `CONTAINER.restarts`, `netns`; each pid file holds `PID STARTTIME`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use tapestry_cluster::status::{status_key, PodRunStatus};
use tapestry_cluster::store::Store;
use tapestry_cluster::{ClusterCache, ClusterState};
use tapestry_cluster::{Container, Pod, Protocol};

use crate::node::{Node, NodeError};
use crate::policy_gate::Gate;
use crate::problems::{Problems, Source};
use crate::procid::{self, ProcId};
use tapestry_proto::Attachment;

/// How often everything is reconciled even without events.
const RESYNC: Duration = Duration::from_secs(3);
/// How long a new pod may take to answer before it is reported not ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new pod's containers wait for the policy table to reflect the
/// pod. The path is one status write, the store's watch (inotify) and one
/// compile: milliseconds, and under the one second within which a policy
/// change must reach every node. Five times that budget leaves room for a
/// loaded two-core machine, while a store or compiler failure holds a pod
/// back no longer than this (well inside [`READY_TIMEOUT`]).
const POLICY_WAIT: Duration = Duration::from_secs(5);
/// The first delay before a container that exited is started again.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest delay (the backoff doubles at each quick exit up to this).
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A run at least this long resets the backoff.
const STABLE_RUN: Duration = Duration::from_secs(10);
/// The largest a container's log grows before it is rotated (one rotated file
/// is kept): 4 MiB, so a pod's log never takes more than 8 MiB of the tmpfs.
pub const LOG_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// How long a stopped process has after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Why a pod could not be started (published as the pod's `Failed` message).
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("cannot {op} {}: {source}", path.display())]
    File {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {cmd}: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("cannot start {what} in {netns}: {source}")]
    Start {
        what: String,
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Attach(#[from] NodeError),
    #[error("attach returned no address")]
    NoAddress,
    #[error("container {container} has no command (the lab runs commands, not images)")]
    NoCommand { container: String },
}

/// The pods the kubelet of `node_name` runs from `state`, given the pods
/// `running` here: remembers the spec of each of this node's pods in
/// `last_good`, and stands it in for an object that no
/// longer decodes.
fn pods_to_run(
    node_name: &str,
    running: &[(String, String)],
    state: &ClusterState,
    last_good: &mut BTreeMap<String, Pod>,
) -> ToRun {
    let mine = |p: &Pod| p.spec.node_name.as_deref() == Some(node_name);
    let undecodable = |name: &str| state.decode_errors.get(&format!("pods/{name}"));
    last_good.retain(|name, _| state.pods.contains_key(name) || undecodable(name).is_some());
    for (name, p) in state.pods.iter().filter(|(_, p)| mine(p)) {
        last_good.insert(name.clone(), p.clone());
    }
    let mut run = ToRun {
        pods: state.pods.clone(),
        keep: BTreeSet::new(),
        problems: Vec::new(),
    };
    for (key, err) in &state.decode_errors {
        let Some(name) = key.strip_prefix("pods/") else {
            continue;
        };
        if let Some(good) = last_good.get(name) {
            run.pods.insert(name.to_owned(), good.clone());
            run.problems.push((
                key.clone(),
                format!("does not decode ({err}); running on its last good spec"),
            ));
        } else if let Some((ns, pod)) = name.split_once('/') {
            let id = (ns.to_owned(), pod.to_owned());
            if running.contains(&id) {
                run.keep.insert(id);
                run.problems.push((
                        key.clone(),
                        format!("does not decode ({err}); left running as it is (no good spec seen since the agent started)"),
                    ));
            }
        }
    }
    run
}

/// The error maker for a file operation on `path`.
fn file_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KubeletError {
    let path = path.to_owned();
    move |source| KubeletError::File { op, path, source }
}

/// The kubelet of one node.
pub struct Kubelet {
    pub node: Arc<Node>,
    pub store: Arc<dyn Store>,
    pub node_name: String,
    pub netns_prefix: String,
    pub run_dir: PathBuf,
    pub bin_dir: PathBuf,
    /// The store as `--store` named it (a directory or `etcd://…`), given to
    /// containers unchanged as `TAPESTRY_STORE` (cluster components such as
    /// tapestry-dns read the cluster state from it).
    pub store_spec: String,
    /// Cluster DNS written into each pod's resolv.conf, as kubelet's
    /// `--cluster-dns` / `--cluster-domain` do.
    pub dns: Option<ClusterDns>,
    /// Where pods kept on their last good spec are reported.
    pub problems: Arc<Problems>,
    /// Containers' exits and restart backoff (shared with the reaper threads).
    pub restarts: Arc<Restarts>,
}

/// The pods to run, given the last good specs: [`Kubelet::pods_to_run`].
struct ToRun {
    /// Decoded pods, plus the last good spec of any of this node's pods
    /// whose object no longer decodes.
    pods: BTreeMap<String, Pod>,
    /// Pods running here whose object does not decode and whose spec was
    /// never seen: not stopped.
    keep: BTreeSet<(String, String)>,
    /// `(store key, what is done about it)` for each undecodable pod of ours.
    problems: Vec<(String, String)>,
}

/// The restart backoff of one container.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    /// How many times it was started again.
    restarts: u32,
    /// The delay after its next quick exit.
    delay: Duration,
    started: Instant,
    /// Not to be started again before this (set when it exits).
    not_before: Option<Instant>,
}

/// Which containers exited and when each may start again. Keyed by the
/// container's pid file, which names it uniquely on this node.
pub struct Restarts {
    state: Mutex<HashMap<PathBuf, Backoff>>,
    exited_tx: Sender<()>,
    exited_rx: Receiver<()>,
}

impl Default for Restarts {
    fn default() -> Self {
        let (exited_tx, exited_rx) = crossbeam_channel::unbounded();
        Restarts {
            state: Mutex::new(HashMap::new()),
            exited_tx,
            exited_rx,
        }
    }
}

impl Restarts {
    /// The container of `pidfile` was started at `now`; returns how many
    /// times this agent has started it again.
    fn started(&self, pidfile: &Path, now: Instant) -> u32 {
        let mut state = self.state.lock();
        let b = state.entry(pidfile.to_owned()).or_insert(Backoff {
            restarts: 0,
            delay: BACKOFF_MIN,
            started: now,
            not_before: None,
        });
        if b.not_before.take().is_some() {
            b.restarts += 1;
        }
        b.started = now;
        b.restarts
    }

    /// The process of `pidfile` exited at `now` (its reaper says so): it may
    /// start again after the backoff.
    fn exited(&self, pidfile: &Path, now: Instant) {
        if let Some(b) = self.state.lock().get_mut(pidfile) {
            if now.saturating_duration_since(b.started) >= STABLE_RUN {
                b.delay = BACKOFF_MIN;
            }
            b.not_before = Some(now + b.delay);
            b.delay = (b.delay * 2).min(BACKOFF_MAX);
        }
        let _ = self.exited_tx.send(());
    }

    /// Whether the container of `pidfile`, found not running, may start now.
    fn may_start(&self, pidfile: &Path, now: Instant) -> bool {
        self.state
            .lock()
            .get(pidfile)
            .and_then(|b| b.not_before)
            .is_none_or(|t| t <= now)
    }

    /// The earliest time after `now` at which a container may start again.
    fn next_due(&self, now: Instant) -> Option<Instant> {
        self.state
            .lock()
            .values()
            .filter_map(|b| b.not_before)
            .filter(|t| *t > now)
            .min()
    }

    /// Forgets the containers of a stopped pod.
    fn forget(&self, pod_dir: &Path) {
        self.state.lock().retain(|k, _| !k.starts_with(pod_dir));
    }
}

/// The cluster DNS server and domain pods are told about.
#[derive(Debug, Clone)]
pub struct ClusterDns {
    pub server: Ipv4Addr,
    pub domain: String,
}

impl ClusterDns {
    /// The resolv.conf kubelet gives a pod in `namespace` (dnsPolicy ClusterFirst).
    pub fn resolv_conf(&self, namespace: &str) -> String {
        let d = &self.domain;
        format!(
            "nameserver {}\nsearch {namespace}.svc.{d} svc.{d} {d}\noptions ndots:5\n",
            self.server
        )
    }
}

impl Kubelet {
    fn pod_dir(&self, ns: &str, name: &str) -> PathBuf {
        self.run_dir.join(format!("{ns}_{name}"))
    }

    fn netns_name(&self, ns: &str, name: &str) -> String {
        format!("{}-{ns}-{name}", self.netns_prefix)
    }

    fn attachment(&self, ns: &str, name: &str) -> Attachment {
        let netns = self.netns_name(ns, name);
        Attachment {
            container_id: netns.clone(),
            netns: PathBuf::from("/run/netns").join(netns),
            ifname: "eth0".into(),
            pod_namespace: ns.to_owned(),
            pod_name: name.to_owned(),
        }
    }

    /// Runs forever: reconciles on every change of the cluster (through the
    /// agent's one [`ClusterCache`]), when a process it started exits, when a
    /// container's restart backoff ends, and at least every [`RESYNC`].
    pub fn run(self: Arc<Self>, cache: Arc<ClusterCache>) {
        let changes = cache.subscribe();
        let mut last_good = BTreeMap::new();
        let mut reported = Vec::new();
        loop {
            let run = pods_to_run(
                &self.node_name,
                &self.running(),
                &cache.snapshot(),
                &mut last_good,
            );
            if run.problems != reported {
                for (object, reason) in run.problems.iter().filter(|p| !reported.contains(p)) {
                    tracing::error!(%object, %reason, "pod object undecodable; pod not stopped");
                }
                self.problems.set(Source::Kubelet, run.problems.clone());
                reported = run.problems;
            }
            self.reconcile(&run.pods, &run.keep);
            let now = Instant::now();
            let timeout = self
                .restarts
                .next_due(now)
                .map_or(RESYNC, |t| t.saturating_duration_since(now).min(RESYNC));
            crossbeam_channel::select! {
                recv(changes) -> r => if r.is_err() { return },
                recv(self.restarts.exited_rx) -> _ => {
                    // One reconcile for every exit seen so far.
                    while self.restarts.exited_rx.try_recv().is_ok() {}
                }
                default(timeout) => {}
            }
        }
    }

    /// Makes the pods running here match the pods assigned here; pods in
    /// `keep` are left alone.
    fn reconcile(
        self: &Arc<Self>,
        pods: &BTreeMap<String, Pod>,
        keep: &BTreeSet<(String, String)>,
    ) {
        let mine: Vec<&Pod> = pods
            .values()
            .filter(|p| p.spec.node_name.as_deref() == Some(self.node_name.as_str()))
            .collect();
        let wanted: BTreeSet<(String, String)> = mine
            .iter()
            .map(|p| (p.metadata.namespace.clone(), p.metadata.name.clone()))
            .collect();
        for (ns, name) in self.running() {
            let id = (ns.clone(), name.clone());
            if !wanted.contains(&id) && !keep.contains(&id) {
                self.stop(&ns, &name);
            }
        }
        for pod in mine {
            if let Err(e) = self.ensure(pod) {
                tracing::warn!(pod = %format!("{}/{}", pod.metadata.namespace, pod.metadata.name), error = %e, "cannot start pod");
                self.publish(
                    &pod.metadata.namespace,
                    &pod.metadata.name,
                    None,
                    "Failed",
                    false,
                    &e.to_string(),
                );
            }
        }
    }

    /// Pods with a run directory here.
    fn running(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = fs::read_dir(&self.run_dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|s| s.split_once('_'))
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
            })
            .collect();
        out.sort();
        out
    }

    fn publish(
        &self,
        ns: &str,
        name: &str,
        ip: Option<Ipv4Addr>,
        phase: &str,
        ready: bool,
        message: &str,
    ) {
        let status = PodRunStatus {
            node: self.node_name.clone(),
            pod_ip: ip,
            phase: phase.into(),
            ready,
            message: message.into(),
        };
        let key = status_key(ns, name);
        let Ok(bytes) = serde_json::to_vec(&status) else {
            return;
        };
        if let Ok(Some(cur)) = self.store.get(&key) {
            if cur.value == bytes {
                return;
            }
        }
        if let Err(e) = self.store.put(&key, &bytes) {
            tracing::warn!(key, error = %e, "cannot publish pod status");
        }
    }

    /// Creates whatever of the pod is missing (idempotent).
    fn ensure(self: &Arc<Self>, pod: &Pod) -> Result<(), KubeletError> {
        let (ns, name) = (pod.metadata.namespace.as_str(), pod.metadata.name.as_str());
        let dir = self.pod_dir(ns, name);
        let netns = self.netns_name(ns, name);
        let fresh = !dir.exists();
        fs::create_dir_all(&dir).map_err(file_err("create", &dir))?;
        let netns_file = dir.join("netns");
        if !netns_file.exists() {
            fs::write(&netns_file, &netns).map_err(file_err("write", &netns_file))?;
        }
        if !Path::new("/run/netns").join(&netns).exists() {
            run("ip", &["netns", "add", &netns])?;
            run("ip", &["-n", &netns, "link", "set", "lo", "up"])?;
            if let Err(e) = disable_ipv6(&netns) {
                // Made again, IPv6 off, on the next try: never left half set up.
                let _ = run("ip", &["netns", "del", &netns]);
                return Err(e);
            }
        }
        if let Some(dns) = &self.dns {
            // `ip netns exec` bind-mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf.
            let etc = Path::new("/etc/netns").join(&netns);
            fs::create_dir_all(&etc).map_err(file_err("create", &etc))?;
            let conf = dns.resolv_conf(ns);
            let file = etc.join("resolv.conf");
            if fs::read_to_string(&file).ok().as_deref() != Some(conf.as_str()) {
                fs::write(&file, conf).map_err(file_err("write", &file))?;
            }
        }
        if alive(&dir.join("pause.pid")).is_none() {
            self.spawn(&netns, &dir, "pause", &["tapestry-pause".to_owned()], &[])?;
        }
        let result = self.node.add(&self.attachment(ns, name))?;
        let ip: Ipv4Addr = result
            .ips
            .first()
            .and_then(|c| c.address.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or(KubeletError::NoAddress)?;
        // The containers to start (not running, and past their restart
        // backoff), each with its command line (refused before anything is
        // published if one has none).
        let now = Instant::now();
        let containers = pod
            .spec
            .containers
            .iter()
            .filter(|c| {
                let pidfile = dir.join(format!("{}.pid", c.name));
                alive(&pidfile).is_none() && self.restarts.may_start(&pidfile, now)
            })
            .map(|c| {
                let argv: Vec<String> = c.command.iter().chain(&c.args).cloned().collect();
                if argv.is_empty() {
                    return Err(KubeletError::NoCommand {
                        container: c.name.clone(),
                    });
                }
                Ok((c, argv))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !fresh && containers.is_empty() {
            return Ok(());
        }
        // The address first (Pending, not ready: no Service endpoint yet), so
        // that the policy compiler compiles the pod; its containers only once
        // the data plane's policy table reflects it.
        self.publish(ns, name, Some(ip), "Pending", false, "");
        let waited = self.await_policy(ns, name, ip);
        self.start_containers(pod, &netns, &dir, ip, &containers)?;
        let policy_wait_us = waited.as_micros();
        tracing::info!(pod = %format!("{ns}/{name}"), %ip, policy_wait_us, "pod started");
        self.watch_readiness(pod, ip);
        Ok(())
    }

    /// Blocks until the policy table in the pipeline reflects the pod `ns/name`
    /// at `ip` (the policies selecting it, or that none does), at most
    /// [`POLICY_WAIT`]; past that it says so, and the pod starts anyway.
    /// Returns how long it waited.
    fn await_policy(&self, ns: &str, name: &str, ip: Ipv4Addr) -> Duration {
        let key = format!("{ns}/{name}");
        match self.node.policies().coverage.wait(&key, ip, POLICY_WAIT) {
            Gate::Covered { waited } => waited,
            Gate::TimedOut { waited, total } => {
                tracing::warn!(
                    pod = %key,
                    %ip,
                    waited_ms = waited.as_millis(),
                    timeouts = total,
                    "policy table does not reflect the pod within {}s; starting its containers unprotected by its policies until it does",
                    POLICY_WAIT.as_secs()
                );
                waited
            }
        }
    }

    /// Starts `containers` of `pod` (each with its command line) in its
    /// namespace `netns`.
    fn start_containers(
        &self,
        pod: &Pod,
        netns: &str,
        dir: &Path,
        ip: Ipv4Addr,
        containers: &[(&Container, Vec<String>)],
    ) -> Result<(), KubeletError> {
        let (ns, name) = (pod.metadata.namespace.as_str(), pod.metadata.name.as_str());
        let env = [
            ("POD_NAME", name.to_owned()),
            ("POD_NAMESPACE", ns.to_owned()),
            ("POD_IP", ip.to_string()),
            ("NODE_NAME", self.node_name.clone()),
            ("TAPESTRY_STORE", self.store_spec.clone()),
        ];
        for (c, argv) in containers {
            let mut env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect();
            env.extend(c.env.iter().map(|e| (e.name.clone(), e.value.clone())));
            self.spawn(netns, dir, &c.name, argv, &env)?;
        }
        Ok(())
    }

    /// Publishes the pod `Running` once it answers ping and accepts
    /// connections on its declared TCP ports (ready), or after
    /// [`READY_TIMEOUT`] (not ready), from a thread of its own.
    fn watch_readiness(self: &Arc<Self>, pod: &Pod, ip: Ipv4Addr) {
        let ports: Vec<u16> = pod
            .spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter())
            .filter(|p| p.protocol == Protocol::Tcp)
            .map(|p| p.container_port)
            .collect();
        let me = Arc::clone(self);
        let (ns, name) = (pod.metadata.namespace.clone(), pod.metadata.name.clone());
        let _ = std::thread::Builder::new()
            .name("readiness".into())
            .spawn(move || {
                let ready = wait_ready(ip, &ports, READY_TIMEOUT);
                // Publish only if the pod is still ours (it may have been deleted meanwhile).
                if me.pod_dir(&ns, &name).exists() {
                    let msg = if ready {
                        String::new()
                    } else {
                        format!("no answer within {}s", READY_TIMEOUT.as_secs())
                    };
                    me.publish(&ns, &name, Some(ip), "Running", ready, &msg);
                }
            });
    }

    /// Starts the `tapestry-logcap` that writes `dir/WHAT.log` (in a process
    /// group of its own, recorded in `WHAT.logcap.pid`); returns the write end
    /// of its input, for the process whose log it is.
    fn log_writer(&self, dir: &Path, what: &str) -> Result<OwnedFd, KubeletError> {
        let log_path = dir.join(format!("{what}.log"));
        let logcap = self.bin_dir.join("tapestry-logcap");
        let start_err = |source| KubeletError::Spawn {
            cmd: format!("{} (the log writer of {what})", logcap.display()),
            source,
        };
        let mut child = Command::new(&logcap)
            .arg("--max-bytes")
            .arg(LOG_MAX_BYTES.to_string())
            .arg(&log_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(start_err)?;
        let input = child
            .stdin
            .take()
            .map(OwnedFd::from)
            .ok_or_else(|| start_err(std::io::Error::other("no pipe to tapestry-logcap")))?;
        let pid_path = dir.join(format!("{what}.logcap.pid"));
        self.record(&child, &pid_path)?;
        self.reap(child, pid_path);
        Ok(input)
    }

    /// Records `child` in `pid_path` (PID and start time).
    fn record(&self, child: &std::process::Child, pid_path: &Path) -> Result<(), KubeletError> {
        let id = ProcId::of(child.id()).ok_or_else(|| KubeletError::File {
            op: "read the start time for",
            path: pid_path.to_owned(),
            source: std::io::Error::other("no /proc entry for a child just started"),
        })?;
        id.write(pid_path).map_err(file_err("write", pid_path))
    }

    /// Waits for `child` from a thread of its own, so that a dead process is
    /// seen as dead (not a zombie), and tells the kubelet it exited.
    fn reap(&self, child: std::process::Child, pid_path: PathBuf) {
        let restarts = Arc::clone(&self.restarts);
        let _ = std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                let mut child = child;
                let _ = child.wait();
                restarts.exited(&pid_path, Instant::now());
            });
    }

    fn spawn(
        &self,
        netns: &str,
        dir: &Path,
        what: &str,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<(), KubeletError> {
        let log = self.log_writer(dir, what)?;
        let log2 = log
            .try_clone()
            .map_err(file_err("duplicate the log pipe of", &dir.join(what)))?;
        let path = format!(
            "{}:{}",
            self.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(argv)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|source| KubeletError::Start {
                what: what.to_owned(),
                netns: netns.to_owned(),
                source,
            })?;
        let pid_path = dir.join(format!("{what}.pid"));
        // A pid file left behind: this is a restart (counted in the pod's
        // directory, so the count outlives an agent restart).
        let again = pid_path.exists();
        self.record(&child, &pid_path)?;
        self.restarts.started(&pid_path, Instant::now());
        if again {
            let count = dir.join(format!("{what}.restarts"));
            let restarts = fs::read_to_string(&count)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0)
                + 1;
            tracing::info!(netns, container = what, restarts, "container started again");
            fs::write(&count, format!("{restarts}\n")).map_err(file_err("write", &count))?;
        }
        self.reap(child, pid_path);
        Ok(())
    }

    /// Stops a pod's containers and pause process, detaches it and deletes its
    /// namespace and status. Missing pieces are skipped.
    pub fn stop(&self, ns: &str, name: &str) {
        let dir = self.pod_dir(ns, name);
        self.restarts.forget(&dir);
        let pidfiles: Vec<PathBuf> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "pid"))
            .collect();
        // The containers, then their log writers (which end by themselves
        // once their container has: what it said last is kept); the pause
        // process last, after the detach.
        let is_logcap = |p: &PathBuf| p.to_string_lossy().ends_with(".logcap.pid");
        let is_pause = |p: &PathBuf| p.file_stem().is_some_and(|s| s == "pause");
        for p in pidfiles.iter().filter(|p| !is_logcap(p) && !is_pause(p)) {
            stop(p);
        }
        for p in pidfiles.iter().filter(|p| is_logcap(p)) {
            stop(p);
        }
        if let Err(e) = self.node.del(&self.attachment(ns, name)) {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "detach failed");
        }
        stop(&dir.join("pause.pid"));
        let netns = self.netns_name(ns, name);
        if Path::new("/run/netns").join(&netns).exists() {
            if let Err(e) = run("ip", &["netns", "del", &netns]) {
                // The pod's directory (its `netns` file) stays: it is the
                // record of a namespace this kubelet made, so the next
                // reconcile tries again and `lab.sh down` finds it.
                tracing::warn!(error = %e, "cannot delete the pod namespace; trying again later");
                return;
            }
        }
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(Path::new("/etc/netns").join(&netns));
        let _ = self.store.delete(&status_key(ns, name));
        tracing::info!(pod = %format!("{ns}/{name}"), "pod stopped");
    }
}

/// Polls (bounded) until `ip` answers ping and accepts TCP on every port.
fn wait_ready(ip: Ipv4Addr, ports: &[u16], timeout: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        let pinged = Command::new("ping")
            .args(["-c", "1", "-W", "1", "-q", &ip.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if pinged
            && ports.iter().all(|p| {
                TcpStream::connect_timeout(&SocketAddr::from((ip, *p)), Duration::from_millis(500))
                    .is_ok()
            })
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The pid in `pidfile` if that very process (PID and start time) is still
/// running (a zombie is not).
pub fn alive(pidfile: &Path) -> Option<u32> {
    ProcId::read(pidfile)
        .filter(ProcId::is_running)
        .map(|p| p.pid)
}

/// SIGTERM to the process `pidfile` names (only if it is still that process,
/// through a pidfd), SIGKILL if it is still there after [`STOP_GRACE`].
pub fn stop(pidfile: &Path) {
    procid::stop(pidfile, STOP_GRACE);
}

/// Turns IPv6 off in the pod namespace `netns` (all interfaces, and those made
/// later): Tapestry carries only IPv4, and a pod port drops every other EtherType,
/// so a pod must not believe it has IPv6 (link-local addresses, router
/// solicitations, DAD). Nothing to do on a kernel without IPv6 at all.
fn disable_ipv6(netns: &str) -> Result<(), KubeletError> {
    if !Path::new("/proc/sys/net/ipv6").exists() {
        return Ok(());
    }
    run(
        "ip",
        &[
            "netns",
            "exec",
            netns,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ],
    )
}

fn run(cmd: &str, args: &[&str]) -> Result<(), KubeletError> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|source| KubeletError::Spawn {
            cmd: cmd.to_owned(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(KubeletError::Failed {
            cmd: format!("{cmd} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str, command: &str) -> Pod {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  containers: [{{name: c, command: [{command}]}}]\n"
        );
        match tapestry_cluster::manifest::parse_manifests(&text, "test")
            .expect("parse")
            .pop()
        {
            Some(tapestry_cluster::Object::Pod(p)) => p,
            other => panic!("{other:?}"),
        }
    }

    fn undecodable() -> tapestry_cluster::DecodeError {
        tapestry_cluster::DecodeError::Undecodable {
            message: "expected value at line 1".into(),
        }
    }

    #[test]
    fn a_pod_whose_object_stops_decoding_keeps_its_last_good_spec() {
        let mut state = ClusterState::default();
        for (name, node) in [("web", "node1"), ("db", "node1"), ("far", "node2")] {
            state
                .pods
                .insert(format!("default/{name}"), pod(name, node, "serve"));
        }
        let mut last_good = BTreeMap::new();
        let run = pods_to_run("node1", &[], &state, &mut last_good);
        assert_eq!(run.pods.len(), 3);
        assert!(run.problems.is_empty() && run.keep.is_empty());

        // web's object goes bad: it still runs, on the spec seen before.
        state.pods.remove("default/web");
        state
            .decode_errors
            .insert("pods/default/web".into(), undecodable());
        let run = pods_to_run("node1", &[], &state, &mut last_good);
        let web = run.pods.get("default/web").expect("web still wanted");
        assert_eq!(web.spec.containers[0].command, ["serve"]);
        assert_eq!(run.problems.len(), 1);
        assert!(
            run.problems[0].1.contains("last good spec"),
            "{:?}",
            run.problems
        );

        // Another node's pod is not ours to keep.
        state.pods.remove("default/far");
        state
            .decode_errors
            .insert("pods/default/far".into(), undecodable());
        let run = pods_to_run("node1", &[], &state, &mut last_good);
        assert!(!run.pods.contains_key("default/far"));
        assert_eq!(run.problems.len(), 1);

        // After a restart (no spec seen), a pod running here is left alone.
        let mut fresh = BTreeMap::new();
        let running = [("default".to_owned(), "web".to_owned())];
        let run = pods_to_run("node1", &running, &state, &mut fresh);
        assert!(!run.pods.contains_key("default/web"));
        assert!(run.keep.contains(&running[0]));
        assert!(
            run.problems[0].1.contains("left running"),
            "{:?}",
            run.problems
        );

        // Deleted from the store: forgotten, and stopped like any other.
        state.decode_errors.remove("pods/default/web");
        let run = pods_to_run("node1", &running, &state, &mut last_good);
        assert!(!run.pods.contains_key("default/web") && run.keep.is_empty());
        assert!(!last_good.contains_key("default/web"));
    }

    #[test]
    fn resolv_conf_has_the_cluster_search_path() {
        let dns = ClusterDns {
            server: Ipv4Addr::new(10, 96, 0, 10),
            domain: "cluster.local".into(),
        };
        assert_eq!(
            dns.resolv_conf("shop"),
            "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        );
    }

    #[test]
    fn restart_backoff_doubles_on_quick_exits_and_resets_after_a_long_run() {
        let r = Restarts::default();
        let pf = Path::new("/nowhere/pod/c.pid");
        let t0 = Instant::now();
        assert_eq!(r.started(pf, t0), 0);
        assert!(r.may_start(pf, t0), "running: nothing holds it back");
        let mut t = t0;
        for (i, want) in [100u64, 200, 400, 800, 1600, 3200, 5000, 5000]
            .iter()
            .enumerate()
        {
            t += Duration::from_millis(10);
            r.exited(pf, t);
            let due = t + Duration::from_millis(*want);
            assert!(!r.may_start(pf, t), "exit {i}: held back");
            assert_eq!(r.next_due(t), Some(due), "exit {i}: due after {want} ms");
            assert!(r.may_start(pf, due));
            t = due;
            assert_eq!(r.started(pf, t), u32::try_from(i + 1).expect("small"));
        }
        // A run of STABLE_RUN: the next delay is the first again.
        t += STABLE_RUN;
        r.exited(pf, t);
        assert_eq!(r.next_due(t), Some(t + BACKOFF_MIN));
        // A stopped pod's containers are forgotten.
        r.forget(Path::new("/nowhere/pod"));
        assert!(r.may_start(pf, t));
        assert_eq!(r.next_due(t), None);
    }

    #[test]
    fn alive_rejects_missing_and_garbage_pid_files() {
        let dir =
            std::env::temp_dir().join(format!("tapestry-kubelet-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        assert_eq!(alive(&dir.join("none.pid")), None);
        fs::write(dir.join("junk.pid"), "not a pid").expect("write");
        assert_eq!(alive(&dir.join("junk.pid")), None);
        // A bare PID names no process for good: never trusted.
        fs::write(dir.join("bare.pid"), std::process::id().to_string()).expect("write");
        assert_eq!(alive(&dir.join("bare.pid")), None);
        let me = ProcId::of(std::process::id()).expect("myself");
        me.write(&dir.join("me.pid")).expect("write");
        assert_eq!(alive(&dir.join("me.pid")), Some(std::process::id()));
        // The same PID with another start time: a reused PID.
        fs::write(
            dir.join("reused.pid"),
            format!("{} {}", me.pid, me.start + 1),
        )
        .expect("write");
        assert_eq!(alive(&dir.join("reused.pid")), None);
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
