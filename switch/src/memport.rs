//! `MemSwitch`: the forwarding engine driven by in-memory ports, with no syscalls.
//!
//! Receiving copies a frame into a pool buffer (as a kernel read would); transmitting hands the
//! queued frames to a callback and returns their buffers. Benchmarks use it to measure the
//! switching core alone, and tests use it to prove steady-state forwarding does not allocate.

use crate::counters::{PortCounters, WorkerCounters};
use crate::engine::{Engine, PortConf};
use crate::frame::Frame;
use crate::ids::{DomainId, PortId};
use crate::mactable::Seconds;
use crate::pool::BufferPool;
use crate::txqueue::TxQueues;
use std::sync::Arc;

/// An engine, its pool and queues, and a receive batch being filled.
pub struct MemSwitch {
    engine: Engine,
    pool: BufferPool,
    tx: TxQueues,
    rx: Vec<Frame>,
    counters: Vec<Arc<PortCounters>>,
    now: Seconds,
}

impl MemSwitch {
    /// `ports` ports, all in domain 0 with their link up, taking batches of up to `batch`.
    pub fn new(ports: usize, batch: usize) -> MemSwitch {
        let stats = Arc::new(WorkerCounters::default());
        let mut engine = Engine::new(ports, 65536, 300, 1522, stats);
        let mut counters = Vec::with_capacity(ports);
        for i in 0..ports {
            let c = Arc::new(PortCounters::default());
            engine
                .add_port(
                    PortId(i as u16),
                    PortConf {
                        domain: DomainId(0),
                        link_up: true,
                        offloads: crate::frame::OffloadSet::NONE,
                    },
                    c.clone(),
                )
                .expect("fresh engine");
            counters.push(c);
        }
        let bufs = (batch * ports.max(2)).next_power_of_two().max(1024);
        MemSwitch {
            engine,
            pool: BufferPool::new(bufs, 2048).expect("pool"),
            tx: TxQueues::new(ports, batch.max(1)),
            rx: Vec::with_capacity(batch),
            counters,
            now: 0,
        }
    }

    /// Receives `frame` on `port` into the current batch; false if no buffer or batch room.
    #[inline]
    pub fn inject(&mut self, port: PortId, frame: &[u8]) -> bool {
        if self.rx.len() == self.rx.capacity() {
            return false;
        }
        let Some(b) = self.pool.alloc() else {
            return false;
        };
        let n = frame.len().min(self.pool.buf_size());
        self.pool.buf_mut(b)[..n].copy_from_slice(&frame[..n]);
        self.rx
            .push(Frame::new(self.pool.home(), port, b, 0, n as u32));
        true
    }

    /// Forwards the current batch into the transmit queues.
    #[inline]
    pub fn forward(&mut self) {
        self.engine
            .forward(&mut self.pool, &self.rx, &mut self.tx, self.now);
        self.engine.fold_egress(&mut self.tx);
        self.rx.clear();
    }

    /// Transmits every queued frame: `deliver(port, bytes)` sees each, then its buffer returns.
    #[inline]
    pub fn transmit(&mut self, mut deliver: impl FnMut(PortId, &[u8])) {
        let pool = &mut self.pool;
        let counters = &self.counters;
        self.tx.drain(|port, frames| {
            let c = &counters[port.index()];
            for f in frames {
                deliver(port, pool.frame_at(f.buf, f.off as usize, f.len as usize));
                c.count_tx(1, f.len as u64);
                pool.release(f.buf);
            }
        });
    }

    /// Advances the engine's clock (for ageing).
    pub fn set_time(&mut self, now: Seconds) {
        self.now = now;
    }

    pub fn counters(&self, port: PortId) -> &PortCounters {
        &self.counters[port.index()]
    }

    pub fn free_buffers(&self) -> usize {
        self.pool.available()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Sets port `port`'s rx-filter (`None`: promiscuous).
    pub fn set_rx_filter(
        &mut self,
        port: PortId,
        filter: Option<Arc<crate::rxfilter::RxFilter>>,
    ) -> Result<(), crate::engine::EngineError> {
        self.engine.set_rx_filter(port, filter)
    }
}
