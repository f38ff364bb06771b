//! Start-up probes of a `Ring`: whether multishot receives over a provided-buffer ring work on
//! this kernel, tried on a socket pair and a pipe, each leaving the ring as it found it.

use super::uring::{Completion, FileRef, Multi, Ring, RxBuf};
use crate::ids::BufGroup;
use io_uring::{opcode, types};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The group the start-up probe borrows (ports use groups below `max_ports`, at most 1024).
const PROBE_GROUP: BufGroup = BufGroup(u16::MAX);
const PROBE_RECV: u64 = u64::MAX;
const PROBE_CANCEL: u64 = u64::MAX - 1;

impl Ring {
    /// Tries a multishot receive over a one-buffer ring on a datagram socket pair: it works
    /// if a datagram completes with its buffer named and the receive still armed. Leaves the
    /// completion queue as it found it (empty).
    pub(super) fn probe_multishot(&mut self, op: Multi) -> bool {
        if self.open_buf_ring(PROBE_GROUP, 1, RxBuf::SMALL).is_err() {
            return false;
        }
        let pair = match op {
            Multi::Recv => dgram_pair(),
            Multi::Read => pipe_pair(),
        };
        let (worked, ended) = match pair {
            Ok((rx, tx)) => self.probe_on(op, &rx, &tx),
            Err(_) => (false, true),
        };
        if ended {
            // SAFETY: the probe's receive has ended (its last completion was reaped) or was
            // never queued, and no other operation uses the probe's group.
            let _ = unsafe { self.close_buf_ring(PROBE_GROUP) };
        }
        // Otherwise the group stays registered with its buffer: the kernel may still use it.
        worked && ended
    }

    /// The probe proper: (whether the receive worked, whether it is over and every
    /// completion it caused, the cancellation's included, has been reaped).
    fn probe_on(&mut self, op: Multi, rx: &OwnedFd, tx: &OwnedFd) -> (bool, bool) {
        let queued = self.refill_buf_ring(PROBE_GROUP)
            && self
                .push_multi(op, FileRef::Fd(rx.as_raw_fd()), PROBE_GROUP, PROBE_RECV)
                .is_ok();
        if !queued {
            return (false, true);
        }
        // SAFETY: writes 8 bytes from a live array to a socket or pipe the caller owns.
        unsafe { libc::write(tx.as_raw_fd(), [7u8; 8].as_ptr().cast(), 8) };
        let (mut worked, mut ended) = (false, false);
        let (mut cancelled, mut cancel_seen) = (false, false);
        // Bounded: each wait ends within 100 ms; after the first the receive is cancelled.
        for _ in 0..16 {
            let ts = types::Timespec::new().nsec(100_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
                Err(_) => break,
            }
            let mut cqes = [(0u64, 0i32, 0u32); 8];
            let mut n = 0;
            for c in self.ring.completion().take(cqes.len()) {
                cqes[n] = (c.user_data(), c.result(), c.flags());
                n += 1;
            }
            for &(user_data, result, flags) in &cqes[..n] {
                if user_data == PROBE_CANCEL {
                    cancel_seen = true;
                    continue;
                }
                let c = Completion {
                    user_data,
                    result,
                    flags,
                };
                let buf = self.take_provided(PROBE_GROUP, &c);
                worked |= result == 8 && buf.is_some() && c.more();
                if let Some(b) = buf {
                    self.pool.release(b);
                }
                ended |= !c.more();
            }
            if ended && (cancel_seen || !cancelled) {
                return (worked, true);
            }
            if !cancelled {
                cancelled = self.push_cancel_probe().is_ok();
            }
        }
        (worked, false)
    }

    fn push_cancel_probe(&mut self) -> io::Result<()> {
        let e = opcode::AsyncCancel::new(PROBE_RECV).build();
        self.push(&e.user_data(PROBE_CANCEL))
    }
}

/// A pipe: (read end, write end).
fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which is large enough; on success they
    // are fresh and owned by nothing else.
    unsafe {
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// A connected pair of unix datagram sockets.
fn dgram_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into the array it is given.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
