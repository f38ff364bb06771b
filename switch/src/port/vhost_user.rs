//! vhost-user ports, the data path: a guest's virtio-net queues in memory it shares with the
//! switch, served from the port's worker inside its io_uring loop.
//!
//! The vhost-user protocol (the frontend's messages on the chardev socket: features, the
//! memory table, ring addresses, kick and call eventfds) is spoken by the control side
//! (`ringswitch_backends::vhost_user`). It describes what the rings look like in a
//! `VhostConf` and publishes it through `VhostShared`: it bumps a generation and wakes the
//! port with an eventfd. The port looks at the generation once per loop (one atomic load)
//! and, when it moved, takes the lock once to apply the change. Nothing else is shared: the
//! rings themselves are the worker's alone while they run, and stopping a ring
//! (`GET_VRING_BASE`) is a change like any other, whose answer (the next available index) the
//! worker reports back.
//!
//! Queue 0 is the guest's receive queue (the switch writes frames into it), queue 1 its
//! transmit queue. Every chain starts with the 12-byte `virtio_net_hdr_v1` (VERSION_1), the
//! same header a `vnet_hdr` tap carries, so a guest's segments travel through the engine as
//! offload records and are cut for ports without offloads; toward the guest, segments and
//! partial checksums from `vnet_hdr` taps and other guests pass whole where its driver
//! negotiated them (`VIRTIO_NET_F_GUEST_*`, told to the engine whenever they change) and are
//! cut or completed for it otherwise. Rings and descriptor chains are walked by `vring` (our
//! own split-ring code, checked against rust-vmm's `virtio-queue` in
//! `switch/tests/vring_walk.rs`): guest memory resolved once per memory table, every index,
//! chain and buffer bounded; a frontend that hands the switch anything outside that gets its
//! port stopped and counted (`frontend_fault`), never a crash. With `queues=N` the port has N
//! queue pairs (`2k` receive, `2k + 1` transmit). They may be spread over several workers:
//! one instance of the port per worker (`VhostShared::spread`), instance `i` serving the pairs
//! `k` with `k % instances == i`, each with its own notify eventfd and applied generation. An
//! instance spreads the frames it sends to the guest over its own running receive rings by
//! flow.

use super::vring::{HostMem, RingError, SplitRing};
use super::{Caps, Closed, Cx, InFlight, Port, RxMode, Tag};
use crate::counters::DropReason;
use crate::frame::{Frame, Offload, OffloadSet};
use crate::pool::HEADROOM;
use crate::sys::uring::{Completion, Ring};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_memory::GuestMemoryMmap;

/// Guest memory as the switch maps it: the frontend's regions, shared.
pub type GuestMem = GuestMemoryMmap<()>;

/// The guest's receive queue (frames from the switch) of its first queue pair; that of pair
/// `k` is `2k`.
pub const RXQ: usize = 0;
/// The guest's transmit queue (frames to the switch) of its first queue pair; that of pair
/// `k` is `2k + 1`.
pub const TXQ: usize = 1;
/// The most queue pairs a port serves (`queues=N`, multiqueue).
pub const MAX_PAIRS: usize = 16;
/// Rings of that many queue pairs.
pub const QUEUES: usize = 2 * MAX_PAIRS;

/// `VIRTIO_RING_F_EVENT_IDX`.
pub const F_EVENT_IDX: u64 = 1 << 29;
/// `VIRTIO_NET_F_MRG_RXBUF`.
pub const F_MRG_RXBUF: u64 = 1 << 15;
/// `VIRTIO_NET_F_GUEST_*`: what the guest's driver takes (partial checksums, TSO, ECN, UFO).
pub const F_GUEST_CSUM: u64 = 1 << 1;
pub const F_GUEST_TSO4: u64 = 1 << 7;
pub const F_GUEST_TSO6: u64 = 1 << 8;
pub const F_GUEST_ECN: u64 = 1 << 9;
pub const F_GUEST_UFO: u64 = 1 << 10;

/// What a guest with acked `features` takes of offloaded frames as they are. Segments need
/// GUEST_CSUM as well (the spec makes it a condition of the TSO features).
pub fn guest_offloads(features: u64) -> OffloadSet {
    if features & F_GUEST_CSUM == 0 {
        return OffloadSet::NONE;
    }
    let mut s = OffloadSet::CSUM;
    for (bit, o) in [
        (F_GUEST_TSO4, OffloadSet::TSO4),
        (F_GUEST_TSO6, OffloadSet::TSO6),
        (F_GUEST_ECN, OffloadSet::ECN),
        (F_GUEST_UFO, OffloadSet::UFO),
    ] {
        if features & bit != 0 {
            s = s | o;
        }
    }
    s
}

