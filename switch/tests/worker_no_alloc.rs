//! The real worker loop allocates nothing in steady state: three datagram ports on unix
//! socket pairs (no privileges needed) carry unicast, broadcast and runt frames through a
//! running worker — io_uring submissions and completions, multishot receives over buffer
//! rings, the engine, transmit queues, egress drop folding — while a counting global
//! allocator watches every thread of the process. The test's own thread only uses libc
//! send/recv on buffers it allocated before the window.
//!
//! Its own test binary: the allocator counts the whole process, so nothing else may run.

use ringswitch_switch::port::datagram::DatagramPort;
use ringswitch_switch::{
    link, DomainId, DropReason, PortCell, PortCounters, PortEntry, PortId, Snapshot, Worker,
    WorkerConfig, WorkerId,
};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

#[global_allocator]
static GLOBAL: common::Counting = common::Counting;

fn pair() -> (OwnedFd, OwnedFd) {
    common::dgram_pair()
}

fn send(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: reads `frame.len()` bytes from a live slice.
    let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(n, frame.len() as isize);
}

/// Receives what is waiting (and what arrives within `wait`); returns how many frames.
fn drain(fd: &OwnedFd, buf: &mut [u8], want: usize, wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    let mut n = 0;
    while n < want && Instant::now() < deadline {
        // SAFETY: writes at most `buf.len()` bytes into a live slice.
        let r = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if r >= 0 {
            n += 1;
        } else {
            std::hint::spin_loop();
        }
    }
    n
}

fn frame(dst: [u8; 6], src: u8, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(14)];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f.truncate(len);
    f
}

#[test]
fn the_worker_loop_forwards_without_allocating() {
    const PORTS: usize = 3;
    let (control, wlink) = link(Snapshot::default()).unwrap();
    let worker = Worker::spawn(
        WorkerConfig {
            max_ports: 8,
            ..WorkerConfig::default()
        },
        wlink,
    )
    .unwrap();
    let mut peers = Vec::new();
    let mut counters = Vec::new();
    let mut table = Vec::new();
    for i in 0..PORTS {
        let (sw, peer) = pair();
        let c = Arc::new(PortCounters::default());
        let name = format!("p{i}");
        table.push(Some(Arc::new(PortEntry {
            id: PortId(i as u16),
            name: name.as_str().into(),
            port: PortCell::new(DatagramPort::new(sw, None, false, &name)),
            worker: WorkerId(0),
            domain: DomainId(0),
            link_up: true,
            rx_filter: None,
            counters: c.clone(),
            conn_fd: -1,
            queues: Vec::new(),
        })));
        peers.push(peer);
        counters.push(c);
    }
    let g = control.publish(table);
    control.wait_applied(g, Duration::from_secs(5)).unwrap();

    // Each round: every station says hello (broadcast, 2 copies), then unicasts to the next
    // station (1 copy), and sends a runt (dropped).
    let station = |i: usize| [2, 0, 0, 0, 0, i as u8];
    let hello: Vec<Vec<u8>> = (0..PORTS).map(|i| frame([0xff; 6], i as u8, 60)).collect();
    let unicast: Vec<Vec<u8>> = (0..PORTS)
        .map(|i| frame(station((i + 1) % PORTS), i as u8, 200))
        .collect();
    let runt = frame([0xff; 6], 9, 10);
    let mut buf = vec![0u8; 4096];
    let round = |buf: &mut [u8]| {
        for (i, p) in peers.iter().enumerate() {
            send(p, &hello[i]);
        }
        for p in &peers {
            assert_eq!(drain(p, buf, PORTS - 1, Duration::from_secs(2)), PORTS - 1);
        }
        for (i, p) in peers.iter().enumerate() {
            send(p, &unicast[i]);
            send(p, &runt);
        }
        for p in &peers {
            assert_eq!(drain(p, buf, 1, Duration::from_secs(2)), 1);
        }
    };
    for _ in 0..2000 {
        round(&mut buf);
    }
    let before = common::allocations();
    let rounds = 20_000;
    for _ in 0..rounds {
        round(&mut buf);
    }
    let allocs = common::allocations() - before;
    worker.stop_and_join().unwrap();
    // Counted once the last writes completed (the worker has stopped).
    let s = counters[0].snapshot();
    assert_eq!(
        allocs,
        0,
        "{rounds} rounds through the worker ({} frames) allocated {allocs} times",
        rounds * PORTS * 3
    );
    assert_eq!(s.drops.get(DropReason::Runt), 22_000);
    assert_eq!(s.tx_frames, 22_000 * PORTS as u64);
}
