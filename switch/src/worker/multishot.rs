//! How a datagram socket port receives with one multishot recv, and a tap with one multishot
//! read, instead of a read per buffer.
//!
//! The port owns a provided-buffer ring (its group is the port's index) of `rx_depth` pool
//! buffers. Before each submission the worker tops the ring up from the pool's free stack, in
//! one batch, and arms the receive if it is not running; each datagram completes with the id
//! of the buffer it filled, which passes to the receive batch exactly as a read's buffer does
//! (it returns to the free stack when its last transmission completes). The receive ends with
//! a completion lacking F_MORE — the ring ran dry (-ENOBUFS), an error, a cancellation — and
//! the next loop re-arms it after refilling. A removed or failed port's ring is unregistered
//! and emptied back into the pool once its receive has ended. Nothing here allocates.

use super::*;
use crate::bufring::MAX_ENTRIES;
use crate::uring::Multi;

/// How a port receives.
pub(super) enum RxMode {
    /// `rx_depth` reads in flight: taps, streams, and sockets where multishot is unavailable.
    Reads,
    /// One multishot receive (`op`) over the port's buffer ring; `armed` while it runs.
    Multishot { armed: bool, op: Multi },
    /// A tap read two ways that never overlap, so frames keep their order. Under load:
    /// rounds of `want` RWF_NOWAIT reads that all run at once (each brings a frame or
    /// -EAGAIN, none waits in the kernel); `want` doubles while rounds
    /// come back full. Once a round comes up short the tap is empty, and one multishot read
    /// over the port's buffer ring (or, without one, a poll) waits for the next frames,
    /// which costs less per frame at moderate rates; when a wake-up brings a burst through
    /// it, it is cancelled and rounds take over again after its last completion.
    Polled(Polled),
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Polled {
    /// Reads in the next round.
    pub want: u32,
    /// Frames the current round brought.
    pub got: u32,
    /// A read of the current round found the tap empty.
    pub missed: bool,
    /// The idle phase's multishot read (or poll) is in flight.
    pub armed: bool,
    /// The idle phase uses a multishot read over the port's buffer ring (else a poll).
    pub multishot: bool,
    /// The multishot read was asked to stop (a burst came through it).
    pub cancelling: bool,
    /// Frames the multishot read brought since the last loop.
    pub burst: u32,
}

/// Reads in the first round, and the fewest in any.
const POLLED_MIN: u32 = 2;
/// Frames through the multishot read in one loop from which rounds take over.
const POLLED_BURST: u32 = 16;

/// Whether `fd` is a socket.
fn is_socket(fd: &OwnedFd) -> bool {
    // SAFETY: `st` is plain data that fstat fills for a descriptor the caller holds open.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd.as_raw_fd(), &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
    }
}

