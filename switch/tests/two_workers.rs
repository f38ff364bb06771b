//! Two workers of one switch, in this process, with datagram ports on unix socket pairs (no
//! privileges needed): frames cross between the workers through the fabric's rings, floods
//! reach every port of both once, a station that moves between workers is followed, a port
//! moved to the other worker keeps working while traffic between other ports loses nothing,
//! one flow's frames stay in order across workers, and after a long mixed stress every buffer
//! is back in its home pool.

use ringswitch_switch::fabric::{Fabric, CROSS_RING};
use ringswitch_switch::port::datagram::DatagramPort;
use ringswitch_switch::{
    link, BufferStats, ControlLink, DomainId, PortCell, PortCounters, PortEntry, PortId, Request,
    Snapshot, Worker, WorkerConfig, WorkerHandle, WorkerId,
};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

/// A unix datagram socket pair with big receive buffers: (the switch's end, the test's
/// non-blocking end).
fn pair() -> (OwnedFd, OwnedFd) {
    let (a, b) = common::dgram_pair();
    let big: libc::c_int = 4 << 20;
    for fd in [&a, &b] {
        // SAFETY: setsockopt reads an int from a live local.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&big as *const libc::c_int).cast(),
                4,
            )
        };
    }
    (a, b)
}

fn send(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: reads `frame.len()` bytes from a live slice.
    let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(n, frame.len() as isize);
}

/// Frames waiting on `fd` (and arriving within `wait`), up to `want`.
fn recv_all(fd: &OwnedFd, want: usize, wait: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    while out.len() < want && Instant::now() < deadline {
        // SAFETY: writes at most `buf.len()` bytes into a live slice.
        let r = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if r >= 0 {
            out.push(buf[..r as usize].to_vec());
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    out
}

fn quiet(fd: &OwnedFd) -> bool {
    recv_all(fd, 1, Duration::from_millis(100)).is_empty()
}

fn station(i: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0, i]
}

fn frame(dst: [u8; 6], src: [u8; 6], seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(18)];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    f
}

struct Port {
    entry: Arc<PortEntry>,
    peer: OwnedFd,
}

struct Rig {
    links: Vec<ControlLink>,
    workers: Vec<WorkerHandle>,
    ports: Vec<Port>,
}

impl Rig {
    /// Two workers; port i on worker `placement[i]`, domain `domains[i]`.
    fn new(placement: &[u8], domains: &[u16]) -> Rig {
        let fabric = Fabric::new(2, CROSS_RING);
        let mut links = Vec::new();
        let mut workers = Vec::new();
        for w in 0..2u8 {
            let (control, wlink) = link(Snapshot::default()).unwrap();
            let cfg = WorkerConfig {
                id: WorkerId(w),
                max_ports: 16,
                fabric: Some(fabric.clone()),
                ..WorkerConfig::default()
            };
            workers.push(Worker::spawn(cfg, wlink).unwrap());
            links.push(control);
        }
        let ports = placement
            .iter()
            .zip(domains)
            .enumerate()
            .map(|(i, (&w, &d))| {
                let (sw, peer) = pair();
                let name = format!("p{i}");
                Port {
                    entry: Arc::new(PortEntry {
                        id: PortId(i as u16),
                        name: name.as_str().into(),
                        port: PortCell::new(DatagramPort::new(sw, None, false, &name)),
                        worker: WorkerId(w),
                        domain: DomainId(d),
                        link_up: true,
                        rx_filter: None,
                        counters: Arc::new(PortCounters::default()),
                        conn_fd: -1,
                        queues: Vec::new(),
                    }),
                    peer,
                }
            })
            .collect();
        let rig = Rig {
            links,
            workers,
            ports,
        };
        rig.publish();
        rig
    }

    fn publish(&self) {
        let table: Vec<_> = self.ports.iter().map(|p| Some(p.entry.clone())).collect();
        let gens: Vec<u64> = self
            .links
            .iter()
            .map(|l| l.publish(table.clone()))
            .collect();
        for (l, g) in self.links.iter().zip(gens) {
            l.wait_applied(g, Duration::from_secs(5)).unwrap();
        }
    }

