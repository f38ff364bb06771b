//! `StreamPort`: frames over a byte stream (TCP or unix), each behind its length as a 4-byte
//! big-endian number — QEMU's `socket` listen/connect and `stream` netdevs.
//!
//! One read in flight into the reassembly buffer (`codec::StreamRx`), whose complete frames are
//! copied into pool buffers; one `sendmsg` in flight carrying a batch of length-prefixed
//! frames (so the stream's framing can never interleave), sent with MSG_WAITALL so that it
//! goes whole or fails. A stream that ends, fails or goes out of step closes the port.

pub mod codec;

use super::rx::{RxMode, FIRST_PORT_OP};
use super::{Caps, Closed, Cx, InFlight, Port, Tag};
use crate::counters::DropReason;
use crate::frame::Frame;
use crate::ids::BufIndex;
use crate::pool::HEADROOM;
use crate::sys::msg::SendMsg;
use crate::sys::uring::{Completion, FileRef, Ring};
use codec::{StreamItem, StreamRx, PREFIX_LEN};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// A read into the reassembly buffer.
const OP_READ: u8 = FIRST_PORT_OP;
/// A batch of frames sent with one sendmsg.
const OP_SEND: u8 = FIRST_PORT_OP + 1;

/// Most frames in one batch.
const MAX_BATCH: usize = 512;

/// The batch a stream port has in flight: per frame a 4-byte prefix and the frame itself.
struct StreamTx {
    prefixes: Box<[[u8; PREFIX_LEN]]>,
    msg: Box<SendMsg>,
    bufs: Box<[BufIndex]>,
    n: usize,
    busy: bool,
}

/// A stream port.
pub struct StreamPort {
    fd: OwnedFd,
    file: FileRef,
    rx: Option<Box<StreamRx>>,
    reading: bool,
    tx: Option<StreamTx>,
}

impl StreamPort {
    /// A port on the connected stream socket `fd`.
    pub fn new(fd: OwnedFd) -> StreamPort {
        let file = FileRef::Fd(fd.as_raw_fd());
        StreamPort {
            fd,
            file,
            rx: None,
            reading: false,
            tx: None,
        }
    }

    fn read_completed(&mut self, cx: &mut Cx<'_>, result: i32) -> Result<(), Closed> {
        self.reading = false;
        let Some(rx) = &mut self.rx else {
            return Ok(());
        };
        if !cx.live {
            return Ok(());
        }
        if result <= 0 {
            if result < 0 && matches!(-result, libc::EINTR | libc::EAGAIN | libc::ENOBUFS) {
                return Ok(());
            }
            if rx.mid_frame() {
                cx.counters.count_drop(DropReason::Truncated);
            }
            return Err(Closed(if result == 0 {
                "the peer closed the connection".to_string()
            } else {
                format!("receive failed: {}", io::Error::from_raw_os_error(-result))
            }));
        }
        rx.commit(result as usize);
        while let Some(item) = rx.next_item(cx.env.max_frame) {
            match item {
                StreamItem::Frame { start, len } => {
                    let pool = cx.ring.pool_mut();
                    let b = if HEADROOM + len < pool.buf_size() {
                        pool.alloc()
                    } else {
                        pool.alloc_large()
                    };
                    let Some(b) = b else {
                        cx.worker.rx_starved.inc();
                        cx.counters.count_rx_drop(len, DropReason::QueueFull);
                        continue;
                    };
                    pool.buf_mut(b)[HEADROOM..HEADROOM + len]
                        .copy_from_slice(&rx.bytes()[start..start + len]);
                    cx.rx.push(Frame::new(
                        pool.home(),
                        cx.id,
                        b,
                        HEADROOM as u16,
                        len as u32,
                    ));
                }
                StreamItem::Runt => cx.counters.count_rx_drop(0, DropReason::Runt),
                StreamItem::Oversize(len) => cx.counters.count_rx_drop(len, DropReason::Oversize),
                StreamItem::Desync(len) => {
                    cx.counters.rx_frames.inc();
                    cx.counters.count_drop(DropReason::Oversize);
                    return Err(Closed(format!(
                        "frame length {len} in the stream is impossible; the stream is out of step"
                    )));
                }
            }
        }
        Ok(())
    }

