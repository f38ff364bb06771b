//! `TapPort`: a Linux tap (`IFF_TAP | IFF_NO_PI`) — one whole Ethernet frame per read and per
//! write. Receives as the worker's `--tap-rx` says (polled by default, see `rx.rs`); sends
//! one write per frame from the frame's buffer.
//!
//! A `vnet_hdr` tap (`IFF_VNET_HDR`, a 12-byte `virtio_net_hdr_v1` in front of every frame,
//! offloads on) hands over whole GSO segments of up to 64 KiB with partial checksums: it
//! reads into large buffers, with the header landing in the buffer's headroom right in front
//! of the frame; the header becomes the buffer's offload record (`BufferPool::offload`). On
//! send, the frame's record (or zeros, for a plain frame) is written into the headroom in
//! front of it, and one write carries header and frame, straight from the buffer.

use super::packed::Packed;
use super::rx::{Got, Receiver};
use super::writes::Writes;
use super::{Caps, Closed, Cx, InFlight, Port, Tag};
use crate::counters::DropReason;
use crate::frame::{Frame, Offload};
use crate::ids::BufIndex;
use crate::pool::HEADROOM;
use crate::sys::uring::{Completion, FileRef, Ring, RxBuf};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// A tap port. Also serves any descriptor that carries one frame per read and per write, with
/// or without a virtio-net header: a user port's end of its socket pair is served as a
/// `vnet_hdr` tap.
pub struct TapPort {
    fd: OwnedFd,
    name: String,
    /// The tap was opened with IFF_VNET_HDR (a virtio-net header in front of every frame).
    vnet: bool,
    file: FileRef,
    rx: Option<Receiver>,
    tx: Writes,
    /// Sends batches as one datagram each (`packed.rs`): a user port's end of its pair.
    packed: Option<Packed>,
}

/// Writes `f`'s virtio-net header (from its offload record, or zeros for a plain frame) into
/// the headroom in front of it; returns the frame with its header.
fn with_header(cx: &mut Cx<'_>, f: &Frame) -> Frame {
    let off = f.off as usize;
    debug_assert!(off >= Offload::WIRE_LEN, "no headroom in front of {f:?}");
    let o = if f.has_offload() {
        *cx.ring.pool().offload(f.buf)
    } else {
        Offload::NONE
    };
    let pool = cx.ring.pool_mut();
    let at = off - Offload::WIRE_LEN;
    let h: &mut [u8; Offload::WIRE_LEN] = (&mut pool.buf_mut(f.buf)[at..off])
        .try_into()
        .expect("a header's room");
    // Every port that sends this frame with a header writes the same bytes here (they
    // follow from the frame's record, set before any send), so a flood that shares the
    // buffer is never torn.
    o.emit(h);
    let mut with = *f;
    with.off = at as u16;
    with.len += Offload::WIRE_LEN as u32;
    with
}

impl TapPort {
    /// A port over the tap `fd` (the worker keeps it open until the port is gone); `vnet`
    /// when the tap was opened with IFF_VNET_HDR and a 12-byte header.
    pub fn new(fd: OwnedFd, name: &str, vnet: bool) -> TapPort {
        let file = FileRef::Fd(fd.as_raw_fd());
        TapPort {
            fd,
            name: name.to_string(),
            vnet,
            file,
            rx: None,
            tx: Writes::default(),
            packed: None,
        }
    }

    /// A port on the worker's end of a user port's socket pair: frames come one per datagram
    /// behind a virtio-net header, as from a `vnet_hdr` tap, and leave packed, many to a
    /// datagram (`packed.rs`).
    pub fn packed(fd: OwnedFd, name: &str) -> TapPort {
        let mut p = TapPort::new(fd, name, true);
        p.packed = Some(Packed::new());
        p
    }

    /// A frame read from a vnet_hdr tap: its header (in front of it, in the headroom)
    /// becomes the buffer's offload record.
    fn received_vnet(&mut self, cx: &mut Cx<'_>, buf: BufIndex, len: usize) {
        let hdr = HEADROOM - Offload::WIRE_LEN;
        if len < Offload::WIRE_LEN {
            cx.counters.count_rx_drop(len, DropReason::Runt);
            cx.release(buf);
            return;
        }
        let frame_len = len - Offload::WIRE_LEN;
        let pool = cx.ring.pool_mut();
        let mut h = [0u8; Offload::WIRE_LEN];
        h.copy_from_slice(&pool.buf(buf)[hdr..HEADROOM]);
        let o = Offload::parse(&h);
        if !o.fits(frame_len) {
            cx.counters.count_rx_drop(frame_len, DropReason::BadOffload);
            cx.release(buf);
            return;
        }
        let flags = if o.is_plain() {
            0
        } else {
            pool.set_offload(buf, o);
            Frame::OFFLOAD
        };
        cx.deliver_with(buf, HEADROOM, frame_len, flags);
    }

    /// Sends frames behind their virtio-net headers, each written into the headroom in
    /// front of its frame.
    fn send_vnet(&mut self, cx: &mut Cx<'_>, frames: &[Frame]) -> std::io::Result<usize> {
        for f in frames {
            let with = with_header(cx, f);
            self.tx.send_one(cx, self.file, &with)?;
        }
        Ok(frames.len())
    }
}

impl Port for TapPort {
    fn attach(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        self.file = cx.register_file(0, self.fd.as_raw_fd())?;
        let kind = if self.vnet {
            RxBuf {
                large: true,
                offset: (HEADROOM - Offload::WIRE_LEN) as u16,
            }
        } else {
            cx.env.plain_rx()
        };
        self.rx = Some(Receiver::for_tap(cx, self.file, &self.name, kind));
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
        if Packed::owns(tag) {
            if let Some(p) = &mut self.packed {
                p.completed(cx, c.result);
            }
            return Ok(());
        }
        if Writes::owns(tag) {
            // A vnet_hdr tap's write carried the header too; the frame is the rest.
            let result = if self.vnet && c.result >= Offload::WIRE_LEN as i32 {
                c.result - Offload::WIRE_LEN as i32
            } else {
                c.result
            };
            self.tx.completed(cx, tag, result);
            return Ok(());
        }
        let Some(rx) = &mut self.rx else {
            return Ok(());
        };
        match rx.complete(cx, tag.op, tag.aux, c) {
            Got::Frame(buf, len) if self.vnet => self.received_vnet(cx, buf, len),
            Got::Frame(buf, len) => {
                cx.deliver(buf, HEADROOM, len);
            }
            Got::Empty => cx.counters.count_rx_drop(0, DropReason::Runt),
            Got::Nothing => {}
            Got::Error(r) => return super::receive_error(cx, r),
        }
        Ok(())
    }

    #[inline]
    fn send(&mut self, cx: &mut Cx<'_>, frames: &[Frame]) -> io::Result<usize> {
        if let Some(p) = &mut self.packed {
            p.send(cx, self.file, frames, with_header)
        } else if self.vnet {
            self.send_vnet(cx, frames)
        } else {
            self.tx.send_each(cx, self.file, frames)
        }
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
            writes: self.tx.in_flight + u32::from(self.packed.as_ref().is_some_and(Packed::busy)),
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
            offloads: self.vnet,
            sends_now: false,
        }
    }

    fn rx_buffers(&self, ring: &Ring) -> usize {
        self.rx.as_ref().map_or(0, |rx| rx.buffers(ring))
    }
}
