//! Software GRO: receive coalescing of decapsulated TCP segments before they are
//! written to a pod's TAP.
//!
//! In full: docs/dataplane.md, "Software GRO".

use core::net::Ipv4Addr;

use crate::types::PortId;
use crate::wire::tcp::{
    pseudo_header_partial, TCP_ACK, TCP_CWR, TCP_ECE, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG,
};
use crate::wire::{
    EtherType, EthernetFrame, IpProtocol, Ipv4Packet, TcpPacket, VnetHdr, VnetHdrRepr,
    ETHERNET_HEADER_LEN, IPV4_MIN_HEADER_LEN, TCP_MIN_HEADER_LEN, VNET_HDR_F_DATA_VALID,
    VNET_HDR_F_NEEDS_CSUM, VNET_HDR_GSO_NONE, VNET_HDR_GSO_TCPV4, VNET_HDR_LEN,
};

/// The largest merged IP packet: the IPv4 total length field's maximum.
pub const GRO_MAX: usize = 65_535;

/// Bytes of one slot: a virtio-net header, an Ethernet header and a maximal IP packet.
const SLOT_LEN: usize = VNET_HDR_LEN + ETHERNET_HEADER_LEN + GRO_MAX;

/// Offset of the Ethernet header in a frame as pushed.
const ETH_AT: usize = VNET_HDR_LEN;
/// Offset of the IPv4 header.
const IP_AT: usize = ETH_AT + ETHERNET_HEADER_LEN;
/// Offset of the TCP header (coalescible frames have no IP options).
const TCP_AT: usize = IP_AT + IPV4_MIN_HEADER_LEN;
/// `csum_start` of a merged frame: the TCP header, counted from the Ethernet header.
const CSUM_START: u16 = 34;
/// `csum_offset` of a merged frame: the TCP checksum field.
const CSUM_OFFSET: u16 = 16;

/// TCP flags that make a segment uncoalescible (Linux flushes on them too; ECE/CWR
/// would need the GSO ECN bit, so such segments are simply not merged).
const TCP_NO_MERGE: u8 = TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_ECE | TCP_CWR;

/// IPv4 addresses and TCP ports: what decides which held frame a segment belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlowKey {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
}

/// A frame that may be merged, as read from its checked views.
#[derive(Clone, Copy, Debug)]
struct Segment {
    key: FlowKey,
    seq: u32,
    flags: u8,
    /// TCP header length, options included.
    tcp_hlen: usize,
    /// Offset of the payload in the frame.
    payload_at: usize,
    /// Offset of the end of the IP packet in the frame (any Ethernet padding follows).
    ip_end: usize,
}

impl Segment {
    fn payload_len(&self) -> usize {
        self.ip_end.saturating_sub(self.payload_at)
    }
}

/// What a pushed frame is, for the coalescer.
#[derive(Clone, Copy, Debug)]
enum Class {
    /// Mergeable.
    Segment(Segment),
    /// IPv4 TCP but not mergeable: goes out now, after the held frames of its flow.
    /// The ports are `None` for a fragment (its TCP header may be elsewhere), which then
    /// matches every held frame between the two addresses.
    Tcp {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ports: Option<(u16, u16)>,
    },
    /// Anything else (not TCP, or unparsable): goes out now, unchanged.
    Other,
}

/// Reads `frame` (virtio-net header + Ethernet + IPv4 + TCP) through checked views.
fn classify(frame: &[u8]) -> Class {
    let Ok(vnet) = VnetHdr::new_checked(frame) else {
        return Class::Other;
    };
    let Ok(eth) = EthernetFrame::new_checked(frame.get(ETH_AT..).unwrap_or(&[])) else {
        return Class::Other;
    };
    if eth.ethertype() != EtherType::Ipv4 {
        return Class::Other;
    }
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
        return Class::Other;
    };
    if ip.protocol() != IpProtocol::Tcp {
        return Class::Other;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if ip.is_fragment() {
        return Class::Tcp {
            src,
            dst,
            ports: None,
        };
    }
    let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
        return Class::Tcp {
            src,
            dst,
            ports: None,
        };
    };
    let key = FlowKey {
        src,
        dst,
        src_port: tcp.src_port(),
        dst_port: tcp.dst_port(),
    };
    let flags = tcp.flags();
    let mergeable = vnet.flags() == VNET_HDR_F_DATA_VALID
        && vnet.gso_type_raw() == VNET_HDR_GSO_NONE
        && ip.header_len() == IPV4_MIN_HEADER_LEN
        && flags & TCP_ACK != 0
        && flags & TCP_NO_MERGE == 0
        && !tcp.payload().is_empty();
    if !mergeable {
        return Class::Tcp {
            src,
            dst,
            ports: Some((key.src_port, key.dst_port)),
        };
    }
    let tcp_hlen = tcp.header_len();
    let ip_end = IP_AT + usize::from(ip.total_len());
    Class::Segment(Segment {
        key,
        seq: tcp.seq_number(),
        flags,
        tcp_hlen,
        payload_at: TCP_AT + tcp_hlen,
        ip_end,
    })
}

