//! A worker receiving on datagram socket ports, with one multishot receive over a
//! provided-buffer ring per port and with the fallback of reads: every datagram is
//! forwarded, a ring that runs dry is refilled and re-armed, oversize and empty datagrams are
//! counted, and a port removed under traffic gives back every buffer and its descriptor.
//! Also the coalescing wait: batches under load, and a lone frame never held back.
//!
//! Real UDP sockets on 127.0.0.1 (no privileges needed); every wait is bounded.

use ringswitch_switch::port::datagram::DatagramPort;
use ringswitch_switch::port::l2tpv3::codec::L2tpv3Codec;
use ringswitch_switch::port::l2tpv3::L2tpv3Port;
use ringswitch_switch::{
    link, AnyPort, BufferStats, ControlLink, DomainId, DropReason, PortCell, PortCounters,
    PortEntry, PortId, PortStats, Request, Snapshot, Worker, WorkerConfig, WorkerHandle, WorkerId,
};
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(5);

/// How the switch's side of a test port carries frames.
enum Kind {
    Datagram,
    UdpGso,
    L2tpv3(Arc<L2tpv3Codec>),
}

/// A datagram socket port: the switch's socket and the peer's, connected to each other.
struct UdpPort {
    peer: UdpSocket,
    name: String,
    cell: Arc<PortCell>,
    counters: Arc<PortCounters>,
    /// The inode of the switch's socket, to tell whether anything still holds it.
    inode: u64,
}

/// The inode of an open descriptor.
fn inode(fd: &OwnedFd) -> u64 {
    // SAFETY: `st` is plain data that fstat fills for a descriptor we hold open.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        assert_eq!(libc::fstat(fd.as_raw_fd(), &mut st), 0);
        st.st_ino
    }
}

/// Whether any descriptor of this process is the socket with inode `ino`.
fn socket_open(ino: u64) -> bool {
    let want = format!("socket:[{ino}]");
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == want))
}

impl UdpPort {
    fn new(name: &str, kind: Kind) -> UdpPort {
        let port = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        port.connect(peer.local_addr().unwrap()).unwrap();
        peer.connect(port.local_addr().unwrap()).unwrap();
        for s in [&port, &peer] {
            set_rcvbuf(s, 4 << 20);
        }
        peer.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let fd = OwnedFd::from(port);
        let ino = inode(&fd);
        let p: AnyPort = match kind {
            Kind::Datagram => DatagramPort::new(fd, None, false, name).into(),
            Kind::UdpGso => DatagramPort::new(fd, None, true, name).into(),
            Kind::L2tpv3(codec) => L2tpv3Port::new(fd, codec, name).into(),
        };
        UdpPort {
            peer,
            name: name.to_string(),
            cell: PortCell::new(p),
            counters: Arc::new(PortCounters::default()),
            inode: ino,
        }
    }

    /// The port's configuration entry under switch-wide id `id`.
    fn entry(&self, id: usize) -> Arc<PortEntry> {
        Arc::new(PortEntry {
            id: PortId(id as u16),
            name: self.name.as_str().into(),
            port: self.cell.clone(),
            worker: WorkerId(0),
            domain: DomainId(0),
            link_up: true,
            rx_filter: None,
            counters: self.counters.clone(),
            conn_fd: -1,
            queues: Vec::new(),
        })
    }

    fn stats(&self) -> PortStats {
        self.counters.snapshot()
    }

    /// Receives datagrams until `n` arrived or `WAIT` passed; returns them.
    fn receive(&self, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while got.len() < n && Instant::now() < deadline {
            if let Ok(len) = self.peer.recv(&mut buf) {
                got.push(buf[..len].to_vec());
            }
        }
        got
    }

    /// Whether another datagram arrives within 100 ms.
    fn quiet(&self) -> bool {
        let mut buf = [0u8; 4096];
        let until = Instant::now() + Duration::from_millis(100);
        while Instant::now() < until {
            if self.peer.recv(&mut buf).is_ok() {
                return false;
            }
        }
        true
    }
}

