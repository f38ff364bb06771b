//! Per-port and per-worker counters, readable from any thread while the worker runs, and the
//! one table of drop reasons every report is made from.
//!
//! Each counter has exactly one writer (the worker that owns the port), so an increment is a
//! relaxed load plus a relaxed store — plain moves on x86, no locked instruction — and readers
//! see a recent value without ever blocking the writer. What another part of the data plane
//! learns about a port it does not own (an egress drop decided while forwarding) is tallied
//! locally (`EgressTally`) and folded in by the owner once per batch.

use serde::ser::{Serialize, SerializeMap, Serializer};
use std::sync::atomic::{AtomicU64, Ordering};

/// A single-writer monotonically increasing counter.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker may call this (single-writer invariant).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets a gauge (a value that is not a running total). Single writer, as `add`.
    #[inline]
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    /// Raises the counter to `n` if it is below (a high-water mark).
    #[inline]
    pub fn max(&self, n: u64) {
        if n > self.get() {
            self.0.store(n, Ordering::Relaxed);
        }
    }
}

/// Defines `DropReason` and its table from one list: variant, the name in the exit report and
/// `--stats-json` (snake case), the name in QMP (QAPI's kebab case), and the meaning.
macro_rules! drop_reasons {
    ($($variant:ident, $name:literal, $qmp:literal, $doc:literal;)+) => {
        /// Why a frame was dropped. Each reason has its own counter on the port it is charged
        /// to.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $(#[doc = $doc] $variant,)+
        }

        impl DropReason {
            /// Every reason, in the order reports list them.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)+];

            /// The name in the exit report and `--stats-json`.
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)+ }
            }

            /// The name in QMP answers (`query-ports`).
            pub fn qmp_name(self) -> &'static str {
                match self { $(DropReason::$variant => $qmp,)+ }
            }

            /// What the reason means and which port it is charged to.
            pub fn description(self) -> &'static str {
                match self { $(DropReason::$variant => $doc,)+ }
            }
        }
    };
}

drop_reasons! {
    Runt, "runt", "runt",
        "Shorter than an Ethernet header (14 bytes); charged to the ingress port.";
    Oversize, "oversize", "oversize",
        "Longer than the configured maximum frame size; charged to the ingress port.";
    BadSource, "bad_source", "bad-source",
        "Source address is multicast or all-zero; charged to the ingress port.";
    SamePort, "same_port", "same-port",
        "Unicast whose destination was learned behind its own ingress port (802.1D filtering); charged to the ingress port.";
    Filtered, "filtered", "filtered",
        "The egress port's rx-filter refuses the frame (set-rx-filter: the station behind the port does not take it); charged to the egress port, which was sent nothing.";
    NoDestination, "no_destination", "no-destination",
        "No other port of the domain can take the frame; charged to the ingress port.";
    LinkDown, "link_down", "link-down",
        "The port's link is down: charged to the ingress port on receive, to the egress port on transmit. This includes a tap whose kernel side is down (the kernel refuses the write with EIO and also counts the frame in that interface's rx_dropped).";
    QueueFull, "queue_full", "queue-full",
        "The egress port's transmit queue was full; charged to the egress port.";
    TxError, "tx_error", "tx-error",
        "The kernel rejected the transmission; charged to the egress port.";
    RxError, "rx_error", "rx-error",
        "The kernel reported an error on receive; charged to the ingress port.";
    Truncated, "truncated", "truncated",
        "A stream connection ended in the middle of a frame; charged to the ingress port.";
    ShortHeader, "short_header", "short-header",
        "An encapsulation header was cut short; charged to the ingress port.";
    BadSession, "bad_session", "bad-session",
        "An encapsulated frame for another session; charged to the ingress port.";
    BadCookie, "bad_cookie", "bad-cookie",
        "An encapsulated frame with the wrong cookie; charged to the ingress port.";
    BadOffload, "bad_offload", "bad-offload",
        "A virtio-net header that does not describe its frame (unknown GSO type, no segment size, header or checksum offsets beyond the data, headers the segment cannot be cut by); charged to the ingress port.";
    GsoOversize, "gso_oversize", "gso-oversize",
        "A GSO segment whose pieces would still exceed the egress port's frame size; charged to the egress port.";
    NoBuffer, "no_buffer", "no-buffer",
        "No free buffer in the worker's pool for a frame copied out of a vhost-user guest's memory; charged to the ingress port.";
    FrontendFault, "frontend_fault", "frontend-fault",
        "A vhost-user frontend broke the rules (a ring or buffer outside its memory, a chain of the wrong direction): the port stops serving it until it sets the device up again; counted once per fault.";
}