/// One held frame.
struct Slot {
    /// [`SLOT_LEN`] bytes, allocated once.
    buf: Box<[u8]>,
    /// Bytes of the held frame in `buf`; 0 when the slot is free.
    len: usize,
    port: PortId,
    key: FlowKey,
    /// Segments merged so far (1: the frame is still exactly as it came).
    segs: usize,
    /// Payload length of the first segment: every merged segment but the last has it.
    mss: usize,
    /// Sequence number the next segment must carry.
    next_seq: u32,
    tcp_hlen: usize,
    /// End of the IP packet in `buf` (where the next payload goes).
    ip_end: usize,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            buf: vec![0u8; SLOT_LEN].into_boxed_slice(),
            len: 0,
            port: PortId(0),
            key: FlowKey {
                src: Ipv4Addr::UNSPECIFIED,
                dst: Ipv4Addr::UNSPECIFIED,
                src_port: 0,
                dst_port: 0,
            },
            segs: 0,
            mss: 0,
            next_seq: 0,
            tcp_hlen: 0,
            ip_end: 0,
        }
    }

    /// Copies `frame` in as a new held frame. `false` (slot unchanged) if it does not fit.
    fn hold(&mut self, port: PortId, frame: &[u8], seg: &Segment) -> bool {
        let Some(dst) = self.buf.get_mut(..frame.len()) else {
            return false;
        };
        dst.copy_from_slice(frame);
        let mss = seg.payload_len();
        self.len = frame.len();
        self.port = port;
        self.key = seg.key;
        self.segs = 1;
        self.mss = mss;
        self.next_seq = seg.seq.wrapping_add(u32::try_from(mss).unwrap_or(0));
        self.tcp_hlen = seg.tcp_hlen;
        self.ip_end = seg.ip_end;
        true
    }

    /// `true` if `seg` (of `frame`, same port and flow) may be appended: same
    /// addresses, TOS, TTL, DF, ack, window and TCP options, in order, within the MSS
    /// and [`GRO_MAX`].
    fn can_extend(&self, frame: &[u8], seg: &Segment) -> bool {
        let held = self.buf.get(..self.len).unwrap_or(&[]);
        let payload = seg.payload_len();
        let ip_len = self.ip_end.saturating_sub(IP_AT);
        if seg.seq != self.next_seq
            || payload > self.mss
            || ip_len + payload > GRO_MAX
            || seg.tcp_hlen != self.tcp_hlen
        {
            return false;
        }
        let macs = ETH_AT..ETH_AT + 12;
        if held.get(macs.clone()) != frame.get(macs) {
            return false;
        }
        let hip = Ipv4Packet::new_unchecked(held.get(IP_AT..).unwrap_or(&[]));
        let nip = Ipv4Packet::new_unchecked(frame.get(IP_AT..).unwrap_or(&[]));
        if hip.dscp_ecn() != nip.dscp_ecn()
            || hip.ttl() != nip.ttl()
            || hip.dont_frag() != nip.dont_frag()
        {
            return false;
        }
        let htcp = TcpPacket::new_unchecked(held.get(TCP_AT..).unwrap_or(&[]));
        let ntcp = TcpPacket::new_unchecked(frame.get(TCP_AT..).unwrap_or(&[]));
        htcp.ack_number() == ntcp.ack_number()
            && htcp.window() == ntcp.window()
            && htcp.header().get(TCP_MIN_HEADER_LEN..) == ntcp.header().get(TCP_MIN_HEADER_LEN..)
    }

    /// Appends the payload of `seg` (checked by [`Slot::can_extend`]). Returns `true`
    /// if the merge must end here: PSH, a short segment, or no room for another
    /// full-sized one.
    fn extend(&mut self, frame: &[u8], seg: &Segment) -> bool {
        let payload = frame.get(seg.payload_at..seg.ip_end).unwrap_or(&[]);
        let end = self.ip_end + payload.len();
        let Some(dst) = self.buf.get_mut(self.ip_end..end) else {
            // Unreachable after `can_extend` (GRO_MAX bounds `end`); end the merge.
            return true;
        };
        dst.copy_from_slice(payload);
        self.ip_end = end;
        // Any Ethernet padding of the first frame is gone: the frame ends with the IP
        // packet now.
        self.len = end;
        self.segs += 1;
        self.next_seq = self
            .next_seq
            .wrapping_add(u32::try_from(payload.len()).unwrap_or(0));
        if seg.flags & TCP_PSH != 0 {
            let mut tcp = TcpPacket::new_unchecked(self.buf.get_mut(TCP_AT..).unwrap_or(&mut []));
            let flags = tcp.flags();
            tcp.set_flags(flags | TCP_PSH);
            return true;
        }
        payload.len() < self.mss || end - IP_AT + self.mss > GRO_MAX
    }

    /// Rewrites the headers of a merged frame (see the module docs). A frame that
    /// never merged is left as it came.
    fn finish(&mut self) {
        if self.segs < 2 {
            return;
        }
        let ip_len = self.ip_end.saturating_sub(IP_AT);
        let tcp_len = ip_len.saturating_sub(IPV4_MIN_HEADER_LEN);
        let hdr = VnetHdrRepr {
            flags: VNET_HDR_F_NEEDS_CSUM,
            gso_type: VNET_HDR_GSO_TCPV4,
            hdr_len: u16::try_from(ETHERNET_HEADER_LEN + IPV4_MIN_HEADER_LEN + self.tcp_hlen)
                .unwrap_or(u16::MAX),
            gso_size: u16::try_from(self.mss).unwrap_or(u16::MAX),
            csum_start: CSUM_START,
            csum_offset: CSUM_OFFSET,
        };
        hdr.emit(&mut VnetHdr::new_unchecked(&mut *self.buf));
        let mut ip =
            Ipv4Packet::new_unchecked(self.buf.get_mut(IP_AT..self.ip_end).unwrap_or(&mut []));
        // `can_extend` keeps ip_len <= GRO_MAX, so this always fits.
        ip.set_total_len(u16::try_from(ip_len).unwrap_or(u16::MAX));
        ip.fill_checksum();
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let mut tcp =
            TcpPacket::new_unchecked(self.buf.get_mut(TCP_AT..self.ip_end).unwrap_or(&mut []));
        tcp.set_checksum(pseudo_header_partial(src, dst, 6, tcp_len));
    }

    /// Finishes the held frame, emits it and frees the slot.
    fn emit(&mut self, emit: &mut dyn FnMut(PortId, &[u8])) {
        self.finish();
        emit(self.port, self.buf.get(..self.len).unwrap_or(&[]));
        self.len = 0;
        self.segs = 0;
    }
}

