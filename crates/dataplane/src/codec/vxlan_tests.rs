//! Tests of encapsulation, software TSO, fragmentation and checksum completion over
//! byte-array packets, each output re-parsed and its checksums recomputed.

#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::cast_possible_truncation
)]

use super::*;
use crate::hash::{flow_hash, flow_hash_of};
use crate::wire::tcp::{TCP_ACK, TCP_ECE};
use core::net::Ipv4Addr;

const SRC: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const DST: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 3);
const OUR_VTEP: MacAddr = MacAddr::new(0x0a, 0x58, 0xc6, 0x12, 0x00, 0x01);
const PEER_VTEP: MacAddr = MacAddr::new(0x0a, 0x58, 0xc6, 0x12, 0x00, 0x02);
const ENC: Encap = Encap {
    vni: 1,
    src_mac: OUR_VTEP,
    dst_mac: PEER_VTEP,
};

/// An IPv4 header (with `options`) around `l4`, valid header checksum: ECN 2,
/// identification 0xabcd, TTL 63, DF, MF and offset from `flags_frag` (built by
/// etherparse).
fn ipv4(proto: u8, flags_frag: u16, options: &[u8], l4: &[u8]) -> Vec<u8> {
    let mut h = etherparse::Ipv4Header {
        ecn: etherparse::IpEcn::try_new(2).unwrap(),
        identification: 0xabcd,
        dont_fragment: flags_frag & 0x4000 != 0,
        more_fragments: flags_frag & 0x2000 != 0,
        fragment_offset: etherparse::IpFragOffset::try_new(flags_frag & 0x1fff).unwrap(),
        time_to_live: 63,
        protocol: etherparse::IpNumber(proto),
        source: SRC.octets(),
        destination: DST.octets(),
        options: options.try_into().unwrap(),
        ..Default::default()
    };
    h.set_payload_len(l4.len()).unwrap();
    h.header_checksum = h.calc_header_checksum();
    let mut p = h.to_bytes().to_vec();
    p.extend_from_slice(l4);
    p
}

