//! The data-plane worker: one thread that owns the [`Pipeline`] and every port's
//! TAP, blocks in `epoll` (through `mio`) until a TAP has frames, and moves them.
//!
//! Invariants of the packet path:
//! - No locks and no allocation per frame: one receive buffer and one reply buffer
//!   are allocated when the worker starts; the MAC table is preallocated by the
//!   pipeline; ports live in a `Vec` indexed by [`PortId`].
//! - No busy polling: the thread sleeps in `epoll_wait` until a TAP is readable or
//!   the control thread wakes it through the [`mio::Waker`].
//! - Bounded work per wakeup: a port is read at most [`RX_BUDGET`] times before
//!   the others get their turn (`mio` is edge-triggered, so a port that still has
//!   frames is remembered and served again before the next sleep).
//! - Control changes (a port added or removed) arrive as [`Command`]s on a channel
//!   and are applied between batches, by this thread only.
//! - Its end is announced: however the thread ends (asked to, leaving its loop
//!   on an error, or a panic unwinding it), a [`WorkerExit`] is sent on the
//!   channel [`WorkerHandle::exits`] gives, so that the agent can exit instead
//!   of answering on its control socket while no packet moves.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tapestry_dataplane::{
    Action, Coalescer, FlowFileError, FlowMemory, Ingress, MacAddr, Nanos, Pipeline, PortId,
    PortRole, Restored,
};

use crate::tap::Tap;
use crate::tunnel::{TunnelRx, TunnelSocket};
use crate::txbatch::{Push, TxBatch};

/// Frames read from one port per turn before the other ports are served.
pub const RX_BUDGET: usize = 64;
/// Room for a 64 KiB TSO segment, its Ethernet header and the virtio-net header.
pub const FRAME_BUF_LEN: usize = 65_536 + 256;
const WAKER: Token = Token(usize::MAX);
const TUNNEL: Token = Token(usize::MAX - 1);
/// Tunnel receive batches per turn before the ports are served.
const TUNNEL_BUDGET: usize = 4;
/// Flows the tunnel's software GRO holds at once.
const GRO_FLOWS: usize = 8;
/// How often flow-table upkeep runs: expiry, and the reconcile against the
/// current service table that removes flows to backends that are gone.
const MAINTAIN_EVERY: Nanos = 1_000_000_000;

/// Per-port traffic counters, readable from any thread (relaxed atomics).
#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Writes the kernel refused (the TAP's queue full, or the device gone).
    pub tx_errors: AtomicU64,
}

/// What the control thread asks of the worker.
pub enum Command {
    /// Attach `tap` as port `id`; the reply says whether it is now served.
    AddPort {
        id: PortId,
        role: PortRole,
        tap: Tap,
        done: Sender<io::Result<Arc<PortCounters>>>,
    },
    /// Detach port `id` and hand its TAP back (so the caller can remove it).
    RemovePort {
        id: PortId,
        done: Sender<Option<Tap>>,
    },
    /// Report the MAC table.
    MacTable {
        done: Sender<Vec<(MacAddr, PortId, Nanos)>>,
    },
    /// Report the service load balancer's flow table.
    Flows {
        done: Sender<Vec<tapestry_dataplane::FlowInfo>>,
    },
    /// Start reading the tunnel socket (held until then, so that nothing is
    /// routed from it before the node's tables are published and its pods served;
    /// the kernel queues what arrives meanwhile).
    ServeTunnel { done: Sender<io::Result<()>> },
    /// Stop the worker; TAPs are closed (persistent ones stay).
    Shutdown,
    /// Stop the worker for the upgrade hand-off: the flow file is detached
    /// (left as the last packet left it, for the next process to attach) and
    /// every port's TAP and the tunnel socket are handed back open, the worker
    /// having read its last frame.
    Handover { done: Sender<Handover> },
    /// Take over a tunnel socket and a flow file from an upgrade hand-off, before
    /// anything is served: the socket is read from [`Command::ServeTunnel`]
    /// on; the flows in `flows` are restored now (the reply says how many).
    Adopt {
        tunnel: Option<TunnelSocket>,
        flows: Option<Box<dyn FlowMemory>>,
        done: Sender<Option<Result<Restored, FlowFileError>>>,
    },
}

/// What a worker stopped by [`Command::Handover`] gives back, open.
pub struct Handover {
    /// Every port, by id, with its TAP.
    pub ports: Vec<(PortId, Tap)>,
    pub tunnel: Option<TunnelSocket>,
}

