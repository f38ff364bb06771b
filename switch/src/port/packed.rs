//! `Packed`: a batch of frames sent as one datagram — how the worker sends to a user port's
//! libslirp thread over their socket pair. Each frame in the datagram is one record: its
//! length (virtio-net header and frame) as a 4-byte big-endian number, the 12-byte header,
//! the frame. One datagram per frame cost a socket buffer, a wake-up of the thread and a
//! receive each; a station's acknowledgements of a download come in runs of tens per pass
//! (each tap write of a segment makes the station's stack answer at once), and packed they
//! cross as one. One `sendmsg` in flight at a time; the frames behind it wait in the port's
//! queue. Never allocates after `new`.

use super::rx::FIRST_PORT_OP;
use super::{Cx, Tag};
use crate::counters::DropReason;
use crate::frame::{Frame, Offload};
use crate::ids::BufIndex;
use crate::sys::msg::SendMsg;
use crate::sys::uring::FileRef;
use std::io;

/// Op code of a packed send.
const OP_PACKED: u8 = FIRST_PORT_OP;

/// A record's length prefix.
pub const PACK_PREFIX: usize = 4;
/// The largest frame a record carries (the switch's frame limit).
const MAX_RECORD_FRAME: usize = 65536;
/// The largest packed datagram: a whole record of the largest frame, or records of smaller
/// frames up to that size. A receiver's buffer of this size takes any datagram whole.
pub const PACKED_MAX: usize = PACK_PREFIX + Offload::WIRE_LEN + MAX_RECORD_FRAME;
/// Most frames in one datagram.
const MAX_PACK: usize = 64;

/// The batch in flight.
pub(super) struct Packed {
    prefixes: Box<[[u8; PACK_PREFIX]]>,
    msg: Box<SendMsg>,
    bufs: Box<[BufIndex]>,
    n: usize,
    busy: bool,
}

impl Packed {
    pub(super) fn new() -> Packed {
        Packed {
            prefixes: vec![[0u8; PACK_PREFIX]; MAX_PACK].into_boxed_slice(),
            msg: SendMsg::new(2 * MAX_PACK),
            bufs: vec![BufIndex(0); MAX_PACK].into_boxed_slice(),
            n: 0,
            busy: false,
        }
    }

    /// Whether a completion is this sender's.
    #[inline]
    pub(super) fn owns(tag: Tag) -> bool {
        tag.op == OP_PACKED
    }

    /// Whether a send is in flight.
    pub(super) fn busy(&self) -> bool {
        self.busy
    }

    /// Sends the head of `frames` as one datagram, each behind its header (`header` writes
    /// it into the headroom in front of the frame and returns the frame with it); returns how
    /// many frames it took: none while a send is in flight, else at least one.
    pub(super) fn send(
        &mut self,
        cx: &mut Cx<'_>,
        file: FileRef,
        frames: &[Frame],
        header: impl Fn(&mut Cx<'_>, &Frame) -> Frame,
    ) -> io::Result<usize> {
        if self.busy || frames.is_empty() {
            return Ok(0);
        }
        self.msg.clear();
        let mut n = 0;
        for f in frames.iter().take(MAX_PACK) {
            let record = PACK_PREFIX + Offload::WIRE_LEN + f.len as usize;
            if n > 0 && self.msg.bytes() + record > PACKED_MAX {
                break;
            }
            let h = header(cx, f);
            self.prefixes[n] = h.len.to_be_bytes();
            self.msg.push(self.prefixes[n].as_ptr(), PACK_PREFIX);
            let at = &cx.ring.pool_mut().buf_mut(h.buf)[h.off as usize..];
            self.msg.push(at.as_ptr(), h.len as usize);
            self.bufs[n] = f.buf;
            n += 1;
        }
        self.n = n;
        let msg = self.msg.header();
        let tag = cx.tag(OP_PACKED, 0);
        // SAFETY: the header, iovecs and prefixes are boxed in this sender, which the port
        // keeps until nothing is in flight, and the frames are held by the references taken
        // over from the queue; nothing touches any of them until this completion is reaped
        // (`busy`).
        unsafe {
            cx.ring
                .push_sendmsg(file, msg, libc::MSG_NOSIGNAL as u32, tag)
        }?;
        self.busy = true;
        cx.worker.tx_submitted.add(n as u64);
        Ok(n)
    }

    /// The send completed: count its frames (sent, or dropped) and release their buffers.
    pub(super) fn completed(&mut self, cx: &mut Cx<'_>, result: i32) {
        self.busy = false;
        let (n, bytes) = (self.n, self.msg.bytes());
        if result >= 0 && result as usize == bytes {
            let overhead = n * (PACK_PREFIX + Offload::WIRE_LEN);
            cx.counters.count_tx(n as u64, (bytes - overhead) as u64);
        } else {
            // Failed, or cancelled by a stop or a removal: the frames did not leave.
            cx.counters.count_drops(DropReason::TxError, n as u64);
        }
        for &b in &self.bufs[..n] {
            cx.release(b);
        }
        self.n = 0;
    }
}
