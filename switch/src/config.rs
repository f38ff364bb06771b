//! What the control plane tells a worker: an immutable `Snapshot` of the port configuration,
//! published RCU-style (readers never block; an old snapshot is freed when its last reader
//! drops it), plus a queue of one-off requests (MAC table dumps, frames to inject).
//!
//! The worker loads the snapshot once per batch (one atomic load when nothing changed) and
//! reconciles its ports with it; it publishes the generation it has fully applied — including
//! the end of all I/O on removed ports — so the control plane knows when a removed port's
//! descriptor is no longer used (the grace period).

use crate::counters::PortCounters;
use crate::ids::{DomainId, PortId, WorkerId};
use crate::mactable::MacEntry;
use crate::port::{AnyPort, Caps};
use crate::rxfilter::RxFilter;
use crate::sys::fd::{eventfd, kick};
use arc_swap::ArcSwap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A port on its way to the worker that will serve it: the port value a backend opened, taken
/// by that worker once, when it first sees the entry. Its identity (`Arc::ptr_eq`) is the
/// port's: an entry republished with the same cell (a new link state or domain) is the same
/// port; a new cell under the same id (a new connection) is a new port.
pub struct PortCell {
    port: Mutex<Option<AnyPort>>,
    caps: OnceLock<Caps>,
    /// What the port takes of offloaded frames (`OffloadSet`), as its worker last said: other
    /// workers read it when they forward to the port.
    offloads: std::sync::atomic::AtomicU8,
}

impl PortCell {
    pub fn new(port: impl Into<AnyPort>) -> Arc<PortCell> {
        Arc::new(PortCell {
            port: Mutex::new(Some(port.into())),
            caps: OnceLock::new(),
            offloads: std::sync::atomic::AtomicU8::new(0),
        })
    }

    /// What the port takes of offloaded frames now.
    #[inline]
    pub fn offloads(&self) -> crate::frame::OffloadSet {
        crate::frame::OffloadSet(self.offloads.load(Ordering::Relaxed))
    }

    pub(crate) fn set_offloads(&self, o: crate::frame::OffloadSet) {
        self.offloads.store(o.0, Ordering::Relaxed);
    }

    /// Gives the port back (its worker let it go to move it to another worker).
    pub(crate) fn put_back(&self, port: AnyPort) {
        if let Ok(mut p) = self.port.lock() {
            *p = Some(port);
        }
    }

    /// A cell without a port: how a port of another worker is named where it is only
    /// forwarded to (benchmarks of the cross-worker path build engines by hand with it).
    pub fn empty() -> Arc<PortCell> {
        Arc::new(PortCell {
            port: Mutex::new(None),
            caps: OnceLock::new(),
            offloads: std::sync::atomic::AtomicU8::new(0),
        })
    }

    /// The port, the first time it is asked for.
    pub(crate) fn take(&self) -> Option<AnyPort> {
        self.port.lock().ok()?.take()
    }

    /// What the port can do, once its worker attached it.
    pub fn caps(&self) -> Option<Caps> {
        self.caps.get().copied()
    }

    pub(crate) fn set_caps(&self, caps: Caps) {
        let _ = self.caps.set(caps);
    }
}

impl std::fmt::Debug for PortCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortCell")
            .field("caps", &self.caps())
            .finish()
    }
}

/// One port as configured.
#[derive(Debug)]
pub struct PortEntry {
    /// The port's switch-wide identity.
    pub id: PortId,
    /// The netdev id, for messages.
    pub name: Arc<str>,
    /// The port itself (see `PortCell`).
    pub port: Arc<PortCell>,
    /// The worker that serves it.
    pub worker: WorkerId,
    pub domain: DomainId,
    pub link_up: bool,
    /// What the station behind the port accepts (`set-rx-filter`); `None` accepts every
    /// frame. Every worker forwarding to the port enforces it, its owner and the others; a
    /// new filter is a new `Arc` (workers compare by pointer).
    pub rx_filter: Option<Arc<RxFilter>>,
    pub counters: Arc<PortCounters>,
    /// The control plane's own descriptor of this connection, so it can tell which connection
    /// a `WorkerEvent::PortClosed` is about.
    pub conn_fd: i32,
    /// The further queues of a multiqueue port (a tap with `queues=N`), each served by its
    /// own worker; queue 0 is `port`, `worker` and `counters` above. Empty for other ports.
    pub queues: Vec<QueueEntry>,
}

/// One further queue of a multiqueue port: its own descriptor (in its cell), the worker
/// that serves it, and its own counters (each counter keeps one writer; listings add the
/// queues up).
#[derive(Debug, Clone)]
pub struct QueueEntry {
    pub worker: WorkerId,
    pub port: Arc<PortCell>,
    pub counters: Arc<PortCounters>,
}

impl PortEntry {
    /// Every queue as (worker, cell, counters), queue 0 first.
    pub fn all_queues(
        &self,
    ) -> impl Iterator<Item = (WorkerId, &Arc<PortCell>, &Arc<PortCounters>)> + '_ {
        std::iter::once((self.worker, &self.port, &self.counters))
            .chain(self.queues.iter().map(|q| (q.worker, &q.port, &q.counters)))
    }

    /// Whether worker `w` serves a queue of this port.
    pub fn has_queue_on(&self, w: WorkerId) -> bool {
        self.all_queues().any(|(qw, _, _)| qw == w)
    }

    /// The worker that serves the queue in `cell`, if `cell` is one of this port's.
    pub fn worker_of(&self, cell: &Arc<PortCell>) -> Option<WorkerId> {
        self.all_queues()
            .find(|(_, c, _)| Arc::ptr_eq(c, cell))
            .map(|(w, _, _)| w)
    }
}

/// The whole configuration, indexed by `PortId`; each worker serves the entries that name it.
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
    /// Buffers in the pool, small and large.
    pub total: usize,
    /// Buffers on the free stacks, small and large.
    pub free: usize,
    /// Of those, the large ones: in the pool, and on their free stack.
    pub large_total: usize,
    pub large_free: usize,
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
