//! The internet checksum (RFC 1071) and the IPv4/IPv6 pseudo-headers TCP and UDP add to it.
//!
//! `Checksum` accumulates a ones'-complement sum of 16-bit big-endian words; it never
//! allocates and never panics. Its folded value is the one representative in `1..=0xFFFF`
//! of the sum's class (0 only when every word added was zero), which is also what Linux's
//! `csum_partial`/`csum_fold` arrive at by any route: a sum computed here from scratch equals,
//! bit for bit, one the kernel updates incrementally.

/// A running ones'-complement sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksum(u64);

impl Checksum {
    /// The empty sum.
    pub const fn new() -> Checksum {
        Checksum(0)
    }

    /// Adds `data` as big-endian 16-bit words, a trailing odd byte as the high half of a word.
    /// The words are counted from `data[0]`, so `data` must start at an even offset of the
    /// bytes the checksum covers, and only the last piece may have an odd length.
    #[inline]
    pub fn add_bytes(self, data: &[u8]) -> Checksum {
        let mut acc = self.0;
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            // Adding with the carry wrapped round keeps the sum mod 2^64 - 1, a multiple of
            // 0xFFFF, so folding it later loses nothing.
            let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            let (s, carry) = acc.overflowing_add(w);
            acc = s + u64::from(carry);
        }
        let mut words = chunks.remainder().chunks_exact(2);
        let mut tail = 0u64;
        for w in &mut words {
            tail += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [b] = words.remainder() {
            tail += u64::from(*b) << 8;
        }
        Checksum(acc).add_u64(tail)
    }

    /// Adds one 16-bit word.
    #[inline]
    pub fn add_u16(self, v: u16) -> Checksum {
        self.add_u64(u64::from(v))
    }

    /// Adds a 32-bit value as two words.
    #[inline]
    pub fn add_u32(self, v: u32) -> Checksum {
        self.add_u64(u64::from(v))
    }

    #[inline]
    fn add_u64(self, v: u64) -> Checksum {
        let (s, carry) = self.0.overflowing_add(v);
        Checksum(s + u64::from(carry))
    }

    /// Joins two sums, each over bytes that started at an even offset.
    #[inline]
    pub fn combine(self, other: Checksum) -> Checksum {
        self.add_u64(other.0)
    }

    /// The sum folded to 16 bits: in `1..=0xFFFF` unless nothing but zeros was added.
    #[inline]
    pub fn fold(self) -> u16 {
        let mut s = (self.0 >> 32) + (self.0 & 0xffff_ffff);
        while s > 0xffff {
            s = (s >> 16) + (s & 0xffff);
        }
        s as u16
    }

    /// The checksum field's value: the complement of the folded sum.
    #[inline]
    pub fn finish(self) -> u16 {
        !self.fold()
    }
}

/// The pseudo-header of TCP or UDP over IPv4: addresses, protocol and the L4 length.
#[inline]
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], protocol: u8, len: u32) -> Checksum {
    Checksum::new()
        .add_u32(u32::from_be_bytes(src))
        .add_u32(u32::from_be_bytes(dst))
        .add_u16(u16::from(protocol))
        .add_u32(len)
}

/// The pseudo-header of TCP or UDP over IPv6 (RFC 8200 section 8.1).
#[inline]
pub fn pseudo_header_v6(src: &[u8; 16], dst: &[u8; 16], protocol: u8, len: u32) -> Checksum {
    Checksum::new()
        .add_bytes(src)
        .add_bytes(dst)
        .add_u32(len)
        .add_u16(u16::from(protocol))
}

/// The checksum of `data` alone, as the IPv4 header checksum is.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    Checksum::new().add_bytes(data).finish()
}

/// A UDP checksum as sent: a computed 0 goes out as 0xFFFF, since 0 means "none" (RFC 768).
/// Linux writes any completed checksum this way (`CSUM_MANGLED_0`).
#[inline]
pub fn mangle_zero(c: u16) -> u16 {
    if c == 0 {
        0xffff
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 1071 done the slow way: one 16-bit word at a time, carries folded at the end.
    fn reference(data: &[u8]) -> u16 {
        let mut s: u64 = 0;
        for w in data.chunks(2) {
            let hi = u64::from(w[0]) << 8;
            s += hi | w.get(1).map_or(0, |&b| u64::from(b));
        }
        while s > 0xffff {
            s = (s >> 16) + (s & 0xffff);
        }
        !(s as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(Checksum::new().add_bytes(&data).fold(), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn known_ipv4_header() {
        // A textbook header (Wikipedia's example) whose checksum is b861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(checksum(&h), 0);
    }

    #[test]
    fn zeros_fold_to_zero_and_ones_never_do() {
        assert_eq!(Checksum::new().add_bytes(&[0; 64]).fold(), 0);
        assert_eq!(Checksum::new().add_bytes(&[0xff; 64]).fold(), 0xffff);
        assert_eq!(Checksum::new().add_u16(1).add_u16(0xfffe).fold(), 0xffff);
        assert_eq!(mangle_zero(0), 0xffff);
        assert_eq!(mangle_zero(7), 7);
    }

    proptest! {
        #[test]
        fn equals_the_word_by_word_sum(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(checksum(&data), reference(&data));
        }

        #[test]
        fn split_at_even_offsets_is_the_same_sum(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            cut in 0usize..150,
        ) {
            let cut = (cut * 2).min(data.len() & !1);
            let whole = Checksum::new().add_bytes(&data);
            let parts = Checksum::new().add_bytes(&data[..cut]).combine(Checksum::new().add_bytes(&data[cut..]));
            prop_assert_eq!(whole.fold(), parts.fold());
        }

        #[test]
        fn a_filled_checksum_verifies(mut data in proptest::collection::vec(any::<u8>(), 2..300)) {
            data[0] = 0;
            data[1] = 0;
            let c = checksum(&data);
            data[..2].copy_from_slice(&c.to_be_bytes());
            prop_assert_eq!(Checksum::new().add_bytes(&data).fold(), 0xffff);
        }
    }
}
