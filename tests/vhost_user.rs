//! vhost-user ports of the ringswitch binary, driven by a frontend written for the test: the
//! `vhost` crate's frontend side speaks the protocol (as QEMU does: owner, features, protocol
//! features, a memfd memory table, ring sizes, addresses, bases, eventfds, enable), and the
//! test plays the guest's virtio-net driver on split rings in that memory. A unix `dgram`
//! port of the same switch is the other station. No privileges needed.
//!
//! Checked: frames both ways; GET_VRING_BASE answers where the switch stopped; a frontend that
//! goes away and comes back (a guest reboot or a QEMU restart) is served again, 100 times,
//! reported `connected` in `query-ports` only while it runs, with no descriptor or mapping
//! left behind; a frontend
//! that puts a ring outside its memory is disconnected and counted (`frontend_fault`) while
//! the other port keeps forwarding; refusals of bad `-chardev`/`-netdev` spellings; a
//! two-queue-pair frontend served on both pairs with each flow on one receive ring; SEND_RARP
//! announcing the guest's MAC from its port; malformed messages (short, huge, unknown, bad
//! version, a bogus memory table, garbage) and chains (a loop, a write-only transmit
//! descriptor) each reset the frontend while two datagram ports keep forwarding; a busy-polling
//! switch telling the guest not to kick.

mod common;

use common::unique_name;
use common::{run_cli, Qmp, Switch};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const MEM: usize = 4 << 20;
const QSIZE: u16 = 16;
const RXQ: usize = 0;
const TXQ: usize = 1;
/// Where each ring's descriptor table is (two queue pairs at most).
const RINGS: [u64; 4] = [0x1000, 0x4000, 0x7000, 0xa000];
const RX_BUFS: u64 = 0x10_0000;
const TX_BUFS: u64 = 0x20_0000;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

fn memfd(size: usize) -> File {
    let name = c"rs-test-guest";
    // SAFETY: a NUL-terminated name; a non-negative result is a new descriptor.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: just created, owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size as u64).unwrap();
    f
}

/// A guest: its memory (a memfd both sides map), its rings and eventfds, and a frontend
/// connection that set the device up.
struct Guest {
    mem: GuestMemoryMmap,
    _file: File,
    fe: Frontend,
    kick: Vec<EventFd>,
    call: Vec<EventFd>,
    next_desc: Vec<u16>,
}

fn ring(i: usize) -> (u64, u64, u64) {
    let desc = RINGS[i];
    let avail = desc + 16 * QSIZE as u64;
    let used = (avail + 6 + 2 * QSIZE as u64 + 3) & !3;
    (desc, avail, used)
}

impl Guest {
    /// Connects to `path` and sets the device up as QEMU does, with `features`.
    fn connect(path: &Path, features: u64) -> Guest {
        Guest::connect_pairs(path, features, 1)
    }

