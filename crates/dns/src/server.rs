//! The socket side: UDP and TCP on one address, answering from the current
//! [`Zone`] through [`respond`].
//!
//! Threads, all blocking (never polling):
//! - a few UDP workers sharing one socket (the kernel hands each datagram to
//!   one of them). They answer cluster names themselves and never wait on an
//!   upstream: a name outside the zone is handed to the forwarding pool.
//! - the forwarding pool: a bounded queue and a fixed number of threads that
//!   ask the upstream and send its answer. When the queue is full the query
//!   gets SERVFAIL at once (`forward_shed`); a query that waited in the queue
//!   longer than the upstream timeout is dropped (`forward_expired`: its
//!   client has retried or given up). A slow or dead upstream therefore costs
//!   outside names only, never cluster names.
//! - one TCP acceptor, and one thread per TCP connection up to a bound. A
//!   connection carries any number of length-prefixed queries, answered in
//!   order (RFC 7766 §6.2.1). Two deadlines bound what a client can hold
//!   (RFC 7766 §6.2.3, and the slowloris attack): `tcp_idle_timeout` from
//!   the accept or the last answer to the first byte of the next query, and
//!   `tcp_query_timeout` from that first byte to the last byte of the query,
//!   however the bytes trickle in (the deadline is per query, not per read).
//!   When every slot is taken, a new connection evicts the connection that has
//!   waited longest for a query to complete (idle or still reading, never one
//!   being answered, nor one whose thread has not yet started: its query may
//!   already sit unread in the socket, and the newcomer waits for it, up to
//!   `tcp_query_timeout`, before it is turned away as `tcp_rejected`), so a
//!   flood of slow clients cannot lock the others out: each newcomer pushes
//!   the stalest one out (`tcp_evicted`).
//!
//! The zone sits in an `ArcSwap`: the control side builds a new [`Zone`] and
//! stores it; each query loads the current one without a lock. The TCP
//! connection table is the one lock here (`parking_lot`), taken on accept and
//! when a connection ends, never per query.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::{Condvar, Mutex};

use crate::answer::{respond, DropReason, Forwarding, Outcome, Transport, Upstream};
use crate::wire::{Header, EDNS_PAYLOAD, HEADER_LEN};
use crate::Zone;

/// Tunables; [`ServerConfig::default`] is what the binary uses.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Threads receiving on the UDP socket.
    pub udp_workers: usize,
    /// Largest UDP answer this server sends, whatever the client advertises.
    pub udp_max_payload: usize,
    /// Concurrent TCP connections; beyond it the stalest is evicted.
    pub max_tcp_connections: usize,
    /// A TCP connection with no query begun for this long (after the accept
    /// or the last answer) is closed.
    pub tcp_idle_timeout: Duration,
    /// A TCP query must arrive whole within this long of its first byte.
    pub tcp_query_timeout: Duration,
    /// How long a forwarded query waits for the upstream.
    pub upstream_timeout: Duration,
    /// Threads asking the upstream.
    pub forward_workers: usize,
    /// Forwarded queries waiting for a forwarding thread; more get SERVFAIL.
    pub forward_queue: usize,
    /// How often the counters are logged (when they changed); `None`: never.
    pub stats_interval: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            udp_workers: 2,
            udp_max_payload: usize::from(EDNS_PAYLOAD),
            max_tcp_connections: 64,
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_query_timeout: Duration::from_secs(2),
            upstream_timeout: Duration::from_secs(2),
            forward_workers: 4,
            forward_queue: 64,
            stats_interval: Some(Duration::from_secs(10)),
        }
    }
}

/// Relaxed counters, one per outcome; read them for metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub answered: AtomicU64,
    pub nxdomain: AtomicU64,
    pub refused: AtomicU64,
    pub errors: AtomicU64,
    pub truncated: AtomicU64,
    pub forwarded: AtomicU64,
    pub forward_failed: AtomicU64,
    /// SERVFAIL at once: the forwarding queue was full.
    pub forward_shed: AtomicU64,
    /// Dropped unanswered: waited in the forwarding queue past the upstream timeout.
    pub forward_expired: AtomicU64,
    pub dropped_short: AtomicU64,
    pub dropped_not_query: AtomicU64,
    /// TCP connections closed on accept: every slot was busy answering.
    pub tcp_rejected: AtomicU64,
    /// TCP connections closed for idling past `tcp_idle_timeout`.
    pub tcp_idle_closed: AtomicU64,
    /// TCP connections cut because a query did not arrive whole in `tcp_query_timeout`.
    pub tcp_query_timeouts: AtomicU64,
    /// TCP connections closed to make room for a new one.
    pub tcp_evicted: AtomicU64,
}

