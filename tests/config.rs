//! `--config FILE`: the set-up as a JSON object, its `netdevs` read by QMP's `netdev_add`
//! reader and its other members by the command line's option table. A file with two unix
//! `dgram` ports forwards between them; the same set-up as command line and as file gives the
//! same `query-ports`; bad files exit 2 naming the file, the member and the fault (a bad
//! netdev with QMP's own error text); command-line options override the file's. No
//! privileges needed.

mod common;

use common::{run_cli, unique_name, Qmp, Switch};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn frame(src: u8, dst: u8, tag: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..80u8).map(|i| i.wrapping_mul(tag)).collect();
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, dst]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f
}

/// The test's end of a unix `dgram` port.
struct Peer {
    sock: UnixDatagram,
    peer_end: PathBuf,
    switch_end: PathBuf,
}

impl Peer {
    fn new(dir: &Path, name: &str) -> Peer {
        let peer_end = dir.join(format!("{name}-peer.sock"));
        let switch_end = dir.join(format!("{name}.sock"));
        let sock = UnixDatagram::bind(&peer_end).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        Peer {
            sock,
            peer_end,
            switch_end,
        }
    }

    /// The port as `-netdev` takes it.
    fn arg(&self, id: &str) -> String {
        format!(
            "dgram,id={id},local.type=unix,local.path={},remote.type=unix,remote.path={}",
            self.switch_end.display(),
            self.peer_end.display()
        )
    }

    /// The same port as `netdev_add` takes it.
    fn object(&self, id: &str) -> Value {
        json!({
            "type": "dgram",
            "id": id,
            "local": {"type": "unix", "path": self.switch_end},
            "remote": {"type": "unix", "path": self.peer_end},
        })
    }