/// Whether `cond` holds within `WAIT`.
fn eventually(cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

fn set_rcvbuf(s: &UdpSocket, bytes: libc::c_int) {
    // SAFETY: passes a live c_int of the size given to setsockopt on an open socket.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0);
}

/// A broadcast Ethernet frame of `len` bytes from station `src`, numbered `seq`.
fn frame(src: u8, seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    f
}

struct Rig {
    control: ControlLink,
    worker: Option<WorkerHandle>,
}

impl Rig {
    fn new(multishot: bool, rx_depth: u32, max_frame: usize) -> Rig {
        Rig::with(WorkerConfig {
            rx_depth,
            rx_multishot: multishot,
            max_frame,
            max_ports: 8,
            ..WorkerConfig::default()
        })
    }

    fn with(cfg: WorkerConfig) -> Rig {
        let (control, wlink) = link(Snapshot::default()).unwrap();
        let worker = Worker::spawn(cfg, wlink).unwrap();
        Rig {
            control,
            worker: Some(worker),
        }
    }

    fn worker(&self) -> &WorkerHandle {
        self.worker.as_ref().unwrap()
    }

    /// Publishes `ports` (by index) and waits until the worker has applied them.
    fn publish(&self, ports: &[Option<&UdpPort>]) {
        let g = self.control.publish(
            ports
                .iter()
                .enumerate()
                .map(|(i, p)| p.map(|p| p.entry(i)))
                .collect(),
        );
        self.control.wait_applied(g, WAIT).unwrap();
    }

    fn buffers(&self) -> BufferStats {
        let (tx, rx) = std::sync::mpsc::channel();
        assert!(self.control.request(Request::Buffers(tx)));
        rx.recv_timeout(WAIT).unwrap()
    }

    /// Waits until nothing is in flight to send and every buffer is free or held for
    /// receiving; returns the stats then.
    fn idle_buffers(&self) -> BufferStats {
        let deadline = Instant::now() + WAIT;
        loop {
            let b = self.buffers();
            let idle = b.writes_in_flight == 0 && b.queued == 0;
            if (idle && b.free + b.reads_in_flight == b.total) || Instant::now() > deadline {
                return b;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            let _ = w.stop_and_join();
        }
    }
}

/// Whether this kernel's release is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut it = rel.trim().split(['.', '-']);
    let have: (u32, u32) = (
        it.next().unwrap().parse().unwrap(),
        it.next().unwrap().parse().unwrap(),
    );
    have >= (major, minor)
}

/// Whether this kernel has multishot receive (6.0 and later).
fn kernel_has_multishot() -> bool {
    kernel_at_least(6, 0)
}

fn both_modes(test: impl Fn(bool)) {
    for multishot in [true, false] {
        eprintln!("multishot={multishot}");
        test(multishot);
    }
}

#[test]
fn the_probe_finds_multishot_receive_where_the_kernel_has_it_and_it_can_be_declined() {
    let rig = Rig::new(true, 64, 1522);
    assert_eq!(rig.worker().features.recv_multishot, kernel_has_multishot());
    let off = Rig::new(false, 64, 1522);
    assert!(!off.worker().features.recv_multishot);
}

#[test]
fn every_datagram_is_forwarded_and_the_pool_returns_to_idle() {
    both_modes(|multishot| {
        let rig = Rig::new(multishot, 64, 1522);
        let a = UdpPort::new("a", Kind::Datagram);
        let b = UdpPort::new("b", Kind::UdpGso);
        rig.publish(&[Some(&a), Some(&b)]);
        let mut got = Vec::new();
        for burst in 0..20u32 {
            for i in 0..50 {
                a.peer.send(&frame(1, burst * 50 + i, 60)).unwrap();
            }
            got.extend(b.receive(50));
        }
        assert_eq!(got.len(), 1000);
        let seqs: Vec<u32> = got
            .iter()
            .map(|f| u32::from_be_bytes(f[14..18].try_into().unwrap()))
            .collect();
        assert_eq!(seqs, (0..1000).collect::<Vec<_>>(), "lost or reordered");
        assert_eq!(a.stats().rx_frames, 1000);
        // A send is counted when its completion is reaped, which may come a little after the
        // frames arrived (a coalescing wait).
        assert!(
            eventually(|| b.stats().tx_frames == 1000),
            "{:?}",
            b.stats()
        );
        assert!(b.quiet(), "more frames than were sent");
        let idle = rig.idle_buffers();
        assert_eq!(idle.free + idle.reads_in_flight, idle.total, "{idle:?}");
        // Both ports hold a full set of receive buffers, from a ring or in reads.
        assert_eq!(idle.reads_in_flight, 2 * 64, "{idle:?}");
    });
}

#[test]
fn a_dry_buffer_ring_is_refilled_and_rearmed_without_losing_the_port() {
    both_modes(|multishot| {
        // Four buffers per port, and 100 datagrams waiting before the port is served: the
        // first receive takes four and runs out (or four reads complete at once).
        let rig = Rig::new(multishot, 4, 1522);
        let a = UdpPort::new("a", Kind::UdpGso);
        let b = UdpPort::new("b", Kind::UdpGso);
        for i in 0..100 {
            a.peer.send(&frame(1, i, 60)).unwrap();
        }
        rig.publish(&[Some(&a), Some(&b)]);
        assert_eq!(b.receive(100).len(), 100);
        let empty = rig.worker().counters.rx_ring_empty.get();
        if multishot {
            assert!(
                empty >= 1,
                "the ring never ran dry: the test proves nothing"
            );
        } else {
            assert_eq!(empty, 0);
        }
        // The port still receives.
        for i in 100..150 {
            a.peer.send(&frame(1, i, 60)).unwrap();
        }
        assert_eq!(b.receive(50).len(), 50);
        assert_eq!(a.stats().rx_frames, 150);
        assert_eq!(a.stats().drops.total(), 0);
        let idle = rig.idle_buffers();
        assert_eq!(idle.free + idle.reads_in_flight, idle.total, "{idle:?}");
    });
}

#[test]
fn oversize_and_empty_datagrams_are_counted_and_the_port_carries_on() {
    both_modes(|multishot| {
        // 2048-byte buffers.
        let rig = Rig::new(multishot, 64, 1522);
        let a = UdpPort::new("a", Kind::Datagram);
        let b = UdpPort::new("b", Kind::Datagram);
        rig.publish(&[Some(&a), Some(&b)]);
        for (i, len) in [3000, 2048, 1523, 0, 60].into_iter().enumerate() {
            let f = if len == 0 {
                Vec::new()
            } else {
                frame(1, i as u32, len)
            };
            a.peer.send(&f).unwrap();
        }
        let got = b.receive(1);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].len(), got[0][17]), (60, 4));
        assert!(b.quiet());
        let s = a.stats();
        assert_eq!(s.rx_frames, 5, "{s:?}");
        assert_eq!(
            (
                s.drops.get(DropReason::Oversize),
                s.drops.get(DropReason::Runt)
            ),
            (3, 1),
            "{s:?}"
        );
        if multishot {
            // The whole length of a datagram larger than its buffer is known.
            assert_eq!(s.rx_bytes, 3000 + 2048 + 1523 + 60, "{s:?}");
        }
        let idle = rig.idle_buffers();
        assert_eq!(idle.free + idle.reads_in_flight, idle.total, "{idle:?}");
    });
}

