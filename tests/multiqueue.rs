//! A multiqueue tap (`queues=2`) whose queues sit on different workers (`--cores 0,1`): the
//! kernel steers each flow to one queue, the worker holding that queue receives it, the
//! frames of every flow arrive in order, both workers carry traffic, and frames back to the
//! multiqueue port go out of a queue of the worker that forwards them. Needs root (taps,
//! namespaces).

mod common;

use common::{host_mac, require_root, serial, unique_name, Netns, Qmp, Switch};
use std::collections::HashMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

const FLOWS: u16 = 16;
const PER_FLOW: u32 = 300;

fn two_cpus() -> bool {
    // SAFETY: sysconf only reads a system parameter.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    if n < 2 {
        assert!(
            std::env::var("CI").is_err(),
            "the multiqueue test needs 2 CPUs, this machine has {n}"
        );
        eprintln!("skipping: needs 2 CPUs, this machine has {n}");
    }
    n >= 2
}

/// Sends `PER_FLOW` numbered datagrams on each of `FLOWS` source ports from `from` (in its
/// namespace) to `to_ip:port`, paced; returns what `to` received, by source port, in order.
fn stream(from: &Netns, to: &Netns, to_ip: &'static str, port: u16) -> HashMap<u16, Vec<u32>> {
    let rx = to.spawn(move || {
        let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut got: HashMap<u16, Vec<u32>> = HashMap::new();
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(20);
        let want = (FLOWS as usize) * PER_FLOW as usize;
        let mut n = 0;
        while n < want && Instant::now() < deadline {
            if let Ok((len, src)) = s.recv_from(&mut buf) {
                if len >= 4 {
                    got.entry(src.port())
                        .or_default()
                        .push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
                    n += 1;
                }
            } else if n > 0 {
                break;
            }
        }
        got
    });
    std::thread::sleep(Duration::from_millis(200));
    from.run(move || {
        let socks: Vec<UdpSocket> = (0..FLOWS)
            .map(|i| UdpSocket::bind(("0.0.0.0", 20000 + i)).unwrap())
            .collect();
        for seq in 0..PER_FLOW {
            for s in &socks {
                let _ = s.send_to(&seq.to_be_bytes(), (to_ip, port));
            }
            std::thread::sleep(Duration::from_micros(300));
        }
    });
    rx.join().unwrap()
}

fn check(dir: &str, got: &HashMap<u16, Vec<u32>>) {
    let total: usize = got.values().map(Vec::len).sum();
    let want = FLOWS as usize * PER_FLOW as usize;
    println!("{dir}: {total} of {want} datagrams on {} flows", got.len());
    assert!(
        total * 100 >= want * 95,
        "{dir}: only {total} of {want} arrived"
    );
    for (port, seqs) in got {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{dir}: flow from port {port} out of order: {seqs:?}"
        );
    }
}

#[test]
fn a_multiqueue_tap_spread_over_two_workers_keeps_every_flow_in_order() {
    if !require_root("multiqueue tap") || !two_cpus() {
        return;
    }
    let _serial = serial();
    let (na, nb) = (Netns::new(), Netns::new());
    let (ta, tb) = (unique_name("rsq"), unique_name("rsq"));
    let dir = std::env::temp_dir().join(unique_name("rsmq"));
    std::fs::create_dir_all(&dir).unwrap();
    let qmp_path = dir.join("qmp.sock");
    let qmp_arg = format!("unix:{},server=on,wait=off", qmp_path.display());
    let a = format!("tap,id=a,ifname={ta},queues=2");
    let b = format!("tap,id=b,ifname={tb},worker=0");
    let switch = Switch::start(&[
        "--cores", "0,1", "-qmp", &qmp_arg, "-netdev", &a, "-netdev", &b,
    ]);
    let mut qmp = Qmp::connect(&qmp_path);
    let pa = qmp.port("a");
    assert_eq!(pa["queue-workers"], serde_json::json!([0, 1]), "{pa}");
    na.adopt(&ta, host_mac(1), Some("10.78.0.1/24"), None);
    nb.adopt(&tb, host_mac(2), Some("10.78.0.2/24"), None);
    na.ping("10.78.0.2", 2);

    let before = qmp.execute("query-workers");
    check("a→b", &stream(&na, &nb, "10.78.0.2", 9000));
    let after = qmp.execute("query-workers");
    // Both queues of a carried flows: each worker received frames from it.
    let rx = |v: &serde_json::Value, w: usize| v[w]["rx-frames"].as_u64().unwrap();
    let (w0, w1) = (
        rx(&after, 0) - rx(&before, 0),
        rx(&after, 1) - rx(&before, 1),
    );
    println!("frames received by worker 0: {w0}, worker 1: {w1}");
    assert!(w1 > 100, "worker 1 (queue 1) received {w1} frames");
    assert!(w0 > 100, "worker 0 (queue 0) received {w0} frames");

    // Back: b is worker 0's, which holds a's queue 0 and sends through it directly.
    check("b→a", &stream(&nb, &na, "10.78.0.1", 9001));
    let pa = qmp.port("a");
    println!("port a: {pa}");

    // Moving queue 0 to worker 1 trades places with queue 1 (one queue per worker), live.
    let r = qmp.execute_with(
        "set-port-worker",
        serde_json::json!({"id": "a", "worker": 1}),
    );
    assert_eq!(r["return"], serde_json::json!({}), "{r}");
    let pa = qmp.port("a");
    assert_eq!(pa["queue-workers"], serde_json::json!([1, 0]), "{pa}");
    check("a→b after the move", &stream(&na, &nb, "10.78.0.2", 9002));
    check("b→a after the move", &stream(&nb, &na, "10.78.0.1", 9003));
    let stopped = switch.stop();
    assert_eq!(stopped.status.code(), Some(0), "{}", stopped.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}