    /// As `connect`, with `pairs` queue pairs (multiqueue).
    fn connect_pairs(path: &Path, features: u64, pairs: usize) -> Guest {
        let rings = 2 * pairs;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut fe = loop {
            match Frontend::connect(path, rings as u64) {
                Ok(fe) => break fe,
                Err(e) => {
                    assert!(Instant::now() < deadline, "connecting to {path:?}: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        let file = memfd(MEM);
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            MEM,
            Some(FileOffset::new(file.try_clone().unwrap(), 0)),
        )])
        .unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        fe.set_owner().unwrap();
        let offered = fe.get_features().unwrap();
        assert!(offered & VIRTIO_F_VERSION_1 != 0 && offered & VHOST_USER_F_PROTOCOL_FEATURES != 0);
        fe.set_features(features | VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES)
            .unwrap();
        let proto = fe.get_protocol_features().unwrap();
        assert!(proto.contains(VhostUserProtocolFeatures::MQ));
        assert!(proto.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS));
        fe.set_protocol_features(
            proto & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK),
        )
        .unwrap();
        // GET_QUEUE_NUM answers in queue pairs (1), as QEMU and DPDK read it; the crate's
        // frontend would take that as one vring and refuse the second, so it is not asked.
        fe.set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM as u64,
            userspace_addr: host,
            mmap_offset: 0,
            mmap_handle: file.as_raw_fd(),
        }])
        .unwrap();
        let kick: Vec<EventFd> = (0..rings).map(|_| EventFd::new(0).unwrap()).collect();
        let call: Vec<EventFd> = (0..rings)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        for q in 0..rings {
            let (d, a, u) = ring(q);
            fe.set_vring_num(q, QSIZE).unwrap();
            fe.set_vring_addr(
                q,
                &VringConfigData {
                    queue_max_size: QSIZE,
                    queue_size: QSIZE,
                    flags: 0,
                    desc_table_addr: host + d,
                    used_ring_addr: host + u,
                    avail_ring_addr: host + a,
                    log_addr: None,
                },
            )
            .unwrap();
            fe.set_vring_base(q, 0).unwrap();
            fe.set_vring_call(q, &call[q]).unwrap();
            fe.set_vring_kick(q, &kick[q]).unwrap();
            fe.set_vring_enable(q, true).unwrap();
        }
        Guest {
            mem,
            _file: file,
            fe,
            kick,
            call,
            next_desc: vec![0; rings],
        }
    }

    fn add_chain(&mut self, i: usize, descs: &[(u64, u32, bool)]) {
        let (dt, avail, _) = ring(i);
        let first = self.next_desc[i];
        for (k, &(addr, len, write)) in descs.iter().enumerate() {
            let slot = (first + k as u16) % QSIZE;
            let mut flags: u16 = if write { 2 } else { 0 };
            if k + 1 < descs.len() {
                flags |= 1;
            }
            let at = dt + 16 * slot as u64;
            self.mem.write_obj(addr, GuestAddress(at)).unwrap();
            self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            self.mem
                .write_obj((slot + 1) % QSIZE, GuestAddress(at + 14))
                .unwrap();
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
        self.kick[i].write(1).unwrap();
    }

    fn used_idx(&self, i: usize) -> u16 {
        self.mem
            .read_obj::<u16>(GuestAddress(ring(i).2 + 2))
            .unwrap()
    }

    fn used_head(&self, i: usize, k: u16) -> u32 {
        self.mem
            .read_obj::<u32>(GuestAddress(ring(i).2 + 4 + 8 * (k % QSIZE) as u64))
            .unwrap()
    }

    fn used_len(&self, i: usize, k: u16) -> u32 {
        self.mem
            .read_obj::<u32>(GuestAddress(ring(i).2 + 4 + 8 * (k % QSIZE) as u64 + 4))
            .unwrap()
    }

    /// Transmits one frame (header and frame in one descriptor) from buffer slot `k`.
    fn transmit(&mut self, k: u64, frame: &[u8]) {
        self.transmit_on(TXQ, k, frame)
    }

    /// As `transmit`, on transmit ring `q`.
    fn transmit_on(&mut self, q: usize, k: u64, frame: &[u8]) {
        let at = TX_BUFS + k * 0x1000;
        self.mem.write_slice(&[0u8; 12], GuestAddress(at)).unwrap();
        self.mem.write_slice(frame, GuestAddress(at + 12)).unwrap();
        self.add_chain(q, &[(at, 12 + frame.len() as u32, false)]);
    }
}

fn frame(dst: [u8; 6], src: u8, len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i * 13 + src as usize) as u8).collect();
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

