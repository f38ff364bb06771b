//! `Fabric`: what the workers of one switch share — the rings that carry frames from the
//! worker that received them to the worker that owns their egress port, the buffer pools'
//! return rings (`PoolRegistry`), and each worker's door: whether it sleeps, and the eventfd
//! that wakes it.
//!
//! A frame for a port of another worker is forwarded where it arrived (learning, lookup,
//! flooding, offload decisions all happen there); then its descriptor (`CrossFrame`: the
//! egress port, the frame with its home pool and buffer index, its offload record) goes into
//! the ring from this worker to the owner (`ring(from, to)`, one per ordered pair, so each has
//! one producer and one consumer: `Spsc`, no compare-and-swap). The owner copies the bytes into
//! a buffer of its own pool (its io_uring registered its own buffers; ports send from them),
//! gives the reference back through the return ring to the buffer's home at once, and queues
//! the copy on the port like any local frame. One copy per frame that crosses, none for frames
//! that stay; a full ring drops and counts (`WorkerCounters::cross_drops`), it never waits.
//!
//! Waking: a worker that is about to sleep in `io_uring_enter` says so (`prepare_sleep`) and
//! then looks at its incoming rings once more; a worker that pushed frames fences and looks at
//! the door (`nudge`), kicking the eventfd only if the owner sleeps. With a sequentially
//! consistent fence on both sides, either the sleeper sees the frames or the pusher sees the
//! sleeper: no frame waits for an unrelated wake-up, and busy or polling owners cost no system
//! call.

use crate::counters::DropReason;
use crate::frame::{Frame, Offload};
use crate::ids::{PortId, WorkerId};
use crate::pool::BufferPool;
use crate::pool::PoolRegistry;
use crate::sync::spsc::Spsc;
use crate::sync::{fence, AtomicBool, Ordering};
use std::os::fd::OwnedFd;
use std::sync::{Arc, OnceLock};

/// Frames in transit from one worker to another (per ordered pair).
pub const CROSS_RING: usize = 1024;

/// A frame on its way to the worker that owns its egress port.
#[derive(Debug, Clone, Copy)]
pub struct CrossFrame {
    pub port: PortId,
    pub frame: Frame,
    /// The frame's offload record (meaningful when `frame` has `Frame::OFFLOAD`).
    pub offload: Offload,
}

struct Door {
    sleeping: AtomicBool,
    /// The worker stopped and handed over every frame it will ever hand over.
    done: AtomicBool,
    wake: OnceLock<Arc<OwnedFd>>,
}

/// The rings and doors of `workers` workers.
pub struct Fabric {
    workers: usize,
    /// The MAC table every worker learns into and looks up in (made by the first worker
    /// built, with its sizing), so a station is known, and follows its moves, everywhere.
    table: OnceLock<Arc<crate::mactable::MacTable>>,
    /// The workers' common clock origin (the table's stamps must agree across workers).
    epoch: std::time::Instant,
    rings: Box<[Spsc<CrossFrame>]>,
    doors: Box<[Door]>,
    registry: Arc<PoolRegistry>,
}

