//! `Gro`: receive coalescing of TCP segments before libslirp, as the kernel's GRO does before
//! its own stack. A batch of frames taken from the switch often holds a run of in-order
//! segments of one connection (a station's bulk transfer); libslirp would take each alone,
//! write each to its host socket with a system call of its own and acknowledge each with a
//! frame back through the switch. Joined, the run costs libslirp one segment: one write to
//! the host socket, one acknowledgement.
//!
//! Only plain IPv4 TCP data segments join (no IP options or fragments, only ACK and, on the
//! last, PSH), and only consecutive ones of one connection with the next sequence number, the
//! same acknowledgement and the same TCP options; the joined segment keeps the first's
//! headers with the last's window and PSH, its lengths and checksums computed anew. A segment
//! whose checksum is wrong joins nothing and reaches libslirp as it came (which drops it, as
//! it would have). Anything else goes through untouched, in order.

use ringswitch_switch::gso::checksum::{checksum, pseudo_header_v4, Checksum};

const ETH: usize = 14;
const IP: usize = 20;
/// The largest IPv4 datagram.
const MAX_IP_LEN: usize = 65535;

const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// A TCP data segment that may join a run.
struct Seg {
    /// Ethernet, IP and TCP headers.
    hdr: usize,
    /// The end of the IP datagram in the frame (past it: padding).
    end: usize,
    seq: u32,
    flags: u8,
    /// The payload's sum (from its first byte, an even offset).
    sum: Checksum,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// `f` as a TCP data segment that may join a run, when it is one (checksums verified).
fn segment(f: &[u8]) -> Option<Seg> {
    if f.len() < ETH + IP + 20 || be16(f, 12) != 0x0800 || f[ETH] != 0x45 || f[ETH + 9] != 6 {
        return None;
    }
    let tot = usize::from(be16(f, ETH + 2));
    let end = ETH + tot;
    // No fragments (MF clear, offset 0); DF may be set.
    if end > f.len() || be16(f, ETH + 6) & 0x3fff != 0 || checksum(&f[ETH..ETH + IP]) != 0 {
        return None;
    }
    let tcp = ETH + IP;
    let doff = usize::from(f[tcp + 12] >> 4) * 4;
    let flags = f[tcp + 13];
    let hdr = tcp + doff;
    if doff < 20 || hdr >= end || flags & !PSH != ACK || f[tcp + 12] & 0x0f != 0 {
        return None;
    }
    let sum = Checksum::new().add_bytes(&f[hdr..end]);
    let src = [f[ETH + 12], f[ETH + 13], f[ETH + 14], f[ETH + 15]];
    let dst = [f[ETH + 16], f[ETH + 17], f[ETH + 18], f[ETH + 19]];
    let whole = pseudo_header_v4(src, dst, 6, (end - tcp) as u32)
        .add_bytes(&f[tcp..hdr])
        .combine(sum);
    if whole.fold() != 0xffff {
        return None;
    }
    Some(Seg {
        hdr,
        end,
        seq: be32(f, tcp + 4),
        flags,
        sum,
    })
}

/// A sum over bytes that start at an odd offset, as one that starts at an even one.
fn swapped(sum: Checksum) -> Checksum {
    Checksum::new().add_u16(sum.fold().swap_bytes())
}

/// Joins runs of TCP segments; see the module's documentation.
#[derive(Default)]
pub struct Gro {
    /// The run so far: the first segment's headers, then every payload.
    buf: Vec<u8>,
    /// Headers' length in `buf` (0: no run).
    hdr: usize,
    next_seq: u32,
    sum: Checksum,
    segs: usize,
    /// Segments that joined a run other than as its first.
    pub joined: u64,
}

impl Gro {
    /// Takes the next frame of a batch; `out` gets whatever is ready for libslirp, in order.
    pub fn push(&mut self, f: &[u8], out: &mut impl FnMut(&[u8])) {
        let seg = segment(f);
        if let Some(s) = &seg {
            if self.joins(f, s) {
                self.append(f, s);
                // Nothing joins after a push.
                if s.flags & PSH != 0 {
                    self.flush(out);
                }
                return;
            }
        }
        self.flush(out);
        match seg {
            Some(s) if s.flags & PSH == 0 => self.start(f, &s),
            _ => out(f),
        }
    }

