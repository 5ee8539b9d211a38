//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Used by the IPv4 header and ICMP, TCP/UDP pseudo-header sums and NAT rewrites.
//!
//! The sum over a buffer ([`accumulate`]) is the hot part: software TSO sums every
//! segment it writes and the tunnel's receive path verifies every segment it
//! delivers. It adds the data as native-endian 64-bit words on two independent
//! add-with-carry chains (16 bytes a step), counts the carries, and folds to 16 bits
//! at the end. Both shortcuts are exact (RFC 1071 §2): wider words give the same
//! one's-complement sum because 2^16 ≡ 1 (mod 2^16 − 1), so each 2^64 carry counts
//! as 1; and a sum over byte-swapped words is the byte-swapped sum, so on a
//! little-endian machine the folded result is swapped once to big-endian. Measured
//! on this project's 2-core VM: about 2.5× the speed of summing big-endian 32-bit
//! words into a `u64` (≈ 6 GB/s → ≈ 15 GB/s on a 1,448-byte segment).

/// Adds the bytes of `data`, as big-endian 16-bit words (odd tail padded with zero),
/// to the running one's-complement accumulator `acc`. Fold with [`fold`]. Each call
/// treats `data` as starting on a word boundary.
#[inline]
pub fn accumulate(acc: u64, data: &[u8]) -> u64 {
    acc + u64::from(sum16(data))
}

/// One 64-bit word of `bytes` (8 of them), native-endian.
#[inline(always)]
fn word(bytes: &[u8]) -> u64 {
    u64::from_ne_bytes(<[u8; 8]>::try_from(bytes).unwrap_or([0; 8]))
}

/// The one's-complement sum of `data` as big-endian 16-bit words, folded to 16 bits.
#[inline]
fn sum16(data: &[u8]) -> u16 {
    let (mut s0, mut s1, mut carries) = (0u64, 0u64, 0u64);
    let mut add = |s0: &mut u64, s1: &mut u64, block: &[u8]| {
        let (a, b) = block.split_at(8);
        let (x, o0) = s0.overflowing_add(word(a));
        let (y, o1) = s1.overflowing_add(word(b));
        *s0 = x;
        *s1 = y;
        carries += u64::from(o0) + u64::from(o1);
    };
    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        add(&mut s0, &mut s1, block);
    }
    let rest = blocks.remainder();
    if !rest.is_empty() {
        let mut tail = [0u8; 16];
        if let Some(t) = tail.get_mut(..rest.len()) {
            t.copy_from_slice(rest);
        }
        add(&mut s0, &mut s1, &tail);
    }
    // Each carry out of 64 bits is worth 2^64 ≡ 1.
    let wide = u128::from(s0) + u128::from(s1) + u128::from(carries);
    let low = u64::try_from(wide & u128::from(u64::MAX)).unwrap_or(0);
    let high = u64::try_from(wide >> 64).unwrap_or(0);
    // low + high < 2^64 + 2: at most one more carry.
    let (s, o) = low.overflowing_add(high);
    let s = (s & 0xffff_ffff) + (s >> 32) + u64::from(o);
    let folded = fold(s);
    if cfg!(target_endian = "little") {
        folded.swap_bytes()
    } else {
        folded
    }
}

/// Folds a wide one's-complement accumulator down to 16 bits (not inverted).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // The loop leaves acc <= 0xffff.
    u16::try_from(acc).unwrap_or(0xffff)
}

/// The Internet checksum of `data`: the inverted one's-complement sum, ready to store.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(accumulate(0, data))
}

/// `true` if `data` (checksum field included) sums to 0xffff, i.e. the stored checksum is right.
#[inline]
pub fn verify(data: &[u8]) -> bool {
    fold(accumulate(0, data)) == 0xffff
}

/// Updates checksum `old_sum` after a 16-bit field changed from `old` to `new`
/// (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')).
#[inline]
pub fn update16(old_sum: u16, old: u16, new: u16) -> u16 {
    // Three 16-bit terms sum below 3 * 2^16: two folds always suffice (the first
    // leaves at most 0xffff + 2, the second at most 0xffff), so no loop.
    let acc = u32::from(!old_sum) + u32::from(!old) + u32::from(new);
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    !u16::try_from(acc).unwrap_or(0xffff)
}

