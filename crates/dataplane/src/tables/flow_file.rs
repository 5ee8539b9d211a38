//! The flow file: the load balancer's connection table mirrored, flow by flow, into
//! memory that outlives the process, so that an agent killed with `-9` starts again
//! with every flow it tracked (docs/architecture.md, "Restarts without loss").
//!
//! The memory is a shared mapping of a file on the agent's state directory (tmpfs in
//! the lab: `io::flowfile`); here it is only bytes ([`FlowMemory`]), so the layout,
//! its checks and the restore are pure and tested with a `Vec<u8>`.
//!
//! Layout (little endian), fixed for a given [`FLOW_FILE_VERSION`]:
//!
//! ```text
//! header, 64 bytes: magic "TPSTFLOW" | version u32 | record length u32 | capacity u64
//!                   | checksum of the 24 bytes before u64 | high-water mark u64 | 0…
//! records, capacity × 64 bytes: record i mirrors the table's dense flow i
//!   0..8   checksum of bytes 8..64 (fmix64 chain)
//!   8      1 = in use (an all-zero record is an empty slot)
//!   9      protocol number (6, 17)     10  state (0 SynSent … 3 Udp)   11  FINs seen
//!   12..18 client ip, port   18..24 ClusterIP, port   24..30 backend ip, port
//!   30..36 NAT source ip, port   36  kind (0 service, 1 direct)   37..64 zero
//! ```
//!
//! The packet thread writes a record when a flow is inserted or changes state and
//! clears one when a flow goes: plain stores into the mapping, no system call, no
//! lock, no allocation. The kernel keeps the pages when the process dies. What is
//! not kept: a flow's timestamps (a restored flow gets a fresh timeout for its
//! state, as if it had just seen a packet) and the service generation it was last
//! confirmed at (restored flows are confirmed against the first table published,
//! and those whose backend left are dropped then). A record torn by a kill in the
//! middle of its write fails its checksum and is skipped (that one flow is lost);
//! a flow briefly in two records (while a removal moves the last record into the
//! hole) is restored once.

use core::net::Ipv4Addr;

use super::flow::{clamp_capacity, timeout, ConntrackTimeouts, Flow, FlowKind, FlowState};
use crate::hash::fmix64;
use crate::types::{Backend, L4Proto, Nanos};

/// The file's first bytes.
pub const FLOW_FILE_MAGIC: [u8; 8] = *b"TPSTFLOW";
/// Layout version; a file of another version is moved aside, never read.
pub const FLOW_FILE_VERSION: u32 = 1;
/// Bytes per record.
pub const FLOW_RECORD_LEN: usize = 64;
/// Bytes of the header.
pub const FLOW_FILE_HEADER_LEN: usize = 64;

const HWM_AT: usize = 32;
const RECORD_LEN_U32: u32 = 64;
/// Checksum seeds ("hdr", "rec"), so a header never checks as a record.
const HEADER_SEED: u64 = 0x0068_6472;
const RECORD_SEED: u64 = 0x0072_6563;
const USED: u8 = 1;

/// Memory the connection table is mirrored into: a mapped file in the agent, a
/// `Vec<u8>` in tests. [`flow_file_len`] bytes, initialised by [`init_flow_file`].
pub trait FlowMemory: Send {
    /// The whole region, header included.
    fn bytes(&mut self) -> &mut [u8];
}

impl FlowMemory for Vec<u8> {
    fn bytes(&mut self) -> &mut [u8] {
        self
    }
}

/// Why a flow file's header cannot be trusted: the file is moved aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlowFileError {
    #[error("{got} bytes, expected {want}")]
    Length { got: usize, want: usize },
    #[error("no flow file magic")]
    Magic,
    #[error("version {0}, this agent reads version {FLOW_FILE_VERSION}")]
    Version(u32),
    #[error("record length {0}, expected {FLOW_RECORD_LEN}")]
    RecordLen(u32),
    #[error("capacity {got}, this agent's table holds {want}")]
    Capacity { got: u64, want: u64 },
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("high-water mark {0} beyond the capacity")]
    HighWater(u64),
}

