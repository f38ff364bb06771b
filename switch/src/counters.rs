//! Per-port and per-worker counters, readable from any thread while the worker runs.
//!
//! Each counter has exactly one writer (the worker that owns the port), so an increment is a
//! relaxed load plus a relaxed store — plain moves on x86, no locked instruction — and readers
//! see a recent value without ever blocking the writer.

use serde::Serialize;
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
}

/// Why a frame was dropped. Each reason has its own counter on the port it is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than an Ethernet header (14 bytes); charged to the ingress port.
    Runt,
    /// Longer than the configured maximum frame size; charged to the ingress port.
    Oversize,
    /// Source address is multicast or all-zero; charged to the ingress port.
    BadSource,
    /// Unicast whose destination was learned behind its own ingress port (802.1D filtering).
    Filtered,
    /// No other port of the domain can take the frame; charged to the ingress port.
    NoDestination,
    /// The port's link is down: charged to the ingress port on receive, to the egress port on
    /// transmit. This includes a tap whose kernel side is down (the kernel refuses the write
    /// with EIO and also counts the frame in that interface's rx_dropped).
    LinkDown,
    /// The egress port's transmit queue was full; charged to the egress port.
    QueueFull,
    /// The kernel rejected the transmission; charged to the egress port.
    TxError,
    /// The kernel reported an error on receive; charged to the ingress port.
    RxError,
    /// A stream connection ended in the middle of a frame; charged to the ingress port.
    Truncated,
    /// An encapsulation header was cut short; charged to the ingress port.
    ShortHeader,
    /// An encapsulated frame for another session; charged to the ingress port.
    BadSession,
    /// An encapsulated frame with the wrong cookie; charged to the ingress port.
    BadCookie,
}

/// Counters of one port.
#[derive(Default, Debug)]
pub struct PortCounters {
    pub rx_frames: Counter,
    pub rx_bytes: Counter,
    pub tx_frames: Counter,
    pub tx_bytes: Counter,
    pub runt: Counter,
    pub oversize: Counter,
    pub bad_source: Counter,
    pub filtered: Counter,
    pub no_destination: Counter,
    pub link_down: Counter,
    pub queue_full: Counter,
    pub tx_error: Counter,
    pub rx_error: Counter,
    pub truncated: Counter,
    pub short_header: Counter,
    pub bad_session: Counter,
    pub bad_cookie: Counter,
}

impl PortCounters {
    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        self.reason(reason).inc();
    }

    #[inline]
    fn reason(&self, reason: DropReason) -> &Counter {
        match reason {
            DropReason::Runt => &self.runt,
            DropReason::Oversize => &self.oversize,
            DropReason::BadSource => &self.bad_source,
            DropReason::Filtered => &self.filtered,
            DropReason::NoDestination => &self.no_destination,
            DropReason::LinkDown => &self.link_down,
            DropReason::QueueFull => &self.queue_full,
            DropReason::TxError => &self.tx_error,
            DropReason::RxError => &self.rx_error,
            DropReason::Truncated => &self.truncated,
            DropReason::ShortHeader => &self.short_header,
            DropReason::BadSession => &self.bad_session,
            DropReason::BadCookie => &self.bad_cookie,
        }
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> PortStats {
        PortStats {
            rx_frames: self.rx_frames.get(),
            rx_bytes: self.rx_bytes.get(),
            tx_frames: self.tx_frames.get(),
            tx_bytes: self.tx_bytes.get(),
            drops: DropStats {
                runt: self.runt.get(),
                oversize: self.oversize.get(),
                bad_source: self.bad_source.get(),
                filtered: self.filtered.get(),
                no_destination: self.no_destination.get(),
                link_down: self.link_down.get(),
                queue_full: self.queue_full.get(),
                tx_error: self.tx_error.get(),
                rx_error: self.rx_error.get(),
                truncated: self.truncated.get(),
                short_header: self.short_header.get(),
                bad_session: self.bad_session.get(),
                bad_cookie: self.bad_cookie.get(),
            },
        }
    }
}

/// Plain copy of a port's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PortStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub drops: DropStats,
}

/// Plain copy of a port's drop counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DropStats {
    pub runt: u64,
    pub oversize: u64,
    pub bad_source: u64,
    pub filtered: u64,
    pub no_destination: u64,
    pub link_down: u64,
    pub queue_full: u64,
    pub tx_error: u64,
    pub rx_error: u64,
    pub truncated: u64,
    pub short_header: u64,
    pub bad_session: u64,
    pub bad_cookie: u64,
}

impl DropStats {
    pub fn total(&self) -> u64 {
        self.runt
            + self.oversize
            + self.bad_source
            + self.filtered
            + self.no_destination
            + self.link_down
            + self.queue_full
            + self.tx_error
            + self.rx_error
            + self.truncated
            + self.short_header
            + self.bad_session
            + self.bad_cookie
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
}

/// Plain copy of a worker's counters.
#[derive(Debug, Clone, Copy, Default, Serialize)]
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
        }
    }
}
