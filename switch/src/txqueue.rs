//! `TxQueues`: one worker's fixed-capacity transmit queues, one per slot, the list of slots
//! that have something queued, and the tally of drops charged to egress ports while queueing.
//!
//! A queued `Frame` holds one reference to its buffer; it passes to the port when the port
//! takes the frame (`Port::send`), or back to the pool when the queue is discarded. Never
//! allocates after construction.

use crate::counters::{DropReason, EgressTally};
use crate::frame::Frame;
use crate::ids::Slot;

/// Fixed-capacity transmit queues, one per slot, plus the list of slots that have something
/// queued (so draining does not scan idle ports).
pub struct TxQueues {
    queues: Vec<Vec<Frame>>,
    depth: usize,
    pending: Vec<Slot>,
    tally: EgressTally,
}

impl TxQueues {
    /// Queues for `slots` slots, each holding at most `depth` frames.
    pub fn new(slots: usize, depth: usize) -> TxQueues {
        TxQueues {
            queues: (0..slots).map(|_| Vec::with_capacity(depth)).collect(),
            depth,
            pending: Vec::with_capacity(slots),
            tally: EgressTally::new(slots),
        }
    }

    /// Appends a frame to `slot`'s queue; a full queue refuses it, counting a `QueueFull`
    /// drop for that port (the caller keeps the frame's reference).
    #[inline]
    pub fn push(&mut self, slot: Slot, f: Frame) -> bool {
        let q = &mut self.queues[slot.index()];
        if q.len() == self.depth {
            self.tally.charge(slot.index(), DropReason::QueueFull);
            return false;
        }
        if q.is_empty() {
            self.pending.push(slot);
        }
        q.push(f);
        true
    }

    /// Counts a frame for `slot` that was not queued because its link is down.
    #[inline]
    pub fn charge_link_down(&mut self, slot: Slot) {
        self.tally.charge(slot.index(), DropReason::LinkDown);
    }

    /// Hands the drops charged to egress ports since the last call to `f(slot, reason, n)`.
    #[inline]
    pub fn fold_drops(&mut self, mut f: impl FnMut(Slot, DropReason, u64)) {
        self.tally.fold(|s, r, n| f(Slot(s as u16), r, n));
    }

    /// Slots with queued frames, in the order they first got one since the last drain.
    pub fn pending(&self) -> &[Slot] {
        &self.pending
    }

    /// The frames queued on `slot`.
    pub fn queue(&self, slot: Slot) -> &[Frame] {
        &self.queues[slot.index()]
    }

    /// Empties every queue, passing each slot and its frames to `f` (which takes over the
    /// buffer references).
    pub fn drain(&mut self, mut f: impl FnMut(Slot, &[Frame])) {
        for &p in &self.pending {
            let q = &mut self.queues[p.index()];
            f(p, q);
            q.clear();
        }
        self.pending.clear();
    }

    /// Removes the first `n` frames of `slot`'s queue (the port took them) and keeps the rest
    /// for later.
    pub fn consume(&mut self, slot: Slot, n: usize) {
        let q = &mut self.queues[slot.index()];
        q.drain(..n.min(q.len()));
        if q.is_empty() {
            self.pending.retain(|&p| p != slot);
        }
    }

    /// Empties `slot`'s queue, passing each frame to `f` (which takes over its reference).
    pub fn discard(&mut self, slot: Slot, mut f: impl FnMut(Frame)) {
        let q = &mut self.queues[slot.index()];
        for d in q.drain(..) {
            f(d);
        }
        self.pending.retain(|&p| p != slot);
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
