//! `DatagramPort`: a connected datagram socket carrying one frame per datagram (QEMU's
//! `socket` udp/mcast/fd, `dgram` over UDP or unix sockets).
//!
//! Receives with one multishot recv over the port's buffer ring, or reads (see `rx.rs`).
//! Sends one write per frame, or — on a UDP socket whose kernel takes UDP_SEGMENT — runs of
//! equal-size frames as one GSO `sendmsg` each (the receiver still gets one datagram per
//! frame). A multicast port sends from a socket of its own so that its own frames, looped
//! back, never reach its receiving socket.
//!
//! A unix datagram socket (`dgram` over unix paths, vde data sockets) has a peer that queues
//! only a few datagrams (net.unix.max_dgram_qlen, 10 by default) and makes its senders wait
//! for room. Its frames go at once, from the worker's pass: one `sendmmsg` that never waits
//! takes as many as the peer has room for, in order; then one poll for room waits in the
//! kernel, and the next pass after it fires sends on. Writes through the ring would each
//! wait on a poll of their own and be retried in any order, and a chain of linked writes, in
//! order, costs a task-work round trip in the kernel per frame (measured: 15% of the core in
//! a vde client chain, where QEMU sends each frame with one plain non-blocking `send`).

use super::rx::{Got, Receiver, FIRST_PORT_OP};
use super::writes::Writes;
use super::{Caps, Closed, Cx, InFlight, Port, Tag};
use crate::counters::DropReason;
use crate::frame::Frame;
use crate::ids::BufIndex;
use crate::sys::msg::{Datagrams, SendMsg};
use crate::sys::uring::{Completion, FileRef, Ring};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// Op code of a GSO send (the slot is the tag's aux).
const OP_GSO: u8 = FIRST_PORT_OP;
/// Op code of the poll for room on a unix datagram socket.
const OP_ROOM: u8 = FIRST_PORT_OP + 1;

/// Most datagrams in one synchronous send (a few times what a unix datagram peer queues).
const SEND_NOW_MAX: usize = 32;

/// Most frames in one GSO send (the kernel allows 64 segments per send here).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one GSO send (a UDP datagram's limit, with room to spare).
const GSO_MAX_BYTES: usize = 65000;
/// GSO sends a port may have in flight.
const GSO_SLOTS: usize = 8;

/// One GSO send in flight: its message and the frames' buffers, boxed in the port until the
/// completion.
struct GsoSlot {
    msg: Box<SendMsg>,
    bufs: [BufIndex; GSO_MAX_SEGMENTS],
    n: usize,
    busy: bool,
}

/// A datagram socket port.
pub struct DatagramPort {
    fd: OwnedFd,
    tx_fd: Option<OwnedFd>,
    name: String,
    gso: bool,
    /// Unix datagram socket: frames go at once (`send_now`), as many as the peer takes.
    now: Option<Datagrams>,
    /// The poll for room on a unix datagram socket is in flight.
    waiting: bool,
    file: FileRef,
    tx_file: FileRef,
    rx: Option<Receiver>,
    tx: Writes,
    slots: Box<[GsoSlot]>,
    gso_in_flight: u32,
}

/// Length of the run of equal-size frames at the start of `frames` that one GSO send may
/// carry.
fn gso_run(frames: &[Frame]) -> usize {
    let len = frames[0].len as usize;
    let max = GSO_MAX_SEGMENTS.min(GSO_MAX_BYTES / len.max(1)).max(1);
    frames
        .iter()
        .take(max)
        .take_while(|f| f.len as usize == len)
        .count()
}

impl DatagramPort {
    /// A port receiving on `fd` and sending on `tx_fd` (or `fd`); `gso` when the socket
    /// takes UDP_SEGMENT.
    pub fn new(fd: OwnedFd, tx_fd: Option<OwnedFd>, gso: bool, name: &str) -> DatagramPort {
        let file = FileRef::Fd(fd.as_raw_fd());
        let tx_file = FileRef::Fd(tx_fd.as_ref().unwrap_or(&fd).as_raw_fd());
        let unix = !gso && crate::sys::fd::is_unix_socket(tx_fd.as_ref().unwrap_or(&fd));
        DatagramPort {
            fd,
            tx_fd,
            name: name.to_string(),
            gso,
            now: unix.then(|| Datagrams::new(SEND_NOW_MAX)),
            waiting: false,
            file,
            tx_file,
            rx: None,
            tx: Writes::default(),
            slots: Box::new([]),
            gso_in_flight: 0,
        }
    }

