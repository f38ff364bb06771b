//! vde against Debian's vde2 with real stations: network namespaces pinging each other and
//! copying a file (4 MiB, its SHA-256 checked at the far end) over TCP.
//!
//! - Client mode: namespace A on a tap port of ringswitch, namespace B on `vde_plug2tap`
//!   attached to a real `vde_switch`, ringswitch plugged into that vde_switch with
//!   `-netdev vde`. The vde_switch is killed and started again while the file is on its
//!   way: ringswitch's port goes down (`query-ports` `connected: false`) and comes back by
//!   itself, and the copy completes intact.
//! - Serving mode (`--vde-serve`): namespace B's `vde_plug2tap` plugged into ringswitch
//!   itself. The served port is listed by `query-ports`; malformed and silent clients on
//!   the control socket meanwhile are refused and counted (`query-vde-serve`) without
//!   stalling the traffic; when vde_plug2tap goes, its port goes, and on exit the directory.
//!
//! Needs root (namespaces, taps); under CI=true a missing capability or tool fails.

mod common;

use common::execute_once as execute;

use common::{
    host_mac, require_root, require_vde_tools, unique_name, wait_until, Netns, PersistentTap,
    Plug2Tap, Switch, VdeSwitch,
};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const A_ADDR: &str = "10.93.0.1";
const B_ADDR: &str = "10.93.0.2";
const FILE_BYTES: usize = 4 << 20;
const CHUNK: usize = 64 << 10;

/// `query-ports` for one port: None when there is no such port.
fn port(qmp: &Path, id: &str) -> Option<serde_json::Value> {
    let v = execute(
        qmp,
        &format!(r#"{{"execute":"query-ports","arguments":{{"name":"{id}"}}}}"#),
    );
    v["return"].get(0).cloned()
}

fn connected(qmp: &Path, id: &str) -> bool {
    port(qmp, id).is_some_and(|p| p["connected"] == serde_json::json!(true))
}

fn wait(what: &str, secs: u64, cond: impl FnMut() -> bool) {
    assert!(
        wait_until(Duration::from_secs(secs), Duration::from_millis(20), cond),
        "timed out after {secs} s waiting for {what}"
    );
}

/// The file: deterministic bytes that no compression or pattern can fake.
fn file_bytes() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..FILE_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A TCP server in `ns` on B_ADDR: takes one connection and returns the length and SHA-256
/// of everything received (bounded: 60 s without data fails).
fn receiver(ns: &Netns) -> std::thread::JoinHandle<(usize, Vec<u8>)> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let h = ns.spawn(move || {
        let l = TcpListener::bind((B_ADDR, 5001)).expect("bind in B");
        ready_tx.send(()).unwrap();
        let (mut c, _) = l.accept().expect("accept in B");
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut h = Sha256::new();
        let mut n = 0;
        let mut buf = vec![0u8; CHUNK];
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    h.update(&buf[..k]);
                    n += k;
                }
                Err(e) => panic!("receiving in B after {n} bytes: {e}"),
            }
        }
        (n, h.finalize().to_vec())
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("receiver listening");
    h
}

/// Sends the file from `ns` to B_ADDR in paced chunks (so the copy is still going while the
/// test breaks the path); `midway` hears once a quarter is sent.
fn sender(ns: &Netns, midway: mpsc::Sender<()>) -> std::thread::JoinHandle<Vec<u8>> {
    ns.spawn(move || {
        let data = file_bytes();
        let mut c = TcpStream::connect_timeout(
            &format!("{B_ADDR}:5001").parse().unwrap(),
            Duration::from_secs(10),
        )
        .expect("connect from A");
        c.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
        for (i, chunk) in data.chunks(CHUNK).enumerate() {
            c.write_all(chunk).expect("sending from A");
            if i == FILE_BYTES / CHUNK / 4 {
                let _ = midway.send(());
            }
            std::thread::sleep(Duration::from_millis(15));
        }
        c.shutdown(std::net::Shutdown::Write).unwrap();
        // Wait for the receiver's close, so every byte was taken.
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let _ = c.read(&mut [0u8; 1]);
        Sha256::digest(&data).to_vec()
    })
}

/// A directory of the test's own, removed on drop. Declared first in a test, so it goes
/// after everything that lives in it (a vde_switch's pid file is there).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Namespace A on a tap port `t` of ringswitch (started with `extra`), namespace B on a
/// persistent tap that `vde_plug2tap` will serve.
struct Lan {
    // Drop order: the switch first, then the tap, then the namespaces.
    switch: Option<Switch>,
    b_tap: PersistentTap,
    a: Netns,
    b: Netns,
    qmp: PathBuf,
}

fn lan(dir: &Path, extra: &[String]) -> Lan {
    let a = Netns::new();
    let b = Netns::new();
    let tap = unique_name("rsva");
    let qmp = dir.join("qmp.sock");
    let mut args: Vec<String> = vec![
        "-netdev".into(),
        format!("tap,id=t,ifname={tap}"),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp.display()),
    ];
    args.extend_from_slice(extra);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let switch = Switch::start(&argv);
    a.adopt(&tap, host_mac(1), Some(&format!("{A_ADDR}/24")), None);
    let b_tap = PersistentTap::new();
    b.adopt(
        b_tap.name(),
        host_mac(2),
        Some(&format!("{B_ADDR}/24")),
        None,
    );
    Lan {
        switch: Some(switch),
        b_tap,
        a,
        b,
        qmp,
    }
}

