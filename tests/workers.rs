//! `--cores`: several pinned workers sharing the ports. A switch with two workers (`--cores
//! 0,1`) and four unix `dgram` ports, which the controller spreads over both: flooding reaches
//! every other port exactly once, unicast crosses between workers after learning and keeps the
//! order of a flow, hub domains hold across workers, a port whose link is down on the other
//! worker gets nothing, a station that moves to a port of the other worker is followed, and
//! `set-port-worker` moves a live port while a stream flows between two other ports without
//! losing a frame of it. `worker=N` places a port; bad `--cores` lists are refused before
//! anything starts. No privileges needed.

mod common;

use common::{run_cli, seq_frame as frame, seq_of, unique_name, DgramPeer as Peer, Qmp, Switch};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether this machine has CPUs 0 and 1; says so when it has not.
fn two_cpus(test: &str) -> bool {
    // SAFETY: sysconf only reads a system parameter.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    if n < 2 {
        eprintln!("skipping {test}: needs 2 CPUs, this machine has {n}");
    }
    n >= 2
}

/// A switch with two workers and one unix dgram port per id, and its QMP connection.
struct Rig {
    dir: PathBuf,
    peers: Vec<Peer>,
    qmp: Qmp,
    switch: Option<Switch>,
}

impl Rig {
    /// `specs`: each port's id and extra `-netdev` options (",worker=1"); `extra`: more
    /// arguments (hubports).
    fn start(prefix: &str, specs: &[(&str, &str)], extra: &[&str]) -> Rig {
        let dir = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&dir).unwrap();
        let qmp_path = dir.join("qmp.sock");
        let qmp_arg = format!("unix:{},server=on,wait=off", qmp_path.display());
        let mut args: Vec<String> = vec!["--cores".into(), "0,1".into(), "-qmp".into(), qmp_arg];
        let mut peers = Vec::new();
        for (id, opts) in specs {
            let (p, arg) = Peer::new(&dir, id);
            args.push("-netdev".into());
            args.push(format!("{arg}{opts}"));
            peers.push(p);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let switch = Switch::start(&argv);
        assert!(
            switch.stderr().contains("2 workers on CPUs 0,1"),
            "{}",
            switch.stderr()
        );
        let qmp = Qmp::connect(&qmp_path);
        Rig {
            dir,
            peers,
            qmp,
            switch: Some(switch),
        }
    }

    fn peer(&self, i: usize) -> &Peer {
        &self.peers[i]
    }

    /// The worker serving port `id`, from query-ports.
    fn worker_of(&mut self, id: &str) -> u64 {
        self.qmp.port(id)["worker"].as_u64().expect("a worker")
    }

    /// Stops the switch (exit 0 wanted); its counters.
    fn stop(mut self) -> common::Stopped {
        let stopped = self.switch.take().unwrap().stop();
        assert!(stopped.status.success(), "{}", stopped.stderr);
        let _ = std::fs::remove_dir_all(&self.dir);
        stopped
    }
}

/// Every frame `p` holds now or gets within `wait` (at most 10000).
fn drain(p: &Peer, wait: Duration) -> Vec<Vec<u8>> {
    p.sock.set_read_timeout(Some(wait)).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    while out.len() < 10_000 {
        match p.sock.recv(&mut buf) {
            Ok(n) => out.push(buf[..n].to_vec()),
            Err(_) => break,
        }
    }
    p.sock
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    out
}

/// Sends `f` from port `from` and checks that exactly the ports `to` get it, once each, and
/// no other port gets anything.
fn deliver(rig: &Rig, from: usize, f: &[u8], to: &[usize]) {
    rig.peer(from).send(f);
    for (i, p) in rig.peers.iter().enumerate() {
        if to.contains(&i) {
            assert_eq!(p.recv(), f, "port {i} from port {from}");
        }
    }
    // What else arrives in a short while: nothing.
    for (i, p) in rig.peers.iter().enumerate() {
        let got = drain(p, Duration::from_millis(100));
        assert!(
            got.is_empty(),
            "port {i} got {} frame(s) more from port {from} (wanted only {to:?})",
            got.len()
        );
    }
}

/// Each port's station (i + 1) speaks once (a broadcast), so every worker has learned it.
fn learn_all(rig: &Rig) {
    let n = rig.peers.len();
    for i in 0..n {
        let others: Vec<usize> = (0..n).filter(|j| *j != i).collect();
        deliver(rig, i, &frame(i as u8 + 1, 0xff, 0), &others);
    }
}

/// Frames a stream may be ahead of its receiver: below the kernel's default queue of a unix
/// datagram socket (net.unix.max_dgram_qlen, 10), so the switch's sends never meet a full
/// peer (a full one is `tests/dgram_pacing.rs`'s matter).
const WINDOW: u64 = 8;

