//! `Outbox`: the frames libslirp emits toward the stations, gathered between flushes and sent
//! to the worker together (one `sendmmsg` per flush), each behind a virtio-net header — and
//! runs of TCP segments of one connection joined into one GSO frame, as a Linux sender's TSO
//! would hand them over.
//!
//! libslirp cuts what a host socket gives it into MSS-sized segments (`tcp_output`), one
//! frame each. Sent one by one, every segment crosses the socket pair alone, wakes the
//! worker and is handled alone there. Joined, a run of up to 64 KiB crosses as one datagram
//! with `gso_type` TCPV4 and `gso_size` the run's segment size: a port with offloads (a
//! `vnet_hdr` tap, a guest that took TSO) gets it whole, and for the others the worker's
//! segmenter cuts it back into the very segments libslirp emitted (headers copied, IP id +1
//! and sequence numbers per piece, PSH on the last, checksums computed anew).
//!
//! What joins: plain IPv4 TCP data segments (IHL 5, not fragments, no padding and none needed
//! — a frame under 60 bytes is padded and sent alone —, ACK alone and
//! on the last PSH too), each continuing the one before with the same Ethernet header, IP
//! addresses, TOS, TTL and DF, ports, acknowledgement, window and TCP options, and the next
//! sequence number; every segment but the last of a run as long as the first. A joined
//! frame gets its IP total length and header checksum anew, its TCP checksum partial (the
//! pseudo-header sum, `NEEDS_CSUM`), as virtio-net wants. A single frame is sent as libslirp
//! made it (padded to 60 bytes if shorter) behind an all-zero header.

use libc::c_void;
use ringswitch_switch::frame::Offload;
use ringswitch_switch::gso::checksum::{checksum, pseudo_header_v4};
use std::os::fd::RawFd;

const ETH: usize = 14;
const IP: usize = 20;
const TCP: usize = ETH + IP;
/// The smallest Ethernet frame without its FCS: libslirp emits shorter ARP replies, which
/// are padded as QEMU pads them for its NICs.
const ETH_ZLEN: usize = 60;
/// The largest IPv4 datagram.
const MAX_IP_LEN: usize = 65535;

const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// A run of joined TCP segments: the frame holds the first's headers and every payload.
#[derive(Clone, Copy, Debug)]
struct Run {
    /// Where the payload starts in the frame (Ethernet, IP and TCP headers before it).
    hdr: usize,
    /// Payload bytes of each segment (the first's).
    gso_size: usize,
    /// Segments in the run.
    segs: usize,
    /// Sequence number the next segment must have.
    next_seq: u32,
    /// Whether another segment may still join (the last was full-sized and had no PSH).
    open: bool,
}

