//! `Writes`: one write per frame, straight from its pool buffer — how a tap and a plain
//! datagram socket send, either many independent writes at once or one chain of linked
//! writes at a time (unix datagram sockets). The frame's buffer reference passes to the write
//! and is released when its completion is reaped.

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

/// Writes in one chain (`send_chain`): a few times what a unix datagram peer queues, so
/// that the chain ends, and the port takes the next frames of its queue, while its peer is
/// still busy with the last ones (measured: 32 carries 5-10% more frames through a
/// vde_switch than a chain of a whole transmit queue).
const CHAIN_MAX: usize = 32;

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
    /// queue). A peer that stops taking frames (a unix datagram socket nobody reads: the
    /// kernel parks the sends) so holds a bounded share of the buffers, not the whole pool
    /// every port receives into.
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

    /// Queues the head of `frames` as one chain of linked writes, the frames in order, if no
    /// write is in flight; returns how many frames it took (the rest wait in the port's queue
    /// until the chain has completed). For a peer that holds only a few frames — a unix
    /// datagram socket queues net.unix.max_dgram_qlen, 10 by default — independent writes
    /// would each wait in the kernel on a poll of their own, and every frame the peer reads
    /// would wake and retry all of them (each retry building the datagram again) for one to
    /// succeed, in any order. In a chain only the head waits. A write that fails cancels the
    /// rest of its chain: each completes with -ECANCELED and is counted as a drop.
    #[inline]
    pub(super) fn send_chain(
        &mut self,
        cx: &mut Cx<'_>,
        file: FileRef,
        frames: &[Frame],
    ) -> io::Result<usize> {
        if self.in_flight > 0 || frames.is_empty() {
            return Ok(0);
        }
        let want = frames.len().min(CHAIN_MAX);
        let n = cx.ring.sq_room(want)?.min(want);
        for (i, f) in frames[..n].iter().enumerate() {
            let tag = cx.tag(OP_WRITE, f.buf.0);
            // SAFETY: as in `send_one`: the buffer reference passes to this write until its
            // completion is reaped.
            unsafe {
                cx.ring
                    .push_write_linked(file, f.buf, f.off, f.len, i + 1 < n, tag)
            }?;
            self.in_flight += 1;
        }
        cx.worker.tx_submitted.add(n as u64);
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