/// Receive coalescing for one I/O worker. See the module docs.
pub struct Coalescer {
    slots: Vec<Slot>,
    /// Indices of occupied slots, oldest first (capacity `max_flows`: never grows).
    order: Vec<usize>,
}

impl Coalescer {
    /// `max_flows`: frames held at once (e.g. 8), each in a preallocated buffer of
    /// `VNET_HDR_LEN + 14 + GRO_MAX` bytes. With 0, every frame is emitted at once.
    pub fn new(max_flows: usize) -> Coalescer {
        Coalescer {
            slots: (0..max_flows).map(|_| Slot::new()).collect(),
            order: Vec::with_capacity(max_flows),
        }
    }

    /// Offer one frame bound for `port`: `frame` = virtio-net header (`VNET_HDR_LEN`
    /// bytes) + Ethernet + IPv4 + TCP, as built by the pipeline for local delivery
    /// (`Action::ToPort`). Whatever must go out now is passed, in order, to
    /// `emit(port, bytes)`: a held frame this one cannot extend (first), and this frame
    /// itself when it is not coalescible (not IPv4/TCP, a fragment, IP options,
    /// SYN/FIN/RST/URG/ECE/CWR, no payload, no `DATA_VALID`, GSO already, …).
    /// Coalescible frames are copied into a slot and not emitted yet.
    pub fn push(&mut self, port: PortId, frame: &[u8], emit: &mut dyn FnMut(PortId, &[u8])) {
        match classify(frame) {
            Class::Segment(seg) => self.push_segment(port, frame, &seg, emit),
            Class::Tcp { src, dst, ports } => {
                self.flush_where(emit, |s| {
                    s.port == port
                        && s.key.src == src
                        && s.key.dst == dst
                        && match ports {
                            Some(p) => p == (s.key.src_port, s.key.dst_port),
                            None => true,
                        }
                });
                emit(port, frame);
            }
            Class::Other => emit(port, frame),
        }
    }

    /// Emits every held frame, oldest first. Call it at the end of each receive batch,
    /// before sleeping. A held frame that never merged is emitted exactly as it came.
    pub fn flush(&mut self, emit: &mut dyn FnMut(PortId, &[u8])) {
        for &i in &self.order {
            if let Some(slot) = self.slots.get_mut(i) {
                slot.emit(emit);
            }
        }
        self.order.clear();
    }

    /// Frames held now.
    pub fn held(&self) -> usize {
        self.order.len()
    }