/// Chains taken from the guest's transmit queue per loop pass, so one busy guest cannot hold
/// the worker.
const TX_BUDGET: usize = 256;
/// The most receive chains one frame may spread over (mergeable buffers): 64 KiB segments in
/// buffers of about 1.5 KiB take 44.
const MAX_CHAINS: usize = 64;
/// The most receive buffers (descriptors) one frame may spread over.
const MAX_PIECES: usize = 256;

/// Chains whose descriptors are fetched ahead of a walk.
const PREFETCH: u16 = 32;

const OP_KICK: u8 = 1;
const OP_NOTIFY: u8 = 2;

/// One ring as the frontend set it up, in guest-physical addresses.
#[derive(Debug, Clone, Default)]
pub struct VringConf {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// Where processing starts (`SET_VRING_BASE`).
    pub base: u16,
    pub kick: Option<Arc<OwnedFd>>,
    pub call: Option<Arc<OwnedFd>>,
    /// The frontend enabled it (`SET_VRING_ENABLE`, or implicitly without that feature).
    pub enabled: bool,
    /// It has a kick descriptor and has not been stopped (`GET_VRING_BASE`).
    pub started: bool,
}

impl VringConf {
    fn runs(&self) -> bool {
        self.enabled && self.started && self.size > 0
    }
}

/// Everything the control side says about the device.
#[derive(Debug, Default)]
pub struct VhostConf {
    pub mem: Option<Arc<GuestMem>>,
    /// Acked virtio features.
    pub features: u64,
    pub vrings: [VringConf; QUEUES],
    /// A MAC to announce for the guest (`VHOST_USER_SEND_RARP`: QEMU asks after a migration
    /// when the guest cannot announce itself), taken by the worker.
    pub rarp: Option<[u8; 6]>,
}

/// What the worker says back.
#[derive(Debug, Default)]
pub struct VhostReport {
    /// The next available index of each ring when the worker stopped serving it.
    pub bases: [Option<u16>; QUEUES],
    /// Why the worker stopped serving the device (a frontend fault), once.
    pub fault: Option<String>,
}

/// The meeting point of a vhost-user port's control side and its worker.
#[derive(Debug)]
pub struct VhostShared {
    gen: AtomicU64,
    /// The generation each instance (worker) serving the port last applied.
    applied: [AtomicU64; MAX_PAIRS],
    conf: Mutex<VhostConf>,
    report: Mutex<VhostReport>,
    /// Written by the control side after each change, read by each instance through its
    /// worker's ring (one per instance: each worker waits on its own).
    notify: Box<[OwnedFd]>,
    /// Messages the control side refused (a bogus memory table, ring addresses outside it,
    /// bad sizes), each of which ended the frontend's connection; the port counts them as
    /// `frontend_fault` (its counters have one writer, the worker).
    protocol_faults: AtomicU64,
    /// Which instances a worker serves (between their attach and detach): only those are
    /// waited for.
    served: [AtomicBool; MAX_PAIRS],
    /// Queue pairs offered (`GET_QUEUE_NUM`).
    pairs: usize,
    /// How many instances serve the port, each on its own worker: instance `i` serves the
    /// queue pairs `k` with `k % instances == i` (1 to `pairs`; set before the first
    /// instance is made, see `spread`).
    instances: std::sync::atomic::AtomicUsize,
}

impl VhostShared {
    pub fn new() -> io::Result<Arc<VhostShared>> {
        VhostShared::with_pairs(1)
    }

    /// For a port of `pairs` queue pairs (1 to `MAX_PAIRS`).
    pub fn with_pairs(pairs: usize) -> io::Result<Arc<VhostShared>> {
        let pairs = pairs.clamp(1, MAX_PAIRS);
        Ok(Arc::new(VhostShared {
            pairs,
            gen: AtomicU64::new(0),
            applied: std::array::from_fn(|_| AtomicU64::new(0)),
            conf: Mutex::new(VhostConf::default()),
            report: Mutex::new(VhostReport::default()),
            notify: (0..pairs)
                .map(|_| crate::sys::fd::eventfd())
                .collect::<io::Result<Vec<_>>>()?
                .into_boxed_slice(),
            protocol_faults: AtomicU64::new(0),
            served: std::array::from_fn(|_| AtomicBool::new(false)),
            instances: std::sync::atomic::AtomicUsize::new(1),
        }))
    }

    /// Spreads the queue pairs over up to `workers` instances (one per worker); returns how
    /// many there are: `min(pairs, workers)`. Called before the port's instances are made.
    pub fn spread(&self, workers: usize) -> usize {
        let n = workers.clamp(1, self.pairs);
        self.instances.store(n, Ordering::Release);
        n
    }

    /// How many instances serve the port.
    pub fn instances(&self) -> usize {
        self.instances.load(Ordering::Acquire)
    }

