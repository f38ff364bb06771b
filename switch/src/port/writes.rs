//! `Writes`: one write per frame, straight from its pool buffer — how a tap and a datagram
//! socket of the network send, many independent writes at once. The frame's buffer
//! reference passes to the write and is released when its completion is reaped.

use super::{Cx, Tag};
use crate::counters::DropReason;
use crate::frame::Frame;
use crate::ids::BufIndex;
use crate::sys::uring::FileRef;
use std::io;

/// Op code of a single-frame write (the buffer is the tag's aux).
pub(super) const OP_WRITE: u8 = 4;

/// Writes in flight on one port, in transmit queue depths (`--tx-depth`, 256 by default).
const MAX_IN_FLIGHT: usize = 4;

/// Single-frame writes in flight on one port.
#[derive(Default)]
pub(super) struct Writes {
    pub(super) in_flight: u32,
}

impl Writes {
    /// Queues a write of `f` on `file`.
    #[inline]
    pub(super) fn send_one(&mut self, cx: &mut Cx<'_>, file: FileRef, f: &Frame) -> io::Result<()> {
        let tag = cx.tag(OP_WRITE, f.buf.0);
        // SAFETY: the frame's buffer reference passes from the transmit queue to this write
        // and is released when its completion is reaped; nothing writes a buffer that is
        // queued for transmission.
        unsafe { cx.ring.push_write(file, f.buf, f.off, f.len, tag) }?;
        self.in_flight += 1;
        cx.worker.tx_submitted.inc();
        Ok(())
    }

    /// Queues a write of each frame, up to `MAX_IN_FLIGHT` times `tx_depth` writes in
    /// flight on the port; returns how many frames it took (the rest wait in the port's
    /// queue). A peer that stops taking frames (the kernel parks the writes) so holds a
    /// bounded share of the buffers, not the whole pool every port receives into.
    #[inline]
    pub(super) fn send_each(
        &mut self,
        cx: &mut Cx<'_>,
        file: FileRef,
        frames: &[Frame],
    ) -> io::Result<usize> {
        let cap = (MAX_IN_FLIGHT * cx.env.tx_depth) as u32;
        let room = cap.saturating_sub(self.in_flight) as usize;
        let n = frames.len().min(room);
        for f in &frames[..n] {
            self.send_one(cx, file, f)?;
        }
        Ok(n)
    }

    /// Whether a completion is one of these writes.
    #[inline]
    pub(super) fn owns(tag: Tag) -> bool {
        tag.op == OP_WRITE
    }

    /// A write completed: count it and release its buffer.
    #[inline]
    pub(super) fn completed(&mut self, cx: &mut Cx<'_>, tag: Tag, result: i32) {
        self.in_flight -= 1;
        if result >= 0 {
            cx.counters.count_tx(1, result as u64);
        } else if result == -libc::EIO {
            // A tap whose kernel side is administratively down refuses frames with EIO (and
            // counts them in its own rx_dropped).
            cx.counters.count_drop(DropReason::LinkDown);
        } else {
            // Failed, or cancelled (a stop or a removal cancels the sends parked in the
            // kernel): the frame did not leave, and is counted.
            cx.counters.count_drop(DropReason::TxError);
        }
        cx.release(BufIndex(tag.aux));
    }
}
