//! Acceptance test of issue 14's userspace half: a port's rx-filter, set over QMP with
//! `set-rx-filter`, keeps the frames its station does not take from going out of that port —
//! unknown unicast and unwanted multicast stop arriving there while the other ports still get
//! them — counts them as `filtered`, changes live (the port is not restarted), and lifts again.
//! Three taps, each in a namespace of its own, driven with AF_PACKET sockets. It passes with
//! one worker and with two (`RINGSWITCH_CORES=0,1`: the filter of a port of the other worker
//! is enforced by the sender).
//!
//! Needs root (taps, namespaces); see `common::require_root`.

mod common;

use std::time::{Duration, Instant};

use common::{carries, marked, require_root, serial, unique_name, Lan, MacAddr, PacketSocket, Qmp};
use serde_json::{json, Value};

const WANTED_GROUP: MacAddr = MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0x42]);
const UNWANTED_GROUP: MacAddr = MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0x43]);
const NOBODY: MacAddr = MacAddr([0x02, 0, 0, 0, 0x99, 0x99]);

/// What a guest that takes its own address, broadcast and one group reports.
fn station_filter(name: &str, main: MacAddr) -> Value {
    json!({
        "name": name,
        "promiscuous": false,
        "multicast": "normal",
        "unicast": "normal",
        "vlan": "all",
        // QEMU's inverted meaning (its nobcast): false, broadcast is taken.
        "broadcast-allowed": false,
        "multicast-overflow": false,
        "unicast-overflow": false,
        "main-mac": main.to_string(),
        "vlan-table": [],
        "unicast-table": [],
        "multicast-table": [WANTED_GROUP.to_string()],
    })
}

fn filtered(q: &mut Qmp, id: &str) -> u64 {
    q.port(id)["drops"]["filtered"]
        .as_u64()
        .expect("query-ports lists drops.filtered")
}

/// Sends one frame of each kind from `from`, marked with `round`.
fn send_all_kinds(from: &PacketSocket, src: MacAddr, to_c: MacAddr, round: &str) {
    for (dst, what) in [
        (NOBODY, "unknown"),
        (UNWANTED_GROUP, "unwanted"),
        (WANTED_GROUP, "wanted"),
        (MacAddr::BROADCAST, "broadcast"),
        (to_c, "to-c"),
    ] {
        let marker = format!("{round}-{what}");
        from.send(&marked(dst, src, marker.as_bytes()))
            .expect("send");
    }
}

const KINDS: [&str; 5] = ["unknown", "unwanted", "wanted", "broadcast", "to-c"];

/// The kinds of `round` that `s` received, sorted: every frame is read until those of
/// `expected` all came (at most 2 s), then for 300 ms more (a frame that should not come).
fn kinds_seen(s: &PacketSocket, round: &str, expected: &[&str]) -> Vec<&'static str> {
    let kind_of = |f: &[u8]| {
        KINDS
            .iter()
            .find(|k| carries(f, format!("{round}-{k}").as_bytes()))
            .copied()
    };
    let mut seen: Vec<&'static str> = Vec::new();
    let mut deadline = Instant::now() + Duration::from_secs(2);
    let mut waiting = true;
    loop {
        if waiting && expected.iter().all(|k| seen.contains(k)) {
            waiting = false;
            deadline = Instant::now() + Duration::from_millis(300);
        }
        let Some(f) = s.recv(deadline.saturating_duration_since(Instant::now())) else {
            if waiting {
                waiting = false;
                deadline = Instant::now() + Duration::from_millis(300);
                continue;
            }
            break;
        };
        if let Some(k) = kind_of(&f) {
            if !seen.contains(&k) {
                seen.push(k);
            }
        }
    }
    seen.sort();
    seen
}

