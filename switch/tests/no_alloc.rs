//! Steady-state forwarding allocates nothing: a counting global allocator watches the engine
//! (learning, unicast, flooding, drops, rx-filters) after warm-up.

use ringswitch_switch::{DropReason, MacAddr, MemSwitch, PortId, RxFilter, RxState};
use std::sync::Arc;

mod common;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

fn frame(dst: MacAddr, src: MacAddr, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(14)];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f.truncate(len);
    f
}

#[test]
fn steady_state_forwarding_allocates_nothing() {
    const PORTS: usize = 8;
    let mut sw = MemSwitch::new(PORTS, 64);
    let station = |i: usize| MacAddr([0x02, 0, 0, 0, 0, i as u8]);
    // Per port: a unicast to the next port, a broadcast, a runt, and a station that keeps
    // moving between two ports (so learning writes happen throughout).
    let frames: Vec<(PortId, Vec<u8>)> = (0..PORTS)
        .flat_map(|i| {
            [
                (
                    PortId(i as u16),
                    frame(station((i + 1) % PORTS), station(i), 64),
                ),
                (PortId(i as u16), frame(MacAddr::BROADCAST, station(i), 64)),
                (PortId(i as u16), frame(MacAddr::BROADCAST, station(i), 10)),
                (
                    PortId((i % 2) as u16),
                    frame(station(0), MacAddr([0x02, 1, 0, 0, 0, 0]), 64),
                ),
            ]
        })
        .collect();
    let mut delivered = 0u64;
    let round = |sw: &mut MemSwitch, delivered: &mut u64| {
        for chunk in frames.chunks(16) {
            for (p, f) in chunk {
                assert!(sw.inject(*p, f));
            }
            sw.forward();
            sw.transmit(|_, bytes| *delivered += bytes.len() as u64);
        }
    };
    for _ in 0..10 {
        round(&mut sw, &mut delivered);
    }
    let before = common::thread_allocations();
    for t in 0..20_000 {
        sw.set_time(t / 1000);
        round(&mut sw, &mut delivered);
    }
    let allocs = common::thread_allocations() - before;
    assert_eq!(
        allocs,
        0,
        "forwarding {} frames allocated {allocs} times",
        20_000 * frames.len()
    );
    assert!(delivered > 0);
    assert_eq!(sw.free_buffers(), 1024, "every buffer returned to the pool");
    assert!(sw.counters(PortId(0)).drop_count(DropReason::Runt) > 0);
}

#[test]
fn forwarding_past_rx_filters_allocates_nothing() {
    const PORTS: usize = 6;
    let mut sw = MemSwitch::new(PORTS, 64);
    let station = |i: usize| MacAddr([0x02, 0, 0, 0, 0, i as u8]);
    // Ports 1 and 4 take their own station, broadcast and one group only.
    for p in [1, 4] {
        let mut f = RxFilter::promiscuous(station(p));
        f.promiscuous = false;
        f.unicast = RxState::Normal;
        f.multicast = RxState::Normal;
        f.multicast_table = vec![MacAddr([0x01, 0, 0x5e, 0, 0, 1])];
        sw.set_rx_filter(PortId(p as u16), Some(Arc::new(f)))
            .unwrap();
    }
    let frames: Vec<(PortId, Vec<u8>)> = (0..PORTS)
        .flat_map(|i| {
            let p = PortId(i as u16);
            [
                (p, frame(station((i + 1) % PORTS), station(i), 64)),
                (p, frame(MacAddr([0x02, 9, 9, 9, 9, 9]), station(i), 64)),
                (p, frame(MacAddr([0x01, 0, 0x5e, 0, 0, 1]), station(i), 64)),
                (p, frame(MacAddr([0x01, 0, 0x5e, 0, 0, 2]), station(i), 64)),
            ]
        })
        .collect();
    let mut delivered = 0u64;
    let round = |sw: &mut MemSwitch, delivered: &mut u64| {
        for chunk in frames.chunks(8) {
            for (p, f) in chunk {
                assert!(sw.inject(*p, f));
            }
            sw.forward();
            sw.transmit(|_, bytes| *delivered += bytes.len() as u64);
        }
    };
    for _ in 0..10 {
        round(&mut sw, &mut delivered);
    }
    let before = common::thread_allocations();
    for _ in 0..5_000 {
        round(&mut sw, &mut delivered);
    }
    let allocs = common::thread_allocations() - before;
    assert_eq!(
        allocs, 0,
        "forwarding past rx-filters allocated {allocs} times"
    );
    assert!(delivered > 0);
    assert_eq!(sw.free_buffers(), 1024, "every buffer returned to the pool");
    assert!(sw.counters(PortId(1)).drop_count(DropReason::Filtered) > 0);
    assert_eq!(sw.counters(PortId(2)).drop_count(DropReason::Filtered), 0);
}
