//! `TxQueues`: one worker's fixed-capacity transmit queues, one per port, the list of ports
//! that have something queued, the tally of drops charged to egress ports while queueing,
//! and the ports whose full queue refused a frame (backed up: see the worker's `pace.rs`).
//!
//! A queued `Frame` holds one reference to its buffer; it passes to the port when the port
//! takes the frame (`Port::send`), or back to the pool when the queue is discarded. Never
//! allocates after construction.

use crate::counters::{DropReason, EgressTally};
use crate::frame::Frame;
use crate::ids::PortId;

/// Fixed-capacity transmit queues, one per port, plus the list of ports that have something
/// queued (so draining does not scan idle ports).
pub struct TxQueues {
    queues: Vec<Vec<Frame>>,
    depth: usize,
    /// Queue length from which a lagging port is backed up (three quarters of `depth`).
    high: usize,
    /// The port left frames in its queue the last time it was offered them (it takes fewer
    /// than arrive).
    lagging: Vec<bool>,
    pending: Vec<PortId>,
    tally: EgressTally,
    /// Ports whose full queue refused a frame, until the worker lets them go (`unback`).
    backed: Vec<PortId>,
    is_backed: Vec<bool>,
    /// A queue refused a frame since the last `take_overflow`.
    overflow: bool,
}

impl TxQueues {
    /// Queues for `ports` ports, each holding at most `depth` frames.
    pub fn new(ports: usize, depth: usize) -> TxQueues {
        TxQueues {
            queues: (0..ports).map(|_| Vec::with_capacity(depth)).collect(),
            depth,
            high: depth - depth / 4,
            lagging: vec![false; ports],
            pending: Vec::with_capacity(ports),
            tally: EgressTally::new(ports),
            backed: Vec::with_capacity(ports),
            is_backed: vec![false; ports],
            overflow: false,
        }
    }

    /// Appends a frame to `port`'s queue; a full queue refuses it, counting a `QueueFull`
    /// drop for that port (the caller keeps the frame's reference).
    #[inline(always)]
    pub fn push(&mut self, port: PortId, f: Frame) -> bool {
        let len = self.queues[port.index()].len();
        if len >= self.high && self.pressed(port, len) {
            return false;
        }
        let q = &mut self.queues[port.index()];
        if q.is_empty() {
            self.pending.push(port);
        }
        q.push(f);
        true
    }

    /// Appends `f` to the queue of every port of `targets` but `skip` (a flood); returns how
    /// many queues refused it (each counted as a `QueueFull` drop; the caller keeps those
    /// references). Not inlined: a loop of its own keeps the frame in registers, where the
    /// whole forwarding path inlined around it would spill.
    #[inline(never)]
    pub fn push_each(&mut self, targets: &[PortId], skip: PortId, f: Frame) -> u16 {
        let mut refused = 0;
        for &p in targets {
            if p != skip && !self.push(p, f) {
                refused += 1;
            }
        }
        refused
    }

    /// `port`'s queue holds `len` frames, three quarters of its depth or more: a full one
    /// refuses the frame (true); a lagging port's is backed up from here, before it overflows,
    /// so that what its senders bring meanwhile still fits.
    #[cold]
    fn pressed(&mut self, port: PortId, len: usize) -> bool {
        if len == self.depth {
            self.full(port);
            return true;
        }
        if self.lagging[port.index()] {
            self.back(port);
        }
        false
    }

    #[cold]
    fn full(&mut self, port: PortId) {
        self.tally.charge(port.index(), DropReason::QueueFull);
        self.back(port);
    }

    fn back(&mut self, port: PortId) {
        self.overflow = true;
        if !self.is_backed[port.index()] {
            self.is_backed[port.index()] = true;
            self.backed.push(port);
        }
    }

    /// Whether a queue refused a frame, or a lagging port's became backed up, since the last
    /// call.
    #[inline]
    pub fn take_overflow(&mut self) -> bool {
        std::mem::take(&mut self.overflow)
    }

    /// Ports whose full queue refused a frame and that were not let go since.
    #[inline]
    pub fn backed(&self) -> &[PortId] {
        &self.backed
    }

    /// Lets go of backed-up port `port` (its queue drained, or it is stuck).
    pub fn unback(&mut self, port: PortId) {
        if std::mem::take(&mut self.is_backed[port.index()]) {
            self.backed.retain(|&p| p != port);
        }
    }

    /// The most frames a queue holds.
    #[inline]
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Counts a frame for `port` that was not queued because its link is down.
    #[inline]
    pub fn charge_link_down(&mut self, port: PortId) {
        self.tally.charge(port.index(), DropReason::LinkDown);
    }

    /// Counts a frame for `port` dropped for `reason` (an egress port's reason).
    #[inline]
    pub fn charge(&mut self, port: PortId, reason: DropReason) {
        self.tally.charge(port.index(), reason);
    }

    /// Frames `port`'s queue can still take.
    #[inline]
    pub fn room(&self, port: PortId) -> usize {
        self.depth - self.queues[port.index()].len()
    }

    /// Hands the drops charged to egress ports since the last call to `f(port, reason, n)`.
    #[inline]
    pub fn fold_drops(&mut self, mut f: impl FnMut(PortId, DropReason, u64)) {
        self.tally.fold(|s, r, n| f(PortId(s as u16), r, n));
    }

    /// Ports with queued frames, in the order they first got one since the last drain.
    pub fn pending(&self) -> &[PortId] {
        &self.pending
    }

    /// The frames queued on `port`.
    #[inline]
    pub fn queue(&self, port: PortId) -> &[Frame] {
        &self.queues[port.index()]
    }

    /// Empties every queue, passing each port and its frames to `f` (which takes over the
    /// buffer references).
    pub fn drain(&mut self, mut f: impl FnMut(PortId, &[Frame])) {
        for &p in &self.pending {
            let q = &mut self.queues[p.index()];
            f(p, q);
            q.clear();
            self.lagging[p.index()] = false;
        }
        self.pending.clear();
    }

    /// Removes the first `n` frames of `port`'s queue (the port took them) and keeps the rest
    /// for later.
    pub fn consume(&mut self, port: PortId, n: usize) {
        let q = &mut self.queues[port.index()];
        q.drain(..n.min(q.len()));
        self.lagging[port.index()] = !q.is_empty();
        if q.is_empty() {
            self.pending.retain(|&p| p != port);
        }
    }

    /// Empties `port`'s queue, passing each frame to `f` (which takes over its reference).
    pub fn discard(&mut self, port: PortId, mut f: impl FnMut(Frame)) {
        let q = &mut self.queues[port.index()];
        for d in q.drain(..) {
            f(d);
        }
        self.lagging[port.index()] = false;
        self.pending.retain(|&p| p != port);
    }

    /// Total frames queued.
    pub fn len(&self) -> usize {
        self.pending
            .iter()
            .map(|p| self.queues[p.index()].len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}