#[test]
fn an_l2tpv3_datagram_cut_short_by_its_buffer_is_oversize_and_an_empty_one_short() {
    both_modes(|multishot| {
        // max-frame 2047: 2048-byte buffers, so a cut datagram's frame (2048 minus the 8-byte
        // header) would pass the size check.
        let rig = Rig::new(multishot, 64, 2047);
        let codec = L2tpv3Codec {
            udp: true,
            ipv4_header: false,
            cookie_len: 0,
            counter: false,
            pincounter: false,
            offset: 0,
            txsession: 7,
            rxsession: 7,
            txcookie: 0,
            rxcookie: 0,
        };
        let a = UdpPort::new("a", Kind::L2tpv3(Arc::new(codec)));
        let b = UdpPort::new("b", Kind::Datagram);
        rig.publish(&[Some(&a), Some(&b)]);
        let header = [0u8, 3, 0, 0, 0, 0, 0, 7];
        let mut long = header.to_vec();
        long.extend(frame(1, 0, 3000));
        a.peer.send(&long).unwrap();
        // An empty datagram lacks the header, as it does read by a read.
        a.peer.send(&[]).unwrap();
        let mut good = header.to_vec();
        good.extend(frame(1, 1, 100));
        a.peer.send(&good).unwrap();
        let got = b.receive(1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), 100);
        assert!(b.quiet(), "the cut frame was forwarded");
        let d = a.stats().drops;
        assert_eq!(
            (
                d.get(DropReason::Oversize),
                d.get(DropReason::ShortHeader),
                d.total()
            ),
            (1, 1, 2),
            "{d:?}"
        );
    });
}