    fn sent(&mut self, cx: &mut Cx<'_>, result: i32) -> Result<(), Closed> {
        let Some(tx) = &mut self.tx else {
            return Ok(());
        };
        tx.busy = false;
        let (n, bytes) = (tx.n, tx.msg.bytes());
        let whole = result >= 0 && result as usize == bytes;
        if whole {
            cx.counters
                .count_tx(n as u64, (bytes - n * PREFIX_LEN) as u64);
        } else if result != -libc::ECANCELED {
            cx.counters.count_drops(DropReason::TxError, n as u64);
        }
        for &b in &tx.bufs[..n] {
            cx.release(b);
        }
        tx.n = 0;
        if whole || result == -libc::ECANCELED {
            return Ok(());
        }
        Err(Closed(if result < 0 {
            format!("send failed: {}", io::Error::from_raw_os_error(-result))
        } else {
            format!("send cut short ({result} bytes)")
        }))
    }
}

impl Port for StreamPort {
    fn attach(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        self.file = cx.register_file(0, self.fd.as_raw_fd())?;
        self.rx = Some(Box::new(StreamRx::new()));
        let depth = cx.env.tx_depth.clamp(1, MAX_BATCH);
        self.tx = Some(StreamTx {
            prefixes: vec![[0u8; PREFIX_LEN]; depth].into_boxed_slice(),
            msg: SendMsg::new(2 * depth),
            bufs: vec![BufIndex(0); depth].into_boxed_slice(),
            n: 0,
            busy: false,
        });
        Ok(())
    }

    fn arm(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        let Some(rx) = &mut self.rx else {
            return Ok(());
        };
        if self.reading {
            return Ok(());
        }
        let target = rx.read_target();
        let (ptr, len) = (target.as_mut_ptr(), target.len().min(u32::MAX as usize));
        let tag = cx.tag(OP_READ, 0);
        // SAFETY: the reassembly buffer is boxed in the port, which outlives the read (a port
        // is dropped only once nothing is in flight), and nothing touches it until the
        // completion (`reading` is set).
        unsafe { cx.ring.push_read_into(self.file, ptr, len as u32, tag) }?;
        self.reading = true;
        Ok(())
    }

    fn complete(&mut self, cx: &mut Cx<'_>, tag: Tag, c: Completion) -> Result<(), Closed> {
        match tag.op {
            OP_READ => self.read_completed(cx, c.result),
            OP_SEND => self.sent(cx, c.result),
            _ => Ok(()),
        }
    }

    fn send(&mut self, cx: &mut Cx<'_>, frames: &[Frame]) -> io::Result<usize> {
        let Some(tx) = &mut self.tx else {
            return Ok(0);
        };
        if tx.busy {
            return Ok(0);
        }
        let n = frames.len().min(tx.bufs.len());
        tx.msg.clear();
        for (k, f) in frames[..n].iter().enumerate() {
            tx.prefixes[k] = f.len.to_be_bytes();
            tx.msg.push(tx.prefixes[k].as_ptr(), PREFIX_LEN);
            let base = cx.ring.pool_mut().buf_mut(f.buf)[f.off as usize..].as_ptr();
            tx.msg.push(base, f.len as usize);
            tx.bufs[k] = f.buf;
        }
        tx.n = n;
        let msg = tx.msg.header();
        let tag = cx.tag(OP_SEND, 0);
        // SAFETY: the header, iovecs and prefixes are boxed in the port and the frames are
        // held by references taken over from the queue; all stay untouched until this
        // completion is reaped (`busy`). MSG_WAITALL makes the kernel send the whole batch or
        // fail, so the stream's framing stays whole.
        unsafe {
            cx.ring.push_sendmsg(
                self.file,
                msg,
                (libc::MSG_WAITALL | libc::MSG_NOSIGNAL) as u32,
                tag,
            )
        }?;
        tx.busy = true;
        cx.worker.tx_submitted.add(n as u64);
        Ok(n)
    }

    fn cancel(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        let tag = cx.cancel_tag();
        cx.ring.push_cancel_file(self.file, tag)
    }

    fn in_flight(&self) -> InFlight {
        InFlight {
            reads: u32::from(self.reading),
            writes: u32::from(self.tx.as_ref().is_some_and(|t| t.busy)),
        }
    }

    fn detach(&mut self, cx: &mut Cx<'_>) {
        cx.unregister_files();
    }

    fn caps(&self) -> Caps {
        Caps {
            rx: RxMode::Stream,
            // One read and one send in flight: a wait gains nothing by gathering.
            coalesce: false,
            offloads: false,
            sends_now: false,
        }
    }

    fn rx_buffers(&self, _ring: &Ring) -> usize {
        // Reads go to the port's own reassembly buffer, not the pool.
        0
    }
}