    /// Republishes port `i` with `f` applied to a copy of its entry (same cell).
    fn change(&mut self, i: usize, f: impl FnOnce(&mut PortEntry)) {
        let old = &self.ports[i].entry;
        let mut e = PortEntry {
            id: old.id,
            name: old.name.clone(),
            port: old.port.clone(),
            worker: old.worker,
            domain: old.domain,
            link_up: old.link_up,
            rx_filter: old.rx_filter.clone(),
            counters: old.counters.clone(),
            conn_fd: old.conn_fd,
            queues: Vec::new(),
        };
        f(&mut e);
        self.ports[i].entry = Arc::new(e);
        self.publish();
    }

    fn hello(&self, i: usize) {
        send(
            &self.ports[i].peer,
            &frame([0xff; 6], station(i as u8), 0, 60),
        );
        for (j, p) in self.ports.iter().enumerate() {
            if j != i && p.entry.domain == self.ports[i].entry.domain {
                assert_eq!(
                    recv_all(&p.peer, 1, Duration::from_secs(2)).len(),
                    1,
                    "hello of {i} at {j}"
                );
            }
        }
    }

    fn buffers(&self) -> Vec<BufferStats> {
        self.links
            .iter()
            .map(|l| {
                let (tx, rx) = std::sync::mpsc::channel();
                assert!(l.request(Request::Buffers(tx)));
                rx.recv_timeout(Duration::from_secs(5)).unwrap()
            })
            .collect()
    }

    fn stop(self) -> Vec<ringswitch_switch::WorkerStats> {
        let stats: Vec<_> = self.workers.iter().map(|w| w.counters.snapshot()).collect();
        for w in self.workers {
            w.stop_and_join().unwrap();
        }
        stats
    }
}

#[test]
fn floods_unicasts_and_domains_across_workers() {
    // Ports 0,2,4 on worker 0; 1,3,5 on worker 1; 0-3 in domain 0, 4-5 in domain 1.
    let r = Rig::new(&[0, 1, 0, 1, 0, 1], &[0, 0, 0, 0, 1, 1]);
    // A broadcast from each port reaches every other port of its domain exactly once.
    for i in 0..6 {
        send(&r.ports[i].peer, &frame([0xff; 6], station(i as u8), 0, 60));
        for (j, p) in r.ports.iter().enumerate() {
            let want = usize::from(j != i && r.ports[j].entry.domain == r.ports[i].entry.domain);
            let got = recv_all(&p.peer, 2, Duration::from_millis(300));
            assert_eq!(got.len(), want, "broadcast of {i} at {j}");
        }
    }
    // Learned: unicast from 0 (worker 0) to station 3 (worker 1) reaches only port 3.
    for (from, to) in [(0usize, 3usize), (3, 0), (1, 2), (2, 1), (0, 2), (1, 3)] {
        let f = frame(station(to as u8), station(from as u8), 7, 100);
        send(&r.ports[from].peer, &f);
        assert_eq!(
            recv_all(&r.ports[to].peer, 1, Duration::from_secs(2)),
            vec![f]
        );
        for (j, p) in r.ports.iter().enumerate() {
            if j != to {
                assert!(quiet(&p.peer), "unicast {from}->{to} leaked to {j}");
            }
        }
    }
    // Station 0 is unknown in domain 1: a frame to it from port 4 goes only to port 5.
    send(&r.ports[4].peer, &frame(station(0), station(4), 0, 60));
    assert_eq!(
        recv_all(&r.ports[5].peer, 1, Duration::from_secs(2)).len(),
        1
    );
    for j in 0..4 {
        assert!(quiet(&r.ports[j].peer), "domain leak to {j}");
    }
    let stats = r.stop();
    assert!(
        stats.iter().all(|s| s.cross_tx > 0 && s.cross_rx > 0),
        "{stats:?}"
    );
    assert!(stats.iter().all(|s| s.cross_drops == 0), "{stats:?}");
}