/// A TCP segment, 32-byte header (timestamps option), seq `seq`, `flags`, checksum
/// left partial (pseudo-header sum only) as a TSO frame from a TAP has it (the
/// header from etherparse).
fn tcp(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    use etherparse::TcpOptionElement::{Noop, Timestamp};
    let mut t = etherparse::TcpHeader::new(40_000, 5201, seq, 0x01f5);
    t.acknowledgment_number = 0x1111_2222;
    [t.fin, t.syn, t.rst, t.psh, t.ack, t.urg, t.ece, t.cwr] =
        core::array::from_fn(|i| flags & (1 << i) != 0);
    t.set_options(&[Noop, Noop, Timestamp(1, 2)]).unwrap();
    let len = t.header_len() + payload.len();
    t.checksum = checksum::fold(pseudo_header_sum(SRC, DST, 6, len));
    let mut seg = t.to_bytes().to_vec();
    seg.extend_from_slice(payload);
    seg
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Splits a run into datagrams using the equal-size-but-last layout.
fn datagrams(out: &[u8], d: Datagrams) -> Vec<&[u8]> {
    let v: Vec<&[u8]> = out[..d.len].chunks(d.segment_len).collect();
    assert_eq!(v.len(), d.count);
    v
}

/// Checks the VXLAN + inner Ethernet prefix and returns the inner IPv4 packet.
fn inner(dgram: &[u8]) -> &[u8] {
    assert_eq!(&dgram[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0], "VXLAN header");
    assert_eq!(&dgram[8..14], &PEER_VTEP.0, "inner dst = peer VTEP");
    assert_eq!(&dgram[14..20], &OUR_VTEP.0, "inner src = our VTEP");
    assert_eq!(&dgram[20..22], &[0x08, 0x00]);
    &dgram[22..]
}

#[test]
fn encapsulates_one_packet() {
    let ip = ipv4(17, 0x4000, &[], &[7u8; 1400]);
    let mut out = vec![0u8; 4096];
    let d = encapsulate(&ENC, &ip, &mut out).unwrap();
    assert_eq!(
        d,
        Datagrams {
            len: 22 + 1420,
            segment_len: 22 + 1420,
            count: 1
        }
    );
    assert_eq!(inner(&out[..d.len]), &ip[..]);
    let mut small = vec![0u8; 22 + 1419];
    assert_eq!(
        encapsulate(&ENC, &ip, &mut small),
        Err(DropReason::ReplyTooLarge)
    );
}

#[test]
fn software_tso_of_64k() {
    let mss = 1398;
    let payload = pattern(65_483 - 20 - 32);
    let flags = TCP_ACK | TCP_PSH | TCP_FIN | TCP_CWR | TCP_ECE;
    let ip = ipv4(6, 0x4000, &[], &tcp(0xffff_f000, flags, &payload));
    assert_eq!(ip.len(), 65_483);
    let mut out = vec![0u8; 256 * 1024];
    let d = segment_tcp(&ENC, &ip, mss, &mut out).unwrap();
    let n = payload.len().div_ceil(mss);
    assert_eq!(d.count, n);
    assert_eq!(d.segment_len, 22 + 20 + 32 + mss);
    assert_eq!(d.len, n * (22 + 52) + payload.len());
    let mut joined = Vec::new();
    for (k, dg) in datagrams(&out, d).into_iter().enumerate() {
        let last = k + 1 == n;
        if !last {
            assert_eq!(dg.len(), d.segment_len, "all but the last the same size");
        }
        let p = Ipv4Packet::new_checked(inner(dg)).unwrap();
        assert!(p.verify_checksum(), "IPv4 checksum of segment {k}");
        assert_eq!(usize::from(p.total_len()), dg.len() - 22);
        assert_eq!(p.ident(), 0xabcdu16.wrapping_add(k as u16));
        assert!(p.dont_frag());
        assert_eq!(p.ttl(), 63);
        assert_eq!(p.dscp_ecn(), 0x02);
        let t = TcpPacket::new_checked(p.payload()).unwrap();
        assert!(t.verify_checksum(SRC, DST), "TCP checksum of segment {k}");
        assert_eq!(
            t.seq_number(),
            0xffff_f000u32.wrapping_add((k * mss) as u32)
        );
        assert_eq!(t.header_len(), 32, "options replicated");
        assert_eq!(t.header()[20..], tcp(0, 0, &[])[20..32]);
        let f = t.flags();
        assert_eq!(f & TCP_ACK, TCP_ACK);
        assert_eq!(f & TCP_ECE, TCP_ECE);
        assert_eq!(f & (TCP_FIN | TCP_PSH) != 0, last, "FIN/PSH only last");
        assert_eq!(f & TCP_CWR != 0, k == 0, "CWR only first");
        if !last {
            assert_eq!(t.payload().len(), mss);
        }
        joined.extend_from_slice(t.payload());
    }
    assert_eq!(joined, payload);
}

#[test]
fn tso_edge_cases() {
    let mut out = vec![0u8; 8192];
    // Payload an exact multiple of the MSS: every datagram the same size.
    let ip = ipv4(6, 0x4000, &[], &tcp(1, TCP_ACK, &pattern(3000)));
    let d = segment_tcp(&ENC, &ip, 1000, &mut out).unwrap();
    assert_eq!((d.count, d.len), (3, 3 * d.segment_len));
    // No payload at all (a pure ACK that still came as GSO): one segment.
    let ip = ipv4(6, 0x4000, &[], &tcp(1, TCP_ACK, &[]));
    let d = segment_tcp(&ENC, &ip, 1000, &mut out).unwrap();
    assert_eq!((d.count, d.len), (1, 22 + 52));
    let p = Ipv4Packet::new_checked(inner(&out[..d.len])).unwrap();
    assert!(TcpPacket::new_checked(p.payload())
        .unwrap()
        .verify_checksum(SRC, DST));
    // Not TCP, a fragment, a truncated TCP header, or too little room.
    let udp = ipv4(17, 0, &[], &[0; 100]);
    assert_eq!(
        segment_tcp(&ENC, &udp, 10, &mut out),
        Err(DropReason::UnsupportedGso)
    );
    let frag = ipv4(6, 0x2000, &[], &tcp(1, TCP_ACK, &[1; 64]));
    assert_eq!(
        segment_tcp(&ENC, &frag, 10, &mut out),
        Err(DropReason::UnsupportedGso)
    );
    let short = ipv4(6, 0, &[], &[0; 10]);
    assert_eq!(
        segment_tcp(&ENC, &short, 10, &mut out),
        Err(DropReason::Truncated)
    );
    let big = ipv4(6, 0x4000, &[], &tcp(1, TCP_ACK, &pattern(8000)));
    assert_eq!(
        segment_tcp(&ENC, &big, 100, &mut out),
        Err(DropReason::ReplyTooLarge)
    );
}

#[test]
fn fragments_are_equal_sized_and_reassemble() {
    let payload = pattern(4000);
    let ip = ipv4(17, 0, &[], &payload);
    let mut out = vec![0u8; 8192];
    let mtu = 1450;
    let d = fragment(&ENC, &ip, mtu, &mut out).unwrap();
    let chunk = (mtu - 20) / 8 * 8; // 1424
    assert_eq!(d.count, 3);
    assert_eq!(d.segment_len, 22 + 20 + chunk);
    let mut joined = vec![0u8; payload.len()];
    for (k, dg) in datagrams(&out, d).into_iter().enumerate() {
        let p = Ipv4Packet::new_checked(inner(dg)).unwrap();
        assert!(p.verify_checksum());
        assert!(usize::from(p.total_len()) <= mtu);
        assert_eq!(p.ident(), 0xabcd, "one datagram, one identification");
        assert_eq!(usize::from(p.frag_offset()), k * chunk);
        assert_eq!(p.more_frags(), k < 2);
        assert!(!p.dont_frag());
        let off = usize::from(p.frag_offset());
        joined[off..off + p.payload().len()].copy_from_slice(p.payload());
    }
    assert_eq!(joined, payload);
}

#[test]
fn refragmenting_a_fragment_keeps_offsets_and_mf() {
    // A middle fragment (MF, offset 800) of 2000 bytes, cut at MTU 1020.
    let payload = pattern(2000);
    let ip = ipv4(17, 0x2000 | 100, &[], &payload);
    let mut out = vec![0u8; 8192];
    let d = fragment(&ENC, &ip, 1020, &mut out).unwrap();
    assert_eq!(d.count, 2);
    for (k, dg) in datagrams(&out, d).into_iter().enumerate() {
        let p = Ipv4Packet::new_checked(inner(dg)).unwrap();
        assert_eq!(usize::from(p.frag_offset()), 800 + k * 1000);
        assert!(p.more_frags(), "the original MF survives on the last piece");
    }
}

#[test]
fn fragment_options_keep_header_length() {
    // Record Route (7, not copied) then Security-ish copied option 0x82 len 4, EOL pad.
    let opts = [7, 7, 4, 0, 0, 0, 0, 0x82, 4, 0xaa, 0xbb, 0];
    let ip = ipv4(17, 0, &opts, &pattern(3000));
    let mut out = vec![0u8; 8192];
    let d = fragment(&ENC, &ip, 1000, &mut out).unwrap();
    let dgs = datagrams(&out, d);
    let first = Ipv4Packet::new_checked(inner(dgs[0])).unwrap();
    assert_eq!(first.options(), &opts);
    for dg in &dgs[1..] {
        let p = Ipv4Packet::new_checked(inner(dg)).unwrap();
        assert_eq!(p.header_len(), 32);
        assert_eq!(p.options(), &[1, 1, 1, 1, 1, 1, 1, 0x82, 4, 0xaa, 0xbb, 0]);
        assert!(p.verify_checksum());
    }
    // A malformed option list is NOPed from the bad option on.
    let mut hdr = [0u8; 28];
    hdr[20..].copy_from_slice(&[1, 0x44, 9, 1, 2, 3, 4, 5]);
    nop_uncopied_options(&mut hdr);
    assert_eq!(&hdr[20..], &[1, 1, 1, 1, 1, 1, 1, 1]);
}

#[test]
fn fragment_limits() {
    let ip = ipv4(17, 0, &[], &pattern(100));
    let mut out = vec![0u8; 1024];
    assert_eq!(
        fragment(&ENC, &ip, 27, &mut out),
        Err(DropReason::PacketTooBig)
    );
    let d = fragment(&ENC, &ip, 28, &mut out).unwrap();
    assert_eq!(d.count, 13);
    let mut tiny = vec![0u8; 100];
    assert_eq!(
        fragment(&ENC, &ip, 60, &mut tiny),
        Err(DropReason::ReplyTooLarge)
    );
    // A packet that already fits: one "fragment", unfragmented flags kept clear.
    let d = fragment(&ENC, &ip, 1500, &mut out).unwrap();
    assert_eq!(d.count, 1);
    let p = Ipv4Packet::new_checked(inner(&out[..d.len])).unwrap();
    assert!(!p.is_fragment());
}

#[test]
fn completes_partial_checksums() {
    let payload = pattern(501);
    let mut frame = vec![0u8; 14];
    frame.extend_from_slice(&ipv4(6, 0x4000, &[], &tcp(5, TCP_ACK, &payload)));
    let end = frame.len();
    complete_partial_checksum(&mut frame, 34, 16, end).unwrap();
    let p = Ipv4Packet::new_checked(&frame[14..]).unwrap();
    assert!(TcpPacket::new_checked(p.payload())
        .unwrap()
        .verify_checksum(SRC, DST));
    // UDP whose sum comes out as 0 is sent as 0xffff. Pseudo-header sum + 8-byte
    // header; pick the payload word that makes the total 0xffff.
    let mut udp = vec![0x12, 0x34, 0x00, 0x35, 0x00, 0x0a, 0, 0, 0, 0];
    let partial = checksum::fold(pseudo_header_sum(SRC, DST, 17, 10));
    udp[6..8].copy_from_slice(&partial.to_be_bytes());
    let rest = checksum::fold(checksum::accumulate(0, &udp));
    udp[8..10].copy_from_slice(&(0xffff - rest).to_be_bytes());
    let mut frame = vec![0u8; 14];
    frame.extend_from_slice(&ipv4(17, 0, &[], &udp));
    let end = frame.len();
    complete_partial_checksum(&mut frame, 34, 6, end).unwrap();
    assert_eq!(&frame[40..42], &[0xff, 0xff]);
    // The field must lie inside the packet.
    assert_eq!(
        complete_partial_checksum(&mut frame, 34, 6, 41),
        Err(DropReason::BadVnetHeader)
    );
    assert_eq!(
        complete_partial_checksum(&mut frame, 40, 6, end),
        Err(DropReason::BadVnetHeader)
    );
}

#[test]
fn flow_hash_is_pinned_and_uses_ports_only_when_unfragmented() {
    let l4 = [0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 0];
    let h =
        |proto, ff| flow_hash(&Ipv4Packet::new_checked(&ipv4(proto, ff, &[], &l4)[..]).unwrap());
    let tcp = h(6, 0x4000);
    // Pinned: changing the hash moves every flow to another outer port.
    assert_eq!(tcp, flow_hash_of(SRC, DST, 6, 0x9c40_0050));
    assert_eq!(tcp, 0x6547_b0fb, "{tcp:#010x}");
    assert_ne!(tcp, h(17, 0));
    assert_eq!(h(6, 0x2000), flow_hash_of(SRC, DST, 6, 0), "first fragment");
    assert_eq!(h(6, 0x0010), flow_hash_of(SRC, DST, 6, 0), "later fragment");
    assert_eq!(h(1, 0), flow_hash_of(SRC, DST, 1, 0));
    assert_ne!(flow_hash_of(SRC, DST, 6, 1), flow_hash_of(DST, SRC, 6, 1));
    // Spread: the low 16 bits of 4096 consecutive source ports hit many distinct values.
    let mut seen: Vec<u16> = (0..4096u32)
        .map(|p| flow_hash_of(SRC, DST, 6, (p << 16) | 80) as u16)
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert!(seen.len() > 3900, "{}", seen.len());
}

// ------------------------------------------------ checksums of decapsulated packets

/// A SYN as a Linux `flannel.1` on a veth underlay sends it inside VXLAN:
/// 10.244.1.2:40000 -> 10.244.2.3:80, MSS 1460, and in the TCP checksum field the
/// *partial* value 0x190b = the folded pseudo-header sum (0af4 0102 0af4 0203 0006
/// 0018), i.e. the kernel's `~csum_tcpudp_magic`. The complete checksum is 0xe3b2.
static PARTIAL_SYN: [u8; 44] = [
    0x45, 0x00, 0x00, 0x2c, 0xab, 0xcd, 0x40, 0x00, 0x40, 0x06, 0x76, 0x12, 0x0a, 0xf4, 0x01, 0x02,
    0x0a, 0xf4, 0x02, 0x03, // IPv4
    0x9c, 0x40, 0x00, 0x50, 0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x00, 0x00, 0x60, 0x02, 0xfa, 0xf0,
    0x19, 0x0b, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, // TCP
];

/// 10.244.1.2:4000 -> 10.244.2.3:53 "dns!" with the partial UDP checksum 0x190a
/// (0af4 0102 0af4 0203 0011 000c); complete, it is 0xff84 (see `wire::udp`).
static PARTIAL_UDP: [u8; 32] = [
    0x45, 0x00, 0x00, 0x20, 0xab, 0xcd, 0x40, 0x00, 0x40, 0x11, 0x76, 0x13, 0x0a, 0xf4, 0x01, 0x02,
    0x0a, 0xf4, 0x02, 0x03, // IPv4
    0x0f, 0xa0, 0x00, 0x35, 0x00, 0x0c, 0x19, 0x0a, b'd', b'n', b's', b'!', // UDP
];

#[test]
fn partial_fixtures_hold_the_kernel_partial_form() {
    assert!(checksum::verify(&PARTIAL_SYN[..20]) && checksum::verify(&PARTIAL_UDP[..20]));
    assert_eq!(
        pseudo_header_partial(SRC, DST, 6, 24).to_be_bytes(),
        [PARTIAL_SYN[36], PARTIAL_SYN[37]]
    );
    assert_eq!(
        pseudo_header_partial(SRC, DST, 17, 12).to_be_bytes(),
        [PARTIAL_UDP[26], PARTIAL_UDP[27]]
    );
}

#[test]
fn partial_tcp_and_udp_checksums_are_completed() {
    let mut syn = PARTIAL_SYN;
    assert_eq!(settle_l4_checksum(&mut syn), Ok(L4Checksum::Completed));
    assert_eq!(&syn[36..38], &[0xe3, 0xb2], "complete TCP checksum");
    assert_eq!(&syn[..36], &PARTIAL_SYN[..36], "nothing else changed");
    assert_eq!(&syn[38..], &PARTIAL_SYN[38..]);
    assert!(TcpPacket::new_checked(&syn[20..])
        .unwrap()
        .verify_checksum(SRC, DST));
    // Settling again finds it valid and leaves it alone.
    assert_eq!(settle_l4_checksum(&mut syn), Ok(L4Checksum::Valid));
    assert_eq!(&syn[36..38], &[0xe3, 0xb2]);

    let mut udp = PARTIAL_UDP;
    assert_eq!(settle_l4_checksum(&mut udp), Ok(L4Checksum::Completed));
    assert_eq!(&udp[26..28], &[0xff, 0x84], "complete UDP checksum");
    assert_eq!(&udp[..26], &PARTIAL_UDP[..26]);
    assert_eq!(&udp[28..], &PARTIAL_UDP[28..]);
    assert_eq!(settle_l4_checksum(&mut udp), Ok(L4Checksum::Valid));
}

#[test]
fn completion_matches_a_full_recompute_for_many_payloads() {
    for n in [0usize, 1, 2, 3, 499, 1398] {
        let ip = ipv4(6, 0x4000, &[], &tcp(n as u32, TCP_ACK, &pattern(n)));
        let mut settled = ip.clone();
        assert_eq!(settle_l4_checksum(&mut settled), Ok(L4Checksum::Completed));
        let mut reference = ip.clone();
        complete_partial_checksum(&mut reference, 20, 16, ip.len()).unwrap();
        assert_eq!(settled, reference, "payload {n}");
    }
    // IPv4 options, and bytes after the UDP length (not part of the datagram).
    let mut ip = ipv4(6, 0, &[0x94, 4, 0, 0], &tcp(9, TCP_ACK, b"opts"));
    assert_eq!(settle_l4_checksum(&mut ip), Ok(L4Checksum::Completed));
    assert!(TcpPacket::new_checked(&ip[24..])
        .unwrap()
        .verify_checksum(SRC, DST));
    let mut padded = PARTIAL_UDP[20..].to_vec();
    padded.extend_from_slice(&[0xee, 0xee]);
    let mut ip = ipv4(17, 0, &[], &padded);
    assert_eq!(settle_l4_checksum(&mut ip), Ok(L4Checksum::Completed));
    assert_eq!(&ip[26..28], &[0xff, 0x84]);
    // A UDP checksum that comes out as 0 is stored as 0xffff (RFC 768).
    let mut udp = vec![0x12, 0x34, 0x00, 0x35, 0x00, 0x0a, 0, 0, 0, 0];
    let partial = pseudo_header_partial(SRC, DST, 17, 10);
    udp[6..8].copy_from_slice(&partial.to_be_bytes());
    let rest = checksum::fold(checksum::accumulate(0, &udp));
    udp[8..10].copy_from_slice(&(0xffff - rest).to_be_bytes());
    let mut ip = ipv4(17, 0, &[], &udp);
    assert_eq!(settle_l4_checksum(&mut ip), Ok(L4Checksum::Completed));
    assert_eq!(&ip[26..28], &[0xff, 0xff]);
    assert_eq!(settle_l4_checksum(&mut ip), Ok(L4Checksum::Valid));
}

#[test]
fn wrong_checksums_are_refused_and_the_rest_left_alone() {
    // Corrupt: neither complete nor partial.
    let mut syn = PARTIAL_SYN;
    syn[37] ^= 0x40;
    assert_eq!(
        settle_l4_checksum(&mut syn),
        Err(DropReason::BadInnerChecksum)
    );
    // A complete checksum over a payload changed on the way.
    let mut udp = PARTIAL_UDP;
    udp[26..28].copy_from_slice(&[0xff, 0x84]);
    udp[31] = b'?';
    assert_eq!(
        settle_l4_checksum(&mut udp),
        Err(DropReason::BadInnerChecksum)
    );
    // UDP checksum 0: none was computed; unchanged.
    let mut udp = PARTIAL_UDP;
    udp[26..28].copy_from_slice(&[0, 0]);
    let before = udp;
    assert_eq!(settle_l4_checksum(&mut udp), Ok(L4Checksum::Absent));
    assert!(L4Checksum::Absent.data_valid());
    assert_eq!(udp, before);
    // Fragments (first or later), other protocols, and L4 headers too short to check
    // are not ours to judge.
    let unchecked = |mut ip: Vec<u8>| {
        let before = ip.clone();
        let r = settle_l4_checksum(&mut ip);
        assert_eq!(ip, before);
        r
    };
    let bad_tcp = {
        let mut t = tcp(1, TCP_ACK, b"x");
        t[16] ^= 0xff;
        t
    };
    for ff in [0x2000, 0x0010] {
        assert_eq!(
            unchecked(ipv4(6, ff, &[], &bad_tcp)),
            Ok(L4Checksum::Unchecked)
        );
    }
    assert_eq!(
        unchecked(ipv4(1, 0, &[], &bad_tcp)),
        Ok(L4Checksum::Unchecked)
    );
    assert_eq!(
        unchecked(ipv4(6, 0, &[], &bad_tcp[..19])),
        Ok(L4Checksum::Unchecked)
    );
    assert_eq!(
        unchecked(ipv4(17, 0, &[], &[0, 1, 0, 2, 0, 4, 0x12, 0x34])),
        Ok(L4Checksum::Unchecked),
        "UDP length below 8"
    );
    assert_eq!(unchecked(vec![0x45, 0]), Ok(L4Checksum::Unchecked));
    assert!(!L4Checksum::Unchecked.data_valid());
}
