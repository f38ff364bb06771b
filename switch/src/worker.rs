//! `Worker`: one run-to-completion loop on one (optionally pinned) core.
//!
//! A worker owns its io_uring instance, its buffer pool, its forwarding engine and the ports it
//! serves. Each loop: keep `rx_depth` reads in flight on every port, hand every queued frame to
//! the kernel as a write, then one `io_uring_enter` submits all of it and waits; the
//! completions form the next receive batch, which the engine turns into transmit queues. No
//! read()/write() per frame, no allocation and no lock on this path.
//!
//! A frame's buffer is held by exactly one in-flight read, or by the transmit queues and
//! in-flight writes that carry it (reference counted); it returns to the pool when the last
//! write completes.

use crate::counters::{DropReason, PortCounters, WorkerCounters};
use crate::engine::{Engine, PortConf, RxDesc, TxQueues};
use crate::ids::{BufIndex, DomainId, PortId};
use crate::pool::BufferPool;
use crate::uring::{Completion, FileRef, Ring, RingFeatures};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Sizing of a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Largest frame accepted, in bytes (without FCS).
    pub max_frame: usize,
    /// MAC table capacity (entries) and ageing time (seconds).
    pub mac_capacity: usize,
    pub mac_ageing: u32,
    /// Reads kept in flight per port.
    pub rx_depth: u32,
    /// Frames a port's transmit queue holds.
    pub tx_depth: usize,
    /// Most ports this worker can serve.
    pub max_ports: usize,
    /// Core to pin the worker thread to.
    pub cpu: Option<usize>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            max_frame: 1522,
            mac_capacity: 65536,
            mac_ageing: 300,
            rx_depth: 64,
            tx_depth: 256,
            max_ports: 64,
            cpu: None,
        }
    }
}

/// A port handed to a worker: a descriptor that carries one frame per read and per write
/// (a tap, or a datagram socket), with its place in the switch.
pub struct PortSpec {
    pub fd: OwnedFd,
    pub domain: DomainId,
    pub link_up: bool,
    pub counters: Arc<PortCounters>,
}

