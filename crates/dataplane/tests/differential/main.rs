//! Differential property test of the `wire` views: frames built with etherparse's
//! `PacketBuilder` (well-formed, then mutated: truncations, bad IHL and total
//! length, bad TCP data offset and UDP length, bit flips, padding) are read by our
//! views, by etherparse and by smoltcp, and `check::check_frame` asserts they agree
//! (see its module comment for the few places where they may differ, and why).
//! The tests named after a disagreement show that each exception is real.

#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::cast_possible_truncation
)]

mod check;

use check::{check_frame, Options, Seen};
use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket as EpArp, EtherType as EpEtherType, Ethernet2Header,
    IpDscp, IpEcn, IpFragOffset, IpHeaders, IpNumber, Ipv4Header, Ipv4HeaderSlice, PacketBuilder,
    TcpHeader,
};
use proptest::prelude::*;
use proptest::sample::Index;
use tapestry_dataplane::wire::{
    EthernetFrame, Icmpv4Packet, Icmpv4Repr, Ipv4Packet, UdpPacket, WireError,
};

const OPTS: Options = Options {
    smoltcp_checksums: true,
};
const ETH: usize = 14;

/// The IPv4 header fields a test varies.
#[derive(Clone, Debug)]
struct Ip {
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    ident: u16,
    dont_frag: bool,
    more_frags: bool,
    /// In 8-byte units.
    offset: u16,
    dscp: u8,
    ecn: u8,
    /// A multiple of 4, at most 40 bytes.
    options: Vec<u8>,
}

#[derive(Clone, Debug)]
enum L4 {
    Tcp(TcpHeader),
    Udp { sport: u16, dport: u16 },
    Echo { request: bool, id: u16, seq: u16 },
    Icmp { kind: u8, code: u8, rest: [u8; 4] },
    Other(u8),
}

#[derive(Clone, Debug)]
enum Body {
    Ipv4(Ip, L4),
    Arp {
        op: u16,
        sha: [u8; 6],
        spa: [u8; 4],
        tha: [u8; 6],
        tpa: [u8; 4],
    },
    Other(u16),
}

#[derive(Clone, Debug)]
struct Spec {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    body: Body,
    payload: Vec<u8>,
    /// Bytes after the packet (Ethernet padding or trailing garbage).
    pad: Vec<u8>,
}

/// The frame `spec` describes, built by etherparse (every length and checksum its own).
fn build(spec: &Spec) -> Vec<u8> {
    let mut f = Vec::new();
    let eth = PacketBuilder::ethernet2(spec.src_mac, spec.dst_mac);
    let payload = &spec.payload[..];
    match &spec.body {
        Body::Ipv4(ip, l4) => {
            let mut h = Ipv4Header::new(0, ip.ttl, IpNumber(0), ip.src, ip.dst).unwrap();
            h.identification = ip.ident;
            h.dont_fragment = ip.dont_frag;
            h.more_fragments = ip.more_frags;
            h.fragment_offset = IpFragOffset::try_new(ip.offset).unwrap();
            h.dscp = IpDscp::try_new(ip.dscp).unwrap();
            h.ecn = IpEcn::try_new(ip.ecn).unwrap();
            h.options = ip.options[..].try_into().unwrap();
            let b = eth.ip(IpHeaders::Ipv4(h, Default::default()));
            match l4 {
                L4::Tcp(t) => b.tcp_header(t.clone()).write(&mut f, payload).unwrap(),
                L4::Udp { sport, dport } => b.udp(*sport, *dport).write(&mut f, payload).unwrap(),
                L4::Echo { request, id, seq } => {
                    let b = if *request {
                        b.icmpv4_echo_request(*id, *seq)
                    } else {
                        b.icmpv4_echo_reply(*id, *seq)
                    };
                    b.write(&mut f, payload).unwrap()
                }
                L4::Icmp { kind, code, rest } => b
                    .icmpv4_raw(*kind, *code, *rest)
                    .write(&mut f, payload)
                    .unwrap(),
                L4::Other(p) => b.write(&mut f, IpNumber(*p), payload).unwrap(),
            }
        }
        Body::Arp {
            op,
            sha,
            spa,
            tha,
            tpa,
        } => {
            let arp = EpArp::new(
                ArpHardwareId::ETHERNET,
                EpEtherType::IPV4,
                ArpOperation(*op),
                sha,
                spa,
                tha,
                tpa,
            )
            .unwrap();
            eth.arp(arp).write(&mut f).unwrap();
        }
        Body::Other(ethertype) => {
            let h = Ethernet2Header {
                source: spec.src_mac,
                destination: spec.dst_mac,
                ether_type: EpEtherType(*ethertype),
            };
            f.extend_from_slice(&h.to_bytes());
            f.extend_from_slice(payload);
        }
    }
    f.extend_from_slice(&spec.pad);
    f
}

