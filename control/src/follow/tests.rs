//! The follower against a scripted QMP server: only the paths a real QEMU cannot be made to
//! take (bad JSON, silence, a cut message, an error answer). control/tests/follow_qemu.rs
//! follows a real QEMU guest.

use super::*;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "rs-follow-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server side of one scripted QMP connection; every read is bounded.
struct Peer {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Peer {
    fn accept(l: &UnixListener) -> Peer {
        l.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let s = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("the follower did not connect: {e}"),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Peer {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    fn say(&mut self, text: &str) {
        self.w.write_all(text.as_bytes()).unwrap();
    }

    /// The next command; panics unless it is `execute`. Returns its id.
    fn expect(&mut self, execute: &str) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert_eq!(v["execute"], execute, "{v}");
        if execute == "query-rx-filter" {
            assert_eq!(v["arguments"], json!({"name": "nic0"}));
        }
        v["id"].clone()
    }

    /// Whether the follower stays quiet for `d`.
    fn quiet_for(&mut self, d: Duration) -> bool {
        self.w.set_read_timeout(Some(d)).unwrap();
        let mut line = String::new();
        let quiet = self.r.read_line(&mut line).is_err();
        self.w
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        quiet
    }

    fn negotiate(l: &UnixListener) -> Peer {
        let mut p = Peer::accept(l);
        p.say("{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n");
        let id = p.expect("qmp_capabilities");
        p.say(&format!("{}\r\n", json!({"return": {}, "id": id})));
        p
    }

    fn answer(&mut self, id: &Value, info: &Value) {
        self.say(&format!("{}\r\n", json!({"return": [info], "id": id})));
    }
}

fn info(promiscuous: bool) -> Value {
    json!({"promiscuous": promiscuous, "name": "nic0", "main-mac": "52:54:00:12:34:56",
           "unicast": "normal", "vlan": "none", "vlan-table": [], "unicast-table": [],
           "multicast": "normal", "multicast-overflow": false, "unicast-overflow": false,
           "multicast-table": ["33:33:00:00:00:01"], "broadcast-allowed": false})
}

const EVENT: &str = "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"NIC_RX_FILTER_CHANGED\", \"data\": {\"name\": \"NAME\", \"path\": \"/machine/peripheral/NAME/virtio-backend\"}}\r\n";

fn event(nic: &str) -> String {
    EVENT.replace("NAME", nic)
}

fn fast(path: &Path) -> FollowConfig {
    let mut c = FollowConfig::new(path, "nic0");
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(100);
    c.error_retry = Duration::from_millis(300);
    c.answer_timeout = Duration::from_millis(500);
    c.tick = Duration::from_millis(20);
    c
}

fn start(cfg: FollowConfig) -> (Follower, mpsc::Receiver<FilterUpdate>) {
    let (tx, rx) = mpsc::channel();
    let f = Follower::start(cfg, move |u| {
        let _ = tx.send(u);
    })
    .unwrap();
    (f, rx)
}

fn wait_status(f: &Follower, what: &str, pred: impl Fn(&FollowStatus) -> bool) -> FollowStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = f.status();
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "no {what}: {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn follows_the_nic_and_asks_again_only_on_its_own_event() {
    let dir = TempDir::new();
    let path = dir.0.join("qmp.sock");
    let l = UnixListener::bind(&path).unwrap();
    let (f, rx) = start(fast(&path));
    let mut p = Peer::negotiate(&l);
    let id = p.expect("query-rx-filter");
    // An answer split across writes, after an event of another NIC.
    let whole = format!("{}\r\n", json!({"return": [info(false)], "id": id}));
    p.say(&event("nic9"));
    p.say(&whole[..40]);
    std::thread::sleep(Duration::from_millis(50));
    p.say(&whole[40..]);
    let u = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(u.info, info(false));
    assert!(
        !u.filter.promiscuous && u.filter.broadcast_allowed,
        "quirk corrected"
    );
    assert!(
        p.quiet_for(Duration::from_millis(200)),
        "asked without an event"
    );
    // The same filter again is not handed over; a changed one is.
    p.say(&event("nic0"));
    let id = p.expect("query-rx-filter");
    p.answer(&id, &info(false));
    p.say(&event("nic0"));
    let id = p.expect("query-rx-filter");
    p.answer(&id, &info(true));
    let u = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(u.filter.promiscuous);
    let s = wait_status(&f, "Following", |s| s.state == FollowState::Following);
    assert_eq!(
        (s.connections, s.reconnections, s.queries, s.updates),
        (1, 0, 3, 2)
    );
    assert!(rx.try_recv().is_err());
    f.stop();
}

#[test]
fn an_error_answer_is_the_state_and_is_asked_again_slowly() {
    let dir = TempDir::new();
    let path = dir.0.join("qmp.sock");
    let l = UnixListener::bind(&path).unwrap();
    let (f, rx) = start(fast(&path));
    let mut p = Peer::negotiate(&l);
    let id = p.expect("query-rx-filter");
    let err = json!({"id": id, "error": {"class": "GenericError", "desc": "invalid net client name: nic0"}});
    p.say(&format!("{err}\r\n"));
    let s = wait_status(&f, "Error", |s| matches!(s.state, FollowState::Error(_)));
    assert_eq!(
        s.state,
        FollowState::Error(
            "query-rx-filter for 'nic0': GenericError: invalid net client name: nic0".into()
        )
    );
    let asked = Instant::now();
    let id = p.expect("query-rx-filter");
    assert!(
        asked.elapsed() >= Duration::from_millis(200),
        "{:?}",
        asked.elapsed()
    );
    p.answer(&id, &info(false));
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    wait_status(&f, "Following", |s| s.state == FollowState::Following);
    assert_eq!(f.status().connections, 1);
    f.stop();
}

#[test]
fn bad_input_silence_and_a_cut_message_end_the_connection_and_it_comes_back() {
    let dir = TempDir::new();
    let path = dir.0.join("qmp.sock");
    let l = UnixListener::bind(&path).unwrap();
    let (f, rx) = start(fast(&path));
    // Not QMP at all.
    let mut p = Peer::accept(&l);
    p.say("{\"hello\": 1}\r\n");
    // Garbage where the answer should be.
    let mut p = Peer::negotiate(&l);
    p.expect("query-rx-filter");
    p.say("}}garbage\r\n");
    wait_status(
        &f,
        "Error",
        |s| matches!(&s.state, FollowState::Error(t) if t.contains("bad JSON")),
    );
    // No answer at all.
    let mut p = Peer::negotiate(&l);
    p.expect("query-rx-filter");
    let silent = p; // kept open: the follower must give up on its own
                    // Half an answer, then the connection closes.
    let mut p = Peer::negotiate(&l);
    drop(silent);
    p.expect("query-rx-filter");
    p.say("{\"return\": [{\"name\": \"nic0\", \"prom");
    drop(p);
    let mut p = Peer::negotiate(&l);
    let id = p.expect("query-rx-filter");
    p.answer(&id, &info(false));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap().info,
        info(false)
    );
    let s = wait_status(&f, "Following", |s| s.state == FollowState::Following);
    assert_eq!((s.connections, s.reconnections), (4, 3));
    assert!(s.last_error.unwrap().contains("closed"));
    f.stop();
}

#[test]
fn stop_is_prompt_while_qemu_is_absent() {
    let dir = TempDir::new();
    let (f, _rx) = start(FollowConfig::new(dir.0.join("none.sock"), "nic0"));
    let s = wait_status(&f, "a failed connect", |s| s.last_error.is_some());
    assert_eq!(s.state, FollowState::Connecting);
    assert!(s.last_error.unwrap().contains("cannot connect"));
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    f.stop();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}