/// The bytes a flow file for a table of `capacity` flows takes (the capacity as
/// `Conntrack::new` clamps it).
pub fn flow_file_len(capacity: usize) -> usize {
    FLOW_FILE_HEADER_LEN + clamp_capacity(capacity) * FLOW_RECORD_LEN
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        w.copy_from_slice(s);
    }
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    if let Some(s) = b.get_mut(at..at + v.len()) {
        s.copy_from_slice(v);
    }
}

/// A checksum of `bytes` (a multiple of 8 long): an fmix64 chain, seeded.
fn checksum(seed: u64, bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(fmix64(seed), |h, c| {
        fmix64(h ^ u64_at(c, 0)).rotate_left(17)
    })
}

/// Writes an empty file's header into `mem` (all of it zeroed first).
pub fn init_flow_file(mem: &mut [u8], capacity: usize) {
    mem.fill(0);
    let capacity = clamp_capacity(capacity) as u64;
    put(mem, 0, &FLOW_FILE_MAGIC);
    put(mem, 8, &FLOW_FILE_VERSION.to_le_bytes());
    put(mem, 12, &RECORD_LEN_U32.to_le_bytes());
    put(mem, 16, &capacity.to_le_bytes());
    let sum = checksum(HEADER_SEED, mem.get(..24).unwrap_or(&[]));
    put(mem, 24, &sum.to_le_bytes());
}

/// Checks a flow file's header for a table of `capacity` flows.
pub fn check_flow_file(mem: &[u8], capacity: usize) -> Result<(), FlowFileError> {
    let want = flow_file_len(capacity);
    if mem.len() != want {
        return Err(FlowFileError::Length {
            got: mem.len(),
            want,
        });
    }
    if mem.get(..8) != Some(&FLOW_FILE_MAGIC[..]) {
        return Err(FlowFileError::Magic);
    }
    let sum = checksum(HEADER_SEED, mem.get(..24).unwrap_or(&[]));
    if u64_at(mem, 24) != sum {
        return Err(FlowFileError::HeaderChecksum);
    }
    let version = u32_at(mem, 8);
    if version != FLOW_FILE_VERSION {
        return Err(FlowFileError::Version(version));
    }
    let rec = u32_at(mem, 12);
    if rec != RECORD_LEN_U32 {
        return Err(FlowFileError::RecordLen(rec));
    }
    let cap = clamp_capacity(capacity) as u64;
    let got = u64_at(mem, 16);
    if got != cap {
        return Err(FlowFileError::Capacity { got, want: cap });
    }
    let hwm = u64_at(mem, HWM_AT);
    if hwm > cap {
        return Err(FlowFileError::HighWater(hwm));
    }
    Ok(())
}

/// Why one record was not restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadRecord {
    /// Torn or corrupt: its checksum does not match.
    Checksum,
    /// Checksummed but meaningless (protocol, state, ports, addresses).
    Insane,
}

fn state_code(s: FlowState) -> u8 {
    match s {
        FlowState::SynSent => 0,
        FlowState::Established => 1,
        FlowState::Closing => 2,
        FlowState::Udp => 3,
    }
}

fn encode(flow: &Flow) -> [u8; FLOW_RECORD_LEN] {
    let mut r = [0u8; FLOW_RECORD_LEN];
    let kind = match flow.kind {
        FlowKind::Service => 0,
        FlowKind::Direct => 1,
    };
    let head = [USED, flow.proto.number(), state_code(flow.state), flow.fins];
    put(&mut r, 8, &head);
    let mut at = 12;
    for (ip, port) in [
        flow.client,
        flow.vip,
        (flow.backend.ip, flow.backend.port),
        flow.nat,
    ] {
        put(&mut r, at, &ip.octets());
        put(&mut r, at + 4, &port.to_le_bytes());
        at += 6;
    }
    put(&mut r, 36, &[kind]);
    let sum = checksum(RECORD_SEED, r.get(8..).unwrap_or(&[]));
    put(&mut r, 0, &sum.to_le_bytes());
    r
}