impl Fabric {
    /// A fabric for `workers` workers, `ring` frames in transit per ordered pair.
    pub fn new(workers: usize, ring: usize) -> Arc<Fabric> {
        let workers = workers.max(1);
        Arc::new(Fabric {
            workers,
            table: OnceLock::new(),
            epoch: std::time::Instant::now(),
            rings: (0..workers * workers).map(|_| Spsc::new(ring)).collect(),
            doors: (0..workers)
                .map(|_| Door {
                    sleeping: AtomicBool::new(false),
                    done: AtomicBool::new(false),
                    wake: OnceLock::new(),
                })
                .collect(),
            // Each crossing frame's reference comes home at once: twice the ring suffices.
            registry: PoolRegistry::new(workers, 2 * ring),
        })
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn registry(&self) -> &Arc<PoolRegistry> {
        &self.registry
    }

    /// The shared MAC table, made with `capacity` entries and `ageing` seconds by the first
    /// caller.
    pub fn table(&self, capacity: usize, ageing: u32) -> Arc<crate::mactable::MacTable> {
        self.table
            .get_or_init(|| Arc::new(crate::mactable::MacTable::new(capacity, ageing)))
            .clone()
    }

    /// When the workers' clock started.
    pub fn epoch(&self) -> std::time::Instant {
        self.epoch
    }

    /// The ring from `from` to `to`: `from` alone pushes, `to` alone pops.
    #[inline]
    #[doc(hidden)]
    pub fn ring(&self, from: WorkerId, to: WorkerId) -> &Spsc<CrossFrame> {
        &self.rings[from.index() * self.workers + to.index()]
    }

    /// Registers the eventfd that wakes worker `w` (once).
    pub(crate) fn set_wake(&self, w: WorkerId, fd: Arc<OwnedFd>) {
        if let Some(d) = self.doors.get(w.index()) {
            let _ = d.wake.set(fd);
        }
    }

    /// Whether any worker has frames waiting for `w`.
    #[inline]
    pub fn has_incoming(&self, w: WorkerId) -> bool {
        (0..self.workers)
            .any(|from| from != w.index() && !self.ring(WorkerId(from as u8), w).is_empty())
    }

    /// Worker `w` is about to sleep: marks its door, then looks for frames once more; false
    /// (and the door unmarked) if there are some — it must not sleep.
    #[inline]
    pub fn prepare_sleep(&self, w: WorkerId) -> bool {
        let d = &self.doors[w.index()];
        d.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.has_incoming(w) {
            d.sleeping.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Whether a ring from `w` to a running worker is half full or more (that worker is
    /// behind: `w` should read nothing new until it catches up). A stopped worker's ring never
    /// holds `w` back.
    #[inline]
    pub fn backed_up(&self, w: WorkerId) -> bool {
        (0..self.workers).any(|to| {
            to != w.index()
                && 2 * self.ring(w, WorkerId(to as u8)).len()
                    >= CROSS_RING.min(self.rings[0].capacity())
                && !self.doors[to].done.load(Ordering::Acquire)
        })
    }

    /// Worker `w` is stopping and has handed over its last frame.
    pub fn done_pushing(&self, w: WorkerId) {
        self.doors[w.index()].done.store(true, Ordering::Release);
    }

    /// Whether a worker other than `w` may still hand frames over (it has not stopped).
    pub fn others_pushing(&self, w: WorkerId) -> bool {
        self.doors
            .iter()
            .enumerate()
            .any(|(i, d)| i != w.index() && !d.done.load(Ordering::Acquire))
    }

    /// Worker `w` woke (or did not sleep after all).
    #[inline]
    pub fn woke(&self, w: WorkerId) {
        self.doors[w.index()]
            .sleeping
            .store(false, Ordering::Relaxed);
    }

    /// After pushing frames to `to`: wakes it if it sleeps; returns whether it did.
    #[inline]
    pub fn nudge(&self, to: WorkerId) -> bool {
        fence(Ordering::SeqCst);
        let d = &self.doors[to.index()];
        if d.sleeping.load(Ordering::Relaxed) && d.sleeping.swap(false, Ordering::Relaxed) {
            if let Some(fd) = d.wake.get() {
                crate::sys::fd::kick(fd);
            }
            return true;
        }
        false
    }
}

/// Takes a frame another worker handed over into `pool` (the receiving worker's): copies its
/// bytes and offload record into a buffer of `pool`, gives the lent reference back to its
/// home, and returns the copy (one reference, home `pool`'s). On failure the lent reference
/// is given back too, and the reason is returned.
#[inline]
pub fn adopt(
    pool: &mut BufferPool,
    registry: &PoolRegistry,
    cf: &CrossFrame,
) -> Result<Frame, DropReason> {
    let src = cf.frame;
    let (off, len) = (src.off as usize, src.len as usize);
    let need = off + len;
    let b = if need <= pool.buf_size() {
        pool.alloc()
    } else {
        pool.alloc_large().filter(|b| need <= pool.size_of(*b))
    };
    let Some(b) = b else {
        pool.release_to(src.home, src.buf);
        return Err(DropReason::NoBuffer);
    };
    // SAFETY: the sender handed this reference over through a ring (release/acquire); it is
    // given back only below, after the copy; a lent buffer is not written by its home
    // (`PoolRegistry::remote_frame`).
    let copied = match unsafe { registry.remote_frame(src.home, src.buf, off, len) } {
        Some(bytes) => {
            pool.buf_mut(b)[off..need].copy_from_slice(bytes);
            true
        }
        None => false,
    };
    pool.release_to(src.home, src.buf);
    if !copied {
        // A descriptor that names no buffer: a bug elsewhere, never trusted.
        pool.release(b);
        return Err(DropReason::NoBuffer);
    }
    if src.has_offload() {
        pool.set_offload(b, cf.offload);
    }
    let mut f = src;
    f.buf = b;
    f.home = pool.home();
    Ok(f)
}
