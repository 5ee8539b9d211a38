//! The lab's pod runtime, the part of a kubelet the lab needs: for each Pod
//! manifest it creates the pod's network namespace, starts the pause process that
//! holds it, asks the node's `tapestryd` to attach it (CNI ADD), starts each
//! container as a process inside the namespace, and waits until the pod answers.
//! `down` undoes all of it. Both are safe to repeat.
//!
//! Layout under the lab directory `LAB_DIR`:
//! `nodes/NODE/tapestryd.sock` (one per node agent) and
//! `pods/NAMESPACE_NAME/` holding `node`, `pause.pid`, `CONTAINER.pid` and
//! `CONTAINER.log`. A pod's network namespace is `PREFIX-NAMESPACE-NAME`.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use tapestry_agent::api::{Attachment, Request};
use tapestry_agent::control;
use tapestry_cluster::manifest::{Object, Pod};

/// Where the lab lives and how its names are made.
pub struct Lab {
    pub dir: PathBuf,
    pub prefix: String,
    /// Directory with the lab's binaries, put first on the containers' PATH.
    pub bin_dir: PathBuf,
}

/// A pod placed on a node.
pub struct Placed {
    pub pod: Pod,
    pub node: String,
}

impl Lab {
    pub fn nodes(&self) -> Result<Vec<String>, String> {
        let dir = self.dir.join("nodes");
        let mut nodes: Vec<String> = fs::read_dir(&dir)
            .map_err(|e| format!("no nodes in {}: {e} (is the lab up?)", dir.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("tapestryd.sock").exists())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .collect();
        nodes.sort();
        if nodes.is_empty() {
            return Err(format!(
                "no node agents under {} (is the lab up?)",
                dir.display()
            ));
        }
        Ok(nodes)
    }

    pub fn socket(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node).join("tapestryd.sock")
    }

    pub fn node_netns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    pub fn pod_netns(&self, pod: &Pod) -> String {
        format!(
            "{}-{}-{}",
            self.prefix, pod.metadata.namespace, pod.metadata.name
        )
    }

    fn pod_dir(&self, ns: &str, name: &str) -> PathBuf {
        self.dir.join("pods").join(format!("{ns}_{name}"))
    }

    /// Places pods: `spec.nodeName` where given (it must be a node of the lab),
    /// otherwise spread over the nodes in turn, in manifest order.
    pub fn place(&self, objects: Vec<Object>) -> Result<Vec<Placed>, String> {
        let nodes = self.nodes()?;
        let mut next = 0usize;
        let mut placed = Vec::new();
        for obj in objects {
            let Object::Pod(pod) = obj else { continue };
            let node = match &pod.spec.node_name {
                Some(n) if nodes.contains(n) => n.clone(),
                Some(n) => {
                    return Err(format!(
                        "pod {}/{}: spec.nodeName {n:?} is not a node of this lab (nodes: {})",
                        pod.metadata.namespace,
                        pod.metadata.name,
                        nodes.join(", ")
                    ))
                }
                None => {
                    let n = nodes.get(next % nodes.len()).cloned().unwrap_or_default();
                    next += 1;
                    n
                }
            };
            placed.push(Placed { pod, node });
        }
        Ok(placed)
    }

    fn attachment(&self, pod: &Pod) -> Attachment {
        let netns = self.pod_netns(pod);
        Attachment {
            container_id: netns.clone(),
            netns: PathBuf::from("/run/netns").join(netns),
            ifname: "eth0".into(),
            pod_namespace: pod.metadata.namespace.clone(),
            pod_name: pod.metadata.name.clone(),
        }
    }

    /// Creates (or completes) one pod and returns its IP.
    pub fn up(&self, p: &Placed) -> Result<Ipv4Addr, String> {
        let pod = &p.pod;
        let (ns, name) = (&pod.metadata.namespace, &pod.metadata.name);
        let netns = self.pod_netns(pod);
        let dir = self.pod_dir(ns, name);
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        if let Ok(old) = fs::read_to_string(dir.join("node")) {
            if old.trim() != p.node {
                return Err(format!(
                    "pod {ns}/{name} already runs on {}; delete it before moving it to {}",
                    old.trim(),
                    p.node
                ));
            }
        }
        fs::write(dir.join("node"), &p.node).map_err(|e| e.to_string())?;
        if !Path::new("/run/netns").join(&netns).exists() {
            run("ip", &["netns", "add", &netns])?;
        }
        run("ip", &["-n", &netns, "link", "set", "lo", "up"])?;
        if alive(&dir.join("pause.pid")).is_none() {
            self.spawn(&netns, &dir, "pause", &["tapestry-pause".to_owned()], &[])?;
        }
        let reply = control::call(&self.socket(&p.node), &Request::Add(self.attachment(pod)))?;
        if !reply.ok {
            return Err(format!(
                "pod {ns}/{name}: CNI ADD on {}: {}",
                p.node,
                reply.error.unwrap_or_default()
            ));
        }
        let ip: Ipv4Addr = reply
            .result
            .as_ref()
            .and_then(|r| r.ips.first())
            .and_then(|c| c.address.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("pod {ns}/{name}: the agent returned no address"))?;
        fs::write(dir.join("ip"), ip.to_string()).map_err(|e| e.to_string())?;
        let env = [
            ("POD_NAME", name.clone()),
            ("POD_NAMESPACE", ns.clone()),
            ("POD_IP", ip.to_string()),
            ("NODE_NAME", p.node.clone()),
        ];
        for c in &pod.spec.containers {
            if alive(&dir.join(format!("{}.pid", c.name))).is_some() {
                continue;
            }
            let mut argv: Vec<String> = c.command.clone();
            argv.extend(c.args.iter().cloned());
            if argv.is_empty() {
                return Err(format!("pod {ns}/{name}: container {} has no command (the lab runs commands, not images)", c.name));
            }
            let mut env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect();
            env.extend(c.env.iter().map(|e| (e.name.clone(), e.value.clone())));
            self.spawn(&netns, &dir, &c.name, &argv, &env)?;
        }
        Ok(ip)
    }