    fn push_segment(
        &mut self,
        port: PortId,
        frame: &[u8],
        seg: &Segment,
        emit: &mut dyn FnMut(PortId, &[u8]),
    ) {
        let found = self.order.iter().position(|&i| {
            self.slots
                .get(i)
                .is_some_and(|s| s.port == port && s.key == seg.key)
        });
        if let Some(pos) = found {
            let i = self.order.get(pos).copied().unwrap_or(usize::MAX);
            if let Some(slot) = self.slots.get_mut(i) {
                if slot.can_extend(frame, seg) {
                    if slot.extend(frame, seg) {
                        slot.emit(emit);
                        self.order.remove(pos);
                    }
                    return;
                }
                slot.emit(emit);
            }
            self.order.remove(pos);
        }
        // A PSH segment ends a merge it starts: nothing to wait for.
        if seg.flags & TCP_PSH != 0 {
            emit(port, frame);
            return;
        }
        if self.order.len() == self.slots.len() && !self.order.is_empty() {
            let oldest = self.order.remove(0);
            if let Some(slot) = self.slots.get_mut(oldest) {
                slot.emit(emit);
            }
        }
        let free = self.slots.iter().position(|s| s.len == 0);
        let held = free.is_some_and(|i| {
            self.slots
                .get_mut(i)
                .is_some_and(|slot| slot.hold(port, frame, seg))
        });
        match free {
            Some(i) if held => self.order.push(i),
            _ => emit(port, frame),
        }
    }

    /// Emits (oldest first) and frees every held frame for which `pred` holds.
    fn flush_where(&mut self, emit: &mut dyn FnMut(PortId, &[u8]), pred: impl Fn(&Slot) -> bool) {
        let slots = &mut self.slots;
        self.order.retain(|&i| match slots.get_mut(i) {
            Some(slot) if pred(slot) => {
                slot.emit(emit);
                false
            }
            _ => true,
        });
    }
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::cast_possible_truncation
)]
mod tests {
    use super::*;
    use crate::wire::checksum;
    use crate::wire::VNET_HDR_F_DATA_VALID;
    use proptest::prelude::*;

    const POD: PortId = PortId(3);
    const OTHER_POD: PortId = PortId(4);
    const SRC: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
    /// The payload of a full segment: a 1,450-byte inner MTU minus 20 (IP) and 32 (TCP
    /// with timestamps).
    const MSS: usize = 1398;
    const HDRS: usize = TCP_AT + 32;