/// How the worker thread ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// It was asked to ([`Command::Shutdown`]).
    Shutdown,
    /// It left its loop on its own (an error it cannot recover from).
    Failed,
    /// A panic unwound it (only where panics unwind: the release build aborts
    /// the process instead).
    Panicked,
}

/// Sends how the thread that holds it ended, when dropped: at the end of the
/// thread's function, or while a panic unwinds it.
struct ExitNotice {
    tx: Sender<WorkerExit>,
    asked: bool,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let how = if std::thread::panicking() {
            WorkerExit::Panicked
        } else if self.asked {
            WorkerExit::Shutdown
        } else {
            WorkerExit::Failed
        };
        let _ = self.tx.send(how);
    }
}

/// The control thread's handle on a running worker.
pub struct WorkerHandle {
    tx: Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
    tunnel_tx_errors: Arc<AtomicU64>,
    exits: Receiver<WorkerExit>,
}

impl WorkerHandle {
    /// Sends a command and wakes the worker.
    pub fn send(&self, cmd: Command) -> io::Result<()> {
        self.tx
            .send(cmd)
            .map_err(|_| io::Error::other("data-plane worker has stopped"))?;
        self.waker.wake()
    }

    /// Receives one [`WorkerExit`] when the worker thread ends (blocks until then).
    pub fn exits(&self) -> Receiver<WorkerExit> {
        self.exits.clone()
    }

    /// Tunnel datagrams the kernel refused to send.
    pub fn tunnel_tx_errors(&self) -> u64 {
        self.tunnel_tx_errors.load(Ordering::Relaxed)
    }

