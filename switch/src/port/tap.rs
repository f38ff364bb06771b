//! `TapPort`: a Linux tap (`IFF_TAP | IFF_NO_PI`) — one whole Ethernet frame per read and per
//! write. Receives as the worker's `--tap-rx` says (polled by default, see `rx.rs`); sends
//! one write per frame from the frame's buffer.

use super::rx::{Got, Receiver};
use super::writes::Writes;
use super::{Caps, Closed, Cx, InFlight, Port, Tag};
use crate::counters::DropReason;
use crate::frame::Frame;
use crate::sys::uring::{Completion, FileRef, Ring};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// A tap port. Also serves any descriptor that carries one frame per read and per write and
/// is not a socket.
pub struct TapPort {
    fd: OwnedFd,
    name: String,
    file: FileRef,
    rx: Option<Receiver>,
    tx: Writes,
}

impl TapPort {
    /// A port over the tap `fd` (the worker keeps it open until the port is gone).
    pub fn new(fd: OwnedFd, name: &str) -> TapPort {
        let file = FileRef::Fd(fd.as_raw_fd());
        TapPort {
            fd,
            name: name.to_string(),
            file,
            rx: None,
            tx: Writes::default(),
        }
    }
}

impl Port for TapPort {
    fn attach(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        self.file = cx.register_file(0, self.fd.as_raw_fd())?;
        self.rx = Some(Receiver::for_tap(cx, self.file, &self.name));
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
        let Some(rx) = &mut self.rx else {
            return Ok(());
        };
        match rx.complete(cx, tag.op, tag.aux, c) {
            Got::Frame(buf, len) => cx.deliver(buf, 0, len),
            Got::Empty => cx.counters.count_rx_drop(0, DropReason::Runt),
            Got::Nothing => {}
            Got::Error(r) => return super::receive_error(cx, r),
        }
        Ok(())
    }

    #[inline]
    fn send(&mut self, cx: &mut Cx<'_>, frames: &[Frame]) -> io::Result<usize> {
        self.tx.send_each(cx, self.file, frames)
    }

    fn cancel(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        match &mut self.rx {
            // Cancels the writes on the same file too.
            Some(rx) => rx.cancel(cx),
            None => Ok(()),
        }
    }

    fn in_flight(&self) -> InFlight {
        InFlight {
            reads: self.rx.as_ref().map_or(0, Receiver::reads),
            writes: self.tx.in_flight,
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
            coalesce: false,
            offloads: false,
        }
    }

    fn rx_buffers(&self, ring: &Ring) -> usize {
        self.rx.as_ref().map_or(0, |rx| rx.buffers(ring))
    }
}