#[test]
fn a_filter_set_over_qmp_keeps_unwanted_floods_from_its_port_only() {
    if !require_root("a_filter_set_over_qmp_keeps_unwanted_floods_from_its_port_only") {
        return;
    }
    let _serial = serial();
    let sock = std::env::temp_dir().join(format!("{}.qmp", unique_name("rsrxf")));
    let qmp_arg = format!("unix:{},server=on,wait=off", sock.display());
    let lan = Lan::new(3, false, &["--qmp", &qmp_arg]);
    let hosts = [lan.host("a"), lan.host("b"), lan.host("c")];
    let socks: Vec<PacketSocket> = hosts
        .iter()
        .map(|h| PacketSocket::open(&h.ns, &h.ifname, true).expect("open capture socket"))
        .collect();
    let (a, b, c) = (&socks[0], &socks[1], &socks[2]);
    let (a_mac, c_mac) = (hosts[0].mac, hosts[2].mac);
    let mut q = Qmp::connect(&sock);
    let before = q.port("c");
    // Every port promiscuous: no eBPF filter runs (it could drop nothing; see
    // tests/rx_filter_bpf.rs for a hub where it can).
    assert_eq!(before["rx-filter"], "userspace");
    assert_eq!(filtered(&mut q, "c"), 0);

    // c speaks first, so that frames to its address go to its port only.
    c.send(&marked(MacAddr::BROADCAST, c_mac, b"hello-c"))
        .expect("send");
    assert!(
        a.wait_for(Duration::from_secs(2), |f| carries(f, b"hello-c"))
            .is_some(),
        "c's hello never reached a"
    );

    // Promiscuous (the default): c gets every flooded kind.
    let flooded = ["broadcast", "unknown", "unwanted", "wanted"];
    let all = ["broadcast", "to-c", "unknown", "unwanted", "wanted"];
    send_all_kinds(a, a_mac, c_mac, "r0");
    assert_eq!(kinds_seen(b, "r0", &flooded), flooded, "b, promiscuous");
    assert_eq!(kinds_seen(c, "r0", &all), all, "c, promiscuous");

    // c's station takes its own address, broadcast and one group only.
    let want = station_filter("c", c_mac);
    let r = q.execute_with("set-rx-filter", want.clone());
    assert_eq!(r["return"], json!({}), "{r}");
    assert_eq!(
        q.execute_with("query-rx-filter", json!({"name": "c"}))["return"],
        json!([want])
    );
    send_all_kinds(a, a_mac, c_mac, "r1");
    assert_eq!(kinds_seen(b, "r1", &flooded), flooded, "b is not filtered");
    let taken = ["broadcast", "to-c", "wanted"];
    assert_eq!(
        kinds_seen(c, "r1", &taken),
        taken,
        "c gets only what its filter takes"
    );
    // From b too: with two workers, b's worker is not c's, and checks c's filter itself.
    send_all_kinds(b, hosts[1].mac, c_mac, "r1b");
    assert_eq!(kinds_seen(a, "r1b", &flooded), flooded, "a is not filtered");
    assert_eq!(kinds_seen(c, "r1b", &taken), taken, "c, from b");
    let refused = filtered(&mut q, "c");
    assert!(
        refused >= 4,
        "c's filtered count is {refused}, want at least 4"
    );
    assert_eq!(filtered(&mut q, "b"), 0);

    // Not restarted: the same port, connected all along, its counters kept.
    let after = q.port("c");
    assert_eq!(after["index"], before["index"]);
    assert_eq!(after["connected"], true);
    assert!(after["tx-frames"].as_u64() > before["tx-frames"].as_u64());
    assert!(after["uptime-ms"].as_u64() >= before["uptime-ms"].as_u64());

    // Promiscuous again: everything reaches c, and nothing more is refused.
    let mut promiscuous = want.clone();
    promiscuous["promiscuous"] = json!(true);
    let r = q.execute_with("set-rx-filter", promiscuous);
    assert_eq!(r["return"], json!({}), "{r}");
    let counted = filtered(&mut q, "c");
    send_all_kinds(a, a_mac, c_mac, "r2");
    assert_eq!(kinds_seen(c, "r2", &all), all, "c, promiscuous again");
    assert_eq!(kinds_seen(b, "r2", &flooded), flooded);
    assert_eq!(filtered(&mut q, "c"), counted);
    drop(q);
    let _ = std::fs::remove_file(&sock);
}