    /// Stops the worker and waits for it.
    pub fn shutdown(&mut self) {
        let _ = self.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Port {
    tap: Tap,
    counters: Arc<PortCounters>,
}

struct Worker {
    poll: Poll,
    pipeline: Pipeline,
    ports: Vec<Option<Port>>,
    rx: Receiver<Command>,
    epoch: Instant,
    /// Ports that used up their budget and still have frames queued.
    backlog: Vec<usize>,
    tunnel: Option<TunnelSocket>,
    /// Receive buffers of the tunnel (empty without one).
    tunnel_rx: TunnelRx,
    /// Software GRO for frames decapsulated from the tunnel: consecutive TCP
    /// segments of one flow go to the pod as one large frame, once per batch.
    gro: Coalescer,
    /// The tunnel socket used up its budget and may have more.
    tunnel_backlog: bool,
    /// Tunnel sends the kernel refused (socket buffer full, peer unreachable).
    tunnel_tx_errors: Arc<AtomicU64>,
    /// Single tunnel datagrams gathered for one UDP GSO send per run (see
    /// `txbatch`); sent at the end of every turn of the loop.
    tunnel_out: TxBatch,
    /// When [`Pipeline::maintain`] runs next (flow expiry and reconcile).
    next_maintain: Nanos,
    stop: bool,
}

/// Starts the worker thread around `pipeline`, with the node's tunnel socket
/// when the node has peers to reach.
pub fn spawn(pipeline: Pipeline, tunnel: Option<TunnelSocket>) -> io::Result<WorkerHandle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let tunnel_tx_errors = Arc::new(AtomicU64::new(0));
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut worker = Worker {
        poll,
        pipeline,
        ports: Vec::new(),
        rx,
        epoch: clock_epoch(),
        backlog: Vec::with_capacity(64),
        tunnel_rx: if tunnel.is_some() {
            TunnelRx::new()
        } else {
            TunnelRx::default()
        },
        tunnel,
        gro: Coalescer::new(GRO_FLOWS),
        tunnel_backlog: false,
        tunnel_tx_errors: Arc::clone(&tunnel_tx_errors),
        tunnel_out: TxBatch::new(),
        next_maintain: 0,
        stop: false,
    };
    let (exit_tx, exits) = crossbeam_channel::bounded(1);
    let thread = std::thread::Builder::new()
        .name("dataplane".into())
        .spawn(move || {
            let mut notice = ExitNotice {
                tx: exit_tx,
                asked: false,
            };
            worker.run();
            notice.asked = worker.stop;
        })?;
    Ok(WorkerHandle {
        tx,
        waker,
        thread: Some(thread),
        tunnel_tx_errors,
        exits,
    })
}

#[allow(clippy::disallowed_methods)] // the I/O layer is where time is read; the data plane gets it passed in
fn clock_epoch() -> Instant {
    Instant::now()
}

impl Worker {
    fn now(&self) -> Nanos {
        #[allow(clippy::disallowed_methods)] // see clock_epoch
        let d = Instant::now().duration_since(self.epoch);
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        let mut buf = vec![0u8; FRAME_BUF_LEN];
        let mut out = vec![0u8; tapestry_dataplane::OUT_BUF_LEN];
        let mut ready: Vec<usize> = Vec::with_capacity(256);
        while !self.stop {
            let now = self.now();
            if now >= self.next_maintain {
                self.pipeline.maintain(now);
                self.next_maintain = now.saturating_add(MAINTAIN_EVERY);
            }
            // Sleep until a frame arrives or the next upkeep is due; don't sleep
            // while a port or the tunnel has frames left over from its budget.
            let timeout = if self.backlog.is_empty() && !self.tunnel_backlog {
                Duration::from_nanos(self.next_maintain.saturating_sub(now))
            } else {
                Duration::ZERO
            };
            let timeout = Some(timeout);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "epoll failed; data plane stops");
                return;
            }
            ready.clear();
            ready.append(&mut self.backlog);
            let mut tunnel_ready = std::mem::take(&mut self.tunnel_backlog);
            for ev in events.iter() {
                if ev.token() == WAKER {
                    self.drain_commands();
                } else if ev.token() == TUNNEL {
                    tunnel_ready = true;
                } else if !ready.contains(&ev.token().0) {
                    ready.push(ev.token().0);
                }
            }
            // One clock read per wakeup, not per frame: the vDSO call showed up
            // at ~4% of the worker's time under a 64-byte flood, and flow
            // timestamps need no finer grain than one batch.
            let now = self.now();
            if tunnel_ready {
                self.tunnel_backlog = self.serve_tunnel(&mut out, now);
            }
            for &idx in &ready {
                if self.serve(idx, &mut buf, &mut out, now) {
                    self.backlog.push(idx);
                }
            }
            self.flush_tunnel_out();
        }
    }

    /// Sends the tunnel datagrams staged during this turn.
    fn flush_tunnel_out(&mut self) {
        if let Some((run, bytes)) = self.tunnel_out.staged() {
            send_tunnel(
                &mut self.tunnel,
                &self.tunnel_tx_errors,
                run.peer,
                run.flow_hash,
                bytes,
                run.segment_len,
            );
        }
        self.tunnel_out.clear();
    }

    /// Receives up to [`TUNNEL_BUDGET`] batches from the tunnel socket; true if
    /// it may have more.
    fn serve_tunnel(&mut self, out: &mut [u8], now: Nanos) -> bool {
        if self.tunnel.is_none() {
            return false;
        }
        // Moved out for the batch (no allocation) so that acting can borrow `self`.
        let mut rx = std::mem::take(&mut self.tunnel_rx);
        let mut more = true;
        for _ in 0..TUNNEL_BUDGET {
            let Some(tunnel) = self.tunnel.as_mut() else {
                break;
            };
            let n = match tunnel.recv(&mut rx) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    more = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "tunnel receive failed");
                    more = false;
                    break;
                }
            };
            for i in 0..n {
                let Some((from, msg, seg)) = rx.message(i) else {
                    break;
                };
                // With UDP GRO one message holds several datagrams of `seg` bytes.
                for pkt in msg.chunks_mut(seg) {
                    let action = self.pipeline.process_tunnel(from, pkt, now, out);
                    self.act(Ingress::Tunnel, pkt, action);
                }
            }
            // The batch is done: whatever GRO holds goes out before the next wait.
            let ports = &self.ports;
            self.gro
                .flush(&mut |to, bytes| send_to(ports, usize::from(to.0), bytes));
        }
        self.tunnel_rx = rx;
        more
    }

    /// Carries out one pipeline decision about `pkt`, which arrived from `ingress`.
    fn act(&mut self, ingress: Ingress, pkt: &[u8], action: Action<'_>) {
        let from_port = match ingress {
            Ingress::Port(p) => Some(usize::from(p.0)),
            Ingress::Tunnel => None,
        };
        match action {
            Action::Forward(to) => send_to(&self.ports, usize::from(to.0), pkt),
            Action::Flood => {
                for (i, p) in self.ports.iter().enumerate() {
                    if Some(i) != from_port {
                        if let Some(p) = p {
                            send(p, pkt);
                        }
                    }
                }
            }
            // Only a port's frames are answered back where they came from.
            Action::Reply(bytes) => {
                if let Some(idx) = from_port {
                    send_to(&self.ports, idx, bytes);
                }
            }
            Action::ToPort(to, bytes) if ingress == Ingress::Tunnel => {
                let ports = &self.ports;
                self.gro.push(to, bytes, &mut |to, bytes| {
                    send_to(ports, usize::from(to.0), bytes)
                });
            }
            Action::ToPort(to, bytes) => send_to(&self.ports, usize::from(to.0), bytes),
            Action::Tunnel {
                peer,
                flow_hash,
                datagrams,
                segment_len,
            } => {
                if datagrams.len() <= segment_len {
                    // One datagram: staged, to leave with its flow's next ones.
                    loop {
                        match self.tunnel_out.push(peer, flow_hash, datagrams) {
                            Push::Staged => return,
                            Push::SendFirst => self.flush_tunnel_out(),
                            Push::Unstageable => break,
                        }
                    }
                }
                // A TSO run (already one GSO send), or a datagram that cannot be
                // staged: what is staged goes first, so a flow's datagrams keep
                // their order.
                self.flush_tunnel_out();
                send_tunnel(
                    &mut self.tunnel,
                    &self.tunnel_tx_errors,
                    peer,
                    flow_hash,
                    datagrams,
                    segment_len,
                );
            }
            Action::Drop(_) => {} // counted by the pipeline, by reason
        }
    }

    /// Reads up to [`RX_BUDGET`] frames from port `idx`; true if it may have more.
    fn serve(&mut self, idx: usize, buf: &mut [u8], out: &mut [u8], now: Nanos) -> bool {
        let Ok(raw_id) = u16::try_from(idx) else {
            return false;
        };
        let ingress = PortId(raw_id);
        for _ in 0..RX_BUDGET {
            let Some(Some(port)) = self.ports.get(idx) else {
                return false;
            };
            let n = match port.tap.recv(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(port = idx, tap = port.tap.name(), error = %e, "read failed; port paused");
                    return false;
                }
            };
            port.counters.rx_frames.fetch_add(1, Ordering::Relaxed);
            port.counters
                .rx_bytes
                .fetch_add(n as u64, Ordering::Relaxed);
            let Some(pkt) = buf.get_mut(..n) else {
                return false;
            };
            let action = self.pipeline.process(ingress, pkt, now, out);
            self.act(Ingress::Port(ingress), pkt, action);
        }
        true
    }

    fn drain_commands(&mut self) {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::AddPort {
                    id,
                    role,
                    tap,
                    done,
                } => {
                    let _ = done.send(self.add_port(id, role, tap));
                }
                Command::RemovePort { id, done } => {
                    let _ = done.send(self.remove_port(id));
                }
                Command::MacTable { done } => {
                    let now = self.now();
                    let _ = done.send(self.pipeline.mac_entries(now));
                }
                Command::Flows { done } => {
                    let now = self.now();
                    let _ = done.send(self.pipeline.flows(now));
                }
                Command::ServeTunnel { done } => {
                    let _ = done.send(self.serve_tunnel_socket());
                }
                Command::Shutdown => self.stop = true,
                Command::Handover { done } => {
                    let _ = done.send(self.hand_over());
                    self.stop = true;
                    return;
                }
                Command::Adopt {
                    tunnel,
                    flows,
                    done,
                } => {
                    if tunnel.is_some() {
                        self.tunnel_rx = TunnelRx::new();
                        self.tunnel = tunnel;
                    }
                    let now = self.now();
                    let restored = flows.map(|f| self.pipeline.attach_flow_file(f, now));
                    let _ = done.send(restored);
                }
            }
        }
    }

    /// Gives up the flow file, the ports and the tunnel socket (see
    /// [`Command::Handover`]); the worker stops after this.
    fn hand_over(&mut self) -> Handover {
        self.flush_tunnel_out();
        drop(self.pipeline.detach_flow_file());
        let ids: Vec<PortId> = (0..self.ports.len())
            .filter_map(|i| u16::try_from(i).ok().map(PortId))
            .collect();
        let ports = ids
            .into_iter()
            .filter_map(|id| self.remove_port(id).map(|tap| (id, tap)))
            .collect();
        let tunnel = self.tunnel.take();
        if let Some(t) = &tunnel {
            let fd = t.rx_socket().as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
        Handover { ports, tunnel }
    }

    /// Registers the tunnel socket (if any) and reads what queued meanwhile.
    fn serve_tunnel_socket(&mut self) -> io::Result<()> {
        if let Some(t) = &self.tunnel {
            let fd = t.rx_socket().as_raw_fd();
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), TUNNEL, Interest::READABLE)?;
            self.tunnel_backlog = true;
        }
        Ok(())
    }

    fn add_port(&mut self, id: PortId, role: PortRole, tap: Tap) -> io::Result<Arc<PortCounters>> {
        let idx = usize::from(id.0);
        if let Some(old) = self.remove_port(id) {
            drop(old);
        }
        let fd = tap.as_raw_fd();
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), Token(idx), Interest::READABLE)?;
        if self.ports.len() <= idx {
            self.ports.resize_with(idx + 1, || None);
        }
        let counters = Arc::new(PortCounters::default());
        if let Some(slot) = self.ports.get_mut(idx) {
            *slot = Some(Port {
                tap,
                counters: Arc::clone(&counters),
            });
        }
        self.pipeline.add_port(id, role);
        // The gateway's address, told to the pod at once (control path: the buffer
        // is allocated here, once per attach).
        let mut arp = [0u8; 128];
        if let (Some(frame), Some(Some(port))) = (
            self.pipeline.gateway_announcement(id, &mut arp),
            self.ports.get(idx),
        ) {
            send(port, frame);
        }
        // Frames may have queued before registration: serve them now (edge-triggered).
        self.backlog.push(idx);
        Ok(counters)
    }

    fn remove_port(&mut self, id: PortId) -> Option<Tap> {
        let idx = usize::from(id.0);
        let port = self.ports.get_mut(idx)?.take()?;
        let fd = port.tap.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        self.pipeline.remove_port(id);
        self.backlog.retain(|&i| i != idx);
        Some(port.tap)
    }
}

