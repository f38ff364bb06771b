//! Frame batches for `sendmmsg`/`recvmmsg`: one contiguous buffer cut into fixed-size
//! slots, plus the parallel `iovec`/`mmsghdr` arrays the kernel reads. The header arrays
//! are rebuilt from the slots right before each call (a few dozen stores per batch), so
//! no pointer in them outlives the `&mut` borrow that the call holds; the batch owns all
//! memory the kernel touches and never reallocates it after construction.

use std::ops::Range;

/// Frames to send, all of one length, prepared once and updated in place per batch.
pub struct TxBatch {
    storage: Vec<u8>,
    frame_len: usize,
    iov: Vec<libc::iovec>,
    hdr: Vec<libc::mmsghdr>,
}

/// Frames received by the last `recvmmsg`: slot `i` holds `len(i)` valid bytes, and, when
/// the socket has SO_TIMESTAMPNS on, `stamp(i)` is the kernel's receive time.
pub struct RxBatch {
    storage: Vec<u8>,
    slot_len: usize,
    lens: Vec<usize>,
    filled: usize,
    iov: Vec<libc::iovec>,
    hdr: Vec<libc::mmsghdr>,
    /// Control-message space per slot; u64 words keep it aligned for `cmsghdr`.
    ctrl: Vec<[u64; CTRL_WORDS]>,
    /// CLOCK_REALTIME nanoseconds of each frame's receipt by the kernel, 0 when absent.
    stamps: Vec<u64>,
}

/// Room for one SCM_TIMESTAMPNS message (CMSG_SPACE of a timespec is 32 bytes) and slack.
const CTRL_WORDS: usize = 8;

fn empty_iov() -> libc::iovec {
    libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }
}

fn empty_hdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is a plain C struct of integers and raw pointers; all-zero is its
    // "no name, no iovecs, no control data" value.
    unsafe { std::mem::zeroed() }
}

/// Points each header in `hdr[range]` at the matching `iov` entry, which points at the
/// matching `slot`-sized piece of `storage`.
fn wire(
    storage: &mut [u8],
    slot: usize,
    len: usize,
    iov: &mut [libc::iovec],
    hdr: &mut [libc::mmsghdr],
    range: Range<usize>,
) {
    for i in range {
        let frame = &mut storage[i * slot..i * slot + len];
        iov[i] = libc::iovec {
            iov_base: frame.as_mut_ptr().cast(),
            iov_len: frame.len(),
        };
        hdr[i] = empty_hdr();
        hdr[i].msg_hdr.msg_iov = &mut iov[i];
        hdr[i].msg_hdr.msg_iovlen = 1;
    }
}

impl TxBatch {
    /// `slots` frames of `frame_len` bytes each, initially all zero.
    pub fn new(slots: usize, frame_len: usize) -> TxBatch {
        assert!(
            slots > 0 && frame_len > 0,
            "a batch needs at least one non-empty frame"
        );
        TxBatch {
            storage: vec![0; slots * frame_len],
            frame_len,
            iov: vec![empty_iov(); slots],
            hdr: vec![empty_hdr(); slots],
        }
    }

    pub fn slots(&self) -> usize {
        self.iov.len()
    }

    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    pub fn frame(&self, i: usize) -> &[u8] {
        &self.storage[i * self.frame_len..(i + 1) * self.frame_len]
    }

    pub fn frame_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.storage[i * self.frame_len..(i + 1) * self.frame_len]
    }

    /// The headers for frames `range`, ready for `sendmmsg`; valid while `self` is
    /// mutably borrowed.
    pub(crate) fn headers(&mut self, range: Range<usize>) -> &mut [libc::mmsghdr] {
        assert!(range.end <= self.slots() && range.start < range.end);
        let len = self.frame_len;
        wire(
            &mut self.storage,
            len,
            len,
            &mut self.iov,
            &mut self.hdr,
            range.clone(),
        );
        &mut self.hdr[range]
    }
}