impl Counters {
    fn record(&self, outcome: Outcome) {
        use crate::wire::Rcode;
        let counter = match outcome {
            Outcome::Answered {
                truncated: true, ..
            } => &self.truncated,
            Outcome::Answered { rcode, .. } => match rcode {
                Rcode::NoError => &self.answered,
                Rcode::NxDomain => &self.nxdomain,
                Rcode::Refused => &self.refused,
                _ => &self.errors,
            },
            Outcome::Forwarded { ok: true } => &self.forwarded,
            Outcome::Forwarded { ok: false } => &self.forward_failed,
            Outcome::Shed => &self.forward_shed,
            // Counted by the forwarding pool when it is done.
            Outcome::Deferred => return,
            Outcome::Dropped(DropReason::ShortHeader) => &self.dropped_short,
            Outcome::Dropped(DropReason::NotAQuery) => &self.dropped_not_query,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter by name, in a fixed order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("answered", get(&self.answered)),
            ("nxdomain", get(&self.nxdomain)),
            ("refused", get(&self.refused)),
            ("errors", get(&self.errors)),
            ("truncated", get(&self.truncated)),
            ("forwarded", get(&self.forwarded)),
            ("forward_failed", get(&self.forward_failed)),
            ("forward_shed", get(&self.forward_shed)),
            ("forward_expired", get(&self.forward_expired)),
            ("dropped_short", get(&self.dropped_short)),
            ("dropped_not_query", get(&self.dropped_not_query)),
            ("tcp_rejected", get(&self.tcp_rejected)),
            ("tcp_idle_closed", get(&self.tcp_idle_closed)),
            ("tcp_query_timeouts", get(&self.tcp_query_timeouts)),
            ("tcp_evicted", get(&self.tcp_evicted)),
        ]
    }
}

/// `name=value` pairs separated by spaces, as the stats log line shows them.
impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.snapshot().into_iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

/// Forwards queries over UDP to one upstream server, a fresh ephemeral-port
/// socket per query (so concurrent queries never share an ID space and a
/// spoofer has to guess the port too).
#[derive(Clone, Debug)]
pub struct UdpUpstream {
    addr: SocketAddr,
    timeout: Duration,
}

impl UdpUpstream {
    pub fn new(addr: SocketAddr, timeout: Duration) -> UdpUpstream {
        UdpUpstream { addr, timeout }
    }

    fn exchange(&self, query: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let Ok(query_header) = Header::parse(query) else {
            return Ok(None);
        };
        let local: SocketAddr = if self.addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let socket = UdpSocket::bind(local)?;
        socket.connect(self.addr)?;
        socket.send(query)?;
        let deadline = Instant::now() + self.timeout;
        let mut buf = vec![0u8; 65535];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            socket.set_read_timeout(Some(left))?;
            let n = socket.recv(&mut buf)?;
            let response = buf.get(..n).unwrap_or(&[]);
            match Header::parse(response) {
                Ok(h) if h.id == query_header.id && h.is_response() => {
                    return Ok(Some(response.to_vec()))
                }
                _ => continue, // stray or spoofed: keep waiting
            }
        }
    }
}

impl Upstream for UdpUpstream {
    fn forward(&self, query: &[u8]) -> Option<Vec<u8>> {
        match self.exchange(query) {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(%error, upstream = %self.addr, "forward failed");
                None
            }
        }
    }
}

/// The DNS server: bound sockets and the zone they answer from.
pub struct Server {
    udp: UdpSocket,
    tcp: TcpListener,
    zone: Arc<ArcSwap<Zone>>,
    upstream: Option<UdpUpstream>,
    config: ServerConfig,
    counters: Arc<Counters>,
}

impl Server {
    /// Binds UDP and TCP on `addr` (port 0: one free port for both).
    /// `upstream` receives the queries for names outside the zone; `None`
    /// refuses them.
    pub fn bind(
        addr: SocketAddr,
        zone: Arc<ArcSwap<Zone>>,
        upstream: Option<SocketAddr>,
    ) -> io::Result<Server> {
        let (udp, tcp) = bind_pair(addr)?;
        let config = ServerConfig::default();
        Ok(Server {
            udp,
            tcp,
            zone,
            upstream: upstream.map(|a| UdpUpstream::new(a, config.upstream_timeout)),
            config,
            counters: Arc::new(Counters::default()),
        })
    }