#[test]
fn link_down_moves_and_migrations_between_workers() {
    let mut r = Rig::new(&[0, 1, 0, 1], &[0, 0, 0, 0]);
    for i in 0..4 {
        r.hello(i);
    }
    // Link of port 1 (worker 1) down: unicast to station 1 from worker 0 is not delivered.
    r.change(1, |e| e.link_up = false);
    send(&r.ports[0].peer, &frame(station(1), station(0), 1, 60));
    assert!(quiet(&r.ports[1].peer));
    r.change(1, |e| e.link_up = true);
    send(&r.ports[0].peer, &frame(station(1), station(0), 2, 60));
    assert_eq!(
        recv_all(&r.ports[1].peer, 1, Duration::from_secs(2)).len(),
        1
    );
    // Station 1 moves from port 1 (worker 1) to port 2 (worker 0): followed from worker 1's
    // port 3 as from worker 0's port 0.
    send(&r.ports[2].peer, &frame(station(3), station(1), 3, 60));
    assert_eq!(
        recv_all(&r.ports[3].peer, 1, Duration::from_secs(2)).len(),
        1
    );
    for from in [0usize, 3] {
        send(
            &r.ports[from].peer,
            &frame(station(1), station(from as u8), 4, 60),
        );
        assert_eq!(
            recv_all(&r.ports[2].peer, 1, Duration::from_secs(2)).len(),
            1,
            "from {from}"
        );
        assert!(
            quiet(&r.ports[1].peer),
            "from {from}: still sent to the old port"
        );
    }
    send(&r.ports[1].peer, &frame(station(0), station(1), 5, 60));
    assert_eq!(
        recv_all(&r.ports[0].peer, 1, Duration::from_secs(2)).len(),
        1
    );

    // Port 3 moves from worker 1 to worker 0 while ports 0 and 1 stream to each other: not a
    // frame of that stream is lost, and port 3 works afterwards.
    let stream = 20_000u32;
    let (p0, p1) = (r.ports[0].peer.as_raw_fd(), r.ports[1].peer.as_raw_fd());
    let receiver = std::thread::spawn(move || {
        let mut got = Vec::with_capacity(stream as usize);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = vec![0u8; 2048];
        while got.len() < stream as usize && Instant::now() < deadline {
            // SAFETY: writes into a live buffer.
            let n = unsafe { libc::recv(p1, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 18 {
                got.push(u32::from_be_bytes(buf[14..18].try_into().unwrap()));
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        got
    });
    let sender = std::thread::spawn(move || {
        for seq in 0..stream {
            let f = frame(station(1), station(0), seq, 60);
            loop {
                // SAFETY: reads a live slice.
                let n = unsafe { libc::send(p0, f.as_ptr().cast(), f.len(), 0) };
                if n == f.len() as isize {
                    break;
                }
                std::thread::sleep(Duration::from_micros(20));
            }
            // About 20,000 frames a second: a unix datagram peer's queue holds 10, and the
            // receiving thread shares this 2-core machine with two workers and the sender.
            if seq % 4 == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(20));
    for w in [0u8, 1, 0, 1, 0] {
        r.change(3, |e| e.worker = WorkerId(w));
    }
    sender.join().unwrap();
    let got = receiver.join().unwrap();
    assert_eq!(
        got.len(),
        stream as usize,
        "frames lost on the untouched pair"
    );
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "out of order");
    // The moved port still forwards both ways.
    r.hello(3);
    send(&r.ports[0].peer, &frame(station(3), station(0), 9, 60));
    assert_eq!(
        recv_all(&r.ports[3].peer, 1, Duration::from_secs(2)).len(),
        1
    );
    let stats = r.stop();
    // The one frame sent to port 1 while its link was down is dropped on worker 0 and, as
    // port 1 is worker 1's, counted in worker 0's cross_drops.
    assert_eq!(
        stats.iter().map(|s| s.cross_drops).collect::<Vec<_>>(),
        [1, 0],
        "{stats:?}"
    );
}

/// Floods, unicasts across and within workers, runts, for long enough to matter in
/// `--release`; then every buffer of both pools is home.
#[test]
fn stress_then_every_buffer_is_home() {
    let r = Rig::new(&[0, 1, 0, 1], &[0, 0, 0, 0]);
    for i in 0..4 {
        r.hello(i);
    }
    let secs = if cfg!(debug_assertions) { 2 } else { 6 };
    let end = Instant::now() + Duration::from_secs(secs);
    let peers: Vec<i32> = r.ports.iter().map(|p| p.peer.as_raw_fd()).collect();
    let mut handles = Vec::new();
    for i in 0..4usize {
        let peers = peers.clone();
        handles.push(std::thread::spawn(move || {
            let mut sent = 0u64;
            let mut buf = vec![0u8; 2048];
            let mut seq = 0u32;
            while Instant::now() < end {
                let dst = match seq % 4 {
                    0 => [0xff; 6],
                    1 => [0x01, 0, 0x5e, 0, 0, 1],
                    _ => station(((i + 1 + seq as usize) % 4) as u8),
                };
                let len = [60, 1514, 300, 14][seq as usize % 4];
                let f = frame(dst, station(i as u8), seq, len);
                // SAFETY: reads a live slice.
                if unsafe { libc::send(peers[i], f.as_ptr().cast(), f.len(), 0) } > 0 {
                    sent += 1;
                }
                seq = seq.wrapping_add(1);
                // Keep the receive side drained.
                // SAFETY: writes into a live buffer.
                while unsafe { libc::recv(peers[i], buf.as_mut_ptr().cast(), buf.len(), 0) } > 0 {}
            }
            sent
        }));
    }
    let sent: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let mut buf = vec![0u8; 2048];
    // Buffers lent between workers come home at the next pass, writes complete as the peers
    // read: drain and ask until they are all back.
    let deadline = Instant::now() + Duration::from_secs(10);
    let home = loop {
        for p in &peers {
            // SAFETY: writes into a live buffer.
            while unsafe { libc::recv(*p, buf.as_mut_ptr().cast(), buf.len(), 0) } > 0 {}
        }
        let b = r.buffers();
        let ok = b.iter().all(|s| {
            s.free + s.reads_in_flight + s.queued + s.writes_in_flight >= s.total
                && s.writes_in_flight == 0
                && s.queued == 0
        });
        if ok || Instant::now() > deadline {
            break b;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for s in &home {
        assert_eq!(s.writes_in_flight, 0, "{home:?}");
        assert_eq!(s.queued, 0, "{home:?}");
        assert!(
            s.free + s.reads_in_flight >= s.total,
            "buffers missing: {home:?}"
        );
    }
    let stats = r.stop();
    let crossed: u64 = stats.iter().map(|s| s.cross_rx).sum();
    eprintln!("stress: {sent} frames sent, {crossed} crossed between workers; {stats:?}");
    assert!(crossed > 1000, "{stats:?}");
}

/// A port whose peer never reads does not hold up, in the ring between the workers, the
/// frames for the other ports of its worker: they all arrive; its own are dropped and
/// counted at it.
#[test]
fn a_stuck_port_does_not_block_the_ring_for_its_neighbours() {
    // Port 0 on worker 0 sends to ports 1 (stuck) and 2 (reads), both on worker 1.
    let r = Rig::new(&[0, 1, 1], &[0, 0, 0]);
    for i in 0..3 {
        r.hello(i);
    }
    let (p0, p2) = (r.ports[0].peer.as_raw_fd(), r.ports[2].peer.as_raw_fd());
    let rounds = 3000u32;
    let receiver = std::thread::spawn(move || {
        let mut got = 0u32;
        let mut buf = vec![0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(30);
        while got < rounds && Instant::now() < deadline {
            // SAFETY: writes into a live buffer.
            let n = unsafe { libc::recv(p2, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                got += 1;
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        got
    });
    for seq in 0..rounds {
        // Ten frames for the stuck port, then one for port 2.
        for _ in 0..10 {
            let f = frame(station(1), station(0), seq, 60);
            // SAFETY: reads a live slice.
            let _ = unsafe { libc::send(p0, f.as_ptr().cast(), f.len(), libc::MSG_DONTWAIT) };
        }
        let f = frame(station(2), station(0), seq, 60);
        loop {
            // SAFETY: reads a live slice.
            if unsafe { libc::send(p0, f.as_ptr().cast(), f.len(), 0) } == f.len() as isize {
                break;
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        if seq % 16 == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let got = receiver.join().unwrap();
    let stuck = r.ports[1].entry.counters.snapshot();
    // Port 1's peer reads at last, so its parked sends finish before the stop.
    let _ = recv_all(&r.ports[1].peer, 100_000, Duration::from_millis(500));
    let stats = r.stop();
    eprintln!("port 1 {stuck:?}\n{stats:?}");
    assert_eq!(
        got, rounds,
        "frames for port 2 lost behind the stuck port 1"
    );
    assert!(
        stuck.drops.get(ringswitch_switch::DropReason::QueueFull) > 0,
        "{stuck:?}"
    );
}

#[test]
fn a_ports_rx_filter_is_enforced_by_every_worker_and_changes_live() {
    use ringswitch_switch::{DropReason, RxFilter, RxState};
    // Ports 0, 2 on worker 0; 1, 3 on worker 1.
    let mut r = Rig::new(&[0, 1, 0, 1], &[0, 0, 0, 0]);
    for i in 0..4 {
        r.hello(i);
    }
    // Port 3 (worker 1) takes its own station's frames and broadcast only.
    let mut f = RxFilter::promiscuous(ringswitch_switch::MacAddr(station(3)));
    f.promiscuous = false;
    f.unicast = RxState::Normal;
    f.multicast = RxState::None;
    r.change(3, |e| e.rx_filter = Some(Arc::new(f)));
    let unknown = [2, 0, 0, 0, 0, 0x99];
    let group = [0x01, 0, 0x5e, 0, 0, 9];
    // From worker 0's port 0 (refused before crossing) and worker 1's port 1 (its own).
    for from in [0usize, 1] {
        for dst in [unknown, group] {
            send(&r.ports[from].peer, &frame(dst, station(from as u8), 1, 60));
            for (j, p) in r.ports.iter().enumerate() {
                let want = usize::from(j != from && j != 3);
                let got = recv_all(&p.peer, 2, Duration::from_millis(300));
                assert_eq!(got.len(), want, "{dst:02x?} from {from} at {j}");
            }
        }
        let f = frame(station(3), station(from as u8), 2, 60);
        send(&r.ports[from].peer, &f);
        assert_eq!(
            recv_all(&r.ports[3].peer, 1, Duration::from_secs(2)),
            vec![f]
        );
    }
    let drops = r.ports[3].entry.counters.drop_count(DropReason::Filtered);
    assert_eq!(drops, 4, "two refused from each worker");
    // Lifted: port 3 gets unknown unicast again, from both workers.
    r.change(3, |e| e.rx_filter = None);
    for from in [0usize, 1] {
        send(
            &r.ports[from].peer,
            &frame(unknown, station(from as u8), 3, 60),
        );
        assert_eq!(
            recv_all(&r.ports[3].peer, 1, Duration::from_secs(2)).len(),
            1
        );
        for (j, p) in r.ports.iter().enumerate() {
            if j != from && j != 3 {
                assert_eq!(recv_all(&p.peer, 1, Duration::from_secs(2)).len(), 1);
            }
        }
    }
    let stats = r.stop();
    assert!(stats.iter().all(|s| s.cross_drops == 0), "{stats:?}");
}
