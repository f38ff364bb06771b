//! `vde` ports against the real vde2 from Debian: a `vde_switch` in a directory of the test's
//! own, ringswitch plugged into it with `-netdev vde,sock=DIR`, and vdeplug's `vde_plug` as a
//! second station on the vde_switch (its stdin and stdout carry frames with a 2-byte
//! big-endian length in front). A unix `dgram` port of ringswitch is the other station. No
//! privileges needed.
//!
//! Checked: frames both ways through vde_switch; the vde_switch killed and started again — the
//! port reports itself down (`query-ports` `connected`) and plugs in again by itself; a
//! switch that refuses the port or answers nonsense is a clear error naming its socket; `mode`
//! and `port` as QEMU spells them; `--vde-serve` options refused by name, and a directory a
//! vde_switch already serves refused at start.

mod common;

use common::execute_once as execute;

use common::{require_vde, run_cli, unique_name, Switch, VdeSwitch};
use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `vde_plug DIR`: a station on the vde_switch, frames through its stdin and stdout.
struct Plug {
    child: Child,
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl Plug {
    fn start(dir: &Path) -> Plug {
        let mut child = Command::new("vde_plug")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("vde_plug");
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || loop {
            let mut len = [0u8; 2];
            if out.read_exact(&mut len).is_err() {
                return;
            }
            let mut f = vec![0u8; u16::from_be_bytes(len) as usize];
            if out.read_exact(&mut f).is_err() || tx.send(f).is_err() {
                return;
            }
        });
        Plug { child, rx }
    }

    fn send(&mut self, f: &[u8]) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(&(f.len() as u16).to_be_bytes()).unwrap();
        stdin.write_all(f).unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Plug {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn frame(src: u8, tag: u8, len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(tag)).collect();
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f[14] = tag;
    f
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `query-ports`' `connected` for port `id`, over a fresh QMP connection.
fn connected(qmp: &Path, id: &str) -> bool {
    let v = execute(
        qmp,
        &format!(r#"{{"execute":"query-ports","arguments":{{"name":"{id}"}}}}"#),
    );
    v["return"][0]["connected"].as_bool().expect("connected")
}

struct Setup {
    dir: PathBuf,
    sw: VdeSwitch,
    peer: UnixDatagram,
    sw_end: PathBuf,
    qmp: PathBuf,
    switch: Option<Switch>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        drop(self.switch.take());
        // Before the directory goes: the vde_switch's pid file is in it.
        self.sw.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup() -> Setup {
    let dir = std::env::temp_dir().join(unique_name("rs-vde"));
    std::fs::create_dir_all(&dir).unwrap();
    let sw = VdeSwitch::start(&dir.join("sw"));
    let sw_end = dir.join("d.sock");
    let peer_end = dir.join("peer.sock");
    let peer = UnixDatagram::bind(&peer_end).unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let qmp = dir.join("qmp.sock");
    let vde = format!("vde,id=v,sock={},mode=0700", sw.dir.display());
    let dgram = format!(
        "dgram,id=d,local.type=unix,local.path={},remote.type=unix,remote.path={}",
        sw_end.display(),
        peer_end.display()
    );
    let qmp_arg = format!("unix:{},server=on,wait=off", qmp.display());
    let switch = Switch::start(&["-netdev", &vde, "-netdev", &dgram, "-qmp", &qmp_arg]);
    Setup {
        dir,
        sw,
        peer,
        sw_end,
        qmp,
        switch: Some(switch),
    }
}

/// Frames from vde_plug reach the datagram peer and frames from the peer reach vde_plug
/// (retried: the switches may still be settling).
fn frames_cross(s: &Setup, plug: &mut Plug, round: u8) {
    let mut buf = vec![0u8; 9000];
    let f = frame(7, round, 100);
    let mut got = false;
    for _ in 0..50 {
        plug.send(&f);
        if let Ok(n) = s.peer.recv(&mut buf) {
            assert_eq!(&buf[..n], &f[..], "round {round}: vde_plug -> peer");
            got = true;
            break;
        }
    }
    assert!(got, "round {round}: nothing from vde_plug reached the peer");
    let g = frame(8, round.wrapping_add(100), 1400);
    let mut back = None;
    for _ in 0..50 {
        s.peer.send_to(&g, &s.sw_end).unwrap();
        if let Ok(b) = plug.rx.recv_timeout(Duration::from_millis(200)) {
            back = Some(b);
            break;
        }
    }
    assert_eq!(
        back.as_deref(),
        Some(&g[..]),
        "round {round}: peer -> vde_plug"
    );
}

#[test]
fn frames_cross_a_vde_switch_and_the_port_survives_its_restart() {
    if !require_vde("frames_cross_a_vde_switch_and_the_port_survives_its_restart") {
        return;
    }
    let mut s = setup();
    assert!(connected(&s.qmp, "v"));
    {
        let mut plug = Plug::start(&s.sw.dir);
        frames_cross(&s, &mut plug, 1);
    }
    for round in 2..4u8 {
        // The vde_switch goes away (killed mid-run) and comes back in the same directory.
        s.sw.kill();
        wait_for("the port reported down", || !connected(&s.qmp, "v"));
        s.sw.restart();
        wait_for("the port plugged in again", || connected(&s.qmp, "v"));
        let mut plug = Plug::start(&s.sw.dir);
        frames_cross(&s, &mut plug, round);
    }
    // Live, as QEMU's netdev_add takes it: a second port on the same vde_switch, then gone.
    let add = format!(
        r#"{{"execute":"netdev_add","arguments":{{"type":"vde","id":"v2","sock":"{}","port":9,"mode":448}}}}"#,
        s.sw.dir.display()
    );
    assert_eq!(execute(&s.qmp, &add)["return"], serde_json::json!({}));
    assert!(connected(&s.qmp, "v2"));
    let del = r#"{"execute":"netdev_del","arguments":{"id":"v2"}}"#;
    assert_eq!(execute(&s.qmp, del)["return"], serde_json::json!({}));
    // Port 9 is free again: vde_switch gives it to the next client that asks.
    assert_eq!(execute(&s.qmp, &add)["return"], serde_json::json!({}));
    let stderr = s.switch.as_ref().unwrap().stderr();
    assert!(stderr.contains("went away"), "{stderr}");
    assert!(stderr.contains("plugged into the vde_switch"), "{stderr}");
}

/// A fake switch on `ctl`: reads the request, then answers with `reply` (nothing: closes).
fn fake_switch(ctl: &Path, reply: Vec<u8>) -> std::thread::JoinHandle<Vec<u8>> {
    let l = UnixListener::bind(ctl).unwrap();
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut req = vec![0u8; 512];
        let n = c.read(&mut req).unwrap_or(0);
        req.truncate(n);
        if !reply.is_empty() {
            let _ = c.write_all(&reply);
        }
        req
    })
}

#[test]
fn a_switch_that_refuses_or_talks_nonsense_is_a_clear_error() {
    let dir = std::env::temp_dir().join(unique_name("rs-vdx"));
    std::fs::create_dir_all(&dir).unwrap();
    // Refused: the switch reads the request and closes (what vde_switch does for a port in
    // use or a bad magic).
    let t = fake_switch(&dir.join("ctl"), Vec::new());
    let out = run_cli(&[
        "-netdev",
        &format!("vde,id=v,sock={},port=3", dir.display()),
    ]);
    let req = t.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("{}/ctl", dir.display())) && err.contains("refused the port"),
        "{err}"
    );
    assert!(err.contains("port 3"), "{err}");
    // The request as vde2 reads it: magic, version 3, port 3 in the type's high bits.
    assert_eq!(&req[0..4], &0xfeed_faceu32.to_ne_bytes());
    assert_eq!(&req[4..8], &3u32.to_ne_bytes());
    assert_eq!(&req[8..12], &(3u32 << 8).to_ne_bytes());
    std::fs::remove_file(dir.join("ctl")).unwrap();