struct Setup {
    dir: PathBuf,
    vhu: PathBuf,
    peer: UnixDatagram,
    switch: Option<Switch>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        drop(self.switch.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup() -> Setup {
    setup_with(&[])
}

fn setup_with(extra: &[&str]) -> Setup {
    setup_port("vhost-user,id=v0,chardev=c0", extra)
}

fn setup_port(vhost_user: &str, extra: &[&str]) -> Setup {
    let dir = std::env::temp_dir().join(unique_name("rs-vhu"));
    std::fs::create_dir_all(&dir).unwrap();
    let vhu = dir.join("vhu.sock");
    let sw_end = dir.join("sw.sock");
    let peer_end = dir.join("peer.sock");
    let peer = UnixDatagram::bind(&peer_end).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let chardev = format!("socket,id=c0,path={},server=on,wait=off", vhu.display());
    let dgram = format!(
        "dgram,id=d0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
        sw_end.display(),
        peer_end.display()
    );
    let mut args = vec![
        "-chardev", &chardev, "-netdev", vhost_user, "-netdev", &dgram,
    ];
    args.extend_from_slice(extra);
    let switch = Switch::start(&args);
    Setup {
        dir,
        vhu,
        peer,
        switch: Some(switch),
    }
}

#[test]
fn a_frontend_exchanges_frames_with_a_datagram_port() {
    let s = setup();
    let mut g = Guest::connect(&s.vhu, VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX);
    // Guest → peer.
    let f = frame([0xff; 6], 1, 200);
    g.transmit(0, &f);
    let mut buf = vec![0u8; 70000];
    let n = s
        .peer
        .recv(&mut buf)
        .expect("the guest's frame at the peer");
    assert_eq!(&buf[..n], &f[..]);
    wait_for("the tx used entry", || g.used_idx(TXQ) == 1);
    // Peer → guest.
    g.add_chain(RXQ, &[(RX_BUFS, 2048, true)]);
    let back = frame([2, 0, 0, 0, 0, 1], 2, 300);
    let sw_end = s.dir.join("sw.sock");
    s.peer.send_to(&back, &sw_end).unwrap();
    wait_for("the rx used entry", || g.used_idx(RXQ) == 1);
    assert_eq!(g.used_len(RXQ, 0), 312);
    let mut got = vec![0u8; 312];
    g.mem.read_slice(&mut got, GuestAddress(RX_BUFS)).unwrap();
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    assert_eq!(&got[12..], &back[..]);
    wait_for("the rx interrupt", || g.call[RXQ].read().is_ok());
    // Stopping the transmit ring answers where the switch stopped.
    assert_eq!(g.fe.get_vring_base(TXQ).unwrap(), 1);
}

/// A UDP/IPv4 frame to the guest's MAC of flow `flow` (its source port), carrying `seq`.
fn udp_frame(flow: u16, seq: u16) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14] = 0x45;
    f[16..18].copy_from_slice(&46u16.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 9]);
    f[30..34].copy_from_slice(&[10, 0, 0, 1]);
    f[34..36].copy_from_slice(&(1000 + flow).to_be_bytes());
    f[36..38].copy_from_slice(&7u16.to_be_bytes());
    f[38..40].copy_from_slice(&26u16.to_be_bytes());
    f[42..44].copy_from_slice(&seq.to_be_bytes());
    f
}

/// Gives both receive rings room for every frame, sends 8 flows of 2 UDP frames each from the
/// peer and waits until all 16 are on the rings.
fn flows_to_both_receive_rings(s: &Setup, g: &mut Guest) {
    for q in [RXQ, 2] {
        for k in 0..16u64 {
            g.add_chain(q, &[(RX_BUFS + (q as u64 * 16 + k) * 0x1000, 2048, true)]);
        }
    }
    let sw_end = s.dir.join("sw.sock");
    for seq in 0..2 {
        for flow in 0..8 {
            s.peer.send_to(&udp_frame(flow, seq), &sw_end).unwrap();
        }
    }
    wait_for("16 frames on the receive rings", || {
        g.used_idx(RXQ) + g.used_idx(2) == 16
    });
}

/// The (flow, sequence number) of each frame on receive ring `q`, in ring order.
fn received_flows(g: &Guest, q: usize) -> Vec<(u16, u16)> {
    (0..g.used_idx(q))
        .map(|k| {
            let (head, len) = (g.used_head(q, k), g.used_len(q, k));
            assert_eq!(len, 12 + 60);
            let mut got = vec![0u8; 72];
            let at = RX_BUFS + (q as u64 * 16 + u64::from(head)) * 0x1000;
            g.mem.read_slice(&mut got, GuestAddress(at)).unwrap();
            let flow = u16::from_be_bytes([got[12 + 34], got[12 + 35]]) - 1000;
            (flow, u16::from_be_bytes([got[12 + 42], got[12 + 43]]))
        })
        .collect()
}