    fn send_gso(&mut self, cx: &mut Cx<'_>, frames: &[Frame]) -> io::Result<usize> {
        let mut taken = 0;
        while taken < frames.len() {
            let run = gso_run(&frames[taken..]);
            if run == 1 {
                self.tx.send_one(cx, self.tx_file, &frames[taken])?;
                taken += 1;
                continue;
            }
            let Some(k) = self.slots.iter().position(|s| !s.busy) else {
                break;
            };
            let slot = &mut self.slots[k];
            let len = frames[taken].len as usize;
            slot.msg.clear();
            for (j, f) in frames[taken..taken + run].iter().enumerate() {
                let base = cx.ring.pool_mut().buf_mut(f.buf)[f.off as usize..].as_ptr();
                slot.msg.push(base, len);
                slot.bufs[j] = f.buf;
            }
            slot.n = run;
            slot.msg.set_udp_segment(len as u16);
            let msg = slot.msg.header();
            let tag = cx.tag(OP_GSO, k as u32);
            // SAFETY: the slot's message is boxed in the port and marked busy until this
            // completion is reaped; the frames' buffer references passed from the queue to
            // this send, so their bytes stay put and unchanged.
            unsafe {
                cx.ring
                    .push_sendmsg(self.tx_file, msg, libc::MSG_NOSIGNAL as u32, tag)
            }?;
            slot.busy = true;
            self.gso_in_flight += 1;
            cx.worker.tx_submitted.add(run as u64);
            taken += run;
        }
        Ok(taken)
    }

    /// Sends the head of `frames` at once, as many as the peer has room for; returns how
    /// many it took. Where the peer is full, one poll waits for room, and the port takes
    /// nothing until it has fired. A frame the kernel refuses (no peer: ENOTCONN,
    /// ECONNREFUSED) is dropped and counted, and the next one tried.
    fn send_now(&mut self, cx: &mut Cx<'_>, frames: &[Frame]) -> io::Result<usize> {
        let Some(d) = &mut self.now else {
            return Ok(0);
        };
        if self.waiting {
            return Ok(0);
        }
        let fd = self.tx_fd.as_ref().unwrap_or(&self.fd).as_fd();
        let mut taken = 0;
        let mut full = false;
        while taken < frames.len() && !full {
            let chunk = &frames[taken..frames.len().min(taken + d.capacity())];
            let pool = cx.ring.pool();
            let r = d.send_now(
                fd,
                chunk
                    .iter()
                    .map(|f| pool.frame_at(f.buf, f.off as usize, f.len as usize)),
            );
            match r {
                Ok(n) => {
                    let bytes = chunk[..n].iter().map(|f| f.len as u64).sum();
                    cx.counters.count_tx(n as u64, bytes);
                    for f in &chunk[..n] {
                        cx.release(f.buf);
                    }
                    taken += n;
                    // Stopped short: the peer is full, or the next frame fails (the poll
                    // then fires at once, and the next send finds out which).
                    full = n < chunk.len();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => full = true,
                Err(_) => {
                    cx.counters.count_drop(DropReason::TxError);
                    cx.release(chunk[0].buf);
                    taken += 1;
                }
            }
        }
        if full {
            let tag = cx.tag(OP_ROOM, 0);
            cx.ring.push_poll_out(self.tx_file, tag)?;
            self.waiting = true;
        }
        cx.worker.tx_submitted.add(taken as u64);
        Ok(taken)
    }

    fn gso_sent(&mut self, cx: &mut Cx<'_>, k: usize, result: i32) {
        let Some(slot) = self.slots.get_mut(k) else {
            return;
        };
        self.gso_in_flight -= 1;
        slot.busy = false;
        if result >= 0 && result as usize == slot.msg.bytes() {
            cx.counters.count_tx(slot.n as u64, slot.msg.bytes() as u64);
        } else if result != -libc::ECANCELED {
            cx.counters.count_drops(DropReason::TxError, slot.n as u64);
        }
        for &b in &slot.bufs[..slot.n] {
            cx.release(b);
        }
        slot.n = 0;
    }
}

impl Port for DatagramPort {
    fn attach(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        self.file = cx.register_file(0, self.fd.as_raw_fd())?;
        self.tx_file = match &self.tx_fd {
            Some(t) => cx.register_file(1, t.as_raw_fd())?,
            None => self.file,
        };
        self.rx = Some(Receiver::for_fd(cx, &self.fd, self.file, &self.name));
        if self.gso {
            self.slots = (0..GSO_SLOTS)
                .map(|_| GsoSlot {
                    msg: SendMsg::new(GSO_MAX_SEGMENTS),
                    bufs: [BufIndex(0); GSO_MAX_SEGMENTS],
                    n: 0,
                    busy: false,
                })
                .collect();
        }
        Ok(())
    }

