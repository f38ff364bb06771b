//! The filter attached for real: to a tap in a fresh network namespace (frames handed to
//! the tap's driver by a packet socket, read back from the tap's fd), to a UDP socket on the
//! namespace's loopback (the frame after the 8-byte UDP header) and to a unix datagram
//! socket. Only wanted frames arrive, the counters count the rest, and a filter change or a
//! learned address changes the verdict at once, with no re-attach.

mod common;

use std::collections::HashSet;
use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::Duration;

use ringswitch_bpf::{BpfDomain, BpfError, FilterCounts, PortBit};
use ringswitch_switch::{MacAddr, RxFilter, RxState};

use common::net::{drain, open_tap, Netns, PacketSocket};

const GUEST: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const GROUP: MacAddr = MacAddr([0x33, 0x33, 0xff, 0, 0x77, 0x09]);
const OTHER_GROUP: MacAddr = MacAddr([0x33, 0x33, 0, 0, 0, 0xfb]);
const STRANGER: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0d, 0x01]);
const LEARNED: MacAddr = MacAddr([0x02, 0, 0, 0, 0x0d, 0x02]);

/// A 60-byte test frame to `dst`, maybe tagged, carrying `marker` to tell it apart.
fn frame(dst: MacAddr, vid: Option<u16>, marker: u8) -> Vec<u8> {
    let mut f = dst.0.to_vec();
    f.extend_from_slice(&[0x02, 0xaa, 0, 0, 0, 1]);
    if let Some(v) = vid {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&[0x88, 0xb5, 0x5a, marker]);
    f.resize(60, 0);
    f
}

fn marker_of(f: &[u8]) -> Option<u8> {
    let at = if f.get(12..14) == Some(&[0x81, 0x00]) {
        18
    } else {
        14
    };
    (f.get(at - 2..at) == Some(&[0x88, 0xb5]) && f.get(at) == Some(&0x5a))
        .then(|| f.get(at + 1).copied())
        .flatten()
}

/// A Linux guest's filter as QEMU reports it once the guest is up: its own address,
/// broadcast, one multicast group, no VLANs.
fn guest() -> RxFilter {
    RxFilter {
        promiscuous: false,
        unicast: RxState::Normal,
        multicast: RxState::Normal,
        vlan: RxState::None,
        broadcast_allowed: true,
        unicast_overflow: false,
        multicast_overflow: false,
        main_mac: GUEST,
        unicast_table: vec![],
        multicast_table: vec![GROUP],
        vlan_table: ringswitch_switch::rxfilter::VlanSet::empty(),
    }
}

/// A station that takes nothing by its filter (frames reach it only as learned).
fn deaf() -> RxFilter {
    RxFilter {
        unicast: RxState::None,
        multicast: RxState::None,
        ..guest()
    }
}

fn bit(n: usize) -> PortBit {
    PortBit::new(n).unwrap()
}

/// The frames of a round, each with whether it must pass: the guest's address, broadcast,
/// the guest's group pass; a stranger, another group, a tagged frame (the guest takes no
/// VLANs) are dropped; the learned address passes.
fn round() -> Vec<(Vec<u8>, bool)> {
    vec![
        (frame(GUEST, None, 1), true),
        (frame(STRANGER, None, 2), false),
        (frame(MacAddr::BROADCAST, None, 3), true),
        (frame(GROUP, None, 4), true),
        (frame(OTHER_GROUP, None, 5), false),
        (frame(GUEST, Some(5), 6), false),
        (frame(LEARNED, None, 7), true),
    ]
}

fn expected(round: &[(Vec<u8>, bool)]) -> Vec<u8> {
    round
        .iter()
        .filter(|(_, pass)| *pass)
        .filter_map(|(f, _)| marker_of(f))
        .collect()
}

fn delta(after: FilterCounts, before: FilterCounts) -> (u64, u64) {
    (after.passed - before.passed, after.dropped - before.dropped)
}

/// The domain of the live tests: the port under test (promiscuous itself, which does not
/// matter: its own filter never counts for what it receives), a guest, a deaf station on
/// which LEARNED was learned.
fn domain(port: PortBit) -> BpfDomain {
    let domain = BpfDomain::new(64).expect("create the domain's maps");
    let own = RxFilter::promiscuous(MacAddr([0x02, 0xbb, 0, 0, 0, 1]));
    let (g, d) = (guest(), deaf());
    domain
        .update(&[(port, &own), (bit(1), &g), (bit(2), &d)])
        .unwrap();
    domain.learn(LEARNED, bit(2)).unwrap();
    domain
}

/// The guest's unicast goes `all`: the stranger's frame is wanted now.
fn open_guest_unicast(domain: &BpfDomain, port: PortBit) {
    let own = RxFilter::promiscuous(MacAddr([0x02, 0xbb, 0, 0, 0, 1]));
    let g = RxFilter {
        unicast: RxState::All,
        ..guest()
    };
    let d = deaf();
    domain
        .update(&[(port, &own), (bit(1), &g), (bit(2), &d)])
        .unwrap();
}