#[test]
fn a_multiqueue_frontend_is_served_on_every_queue_pair_with_each_flow_on_one_ring() {
    // One worker serves both pairs and spreads flows over both receive rings (with several
    // workers each serves its own pairs: the next test).
    let s = setup_port("vhost-user,id=v0,chardev=c0,queues=2", &["--cores", "0"]);
    // GET_QUEUE_NUM (17) answers the pairs offered, as QEMU reads it (after GET_FEATURES,
    // SET_FEATURES, GET_PROTOCOL_FEATURES and SET_PROTOCOL_FEATURES with MQ).
    {
        let mut c = std::os::unix::net::UnixStream::connect(&s.vhu).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let features = VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES;
        raw_request(&mut c, 1, 1, &[], true);
        raw_request(&mut c, 2, 1, &features.to_le_bytes(), false);
        raw_request(&mut c, 15, 1, &[], true);
        let proto = VhostUserProtocolFeatures::MQ.bits();
        raw_request(&mut c, 16, 1, &proto.to_le_bytes(), false);
        let (_, _, pairs) = raw_request(&mut c, 17, 1, &[], true).unwrap();
        assert_eq!(pairs, 2);
    }
    let mut g = Guest::connect_pairs(&s.vhu, VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX, 2);
    // Learn the guest's MAC (and check the second pair's transmit ring) first.
    let mut buf = vec![0u8; 70000];
    for (k, q) in [(0u64, TXQ), (1, 3)] {
        let f = frame([0xff; 6], 1, 100 + k as usize);
        g.transmit_on(q, k, &f);
        let n = s
            .peer
            .recv(&mut buf)
            .expect("the guest's frame at the peer");
        assert_eq!(&buf[..n], &f[..], "from transmit ring {q}");
    }
    wait_for("both transmit rings' used entries", || {
        g.used_idx(TXQ) == 1 && g.used_idx(3) == 1
    });
    // Room on both receive rings (for every frame, wherever they go), then 8 flows of 2
    // frames each from the peer.
    flows_to_both_receive_rings(&s, &mut g);
    let mut ring_of = std::collections::HashMap::new();
    for q in [RXQ, 2] {
        let mut last = std::collections::HashMap::new();
        for (flow, seq) in received_flows(&g, q) {
            assert_eq!(
                *ring_of.entry(flow).or_insert(q),
                q,
                "flow {flow} on two rings"
            );
            let prev = last.insert(flow, seq);
            assert_eq!(
                prev.map_or(0, |p| p + 1),
                seq,
                "flow {flow} out of order on ring {q}"
            );
        }
    }
    assert_eq!(ring_of.len(), 8);
    assert!(
        ring_of.values().any(|q| *q == RXQ) && ring_of.values().any(|q| *q == 2),
        "8 flows all on one ring: {ring_of:?}"
    );
}

#[test]
fn a_multiqueue_frontend_is_spread_over_two_workers_each_sending_on_its_own_pairs() {
    // Two workers: the port's two pairs get an instance each, one per worker. Both transmit
    // rings are served; the datagram port's worker, which holds one of the instances, hands
    // every frame to the guest on its own pair's receive ring (no crossing), in order.
    let s = setup_port("vhost-user,id=v0,chardev=c0,queues=2", &["--cores", "0,1"]);
    let mut g = Guest::connect_pairs(&s.vhu, VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX, 2);
    let mut buf = vec![0u8; 70000];
    for round in 0..3u64 {
        for (k, q) in [(0u64, TXQ), (1, 3)] {
            let f = frame([0xff; 6], 1, 100 + (round * 2 + k) as usize);
            g.transmit_on(q, round, &f);
            let n = s
                .peer
                .recv(&mut buf)
                .expect("the guest's frame at the peer");
            assert_eq!(&buf[..n], &f[..], "from transmit ring {q}, round {round}");
        }
    }
    wait_for("both transmit rings' used entries", || {
        g.used_idx(TXQ) == 3 && g.used_idx(3) == 3
    });
    flows_to_both_receive_rings(&s, &mut g);
    let used: Vec<usize> = [RXQ, 2]
        .into_iter()
        .filter(|&q| g.used_idx(q) > 0)
        .collect();
    assert_eq!(
        used.len(),
        1,
        "frames from one worker on both rings: {used:?}"
    );
    let mut last = std::collections::HashMap::new();
    for (flow, seq) in received_flows(&g, used[0]) {
        let prev = last.insert(flow, seq);
        assert_eq!(prev.map_or(0, |p| p + 1), seq, "flow {flow} out of order");
    }
    assert_eq!(last.len(), 8);
}

