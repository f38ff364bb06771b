//! `Receiver`: how a datagram port (a tap, a datagram socket, an L2TPv3 socket) keeps frames
//! coming, one frame per completion, in one of three ways:
//!
//! - **reads**: `rx_depth` reads in flight, each into a pool buffer;
//! - **multishot**: one multishot recv (sockets) or read (taps) over the port's
//!   provided-buffer ring of `rx_depth` pool buffers, topped up from the pool before each
//!   submission; each datagram completes naming the buffer it filled. The receive ends with a
//!   completion lacking F_MORE (the ring ran dry, an error, a cancellation) and the next loop
//!   re-arms it;
//! - **polled** (taps): two ways that never overlap, so frames keep their order. Under load,
//!   rounds of RWF_NOWAIT reads that all run at once (each brings a frame or -EAGAIN; none
//!   waits in the kernel), doubling while rounds come back full. Once a round comes up short
//!   the tap is empty, and one multishot read over the buffer ring (or, without one, a poll)
//!   waits for the next frames, which costs less per frame at moderate rates; when a wake-up
//!   brings a burst through it, it is cancelled and rounds take over after its last
//!   completion.
//!
//! A received buffer passes to the caller with one reference (as if just allocated). The
//! buffer ring is unregistered and emptied back into the pool by `detach`, once no receive
//! is in flight. Nothing here allocates.

use super::{Cx, OP_CANCEL};
use crate::ids::{BufGroup, BufIndex};
use crate::sys::bufring::MAX_ENTRIES;
use crate::sys::fd::is_socket;
use crate::sys::uring::{Completion, FileRef, Multi, Ring, RxBuf};
use std::io;
use std::os::fd::AsRawFd;

/// Op codes of the receiver's operations (a port's own ops start at `FIRST_PORT_OP`).
pub(super) const OP_READ: u8 = 1;
pub(super) const OP_MULTI: u8 = 2;
pub(super) const OP_POLL: u8 = 3;
/// The first op code a port may use for its own operations.
pub(super) const FIRST_PORT_OP: u8 = 8;

/// Reads in the first round of a polled tap, and the fewest in any.
const POLLED_MIN: u32 = 2;
/// Frames through the multishot read in one loop from which rounds take over.
const POLLED_BURST: u32 = 16;

/// How a port receives, for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RxMode {
    /// Reads in flight, one buffer each.
    Reads,
    /// One multishot recv over a provided-buffer ring.
    MultishotRecv,
    /// One multishot read over a provided-buffer ring.
    MultishotRead,
    /// Rounds of non-blocking reads, a multishot read while idle.
    Polled,
    /// Rounds of non-blocking reads, a poll while idle (no multishot read here).
    PolledPoll,
    /// Reads into a stream's reassembly buffer.
    Stream,
    /// Descriptor chains taken from a guest's rings in shared memory each loop, a read of
    /// its kick eventfd while idle (vhost-user).
    SharedRings,
}

#[derive(Debug, Clone, Copy)]
struct Polled {
    /// Reads in the next round.
    want: u32,
    /// Frames the current round brought.
    got: u32,
    /// A read of the current round found the tap empty.
    missed: bool,
    /// The idle phase's multishot read (or poll) is in flight.
    armed: bool,
    /// The idle phase uses a multishot read over the port's buffer ring (else a poll).
    multishot: bool,
    /// The multishot read was asked to stop (a burst came through it).
    cancelling: bool,
    /// Frames the multishot read brought since the last loop.
    burst: u32,
}

enum State {
    Reads,
    Multishot { armed: bool, op: Multi },
    Polled(Polled),
}

/// What a receive completion brought.
pub(super) enum Got {
    /// A datagram of this many bytes in this buffer (the caller's reference).
    Frame(BufIndex, usize),
    /// An empty datagram.
    Empty,
    /// Nothing for the caller (a completion that only moved the receiver's state on).
    Nothing,
    /// The receive failed with this (negative) result.
    Error(i32),
}

