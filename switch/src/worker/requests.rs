//! One-off requests from the control plane, served between batches: MAC table dumps and
//! flushes, buffer accounting, and frames the switch originates (announce-self).

use super::Worker;
use crate::config::{BufferStats, Request};
use crate::frame::Frame;
use crate::port::Port;

impl Worker {
    pub(super) fn serve_requests(&mut self) {
        while let Ok(r) = self.link.requests.try_recv() {
            let now = self.now();
            match r {
                Request::DumpMacs(reply) => {
                    let _ = reply.send(self.engine.mac_table().entries(now).collect());
                }
                Request::FlushMacs(port, reply) => {
                    let t = self.engine.mac_table_mut();
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
                    let n = frame.len().min(pool.buf_size());
                    pool.buf_mut(b)[..n].copy_from_slice(&frame[..n]);
                    let f = Frame::new(pool.home(), ingress, b, 0, n as u32);
                    self.engine.flood_from(pool, f, &mut self.tx);
                    self.engine.fold_egress(&mut self.tx);
                }
            }
        }
    }

    /// Where the buffers are now.
    fn buffer_stats(&self) -> BufferStats {
        let pool = self.ring.pool();
        let ports = self.ports.iter().flatten();
        BufferStats {
            total: pool.capacity(),
            free: pool.available(),
            large_total: pool.large_capacity(),
            large_free: pool.available_large(),
            reads_in_flight: ports.clone().map(|p| p.port.rx_buffers(&self.ring)).sum(),
            writes_in_flight: ports.map(|p| p.port.in_flight().writes as usize).sum(),
            queued: self.tx.len(),
        }
    }
}