#[test]
fn a_busy_polling_switch_tells_the_guest_not_to_kick_and_still_serves_it() {
    let s = setup_with(&["--poll", "busy"]);
    // Without EVENT_IDX: VRING_USED_F_NO_NOTIFY in each ring's used flags.
    let mut g = Guest::connect(&s.vhu, VIRTIO_NET_F_MRG_RXBUF);
    wait_for("no-notify on both rings", || {
        [RXQ, TXQ]
            .iter()
            .all(|&q| g.mem.read_obj::<u16>(GuestAddress(ring(q).2)).unwrap() & 1 == 1)
    });
    let mut buf = vec![0u8; 70000];
    for k in 0..3u64 {
        let f = frame([0xff; 6], 1, 100 + k as usize);
        g.transmit(k, &f);
        let n = s
            .peer
            .recv(&mut buf)
            .expect("the guest's frame at the peer");
        assert_eq!(&buf[..n], &f[..]);
    }
    g.add_chain(RXQ, &[(RX_BUFS, 2048, true)]);
    let back = frame([2, 0, 0, 0, 0, 1], 2, 300);
    s.peer.send_to(&back, s.dir.join("sw.sock")).unwrap();
    wait_for("the rx used entry", || g.used_idx(RXQ) == 1);
}

/// Descriptors the process holds, and its memory mappings of guest memory (the test's memfd).
fn held(pid: u32) -> (usize, usize) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    (
        fds,
        maps.lines().filter(|l| l.contains("rs-test-guest")).count(),
    )
}

#[test]
fn a_frontend_that_goes_away_and_comes_back_is_served_again() {
    let dir = std::env::temp_dir().join(unique_name("rs-vq"));
    std::fs::create_dir_all(&dir).unwrap();
    let qmp_path = dir.join("qmp.sock");
    let mut s = setup_with(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", qmp_path.display()),
    ]);
    let mut qmp = Qmp::connect(&qmp_path);
    let pid = s.switch.as_ref().unwrap().pid().expect("running");
    assert!(!qmp.connected("v0"), "connected before any frontend came");
    let sw_end = s.dir.join("sw.sock");
    let mut buf = vec![0u8; 70000];
    let before = held(pid);
    // A guest reboot or a QEMU restart, 100 times: each frontend is served, reported
    // connected while it runs and down when it has gone, and leaves nothing behind.
    for round in 0..100u8 {
        // Every other guest's driver takes partial checksums and TSO4, and the port shows it.
        let offloads = round % 2 == 0;
        let features = VIRTIO_RING_F_EVENT_IDX
            | if offloads {
                VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4
            } else {
                0
            };
        let mut g = Guest::connect(&s.vhu, features);
        wait_for("connected", || qmp.connected("v0"));
        let shown = qmp.port("v0")["offloads"].clone();
        if offloads {
            assert_eq!(shown, serde_json::json!(["csum", "tso4"]), "round {round}");
        } else {
            assert!(shown.is_null(), "round {round}: {shown}");
        }
        let f = frame([0xff; 6], round, 100 + round as usize);
        g.transmit(0, &f);
        let n = s.peer.recv(&mut buf).expect("the guest's frame");
        assert_eq!(&buf[..n], &f[..], "round {round}");
        g.add_chain(RXQ, &[(RX_BUFS, 2048, true)]);
        // The peer's frames reach this guest (the last round's memory is gone).
        let back = frame([2, 0, 0, 0, 0, round], 200, 90);
        s.peer.send_to(&back, &sw_end).unwrap();
        wait_for("the rx used entry", || g.used_idx(RXQ) == 1);
        drop(g);
        wait_for("down once the frontend went", || !qmp.connected("v0"));
        // Memory is unmapped once the worker has let go of it (soon after).
        wait_for("guest memory unmapped", || held(pid).1 == 0);
    }
    // Everything a frontend brought (its memory's file, its eventfds, its connection) is
    // let go once the protocol thread and the worker are done with it: the switch comes back
    // to what it held before the first one.
    let end = Instant::now() + Duration::from_secs(10);
    while held(pid) != before && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    if held(pid) != before {
        for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
            let e = e.unwrap();
            eprintln!("{:?} -> {:?}", e.file_name(), std::fs::read_link(e.path()));
        }
    }
    assert_eq!(
        held(pid),
        before,
        "descriptors or mappings left behind by 100 frontends"
    );
    drop(qmp);
    s.switch.take();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_ring_outside_guest_memory_resets_that_frontend_and_nothing_else() {
    let mut s = setup();
    let sw_end = s.dir.join("sw.sock");
    let g = Guest::connect(&s.vhu, 0);
    // Re-point the transmit ring beyond the memory table: the worker refuses it.
    let bogus = g.mem.get_host_address(GuestAddress(0)).unwrap() as u64 + MEM as u64 * 4;
    let _ = g.fe.set_vring_addr(
        TXQ,
        &VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: bogus,
            used_ring_addr: bogus,
            avail_ring_addr: bogus,
            log_addr: None,
        },
    );
    // The switch drops the connection: the frontend's next request fails.
    wait_for("the switch to drop the frontend", || {
        g.fe.get_features().is_err()
    });
    drop(g);
    // The datagram port still forwards, and a well-behaved frontend is served.
    let mut g = Guest::connect(&s.vhu, VIRTIO_NET_F_MRG_RXBUF | VIRTIO_RING_F_EVENT_IDX);
    g.add_chain(RXQ, &[(RX_BUFS, 2048, true)]);
    // (Frames that arrive before the worker has the new rings are dropped: send until one
    // lands.)
    let back = frame([0xff; 6], 7, 64);
    wait_for("the rx used entry", || {
        s.peer.send_to(&back, &sw_end).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        g.used_idx(RXQ) >= 1
    });
    // A transmit descriptor outside the memory table: the worker stops serving the guest
    // and the protocol side drops the connection.
    g.add_chain(TXQ, &[(MEM as u64 * 2, 64, false)]);
    wait_for("the switch to drop the second frontend", || {
        g.fe.get_features().is_err()
    });
    drop(g);
    // And the next frontend is served again.
    let mut g = Guest::connect(&s.vhu, 0);
    let f = frame([0xff; 6], 9, 70);
    g.transmit(0, &f);
    let mut buf = vec![0u8; 2048];
    let n = s.peer.recv(&mut buf).expect("the third guest's frame");
    assert_eq!(&buf[..n], &f[..]);
    drop(g);
    let stopped = s.switch.take().unwrap().stop();
    assert_eq!(stopped.status.code(), Some(0), "{}", stopped.stderr);
    let stats = stopped.stats.expect("stats");
    assert!(
        stats.port("v0").drop_count("frontend_fault") >= 2,
        "{:?}",
        stats.port("v0")
    );
}