/// Why a worker could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("buffer pool: {0}")]
    Pool(#[from] crate::pool::PoolError),
    #[error("io_uring set-up failed: {0}")]
    Ring(#[source] io::Error),
    #[error("{0} ports given but the worker serves at most {1}")]
    TooManyPorts(usize, usize),
    #[error("eventfd: {0}")]
    EventFd(#[source] io::Error),
    #[error("io_uring_enter failed: {0}")]
    Enter(#[source] io::Error),
    #[error("cannot pin the worker to CPU {0}: {1}")]
    Pin(usize, #[source] io::Error),
}

const TAG_READ: u64 = 1;
const TAG_WRITE: u64 = 2;
const TAG_WAKE: u64 = 3;
const TAG_CANCEL: u64 = 4;

#[inline]
fn tag(op: u64, port: PortId, buf: BufIndex) -> u64 {
    op << 56 | (port.0 as u64) << 32 | buf.0 as u64
}

#[inline]
fn untag(ud: u64) -> (u64, PortId, BufIndex) {
    (ud >> 56, PortId((ud >> 32) as u16), BufIndex(ud as u32))
}

struct IoPort {
    fd: OwnedFd,
    file: FileRef,
    reads: u32,
    /// Receiving failed for good; no more reads are armed.
    failed: bool,
}

/// Wakes a worker out of `io_uring_enter` and asks it to stop.
#[derive(Clone)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    event: Arc<OwnedFd>,
}

impl StopHandle {
    /// Asks the worker to stop; returns at once.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to an eventfd we own.
        unsafe {
            libc::write(self.event.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }
}

/// A worker running on its own thread.
pub struct WorkerHandle {
    pub stopper: StopHandle,
    pub counters: Arc<WorkerCounters>,
    pub features: RingFeatures,
    pub huge_pages: bool,
    thread: JoinHandle<Result<(), WorkerError>>,
}

impl WorkerHandle {
    /// Stops the worker and waits for its thread to end.
    pub fn stop_and_join(self) -> Result<(), WorkerError> {
        self.stopper.stop();
        self.join()
    }

    /// Waits for the worker's thread to end (it ends on stop or on a fatal error).
    pub fn join(self) -> Result<(), WorkerError> {
        match self.thread.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }
}

/// One worker's state; lives on the worker's thread.
pub struct Worker {
    ring: Ring,
    engine: Engine,
    ports: Vec<Option<IoPort>>,
    tx: TxQueues,
    rx: Vec<RxDesc>,
    cqes: Vec<Completion>,
    counters: Arc<WorkerCounters>,
    stop: Arc<AtomicBool>,
    event: Arc<OwnedFd>,
    wake_buf: Box<u64>,
    rx_depth: u32,
    /// Writes handed to the kernel and not yet completed.
    writes: u64,
    epoch: Instant,
}

fn pin_to(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set, CPU_SET writes within it, and
    // sched_setaffinity reads it for the calling thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd has no memory arguments; a non-negative result is a new fd we own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Worker {
    /// Builds a worker over `ports` (port i gets `PortId(i)`).
    pub fn new(cfg: &WorkerConfig, ports: Vec<PortSpec>) -> Result<Worker, WorkerError> {
        if ports.len() > cfg.max_ports {
            return Err(WorkerError::TooManyPorts(ports.len(), cfg.max_ports));
        }
        let buf_size = (cfg.max_frame + 1).next_power_of_two().max(2048);
        let rx_bufs = cfg.max_ports * cfg.rx_depth as usize;
        let tx_bufs = cfg.max_ports * cfg.tx_depth;
        let pool = BufferPool::new((rx_bufs + tx_bufs + 256).next_power_of_two(), buf_size)?;
        let entries = ((cfg.max_ports as u32) * (cfg.rx_depth + cfg.tx_depth as u32) + 16)
            .next_power_of_two()
            .clamp(256, 4096);
        let ring = Ring::new(entries, pool, cfg.max_ports as u32).map_err(WorkerError::Ring)?;
        let counters = Arc::new(WorkerCounters::default());
        let mut w = Worker {
            ring,
            engine: Engine::new(
                cfg.max_ports,
                cfg.mac_capacity,
                cfg.mac_ageing,
                cfg.max_frame,
                counters.clone(),
            ),
            ports: (0..cfg.max_ports).map(|_| None).collect(),
            tx: TxQueues::new(cfg.max_ports, cfg.tx_depth),
            rx: Vec::with_capacity(entries as usize * 2),
            cqes: Vec::with_capacity(entries as usize * 2),
            counters,
            stop: Arc::new(AtomicBool::new(false)),
            event: Arc::new(eventfd().map_err(WorkerError::EventFd)?),
            wake_buf: Box::new(0),
            rx_depth: cfg.rx_depth,
            writes: 0,
            epoch: Instant::now(),
        };
        for (i, p) in ports.into_iter().enumerate() {
            let id = PortId(i as u16);
            let file = w
                .ring
                .register_file(i as u32, p.fd.as_raw_fd())
                .map_err(WorkerError::Ring)?;
            w.engine
                .add_port(
                    id,
                    PortConf {
                        domain: p.domain,
                        link_up: p.link_up,
                    },
                    p.counters,
                )
                .expect("port index within max_ports and unused");
            w.ports[i] = Some(IoPort {
                fd: p.fd,
                file,
                reads: 0,
                failed: false,
            });
        }
        Ok(w)
    }

    pub fn features(&self) -> RingFeatures {
        self.ring.features()
    }

    pub fn counters(&self) -> &Arc<WorkerCounters> {
        &self.counters
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            stop: self.stop.clone(),
            event: self.event.clone(),
        }
    }

    /// Builds the worker and runs it on a new thread, pinned when `cfg.cpu` says so.
    pub fn spawn(cfg: WorkerConfig, ports: Vec<PortSpec>) -> Result<WorkerHandle, WorkerError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("rs-worker".into())
            .spawn(move || {
                // Build on the worker's own thread: SINGLE_ISSUER binds the ring to it.
                if let Some(cpu) = cfg.cpu {
                    if let Err(e) = pin_to(cpu) {
                        let _ = tx.send(Err(WorkerError::Pin(cpu, e)));
                        return Ok(());
                    }
                }
                let mut w = match Worker::new(&cfg, ports) {
                    Ok(w) => w,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return Ok(());
                    }
                };
                let info = (
                    w.stop_handle(),
                    w.counters.clone(),
                    w.features(),
                    w.ring.pool().huge_pages(),
                );
                let _ = tx.send(Ok(info));
                w.run()
            })
            .map_err(WorkerError::Ring)?;
        match rx.recv() {
            Ok(Ok((stopper, counters, features, huge_pages))) => Ok(WorkerHandle {
                stopper,
                counters,
                features,
                huge_pages,
                thread,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                Ok(Ok(())) => unreachable!("worker thread ended before reporting"),
                Err(p) => std::panic::resume_unwind(p),
            },
        }
    }

    fn arm_wake(&mut self) -> Result<(), WorkerError> {
        let target: *mut u64 = &mut *self.wake_buf;
        // SAFETY: `wake_buf` is a heap cell owned by the worker, used by nothing else, and
        // outlives the ring (the ring is dropped with the worker, completing the read first).
        unsafe {
            self.ring
                .push_read_u64(self.event.as_raw_fd(), target, TAG_WAKE << 56)
        }
        .map_err(WorkerError::Enter)
    }

    /// Tops up every port's in-flight reads.
    fn arm_reads(&mut self) -> Result<(), WorkerError> {
        for i in 0..self.ports.len() {
            let Some(p) = &self.ports[i] else { continue };
            if p.failed {
                continue;
            }
            let (file, missing) = (p.file, self.rx_depth - p.reads);
            let mut armed = 0;
            for _ in 0..missing {
                let Some(buf) = self.ring.pool_mut().alloc() else {
                    self.counters.rx_starved.inc();
                    break;
                };
                // SAFETY: `buf` was just allocated, so nothing else refers to it; it is
                // touched again only when this read's completion is reaped.
                unsafe {
                    self.ring
                        .push_read(file, buf, tag(TAG_READ, PortId(i as u16), buf))
                }
                .map_err(WorkerError::Enter)?;
                armed += 1;
            }
            if let Some(p) = &mut self.ports[i] {
                p.reads += armed;
            }
        }
        Ok(())
    }

    /// Hands every queued frame to the kernel.
    fn flush_tx(&mut self) -> Result<(), WorkerError> {
        let mut result = Ok(());
        let ring = &mut self.ring;
        let ports = &self.ports;
        let counters = &self.counters;
        let writes = &mut self.writes;
        self.tx.drain(|port, frames| {
            let file = match &ports[port.index()] {
                Some(p) => p.file,
                None => {
                    for f in frames {
                        ring.pool_mut().release(f.buf);
                    }
                    return;
                }
            };
            for f in frames {
                if result.is_err() {
                    ring.pool_mut().release(f.buf);
                    continue;
                }
                // SAFETY: the transmit queue holds a reference on `f.buf`; it passes to this
                // write and is released when the write's completion is reaped. Nothing writes
                // a buffer that is queued for transmission.
                result =
                    unsafe { ring.push_write(file, f.buf, f.len, tag(TAG_WRITE, port, f.buf)) }
                        .map_err(WorkerError::Enter);
                if result.is_err() {
                    ring.pool_mut().release(f.buf);
                } else {
                    counters.tx_submitted.inc();
                    *writes += 1;
                }
            }
        });
        result
    }

    /// The kernel object behind a port failed for good (e.g. its interface was deleted): stop
    /// receiving on it and take its link down so nothing is sent to it, rather than spin on
    /// errors. Other ports are not disturbed.
    fn fail_port(&mut self, port: PortId, errno: i32) {
        if let Some(ctr) = self.engine.port_counters(port) {
            ctr.count_drop(DropReason::RxError);
        }
        if let Some(p) = &mut self.ports[port.index()] {
            if !p.failed {
                p.failed = true;
                let _ = self.engine.set_link(port, false);
                eprintln!(
                    "ringswitch: {port}: receive failed ({}); port disabled",
                    io::Error::from_raw_os_error(errno)
                );
            }
        }
    }

    fn complete(&mut self, c: Completion) -> Result<(), WorkerError> {
        let (op, port, buf) = untag(c.user_data);
        match op {
            TAG_READ => {
                let alive = match &mut self.ports[port.index()] {
                    Some(p) => {
                        p.reads -= 1;
                        true
                    }
                    None => false,
                };
                if c.result >= 0 && alive {
                    self.rx.push(RxDesc {
                        port,
                        buf,
                        len: c.result as u32,
                    });
                } else {
                    self.ring.pool_mut().release(buf);
                    let transient = matches!(
                        -c.result,
                        libc::ECANCELED | libc::EINTR | libc::EAGAIN | libc::ENOBUFS
                    );
                    if alive && !transient {
                        self.fail_port(port, -c.result);
                    }
                }
            }
            TAG_WRITE => {
                self.writes -= 1;
                if let Some(ctr) = self.engine.port_counters(port) {
                    if c.result >= 0 {
                        ctr.tx_frames.inc();
                        ctr.tx_bytes.add(c.result as u64);
                    } else {
                        ctr.count_drop(DropReason::TxError);
                    }
                }
                self.ring.pool_mut().release(buf);
            }
            TAG_WAKE => {
                if !self.stop.load(Ordering::Acquire) {
                    self.arm_wake()?;
                }
            }
            TAG_CANCEL => {}
            _ => unreachable!("unknown completion tag {op}"),
        }
        Ok(())
    }

    fn forward_batch(&mut self) {
        if self.rx.is_empty() {
            return;
        }
        let n = self.rx.len() as u64;
        self.counters.rx_frames.add(n);
        if n > self.counters.max_batch.get() {
            self.counters
                .max_batch
                .add(n - self.counters.max_batch.get());
        }
        let now = self.epoch.elapsed().as_secs() as u32;
        self.engine
            .forward(self.ring.pool_mut(), &self.rx, &mut self.tx, now);
        self.rx.clear();
    }

    /// Runs until asked to stop.
    pub fn run(&mut self) -> Result<(), WorkerError> {
        self.arm_wake()?;
        while !self.stop.load(Ordering::Acquire) {
            self.arm_reads()?;
            self.flush_tx()?;
            self.ring.submit_and_wait(1).map_err(WorkerError::Enter)?;
            self.counters.wakeups.inc();
            self.cqes.clear();
            self.ring.reap(&mut self.cqes);
            self.counters.completions.add(self.cqes.len() as u64);
            for i in 0..self.cqes.len() {
                let c = self.cqes[i];
                self.complete(c)?;
            }
            self.forward_batch();
        }
        self.shutdown()
    }

    /// Cancels all port reads, forwards what they brought, and waits (bounded) until every
    /// write has completed, so the counters account for every frame read.
    fn shutdown(&mut self) -> Result<(), WorkerError> {
        for i in 0..self.ports.len() {
            if let Some(p) = &self.ports[i] {
                let file = p.file;
                self.ring
                    .push_cancel_file(file, TAG_CANCEL << 56)
                    .map_err(WorkerError::Enter)?;
            }
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let busy = self.writes > 0
                || !self.tx.is_empty()
                || self.ports.iter().flatten().any(|p| p.reads > 0);
            if !busy || Instant::now() >= deadline {
                break;
            }
            self.flush_tx()?;
            self.ring.submit_and_wait(1).map_err(WorkerError::Enter)?;
            self.cqes.clear();
            self.ring.reap(&mut self.cqes);
            for i in 0..self.cqes.len() {
                let c = self.cqes[i];
                if untag(c.user_data).0 != TAG_WAKE {
                    self.complete(c)?;
                }
            }
            self.forward_batch();
        }
        Ok(())
    }

    /// Raw fd of port `i` (diagnostics).
    pub fn port_fd(&self, i: usize) -> Option<RawFd> {
        self.ports.get(i)?.as_ref().map(|p| p.fd.as_raw_fd())
    }
}