/// Number of drop reasons.
pub const DROP_REASONS: usize = DropReason::ALL.len();

impl DropReason {
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one port.
#[derive(Default, Debug)]
pub struct PortCounters {
    pub rx_frames: Counter,
    pub rx_bytes: Counter,
    pub tx_frames: Counter,
    pub tx_bytes: Counter,
    drops: [Counter; DROP_REASONS],
    /// Drops of frames for this port decided on other workers (its link down there, the
    /// ring to this port's worker full): several writers, so atomic additions, off the
    /// path of frames that are forwarded. Listed with the port's other drops.
    remote_drops: [AtomicU64; DROP_REASONS],
}

impl PortCounters {
    /// Counts `n` drops of frames for this port decided on a worker that does not own it.
    #[cold]
    pub fn count_remote_drops(&self, reason: DropReason, n: u64) {
        self.remote_drops[reason.index()].fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason.index()].inc();
    }

    #[inline]
    pub fn count_drops(&self, reason: DropReason, n: u64) {
        self.drops[reason.index()].add(n);
    }

    /// A received frame (its bytes) that is dropped at once for `reason`.
    #[inline]
    pub fn count_rx_drop(&self, bytes: usize, reason: DropReason) {
        self.rx_frames.inc();
        self.rx_bytes.add(bytes as u64);
        self.count_drop(reason);
    }

    /// Frames sent whole.
    #[inline]
    pub fn count_tx(&self, frames: u64, bytes: u64) {
        self.tx_frames.add(frames);
        self.tx_bytes.add(bytes);
    }

    /// The drop counter of `reason`.
    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].get() + self.remote_drops[reason.index()].load(Ordering::Relaxed)
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> PortStats {
        PortStats {
            rx_frames: self.rx_frames.get(),
            rx_bytes: self.rx_bytes.get(),
            tx_frames: self.tx_frames.get(),
            tx_bytes: self.tx_bytes.get(),
            drops: DropStats(std::array::from_fn(|i| {
                self.drops[i].get() + self.remote_drops[i].load(Ordering::Relaxed)
            })),
        }
    }
}

/// Plain copy of a port's counters: the one type the exit report, `--stats-json` and QMP are
/// made from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PortStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub drops: DropStats,
}

impl PortStats {
    /// Adds another queue's counters of the same port.
    pub fn accumulate(&mut self, o: &PortStats) {
        self.rx_frames += o.rx_frames;
        self.rx_bytes += o.rx_bytes;
        self.tx_frames += o.tx_frames;
        self.tx_bytes += o.tx_bytes;
        for (a, b) in self.drops.0.iter_mut().zip(o.drops.0) {
            *a += b;
        }
    }
}

/// Plain copy of a port's drop counters, by reason. Serialises as an object with every
/// reason's report name (`DropReason::name`); `qmp` gives QMP's spelling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropStats(pub [u64; DROP_REASONS]);

impl DropStats {
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// (reason, count) for every reason, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|&r| (r, self.get(r)))
    }

    /// The counts keyed by QMP's names.
    pub fn qmp(&self) -> serde_json::Map<String, serde_json::Value> {
        self.iter()
            .map(|(r, n)| (r.qmp_name().to_string(), n.into()))
            .collect()
    }
}

impl Serialize for DropStats {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(DROP_REASONS))?;
        for (r, n) in self.iter() {
            m.serialize_entry(r.name(), &n)?;
        }
        m.end()
    }
}