/// One frame in the outbox.
#[derive(Clone, Copy, Debug)]
struct Out {
    start: usize,
    end: usize,
    run: Option<Run>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// `f`'s run, if `f` is a TCP data segment that can start one or join one: (headers' length,
/// payload length, sequence number, flags).
fn data_segment(f: &[u8]) -> Option<(usize, usize, u32, u8)> {
    if f.len() < TCP + 20 || be16(f, 12) != 0x0800 || f[ETH] != 0x45 || f[ETH + 9] != 6 {
        return None;
    }
    // Exactly the IP datagram (no padding), not a fragment (MF clear, offset 0).
    if usize::from(be16(f, ETH + 2)) + ETH != f.len() || be16(f, ETH + 6) & 0x3fff != 0 {
        return None;
    }
    let doff = usize::from(f[TCP + 12] >> 4) * 4;
    let flags = f[TCP + 13];
    let hdr = TCP + doff;
    if doff < 20 || hdr >= f.len() || f[TCP + 12] & 0x0f != 0 || flags & !PSH != ACK {
        return None;
    }
    Some((hdr, f.len() - hdr, be32(f, TCP + 4), flags))
}

/// Frames gathered for one `sendmmsg`; see the module's documentation.
#[derive(Default)]
pub(super) struct Outbox {
    bytes: Vec<u8>,
    frames: Vec<Out>,
    /// Segments that joined the one before them (counted when sent).
    joined: u64,
    /// The headers and the I/O vectors of a send, kept to be reused.
    hdrs: Vec<[u8; Offload::WIRE_LEN]>,
    iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl Outbox {
    /// Frames gathered so far (a joined run counts once).
    pub(super) fn len(&self) -> usize {
        self.frames.len()
    }

    /// Takes a frame libslirp emitted: joins it to the run before it when it continues it,
    /// else gathers it as a frame of its own.
    pub(super) fn push(&mut self, f: &[u8]) {
        if self.join(f) {
            return;
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(f);
        if f.len() < ETH_ZLEN {
            self.bytes.resize(start + ETH_ZLEN, 0);
        }
        // A padded frame starts no run: its padding would sit between its payload and the
        // next segment's.
        let run = data_segment(f)
            .filter(|_| f.len() >= ETH_ZLEN)
            .map(|(hdr, len, seq, flags)| Run {
                hdr,
                gso_size: len,
                segs: 1,
                next_seq: seq.wrapping_add(len as u32),
                open: flags & PSH == 0,
            });
        self.frames.push(Out {
            start,
            end: self.bytes.len(),
            run,
        });
    }

    /// Appends `f`'s payload to the last frame when `f` continues its run.
    fn join(&mut self, f: &[u8]) -> bool {
        let Some(last) = self.frames.last_mut() else {
            return false;
        };
        let Some(run) = last.run.as_mut().filter(|r| r.open) else {
            return false;
        };
        let Some((hdr, len, seq, flags)) = data_segment(f) else {
            return false;
        };
        let p = &self.bytes[last.start..last.end];
        let fits = p.len() + len - ETH <= MAX_IP_LEN;
        // Same Ethernet header; IP: TOS, DF, TTL, protocol, addresses; TCP: ports, ack,
        // header length; window; options.
        let same = hdr == run.hdr
            && p[..ETH] == f[..ETH]
            && p[ETH + 1] == f[ETH + 1]
            && p[ETH + 6..ETH + 10] == f[ETH + 6..ETH + 10]
            && p[ETH + 12..ETH + 20] == f[ETH + 12..ETH + 20]
            && p[TCP..TCP + 4] == f[TCP..TCP + 4]
            && p[TCP + 8..TCP + 13] == f[TCP + 8..TCP + 13]
            && p[TCP + 14..TCP + 16] == f[TCP + 14..TCP + 16]
            && p[TCP + 20..hdr] == f[TCP + 20..hdr];
        if !fits || !same || seq != run.next_seq || len > run.gso_size {
            return false;
        }
        self.bytes.extend_from_slice(&f[hdr..]);
        last.end = self.bytes.len();
        // The run's flags are the last segment's (PSH goes to the last piece when cut).
        self.bytes[last.start + TCP + 13] = flags;
        run.segs += 1;
        run.next_seq = seq.wrapping_add(len as u32);
        run.open = flags & PSH == 0 && len == run.gso_size;
        self.joined += 1;
        true
    }

    /// Writes a joined frame's lengths and checksums, and returns its virtio-net header.
    fn finish(frame: &mut [u8], run: &Run) -> Offload {
        let tot = frame.len() - ETH;
        frame[ETH + 2..ETH + 4].copy_from_slice(&(tot as u16).to_be_bytes());
        frame[ETH + 10..ETH + 12].fill(0);
        let c = checksum(&frame[ETH..TCP]);
        frame[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
        let src = [
            frame[ETH + 12],
            frame[ETH + 13],
            frame[ETH + 14],
            frame[ETH + 15],
        ];
        let dst = [
            frame[ETH + 16],
            frame[ETH + 17],
            frame[ETH + 18],
            frame[ETH + 19],
        ];
        // Partial: the pseudo-header sum over the whole length, not complemented.
        let partial = pseudo_header_v4(src, dst, 6, (frame.len() - TCP) as u32).fold();
        frame[TCP + 16..TCP + 18].copy_from_slice(&partial.to_be_bytes());
        Offload {
            flags: Offload::F_NEEDS_CSUM,
            gso_type: Offload::GSO_TCPV4,
            hdr_len: run.hdr as u16,
            gso_size: run.gso_size as u16,
            csum_start: TCP as u16,
            csum_offset: 16,
        }
    }

    /// Sends every frame gathered to `fd` without blocking, each behind its virtio-net
    /// header, as few `sendmmsg` calls as the socket allows; what it does not take now is
    /// dropped. Returns (frames sent, frames dropped, segments that joined others among the
    /// sent).
    pub(super) fn send(&mut self, fd: RawFd) -> (u64, u64, u64) {
        let n = self.frames.len();
        if n == 0 {
            return (0, 0, 0);
        }
        self.hdrs.clear();
        for o in &self.frames {
            let mut h = [0u8; Offload::WIRE_LEN];
            if let Some(run) = o.run.filter(|r| r.segs > 1) {
                Self::finish(&mut self.bytes[o.start..o.end], &run).emit(&mut h);
            }
            self.hdrs.push(h);
        }
        let base = self.bytes.as_mut_ptr();
        self.iov.clear();
        for (o, h) in self.frames.iter().zip(self.hdrs.iter_mut()) {
            self.iov.push(libc::iovec {
                iov_base: h.as_mut_ptr().cast::<c_void>(),
                iov_len: h.len(),
            });
            self.iov.push(libc::iovec {
                // SAFETY: `o.start` is within `bytes` (the frames lie end to end in it).
                iov_base: unsafe { base.add(o.start) }.cast(),
                iov_len: o.end - o.start,
            });
        }
        self.msgs.clear();
        for pair in self.iov.chunks_exact_mut(2) {
            // SAFETY: an all-zero mmsghdr is valid (null pointers, zero lengths).
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = pair.as_mut_ptr();
            m.msg_hdr.msg_iovlen = 2;
            self.msgs.push(m);
        }
        let mut done = 0;
        while done < n {
            // SAFETY: `msgs[done..]` are n - done valid headers whose two iovecs point into
            // `hdrs` and `bytes`, all live and unmoved for the call; `fd` is the open socket.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.msgs[done..].as_mut_ptr(),
                    (n - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if r <= 0 {
                break;
            }
            done += r as usize;
        }
        let joined_sent: u64 = self.frames[..done]
            .iter()
            .filter_map(|o| o.run)
            .map(|r| (r.segs - 1) as u64)
            .sum();
        self.bytes.clear();
        self.frames.clear();
        self.joined = 0;
        (done as u64, (n - done) as u64, joined_sent)
    }

    /// The gathered frames as they would be sent: (header, frame) (tests).
    #[cfg(test)]
    pub(super) fn take(&mut self) -> Vec<(Offload, Vec<u8>)> {
        let frames = std::mem::take(&mut self.frames);
        let mut out = Vec::new();
        for o in frames {
            let mut f = self.bytes[o.start..o.end].to_vec();
            let h = match o.run.filter(|r| r.segs > 1) {
                Some(run) => Self::finish(&mut f, &run),
                None => Offload::NONE,
            };
            out.push((h, f));
        }
        self.bytes.clear();
        self.joined = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringswitch_switch::gso::Segmenter;

    /// A TCP/IPv4 segment from 10.0.2.2:80 to 10.0.2.15:5000 with `payload`, valid checksums.
    fn segment(id: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; TCP + 20];
        f[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        f[6..12].copy_from_slice(&[0x52, 0x55, 10, 0, 2, 2]);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[ETH] = 0x45;
        f[ETH + 4..ETH + 6].copy_from_slice(&id.to_be_bytes());
        f[ETH + 6] = 0x40; // DF
        f[ETH + 8] = 64;
        f[ETH + 9] = 6;
        f[ETH + 12..ETH + 16].copy_from_slice(&[10, 0, 2, 2]);
        f[ETH + 16..ETH + 20].copy_from_slice(&[10, 0, 2, 15]);
        f[TCP..TCP + 2].copy_from_slice(&80u16.to_be_bytes());
        f[TCP + 2..TCP + 4].copy_from_slice(&5000u16.to_be_bytes());
        f[TCP + 4..TCP + 8].copy_from_slice(&seq.to_be_bytes());
        f[TCP + 8..TCP + 12].copy_from_slice(&777u32.to_be_bytes());
        f[TCP + 12] = 5 << 4;
        f[TCP + 13] = flags;
        f[TCP + 14..TCP + 16].copy_from_slice(&29200u16.to_be_bytes());
        f.extend_from_slice(payload);
        let tot = (f.len() - ETH) as u16;
        f[ETH + 2..ETH + 4].copy_from_slice(&tot.to_be_bytes());
        let c = checksum(&f[ETH..TCP]);
        f[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
        let c = pseudo_header_v4([10, 0, 2, 2], [10, 0, 2, 15], 6, (f.len() - TCP) as u32)
            .add_bytes(&f[TCP..])
            .finish();
        f[TCP + 16..TCP + 18].copy_from_slice(&c.to_be_bytes());
        f
    }

    fn payload(n: usize, from: usize) -> Vec<u8> {
        (from..from + n).map(|i| (i * 7 + 3) as u8).collect()
    }

    /// Cuts a joined frame as the worker does for a port without offloads.
    fn cut(h: &Offload, f: &[u8]) -> Vec<Vec<u8>> {
        let s = Segmenter::new(f, h, 9000).expect("a valid GSO frame");
        (0..s.count())
            .map(|i| {
                let mut out = vec![0u8; s.segment_len(i)];
                let n = s.write(f, i, &mut out);
                out.truncate(n);
                out
            })
            .collect()
    }

    #[test]
    fn a_run_of_segments_joins_and_cuts_back_into_the_same_segments() {
        let mss = 1460;
        let segs: Vec<Vec<u8>> = (0..5)
            .map(|i| {
                let last = i == 4;
                let flags = if last { ACK | PSH } else { ACK };
                let len = if last { 300 } else { mss };
                segment(
                    100 + i as u16,
                    1000 + (i * mss) as u32,
                    flags,
                    &payload(len, i * mss),
                )
            })
            .collect();
        let mut o = Outbox::default();
        for s in &segs {
            o.push(s);
        }
        assert_eq!(o.len(), 1);
        let out = o.take();
        let (h, f) = &out[0];
        assert_eq!(h.gso_type, Offload::GSO_TCPV4);
        assert_eq!(h.flags, Offload::F_NEEDS_CSUM);
        assert_eq!(usize::from(h.gso_size), mss);
        assert_eq!(usize::from(h.hdr_len), TCP + 20);
        assert_eq!(f.len(), TCP + 20 + 4 * mss + 300);
        assert_eq!(checksum(&f[ETH..TCP]), 0, "the IP header checksum is valid");
        assert_eq!(
            cut(h, f),
            segs,
            "cut back, the segments are libslirp's, byte for byte"
        );
    }

    #[test]
    fn what_does_not_continue_the_run_is_sent_on_its_own() {
        let mss = 1000;
        let a = segment(1, 0, ACK, &payload(mss, 0));
        let gap = segment(2, 5000, ACK, &payload(mss, 1)); // not the next sequence number
        let mut other_port = segment(3, 6000, ACK, &payload(mss, 2));
        other_port[TCP + 1] ^= 1;
        let longer = segment(4, 7000, ACK, &payload(mss + 1, 3)); // longer than the first
        let syn = segment(5, 0, 0x02, &[]);
        let mut o = Outbox::default();
        for f in [&a, &gap, &other_port, &longer, &syn] {
            o.push(f);
        }
        let out = o.take();
        assert_eq!(out.len(), 5);
        for ((h, f), want) in out.iter().zip([&a, &gap, &other_port, &longer, &syn]) {
            assert_eq!(*h, Offload::NONE);
            assert_eq!(&f[..want.len()], &want[..], "sent as libslirp made it");
            assert_eq!(f.len(), want.len().max(ETH_ZLEN), "padded to 60 bytes");
        }
    }

    #[test]
    fn nothing_joins_after_a_push_or_a_short_segment_and_runs_stop_at_64_kib() {
        let mut o = Outbox::default();
        o.push(&segment(1, 0, ACK | PSH, &payload(100, 0)));
        o.push(&segment(2, 100, ACK, &payload(100, 1)));
        o.push(&segment(3, 200, ACK, &payload(50, 2))); // short: ends the run
        o.push(&segment(4, 250, ACK, &payload(50, 3)));
        assert_eq!(o.len(), 3);
        o.take();
        let mss = 1460;
        for i in 0..60 {
            o.push(&segment(i as u16, (i * mss) as u32, ACK, &payload(mss, i)));
        }
        let out = o.take();
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(_, f)| f.len() - ETH <= MAX_IP_LEN));
        assert_eq!(out[0].0.gso_type, Offload::GSO_TCPV4);
    }

    #[test]
    fn a_joined_run_reaches_libslirp_as_one_datagram_with_a_valid_checksum() {
        // The way up: a station's TSO segment, as the worker hands it to the pair, is what a
        // joined run is; the thread completes its checksum and hands it over whole.
        let mss = 1448;
        let segs: Vec<Vec<u8>> = (0..30)
            .map(|i| segment(i as u16, (i * mss) as u32, ACK, &payload(mss, i * mss)))
            .collect();
        let mut o = Outbox::default();
        for s in &segs {
            o.push(s);
        }
        let (h, mut f) = o.take().remove(0);
        let mut got = Vec::new();
        let mut gro = super::super::gro::Gro::default();
        let mut piece = vec![0u8; 65536];
        super::super::service::take_one(&mut f, &h, &mut piece, &mut gro, &mut |x: &[u8]| {
            got.push(x.to_vec())
        });
        gro.flush(&mut |x: &[u8]| got.push(x.to_vec()));
        assert_eq!(got.len(), 1);
        let g = &got[0];
        assert_eq!(g.len(), TCP + 20 + 30 * mss);
        let whole = pseudo_header_v4([10, 0, 2, 2], [10, 0, 2, 15], 6, (g.len() - TCP) as u32)
            .add_bytes(&g[TCP..]);
        assert_eq!(whole.fold(), 0xffff, "the TCP checksum is complete");
        let want: Vec<u8> = segs.iter().flat_map(|s| s[TCP + 20..].to_vec()).collect();
        assert_eq!(&g[TCP + 20..], &want[..]);

        // A GSO frame whose IP length is not the whole datagram's (0, as with BIG TCP) is
        // cut instead, and the pieces join again on the way to libslirp.
        let (h, mut f) = {
            for s in &segs[..3] {
                o.push(s);
            }
            o.take().remove(0)
        };
        f[ETH + 2..ETH + 4].copy_from_slice(&0u16.to_be_bytes());
        got.clear();
        super::super::service::take_one(&mut f, &h, &mut piece, &mut gro, &mut |x: &[u8]| {
            got.push(x.to_vec())
        });
        gro.flush(&mut |x: &[u8]| got.push(x.to_vec()));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), TCP + 20 + 3 * mss);
        assert_eq!(&got[0][TCP + 20..], &want[..3 * mss]);
    }

    /// What the worker sends on for a gathered frame: a joined one cut back into its pieces,
    /// any other as it is.
    fn as_sent(h: &Offload, f: &[u8]) -> Vec<Vec<u8>> {
        if h.gso_type == Offload::GSO_NONE {
            vec![f.to_vec()]
        } else {
            cut(h, f)
        }
    }

    proptest::proptest! {
        /// Whatever libslirp emits — runs of segments of two connections, with gaps, pushes,
        /// short and full segments, and frames that are not TCP data — the frames the
        /// stations get are libslirp's, in its order, byte for byte up to the end of the IP
        /// datagram.
        #[test]
        fn joining_then_cutting_gives_back_libslirps_frames(
            mss in 1usize..1461,
            steps in proptest::collection::vec((0u8..8, 1usize..1461, 0u8..10), 1..120),
        ) {
            let mut seq = [1000u32, 5000u32];
            let mut frames = Vec::new();
            for (i, (kind, len, flag)) in steps.into_iter().enumerate() {
                let conn = usize::from(kind & 1);
                let len = len.min(mss);
                let flags = if flag == 0 { ACK | PSH } else { ACK };
                let mut f = match kind >> 1 {
                    // A sequence gap.
                    0 => {
                        seq[conn] = seq[conn].wrapping_add(7);
                        segment(i as u16, seq[conn], flags, &payload(len, i))
                    }
                    // Not TCP data: a pure ACK.
                    1 => segment(i as u16, seq[conn], ACK, &[]),
                    _ => segment(i as u16, seq[conn], flags, &payload(len, i)),
                };
                if kind >> 1 != 1 {
                    seq[conn] = seq[conn].wrapping_add(len as u32);
                }
                if conn == 1 {
                    f[TCP + 1] ^= 1;
                    let c = pseudo_header_v4([10, 0, 2, 2], [10, 0, 2, 15], 6, (f.len() - TCP) as u32);
                    f[TCP + 16..TCP + 18].fill(0);
                    let c = c.add_bytes(&f[TCP..]).finish();
                    f[TCP + 16..TCP + 18].copy_from_slice(&c.to_be_bytes());
                }
                frames.push(f);
            }
            let mut o = Outbox::default();
            for f in &frames {
                o.push(f);
            }
            // Padding aside: a short segment that joined a run comes back as the cut piece
            // it is, unpadded (a station takes either).
            let datagram = |f: &[u8]| f[..ETH + usize::from(be16(f, ETH + 2))].to_vec();
            let got: Vec<Vec<u8>> = o
                .take()
                .iter()
                .flat_map(|(h, f)| as_sent(h, f))
                .map(|f| datagram(&f))
                .collect();
            let want: Vec<Vec<u8>> = frames.iter().map(|f| datagram(f)).collect();
            proptest::prop_assert_eq!(got, want);
        }

        /// A frame from the switch, whatever its bytes and header say, never panics the
        /// thread.
        #[test]
        fn any_frame_and_header_from_the_switch_is_taken_or_dropped(
            mut frame in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            h in proptest::collection::vec(proptest::prelude::any::<u8>(), 12..13),
        ) {
            let o = Offload::parse(&h[..].try_into().unwrap());
            let mut gro = super::super::gro::Gro::default();
            let mut piece = vec![0u8; 65536];
            let mut n = 0;
            super::super::service::take_one(&mut frame, &o, &mut piece, &mut gro, &mut |_: &[u8]| n += 1);
            gro.flush(&mut |_: &[u8]| n += 1);
            proptest::prop_assert!(n <= 1024);
        }
    }

    #[test]
    fn short_frames_are_padded_and_sent_plain() {
        let mut o = Outbox::default();
        o.push(&[0xffu8; 42]);
        let out = o.take();
        assert_eq!(out[0].1.len(), ETH_ZLEN);
        assert_eq!(out[0].0, Offload::NONE);
    }
}