    /// Replaces the tunables.
    pub fn with_config(mut self, config: ServerConfig) -> Server {
        if let Some(up) = &mut self.upstream {
            up.timeout = config.upstream_timeout;
        }
        self.config = config;
        self
    }

    /// The bound address (UDP and TCP share it).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// The outcome counters, shared with the running server.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Serves until the process ends. Returns only if no thread could start.
    pub fn run(self) -> io::Result<()> {
        let mut handles = Vec::new();
        let forward = match &self.upstream {
            None => None,
            Some(upstream) => {
                let (tx, rx) = crossbeam_channel::bounded(self.config.forward_queue.max(1));
                for i in 0..self.config.forward_workers.max(1) {
                    let worker = ForwardWorker {
                        jobs: rx.clone(),
                        socket: self.udp.try_clone()?,
                        zone: Arc::clone(&self.zone),
                        upstream: upstream.clone(),
                        max_wait: self.config.upstream_timeout,
                        counters: Arc::clone(&self.counters),
                    };
                    handles.push(
                        thread::Builder::new()
                            .name(format!("dns-fwd-{i}"))
                            .spawn(move || worker.run())?,
                    );
                }
                Some(tx)
            }
        };
        for i in 0..self.config.udp_workers.max(1) {
            let worker = UdpWorker {
                socket: self.udp.try_clone()?,
                zone: Arc::clone(&self.zone),
                forward: forward.clone(),
                max: self.config.udp_max_payload,
                counters: Arc::clone(&self.counters),
            };
            handles.push(
                thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || worker.run())?,
            );
        }
        if let Some(every) = self.config.stats_interval {
            let counters = Arc::clone(&self.counters);
            thread::Builder::new()
                .name("dns-stats".into())
                .spawn(move || log_stats(&counters, every))?;
        }
        let acceptor = Acceptor {
            listener: self.tcp,
            table: Arc::new(ConnTable::new(self.config.max_tcp_connections.max(1))),
            zone: self.zone,
            forward,
            config: self.config,
            counters: self.counters,
        };
        acceptor.run();
        for h in handles {
            let _ = h.join();
        }
        Ok(())
    }
}

/// Logs the counters every `every`, when they changed since the last line.
fn log_stats(counters: &Counters, every: Duration) {
    let mut last = Vec::new();
    loop {
        thread::sleep(every);
        let now = counters.snapshot();
        if now != last {
            tracing::info!(target: "tapestry_dns::stats", "counters {counters}");
            last = now;
        }
    }
}

/// UDP then TCP on the same port; with port 0, retried until a port is free
/// for both.
fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr)?;
        match TcpListener::bind(udp.local_addr()?) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free port")))
}

/// A query for a name outside the zone, waiting for a forwarding thread.
struct Job {
    query: Vec<u8>,
    transport: Transport,
    reply: Reply,
    queued: Instant,
}

/// Where the forwarded answer goes.
enum Reply {
    /// Sent from the server's UDP socket to this client.
    Udp(SocketAddr),
    /// Handed back to the TCP connection thread, which frames and writes it.
    Tcp(Sender<Vec<u8>>),
}

/// Hands `job` to the forwarding pool; `false` when the queue is full (or the
/// pool is gone), and the caller answers SERVFAIL.
fn submit(forward: &Sender<Job>, job: Job) -> bool {
    match forward.try_send(job) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
    }
}

struct ForwardWorker {
    jobs: Receiver<Job>,
    socket: UdpSocket,
    zone: Arc<ArcSwap<Zone>>,
    upstream: UdpUpstream,
    max_wait: Duration,
    counters: Arc<Counters>,
}

