//! Issue 14's acceptance for follow mode, against a real QEMU 7.2 guest (TCG): the guest of
//! tests/ports/guest (the host's kernel, a busybox initramfs; see tests/ports/guest_rig.py)
//! with a virtio-net-pci NIC `nic0` and a QMP socket. Inside the guest, promiscuous mode, a
//! multicast group (the solicited-node group of a new IPv6 address) and a MAC added to the
//! NIC (a macvlan on eth0) each change the NIC's filter; the follower must pick each change up
//! through QMP, and the filter it hands over must take and refuse frames accordingly. Then
//! QEMU is killed and started again on the same QMP path: the follower must find the new
//! guest. It prints every RxFilterInfo QEMU answered (run with --nocapture to read them).
//!
//! Needs qemu-system-x86_64 (or $QEMU), busybox-static and a readable /boot/vmlinuz-* with
//! its modules; without them it is skipped with a message, and fails under CI=true.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ringswitch_control::follow::{FilterUpdate, FollowConfig, FollowState, Follower};
use ringswitch_switch::MacAddr;

const BOOT_TIMEOUT: Duration = Duration::from_secs(120); // TCG on a busy 2-core machine
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
const MAC_A: &str = "52:54:00:12:34:56";
const MAC_B: &str = "52:54:00:12:34:57";
/// The group a Linux guest joins on every interface that is up (all-nodes, ff02::1).
const ALL_NODES: &str = "33:33:00:00:00:01";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("control/ sits in the repository")
        .to_path_buf()
}

fn qemu() -> String {
    std::env::var("QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into())
}

/// The guest's kernel and initramfs, built (or found up to date) by build-initramfs.sh into
/// target/guest, where the pytest guests find them too; or why they cannot be had.
fn guest_image() -> Result<(PathBuf, PathBuf), String> {
    match Command::new(qemu()).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => return Err(format!("needs {} (Debian package qemu-system-x86)", qemu())),
    }
    if !Path::new("/bin/busybox").exists() {
        return Err("needs /bin/busybox (Debian package busybox-static)".into());
    }
    let root = repo_root();
    let out = root.join("target/guest");
    let built = Command::new("bash")
        .arg(root.join("tests/ports/guest/build-initramfs.sh"))
        .arg(&out)
        .output()
        .map_err(|e| format!("cannot run build-initramfs.sh: {e}"))?;
    if !built.status.success() {
        return Err(format!(
            "could not build the guest initramfs: {}",
            String::from_utf8_lossy(&built.stderr).trim()
        ));
    }
    Ok((out.join("vmlinuz"), out.join("initramfs.cpio.gz")))
}

/// A directory removed with what it holds when the test ends, however it ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("rs-follow-qemu-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Default)]
struct Console {
    lines: Vec<String>,
    closed: bool,
}

/// One QEMU guest driven over its serial console (QEMU's stdio); killed on drop.
struct Guest {
    child: Child,
    stdin: ChildStdin,
    console: Arc<(Mutex<Console>, Condvar)>,
    seq: u32,
}