    // Nonsense: an answer that is not a unix socket address.
    let t = fake_switch(&dir.join("ctl"), vec![9u8; 40]);
    let out = run_cli(&["-netdev", &format!("vde,id=v,sock={}", dir.display())]);
    t.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(err.contains("not a unix socket address"), "{err}");
    std::fs::remove_file(dir.join("ctl")).unwrap();

    // No switch at all.
    let out = run_cli(&["-netdev", &format!("vde,id=v,sock={}/nope", dir.display())]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("{}/nope/ctl", dir.display())),
        "{err}"
    );
    // Out-of-range options, refused by name.
    for (spec, what) in [
        ("vde,id=v,port=70000", "port"),
        ("vde,id=v,mode=010000", "mode"),
        ("vde,id=v,bogus=1", "bogus"),
    ] {
        let out = run_cli(&["-netdev", spec]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{spec}");
        assert!(err.contains(what), "{spec}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vde_serve_refuses_bad_options_and_a_directory_another_switch_serves() {
    for (spec, what) in [
        ("/tmp/x,bogus=1", "'bogus'"),
        ("/tmp/x,mode=999", "mode"),
        ("/tmp/x,id=9lives", "id"),
    ] {
        let out = run_cli(&["--vde-serve", spec]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{spec}: {err}");
        assert!(err.contains(what), "{spec}: {err}");
    }
    if !require_vde("vde_serve_refuses_bad_options_and_a_directory_another_switch_serves") {
        return;
    }
    let dir = std::env::temp_dir().join(unique_name("rs-vds"));
    std::fs::create_dir_all(&dir).unwrap();
    let sw = VdeSwitch::start(&dir.join("sw"));
    let out = run_cli(&["--vde-serve", &sw.dir.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success());
    assert!(err.contains("a switch already serves it"), "{err}");
    drop(sw);
    let _ = std::fs::remove_dir_all(&dir);
}
