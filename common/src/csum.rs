//! RFC 1071 Internet checksum over a fixed-size buffer, written so the BPF
//! verifier sees a loop with a constant bound.

/// One's-complement sum of the first `len` bytes of `buf` (an odd tail byte
/// is padded with zero), folded and inverted: the value to store in a
/// checksum field whose bytes were zero while summing.
#[inline(always)]
pub fn internet_checksum<const N: usize>(buf: &[u8; N], len: usize) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < N / 2 {
        let at = 2 * i;
        if at < len {
            let hi = buf[at] as u32;
            let lo = if at + 1 < len { buf[at + 1] as u32 } else { 0 };
            sum += (hi << 8) | lo;
        }
        i += 1;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// RFC 1624 incremental update: the checksum `csum` of data in which the
/// bytes `old` (an even count, at an even offset) became `new`.
#[inline(always)]
pub fn adjust<const N: usize>(csum: u16, old: [u8; N], new: [u8; N]) -> u16 {
    // HC' = ~(~HC + ~m + m'), word by word.
    let mut sum: u32 = u32::from(!csum);
    let mut i = 0;
    while i + 1 < N {
        let m = u16::from_be_bytes([old[i], old[i + 1]]);
        let m2 = u16::from_be_bytes([new[i], new[i + 1]]);
        sum += u32::from(!m) + u32::from(m2);
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 header with its checksum field zeroed.
    const SAMPLE_IPV4_HEADER: [u8; 20] = [
        0x45, 0, 0, 0x3c, 0x1c, 0x46, 0x40, 0, 0x40, 6, 0, 0, 0xac, 0x10, 0x0a, 0x63, 0xac, 0x10,
        0x0a, 0x0c,
    ];

    #[test]
    fn incremental_update_matches_recomputing() {
        let mut h = SAMPLE_IPV4_HEADER;
        let before = internet_checksum(&h, 20);
        let old: [u8; 4] = h[16..20].try_into().unwrap();
        let new = [10, 244, 2, 5];
        h[16..20].copy_from_slice(&new);
        assert_eq!(adjust(before, old, new), internet_checksum(&h, 20));
        // Two bytes (a port), with a change that wraps the carry.
        let mut orig = h;
        orig[4..6].copy_from_slice(&[0x00, 0x50]);
        let mut changed = orig;
        changed[4..6].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(
            adjust(internet_checksum(&orig, 20), [0x00, 0x50], [0xff, 0xff]),
            internet_checksum(&changed, 20)
        );
    }

    #[test]
    fn rfc1071_example() {
        // The worked example of RFC 1071 section 3: sum 0xddf2, checksum !0xddf2.
        let buf = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&buf, 8), !0xddf2);
    }

    #[test]
    fn ipv4_header_verifies_to_zero() {
        let mut h = SAMPLE_IPV4_HEADER;
        let c = internet_checksum(&h, 20);
        assert_eq!(c, 0xb1e6);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(internet_checksum(&h, 20), 0);
    }

    #[test]
    fn odd_length_pads_with_zero_and_ignores_the_rest() {
        let a = [1u8, 2, 3, 0xff, 0xff, 0xff];
        let b = [1u8, 2, 3, 0, 0, 0];
        assert_eq!(internet_checksum(&a, 3), internet_checksum(&b, 6));
    }
}
