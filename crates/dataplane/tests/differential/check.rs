//! The differential check: one Ethernet frame read by our `wire` views, by
//! `etherparse`'s slices and by `smoltcp::wire`'s views, layer by layer, with the
//! relation between the three asserted at every layer.
//!
//! Shared by the property test beside it (`tests/differential/main.rs`) and the
//! `wire_differential` fuzz target, which includes this file by path.
//!
//! The relation is equality (same accept/reject decision, same fields) except where
//! a library has a reason of its own to differ; each exception is named where it is
//! asserted, and is as narrow as the reason:
//!
//! - IPv4 IHL below 5: we and etherparse reject it (RFC 791: the header is at least
//!   five words); smoltcp's `check_len` only checks `header_len <= total_len <= buffer`
//!   and so accepts it. smoltcp accepting more is allowed; the reverse is not.
//! - IPv4 protocol 51 (AH): etherparse parses the authentication header as part of
//!   IPv4 and rejects a malformed one; for us it is an opaque payload.
//! - UDP length field 0: etherparse reads it as "the rest of the slice" (the IPv6
//!   jumbogram rule of RFC 2675); over IPv4 it is invalid (RFC 768: at least 8) and
//!   we reject it, as smoltcp and the kernel's `__udp4_lib_rcv` do.
//! - ICMP timestamp messages (type 13/14, code 0): etherparse insists on exactly 20
//!   bytes. Our view is the 8-byte header every ICMP type shares and the gateway
//!   answers echo only: `Icmpv4Repr::parse` calls a timestamp `Unsupported`.
//! - Checksums, negative zero: we and smoltcp verify by summing header and stored
//!   checksum (as the kernel's `ip_fast_csum` does), so a stored 0xffff and 0x0000
//!   are both right when the sum of the rest is 0xffff (RFC 1624 §3); etherparse
//!   recomputes and compares, and takes only the one its own arithmetic produces.
//! - UDP checksum 0 means "none" (RFC 768): smoltcp's `verify_checksum` calls it
//!   right, ours calls it not verified (callers decide), etherparse never produces it.
//! - VXLAN: neither library has a VXLAN view, so there is nothing to compare.
//! - Checksums recomputed from etherparse's decoded headers: its `Ipv4Header` has no
//!   field for the reserved flag bit, and its `Icmpv4Type` drops bytes 4..8 where the
//!   type calls them unused, so for such headers the recomputation is of other
//!   bytes; its checksum arithmetic over the bytes themselves is compared instead.
//! - smoltcp's `verify_checksum`s return `true` when smoltcp is compiled with
//!   `--cfg fuzzing` (as `cargo fuzz` compiles every crate); the fuzz target passes
//!   `smoltcp_checksums: false`.

use std::net::Ipv4Addr;

use etherparse as ep;
use smoltcp::wire as sm;
use tapestry_dataplane::wire::{
    ArpPacket, ArpRepr, EtherType, EthernetFrame, Icmpv4Packet, Icmpv4Repr, Ipv4Packet, TcpPacket,
    UdpPacket, WireError,
};

/// What the check may rely on.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Compare checksum validity with smoltcp too (false under `--cfg fuzzing`).
    pub smoltcp_checksums: bool,
}

/// The layers our views accepted, and whether the checksums were right, so callers
/// can assert that a well-formed frame got all the way through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub ethernet: bool,
    pub arp: bool,
    pub ipv4: bool,
    pub ipv4_checksum_ok: bool,
    pub tcp: bool,
    pub udp: bool,
    pub icmp: bool,
    /// The L4 checksum (TCP, UDP, ICMP) was verified and right.
    pub l4_checksum_ok: bool,
}

/// Reads `frame` (an Ethernet frame, no virtio-net header) three ways and panics
/// with the layer and field on any disagreement the module comment does not allow.
pub fn check_frame(frame: &[u8], opts: Options) -> Seen {
    let mut seen = Seen::default();
    let Some((ethertype, payload)) = ethernet(frame) else {
        return seen;
    };
    seen.ethernet = true;
    match ethertype {
        EtherType::Arp => seen.arp = arp(payload),
        EtherType::Ipv4 => ipv4(payload, opts, &mut seen),
        _ => {}
    }
    seen
}

