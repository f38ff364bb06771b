//! The port interface: what every kind of port does for the worker that serves it, and the
//! list of kinds.
//!
//! A port is one value (`AnyPort`) holding its descriptors, its receive and transmit state and
//! its codec. The worker calls a handful of methods — attach once, arm receives each loop,
//! route each completion tagged with the port's slot back to it, hand it batches of frames to
//! send, cancel and detach when it goes — and never looks at what kind it is. A kind is a
//! module here (its io recipe and its codec) plus one line in `port_kinds!` below; a backend
//! opens the kernel object and builds the value.
//!
//! Everything a port needs from its worker comes through `Cx`: the ring (submissions, the
//! buffer pool, provided-buffer rings, registered files), the receive batch to append frames
//! to, the port's counters and the worker's settings. Completions carry a tag (see `Tag`) whose
//! op code is the port's own business. Ports never allocate per frame and never block.

pub mod datagram;
pub mod l2tpv3;
pub mod packed;
mod rx;
pub mod stream;
pub mod tap;
pub mod vhost_user;
pub mod vring;
mod writes;

use crate::counters::{DropReason, PortCounters, WorkerCounters};
use crate::frame::Frame;
use crate::ids::{BufGroup, BufIndex, PortId, Slot};
use crate::sys::uring::{Completion, FileRef, Ring};
use std::io;
use std::os::fd::RawFd;

pub use rx::RxMode;

/// How taps receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapRx {
    /// Rounds of non-blocking reads under load, one multishot read (or a poll) while the
    /// tap is idle: frames in order, the peak rate of reads and the low cost per frame of a
    /// multishot read at moderate rates.
    Polled,
    /// One multishot read over a provided-buffer ring (kernel 6.7+): frames in order, but
    /// each costs the kernel a task-work round trip.
    Multishot,
    /// `rx_depth` blocking reads in flight: at low rates the kernel wakes all of them for
    /// each frame and hands one that lost too often to a worker thread, which reorders.
    Reads,
}

/// The worker's settings that shape its ports.
#[derive(Debug, Clone)]
pub struct PortEnv {
    /// Reads in flight (or in a round) per port; on a multishot receive, the buffers in its
    /// provided-buffer ring.
    pub rx_depth: u32,
    /// Frames a port's transmit queue holds (and the most a port takes at once).
    pub tx_depth: usize,
    /// Largest frame accepted, in bytes.
    pub max_frame: usize,
    pub tap_rx: TapRx,
    /// Datagram sockets receive with one multishot recv where the kernel has it.
    pub rx_multishot: bool,
    /// Frames may be longer than a small buffer holds (`max_frame` beyond it): ports
    /// receive into large buffers.
    pub rx_large: bool,
    /// The worker busy-polls (`--poll busy`): it looks at shared rings every pass, so ports
    /// whose peers can be told not to notify (vhost-user guests) tell them so.
    pub busy_poll: bool,
}

impl PortEnv {
    /// The buffers a port that carries plain frames receives into.
    pub fn plain_rx(&self) -> crate::sys::uring::RxBuf {
        crate::sys::uring::RxBuf {
            large: self.rx_large,
            offset: crate::pool::HEADROOM as u16,
        }
    }
}

/// What a port can do, for listings and for the worker's choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Caps {
    /// How it receives.
    pub rx: RxMode,
    /// Its completions are worth gathering: its sends carry several frames per system call
    /// (UDP GSO, a stream's batched sendmsg) or each of its writes is costly (an
    /// encapsulation), or one multishot receive brings many frames per wake-up. Frames from
    /// such ports let the worker's wait coalesce (`--rx-coalesce-us`); taps never do.
    pub coalesce: bool,
    /// It takes every kind of frame with virtio-net offload metadata as it is (GSO
    /// segments, partial checksums: a `vnet_hdr` tap). A port whose offloads are negotiated
    /// at run time (a vhost-user guest) says false here and tells the worker through
    /// `Cx::offloads`.
    pub offloads: bool,
    /// It sends at once, from the worker's pass, what its peer has room for, and waits for
    /// room with one poll (a unix datagram socket): a worker held back by it wakes for that
    /// poll at once rather than gathering completions.
    pub sends_now: bool,
}

/// A port's receive or transmit failed for good: the worker stops serving it, takes its link
/// down and tells the control plane why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed(pub String);

/// Operations a port has in the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InFlight {
    pub reads: u32,
    pub writes: u32,
}

impl InFlight {
    pub fn is_idle(&self) -> bool {
        self.reads == 0 && self.writes == 0
    }
}