impl RxBatch {
    /// `slots` receive buffers of `slot_len` bytes; longer frames arrive truncated.
    pub fn new(slots: usize, slot_len: usize) -> RxBatch {
        assert!(
            slots > 0 && slot_len > 0,
            "a batch needs at least one non-empty slot"
        );
        RxBatch {
            storage: vec![0; slots * slot_len],
            slot_len,
            lens: vec![0; slots],
            filled: 0,
            iov: vec![empty_iov(); slots],
            hdr: vec![empty_hdr(); slots],
            ctrl: vec![[0; CTRL_WORDS]; slots],
            stamps: vec![0; slots],
        }
    }

    pub fn slots(&self) -> usize {
        self.iov.len()
    }

    /// The kernel's receive time of frame `i` (CLOCK_REALTIME ns), if the socket stamps.
    pub fn stamp(&self, i: usize) -> Option<u64> {
        assert!(i < self.filled);
        Some(self.stamps[i]).filter(|&t| t != 0)
    }

    /// Number of frames the last receive filled.
    pub fn len(&self) -> usize {
        self.filled
    }

    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Frame `i` of the last receive (`i < len()`).
    pub fn frame(&self, i: usize) -> &[u8] {
        assert!(
            i < self.filled,
            "frame {i} of a batch holding {}",
            self.filled
        );
        &self.storage[i * self.slot_len..i * self.slot_len + self.lens[i]]
    }

    pub fn frames(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.filled).map(|i| self.frame(i))
    }

    /// All headers, ready for `recvmmsg`; forgets the previous receive.
    pub(crate) fn headers(&mut self) -> &mut [libc::mmsghdr] {
        self.filled = 0;
        let n = self.slots();
        let slot = self.slot_len;
        wire(
            &mut self.storage,
            slot,
            slot,
            &mut self.iov,
            &mut self.hdr,
            0..n,
        );
        for (hdr, ctrl) in self.hdr.iter_mut().zip(&mut self.ctrl) {
            hdr.msg_hdr.msg_control = ctrl.as_mut_ptr().cast();
            hdr.msg_hdr.msg_controllen = std::mem::size_of_val(ctrl);
        }
        &mut self.hdr
    }

    /// Records that the kernel filled the first `n` headers.
    pub(crate) fn set_filled(&mut self, n: usize) {
        let n = n.min(self.slots());
        for i in 0..n {
            let hdr = &self.hdr[i];
            self.lens[i] = (hdr.msg_len as usize).min(self.slot_len);
            self.stamps[i] = timestamp_ns(&hdr.msg_hdr);
        }
        self.filled = n;
    }
}

/// The SCM_TIMESTAMPNS time in a received message's control data, 0 if there is none.
fn timestamp_ns(msg: &libc::msghdr) -> u64 {
    if msg.msg_control.is_null() || msg.msg_controllen == 0 {
        return 0;
    }
    // SAFETY: `msg` is a header the kernel filled by recvmmsg: msg_control points at this
    // batch's control buffer and msg_controllen is what the kernel wrote there, so the CMSG
    // macros walk valid, aligned cmsghdrs inside it; the timespec is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_headers_point_at_their_own_slots() {
        let mut b = TxBatch::new(4, 60);
        b.frame_mut(2)[0] = 0xaa;
        let base = b.frame(0).as_ptr() as usize;
        let hdrs = b.headers(1..3);
        assert_eq!(hdrs.len(), 2);
        // SAFETY: headers() just pointed msg_iov at a live iovec inside the batch.
        let iov = unsafe { &*hdrs[1].msg_hdr.msg_iov };
        assert_eq!(iov.iov_base as usize, base + 2 * 60);
        assert_eq!(iov.iov_len, 60);
    }

    #[test]
    fn rx_lengths_come_from_msg_len_and_are_clamped_to_the_slot() {
        let mut b = RxBatch::new(3, 100);
        let hdrs = b.headers();
        hdrs[0].msg_len = 60;
        hdrs[1].msg_len = 5000;
        b.set_filled(2);
        assert_eq!(b.len(), 2);
        assert_eq!(b.frame(0).len(), 60);
        assert_eq!(b.frame(1).len(), 100);
        assert_eq!(b.frames().count(), 2);
    }
}