fn ethernet(frame: &[u8]) -> Option<(EtherType, &[u8])> {
    let ours = EthernetFrame::new_checked(frame);
    let theirs = ep::Ethernet2Slice::from_slice_without_fcs(frame);
    let smol = sm::EthernetFrame::new_checked(frame);
    assert_eq!(
        ours.is_ok(),
        theirs.is_ok(),
        "ethernet accept vs etherparse"
    );
    assert_eq!(ours.is_ok(), smol.is_ok(), "ethernet accept vs smoltcp");
    let (Ok(o), Ok(e), Ok(s)) = (ours, theirs, smol) else {
        return None;
    };
    assert_eq!(o.dst_addr().octets(), e.destination(), "ethernet dst");
    assert_eq!(
        o.dst_addr().octets(),
        s.dst_addr().0,
        "ethernet dst (smoltcp)"
    );
    assert_eq!(o.src_addr().octets(), e.source(), "ethernet src");
    assert_eq!(
        o.src_addr().octets(),
        s.src_addr().0,
        "ethernet src (smoltcp)"
    );
    let ethertype = u16::from(o.ethertype());
    assert_eq!(ethertype, e.ether_type().0, "ethertype");
    assert_eq!(ethertype, u16::from(s.ethertype()), "ethertype (smoltcp)");
    assert_eq!(o.payload(), e.payload_slice(), "ethernet payload");
    assert_eq!(o.payload(), s.payload(), "ethernet payload (smoltcp)");
    let payload = frame.get(tapestry_dataplane::wire::ETHERNET_HEADER_LEN..)?;
    Some((o.ethertype(), payload))
}

fn arp(p: &[u8]) -> bool {
    let ours = ArpPacket::new_checked(p);
    let theirs = ep::ArpPacketSlice::from_slice(p);
    let smol = sm::ArpPacket::new_checked(p);
    assert_eq!(ours.is_ok(), theirs.is_ok(), "ARP accept vs etherparse");
    assert_eq!(ours.is_ok(), smol.is_ok(), "ARP accept vs smoltcp");
    let (Ok(o), Ok(e), Ok(s)) = (ours, theirs, smol) else {
        return false;
    };
    assert_eq!(o.hardware_type(), e.hw_addr_type().0, "ARP htype");
    assert_eq!(
        o.hardware_type(),
        u16::from(s.hardware_type()),
        "ARP htype (smoltcp)"
    );
    assert_eq!(o.protocol_type(), e.proto_addr_type().0, "ARP ptype");
    assert_eq!(
        o.protocol_type(),
        u16::from(s.protocol_type()),
        "ARP ptype (smoltcp)"
    );
    assert_eq!(o.hardware_len(), e.hw_addr_size(), "ARP hlen");
    assert_eq!(o.hardware_len(), s.hardware_len(), "ARP hlen (smoltcp)");
    assert_eq!(o.protocol_len(), e.proto_addr_size(), "ARP plen");
    assert_eq!(o.protocol_len(), s.protocol_len(), "ARP plen (smoltcp)");
    let op = u16::from(o.operation());
    assert_eq!(op, e.operation().0, "ARP oper");
    assert_eq!(op, u16::from(s.operation()), "ARP oper (smoltcp)");
    for (name, ours, theirs, smol) in [
        (
            "sha",
            o.source_hardware_addr(),
            e.sender_hw_addr(),
            s.source_hardware_addr(),
        ),
        (
            "spa",
            o.source_protocol_addr(),
            e.sender_protocol_addr(),
            s.source_protocol_addr(),
        ),
        (
            "tha",
            o.target_hardware_addr(),
            e.target_hw_addr(),
            s.target_hardware_addr(),
        ),
        (
            "tpa",
            o.target_protocol_addr(),
            e.target_protocol_addr(),
            s.target_protocol_addr(),
        ),
    ] {
        assert_eq!(ours, theirs, "ARP {name}");
        assert_eq!(ours, smol, "ARP {name} (smoltcp)");
    }
    // The Ethernet/IPv4 representation: all three take exactly htype 1, ptype
    // 0x0800, hlen 6, plen 4, any opcode.
    let repr = ArpRepr::parse(&o);
    let e_repr = e.to_packet().try_eth_ipv4();
    let s_repr = sm::ArpRepr::parse(&s);
    assert_eq!(
        repr.is_ok(),
        e_repr.is_ok(),
        "ARP Ethernet/IPv4 vs etherparse"
    );
    assert_eq!(repr.is_ok(), s_repr.is_ok(), "ARP Ethernet/IPv4 vs smoltcp");
    if let Err(err) = repr {
        assert!(matches!(err, WireError::Unsupported { .. }), "{err}");
    }
    if let (Ok(r), Ok(e)) = (repr, e_repr) {
        assert_eq!(
            r.source_hardware_addr.octets(),
            e.sender_mac,
            "ARP repr sha"
        );
        assert_eq!(
            r.source_protocol_addr.octets(),
            e.sender_ipv4,
            "ARP repr spa"
        );
        assert_eq!(
            r.target_hardware_addr.octets(),
            e.target_mac,
            "ARP repr tha"
        );
        assert_eq!(
            r.target_protocol_addr.octets(),
            e.target_ipv4,
            "ARP repr tpa"
        );
    }
    true
}