/// Sends `datagrams` (each `segment_len` bytes, the last possibly shorter) to
/// `peer`, counting those the kernel refused.
fn send_tunnel(
    tunnel: &mut Option<TunnelSocket>,
    errors: &AtomicU64,
    peer: std::net::Ipv4Addr,
    flow_hash: u32,
    datagrams: &[u8],
    segment_len: usize,
) {
    let Some(tunnel) = tunnel.as_mut() else {
        return;
    };
    let want = datagrams.len().div_ceil(segment_len.max(1));
    match tunnel.send(peer, flow_hash, datagrams, segment_len) {
        Ok(sent) if sent == want => {}
        Ok(sent) => {
            errors.fetch_add(want.saturating_sub(sent) as u64, Ordering::Relaxed);
        }
        Err(_) => {
            errors.fetch_add(want as u64, Ordering::Relaxed);
        }
    }
}

fn send_to(ports: &[Option<Port>], idx: usize, frame: &[u8]) {
    if let Some(Some(p)) = ports.get(idx) {
        send(p, frame);
    }
}

fn send(port: &Port, frame: &[u8]) {
    match port.tap.send(frame) {
        Ok(n) => {
            port.counters.tx_frames.fetch_add(1, Ordering::Relaxed);
            port.counters
                .tx_bytes
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        Err(_) => {
            port.counters.tx_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tapestry_dataplane::PipelineConfig;

    /// Runs `f` on a thread holding an [`ExitNotice`]; what it reports.
    fn ending(asked: bool, f: impl FnOnce() + Send + 'static) -> WorkerExit {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let t = std::thread::spawn(move || {
            let mut notice = ExitNotice { tx, asked: false };
            f();
            notice.asked = asked;
        });
        let _ = t.join();
        rx.recv_timeout(Duration::from_secs(5)).expect("a notice")
    }

    #[test]
    fn every_way_a_thread_ends_is_reported() {
        assert_eq!(ending(true, || {}), WorkerExit::Shutdown);
        assert_eq!(ending(false, || {}), WorkerExit::Failed);
        assert_eq!(ending(true, || panic!("injected")), WorkerExit::Panicked);
    }

    #[test]
    fn a_worker_asked_to_stop_reports_shutdown() {
        let subnet = "10.244.9.0/24".parse().expect("cidr");
        let mut cfg = PipelineConfig::new(
            Ipv4Addr::new(10, 244, 9, 1),
            MacAddr([2, 0, 0, 0, 0, 1]),
            subnet,
        );
        // A small table: the test needs a worker, not capacity.
        cfg.conntrack_capacity = 1024;
        let pipeline = Pipeline::new(cfg);
        let mut handle = spawn(pipeline, None).expect("worker");
        let exits = handle.exits();
        assert!(exits.try_recv().is_err(), "running: nothing reported");
        handle.shutdown();
        assert_eq!(
            exits.recv_timeout(Duration::from_secs(5)),
            Ok(WorkerExit::Shutdown)
        );
    }
}