fn tcp_header() -> impl Strategy<Value = TcpHeader> {
    (
        any::<(u16, u16, u32, u32, u16, u16)>(),
        any::<u8>(),
        0usize..=10,
        any::<u8>(),
    )
        .prop_map(
            |((sport, dport, seq, ack, window, urgent), flags, words, fill)| {
                let mut t = TcpHeader::new(sport, dport, seq, window);
                t.acknowledgment_number = ack;
                t.urgent_pointer = urgent;
                [t.fin, t.syn, t.rst, t.psh, t.ack, t.urg, t.ece, t.cwr] =
                    core::array::from_fn(|i| flags & (1 << i) != 0);
                // NOP padding with an end-of-list at the end: opaque bytes to all of us.
                let mut opts = vec![1u8; words * 4];
                if let Some(last) = opts.last_mut() {
                    *last = fill & 1;
                }
                t.set_options_raw(&opts).unwrap();
                t
            },
        )
}

fn l4() -> impl Strategy<Value = L4> {
    prop_oneof![
        3 => tcp_header().prop_map(L4::Tcp),
        3 => any::<(u16, u16)>().prop_map(|(sport, dport)| L4::Udp { sport, dport }),
        2 => any::<(bool, u16, u16)>().prop_map(|(request, id, seq)| L4::Echo { request, id, seq }),
        2 => (prop_oneof![Just(3u8), Just(11), Just(13), Just(14), any::<u8>()], 0u8..20, any::<[u8; 4]>())
            .prop_map(|(kind, code, rest)| L4::Icmp { kind, code, rest }),
        1 => prop_oneof![Just(51u8), Just(47), Just(132), any::<u8>()].prop_map(L4::Other),
    ]
}

fn ip() -> impl Strategy<Value = Ip> {
    (
        any::<([u8; 4], [u8; 4], u8, u16)>(),
        // Mostly unfragmented, sometimes a first, middle or last fragment.
        prop_oneof![6 => Just((false, 0u16)), 1 => (any::<bool>(), 0u16..8192)],
        any::<bool>(),
        (0u8..64, 0u8..4),
        0usize..=10,
    )
        .prop_map(
            |((src, dst, ttl, ident), (more_frags, offset), dont_frag, (dscp, ecn), words)| {
                let mut options = vec![1u8; words * 4];
                if let Some(last) = options.last_mut() {
                    *last = 0;
                }
                Ip {
                    src,
                    dst,
                    ttl,
                    ident,
                    dont_frag,
                    more_frags,
                    offset,
                    dscp,
                    ecn,
                    options,
                }
            },
        )
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        8 => (ip(), l4()).prop_map(|(ip, l4)| Body::Ipv4(ip, l4)),
        2 => any::<(u8, [u8; 6], [u8; 4], [u8; 6], [u8; 4])>().prop_map(|(op, sha, spa, tha, tpa)| {
            Body::Arp { op: u16::from(op % 4), sha, spa, tha, tpa }
        }),
        1 => prop_oneof![Just(0x86ddu16), Just(0x8100), any::<u16>()].prop_map(Body::Other),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        any::<([u8; 6], [u8; 6])>(),
        body(),
        prop::collection::vec(any::<u8>(), 0..80),
        prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(any::<u8>(), 1..24)],
    )
        .prop_map(|((src_mac, dst_mac), body, payload, pad)| Spec {
            src_mac,
            dst_mac,
            body,
            payload,
            pad,
        })
}

/// A change to a built frame; positions are picked relative to its length.
#[derive(Clone, Debug)]
enum Mutation {
    Truncate(Index),
    FlipBit(Index, u8),
    SetByte(Index, u8),
    /// Sets the IPv4 IHL nibble.
    Ihl(u8),
    /// Sets the IPv4 total length.
    TotalLen(u16),
    /// Sets the TCP data offset nibble (where a 20..60-byte IPv4 header puts TCP).
    TcpOffset(u8),
    /// Sets the UDP length field.
    UdpLen(u16),
    /// Recomputes the IPv4 header checksum (with etherparse), so that a header
    /// mutation is seen with a right checksum too.
    FixIpChecksum,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => any::<Index>().prop_map(Mutation::Truncate),
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        1 => any::<(Index, u8)>().prop_map(|(i, v)| Mutation::SetByte(i, v)),
        2 => (0u8..16).prop_map(Mutation::Ihl),
        2 => prop_oneof![0u16..80, any::<u16>()].prop_map(Mutation::TotalLen),
        2 => (0u8..16).prop_map(Mutation::TcpOffset),
        2 => prop_oneof![0u16..16, any::<u16>()].prop_map(Mutation::UdpLen),
        2 => Just(Mutation::FixIpChecksum),
    ]
}