/// Updates checksum `old_sum` after a 32-bit field (e.g. an IPv4 address) changed.
#[inline]
pub fn update32(old_sum: u16, old: u32, new: u32) -> u16 {
    let [o0, o1, o2, o3] = old.to_be_bytes();
    let [n0, n1, n2, n3] = new.to_be_bytes();
    let acc = u64::from(!old_sum)
        + u64::from(!u16::from_be_bytes([o0, o1]))
        + u64::from(!u16::from_be_bytes([o2, o3]))
        + u64::from(u16::from_be_bytes([n0, n1]))
        + u64::from(u16::from_be_bytes([n2, n3]));
    !fold(acc)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    /// The plain RFC 1071 sum, 16 bits at a time: the reference.
    fn reference(data: &[u8]) -> u16 {
        let mut acc: u64 = 0;
        for pair in data.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |b| u64::from(*b));
            acc += hi | lo;
        }
        fold(acc)
    }

    /// Every length from 0 to 2,999 (all tail sizes of the 16-byte blocks), all
    /// ones (the carry path), and a running accumulator split at word boundaries.
    /// (An earlier single-chain 64-bit variant measured slower than the 32-bit
    /// widening sum; two independent chains with counted carries measure faster:
    /// `tunnel_decap` 258 → 149 ns, `tunnel_tso` 10.0 → 8.1–8.8 µs, same run.)
    #[test]
    fn accumulate_matches_the_16_bit_sum_at_every_length() {
        let data: Vec<u8> = (0..3000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for len in 0..data.len() {
            assert_eq!(
                fold(accumulate(0, &data[..len])),
                reference(&data[..len]),
                "length {len}"
            );
        }
        let ones = vec![0xffu8; 4099];
        assert_eq!(fold(accumulate(0, &ones)), reference(&ones));
        // A running accumulator keeps working: sums split at an even offset add up.
        for split in [0usize, 2, 4, 14, 996, 1000, 1004, 1998] {
            let whole = fold(accumulate(0, &data[..2000]));
            let parts = fold(accumulate(
                accumulate(0, &data[..split]),
                &data[split..2000],
            ));
            assert_eq!(parts, whole, "split at {split}");
        }
    }

    /// RFC 1071 §3 example bytes: 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(accumulate(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_lengths_pad_with_zero() {
        assert_eq!(fold(accumulate(0, &[0xab])), 0xab00);
        assert_eq!(fold(accumulate(0, &[0xab, 0xcd, 0xef])), 0x9ace); // 0xabcd + 0xef00 with end-around carry
        assert_eq!(checksum(&[]), 0xffff);
    }

    /// The IPv4 header from Wikipedia's "IPv4 header checksum" article: checksum b861.
    #[test]
    fn ipv4_header_known_checksum() {
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&hdr), 0xb861);
        hdr[10] = 0xb8;
        hdr[11] = 0x61;
        assert!(verify(&hdr));
        hdr[0] = 0x46;
        assert!(!verify(&hdr));
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        // TTL 64 -> 63 (the TTL/protocol word changes from 0x4011 to 0x3f11).
        let new = update16(0xb861, 0x4011, 0x3f11);
        hdr[8] = 0x3f;
        hdr[10] = 0;
        hdr[11] = 0;
        assert_eq!(new, checksum(&hdr));
        // Source address 192.168.0.1 -> 10.244.1.7.
        hdr[10] = (new >> 8) as u8;
        hdr[11] = new as u8;
        let newer = update32(new, 0xc0a8_0001, 0x0af4_0107);
        hdr[12..16].copy_from_slice(&[10, 244, 1, 7]);
        hdr[10] = 0;
        hdr[11] = 0;
        assert_eq!(newer, checksum(&hdr));
    }

    /// The two-fold update equals RFC 1624 eqn. 3 folded to the end, edge values
    /// (0, 0xffff, carries out of both folds) included.
    #[test]
    fn update16_matches_the_folded_equation() {
        let values = [
            0u16, 1, 0x00ff, 0x0100, 0x3f11, 0x4011, 0x7fff, 0x8000, 0xfffe, 0xffff,
        ];
        for &sum in &values {
            for &old in &values {
                for &new in &values {
                    let reference = !fold(u64::from(!sum) + u64::from(!old) + u64::from(new));
                    assert_eq!(
                        update16(sum, old, new),
                        reference,
                        "{sum:#x} {old:#x} {new:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn large_buffer_does_not_overflow() {
        let data = vec![0xffu8; 65_536];
        assert_eq!(fold(accumulate(0, &data)), 0xffff);
    }
}
