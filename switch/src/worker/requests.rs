//! One-off requests from the control plane, served between batches: MAC table dumps and
//! flushes, buffer accounting, and frames the switch originates (announce-self).
//!
//! A dump of the MAC table is walked in slices of `DUMP_SLICE` slots, one slice per pass of
//! the loop, so listing a large table never holds frames up for long (a whole 64 Ki-entry
//! table took about 0.4 ms in one go here, a 1 Mi-entry one 3 ms).

use super::Worker;
use crate::config::{BufferStats, Request};
use crate::frame::Frame;
use crate::mactable::MacEntry;
use crate::pool::HEADROOM;
use crate::port::Port;
use std::sync::mpsc::Sender;

/// Slots of the MAC table one pass of the loop walks for a dump.
const DUMP_SLICE: usize = 8192;

/// A MAC table dump under way.
pub(super) struct Dump {
    reply: Sender<Vec<MacEntry>>,
    entries: Vec<MacEntry>,
    next: usize,
}

impl Worker {
    pub(super) fn serve_requests(&mut self) {
        while let Ok(r) = self.link.requests.try_recv() {
            let now = self.now();
            match r {
                Request::DumpMacs(reply) => self.dumps.push_back(Dump {
                    reply,
                    entries: Vec::new(),
                    next: 0,
                }),
                Request::FlushMacs(port, reply) => {
                    let t = self.engine.mac_table();
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
                    // Buffers other workers gave back since this worker's last pass are
                    // home: fold them in first (returns wake nobody, so an idle worker
                    // would otherwise show them missing).
                    self.ring.pool_mut().reclaim();
                    let _ = reply.send(self.buffer_stats());
                }
                Request::Flood { ingress, frame } => {
                    if !matches!(self.by_id.get(ingress.index()), Some(Some(_))) {
                        continue;
                    }
                    let pool = self.ring.pool_mut();
                    let Some(b) = pool.alloc() else {
                        self.counters.rx_starved.inc();
                        continue;
                    };
                    let n = frame.len().min(pool.buf_size() - HEADROOM);
                    pool.buf_mut(b)[HEADROOM..HEADROOM + n].copy_from_slice(&frame[..n]);
                    let f = Frame::new(pool.home(), ingress, b, HEADROOM as u16, n as u32);
                    self.engine.flood_from(pool, f, &mut self.tx);
                    self.engine.fold_egress(&mut self.tx);
                }
            }
        }
    }

    /// Walks the next slice of the MAC table for the oldest dump under way, and answers it
    /// once the walk is through.
    pub(super) fn continue_dump(&mut self) {
        let now = self.now();
        let table = self.engine.mac_table();
        let Some(d) = self.dumps.front_mut() else {
            return;
        };
        let end = d.next + DUMP_SLICE;
        d.entries.extend(table.entries_in(d.next..end, now));
        d.next = end;
        if d.next >= table.slots() {
            let d = self.dumps.pop_front().expect("checked above");
            let _ = d.reply.send(d.entries);
        }
    }

    /// Where the buffers are now.
    fn buffer_stats(&self) -> BufferStats {
        let pool = self.ring.pool();
        let ports = self.ports.iter().flatten();
        BufferStats {
            total: pool.capacity() + pool.large_capacity(),
            free: pool.available() + pool.available_large(),
            large_total: pool.large_capacity(),
            large_free: pool.available_large(),
            reads_in_flight: ports.clone().map(|p| p.port.rx_buffers(&self.ring)).sum(),
            writes_in_flight: ports.map(|p| p.port.in_flight().writes as usize).sum(),
            queued: self.tx.len(),
        }
    }
}