/// The flow a record holds, `Ok(None)` for an empty slot. Timestamps are fresh
/// (`now`, and the timeout of its state); the generation is 0 (unconfirmed).
pub(crate) fn decode(
    r: &[u8],
    now: Nanos,
    t: &ConntrackTimeouts,
) -> Result<Option<Flow>, BadRecord> {
    if r.len() != FLOW_RECORD_LEN {
        return Err(BadRecord::Insane);
    }
    if r.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    if u64_at(r, 0) != checksum(RECORD_SEED, r.get(8..).unwrap_or(&[])) {
        return Err(BadRecord::Checksum);
    }
    let byte = |i: usize| r.get(i).copied().unwrap_or(0);
    let endpoint = |at: usize| {
        let ip = Ipv4Addr::from(u32_at(r, at).to_le_bytes());
        let port = u16::from_le_bytes([byte(at + 4), byte(at + 5)]);
        (ip, port)
    };
    let proto = match byte(9) {
        6 => L4Proto::Tcp,
        17 => L4Proto::Udp,
        _ => return Err(BadRecord::Insane),
    };
    let state = match (proto, byte(10)) {
        (L4Proto::Tcp, 0) => FlowState::SynSent,
        (L4Proto::Tcp, 1) => FlowState::Established,
        (L4Proto::Tcp, 2) => FlowState::Closing,
        (L4Proto::Udp, 3) => FlowState::Udp,
        _ => return Err(BadRecord::Insane),
    };
    let (client, vip, (bip, bport), nat) = (endpoint(12), endpoint(18), endpoint(24), endpoint(30));
    let unspecified = |ip: Ipv4Addr| ip.is_unspecified() || ip.is_broadcast();
    let kind = match byte(36) {
        0 => FlowKind::Service,
        1 => FlowKind::Direct,
        _ => return Err(BadRecord::Insane),
    };
    if byte(8) != USED
        || byte(11) > 0b11
        || r.get(37..).is_some_and(|rest| rest.iter().any(|b| *b != 0))
        || [client, vip, (bip, bport), nat]
            .iter()
            .any(|(ip, port)| *port == 0 || unspecified(*ip))
    {
        return Err(BadRecord::Insane);
    }
    Ok(Some(Flow {
        client,
        vip,
        backend: Backend {
            ip: bip,
            port: bport,
        },
        nat,
        proto,
        kind,
        state,
        fins: byte(11),
        created: now,
        expires: now.saturating_add(timeout(state, t)),
        generation: 0,
    }))
}

/// The connection table's mirror: see the module docs.
pub(crate) struct Mirror {
    mem: Box<dyn FlowMemory>,
    /// Records `0..hwm` may be in use (as stored in the header).
    hwm: usize,
}

impl core::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mirror").field("hwm", &self.hwm).finish()
    }
}

impl Mirror {
    /// A mirror over `mem`, whose header was checked; `hwm` as stored.
    pub(crate) fn new(mut mem: Box<dyn FlowMemory>) -> Mirror {
        let hwm = usize::try_from(u64_at(mem.bytes(), HWM_AT)).unwrap_or(0);
        Mirror { mem, hwm }
    }

    /// The memory, as last written.
    pub(crate) fn into_memory(self) -> Box<dyn FlowMemory> {
        self.mem
    }

