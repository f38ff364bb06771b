//! ringswitch as a systemd service: the notification protocol and `dist/ringswitch.service`.
//!
//! The switch runs as a plain child process with `NOTIFY_SOCKET` pointing at a unix datagram
//! socket this test binds, as systemd's would be: `READY=1` must arrive, and at that moment
//! frames must already cross between the two `dgram` ports; SIGTERM must bring `STOPPING=1`
//! and exit status 0 well within the stop bound; `WATCHDOG_USEC` must bring `WATCHDOG=1`
//! pings at half the interval (none when `WATCHDOG_PID` names another process); an abstract
//! `@name` socket must work as a path does. A port whose peer stopped reading ends the
//! drain after the worker's 2 s with status 1 and a message; with root, a tap whose
//! downscript never ends shows that any other hang still ends at the 5 s bound, status 1.
//!
//! The unit itself: this machine's PID 1 is not systemd (a container whose init is another
//! program), so `systemd-run` and `systemctl start` cannot be used here. The unit is
//! checked instead by `systemd-analyze verify` (with the ExecStart binary swapped for the
//! one just built and the EnvironmentFile for the example in dist/), by `systemd-analyze
//! security --offline=yes` (its exposure score), and by reading it: Type=notify, the one
//! capability, the sandboxing, TimeoutStopSec above the stop bound. Where systemd-analyze is
//! missing those two steps say so on stderr and are skipped. Where PID 1 is systemd and the
//! test runs as root, `unit_runs_under_systemd` starts the unit for real (a transient copy
//! with two dgram ports) and checks it becomes active and stops with status 0.
//!
//! No privileges needed except for the stuck-downscript and the real-systemd cases.

mod common;

use common::DgramPeer as Peer;

use common::unique_name;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_ringswitch");
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/ringswitch.service");
const DEFAULTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/ringswitch.default");

/// The switch's own stop bound (`STOP_BOUND` in src/service.rs, read from there so the two
/// cannot drift apart).
fn stop_bound() -> Duration {
    let src =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/service.rs")).unwrap();
    let secs = src
        .lines()
        .find_map(|l| {
            l.strip_prefix("pub const STOP_BOUND: Duration = Duration::from_secs(")
                .and_then(|r| r.strip_suffix(");"))
        })
        .expect("STOP_BOUND in src/service.rs");
    Duration::from_secs(secs.parse().unwrap())
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let d = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The service manager's end: a bound unix datagram socket.
struct Manager {
    sock: UnixDatagram,
}

impl Manager {
    fn bind(path: &Path) -> Manager {
        let sock = UnixDatagram::bind(path).unwrap();
        Manager { sock }
    }

    /// The next notification, within `timeout`.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = vec![0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8(buf[..n].to_vec()).expect("UTF-8 notification")),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("receiving a notification: {e}"),
        }
    }

    /// Waits (bounded) for a notification that has `key=value`; returns it.
    fn wait_for(&self, key: &str, value: &str, timeout: Duration, sw: &Running) -> Fields {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no {key}={value} within {timeout:?}; stderr:\n{}",
                    sw.stderr()
                );
            }
            if let Some(m) = self.next(left.min(Duration::from_millis(200))) {
                let f = fields(&m);
                if f.get(key).map(String::as_str) == Some(value) {
                    return f;
                }
            }
        }
    }
}

type Fields = BTreeMap<String, String>;