/// One port's receive state.
pub(super) struct Receiver {
    state: State,
    file: FileRef,
    /// Receive operations in flight (reads, or the one multishot receive or poll).
    reads: u32,
    /// The port's provided-buffer group, and whether its ring is registered.
    group: BufGroup,
    ring: bool,
    /// Which buffers it receives into, and where in them.
    kind: RxBuf,
}

impl Receiver {
    /// A receiver for a tap, as the worker's `tap_rx` setting and the kernel allow, into
    /// buffers of `kind`.
    pub(super) fn for_tap(cx: &mut Cx<'_>, file: FileRef, name: &str, kind: RxBuf) -> Receiver {
        let f = cx.ring.features();
        let mut r = Receiver {
            state: State::Reads,
            file,
            reads: 0,
            group: cx.group(),
            ring: false,
            kind,
        };
        let tap_rx = cx.env.tap_rx;
        match tap_rx {
            super::TapRx::Polled => {
                let multishot = f.read_multishot && r.open_ring(cx, name);
                r.state = State::Polled(Polled {
                    want: POLLED_MIN,
                    got: 0,
                    // Start idle: the first frames come through the multishot read.
                    missed: true,
                    armed: false,
                    multishot,
                    cancelling: false,
                    burst: 0,
                });
            }
            super::TapRx::Multishot if f.read_multishot && r.open_ring(cx, name) => {
                r.state = State::Multishot {
                    armed: false,
                    op: Multi::Read,
                };
            }
            _ => {}
        }
        r
    }

    /// A receiver for a datagram socket: one multishot recv where the kernel has it and the
    /// worker wants it, reads otherwise.
    pub(super) fn for_socket(cx: &mut Cx<'_>, file: FileRef, name: &str) -> Receiver {
        let mut r = Receiver {
            state: State::Reads,
            file,
            reads: 0,
            group: cx.group(),
            ring: false,
            kind: cx.env.plain_rx(),
        };
        if cx.ring.features().recv_multishot && r.open_ring(cx, name) {
            r.state = State::Multishot {
                armed: false,
                op: Multi::Recv,
            };
        }
        r
    }

    /// A receiver for `fd` as it is: a socket or a tap.
    pub(super) fn for_fd(cx: &mut Cx<'_>, fd: &impl AsRawFd, file: FileRef, name: &str) -> Self {
        if is_socket(fd) {
            Self::for_socket(cx, file, name)
        } else {
            let kind = cx.env.plain_rx();
            Self::for_tap(cx, file, name, kind)
        }
    }

    fn open_ring(&mut self, cx: &mut Cx<'_>, name: &str) -> bool {
        let entries = cx.env.rx_depth.next_power_of_two().min(MAX_ENTRIES as u32) as u16;
        match cx.ring.open_buf_ring(cx.group(), entries, self.kind) {
            Ok(()) => {
                self.ring = true;
                true
            }
            // Reads serve as well, at a higher cost per frame.
            Err(e) => {
                eprintln!("ringswitch: port {name}: no provided-buffer ring ({e}); it receives with reads");
                false
            }
        }
    }

    /// Where in a buffer this receiver's data starts (a received datagram of n bytes is at
    /// `data_offset()..data_offset() + n`).
    #[inline]
    pub(super) fn data_offset(&self) -> usize {
        self.kind.offset as usize
    }

    #[inline]
    fn alloc(&self, cx: &mut Cx<'_>) -> Option<BufIndex> {
        if self.kind.large {
            cx.ring.pool_mut().alloc_large()
        } else {
            cx.ring.pool_mut().alloc()
        }
    }

    pub(super) fn mode(&self) -> RxMode {
        match &self.state {
            State::Reads => RxMode::Reads,
            State::Multishot {
                op: Multi::Recv, ..
            } => RxMode::MultishotRecv,
            State::Multishot {
                op: Multi::Read, ..
            } => RxMode::MultishotRead,
            State::Polled(p) if p.multishot => RxMode::Polled,
            State::Polled(_) => RxMode::PolledPoll,
        }
    }

