//! TCP header view (RFC 9293), options included, over the header and the payload behind it.

use super::{be16, be32, need, WireError};
use crate::gso::checksum::Checksum;

mod field {
    use std::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    /// Data offset (4 bits), reserved (3 bits) and the nine flags.
    pub const FLAGS: Range<usize> = 12..14;
    pub const WIN_SIZE: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
    pub const OPTIONS: usize = 20;
}

/// Bytes of a header without options.
pub const MIN_HEADER_LEN: usize = field::OPTIONS;
/// Where the checksum sits in the header (virtio's `csum_offset` for TCP).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// Flag bits of the 12 bits after the data offset.
pub mod flags {
    pub const FIN: u16 = 0x001;
    pub const SYN: u16 = 0x002;
    pub const RST: u16 = 0x004;
    pub const PSH: u16 = 0x008;
    pub const ACK: u16 = 0x010;
    pub const URG: u16 = 0x020;
    pub const ECE: u16 = 0x040;
    pub const CWR: u16 = 0x080;
    /// Accurate ECN (formerly NS).
    pub const AE: u16 = 0x100;
}

/// A view of a TCP header and its payload.
#[derive(Debug, Clone, Copy)]
pub struct TcpSegment<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpSegment<T> {
    /// Wraps `buffer` after checking that it holds a whole header whose data offset is at
    /// least 5 words.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        need(MIN_HEADER_LEN, b.len())?;
        let hl = usize::from(b[field::FLAGS.start] >> 4) * 4;
        if hl < MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        need(hl, b.len())?;
        Ok(TcpSegment { buffer })
    }

    #[inline]
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Header bytes, options included.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.b()[field::FLAGS.start] >> 4) * 4
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.b(), field::SRC_PORT.start)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.b(), field::DST_PORT.start)
    }

    #[inline]
    pub fn seq_number(&self) -> u32 {
        be32(self.b(), field::SEQ_NUM.start)
    }

    #[inline]
    pub fn ack_number(&self) -> u32 {
        be32(self.b(), field::ACK_NUM.start)
    }

    /// The 12 bits after the data offset: 3 reserved bits and the flags (`flags::*`).
    #[inline]
    pub fn flags(&self) -> u16 {
        be16(self.b(), field::FLAGS.start) & 0x0fff
    }

    #[inline]
    pub fn window(&self) -> u16 {
        be16(self.b(), field::WIN_SIZE.start)
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.b(), field::CHECKSUM.start)
    }

    #[inline]
    pub fn urgent(&self) -> u16 {
        be16(self.b(), field::URGENT.start)
    }

    #[inline]
    pub fn options(&self) -> &[u8] {
        &self.b()[field::OPTIONS..self.header_len()]
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.header_len()..]
    }

    /// Whether the checksum over the header and payload, with `pseudo` (the pseudo-header
    /// for this segment's length), is right.
    #[inline]
    pub fn verify_checksum(&self, pseudo: Checksum) -> bool {
        pseudo.add_bytes(self.b()).fold() == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpSegment<T> {
    #[inline]
    fn m(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }

    #[inline]
    pub fn set_seq_number(&mut self, v: u32) {
        self.m()[field::SEQ_NUM].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the 12 bits after the data offset (which stays).
    #[inline]
    pub fn set_flags(&mut self, v: u16) {
        let word = (be16(self.b(), field::FLAGS.start) & 0xf000) | (v & 0x0fff);
        self.m()[field::FLAGS].copy_from_slice(&word.to_be_bytes());
    }

    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        self.m()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }

    /// Computes the checksum over the header and the whole buffer after it, with `pseudo`
    /// (the pseudo-header for the buffer's length), and writes it.
    #[inline]
    pub fn fill_checksum(&mut self, pseudo: Checksum) {
        self.set_checksum(0);
        let c = pseudo.add_bytes(self.b()).finish();
        self.set_checksum(c);
    }
}

/// The parsed form of a TCP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    /// The 12 bits after the data offset.
    pub flags: u16,
    pub window: u16,
    pub checksum: u16,
    pub urgent: u16,
    /// Option bytes, `options_len` of them (a multiple of 4, at most 40).
    pub options: [u8; 40],
    pub options_len: u8,
}

