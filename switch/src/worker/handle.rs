//! How a worker is sized (`WorkerConfig`), started on a thread of its own and pinned
//! (`Worker::spawn`), stopped (`StopHandle`) and joined (`WorkerHandle`).

use super::{PollMode, Worker};
use crate::config::WorkerLink;
use crate::counters::WorkerCounters;
use crate::ids::WorkerId;
use crate::pool::PoolRegistry;
use crate::port::TapRx;
use crate::sys::fd::kick;
use crate::sys::uring::RingFeatures;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Sizing of a worker.
#[derive(Clone)]
pub struct WorkerConfig {
    /// Which worker this is (the home of its buffers).
    pub id: WorkerId,
    /// Largest frame accepted, in bytes (without FCS).
    pub max_frame: usize,
    /// MAC table capacity (entries) and ageing time (seconds).
    pub mac_capacity: usize,
    pub mac_ageing: u32,
    /// Reads kept in flight per port; on a port receiving with multishot, the size of its
    /// provided-buffer ring (rounded up to a power of two).
    pub rx_depth: u32,
    /// Receive on datagram socket ports with one multishot recv over a provided-buffer ring,
    /// where the kernel supports it (otherwise, and when false, with `rx_depth` reads).
    pub rx_multishot: bool,
    /// How taps receive.
    pub tap_rx: TapRx,
    /// Under load (the last wake-up brought `COALESCE_FROM` frames or more from ports whose
    /// completions are worth gathering, `Caps::coalesce`), wait up to this long for a batch of
    /// `COALESCE_BATCH` completions before handling them, so that one wake-up and one send per
    /// port carry many frames; zero turns it off. A lone frame is never held back: the wait
    /// after a quiet spell ends at the first completion.
    pub rx_coalesce: Duration,
    /// Frames a port's transmit queue holds.
    pub tx_depth: usize,
    /// Most ports this worker can serve at once (slots), and the switch-wide port ids it
    /// understands (0..max_ports).
    pub max_ports: usize,
    /// Small frame buffers in the pool (default: enough for every port's reads, twice).
    pub pool_buffers: Option<usize>,
    /// Large (64 KiB) frame buffers in the pool, for ports that receive offloaded segments
    /// (`vnet_hdr` taps). Their memory is mapped at start and committed as they are used.
    pub large_buffers: usize,
    /// The return queues shared with the other workers (a registry of its own if none).
    pub registry: Option<Arc<PoolRegistry>>,
    /// The rings to and from the other workers of the switch (`None`: the only worker). Its
    /// registry is the one used.
    pub fabric: Option<Arc<crate::fabric::Fabric>>,
    /// Core to pin the worker thread to.
    pub cpu: Option<usize>,
    /// How the worker waits for completions.
    pub poll: PollMode,
    /// The longest the adaptive poll goes on after the last work before sleeping.
    pub poll_max: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: WorkerId(0),
            max_frame: 65535,
            mac_capacity: 65536,
            mac_ageing: 300,
            rx_depth: 64,
            rx_multishot: true,
            tap_rx: TapRx::Polled,
            rx_coalesce: Duration::from_micros(50),
            tx_depth: 256,
            max_ports: 64,
            pool_buffers: None,
            large_buffers: 4096,
            registry: None,
            fabric: None,
            cpu: None,
            poll: PollMode::Adaptive,
            poll_max: Duration::from_micros(100),
        }
    }
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("id", &self.id)
            .field("max_frame", &self.max_frame)
            .field("rx_depth", &self.rx_depth)
            .field("tap_rx", &self.tap_rx)
            .field("max_ports", &self.max_ports)
            .field("cpu", &self.cpu)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
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
    Pin(usize, String),
    #[error("cannot start the worker thread: {0}")]
    Thread(#[source] io::Error),
    #[error("stopped with {writes} write(s) in flight and {queued} frame(s) queued after draining for {after:?} (a port whose peer does not take frames); they are lost")]
    Undrained {
        writes: u32,
        queued: usize,
        after: Duration,
    },
}

/// Wakes a worker out of `io_uring_enter` and asks it to stop.
#[derive(Clone)]
pub struct StopHandle {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) wake: Arc<OwnedFd>,
}

impl StopHandle {
    /// Asks the worker to stop; returns at once.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        kick(&*self.wake);
    }
}

/// A worker running on its own thread.
pub struct WorkerHandle {
    pub id: WorkerId,
    pub cpu: Option<usize>,
    pub poll: PollMode,
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

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> Result<(), String> {
    let known = core_affinity::get_core_ids().unwrap_or_default();
    if !known.iter().any(|c| c.id == cpu) {
        return Err(format!(
            "no such CPU here (this process may run on {:?})",
            known.iter().map(|c| c.id).collect::<Vec<_>>()
        ));
    }
    if core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
        Ok(())
    } else {
        Err(io::Error::last_os_error().to_string())
    }
}

impl Worker {
    /// Builds the worker and runs it on a new thread, pinned when `cfg.cpu` says so.
    pub fn spawn(cfg: WorkerConfig, link: WorkerLink) -> Result<WorkerHandle, WorkerError> {
        type Ready = (StopHandle, Arc<WorkerCounters>, RingFeatures, bool);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Ready, WorkerError>>(1);
        let (id, cpu, poll) = (cfg.id, cfg.cpu, cfg.poll);
        let thread = std::thread::Builder::new()
            .name(format!("rs-worker{}", cfg.id.0))
            .spawn(move || {
                // Build on the worker's own thread: SINGLE_ISSUER binds the ring to it.
                if let Some(cpu) = cfg.cpu {
                    if let Err(e) = pin_current_thread(cpu) {
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
                id,
                cpu,
                poll,
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
}
