//! Shared fixtures of the criterion benchmarks in `benches/`: run settings (short
//! runs), groups counting one packet per iteration (so criterion's `elem/s` reads as
//! packets per second), and frame builders for the benches that drive the whole
//! pipeline. Frames are built once, outside the timing, with valid IPv4 and TCP
//! checksums, so the pipeline takes the same path as for real traffic.

use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use tapestry_dataplane::wire::checksum;
use tapestry_dataplane::wire::tcp::pseudo_header_sum;
use tapestry_dataplane::{MacAddr, VNET_HDR_LEN};

/// The time every bench passes as `now`: one second after start, far from any aging
/// or conntrack timeout, and never advanced (nothing expires during a run).
pub const NOW: u64 = 1_000_000_000;

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
/// IPv4 header length (no options).
pub const IP_LEN: usize = 20;
/// TCP header length (no options).
pub const TCP_LEN: usize = 20;
/// Offset of the IPv4 header in a frame as the TAP delivers it (virtio-net header first).
pub const IP_AT: usize = VNET_HDR_LEN + ETH_LEN;
/// Offset of the L4 header in such a frame.
pub const L4_AT: usize = IP_AT + IP_LEN;

/// TCP flags used by the benches.
pub const TCP_SYN: u8 = 0x02;
/// TCP ACK.
pub const TCP_ACK: u8 = 0x10;
/// TCP PSH.
pub const TCP_PSH: u8 = 0x08;

/// The benches' run settings: 30 samples, 0.5 s warm-up, 2 s measurement. Set on the
/// `Criterion` (`criterion_group!{ config = tapestry_benches::config(); .. }`) rather
/// than on each group, so that `--warm-up-time`, `--measurement-time` and
/// `--sample-size` on the command line still override them (criterion 0.5 lets
/// group-level settings win over the command line).
pub fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

/// A criterion group whose iterations count `throughput`.
pub fn group<'c>(
    c: &'c mut Criterion,
    name: &str,
    throughput: Throughput,
) -> BenchmarkGroup<'c, WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(throughput);
    g
}

/// [`group`] with one packet per iteration: criterion's `elem/s` is packets per second.
pub fn packet_group<'c>(c: &'c mut Criterion, name: &str) -> BenchmarkGroup<'c, WallTime> {
    group(c, name, Throughput::Elements(1))
}

/// A distinct locally administered unicast MAC per `i`: `0a:00:` + `i` as 32 bits.
pub fn mac(i: usize) -> MacAddr {
    let [_, _, _, _, a, b, c, d] = (i as u64).to_be_bytes();
    MacAddr::new(0x0a, 0x00, a, b, c, d)
}

/// A TCP segment's addresses, ports, flags and data length.
#[derive(Clone, Copy, Debug)]
pub struct Tcp {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    /// Bytes of data after the 20-byte TCP header.
    pub data_len: usize,
}

/// Zeroed virtio-net header + Ethernet (`src_mac` → `dst_mac`) + IPv4 + TCP as `seg`
/// says, TTL 64, DF, both checksums valid. The IPv4 packet is `40 + data_len` bytes.
pub fn tcp_frame(dst_mac: MacAddr, src_mac: MacAddr, seg: &Tcp) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&dst_mac.octets());
    f.extend_from_slice(&src_mac.octets());
    f.extend_from_slice(&[0x08, 0x00]);

    let total = u16::try_from(IP_LEN + TCP_LEN + seg.data_len).unwrap_or(u16::MAX);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, 6, 0, 0]);
    ip.extend_from_slice(&seg.src.octets());
    ip.extend_from_slice(&seg.dst.octets());
    let sum = checksum::checksum(&ip);
    put16(&mut ip, 10, sum);

    let mut tcp = Vec::with_capacity(TCP_LEN + seg.data_len);
    tcp.extend_from_slice(&seg.sport.to_be_bytes());
    tcp.extend_from_slice(&seg.dport.to_be_bytes());
    tcp.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // seq
    tcp.extend_from_slice(&0x0002_0000u32.to_be_bytes()); // ack
    tcp.extend_from_slice(&[0x50, seg.flags, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.resize(TCP_LEN + seg.data_len, 0x5a);
    let sum = !checksum::fold(checksum::accumulate(
        pseudo_header_sum(seg.src, seg.dst, 6, tcp.len()),
        &tcp,
    ));
    put16(&mut tcp, 16, sum);

    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

/// A VXLAN datagram (UDP payload) with VNI `vni` carrying the Ethernet frame of
/// `frame` (a frame as [`tcp_frame`] builds it: its virtio-net header is dropped).
pub fn vxlan_datagram(vni: u32, frame: &[u8]) -> Vec<u8> {
    let [_, a, b, c] = vni.to_be_bytes();
    let mut d = vec![0x08, 0, 0, 0, a, b, c, 0];
    d.extend_from_slice(frame.get(VNET_HDR_LEN..).unwrap_or(&[]));
    d
}

/// Rewrites the destination IP and TCP source port of a [`tcp_frame`] in place,
/// keeping both checksums valid (incremental update, RFC 1624).
pub fn retarget(frame: &mut [u8], dst: Ipv4Addr, sport: u16) {
    let old_dst = get32(frame, IP_AT + 16);
    let old_sport = get16(frame, L4_AT);
    let new_dst = u32::from(dst);
    put32(frame, IP_AT + 16, new_dst);
    put16(frame, L4_AT, sport);
    let ip_sum = checksum::update32(get16(frame, IP_AT + 10), old_dst, new_dst);
    put16(frame, IP_AT + 10, ip_sum);
    let tcp_sum = checksum::update32(get16(frame, L4_AT + 16), old_dst, new_dst);
    let tcp_sum = checksum::update16(tcp_sum, old_sport, sport);
    put16(frame, L4_AT + 16, tcp_sum);
}

/// Big-endian `u16` at `at` (0 if out of range).
pub fn get16(buf: &[u8], at: usize) -> u16 {
    match buf.get(at..at + 2) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

/// Big-endian `u32` at `at` (0 if out of range).
pub fn get32(buf: &[u8], at: usize) -> u32 {
    match buf.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// Writes a big-endian `u16` at `at` (nothing if out of range).
pub fn put16(buf: &mut [u8], at: usize, v: u16) {
    if let Some(d) = buf.get_mut(at..at + 2) {
        d.copy_from_slice(&v.to_be_bytes());
    }
}

/// Writes a big-endian `u32` at `at` (nothing if out of range).
pub fn put32(buf: &mut [u8], at: usize, v: u32) {
    if let Some(d) = buf.get_mut(at..at + 4) {
        d.copy_from_slice(&v.to_be_bytes());
    }
}

/// A small deterministic pseudo-random sequence (xorshift64*), to visit table entries
/// in an order the CPU cannot predict or prefetch.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A sequence from a non-zero seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// The next value below `n` (`n` > 0; 0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
        let n = n as u64;
        if n == 0 {
            0
        } else {
            usize::try_from(x % n).unwrap_or(0)
        }
    }
}