impl TcpRepr {
    pub fn parse<T: AsRef<[u8]>>(s: &TcpSegment<T>) -> TcpRepr {
        let opts = s.options();
        let mut options = [0u8; 40];
        options[..opts.len()].copy_from_slice(opts);
        TcpRepr {
            src_port: s.src_port(),
            dst_port: s.dst_port(),
            seq: s.seq_number(),
            ack: s.ack_number(),
            flags: s.flags(),
            window: s.window(),
            checksum: s.checksum(),
            urgent: s.urgent(),
            options,
            options_len: opts.len() as u8,
        }
    }

    /// Header bytes this repr emits.
    pub fn header_len(&self) -> usize {
        MIN_HEADER_LEN + usize::from(self.options_len.min(40)) / 4 * 4
    }

    /// Writes the header (with `checksum` as it is) at the start of `out`; returns its length.
    ///
    /// # Panics
    /// If `out` is shorter than [`TcpRepr::header_len`]; callers size their buffers.
    pub fn emit(&self, out: &mut [u8]) -> usize {
        let hl = self.header_len();
        let out = &mut out[..hl];
        out[field::SRC_PORT].copy_from_slice(&self.src_port.to_be_bytes());
        out[field::DST_PORT].copy_from_slice(&self.dst_port.to_be_bytes());
        out[field::SEQ_NUM].copy_from_slice(&self.seq.to_be_bytes());
        out[field::ACK_NUM].copy_from_slice(&self.ack.to_be_bytes());
        let word = ((hl as u16 / 4) << 12) | (self.flags & 0x0fff);
        out[field::FLAGS].copy_from_slice(&word.to_be_bytes());
        out[field::WIN_SIZE].copy_from_slice(&self.window.to_be_bytes());
        out[field::CHECKSUM].copy_from_slice(&self.checksum.to_be_bytes());
        out[field::URGENT].copy_from_slice(&self.urgent.to_be_bytes());
        out[field::OPTIONS..].copy_from_slice(&self.options[..hl - MIN_HEADER_LEN]);
        hl
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gso::checksum::pseudo_header_v4;
    use proptest::prelude::*;

    #[test]
    fn short_headers_and_small_offsets_are_refused() {
        let mut h = [0u8; 24];
        h[12] = 0x50;
        assert_eq!(
            TcpSegment::new_checked(&h[..19]).unwrap_err(),
            WireError::Truncated { need: 20, have: 19 }
        );
        assert!(TcpSegment::new_checked(&h[..20]).is_ok());
        h[12] = 0x60;
        assert_eq!(
            TcpSegment::new_checked(&h[..23]).unwrap_err(),
            WireError::Truncated { need: 24, have: 23 }
        );
        h[12] = 0x40;
        assert_eq!(
            TcpSegment::new_checked(&h[..]).unwrap_err(),
            WireError::Malformed
        );
    }

    #[test]
    fn set_flags_keeps_the_data_offset() {
        let mut h = [0u8; 32];
        h[12] = 0x80;
        h[13] = 0xff;
        let mut s = TcpSegment::new_checked(&mut h[..]).unwrap();
        s.set_flags(s.flags() & !(flags::FIN | flags::PSH | flags::CWR));
        assert_eq!(s.header_len(), 32);
        assert_eq!(s.flags(), 0x076);
    }

    proptest! {
        #[test]
        fn repr_round_trips_and_checksum_verifies(
            src_port: u16, dst_port: u16, seq: u32, ack: u32, flags in 0u16..0x1000,
            window: u16, urgent: u16, words in 0u8..=10, fill: u8,
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut options = [0u8; 40];
            for (i, o) in options.iter_mut().enumerate().take(usize::from(words) * 4) {
                *o = fill ^ i as u8;
            }
            let repr = TcpRepr { src_port, dst_port, seq, ack, flags, window, checksum: 0, urgent,
                                 options, options_len: words * 4 };
            let mut buf = vec![0u8; repr.header_len() + payload.len()];
            let n = repr.emit(&mut buf);
            buf[n..].copy_from_slice(&payload);
            let pseudo = pseudo_header_v4([1, 2, 3, 4], [5, 6, 7, 8], 6, buf.len() as u32);
            let mut s = TcpSegment::new_checked(&mut buf[..]).unwrap();
            s.fill_checksum(pseudo);
            prop_assert!(s.verify_checksum(pseudo));
            prop_assert_eq!(s.payload(), &payload[..]);
            let parsed = TcpRepr::parse(&s);
            prop_assert_eq!(TcpRepr { checksum: 0, ..parsed }, repr);
        }

        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..70)) {
            if let Ok(s) = TcpSegment::new_checked(&bytes[..]) {
                let _ = (TcpRepr::parse(&s), s.payload().len());
            }
        }
    }
}