/// etherparse's one's complement checksum of `bytes` without the 2-byte checksum
/// field at `at` (an even offset).
fn raw_checksum(bytes: &[u8], at: usize) -> u16 {
    ep::checksum::Sum16BitWords::new()
        .add_slice(bytes.get(..at).unwrap_or(&[]))
        .add_slice(bytes.get(at + 2..).unwrap_or(&[]))
        .ones_complement()
        .to_be()
}

/// `true` if `stored` and `computed` differ only as the two zeros of one's
/// complement arithmetic, the one case where verifying by sum (ours) and by
/// recomputing (etherparse) may disagree.
fn negative_zero(stored: u16, computed: u16) -> bool {
    (stored == 0xffff && computed == 0) || (stored == 0 && computed == 0xffff)
}

/// Asserts the checksum verdicts agree: ours against smoltcp's exactly (both sum),
/// ours against etherparse's recomputation up to negative zero.
fn same_checksum_verdict(layer: &str, ours: bool, smol: Option<bool>, stored: u16, computed: u16) {
    if let Some(smol) = smol {
        assert_eq!(ours, smol, "{layer} checksum verdict vs smoltcp");
    }
    let theirs = stored == computed;
    if ours != theirs {
        assert!(
            ours && negative_zero(stored, computed),
            "{layer} checksum verdict: ours {ours}, etherparse computes {computed:#06x}, stored {stored:#06x}"
        );
    }
}

