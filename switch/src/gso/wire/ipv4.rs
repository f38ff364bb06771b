//! IPv4 header view (RFC 791), options included.

use super::{be16, need, WireError};
use crate::gso::checksum;

mod field {
    use std::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    pub const DST_ADDR: Range<usize> = 16..20;
    pub const OPTIONS: usize = 20;
}

/// Bytes of a header without options.
pub const MIN_HEADER_LEN: usize = field::OPTIONS;
/// Bytes of the longest header (IHL 15).
pub const MAX_HEADER_LEN: usize = 60;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 header and what follows it.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` after checking that it holds a whole header of version 4 whose IHL is
    /// at least 5. The total length field is not checked: segmentation, like Linux's,
    /// takes the length from the frame and rewrites the field.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        need(MIN_HEADER_LEN, b.len())?;
        let hl = usize::from(b[field::VER_IHL] & 0x0f) * 4;
        if b[field::VER_IHL] >> 4 != 4 || hl < MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        need(hl, b.len())?;
        Ok(Ipv4Packet { buffer })
    }

    #[inline]
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Header bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[field::VER_IHL] & 0x0f) * 4
    }

    #[inline]
    pub fn dscp_ecn(&self) -> u8 {
        self.b()[field::DSCP_ECN]
    }

    #[inline]
    pub fn total_len(&self) -> u16 {
        be16(self.b(), field::LENGTH.start)
    }

    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.b(), field::IDENT.start)
    }

    #[inline]
    pub fn dont_frag(&self) -> bool {
        be16(self.b(), field::FLG_OFF.start) & FLAG_DF != 0
    }

    #[inline]
    pub fn more_frags(&self) -> bool {
        be16(self.b(), field::FLG_OFF.start) & FLAG_MF != 0
    }

    /// The fragment offset in bytes.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (be16(self.b(), field::FLG_OFF.start) & OFFSET_MASK) << 3
    }

    /// Whether this is a fragment (MF set or a non-zero offset).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        be16(self.b(), field::FLG_OFF.start) & (FLAG_MF | OFFSET_MASK) != 0
    }

    #[inline]
    pub fn ttl(&self) -> u8 {
        self.b()[field::TTL]
    }

    #[inline]
    pub fn protocol(&self) -> u8 {
        self.b()[field::PROTOCOL]
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.b(), field::CHECKSUM.start)
    }

    #[inline]
    pub fn src_addr(&self) -> [u8; 4] {
        let b = self.b();
        [b[12], b[13], b[14], b[15]]
    }

    #[inline]
    pub fn dst_addr(&self) -> [u8; 4] {
        let b = self.b();
        [b[16], b[17], b[18], b[19]]
    }

    /// The options (header bytes after the fixed 20).
    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.b()[field::OPTIONS..self.header_len()]
    }

    /// Whether the header checksum is right.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(&self.b()[..self.header_len()]) == 0
    }

    /// Everything after the header (to the end of the buffer, whatever the length field says).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    #[inline]
    fn m(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    #[inline]
    pub fn set_total_len(&mut self, v: u16) {
        self.m()[field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }

    #[inline]
    pub fn set_ident(&mut self, v: u16) {
        self.m()[field::IDENT].copy_from_slice(&v.to_be_bytes());
    }

    /// Writes the whole flags and offset field as a fragment's: reserved and DF clear, `more`
    /// as MF, `offset` in bytes (a multiple of 8 below 65536).
    #[inline]
    pub fn set_fragment(&mut self, more: bool, offset: u16) {
        let v = ((offset >> 3) & OFFSET_MASK) | if more { FLAG_MF } else { 0 };
        self.m()[field::FLG_OFF].copy_from_slice(&v.to_be_bytes());
    }

    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        self.m()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }

    /// Computes the header checksum and writes it.
    #[inline]
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = self.header_len();
        let c = checksum::checksum(&self.b()[..hl]);
        self.set_checksum(c);
    }
}

/// The parsed form of an IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub dscp_ecn: u8,
    pub total_len: u16,
    pub ident: u16,
    pub dont_frag: bool,
    pub more_frags: bool,
    /// In bytes, a multiple of 8.
    pub frag_offset: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Option bytes, `options_len` of them (a multiple of 4, at most 40).
    pub options: [u8; 40],
    pub options_len: u8,
}

impl Ipv4Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) -> Ipv4Repr {
        let opts = p.options();
        let mut options = [0u8; 40];
        options[..opts.len()].copy_from_slice(opts);
        Ipv4Repr {
            dscp_ecn: p.dscp_ecn(),
            total_len: p.total_len(),
            ident: p.ident(),
            dont_frag: p.dont_frag(),
            more_frags: p.more_frags(),
            frag_offset: p.frag_offset(),
            ttl: p.ttl(),
            protocol: p.protocol(),
            src: p.src_addr(),
            dst: p.dst_addr(),
            options,
            options_len: opts.len() as u8,
        }
    }

    /// Header bytes this repr emits.
    pub fn header_len(&self) -> usize {
        MIN_HEADER_LEN + usize::from(self.options_len.min(40)) / 4 * 4
    }

    /// Writes the header, checksum filled, at the start of `out`; returns its length.
    ///
    /// # Panics
    /// If `out` is shorter than [`Ipv4Repr::header_len`]; callers size their buffers.
    pub fn emit(&self, out: &mut [u8]) -> usize {
        let hl = self.header_len();
        let out = &mut out[..hl];
        out[field::VER_IHL] = 0x40 | (hl / 4) as u8;
        out[field::DSCP_ECN] = self.dscp_ecn;
        out[field::LENGTH].copy_from_slice(&self.total_len.to_be_bytes());
        out[field::IDENT].copy_from_slice(&self.ident.to_be_bytes());
        let flags =
            if self.dont_frag { FLAG_DF } else { 0 } | if self.more_frags { FLAG_MF } else { 0 };
        let fo = flags | ((self.frag_offset >> 3) & OFFSET_MASK);
        out[field::FLG_OFF].copy_from_slice(&fo.to_be_bytes());
        out[field::TTL] = self.ttl;
        out[field::PROTOCOL] = self.protocol;
        out[field::SRC_ADDR].copy_from_slice(&self.src);
        out[field::DST_ADDR].copy_from_slice(&self.dst);
        out[field::OPTIONS..].copy_from_slice(&self.options[..hl - MIN_HEADER_LEN]);
        out[field::CHECKSUM].fill(0);
        let c = checksum::checksum(out);
        out[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
        hl
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_or_odd_headers_are_refused() {
        let mut h = [0u8; 24];
        h[0] = 0x45;
        for n in 0..MIN_HEADER_LEN {
            assert_eq!(
                Ipv4Packet::new_checked(&h[..n]).unwrap_err(),
                WireError::Truncated {
                    need: MIN_HEADER_LEN,
                    have: n
                }
            );
        }
        h[0] = 0x46;
        assert_eq!(
            Ipv4Packet::new_checked(&h[..23]).unwrap_err(),
            WireError::Truncated { need: 24, have: 23 }
        );
        assert!(Ipv4Packet::new_checked(&h[..]).is_ok());
        h[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&h[..]).unwrap_err(),
            WireError::Malformed
        );
        h[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&h[..]).unwrap_err(),
            WireError::Malformed
        );
    }

    #[test]
    fn fragment_field_is_rewritten_whole() {
        let repr = Ipv4Repr {
            dscp_ecn: 0,
            total_len: 20,
            ident: 1,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
            ttl: 64,
            protocol: 17,
            src: [10, 0, 0, 1],
            dst: [10, 0, 0, 2],
            options: [0; 40],
            options_len: 0,
        };
        let mut b = [0u8; 20];
        repr.emit(&mut b);
        let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
        assert!(p.dont_frag() && !p.is_fragment());
        p.set_fragment(true, 1480);
        p.fill_checksum();
        assert!(!p.dont_frag() && p.more_frags() && p.is_fragment());
        assert_eq!(p.frag_offset(), 1480);
        assert!(p.verify_checksum());
    }

    proptest! {
        #[test]
        fn repr_round_trips(dscp_ecn: u8, total_len: u16, ident: u16, dont_frag: bool,
                            more_frags: bool, frag_units in 0u16..0x2000, ttl: u8, protocol: u8,
                            src: [u8; 4], dst: [u8; 4], words in 0u8..=10, fill: u8) {
            let mut options = [0u8; 40];
            for (i, o) in options.iter_mut().enumerate().take(usize::from(words) * 4) {
                *o = fill.wrapping_add(i as u8);
            }
            let repr = Ipv4Repr {
                dscp_ecn, total_len, ident, dont_frag, more_frags, frag_offset: frag_units << 3,
                ttl, protocol, src, dst, options, options_len: words * 4,
            };
            let mut buf = [0u8; 70];
            let n = repr.emit(&mut buf);
            prop_assert_eq!(n, 20 + usize::from(words) * 4);
            let p = Ipv4Packet::new_checked(&buf[..n + 3]).unwrap();
            prop_assert!(p.verify_checksum());
            prop_assert_eq!(p.payload().len(), 3);
            prop_assert_eq!(Ipv4Repr::parse(&p), repr);
        }

        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..70)) {
            if let Ok(p) = Ipv4Packet::new_checked(&bytes[..]) {
                let _ = (Ipv4Repr::parse(&p), p.verify_checksum(), p.payload().len());
            }
        }
    }
}