    #[inline]
    fn arm(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        match &mut self.rx {
            Some(rx) => rx.arm(cx),
            None => Ok(()),
        }
    }

    #[inline]
    fn complete(&mut self, cx: &mut Cx<'_>, tag: Tag, c: Completion) -> Result<(), Closed> {
        if Writes::owns(tag) {
            self.tx.completed(cx, tag, c.result);
            return Ok(());
        }
        if tag.op == OP_GSO {
            self.gso_sent(cx, tag.aux as usize, c.result);
            return Ok(());
        }
        if tag.op == OP_ROOM {
            // Room, an error for the next send to report, or a cancellation: the next pass
            // sends (or finds the port gone).
            self.waiting = false;
            return Ok(());
        }
        let Some(rx) = &mut self.rx else {
            return Ok(());
        };
        match rx.complete(cx, tag.op, tag.aux, c) {
            Got::Frame(buf, len) => {
                cx.deliver(buf, rx.data_offset(), len);
            }
            Got::Empty => cx.counters.count_rx_drop(0, DropReason::Runt),
            Got::Nothing => {}
            Got::Error(r) => return super::receive_error(cx, r),
        }
        Ok(())
    }

    #[inline]
    fn send(&mut self, cx: &mut Cx<'_>, frames: &[Frame]) -> io::Result<usize> {
        if self.gso {
            self.send_gso(cx, frames)
        } else if self.now.is_some() {
            self.send_now(cx, frames)
        } else {
            self.tx.send_each(cx, self.tx_file, frames)
        }
    }

    fn cancel(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        if let Some(rx) = &mut self.rx {
            rx.cancel(cx)?;
        }
        if self.tx_fd.is_some() {
            let tag = cx.cancel_tag();
            cx.ring.push_cancel_file(self.tx_file, tag)?;
        }
        Ok(())
    }

    fn in_flight(&self) -> InFlight {
        InFlight {
            reads: self.rx.as_ref().map_or(0, Receiver::reads),
            writes: self.tx.in_flight + self.gso_in_flight + self.waiting as u32,
        }
    }

    fn detach(&mut self, cx: &mut Cx<'_>) {
        if let Some(rx) = &mut self.rx {
            rx.detach(cx);
        }
        cx.unregister_files();
    }

    fn caps(&self) -> Caps {
        let rx = self
            .rx
            .as_ref()
            .map_or(super::RxMode::Reads, Receiver::mode);
        Caps {
            rx,
            // A wait that gathers several of its frames saves sends (GSO) or wake-ups
            // (one multishot receive brings them all).
            coalesce: self.gso || rx == super::RxMode::MultishotRecv,
            offloads: false,
            sends_now: self.now.is_some(),
        }
    }

    fn rx_buffers(&self, ring: &Ring) -> usize {
        self.rx.as_ref().map_or(0, |rx| rx.buffers(ring))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{PortId, WorkerId};

    fn frames(lens: &[u32]) -> Vec<Frame> {
        lens.iter()
            .map(|&len| Frame::new(WorkerId(0), PortId(0), BufIndex(0), 0, len))
            .collect()
    }

    #[test]
    fn gso_runs_take_equal_sizes_within_the_limits() {
        assert_eq!(gso_run(&frames(&[60, 60, 60, 61, 60])), 3);
        assert_eq!(gso_run(&frames(&[60])), 1);
        assert_eq!(gso_run(&frames(&[60; 100])), GSO_MAX_SEGMENTS);
        // 1514-byte frames: at most 42 fit in one send.
        assert_eq!(gso_run(&frames(&[1514; 64])), GSO_MAX_BYTES / 1514);
        assert_eq!(gso_run(&frames(&[1514, 60])), 1);
    }
}
