//! The socket side: UDP and TCP on one address, answering from the current
//! [`Zone`] through [`answer_into`].
//!
//! Threads, all blocking (never polling): a few UDP workers sharing one socket
//! (the kernel hands each datagram to one of them, so a slow upstream forward
//! stalls only that worker), one TCP acceptor, and one thread per TCP
//! connection up to a bound; connections beyond it are closed at once. A TCP
//! connection carries any number of length-prefixed queries, answered in order
//! (RFC 7766 §6.2.1), and is closed after an idle timeout (§6.2.3).
//!
//! The zone sits in an `ArcSwap`: the control side builds a new [`Zone`] and
//! stores it; each query loads the current one without a lock.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::answer::{answer_into, DropReason, Outcome, Transport, Upstream};
use crate::wire::{Header, EDNS_PAYLOAD, HEADER_LEN};
use crate::Zone;

/// Tunables; [`ServerConfig::default`] is what the binary uses.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Threads receiving on the UDP socket.
    pub udp_workers: usize,
    /// Largest UDP answer this server sends, whatever the client advertises.
    pub udp_max_payload: usize,
    /// Concurrent TCP connections; more are closed on accept.
    pub max_tcp_connections: usize,
    /// A TCP connection with no complete query for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// How long a forwarded query waits for the upstream.
    pub upstream_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            udp_workers: 2,
            udp_max_payload: usize::from(EDNS_PAYLOAD),
            max_tcp_connections: 64,
            tcp_idle_timeout: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(2),
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
    pub dropped_short: AtomicU64,
    pub dropped_not_query: AtomicU64,
    pub tcp_rejected: AtomicU64,
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
            Outcome::Dropped(DropReason::ShortHeader) => &self.dropped_short,
            Outcome::Dropped(DropReason::NotAQuery) => &self.dropped_not_query,
        };
        counter.fetch_add(1, Ordering::Relaxed);
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
        for i in 0..self.config.udp_workers.max(1) {
            let socket = self.udp.try_clone()?;
            let worker = UdpWorker {
                socket,
                zone: Arc::clone(&self.zone),
                upstream: self.upstream.clone(),
                max: self.config.udp_max_payload,
                counters: Arc::clone(&self.counters),
            };
            handles.push(
                thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || worker.run())?,
            );
        }
        let acceptor = Acceptor {
            listener: self.tcp,
            zone: self.zone,
            upstream: self.upstream,
            config: self.config,
            counters: self.counters,
            active: Arc::new(AtomicUsize::new(0)),
        };
        acceptor.run();
        for h in handles {
            let _ = h.join();
        }
        Ok(())
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

struct UdpWorker {
    socket: UdpSocket,
    zone: Arc<ArcSwap<Zone>>,
    upstream: Option<UdpUpstream>,
    max: usize,
    counters: Arc<Counters>,
}

impl UdpWorker {
    fn run(self) {
        // Queries are small; a larger datagram is cut and answered FORMERR.
        let mut buf = vec![0u8; 4096];
        let mut out = Vec::with_capacity(self.max);
        let upstream = self.upstream.as_ref().map(|u| u as &dyn Upstream);
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
            let outcome = answer_into(
                &zone,
                query,
                Transport::Udp { max: self.max },
                upstream,
                &mut out,
            );
            self.counters.record(outcome);
            if !out.is_empty() {
                if let Err(error) = self.socket.send_to(&out, peer) {
                    tracing::debug!(%error, %peer, "udp send");
                }
            }
        }
    }
}

struct Acceptor {
    listener: TcpListener,
    zone: Arc<ArcSwap<Zone>>,
    upstream: Option<UdpUpstream>,
    config: ServerConfig,
    counters: Arc<Counters>,
    active: Arc<AtomicUsize>,
}

/// Decrements the live-connection count when a connection thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
            if self.active.fetch_add(1, Ordering::AcqRel) >= self.config.max_tcp_connections {
                self.active.fetch_sub(1, Ordering::AcqRel);
                self.counters.tcp_rejected.fetch_add(1, Ordering::Relaxed);
                continue; // dropping the stream closes it
            }
            let slot = Slot(Arc::clone(&self.active));
            let conn = Connection {
                zone: Arc::clone(&self.zone),
                upstream: self.upstream.clone(),
                idle: self.config.tcp_idle_timeout,
                counters: Arc::clone(&self.counters),
            };
            let spawned = thread::Builder::new()
                .name("dns-tcp".into())
                .spawn(move || {
                    let _slot = slot;
                    if let Err(error) = conn.serve(stream) {
                        tracing::debug!(%error, "tcp connection");
                    }
                });
            if let Err(error) = spawned {
                tracing::warn!(%error, "tcp thread");
            }
        }
    }
}

struct Connection {
    zone: Arc<ArcSwap<Zone>>,
    upstream: Option<UdpUpstream>,
    idle: Duration,
    counters: Arc<Counters>,
}

impl Connection {
    fn serve(&self, mut stream: TcpStream) -> io::Result<()> {
        stream.set_read_timeout(Some(self.idle))?;
        stream.set_write_timeout(Some(self.idle))?;
        stream.set_nodelay(true)?;
        let upstream = self.upstream.as_ref().map(|u| u as &dyn Upstream);
        let mut query = Vec::with_capacity(512);
        let mut out = Vec::with_capacity(512);
        let mut frame = Vec::with_capacity(514);
        loop {
            let mut len = [0u8; 2];
            match stream.read_exact(&mut len) {
                Ok(()) => {}
                // EOF, idle timeout, reset: the conversation is over.
                Err(_) => return Ok(()),
            }
            let len = usize::from(u16::from_be_bytes(len));
            if len < HEADER_LEN {
                return Ok(()); // cannot be a query; framing is lost
            }
            query.resize(len, 0);
            stream.read_exact(&mut query)?;
            let zone = self.zone.load();
            let outcome = answer_into(&zone, &query, Transport::Tcp, upstream, &mut out);
            self.counters.record(outcome);
            if out.is_empty() {
                continue;
            }
            let Ok(out_len) = u16::try_from(out.len()) else {
                continue; // an upstream answer too big to frame
            };
            frame.clear();
            frame.extend_from_slice(&out_len.to_be_bytes());
            frame.extend_from_slice(&out);
            stream.write_all(&frame)?;
        }
    }
}
