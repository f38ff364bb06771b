//! Frames carried over a byte stream, each behind its length as a 4-byte big-endian number:
//! QEMU's `socket` (listen/connect) and `stream` netdevs.
//!
//! `StreamRx` reassembles frames from reads of any size into one fixed buffer; the port
//! copies each complete frame into a pool buffer. A length of zero is a runt; a length above
//! the switch's maximum frame but within what a QEMU peer may legitimately send is skipped
//! (its bytes discarded as they arrive, counted as oversize); a larger length means the stream
//! is not in step any more (or never was), and the connection must be closed, as QEMU does.
//! No allocation after construction.

/// The largest frame a QEMU peer sends over a stream (QEMU's NET_BUFSIZE: 4096 + 65536).
pub const MAX_STREAM_FRAME: usize = 4096 + 65536;

/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 4;

/// What the next bytes of the stream hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamItem {
    /// A whole frame at `buf[start..start + len]` of `StreamRx::bytes()`.
    Frame { start: usize, len: usize },
    /// A frame of length zero.
    Runt,
    /// A frame too large for the switch, being skipped.
    Oversize(usize),
    /// A length no peer may send: the connection must be closed.
    Desync(u64),
}

/// Reassembly state of one stream port.
pub struct StreamRx {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    skip: usize,
}

impl Default for StreamRx {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamRx {
    pub fn new() -> StreamRx {
        StreamRx {
            buf: vec![0u8; 2 * (MAX_STREAM_FRAME + PREFIX_LEN)].into_boxed_slice(),
            start: 0,
            end: 0,
            skip: 0,
        }
    }

    /// Where the next read should put its bytes (never empty).
    pub fn read_target(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end > self.buf.len() / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes arrived in the read target.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The buffer that `StreamItem::Frame` positions refer to.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Whether part of a frame (or its prefix) is held: the stream ended mid-frame if it
    /// ends now.
    pub fn mid_frame(&self) -> bool {
        self.start != self.end || self.skip > 0
    }

    /// Forgets everything (a new connection starts clean).
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
        self.skip = 0;
    }

    /// The next complete item, if the bytes held contain one.
    pub fn next_item(&mut self, max_frame: usize) -> Option<StreamItem> {
        if self.skip > 0 {
            let n = self.skip.min(self.end - self.start);
            self.start += n;
            self.skip -= n;
            if self.skip > 0 {
                return None;
            }
        }
        if self.end - self.start < PREFIX_LEN {
            return None;
        }
        let p = &self.buf[self.start..self.start + PREFIX_LEN];
        let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        if len == 0 {
            self.start += PREFIX_LEN;
            return Some(StreamItem::Runt);
        }
        if len > MAX_STREAM_FRAME {
            self.reset();
            return Some(StreamItem::Desync(len as u64));
        }
        if len > max_frame {
            self.start += PREFIX_LEN;
            self.skip = len;
            let n = self.skip.min(self.end - self.start);
            self.start += n;
            self.skip -= n;
            return Some(StreamItem::Oversize(len));
        }
        if self.end - self.start < PREFIX_LEN + len {
            return None;
        }
        let start = self.start + PREFIX_LEN;
        self.start = start + len;
        Some(StreamItem::Frame { start, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed(
        rx: &mut StreamRx,
        mut bytes: &[u8],
        chunk: usize,
        max: usize,
    ) -> Vec<Result<Vec<u8>, StreamItem>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let t = rx.read_target();
            let n = chunk.min(bytes.len()).min(t.len());
            t[..n].copy_from_slice(&bytes[..n]);
            rx.commit(n);
            bytes = &bytes[n..];
            while let Some(item) = rx.next_item(max) {
                match item {
                    StreamItem::Frame { start, len } => {
                        out.push(Ok(rx.bytes()[start..start + len].to_vec()))
                    }
                    other => out.push(Err(other)),
                }
            }
        }
        out
    }

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in frames {
            v.extend_from_slice(&(f.len() as u32).to_be_bytes());
            v.extend_from_slice(f);
        }
        v
    }

    #[test]
    fn reassembles_across_reads_of_any_size() {
        let frames: Vec<Vec<u8>> = (1..50).map(|i| vec![i as u8; 14 + i * 29]).collect();
        let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
        let wire = framed(&refs);
        for chunk in [1, 3, 4, 5, 64, 1500, 100_000] {
            let mut rx = StreamRx::new();
            let got = feed(&mut rx, &wire, chunk, 1522);
            assert_eq!(
                got,
                frames.iter().cloned().map(Ok).collect::<Vec<_>>(),
                "chunk {chunk}"
            );
            assert!(!rx.mid_frame());
        }
    }

    #[test]
    fn zero_length_is_a_runt_and_the_stream_goes_on() {
        let mut wire = vec![0, 0, 0, 0];
        wire.extend(framed(&[&[7u8; 60]]));
        let got = feed(&mut StreamRx::new(), &wire, 2, 1522);
        assert_eq!(got, vec![Err(StreamItem::Runt), Ok(vec![7u8; 60])]);
    }

    #[test]
    fn oversize_frames_are_skipped_without_losing_step() {
        let big = vec![1u8; 9000];
        let wire = framed(&[&[2u8; 60], &big, &[3u8; 61]]);
        for chunk in [7, 1000, 20_000] {
            let got = feed(&mut StreamRx::new(), &wire, chunk, 1522);
            assert_eq!(
                got,
                vec![
                    Ok(vec![2u8; 60]),
                    Err(StreamItem::Oversize(9000)),
                    Ok(vec![3u8; 61])
                ]
            );
        }
    }

    #[test]
    fn an_impossible_length_desynchronises() {
        let mut wire = (1u32 << 30).to_be_bytes().to_vec();
        wire.extend_from_slice(&[0u8; 100]);
        let got = feed(&mut StreamRx::new(), &wire, 4, 1522);
        assert_eq!(got[0], Err(StreamItem::Desync(1 << 30)));
    }

    #[test]
    fn a_partial_frame_is_reported_mid_frame() {
        let wire = framed(&[&[9u8; 100]]);
        let mut rx = StreamRx::new();
        assert!(feed(&mut rx, &wire[..50], 50, 1522).is_empty());
        assert!(rx.mid_frame());
        rx.reset();
        assert!(!rx.mid_frame());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..5000), chunk in 1usize..700) {
            let mut rx = StreamRx::new();
            let _ = feed(&mut rx, &bytes, chunk, 1522);
        }

        #[test]
        fn any_frames_in_any_chunks_round_trip(lens in proptest::collection::vec(1usize..2000, 0..40), chunk in 1usize..3000) {
            let frames: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &l)| vec![i as u8; l]).collect();
            let refs: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
            let got = feed(&mut StreamRx::new(), &framed(&refs), chunk, 1522);
            let want: Vec<_> = frames.iter().map(|f| if f.len() > 1522 { Err(StreamItem::Oversize(f.len())) } else { Ok(f.clone()) }).collect();
            prop_assert_eq!(got, want);
        }
    }
}