/// A completion's tag: 8 bits of op code, the slot of the port it belongs to, 32 bits of the
/// port's own (a buffer, a slot of its send state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub op: u8,
    pub slot: Slot,
    pub aux: u32,
}

impl Tag {
    /// Op codes at and above this belong to the worker itself.
    pub const WORKER_OPS: u8 = 0xf0;

    #[inline]
    pub fn encode(self) -> u64 {
        (self.op as u64) << 56 | (self.slot.0 as u64) << 32 | self.aux as u64
    }

    #[inline]
    pub fn decode(ud: u64) -> Tag {
        Tag {
            op: (ud >> 56) as u8,
            slot: Slot((ud >> 32) as u16),
            aux: ud as u32,
        }
    }
}

/// Op code of the completions of cancellations (nobody waits for them).
pub const OP_CANCEL: u8 = 0xfe;

/// What a port may use of its worker while it handles an event.
pub struct Cx<'a> {
    pub ring: &'a mut Ring,
    /// Where the worker keeps the port (its completion tags, files and buffer group).
    pub slot: Slot,
    /// The port's switch-wide id (what its frames say they came in by).
    pub id: PortId,
    /// The receive batch: frames received go here.
    pub rx: &'a mut Vec<Frame>,
    pub counters: &'a PortCounters,
    pub worker: &'a WorkerCounters,
    pub env: &'a PortEnv,
    /// The port still takes part in forwarding (it is neither draining nor failed); a port
    /// that is not live only accounts for what completes and releases its buffers.
    pub live: bool,
    /// Set by a port whose offloads changed (a vhost-user guest negotiated its features):
    /// the worker tells the engine after the call.
    pub offloads: Option<crate::frame::OffloadSet>,
}

impl Cx<'_> {
    /// The tag of an operation of this port.
    #[inline]
    pub fn tag(&self, op: u8, aux: u32) -> u64 {
        Tag {
            op,
            slot: self.slot,
            aux,
        }
        .encode()
    }

    /// The tag of a cancellation's own completion.
    #[inline]
    pub fn cancel_tag(&self) -> u64 {
        self.tag(OP_CANCEL, 0)
    }

    /// The provided-buffer group of this port.
    #[inline]
    pub fn group(&self) -> BufGroup {
        BufGroup(self.slot.0)
    }

    /// Registers `fd` as this port's file number `which` (0 or 1); later operations find it
    /// there (or by its plain descriptor where files are not registered).
    pub fn register_file(&mut self, which: u32, fd: RawFd) -> io::Result<FileRef> {
        self.ring.register_file(2 * self.slot.0 as u32 + which, fd)
    }

    /// Clears this port's registered files.
    pub fn unregister_files(&mut self) {
        let _ = self.ring.register_file(2 * self.slot.0 as u32, -1);
        let _ = self.ring.register_file(2 * self.slot.0 as u32 + 1, -1);
    }

    /// A frame of `len` bytes arrived at `off` in `buf`: appends it to the batch; says
    /// whether it did. A frame that reaches the end of the buffer may have been cut short (a
    /// multishot receive reports the whole datagram's length, more than the buffer): it is
    /// dropped as oversize.
    #[inline]
    pub fn deliver(&mut self, buf: BufIndex, off: usize, len: usize) -> bool {
        self.deliver_with(buf, off, len, 0)
    }

    /// `deliver` with the frame's flags (`Frame::OFFLOAD`).
    #[inline]
    pub fn deliver_with(&mut self, buf: BufIndex, off: usize, len: usize, flags: u8) -> bool {
        if off + len >= self.ring.pool().size_of(buf) {
            self.counters.count_rx_drop(len, DropReason::Oversize);
            self.ring.pool_mut().release(buf);
            return false;
        }
        let home = self.ring.pool().home();
        let mut f = Frame::new(home, self.id, buf, off as u16, len as u32);
        f.flags = flags;
        self.rx.push(f);
        true
    }

    /// Releases one reference to `buf`.
    #[inline]
    pub fn release(&mut self, buf: BufIndex) {
        self.ring.pool_mut().release(buf);
    }
}

