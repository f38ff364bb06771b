//! How a worker's set of ports follows the configuration: attaching new ports in free slots,
//! draining removed ones (cancel, wait for every operation, give the buffers back, drop), and
//! closing a port whose kernel object or connection failed. Runs between batches only.

use super::{Worker, WorkerError};
use crate::config::{PortEntry, WorkerEvent};
use crate::engine::PortConf;
use crate::frame::OffloadSet;
use crate::ids::Slot;
use crate::port::{AnyPort, Closed, Cx, Port};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A port in one of the worker's slots.
pub(super) struct PortState {
    pub(super) entry: Arc<PortEntry>,
    /// The queue this slot serves: its cell (queue 0's is `entry.port`) and counters.
    pub(super) cell: Arc<crate::config::PortCell>,
    pub(super) counters: Arc<crate::counters::PortCounters>,
    pub(super) port: AnyPort,
    /// Its completions are worth gathering (`Caps::coalesce`).
    pub(super) coalesce: bool,
    /// It sends at once and waits for room with one poll (`Caps::sends_now`).
    pub(super) sends_now: bool,
    /// Receiving or sending failed for good: no more receives are armed.
    pub(super) failed: bool,
    /// Removed from the configuration; waiting for its operations to finish.
    pub(super) draining: bool,
    /// It gave its buffer ring and files back (a failed port, once idle).
    pub(super) released: bool,
    /// Its sent-frame count when last looked at, and when it last moved: whether the port
    /// is draining its queue (frames handed over by other workers wait in their ring for
    /// room) or stuck (they are taken and dropped, so they hold up no other port).
    pub(super) tx_seen: u64,
    pub(super) tx_seen_at: Option<std::time::Instant>,
    /// Its frames overflowed a port that is still sending: no receive is armed on it until
    /// that port's queue drains (`pace.rs`).
    pub(super) held: bool,
}

impl Worker {
    /// Brings the ports in line with the newest snapshot, if there is one.
    pub(super) fn reconcile(&mut self) -> Result<(), WorkerError> {
        let snap = self.link.snapshot.load();
        if snap.generation == self.generation && !self.retry {
            return Ok(());
        }
        let snap = arc_swap::Guard::into_inner(snap);
        self.generation = snap.generation;
        self.retry = false;
        // Ports that went away, or whose link or domain changed.
        for i in 0..self.ports.len() {
            let slot = Slot(i as u16);
            let Some(st) = &self.ports[i] else {
                continue;
            };
            if st.draining {
                continue;
            }
            let want = snap
                .port(st.entry.id)
                .filter(|w| w.worker_of(&st.cell) == Some(self.id))
                .cloned();
            let Some(w) = want else {
                self.begin_drain(slot)?;
                continue;
            };
            let (id, domain, link_up, failed) =
                (st.entry.id, st.entry.domain, st.entry.link_up, st.failed);
            let filter_changed = !same_filter(&st.entry, &w);
            if domain != w.domain {
                let _ = self.engine.set_domain(id, w.domain);
            }
            if link_up != w.link_up && !failed {
                let _ = self.engine.set_link(id, w.link_up);
            }
            if filter_changed {
                // Live: the port is not restarted and nothing queued is touched.
                let _ = self.engine.set_rx_filter(id, w.rx_filter.clone());
            }
            if let Some(st) = &mut self.ports[i] {
                st.entry = w;
            }
        }
        // Ports of other workers this one forwards to.
        self.follow_remote_ports(&snap);
        // New ports, and new queues of multiqueue ports.
        for (i, entry) in snap.ports.iter().enumerate() {
            let Some(e) = entry else {
                continue;
            };
            if !e.has_queue_on(self.id) {
                continue;
            }
            if i >= self.by_id.len() {
                eprintln!(
                    "ringswitch: configuration names port {i}, beyond this worker's {} ports; ignored",
                    self.by_id.len()
                );
                continue;
            }
            for (w, cell, counters) in e.all_queues() {
                if w != self.id || self.serves(cell) {
                    continue;
                }
                match self.ports.iter().position(Option::is_none) {
                    Some(s) => {
                        self.add_port(Slot(s as u16), e.clone(), cell.clone(), counters.clone())?
                    }
                    // Every slot is taken, some by ports still draining: again once one ends.
                    None => self.retry = true,
                }
            }
        }
        self.finish_drains();
        Ok(())
    }

    /// Whether a slot of this worker (draining or not) holds the queue in `cell`.
    fn serves(&self, cell: &Arc<crate::config::PortCell>) -> bool {
        self.ports
            .iter()
            .flatten()
            .any(|st| Arc::ptr_eq(&st.cell, cell))
    }

