//! `Worker`: one run-to-completion loop on one (optionally pinned) core.
//!
//! A worker owns its io_uring instance, its buffer pool, its forwarding engine and the ports
//! the configuration gives it (each in a slot of its own, see `ids.rs`). It never matches on
//! what kind a port is: it calls the port interface (`crate::port::Port`) and routes each
//! completion to the port whose slot its tag names.
//!
//! One pass of the loop, top to bottom:
//! 1. **take in** what the kernel finished: every completion goes to its port, which appends
//!    the frames it received to the receive batch; the engine turns the batch into transmit
//!    queues (and egress drops are folded into the ports' counters);
//! 2. **between batches**: a newly published configuration is applied (ports attached or
//!    drained), control-plane requests are served, buffers other threads handed back are
//!    folded into the pool;
//! 3. **arm**: every live port keeps its receives armed, and every port with queued frames
//!    takes what it can of them;
//! 4. **wait**, as the poll mode says (`poll.rs`): poll — look at the rings without a system
//!    call, enter the kernel only to submit or to run pending completion work — or sleep in
//!    one `io_uring_enter` that submits everything and waits (under load from ports whose
//!    completions are worth gathering, for a batch, bounded by `rx_coalesce`); the next pass
//!    takes in what came.
//!
//! So a frame received in the completions of pass k is queued, handed to its egress port and
//! submitted by the `io_uring_enter` that ends the same pass k. Each pass is accounted as
//! work, polling or sleep (`WorkerCounters::{work_ns, poll_ns, sleep_ns}`). No read()/write() per frame,
//! no allocation and no lock on this path.
//!
//! A frame's buffer is held by exactly one in-flight read or one port's buffer ring, or by the
//! transmit queues and in-flight writes that carry it (reference counted); it returns to the
//! pool when the last write completes. A removed port is drained — its operations cancelled
//! and completed, its buffer ring emptied back into the pool — before the worker drops it (and
//! its descriptors) and reports the configuration applied.

mod cross;
mod handle;
mod pace;
mod poll;
mod ports;
mod requests;

pub use handle::{pin_current_thread, StopHandle, WorkerConfig, WorkerError, WorkerHandle};
pub use poll::PollMode;

use crate::config::WorkerLink;
use crate::counters::WorkerCounters;
use crate::engine::Engine;
use crate::frame::Frame;
use crate::ids::{PortId, Slot, WorkerId};
use crate::pool::{BufferPool, PoolRegistry, HEADROOM};
use crate::port::{AnyPort, Cx, Port, PortEnv, Tag, OP_CANCEL};
use crate::sys::uring::{Completion, Ring, RingFeatures};
use crate::txqueue::TxQueues;
use ports::PortState;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Op code of the wake-up eventfd's read.
const OP_WAKE: u8 = 0xff;

/// Completions a coalescing wait asks for.
const COALESCE_BATCH: usize = 32;
/// Frames in a wake-up from which the next wait coalesces.
const COALESCE_FROM: usize = 2;
/// How long a stopping worker waits for its writes in flight (the process as a whole is
/// bounded by the binary's stop bound, 5 s).
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// One worker's state; lives on the worker's thread.
pub struct Worker {
    id: WorkerId,
    ring: Ring,
    engine: Engine,
    /// Ports by slot.
    ports: Vec<Option<PortState>>,
    /// Switch-wide port id → the slot serving it (while it is not draining).
    by_id: Vec<Option<Slot>>,
    tx: TxQueues,
    rx: Vec<Frame>,
    cqes: Vec<Completion>,
    counters: Arc<WorkerCounters>,
    link: WorkerLink,
    wake_buf: Box<u64>,
    env: PortEnv,
    rx_coalesce: Duration,
    /// Frames the last wake-up brought from ports whose completions are worth gathering (they
    /// decide whether the next wait coalesces: taps alone never make it wait).
    last_batch: usize,
    /// Generation of the snapshot the ports were last reconciled with.
    generation: u64,
    /// A port was wanted while every slot was taken (some still draining): reconcile again
    /// once a drain ends.
    retry: bool,
    /// Some port is draining, or failed and still has operations to finish.
    cleanup: bool,
    poller: poll::Poller,
    /// MAC table dumps under way, walked a slice per pass.
    dumps: std::collections::VecDeque<requests::Dump>,
    epoch: Instant,
    /// Seconds since `epoch` when the current loop pass began (the MAC table's clock, read
    /// once per pass rather than once per batch).
    pass_secs: u32,
    /// The rings to and from the other workers, when there are others.
    fabric: Option<Arc<crate::fabric::Fabric>>,
    /// Ports of other workers this worker forwards to, by port id (`cross.rs`).
    remote: Vec<Option<Arc<crate::config::PortEntry>>>,
    /// Workers this pass handed frames to (bit per worker), to wake once after the pass.
    pushed: u64,
    /// This pass armed no receive (a ring to another worker was half full or more: the
    /// owner catches up, and this worker's time goes to the frames handed to it, rather than
    /// to reading frames only to drop them at a full ring). It must not sleep, since it may
    /// have left nothing in flight to wake it.
    held: bool,
    /// Some port is held: its frames overflowed a local port that is still sending
    /// (`pace.rs`).
    holding: bool,
}