/// What every kind of port does. Errors of type `io::Error` are the ring's (a submission that
/// could not be queued) and stop the worker; a port that fails on its own says `Closed`.
pub trait Port {
    /// Takes its place in the worker: registers its files, opens its buffer ring, allocates
    /// its transmit state. Called once, on the worker's thread, before anything else.
    fn attach(&mut self, cx: &mut Cx<'_>) -> io::Result<()>;
    /// Keeps its receives armed (called once per loop while the port is live).
    fn arm(&mut self, cx: &mut Cx<'_>) -> io::Result<()>;
    /// One of its completions (`tag.slot` is this port's).
    fn complete(&mut self, cx: &mut Cx<'_>, tag: Tag, c: Completion) -> Result<(), Closed>;
    /// Hands what it can of `frames` (the head of its transmit queue) to the kernel; returns
    /// how many it took, whose buffer references pass to it.
    fn send(&mut self, cx: &mut Cx<'_>, frames: &[Frame]) -> io::Result<usize>;
    /// Cancels everything it has in the kernel (the port is going away).
    fn cancel(&mut self, cx: &mut Cx<'_>) -> io::Result<()>;
    /// What it still has in the kernel.
    fn in_flight(&self) -> InFlight;
    /// Gives back what it holds of the ring (buffer ring, registered files), once nothing is
    /// in flight; the worker drops the port afterwards.
    fn detach(&mut self, cx: &mut Cx<'_>);
    /// What it can do.
    fn caps(&self) -> Caps;
    /// Buffers it holds for receiving (reads in flight, its buffer ring), for leak checks.
    fn rx_buffers(&self, ring: &Ring) -> usize;
}

/// Declares the kinds of port: `AnyPort`, one variant per kind, dispatching to each kind's
/// `Port` implementation. Adding a kind is one line here.
macro_rules! port_kinds {
    ($($kind:ident($ty:ty),)+) => {
        /// A port of any kind.
        pub enum AnyPort {
            $($kind($ty),)+
        }

        $(impl From<$ty> for AnyPort {
            fn from(p: $ty) -> AnyPort {
                AnyPort::$kind(p)
            }
        })+

        impl AnyPort {
            /// The kind's name, for messages.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(AnyPort::$kind(_) => stringify!($kind),)+
                }
            }
        }

        impl Port for AnyPort {
            fn attach(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
                match self { $(AnyPort::$kind(p) => p.attach(cx),)+ }
            }
            #[inline]
            fn arm(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
                match self { $(AnyPort::$kind(p) => p.arm(cx),)+ }
            }
            #[inline]
            fn complete(&mut self, cx: &mut Cx<'_>, tag: Tag, c: Completion) -> Result<(), Closed> {
                match self { $(AnyPort::$kind(p) => p.complete(cx, tag, c),)+ }
            }
            #[inline]
            fn send(&mut self, cx: &mut Cx<'_>, frames: &[Frame]) -> io::Result<usize> {
                match self { $(AnyPort::$kind(p) => p.send(cx, frames),)+ }
            }
            fn cancel(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
                match self { $(AnyPort::$kind(p) => p.cancel(cx),)+ }
            }
            #[inline]
            fn in_flight(&self) -> InFlight {
                match self { $(AnyPort::$kind(p) => p.in_flight(),)+ }
            }
            fn detach(&mut self, cx: &mut Cx<'_>) {
                match self { $(AnyPort::$kind(p) => p.detach(cx),)+ }
            }
            #[inline]
            fn caps(&self) -> Caps {
                match self { $(AnyPort::$kind(p) => p.caps(),)+ }
            }
            fn rx_buffers(&self, ring: &Ring) -> usize {
                match self { $(AnyPort::$kind(p) => p.rx_buffers(ring),)+ }
            }
        }
    };
}

port_kinds! {
    Tap(tap::TapPort),
    Datagram(datagram::DatagramPort),
    Stream(stream::StreamPort),
    L2tpv3(l2tpv3::L2tpv3Port),
    VhostUser(vhost_user::VhostUserPort),
}

/// Why a receive failed, if it is worth closing the port for: a transient error is ignored,
/// any other is counted as `rx_error` and closes the port.
pub(crate) fn receive_error(cx: &mut Cx<'_>, result: i32) -> Result<(), Closed> {
    let transient = matches!(
        -result,
        libc::ECANCELED
            | libc::EINTR
            | libc::EAGAIN
            | libc::ENOBUFS
            // A connected datagram socket reports the ICMP answer to an earlier send (peer
            // away, unreachable) on its next receive: the peer may come back, so the port
            // carries on.
            | libc::ECONNREFUSED
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::EHOSTDOWN
            | libc::ENOPROTOOPT
    );
    if transient || !cx.live {
        return Ok(());
    }
    cx.counters.count_drop(DropReason::RxError);
    Err(Closed(format!(
        "receive failed: {}",
        io::Error::from_raw_os_error(-result)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        let t = Tag {
            op: 7,
            slot: Slot(1023),
            aux: 0xdead_beef,
        };
        assert_eq!(Tag::decode(t.encode()), t);
    }
}
