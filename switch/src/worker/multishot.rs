//! How a datagram socket port receives with one multishot recv instead of a read per buffer.
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

/// How a port receives.
pub(super) enum RxMode {
    /// `rx_depth` reads in flight: taps, streams, and sockets where multishot is unavailable.
    Reads,
    /// One multishot receive over the port's buffer ring; `armed` while it runs.
    Multishot { armed: bool },
}

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
        if !(self.ring.features().recv_multishot && datagrams && is_socket(&entry.fd)) {
            return RxMode::Reads;
        }
        let entries = self.rx_depth.next_power_of_two().min(MAX_ENTRIES as u32) as u16;
        match self.ring.open_buf_ring(BufGroup(id.0), entries) {
            Ok(()) => RxMode::Multishot { armed: false },
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
        let RxMode::Multishot { armed } = &mut p.rx else {
            return Ok(());
        };
        if *armed || self.ring.buf_ring_held(group) == 0 {
            return Ok(());
        }
        self.ring
            .push_recv_multi(p.file, group, tag(TAG_RECV_MULTI, port, BufIndex(0)))
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
                    if let RxMode::Multishot { armed } = &mut p.rx {
                        *armed = false;
                    }
                    p.reads -= 1;
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
            r if r < 0 => {
                self.receive_failed(port, r);
                let ended = matches!(
                    &self.ports[port.index()],
                    Some(IoPort {
                        failed: true,
                        rx: RxMode::Multishot { armed: false },
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