impl Worker {
    /// Builds a worker that serves the ports of `link`'s snapshots that name `cfg.id`.
    pub fn new(cfg: &WorkerConfig, link: WorkerLink) -> Result<Worker, WorkerError> {
        // Small buffers hold every frame of a standard Ethernet (1522 bytes and the
        // headroom); longer frames, when allowed, go into large buffers.
        let buf_size = 2048;
        let default_pool = (cfg.max_ports * cfg.rx_depth as usize * 2).clamp(4096, 65536);
        let count = cfg.pool_buffers.unwrap_or(default_pool).next_power_of_two();
        let registry = match (&cfg.fabric, &cfg.registry) {
            (Some(f), _) => f.registry().clone(),
            (None, Some(r)) => r.clone(),
            (None, None) => PoolRegistry::new(cfg.id.index() + 1, 2 * count),
        };
        if let Some(f) = &cfg.fabric {
            f.set_wake(cfg.id, link.wake.clone());
        }
        let pool = BufferPool::with_home(cfg.id, count, buf_size, cfg.large_buffers, registry)?;
        let entries = ((cfg.max_ports as u32) * (cfg.rx_depth + cfg.tx_depth as u32) + 16)
            .next_power_of_two()
            .clamp(256, 4096);
        let ring = Ring::new(entries, pool, 2 * cfg.max_ports as u32, cfg.rx_multishot)
            .map_err(WorkerError::Ring)?;
        let counters = Arc::new(WorkerCounters::default());
        Ok(Worker {
            id: cfg.id,
            ring,
            engine: match &cfg.fabric {
                Some(f) => Engine::with_table(
                    cfg.max_ports,
                    cfg.max_frame,
                    counters.clone(),
                    f.table(cfg.mac_capacity, cfg.mac_ageing),
                ),
                None => Engine::new(
                    cfg.max_ports,
                    cfg.mac_capacity,
                    cfg.mac_ageing,
                    cfg.max_frame,
                    counters.clone(),
                ),
            },
            ports: (0..cfg.max_ports).map(|_| None).collect(),
            by_id: vec![None; cfg.max_ports],
            tx: TxQueues::new(cfg.max_ports, cfg.tx_depth),
            rx: Vec::with_capacity(entries as usize * 2),
            cqes: Vec::with_capacity(entries as usize * 2),
            counters,
            link,
            wake_buf: Box::new(0),
            env: PortEnv {
                rx_depth: cfg.rx_depth,
                tx_depth: cfg.tx_depth,
                max_frame: cfg.max_frame,
                tap_rx: cfg.tap_rx,
                rx_multishot: cfg.rx_multishot,
                rx_large: cfg.max_frame + HEADROOM >= buf_size,
                busy_poll: cfg.poll == PollMode::Busy,
            },
            rx_coalesce: cfg.rx_coalesce,
            last_batch: 0,
            generation: 0,
            retry: false,
            cleanup: false,
            poller: poll::Poller::new(cfg.poll, cfg.poll_max),
            dumps: std::collections::VecDeque::new(),
            epoch: cfg.fabric.as_ref().map_or_else(Instant::now, |f| f.epoch()),
            pass_secs: 0,
            fabric: cfg.fabric.clone(),
            remote: vec![None; cfg.max_ports],
            pushed: 0,
            held: false,
            holding: false,
        })
    }

    pub fn features(&self) -> RingFeatures {
        self.ring.features()
    }