fn l4_at(f: &[u8]) -> usize {
    ETH + usize::from(f.get(ETH).map_or(5, |b| b & 0x0f)) * 4
}

fn set(f: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(d) = f.get_mut(at..at + bytes.len()) {
        d.copy_from_slice(bytes);
    }
}

fn apply(f: &mut Vec<u8>, m: &Mutation) {
    match *m {
        Mutation::Truncate(i) => {
            let len = i.index(f.len() + 1);
            f.truncate(len);
        }
        Mutation::FlipBit(i, bit) if !f.is_empty() => {
            let at = i.index(f.len());
            f[at] ^= 1 << bit;
        }
        Mutation::SetByte(i, v) if !f.is_empty() => {
            let at = i.index(f.len());
            f[at] = v;
        }
        Mutation::Ihl(ihl) => {
            if let Some(b) = f.get_mut(ETH) {
                *b = (*b & 0xf0) | ihl;
            }
        }
        Mutation::TotalLen(v) => set(f, ETH + 2, &v.to_be_bytes()),
        Mutation::TcpOffset(off) => {
            let at = l4_at(f) + 12;
            if let Some(b) = f.get_mut(at) {
                *b = (*b & 0x0f) | (off << 4);
            }
        }
        Mutation::UdpLen(v) => {
            let at = l4_at(f) + 4;
            set(f, at, &v.to_be_bytes());
        }
        Mutation::FixIpChecksum => {
            let sum = f
                .get(ETH..)
                .and_then(|ip| Ipv4HeaderSlice::from_slice(ip).ok())
                .map(|h| h.to_header().calc_header_checksum());
            if let Some(sum) = sum {
                set(f, ETH + 10, &sum.to_be_bytes());
            }
        }
        Mutation::FlipBit(..) | Mutation::SetByte(..) => {}
    }
}

