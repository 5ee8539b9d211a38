//! Real etcd processes for the etcd store's tests: each test starts its own
//! cluster (one or more members on unique loopback ports, data in a fresh
//! temporary directory), waits (bounded) until it serves, and kills it when
//! the guard drops, on success and on panic alike.
//!
//! The `etcd` binary comes from Debian's `etcd-server` (scripts/test.sh
//! installs it). Without it the tests fail, saying so, unless
//! `TAPESTRY_SKIP_ETCD_TESTS=1` explicitly skips them.
//!
//! Test support only: compiled for this crate's tests and, with the
//! `test-utils` feature, for other crates' tests.
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::missing_panics_doc
)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{EtcdStore, EtcdStoreOptions, Store};

/// The environment variable that skips the etcd tests.
pub const SKIP_ENV: &str = "TAPESTRY_SKIP_ETCD_TESTS";

/// A unique, empty directory under the system temp dir.
fn temp_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tapestry-etcd-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Longest wait for a started cluster to serve.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// The etcd binary: `TAPESTRY_ETCD_BIN`, else `etcd` on the PATH.
fn etcd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TAPESTRY_ETCD_BIN") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// `None` (the test returns at once) when the etcd tests are explicitly
/// skipped; panics with what to do when etcd is missing.
pub fn etcd_or_skip() -> Option<PathBuf> {
    if std::env::var_os(SKIP_ENV).is_some_and(|v| v == "1") {
        eprintln!("etcd tests skipped: {SKIP_ENV}=1");
        return None;
    }
    match etcd_binary() {
        Some(bin) => Some(bin),
        None => panic!(
            "the etcd store tests need the `etcd` binary (Debian: apt-get install etcd-server; \
             scripts/test.sh installs it), or TAPESTRY_ETCD_BIN=/path/to/etcd; \
             set {SKIP_ENV}=1 to skip them explicitly"
        ),
    }
}

/// A loopback port nothing listens on right now (the kernel's pick).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A running etcd cluster; dropping it kills every member and removes the
/// data.
pub struct EtcdCluster {
    bin: PathBuf,
    dir: PathBuf,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// `n` members, started and serving; `None` when the tests are skipped.
    pub fn start(n: usize) -> Option<Self> {
        let mut bin = etcd_or_skip()?;
        // A port the kernel handed out may be taken again before etcd binds
        // it (other tests run at the same time): then try new ports.
        let mut last_err = String::new();
        for _ in 0..3 {
            let dir = temp_dir();
            std::fs::create_dir_all(&dir).unwrap();
            let members = (0..n)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client_port: free_port(),
                    peer_port: free_port(),
                    child: None,
                })
                .collect();
            let mut cluster = EtcdCluster { bin, dir, members };
            for i in 0..n {
                cluster.spawn(i);
            }
            match cluster.wait_ready() {
                Ok(()) => return Some(cluster),
                Err(e) => last_err = e,
            }
            bin = std::mem::take(&mut cluster.bin);
        }
        panic!("etcd did not start: {last_err}");
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let child = Command::new(&self.bin)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.join(&m.name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "tapestry-test"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        self.members[i].child = Some(child);
    }

    /// Polls, bounded, until every running member answers a read.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            let store = self.store_on(&[i], Duration::from_millis(500));
            loop {
                if let Some(status) = self.members[i].child.as_mut().unwrap().try_wait().unwrap() {
                    self.members[i].child = None;
                    return Err(format!(
                        "member {} exited ({status}); its log:\n{}",
                        self.members[i].name,
                        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
                    ));
                }
                match store.revision() {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!(
                            "member {} not serving after {READY_WITHIN:?}: {e}",
                            self.members[i].name
                        ))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Ok(())
    }

    /// `HOST:PORT` of member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// A store on members `which`, with short timeouts.
    pub fn store_on(&self, which: &[usize], timeout: Duration) -> EtcdStore {
        let mut opts = EtcdStoreOptions::new(which.iter().map(|&i| self.endpoint(i)).collect());
        opts.connect_timeout = timeout;
        opts.request_timeout = timeout;
        EtcdStore::connect(opts).unwrap()
    }

    /// `etcd://…` naming every member, as `--store` takes it.
    pub fn spec(&self) -> String {
        let all: Vec<String> = (0..self.members.len()).map(|i| self.endpoint(i)).collect();
        format!("etcd://{}", all.join(","))
    }

    /// A store on every member.
    pub fn store(&self) -> EtcdStore {
        let all: Vec<usize> = (0..self.members.len()).collect();
        self.store_on(&all, Duration::from_secs(5))
    }

    /// The index of the raft leader, asked of each running member.
    pub fn leader(&self) -> usize {
        (0..self.members.len())
            .find(|&i| {
                self.members[i].child.is_some()
                    && self
                        .store_on(&[i], Duration::from_secs(2))
                        .is_leader()
                        .unwrap()
            })
            .expect("a leader")
    }

    /// The OS process id of member `i`, if running.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) member `i`: a member that
    /// holds its connections open but answers nothing, like a hung host.
    pub fn freeze(&self, i: usize, frozen: bool) {
        use rustix::process::{kill_process, Pid, Signal};
        let pid = self
            .pid(i)
            .and_then(|p| Pid::from_raw(i32::try_from(p).ok()?));
        let signal = if frozen { Signal::STOP } else { Signal::CONT };
        kill_process(pid.expect("a running member"), signal).unwrap();
        // The signal is delivered asynchronously: wait (bounded) until the
        // kernel reports the process stopped (`T`) or not.
        let stat = format!("/proc/{}/stat", self.pid(i).unwrap_or(0));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            // The state follows the command name's closing parenthesis.
            let state = text
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            if (state == Some('T')) == frozen {
                return;
            }
            assert!(Instant::now() < deadline, "member {i} state {state:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `kill -9` member `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            // Child::kill is SIGKILL.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory and peer port but a
    /// new client port, so clients of the old endpoint cannot reach it;
    /// returns the new endpoint. [`EtcdCluster::restart`] moves it back.
    pub fn restart_elsewhere(&mut self, i: usize) -> String {
        self.kill(i);
        let home = self.members[i].client_port;
        self.members[i].client_port = free_port();
        self.spawn(i);
        let ready = self.wait_ready();
        let endpoint = self.endpoint(i);
        self.members[i].client_port = home;
        if let Err(e) = ready {
            panic!("etcd member did not come back elsewhere: {e}");
        }
        endpoint
    }

    /// Starts member `i` again on its data directory and ports, and waits
    /// until it serves.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        if let Err(e) = self.wait_ready() {
            panic!("etcd member did not come back: {e}");
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