impl Worker {
    /// Chooses how a new port receives; a datagram socket gets its buffer ring here.
    pub(super) fn rx_mode(&mut self, id: PortId, entry: &PortEntry) -> RxMode {
        let datagrams = matches!(
            entry.framing,
            Framing::Datagram | Framing::UdpGso | Framing::L2tpv3(_)
        );
        let f = self.ring.features();
        let tap = datagrams && entry.framing == Framing::Datagram && !is_socket(&entry.fd);
        if tap && self.tap_rx == TapRx::Polled {
            let entries = self.rx_depth.next_power_of_two().min(MAX_ENTRIES as u32) as u16;
            let multishot =
                f.read_multishot && self.ring.open_buf_ring(BufGroup(id.0), entries).is_ok();
            return RxMode::Polled(Polled {
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
        let op = match (datagrams, is_socket(&entry.fd)) {
            (true, true) if f.recv_multishot => Multi::Recv,
            // Not a socket, one frame per read: a tap.
            (true, false) if f.read_multishot && tap && self.tap_rx == TapRx::Multishot => {
                Multi::Read
            }
            _ => return RxMode::Reads,
        };
        let entries = self.rx_depth.next_power_of_two().min(MAX_ENTRIES as u32) as u16;
        match self.ring.open_buf_ring(BufGroup(id.0), entries) {
            Ok(()) => RxMode::Multishot { armed: false, op },
            // Reads serve as well, at a higher cost per frame.
            Err(e) => {
                eprintln!(
                    "ringswitch: port {}: no provided-buffer ring ({e}); it receives with reads",
                    entry.name
                );
                RxMode::Reads
            }
        }
    }

    /// Tops up `port`'s buffer ring and arms its receive if it is not running (and has a
    /// buffer to fill).
    pub(super) fn arm_multishot(&mut self, port: PortId) -> Result<(), WorkerError> {
        let group = BufGroup(port.0);
        if !self.ring.refill_buf_ring(group) {
            self.counters.rx_starved.inc();
        }
        let Some(p) = &mut self.ports[port.index()] else {
            return Ok(());
        };
        let RxMode::Multishot { armed, op } = &mut p.rx else {
            return Ok(());
        };
        if *armed || self.ring.buf_ring_held(group) == 0 {
            return Ok(());
        }
        self.ring
            .push_multi(*op, p.file, group, tag(TAG_RECV_MULTI, port, BufIndex(0)))
            .map_err(WorkerError::Enter)?;
        *armed = true;
        p.reads += 1;
        Ok(())
    }

    /// A completion of `port`'s multishot receive.
    pub(super) fn multishot_completed(&mut self, port: PortId, c: Completion) {
        let group = BufGroup(port.0);
        let buf = self.ring.take_provided(group, &c);
        let live = match &mut self.ports[port.index()] {
            Some(p) => {
                if !c.more() {
                    match &mut p.rx {
                        RxMode::Multishot { armed, .. } => *armed = false,
                        // Rounds take over; a short one brings the multishot read back.
                        RxMode::Polled(st) => {
                            st.armed = false;
                            st.cancelling = false;
                            st.missed = false;
                        }
                        RxMode::Reads => {}
                    }
                    p.reads -= 1;
                } else if let RxMode::Polled(st) = &mut p.rx {
                    st.burst += 1;
                }
                !p.draining && !p.failed
            }
            None => false,
        };
        match buf {
            Some(b) if live && c.result > 0 => {
                self.received(port, b, c.result as usize);
                return;
            }
            Some(b) => self.ring.pool_mut().release(b),
            None => {}
        }
        if !live {
            return;
        }
        match c.result {
            // An empty datagram (it ends the receive; the next loop re-arms it).
            0 => self.received_empty(port),
            r if r == -libc::ENOBUFS => self.counters.rx_ring_empty.inc(),
            // The cancellation that hands a burst to rounds.
            r if r == -libc::ECANCELED => {}
            r if r < 0 => {
                self.receive_failed(port, r);
                let ended = matches!(
                    &self.ports[port.index()],
                    Some(IoPort {
                        failed: true,
                        rx: RxMode::Multishot { armed: false, .. }
                            | RxMode::Polled(Polled {
                                armed: false,
                                multishot: true,
                                ..
                            }),
                        reads: 0,
                        ..
                    })
                );
                if ended {
                    // SAFETY: the port's receive has ended (this completion lacked F_MORE)
                    // and a failed port arms none again; nothing else selects its group.
                    let _ = unsafe { self.ring.close_buf_ring(group) };
                }
            }
            _ => {}
        }
    }
}

impl Worker {
    /// Starts the next round of reads on a polled tap, or its idle phase (the multishot
    /// read, or a poll) after a short round; hands a burst from the idle phase to rounds.
    pub(super) fn arm_polled(&mut self, port: PortId) -> Result<(), WorkerError> {
        let rx_depth = self.rx_depth;
        let group = BufGroup(port.0);
        let Some(IoPort {
            rx: RxMode::Polled(st),
            reads,
            file,
            ..
        }) = &mut self.ports[port.index()]
        else {
            return Ok(());
        };
        let file = *file;
        if st.armed {
            let burst = std::mem::take(&mut st.burst);
            if !st.multishot {
                return Ok(());
            }
            if burst >= POLLED_BURST && !st.cancelling {
                st.cancelling = true;
                st.want = burst.clamp(POLLED_MIN, rx_depth);
                return self
                    .ring
                    .push_cancel(tag(TAG_RECV_MULTI, port, BufIndex(0)), TAG_CANCEL << 56)
                    .map_err(WorkerError::Enter);
            }
            if !self.ring.refill_buf_ring(group) {
                self.counters.rx_starved.inc();
            }
            return Ok(());
        }
        // A round runs within one io_uring_enter; its reads are all back before the next
        // loop.
        if *reads > 0 {
            return Ok(());
        }
        if st.missed {
            st.want = (2 * st.got).clamp(POLLED_MIN, rx_depth);
            st.got = 0;
            st.missed = false;
            st.armed = true;
            st.burst = 0;
            *reads += 1;
            if !st.multishot {
                return self
                    .ring
                    .push_poll_in(file, tag(TAG_POLL, port, BufIndex(0)))
                    .map_err(WorkerError::Enter);
            }
            if !self.ring.refill_buf_ring(group) {
                self.counters.rx_starved.inc();
            }
            return self
                .ring
                .push_multi(
                    Multi::Read,
                    file,
                    group,
                    tag(TAG_RECV_MULTI, port, BufIndex(0)),
                )
                .map_err(WorkerError::Enter);
        }
        if st.got >= st.want {
            st.want = (2 * st.want).min(rx_depth);
        }
        st.got = 0;
        let want = st.want;
        let mut armed = 0;
        for _ in 0..want {
            let Some(buf) = self.ring.pool_mut().alloc() else {
                self.counters.rx_starved.inc();
                break;
            };
            // SAFETY: `buf` was just allocated, so nothing else refers to it; it is touched
            // again only when this read's completion is reaped.
            unsafe {
                self.ring
                    .push_read_nowait(file, buf, tag(TAG_READ, port, buf))
            }
            .map_err(WorkerError::Enter)?;
            armed += 1;
        }
        if let Some(p) = &mut self.ports[port.index()] {
            p.reads += armed;
        }
        Ok(())
    }

    /// A polled tap's read came back: a frame counts towards the round, -EAGAIN ends it.
    /// Returns whether the completion was fully handled here (an empty tap).
    pub(super) fn polled_read(&mut self, port: PortId, result: i32) -> bool {
        let Some(IoPort {
            rx: RxMode::Polled(st),
            ..
        }) = &mut self.ports[port.index()]
        else {
            return false;
        };
        if result == -libc::EAGAIN {
            st.missed = true;
            return true;
        }
        if result == -libc::EOPNOTSUPP {
            // The tap's kernel refuses RWF_NOWAIT reads: wait in the kernel like a poll
            // would, with a multishot read if there is one, else with plain reads.
            st.missed = true;
            if !st.multishot {
                self.ports[port.index()].as_mut().expect("checked above").rx = RxMode::Reads;
            }
            return true;
        }
        if result >= 0 {
            st.got += 1;
        }
        false
    }

    /// The poll of a polled tap ended (readable, or cancelled when the port goes).
    pub(super) fn poll_completed(&mut self, port: PortId, result: i32) {
        let Some(p) = &mut self.ports[port.index()] else {
            return;
        };
        p.reads -= 1;
        if let RxMode::Polled(st) = &mut p.rx {
            st.armed = false;
        }
        let live = !p.draining && !p.failed;
        if live && result < 0 {
            self.receive_failed(port, result);
        }
    }
}
