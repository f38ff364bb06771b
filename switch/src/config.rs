//! What the control plane tells a worker: an immutable `Snapshot` of the port configuration,
//! published RCU-style (readers never block; an old snapshot is freed when its last reader
//! drops it), plus a queue of one-off requests (MAC table dumps, frames to inject).
//!
//! The worker loads the snapshot once per batch (one atomic load when nothing changed) and
//! reconciles its ports with it; it publishes the generation it has fully applied — including
//! the end of all I/O on removed ports — so the control plane knows when a removed port's
//! descriptor is no longer used (the grace period).

use crate::counters::PortCounters;
use crate::ids::{DomainId, PortId};
use crate::l2tpv3::L2tpv3Codec;
use crate::mactable::MacEntry;
use arc_swap::ArcSwap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a port's descriptors carry frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// One frame per read and per write: a tap, a connected datagram socket.
    Datagram,
    /// A connected UDP socket whose kernel takes UDP_SEGMENT: runs of equal-size frames go
    /// out as one GSO send each (the receiver still gets one datagram per frame).
    UdpGso,
    /// A byte stream, each frame behind its length as a 4-byte big-endian number (QEMU's
    /// socket and stream netdevs).
    Stream,
    /// One frame per datagram behind an L2TPv3 header.
    L2tpv3(Arc<L2tpv3Codec>),
}

/// One port as configured. A change of link or domain is a new `PortEntry` with the same `fd`;
/// a new `fd` at the same index is a different port.
#[derive(Debug)]
pub struct PortEntry {
    /// The netdev id, for messages.
    pub name: Arc<str>,
    /// The descriptor frames are received from (and sent to, unless `tx_fd` is set).
    pub fd: Arc<OwnedFd>,
    /// A separate descriptor to send on (a multicast port sends from its own socket so that
    /// its own frames, looped back, can be told apart).
    pub tx_fd: Option<Arc<OwnedFd>>,
    pub framing: Framing,
    pub domain: DomainId,
    pub link_up: bool,
    pub counters: Arc<PortCounters>,
    /// The control plane's own descriptor of this connection (`fd` is a duplicate), so it can
    /// tell whether an entry still describes the same connection.
    pub conn_fd: i32,
}

/// The whole configuration a worker serves, indexed by `PortId`.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub generation: u64,
    pub ports: Vec<Option<Arc<PortEntry>>>,
}

impl Snapshot {
    pub fn port(&self, id: PortId) -> Option<&Arc<PortEntry>> {
        self.ports.get(id.index())?.as_ref()
    }
}

/// One-off requests to a worker, answered through the channel they carry.
pub enum Request {
    /// The live MAC table entries.
    DumpMacs(Sender<Vec<MacEntry>>),
    /// Forget learned addresses (all, or those behind one port); answers how many.
    FlushMacs(Option<PortId>, Sender<usize>),
    /// The buffer pool's occupancy, for leak checks.
    Buffers(Sender<BufferStats>),
    /// Send `frame` out of every port of `ingress`'s domain but `ingress` (as if received
    /// there, without learning its source). Used for announce-self.
    Flood { ingress: PortId, frame: Vec<u8> },
}

/// Where a worker's frame buffers are, at a moment between two batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BufferStats {
    /// Buffers in the pool.
    pub total: usize,
    /// Buffers on the free stack.
    pub free: usize,
    /// Reads in flight (each holds one buffer).
    pub reads_in_flight: usize,
    /// Writes in flight (several may share one flooded buffer).
    pub writes_in_flight: usize,
    /// Frames waiting in transmit queues.
    pub queued: usize,
}

/// What a worker tells the control plane on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerEvent {
    /// The port's connection ended (the peer closed it, an error, or a stream out of step);
    /// the worker no longer reads from it. `fd` identifies which connection (the raw number of
    /// the port's descriptor at the time).
    PortClosed {
        port: PortId,
        fd: i32,
        reason: String,
    },
}

/// The control plane's side of its link to one worker.
pub struct ControlLink {
    snapshot: Arc<ArcSwap<Snapshot>>,
    applied: Arc<AtomicU64>,
    requests: Sender<Request>,
    wake: Arc<OwnedFd>,
    events: Receiver<WorkerEvent>,
}

/// The worker's side.
pub struct WorkerLink {
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) applied: Arc<AtomicU64>,
    pub(crate) requests: Receiver<Request>,
    pub(crate) wake: Arc<OwnedFd>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) events: Sender<WorkerEvent>,
}

/// Why waiting for a worker failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the worker did not apply configuration {0} within {1:?}")]
    Timeout(u64, Duration),
    #[error("the worker has stopped")]
    Gone,
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates both ends of a control link, starting from `initial`, plus a stop flag.
pub fn link(initial: Snapshot) -> io::Result<(ControlLink, WorkerLink)> {
    let snapshot = Arc::new(ArcSwap::from_pointee(initial));
    let applied = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let wake = Arc::new(eventfd()?);
    let (ev_tx, ev_rx) = std::sync::mpsc::channel();
    Ok((
        ControlLink {
            snapshot: snapshot.clone(),
            applied: applied.clone(),
            requests: tx,
            wake: wake.clone(),
            events: ev_rx,
        },
        WorkerLink {
            snapshot,
            applied,
            requests: rx,
            wake,
            stop: Arc::new(AtomicBool::new(false)),
            events: ev_tx,
        },
    ))
}

pub(crate) fn kick(fd: &OwnedFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd this process owns.
    unsafe {
        libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8);
    }
}

impl ControlLink {
    /// The snapshot in force.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Publishes `ports` as the next generation and wakes the worker; returns the generation.
    pub fn publish(&self, ports: Vec<Option<Arc<PortEntry>>>) -> u64 {
        let generation = self.snapshot.load().generation + 1;
        self.snapshot
            .store(Arc::new(Snapshot { generation, ports }));
        kick(&self.wake);
        generation
    }

    /// The newest generation the worker has fully applied.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Waits until the worker has applied `generation` (bounded by `timeout`).
    pub fn wait_applied(&self, generation: u64, timeout: Duration) -> Result<(), LinkError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(20);
        loop {
            if self.applied.load(Ordering::Acquire) >= generation {
                return Ok(());
            }
            if Arc::strong_count(&self.applied) == 1 {
                return Err(LinkError::Gone);
            }
            if Instant::now() >= deadline {
                return Err(LinkError::Timeout(generation, timeout));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }

    /// Events the worker raised since the last call.
    pub fn take_events(&self) -> Vec<WorkerEvent> {
        self.events.try_iter().collect()
    }

    /// Queues a request and wakes the worker; false if the worker is gone.
    pub fn request(&self, r: Request) -> bool {
        let ok = self.requests.send(r).is_ok();
        kick(&self.wake);
        ok
    }
}