#[test]
fn a_tap_reader_gets_only_what_some_other_port_wants() {
    if !common::require_bpf("a_tap_reader_gets_only_what_some_other_port_wants", true) {
        return;
    }
    let ns = Netns::new();
    let ifname = common::net::unique_name("rsbt");
    let name = ifname.clone();
    let mut tap = ns.run(move || open_tap(&name).expect("create the tap"));
    ns.link_up(&ifname);
    let name = ifname.clone();
    let pkt = ns.run(move || PacketSocket::open(&name).expect("open a packet socket"));
    let port = bit(0);
    let domain = domain(port);
    let attachment = domain
        .attach_tap(tap.as_fd(), port)
        .expect("attach to the tap");
    drain(&mut tap);

    // The driver's drop comes back to a sender that skips the qdisc as ENOBUFS, so each
    // frame's fate is seen twice: by the sender and by what the tap's reader gets.
    let send_round = |frames: &[(Vec<u8>, bool)], tap: &mut std::fs::File| -> Vec<u8> {
        for (f, pass) in frames {
            match pkt.send(f) {
                Ok(()) => assert!(pass, "frame {:?} passed", marker_of(f)),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    assert!(!pass, "frame {:?} dropped", marker_of(f))
                }
                Err(e) => panic!("send through the packet socket: {e}"),
            }
        }
        drain(tap).iter().filter_map(|f| marker_of(f)).collect()
    };

    let frames = round();
    let before = domain.counters(port).unwrap();
    assert_eq!(send_round(&frames, &mut tap), expected(&frames));
    assert_eq!(delta(domain.counters(port).unwrap(), before), (4, 3));

    // A filter change and a forgotten address take effect at once.
    open_guest_unicast(&domain, port);
    domain.forget(LEARNED).unwrap();
    let frames = vec![
        (frame(STRANGER, None, 2), true),
        (frame(LEARNED, None, 7), true),
        (frame(OTHER_GROUP, None, 5), false),
    ];
    assert_eq!(send_round(&frames, &mut tap), expected(&frames));
    domain
        .update(&[(port, &guest()), (bit(1), &guest())])
        .unwrap();
    let frames = vec![
        (frame(LEARNED, None, 7), false),
        (frame(GUEST, None, 1), true),
    ];
    assert_eq!(send_round(&frames, &mut tap), expected(&frames));

    // Jumbo frames, longer than a test run takes, are decided alike.
    common::net::ip(&[
        "-n",
        ns.name(),
        "link",
        "set",
        "dev",
        &ifname,
        "mtu",
        "9000",
    ]);
    let jumbo = |dst, marker| {
        let mut f = frame(dst, None, marker);
        f.resize(9014, 0);
        f
    };
    let frames = vec![(jumbo(GUEST, 1), true), (jumbo(STRANGER, 2), false)];
    assert_eq!(send_round(&frames, &mut tap), expected(&frames));

    // Detached, the tap takes everything again.
    attachment.detach(tap.as_fd()).unwrap();
    let all: Vec<(Vec<u8>, bool)> = round().into_iter().map(|(f, _)| (f, true)).collect();
    assert_eq!(send_round(&all, &mut tap), expected(&all));
}

/// Sends each frame as a datagram from `tx`, then a broadcast sentinel, and returns the
/// markers of what `rx` received before the sentinel (loopback keeps the order).
fn udp_round(tx: &UdpSocket, rx: &UdpSocket, frames: &[(Vec<u8>, bool)]) -> Vec<u8> {
    const SENTINEL: u8 = 0xee;
    let to = rx.local_addr().unwrap();
    for (f, _) in frames {
        tx.send_to(f, to).unwrap();
    }
    tx.send_to(&frame(MacAddr::BROADCAST, None, SENTINEL), to)
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let n = rx.recv(&mut buf).expect("the sentinel arrives");
        match marker_of(&buf[..n]) {
            Some(SENTINEL) => return got,
            Some(m) => got.push(m),
            None => {}
        }
    }
}

#[test]
fn a_udp_socket_filter_finds_the_frame_after_the_udp_header() {
    if !common::require_bpf(
        "a_udp_socket_filter_finds_the_frame_after_the_udp_header",
        true,
    ) {
        return;
    }
    let ns = Netns::new();
    ns.link_up("lo");
    let (rx, tx) = ns.run(|| {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (rx, tx)
    });
    let port = bit(3);
    let domain = domain(port);
    let _attachment = domain
        .attach_socket(rx.as_fd(), port, 8)
        .expect("attach to the UDP socket");

    let frames = round();
    let before = domain.counters(port).unwrap();
    assert_eq!(udp_round(&tx, &rx, &frames), expected(&frames));
    // The sentinel passed too.
    assert_eq!(delta(domain.counters(port).unwrap(), before), (5, 3));

    open_guest_unicast(&domain, port);
    let frames = vec![
        (frame(STRANGER, None, 2), true),
        (frame(OTHER_GROUP, None, 5), false),
    ];
    assert_eq!(udp_round(&tx, &rx, &frames), expected(&frames));
}