impl ForwardWorker {
    fn run(self) {
        let mut out = Vec::with_capacity(usize::from(EDNS_PAYLOAD));
        for job in self.jobs.iter() {
            if job.queued.elapsed() > self.max_wait {
                // Its client has retried or given up; a TCP waiter sees the
                // channel close and answers SERVFAIL.
                Counters::bump(&self.counters.forward_expired);
                continue;
            }
            let zone = self.zone.load();
            let outcome = respond(
                &zone,
                &job.query,
                job.transport,
                Forwarding::Ask(&self.upstream),
                &mut out,
            );
            self.counters.record(outcome);
            if out.is_empty() {
                continue;
            }
            match job.reply {
                Reply::Udp(peer) => {
                    if let Err(error) = self.socket.send_to(&out, peer) {
                        tracing::debug!(%error, %peer, "udp send");
                    }
                }
                // The connection may have given up waiting: nothing to do then.
                Reply::Tcp(tx) => {
                    let _ = tx.send(out.clone());
                }
            }
        }
    }
}

struct UdpWorker {
    socket: UdpSocket,
    zone: Arc<ArcSwap<Zone>>,
    forward: Option<Sender<Job>>,
    max: usize,
    counters: Arc<Counters>,
}

impl UdpWorker {
    fn run(self) {
        // Queries are small; a larger datagram is cut and answered FORMERR.
        let mut buf = vec![0u8; 4096];
        let mut out = Vec::with_capacity(self.max);
        let transport = Transport::Udp { max: self.max };
        loop {
            let (n, peer) = match self.socket.recv_from(&mut buf) {
                Ok(r) => r,
                Err(error) => {
                    tracing::warn!(%error, "udp receive");
                    continue;
                }
            };
            let query = buf.get(..n).unwrap_or(&[]);
            let zone = self.zone.load();
            let mode = match self.forward {
                Some(_) => Forwarding::Defer,
                None => Forwarding::Refuse,
            };
            let mut outcome = respond(&zone, query, transport, mode, &mut out);
            if let (Outcome::Deferred, Some(forward)) = (outcome, &self.forward) {
                let job = Job {
                    query: query.to_vec(),
                    transport,
                    reply: Reply::Udp(peer),
                    queued: Instant::now(),
                };
                if !submit(forward, job) {
                    outcome = respond(&zone, query, transport, Forwarding::Shed, &mut out);
                }
            }
            self.counters.record(outcome);
            if !out.is_empty() {
                if let Err(error) = self.socket.send_to(&out, peer) {
                    tracing::debug!(%error, %peer, "udp send");
                }
            }
        }
    }
}

/// What a TCP connection is doing, for choosing whom to evict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of a query.
    Idle = 0,
    /// Has part of a query.
    Reading = 1,
    /// Has a whole query and is answering it: never evicted.
    Answering = 2,
    /// Admitted, its thread not yet running: never evicted, since a query
    /// may already wait unread in its socket (on a loaded machine the
    /// newest client would otherwise be pushed out before its thread ever
    /// looked). Newcomers wait for it to start instead.
    Fresh = 3,
}

/// One live TCP connection as the table sees it.
struct ConnEntry {
    id: u64,
    /// A handle on the socket, to shut it down when evicted.
    stream: TcpStream,
    /// The phase in the top two bits, the milliseconds since the table's
    /// epoch when it began below.
    phase: AtomicU64,
    evicted: AtomicBool,
}

const PHASE_SHIFT: u32 = 62;
const SINCE_MASK: u64 = (1 << PHASE_SHIFT) - 1;

impl ConnEntry {
    fn set(&self, phase: Phase, since_ms: u64) {
        let packed = ((phase as u64) << PHASE_SHIFT) | (since_ms & SINCE_MASK);
        self.phase.store(packed, Ordering::Relaxed);
    }

    fn get(&self) -> (Phase, u64) {
        let packed = self.phase.load(Ordering::Relaxed);
        let phase = match packed >> PHASE_SHIFT {
            0 => Phase::Idle,
            1 => Phase::Reading,
            2 => Phase::Answering,
            _ => Phase::Fresh,
        };
        (phase, packed & SINCE_MASK)
    }
}

/// The live TCP connections, at most `max`.
struct ConnTable {
    conns: Mutex<Vec<Arc<ConnEntry>>>,
    /// Signalled when a connection's thread starts or a slot is released.
    changed: Condvar,
    max: usize,
    epoch: Instant,
    next_id: AtomicU64,
}

/// Why a connection got no slot.
enum Admit {
    Admitted(Arc<ConnEntry>),
    /// Every slot is answering a query.
    Full,
}