/// Streams `total` frames from station `src` behind port `from` to station `dst` behind port
/// `to`, never more than `window` ahead of what `to` received (so no socket on the way
/// overflows), calling `during` once the stream runs; the sequence numbers `to` received, in
/// order of arrival. Bounded: 30 s for the stream, 2 s without a frame.
fn stream(
    rig: &mut Rig,
    (from, src): (usize, u8),
    (to, dst): (usize, u8),
    total: u64,
    window: u64,
    during: impl FnOnce(&mut Rig),
) -> Vec<u64> {
    let received = Arc::new(AtomicU64::new(0));
    let sock = rig.peer(from).sock.try_clone().unwrap();
    let switch_end = rig.peer(from).switch_end.clone();
    let receiver_sock = rig.peer(to).sock.try_clone().unwrap();
    let (r, r2) = (received.clone(), received);
    let sender = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        for s in 0..total {
            while s >= r.load(Ordering::Acquire) + window {
                if Instant::now() >= deadline {
                    return Err(format!("the stream stalled at frame {s}"));
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            sock.send_to(&frame(src, dst, s), &switch_end).unwrap();
        }
        Ok(())
    });
    let receiver = std::thread::spawn(move || {
        let mut out = Vec::with_capacity(total as usize);
        let mut buf = vec![0u8; 2048];
        while (out.len() as u64) < total {
            match receiver_sock.recv(&mut buf) {
                Ok(n) => {
                    out.push(seq_of(&buf[..n]));
                    r2.store(out.len() as u64, Ordering::Release);
                }
                Err(_) => break,
            }
        }
        out
    });
    during(rig);
    let sent = sender.join().expect("the sender");
    let got = receiver.join().expect("the receiver");
    if let Err(e) = sent {
        panic!("{e}; received {} of {total}", got.len());
    }
    got
}

/// Where `got` departs from 0, 1, 2, … `total - 1` (for messages).
fn departures(got: &[u64], total: u64) -> String {
    let missing = (0..total).filter(|s| !got.contains(s)).count();
    let late: Vec<(usize, u64)> = got
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[1] < w[0])
        .map(|(i, w)| (i + 1, w[1]))
        .take(10)
        .collect();
    format!(
        "{} received, {missing} missing, first frames behind a later one (position, seq): {late:?}",
        got.len()
    )
}

const FOUR: [(&str, &str); 4] = [("p0", ""), ("p1", ""), ("p2", ""), ("p3", "")];

#[test]
fn ports_are_spread_and_frames_cross_between_workers() {
    if !two_cpus("ports_are_spread_and_frames_cross_between_workers") {
        return;
    }
    let mut rig = Rig::start("rs-wk", &FOUR, &[]);
    let placed: Vec<u64> = ["p0", "p1", "p2", "p3"]
        .iter()
        .map(|id| rig.worker_of(id))
        .collect();
    assert_eq!(
        placed,
        [0, 1, 0, 1],
        "the least loaded worker takes each port"
    );
    let workers = rig.qmp.execute("query-workers");
    let ports: Vec<u64> = workers
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["ports"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [2, 2], "{workers}");

    // Flooding: every other port once, whichever worker received it.
    learn_all(&rig);
    // Unicast after learning: only the destination, across workers and within one.
    for (from, to) in [(0, 1), (1, 0), (1, 2), (3, 0), (0, 2), (1, 3)] {
        for s in 0..3 {
            deliver(&rig, from, &frame(from as u8 + 1, to as u8 + 1, s), &[to]);
        }
    }
    // An unknown destination is flooded like a broadcast.
    deliver(&rig, 2, &frame(3, 0x77, 0), &[0, 1, 3]);

    // One flow between two workers keeps its order: 5000 frames p0 → p1.
    let n = 5000u64;
    let got = stream(&mut rig, (0, 1), (1, 2), n, WINDOW, |_| {});
    assert!(got.iter().copied().eq(0..n), "{}", departures(&got, n));

    let stopped = rig.stop();
    let stats = stopped.stats();
    assert_eq!(stats.workers.len(), 2, "--stats-json lists both workers");
    let cross = |k: &str| -> u64 { stats.workers.iter().map(|w| w[k].as_u64().unwrap()).sum() };
    assert!(cross("cross_tx") >= n, "{:?}", stats.workers);
    assert_eq!(cross("cross_tx"), cross("cross_rx"), "{:?}", stats.workers);
    assert_eq!(cross("cross_drops"), 0);
    // p1 sent: 3 broadcasts, 3 unicasts, 1 flood, the flow.
    assert_eq!(stats.port("p1").tx_frames, 7 + n);
    assert_eq!(stats.total_drops(), 0);
}