fn temp_dir(prefix: &str) -> TempDir {
    let d = std::env::temp_dir().join(unique_name(prefix));
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// Copies the file A -> B, running `meanwhile` once a quarter is on its way; checks length
/// and digest. Returns how long the copy took.
fn copy_file(lan: &Lan, meanwhile: impl FnOnce()) -> Duration {
    let started = Instant::now();
    let rx = receiver(&lan.b);
    let (mid_tx, mid_rx) = mpsc::channel();
    let tx = sender(&lan.a, mid_tx);
    mid_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a quarter of the file sent");
    meanwhile();
    let sent = tx.join().expect("sender");
    let (n, got) = rx.join().expect("receiver");
    assert_eq!(n, FILE_BYTES, "bytes received");
    assert_eq!(got, sent, "SHA-256 of the file received");
    started.elapsed()
}

#[test]
fn client_mode_namespaces_copy_a_file_across_a_vde_switch_restarted_mid_stream() {
    let test = "client_mode_namespaces_copy_a_file_across_a_vde_switch_restarted_mid_stream";
    if !require_root(test) || !require_vde_tools(test, &["vde_switch", "vde_plug2tap"]) {
        return;
    }
    let dir = temp_dir("rsvl");
    let sw_dir = dir.0.join("sw");
    let mut vde = VdeSwitch::start(&sw_dir);
    let lan = lan(
        &dir.0,
        &[
            "-netdev".into(),
            format!("vde,id=v,sock={}", sw_dir.display()),
        ],
    );
    let mut plug = Plug2Tap::start(&lan.b, &sw_dir, lan.b_tap.name());
    wait("ringswitch's vde port up", 10, || connected(&lan.qmp, "v"));
    lan.a.ping(B_ADDR, 3);
    lan.b.ping(A_ADDR, 3);
    let mut down_seen = false;
    let took = copy_file(&lan, || {
        vde.kill();
        wait("ringswitch's vde port reported down", 10, || {
            !connected(&lan.qmp, "v")
        });
        down_seen = true;
        vde.restart();
        // vde_plug2tap lost its switch too; a new one on the same persistent tap.
        plug.kill();
        plug = Plug2Tap::start(&lan.b, &sw_dir, lan.b_tap.name());
        wait("ringswitch's vde port plugged in again", 10, || {
            connected(&lan.qmp, "v")
        });
    });
    assert!(down_seen);
    eprintln!("4 MiB copied across the vde_switch restart in {took:?}");
    lan.a.ping(B_ADDR, 3);
    let stderr = lan.switch.as_ref().unwrap().stderr();
    assert!(stderr.contains("went away"), "{stderr}");
    assert!(stderr.contains("plugged into the vde_switch"), "{stderr}");
}

#[test]
fn serving_mode_vde_plug2tap_on_ringswitch_pings_and_copies_while_bad_clients_are_refused() {
    let test =
        "serving_mode_vde_plug2tap_on_ringswitch_pings_and_copies_while_bad_clients_are_refused";
    if !require_root(test) || !require_vde_tools(test, &["vde_plug2tap"]) {
        return;
    }
    let dir = temp_dir("rsvs");
    let serve = dir.0.join("rs");
    let mut lan = lan(
        &dir.0,
        &[
            "--vde-serve".into(),
            format!("{},id=lab,mode=0600", serve.display()),
        ],
    );
    assert!(serve.join("ctl").exists(), "the control socket is there");
    // A client that sends garbage and one that says nothing, both on the control socket.
    let mut garbage = UnixStream::connect(serve.join("ctl")).unwrap();
    garbage.write_all(&[0x55; 200]).unwrap();
    let silent = UnixStream::connect(serve.join("ctl")).unwrap();
    let mut plug = Plug2Tap::start(&lan.b, &serve, lan.b_tap.name());
    wait("vde_plug2tap's port on ringswitch", 10, || {
        connected(&lan.qmp, "lab.1")
    });
    let p = port(&lan.qmp, "lab.1").unwrap();
    assert_eq!(p["type"], "vde-served");
    assert_eq!(p["options"]["port"], "1");
    // The silent client is still waiting on its handshake: traffic does not.
    lan.a.ping(B_ADDR, 3);
    lan.b.ping(A_ADDR, 3);
    let took = copy_file(&lan, || {});
    eprintln!("4 MiB copied through ringswitch's own vde service in {took:?}");
    // Both bad clients were cut off (the silent one after its handshake deadline).
    garbage
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(garbage.read(&mut [0u8; 8]).unwrap_or(0), 0);
    let mut silent = silent;
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(silent.read(&mut [0u8; 8]).unwrap_or(0), 0);
    let q = execute(&lan.qmp, r#"{"execute":"query-vde-serve"}"#);
    let s = &q["return"][0];
    assert_eq!(s["id"], "lab");
    assert_eq!(s["ports"], serde_json::json!(["lab.1"]));
    assert_eq!(s["refused"]["bad-magic"], 1, "{q}");
    assert_eq!(s["refused"]["timeout"], 1, "{q}");
    let data_sockets = || {
        std::fs::read_dir(&serve)
            .map(|d| d.filter_map(Result::ok).count())
            .unwrap_or(0)
    };
    assert_eq!(data_sockets(), 2, "ctl and port 1's data socket");
    // vde_plug2tap goes: so does its port, and its data socket.
    plug.kill();
    wait("the served port removed", 10, || {
        port(&lan.qmp, "lab.1").is_none()
    });
    assert_eq!(data_sockets(), 1, "only ctl is left");
    // (The port can be gone before the log line has reached the captured stderr.)
    wait("the removal logged", 10, || {
        lan.switch
            .as_ref()
            .unwrap()
            .stderr()
            .contains("closed its control connection")
    });
    let stderr = lan.switch.as_ref().unwrap().stderr();
    assert!(stderr.contains("client refused (bad-magic)"), "{stderr}");
    lan.switch.take().unwrap().stop();
    assert!(
        !serve.exists(),
        "the directory ringswitch made is gone with it"
    );
}