impl ConnTable {
    fn new(max: usize) -> ConnTable {
        ConnTable {
            conns: Mutex::new(Vec::with_capacity(max)),
            changed: Condvar::new(),
            max,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(SINCE_MASK)
    }

    /// Takes a slot for `stream`; when all are taken, first evicts the
    /// connection idle or reading for the longest (`evicted` is called once
    /// for it). While the only candidates are connections whose thread has
    /// not started, waits up to `wait` for one to start.
    fn admit(
        &self,
        stream: &TcpStream,
        wait: Duration,
        evicted: impl FnOnce(),
    ) -> io::Result<Admit> {
        let handle = stream.try_clone()?;
        let until = Instant::now() + wait;
        let mut conns = self.conns.lock();
        while conns.len() >= self.max {
            let victim = conns
                .iter()
                .enumerate()
                .filter_map(|(i, c)| match c.get() {
                    (Phase::Answering | Phase::Fresh, _) => None,
                    (_, since) => Some((since, i)),
                })
                .min();
            let Some((_, index)) = victim else {
                let starting = conns.iter().any(|c| c.get().0 == Phase::Fresh);
                if starting && !self.changed.wait_until(&mut conns, until).timed_out() {
                    continue;
                }
                return Ok(Admit::Full);
            };
            let victim = conns.swap_remove(index);
            victim.evicted.store(true, Ordering::Relaxed);
            // Wakes the victim's blocked read with end-of-file; it then ends.
            let _ = victim.stream.shutdown(Shutdown::Both);
            evicted();
            break;
        }
        let now = self.now_ms();
        let entry = Arc::new(ConnEntry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            stream: handle,
            phase: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
        });
        entry.set(Phase::Fresh, now);
        conns.push(Arc::clone(&entry));
        Ok(Admit::Admitted(entry))
    }

    /// The connection's thread runs: it may be evicted from now on, its
    /// staleness counted from now (a connection that waited for its thread
    /// has not been slow itself).
    fn started(&self, entry: &ConnEntry) {
        let _conns = self.conns.lock();
        entry.set(Phase::Idle, self.now_ms());
        self.changed.notify_all();
    }

    fn release(&self, id: u64) {
        self.conns.lock().retain(|c| c.id != id);
        self.changed.notify_all();
    }
}

struct Acceptor {
    listener: TcpListener,
    table: Arc<ConnTable>,
    zone: Arc<ArcSwap<Zone>>,
    forward: Option<Sender<Job>>,
    config: ServerConfig,
    counters: Arc<Counters>,
}

/// Gives the slot back when a connection thread ends, however it ends.
struct Slot {
    table: Arc<ConnTable>,
    entry: Arc<ConnEntry>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.release(self.entry.id);
    }
}

impl Acceptor {
    fn run(self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(error) => {
                    tracing::warn!(%error, "tcp accept");
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let evicted = || Counters::bump(&self.counters.tcp_evicted);
            let wait = self.config.tcp_query_timeout;
            let entry = match self.table.admit(&stream, wait, evicted) {
                Ok(Admit::Admitted(entry)) => entry,
                Ok(Admit::Full) => {
                    Counters::bump(&self.counters.tcp_rejected);
                    continue; // dropping the stream closes it
                }
                Err(error) => {
                    tracing::debug!(%error, "tcp admit");
                    continue;
                }
            };
            let slot = Slot {
                table: Arc::clone(&self.table),
                entry,
            };
            let conn = Connection {
                zone: Arc::clone(&self.zone),
                forward: self.forward.clone(),
                idle: self.config.tcp_idle_timeout,
                query_timeout: self.config.tcp_query_timeout,
                forward_wait: self.config.upstream_timeout.saturating_mul(2),
                counters: Arc::clone(&self.counters),
            };
            let spawned = thread::Builder::new()
                .name("dns-tcp".into())
                .spawn(move || {
                    if let Err(error) = conn.serve(stream, &slot) {
                        tracing::debug!(%error, "tcp connection");
                    }
                    drop(slot);
                });
            if let Err(error) = spawned {
                tracing::warn!(%error, "tcp thread");
            }
        }
    }
}

/// How a deadline-bounded read ended short of filling its buffer.
#[derive(Debug, PartialEq, Eq)]
enum Cut {
    /// The peer closed, reset, or this side was shut down (evicted).
    Closed,
    /// The deadline passed.
    Deadline,
}