#[test]
fn hub_domains_hold_across_workers() {
    if !two_cpus("hub_domains_hold_across_workers") {
        return;
    }
    // p0 (worker 0) and p1 (worker 1) in hub 1; p2 (0) and p3 (1) in hub 0.
    let rig = Rig::start(
        "rs-wh",
        &FOUR,
        &[
            "-netdev",
            "hubport,id=h0,hubid=1,netdev=p0",
            "-netdev",
            "hubport,id=h1,hubid=1,netdev=p1",
        ],
    );
    for _ in 0..3 {
        deliver(&rig, 0, &frame(1, 0xff, 0), &[1]);
        deliver(&rig, 1, &frame(2, 0xff, 0), &[0]);
        deliver(&rig, 2, &frame(3, 0xff, 0), &[3]);
        deliver(&rig, 3, &frame(4, 0xff, 0), &[2]);
    }
    // A station of the other hub is unknown here: flooded within the hub only.
    deliver(&rig, 0, &frame(1, 3, 1), &[1]);
    deliver(&rig, 3, &frame(4, 2, 1), &[2]);
    rig.stop();
}

#[test]
fn a_port_down_on_the_other_worker_gets_nothing() {
    if !two_cpus("a_port_down_on_the_other_worker_gets_nothing") {
        return;
    }
    let mut rig = Rig::start("rs-wl", &FOUR, &[]);
    assert_eq!((rig.worker_of("p0"), rig.worker_of("p1")), (0, 1));
    learn_all(&rig);
    let down = rig
        .qmp
        .execute_with("set_link", json!({"name": "p1", "up": false}));
    assert_eq!(down["return"], json!({}), "{down}");
    for s in 0..5 {
        deliver(&rig, 0, &frame(1, 2, s), &[]);
    }
    deliver(&rig, 0, &frame(1, 0xff, 9), &[2, 3]);
    let up = rig
        .qmp
        .execute_with("set_link", json!({"name": "p1", "up": true}));
    assert_eq!(up["return"], json!({}), "{up}");
    deliver(&rig, 0, &frame(1, 2, 10), &[1]);
    // Frames for a port of another worker that could not be sent count on the worker
    // that dropped them.
    let stopped = rig.stop();
    let stats = stopped.stats();
    let cross_drops: u64 = stats
        .workers
        .iter()
        .map(|w| w["cross_drops"].as_u64().unwrap())
        .sum();
    assert!(
        stats.port("p1").drop_count("link_down") + cross_drops >= 5,
        "{stats:?}"
    );
}

#[test]
fn a_station_moving_to_the_other_worker_is_followed() {
    if !two_cpus("a_station_moving_to_the_other_worker_is_followed") {
        return;
    }
    let mut rig = Rig::start("rs-wm", &FOUR, &[]);
    assert_eq!((rig.worker_of("p0"), rig.worker_of("p1")), (0, 1));
    learn_all(&rig);
    // Station 0x42 behind p0 (worker 0), then behind p1 (worker 1), then back.
    for (round, at) in [0usize, 1, 0, 1].into_iter().enumerate() {
        let others: Vec<usize> = (0..4).filter(|j| *j != at).collect();
        deliver(&rig, at, &frame(0x42, 0xff, round as u64), &others);
        for from in [2, 3] {
            deliver(
                &rig,
                from,
                &frame(from as u8 + 1, 0x42, round as u64),
                &[at],
            );
        }
    }
    rig.stop();
}