    /// Receive operations in flight.
    pub(super) fn reads(&self) -> u32 {
        self.reads
    }

    /// Buffers held for receiving: reads in flight and the buffer ring's.
    pub(super) fn buffers(&self, ring: &Ring) -> usize {
        let posted = if self.ring {
            ring.buf_ring_held(self.group)
        } else {
            0
        };
        match &self.state {
            State::Reads => self.reads as usize,
            State::Multishot { .. } => posted,
            // A round's reads hold a buffer each; the idle phase's read or poll none.
            State::Polled(st) => posted + self.reads as usize - usize::from(st.armed),
        }
    }

    /// Keeps the receive going (called once per loop while the port is live).
    pub(super) fn arm(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        match self.state {
            State::Reads => self.arm_reads(cx),
            State::Multishot { .. } => self.arm_multishot(cx),
            State::Polled(_) => self.arm_polled(cx),
        }
    }

    fn arm_reads(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        let missing = cx.env.rx_depth.saturating_sub(self.reads);
        for _ in 0..missing {
            let Some(buf) = self.alloc(cx) else {
                cx.worker.rx_starved.inc();
                break;
            };
            let tag = cx.tag(OP_READ, buf.0);
            // SAFETY: `buf` was just allocated, so nothing else refers to it; it is touched
            // again only when this read's completion is reaped.
            unsafe { cx.ring.push_read(self.file, buf, self.kind, tag) }?;
            self.reads += 1;
        }
        Ok(())
    }

    fn arm_multishot(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        let group = cx.group();
        if !cx.ring.refill_buf_ring(group) {
            cx.worker.rx_starved.inc();
        }
        let State::Multishot { armed, op } = &mut self.state else {
            return Ok(());
        };
        if *armed || cx.ring.buf_ring_held(group) == 0 {
            return Ok(());
        }
        let tag = cx.tag(OP_MULTI, 0);
        cx.ring.push_multi(*op, self.file, group, tag)?;
        *armed = true;
        self.reads += 1;
        Ok(())
    }

    fn arm_polled(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        let rx_depth = cx.env.rx_depth;
        let group = cx.group();
        let State::Polled(st) = &mut self.state else {
            return Ok(());
        };
        if st.armed {
            let burst = std::mem::take(&mut st.burst);
            if !st.multishot {
                return Ok(());
            }
            if burst >= POLLED_BURST && !st.cancelling {
                st.cancelling = true;
                st.want = burst.clamp(POLLED_MIN, rx_depth);
                let (target, tag) = (cx.tag(OP_MULTI, 0), cx.cancel_tag());
                return cx.ring.push_cancel(target, tag);
            }
            if !cx.ring.refill_buf_ring(group) {
                cx.worker.rx_starved.inc();
            }
            return Ok(());
        }
        // A round runs within one io_uring_enter; its reads are all back before the next
        // loop.
        if self.reads > 0 {
            return Ok(());
        }
        if st.missed {
            st.want = (2 * st.got).clamp(POLLED_MIN, rx_depth);
            st.got = 0;
            st.missed = false;
            st.armed = true;
            st.burst = 0;
            self.reads += 1;
            if !st.multishot {
                let tag = cx.tag(OP_POLL, 0);
                return cx.ring.push_poll_in(self.file, tag);
            }
            if !cx.ring.refill_buf_ring(group) {
                cx.worker.rx_starved.inc();
            }
            let tag = cx.tag(OP_MULTI, 0);
            return cx.ring.push_multi(Multi::Read, self.file, group, tag);
        }
        if st.got >= st.want {
            st.want = (2 * st.want).min(rx_depth);
        }
        st.got = 0;
        let (want, kind, file) = (st.want, self.kind, self.file);
        for _ in 0..want {
            let Some(buf) = self.alloc(cx) else {
                cx.worker.rx_starved.inc();
                break;
            };
            let tag = cx.tag(OP_READ, buf.0);
            // SAFETY: `buf` was just allocated, so nothing else refers to it; it is touched
            // again only when this read's completion is reaped.
            unsafe { cx.ring.push_read_nowait(file, buf, kind, tag) }?;
            self.reads += 1;
        }
        Ok(())
    }

