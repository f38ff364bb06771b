//! Criterion benchmarks of the switching core alone (no syscalls): 64-byte frames through the
//! in-memory port kind. Each iteration receives a batch (copying each frame into a pool buffer,
//! as a kernel read would), forwards it, and "transmits" it (returning the buffers).
//! Throughput is in frames received per second.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringswitch_switch::{MacAddr, MemSwitch, PortId};
use std::hint::black_box;

const BATCH: usize = 64;
const FRAME: usize = 64;

fn station(i: usize) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, (i >> 8) as u8, i as u8])
}

fn frame(dst: MacAddr, src: MacAddr) -> [u8; FRAME] {
    let mut f = [0u8; FRAME];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f
}

/// One batch of traffic where port i sends to the station behind port (i+1) mod n, the ports
/// taking turns frame by frame.
fn unicast_batch(ports: usize) -> Vec<(PortId, [u8; FRAME])> {
    (0..BATCH)
        .map(|k| {
            let i = k % ports;
            (
                PortId(i as u16),
                frame(station((i + 1) % ports), station(i)),
            )
        })
        .collect()
}

fn run(sw: &mut MemSwitch, batch: &[(PortId, [u8; FRAME])]) -> u64 {
    for (p, f) in batch {
        sw.inject(*p, f);
    }
    sw.forward();
    let mut n = 0u64;
    sw.transmit(|_, b| n += b.len() as u64);
    n
}

fn learning_unicast(c: &mut Criterion) {
    let mut g = c.benchmark_group("learning_unicast_64B");
    g.throughput(Throughput::Elements(BATCH as u64));
    for ports in [2usize, 8, 64] {
        let mut sw = MemSwitch::new(ports, BATCH);
        let batch = unicast_batch(ports);
        // Every station announces itself once so the table is warm.
        let hello: Vec<_> = (0..ports)
            .map(|i| (PortId(i as u16), frame(MacAddr::BROADCAST, station(i))))
            .collect();
        for chunk in hello.chunks(BATCH) {
            run(&mut sw, chunk);
        }
        g.bench_with_input(BenchmarkId::from_parameter(ports), &batch, |b, batch| {
            b.iter(|| black_box(run(&mut sw, batch)))
        });
    }
    g.finish();
}

fn flooding(c: &mut Criterion) {
    let mut g = c.benchmark_group("flood_broadcast_64B");
    g.throughput(Throughput::Elements(BATCH as u64));
    for ports in [2usize, 8] {
        let mut sw = MemSwitch::new(ports, BATCH);
        let batch: Vec<_> = (0..BATCH)
            .map(|k| {
                (
                    PortId((k % ports) as u16),
                    frame(MacAddr::BROADCAST, station(k % ports)),
                )
            })
            .collect();
        g.bench_with_input(BenchmarkId::from_parameter(ports), &batch, |b, batch| {
            b.iter(|| black_box(run(&mut sw, batch)))
        });
    }
    g.finish();
}

fn mac_flood(c: &mut Criterion) {
    // Every frame from a new source address: the bounded table evicts at constant cost.
    let mut g = c.benchmark_group("mac_flood_64B");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut sw = MemSwitch::new(2, BATCH);
    let mut next: u64 = 0;
    let mut batch: Vec<(PortId, [u8; FRAME])> = vec![(PortId(0), [0u8; FRAME]); BATCH];
    g.bench_function("2", |b| {
        b.iter(|| {
            for (_, f) in batch.iter_mut() {
                next += 1;
                *f = frame(station(1), MacAddr::from_u64(0x0200_0000_0000 | next));
            }
            black_box(run(&mut sw, &batch))
        })
    });
    g.finish();
}

criterion_group!(benches, learning_unicast, flooding, mac_flood);
criterion_main!(benches);