fn ipv4(p: &[u8], opts: Options, seen: &mut Seen) {
    let ours = Ipv4Packet::new_checked(p);
    let theirs = ep::Ipv4Slice::from_slice(p);
    // smoltcp's structural checks: `check_len`, and the version test its
    // `Repr::parse` makes (its other refusals there, a bad checksum and any
    // fragment, are an endpoint's choices, compared separately or not at all).
    let smol = sm::Ipv4Packet::new_checked(p)
        .ok()
        .filter(|s| s.version() == 4);
    let ihl = p.first().map_or(0, |b| b & 0x0f);
    let protocol = p.get(9).copied().unwrap_or(0);
    match (&ours, &theirs) {
        (Ok(_), Ok(_)) | (Err(_), Err(_)) => {}
        (Ok(_), Err(err)) => {
            // Only the AH header etherparse parses (and we do not) can fail it.
            let ah = match err {
                ep::err::ipv4::SliceError::Exts(_) => true,
                ep::err::ipv4::SliceError::Len(l) => l.layer == ep::err::Layer::IpAuthHeader,
                ep::err::ipv4::SliceError::Header(_) => false,
            };
            assert!(
                protocol == 51 && ah,
                "IPv4 accepted by us, rejected by etherparse: {err}"
            );
        }
        (Err(err), Ok(_)) => panic!("IPv4 rejected by us ({err}), accepted by etherparse"),
    }
    match (&ours, &smol) {
        (Ok(_), None) => panic!("IPv4 accepted by us, rejected by smoltcp"),
        (Err(err), Some(_)) => assert!(
            ihl < 5 && matches!(err, WireError::Malformed { .. }),
            "IPv4 rejected by us ({err}) with IHL {ihl}, accepted by smoltcp"
        ),
        _ => {}
    }
    let (Ok(o), Some(s)) = (ours, smol) else {
        return;
    };
    seen.ipv4 = true;
    let eh = match &theirs {
        Ok(e) => e.header(),
        // AH: compare the IPv4 header alone.
        Err(_) => match ep::Ipv4HeaderSlice::from_slice(p) {
            Ok(h) => h,
            Err(err) => panic!("IPv4 header rejected by etherparse: {err}"),
        },
    };
    assert_eq!(o.version(), eh.version(), "IPv4 version");
    assert_eq!(
        o.header_len(),
        usize::from(eh.ihl()) * 4,
        "IPv4 header length"
    );
    assert_eq!(
        o.header_len(),
        usize::from(s.header_len()),
        "IPv4 header length (smoltcp)"
    );
    let tos = (eh.dcp().value() << 2) | eh.ecn().value();
    assert_eq!(o.dscp_ecn(), tos, "IPv4 DSCP/ECN");
    assert_eq!(
        o.dscp_ecn(),
        (s.dscp() << 2) | s.ecn(),
        "IPv4 DSCP/ECN (smoltcp)"
    );
    assert_eq!(o.total_len(), eh.total_len(), "IPv4 total length");
    assert_eq!(o.total_len(), s.total_len(), "IPv4 total length (smoltcp)");
    assert_eq!(o.ident(), eh.identification(), "IPv4 ident");
    assert_eq!(o.ident(), s.ident(), "IPv4 ident (smoltcp)");
    assert_eq!(o.dont_frag(), eh.dont_fragment(), "IPv4 DF");
    assert_eq!(o.dont_frag(), s.dont_frag(), "IPv4 DF (smoltcp)");
    assert_eq!(o.more_frags(), eh.more_fragments(), "IPv4 MF");
    assert_eq!(o.more_frags(), s.more_frags(), "IPv4 MF (smoltcp)");
    assert_eq!(
        o.frag_offset(),
        eh.fragments_offset().value() * 8,
        "IPv4 offset"
    );
    assert_eq!(o.frag_offset(), s.frag_offset(), "IPv4 offset (smoltcp)");
    assert_eq!(
        o.is_fragment(),
        eh.is_fragmenting_payload(),
        "IPv4 is fragment"
    );
    assert_eq!(o.ttl(), eh.ttl(), "IPv4 TTL");
    assert_eq!(o.ttl(), s.hop_limit(), "IPv4 TTL (smoltcp)");
    assert_eq!(u8::from(o.protocol()), eh.protocol().0, "IPv4 protocol");
    assert_eq!(
        u8::from(o.protocol()),
        u8::from(s.next_header()),
        "IPv4 protocol (smoltcp)"
    );
    assert_eq!(o.checksum(), eh.header_checksum(), "IPv4 checksum field");
    assert_eq!(o.checksum(), s.checksum(), "IPv4 checksum field (smoltcp)");
    assert_eq!(o.src_addr(), eh.source_addr(), "IPv4 src");
    assert_eq!(o.src_addr(), s.src_addr(), "IPv4 src (smoltcp)");
    assert_eq!(o.dst_addr(), eh.destination_addr(), "IPv4 dst");
    assert_eq!(o.dst_addr(), s.dst_addr(), "IPv4 dst (smoltcp)");
    assert_eq!(o.options(), eh.options(), "IPv4 options");
    assert_eq!(o.payload(), s.payload(), "IPv4 payload (smoltcp)");
    if let Ok(e) = &theirs {
        if e.extensions().auth.is_none() {
            assert_eq!(o.payload(), e.payload().payload, "IPv4 payload");
        }
    }
    let ok = o.verify_checksum();
    let smol_ok = opts.smoltcp_checksums.then(|| s.verify_checksum());
    // etherparse's `Ipv4Header` has no field for the reserved flag bit (0x8000 of
    // the flags word), so `calc_header_checksum` of `to_header()` is the checksum of
    // another header when that bit is set; its checksum arithmetic over the bytes
    // is what is compared.
    let computed = raw_checksum(o.header(), 10);
    if o.header().get(6).is_some_and(|b| b & 0x80 == 0) {
        assert_eq!(
            computed,
            eh.to_header().calc_header_checksum(),
            "etherparse's two sums"
        );
    }
    same_checksum_verdict("IPv4", ok, smol_ok, o.checksum(), computed);
    seen.ipv4_checksum_ok = ok;

    // Transport headers: only a first fragment (or an unfragmented datagram) has
    // one; checksums only when the datagram is whole.
    if o.frag_offset() != 0 {
        return;
    }
    let whole = !o.more_frags();
    let (src, dst) = (o.src_addr(), o.dst_addr());
    match protocol {
        6 => tcp(o.payload(), src, dst, whole, opts, seen),
        17 => udp(o.payload(), src, dst, whole, opts, seen),
        1 => icmp(o.payload(), whole, opts, seen),
        _ => {}
    }
}

