//! `Worker`: one run-to-completion loop on one (optionally pinned) core.
//!
//! A worker owns its io_uring instance, its buffer pool, its forwarding engine and the ports it
//! serves. Each loop: pick up a new configuration snapshot if one was published, keep
//! `rx_depth` reads in flight on every port (or, on a datagram socket, one multishot receive
//! and a provided-buffer ring of `rx_depth` buffers topped up from the pool), hand every
//! queued frame to the kernel as a write, then one `io_uring_enter` submits all of it and
//! waits — under load for a batch of completions, bounded by `rx_coalesce` — and the
//! completions form the next receive batch, which the engine turns into transmit queues. No
//! read()/write() per frame, no allocation and no lock on this path.
//!
//! A frame's buffer is held by exactly one in-flight read or one port's buffer ring, or by the
//! transmit queues and in-flight writes that carry it (reference counted); it returns to the
//! pool when the last write completes. A removed port is drained — its receives cancelled,
//! its writes completed, its buffer ring emptied back into the pool — before the worker drops
//! its descriptor and reports the configuration applied.

use crate::config::{
    kick, BufferStats, Framing, PortEntry, Request, Snapshot, WorkerEvent, WorkerLink,
};
use crate::counters::{DropReason, WorkerCounters};
use crate::engine::{Engine, PortConf, RxDesc, TxDesc, TxQueues};
use crate::ids::{BufIndex, PortId};
use crate::l2tpv3::{L2tpv3Codec, MAX_HEADER as L2TP_MAX_HEADER};
use crate::stream::{StreamItem, StreamRx, PREFIX_LEN};
use crate::uring::{Completion, FileRef, Multi, Ring, RingFeatures};

mod multishot;
mod portio;
use crate::ids::BufGroup;
use crate::BufferPool;
use multishot::RxMode;
use portio::{EncapPort, EncapSlot, GsoSlot, PortIo, StreamPort, StreamTx, GSO_SLOTS};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How taps receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapRx {
    /// Rounds of non-blocking reads under load, one multishot read (or a poll) while the
    /// tap is idle (see `RxMode::Polled`): frames in order, the peak rate of reads and the
    /// low cost per frame of a multishot read at moderate rates.
    Polled,
    /// One multishot read over a provided-buffer ring (kernel 6.7+): frames in order, but
    /// each costs the kernel a task-work round trip.
    Multishot,
    /// `rx_depth` blocking reads in flight: at low rates the kernel wakes all of them for
    /// each frame and hands one that lost too often to a worker thread, which reorders.
    Reads,
}

/// Sizing of a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Largest frame accepted, in bytes (without FCS).
    pub max_frame: usize,
    /// MAC table capacity (entries) and ageing time (seconds).
    pub mac_capacity: usize,
    pub mac_ageing: u32,
    /// Reads kept in flight per port; on a socket port receiving with multishot, the size of
    /// its provided-buffer ring (rounded up to a power of two).
    pub rx_depth: u32,
    /// Receive on datagram socket ports with one multishot recv over a provided-buffer ring,
    /// where the kernel supports it (otherwise, and when false, with `rx_depth` reads).
    pub rx_multishot: bool,
    /// How taps receive.
    pub tap_rx: TapRx,
    /// Under load (the last wake-up brought `COALESCE_FROM` frames or more from datagram socket
    /// ports, whose sends batch), wait up to this
    /// long for a batch of `COALESCE_BATCH` completions before handling them, so that one
    /// wake-up and one send per port carry many frames; zero turns it off. A lone frame is
    /// never held back: the wait after a quiet spell ends at the first completion.
    pub rx_coalesce: Duration,
    /// Frames a port's transmit queue holds.
    pub tx_depth: usize,
    /// Most ports this worker can serve (port indices 0..max_ports).
    pub max_ports: usize,
    /// Frame buffers in the pool (default: enough for every port's reads, twice).
    pub pool_buffers: Option<usize>,
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
            rx_multishot: true,
            tap_rx: TapRx::Polled,
            rx_coalesce: Duration::from_micros(50),
            tx_depth: 256,
            max_ports: 64,
            pool_buffers: None,
            cpu: None,
        }
    }
}