    pub fn counters(&self) -> &Arc<WorkerCounters> {
        &self.counters
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            stop: self.link.stop.clone(),
            wake: self.link.wake.clone(),
        }
    }

    fn arm_wake(&mut self) -> Result<(), WorkerError> {
        let target: *mut u64 = &mut *self.wake_buf;
        let tag = Tag {
            op: OP_WAKE,
            slot: Slot(0),
            aux: 0,
        }
        .encode();
        // SAFETY: `wake_buf` is a heap cell owned by the worker, used by nothing else, and
        // outlives the ring's use of it (the ring is dropped with the worker, which completes
        // or cancels the read first).
        unsafe {
            self.ring
                .push_read_u64(self.link.wake.as_raw_fd(), target, tag)
        }
        .map_err(WorkerError::Enter)
    }

    fn now(&self) -> u32 {
        self.epoch.elapsed().as_secs() as u32
    }

    /// Calls `f` with the port in `slot` and its context, if there is a port there.
    #[inline]
    fn with_port<R>(
        &mut self,
        slot: Slot,
        f: impl FnOnce(&mut AnyPort, &mut Cx<'_>) -> R,
    ) -> Option<R> {
        let st = self.ports.get_mut(slot.index())?.as_mut()?;
        let mut cx = Cx {
            ring: &mut self.ring,
            slot,
            id: st.entry.id,
            rx: &mut self.rx,
            counters: &st.counters,
            worker: &self.counters,
            env: &self.env,
            live: !st.failed && !st.draining,
            offloads: None,
        };
        let r = f(&mut st.port, &mut cx);
        if let Some(o) = cx.offloads {
            let _ = self.engine.set_offloads(st.entry.id, o);
            st.cell.set_offloads(o);
        }
        Some(r)
    }

    /// Keeps every live port's receives armed.
    fn arm_ports(&mut self) -> Result<(), WorkerError> {
        self.held = self.fabric.as_ref().is_some_and(|f| f.backed_up(self.id));
        if self.held {
            return Ok(());
        }
        let holding = (self.holding || !self.tx.backed().is_empty()) && self.still_holding();
        for i in 0..self.ports.len() {
            let live = matches!(&self.ports[i],
                Some(st) if !(st.failed || st.draining || holding && st.held));
            if live {
                if let Some(Err(e)) = self.with_port(Slot(i as u16), |p, cx| p.arm(cx)) {
                    return Err(WorkerError::Enter(e));
                }
            }
        }
        Ok(())
    }

    /// Hands every port with queued frames what it can take of them now (frames for ports
    /// of other workers go to their owners).
    fn flush_tx(&mut self) -> Result<(), WorkerError> {
        let mut i = 0;
        while i < self.tx.pending().len() {
            let id = self.tx.pending()[i];
            let before = self.tx.pending().len();
            if self.remote[id.index()].is_some() {
                self.send_remote(id);
            } else {
                let taken = self.send_queue(id)?;
                self.tx.consume(id, taken);
            }
            if self.tx.pending().len() == before {
                i += 1;
            }
        }
        if self.pushed != 0 {
            self.wake_pushed();
        }
        Ok(())
    }

    /// Offers port `id`'s queue to it; returns how many frames it took.
    #[inline]
    fn send_queue(&mut self, id: PortId) -> Result<usize, WorkerError> {
        let slot = self.by_id.get(id.index()).copied().flatten();
        let Some((slot, st)) = slot.and_then(|s| Some((s, self.ports[s.index()].as_mut()?))) else {
            let pool = self.ring.pool_mut();
            self.tx.discard(id, |f| pool.release(f.buf));
            return Ok(0);
        };
        let mut cx = Cx {
            ring: &mut self.ring,
            slot,
            id,
            rx: &mut self.rx,
            counters: &st.counters,
            worker: &self.counters,
            env: &self.env,
            live: !st.failed && !st.draining,
            offloads: None,
        };
        st.port
            .send(&mut cx, self.tx.queue(id))
            .map_err(WorkerError::Enter)
    }

    /// Routes one completion to its port (or to the worker's own business).
    #[inline]
    fn complete(&mut self, c: Completion) -> Result<(), WorkerError> {
        let tag = Tag::decode(c.user_data);
        match tag.op {
            OP_WAKE => {
                if !self.link.stop.load(Ordering::Acquire) {
                    self.arm_wake()?;
                }
            }
            OP_CANCEL => {}
            _ => {
                if let Some(Err(closed)) = self.with_port(tag.slot, |p, cx| p.complete(cx, tag, c))
                {
                    self.close_port(tag.slot, closed);
                }
            }
        }
        Ok(())
    }

    /// Handles every ready completion; returns how many there were.
    fn reap_and_complete(&mut self, skip_wake: bool) -> Result<usize, WorkerError> {
        self.cqes.clear();
        self.ring.reap(&mut self.cqes);
        let n = self.cqes.len();
        self.counters.completions.add(n as u64);
        for i in 0..n {
            let c = self.cqes[i];
            if skip_wake && Tag::decode(c.user_data).op == OP_WAKE {
                continue;
            }
            self.complete(c)?;
        }
        Ok(n)
    }

    fn forward_batch(&mut self) {
        if self.rx.is_empty() {
            self.last_batch = 0;
            return;
        }
        let (ports, by_id) = (&self.ports, &self.by_id);
        self.last_batch = self
            .rx
            .iter()
            .filter(|f| {
                let slot = by_id.get(f.ingress.index()).copied().flatten();
                slot.is_some_and(|s| matches!(&ports[s.index()], Some(p) if p.coalesce))
            })
            .count();
        let n = self.rx.len() as u64;
        self.counters.rx_frames.add(n);
        self.counters.max_batch.max(n);
        self.engine
            .forward(self.ring.pool_mut(), &self.rx, &mut self.tx, self.pass_secs);
        if self.tx.take_overflow() {
            self.hold_senders();
        }
        self.engine.fold_egress(&mut self.tx);
        self.rx.clear();
    }

    /// Runs until asked to stop.
    pub fn run(&mut self) -> Result<(), WorkerError> {
        self.arm_wake()?;
        self.counters
            .poll_budget_us
            .set(self.poller.budget().as_micros() as u64);
        let mut start = Instant::now();
        while !self.link.stop.load(Ordering::Acquire) {
            // 1. Take in what the last wait brought.
            let work = self.reap_and_complete(false)? > 0 || !self.dumps.is_empty();
            self.forward_batch();
            let work = work || (self.fabric.is_some() && self.take_cross() > 0);
            if self.cleanup {
                self.finish_drains();
            }
            // 2. Between batches.
            self.reconcile()?;
            self.serve_requests();
            if !self.dumps.is_empty() {
                self.continue_dump();
            }
            self.ring.pool_mut().reclaim();
            // 3. Arm receives, hand the queues to the ports.
            self.arm_ports()?;
            // (Ports on shared rings, vhost-user, take frames while arming: work too.)
            let work = work || !self.rx.is_empty();
            self.flush_tx()?;
            let now = Instant::now();
            let spent = now.saturating_duration_since(start).as_nanos() as u64;
            if work {
                self.counters.work_ns.add(spent);
                self.poller.worked(now);
            } else {
                self.counters.poll_ns.add(spent);
                self.poller.idle();
            }
            // 4. Wait: poll, or sleep.
            if self.wait(now)? {
                let end = Instant::now();
                let slept = end.saturating_duration_since(now).as_nanos() as u64;
                self.counters.sleep_ns.add(slept);
                start = end;
            } else {
                start = now;
            }
            self.pass_secs = start.saturating_duration_since(self.epoch).as_secs() as u32;
        }
        self.shutdown()
    }

    /// Waits as the poll mode says; returns whether it slept (rather than polled).
    #[inline]
    fn wait(&mut self, now: Instant) -> Result<bool, WorkerError> {
        let gather = self.last_batch >= COALESCE_FROM && !self.rx_coalesce.is_zero();
        // Frames from ports whose completions are worth gathering keep the coalescing wait
        // in every mode but busy: one wake-up and one send carry many of them.
        // A dump under way goes on at the next pass, whatever the mode. So does a port
        // moving here whose old worker has not let go of it yet: putting it back in its cell
        // wakes nobody, so a worker asleep would not apply the move until some unrelated
        // completion came. A worker that holds ports for a slow one (`pace.rs`) sleeps at
        // once too: it waits for that port's peer, and polling would take the time from the
        // peer where they share a core (in a vde client chain the worker spun for a fifth
        // of its CPU time while holding).
        // Holding still after this pass's sends, the slow port has a send or its poll for
        // room in flight, which wakes the worker. One whose queue drained to half in them
        // lets its senders go here, and the worker must not sleep before the next pass has
        // armed their receives: nothing else may be in flight.
        let moving_in = self.retry && self.fabric.is_some();
        let released = self.holding && !self.still_holding();
        let sleep = self.dumps.is_empty()
            && !moving_in
            && !released
            && !self.held
            && match self.poller.mode() {
                PollMode::Busy => false,
                PollMode::Sleep => true,
                PollMode::Adaptive => gather || self.holding || self.poller.should_sleep(now),
            };
        if !sleep {
            if self.ring.has_work() {
                self.ring.poll().map_err(WorkerError::Enter)?;
            } else {
                std::hint::spin_loop();
            }
            return Ok(false);
        }
        // A worker that holds ports for a backed-up one gathers too (`hold_gathers`): each
        // of that port's sends that waited for room completes on its own, and waking for
        // every one would hand the core back and forth with the slow peer one frame at a
        // time (on a shared core, the peer then drains its queue in as many turns).
        let hold = self.hold_wait();
        let coalesce = if gather || hold.is_some() && self.hold_gathers() {
            self.rx_coalesce
        } else {
            Duration::ZERO
        };
        if let Some(f) = &self.fabric {
            if !f.prepare_sleep(self.id) {
                // Another worker handed frames over meanwhile: take them first.
                self.ring.poll().map_err(WorkerError::Enter)?;
                return Ok(false);
            }
        }
        let r = self
            .ring
            .submit_and_wait_batch(COALESCE_BATCH, coalesce, hold);
        if let Some(f) = &self.fabric {
            f.woke(self.id);
        }
        r.map_err(WorkerError::Enter)?;
        self.counters.wakeups.inc();
        self.counters.sleeps.inc();
        self.poller.slept();
        self.counters
            .poll_budget_us
            .set(self.poller.budget().as_micros() as u64);
        Ok(true)
    }

    /// Cancels every port's operations, forwards what the reads brought, and waits (at most
    /// `SHUTDOWN_DRAIN`) until every write has completed, so the counters account for every
    /// frame read; `WorkerError::Undrained` when writes were still in flight at the deadline.
    fn shutdown(&mut self) -> Result<(), WorkerError> {
        for i in 0..self.ports.len() {
            if let Some(Err(e)) = self.with_port(Slot(i as u16), |p, cx| p.cancel(cx)) {
                return Err(WorkerError::Enter(e));
            }
        }
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        // With other workers: frames they received before they stopped still come over
        // the rings; take them (and send them) until every other worker has handed over its
        // last one, and say when this one has.
        let mut handed = self.fabric.is_none();
        loop {
            if self.fabric.is_some() {
                self.take_cross();
            }
            self.flush_tx()?;
            let reads_done = self
                .ports
                .iter()
                .flatten()
                .all(|p| p.port.in_flight().reads == 0);
            if !handed && reads_done && self.rx.is_empty() {
                if let Some(f) = &self.fabric {
                    f.done_pushing(self.id);
                }
                handed = true;
            }
            let others = self
                .fabric
                .as_ref()
                .is_some_and(|f| f.others_pushing(self.id) || f.has_incoming(self.id));
            let busy = !handed
                || others
                || !self.tx.is_empty()
                || self
                    .ports
                    .iter()
                    .flatten()
                    .any(|p| !p.port.in_flight().is_idle());
            let now = Instant::now();
            if !busy {
                return Ok(());
            }
            if now >= deadline {
                break;
            }
            // Bounded: a write that never completes (a peer that stopped reading) must not
            // hold the stop past the deadline; other workers' frames are looked for every
            // millisecond.
            let wait = if others {
                (deadline - now).min(Duration::from_millis(1))
            } else {
                deadline - now
            };
            self.ring
                .submit_and_wait_for(wait)
                .map_err(WorkerError::Enter)?;
            self.reap_and_complete(true)?;
            self.forward_batch();
        }
        if let Some(f) = &self.fabric {
            f.done_pushing(self.id);
        }
        let writes: u32 = self
            .ports
            .iter()
            .flatten()
            .map(|p| p.port.in_flight().writes)
            .sum();
        let queued = self.tx.len();
        if writes == 0 && queued == 0 {
            // Only receives still winding down: no frame is lost.
            return Ok(());
        }
        Err(WorkerError::Undrained {
            writes,
            queued,
            after: SHUTDOWN_DRAIN,
        })
    }
}

impl Drop for Worker {
    /// However the worker ends (a stop, or an error out of its loop), other workers stop
    /// waiting for frames from it.
    fn drop(&mut self) {
        if let Some(f) = &self.fabric {
            f.done_pushing(self.id);
        }
    }
}