/// Reads until `buf` holds at least `min` bytes (at most `buf.len()`), or
/// `deadline` passes, however the bytes trickle in: the time left is
/// recomputed before every read, so no number of tiny writes extends it.
fn read_by(
    stream: &mut TcpStream,
    buf: &mut [u8],
    min: usize,
    deadline: Instant,
) -> Result<usize, Cut> {
    let mut got = 0;
    while got < min {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Cut::Deadline);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| Cut::Closed)?;
        let Some(rest) = buf.get_mut(got..) else {
            return Err(Cut::Closed);
        };
        match stream.read(rest) {
            Ok(0) => return Err(Cut::Closed),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(Cut::Closed),
        }
    }
    Ok(got)
}

struct Connection {
    zone: Arc<ArcSwap<Zone>>,
    forward: Option<Sender<Job>>,
    idle: Duration,
    query_timeout: Duration,
    /// How long a TCP query waits for the forwarding pool (queue and upstream).
    forward_wait: Duration,
    counters: Arc<Counters>,
}

impl Connection {
    fn serve(&self, mut stream: TcpStream, slot: &Slot) -> io::Result<()> {
        stream.set_write_timeout(Some(self.query_timeout))?;
        stream.set_nodelay(true)?;
        let entry = &slot.entry;
        let table = &slot.table;
        table.started(entry);
        let mut query = Vec::with_capacity(512);
        let mut out = Vec::with_capacity(512);
        let mut frame = Vec::with_capacity(514);
        loop {
            // Idle: wait for the first byte of the next query.
            let mut len = [0u8; 2];
            let got = match read_by(&mut stream, &mut len, 1, Instant::now() + self.idle) {
                Ok(n) => n,
                Err(Cut::Deadline) => {
                    Counters::bump(&self.counters.tcp_idle_closed);
                    return Ok(());
                }
                Err(Cut::Closed) => return Ok(()), // EOF, reset or evicted
            };
            // The query has begun: all of it must be here by the deadline.
            let deadline = Instant::now() + self.query_timeout;
            entry.set(Phase::Reading, table.now_ms());
            let rest = len.get_mut(got..).unwrap_or(&mut []);
            let need = rest.len();
            if let Err(cut) = read_by(&mut stream, rest, need, deadline) {
                return self.cut(cut, entry);
            }
            let len = usize::from(u16::from_be_bytes(len));
            if len < HEADER_LEN {
                return Ok(()); // cannot be a query; framing is lost
            }
            query.resize(len, 0);
            if let Err(cut) = read_by(&mut stream, &mut query, len, deadline) {
                return self.cut(cut, entry);
            }
            entry.set(Phase::Answering, table.now_ms());
            self.answer(&query, &mut out);
            if !out.is_empty() {
                if let Ok(out_len) = u16::try_from(out.len()) {
                    frame.clear();
                    frame.extend_from_slice(&out_len.to_be_bytes());
                    frame.extend_from_slice(&out);
                    stream.write_all(&frame)?;
                } // else an upstream answer too big to frame: skipped
            }
            entry.set(Phase::Idle, table.now_ms());
        }
    }

    /// Ends a connection whose query did not arrive whole.
    fn cut(&self, cut: Cut, entry: &ConnEntry) -> io::Result<()> {
        if cut == Cut::Deadline && !entry.evicted.load(Ordering::Relaxed) {
            Counters::bump(&self.counters.tcp_query_timeouts);
        }
        Ok(())
    }

    /// Answers one query into `out`, through the forwarding pool for names
    /// outside the zone.
    fn answer(&self, query: &[u8], out: &mut Vec<u8>) {
        let zone = self.zone.load();
        let Some(forward) = &self.forward else {
            let outcome = respond(&zone, query, Transport::Tcp, Forwarding::Refuse, out);
            self.counters.record(outcome);
            return;
        };
        let outcome = respond(&zone, query, Transport::Tcp, Forwarding::Defer, out);
        if outcome != Outcome::Deferred {
            self.counters.record(outcome);
            return;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let job = Job {
            query: query.to_vec(),
            transport: Transport::Tcp,
            reply: Reply::Tcp(tx),
            queued: Instant::now(),
        };
        if !submit(forward, job) {
            let outcome = respond(&zone, query, Transport::Tcp, Forwarding::Shed, out);
            self.counters.record(outcome);
            return;
        }
        match rx.recv_timeout(self.forward_wait) {
            Ok(answer) => *out = answer,
            // The pool counted it (expired, or still waiting on the upstream).
            Err(_) => {
                let _ = respond(&zone, query, Transport::Tcp, Forwarding::Failed, out);
            }
        }
    }
}
