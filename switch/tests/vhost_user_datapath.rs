//! The vhost-user port's data path through a running worker, with the guest played by the
//! test: its memory is an anonymous mapping, its split rings are laid out in it by the test
//! (a driver's side of the virtio spec, written here), and its kick and call eventfds are
//! real. A unix datagram port stands on the
//! other side. No privileges needed.
//!
//! Checked: frames the guest transmits (header + frame, split over descriptors) reach the
//! datagram peer; frames from the peer land in the guest's receive buffers behind a
//! virtio-net header, with the used ring updated and the call eventfd signalled (also with
//! mergeable buffers, one frame over several chains); a frame with no receive buffer posted is
//! dropped and counted; a ring outside guest memory and a transmit chain pointing outside it
//! are frontend faults, counted, and the port serves again once the frontend sets it up anew.

use ringswitch_switch::port::datagram::DatagramPort;
use ringswitch_switch::port::vhost_user::{
    GuestMem, VhostShared, VhostUserPort, VringConf, F_EVENT_IDX, F_MRG_RXBUF, RXQ, TXQ,
};
use ringswitch_switch::{
    link, DomainId, DropReason, PortCell, PortCounters, PortEntry, PortId, Snapshot, Worker,
    WorkerConfig, WorkerId,
};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};

mod common;

const QSIZE: u16 = 16;
/// Where the rings and the buffers live in the guest's memory.
const RX_RING: u64 = 0x1000;
const TX_RING: u64 = 0x4000;
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x20_0000;
const MEM: usize = 4 << 20;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

fn eventfd() -> OwnedFd {
    // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0);
    // SAFETY: just created, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn eventfd_write(fd: &OwnedFd) {
    let one = 1u64;
    // SAFETY: writes 8 bytes from a live u64.
    let r = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    assert_eq!(r, 8);
}

/// Reads an eventfd's counter (0 if it was not signalled).
fn eventfd_take(fd: &OwnedFd) -> u64 {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into a live u64.
    let r = unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    if r == 8 {
        v
    } else {
        0
    }
}

fn pair() -> (OwnedFd, OwnedFd) {
    common::dgram_pair()
}

fn send(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: reads `frame.len()` bytes from a live slice.
    let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(n, frame.len() as isize);
}

