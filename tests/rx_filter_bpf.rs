//! Acceptance test of issue 14's kernel half, live: with the eBPF ingress filter (the default
//! `--rx-filter-bpf auto`), a frame no other port would accept is dropped in the kernel, on
//! the port it arrived on, before the switch reads it — counted in that port's
//! `rx-filter-bpf.dropped`, never in its `rx-frames` nor in the other port's `filtered` — on
//! a tap port and on a UDP (`dgram`) port; with `--rx-filter-bpf off` the same frames reach
//! the switch and are refused on egress (`filtered`). What is wanted arrives either way, and
//! a filter change takes effect in the kernel at once, with no port restarted.
//!
//! Needs root (taps, namespaces, BPF); see `common::require_root`.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{carries, marked, require_root, serial, unique_name, Lan, MacAddr, PacketSocket, Qmp};
use serde_json::{json, Value};

const GROUP: MacAddr = MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0x42]);
const OTHER_GROUP: MacAddr = MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0x43]);
const NOBODY: MacAddr = MacAddr([0x02, 0, 0, 0, 0x99, 0x99]);
const ROUNDS: u64 = 40;

/// A station that takes its own address, broadcast and GROUP (QEMU's broadcast-allowed
/// meaning: false, broadcast taken).
fn station(name: &str, main: MacAddr) -> Value {
    json!({
        "name": name, "promiscuous": false, "multicast": "normal", "unicast": "normal",
        "vlan": "all", "broadcast-allowed": false, "multicast-overflow": false,
        "unicast-overflow": false, "main-mac": main.to_string(), "vlan-table": [],
        "unicast-table": [], "multicast-table": [GROUP.to_string()],
    })
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

struct Counts {
    rx: u64,
    bpf_dropped: u64,
    bpf_passed: u64,
    filtered: u64,
}

fn counts(q: &mut Qmp, id: &str) -> Counts {
    let p = q.port(id);
    Counts {
        rx: num(&p["rx-frames"]),
        bpf_dropped: num(&p["rx-filter-bpf"]["dropped"]),
        bpf_passed: num(&p["rx-filter-bpf"]["passed"]),
        filtered: num(&p["drops"]["filtered"]),
    }
}

/// ROUNDS frames of each kind to b's side: 2 unwanted (a stranger, a group b does not
/// take) and 3 wanted (b's address, GROUP, broadcast).
fn frames(src: MacAddr, b_mac: MacAddr, tag: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..ROUNDS {
        for (dst, what) in [
            (NOBODY, "nobody"),
            (OTHER_GROUP, "other"),
            (b_mac, "to-b"),
            (GROUP, "group"),
            (MacAddr::BROADCAST, "bcast"),
        ] {
            out.push(marked(dst, src, format!("{tag}-{what}-{i}").as_bytes()));
        }
    }
    out
}

/// How many frames of each wanted kind of `tag` b received (reads for up to 2 s after the
/// last, then 300 ms more), and how many unwanted ones.
fn received(b: &PacketSocket, tag: &str) -> (u64, u64) {
    let (mut wanted, mut unwanted) = (0, 0);
    let end = Instant::now() + Duration::from_secs(5);
    let mut quiet = Duration::from_secs(2);
    while let Some(f) = b.recv(quiet.min(end.saturating_duration_since(Instant::now()))) {
        let is = |k: &str| carries(&f, format!("{tag}-{k}-").as_bytes());
        if is("to-b") || is("group") || is("bcast") {
            wanted += 1;
        } else if is("nobody") || is("other") {
            unwanted += 1;
        }
        if wanted == 3 * ROUNDS {
            quiet = Duration::from_millis(300);
        }
    }
    (wanted, unwanted)
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

/// Runs the scenario on a switch with `extra` arguments; returns a's and u's counts
/// (before→after deltas) and what b saw from each.
fn run(bpf: bool) {
    let sock = std::env::temp_dir().join(format!("{}.qmp", unique_name("rsbpf")));
    let qmp_arg = format!("unix:{},server=on,wait=off", sock.display());
    let peer = UdpSocket::bind("127.0.0.1:0").expect("the UDP peer");
    let (sw_port, peer_port) = (free_udp_port(), peer.local_addr().unwrap().port());
    let dgram = format!(
        "dgram,id=u,local.type=inet,local.host=127.0.0.1,local.port={sw_port},\
         remote.type=inet,remote.host=127.0.0.1,remote.port={peer_port}"
    );
    let mut args = vec!["--qmp", &qmp_arg, "-netdev", &dgram];
    if !bpf {
        args.extend(["--rx-filter-bpf", "off"]);
    }
    let lan = Lan::new(2, false, &args);
    let (ha, hb) = (lan.host("a"), lan.host("b"));
    let a = PacketSocket::open(&ha.ns, &ha.ifname, false).expect("socket on a");
    let b = PacketSocket::open(&hb.ns, &hb.ifname, true).expect("capture on b");
    let mut q = Qmp::connect(&sock);
    // Every port promiscuous (the default): nothing to drop, no program attached.
    for id in ["a", "b", "u"] {
        assert_eq!(
            q.port(id)["rx-filter"],
            "userspace",
            "port {id}: {}",
            q.port(id)
        );
    }
    // u's peer is promiscuous by default: make a and u take nothing but broadcast, so b's
    // filter alone decides what the kernel may pass.
    for (id, mac) in [("a", ha.mac), ("u", MacAddr([0x02, 0, 0, 0, 0x77, 0x77]))] {
        let mut f = station(id, mac);
        f["multicast"] = json!("none");
        let r = q.execute_with("set-rx-filter", f);
        assert_eq!(r["return"], json!({}), "{r}");
    }
    let r = q.execute_with("set-rx-filter", station("b", hb.mac));
    assert_eq!(r["return"], json!({}), "{r}");
    let path = if bpf { "bpf" } else { "userspace" };
    for id in ["a", "b", "u"] {
        assert_eq!(q.port(id)["rx-filter"], path, "port {id}: {}", q.port(id));
    }

    // From the tap a.
    let (a0, b0) = (counts(&mut q, "a"), counts(&mut q, "b"));
    for f in frames(ha.mac, hb.mac, "tap") {
        a.send(&f).expect("send on a");
    }
    let (wanted, unwanted) = received(&b, "tap");
    let (a1, b1) = (counts(&mut q, "a"), counts(&mut q, "b"));
    println!(
        "bpf={bpf} tap a: rx {} bpf passed {} dropped {}; b filtered {}; b got {wanted} wanted, {unwanted} unwanted",
        a1.rx - a0.rx,
        a1.bpf_passed - a0.bpf_passed,
        a1.bpf_dropped - a0.bpf_dropped,
        b1.filtered - b0.filtered
    );
    assert_eq!(wanted, 3 * ROUNDS, "b's wanted frames from a");
    assert_eq!(unwanted, 0, "b got frames its filter refuses");
    if bpf {
        assert_eq!(
            a1.bpf_dropped - a0.bpf_dropped,
            2 * ROUNDS,
            "dropped in the kernel at a"
        );
        assert_eq!(
            a1.rx - a0.rx,
            3 * ROUNDS,
            "the switch read only the wanted frames"
        );
        assert_eq!(
            b1.filtered - b0.filtered,
            0,
            "nothing left for the egress check"
        );
    } else {
        assert_eq!(a1.rx - a0.rx, 5 * ROUNDS, "the switch read every frame");
        assert_eq!(
            b1.filtered - b0.filtered,
            2 * ROUNDS,
            "refused on egress at b"
        );
    }

    // From the UDP port u (frames at offset 8 of what the program sees).
    let (u0, b0) = (counts(&mut q, "u"), counts(&mut q, "b"));
    let to = format!("127.0.0.1:{sw_port}");
    for f in frames(MacAddr([0x02, 0, 0, 0, 0x77, 0x77]), hb.mac, "udp") {
        peer.send_to(&f, &to).expect("send to u");
    }
    let (wanted, unwanted) = received(&b, "udp");
    let (u1, b1) = (counts(&mut q, "u"), counts(&mut q, "b"));
    assert_eq!(wanted, 3 * ROUNDS, "b's wanted frames from u");
    assert_eq!(unwanted, 0);
    if bpf {
        assert_eq!(
            u1.bpf_dropped - u0.bpf_dropped,
            2 * ROUNDS,
            "dropped in the kernel at u"
        );
        assert_eq!(u1.rx - u0.rx, 3 * ROUNDS);
        assert_eq!(b1.filtered - b0.filtered, 0);
    } else {
        assert_eq!(u1.rx - u0.rx, 5 * ROUNDS);
        assert_eq!(b1.filtered - b0.filtered, 2 * ROUNDS);
    }

    // A change applies in the kernel at once: b promiscuous, nothing is dropped any more.
    let mut promiscuous = station("b", hb.mac);
    promiscuous["promiscuous"] = json!(true);
    let r = q.execute_with("set-rx-filter", promiscuous);
    assert_eq!(r["return"], json!({}), "{r}");
    let before = q.port("a");
    let a0 = counts(&mut q, "a");
    for f in frames(ha.mac, hb.mac, "open") {
        a.send(&f).expect("send on a");
    }
    let (wanted, unwanted) = received(&b, "open");
    let a1 = counts(&mut q, "a");
    assert_eq!(
        (wanted, unwanted),
        (3 * ROUNDS, 2 * ROUNDS),
        "b promiscuous"
    );
    assert_eq!(a1.rx - a0.rx, 5 * ROUNDS);
    // a's neighbour b takes everything now: a's program is taken off (u's too, b being its
    // neighbour as well); b's stays (its neighbours a and u still filter).
    assert_eq!(q.port("a")["rx-filter"], "userspace");
    assert_eq!(q.port("b")["rx-filter"], path);
    let after = q.port("a");
    assert_eq!(after["index"], before["index"], "port a was not restarted");
    drop(q);
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn the_kernel_drops_what_no_other_port_takes_on_taps_and_udp_ports() {
    if !require_root("the_kernel_drops_what_no_other_port_takes_on_taps_and_udp_ports") {
        return;
    }
    let _serial = serial();
    run(true);
}

#[test]
fn with_the_kernel_filter_off_the_workers_refuse_the_same_frames() {
    if !require_root("with_the_kernel_filter_off_the_workers_refuse_the_same_frames") {
        return;
    }
    let _serial = serial();
    run(false);
}
