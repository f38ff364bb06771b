//! Offloads end to end: `vnet_hdr` taps carry 64 KiB GSO segments and partial checksums
//! through the switch; ports without offloads get them cut and checksummed. Between two
//! network namespaces on taps with offloads on/on, on/off and off/on: iperf3 TCP and UDP, and
//! a 64 MiB file whose SHA-256 must be the same at both ends, over IPv4 and IPv6; 802.1Q-
//! tagged segments (IPv4, IPv6) cut with their tag; the same file across two switches joined
//! by a UDP `socket` link (software segmentation feeding a tunnel); and the tap's kernel side
//! shows the offloads.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{host_mac, ip, require_root, serial, unique_name, Netns, Switch};
use sha2::{Digest, Sha256};

/// Bytes of the file sent across.
const FILE_BYTES: usize = 64 << 20;

/// One host: a namespace holding one tap port of a switch, with IPv4 and IPv6 addresses.
struct Host {
    ns: Netns,
    ifname: String,
    v4: String,
    v6: String,
}

impl Host {
    /// Moves tap `ifname` into a new namespace as host number `n` (1, 2, …).
    fn adopt(ifname: &str, n: u8) -> Host {
        let ns = Netns::new();
        ns.run(|| {
            for conf in ["all", "default"] {
                let knob = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
                let _ = std::fs::write(knob, "0");
            }
        });
        let (v4, v6) = (format!("10.78.0.{n}"), format!("fd00:78::{n}"));
        ns.adopt(ifname, host_mac(n), Some(&format!("{v4}/24")), None);
        let name = ns.name().to_string();
        ip(&[
            "-n",
            &name,
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            ifname,
            "nodad",
        ]);
        Host {
            ns,
            ifname: ifname.to_string(),
            v4,
            v6,
        }
    }
}

/// A switch with two tap ports (`vnet_hdr` as given) and a host on each.
struct Pair {
    switch: Option<Switch>,
    a: Host,
    b: Host,
}

impl Pair {
    fn new(vnet_a: bool, vnet_b: bool) -> Pair {
        let (ta, tb) = (unique_name("rso"), unique_name("rso"));
        let onoff = |v: bool| if v { "on" } else { "off" };
        let na = format!("tap,id=a,ifname={ta},vnet_hdr={}", onoff(vnet_a));
        let nb = format!("tap,id=b,ifname={tb},vnet_hdr={}", onoff(vnet_b));
        let switch = Switch::start(&["-netdev", &na, "-netdev", &nb]);
        let a = Host::adopt(&ta, 1);
        let b = Host::adopt(&tb, 2);
        Pair {
            switch: Some(switch),
            a,
            b,
        }
    }

    fn stop(&mut self) -> common::Stopped {
        self.switch.take().expect("running").stop()
    }

    /// A packet socket on A's side that writes frames behind a virtio-net header (so the
    /// tap hands the switch whatever segment the test builds), after B has spoken once, so
    /// that the switch sends A's frames to B's port alone.
    fn segment_writer(&self) -> common::PacketSocket {
        let hello = common::PacketSocket::open(&self.b.ns, &self.b.ifname, false).expect("B");
        let hi = common::ethernet_frame(common::MacAddr::BROADCAST, host_mac(2), 0x88b5, b"hi", 60);
        hello.send(&hi).expect("hello from B");
        let send = common::PacketSocket::open(&self.a.ns, &self.a.ifname, false).expect("A");
        send.set_vnet_hdr().expect("PACKET_VNET_HDR");
        send
    }
}

/// A deterministic pseudo-random stream (xorshift), so the file needs no storage.
struct Bytes(u64);

impl Bytes {
    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let b = self.0.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }
}