/// Drops charged to ports while forwarding (a full transmit queue, a link that is down, a
/// segment too large for the port), tallied by the forwarding side without touching the
/// ports' shared counters, and folded into them by the ports' owner once per batch (`fold`).
/// Never allocates after construction.
pub struct EgressTally {
    /// Per port, per reason.
    counts: Vec<[u32; DROP_REASONS]>,
    dirty: Vec<u16>,
}

impl EgressTally {
    pub fn new(ports: usize) -> EgressTally {
        EgressTally {
            counts: vec![[0; DROP_REASONS]; ports],
            dirty: Vec::with_capacity(ports),
        }
    }

    /// One frame for `port` dropped for `reason`.
    #[inline]
    pub fn charge(&mut self, port: usize, reason: DropReason) {
        let c = &mut self.counts[port];
        if c.iter().all(|&n| n == 0) {
            self.dirty.push(port as u16);
        }
        let n = &mut c[reason.index()];
        *n = n.saturating_add(1);
    }

    /// Hands every tally to `f(port, reason, n)` and clears them.
    #[inline]
    pub fn fold(&mut self, mut f: impl FnMut(usize, DropReason, u64)) {
        for &p in &self.dirty {
            let c = &mut self.counts[p as usize];
            for (i, n) in c.iter_mut().enumerate() {
                if *n > 0 {
                    f(p as usize, DropReason::ALL[i], *n as u64);
                    *n = 0;
                }
            }
        }
        self.dirty.clear();
    }
}

/// Loop statistics of one worker.
#[derive(Default, Debug)]
pub struct WorkerCounters {
    /// Returns from `io_uring_enter` that waited for completions.
    pub wakeups: Counter,
    /// Completions reaped.
    pub completions: Counter,
    /// Frames received (all ports).
    pub rx_frames: Counter,
    /// Frames handed to the kernel for transmission (all ports).
    pub tx_submitted: Counter,
    /// Times a port could not get all its receive buffers because the pool was empty.
    pub rx_starved: Counter,
    /// Times a port's provided-buffer ring ran dry, ending its multishot receive until the
    /// next loop refilled the ring and re-armed it.
    pub rx_ring_empty: Counter,
    /// Largest receive batch seen.
    pub max_batch: Counter,
    /// MAC table: new entries, moves, evictions.
    pub mac_learned: Counter,
    pub mac_moved: Counter,
    pub mac_evicted: Counter,
    /// Nanoseconds spent in passes of the loop that had work (completions to handle), in
    /// passes that found none while polling, and asleep in `io_uring_enter`.
    pub work_ns: Counter,
    pub poll_ns: Counter,
    pub sleep_ns: Counter,
    /// Times the worker went to sleep in the kernel.
    pub sleeps: Counter,
    /// The adaptive poll's current budget: how long the worker polls after its last work
    /// before it sleeps (µs).
    pub poll_budget_us: Counter,
    /// Frames handed to other workers for their ports, and taken from them for this one's.
    pub cross_tx: Counter,
    pub cross_rx: Counter,
    /// Frames for ports of other workers dropped here (the ring to that worker was full, the
    /// port's link was down, or its queue here was full): counted on the worker, since each
    /// port's counters have one writer, its owner.
    pub cross_drops: Counter,
}

/// Plain copy of a worker's counters.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct WorkerStats {
    pub wakeups: u64,
    pub completions: u64,
    pub rx_frames: u64,
    pub tx_submitted: u64,
    pub rx_starved: u64,
    pub rx_ring_empty: u64,
    pub max_batch: u64,
    pub mac_learned: u64,
    pub mac_moved: u64,
    pub mac_evicted: u64,
    pub work_ns: u64,
    pub poll_ns: u64,
    pub sleep_ns: u64,
    pub sleeps: u64,
    pub poll_budget_us: u64,
    pub cross_tx: u64,
    pub cross_rx: u64,
    pub cross_drops: u64,
}

