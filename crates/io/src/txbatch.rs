//! Coalescing of single tunnel datagrams into UDP GSO sends.
//!
//! A 64-byte packet from a pod becomes one VXLAN datagram. Sent alone, each one
//! costs a `sendmsg` and, below it, one trip of its own through the underlay
//! (bridge, netfilter hooks, the peer's IP and UDP receive). Here consecutive
//! datagrams of one flow to one peer, gathered while the worker drains a batch
//! of frames, go out as one UDP GSO send: one system call and one skb for up to
//! 64 (`sys::UDP_GSO_MAX_SEGMENTS`) datagrams, which the peer's UDP GRO socket
//! receives as one message.
//!
//! UDP GSO cuts a buffer into equal segments, only the last may be shorter, so
//! a run holds datagrams of one length, closed by at most one shorter datagram.
//! Datagrams of one flow stay in order: a datagram that cannot join the open run
//! first sends that run. The worker sends whatever is open at the end of each
//! batch, so no datagram waits for a later wakeup.

use std::net::Ipv4Addr;

use crate::sys;

/// Bytes of staged datagrams before the open run is sent regardless.
pub const STAGE_LEN: usize = sys::UDP_GSO_MAX_BYTES;

/// One open run: datagrams for `peer` from the flow `flow_hash`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub peer: Ipv4Addr,
    pub flow_hash: u32,
    /// The length of every datagram but possibly the last.
    pub segment_len: usize,
    /// Datagrams staged.
    pub count: usize,
    /// A datagram shorter than `segment_len` ended the run.
    pub closed: bool,
}

/// What [`TxBatch::push`] did with a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// It is staged.
    Staged,
    /// It cannot join the open run: send that run ([`TxBatch::staged`]), clear,
    /// and push again.
    SendFirst,
    /// Empty, or longer than the stage (never one from the pipeline): send it alone.
    Unstageable,
}

/// Datagrams gathered for one GSO send.
pub struct TxBatch {
    buf: Vec<u8>,
    fill: usize,
    run: Option<Run>,
}

impl Default for TxBatch {
    fn default() -> Self {
        TxBatch::new()
    }
}

impl TxBatch {
    /// An empty batch; its buffer is allocated once, here.
    pub fn new() -> TxBatch {
        TxBatch {
            buf: vec![0; STAGE_LEN],
            fill: 0,
            run: None,
        }
    }

    /// True if `datagram` for `(peer, flow_hash)` can join the open run.
    fn fits(&self, peer: Ipv4Addr, flow_hash: u32, len: usize) -> bool {
        match self.run {
            None => true, // `push` checked the length against the stage
            Some(r) => {
                r.peer == peer
                    && r.flow_hash == flow_hash
                    && !r.closed
                    && len <= r.segment_len
                    && r.count < sys::UDP_GSO_MAX_SEGMENTS
                    && self.fill + len <= self.buf.len()
            }
        }
    }

    /// Stages one datagram for `(peer, flow_hash)`; see [`Push`].
    pub fn push(&mut self, peer: Ipv4Addr, flow_hash: u32, datagram: &[u8]) -> Push {
        let len = datagram.len();
        if len == 0 || len > self.buf.len() {
            return Push::Unstageable;
        }
        if !self.fits(peer, flow_hash, len) {
            return Push::SendFirst;
        }
        let Some(slot) = self.buf.get_mut(self.fill..self.fill + len) else {
            return Push::Unstageable;
        };
        slot.copy_from_slice(datagram);
        self.fill += len;
        self.run = Some(match self.run {
            None => Run {
                peer,
                flow_hash,
                segment_len: len,
                count: 1,
                closed: false,
            },
            Some(r) => Run {
                count: r.count + 1,
                closed: len < r.segment_len,
                ..r
            },
        });
        Push::Staged
    }

    /// The open run and its bytes, if any.
    pub fn staged(&self) -> Option<(Run, &[u8])> {
        let r = self.run?;
        Some((r, self.buf.get(..self.fill)?))
    }

    /// Forgets the open run (after it was sent).
    pub fn clear(&mut self) {
        self.fill = 0;
        self.run = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const P2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

    fn staged_run(b: &TxBatch) -> Run {
        b.staged().map(|(r, _)| r).expect("a run is open")
    }

    #[test]
    fn equal_datagrams_of_one_flow_join_one_run() {
        let mut b = TxBatch::new();
        for i in 0..10u8 {
            assert_eq!(b.push(P1, 7, &[i; 100]), Push::Staged);
        }
        let (run, bytes) = b.staged().expect("open");
        assert_eq!(run.count, 10);
        assert_eq!(run.segment_len, 100);
        assert_eq!(bytes.len(), 1000);
        assert_eq!(bytes.get(900), Some(&9));
    }

    #[test]
    fn a_shorter_datagram_closes_the_run() {
        let mut b = TxBatch::new();
        assert_eq!(b.push(P1, 7, &[1; 100]), Push::Staged);
        assert_eq!(b.push(P1, 7, &[2; 60]), Push::Staged);
        assert!(staged_run(&b).closed);
        // The next one must wait for the run to be sent.
        assert_eq!(b.push(P1, 7, &[3; 100]), Push::SendFirst);
        assert_eq!(staged_run(&b).count, 2);
        b.clear();
        assert_eq!(b.push(P1, 7, &[3; 100]), Push::Staged);
        assert_eq!(staged_run(&b).count, 1);
    }

    #[test]
    fn a_longer_datagram_another_flow_or_peer_starts_a_new_run() {
        let mut b = TxBatch::new();
        assert_eq!(b.push(P1, 7, &[1; 100]), Push::Staged);
        assert_eq!(b.push(P1, 7, &[1; 101]), Push::SendFirst);
        assert_eq!(b.push(P1, 8, &[1; 100]), Push::SendFirst);
        assert_eq!(b.push(P2, 7, &[1; 100]), Push::SendFirst);
        assert_eq!(staged_run(&b).count, 1);
    }

    #[test]
    fn a_run_stops_at_the_gso_segment_limit_and_the_stage_size() {
        let mut b = TxBatch::new();
        for _ in 0..sys::UDP_GSO_MAX_SEGMENTS {
            assert_eq!(b.push(P1, 7, &[0; 64]), Push::Staged);
        }
        assert_eq!(b.push(P1, 7, &[0; 64]), Push::SendFirst);
        b.clear();
        let big = vec![0u8; 1500];
        let fit = STAGE_LEN / 1500;
        for _ in 0..fit.min(sys::UDP_GSO_MAX_SEGMENTS) {
            assert_eq!(b.push(P1, 7, &big), Push::Staged);
        }
        assert_eq!(b.push(P1, 7, &big), Push::SendFirst);
    }

    #[test]
    fn empty_or_oversized_datagrams_are_refused() {
        let mut b = TxBatch::new();
        assert_eq!(b.push(P1, 7, &[]), Push::Unstageable);
        assert_eq!(b.push(P1, 7, &vec![0; STAGE_LEN + 1]), Push::Unstageable);
        assert!(b.staged().is_none());
    }
}