    /// The records up to the high-water mark (to restore from).
    pub(crate) fn records(&mut self) -> impl Iterator<Item = &[u8]> + '_ {
        let end = FLOW_FILE_HEADER_LEN + self.hwm * FLOW_RECORD_LEN;
        self.mem
            .bytes()
            .get(FLOW_FILE_HEADER_LEN..end)
            .unwrap_or(&[])
            .chunks(FLOW_RECORD_LEN)
    }

    fn set_hwm(&mut self, hwm: usize) {
        self.hwm = hwm;
        put(self.mem.bytes(), HWM_AT, &(hwm as u64).to_le_bytes());
    }

    /// Writes flow `f`'s record.
    #[inline]
    pub(crate) fn store(&mut self, f: usize, flow: &Flow) {
        if f >= self.hwm {
            // The mark first: a record past it would never be read.
            self.set_hwm(f + 1);
        }
        let at = FLOW_FILE_HEADER_LEN + f * FLOW_RECORD_LEN;
        put(self.mem.bytes(), at, &encode(flow));
    }

    /// Empties record `f`.
    #[inline]
    pub(crate) fn clear(&mut self, f: usize) {
        let at = FLOW_FILE_HEADER_LEN + f * FLOW_RECORD_LEN;
        put(self.mem.bytes(), at, &[0u8; FLOW_RECORD_LEN]);
    }

    /// After a restore into `len` flows (records `0..len` rewritten): empties the
    /// records from `len` to the old mark and lowers the mark.
    pub(crate) fn truncate(&mut self, len: usize) {
        for f in len..self.hwm {
            self.clear(f);
        }
        self.set_hwm(len);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        Flow {
            client: (Ipv4Addr::new(10, 244, 1, 2), 40_000),
            vip: (Ipv4Addr::new(10, 96, 0, 20), 80),
            backend: Backend {
                ip: Ipv4Addr::new(10, 244, 2, 3),
                port: 8080,
            },
            nat: (Ipv4Addr::new(10, 244, 1, 2), 40_000),
            proto: L4Proto::Tcp,
            kind: FlowKind::Service,
            state: FlowState::Established,
            fins: 1,
            created: 5,
            expires: 10,
            generation: 7,
        }
    }

    #[test]
    fn a_record_round_trips_with_fresh_timestamps() {
        let t = ConntrackTimeouts::default();
        let r = encode(&flow());
        let back = decode(&r, 100, &t).unwrap().unwrap();
        let want = Flow {
            created: 100,
            expires: 100 + t.tcp_established,
            generation: 0,
            ..flow()
        };
        assert_eq!(back, want);
        assert_eq!(decode(&[0u8; 64], 0, &t), Ok(None), "an empty slot");
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum_and_nonsense_is_refused() {
        let t = ConntrackTimeouts::default();
        for bit in 0..(FLOW_RECORD_LEN * 8) {
            let mut r = encode(&flow());
            r[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&r, 0, &t).is_err(), "bit {bit}");
        }
        // Checksummed but meaningless: UDP with a TCP state, port 0.
        let mut f = flow();
        f.proto = L4Proto::Udp;
        assert_eq!(decode(&encode(&f), 0, &t), Err(BadRecord::Insane));
        let mut f = flow();
        f.backend.port = 0;
        assert_eq!(decode(&encode(&f), 0, &t), Err(BadRecord::Insane));
    }

    #[test]
    fn header_checks() {
        let cap = 16;
        let mut mem = vec![0u8; flow_file_len(cap)];
        init_flow_file(&mut mem, cap);
        assert_eq!(check_flow_file(&mem, cap), Ok(()));
        assert_eq!(
            check_flow_file(&mem[..mem.len() - 1], cap),
            Err(FlowFileError::Length {
                got: mem.len() - 1,
                want: mem.len()
            })
        );
        assert!(matches!(
            check_flow_file(&mem, 32),
            Err(FlowFileError::Length { .. })
        ));
        let mut other = mem.clone();
        other[0] = b'X';
        assert_eq!(check_flow_file(&other, cap), Err(FlowFileError::Magic));
        let mut other = mem.clone();
        other[8] = 2; // version 2, checksum not updated
        assert_eq!(
            check_flow_file(&other, cap),
            Err(FlowFileError::HeaderChecksum)
        );
        // A consistent header of another version.
        let mut other = mem.clone();
        other[8] = 2;
        let sum = checksum(HEADER_SEED, &other[..24]);
        other[24..32].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(check_flow_file(&other, cap), Err(FlowFileError::Version(2)));
        let mut other = mem.clone();
        other[HWM_AT] = 17;
        assert_eq!(
            check_flow_file(&other, cap),
            Err(FlowFileError::HighWater(17))
        );
    }
}
