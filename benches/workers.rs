//! The switching core on one worker against two (no syscalls): 64-byte frames between two
//! in-memory ports, both ways. With one worker, one engine forwards both directions. With
//! two, each port is another worker's, every frame is forwarded where it arrived and crosses
//! to the other worker through the fabric's ring, which copies it into its own pool and gives
//! the buffer back (`fabric::adopt`), on two threads, with one shared MAC table: the
//! cross-worker path as the workers run it, without io_uring. Throughput is frames
//! received (both directions) per second of wall time.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringswitch_switch::fabric::{adopt, CrossFrame, Fabric, CROSS_RING};
use ringswitch_switch::{
    BufferPool, DomainId, Engine, Frame, MacAddr, MemSwitch, Offload, PortCell, PortConf,
    PortCounters, PortId, TxQueues, WorkerCounters, WorkerId,
};
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const BATCH: usize = 64;
const FRAME: usize = 64;

fn station(i: usize) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0, i as u8])
}

fn frame(dst: MacAddr, src: MacAddr) -> [u8; FRAME] {
    let mut f = [0u8; FRAME];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f
}

fn conf() -> PortConf {
    PortConf {
        domain: DomainId(0),
        link_up: true,
        offloads: ringswitch_switch::frame::OffloadSet::NONE,
    }
}

/// One side: worker `me` owns port `me` and forwards to port `1 - me` of the other.
struct Side {
    me: usize,
    engine: Engine,
    pool: BufferPool,
    tx: TxQueues,
    rx: Vec<Frame>,
    fabric: Arc<Fabric>,
    batch: [u8; FRAME],
}

impl Side {
    fn new(me: usize, fabric: &Arc<Fabric>) -> Side {
        let stats = Arc::new(WorkerCounters::default());
        let mut engine = Engine::with_table(2, 1522, stats, fabric.table(65536, 300));
        engine
            .add_port(PortId(me as u16), conf(), Arc::new(PortCounters::default()))
            .unwrap();
        engine
            .add_remote_port(
                PortId(1 - me as u16),
                conf(),
                PortCell::empty(),
                Arc::new(PortCounters::default()),
            )
            .unwrap();
        let pool =
            BufferPool::with_home(WorkerId(me as u8), 4096, 2048, 0, fabric.registry().clone())
                .unwrap();
        Side {
            me,
            engine,
            pool,
            tx: TxQueues::new(2, 4 * BATCH),
            rx: Vec::with_capacity(BATCH),
            fabric: fabric.clone(),
            batch: frame(station(1 - me), station(me)),
        }
    }

    /// Receives a batch (copying, as a read would), forwards it, hands it over; takes in
    /// and "transmits" what the other side handed over. Returns frames transmitted.
    fn pass(&mut self, hello: bool) -> usize {
        let me = WorkerId(self.me as u8);
        let other = WorkerId(1 - self.me as u8);
        let f = if hello {
            frame(MacAddr::BROADCAST, station(self.me))
        } else {
            self.batch
        };
        for _ in 0..BATCH {
            let Some(b) = self.pool.alloc() else { break };
            self.pool.buf_mut(b)[..FRAME].copy_from_slice(&f);
            self.rx
                .push(Frame::new(me, PortId(self.me as u16), b, 0, FRAME as u32));
        }
        self.engine
            .forward(&mut self.pool, &self.rx, &mut self.tx, 0);
        self.rx.clear();
        let ring = self.fabric.ring(me, other);
        let pool = &mut self.pool;
        self.tx.discard(PortId(1 - self.me as u16), |f| {
            let cf = CrossFrame {
                port: PortId(1 - self.me as u16),
                frame: f,
                offload: Offload::NONE,
            };
            if ring.push(cf).is_err() {
                pool.release(f.buf);
            }
        });
        let mut sent = 0;
        let inbound = self.fabric.ring(other, me);
        while let Some(cf) = inbound.pop() {
            if let Ok(f) = adopt(&mut self.pool, self.fabric.registry(), &cf) {
                black_box(self.pool.frame(f.buf, f.len as usize)[0]);
                self.pool.release(f.buf);
                sent += 1;
            }
        }
        self.pool.reclaim();
        sent
    }
}

fn one_against_two(c: &mut Criterion) {
    let mut g = c.benchmark_group("workers_64B_two_ports_both_ways");
    g.throughput(Throughput::Elements(2 * BATCH as u64));
    g.measurement_time(Duration::from_secs(5));

    // One worker: one engine, both ports, both directions.
    let mut sw = MemSwitch::new(2, 2 * BATCH);
    for p in 0..2 {
        sw.inject(PortId(p), &frame(MacAddr::BROADCAST, station(p as usize)));
    }
    sw.forward();
    sw.transmit(|_, _| {});
    let f0 = frame(station(1), station(0));
    let f1 = frame(station(0), station(1));
    g.bench_function("1 worker", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                sw.inject(PortId(0), &f0);
                sw.inject(PortId(1), &f1);
            }
            sw.forward();
            let mut n = 0u64;
            sw.transmit(|_, frames| n += frames.len() as u64);
            black_box(n)
        })
    });

    // Two workers: each owns one port; every frame crosses.
    g.bench_function("2 workers", |b| {
        b.iter_custom(|iters| {
            let fabric = Fabric::new(2, CROSS_RING);
            let start = Arc::new(Barrier::new(3));
            let threads: Vec<_> = (0..2)
                .map(|me| {
                    let (fabric, start) = (fabric.clone(), start.clone());
                    std::thread::spawn(move || {
                        let _ = ringswitch_switch::worker::pin_current_thread(me);
                        let mut side = Side::new(me, &fabric);
                        side.pass(true);
                        start.wait();
                        let t = Instant::now();
                        for _ in 0..iters {
                            side.pass(false);
                        }
                        // What is still in the ring arrives at the other side's next passes.
                        let _ = side.pass(false);
                        t.elapsed()
                    })
                })
                .collect();
            start.wait();
            threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .max()
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, one_against_two);
criterion_main!(benches);