    fn spawn(
        &self,
        netns: &str,
        dir: &Path,
        what: &str,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<(), String> {
        let log = fs::File::create(dir.join(format!("{what}.log"))).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
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
            .map_err(|e| format!("cannot start {what} in {netns}: {e}"))?;
        fs::write(dir.join(format!("{what}.pid")), child.id().to_string())
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Waits (bounded) until the pod answers ping from its node, and each declared
    /// TCP container port accepts connections.
    pub fn wait_ready(&self, p: &Placed, ip: Ipv4Addr, timeout: Duration) -> Result<(), String> {
        let node_ns = self.node_netns(&p.node);
        let started = Instant::now();
        let ports: Vec<u16> = p
            .pod
            .spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter())
            .filter(|port| port.protocol == tapestry_cluster::Protocol::Tcp)
            .map(|port| port.container_port)
            .collect();
        loop {
            let pinged = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &node_ns,
                    "ping",
                    "-c",
                    "1",
                    "-W",
                    "1",
                    "-q",
                    &ip.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            let open = pinged
                && ports.iter().all(|port| {
                    Command::new("ip")
                        .args([
                            "netns",
                            "exec",
                            &node_ns,
                            &self.bin_dir.join("tapestry").display().to_string(),
                            "probe",
                            &format!("{ip}:{port}"),
                        ])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
                });
            if open {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "pod {}/{} ({ip}) did not answer within {}s (ping{} from node {})",
                    p.pod.metadata.namespace,
                    p.pod.metadata.name,
                    timeout.as_secs(),
                    if ports.is_empty() {
                        String::new()
                    } else {
                        format!(" and TCP {ports:?}")
                    },
                    p.node
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every pod directory of the lab: (namespace, name).
    pub fn existing(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = fs::read_dir(self.dir.join("pods"))
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

    /// Stops a pod's containers and pause process, detaches it (CNI DEL) and
    /// deletes its namespace. Missing pieces are skipped.
    pub fn down(&self, ns: &str, name: &str) -> Result<(), String> {
        let dir = self.pod_dir(ns, name);
        let netns = format!("{}-{ns}-{name}", self.prefix);
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "pid")
                    && p.file_stem().is_some_and(|s| s != "pause")
                {
                    stop(&p);
                }
            }
        }
        if let Ok(node) = fs::read_to_string(dir.join("node")) {
            let a = Attachment {
                container_id: netns.clone(),
                netns: PathBuf::from("/run/netns").join(&netns),
                ifname: "eth0".into(),
                pod_namespace: ns.to_owned(),
                pod_name: name.to_owned(),
            };
            let sock = self.socket(node.trim());
            if sock.exists() {
                match control::call(&sock, &Request::Del(a)) {
                    Ok(r) if !r.ok => eprintln!(
                        "warning: CNI DEL for {ns}/{name}: {}",
                        r.error.unwrap_or_default()
                    ),
                    Err(e) => eprintln!("warning: CNI DEL for {ns}/{name}: {e}"),
                    Ok(_) => {}
                }
            }
        }
        stop(&dir.join("pause.pid"));
        if Path::new("/run/netns").join(&netns).exists() {
            run("ip", &["netns", "del", &netns])?;
        }
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}

/// The pid in `pidfile` if that process is still running.
pub fn alive(pidfile: &Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // A zombie (state Z) has exited.
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    (state != Some('Z')).then_some(pid)
}

/// SIGTERM to the process in `pidfile`, then SIGKILL if it is still there after 2 s.
pub fn stop(pidfile: &Path) {
    if let Some(pid) = alive(pidfile) {
        let pid_s = pid.to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid_s])
            .stderr(Stdio::null())
            .status();
        let started = Instant::now();
        while alive(pidfile).is_some() && started.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(pidfile).is_some() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid_s])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _ = fs::remove_file(pidfile);
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
