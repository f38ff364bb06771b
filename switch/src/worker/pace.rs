//! Pacing one worker's receives to its slowest busy port: a batch that overflowed a local
//! port's transmit queue, or filled a lagging port's (one that could not take its whole
//! queue last time) to three quarters, holds the ports it came from (no receive is armed on
//! them) until that queue has drained to half, so their frames wait in their own kernel queues (a tap's,
//! a socket's, a guest's ring) instead of being read only to be dropped here. The kernel then
//! drops what their senders overrun, at the senders' cost, and the worker's time goes to the
//! frames that do leave — on a core shared with a slow peer (a vde_switch, a relay), the
//! peer's time too. A port that sent nothing for `STALLED` is stuck, not slow: it holds no
//! one back, and frames for it are dropped as before. Never allocates.

use super::cross::STALLED;
use super::Worker;
use std::time::Duration;

impl Worker {
    /// The batch in `self.rx` backed a queue up: holds the ports its frames came in by.
    #[cold]
    pub(super) fn hold_senders(&mut self) {
        for f in &self.rx {
            let slot = self.by_id.get(f.ingress.index()).copied().flatten();
            if let Some(st) = slot.and_then(|s| self.ports[s.index()].as_mut()) {
                st.held = true;
            }
        }
        self.holding = true;
    }

    /// Whether a backed-up port still holds its senders: one whose queue has drained to half,
    /// or that is stuck, is let go; with none left, every held port is free again.
    pub(super) fn still_holding(&mut self) -> bool {
        let mut i = 0;
        while i < self.tx.backed().len() {
            let id = self.tx.backed()[i];
            if 2 * self.tx.room(id) >= self.tx.depth() || !self.port_sending(id) {
                self.tx.unback(id);
            } else {
                i += 1;
            }
        }
        if self.holding && self.tx.backed().is_empty() {
            for st in self.ports.iter_mut().flatten() {
                st.held = false;
            }
            self.holding = false;
        }
        self.holding
    }

    /// How long a sleeping worker that holds ports may wait for a completion: a backed-up
    /// port that turns out stuck lets its senders go after `STALLED`, even with nothing else
    /// happening.
    pub(super) fn hold_wait(&self) -> Option<Duration> {
        self.holding.then_some(STALLED)
    }

    /// Whether a worker that holds ports gathers completions while it sleeps: each write
    /// of a backed-up port that waited for room completes on its own, and waking for every
    /// one would trade the core with the slow peer a frame at a time. Not when every
    /// backed-up port sends at once (`Caps::sends_now`): its one poll for room is all there
    /// is to wait for, and the port fills its peer's room as soon as it fires.
    pub(super) fn hold_gathers(&self) -> bool {
        self.tx.backed().iter().any(|id| {
            let st = self
                .by_id
                .get(id.index())
                .copied()
                .flatten()
                .and_then(|s| self.ports[s.index()].as_ref());
            !st.is_some_and(|st| st.sends_now)
        })
    }
}