    fn add_port(
        &mut self,
        slot: Slot,
        entry: Arc<PortEntry>,
        cell: Arc<crate::config::PortCell>,
        counters: Arc<crate::counters::PortCounters>,
    ) -> Result<(), WorkerError> {
        let Some(mut port) = cell.take() else {
            if self.fabric.is_some() {
                // Moving here from another worker, which has not let it go yet: again at
                // the next reconcile (the configuration is not applied until then).
                self.retry = true;
                return Ok(());
            }
            eprintln!(
                "ringswitch: port {} was handed to a worker already; ignored",
                entry.name
            );
            return Ok(());
        };
        let mut cx = Cx {
            ring: &mut self.ring,
            slot,
            id: entry.id,
            rx: &mut self.rx,
            counters: &counters,
            worker: &self.counters,
            env: &self.env,
            live: true,
            offloads: None,
        };
        port.attach(&mut cx).map_err(WorkerError::Ring)?;
        let cx_offloads = cx.offloads;
        let caps = port.caps();
        cell.set_caps(caps);
        let conf = PortConf {
            domain: entry.domain,
            link_up: entry.link_up,
            offloads: if caps.offloads {
                OffloadSet::ALL
            } else {
                cx_offloads.unwrap_or(OffloadSet::NONE)
            },
        };
        cell.set_offloads(conf.offloads);
        let id = entry.id;
        if self.by_id[id.index()].is_none() {
            // The first queue of the port here: the engine's counters for it are this
            // queue's (other queues here count into them too: one thread, one writer).
            self.engine
                .add_port(id, conf, counters.clone())
                .expect("id free and within max_ports");
            let _ = self.engine.set_rx_filter(id, entry.rx_filter.clone());
            self.by_id[id.index()] = Some(slot);
        }
        self.ports[slot.index()] = Some(PortState {
            entry,
            cell,
            counters,
            port,
            coalesce: caps.coalesce,
            sends_now: caps.sends_now,
            failed: false,
            draining: false,
            released: false,
            tx_seen: 0,
            tx_seen_at: None,
            held: false,
        });
        Ok(())
    }

    /// Stops all traffic to and from a removed port and cancels its operations.
    fn begin_drain(&mut self, slot: Slot) -> Result<(), WorkerError> {
        let Some(st) = &mut self.ports[slot.index()] else {
            return Ok(());
        };
        if st.draining {
            return Ok(());
        }
        st.draining = true;
        let id = st.entry.id;
        if self.by_id.get(id.index()) == Some(&Some(slot)) {
            // Another queue of the port here takes over its transmissions, if there is one.
            let next = self.ports.iter().enumerate().find_map(|(i, p)| {
                p.as_ref()
                    .filter(|p| p.entry.id == id && !p.draining && !p.failed)
                    .map(|_| Slot(i as u16))
            });
            self.by_id[id.index()] = next;
            if next.is_none() {
                let _ = self.engine.remove_port(id);
                let pool = self.ring.pool_mut();
                self.tx.discard(id, |f| pool.release(f.buf));
            }
        }
        self.cleanup = true;
        match self.with_port(slot, |p, cx| p.cancel(cx)) {
            Some(Err(e)) => Err(WorkerError::Enter(e)),
            _ => Ok(()),
        }
    }

    /// Forgets drained ports and gives back what failed ports hold once their operations
    /// ended; reports the configuration applied once nothing is draining.
    pub(super) fn finish_drains(&mut self) {
        let mut pending = false;
        for i in 0..self.ports.len() {
            let slot = Slot(i as u16);
            let Some(st) = &self.ports[i] else {
                continue;
            };
            let waiting = st.draining || (st.failed && !st.released);
            if !waiting {
                continue;
            }
            if !st.port.in_flight().is_idle() {
                pending = true;
                continue;
            }
            self.with_port(slot, |p, cx| p.detach(cx));
            let st = self.ports[i].as_mut().expect("checked above");
            st.released = true;
            if st.draining {
                let st = self.ports[i].take().expect("checked above");
                let snap = self.link.snapshot.load();
                let moved = snap.port(st.entry.id).is_some_and(|e| {
                    e.worker_of(&st.cell).is_some_and(|w| w != self.id) && !st.failed
                });
                if moved {
                    // Moved to another worker: it takes the port from the cell.
                    st.cell.put_back(st.port);
                }
                // Otherwise dropping the port closes the worker's descriptors.
            }
        }
        self.cleanup = pending;
        let draining = self.ports.iter().flatten().any(|p| p.draining);
        if !draining && !self.retry {
            self.link.applied.store(self.generation, Ordering::Release);
        }
    }

    /// The port's connection or kernel object failed for good (its interface was deleted,
    /// the peer closed the stream, the stream is out of step): stop receiving on it and take
    /// its link down so nothing is sent to it, rather than spin on errors, and tell the
    /// control plane. Other ports are not disturbed.
    pub(super) fn close_port(&mut self, slot: Slot, Closed(reason): Closed) {
        let Some(st) = &mut self.ports[slot.index()] else {
            return;
        };
        if st.failed || st.draining {
            return;
        }
        st.failed = true;
        let id = st.entry.id;
        let event = WorkerEvent::PortClosed {
            port: id,
            fd: st.entry.conn_fd,
            reason,
        };
        let _ = self.engine.set_link(id, false);
        let pool = self.ring.pool_mut();
        self.tx.discard(id, |f| pool.release(f.buf));
        self.cleanup = true;
        // A cancellation that cannot be queued shows up again at the next submission.
        let _ = self.with_port(slot, |p, cx| p.cancel(cx));
        let _ = self.link.events.send(event);
    }
}

/// Whether two entries of a port carry the same rx-filter (the same `Arc`, or none).
pub(super) fn same_filter(a: &PortEntry, b: &PortEntry) -> bool {
    match (&a.rx_filter, &b.rx_filter) {
        (Some(x), Some(y)) => Arc::ptr_eq(x, y),
        (None, None) => true,
        _ => false,
    }
}