    /// One of the receiver's completions.
    pub(super) fn complete(&mut self, cx: &mut Cx<'_>, op: u8, aux: u32, c: Completion) -> Got {
        match op {
            OP_READ => self.read_completed(cx, BufIndex(aux), c.result),
            OP_MULTI => self.multishot_completed(cx, c),
            OP_POLL => {
                self.reads -= 1;
                if let State::Polled(st) = &mut self.state {
                    st.armed = false;
                }
                if c.result < 0 {
                    Got::Error(c.result)
                } else {
                    Got::Nothing
                }
            }
            _ => Got::Nothing,
        }
    }

    fn read_completed(&mut self, cx: &mut Cx<'_>, buf: BufIndex, result: i32) -> Got {
        self.reads -= 1;
        if let State::Polled(st) = &mut self.state {
            if result == -libc::EAGAIN {
                st.missed = true;
                cx.release(buf);
                return Got::Nothing;
            }
            if result == -libc::EOPNOTSUPP {
                // The tap's kernel refuses RWF_NOWAIT reads: wait in the kernel like a poll
                // would, with a multishot read if there is one, else with plain reads. The
                // rest of the round comes back the same way.
                st.missed = true;
                if !st.multishot {
                    self.state = State::Reads;
                }
                cx.release(buf);
                return Got::Nothing;
            }
            if result >= 0 {
                st.got += 1;
            }
        } else if result == -libc::EOPNOTSUPP {
            cx.release(buf);
            return Got::Nothing;
        }
        if result > 0 && cx.live {
            return Got::Frame(buf, result as usize);
        }
        cx.release(buf);
        match result {
            0 if cx.live => Got::Empty,
            r if r < 0 => Got::Error(r),
            _ => Got::Nothing,
        }
    }

    fn multishot_completed(&mut self, cx: &mut Cx<'_>, c: Completion) -> Got {
        let group = cx.group();
        let buf = cx.ring.take_provided(group, &c);
        if !c.more() {
            match &mut self.state {
                State::Multishot { armed, .. } => *armed = false,
                // Rounds take over; a short one brings the multishot read back.
                State::Polled(st) => {
                    st.armed = false;
                    st.cancelling = false;
                    st.missed = false;
                }
                State::Reads => {}
            }
            self.reads -= 1;
        } else if let State::Polled(st) = &mut self.state {
            st.burst += 1;
        }
        match buf {
            Some(b) if cx.live && c.result > 0 => return Got::Frame(b, c.result as usize),
            Some(b) => cx.release(b),
            None => {}
        }
        if !cx.live {
            return Got::Nothing;
        }
        match c.result {
            // An empty datagram (it ends the receive; the next loop re-arms it).
            0 => Got::Empty,
            r if r == -libc::ENOBUFS => {
                cx.worker.rx_ring_empty.inc();
                Got::Nothing
            }
            // The cancellation that hands a burst to rounds.
            r if r == -libc::ECANCELED => Got::Nothing,
            r if r < 0 => Got::Error(r),
            _ => Got::Nothing,
        }
    }

    /// Cancels every receive in flight.
    pub(super) fn cancel(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        let tag = cx.tag(OP_CANCEL, 0);
        cx.ring.push_cancel_file(self.file, tag)
    }

    /// Gives the buffer ring back to the pool once no receive is in flight (idempotent).
    pub(super) fn detach(&mut self, cx: &mut Cx<'_>) {
        if self.ring && self.reads == 0 {
            // SAFETY: no receive of this port is in flight (`reads` is zero: the multishot
            // receive delivered its last completion), and no other operation selects from
            // the port's group.
            if unsafe { cx.ring.close_buf_ring(cx.group()) }.is_ok() {
                self.ring = false;
            }
        }
    }
}