#[test]
fn set_port_worker_moves_a_live_port_without_losing_other_flows() {
    if !two_cpus("set_port_worker_moves_a_live_port_without_losing_other_flows") {
        return;
    }
    let mut rig = Rig::start("rs-wv", &FOUR, &[]);
    learn_all(&rig);

    // A stream p0 (worker 0) → p1 (worker 1) while p2 moves back and forth.
    let total = 20_000u64;
    let got = stream(&mut rig, (0, 1), (1, 2), total, WINDOW, |rig| {
        for to in [1, 0, 1, 0, 1] {
            let r = rig
                .qmp
                .execute_with("set-port-worker", json!({"id": "p2", "worker": to}));
            assert_eq!(r["return"], json!({}), "{r}");
            assert_eq!(rig.worker_of("p2"), to);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    assert!(
        got.iter().copied().eq(0..total),
        "the untouched flow: {}",
        departures(&got, total)
    );

    // The moved port works, both ways, with stations on either worker.
    assert_eq!(rig.worker_of("p2"), 1);
    learn_all(&rig);
    for from in [0, 1, 3] {
        deliver(&rig, from, &frame(from as u8 + 1, 3, 1), &[2]);
        deliver(&rig, 2, &frame(3, from as u8 + 1, 1), &[from]);
    }

    // Errors: an unknown port; a worker the switch lacks; a wrong type.
    let e = rig
        .qmp
        .execute_with("set-port-worker", json!({"id": "nope", "worker": 0}));
    assert_eq!(e["error"]["class"], "DeviceNotFound", "{e}");
    let e = rig
        .qmp
        .execute_with("set-port-worker", json!({"id": "p2", "worker": 2}));
    assert_eq!(e["error"]["class"], "GenericError", "{e}");
    let desc = e["error"]["desc"].as_str().unwrap();
    assert!(
        desc.contains("no worker 2") && desc.contains("0 to 1"),
        "{desc}"
    );
    let e = rig
        .qmp
        .execute_with("set-port-worker", json!({"id": "p2", "worker": -1}));
    assert_eq!(e["error"]["class"], "GenericError", "{e}");
    let e = rig
        .qmp
        .execute_with("set-port-worker", json!({"id": "p2", "worker": "1"}));
    assert_eq!(e["error"]["class"], "GenericError", "{e}");
    let names = rig.qmp.execute("query-commands");
    assert!(
        names
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "set-port-worker"),
        "{names}"
    );
    let stopped = rig.stop();
    let p1 = stopped.stats().port("p1");
    assert_eq!(p1.total_drops(), 0, "{:?}", p1.drops);
}

#[test]
fn the_worker_option_places_a_port() {
    if !two_cpus("the_worker_option_places_a_port") {
        return;
    }
    let mut rig = Rig::start("rs-wo", &[("a", ",worker=1"), ("b", ",worker=1")], &[]);
    assert_eq!((rig.worker_of("a"), rig.worker_of("b")), (1, 1));
    deliver(&rig, 0, &frame(1, 0xff, 0), &[1]);
    deliver(&rig, 1, &frame(2, 1, 0), &[0]);
    // Over QMP: worker 0 taken as asked; worker 2 refused before the socket is opened.
    let dir = rig.dir.clone();
    let add = |id: &str, worker: i64| -> (Value, PathBuf) {
        let local = dir.join(format!("{id}.sock"));
        let args = json!({
            "type": "dgram", "id": id, "worker": worker,
            "local": {"type": "unix", "path": local},
            "remote": {"type": "unix", "path": dir.join(format!("{id}-peer.sock"))},
        });
        (args, local)
    };
    let (args, _) = add("c", 0);
    let r = rig.qmp.execute_with("netdev_add", args);
    assert_eq!(r["return"], json!({}), "{r}");
    assert_eq!(rig.worker_of("c"), 0);
    let (args, local) = add("d", 2);
    let r = rig.qmp.execute_with("netdev_add", args);
    assert_eq!(r["error"]["class"], "GenericError", "{r}");
    let desc = r["error"]["desc"].as_str().unwrap();
    assert!(
        desc.contains("netdev 'd'")
            && desc.contains("no worker 2")
            && desc.contains("workers 0 to 1"),
        "{desc}"
    );
    assert!(!local.exists(), "the refused port's socket was opened");
    let shown = rig.qmp.execute("query-ports");
    assert_eq!(shown.as_array().unwrap().len(), 3, "{shown}");
    rig.stop();
}

#[test]
fn bad_core_lists_are_refused_before_anything_starts() {
    for (cores, wanted) in [
        ("", "--cores '': no CPUs"),
        ("x", "'x' is not a CPU number"),
        ("5-2", "range 5-2 is reversed; write 2-5"),
        ("0,0", "CPU 0 is listed twice"),
        ("0-64", "more than 64 CPUs"),
        ("4096", "CPU 4096: this machine has CPUs 0.."),
    ] {
        let out = run_cli(&["--cores", cores, "-qmp", "unix:/nonexistent/q,server=on"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cores}: {err}");
        assert!(err.contains(wanted), "{cores}: wanted {wanted:?} in {err}");
    }
    let out = run_cli(&[
        "--cores",
        "0",
        "--worker-cpu",
        "0",
        "-qmp",
        "unix:/nonexistent/q,server=on",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--cores and --worker-cpu cannot both be given"),
        "{err}"
    );

    // From the environment: named as such; an explicit --worker-cpu wins over it.
    let bin = env!("CARGO_BIN_EXE_ringswitch");
    let out = std::process::Command::new(bin)
        .args(["-qmp", "unix:/nonexistent/q,server=on"])
        .env("RINGSWITCH_CORES", "3-1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("RINGSWITCH_CORES: --cores '3-1': range 3-1 is reversed"),
        "{err}"
    );
    let out = std::process::Command::new(bin)
        .args([
            "--worker-cpu",
            "4096",
            "-qmp",
            "unix:/nonexistent/q,server=on",
        ])
        .env("RINGSWITCH_CORES", "3-1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--worker-cpu 4096"),
        "--worker-cpu is checked, not the environment's list: {err}"
    );
}
