//! Frames between workers (see `fabric.rs`): handing the frames queued for a port of another
//! worker to its owner, taking in what other workers handed to this one, and following the
//! configuration's ports of other workers in the engine (their link, domain and rx-filter:
//! a frame a remote port's filter refuses is dropped here and never crosses).

use super::Worker;
use crate::config::{PortEntry, Snapshot};
use crate::counters::DropReason;
use crate::engine::PortConf;
use crate::fabric::CrossFrame;
use crate::frame::OffloadSet;
use crate::ids::{PortId, WorkerId};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Frames taken from one incoming ring per pass (the rest wait for the next pass, so one busy
/// neighbour cannot starve this worker's own ports).
const TAKE_PER_RING: usize = 512;
/// A port with a full queue that sent nothing for this long is stuck, not busy. Not less: a
/// peer sharing its core with busy processes (a vde_switch between the worker and a
/// `vde_plug2tap`, all on one core) waits milliseconds for its turn, and at 2 ms a quarter of
/// the frames read for it were dropped.
pub(super) const STALLED: Duration = Duration::from_millis(10);

impl Worker {
    /// Hands the frames queued on `id`, a port of another worker, to that worker; a full
    /// ring drops and counts.
    pub(super) fn send_remote(&mut self, id: PortId) {
        let (Some(fabric), Some(entry)) = (&self.fabric, &self.remote[id.index()]) else {
            let pool = self.ring.pool_mut();
            self.tx.discard(id, |f| pool.release(f.buf));
            return;
        };
        let to = entry.worker;
        let ring = fabric.ring(self.id, to);
        let pool = self.ring.pool_mut();
        let (mut sent, mut dropped) = (0u64, 0u64);
        self.tx.discard(id, |f| {
            let offload = if f.has_offload() {
                *pool.offload(f.buf)
            } else {
                crate::frame::Offload::NONE
            };
            match ring.push(CrossFrame {
                port: id,
                frame: f,
                offload,
            }) {
                Ok(()) => sent += 1,
                Err(_) => {
                    dropped += 1;
                    pool.release(f.buf);
                }
            }
        });
        if sent > 0 {
            self.counters.cross_tx.add(sent);
            self.pushed |= 1 << (to.index() & 63);
        }
        if dropped > 0 {
            self.counters.cross_drops.add(dropped);
            entry
                .counters
                .count_remote_drops(DropReason::QueueFull, dropped);
        }
    }

    /// Wakes the workers this pass handed frames to, if they sleep.
    pub(super) fn wake_pushed(&mut self) {
        if let Some(f) = &self.fabric {
            let mut m = std::mem::take(&mut self.pushed);
            while m != 0 {
                let w = m.trailing_zeros();
                let _ = f.nudge(WorkerId(w as u8));
                m &= m - 1;
            }
        }
    }

    /// Takes in the frames other workers handed to this one: each is copied into a buffer of
    /// this worker's pool, the lent buffer goes home, and the copy joins its port's queue.
    /// Returns how many frames came.
    pub(super) fn take_cross(&mut self) -> usize {
        // Taken out for the loop and put back (not cloned: the Arc's count is a cache line
        // every worker would write at every pass).
        let Some(fabric) = self.fabric.take() else {
            return 0;
        };
        let mut taken = 0;
        for from in 0..fabric.workers() {
            if from == self.id.index() {
                continue;
            }
            let ring = fabric.ring(WorkerId(from as u8), self.id);
            // A frame for a port whose queue is full waits in the ring while that port is
            // sending (its queue drains within microseconds): the ring fills and holds the
            // sender back, which paces the reading worker as one worker paces itself. A
            // port that sent nothing for STALLED is stuck: its frames are taken and dropped
            // (counted at the port), so they hold up no frame for another port.
            for _ in 0..TAKE_PER_RING {
                let Some(cf) = ring.peek() else { break };
                if self.tx.room(cf.port) == 0 && self.port_sending(cf.port) {
                    break;
                }
                let _ = ring.pop();
                taken += 1;
                self.take_one(&fabric, cf);
            }
        }
        self.fabric = Some(fabric);
        if taken > 0 {
            self.counters.cross_rx.add(taken as u64);
            self.engine.fold_egress(&mut self.tx);
        }
        taken
    }

    /// Whether local port `id` sent a frame in the last STALLED (see `take_cross`).
    #[cold]
    pub(super) fn port_sending(&mut self, id: PortId) -> bool {
        let Some(st) = self
            .by_id
            .get(id.index())
            .copied()
            .flatten()
            .and_then(|s| self.ports[s.index()].as_mut())
        else {
            return false;
        };
        let now = Instant::now();
        let sent = st.counters.tx_frames.get();
        match st.tx_seen_at {
            Some(at) if sent == st.tx_seen => now.saturating_duration_since(at) < STALLED,
            _ => {
                st.tx_seen = sent;
                st.tx_seen_at = Some(now);
                true
            }
        }
    }

    #[inline]
    fn take_one(&mut self, fabric: &crate::fabric::Fabric, cf: CrossFrame) {
        let src = cf.frame;
        let id = cf.port;
        let pool = self.ring.pool_mut();
        let local = self.by_id.get(id.index()).copied().flatten().and_then(|s| {
            self.ports[s.index()]
                .as_ref()
                .filter(|st| !st.failed && !st.draining)
        });
        let Some(st) = local else {
            // Gone, moved or failed since the sender decided.
            pool.release_to(src.home, src.buf);
            self.counters.cross_drops.inc();
            return;
        };
        let counters = &st.counters;
        if !st.entry.link_up {
            pool.release_to(src.home, src.buf);
            counters.count_drop(DropReason::LinkDown);
            return;
        }
        match crate::fabric::adopt(pool, fabric.registry(), &cf) {
            Ok(f) => {
                if !self.tx.push(id, f) {
                    pool.release(f.buf);
                }
            }
            Err(reason) => counters.count_drop(reason),
        }
    }

    /// Makes the engine forward to the ports of other workers that `snap` lists, as they are
    /// there (added, removed, link and domain).
    pub(super) fn follow_remote_ports(&mut self, snap: &Snapshot) {
        let Some(fabric) = &self.fabric else {
            return;
        };
        for i in 0..self.remote.len() {
            let id = PortId(i as u16);
            // A port with a queue here is this worker's; others are sent to queue 0's worker.
            let want: Option<&Arc<PortEntry>> = snap
                .port(id)
                .filter(|e| !e.has_queue_on(self.id) && e.worker.index() < fabric.workers());
            let same = match (&self.remote[i], want) {
                (Some(old), Some(w)) => Arc::ptr_eq(&old.port, &w.port) && old.worker == w.worker,
                (None, None) => continue,
                _ => false,
            };
            if same {
                let (old, w) = (
                    self.remote[i].clone().expect("matched"),
                    want.expect("matched"),
                );
                if old.domain != w.domain {
                    let _ = self.engine.set_domain(id, w.domain);
                }
                if old.link_up != w.link_up {
                    let _ = self.engine.set_link(id, w.link_up);
                }
                if !super::ports::same_filter(&old, w) {
                    let _ = self.engine.set_rx_filter(id, w.rx_filter.clone());
                }
                self.remote[i] = Some(w.clone());
                continue;
            }
            if self.remote[i].take().is_some() {
                let _ = self.engine.forget_remote_port(id);
                let pool = self.ring.pool_mut();
                self.tx.discard(id, |f| pool.release(f.buf));
            }
            if let Some(w) = want {
                let conf = PortConf {
                    domain: w.domain,
                    link_up: w.link_up,
                    offloads: OffloadSet::NONE,
                };
                if self
                    .engine
                    .add_remote_port(id, conf, w.port.clone(), w.counters.clone())
                    .is_ok()
                {
                    let _ = self.engine.set_rx_filter(id, w.rx_filter.clone());
                    self.remote[i] = Some(w.clone());
                } else {
                    // Still draining here (it moved away): again at the next reconcile.
                    self.retry = true;
                }
            }
        }
    }
}
