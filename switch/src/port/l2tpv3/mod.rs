//! `L2tpv3Port`: frames behind an L2TPv3 data header (RFC 3931), one per datagram, over UDP
//! or IP protocol 115 — QEMU's `l2tpv3` netdev. Receives like a datagram socket (see
//! `rx.rs`) and checks each datagram's header in place (`codec`); sends each frame as a
//! `writev` of its header (in a slot of its own until the write completes) and the frame.

pub mod codec;

use super::rx::{Got, Receiver, FIRST_PORT_OP};
use super::{Caps, Closed, Cx, InFlight, Port, Tag};
use crate::counters::DropReason;
use crate::frame::Frame;
use crate::ids::BufIndex;
use crate::sys::msg::IoPair;
use crate::sys::uring::{Completion, FileRef, Ring};
use codec::{L2tpv3Codec, MAX_HEADER};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

/// Op code of a frame's writev (the header slot is the tag's aux).
const OP_ENCAP: u8 = FIRST_PORT_OP;

struct EncapSlot {
    hdr: [u8; MAX_HEADER],
    iov: IoPair,
    buf: BufIndex,
    busy: bool,
}

/// An L2TPv3 port.
pub struct L2tpv3Port {
    fd: OwnedFd,
    name: String,
    codec: Arc<L2tpv3Codec>,
    file: FileRef,
    rx: Option<Receiver>,
    /// Frames sent so far (the L2TPv3 counter).
    seq: u32,
    slots: Box<[EncapSlot]>,
    next: usize,
    writes: u32,
}

impl L2tpv3Port {
    /// A port on the connected L2TPv3 socket `fd` with the session `codec`.
    pub fn new(fd: OwnedFd, codec: Arc<L2tpv3Codec>, name: &str) -> L2tpv3Port {
        let file = FileRef::Fd(fd.as_raw_fd());
        L2tpv3Port {
            fd,
            name: name.to_string(),
            codec,
            file,
            rx: None,
            seq: 0,
            slots: Box::new([]),
            next: 0,
            writes: 0,
        }
    }

    /// A datagram of `len` bytes at `at` in `buf`.
    fn received(&mut self, cx: &mut Cx<'_>, buf: BufIndex, at: usize, len: usize) {
        let size = cx.ring.pool().size_of(buf);
        if at + len >= size {
            // Possibly cut short: oversize, whatever its header says.
            cx.deliver(buf, at, len);
            return;
        }
        match self.codec.decap(&cx.ring.pool().buf(buf)[at..at + len]) {
            Ok(off) => {
                cx.deliver(buf, at + off, len - off);
            }
            Err(reason) => {
                cx.counters.count_rx_drop(len, reason);
                cx.release(buf);
            }
        }
    }

    fn sent(&mut self, cx: &mut Cx<'_>, k: usize, result: i32) {
        let Some(slot) = self.slots.get_mut(k) else {
            return;
        };
        self.writes -= 1;
        slot.busy = false;
        if result >= 0 {
            cx.counters.count_tx(1, slot.iov.second_len() as u64);
        } else if result != -libc::ECANCELED {
            cx.counters.count_drop(DropReason::TxError);
        }
        cx.release(slot.buf);
    }
}

impl Port for L2tpv3Port {
    fn attach(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        self.file = cx.register_file(0, self.fd.as_raw_fd())?;
        self.rx = Some(Receiver::for_socket(cx, self.file, &self.name));
        self.slots = (0..cx.env.tx_depth)
            .map(|_| EncapSlot {
                hdr: [0; MAX_HEADER],
                iov: IoPair::default(),
                buf: BufIndex(0),
                busy: false,
            })
            .collect();
        Ok(())
    }

    #[inline]
    fn arm(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        match &mut self.rx {
            Some(rx) => rx.arm(cx),
            None => Ok(()),
        }
    }

    fn complete(&mut self, cx: &mut Cx<'_>, tag: Tag, c: Completion) -> Result<(), Closed> {
        if tag.op == OP_ENCAP {
            self.sent(cx, tag.aux as usize, c.result);
            return Ok(());
        }
        let Some(rx) = &mut self.rx else {
            return Ok(());
        };
        match rx.complete(cx, tag.op, tag.aux, c) {
            Got::Frame(buf, len) => {
                let at = rx.data_offset();
                self.received(cx, buf, at, len)
            }
            Got::Empty => {
                let reason = self
                    .codec
                    .decap(&[])
                    .err()
                    .unwrap_or(DropReason::ShortHeader);
                cx.counters.count_rx_drop(0, reason);
            }
            Got::Nothing => {}
            Got::Error(r) => return super::receive_error(cx, r),
        }
        Ok(())
    }

    fn send(&mut self, cx: &mut Cx<'_>, frames: &[Frame]) -> io::Result<usize> {
        let mut taken = 0;
        for f in frames {
            let k = self.next;
            let Some(slot) = self.slots.get_mut(k) else {
                break;
            };
            if slot.busy {
                break;
            }
            self.seq = self.seq.wrapping_add(1);
            let hlen = self.codec.encap(&mut slot.hdr, self.seq);
            let frame = cx.ring.pool_mut().buf_mut(f.buf)[f.off as usize..].as_ptr();
            slot.iov
                .set((slot.hdr.as_ptr(), hlen), (frame, f.len as usize));
            slot.buf = f.buf;
            slot.busy = true;
            let tag = cx.tag(OP_ENCAP, k as u32);
            // SAFETY: the slot (header and iovecs) is boxed in the port and marked busy until
            // this completion is reaped; the frame's buffer reference passed from the queue to
            // this write, so its bytes stay put and unchanged.
            unsafe { cx.ring.push_writev(self.file, slot.iov.as_ptr(), 2, tag) }?;
            self.next = (k + 1) % self.slots.len();
            self.writes += 1;
            taken += 1;
        }
        cx.worker.tx_submitted.add(taken as u64);
        Ok(taken)
    }

    fn cancel(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        match &mut self.rx {
            Some(rx) => rx.cancel(cx),
            None => Ok(()),
        }
    }

    fn in_flight(&self) -> InFlight {
        InFlight {
            reads: self.rx.as_ref().map_or(0, Receiver::reads),
            writes: self.writes,
        }
    }

    fn detach(&mut self, cx: &mut Cx<'_>) {
        if let Some(rx) = &mut self.rx {
            rx.detach(cx);
        }
        cx.unregister_files();
    }

    fn caps(&self) -> Caps {
        Caps {
            rx: self
                .rx
                .as_ref()
                .map_or(super::RxMode::Reads, Receiver::mode),
            coalesce: true,
            offloads: false,
            sends_now: false,
        }
    }

    fn rx_buffers(&self, ring: &Ring) -> usize {
        self.rx.as_ref().map_or(0, |rx| rx.buffers(ring))
    }
}