impl Guest {
    fn start(image: &(PathBuf, PathBuf), qmp: &Path, mac: &str) -> Guest {
        let mut child = Command::new(qemu())
            .args(["-accel", "tcg", "-m", "256", "-smp", "1"])
            .arg("-kernel")
            .arg(&image.0)
            .arg("-initrd")
            .arg(&image.1)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-monitor", "none", "-serial", "stdio"])
            .args(["-netdev", "user,id=n0,restrict=on"])
            // vectors=0: INTx, as the other test guests (tests/ports/guest_rig.py).
            .arg("-device")
            .arg(format!(
                "virtio-net-pci,id=nic0,netdev=n0,mac={mac},vectors=0"
            ))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("QEMU starts");
        let stdin = child.stdin.take().unwrap();
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        let out = child.stdout.take().unwrap();
        let sink = Arc::clone(&console);
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).replace('\r', "");
                sink.0.lock().unwrap().lines.push(line);
                sink.1.notify_all();
            }
            sink.0.lock().unwrap().closed = true;
            sink.1.notify_all();
        });
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[qemu] {line}");
            }
        });
        Guest {
            child,
            stdin,
            console,
            seq: 0,
        }
    }

    fn tail(&self) -> String {
        let c = self.console.0.lock().unwrap();
        c.lines[c.lines.len().saturating_sub(30)..].join("\n  ")
    }

    /// Waits until `pred` finds what it wants among the console's lines from `from` on.
    fn wait_console<T>(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[String]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.console;
        let mut c = lock.lock().unwrap();
        loop {
            if let Some(v) = pred(&c.lines[from.min(c.lines.len())..]) {
                return v;
            }
            if let Some(failed) = c.lines.iter().find(|l| l.starts_with("RS-GUEST-FAILED")) {
                panic!("{failed}");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !c.closed && !left.is_zero(),
                "no {what} in {timeout:?}; console:\n  {}",
                {
                    let n = c.lines.len();
                    c.lines[n.saturating_sub(30)..].join("\n  ")
                }
            );
            c = cv
                .wait_timeout(c, left.min(Duration::from_millis(500)))
                .unwrap()
                .0;
        }
    }

    fn wait_ready(&self) {
        self.wait_console(0, BOOT_TIMEOUT, "RS-GUEST-READY", |lines| {
            lines
                .iter()
                .any(|l| l.trim() == "RS-GUEST-READY")
                .then_some(())
        });
    }

    /// Runs `cmd` in the guest's shell and checks that it exits 0; its output.
    fn check(&mut self, cmd: &str) -> String {
        self.seq += 1;
        let tag = format!("RSDONE{:04}", self.seq);
        let from = self.console.0.lock().unwrap().lines.len();
        // The marker is built by the shell, so it cannot match the command line itself.
        writeln!(
            self.stdin,
            "{cmd}\nrs_rc=$?; echo \"RS\"\"DONE{:04} $rs_rc\"",
            self.seq
        )
        .unwrap();
        self.stdin.flush().unwrap();
        let (rc, out) =
            self.wait_console(from, CHANGE_TIMEOUT, &format!("end of `{cmd}`"), |lines| {
                lines.iter().enumerate().find_map(|(i, l)| {
                    let rc = l.trim().strip_prefix(&tag)?.trim().to_string();
                    Some((rc, lines[..i].join("\n")))
                })
            });
        assert_eq!(rc, "0", "`{cmd}` failed:\n{out}");
        out
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The follower's updates, each printed as it is taken.
struct Updates {
    rx: Receiver<FilterUpdate>,
    last: Option<FilterUpdate>,
}

impl Updates {
    fn wait(
        &mut self,
        (f, guest): (&Follower, &Guest),
        timeout: Duration,
        what: &str,
        pred: impl Fn(&FilterUpdate) -> bool,
    ) -> FilterUpdate {
        let t = Instant::now();
        let deadline = t + timeout;
        loop {
            if let Some(u) = self.last.as_ref().filter(|u| pred(u)) {
                eprintln!("[follow] {what}: after {:.1} s", t.elapsed().as_secs_f64());
                return u.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(u) => {
                    eprintln!("[follow] update {}", compact(&u.info));
                    self.last = Some(u);
                }
                Err(_) => panic!(
                    "no update with {what}; follower {:?}; last {:?}\nconsole:\n  {}",
                    f.status(),
                    self.last.as_ref().map(|u| &u.info),
                    guest.tail()
                ),
            }
        }
    }
}

/// The info for the log, a long VLAN list shown as its length.
fn compact(info: &serde_json::Value) -> String {
    let mut v = info.clone();
    if let Some(n) = v["vlan-table"].as_array().map(Vec::len).filter(|&n| n > 16) {
        v["vlan-table"] = format!("<{n} ids>").into();
    }
    v.to_string()
}

fn frame_to(dst: &str) -> Vec<u8> {
    let mut f = dst.parse::<MacAddr>().unwrap().0.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99, 0x08, 0x00]);
    f.resize(64, 0);
    f
}

