//! One tracked flow of the load balancer and its life: keys, states, timeouts.
//! The table that holds flows is `conntrack`; the file that keeps them across a
//! restart is `flow_file`; both build on this.

use core::net::{Ipv4Addr, SocketAddrV4};

use crate::types::Nanos;
use crate::types::{Backend, L4Proto};
use crate::wire::tcp::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

pub(crate) const SEC: Nanos = 1_000_000_000;

/// Default number of flows.
pub const DEFAULT_CONNTRACK_CAPACITY: usize = 262_144;

/// Largest capacity accepted (larger requests are clamped): 2^22 flows.
pub const MAX_CONNTRACK_CAPACITY: usize = 1 << 22;

/// The capacity a table of `capacity` flows gets: 1..=[`MAX_CONNTRACK_CAPACITY`].
pub(crate) fn clamp_capacity(capacity: usize) -> usize {
    capacity.clamp(1, MAX_CONNTRACK_CAPACITY)
}

/// How long a flow lives without traffic, per state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackTimeouts {
    /// After the client's SYN, until the backend answers (30 s; Linux: 120 s).
    pub tcp_syn: Nanos,
    /// Established (3,600 s; Linux: 5 days).
    pub tcp_established: Nanos,
    /// After FIN both ways or an RST (10 s; Linux: TIME_WAIT 120 s, CLOSE 10 s).
    pub tcp_closing: Nanos,
    /// UDP, refreshed by traffic either way (30 s, as Linux's `nf_conntrack_udp_timeout`).
    pub udp: Nanos,
}

impl Default for ConntrackTimeouts {
    fn default() -> Self {
        ConntrackTimeouts {
            tcp_syn: 30 * SEC,
            tcp_established: 3_600 * SEC,
            tcp_closing: 10 * SEC,
            udp: 30 * SEC,
        }
    }
}

/// Where a flow is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowState {
    /// TCP: the client's SYN went out, no answer yet.
    SynSent,
    /// TCP: the backend answered.
    Established,
    /// TCP: FIN both ways, or an RST.
    Closing,
    /// UDP.
    Udp,
}

/// Direction of a packet within a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Client → service.
    Forward = 0,
    /// Backend → client.
    Reply = 1,
}

/// A 5-tuple as a packet carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tuple {
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub proto: L4Proto,
}

impl Tuple {
    /// The same conversation seen the other way.
    #[inline]
    pub(crate) fn reversed(&self) -> Tuple {
        Tuple {
            src: self.dst,
            sport: self.dport,
            dst: self.src,
            dport: self.sport,
            proto: self.proto,
        }
    }
}

/// What a flow translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlowKind {
    /// To a ClusterIP: DNAT to the backend (and SNAT for hairpin or a clash).
    Service,
    /// Straight to a pod, from a source port whose reply key a tracked flow held:
    /// SNAT to another port only (`vip` is the backend itself). See the module docs.
    Direct,
}

/// One tracked flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Flow {
    pub client: (Ipv4Addr, u16),
    pub vip: (Ipv4Addr, u16),
    pub backend: Backend,
    /// The source the backend sees (the client, or the gateway for hairpin).
    pub nat: (Ipv4Addr, u16),
    pub proto: L4Proto,
    pub kind: FlowKind,
    pub state: FlowState,
    /// FIN seen: bit 0 from the client, bit 1 from the backend.
    pub fins: u8,
    pub created: Nanos,
    pub expires: Nanos,
    /// Service table generation at which the backend was last confirmed.
    pub generation: u64,
}

impl Flow {
    /// The key packets of direction `dir` carry.
    #[inline]
    pub(crate) fn key(&self, dir: Dir) -> Tuple {
        match dir {
            Dir::Forward => Tuple {
                src: self.client.0,
                sport: self.client.1,
                dst: self.vip.0,
                dport: self.vip.1,
                proto: self.proto,
            },
            Dir::Reply => Tuple {
                src: self.backend.ip,
                sport: self.backend.port,
                dst: self.nat.0,
                dport: self.nat.1,
                proto: self.proto,
            },
        }
    }

    /// A new flow's state from its first packet's TCP flags (ignored for UDP).
    pub(crate) fn initial_state(proto: L4Proto, flags: u8) -> FlowState {
        match proto {
            L4Proto::Udp => FlowState::Udp,
            L4Proto::Tcp if flags & TCP_RST != 0 => FlowState::Closing,
            L4Proto::Tcp if flags & (TCP_SYN | TCP_ACK) == TCP_SYN => FlowState::SynSent,
            L4Proto::Tcp => FlowState::Established,
        }
    }

    /// Advances the state for a packet (`flags`: TCP flags, 0 for UDP) and refreshes
    /// the timeout.
    #[inline]
    pub(crate) fn on_packet(&mut self, dir: Dir, flags: u8, now: Nanos, t: &ConntrackTimeouts) {
        advance(self.proto, &mut self.state, &mut self.fins, dir, flags);
        self.expires = now.saturating_add(timeout(self.state, t));
    }

    /// Status view.
    pub(crate) fn info(&self, now: Nanos) -> FlowInfo {
        FlowInfo {
            client: SocketAddrV4::new(self.client.0, self.client.1),
            vip: SocketAddrV4::new(self.vip.0, self.vip.1),
            backend: self.backend,
            nat_source: SocketAddrV4::new(self.nat.0, self.nat.1),
            proto: self.proto,
            state: self.state,
            age: now.saturating_sub(self.created),
            expires_in: self.expires.saturating_sub(now),
        }
    }
}

/// A flow's state after a packet of direction `dir` with TCP flags `flags` (ignored
/// for UDP); `fins`: FIN seen, bit 0 forward, bit 1 reply. Shared by the load
/// balancer's flows and the policy stage's (`tables/policy_flows.rs`).
#[inline]
pub(crate) fn advance(proto: L4Proto, state: &mut FlowState, fins: &mut u8, dir: Dir, flags: u8) {
    if proto != L4Proto::Tcp {
        return;
    }
    if flags & TCP_RST != 0 {
        *state = FlowState::Closing;
        return;
    }
    if flags & TCP_FIN != 0 {
        *fins |= 1 << (dir as u8);
        if *fins == 0b11 {
            *state = FlowState::Closing;
        }
    }
    if *state == FlowState::SynSent && dir == Dir::Reply && flags & TCP_ACK != 0 {
        *state = FlowState::Established;
    }
}

/// The timeout of a state.
pub(crate) const fn timeout(state: FlowState, t: &ConntrackTimeouts) -> Nanos {
    match state {
        FlowState::SynSent => t.tcp_syn,
        FlowState::Established => t.tcp_established,
        FlowState::Closing => t.tcp_closing,
        FlowState::Udp => t.udp,
    }
}

/// A tracked flow, for status output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowInfo {
    pub client: SocketAddrV4,
    /// ClusterIP and port; for a flow straight to a pod, tracked to remap its source
    /// port (see the module docs), the backend itself.
    pub vip: SocketAddrV4,
    pub backend: Backend,
    /// The source address the backend sees: the client, or the gateway for hairpin.
    pub nat_source: SocketAddrV4,
    pub proto: L4Proto,
    pub state: FlowState,
    /// Since the first packet.
    pub age: Nanos,
    /// Until it expires without more traffic.
    pub expires_in: Nanos,
}