    /// One decapsulated segment as the pipeline hands it to a pod port, headers only:
    /// virtio-net header with DATA_VALID; Ethernet gateway 0a:58:0a:f4:02:01 → pod
    /// 0a:58:0a:f4:02:02; IPv4 10.244.1.2 → 10.244.2.2, ident 0x1234, DF, TTL 63
    /// (total length and checksum filled by `segment`); TCP 40000 → 5201, seq
    /// 0x01000000, ack 0x02000000, data offset 8, ACK, window 501, options NOP NOP
    /// timestamps(0x11223344, 0x55667788).
    static HEADER_BYTES: [u8; HDRS] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x02, 0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x01, 0x08, 0x00, //
        0x45, 0x00, 0x00, 0x00, 0x12, 0x34, 0x40, 0x00, 0x3f, 0x06, 0x00, 0x00, 10, 244, 1, 2, 10,
        244, 2, 2, //
        0x9c, 0x40, 0x14, 0x51, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x80, 0x10, 0x01,
        0xf5, 0x00, 0x00, 0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66,
        0x77, 0x88,
    ];
    const SEQ0: u32 = 0x0100_0000;

    /// The byte at stream offset `off` of flow `flow`: merged payloads can be checked
    /// for order.
    fn pattern(flow: u16, off: usize) -> u8 {
        (off % 251) as u8 ^ (flow as u8).wrapping_mul(0x35)
    }

    /// A segment of flow `flow` (source port 40000 + flow) at stream offset `off`
    /// carrying `len` bytes, with `flags`, both checksums valid.
    fn segment(flow: u16, off: usize, len: usize, flags: u8) -> Vec<u8> {
        let mut f = HEADER_BYTES.to_vec();
        f.extend((off..off + len).map(|o| pattern(flow, o)));
        let total = u16::try_from(f.len() - IP_AT).unwrap();
        f[IP_AT + 2..IP_AT + 4].copy_from_slice(&total.to_be_bytes());
        Ipv4Packet::new_unchecked(&mut f[IP_AT..]).fill_checksum();
        let mut tcp = TcpPacket::new_unchecked(&mut f[TCP_AT..]);
        tcp.set_src_port(40_000 + flow);
        tcp.set_seq_number(SEQ0.wrapping_add(off as u32));
        tcp.set_flags(flags);
        let sum = checksum::accumulate(
            crate::wire::tcp::pseudo_header_sum(SRC, DST, 6, f.len() - TCP_AT),
            &f[TCP_AT..],
        );
        f[TCP_AT + 16..TCP_AT + 18].copy_from_slice(&(!checksum::fold(sum)).to_be_bytes());
        f
    }

    fn full(flow: u16, i: usize) -> Vec<u8> {
        segment(flow, i * MSS, MSS, TCP_ACK)
    }

    /// Pushes every frame and collects what is emitted (after a final flush if
    /// `flush`).
    fn run(c: &mut Coalescer, frames: &[(PortId, Vec<u8>)], flush: bool) -> Vec<(PortId, Vec<u8>)> {
        let mut out = Vec::new();
        let mut emit = |p: PortId, b: &[u8]| out.push((p, b.to_vec()));
        for (port, f) in frames {
            c.push(*port, f, &mut emit);
        }
        if flush {
            c.flush(&mut emit);
        }
        out
    }

    fn on_pod(frames: impl IntoIterator<Item = Vec<u8>>) -> Vec<(PortId, Vec<u8>)> {
        frames.into_iter().map(|f| (POD, f)).collect()
    }

    /// Checks a merged frame of flow `flow` holding `len` payload bytes from stream
    /// offset `off`, in segments of `MSS`; returns the TCP flags.
    fn check_merged(frame: &[u8], flow: u16, off: usize, len: usize) -> u8 {
        let vnet = VnetHdr::new_checked(frame).unwrap();
        assert_eq!(vnet.flags(), VNET_HDR_F_NEEDS_CSUM);
        assert_eq!(vnet.gso_type_raw(), VNET_HDR_GSO_TCPV4);
        assert_eq!(usize::from(vnet.hdr_len()), 14 + 20 + 32);
        assert_eq!(usize::from(vnet.gso_size()), MSS);
        assert_eq!(vnet.csum_start(), 34);
        assert_eq!(vnet.csum_offset(), 16);
        let ip = Ipv4Packet::new_checked(&frame[IP_AT..]).unwrap();
        assert_eq!(frame.len(), HDRS + len);
        assert_eq!(usize::from(ip.total_len()), 20 + 32 + len);
        assert!(ip.verify_checksum());
        assert_eq!(
            &frame[ETH_AT..IP_AT + 2],
            &segment(flow, off, 0, 0)[ETH_AT..IP_AT + 2]
        );
        let tcp = TcpPacket::new_checked(&frame[TCP_AT..]).unwrap();
        assert_eq!(tcp.src_port(), 40_000 + flow);
        assert_eq!(tcp.seq_number(), SEQ0.wrapping_add(off as u32));
        assert_eq!(
            tcp.checksum(),
            pseudo_header_partial(SRC, DST, 6, 32 + len),
            "partial checksum for the merged length"
        );
        let expect: Vec<u8> = (off..off + len).map(|o| pattern(flow, o)).collect();
        assert!(
            tcp.payload() == &expect[..],
            "payload concatenated in order"
        );
        // What the kernel would do if it had to: sum from csum_start, fold, store.
        let mut done = frame[TCP_AT..].to_vec();
        let sum = !checksum::fold(checksum::accumulate(0, &done));
        done[16..18].copy_from_slice(&sum.to_be_bytes());
        assert!(TcpPacket::new_unchecked(&done[..]).verify_checksum(SRC, DST));
        tcp.flags()
    }

    #[test]
    fn fixture_segment_is_valid() {
        let f = full(0, 0);
        assert_eq!(f.len(), VNET_HDR_LEN + 14 + 1450);
        let ip = Ipv4Packet::new_checked(&f[IP_AT..]).unwrap();
        assert!(ip.verify_checksum());
        let tcp = TcpPacket::new_checked(&f[TCP_AT..]).unwrap();
        assert!(tcp.verify_checksum(SRC, DST));
        assert_eq!(tcp.header_len(), 32);
        assert!(matches!(classify(&f), Class::Segment(s) if s.payload_len() == MSS));
    }

    #[test]
    fn consecutive_segments_merge_into_one_gso_frame() {
        for n in [2, 3, 45] {
            let mut c = Coalescer::new(8);
            let out = run(&mut c, &on_pod((0..n).map(|i| full(0, i))), false);
            assert!(out.is_empty(), "held until flush");
            assert_eq!(c.held(), 1);
            let out = run(&mut c, &[], true);
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].0, POD);
            let flags = check_merged(&out[0].1, 0, 0, n * MSS);
            assert_eq!(flags, TCP_ACK);
            assert_eq!(c.held(), 0);
        }
    }

    /// Two 4-byte segments merged, pinned byte for byte. Expected checksums computed
    /// independently: IP header with total length 60 → 0x109d; pseudo-header 0af4 0102
    /// 0af4 0202 0006 0028 → partial 0x191a.
    #[test]
    fn small_merge_pinned() {
        let mut c = Coalescer::new(1);
        // Two 4-byte segments are "full" relative to each other (MSS 4).
        let a = segment(0, 0, 4, TCP_ACK);
        let b = segment(0, 4, 4, TCP_ACK);
        let out = run(&mut c, &on_pod([a, b]), true);
        assert_eq!(out.len(), 1);
        let mut expect = HEADER_BYTES.to_vec();
        expect[..VNET_HDR_LEN].copy_from_slice(&[0x01, 0x01, 66, 0, 4, 0, 34, 0, 16, 0]);
        expect[IP_AT + 2..IP_AT + 4].copy_from_slice(&[0, 60]);
        expect[IP_AT + 10..IP_AT + 12].copy_from_slice(&[0x10, 0x9d]);
        expect[TCP_AT + 16..TCP_AT + 18].copy_from_slice(&[0x19, 0x1a]);
        expect.extend((0..8).map(|o| pattern(0, o)));
        assert_eq!(out[0].1, expect);
    }

    #[test]
    fn gap_or_reorder_flushes_then_holds_the_new_one() {
        let mut c = Coalescer::new(8);
        // 0, 1, then 3 (gap): 0+1 out, 3 held.
        let out = run(&mut c, &on_pod([full(0, 0), full(0, 1), full(0, 3)]), false);
        assert_eq!(out.len(), 1);
        check_merged(&out[0].1, 0, 0, 2 * MSS);
        assert_eq!(c.held(), 1);
        // 2 (old, out of order): 3 goes out as it came, 2 is held.
        let out = run(&mut c, &on_pod([full(0, 2)]), false);
        assert_eq!(out, on_pod([full(0, 3)]));
        let out = run(&mut c, &[], true);
        assert_eq!(out, on_pod([full(0, 2)]));
        // A retransmission of the held segment's own sequence number.
        let out = run(&mut c, &on_pod([full(0, 5), full(0, 5)]), true);
        assert_eq!(out, on_pod([full(0, 5), full(0, 5)]));
    }

    #[test]
    fn interleaved_flows_merge_separately() {
        let mut c = Coalescer::new(2);
        let frames = on_pod([full(1, 0), full(2, 0), full(1, 1), full(2, 1)]);
        let out = run(&mut c, &frames, true);
        assert_eq!(out.len(), 2);
        check_merged(&out[0].1, 1, 0, 2 * MSS);
        check_merged(&out[1].1, 2, 0, 2 * MSS);
        // The same flow to two ports is two flows.
        let frames = vec![
            (POD, full(0, 0)),
            (OTHER_POD, full(0, 0)),
            (POD, full(0, 1)),
        ];
        let out = run(&mut c, &frames, true);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, POD);
        check_merged(&out[0].1, 0, 0, 2 * MSS);
        assert_eq!(out[1], (OTHER_POD, full(0, 0)));
    }

    #[test]
    fn control_segments_pass_after_their_flow_is_flushed() {
        for flags in [
            TCP_SYN,
            TCP_SYN | TCP_ACK,
            TCP_FIN | TCP_ACK,
            TCP_RST,
            TCP_RST | TCP_ACK,
        ] {
            let mut c = Coalescer::new(4);
            let ctl = segment(0, 2 * MSS, 0, flags);
            let frames = on_pod([full(0, 0), full(0, 1), full(7, 0), ctl.clone()]);
            let out = run(&mut c, &frames, false);
            assert_eq!(out.len(), 2, "flags {flags:#x}");
            check_merged(&out[0].1, 0, 0, 2 * MSS);
            assert_eq!(out[1], (POD, ctl));
            assert_eq!(c.held(), 1, "the other flow stays held");
        }
        // FIN with data, URG, ECE, CWR, pure ACK: also straight through.
        for f in [
            segment(0, 0, 10, TCP_FIN | TCP_ACK),
            segment(0, 0, 10, TCP_URG | TCP_ACK),
            segment(0, 0, 10, TCP_ECE | TCP_ACK),
            segment(0, 0, 10, TCP_CWR | TCP_ACK),
            segment(0, 0, 10, 0),
            segment(0, 0, 0, TCP_ACK),
        ] {
            let mut c = Coalescer::new(4);
            assert_eq!(run(&mut c, &on_pod([f.clone()]), false), on_pod([f]));
        }
    }

    #[test]
    fn short_last_segment_merges_and_ends_the_merge() {
        let mut c = Coalescer::new(8);
        let frames = on_pod([full(0, 0), full(0, 1), segment(0, 2 * MSS, 100, TCP_ACK)]);
        let out = run(&mut c, &frames, false);
        assert_eq!(out.len(), 1, "emitted without waiting for the flush");
        check_merged(&out[0].1, 0, 0, 2 * MSS + 100);
        assert_eq!(c.held(), 0);
        // A longer segment cannot follow a short first one: flush, hold it.
        let frames = on_pod([segment(0, 0, 100, TCP_ACK), segment(0, 100, MSS, TCP_ACK)]);
        let out = run(&mut c, &frames, true);
        assert_eq!(out, frames);
    }

    #[test]
    fn psh_merges_and_ends_the_merge() {
        let mut c = Coalescer::new(8);
        let frames = on_pod([full(0, 0), segment(0, MSS, MSS, TCP_ACK | TCP_PSH)]);
        let out = run(&mut c, &frames, false);
        assert_eq!(out.len(), 1);
        assert_eq!(check_merged(&out[0].1, 0, 0, 2 * MSS), TCP_ACK | TCP_PSH);
        assert_eq!(c.held(), 0);
        // A PSH segment with nothing to join goes straight out.
        let lone = segment(0, 0, 100, TCP_ACK | TCP_PSH);
        assert_eq!(run(&mut c, &on_pod([lone.clone()]), false), on_pod([lone]));
    }

    #[test]
    fn gro_max_is_never_exceeded() {
        let mut c = Coalescer::new(8);
        // 46 × 1,398 + 52 = 64,412 bytes; a 47th full segment would not fit, so the
        // frame goes out as soon as the 46th joins.
        let out = run(&mut c, &on_pod((0..46).map(|i| full(0, i))), false);
        assert_eq!(out.len(), 1);
        check_merged(&out[0].1, 0, 0, 46 * MSS);
        let out = run(&mut c, &on_pod((46..50).map(|i| full(0, i))), true);
        assert_eq!(out.len(), 1);
        check_merged(&out[0].1, 0, 46 * MSS, 4 * MSS);
        // Segments of 10,000 bytes: six fit (60,052), the seventh would not.
        let big = |i: usize| segment(0, i * 10_000, 10_000, TCP_ACK);
        let out = run(&mut c, &on_pod((0..7).map(big)), false);
        assert_eq!(out.len(), 1);
        let ip = Ipv4Packet::new_checked(&out[0].1[IP_AT..]).unwrap();
        assert_eq!(usize::from(ip.total_len()), 52 + 60_000);
        assert!(usize::from(ip.total_len()) <= GRO_MAX);
        assert_eq!(c.held(), 1);
    }

    #[test]
    fn oldest_held_frame_makes_room() {
        let mut c = Coalescer::new(2);
        let out = run(&mut c, &on_pod([full(1, 0), full(1, 1), full(2, 0)]), false);
        assert!(out.is_empty());
        let out = run(&mut c, &on_pod([full(3, 0)]), false);
        assert_eq!(out.len(), 1);
        check_merged(&out[0].1, 1, 0, 2 * MSS);
        assert_eq!(c.held(), 2);
        let out = run(&mut c, &on_pod([full(3, 1)]), true);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], (POD, full(2, 0)));
        check_merged(&out[1].1, 3, 0, 2 * MSS);
        // No slots at all: everything passes straight through.
        let mut none = Coalescer::new(0);
        let frames = on_pod([full(1, 0), full(1, 1)]);
        assert_eq!(run(&mut none, &frames, false), frames);
    }

    #[test]
    fn lone_held_frame_is_emitted_unchanged() {
        let mut c = Coalescer::new(8);
        let f = full(0, 0);
        assert!(run(&mut c, &on_pod([f.clone()]), false).is_empty());
        assert_eq!(run(&mut c, &[], true), on_pod([f]));
        // With Ethernet padding after the IP packet: kept as it came, dropped on merge.
        let mut padded = segment(0, 0, 2, TCP_ACK);
        padded.extend_from_slice(&[0xee; 6]);
        let out = run(&mut c, &on_pod([padded.clone()]), true);
        assert_eq!(out, on_pod([padded.clone()]));
        let out = run(&mut c, &on_pod([padded, segment(0, 2, 2, TCP_ACK)]), true);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.len(), HDRS + 4);
        assert_eq!(
            &out[0].1[HDRS..],
            &[pattern(0, 0), pattern(0, 1), pattern(0, 2), pattern(0, 3)]
        );
    }

    #[test]
    fn mismatched_headers_do_not_merge() {
        type Edit = (&'static str, fn(&mut Vec<u8>));
        let edits: [Edit; 9] = [
            ("dst mac", |f| f[ETH_AT] ^= 0x80),
            ("tos", |f| f[IP_AT + 1] = 0x02),
            ("ttl", |f| f[IP_AT + 8] = 62),
            ("df", |f| f[IP_AT + 6] = 0),
            ("ack", |f| f[TCP_AT + 11] = 1),
            ("window", |f| f[TCP_AT + 15] = 0),
            ("timestamp", |f| f[TCP_AT + 27] = 0x45),
            ("vnet flags", |f| f[0] = 0),
            ("gso", |f| f[1] = VNET_HDR_GSO_TCPV4),
        ];
        for (what, edit) in edits {
            let mut c = Coalescer::new(8);
            let mut second = full(0, 1);
            edit(&mut second);
            let frames = on_pod([full(0, 0), second]);
            let out = run(&mut c, &frames, true);
            assert_eq!(out, frames, "{what}");
        }
    }

    #[test]
    fn non_tcp_and_odd_ip_pass_through_unchanged() {
        let mut udp = full(0, 0);
        udp[IP_AT + 9] = 17;
        let mut arp = full(0, 0);
        arp[ETH_AT + 13] = 0x06;
        let mut options = segment(0, 0, 100, TCP_ACK);
        options[IP_AT] = 0x46; // 4 bytes of IP options
        let mut frag = full(0, 0);
        frag[IP_AT + 6] = 0x20; // MF
        let mut later_frag = full(0, 0);
        later_frag[IP_AT + 7] = 0xb9; // offset 1480
        for f in [udp, arp, options, frag, later_frag] {
            let mut c = Coalescer::new(8);
            assert_eq!(run(&mut c, &on_pod([f.clone()]), false), on_pod([f]));
            assert_eq!(c.held(), 0);
        }
        // A fragment of a held flow's addresses flushes it first; UDP does not.
        let mut c = Coalescer::new(8);
        let mut frag = full(0, 0);
        frag[IP_AT + 6] = 0x20;
        let mut udp = full(0, 5);
        udp[IP_AT + 9] = 17;
        let out = run(
            &mut c,
            &on_pod([full(0, 0), udp.clone(), frag.clone()]),
            false,
        );
        assert_eq!(out, on_pod([udp, full(0, 0), frag]));
    }

    #[test]
    fn truncated_frames_pass_through_unchanged() {
        let f = full(0, 0);
        let mut c = Coalescer::new(2);
        for len in 0..f.len() {
            let out = run(&mut c, &on_pod([f[..len].to_vec()]), false);
            assert_eq!(out, on_pod([f[..len].to_vec()]), "len {len}");
        }
        assert_eq!(c.held(), 0);
    }

    fn any_frame() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            // A valid segment with a few bytes overwritten.
            (
                0u16..3,
                0usize..4,
                0usize..1500,
                prop::collection::vec((0usize..HDRS + 8, any::<u8>()), 0..4)
            )
                .prop_map(|(flow, i, len, edits)| {
                    let mut f = segment(flow, i * MSS, len, TCP_ACK);
                    for (at, v) in edits {
                        if let Some(b) = f.get_mut(at) {
                            *b = v;
                        }
                    }
                    f
                }),
        ]
    }

    /// One step of a stream: which flow, and what its next segment looks like.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Full,
        Short(usize),
        Psh,
        Gap,
        Ctl(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => Just(Step::Full),
            1 => (1usize..MSS).prop_map(Step::Short),
            1 => Just(Step::Psh),
            1 => Just(Step::Gap),
            1 => prop_oneof![Just(TCP_ACK), Just(TCP_FIN | TCP_ACK), Just(TCP_RST)]
                .prop_map(Step::Ctl),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        #[test]
        fn never_panics_and_emits_everything(
            frames in prop::collection::vec((0u16..3, any_frame()), 1..20),
            slots in 0usize..4,
        ) {
            let mut c = Coalescer::new(slots);
            let frames: Vec<_> = frames.into_iter().map(|(p, f)| (PortId(p), f)).collect();
            let out = run(&mut c, &frames, true);
            prop_assert_eq!(c.held(), 0);
            prop_assert!(out.len() <= frames.len());
            for (_, f) in &out {
                prop_assert!(f.len() <= SLOT_LEN);
            }
        }

        /// Per flow, the emitted payload bytes are the pushed ones in the same order:
        /// coalescing never drops, duplicates or reorders within a flow. Merged frames
        /// are valid GSO frames within GRO_MAX.
        #[test]
        fn flows_keep_their_bytes_in_order(
            steps in prop::collection::vec((0u16..3, step()), 1..120),
            slots in 1usize..4,
        ) {
            let mut c = Coalescer::new(slots);
            let mut next = [0usize; 3];
            let mut sent: [Vec<u8>; 3] = Default::default();
            let mut frames = Vec::new();
            for (flow, s) in steps {
                let at = next[usize::from(flow)];
                let (f, len) = match s {
                    Step::Full => (segment(flow, at, MSS, TCP_ACK), MSS),
                    Step::Short(n) => (segment(flow, at, n, TCP_ACK), n),
                    Step::Psh => (segment(flow, at, 500, TCP_ACK | TCP_PSH), 500),
                    Step::Gap => (segment(flow, at + 7, MSS, TCP_ACK), MSS + 7),
                    Step::Ctl(flags) => (segment(flow, at, 0, flags), 0),
                };
                let payload = &f[HDRS..];
                sent[usize::from(flow)].extend_from_slice(payload);
                next[usize::from(flow)] = at + len;
                frames.push((POD, f));
            }
            let out = run(&mut c, &frames, true);
            let mut got: [Vec<u8>; 3] = Default::default();
            for (port, f) in &out {
                prop_assert_eq!(*port, POD);
                let ip = Ipv4Packet::new_checked(&f[IP_AT..]).unwrap();
                prop_assert!(ip.verify_checksum());
                prop_assert!(usize::from(ip.total_len()) <= GRO_MAX);
                let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
                let flow = tcp.src_port() - 40_000;
                let vnet = VnetHdr::new_checked(&f[..]).unwrap();
                if vnet.gso_type_raw() == VNET_HDR_GSO_TCPV4 {
                    prop_assert_eq!(
                        tcp.checksum(),
                        pseudo_header_partial(SRC, DST, 6, ip.payload().len())
                    );
                } else {
                    prop_assert_eq!(vnet.flags(), VNET_HDR_F_DATA_VALID);
                    prop_assert!(tcp.verify_checksum(SRC, DST));
                }
                got[usize::from(flow)].extend_from_slice(tcp.payload());
            }
            prop_assert_eq!(got, sent);
        }
    }
}