#[test]
fn malformed_messages_and_chains_reset_the_frontend_while_other_ports_forward() {
    // A second datagram port: frames between the two peers must keep flowing whatever the
    // vhost-user frontend does.
    let dir2 = std::env::temp_dir().join(unique_name("rs-vm"));
    std::fs::create_dir_all(&dir2).unwrap();
    let (sw2, peer2_end) = (dir2.join("sw2.sock"), dir2.join("peer2.sock"));
    let peer2 = UnixDatagram::bind(&peer2_end).unwrap();
    peer2
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let d1 = format!(
        "dgram,id=d1,local.type=unix,local.path={},remote.type=unix,remote.path={}",
        sw2.display(),
        peer2_end.display()
    );
    let mut s = setup_with(&["-netdev", &d1]);
    let sw_end = s.dir.join("sw.sock");
    let mut seq = 0u8;
    let mut forwards = |what: &str| {
        seq = seq.wrapping_add(1);
        let f = frame([0xff; 6], seq, 90);
        s.peer.send_to(&f, &sw_end).unwrap();
        let mut buf = [0u8; 2048];
        let n = peer2
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("after {what}: {e}"));
        assert_eq!(&buf[..n], &f[..], "after {what}");
    };
    forwards("start");
    let raw = |bytes: &[u8]| {
        use std::io::{Read, Write};
        let mut c = std::os::unix::net::UnixStream::connect(&s.vhu).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(bytes).unwrap();
        // The switch closes the connection (or answers nothing it should not).
        let mut sink = [0u8; 64];
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            match c.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if Instant::now() < end => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("the switch kept a connection that sent {bytes:02x?}: {e}"),
            }
        }
    };
    let msg = |req: u32, flags: u32, size: u32, body: &[u8]| -> Vec<u8> {
        let mut m = Vec::new();
        for w in [req, flags, size] {
            m.extend_from_slice(&w.to_le_bytes());
        }
        m.extend_from_slice(body);
        m
    };
    // SET_VRING_NUM (8) whose size says 4 bytes; a body size far past any message; a request
    // code no protocol has; a header of version 0; SET_MEM_TABLE (5) with one region of size
    // 0 and no descriptor; bytes that are no header at all.
    let cases: [(&str, Vec<u8>); 6] = [
        ("a short SET_VRING_NUM", msg(8, 1, 4, &[0; 4])),
        ("a huge body size", msg(1, 1, u32::MAX, &[])),
        ("an unknown request", msg(9999, 1, 0, &[])),
        ("a header of version 0", msg(1, 0, 0, &[])),
        (
            "a bogus memory table",
            msg(5, 1, 8 + 32, &{
                let mut b = vec![0u8; 40];
                b[0] = 1;
                b
            }),
        ),
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
    ];
    for (what, bytes) in &cases {
        raw(bytes);
        forwards(what);
    }
    // Chains that break the rules, from a frontend that set the device up properly: a
    // transmit chain that loops on itself, and one with a write-only descriptor.
    for what in ["a looping chain", "a write-only transmit descriptor"] {
        let mut g = Guest::connect(&s.vhu, 0);
        let at = TX_BUFS;
        g.mem.write_slice(&[0u8; 12], GuestAddress(at)).unwrap();
        if what == "a looping chain" {
            // Two descriptors, the second pointing back at the first, then published.
            let (dt, avail, _) = ring(TXQ);
            for (i, (addr, len, next)) in [(at, 12u32, 1u16), (at + 12, 64, 0)].iter().enumerate() {
                let d = dt + 16 * i as u64;
                g.mem.write_obj(*addr, GuestAddress(d)).unwrap();
                g.mem.write_obj(*len, GuestAddress(d + 8)).unwrap();
                g.mem.write_obj(1u16, GuestAddress(d + 12)).unwrap();
                g.mem.write_obj(*next, GuestAddress(d + 14)).unwrap();
            }
            g.mem.write_obj(0u16, GuestAddress(avail + 4)).unwrap();
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            g.mem.write_obj(1u16, GuestAddress(avail + 2)).unwrap();
            g.kick[TXQ].write(1).unwrap();
        } else {
            g.add_chain(TXQ, &[(at, 12, false), (at + 12, 64, true)]);
        }
        wait_for(what, || g.fe.get_features().is_err());
        drop(g);
        forwards(what);
    }
    // A well-behaved frontend is served afterwards.
    let mut g = Guest::connect(&s.vhu, 0);
    let f = frame([0xff; 6], 77, 70);
    g.transmit(0, &f);
    let mut buf = vec![0u8; 2048];
    let n = s.peer.recv(&mut buf).expect("the good guest's frame");
    assert_eq!(&buf[..n], &f[..]);
    drop(g);
    let stopped = s.switch.take().unwrap().stop();
    assert_eq!(stopped.status.code(), Some(0), "{}", stopped.stderr);
    let faults = stopped
        .stats
        .expect("stats")
        .port("v0")
        .drop_count("frontend_fault");
    assert!(faults >= 4, "frontend_fault {faults}: {}", stopped.stderr);
    let _ = std::fs::remove_dir_all(&dir2);
}

