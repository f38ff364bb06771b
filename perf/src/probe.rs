//! The probe frame the generator sends and the sink checks: an Ethernet II header with the
//! local-experimental ethertype 0x88b5, then a 24-byte probe header (magic, stream id,
//! sequence number, send time), then zero padding up to the requested frame length.
//!
//! `Frame` is a zero-copy view over a byte buffer: `new_checked` verifies the length once,
//! after which every accessor is infallible and reads or writes the bytes in place, so the
//! generator can rewrite the sequence number and timestamp of a prepared frame without
//! re-emitting it. `Repr` is the parsed form, for tests and for the first emit.
//!
//! ```text
//!  0      6      12   14     18       22          30          38
//!  | dst  | src  |type| magic| stream | sequence  | tx time ns | padding ...
//! ```
//! All multi-byte fields are big-endian.

use crate::mac::MacAddr;

/// IEEE 802 "local experimental ethertype 1".
pub const ETHERTYPE: u16 = 0x88b5;
/// Marks our probes among other users of the experimental ethertype ("RSPB").
pub const MAGIC: u32 = 0x5253_5042;
/// Ethernet header plus probe header: the shortest frame that carries a probe.
pub const HEADER_LEN: usize = field::TX_NS.end;
/// Shortest Ethernet frame without FCS.
pub const MIN_FRAME_LEN: usize = 60;
/// Longest untagged frame without FCS at the default 1500-byte MTU.
pub const MAX_FRAME_LEN: usize = 1514;

mod field {
    use std::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const MAGIC: Range<usize> = 14..18;
    pub const STREAM: Range<usize> = 18..22;
    pub const SEQ: Range<usize> = 22..30;
    pub const TX_NS: Range<usize> = 30..38;
}

/// Why a buffer is not one of our probe frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("frame is {0} bytes; a probe needs at least {HEADER_LEN}")]
    Truncated(usize),
    #[error("ethertype is {0:#06x}, not {ETHERTYPE:#06x}")]
    WrongEthertype(u16),
    #[error("probe magic is {0:#010x}, not {MAGIC:#010x}")]
    WrongMagic(u32),
}

/// A view of a probe frame in `buffer`; the length was checked at construction.
#[derive(Debug, Clone, Copy)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

fn read_array<const N: usize>(b: &[u8], at: std::ops::Range<usize>) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at]);
    out
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps `buffer` after checking it can hold the probe header.
    pub fn new_checked(buffer: T) -> Result<Frame<T>, ProbeError> {
        let len = buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(ProbeError::Truncated(len));
        }
        Ok(Frame { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn dst_addr(&self) -> MacAddr {
        MacAddr(read_array(self.buffer.as_ref(), field::DST))
    }

    pub fn src_addr(&self) -> MacAddr {
        MacAddr(read_array(self.buffer.as_ref(), field::SRC))
    }

    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes(read_array(self.buffer.as_ref(), field::ETHERTYPE))
    }

    pub fn magic(&self) -> u32 {
        u32::from_be_bytes(read_array(self.buffer.as_ref(), field::MAGIC))
    }

    pub fn stream(&self) -> u32 {
        u32::from_be_bytes(read_array(self.buffer.as_ref(), field::STREAM))
    }

    pub fn seq(&self) -> u64 {
        u64::from_be_bytes(read_array(self.buffer.as_ref(), field::SEQ))
    }

    pub fn tx_ns(&self) -> u64 {
        u64::from_be_bytes(read_array(self.buffer.as_ref(), field::TX_NS))
    }

    /// Whether the ethertype and magic say this is one of our probes.
    pub fn is_probe(&self) -> bool {
        self.ethertype() == ETHERTYPE && self.magic() == MAGIC
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    pub fn set_dst_addr(&mut self, m: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&m.0);
    }

    pub fn set_src_addr(&mut self, m: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&m.0);
    }

    pub fn set_ethertype(&mut self, v: u16) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_magic(&mut self, v: u32) {
        self.buffer.as_mut()[field::MAGIC].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_stream(&mut self, v: u32) {
        self.buffer.as_mut()[field::STREAM].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_seq(&mut self, v: u64) {
        self.buffer.as_mut()[field::SEQ].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_tx_ns(&mut self, v: u64) {
        self.buffer.as_mut()[field::TX_NS].copy_from_slice(&v.to_be_bytes());
    }
}

/// The parsed, high-level form of a probe frame's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub dst: MacAddr,
    pub src: MacAddr,
    pub stream: u32,
    pub seq: u64,
    pub tx_ns: u64,
}

impl Repr {
    /// Parses a checked frame, rejecting other ethertypes and foreign payloads.
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Result<Repr, ProbeError> {
        if frame.ethertype() != ETHERTYPE {
            return Err(ProbeError::WrongEthertype(frame.ethertype()));
        }
        if frame.magic() != MAGIC {
            return Err(ProbeError::WrongMagic(frame.magic()));
        }
        Ok(Repr {
            dst: frame.dst_addr(),
            src: frame.src_addr(),
            stream: frame.stream(),
            seq: frame.seq(),
            tx_ns: frame.tx_ns(),
        })
    }

    /// Writes every header field, ethertype and magic included; padding is left as is.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) {
        frame.set_dst_addr(self.dst);
        frame.set_src_addr(self.src);
        frame.set_ethertype(ETHERTYPE);
        frame.set_magic(MAGIC);
        frame.set_stream(self.stream);
        frame.set_seq(self.seq);
        frame.set_tx_ns(self.tx_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Repr {
        Repr {
            dst: "02:00:00:00:00:02".parse().unwrap(),
            src: "02:00:00:00:00:01".parse().unwrap(),
            stream: 0xdead_beef,
            seq: 0x0102_0304_0506_0708,
            tx_ns: 42,
        }
    }

    #[test]
    fn repr_round_trips_through_bytes() {
        let mut buf = [0u8; MIN_FRAME_LEN];
        let mut frame = Frame::new_checked(&mut buf[..]).unwrap();
        sample().emit(&mut frame);
        assert_eq!(Repr::parse(&frame), Ok(sample()));
        assert!(frame.is_probe());
        assert_eq!(&buf[12..14], &[0x88, 0xb5]);
        assert_eq!(&buf[22..30], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(
            buf[HEADER_LEN..].iter().all(|&b| b == 0),
            "padding untouched"
        );
    }

    #[test]
    fn in_place_sequence_update_leaves_other_fields() {
        let mut buf = [0u8; HEADER_LEN];
        let mut frame = Frame::new_checked(&mut buf[..]).unwrap();
        sample().emit(&mut frame);
        frame.set_seq(7);
        frame.set_tx_ns(9);
        let got = Repr::parse(&frame).unwrap();
        assert_eq!((got.seq, got.tx_ns, got.stream), (7, 9, 0xdead_beef));
    }

    #[test]
    fn short_foreign_and_other_ethertype_frames_are_rejected() {
        assert_eq!(
            Frame::new_checked(&[0u8; 37][..]).unwrap_err(),
            ProbeError::Truncated(37)
        );
        let mut buf = [0u8; 60];
        let mut frame = Frame::new_checked(&mut buf[..]).unwrap();
        sample().emit(&mut frame);
        frame.set_magic(1);
        assert_eq!(Repr::parse(&frame), Err(ProbeError::WrongMagic(1)));
        frame.set_ethertype(0x0800);
        assert_eq!(Repr::parse(&frame), Err(ProbeError::WrongEthertype(0x0800)));
        assert!(!frame.is_probe());
    }
}