/// What our views must have accepted in a frame etherparse built well-formed.
fn assert_read_through(spec: &Spec, frame: &[u8], seen: Seen) {
    assert!(seen.ethernet);
    match &spec.body {
        Body::Arp { .. } => assert!(seen.arp, "ARP not read"),
        Body::Other(_) => {}
        Body::Ipv4(ip, l4) => {
            assert!(
                seen.ipv4 && seen.ipv4_checksum_ok,
                "IPv4 not read: {seen:?}"
            );
            if ip.offset != 0 {
                return;
            }
            let read = match l4 {
                L4::Tcp(_) => seen.tcp,
                L4::Udp { .. } => seen.udp,
                L4::Echo { .. } => seen.icmp,
                // etherparse's own timestamp rule (see check.rs): a timestamp of
                // another length than 20 is one it builds but will not read.
                L4::Icmp {
                    kind: 13 | 14,
                    code: 0,
                    ..
                } => seen.icmp == (frame.len() - spec.pad.len() - l4_at(frame) == 20),
                L4::Icmp { .. } => seen.icmp,
                L4::Other(_) => true,
            };
            assert!(read, "L4 not read: {seen:?}");
            if !ip.more_frags && !matches!(l4, L4::Other(_) | L4::Icmp { .. }) {
                assert!(seen.l4_checksum_ok, "L4 checksum: {seen:?}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn well_formed_frames_read_the_same(spec in spec()) {
        let frame = build(&spec);
        let seen = check_frame(&frame, OPTS);
        assert_read_through(&spec, &frame, seen);
    }

    #[test]
    fn mutated_frames_read_the_same(
        spec in spec(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut frame = build(&spec);
        for m in &mutations {
            apply(&mut frame, m);
        }
        check_frame(&frame, OPTS);
    }

    #[test]
    fn every_truncation_reads_the_same(spec in spec()) {
        let frame = build(&spec);
        for len in 0..=frame.len() {
            check_frame(&frame[..len], OPTS);
        }
    }
}

// ------------------------------------------------ each allowed disagreement is real

fn udp_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([10, 244, 1, 2], [10, 244, 1, 3], 64)
        .udp(40_000, 53)
        .write(&mut f, payload)
        .unwrap();
    f
}

#[test]
fn ihl_below_five_is_refused_by_us_and_etherparse_but_not_smoltcp() {
    let mut f = udp_frame(b"abcd");
    f[ETH] = 0x44;
    let ip = &f[ETH..];
    assert!(matches!(
        Ipv4Packet::new_checked(ip),
        Err(WireError::Malformed { .. })
    ));
    assert!(etherparse::Ipv4Slice::from_slice(ip).is_err());
    assert!(smoltcp::wire::Ipv4Packet::new_checked(ip).is_ok());
    check_frame(&f, OPTS);
}

#[test]
fn udp_length_zero_is_refused_by_us_and_smoltcp_but_not_etherparse() {
    let mut f = udp_frame(b"abcd");
    set(&mut f, ETH + 20 + 4, &[0, 0]);
    let udp = &f[ETH + 20..];
    assert!(matches!(
        UdpPacket::new_checked(udp),
        Err(WireError::Malformed { .. })
    ));
    assert!(smoltcp::wire::UdpPacket::new_checked(udp).is_err());
    assert_eq!(
        etherparse::UdpSlice::from_slice(udp).unwrap().payload(),
        b"abcd"
    );
    check_frame(&f, OPTS);
}

#[test]
fn udp_without_checksum_is_right_for_smoltcp_and_not_verified_by_us() {
    let mut f = udp_frame(b"abcd");
    set(&mut f, ETH + 20 + 6, &[0, 0]);
    let (src, dst) = ([10, 244, 1, 2].into(), [10, 244, 1, 3].into());
    let udp = &f[ETH + 20..];
    assert!(!UdpPacket::new_checked(udp)
        .unwrap()
        .verify_checksum(src, dst));
    assert!(smoltcp::wire::UdpPacket::new_checked(udp)
        .unwrap()
        .verify_checksum(&src.into(), &dst.into()));
    assert!(!check_frame(&f, OPTS).l4_checksum_ok);
}

#[test]
fn short_icmp_timestamp_is_refused_by_etherparse_only_and_we_do_not_answer_it() {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([10, 244, 1, 2], [10, 244, 1, 1], 64)
        .icmpv4_raw(13, 0, [0, 1, 0, 2])
        .write(&mut f, &[0; 4])
        .unwrap();
    let icmp = &f[ETH + 20..];
    let ours = Icmpv4Packet::new_checked(icmp).unwrap();
    assert!(matches!(
        Icmpv4Repr::parse(&ours),
        Err(WireError::Unsupported { .. })
    ));
    assert!(etherparse::Icmpv4Slice::from_slice(icmp).is_err());
    assert!(smoltcp::wire::Icmpv4Packet::new_checked(icmp).is_ok());
    let seen = check_frame(&f, OPTS);
    assert!(seen.ipv4 && !seen.icmp);
}

#[test]
fn authentication_header_is_opaque_to_us_and_parsed_by_etherparse() {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([10, 244, 1, 2], [10, 244, 1, 3], 64)
        .write(&mut f, IpNumber(51), &[6, 0xff, 0, 0])
        .unwrap();
    let ip = &f[ETH..];
    assert_eq!(
        Ipv4Packet::new_checked(ip).unwrap().payload(),
        &[6, 0xff, 0, 0]
    );
    assert!(etherparse::Ipv4Slice::from_slice(ip).is_err());
    assert!(check_frame(&f, OPTS).ipv4);
}

#[test]
fn checksum_negative_zero_is_right_for_us_and_smoltcp_not_for_etherparse() {
    // A header whose words other than the checksum sum to 0xffff: the ident is
    // chosen to make it so. Its checksum is then 0x0000 or, equally, 0xffff.
    let mut f = udp_frame(b"abcd");
    set(&mut f, ETH + 4, &[0, 0]);
    set(&mut f, ETH + 10, &[0, 0]);
    let sum = !tapestry_dataplane::wire::checksum::checksum(&f[ETH..ETH + 20]);
    set(&mut f, ETH + 4, &(0xffff - sum).to_be_bytes());
    assert_eq!(
        Ipv4HeaderSlice::from_slice(&f[ETH..])
            .unwrap()
            .to_header()
            .calc_header_checksum(),
        0
    );
    assert!(Ipv4Packet::new_checked(&f[ETH..])
        .unwrap()
        .verify_checksum());
    set(&mut f, ETH + 10, &[0xff, 0xff]);
    let ip = &f[ETH..];
    assert!(Ipv4Packet::new_checked(ip).unwrap().verify_checksum());
    assert!(smoltcp::wire::Ipv4Packet::new_checked(ip)
        .unwrap()
        .verify_checksum());
    assert!(check_frame(&f, OPTS).ipv4_checksum_ok);
}

#[test]
fn a_built_frame_is_what_our_views_read() {
    // The builder itself is checked once against our Repr-level reading, so the
    // property tests above start from frames that mean what their specs say.
    let f = udp_frame(b"abcd");
    let eth = EthernetFrame::new_checked(&f[..]).unwrap();
    assert_eq!(eth.src_addr().octets(), [2; 6]);
    assert_eq!(eth.dst_addr().octets(), [4; 6]);
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(ip.total_len(), 32);
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!(
        (udp.src_port(), udp.dst_port(), udp.len()),
        (40_000, 53, 12)
    );
    assert!(udp.verify_checksum(ip.src_addr(), ip.dst_addr()));
}