#[test]
fn a_port_removed_under_traffic_gives_back_every_buffer_and_its_descriptor() {
    both_modes(|multishot| {
        let rig = Rig::new(multishot, 64, 1522);
        let a = UdpPort::new("a", Kind::UdpGso);
        let b = UdpPort::new("b", Kind::UdpGso);
        rig.publish(&[Some(&a), Some(&b)]);
        let ino = a.inode;
        let peer = a.peer.try_clone().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..32 {
                        let _ = peer.send(&frame(1, i, 60));
                        i += 1;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        let sink = {
            let peer = b.peer.try_clone().unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if peer.recv(&mut buf).is_ok() {
                        n += 1;
                    }
                }
                n
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let UdpPort { peer: a_peer, .. } = a;
        rig.publish(&[None, Some(&b)]);
        let deadline = Instant::now() + WAIT;
        while socket_open(ino) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            !socket_open(ino),
            "the worker still holds the removed port's socket"
        );
        stop.store(true, Ordering::Relaxed);
        sender.join().unwrap();
        assert!(
            sink.join().unwrap() > 0,
            "no traffic flowed before the removal"
        );
        drop(a_peer);
        let idle = rig.idle_buffers();
        assert_eq!(idle.free + idle.reads_in_flight, idle.total, "{idle:?}");
        assert_eq!(
            idle.reads_in_flight, 64,
            "only port b holds buffers now: {idle:?}"
        );
        // The index (and its buffer group) serves a new port at once.
        let a2 = UdpPort::new("a2", Kind::UdpGso);
        rig.publish(&[Some(&a2), Some(&b)]);
        for i in 0..10 {
            a2.peer.send(&frame(3, i, 60)).unwrap();
        }
        let got = b.receive(10);
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|f| f[11] == 3));
    });
}

fn coalescing_rig(wait: Duration) -> Rig {
    let rig = Rig::with(WorkerConfig {
        rx_coalesce: wait,
        max_ports: 8,
        ..WorkerConfig::default()
    });
    // Kernel 6.12 brought the wait with a minimum time (IORING_FEAT_MIN_TIMEOUT).
    assert_eq!(rig.worker().features.batch_wait, kernel_at_least(6, 12));
    rig
}

#[test]
fn a_lone_frame_is_not_held_back_by_a_long_coalescing_wait() {
    // 200 ms to gather a batch, but a frame that comes alone, after the one before it was
    // forwarded, goes on at once.
    let rig = coalescing_rig(Duration::from_millis(200));
    let a = UdpPort::new("a", Kind::UdpGso);
    let b = UdpPort::new("b", Kind::UdpGso);
    rig.publish(&[Some(&a), Some(&b)]);
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let t = Instant::now();
        a.peer.send(&frame(1, i, 60)).unwrap();
        assert_eq!(b.receive(1).len(), 1);
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(100),
        "a lone frame waited {slowest:?}"
    );
}

#[test]
fn under_load_one_wakeup_carries_a_batch() {
    let rig = coalescing_rig(Duration::from_millis(20));
    if !rig.worker().features.batch_wait {
        eprintln!("skipping: this kernel cannot bound a wait for a batch");
        return;
    }
    let a = UdpPort::new("a", Kind::UdpGso);
    let b = UdpPort::new("b", Kind::UdpGso);
    rig.publish(&[Some(&a), Some(&b)]);
    let c = &rig.worker().counters;
    let (frames0, wakeups0) = (c.rx_frames.get(), c.wakeups.get());
    // Bursts of 4 frames every millisecond: handled as they come, a wake-up would carry 4.
    let peer = a.peer.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        for burst in 0..100u32 {
            for i in 0..4 {
                peer.send(&frame(1, burst * 4 + i, 60)).unwrap();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    assert_eq!(b.receive(400).len(), 400);
    sender.join().unwrap();
    let per_wakeup = (c.rx_frames.get() - frames0) as f64 / (c.wakeups.get() - wakeups0) as f64;
    assert!(per_wakeup >= 12.0, "{per_wakeup:.1} frames per wake-up");
}