/// Why a worker could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("buffer pool: {0}")]
    Pool(#[from] crate::pool::PoolError),
    #[error("io_uring set-up failed: {0}")]
    Ring(#[source] io::Error),
    #[error("io_uring_enter failed: {0}")]
    Enter(#[source] io::Error),
    #[error("cannot pin the worker to CPU {0}: {1}")]
    Pin(usize, #[source] io::Error),
    #[error("cannot start the worker thread: {0}")]
    Thread(#[source] io::Error),
}

const TAG_READ: u64 = 1;
const TAG_WRITE: u64 = 2;
const TAG_WAKE: u64 = 3;
const TAG_CANCEL: u64 = 4;
/// A read into a stream port's reassembly buffer.
const TAG_STREAM_READ: u64 = 5;
/// A batch of frames sent on a stream port with one sendmsg.
const TAG_STREAM_SEND: u64 = 6;
/// A frame sent behind an encapsulation header; the buffer field holds the header slot.
const TAG_ENCAP_WRITE: u64 = 7;
/// A run of frames sent with one UDP GSO sendmsg; the buffer field holds the slot.
const TAG_GSO_SEND: u64 = 8;
/// A polled tap became readable.
const TAG_POLL: u64 = 10;
/// A completion of a port's multishot receive; the buffer comes from the port's buffer ring.
const TAG_RECV_MULTI: u64 = 9;

/// Completions a coalescing wait asks for.
const COALESCE_BATCH: usize = 32;
/// Frames in a wake-up from which the next wait coalesces.
const COALESCE_FROM: usize = 2;

#[inline]
fn tag(op: u64, port: PortId, buf: BufIndex) -> u64 {
    op << 56 | (port.0 as u64) << 32 | buf.0 as u64
}

#[inline]
fn untag(ud: u64) -> (u64, PortId, BufIndex) {
    (ud >> 56, PortId((ud >> 32) as u16), BufIndex(ud as u32))
}

struct IoPort {
    entry: Arc<PortEntry>,
    /// Where frames are read from.
    file: FileRef,
    /// Where frames are written to (the same file unless the port has a `tx_fd`).
    tx_file: FileRef,
    io: PortIo,
    rx: RxMode,
    /// A datagram socket port: its sends batch (UDP GSO, one sendmsg per run), so a wait
    /// that gathers its frames saves work; a tap writes one frame per write either way.
    batches: bool,
    /// Receive operations in flight (reads, or the one multishot receive).
    reads: u32,
    writes: u32,
    /// Receiving failed for good; no more reads are armed.
    failed: bool,
    /// Removed from the configuration; waiting for its I/O to finish.
    draining: bool,
}

/// Wakes a worker out of `io_uring_enter` and asks it to stop.
#[derive(Clone)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    wake: Arc<OwnedFd>,
}

impl StopHandle {
    /// Asks the worker to stop; returns at once.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        kick(&self.wake);
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
    link: WorkerLink,
    wake_buf: Box<u64>,
    rx_depth: u32,
    tap_rx: TapRx,
    rx_coalesce: Duration,
    /// Frames the last wake-up brought from ports whose sends batch (they decide whether the
    /// next wait coalesces: taps alone never make it wait).
    last_batch: usize,
    /// Writes handed to the kernel and not yet completed.
    writes: u64,
    tx_depth: usize,
    max_frame: usize,
    /// Generation of the snapshot the ports were last reconciled with.
    generation: u64,
    /// A port index was wanted while its previous port was still draining: reconcile again
    /// once the drain ends.
    retry: bool,
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

impl Worker {
    /// Builds a worker that serves the ports of `link`'s snapshots.
    pub fn new(cfg: &WorkerConfig, link: WorkerLink) -> Result<Worker, WorkerError> {
        let buf_size = (cfg.max_frame + 1).next_power_of_two().max(2048);
        let default_pool = (cfg.max_ports * cfg.rx_depth as usize * 2).clamp(4096, 65536);
        let pool = BufferPool::new(
            cfg.pool_buffers.unwrap_or(default_pool).next_power_of_two(),
            buf_size,
        )?;
        let entries = ((cfg.max_ports as u32) * (cfg.rx_depth + cfg.tx_depth as u32) + 16)
            .next_power_of_two()
            .clamp(256, 4096);
        let ring = Ring::new(entries, pool, 2 * cfg.max_ports as u32, cfg.rx_multishot)
            .map_err(WorkerError::Ring)?;
        let counters = Arc::new(WorkerCounters::default());
        Ok(Worker {
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
            link,
            wake_buf: Box::new(0),
            rx_depth: cfg.rx_depth,
            tap_rx: cfg.tap_rx,
            rx_coalesce: cfg.rx_coalesce,
            last_batch: 0,
            writes: 0,
            tx_depth: cfg.tx_depth,
            max_frame: cfg.max_frame,
            generation: 0,
            retry: false,
            epoch: Instant::now(),
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

    /// Builds the worker and runs it on a new thread, pinned when `cfg.cpu` says so.
    pub fn spawn(cfg: WorkerConfig, link: WorkerLink) -> Result<WorkerHandle, WorkerError> {
        type Ready = (StopHandle, Arc<WorkerCounters>, RingFeatures, bool);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Ready, WorkerError>>(1);
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
                let mut w = match Worker::new(&cfg, link) {
                    Ok(w) => w,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return Ok(());
                    }
                };
                let ready = (
                    w.stop_handle(),
                    w.counters.clone(),
                    w.features(),
                    w.ring.pool().huge_pages(),
                );
                let _ = tx.send(Ok(ready));
                w.run()
            })
            .map_err(WorkerError::Thread)?;
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
        // outlives the ring's use of it (the ring is dropped with the worker, which completes
        // or cancels the read first).
        unsafe {
            self.ring
                .push_read_u64(self.link.wake.as_raw_fd(), target, TAG_WAKE << 56)
        }
        .map_err(WorkerError::Enter)
    }

    /// Brings the ports in line with the newest snapshot, if there is one.
    fn reconcile(&mut self) -> Result<(), WorkerError> {
        let snap: Arc<Snapshot> = self.link.snapshot.load_full();
        if snap.generation == self.generation && !self.retry {
            return Ok(());
        }
        self.generation = snap.generation;
        self.retry = false;
        for i in 0..self.ports.len() {
            let id = PortId(i as u16);
            let want = snap.ports.get(i).cloned().flatten();
            let same = match (&self.ports[i], &want) {
                (Some(cur), Some(w)) => Arc::ptr_eq(&cur.entry.fd, &w.fd) && !cur.draining,
                _ => false,
            };
            if same {
                let w = want.expect("checked above");
                let cur = self.ports[i].as_mut().expect("checked above");
                if cur.entry.domain != w.domain {
                    let _ = self.engine.set_domain(id, w.domain);
                }
                if cur.entry.link_up != w.link_up && !cur.failed {
                    let _ = self.engine.set_link(id, w.link_up);
                }
                cur.entry = w;
                continue;
            }
            if self.ports[i].is_some() {
                self.begin_drain(id)?;
                if want.is_some() {
                    self.retry = true;
                }
                continue;
            }
            if let Some(w) = want {
                self.add_port(id, w)?;
            }
        }
        if snap.ports.len() > self.ports.len()
            && snap.ports[self.ports.len()..].iter().any(Option::is_some)
        {
            eprintln!(
                "ringswitch: configuration names ports beyond this worker's {} slots; ignored",
                self.ports.len()
            );
        }
        self.finish_drains();
        Ok(())
    }

    fn add_port(&mut self, id: PortId, entry: Arc<PortEntry>) -> Result<(), WorkerError> {
        let rx = self.rx_mode(id, &entry);
        let slot = 2 * id.0 as u32;
        let file = self
            .ring
            .register_file(slot, entry.fd.as_raw_fd())
            .map_err(WorkerError::Ring)?;
        let tx_file = match &entry.tx_fd {
            Some(fd) => self
                .ring
                .register_file(slot + 1, fd.as_raw_fd())
                .map_err(WorkerError::Ring)?,
            None => file,
        };
        let io = match &entry.framing {
            Framing::Datagram => PortIo::Datagram,
            Framing::UdpGso => PortIo::Gso((0..GSO_SLOTS).map(|_| GsoSlot::new()).collect()),
            Framing::Stream => PortIo::Stream(Box::new(StreamPort {
                rx: StreamRx::new(),
                reading: false,
                tx: StreamTx::new(self.tx_depth.min(512)),
            })),
            Framing::L2tpv3(codec) => PortIo::Encap(Box::new(EncapPort {
                codec: codec.clone(),
                seq: 0,
                slots: (0..self.tx_depth)
                    .map(|_| EncapSlot {
                        hdr: [0; L2TP_MAX_HEADER],
                        iov: [libc::iovec {
                            iov_base: std::ptr::null_mut(),
                            iov_len: 0,
                        }; 2],
                        buf: BufIndex(0),
                        busy: false,
                    })
                    .collect(),
                next: 0,
            })),
        };
        let conf = PortConf {
            domain: entry.domain,
            link_up: entry.link_up,
        };
        self.engine
            .add_port(id, conf, entry.counters.clone())
            .expect("index within max_ports and free");
        self.ports[id.index()] = Some(IoPort {
            entry,
            file,
            tx_file,
            batches: matches!(io, PortIo::Gso(_) | PortIo::Encap(_))
                || matches!(
                    rx,
                    RxMode::Multishot {
                        op: Multi::Recv,
                        ..
                    }
                ),
            io,
            rx,
            reads: 0,
            writes: 0,
            failed: false,
            draining: false,
        });
        Ok(())
    }

    /// Stops all traffic to and from a removed port and cancels its reads.
    fn begin_drain(&mut self, id: PortId) -> Result<(), WorkerError> {
        let Some(p) = &mut self.ports[id.index()] else {
            return Ok(());
        };
        if p.draining {
            return Ok(());
        }
        p.draining = true;
        let (file, tx_file, separate) = (p.file, p.tx_file, p.entry.tx_fd.is_some());
        let _ = self.engine.remove_port(id);
        let pool = self.ring.pool_mut();
        self.tx.discard(id, |f: TxDesc| pool.release(f.buf));
        self.ring
            .push_cancel_file(file, TAG_CANCEL << 56)
            .map_err(WorkerError::Enter)?;
        if separate {
            self.ring
                .push_cancel_file(tx_file, TAG_CANCEL << 56)
                .map_err(WorkerError::Enter)?;
        }
        Ok(())
    }

    /// Forgets drained ports; reports the configuration applied once nothing is draining.
    fn finish_drains(&mut self) {
        for i in 0..self.ports.len() {
            let done =
                matches!(&self.ports[i], Some(p) if p.draining && p.reads == 0 && p.writes == 0);
            if done {
                if let Some(IoPort {
                    rx:
                        RxMode::Multishot { .. }
                        | RxMode::Polled(multishot::Polled {
                            multishot: true, ..
                        }),
                    ..
                }) = &self.ports[i]
                {
                    // SAFETY: `reads` is zero: the port's multishot receive has delivered its
                    // last completion, and no other operation selects from its group.
                    let _ = unsafe { self.ring.close_buf_ring(BufGroup(i as u16)) };
                }
                // Dropping the entry releases the worker's reference to the descriptor.
                self.ports[i] = None;
                let _ = self.ring.register_file(2 * i as u32, -1);
                let _ = self.ring.register_file(2 * i as u32 + 1, -1);
            }
        }
        let draining = self.ports.iter().flatten().any(|p| p.draining);
        if !draining && !self.retry {
            self.link.applied.store(self.generation, Ordering::Release);
        }
    }

    fn serve_requests(&mut self) {
        while let Ok(r) = self.link.requests.try_recv() {
            let now = self.now();
            match r {
                Request::DumpMacs(reply) => {
                    let _ = reply.send(self.engine.mac_table().entries(now).collect());
                }
                Request::FlushMacs(port, reply) => {
                    let t = self.engine.mac_table_mut();
                    let n = match port {
                        Some(p) => t.flush_port(p),
                        None => {
                            let n = t.len(now);
                            t.clear();
                            n
                        }
                    };
                    let _ = reply.send(n);
                }
                Request::Buffers(reply) => {
                    let pool = self.ring.pool();
                    let ring = &self.ring;
                    let _ = reply.send(BufferStats {
                        total: pool.capacity(),
                        free: pool.available(),
                        // Stream reads go to the port's own buffer, not the pool; a buffer
                        // ring holds pool buffers whether or not its receive is armed.
                        reads_in_flight: self
                            .ports
                            .iter()
                            .enumerate()
                            .filter_map(|(i, p)| Some((i, p.as_ref()?)))
                            .map(|(i, p)| match (&p.rx, &p.io) {
                                (RxMode::Multishot { .. }, _) => {
                                    ring.buf_ring_held(BufGroup(i as u16))
                                }
                                (RxMode::Polled(st), _) if st.multishot => {
                                    ring.buf_ring_held(BufGroup(i as u16)) + p.reads as usize
                                        - usize::from(st.armed)
                                }
                                (_, PortIo::Stream(_)) => 0,
                                _ => p.reads as usize,
                            })
                            .sum(),
                        writes_in_flight: self.writes as usize,
                        queued: self.tx.len(),
                    });
                }
                Request::Flood { ingress, frame } => {
                    let pool = self.ring.pool_mut();
                    let Some(b) = pool.alloc() else {
                        self.counters.rx_starved.inc();
                        continue;
                    };
                    let n = frame.len().min(pool.buf_size());
                    pool.buf_mut(b)[..n].copy_from_slice(&frame[..n]);
                    let desc = TxDesc {
                        buf: b,
                        off: 0,
                        len: n as u32,
                    };
                    self.engine.flood_from(pool, ingress, desc, &mut self.tx);
                }
            }
        }
    }

    fn now(&self) -> u32 {
        self.epoch.elapsed().as_secs() as u32
    }

    /// Tops up every port's in-flight reads.
    fn arm_reads(&mut self) -> Result<(), WorkerError> {
        for i in 0..self.ports.len() {
            let Some(p) = &mut self.ports[i] else {
                continue;
            };
            if p.failed || p.draining {
                continue;
            }
            let port = PortId(i as u16);
            let file = p.file;
            match p.rx {
                RxMode::Multishot { .. } => {
                    self.arm_multishot(port)?;
                    continue;
                }
                RxMode::Polled(_) => {
                    self.arm_polled(port)?;
                    continue;
                }
                RxMode::Reads => {}
            }
            if let PortIo::Stream(st) = &mut p.io {
                if !st.reading {
                    let target = st.rx.read_target();
                    let (ptr, len) = (target.as_mut_ptr(), target.len().min(u32::MAX as usize));
                    // SAFETY: the reassembly buffer is boxed in the port, which outlives the
                    // read (a port is dropped only once `reads` is back to zero), and nothing
                    // touches it until the completion (`reading` is set).
                    unsafe {
                        self.ring.push_read_into(
                            file,
                            ptr,
                            len as u32,
                            tag(TAG_STREAM_READ, port, BufIndex(0)),
                        )
                    }
                    .map_err(WorkerError::Enter)?;
                    st.reading = true;
                    p.reads += 1;
                }
                continue;
            }
            let missing = self.rx_depth - p.reads;
            let mut armed = 0;
            for _ in 0..missing {
                let Some(buf) = self.ring.pool_mut().alloc() else {
                    self.counters.rx_starved.inc();
                    break;
                };
                // SAFETY: `buf` was just allocated, so nothing else refers to it; it is
                // touched again only when this read's completion is reaped.
                unsafe { self.ring.push_read(file, buf, tag(TAG_READ, port, buf)) }
                    .map_err(WorkerError::Enter)?;
                armed += 1;
            }
            p.reads += armed;
        }
        Ok(())
    }

    /// Hands every queued frame the ports can take now to the kernel.
    fn flush_tx(&mut self) -> Result<(), WorkerError> {
        let mut i = 0;
        while i < self.tx.pending().len() {
            let port = self.tx.pending()[i];
            let before = self.tx.pending().len();
            let taken = self.submit_port(port)?;
            self.tx.consume(port, taken);
            if self.tx.pending().len() == before {
                i += 1;
            }
        }
        Ok(())
    }

    /// The port's connection or kernel object failed for good (its interface was deleted,
    /// the peer closed the stream, the stream is out of step): stop receiving on it and take
    /// its link down so nothing is sent to it, rather than spin on errors, and tell the
    /// control plane. Other ports are not disturbed.
    fn close_port(&mut self, port: PortId, reason: String) {
        let Some(p) = &mut self.ports[port.index()] else {
            return;
        };
        if p.failed || p.draining {
            return;
        }
        p.failed = true;
        let _ = self.engine.set_link(port, false);
        let pool = self.ring.pool_mut();
        self.tx.discard(port, |f: TxDesc| pool.release(f.buf));
        let _ = self.link.events.send(WorkerEvent::PortClosed {
            port,
            fd: p.entry.fd.as_raw_fd(),
            reason,
        });
    }

    fn complete(&mut self, c: Completion) -> Result<(), WorkerError> {
        let (op, port, buf) = untag(c.user_data);
        match op {
            TAG_READ => {
                let live = match &mut self.ports[port.index()] {
                    Some(p) => {
                        p.reads -= 1;
                        !p.draining && !p.failed
                    }
                    None => false,
                };
                if live && self.polled_read(port, c.result) {
                    self.ring.pool_mut().release(buf);
                } else if c.result == -libc::EOPNOTSUPP {
                    // The rest of a RWF_NOWAIT round that the tap refused; the port went
                    // back to blocking reads at the first of them.
                    self.ring.pool_mut().release(buf);
                } else if c.result >= 0 && live {
                    self.received(port, buf, c.result as usize);
                } else {
                    self.ring.pool_mut().release(buf);
                    if live && c.result < 0 {
                        self.receive_failed(port, c.result);
                    }
                }
            }
            TAG_RECV_MULTI => self.multishot_completed(port, c),
            TAG_POLL => self.poll_completed(port, c.result),
            TAG_WRITE => {
                self.writes -= 1;
                if let Some(p) = &mut self.ports[port.index()] {
                    p.writes -= 1;
                    let ctr = &p.entry.counters;
                    if c.result >= 0 {
                        ctr.tx_frames.inc();
                        ctr.tx_bytes.add(c.result as u64);
                    } else if c.result == -libc::EIO {
                        // A tap whose kernel side is administratively down refuses frames
                        // with EIO (and counts them in its own rx_dropped).
                        ctr.count_drop(DropReason::LinkDown);
                    } else if c.result != -libc::ECANCELED {
                        ctr.count_drop(DropReason::TxError);
                    }
                }
                self.ring.pool_mut().release(buf);
            }
            TAG_STREAM_READ => self.stream_read(port, c.result),
            TAG_STREAM_SEND => self.stream_sent(port, c.result),
            TAG_GSO_SEND => self.gso_sent(port, buf.index(), c.result),
            TAG_ENCAP_WRITE => self.encap_sent(port, buf.index(), c.result),
            TAG_WAKE => {
                if !self.link.stop.load(Ordering::Acquire) {
                    self.arm_wake()?;
                }
            }
            TAG_CANCEL => {}
            _ => unreachable!("unknown completion tag {op}"),
        }
        Ok(())
    }

    /// A receive on a datagram port failed with `result`: carry on after a transient error,
    /// close the port after any other.
    fn receive_failed(&mut self, port: PortId, result: i32) {
        let transient = matches!(
            -result,
            libc::ECANCELED
                | libc::EINTR
                | libc::EAGAIN
                | libc::ENOBUFS
                // A connected datagram socket reports the ICMP answer to an earlier send
                // (peer away, unreachable) on its next receive: the peer may come back, so
                // the port carries on.
                | libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::ENOPROTOOPT
        );
        if transient {
            return;
        }
        if let Some(p) = &self.ports[port.index()] {
            p.entry.counters.count_drop(DropReason::RxError);
        }
        let reason = format!("receive failed: {}", io::Error::from_raw_os_error(-result));
        self.close_port(port, reason);
    }

    fn forward_batch(&mut self) {
        let ports = &self.ports;
        self.last_batch = self
            .rx
            .iter()
            .filter(|d| matches!(&ports[d.port.index()], Some(p) if p.batches))
            .count();
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
        let now = self.now();
        self.engine
            .forward(self.ring.pool_mut(), &self.rx, &mut self.tx, now);
        self.rx.clear();
    }

    fn reap_and_complete(&mut self, skip_wake: bool) -> Result<(), WorkerError> {
        self.cqes.clear();
        self.ring.reap(&mut self.cqes);
        self.counters.completions.add(self.cqes.len() as u64);
        for i in 0..self.cqes.len() {
            let c = self.cqes[i];
            if skip_wake && untag(c.user_data).0 == TAG_WAKE {
                continue;
            }
            self.complete(c)?;
        }
        Ok(())
    }

    /// Runs until asked to stop.
    pub fn run(&mut self) -> Result<(), WorkerError> {
        self.arm_wake()?;
        while !self.link.stop.load(Ordering::Acquire) {
            self.reconcile()?;
            self.serve_requests();
            self.arm_reads()?;
            self.flush_tx()?;
            let coalesce = if self.last_batch >= COALESCE_FROM {
                self.rx_coalesce
            } else {
                Duration::ZERO
            };
            self.ring
                .submit_and_wait_batch(COALESCE_BATCH, coalesce)
                .map_err(WorkerError::Enter)?;
            self.counters.wakeups.inc();
            self.reap_and_complete(false)?;
            self.forward_batch();
            if self.ports.iter().flatten().any(|p| p.draining) {
                self.finish_drains();
            }
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
            self.reap_and_complete(true)?;
            self.forward_batch();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        let ud = tag(TAG_GSO_SEND, PortId(1023), BufIndex(0xdead_beef));
        assert_eq!(
            untag(ud),
            (TAG_GSO_SEND, PortId(1023), BufIndex(0xdead_beef))
        );
    }
}