    /// Hands the run so far (if any) to `out`.
    pub fn flush(&mut self, out: &mut impl FnMut(&[u8])) {
        if self.hdr == 0 {
            return;
        }
        let b = &mut self.buf;
        let tcp = ETH + IP;
        let tot = b.len() - ETH;
        b[ETH + 2..ETH + 4].copy_from_slice(&(tot as u16).to_be_bytes());
        b[ETH + 10..ETH + 12].fill(0);
        let c = checksum(&b[ETH..ETH + IP]);
        b[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
        b[tcp + 16..tcp + 18].fill(0);
        let src = [b[ETH + 12], b[ETH + 13], b[ETH + 14], b[ETH + 15]];
        let dst = [b[ETH + 16], b[ETH + 17], b[ETH + 18], b[ETH + 19]];
        let c = pseudo_header_v4(src, dst, 6, (b.len() - tcp) as u32)
            .add_bytes(&b[tcp..self.hdr])
            .combine(self.sum)
            .finish();
        b[tcp + 16..tcp + 18].copy_from_slice(&c.to_be_bytes());
        self.joined += self.segs as u64 - 1;
        self.hdr = 0;
        self.segs = 0;
        out(&self.buf);
    }

    fn start(&mut self, f: &[u8], s: &Seg) {
        self.buf.clear();
        self.buf.extend_from_slice(&f[..s.end]);
        self.hdr = s.hdr;
        self.next_seq = s.seq.wrapping_add((s.end - s.hdr) as u32);
        self.sum = s.sum;
        self.segs = 1;
    }

    /// Whether `s` (in frame `f`) continues the run.
    fn joins(&self, f: &[u8], s: &Seg) -> bool {
        let b = &self.buf;
        let tcp = ETH + IP;
        self.hdr != 0
            && s.hdr == self.hdr
            && s.seq == self.next_seq
            && b.len() + (s.end - s.hdr) - ETH <= MAX_IP_LEN
            // Addresses, ethertype, TOS; DF, TTL, protocol; IP addresses, ports.
            && f[..ETH + 2] == b[..ETH + 2]
            && f[ETH + 6..ETH + 10] == b[ETH + 6..ETH + 10]
            && f[ETH + 12..tcp + 4] == b[ETH + 12..tcp + 4]
            // Acknowledgement, header length; options.
            && f[tcp + 8..tcp + 13] == b[tcp + 8..tcp + 13]
            && f[tcp + 20..s.hdr] == b[tcp + 20..s.hdr]
    }

    fn append(&mut self, f: &[u8], s: &Seg) {
        let tcp = ETH + IP;
        let sum = if (self.buf.len() - self.hdr) % 2 == 1 {
            swapped(s.sum)
        } else {
            s.sum
        };
        self.sum = self.sum.combine(sum);
        self.buf.extend_from_slice(&f[s.hdr..s.end]);
        // The last segment's window and PSH.
        self.buf[tcp + 14..tcp + 16].copy_from_slice(&f[tcp + 14..tcp + 16]);
        self.buf[tcp + 13] |= s.flags & PSH;
        self.next_seq = s.seq.wrapping_add((s.end - s.hdr) as u32);
        self.segs += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;

    /// A TCP/IPv4 segment in an Ethernet frame, checksums right.
    fn seg(seq: u32, flags: u8, payload: &[u8], opts: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0];
        let tcp_len = 20 + opts.len() + payload.len();
        let tot = (IP + tcp_len) as u16;
        let [hi, lo] = tot.to_be_bytes();
        f.extend([0x45, 0, hi, lo, 0, 7, 0x40, 0, 64, 6, 0, 0]);
        f.extend([10, 0, 2, 15, 10, 0, 2, 2]);
        let c = checksum(&f[ETH..ETH + IP]);
        f[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
        f.extend([0x9c, 0x40, 0x1f, 0x40]);
        f.extend(seq.to_be_bytes());
        f.extend(1000u32.to_be_bytes());
        f.extend([
            (((20 + opts.len()) / 4) << 4) as u8,
            flags,
            0x10,
            0x00,
            0,
            0,
            0,
            0,
        ]);
        f.extend(opts);
        f.extend(payload);
        let c = pseudo_header_v4([10, 0, 2, 15], [10, 0, 2, 2], 6, tcp_len as u32)
            .add_bytes(&f[ETH + IP..])
            .finish();
        f[ETH + IP + 16..ETH + IP + 18].copy_from_slice(&c.to_be_bytes());
        f
    }

    fn run(frames: &[Vec<u8>]) -> (Vec<Vec<u8>>, u64) {
        let mut g = Gro::default();
        let mut out = Vec::new();
        for f in frames {
            g.push(f, &mut |x: &[u8]| out.push(x.to_vec()));
        }
        g.flush(&mut |x: &[u8]| out.push(x.to_vec()));
        (out, g.joined)
    }

    #[test]
    fn a_run_of_segments_becomes_one_with_right_checksums_even_at_odd_lengths() {
        let a: Vec<u8> = (0..1001u32).map(|i| i as u8).collect();
        let b: Vec<u8> = (0..1448u32).map(|i| (i * 7) as u8).collect();
        let c: Vec<u8> = (0..33u32).map(|i| (i * 13 + 5) as u8).collect();
        let frames = [
            seg(100, ACK, &a, &[]),
            seg(1101, ACK, &b, &[]),
            seg(2549, ACK | PSH, &c, &[]),
        ];
        let (out, joined) = run(&frames);
        assert_eq!(out.len(), 1);
        assert_eq!(joined, 2);
        let whole: Vec<u8> = [a, b, c].concat();
        let mut want = seg(100, ACK | PSH, &whole, &[]);
        // The first's IP id, the last's window: as built here, the same.
        assert_eq!(out[0], want);
        assert!(segment(&out[0]).is_some(), "checksums verify");
        want[ETH + IP + 4] ^= 1;
        assert_ne!(out[0], want);
    }

    #[test]
    fn gaps_other_flags_bad_checksums_options_and_pushes_end_runs_in_order() {
        let p = [1u8; 100];
        let mut bad = seg(300, ACK, &p, &[]);
        bad[70] ^= 0xff;
        let ts = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
        let frames = [
            seg(100, ACK, &p, &[]),
            seg(200, ACK, &p, &[]), // joins
            bad.clone(),            // checksum wrong: alone
            seg(400, ACK, &p, &[]),
            seg(600, ACK, &p, &[]),        // a gap
            seg(700, ACK | FIN, &p, &[]),  // FIN: alone
            seg(800, ACK | PSH, &p, &[]),  // a push cannot start a run
            seg(900, ACK, &p, &ts),        // options
            seg(1000, ACK, &p, &ts),       // same options: joins
            seg(1100, ACK | PSH, &p, &ts), // joins, ends the run
            seg(1200, ACK, &p, &ts),       // starts another
            seg(1300, SYN, &[], &[]),
            seg(1300, RST, &[], &[]),
        ];
        let (out, joined) = run(&frames);
        assert_eq!(joined, 3);
        let seqs: Vec<u32> = out.iter().map(|f| be32(f, ETH + IP + 4)).collect();
        assert_eq!(seqs, [100, 300, 400, 600, 700, 800, 900, 1200, 1300, 1300]);
        assert_eq!(out[1], bad);
        assert_eq!(out[0].len(), frames[0].len() + 100);
        assert_eq!(out[5], frames[6]);
        assert_eq!(out[6].len(), frames[7].len() + 200);
        assert!(out[6][ETH + IP + 13] & PSH != 0);
        for f in [&out[0], &out[6]] {
            assert!(segment(f).is_some());
        }
    }

    #[test]
    fn runs_stop_short_of_the_largest_datagram_and_other_frames_pass_untouched() {
        let p = vec![9u8; 1460];
        let frames: Vec<Vec<u8>> = (0..60).map(|i| seg(i * 1460, ACK, &p, &[])).collect();
        let (out, _) = run(&frames);
        assert!(out.len() >= 2);
        assert!(out.iter().all(|f| f.len() - ETH <= MAX_IP_LEN));
        assert_eq!(out.iter().map(|f| f.len() - 54).sum::<usize>(), 60 * 1460);
        let arp = vec![0xffu8; 60];
        assert_eq!(run(std::slice::from_ref(&arp)).0, [arp]);
    }
}
