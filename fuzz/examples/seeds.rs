//! Writes seed inputs for the `pipeline` fuzz target into a directory (default
//! `seeds/pipeline`): frames, built with etherparse, that take the paths the primed
//! service flow opens (see `fuzz_targets/pipeline.rs`). A backend's SYN-ACK and ICMP
//! port unreachable, bridged from pod 10.244.1.3 and through the tunnel from
//! 10.244.2.2 (Maglev picks one of the two for the primed flow), and a later
//! fragment of the primed datagram. The first byte is the target's selector: the
//! ingress, with the top bit set so the harness fixes the IPv4 header checksum
//! after mutation.
//!
//! ```sh
//! cargo run --example seeds [DIR]
//! ```

use etherparse::{Icmpv4Type, IpHeaders, IpNumber, Ipv4Header, PacketBuilder};

const POD1: [u8; 4] = [10, 244, 1, 2];
const POD2: [u8; 4] = [10, 244, 1, 3];
const REMOTE: [u8; 4] = [10, 244, 2, 2];
const VIP: [u8; 4] = [10, 96, 1, 0];
const GW: [u8; 6] = [0x0a, 0x58, 10, 244, 1, 1];
const MAC1: [u8; 6] = [0x0a, 0x58, 10, 244, 1, 2];
const MAC2: [u8; 6] = [0x0a, 0x58, 10, 244, 1, 3];
const VTEP1: [u8; 6] = [0x0a, 0x58, 198, 18, 0, 1];
const VTEP2: [u8; 6] = [0x0a, 0x58, 198, 18, 0, 2];
/// A zeroed virtio-net header.
const VNET: [u8; 10] = [0; 10];
/// VXLAN with the I flag and VNI 1.
const VXLAN: [u8; 8] = [0x08, 0, 0, 0, 0, 0, 1, 0];

type Built = Result<(), Box<dyn std::error::Error>>;

/// IPv4 `src` → `dst`, identification 0x1234, TTL 64, `more_frags` and `offset`
/// (in 8-byte units).
fn ip(src: [u8; 4], dst: [u8; 4], more_frags: bool, offset: u16) -> Result<IpHeaders, Box<dyn std::error::Error>> {
    let h = Ipv4Header {
        identification: 0x1234,
        more_fragments: more_frags,
        fragment_offset: etherparse::IpFragOffset::try_new(offset)?,
        time_to_live: 64,
        source: src,
        destination: dst,
        ..Default::default()
    };
    Ok(IpHeaders::Ipv4(h, Default::default()))
}

/// `prefix`, then a SYN-ACK 8080 → 40000 from `backend` to pod 1.
fn synack(prefix: &[u8], dst_mac: [u8; 6], src_mac: [u8; 6], backend: [u8; 4]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut f = prefix.to_vec();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ip(ip(backend, POD1, false, 0)?)
        .tcp(8080, 40_000, 9, 0xffff)
        .syn()
        .ack(2)
        .write(&mut f, &[])?;
    Ok(f)
}

/// `prefix`, then `backend`'s ICMP port unreachable about the primed flow's first
/// fragment (pod 1:40000 → backend:8080, SYN), quoting its IPv4 and TCP headers.
fn port_unreachable(prefix: &[u8], dst_mac: [u8; 6], src_mac: [u8; 6], backend: [u8; 4]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut quote = Vec::new();
    let IpHeaders::Ipv4(mut quoted_ip, _) = ip(POD1, backend, true, 0)? else { return Err("not IPv4".into()) };
    quoted_ip.protocol = IpNumber::TCP;
    quoted_ip.set_payload_len(20)?;
    quoted_ip.header_checksum = quoted_ip.calc_header_checksum();
    quote.extend_from_slice(&quoted_ip.to_bytes());
    let mut syn = etherparse::TcpHeader::new(40_000, 8080, 1, 0);
    syn.syn = true;
    quote.extend_from_slice(&syn.to_bytes());
    let unreachable = Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port);
    let mut f = prefix.to_vec();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ip(ip(backend, POD1, false, 0)?)
        .icmpv4(unreachable)
        .write(&mut f, &quote)?;
    Ok(f)
}

fn main() -> Built {
    let out = std::env::args().nth(1).unwrap_or_else(|| "seeds/pipeline".into());
    std::fs::create_dir_all(&out)?;
    let local = [&[0x82][..], &VNET].concat();
    let tunnel = [&[0x83][..], &VXLAN].concat();
    let mut later_fragment = [&[0x81][..], &VNET].concat();
    PacketBuilder::ethernet2(MAC1, GW)
        .ip(ip(POD1, VIP, false, 1)?)
        .write(&mut later_fragment, IpNumber::TCP, &[0xab; 8])?;
    let seeds = [
        ("synack_local", synack(&local, MAC1, MAC2, POD2)?),
        ("icmp_local", port_unreachable(&local, MAC1, MAC2, POD2)?),
        ("synack_tunnel", synack(&tunnel, VTEP1, VTEP2, REMOTE)?),
        ("icmp_tunnel", port_unreachable(&tunnel, VTEP1, VTEP2, REMOTE)?),
        ("later_fragment", later_fragment),
    ];
    for (name, data) in &seeds {
        std::fs::write(std::path::Path::new(&out).join(name), data)?;
    }
    println!("{} seeds in {out}", seeds.len());
    Ok(())
}