/// Sends `FILE_BYTES` from `from` to `to`'s address `dst` over TCP; returns (sent digest,
/// received digest, seconds). Bounded: every socket operation times out.
fn transfer(from: &Netns, to: &Netns, dst: &str) -> ([u8; 32], [u8; 32], f64) {
    let addr: SocketAddr = if dst.contains(':') {
        format!("[{dst}]:5201").parse().unwrap()
    } else {
        format!("{dst}:5201").parse().unwrap()
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = to.spawn(move || {
        let l = TcpListener::bind(addr).expect("bind");
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < FILE_BYTES {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            got += n;
        }
        assert_eq!(got, FILE_BYTES, "the stream ended early");
        let d: [u8; 32] = h.finalize().into();
        d
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    let client = from.spawn(move || {
        let t0 = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut gen = Bytes(0x9e37_79b9_7f4a_7c15);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..FILE_BYTES / buf.len() {
            gen.fill(&mut buf);
            h.update(&buf);
            s.write_all(&buf).expect("write");
        }
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let d: [u8; 32] = h.finalize().into();
        (d, t0)
    });
    let (sent, t0) = client.join().expect("client");
    let got = server.join().expect("server");
    (sent, got, t0.elapsed().as_secs_f64())
}

/// Runs an iperf3 server in `ns` (one test, then it exits).
fn iperf3_server(ns: &Netns) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "iperf3",
            "-s",
            "-1",
            "-p",
            "5202",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server")
}

/// iperf3 from `ns` to `dst` for 2 s (`udp`: 1.4 kB datagrams at 500 Mbit/s); returns the
/// receiver's Gbit/s and, for UDP, the lost share.
fn iperf3(server: &Netns, client: &Netns, dst: &str, udp: bool) -> (f64, f64) {
    let mut srv = iperf3_server(server);
    std::thread::sleep(Duration::from_millis(300));
    let mut args = vec!["-c", dst, "-p", "5202", "-t", "2", "-J"];
    if udp {
        args.extend(["-u", "-b", "500M", "-l", "1400"]);
    }
    let out = client.exec("iperf3", &args);
    let _ = srv.wait();
    assert!(
        out.status.success(),
        "iperf3 {args:?}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    let end = &v["end"];
    let sum = if udp {
        &end["sum"]
    } else {
        &end["sum_received"]
    };
    let gbps = sum["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9;
    let lost = sum["lost_percent"].as_f64().unwrap_or(0.0);
    (gbps, lost)
}

fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn tcp_udp_and_a_file_cross_every_offload_combination() {
    if !require_root("tcp_udp_and_a_file_cross_every_offload_combination") {
        return;
    }
    let _serial = serial();
    for (va, vb) in [(true, true), (true, false), (false, true)] {
        let mut p = Pair::new(va, vb);
        let what = format!("vnet_hdr a={va} b={vb}");
        p.a.ns.ping(&p.b.v4, 2);
        for dst in [p.b.v4.clone(), p.b.v6.clone()] {
            let (gbps, _) = iperf3(&p.b.ns, &p.a.ns, &dst, false);
            eprintln!("{what}: TCP to {dst}: {gbps:.2} Gbit/s");
            assert!(gbps > 0.05, "{what}: TCP to {dst} at {gbps} Gbit/s");
            let (sent, got, secs) = transfer(&p.a.ns, &p.b.ns, &dst);
            eprintln!("{what}: 64 MiB to {dst} in {secs:.2} s");
            assert_eq!(
                hex(&sent),
                hex(&got),
                "{what}: file to {dst} changed on the way"
            );
        }
        let (gbps, lost) = iperf3(&p.b.ns, &p.a.ns, &p.b.v4.clone(), true);
        eprintln!("{what}: UDP {gbps:.2} Gbit/s, {lost:.1}% lost");
        assert!(gbps > 0.05, "{what}: UDP at {gbps} Gbit/s");
        let stopped = p.stop();
        assert_eq!(stopped.status.code(), Some(0), "{}", stopped.stderr);
        let stats = stopped.stats.expect("stats");
        for port in ["a", "b"] {
            let s = stats.port(port);
            for bad in ["bad_offload", "gso_oversize", "oversize", "tx_error"] {
                assert_eq!(s.drop_count(bad), 0, "{what}: port {port} dropped {bad}");
            }
        }
    }
}

/// The internet checksum of `data` added to `sum` (not yet folded).
fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A 802.1Q-tagged (VLAN 100) TCP segment of `payload` from 10.80.0.1 to 10.80.0.2 (or
/// fd00:80::1 → ::2), as a vnet_hdr reader would hand it over: a virtio-net header asking
/// for TSO at `mss` and a partial checksum, then the frame.
fn tagged_tso(
    v6: bool,
    src: common::MacAddr,
    dst: common::MacAddr,
    payload: &[u8],
    mss: u16,
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&[0x81, 0x00, 0x00, 100]);
    let tcp_len = 20 + payload.len();
    let pseudo = if v6 {
        f.extend_from_slice(&[0x86, 0xdd]);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
        f.extend_from_slice(&[6, 64]);
        let (s, d) = (
            [0xfd, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0xfd, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        );
        f.extend_from_slice(&s);
        f.extend_from_slice(&d);
        csum_add(
            csum_add(csum_add(0, &s), &d),
            &[0, 0, (tcp_len >> 8) as u8, tcp_len as u8, 0, 0, 0, 6],
        )
    } else {
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + tcp_len) as u16;
        let mut ip = [
            0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 80, 0, 1, 10, 80, 0, 2,
        ];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        let c = !csum_fold(csum_add(0, &ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        csum_add(
            0,
            &[
                10,
                80,
                0,
                1,
                10,
                80,
                0,
                2,
                0,
                6,
                (tcp_len >> 8) as u8,
                tcp_len as u8,
            ],
        )
    };
    let l4 = f.len();
    // Ports 40000 -> 5201, seq 1000, ack 1, data offset 5, ACK|PSH, window 512.
    f.extend_from_slice(&[
        0x9c, 0x40, 0x14, 0x51, 0, 0, 0x03, 0xe8, 0, 0, 0, 1, 0x50, 0x18, 2, 0, 0, 0, 0, 0,
    ]);
    // A partial checksum: the pseudo-header's sum, the rest left to whoever completes it.
    let partial = csum_fold(pseudo);
    f[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
    f.extend_from_slice(payload);
    // A packet socket's header is `struct virtio_net_hdr`, 10 bytes (no num_buffers).
    let mut h = vec![0u8; 10];
    h[0] = 1; // NEEDS_CSUM
    h[1] = if v6 { 4 } else { 1 }; // TCPV6 / TCPV4
    h[2..4].copy_from_slice(&((l4 + 20) as u16).to_le_bytes());
    h[4..6].copy_from_slice(&mss.to_le_bytes());
    h[6..8].copy_from_slice(&(l4 as u16).to_le_bytes());
    h[8..10].copy_from_slice(&16u16.to_le_bytes());
    h.extend_from_slice(&f);
    h
}

/// Checks a frame as a plain receiver must see it: tagged VLAN 100, valid IPv4 header and
/// TCP checksums, no longer than 1518 bytes; returns its TCP sequence number and payload.
fn check_piece(f: &[u8], v6: bool) -> Option<(u32, Vec<u8>)> {
    if f.len() < 18 || f[12..16] != [0x81, 0x00, 0x00, 100] {
        return None;
    }
    assert!(f.len() <= 1518, "a piece of {} bytes", f.len());
    let l3 = 18;
    let (l4, pseudo) = if v6 {
        if f[16..18] != [0x86, 0xdd] || f[l3 + 6] != 6 {
            return None;
        }
        let plen = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) as usize;
        let p = csum_add(
            csum_add(0, &f[l3 + 8..l3 + 40]),
            &[0, 0, (plen >> 8) as u8, plen as u8, 0, 0, 0, 6],
        );
        (l3 + 40, p)
    } else {
        if f[16..18] != [0x08, 0x00] || f[l3 + 9] != 6 {
            return None;
        }
        assert_eq!(
            csum_fold(csum_add(0, &f[l3..l3 + 20])),
            0xffff,
            "IPv4 header checksum"
        );
        let total = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) as usize;
        let tl = total - 20;
        (
            l3 + 20,
            csum_add(
                csum_add(0, &f[l3 + 12..l3 + 20]),
                &[0, 6, (tl >> 8) as u8, tl as u8],
            ),
        )
    };
    let end = if v6 {
        l4 + u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) as usize
    } else {
        l3 + u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) as usize
    };
    assert_eq!(
        csum_fold(csum_add(pseudo, &f[l4..end])),
        0xffff,
        "TCP checksum"
    );
    let seq = u32::from_be_bytes([f[l4 + 4], f[l4 + 5], f[l4 + 6], f[l4 + 7]]);
    let hl = (f[l4 + 12] >> 4) as usize * 4;
    Some((seq, f[l4 + hl..end].to_vec()))
}

#[test]
fn tagged_segments_are_cut_with_their_tag() {
    if !require_root("tagged_segments_are_cut_with_their_tag") {
        return;
    }
    // This kernel has no 802.1Q sub-interfaces (CONFIG_VLAN_8021Q is off), so the tagged
    // segments are written by the test on A's side, behind a virtio-net header, through a
    // packet socket (PACKET_VNET_HDR): the tap hands them to the switch as a vnet_hdr tap
    // hands over any segment. B's tap carries plain frames: each segment is cut in software.
    let _serial = serial();
    let mut p = Pair::new(true, false);
    let (ma, mb) = (host_mac(1), host_mac(2));
    let send = p.segment_writer();
    let capture = common::PacketSocket::open(&p.b.ns, &p.b.ifname, true).expect("capture on B");
    for v6 in [false, true] {
        let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mss = 1400u16;
        send.send(&tagged_tso(v6, ma, mb, &payload, mss))
            .expect("send a tagged segment");
        let frames = capture.collect_on_wire(Duration::from_millis(500));
        let mut pieces: Vec<(u32, Vec<u8>)> =
            frames.iter().filter_map(|f| check_piece(f, v6)).collect();
        pieces.sort_by_key(|(s, _)| *s);
        let mut got = Vec::new();
        let mut seq = 1000u32;
        for (s, d) in &pieces {
            assert_eq!(*s, seq, "v6={v6}: pieces not contiguous");
            seq = seq.wrapping_add(d.len() as u32);
            got.extend_from_slice(d);
        }
        assert_eq!(
            pieces.len(),
            payload.len().div_ceil(mss as usize),
            "v6={v6}: pieces"
        );
        assert!(got == payload, "v6={v6}: the payload changed");
    }
    let stopped = p.stop();
    assert_eq!(stopped.status.code(), Some(0), "{}", stopped.stderr);
    let stats = stopped.stats.expect("stats");
    assert_eq!(stats.port("a").drop_count("bad_offload"), 0);
}

#[test]
fn segments_whose_header_lies_are_dropped_and_counted() {
    if !require_root("segments_whose_header_lies_are_dropped_and_counted") {
        return;
    }
    // A vnet_hdr tap hands over the header the kernel keeps for the packet, so what reaches
    // the switch is what the kernel lets through from a packet socket writing behind a
    // virtio-net header: a segment size so small the segment would be cut into thousands of
    // pieces, a TSO type on a frame whose checksum field is not TCP's, a UDP segmentation type
    // on a TCP frame. Each is dropped as bad_offload on its way to a port without offloads,
    // and the switch forwards as before afterwards.
    let _serial = serial();
    let mut p = Pair::new(true, false);
    let (ma, mb) = (host_mac(1), host_mac(2));
    let send = p.segment_writer();
    let payload = vec![0x5au8; 8_000];
    // Bytes of the header (`tagged_tso` puts a 10-byte one in front): 1 gso_type, 4..6
    // gso_size, 6..8 csum_start, 8..10 csum_offset (little-endian).
    let mut sent = 0;
    for (what, edit) in [
        ("a 1-byte segment size", [(4usize, 1u8), (5, 0)]),
        ("a checksum offset that is not TCP's", [(8, 6), (9, 0)]),
        ("UDP segmentation of a TCP frame", [(1, 5), (1, 5)]),
        ("IPv6 segmentation of an IPv4 frame", [(1, 4), (1, 4)]),
        ("a checksum in the IP header", [(6, 18), (8, 10)]),
    ] {
        let mut seg = tagged_tso(false, ma, mb, &payload, 1400);
        for (i, v) in edit {
            seg[i] = v;
        }
        match send.send(&seg) {
            Ok(()) => sent += 1,
            Err(e) => eprintln!("the kernel refused {what} itself: {e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    p.a.ns.ping(&p.b.v4, 2);
    let stopped = p.stop();
    assert_eq!(stopped.status.code(), Some(0), "{}", stopped.stderr);
    let stats = stopped.stats.expect("stats");
    assert!(sent > 0, "the kernel let none of the lying headers through");
    assert_eq!(
        stats.port("a").drop_count("bad_offload"),
        sent,
        "each lying header that reached the switch is one bad_offload"
    );
}

#[test]
fn segments_cross_a_udp_tunnel_between_two_switches() {
    if !require_root("segments_cross_a_udp_tunnel_between_two_switches") {
        return;
    }
    let _serial = serial();
    // Two switches on loopback, each with a vnet_hdr tap and a UDP socket port to the other:
    // segments are cut in software on the way into the tunnel.
    let port = |n: u32| 20_000 + (std::process::id() % 10_000) * 2 + n;
    let (p1, p2) = (port(0), port(1));
    let (ta, tb) = (unique_name("rso"), unique_name("rso"));
    let s1 = Switch::start(&[
        "-netdev",
        &format!("tap,id=a,ifname={ta},vnet_hdr=on"),
        "-netdev",
        &format!("socket,id=t,udp=127.0.0.1:{p2},localaddr=127.0.0.1:{p1}"),
    ]);
    let s2 = Switch::start(&[
        "-netdev",
        &format!("tap,id=b,ifname={tb},vnet_hdr=on"),
        "-netdev",
        &format!("socket,id=t,udp=127.0.0.1:{p1},localaddr=127.0.0.1:{p2}"),
    ]);
    let a = Host::adopt(&ta, 1);
    let b = Host::adopt(&tb, 2);
    a.ns.ping(&b.v4, 2);
    let (sent, got, secs) = transfer(&a.ns, &b.ns, &b.v4);
    eprintln!("64 MiB through the tunnel in {secs:.2} s");
    assert_eq!(hex(&sent), hex(&got), "the file changed in the tunnel");
    for s in [s1, s2] {
        let stopped = s.stop();
        assert_eq!(stopped.status.code(), Some(0), "{}", stopped.stderr);
        let stats = stopped.stats.expect("stats");
        assert_eq!(stats.port("t").drop_count("gso_oversize"), 0);
        assert_eq!(stats.port("t").drop_count("bad_offload"), 0);
    }
}

#[test]
fn the_taps_kernel_side_shows_its_offloads() {
    if !require_root("the_taps_kernel_side_shows_its_offloads") {
        return;
    }
    let _serial = serial();
    let mut p = Pair::new(true, false);
    let features = |h: &Host| {
        let out = h.ns.exec("ethtool", &["-k", &h.ifname]);
        assert!(out.status.success(), "ethtool -k {}", h.ifname);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let on = features(&p.a);
    for f in ["tx-checksumming: on", "tcp-segmentation-offload: on"] {
        assert!(on.contains(f), "vnet_hdr=on tap lacks '{f}':\n{on}");
    }
    let off = features(&p.b);
    assert!(
        off.contains("tcp-segmentation-offload: off"),
        "vnet_hdr=off tap shows TSO:\n{off}"
    );
    let stopped = p.stop();
    assert_eq!(stopped.status.code(), Some(0), "{}", stopped.stderr);
}