/// One vhost-user message on `c`: header (request, flags, body size) and body; with
/// `reply`, reads the answer's header and body (a u64).
fn raw_request(
    c: &mut std::os::unix::net::UnixStream,
    req: u32,
    flags: u32,
    body: &[u8],
    reply: bool,
) -> Option<(u32, u32, u64)> {
    use std::io::{Read, Write};
    let mut m = Vec::new();
    for w in [req, flags, body.len() as u32] {
        m.extend_from_slice(&w.to_le_bytes());
    }
    m.extend_from_slice(body);
    c.write_all(&m).unwrap();
    if !reply {
        return None;
    }
    let mut r = [0u8; 20];
    c.read_exact(&mut r).expect("an answer");
    let w = |i: usize| u32::from_le_bytes(r[i * 4..i * 4 + 4].try_into().unwrap());
    assert_eq!((w(0), w(2)), (req, 8), "answer to request {req}");
    Some((
        w(0),
        w(1),
        u64::from_le_bytes(r[12..20].try_into().unwrap()),
    ))
}

#[test]
fn send_rarp_announces_the_guest_from_its_port() {
    // QEMU sends SEND_RARP (19) after a migration, or on its own announce-self, for a guest
    // without GUEST_ANNOUNCE: the switch sends QEMU's RARP frame for the MAC as if the guest
    // had, so it is learned on the vhost-user port and flooded.
    let qmp_path = std::env::temp_dir().join(unique_name("rs-ra"));
    let s = setup_with(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", qmp_path.display()),
    ]);
    let mut qmp = Qmp::connect(&qmp_path);
    let mut c = std::os::unix::net::UnixStream::connect(&s.vhu).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let features = VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES;
    raw_request(&mut c, 1, 1, &[], true);
    raw_request(&mut c, 2, 1, &features.to_le_bytes(), false);
    let (_, _, offered) = raw_request(&mut c, 15, 1, &[], true).unwrap();
    let rarp = VhostUserProtocolFeatures::RARP.bits();
    assert!(offered & rarp != 0, "RARP not offered: {offered:#x}");
    let proto = rarp | VhostUserProtocolFeatures::REPLY_ACK.bits();
    raw_request(&mut c, 16, 1, &proto.to_le_bytes(), false);
    let mac = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
    let mut body = [0u8; 8];
    body[..6].copy_from_slice(&mac);
    let (_, flags, status) = raw_request(&mut c, 19, 1 | 8, &body, true).unwrap();
    assert_eq!((flags, status), (1 | 4, 0), "SEND_RARP acknowledged");
    let mut buf = [0u8; 2048];
    let n = s.peer.recv(&mut buf).expect("the RARP frame at the peer");
    let f = &buf[..n];
    assert_eq!(n, 60);
    assert_eq!(&f[..6], &[0xff; 6]);
    assert_eq!(&f[6..12], &mac);
    assert_eq!(&f[12..14], &0x8035u16.to_be_bytes());
    assert_eq!(&f[20..22], &3u16.to_be_bytes(), "a reverse request");
    assert_eq!(&f[22..28], &mac);
    let table = qmp.execute("query-mac-table");
    let learned = table
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["mac"] == "52:54:00:ab:cd:ef")
        .cloned();
    assert_eq!(
        learned.as_ref().map(|e| e["port"].clone()),
        Some(serde_json::json!("v0")),
        "{table}"
    );
    // The connection goes on.
    raw_request(&mut c, 1, 1, &[], true);
    let _ = std::fs::remove_file(&qmp_path);
}