impl WorkerStats {
    /// Adds another worker's statistics (high-water marks and gauges take the larger).
    pub fn accumulate(&mut self, o: &WorkerStats) {
        self.wakeups += o.wakeups;
        self.completions += o.completions;
        self.rx_frames += o.rx_frames;
        self.tx_submitted += o.tx_submitted;
        self.rx_starved += o.rx_starved;
        self.rx_ring_empty += o.rx_ring_empty;
        self.max_batch = self.max_batch.max(o.max_batch);
        self.mac_learned += o.mac_learned;
        self.mac_moved += o.mac_moved;
        self.mac_evicted += o.mac_evicted;
        self.work_ns += o.work_ns;
        self.poll_ns += o.poll_ns;
        self.sleep_ns += o.sleep_ns;
        self.sleeps += o.sleeps;
        self.poll_budget_us = self.poll_budget_us.max(o.poll_budget_us);
        self.cross_tx += o.cross_tx;
        self.cross_rx += o.cross_rx;
        self.cross_drops += o.cross_drops;
    }

    /// Frames per wake-up, for listings.
    pub fn frames_per_wakeup(&self) -> f64 {
        if self.wakeups > 0 {
            self.rx_frames as f64 / self.wakeups as f64
        } else {
            0.0
        }
    }
}

impl WorkerCounters {
    pub fn snapshot(&self) -> WorkerStats {
        WorkerStats {
            wakeups: self.wakeups.get(),
            completions: self.completions.get(),
            rx_frames: self.rx_frames.get(),
            tx_submitted: self.tx_submitted.get(),
            rx_starved: self.rx_starved.get(),
            rx_ring_empty: self.rx_ring_empty.get(),
            max_batch: self.max_batch.get(),
            mac_learned: self.mac_learned.get(),
            mac_moved: self.mac_moved.get(),
            mac_evicted: self.mac_evicted.get(),
            work_ns: self.work_ns.get(),
            poll_ns: self.poll_ns.get(),
            sleep_ns: self.sleep_ns.get(),
            sleeps: self.sleeps.get(),
            poll_budget_us: self.poll_budget_us.get(),
            cross_tx: self.cross_tx.get(),
            cross_rx: self.cross_rx.get(),
            cross_drops: self.cross_drops.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_distinct_names_in_both_spellings() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        let mut qmp: Vec<_> = DropReason::ALL.iter().map(|r| r.qmp_name()).collect();
        for (r, (n, q)) in DropReason::ALL.iter().zip(names.iter().zip(&qmp)) {
            assert_eq!(n.replace('_', "-"), *q, "{r:?}");
            assert!(!r.description().is_empty());
        }
        names.sort();
        names.dedup();
        qmp.sort();
        qmp.dedup();
        assert_eq!((names.len(), qmp.len()), (DROP_REASONS, DROP_REASONS));
    }

    #[test]
    fn stats_serialise_with_report_names_and_qmp_names() {
        let c = PortCounters::default();
        c.count_drop(DropReason::BadSource);
        c.count_drops(DropReason::QueueFull, 3);
        let s = c.snapshot();
        let v = serde_json::to_value(s).unwrap();
        assert_eq!(v["drops"]["bad_source"], 1);
        assert_eq!(v["drops"]["queue_full"], 3);
        assert_eq!(v["drops"].as_object().unwrap().len(), DROP_REASONS);
        assert_eq!(s.drops.qmp()["queue-full"], 3);
        assert_eq!(s.drops.total(), 4);
    }

    #[test]
    fn egress_tallies_fold_once() {
        let mut t = EgressTally::new(4);
        t.charge(2, DropReason::QueueFull);
        t.charge(2, DropReason::QueueFull);
        t.charge(1, DropReason::LinkDown);
        let mut got = Vec::new();
        t.fold(|s, r, n| got.push((s, r, n)));
        got.sort_by_key(|g| g.0);
        assert_eq!(
            got,
            [(1, DropReason::LinkDown, 1), (2, DropReason::QueueFull, 2)]
        );
        t.fold(|_, _, _| panic!("folded twice"));
    }
}
