//! Shared fixtures of the criterion benchmarks in `benches/`: run settings (short
//! runs), groups counting one packet per iteration (so criterion's `elem/s` reads as
//! packets per second), and frame builders for the benches that drive the whole
//! pipeline. Frames are built once, outside the timing, with etherparse's
//! `PacketBuilder` (valid lengths, IPv4 and TCP checksums), so the pipeline takes
//! the same path as for real traffic.

use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use etherparse::{IpHeaders, Ipv4Header, PacketBuilder, PacketBuilderStep, TcpHeader};
use tapestry_dataplane::wire::{checksum, VxlanPacket, VxlanRepr, VXLAN_HEADER_LEN};
use tapestry_dataplane::{Ipv4Cidr, MacAddr, VNET_HDR_LEN};

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

/// The IPv4 headers of every bench frame: `src` → `dst`, identification `ident`,
/// DF, TTL 64, no options (etherparse fills in the length, protocol and checksum).
pub fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, ident: u16) -> IpHeaders {
    let mut h = Ipv4Header {
        identification: ident,
        dont_fragment: true,
        time_to_live: 64,
        source: src.octets(),
        destination: dst.octets(),
        ..Ipv4Header::default()
    };
    h.header_checksum = h.calc_header_checksum();
    IpHeaders::Ipv4(h, Default::default())
}

/// etherparse's builder for Ethernet (`src_mac` → `dst_mac`) and the IPv4 header of
/// [`ipv4_header`]; the caller adds the transport header and writes.
pub fn eth_ipv4(
    dst_mac: MacAddr,
    src_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ident: u16,
) -> PacketBuilderStep<IpHeaders> {
    PacketBuilder::ethernet2(src_mac.octets(), dst_mac.octets()).ip(ipv4_header(src, dst, ident))
}

/// A frame as the TAP delivers it: the virtio-net header `vnet`, then what `write`
/// (an etherparse builder's `write`) appends. Panics if the builder refuses.
pub fn tap_frame<E: std::fmt::Display>(
    vnet: [u8; VNET_HDR_LEN],
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Vec<u8> {
    let mut f = vnet.to_vec();
    write(&mut f).unwrap_or_else(|e| panic!("building a bench frame: {e}"));
    f
}

/// A TCP header: ports, sequence and acknowledgment numbers, the flags byte
/// (`TCP_*`) and the window.
pub fn tcp_header(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, window: u16) -> TcpHeader {
    let mut t = TcpHeader::new(sport, dport, seq, window);
    t.acknowledgment_number = ack;
    let bit = |b: u8| flags & b != 0;
    (t.fin, t.syn, t.rst, t.psh) = (bit(0x01), bit(TCP_SYN), bit(0x04), bit(TCP_PSH));
    (t.ack, t.urg, t.ece, t.cwr) = (bit(TCP_ACK), bit(0x20), bit(0x40), bit(0x80));
    t
}

/// Zeroed virtio-net header + Ethernet (`src_mac` → `dst_mac`) + IPv4 + TCP as `seg`
/// says, TTL 64, DF, both checksums valid. The IPv4 packet is `40 + data_len` bytes.
pub fn tcp_frame(dst_mac: MacAddr, src_mac: MacAddr, seg: &Tcp) -> Vec<u8> {
    tcp_frame_seq(dst_mac, src_mac, seg, 0x0001_0000)
}

/// [`tcp_frame`] with sequence number `seq` (acknowledgment 0x0002_0000, window
/// 0xffff, data bytes 0x5a).
pub fn tcp_frame_seq(dst_mac: MacAddr, src_mac: MacAddr, seg: &Tcp, seq: u32) -> Vec<u8> {
    let tcp = tcp_header(seg.sport, seg.dport, seq, 0x0002_0000, seg.flags, 0xffff);
    let data = vec![0x5a; seg.data_len];
    tap_frame([0; VNET_HDR_LEN], |f| {
        eth_ipv4(dst_mac, src_mac, seg.src, seg.dst, 0x1234)
            .tcp_header(tcp)
            .write(f, &data)
    })
}

/// A VXLAN datagram (UDP payload) with VNI `vni` carrying the Ethernet frame of
/// `frame` (a frame as [`tcp_frame`] builds it: its virtio-net header is dropped).
/// The VXLAN header is emitted by the data plane's own `VxlanRepr` (neither
/// etherparse nor smoltcp has one).
pub fn vxlan_datagram(vni: u32, frame: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; VXLAN_HEADER_LEN];
    VxlanRepr { vni }.emit(&mut VxlanPacket::new_unchecked(&mut d[..]));
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

/// The network `addr/len` (setup only: panics on a bad prefix).
pub fn cidr(addr: Ipv4Addr, len: u8) -> Ipv4Cidr {
    Ipv4Cidr::new(addr, len).unwrap_or_else(|| panic!("bad bench CIDR {addr}/{len}"))
}

/// The node of the load-balancer benches (`lb`, `reconcile`): on 10.244.1.0/24, a
/// client pod on port 1 and three backend pods on ports 2 to 4.
pub mod lb_node {
    use std::net::Ipv4Addr;
    use std::sync::Arc;

    use tapestry_dataplane::{
        Affinity, Backend, L4Proto, MacAddr, Pipeline, PipelineConfig, PortId, PortRole,
        ServiceEntry, ServiceTable,
    };

    pub const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
    pub const GW_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01);
    pub const CLIENT: PortId = PortId(1);
    pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    pub const CLIENT_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02);

    /// The ClusterIP of service `i`: 10.96.x.y.
    pub fn vip(i: usize) -> Ipv4Addr {
        let [_, _, a, b] = u32::try_from(i).unwrap_or(0).to_be_bytes();
        Ipv4Addr::new(10, 96, a, b)
    }

    /// Backend pod `k` (0 to 2).
    pub fn backend_ip(k: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, 1, 10 + k)
    }

    /// The node with its four pods and no service.
    pub fn node() -> Pipeline {
        let subnet = super::cidr(Ipv4Addr::new(10, 244, 1, 0), 24);
        let mut p = Pipeline::new(PipelineConfig::new(GW_IP, GW_MAC, subnet));
        let client = PortRole::Pod {
            mac: CLIENT_MAC,
            ip: CLIENT_IP,
        };
        p.add_port(CLIENT, client);
        for k in 0..3u8 {
            let mac = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x01, 10 + k);
            let ip = backend_ip(k);
            p.add_port(PortId(2 + u16::from(k)), PortRole::Pod { mac, ip });
        }
        p
    }

    /// `n` services `vip(i):port/proto`, each over the three backends' `target`.
    pub fn services(n: usize, port: u16, proto: L4Proto, target: u16) -> Vec<ServiceEntry> {
        (0..n)
            .map(|i| ServiceEntry {
                name: format!("default/svc-{i}:{port}"),
                vip: vip(i),
                port,
                proto,
                backends: (0..3)
                    .map(|k| Backend {
                        ip: backend_ip(k),
                        port: target,
                    })
                    .collect(),
                affinity: Affinity::None,
            })
            .collect()
    }

    /// The table of `entries` (setup only: panics if it cannot be built).
    pub fn table(entries: Vec<ServiceEntry>) -> Arc<ServiceTable> {
        Arc::new(ServiceTable::build(entries).unwrap_or_else(|e| panic!("bench table: {e}")))
    }
}