fn tcp(seg: &[u8], src: Ipv4Addr, dst: Ipv4Addr, whole: bool, opts: Options, seen: &mut Seen) {
    let ours = TcpPacket::new_checked(seg);
    let theirs = ep::TcpSlice::from_slice(seg);
    let smol = sm::TcpPacket::new_checked(seg);
    assert_eq!(ours.is_ok(), theirs.is_ok(), "TCP accept vs etherparse");
    assert_eq!(ours.is_ok(), smol.is_ok(), "TCP accept vs smoltcp");
    let (Ok(o), Ok(e), Ok(s)) = (ours, theirs, smol) else {
        return;
    };
    seen.tcp = true;
    assert_eq!(o.src_port(), e.source_port(), "TCP sport");
    assert_eq!(o.src_port(), s.src_port(), "TCP sport (smoltcp)");
    assert_eq!(o.dst_port(), e.destination_port(), "TCP dport");
    assert_eq!(o.dst_port(), s.dst_port(), "TCP dport (smoltcp)");
    assert_eq!(o.seq_number(), e.sequence_number(), "TCP seq");
    assert_eq!(
        o.seq_number().to_be_bytes(),
        s.seq_number().0.to_be_bytes(),
        "TCP seq (smoltcp)"
    );
    assert_eq!(o.ack_number(), e.acknowledgment_number(), "TCP ack");
    assert_eq!(
        o.ack_number().to_be_bytes(),
        s.ack_number().0.to_be_bytes(),
        "TCP ack (smoltcp)"
    );
    assert_eq!(
        o.header_len(),
        usize::from(e.data_offset()) * 4,
        "TCP header length"
    );
    assert_eq!(
        o.header_len(),
        usize::from(s.header_len()),
        "TCP header length (smoltcp)"
    );
    let bits = |b: [bool; 8]| b.iter().rev().fold(0u8, |acc, &x| (acc << 1) | u8::from(x));
    let e_flags = bits([
        e.fin(),
        e.syn(),
        e.rst(),
        e.psh(),
        e.ack(),
        e.urg(),
        e.ece(),
        e.cwr(),
    ]);
    let s_flags = bits([
        s.fin(),
        s.syn(),
        s.rst(),
        s.psh(),
        s.ack(),
        s.urg(),
        s.ece(),
        s.cwr(),
    ]);
    assert_eq!(o.flags(), e_flags, "TCP flags");
    assert_eq!(o.flags(), s_flags, "TCP flags (smoltcp)");
    assert_eq!(o.window(), e.window_size(), "TCP window");
    assert_eq!(o.window(), s.window_len(), "TCP window (smoltcp)");
    assert_eq!(o.checksum(), e.checksum(), "TCP checksum field");
    assert_eq!(o.checksum(), s.checksum(), "TCP checksum field (smoltcp)");
    let options = o.header().get(20..).unwrap_or(&[]);
    assert_eq!(options, e.options(), "TCP options");
    assert_eq!(options, s.options(), "TCP options (smoltcp)");
    assert_eq!(o.payload(), e.payload(), "TCP payload");
    assert_eq!(o.payload(), s.payload(), "TCP payload (smoltcp)");
    if !whole {
        return;
    }
    let ok = o.verify_checksum(src, dst);
    let smol_ok = opts
        .smoltcp_checksums
        .then(|| s.verify_checksum(&sm::IpAddress::Ipv4(src), &sm::IpAddress::Ipv4(dst)));
    let computed = match e.calc_checksum_ipv4(src.octets(), dst.octets()) {
        Ok(c) => c,
        Err(err) => panic!("a segment inside an IPv4 datagram is too long for etherparse: {err}"),
    };
    same_checksum_verdict("TCP", ok, smol_ok, o.checksum(), computed);
    seen.l4_checksum_ok = ok;
}

