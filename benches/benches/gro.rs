//! Benchmark of software GRO (`tapestry_dataplane::gro`): the receive side of a
//! cross-node TCP stream, 45 decapsulated 1,398-byte segments for one pod pushed into
//! a `Coalescer` and flushed as one 62,950-byte GSO frame (what one 64 KiB send turns
//! into), in bytes per second of IP packets taken in. For scale, a pure-ACK stream
//! that cannot merge measures the per-frame cost of classifying and passing through.
//! Frames are built once with valid checksums and `DATA_VALID` set, as the pipeline
//! delivers them; `push` only reads them, so no per-iteration setup is needed.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tapestry_benches::{config, group, tcp_frame_seq, Tcp, IP_AT, TCP_ACK};
use tapestry_dataplane::wire::VNET_HDR_F_DATA_VALID;
use tapestry_dataplane::{Coalescer, MacAddr, PortId};

const POD: PortId = PortId(1);
const SRC: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const DST: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const POD_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x02);
const GW_MAC: MacAddr = MacAddr::new(0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x01);
const MSS: usize = 1398;
const SEGMENTS: usize = 45;

/// Segment `i` of a stream with `data_len` bytes each, as delivered to the pod port.
fn segment(i: usize, data_len: usize) -> Vec<u8> {
    let seg = Tcp {
        src: SRC,
        dst: DST,
        sport: 40_000,
        dport: 5201,
        flags: TCP_ACK,
        data_len,
    };
    let seq = 0x0001_0000u32.wrapping_add(u32::try_from(i * data_len).unwrap_or(0));
    let mut f = tcp_frame_seq(POD_MAC, GW_MAC, &seg, seq);
    if let Some(flags) = f.first_mut() {
        *flags = VNET_HDR_F_DATA_VALID;
    }
    f
}

fn bench_gro(c: &mut Criterion) {
    let frames: Vec<Vec<u8>> = (0..SEGMENTS).map(|i| segment(i, MSS)).collect();
    let ip_bytes: usize = frames.iter().map(|f| f.len() - IP_AT).sum();
    let mut gro = Coalescer::new(8);

    // Sanity check outside the timing: the 45 segments come out as one frame.
    let mut emitted = 0usize;
    for f in &frames {
        gro.push(POD, f, &mut |_, _| emitted += 1);
    }
    gro.flush(&mut |_, _| emitted += 1);
    assert_eq!(emitted, 1, "45 segments must merge into one frame");

    let mut g = group(
        c,
        "gro",
        Throughput::Bytes(u64::try_from(ip_bytes).unwrap_or(0)),
    );
    g.bench_function("merge_45x1398", |b| {
        b.iter(|| {
            let mut out = 0usize;
            let mut emit = |p: PortId, bytes: &[u8]| out += usize::from(p.0) + bytes.len();
            for f in &frames {
                gro.push(POD, black_box(f), &mut emit);
            }
            gro.flush(&mut emit);
            black_box(out)
        });
    });
    g.finish();

    let acks: Vec<Vec<u8>> = (0..SEGMENTS).map(|i| segment(i, 0)).collect();
    let mut g = group(
        c,
        "gro_passthrough",
        Throughput::Elements(u64::try_from(SEGMENTS).unwrap_or(0)),
    );
    g.bench_function("pure_ack_x45", |b| {
        b.iter(|| {
            let mut out = 0usize;
            let mut emit = |_: PortId, bytes: &[u8]| out += bytes.len();
            for f in &acks {
                gro.push(POD, black_box(f), &mut emit);
            }
            gro.flush(&mut emit);
            black_box(out)
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_gro
}
criterion_main!(benches);