    /// Changes the configuration and wakes the worker; returns the change's generation.
    pub fn update(&self, change: impl FnOnce(&mut VhostConf)) -> u64 {
        let mut c = self.conf.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut c);
        let g = self.gen.fetch_add(1, Ordering::AcqRel) + 1;
        drop(c);
        for fd in self.notify.iter() {
            crate::sys::fd::kick(fd);
        }
        g
    }

    /// Reads the configuration (control side).
    pub fn with_conf<T>(&self, f: impl FnOnce(&VhostConf) -> T) -> T {
        f(&self.conf.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether a frontend has the device running: its memory table given and both rings of
    /// the first queue pair enabled and started (what `query-ports` reports as `connected`).
    pub fn running(&self) -> bool {
        self.with_conf(|c| c.mem.is_some() && c.vrings[..2].iter().all(VringConf::runs))
    }

    /// The queue pairs the port offers (`queues=N`).
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// Waits until every instance a worker serves has applied generation `g`, at most
    /// `timeout`. False if one has not (no worker serves the port yet, or one is stuck).
    pub fn wait_applied(&self, g: u64, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            let mut served = false;
            let mut behind = false;
            for i in 0..self.instances() {
                if self.served[i].load(Ordering::Acquire) {
                    served = true;
                    behind |= self.applied[i].load(Ordering::Acquire) < g;
                }
            }
            if !served {
                return false;
            }
            if !behind {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Takes the next available index the worker reported for ring `i`.
    pub fn take_base(&self, i: usize) -> Option<u16> {
        self.report.lock().unwrap_or_else(|p| p.into_inner()).bases[i].take()
    }

    /// Takes the fault the worker reported, if any.
    pub fn take_fault(&self) -> Option<String> {
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fault
            .take()
    }

    /// The control side refused a frontend's message and dropped its connection: counted by
    /// the port at the next change it applies.
    pub fn protocol_fault(&self) {
        self.protocol_faults.fetch_add(1, Ordering::AcqRel);
    }

    /// Forgets what the worker reported (a new frontend connection starts clean).
    pub fn clear_report(&self) {
        *self.report.lock().unwrap_or_else(|p| p.into_inner()) = VhostReport::default();
    }

    fn report(&self, f: impl FnOnce(&mut VhostReport)) {
        f(&mut self.report.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// A running ring.
struct Vq {
    ring: SplitRing,
    kick: Arc<OwnedFd>,
    call: Option<Arc<OwnedFd>>,
}

/// A frontend broke the rules.
#[derive(Debug)]
struct Fault(String);

impl From<RingError> for Fault {
    fn from(e: RingError) -> Fault {
        Fault(e.0)
    }
}

/// Where one frame goes in a guest's receive queue: the chains it takes and their buffers.
struct RxScratch {
    /// Each chain's head and how many of `pieces` are its.
    chains: [(u16, u16); MAX_CHAINS],
    /// Guest-physical address and length of each writable buffer.
    pieces: [(u64, u32); MAX_PIECES],
}

/// A vhost-user port as its worker serves it.
pub struct VhostUserPort {
    name: String,
    shared: Arc<VhostShared>,
    /// Which of the port's instances this is, and how many there are (see `VhostShared`).
    instance: usize,
    instances: usize,
    seen: u64,
    faults_seen: u64,
    mem: Option<HostMem>,
    mrg: bool,
    scratch: Box<RxScratch>,
    q: Box<[Option<Vq>; QUEUES]>,
    /// The 8-byte targets of the kick reads and of the notify read, boxed so they stay put.
    kick_buf: Box<[u64; QUEUES]>,
    kick_fd: Box<[Option<Arc<OwnedFd>>; QUEUES]>,
    kick_pending: [bool; QUEUES],
    notify_buf: Box<u64>,
    notify_pending: bool,
    /// Stopped by a fault until the frontend sets the device up again.
    faulted: bool,
    /// What the guest takes of offloaded frames, as the engine was last told.
    offloads: OffloadSet,
    /// The receive rings that run (frames are spread over them by flow), and how many.
    rx_rings: [u8; MAX_PAIRS],
    n_rx: usize,
    /// Rings of the queue pairs offered (`2 * queues`): the loops of every pass stop there.
    rings: usize,
}

impl VhostUserPort {
    /// The port's first instance (the only one unless `VhostShared::spread` made more).
    pub fn new(name: &str, shared: Arc<VhostShared>) -> VhostUserPort {
        VhostUserPort::instance(name, shared, 0)
    }

    /// Instance `instance` of the port: it serves the queue pairs `k` with
    /// `k % instances == instance`, from the worker it is placed on.
    pub fn instance(name: &str, shared: Arc<VhostShared>, instance: usize) -> VhostUserPort {
        let rings = 2 * shared.pairs;
        let instances = shared.instances();
        VhostUserPort {
            name: name.to_string(),
            shared,
            instance: instance.min(instances - 1),
            instances,
            seen: 0,
            faults_seen: 0,
            mem: None,
            mrg: false,
            scratch: Box::new(RxScratch {
                chains: [(0, 0); MAX_CHAINS],
                pieces: [(0, 0); MAX_PIECES],
            }),
            q: Box::new(std::array::from_fn(|_| None)),
            kick_buf: Box::new([0; QUEUES]),
            kick_fd: Box::new(std::array::from_fn(|_| None)),
            kick_pending: [false; QUEUES],
            rx_rings: [0; MAX_PAIRS],
            n_rx: 0,
            rings,
            notify_buf: Box::new(0),
            notify_pending: false,
            faulted: false,
            offloads: OffloadSet::NONE,
        }
    }

    /// Whether ring `i` is this instance's to serve.
    #[inline]
    fn owns(&self, i: usize) -> bool {
        (i / 2) % self.instances == self.instance
    }

    /// Picks up the control side's latest configuration.
    fn apply(&mut self, cx: &mut Cx<'_>, gen: u64) {
        let shared = self.shared.clone();
        let faults = shared.protocol_faults.load(Ordering::Acquire);
        // Protocol faults are the port's, counted once: by its first instance.
        if self.instance == 0 && faults > self.faults_seen {
            cx.counters
                .count_drops(DropReason::FrontendFault, faults - self.faults_seen);
            self.faults_seen = faults;
        }
        let mut conf = shared.conf.lock().unwrap_or_else(|p| p.into_inner());
        let rarp = if self.instance == 0 {
            conf.rarp.take()
        } else {
            None
        };
        let mem_changed = match (&self.mem, &conf.mem) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a.guest(), b),
            (None, None) => false,
            _ => true,
        };
        let features = conf.features;
        for i in 0..QUEUES {
            let want = &conf.vrings[i];
            let keep = match &self.q[i] {
                Some(q) => !mem_changed && want.runs() && q.ring.is(want),
                None => false,
            };
            if keep {
                let q = self.q[i].as_mut().expect("kept");
                q.call = want.call.clone();
                if let Some(k) = &want.kick {
                    q.kick = k.clone();
                }
                continue;
            }
            if let Some(q) = self.q[i].take() {
                let next = q.ring.next_avail();
                shared.report(|r| r.bases[i] = Some(next));
            }
        }
        if mem_changed {
            // (Rings were dropped above: none points into the old memory.)
            self.mem = conf.mem.clone().map(HostMem::new);
        }
        self.mrg = features & F_MRG_RXBUF != 0;
        let offloads = guest_offloads(features);
        if offloads != self.offloads {
            // The engine hands the guest whole segments from now on, or cuts them for it.
            self.offloads = offloads;
            cx.offloads = Some(offloads);
        }
        let offered = 2 * shared.pairs;
        if mem_changed || conf.vrings[..offered].iter().any(|v| !v.started) {
            // A new memory table or a stopped ring: the device is being set up again.
            self.faulted = false;
        }
        let mut fault = None;
        if !self.faulted {
            if let Some(mem) = &self.mem {
                for i in 0..QUEUES {
                    let want = &conf.vrings[i];
                    if self.q[i].is_some() || !want.runs() || !self.owns(i) {
                        continue;
                    }
                    let Some(kick) = want.kick.clone() else {
                        continue;
                    };
                    match SplitRing::new(mem, want, features & F_EVENT_IDX != 0) {
                        Ok(mut ring) => {
                            if cx.env.busy_poll {
                                // Looked at every pass: the guest need not kick.
                                ring.no_kicks();
                            }
                            self.q[i] = Some(Vq {
                                ring,
                                kick,
                                call: want.call.clone(),
                            })
                        }
                        Err(e) => {
                            fault = Some(e.into());
                            break;
                        }
                    }
                }
            }
        }
        drop(conf);
        if let Some(f) = fault {
            self.fault(cx, f);
        }
        self.list_rx_rings();
        if let Some(mac) = rarp {
            announce(cx, mac);
        }
        self.seen = gen;
        shared.applied[self.instance].store(gen, Ordering::Release);
    }

    /// Notes which receive rings run, for spreading frames over them.
    fn list_rx_rings(&mut self) {
        self.n_rx = 0;
        for i in (RXQ..self.rings).step_by(2) {
            if self.q[i].is_some() {
                self.rx_rings[self.n_rx] = i as u8;
                self.n_rx += 1;
            }
        }
    }

    /// Stops serving the device after a frontend fault: counted, reported to the control
    /// side (which resets the connection), and forgotten when the frontend sets it up again.
    fn fault(&mut self, cx: &mut Cx<'_>, f: Fault) {
        cx.counters.count_drop(DropReason::FrontendFault);
        self.faulted = true;
        for i in 0..QUEUES {
            if let Some(q) = self.q[i].take() {
                let next = q.ring.next_avail();
                self.shared.report(|r| r.bases[i] = Some(next));
            }
        }
        self.n_rx = 0;
        let msg = format!("vhost-user port {}: {}", self.name, f.0);
        self.shared.report(|r| r.fault = Some(msg));
    }

    /// Keeps a read armed on each running ring's kick eventfd, and on the notify eventfd.
    fn arm_reads(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        if !self.notify_pending {
            let target: *mut u64 = &mut *self.notify_buf;
            let tag = cx.tag(OP_NOTIFY, 0);
            // SAFETY: `notify_buf` is a heap cell of this port, read by nothing else; only
            // one read targets it at a time (`notify_pending`), and the port lives until its
            // reads are reaped (the worker drains `in_flight` before dropping it).
            unsafe {
                cx.ring
                    .push_read_u64(self.shared.notify[self.instance].as_raw_fd(), target, tag)?
            };
            self.notify_pending = true;
        }
        for i in 0..self.rings {
            if self.kick_pending[i] {
                if let Some(old) = &self.kick_fd[i] {
                    let same = matches!(&self.q[i], Some(q) if Arc::ptr_eq(old, &q.kick));
                    if !same {
                        // The kick descriptor changed or the ring stopped (its frontend
                        // went): cancel the read on the old one, so that its eventfd is let
                        // go; the next one is armed once that completes.
                        cx.ring
                            .push_cancel(cx.tag(OP_KICK, i as u32), cx.cancel_tag())?;
                        self.kick_fd[i] = None;
                    }
                }
                continue;
            }
            let Some(q) = &self.q[i] else { continue };
            let target: *mut u64 = &mut self.kick_buf[i];
            let tag = cx.tag(OP_KICK, i as u32);
            // SAFETY: as for the notify read: one read at a time per boxed cell
            // (`kick_pending`), the port outlives it.
            unsafe { cx.ring.push_read_u64(q.kick.as_raw_fd(), target, tag)? };
            self.kick_pending[i] = true;
            self.kick_fd[i] = Some(q.kick.clone());
        }
        Ok(())
    }

    /// Takes frames the guest transmitted, up to the budget.
    fn take_transmitted(&mut self, cx: &mut Cx<'_>) -> Result<(), Fault> {
        for i in (TXQ..self.rings).step_by(2) {
            self.take_transmitted_from(cx, i)?;
        }
        Ok(())
    }

    /// Takes frames the guest transmitted on ring `i`, up to the budget.
    #[inline]
    fn take_transmitted_from(&mut self, cx: &mut Cx<'_>, i: usize) -> Result<(), Fault> {
        let (Some(mem), Some(q)) = (self.mem.as_ref(), self.q[i].as_mut()) else {
            return Ok(());
        };
        q.ring.prefetch(PREFETCH);
        let mut taken = 0;
        while taken < TX_BUDGET {
            let Some(head) = q.ring.pop()? else {
                // Ask for a kick at the next entry, then look once more: an entry added in
                // between would otherwise wait for the next one.
                // (A busy-polling worker looks again at its next pass: no kicks wanted, so
                // the guest spends no system call on them.)
                if !cx.env.busy_poll && q.ring.event_idx() && q.ring.enable_notification() {
                    continue;
                }
                break;
            };
            taken += 1;
            receive_chain(cx, mem, &q.ring, head)?;
            q.ring.push_used(head, 0);
        }
        signal(q);
        Ok(())
    }

    /// Writes one frame into the guest's receive queue (published by `signal`); false if the
    /// guest has no room.
    fn write_received(&mut self, cx: &mut Cx<'_>, f: &Frame) -> Result<bool, Fault> {
        let pool = cx.ring.pool();
        let frame = &pool.buf(f.buf)[f.off as usize..f.off as usize + f.len as usize];
        // One ring per flow, so that a flow's frames stay in order (multiqueue).
        let ring = match self.n_rx {
            0 => return Ok(false),
            1 => self.rx_rings[0],
            n => self.rx_rings[flow_hash(frame) as usize % n],
        };
        let (Some(mem), Some(q)) = (self.mem.as_ref(), self.q[usize::from(ring)].as_mut()) else {
            return Ok(false);
        };
        let mut hdr = [0u8; Offload::WIRE_LEN];
        if f.has_offload() && self.offloads.contains(OffloadSet::CSUM) {
            // What the engine left whole is what the guest negotiated.
            pool.offload(f.buf).emit(&mut hdr);
        } else {
            // Checksums completed and segments cut for this guest: nothing to say (not even
            // DATA_VALID, which a guest without GUEST_CSUM did not ask for).
            Offload::NONE.emit(&mut hdr);
        }
        let want_kicks = !cx.env.busy_poll;
        write_frame(
            &mut q.ring,
            mem,
            &mut self.scratch,
            self.mrg,
            want_kicks,
            hdr,
            frame,
        )
    }
}

/// Sends QEMU's RARP announcement for `mac` as if the guest had: the switch learns the MAC
/// on this port (a migrated guest is found at once) and floods the frame.
fn announce(cx: &mut Cx<'_>, mac: [u8; 6]) {
    let frame = crate::ethernet::rarp_frame(crate::MacAddr(mac));
    let pool = cx.ring.pool_mut();
    let Some(buf) = pool.alloc() else {
        cx.counters.count_rx_drop(frame.len(), DropReason::NoBuffer);
        return;
    };
    pool.buf_mut(buf)[HEADROOM..HEADROOM + frame.len()].copy_from_slice(&frame);
    cx.deliver_with(buf, HEADROOM, frame.len(), 0);
}

/// Writes `hdr` and `frame` into the receive chains of `ring` (several with mergeable
/// buffers, `num_buffers` set), and adds them used; false (nothing taken) if the guest has
/// not posted room enough.
fn write_frame(
    ring: &mut SplitRing,
    mem: &HostMem,
    sc: &mut RxScratch,
    mrg: bool,
    want_kicks: bool,
    mut hdr: [u8; Offload::WIRE_LEN],
    frame: &[u8],
) -> Result<bool, Fault> {
    let total = Offload::WIRE_LEN + frame.len();
    // Gather chains until they hold the frame (one chain without mergeable buffers).
    let mut n = 0;
    let mut pieces = 0;
    let mut room = 0usize;
    while room < total {
        if n == MAX_CHAINS || (n == 1 && !mrg) || pieces == MAX_PIECES {
            break;
        }
        let Some(head) = ring.pop()? else {
            break;
        };
        let first = pieces;
        ring.walk(mem, head, |d| {
            // (Readable descriptors in a receive chain are skipped.)
            if d.write_only() && d.len > 0 {
                sc.pieces[pieces] = (d.addr, d.len);
                pieces += 1;
                room += d.len as usize;
            }
            Ok(room < total && pieces < MAX_PIECES)
        })?;
        sc.chains[n] = (head, (pieces - first) as u16);
        n += 1;
    }
    if room < total {
        // Not enough room: hand the chains back (the guest refills its queue) and drop.
        ring.unpop(n as u16);
        if n == 0 && want_kicks && ring.event_idx() {
            // Be told when the guest adds buffers.
            ring.enable_notification();
        }
        return Ok(false);
    }
    // The chains the frame spans (1 without mergeable buffers, where drivers ignore it).
    hdr[10..12].copy_from_slice(&(n as u16).to_le_bytes());
    let mut src: [&[u8]; 2] = [&hdr, frame];
    let mut s = 0;
    let mut p = 0;
    for &(head, count) in &sc.chains[..n] {
        let mut written = 0u32;
        for &(addr, len) in &sc.pieces[p..p + usize::from(count)] {
            let mut at = 0usize;
            let len = len as usize;
            while at < len && s < 2 {
                let k = (len - at).min(src[s].len());
                mem.write(addr.wrapping_add(at as u64), &src[s][..k])?;
                at += k;
                written += k as u32;
                src[s] = &src[s][k..];
                if src[s].is_empty() {
                    s += 1;
                }
            }
        }
        p += usize::from(count);
        ring.push_used(head, written);
    }
    Ok(true)
}

/// Copies the chain at `head` (virtio-net header, then the frame) into a pool buffer and
/// hands it to the engine. Bad frames are dropped and counted; bad memory is a fault.
fn receive_chain(cx: &mut Cx<'_>, mem: &HostMem, ring: &SplitRing, head: u16) -> Result<(), Fault> {
    let start = HEADROOM - Offload::WIRE_LEN;
    let pool = cx.ring.pool_mut();
    let Some(mut buf) = pool.alloc() else {
        // (The chain is still walked, for its faults.)
        let total = chain_len(mem, ring, head)?;
        cx.counters.count_rx_drop(
            total.saturating_sub(Offload::WIRE_LEN),
            DropReason::NoBuffer,
        );
        return Ok(());
    };
    // Most frames fit a small buffer: copy while walking, once.
    let mut total = 0usize;
    let data = &mut pool.buf_mut(buf)[start..];
    let copied = ring.walk(mem, head, |d| {
        if d.write_only() {
            return Err(RingError(
                "a transmit chain has a write-only descriptor".into(),
            ));
        }
        let len = d.len as usize;
        if let Some(to) = data.get_mut(total..total + len) {
            mem.read(d.addr, to)?;
        }
        total += len;
        Ok(true)
    });
    if let Err(e) = copied {
        pool.release(buf);
        return Err(e.into());
    }
    if total < Offload::WIRE_LEN + 14 {
        pool.release(buf);
        cx.counters.count_rx_drop(total, DropReason::Runt);
        return Ok(());
    }
    let frame_len = total - Offload::WIRE_LEN;
    if frame_len > cx.env.max_frame {
        pool.release(buf);
        cx.counters.count_rx_drop(frame_len, DropReason::Oversize);
        return Ok(());
    }
    if start + total > pool.size_of(buf) {
        // A large frame (a guest's segment): again into a large buffer.
        pool.release(buf);
        let Some(large) = pool.alloc_large() else {
            cx.counters.count_rx_drop(frame_len, DropReason::NoBuffer);
            return Ok(());
        };
        buf = large;
        if start + total > pool.size_of(buf) {
            pool.release(buf);
            cx.counters.count_rx_drop(frame_len, DropReason::Oversize);
            return Ok(());
        }
        let data = &mut pool.buf_mut(buf)[start..start + total];
        if let Err(e) = copy_chain(mem, ring, head, data) {
            pool.release(buf);
            return Err(e);
        }
    }
    let data = pool.buf_mut(buf);
    let mut h = [0u8; Offload::WIRE_LEN];
    h.copy_from_slice(&data[start..HEADROOM]);
    let o = Offload::parse(&h);
    if !o.fits(frame_len) {
        cx.counters.count_rx_drop(frame_len, DropReason::BadOffload);
        cx.release(buf);
        return Ok(());
    }
    let flags = if o.is_plain() {
        0
    } else {
        cx.ring.pool_mut().set_offload(buf, o);
        Frame::OFFLOAD
    };
    cx.deliver_with(buf, HEADROOM, frame_len, flags);
    Ok(())
}

/// The bytes of the readable chain at `head`.
fn chain_len(mem: &HostMem, ring: &SplitRing, head: u16) -> Result<usize, Fault> {
    let mut total = 0usize;
    ring.walk(mem, head, |d| {
        if d.write_only() {
            return Err(RingError(
                "a transmit chain has a write-only descriptor".into(),
            ));
        }
        total += d.len as usize;
        Ok(true)
    })?;
    Ok(total)
}

/// Copies the readable chain at `head` into `dst`, which an earlier walk sized. The guest may
/// have changed its descriptors since: a chain that no longer fits is a fault.
fn copy_chain(mem: &HostMem, ring: &SplitRing, head: u16, dst: &mut [u8]) -> Result<usize, Fault> {
    let mut at = 0usize;
    ring.walk(mem, head, |d| {
        if d.write_only() {
            return Err(RingError(
                "a transmit chain has a write-only descriptor".into(),
            ));
        }
        let len = d.len as usize;
        let Some(to) = dst.get_mut(at..at + len) else {
            return Err(RingError("a transmit chain grew while it was read".into()));
        };
        mem.read(d.addr, to)?;
        at += len;
        Ok(true)
    })?;
    Ok(at)
}

/// For the fuzz target: sets up ring `TXQ` and `RXQ` as `conf` describes them over `mem`, as
/// the worker does, then takes up to 16 transmit chains (each copied into `buf`, as a frame
/// is) and writes `frame` into the receive ring up to 16 times. Returns the chains taken and
/// frames written, or the fault the worker would count. Never panics, whatever `mem` holds.
#[doc(hidden)]
pub fn walk_rings(
    mem: &Arc<GuestMem>,
    conf: &VhostConf,
    buf: &mut [u8],
    frame: &[u8],
) -> Result<(usize, usize), String> {
    let mem = HostMem::new(mem.clone());
    let mut taken = 0;
    let mut written = 0;
    let mrg = conf.features & F_MRG_RXBUF != 0;
    let event_idx = conf.features & F_EVENT_IDX != 0;
    if conf.vrings[TXQ].size > 0 {
        let mut ring = SplitRing::new(&mem, &conf.vrings[TXQ], event_idx).map_err(|e| e.0)?;
        while taken < 16 {
            let Some(head) = ring.pop().map_err(|e| e.0)? else {
                ring.enable_notification();
                break;
            };
            let total = chain_len(&mem, &ring, head).map_err(|f| f.0)?;
            if total <= buf.len() {
                copy_chain(&mem, &ring, head, &mut buf[..total]).map_err(|f| f.0)?;
            }
            ring.push_used(head, 0);
            taken += 1;
        }
        let _ = ring.publish();
    }
    if conf.vrings[RXQ].size > 0 {
        let mut ring = SplitRing::new(&mem, &conf.vrings[RXQ], event_idx).map_err(|e| e.0)?;
        let mut sc = Box::new(RxScratch {
            chains: [(0, 0); MAX_CHAINS],
            pieces: [(0, 0); MAX_PIECES],
        });
        while written < 16 {
            if !write_frame(
                &mut ring,
                &mem,
                &mut sc,
                mrg,
                true,
                [0; Offload::WIRE_LEN],
                frame,
            )
            .map_err(|f| f.0)?
            {
                break;
            }
            written += 1;
        }
        let _ = ring.publish();
    }
    Ok((taken, written))
}

/// A hash of a frame's flow: addresses and ports of IPv4 and IPv6 TCP and UDP (not
/// fragments), the MAC addresses otherwise.
#[inline]
fn flow_hash(f: &[u8]) -> u32 {
    let word = |at: usize| -> u32 {
        f.get(at..at + 4)
            .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mix = |h: u32, w: u32| (h ^ w).wrapping_mul(0x9e37_79b1).rotate_left(13);
    let ethertype = f
        .get(12..14)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    let mut h = 0x5bd1_e995;
    match ethertype {
        0x0800 if f.len() >= 34 => {
            let ihl = usize::from(f[14] & 0x0f) * 4;
            h = mix(mix(h, word(26)), word(30));
            let fragment = u16::from_be_bytes([f[20], f[21]]) & 0x3fff != 0;
            if matches!(f[23], 6 | 17) && !fragment {
                h = mix(h, word(14 + ihl));
            }
        }
        0x86dd if f.len() >= 54 => {
            for at in (22..54).step_by(4) {
                h = mix(h, word(at));
            }
            if matches!(f[20], 6 | 17) {
                h = mix(h, word(54));
            }
        }
        _ => {
            h = mix(mix(mix(h, word(0)), word(4)), word(8));
        }
    }
    h ^ (h >> 16)
}

/// Publishes the used entries added since the last call and interrupts the guest if it wants
/// that.
#[inline]
fn signal(q: &mut Vq) {
    if q.ring.publish() {
        if let Some(call) = &q.call {
            crate::sys::fd::kick(&**call);
        }
    }
}

impl Port for VhostUserPort {
    fn attach(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        self.shared.served[self.instance].store(true, Ordering::Release);
        let g = self.shared.gen.load(Ordering::Acquire);
        self.apply(cx, g);
        self.arm_reads(cx)
    }

    #[inline]
    fn arm(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        let g = self.shared.gen.load(Ordering::Acquire);
        if g != self.seen {
            self.apply(cx, g);
        }
        if let Err(f) = self.take_transmitted(cx) {
            self.fault(cx, f);
        }
        self.arm_reads(cx)
    }

    fn complete(&mut self, _cx: &mut Cx<'_>, tag: Tag, _c: Completion) -> Result<(), Closed> {
        match tag.op {
            OP_NOTIFY => self.notify_pending = false,
            OP_KICK => {
                if let Some(p) = self.kick_pending.get_mut(tag.aux as usize) {
                    *p = false;
                }
            }
            _ => {}
        }
        // The work itself (the guest's frames, a new configuration) is picked up by `arm`,
        // which the worker calls after every batch of completions.
        Ok(())
    }

    fn send(&mut self, cx: &mut Cx<'_>, frames: &[Frame]) -> io::Result<usize> {
        for k in 0..self.n_rx {
            if let Some(q) = &self.q[usize::from(self.rx_rings[k])] {
                q.ring
                    .prefetch(frames.len().min(usize::from(PREFETCH)) as u16);
            }
        }
        for f in frames {
            match self.write_received(cx, f) {
                Ok(true) => cx.counters.count_tx(1, f.len as u64),
                Ok(false) => cx.counters.count_drop(DropReason::QueueFull),
                Err(e) => {
                    cx.counters.count_drop(DropReason::QueueFull);
                    self.fault(cx, e);
                }
            }
            cx.release(f.buf);
        }
        // The used entries of the whole batch go to the guest at once, with one interrupt
        // per ring.
        for k in 0..self.n_rx {
            if let Some(q) = self.q[usize::from(self.rx_rings[k])].as_mut() {
                signal(q);
            }
        }
        Ok(frames.len())
    }

    fn cancel(&mut self, cx: &mut Cx<'_>) -> io::Result<()> {
        if self.notify_pending {
            cx.ring.push_cancel(cx.tag(OP_NOTIFY, 0), cx.cancel_tag())?;
        }
        for i in 0..QUEUES {
            if self.kick_pending[i] {
                cx.ring
                    .push_cancel(cx.tag(OP_KICK, i as u32), cx.cancel_tag())?;
            }
        }
        Ok(())
    }

    fn in_flight(&self) -> InFlight {
        InFlight {
            reads: self.notify_pending as u32
                + self.kick_pending.iter().filter(|p| **p).count() as u32,
            writes: 0,
        }
    }

    fn detach(&mut self, _cx: &mut Cx<'_>) {
        self.shared.served[self.instance].store(false, Ordering::Release);
        for i in 0..QUEUES {
            if let Some(q) = self.q[i].take() {
                let next = q.ring.next_avail();
                self.shared.report(|r| r.bases[i] = Some(next));
            }
        }
        self.mem = None;
    }

    fn caps(&self) -> Caps {
        Caps {
            rx: RxMode::SharedRings,
            coalesce: false,
            // Not "takes everything" as a vnet_hdr tap: what the guest takes is negotiated
            // and changes with each frontend (`Cx::offloads`, from `apply`). Segments *from*
            // the guest travel as offload records either way.
            offloads: false,
            sends_now: false,
        }
    }

    fn rx_buffers(&self, _ring: &Ring) -> usize {
        0
    }
}