/// `KEY=VALUE` lines, each line one field (a repeated key keeps the last).
fn fields(m: &str) -> Fields {
    m.lines()
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE: {l:?} in {m:?}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// The switch as a child process; killed on drop if it still runs.
struct Running {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Running {
    fn start(args: &[String], env: &[(&str, &str)]) -> Running {
        let mut cmd = Command::new(BINARY);
        cmd.args(args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BINARY}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let l = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[ringswitch] {line}");
                let mut l = l.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Running {
            child: Some(child),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn stderr(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill takes no pointers; the pid is our own child's, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.pid() as libc::pid_t, sig) }, 0);
    }

    /// Waits for the exit, at most `limit`; returns the status and how long it took.
    fn wait(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let t = Instant::now();
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return (st, t.elapsed());
            }
            if t.elapsed() > limit {
                panic!(
                    "ringswitch still runs {limit:?} after the signal; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn frame(src: u8, dst: u8, tag: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(tag)).collect();
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, dst]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f
}

/// Two dgram ports `a` and `b` and the notification socket, in `dir`.
fn two_ports(dir: &Path) -> (Peer, Peer, Vec<String>) {
    let (a, a_arg) = Peer::new(dir, "a");
    let (b, b_arg) = Peer::new(dir, "b");
    let args = vec!["-netdev".into(), a_arg, "-netdev".into(), b_arg];
    (a, b, args)
}

#[test]
fn ready_comes_when_frames_cross_and_sigterm_drains_with_stopping() {
    let dir = TempDir::new("rs-ntf");
    let (a, b, args) = two_ports(&dir.0);
    let notify = dir.0.join("notify.sock");
    let manager = Manager::bind(&notify);
    let stats_path = dir.0.join("stats.json");
    let mut args = args;
    args.push("--stats-json".into());
    args.push(stats_path.to_str().unwrap().into());
    let mut sw = Running::start(&args, &[("NOTIFY_SOCKET", notify.to_str().unwrap())]);

    let ready = manager.wait_for("READY", "1", Duration::from_secs(20), &sw);
    // At this moment, with nothing more awaited: frames cross both ways.
    for i in 0..5 {
        let f = frame(0xa, 0xb, i);
        a.send(&f);
        assert_eq!(b.recv(), f, "frame {i} a→b right after READY=1");
        let f = frame(0xb, 0xa, i);
        b.send(&f);
        assert_eq!(a.recv(), f, "frame {i} b→a right after READY=1");
    }
    assert_eq!(ready.get("MAINPID"), Some(&sw.pid().to_string()));
    assert_eq!(
        ready.get("STATUS").map(String::as_str),
        Some("forwarding, 2 port(s)")
    );
    // The ready line was printed just before (its reader thread may lag).
    let t = Instant::now();
    while !sw.stderr().contains("ringswitch: ready") {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "READY=1 without the ready line"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        !ready.contains_key("WATCHDOG"),
        "no watchdog asked for: {ready:?}"
    );

    // SIGTERM in the middle of a burst: every frame the switch read is forwarded and handed to
    // the kernel before it exits (the frames it had not read yet stay in its socket).
    let b_sock = b.sock.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        b_sock
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let mut n = 0u64;
        while b_sock.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    let stop_sending = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let a_sock = a.sock.try_clone().unwrap();
    let a_to = a.switch_end.clone();
    let flag = Arc::clone(&stop_sending);
    let sender = std::thread::spawn(move || {
        a_sock.set_nonblocking(true).unwrap();
        let mut sent = 0u64;
        let f = frame(0xa, 0xb, 7);
        while !flag.load(std::sync::atomic::Ordering::Relaxed) && sent < 200_000 {
            match a_sock.send_to(&f, &a_to) {
                Ok(_) => sent += 1,
                Err(_) => std::thread::sleep(Duration::from_micros(50)),
            }
        }
        sent
    });
    std::thread::sleep(Duration::from_millis(50));
    sw.signal(libc::SIGTERM);
    let stopping = manager.wait_for("STOPPING", "1", Duration::from_secs(2), &sw);
    assert!(stopping["STATUS"].starts_with("stopping"), "{stopping:?}");
    let bound = stop_bound();
    let (status, took) = sw.wait(bound + Duration::from_secs(2));
    stop_sending.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sender.join().unwrap();
    let received = reader.join().unwrap();
    assert!(
        status.success(),
        "exit {status:?}; stderr:\n{}",
        sw.stderr()
    );
    assert!(took < bound, "a clean stop took {took:?}");
    assert!(!sw.stderr().contains("did not finish"), "{}", sw.stderr());
    let stats: common::Stats =
        serde_json::from_str(&std::fs::read_to_string(&stats_path).unwrap()).unwrap();
    let (pa, pb) = (stats.port("a"), stats.port("b"));
    let worker = |k: &str| stats.worker[k].as_u64().unwrap();
    eprintln!(
        "burst: {sent} sent, switch read {}, submitted {}, wrote {}, dropped {}; {received} received (10 frames before the burst)",
        pa.rx_frames,
        worker("tx_submitted"),
        pb.tx_frames,
        stats.total_drops()
    );
    // 5 frames each way before the burst.
    assert_eq!(
        received,
        pb.tx_frames - 5,
        "b's peer got what the switch wrote"
    );
    // Every frame read was forwarded and handed to the kernel or dropped and counted: sends
    // parked in the kernel at the stop (b's peer queue full) are cancelled by the worker's
    // stop and counted as tx-error drops of b. With one worker a slow receiver slows the
    // reads of the sender's port (its socket fills and the sender blocks); with several
    // (RINGSWITCH_CORES) the reading worker keeps up and what the slow port cannot take is
    // dropped and counted at that port.
    assert_eq!(pa.rx_frames + pb.rx_frames, worker("rx_frames"));
    let cancelled = pa.drop_count("tx_error") + pb.drop_count("tx_error");
    assert_eq!(
        worker("tx_submitted") + stats.total_drops() - cancelled,
        worker("rx_frames")
    );
    assert_eq!(
        pa.tx_frames + pb.tx_frames + stats.total_drops(),
        pa.rx_frames + pb.rx_frames,
        "every frame read is written or counted as dropped"
    );
    assert!(pa.rx_frames > 5 + 100, "the burst was under way at SIGTERM");
    eprintln!("clean stop after SIGTERM: {took:?}");
}

#[test]
fn watchdog_pings_come_at_half_the_interval_and_only_for_this_process() {
    let dir = TempDir::new("rs-wdg");
    let (_a, _b, args) = two_ports(&dir.0);
    let notify = dir.0.join("notify.sock");
    let manager = Manager::bind(&notify);
    // 400 ms: a ping every 200 ms.
    let mut sw = Running::start(
        &args,
        &[
            ("NOTIFY_SOCKET", notify.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let ready = manager.wait_for("READY", "1", Duration::from_secs(20), &sw);
    assert_eq!(ready.get("WATCHDOG").map(String::as_str), Some("1"));
    let t = Instant::now();
    let mut pings = Vec::new();
    while t.elapsed() < Duration::from_millis(1500) {
        if let Some(m) = manager.next(Duration::from_millis(500)) {
            assert_eq!(m, "WATCHDOG=1\n");
            pings.push(t.elapsed());
        }
    }
    // 1.5 s at one per 200 ms: 7; a loaded machine may delay some, never by a whole interval.
    assert!(
        (6..=8).contains(&pings.len()),
        "{} pings in 1.5 s: {pings:?}",
        pings.len()
    );
    for w in pings.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(90) && gap < Duration::from_millis(400),
            "pings {gap:?} apart: {pings:?}"
        );
    }
    sw.signal(libc::SIGTERM);
    manager.wait_for("STOPPING", "1", Duration::from_secs(2), &sw);
    let (status, _) = sw.wait(stop_bound() + Duration::from_secs(2));
    assert!(status.success());

    // WATCHDOG_PID naming another process: the watchdog is not ours.
    let mut sw = Running::start(
        &args,
        &[
            ("NOTIFY_SOCKET", notify.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    let ready = manager.wait_for("READY", "1", Duration::from_secs(20), &sw);
    assert!(!ready.contains_key("WATCHDOG"), "{ready:?}");
    assert_eq!(manager.next(Duration::from_millis(700)), None);
    sw.signal(libc::SIGINT);
    manager.wait_for("STOPPING", "1", Duration::from_secs(2), &sw);
    let (status, _) = sw.wait(stop_bound() + Duration::from_secs(2));
    assert!(status.success());
}

#[test]
fn an_abstract_notify_socket_works() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;
    let dir = TempDir::new("rs-abs");
    let (_a, _b, mut args) = two_ports(&dir.0);
    let name = unique_name("rs-nfy");
    let sock =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let manager = Manager { sock };
    // QMP too, in the same directory: nothing else changes.
    args.push("-qmp".into());
    args.push(format!(
        "unix:{},server=on",
        dir.0.join("qmp.sock").display()
    ));
    let mut sw = Running::start(&args, &[("NOTIFY_SOCKET", &format!("@{name}"))]);
    manager.wait_for("READY", "1", Duration::from_secs(20), &sw);
    sw.signal(libc::SIGTERM);
    manager.wait_for("STOPPING", "1", Duration::from_secs(2), &sw);
    let (status, _) = sw.wait(stop_bound() + Duration::from_secs(2));
    assert!(status.success());
}

#[test]
fn without_notify_socket_nothing_changes_and_a_bad_one_is_reported() {
    let dir = TempDir::new("rs-non");
    let (a, b, args) = two_ports(&dir.0);
    let mut sw = Running::start(&args, &[("NOTIFY_SOCKET", "relative/notify.sock")]);
    let t = Instant::now();
    while !sw.stderr().contains("ringswitch: ready") {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", sw.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        sw.stderr()
            .contains("NOTIFY_SOCKET=relative/notify.sock: neither an absolute path"),
        "{}",
        sw.stderr()
    );
    let f = frame(0xa, 0xb, 1);
    a.send(&f);
    assert_eq!(b.recv(), f);
    sw.signal(libc::SIGTERM);
    let (status, _) = sw.wait(stop_bound() + Duration::from_secs(2));
    assert!(status.success());
}

#[test]
fn a_port_whose_peer_stops_reading_ends_the_drain_at_its_bound() {
    let dir = TempDir::new("rs-stk");
    let (a, _b, mut args) = two_ports(&dir.0);
    let stats_path = dir.0.join("stats.json");
    args.push("--stats-json".into());
    args.push(stats_path.to_str().unwrap().into());
    let notify = dir.0.join("notify.sock");
    let manager = Manager::bind(&notify);
    let mut sw = Running::start(&args, &[("NOTIFY_SOCKET", notify.to_str().unwrap())]);
    manager.wait_for("READY", "1", Duration::from_secs(20), &sw);
    // b's peer never reads: its socket queue (net.unix.max_dgram_qlen frames) fills, and the
    // switch's send to it stays in flight for good.
    a.sock
        .set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut sent = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(300) {
        if a.sock.send_to(&frame(0xa, 0xb, 1), &a.switch_end).is_ok() {
            sent += 1;
        }
    }
    assert!(sent > 20, "only {sent} frames sent");
    sw.signal(libc::SIGTERM);
    manager.wait_for("STOPPING", "1", Duration::from_secs(2), &sw);
    let bound = stop_bound();
    let (status, took) = sw.wait(bound + Duration::from_secs(2));
    eprintln!("stop with a stuck port: {status:?} after {took:?}");
    // Either the sends parked on the stuck peer cannot be cancelled, and the worker gives up
    // after its 2 s drain (well before the process's own bound) with status 1, or the stop
    // cancelled them and counted each as a tx-error drop of b (the kernel decides which: a
    // send parked in a worker thread of its own is not cancellable).
    if status.code() == Some(1) {
        assert!(
            sw.stderr().contains("failed: stopped with ")
                && sw.stderr().contains(" write(s) in flight"),
            "{}",
            sw.stderr()
        );
        assert!(
            took >= Duration::from_millis(1900) && took < bound,
            "took {took:?}"
        );
    } else {
        assert_eq!(status.code(), Some(0), "stderr:\n{}", sw.stderr());
        let stats: common::Stats =
            serde_json::from_str(&std::fs::read_to_string(&stats_path).unwrap()).unwrap();
        let b = stats.port("b");
        assert!(
            b.drop_count("tx_error") > 0,
            "no parked send counted: {:?}\n{}",
            b.drops,
            sw.stderr()
        );
        assert!(took < bound, "took {took:?}");
    }
}

#[test]
fn a_stop_that_hangs_still_ends_within_the_bound() {
    if !common::require_root("a_stop_that_hangs_still_ends_within_the_bound") {
        return;
    }
    let dir = TempDir::new("rs-hng");
    let pidfile = dir.0.join("downscript.pid");
    let script = dir.0.join("down.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 60\n",
            pidfile.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let notify = dir.0.join("notify.sock");
    let manager = Manager::bind(&notify);
    let ifname = unique_name("rsh");
    let args = vec![
        "--allow-scripts".to_string(),
        "-netdev".into(),
        format!(
            "tap,id=t,ifname={ifname},script=no,downscript={}",
            script.display()
        ),
    ];
    let mut sw = Running::start(&args, &[("NOTIFY_SOCKET", notify.to_str().unwrap())]);
    manager.wait_for("READY", "1", Duration::from_secs(20), &sw);
    sw.signal(libc::SIGTERM);
    manager.wait_for("STOPPING", "1", Duration::from_secs(2), &sw);
    let bound = stop_bound();
    let (status, took) = sw.wait(bound + Duration::from_secs(3));
    // The downscript (sleep 60) is left behind by the exit; end it.
    if let Ok(pid) = std::fs::read_to_string(&pidfile) {
        if let Ok(pid) = pid.trim().parse::<libc::pid_t>() {
            // SAFETY: kill takes no pointers; the pid is the script this test wrote.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    assert_eq!(status.code(), Some(1), "stderr:\n{}", sw.stderr());
    assert!(
        took >= bound - Duration::from_millis(200) && took < bound + Duration::from_millis(1500),
        "the stop took {took:?}, bound {bound:?}"
    );
    assert!(
        sw.stderr().contains(&format!(
            "the stop did not finish within {} s",
            bound.as_secs()
        )),
        "{}",
        sw.stderr()
    );
    eprintln!("hung stop ended after {took:?}");
}

/// The unit as (section, key) → values, in order; comments and blank lines dropped.
fn parse_unit(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not KEY=VALUE in the unit: {line:?}"));
        out.entry((section.clone(), k.trim().to_string()))
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

/// Seconds in a systemd time span of the forms the unit uses (`7s`, `2min`, `500ms`).
fn timespan(s: &str) -> Duration {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("time span {s:?}"));
    match unit {
        "" | "s" | "sec" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "min" | "m" => Duration::from_secs(60 * n),
        _ => panic!("time span {s:?}"),
    }
}

#[test]
fn unit_file_says_what_the_switch_does_and_grants_only_cap_net_admin() {
    let unit = parse_unit(&std::fs::read_to_string(UNIT).unwrap());
    let one = |k: &str| -> String {
        let v = unit
            .get(&("Service".to_string(), k.to_string()))
            .unwrap_or_else(|| panic!("[Service] {k}= missing"));
        assert_eq!(v.len(), 1, "{k}= given more than once: {v:?}");
        v[0].clone()
    };
    assert_eq!(one("Type"), "notify");
    let caps = |k: &str| {
        let mut c: Vec<String> = one(k).split_whitespace().map(String::from).collect();
        c.sort();
        c
    };
    assert_eq!(caps("AmbientCapabilities"), ["CAP_BPF", "CAP_NET_ADMIN"]);
    assert_eq!(caps("CapabilityBoundingSet"), ["CAP_BPF", "CAP_NET_ADMIN"]);
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("RuntimeDirectory", "ringswitch"),
        ("LimitMEMLOCK", "infinity"),
        ("Restart", "on-failure"),
        ("KillMode", "mixed"),
        ("KillSignal", "SIGTERM"),
        ("SystemCallFilter", "@system-service bpf"),
        ("DevicePolicy", "closed"),
        ("DeviceAllow", "/dev/net/tun rw"),
    ] {
        assert_eq!(one(k), v, "{k}=");
    }
    // systemd kills only after the switch's own bound has passed, with a margin.
    let stop = timespan(&one("TimeoutStopSec"));
    let bound = stop_bound();
    assert!(
        stop > bound && stop <= bound + Duration::from_secs(5),
        "TimeoutStopSec={stop:?} against the switch's {bound:?}"
    );
    // The watchdog, if set, is far longer than the control loop's longest pass.
    if let Some(w) = unit.get(&("Service".to_string(), "WatchdogSec".to_string())) {
        assert!(timespan(&w[0]) >= Duration::from_secs(5));
    }
    // ExecStart takes its options from the EnvironmentFile, split into words.
    let exec = one("ExecStart");
    assert!(exec.ends_with(" $RINGSWITCH_OPTS"), "{exec}");
    assert_eq!(one("EnvironmentFile"), "/etc/default/ringswitch");
    let defaults = std::fs::read_to_string(DEFAULTS).unwrap();
    let opts = defaults
        .lines()
        .find_map(|l| l.strip_prefix("RINGSWITCH_OPTS="))
        .expect("RINGSWITCH_OPTS= in dist/ringswitch.default");
    let words: Vec<&str> = opts.trim_matches('"').split_whitespace().collect();
    assert!(words.contains(&"-netdev"), "{words:?}");
    assert!(
        words.iter().all(|w| !w.starts_with("--config")),
        "the example runs without --config: {words:?}"
    );
    // The sockets it names sit in the runtime directory.
    assert!(opts.contains("/run/ringswitch/"), "{opts}");
}

/// A copy of the unit that can be verified (or run) here: ExecStart on the binary just
/// built, EnvironmentFile on `env_file`.
fn local_unit(dir: &Path, env_file: &Path) -> PathBuf {
    let text = std::fs::read_to_string(UNIT).unwrap();
    let local: String = text
        .lines()
        .map(|l| {
            if let Some(rest) = l.strip_prefix("ExecStart=/usr/local/bin/ringswitch") {
                format!("ExecStart={BINARY}{rest}\n")
            } else if l.starts_with("EnvironmentFile=") {
                format!("EnvironmentFile={}\n", env_file.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(local.contains(BINARY), "ExecStart not rewritten");
    let path = dir.join("ringswitch.service");
    std::fs::write(&path, local).unwrap();
    path
}

fn have_systemd_analyze() -> bool {
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            eprintln!("systemd-analyze is not installed: the unit is only read, not verified");
            false
        }
    }
}

#[test]
fn unit_file_passes_systemd_analyze_verify_and_security() {
    if !have_systemd_analyze() {
        return;
    }
    let dir = TempDir::new("rs-unt");
    let unit = local_unit(&dir.0, Path::new(DEFAULTS));
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify exits 0 on many problems (an unknown Type= is only a warning): it must say
    // nothing at all.
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}):\n{said}",
        out.status
    );
    // A unit with a mistake is caught the same way (the check above can fail).
    let bad = dir.0.join("bad.service");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&unit)
            .unwrap()
            .replace("Type=notify", "Type=notfy"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("notfy"),
        "verify did not notice Type=notfy"
    );

    // The exposure score (0 best, 10 worst); a switch needs the network and CAP_NET_ADMIN,
    // so it cannot be near 0, but everything else is closed.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    match text.lines().find_map(|l| {
        l.split("Overall exposure level for ringswitch.service: ")
            .nth(1)
    }) {
        Some(rest) => {
            let score: f32 = rest
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("score in {rest:?}"));
            eprintln!("systemd-analyze security: exposure {score}");
            assert!(score <= 4.0, "exposure {score}:\n{text}");
        }
        // Older systemd-analyze has no --offline.
        None => eprintln!(
            "systemd-analyze security --offline unavailable here: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn pid1_is_systemd() -> bool {
    std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
}

#[test]
fn unit_runs_under_systemd() {
    if !pid1_is_systemd() {
        eprintln!(
            "PID 1 is {:?}, not systemd: the unit cannot be started here (verified and read instead)",
            std::fs::read_to_string("/proc/1/comm").unwrap_or_default().trim()
        );
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: the unit cannot be installed here");
        return;
    }
    // A transient copy of the unit in /run/systemd/system, with two dgram ports in a
    // directory the sandbox leaves writable (its RuntimeDirectory).
    let name = unique_name("rs-unt");
    let dir = TempDir::new("rs-sys");
    let env_file = dir.0.join("default");
    let rt = format!("/run/{name}");
    std::fs::write(
        &env_file,
        format!(
            "RINGSWITCH_OPTS=\"-netdev dgram,id=a,local.type=unix,local.path={rt}/a.sock,remote.type=unix,remote.path={rt}/a-peer.sock -netdev dgram,id=b,local.type=unix,local.path={rt}/b.sock,remote.type=unix,remote.path={rt}/b-peer.sock\"\n"
        ),
    )
    .unwrap();
    let unit = local_unit(&dir.0, &env_file);
    let text = std::fs::read_to_string(&unit).unwrap().replace(
        "RuntimeDirectory=ringswitch",
        &format!("RuntimeDirectory={name}"),
    );
    let installed = PathBuf::from(format!("/run/systemd/system/{name}.service"));
    std::fs::write(&installed, text).unwrap();
    struct Uninstall(PathBuf, String);
    impl Drop for Uninstall {
        fn drop(&mut self) {
            let _ = Command::new("systemctl").args(["stop", &self.1]).status();
            let _ = std::fs::remove_file(&self.0);
            let _ = Command::new("systemctl").arg("daemon-reload").status();
        }
    }
    let _guard = Uninstall(installed, format!("{name}.service"));
    let systemctl = |args: &[&str]| {
        let out = Command::new("systemctl").args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    assert!(systemctl(&["daemon-reload"]).0);
    // `start` of a Type=notify unit returns once READY=1 arrived.
    let (ok, _) = systemctl(&["start", &format!("{name}.service")]);
    let journal = || {
        Command::new("journalctl")
            .args(["-u", &format!("{name}.service"), "--no-pager", "-n", "50"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default()
    };
    assert!(ok, "systemctl start failed:\n{}", journal());
    let (_, state) = systemctl(&["show", "-P", "ActiveState", &format!("{name}.service")]);
    assert_eq!(state, "active", "{}", journal());
    let (_, status) = systemctl(&["show", "-P", "StatusText", &format!("{name}.service")]);
    assert_eq!(status, "forwarding, 2 port(s)");
    let t = Instant::now();
    assert!(systemctl(&["stop", &format!("{name}.service")]).0);
    let (_, code) = systemctl(&["show", "-P", "ExecMainStatus", &format!("{name}.service")]);
    assert_eq!(code, "0", "{}", journal());
    assert!(t.elapsed() < stop_bound(), "stop took {:?}", t.elapsed());
}