    fn send(&self, f: &[u8]) {
        self.sock.send_to(f, &self.switch_end).unwrap();
    }

    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        let n = self.sock.recv(&mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// Removes the switch's end, which a switch that has stopped may leave behind.
    fn forget_switch_end(&self) {
        let _ = std::fs::remove_file(&self.switch_end);
    }
}

fn pass(from: &Peer, to: &Peer, src: u8, dst: u8, n: u8) {
    for i in 0..n {
        let f = frame(src, dst, i);
        from.send(&f);
        assert_eq!(to.recv().as_deref(), Some(&f[..]), "frame {i} {src}→{dst}");
    }
}

fn test_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `query-ports` without what changes by the moment (uptime).
fn ports(q: &mut Qmp) -> Value {
    let mut v = q.execute("query-ports");
    for p in v.as_array_mut().expect("a list of ports") {
        p.as_object_mut().unwrap().remove("uptime-ms");
    }
    v
}

#[test]
fn a_config_file_with_two_dgram_ports_forwards_between_them() {
    let dir = test_dir("rs-cfa");
    let (a, b) = (Peer::new(&dir, "a"), Peer::new(&dir, "b"));
    let qmp = dir.join("qmp.sock");
    let cfg = json!({
        "netdevs": [a.object("a"), b.object("b")],
        "mac-ageing": 60,
        "mac-table-size": "1024",
        "rx-depth": 32,
        "max-ports": 4,
        "no-rx-multishot": false,
        "qmp": format!("unix:{},server=on,wait=off", qmp.display()),
    });
    let file = write(&dir, "switch.json", &cfg.to_string());
    let switch = Switch::start(&["--config", file.to_str().unwrap()]);
    assert!(switch.stderr().contains("2 port(s)"), "{}", switch.stderr());
    // Unknown destination first (flooded), then learned both ways.
    pass(&a, &b, 1, 2, 20);
    pass(&b, &a, 2, 1, 20);
    pass(&a, &b, 1, 2, 20);
    let mut q = Qmp::connect(&qmp);
    let shown = ports(&mut q);
    assert_eq!(shown.as_array().unwrap().len(), 2, "{shown}");
    assert_eq!(q.port("a")["type"], "dgram");
    let stopped = switch.stop();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let stats = stopped.stats.expect("stats");
    assert_eq!(stats.port("a").rx_frames, 40);
    assert_eq!(stats.port("b").rx_frames, 20);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_same_set_up_as_command_line_and_as_file_answers_query_ports_alike() {
    let dir = test_dir("rs-cfs");
    let (a, b) = (Peer::new(&dir, "a"), Peer::new(&dir, "b"));
    let qmp = dir.join("qmp.sock");
    let qmp_arg = format!("unix:{},server=on,wait=off", qmp.display());

    let switch = Switch::start(&[
        "-netdev",
        &a.arg("a"),
        "-netdev",
        &b.arg("b"),
        "--mac-ageing",
        "60",
        "--rx-depth",
        "16",
        "-qmp",
        &qmp_arg,
    ]);
    let from_cli = ports(&mut Qmp::connect(&qmp));
    assert!(switch.stop().status.success());
    a.forget_switch_end();
    b.forget_switch_end();
    let _ = std::fs::remove_file(&qmp);

    let cfg = json!({
        "netdevs": [a.object("a"), b.object("b")],
        "mac-ageing": 60,
        "rx-depth": 16,
        "qmp": [qmp_arg],
    });
    let file = write(&dir, "same.json", &cfg.to_string());
    let switch = Switch::start(&["--config", file.to_str().unwrap()]);
    let from_file = ports(&mut Qmp::connect(&qmp));
    assert!(switch.stop().status.success());
    assert_eq!(from_cli, from_file);
    assert_eq!(from_cli.as_array().unwrap().len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `--config` on a file holding `text`; asserts exit status 2 and that stderr names the
/// file and holds every one of `wanted`.
fn refused(dir: &Path, name: &str, text: &str, wanted: &[&str]) -> String {
    let file = write(dir, name, text);
    let out = run_cli(&["--config", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{text}: {err}");
    assert!(err.contains(&file.display().to_string()), "{text}: {err}");
    for w in wanted {
        assert!(err.contains(w), "{text}: wanted {w:?} in {err}");
    }
    err
}

#[test]
fn bad_files_exit_2_naming_the_file_the_member_and_the_fault() {
    let dir = test_dir("rs-cfb");
    let a = Peer::new(&dir, "a");
    let ok = a.object("a");
    refused(&dir, "trunc.json", "{\"mac-ageing\": ", &["not valid JSON"]);
    refused(
        &dir,
        "list.json",
        "[1, 2]",
        &["expected a JSON object", "a list"],
    );
    refused(
        &dir,
        "unknown.json",
        &json!({"netdevs": [ok], "colour": "blue"}).to_string(),
        &["member \"colour\"", "unknown member", "mac-ageing"],
    );
    refused(
        &dir,
        "type.json",
        &json!({"netdevs": [ok], "mac-ageing": true}).to_string(),
        &[
            "member \"mac-ageing\"",
            "expected a string or a number, found a boolean",
        ],
    );
    refused(
        &dir,
        "flag.json",
        &json!({"netdevs": [ok], "allow-scripts": "yes"}).to_string(),
        &["member \"allow-scripts\"", "expected true or false"],
    );
    refused(
        &dir,
        "range.json",
        &json!({"netdevs": [ok], "mac-ageing": 0}).to_string(),
        &["member \"mac-ageing\"", "0 is not in 1..=1000000"],
    );
    refused(
        &dir,
        "choice.json",
        &json!({"netdevs": [ok], "tap-rx": "sometimes"}).to_string(),
        &["member \"tap-rx\"", "sometimes"],
    );
    refused(
        &dir,
        "qmp.json",
        &json!({"qmp": "unix:/tmp/nowhere"}).to_string(),
        &["member \"qmp\"", "server=on"],
    );
    refused(
        &dir,
        "qmplist.json",
        &json!({"qmp": [1]}).to_string(),
        &[
            "member \"qmp\"",
            "item 0: expected a string, found a number",
        ],
    );
    refused(
        &dir,
        "netdevs.json",
        &json!({"netdevs": ok}).to_string(),
        &["member \"netdevs\"", "expected a list of objects"],
    );
    refused(
        &dir,
        "dup.json",
        &json!({"netdevs": [ok, ok]}).to_string(),
        &["member \"netdevs\"[1]", "Duplicate ID 'a'"],
    );
    refused(
        &dir,
        "cli.json",
        &json!({"netdev": [a.arg("a")]}).to_string(),
        &["member \"netdev\"", "\"netdevs\""],
    );
    refused(&dir, "empty.json", "{}", &["no ports"]);
    let missing = dir.join("missing.json");
    let out = run_cli(&["--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read it"));

    // A netdev QMP refuses is refused with QMP's own words.
    let qmp = dir.join("qmp.sock");
    let switch = Switch::start(&["-qmp", &format!("unix:{},server=on", qmp.display())]);
    let mut q = Qmp::connect(&qmp);
    for (name, bad) in [
        (
            "colour",
            json!({"type": "dgram", "id": "x", "colour": "blue"}),
        ),
        ("kind", json!({"type": "bogus", "id": "x"})),
        ("noid", json!({"type": "dgram"})),
        ("wrongtype", json!({"type": "tap", "id": "x", "ifname": 5})),
    ] {
        let answer = q.execute_with("netdev_add", bad.clone());
        let desc = answer["error"]["desc"]
            .as_str()
            .unwrap_or_else(|| panic!("QMP accepted {bad}: {answer}"))
            .to_string();
        refused(
            &dir,
            &format!("netdev-{name}.json"),
            &json!({"netdevs": [ok, bad]}).to_string(),
            &["member \"netdevs\"[1]", &desc],
        );
    }
    drop(q);
    assert!(switch.stop().status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn command_line_options_override_the_files() {
    let dir = test_dir("rs-cfo");
    let (a, a2, b) = (
        Peer::new(&dir, "a"),
        Peer::new(&dir, "a2"),
        Peer::new(&dir, "b"),
    );
    let (file_metrics, cli_metrics) = (free_port(), free_port());
    let (file_qmp, cli_qmp) = (dir.join("file-qmp.sock"), dir.join("cli-qmp.sock"));
    let cfg = json!({
        "netdevs": [a.object("a"), b.object("b")],
        "metrics": format!("tcp:127.0.0.1:{file_metrics}"),
        "qmp": [format!("unix:{},server=on,wait=off", file_qmp.display())],
        "max-ports": 2,
    });
    let file = write(&dir, "base.json", &cfg.to_string());
    let file = file.to_str().unwrap();
    // Port a again, to another peer; another QMP socket; another metrics port.
    let a_again = format!(
        "dgram,id=a,local.type=unix,local.path={},remote.type=unix,remote.path={}",
        dir.join("a-again.sock").display(),
        a2.peer_end.display()
    );
    let switch = Switch::start(&[
        "--config",
        file,
        "-netdev",
        &a_again,
        "--metrics",
        &format!("tcp:127.0.0.1:{cli_metrics}"),
        "-qmp",
        &format!("unix:{},server=on,wait=off", cli_qmp.display()),
    ]);
    let err = switch.stderr();
    assert!(err.contains("2 port(s)"), "{err}");
    assert!(
        err.contains(&format!(
            "metrics on http://127.0.0.1:{cli_metrics}/metrics"
        )),
        "{err}"
    );
    assert!(!err.contains(&format!("127.0.0.1:{file_metrics}")), "{err}");
    assert!(err.contains(&cli_qmp.display().to_string()), "{err}");
    assert!(!file_qmp.exists(), "the file's QMP socket was replaced");
    let mut q = Qmp::connect(&cli_qmp);
    assert_eq!(
        q.port("a")["options"]["remote.path"],
        a2.peer_end.display().to_string()
    );
    // b floods to the command line's port a, not to the file's.
    let f = frame(2, 9, 1);
    b.send(&f);
    assert_eq!(a2.recv().as_deref(), Some(&f[..]), "b's frame at the new a");
    a.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(a.recv().is_none(), "the file's port a got a frame");
    drop(q);
    assert!(switch.stop().status.success());

    // The file's options still hold where the command line is silent: its max-ports.
    let c = Peer::new(&dir, "c");
    let out = run_cli(&["--config", file, "-netdev", &c.arg("c")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("member \"max-ports\"") && err.contains("--max-ports is 2"),
        "{err}"
    );
    // The command line's own value beats it.
    b.forget_switch_end();
    let _ = std::fs::remove_file(dir.join("a-again.sock"));
    let _ = std::fs::remove_file(&cli_qmp);
    let switch = Switch::start(&["--config", file, "-netdev", &c.arg("c"), "--max-ports", "3"]);
    assert!(switch.stderr().contains("3 port(s)"), "{}", switch.stderr());
    assert!(switch.stop().status.success());
    let help = run_cli(&["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--config") && help.contains("override"),
        "{help}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether this machine has CPUs 0 and 1 (for two pinned workers); says so when it has not.
fn two_cpus(test: &str) -> bool {
    // SAFETY: sysconf only reads a system parameter.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    if n < 2 {
        eprintln!("skipping {test}: needs 2 CPUs, this machine has {n}");
    }
    n >= 2
}

#[test]
fn a_config_file_sets_the_cores_and_each_netdevs_worker() {
    if !two_cpus("a_config_file_sets_the_cores_and_each_netdevs_worker") {
        return;
    }
    let dir = test_dir("rs-cfc");
    let (a, b, c) = (
        Peer::new(&dir, "a"),
        Peer::new(&dir, "b"),
        Peer::new(&dir, "c"),
    );
    let qmp = dir.join("qmp.sock");
    let mut bo = b.object("b");
    bo["worker"] = json!(0);
    let cfg = json!({
        "netdevs": [a.object("a"), bo, c.object("c")],
        "cores": "0,1",
        "qmp": format!("unix:{},server=on,wait=off", qmp.display()),
    });
    let file = write(&dir, "cores.json", &cfg.to_string());
    let switch = Switch::start(&["--config", file.to_str().unwrap()]);
    assert!(
        switch.stderr().contains("2 workers on CPUs 0,1"),
        "{}",
        switch.stderr()
    );
    let mut q = Qmp::connect(&qmp);
    // a: the least loaded (0); b: named 0; c: then the least loaded, 1.
    let workers: Vec<Value> = ["a", "b", "c"]
        .iter()
        .map(|id| q.port(id)["worker"].clone())
        .collect();
    assert_eq!(workers, [json!(0), json!(0), json!(1)]);
    let cpus: Vec<Value> = q
        .execute("query-workers")
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["cpu"].clone())
        .collect();
    assert_eq!(cpus, [json!(0), json!(1)]);
    pass(&a, &c, 1, 3, 10);
    pass(&c, &a, 3, 1, 10);
    drop(q);
    assert!(switch.stop().status.success());

    // RINGSWITCH_CORES overrides a file's "cores" (as RINGSWITCH_POLL its "poll"), so the
    // file's own faults show only without it.
    let env = std::env::var_os("RINGSWITCH_CORES").filter(|v| !v.is_empty());
    let cases = match env {
        Some(_) => vec![],
        None => vec![
        (
            "reversed",
            json!({"cores": "1-0"}),
            "member \"cores\": --cores '1-0': range 1-0 is reversed",
        ),
        (
            "both",
            json!({"cores": "0", "worker-cpu": 0}),
            "member \"cores\": --cores and --worker-cpu cannot both be given",
        ),
        (
            "worker",
            json!({"cores": "0,1", "worker": 2}),
            "netdevs[0] (id 'a'): Parameter 'worker': no worker 2; --cores starts workers 0 to 1",
        ),
        ],
    };
    for (name, member, wanted) in cases {
        let mut cfg = json!({"netdevs": [a.object("a")]});
        for (k, v) in member.as_object().unwrap() {
            if k == "worker" {
                cfg["netdevs"][0]["worker"] = v.clone();
            } else {
                cfg[k] = v.clone();
            }
        }
        refused(&dir, &format!("{name}.json"), &cfg.to_string(), &[wanted]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