fn recv(fd: &OwnedFd, wait: Duration) -> Option<Vec<u8>> {
    let end = Instant::now() + wait;
    let mut buf = vec![0u8; 70000];
    while Instant::now() < end {
        // SAFETY: writes at most `buf.len()` bytes into a live slice.
        let r = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if r >= 0 {
            buf.truncate(r as usize);
            return Some(buf);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    None
}

fn frame(dst: [u8; 6], src: u8, len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i * 7 + src as usize) as u8).collect();
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

struct Guest {
    mem: Arc<GuestMem>,
    rx_kick: Arc<OwnedFd>,
    tx_kick: Arc<OwnedFd>,
    rx_call: Arc<OwnedFd>,
    tx_call: Arc<OwnedFd>,
    /// Next free descriptor slot in each table.
    next_desc: [u16; 2],
}

impl Guest {
    fn new() -> Guest {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        Guest {
            mem: Arc::new(mem),
            rx_kick: Arc::new(eventfd()),
            tx_kick: Arc::new(eventfd()),
            rx_call: Arc::new(eventfd()),
            tx_call: Arc::new(eventfd()),
            next_desc: [0, 0],
        }
    }

    /// Ring `i`'s (descriptor table, available ring, used ring) addresses.
    fn ring(&self, i: usize) -> (u64, u64, u64) {
        let desc = if i == RXQ { RX_RING } else { TX_RING };
        let avail = desc + 16 * QSIZE as u64;
        // flags, idx, ring, used_event; the used ring is 4-aligned.
        let used = (avail + 6 + 2 * QSIZE as u64 + 3) & !3;
        (desc, avail, used)
    }

    fn conf(&self, i: usize) -> VringConf {
        let (desc, avail, used) = self.ring(i);
        VringConf {
            size: QSIZE,
            desc,
            avail,
            used,
            base: 0,
            kick: Some(if i == RXQ {
                self.rx_kick.clone()
            } else {
                self.tx_kick.clone()
            }),
            call: Some(if i == RXQ {
                self.rx_call.clone()
            } else {
                self.tx_call.clone()
            }),
            enabled: true,
            started: true,
        }
    }

    /// Adds one chain of descriptors (address, length, write-only) to ring `i` and makes it
    /// available.
    fn add_chain(&mut self, i: usize, descs: &[(u64, u32, bool)]) {
        let (dt, avail, _) = self.ring(i);
        let first = self.next_desc[i];
        for (k, &(addr, len, write)) in descs.iter().enumerate() {
            let slot = (first + k as u16) % QSIZE;
            let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
            if k + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            let next = (slot + 1) % QSIZE;
            let at = dt + 16 * slot as u64;
            self.mem.write_obj(addr, GuestAddress(at)).unwrap();
            self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        let idx: u16 = self.mem.read_obj(GuestAddress(avail + 2)).unwrap();
        self.mem
            .write_obj(first, GuestAddress(avail + 4 + 2 * (idx % QSIZE) as u64))
            .unwrap();
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
        self.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(avail + 2))
            .unwrap();
        self.next_desc[i] = (first + descs.len() as u16) % QSIZE;
    }

    fn used_idx(&self, i: usize) -> u16 {
        let (_, _, used) = self.ring(i);
        self.mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap()
    }

    /// The used ring's entry `k`: (head, length).
    fn used(&self, i: usize, k: u16) -> (u32, u32) {
        let (_, _, used) = self.ring(i);
        let at = used + 4 + 8 * (k % QSIZE) as u64;
        (
            self.mem.read_obj::<u32>(GuestAddress(at)).unwrap(),
            self.mem.read_obj::<u32>(GuestAddress(at + 4)).unwrap(),
        )
    }

    fn read(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }
}

struct Setup {
    worker: ringswitch_switch::WorkerHandle,
    shared: Arc<VhostShared>,
    vcount: Arc<PortCounters>,
    dcount: Arc<PortCounters>,
    peer: OwnedFd,
    _control: ringswitch_switch::ControlLink,
}

fn setup() -> Setup {
    let (control, wlink) = link(Snapshot::default()).unwrap();
    let worker = Worker::spawn(
        WorkerConfig {
            max_ports: 4,
            ..WorkerConfig::default()
        },
        wlink,
    )
    .unwrap();
    let shared = VhostShared::new().unwrap();
    let (sw, peer) = pair();
    let vcount = Arc::new(PortCounters::default());
    let dcount = Arc::new(PortCounters::default());
    let table = vec![
        Some(Arc::new(PortEntry {
            id: PortId(0),
            name: "vhu".into(),
            port: PortCell::new(VhostUserPort::new("vhu", shared.clone())),
            worker: WorkerId(0),
            domain: DomainId(0),
            link_up: true,
            rx_filter: None,
            counters: vcount.clone(),
            conn_fd: -1,
            queues: Vec::new(),
        })),
        Some(Arc::new(PortEntry {
            id: PortId(1),
            name: "dg".into(),
            port: PortCell::new(DatagramPort::new(sw, None, false, "dg")),
            worker: WorkerId(0),
            domain: DomainId(0),
            link_up: true,
            rx_filter: None,
            counters: dcount.clone(),
            conn_fd: -1,
            queues: Vec::new(),
        })),
    ];
    let g = control.publish(table);
    control.wait_applied(g, Duration::from_secs(5)).unwrap();
    Setup {
        worker,
        shared,
        vcount,
        dcount,
        peer,
        _control: control,
    }
}

fn start(s: &Setup, guest: &Guest, features: u64) {
    let g = s.shared.update(|c| {
        c.mem = Some(guest.mem.clone());
        c.features = features;
        (c.vrings[RXQ], c.vrings[TXQ]) = (guest.conf(RXQ), guest.conf(TXQ));
    });
    assert!(s.shared.wait_applied(g, Duration::from_secs(5)));
}

#[test]
fn frames_cross_between_a_guest_and_a_datagram_port() {
    for features in [0, F_EVENT_IDX] {
        let s = setup();
        let mut guest = Guest::new();
        start(&s, &guest, features);

        // Guest → switch: the header in its own descriptor, the frame split over two.
        let f = frame([0xff; 6], 1, 300);
        guest
            .mem
            .write_slice(&[0u8; 12], GuestAddress(TX_BUFS))
            .unwrap();
        guest
            .mem
            .write_slice(&f[..100], GuestAddress(TX_BUFS + 0x1000))
            .unwrap();
        guest
            .mem
            .write_slice(&f[100..], GuestAddress(TX_BUFS + 0x2000))
            .unwrap();
        guest.add_chain(
            TXQ,
            &[
                (TX_BUFS, 12, false),
                (TX_BUFS + 0x1000, 100, false),
                (TX_BUFS + 0x2000, 200, false),
            ],
        );
        eventfd_write(&guest.tx_kick);
        let got = recv(&s.peer, Duration::from_secs(5)).expect("the guest's frame");
        assert_eq!(got, f);
        wait_for("the tx chain's used entry", || guest.used_idx(TXQ) == 1);
        assert_eq!(guest.used(TXQ, 0).0, 0);
        wait_for("the tx interrupt", || eventfd_take(&guest.tx_call) > 0);

        // Switch → guest: two receive buffers posted, one frame each.
        guest.add_chain(RXQ, &[(RX_BUFS, 2048, true)]);
        guest.add_chain(RXQ, &[(RX_BUFS + 0x1000, 2048, true)]);
        eventfd_write(&guest.rx_kick);
        let back = frame([2, 0, 0, 0, 0, 1], 2, 500);
        send(&s.peer, &back);
        wait_for("the rx used entry", || guest.used_idx(RXQ) == 1);
        let (head, len) = guest.used(RXQ, 0);
        assert_eq!((head, len), (0, 512));
        let data = guest.read(RX_BUFS, 512);
        assert_eq!(
            &data[..12],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            "a plain frame's header: no offloads, one buffer"
        );
        assert_eq!(&data[12..], &back[..]);
        wait_for("the rx interrupt", || eventfd_take(&guest.rx_call) > 0);

        // No receive buffer left after the second: the third frame is dropped and counted.
        send(&s.peer, &back);
        wait_for("the second rx entry", || guest.used_idx(RXQ) == 2);
        send(&s.peer, &back);
        wait_for("the drop", || {
            s.vcount.snapshot().drops.get(DropReason::QueueFull) == 1
        });
        assert_eq!(s.vcount.snapshot().tx_frames, 2);
        assert_eq!(s.dcount.snapshot().tx_frames, 1);
        s.worker.stop_and_join().unwrap();
    }
}

#[test]
fn mergeable_buffers_carry_a_large_frame_over_several_chains() {
    let s = setup();
    let mut guest = Guest::new();
    start(&s, &guest, F_MRG_RXBUF | F_EVENT_IDX);
    for k in 0..4u64 {
        guest.add_chain(RXQ, &[(RX_BUFS + k * 0x1000, 1536, true)]);
    }
    eventfd_write(&guest.rx_kick);
    // A 4000-byte frame: 4012 bytes with the header, three 1536-byte buffers.
    let big = frame([2, 0, 0, 0, 0, 1], 3, 4000);
    send(&s.peer, &big);
    wait_for("three used entries", || guest.used_idx(RXQ) == 3);
    let lens: Vec<u32> = (0..3).map(|k| guest.used(RXQ, k).1).collect();
    assert_eq!(lens, [1536, 1536, 940]);
    let mut got = Vec::new();
    for (k, l) in lens.iter().enumerate() {
        got.extend(guest.read(RX_BUFS + k as u64 * 0x1000, *l as usize));
    }
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
    assert_eq!(&got[12..], &big[..]);
    s.worker.stop_and_join().unwrap();
}

#[test]
fn a_frontend_fault_is_counted_and_the_port_serves_again_when_set_up_anew() {
    let s = setup();
    let mut guest = Guest::new();
    // A ring outside guest memory.
    let g = s.shared.update(|c| {
        c.mem = Some(guest.mem.clone());
        (c.vrings[RXQ], c.vrings[TXQ]) = (guest.conf(RXQ), guest.conf(TXQ));
        c.vrings[TXQ].desc = (MEM as u64) + 0x1000;
    });
    assert!(s.shared.wait_applied(g, Duration::from_secs(5)));
    assert!(s
        .shared
        .take_fault()
        .unwrap()
        .contains("not in guest memory"));
    assert_eq!(s.vcount.snapshot().drops.get(DropReason::FrontendFault), 1);

    // The control side resets the device after a fault (the frontend reconnects and sets
    // it up again): set up properly, then a transmit chain that points outside memory.
    let g = s.shared.update(|c| *c = Default::default());
    assert!(s.shared.wait_applied(g, Duration::from_secs(5)));
    start(&s, &guest, 0);
    guest.add_chain(
        TXQ,
        &[(TX_BUFS, 12, false), (MEM as u64 + 0x10_0000, 64, false)],
    );
    eventfd_write(&guest.tx_kick);
    wait_for("the second fault", || {
        s.vcount.snapshot().drops.get(DropReason::FrontendFault) == 2
    });
    assert!(s.shared.take_fault().is_some());

    // The datagram port still forwards (to nobody but itself: no other live port, so the
    // frame is counted as having no destination), and a fresh set-up serves the guest.
    let mut guest = Guest::new();
    start(&s, &guest, 0);
    let f = frame([0xff; 6], 4, 80);
    guest
        .mem
        .write_slice(&[0u8; 12], GuestAddress(TX_BUFS))
        .unwrap();
    guest
        .mem
        .write_slice(&f, GuestAddress(TX_BUFS + 12))
        .unwrap();
    guest.add_chain(TXQ, &[(TX_BUFS, 12 + 80, false)]);
    eventfd_write(&guest.tx_kick);
    assert_eq!(recv(&s.peer, Duration::from_secs(5)).unwrap(), f);
    s.worker.stop_and_join().unwrap();
}

/// An Ethernet + IPv4 + TCP frame with `payload` bytes and the partial checksum a TSO sender
/// leaves (the pseudo-header sum), with the virtio-net header that describes it as a segment
/// of `mss`-byte pieces.
fn tso_frame(payload: usize, mss: u16) -> ([u8; 12], Vec<u8>) {
    use ringswitch_switch::gso::checksum::pseudo_header_v4;
    use ringswitch_switch::gso::wire::{Ipv4Repr, TcpRepr};
    let mut f = vec![2, 0, 0, 0, 0, 0x22, 2, 0, 0, 0, 0, 0x11, 0x08, 0x00];
    let mut hdr = [0u8; 60];
    let n = Ipv4Repr {
        dscp_ecn: 0,
        total_len: (20 + 20 + payload) as u16,
        ident: 7,
        dont_frag: true,
        more_frags: false,
        frag_offset: 0,
        ttl: 64,
        protocol: 6,
        src: [10, 0, 0, 1],
        dst: [10, 0, 0, 2],
        options: [0; 40],
        options_len: 0,
    }
    .emit(&mut hdr);
    f.extend_from_slice(&hdr[..n]);
    let n = TcpRepr {
        src_port: 1000,
        dst_port: 2000,
        seq: 1,
        ack: 1,
        flags: 0x018,
        window: 512,
        checksum: 0,
        urgent: 0,
        options: [0; 40],
        options_len: 0,
    }
    .emit(&mut hdr);
    f.extend_from_slice(&hdr[..n]);
    f.extend((0..payload).map(|i| (i * 13) as u8));
    let seed = pseudo_header_v4([10, 0, 0, 1], [10, 0, 0, 2], 6, (20 + payload) as u32);
    f[50..52].copy_from_slice(&seed.fold().to_be_bytes());
    let mut h = [0u8; 12];
    h[0] = 1; // NEEDS_CSUM
    h[1] = 1; // GSO_TCPV4
    h[2..4].copy_from_slice(&54u16.to_le_bytes());
    h[4..6].copy_from_slice(&mss.to_le_bytes());
    h[6..8].copy_from_slice(&34u16.to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    (h, f)
}

#[test]
fn segments_reach_a_guest_whole_only_if_it_negotiated_them() {
    use ringswitch_switch::port::vhost_user::{F_GUEST_CSUM, F_GUEST_TSO4};
    let (control, wlink) = link(Snapshot::default()).unwrap();
    let worker = Worker::spawn(
        WorkerConfig {
            max_ports: 4,
            ..WorkerConfig::default()
        },
        wlink,
    )
    .unwrap();
    let (sw, peer) = pair();
    let shared = [VhostShared::new().unwrap(), VhostShared::new().unwrap()];
    let counters: Vec<Arc<PortCounters>> =
        (0..3).map(|_| Arc::new(PortCounters::default())).collect();
    let entry = |i: usize, name: &str, port: Arc<PortCell>| {
        Some(Arc::new(PortEntry {
            id: PortId(i as u16),
            name: name.into(),
            port,
            worker: WorkerId(0),
            domain: DomainId(0),
            link_up: true,
            rx_filter: None,
            counters: counters[i].clone(),
            conn_fd: -1,
            queues: Vec::new(),
        }))
    };
    let table = vec![
        entry(
            0,
            "a",
            PortCell::new(VhostUserPort::new("a", shared[0].clone())),
        ),
        entry(
            1,
            "b",
            PortCell::new(VhostUserPort::new("b", shared[1].clone())),
        ),
        entry(
            2,
            "dg",
            PortCell::new(DatagramPort::new(sw, None, false, "dg")),
        ),
    ];
    let g = control.publish(table);
    control.wait_applied(g, Duration::from_secs(5)).unwrap();
    let setup = |sh: &Arc<VhostShared>, guest: &Guest, features: u64| {
        let g = sh.update(|c| {
            c.mem = Some(guest.mem.clone());
            c.features = features;
            (c.vrings[RXQ], c.vrings[TXQ]) = (guest.conf(RXQ), guest.conf(TXQ));
        });
        assert!(sh.wait_applied(g, Duration::from_secs(5)));
    };
    let mut a = Guest::new();
    let mut b = Guest::new();
    setup(&shared[0], &a, F_MRG_RXBUF);
    let (h, f) = tso_frame(3000, 1000);
    a.mem.write_slice(&h, GuestAddress(TX_BUFS)).unwrap();
    a.mem.write_slice(&f, GuestAddress(TX_BUFS + 12)).unwrap();
    let mut sent = 0u16;
    let mut transmit = |a: &mut Guest| {
        a.add_chain(TXQ, &[(TX_BUFS, 12 + f.len() as u32, false)]);
        eventfd_write(&a.tx_kick);
        sent += 1;
        wait_for("the segment taken", || a.used_idx(TXQ) == sent);
    };

    // B negotiated partial checksums and TSO4: the segment arrives whole, with its header;
    // the datagram port (no offloads) gets it cut into three pieces.
    setup(&shared[1], &b, F_MRG_RXBUF | F_GUEST_CSUM | F_GUEST_TSO4);
    for k in 0..4u64 {
        b.add_chain(RXQ, &[(RX_BUFS + k * 0x2000, 4096, true)]);
    }
    eventfd_write(&b.rx_kick);
    transmit(&mut a);
    wait_for("B's used entry", || b.used_idx(RXQ) == 1);
    let (_, len) = b.used(RXQ, 0);
    assert_eq!(len as usize, 12 + f.len(), "the whole segment");
    let got = b.read(RX_BUFS, len as usize);
    assert_eq!(&got[..10], &h[..10], "its virtio-net header");
    assert_eq!(&got[12..], &f[..]);
    let mut pieces = Vec::new();
    while let Some(p) = recv(&peer, Duration::from_millis(500)) {
        pieces.push(p.len());
    }
    assert_eq!(
        pieces,
        [54 + 1000, 54 + 1000, 54 + 1000],
        "cut for the datagram port"
    );

    // B's driver comes back without offloads: the same segment now reaches it cut, behind
    // plain headers, with its checksums complete.
    setup(&shared[1], &b, F_MRG_RXBUF);
    transmit(&mut a);
    wait_for("B's three pieces", || b.used_idx(RXQ) == 4);
    for k in 1..4u16 {
        let (head, len) = b.used(RXQ, k);
        assert_eq!(
            (head, len as usize),
            (k as u32, 12 + 54 + 1000),
            "piece {k}"
        );
        let got = b.read(RX_BUFS + k as u64 * 0x2000, len as usize);
        assert_eq!(&got[..10], &[0u8; 10], "piece {k}: a plain header");
        // The TCP checksum is complete: the ones' complement sum over the pseudo-header
        // and the segment is 0xffff.
        let tcp = &got[12 + 34..];
        let mut sum: u32 = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 6 + tcp.len() as u32;
        for c in tcp.chunks(2) {
            sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff, "piece {k}: TCP checksum");
    }
    assert_eq!(counters[1].snapshot().drops.get(DropReason::BadOffload), 0);
    worker.stop_and_join().unwrap();
}