#[test]
fn a_unix_datagram_socket_filter_reads_the_frame_at_offset_0() {
    if !common::require_bpf(
        "a_unix_datagram_socket_filter_reads_the_frame_at_offset_0",
        false,
    ) {
        return;
    }
    let (rx, tx) = UnixDatagram::pair().unwrap();
    rx.set_nonblocking(true).unwrap();
    let port = bit(5);
    let domain = domain(port);
    let attachment = domain.attach_socket(rx.as_fd(), port, 0).unwrap();
    let frames = round();
    for (f, _) in &frames {
        tx.send(f).unwrap();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok(n) = rx.recv(&mut buf) {
        got.extend(marker_of(&buf[..n]));
    }
    assert_eq!(got, expected(&frames));
    assert_eq!(
        domain.counters(port).unwrap(),
        FilterCounts {
            passed: 4,
            dropped: 3
        }
    );
    attachment.detach(rx.as_fd()).unwrap();
    tx.send(&frame(STRANGER, None, 2)).unwrap();
    assert!(
        rx.recv(&mut buf).is_ok(),
        "detached, the socket takes everything"
    );
}

#[test]
fn a_stream_socket_is_refused() {
    if !common::require_bpf("a_stream_socket_is_refused", false) {
        return;
    }
    let (a, _b) = UnixStream::pair().unwrap();
    let domain = BpfDomain::new(4).unwrap();
    assert!(matches!(
        domain.attach_socket(a.as_fd(), bit(0), 0),
        Err(BpfError::StreamSocket)
    ));
}

#[test]
fn ports_are_counted_apart_and_bits_stop_at_64() {
    if !common::require_bpf("ports_are_counted_apart_and_bits_stop_at_64", false) {
        return;
    }
    let domain = domain(bit(0));
    let f = frame(STRANGER, None, 2);
    assert!(!domain.verdict(&f, bit(0)).unwrap());
    assert!(domain.verdict(&frame(GUEST, None, 1), bit(0)).unwrap());
    // From the guest, the stranger's frame is wanted: port 0 is promiscuous.
    assert!(domain.verdict(&f, bit(1)).unwrap());
    assert_eq!(
        domain.counters(bit(0)).unwrap(),
        FilterCounts {
            passed: 1,
            dropped: 1
        }
    );
    assert_eq!(
        domain.counters(bit(1)).unwrap(),
        FilterCounts {
            passed: 1,
            dropped: 0
        }
    );
    assert!(matches!(PortBit::new(64), Err(BpfError::TooManyPorts(64))));
    let seen: HashSet<_> = (0..64).map(|i| bit(i).index()).collect();
    assert_eq!(seen.len(), 64);
}

#[test]
fn a_full_learned_map_makes_the_domain_pass_everything_until_it_fits() {
    if !common::require_bpf("a_full_learned_map_makes_the_domain_pass_everything", false) {
        return;
    }
    let domain = BpfDomain::new(2).unwrap();
    let (g, d) = (guest(), deaf());
    domain.update(&[(bit(0), &g), (bit(1), &d)]).unwrap();
    let [a, b, c] = [1, 2, 3].map(|i| MacAddr([0x02, 0, 0, 0, 1, i]));
    domain.learn(a, bit(1)).unwrap();
    domain.learn(b, bit(1)).unwrap();
    let stranger = frame(STRANGER, None, 2);
    assert!(!domain.verdict(&stranger, bit(1)).unwrap());
    assert!(matches!(
        domain.learn(c, bit(1)),
        Err(BpfError::LearnedFull { capacity: 2 })
    ));
    assert!(domain.passes_everything());
    assert!(domain.verdict(&stranger, bit(1)).unwrap());
    // A configuration change keeps it so.
    domain.update(&[(bit(0), &g), (bit(1), &d)]).unwrap();
    assert!(domain.verdict(&stranger, bit(1)).unwrap());
    // The MAC table as it is now fits: filtering resumes.
    domain.set_learned(&[(c, bit(1))]).unwrap();
    assert!(!domain.passes_everything());
    assert!(!domain.verdict(&stranger, bit(1)).unwrap());
    assert!(domain.verdict(&frame(c, None, 9), bit(0)).unwrap());
    assert!(!domain.verdict(&frame(a, None, 9), bit(0)).unwrap());
}

#[test]
fn a_domain_without_ports_passes_only_broadcast() {
    if !common::require_bpf("a_domain_without_ports_passes_only_broadcast", false) {
        return;
    }
    let domain = BpfDomain::new(4).unwrap();
    let g = guest();
    domain.update(&[(bit(0), &g), (bit(7), &g)]).unwrap();
    assert!(domain.verdict(&frame(GUEST, None, 1), bit(0)).unwrap());
    domain.update(&[]).unwrap();
    assert!(!domain.verdict(&frame(GUEST, None, 1), bit(0)).unwrap());
    assert!(domain
        .verdict(&frame(MacAddr::BROADCAST, None, 1), bit(0))
        .unwrap());
}
