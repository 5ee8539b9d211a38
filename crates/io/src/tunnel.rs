//! The VXLAN underlay sockets of a node.
//!
//! One UDP socket bound to `UNDERLAY_IP:4789` receives every tunnel datagram
//! (`recvmmsg`, a batch per system call). Sending goes through a small pool of
//! UDP sockets bound to `UNDERLAY_IP:0`, each with its own kernel-chosen source
//! port: the data plane's hash of the inner flow picks the socket, so the outer
//! UDP source port varies by flow as RFC 7348 §5 asks (ECMP entropy), while every
//! packet of one flow leaves from the same port (no reordering). The kernel adds
//! the outer IPv4 and UDP headers and the UDP checksum.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;

use crate::sys::{self, MmsgBatch};

/// IANA's VXLAN port (RFC 7348 §5).
pub const VXLAN_PORT: u16 = 4789;
/// Datagrams received per `recvmmsg`.
pub const RX_BATCH: usize = 32;
/// Receive buffer per message: with UDP GRO the kernel hands over up to 64 KiB
/// of coalesced datagrams in one.
pub const RX_DATAGRAM_LEN: usize = 65_536;
/// Sockets in the send pool: distinct outer source ports.
pub const TX_POOL: usize = 8;

/// Buffers for one batch of received tunnel messages, allocated once. Kept apart
/// from the socket so that the datagrams can be processed (and answered through the
/// socket) while they are borrowed.
#[derive(Default)]
pub struct TunnelRx {
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    from: Vec<SocketAddrV4>,
    /// UDP GRO segment size per received message (0: a single datagram).
    segs: Vec<usize>,
}

impl TunnelRx {
    /// Room for [`RX_BATCH`] messages of [`RX_DATAGRAM_LEN`] bytes.
    pub fn new() -> TunnelRx {
        TunnelRx {
            bufs: (0..RX_BATCH).map(|_| vec![0u8; RX_DATAGRAM_LEN]).collect(),
            lens: vec![0; RX_BATCH],
            from: vec![SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0); RX_BATCH],
            segs: vec![0; RX_BATCH],
        }
    }

    /// Received message `i`: its source, its bytes, and the size of the datagrams
    /// UDP GRO coalesced into it (the whole message when it holds one).
    pub fn message(&mut self, i: usize) -> Option<(SocketAddrV4, &mut [u8], usize)> {
        let (len, from, seg) = (*self.lens.get(i)?, *self.from.get(i)?, *self.segs.get(i)?);
        let msg = self.bufs.get_mut(i)?.get_mut(..len)?;
        let seg = if seg == 0 { len.max(1) } else { seg };
        Some((from, msg, seg))
    }
}

/// The node's tunnel endpoint.
pub struct TunnelSocket {
    rx: UdpSocket,
    tx: Vec<UdpSocket>,
    port: u16,
    rx_batch: MmsgBatch,
    tx_batch: MmsgBatch,
    /// UDP GSO works here; cleared (for good) the first time the kernel refuses it.
    gso: bool,
}

impl TunnelSocket {
    /// Binds the receive socket to `underlay_ip:port` and the send pool to
    /// `underlay_ip:0`.
    pub fn bind(underlay_ip: Ipv4Addr, port: u16) -> io::Result<TunnelSocket> {
        let rx = UdpSocket::bind(SocketAddrV4::new(underlay_ip, port)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("bind VXLAN socket {underlay_ip}:{port}: {e}"),
            )
        })?;
        Self::with_rx(rx, underlay_ip, port)
    }

    /// Builds the endpoint around a receive socket already bound to
    /// `underlay_ip:port` (the upgrade hand-off passes it from the old process,
    /// so that no datagram finds the port closed); the send pool is new.
    pub fn with_rx(rx: UdpSocket, underlay_ip: Ipv4Addr, port: u16) -> io::Result<TunnelSocket> {
        rx.set_nonblocking(true)?;
        if let Err(e) = sys::enable_udp_gro(rx.as_fd()) {
            tracing::warn!(error = %e, "no UDP GRO on the tunnel socket; receiving datagram by datagram");
        }
        if let Err(e) = sys::set_recv_buffer(rx.as_fd(), 8 << 20) {
            tracing::warn!(error = %e, "cannot enlarge the tunnel receive buffer");
        }
        let mut tx = Vec::with_capacity(TX_POOL);
        for _ in 0..TX_POOL {
            let s = UdpSocket::bind(SocketAddrV4::new(underlay_ip, 0))?;
            s.set_nonblocking(true)?;
            if let Err(e) = sys::set_send_buffer(s.as_fd(), 4 << 20) {
                tracing::warn!(error = %e, "cannot enlarge a tunnel send buffer");
            }
            tx.push(s);
        }
        Ok(TunnelSocket {
            rx,
            tx,
            port,
            rx_batch: MmsgBatch::new(RX_BATCH),
            tx_batch: MmsgBatch::new(64),
            gso: true,
        })
    }

    /// The receive socket and its port, for the upgrade hand-off (the send
    /// pool is closed).
    pub fn into_rx(self) -> (UdpSocket, u16) {
        (self.rx, self.port)
    }

    /// The receive socket, for registering with the event loop.
    pub fn rx_socket(&self) -> &UdpSocket {
        &self.rx
    }

    /// Receives one batch of messages into `into`; returns how many arrived.
    pub fn recv(&mut self, into: &mut TunnelRx) -> io::Result<usize> {
        let TunnelRx {
            bufs,
            lens,
            from,
            segs,
        } = into;
        self.rx_batch.recv(self.rx.as_fd(), bufs, lens, from, segs)
    }

    /// Sends back-to-back datagrams of `segment_len` bytes to `peer`, from the
    /// pool socket `flow_hash` picks: with UDP GSO, one `sendmsg` per up to 64
    /// datagrams (64 KiB); where the kernel refuses GSO, with `sendmmsg`.
    /// Returns how many datagrams were sent.
    pub fn send(
        &mut self,
        peer: Ipv4Addr,
        flow_hash: u32,
        datagrams: &[u8],
        segment_len: usize,
    ) -> io::Result<usize> {
        let idx = usize::try_from(flow_hash).unwrap_or(0) % self.tx.len().max(1);
        let Some(sock) = self.tx.get(idx) else {
            return Ok(0);
        };
        let dst = SocketAddrV4::new(peer, self.port);
        if segment_len == 0 || datagrams.is_empty() {
            return Ok(0);
        }
        let count = datagrams.len().div_ceil(segment_len);
        if self.gso && count > 1 {
            let per_call =
                (sys::UDP_GSO_MAX_BYTES / segment_len).clamp(1, sys::UDP_GSO_MAX_SEGMENTS);
            let mut sent = 0;
            for chunk in datagrams.chunks(per_call * segment_len) {
                match sys::send_gso(sock.as_fd(), chunk, segment_len, dst) {
                    Ok(_) => sent += chunk.len().div_ceil(segment_len),
                    Err(e)
                        if sent == 0
                            && matches!(
                                e.raw_os_error(),
                                Some(
                                    libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP
                                )
                            ) =>
                    {
                        tracing::warn!(error = %e, "UDP GSO refused; falling back to sendmmsg");
                        self.gso = false;
                        return self.tx_batch.send_segments(
                            sock.as_fd(),
                            datagrams,
                            segment_len,
                            dst,
                        );
                    }
                    Err(e) if sent == 0 => return Err(e),
                    Err(_) => return Ok(sent),
                }
            }
            return Ok(sent);
        }
        self.tx_batch
            .send_segments(sock.as_fd(), datagrams, segment_len, dst)
    }
}