#[test]
fn an_enable_before_set_features_is_taken_as_qemu_7_2_sends_it() {
    // QEMU 7.2 enables queue pair 0 right after reading the features and protocol features,
    // before SET_FEATURES (virtio-net's peer_attach at realize and at every reconnection).
    // Refused, it would end every QEMU connection there, with the guest's link down.
    let s = setup();
    let end = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        match std::os::unix::net::UnixStream::connect(&s.vhu) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < end, "connecting: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    const GET_FEATURES: u32 = 1;
    const GET_PROTOCOL_FEATURES: u32 = 15;
    const SET_PROTOCOL_FEATURES: u32 = 16;
    const SET_VRING_ENABLE: u32 = 18;
    let (_, _, offered) = raw_request(&mut c, GET_FEATURES, 1, &[], true).unwrap();
    assert!(offered & VHOST_USER_F_PROTOCOL_FEATURES != 0);
    raw_request(&mut c, GET_PROTOCOL_FEATURES, 1, &[], true);
    let proto = (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK).bits();
    raw_request(
        &mut c,
        SET_PROTOCOL_FEATURES,
        1,
        &proto.to_le_bytes(),
        false,
    );
    // As QEMU sends it (no reply asked), then asking for a reply (REPLY_ACK): success, 0.
    let mut enable = [0u8; 8];
    enable[4..].copy_from_slice(&1u32.to_le_bytes());
    raw_request(&mut c, SET_VRING_ENABLE, 1, &enable, false);
    enable[..4].copy_from_slice(&1u32.to_le_bytes());
    let (_, flags, status) = raw_request(&mut c, SET_VRING_ENABLE, 1 | 8, &enable, true).unwrap();
    assert_eq!((flags, status), (1 | 4, 0));
    // The connection goes on.
    let (_, _, again) = raw_request(&mut c, GET_FEATURES, 1, &[], true).unwrap();
    assert_eq!(again, offered);
}

#[test]
fn bad_spellings_are_refused_by_name() {
    for (args, want) in [
        (
            vec!["-netdev", "vhost-user,id=v0,chardev=nope"],
            "chardev \"nope\" not found",
        ),
        (
            vec![
                "-chardev",
                "socket,id=c0,host=h,port=1",
                "-netdev",
                "vhost-user,id=v0,chardev=c0",
            ],
            "option 'host'",
        ),
        (
            vec![
                "-chardev",
                "socket,id=c0,path=/tmp/x",
                "-netdev",
                "vhost-user,id=v0,chardev=c0,queues=17",
            ],
            "vhost-user number of queues must be in range [1, 16]",
        ),
        (vec!["-netdev", "vhost-user,id=v0"], "'chardev' is missing"),
    ] {
        let out = run_cli(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