fn udp(dgram: &[u8], src: Ipv4Addr, dst: Ipv4Addr, whole: bool, opts: Options, seen: &mut Seen) {
    let ours = UdpPacket::new_checked(dgram);
    let theirs = ep::UdpSlice::from_slice(dgram);
    let smol = sm::UdpPacket::new_checked(dgram);
    let length = dgram
        .get(4..6)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    assert_eq!(ours.is_ok(), smol.is_ok(), "UDP accept vs smoltcp");
    match (&ours, &theirs) {
        (Err(err), Ok(_)) => assert!(
            length == 0 && matches!(err, WireError::Malformed { .. }),
            "UDP rejected by us ({err}), accepted by etherparse, length field {length}"
        ),
        (Ok(_), Err(err)) => panic!("UDP accepted by us, rejected by etherparse: {err}"),
        _ => {}
    }
    let (Ok(o), Ok(e), Ok(s)) = (ours, theirs, smol) else {
        return;
    };
    seen.udp = true;
    assert_eq!(o.src_port(), e.source_port(), "UDP sport");
    assert_eq!(o.src_port(), s.src_port(), "UDP sport (smoltcp)");
    assert_eq!(o.dst_port(), e.destination_port(), "UDP dport");
    assert_eq!(o.dst_port(), s.dst_port(), "UDP dport (smoltcp)");
    assert_eq!(o.len(), e.length(), "UDP length");
    assert_eq!(o.len(), s.len(), "UDP length (smoltcp)");
    assert_eq!(o.checksum(), e.checksum(), "UDP checksum field");
    assert_eq!(o.checksum(), s.checksum(), "UDP checksum field (smoltcp)");
    assert_eq!(o.payload(), e.payload(), "UDP payload");
    assert_eq!(o.payload(), s.payload(), "UDP payload (smoltcp)");
    if !whole {
        return;
    }
    let ok = o.verify_checksum(src, dst);
    let stored = o.checksum();
    if opts.smoltcp_checksums {
        // smoltcp calls a stored 0 ("no checksum") right; we leave that to callers.
        let smol_ok = s.verify_checksum(&sm::IpAddress::Ipv4(src), &sm::IpAddress::Ipv4(dst));
        assert_eq!(
            ok,
            stored != 0 && smol_ok,
            "UDP checksum verdict vs smoltcp"
        );
    }
    let computed =
        match e
            .to_header()
            .calc_checksum_ipv4_raw(src.octets(), dst.octets(), e.payload())
        {
            Ok(c) => c,
            Err(err) => {
                panic!("a datagram inside an IPv4 packet is too long for etherparse: {err}")
            }
        };
    // etherparse sends a computed 0 as 0xffff (RFC 768), so a right checksum is
    // exactly the one it computes, and a stored 0 is never one.
    assert_eq!(
        ok,
        stored != 0 && stored == computed,
        "UDP checksum verdict vs etherparse"
    );
    seen.l4_checksum_ok = ok;
}

fn icmp(msg: &[u8], whole: bool, opts: Options, seen: &mut Seen) {
    let ours = Icmpv4Packet::new_checked(msg);
    let theirs = ep::Icmpv4Slice::from_slice(msg);
    let smol = sm::Icmpv4Packet::new_checked(msg);
    assert_eq!(ours.is_ok(), smol.is_ok(), "ICMP accept vs smoltcp");
    let (kind, code) = (msg.first().copied(), msg.get(1).copied());
    match (&ours, &theirs) {
        (Ok(o), Err(err)) => {
            let timestamp = matches!(kind, Some(13 | 14)) && code == Some(0) && msg.len() != 20;
            assert!(
                timestamp,
                "ICMP accepted by us, rejected by etherparse: {err}"
            );
            assert!(
                matches!(Icmpv4Repr::parse(o), Err(WireError::Unsupported { .. })),
                "a timestamp message is not one we answer"
            );
        }
        (Err(err), Ok(_)) => panic!("ICMP rejected by us ({err}), accepted by etherparse"),
        _ => {}
    }
    let (Ok(o), Ok(e), Ok(s)) = (ours, theirs, smol) else {
        return;
    };
    seen.icmp = true;
    assert_eq!(u8::from(o.msg_type()), e.type_u8(), "ICMP type");
    assert_eq!(
        u8::from(o.msg_type()),
        u8::from(s.msg_type()),
        "ICMP type (smoltcp)"
    );
    assert_eq!(o.msg_code(), e.code_u8(), "ICMP code");
    assert_eq!(o.msg_code(), s.msg_code(), "ICMP code (smoltcp)");
    assert_eq!(o.checksum(), e.checksum(), "ICMP checksum field");
    assert_eq!(o.checksum(), s.checksum(), "ICMP checksum field (smoltcp)");
    let rest = [o.echo_ident().to_be_bytes(), o.echo_seq_no().to_be_bytes()].concat();
    assert_eq!(rest, e.bytes5to8(), "ICMP bytes 4..8");
    assert_eq!(o.echo_ident(), s.echo_ident(), "ICMP ident (smoltcp)");
    assert_eq!(o.echo_seq_no(), s.echo_seq_no(), "ICMP seq (smoltcp)");
    assert_eq!(o.data(), s.data(), "ICMP data (smoltcp)");
    if e.header_len() == 8 {
        assert_eq!(o.data(), e.payload(), "ICMP data");
    }
    icmp_repr(&o, &e);
    if !whole {
        return;
    }
    let ok = o.verify_checksum();
    if opts.smoltcp_checksums {
        assert_eq!(ok, s.verify_checksum(), "ICMP checksum verdict vs smoltcp");
    }
    // etherparse's decoded type keeps bytes 4..8 only where the type gives them a
    // meaning (it drops the "unused" word of, e.g., a network unreachable), so its
    // type's `calc_checksum` is compared where its header writes back the same
    // bytes, and its checksum arithmetic over the bytes everywhere.
    let computed = raw_checksum(msg, 2);
    let header = e.header();
    if header.to_bytes().get(4..8) == msg.get(4..8) {
        let typed = header.icmp_type.calc_checksum(e.payload());
        assert_eq!(computed, typed, "etherparse's two ICMP sums");
    }
    same_checksum_verdict("ICMP", ok, None, o.checksum(), computed);
    seen.l4_checksum_ok = ok;
}