fn wait_state(f: &Follower, want: FollowState) {
    let deadline = Instant::now() + CHANGE_TIMEOUT;
    while f.status().state != want {
        assert!(
            Instant::now() < deadline,
            "follower never {want:?}: {:?}",
            f.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn follows_a_real_qemu_guests_nic_through_changes_and_a_restart() {
    let image = match guest_image() {
        Ok(i) => i,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => panic!("{why} (CI=true)"),
        Err(why) => {
            eprintln!("skipping the real-QEMU follow test: {why}");
            return;
        }
    };
    let dir = TempDir::new();
    let qmp = dir.0.join("qmp.sock");
    let started = Instant::now();
    let mut guest = Guest::start(&image, &qmp, MAC_A);
    let (tx, rx) = mpsc::channel();
    let follower = Follower::start(FollowConfig::new(&qmp, "nic0"), move |u| {
        let _ = tx.send(u);
    })
    .unwrap();
    let mut updates = Updates { rx, last: None };

    // The initial filter, whatever the guest has done by then.
    let first = updates.wait(
        (&follower, &guest),
        CHANGE_TIMEOUT,
        "the initial filter",
        |u| u.filter.main_mac.to_string() == MAC_A,
    );
    eprintln!(
        "[follow] initial filter after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(first.info["name"], "nic0");
    // The guest's driver brings eth0 up: out of promiscuous mode, all-nodes joined.
    let up = |u: &FilterUpdate| {
        !u.filter.promiscuous
            && u.filter
                .multicast_table
                .contains(&ALL_NODES.parse().unwrap())
    };
    let u = updates.wait(
        (&follower, &guest),
        BOOT_TIMEOUT,
        "the guest's driver up",
        up,
    );
    guest.wait_ready();
    eprintln!(
        "[follow] guest up after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(u.filter.accepts(&frame_to(MAC_A)));
    assert!(
        u.filter.accepts(&frame_to("ff:ff:ff:ff:ff:ff")),
        "broadcast, QEMU's inverted flag corrected"
    );
    assert!(!u.filter.accepts(&frame_to("02:00:00:00:00:01")));

    guest.check("ip link set eth0 promisc on");
    let u = updates.wait((&follower, &guest), CHANGE_TIMEOUT, "promiscuous on", |u| {
        u.filter.promiscuous
    });
    assert!(u.filter.accepts(&frame_to("02:00:00:00:00:01")));
    guest.check("ip link set eth0 promisc off");
    let u = updates.wait(
        (&follower, &guest),
        CHANGE_TIMEOUT,
        "promiscuous off",
        |u| !u.filter.promiscuous,
    );
    assert!(!u.filter.accepts(&frame_to("02:00:00:00:00:01")));

    // A new IPv6 address joins its solicited-node group ff02::1:ffab:cdef.
    let group = "33:33:ff:ab:cd:ef";
    assert!(!u.filter.accepts(&frame_to(group)));
    guest.check("ip -6 addr add fd00::ab:cdef/64 dev eth0");
    let u = updates.wait(
        (&follower, &guest),
        CHANGE_TIMEOUT,
        "the multicast group joined",
        |u| u.filter.multicast_table.contains(&group.parse().unwrap()),
    );
    assert!(u.filter.accepts(&frame_to(group)));

    // A macvlan on eth0 adds its address to eth0's unicast list once it is up.
    let extra = "02:00:00:aa:bb:cc";
    assert!(!u.filter.accepts(&frame_to(extra)));
    guest.check(&format!(
        "ip link add link eth0 name mv0 address {extra} type macvlan && ip link set mv0 up"
    ));
    let u = updates.wait((&follower, &guest), CHANGE_TIMEOUT, "the MAC added", |u| {
        u.filter.unicast_table.contains(&extra.parse().unwrap())
    });
    assert!(u.filter.accepts(&frame_to(extra)) && !u.filter.promiscuous);
    assert_eq!(follower.status().state, FollowState::Following);
    assert_eq!(follower.status().connections, 1);

    // QEMU goes away and comes back on the same QMP path, with another guest behind it.
    guest.kill();
    wait_state(&follower, FollowState::Connecting);
    let restarted = Instant::now();
    let guest = Guest::start(&image, &qmp, MAC_B);
    updates.wait(
        (&follower, &guest),
        CHANGE_TIMEOUT,
        "the new QEMU's NIC",
        |u| u.filter.main_mac.to_string() == MAC_B,
    );
    let u = updates.wait(
        (&follower, &guest),
        BOOT_TIMEOUT,
        "the new guest's driver up",
        |u| u.filter.main_mac.to_string() == MAC_B && up(u),
    );
    eprintln!(
        "[follow] new guest followed {:.1} s after the restart",
        restarted.elapsed().as_secs_f64()
    );
    assert!(
        u.filter.unicast_table.is_empty(),
        "the old guest's macvlan is gone"
    );
    assert!(!u.filter.accepts(&frame_to(MAC_A)) && u.filter.accepts(&frame_to(MAC_B)));
    let s = follower.status();
    assert!(
        s.reconnections >= 1 && s.state == FollowState::Following,
        "{s:?}"
    );
    eprintln!("[follow] status {s:?}");

    let t = Instant::now();
    follower.stop();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        t.elapsed()
    );
    drop(guest);
}