/// Our `Icmpv4Repr` (the messages we answer and build) against etherparse's
/// decoded type.
fn icmp_repr(o: &Icmpv4Packet<&[u8]>, e: &ep::Icmpv4Slice<'_>) {
    use ep::icmpv4::DestUnreachableHeader;
    use ep::Icmpv4Type as T;
    match (Icmpv4Repr::parse(o), e.icmp_type()) {
        (
            Ok(Icmpv4Repr::EchoRequest {
                ident,
                seq_no,
                data,
            }),
            T::EchoRequest(h),
        )
        | (
            Ok(Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            }),
            T::EchoReply(h),
        ) => {
            assert_eq!((ident, seq_no), (h.id, h.seq), "ICMP echo ident/seq");
            assert_eq!(data, e.payload(), "ICMP echo data");
        }
        (
            Ok(Icmpv4Repr::DstUnreachable {
                code,
                next_hop_mtu,
                quoted,
            }),
            t,
        ) => {
            assert_eq!(o.msg_code(), code, "ICMP unreachable code");
            assert_eq!(quoted, e.payload(), "ICMP unreachable quote");
            match t {
                T::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: mtu,
                }) => assert_eq!(next_hop_mtu, mtu, "ICMP next-hop MTU"),
                T::DestinationUnreachable(_) => assert_eq!(next_hop_mtu, 0, "MTU outside code 4"),
                // Codes above 15 have no name in etherparse; we take any code.
                T::Unknown {
                    type_u8: 3,
                    code_u8,
                    ..
                } => assert!(code_u8 > 15, "code {code_u8}"),
                other => panic!("our unreachable is etherparse's {other:?}"),
            }
        }
        (Ok(Icmpv4Repr::TimeExceeded { code, quoted }), t) => {
            assert_eq!(o.msg_code(), code, "ICMP time exceeded code");
            assert_eq!(quoted, e.payload(), "ICMP time exceeded quote");
            match t {
                T::TimeExceeded(c) => assert_eq!(c as u8, code, "time exceeded code"),
                // Codes above 1 have no name in etherparse; we take any code.
                T::Unknown {
                    type_u8: 11,
                    code_u8,
                    ..
                } => assert!(code_u8 > 1, "code {code_u8}"),
                other => panic!("our time exceeded is etherparse's {other:?}"),
            }
        }
        (Ok(repr), t) => panic!("our {repr:?} is etherparse's {t:?}"),
        (Err(err), t) => {
            // Not a message we represent: an echo with a nonzero code (which
            // etherparse does not call an echo either) or another type.
            assert!(matches!(err, WireError::Unsupported { .. }), "{err}");
            assert!(
                !matches!(t, T::EchoRequest(_) | T::EchoReply(_)),
                "etherparse reads an echo we refuse: {t:?}"
            );
            assert!(
                !matches!(u8::from(o.msg_type()), 3 | 11),
                "unreachable/time exceeded refused"
            );
        }
    }
}
