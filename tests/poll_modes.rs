//! How the worker waits (`--poll`): an idle switch polling adaptively costs next to nothing
//! — measured from /proc as a ratio against the same switch busy-polling, not as an
//! absolute time — and every mode forwards, with `query-workers`-style accounting of work,
//! polling and sleep in the exit counters.

mod common;

use std::time::Duration;

use common::{require_root, serial, Lan};

/// CPU time (user + system, clock ticks) the process `pid` has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading stat");
    // The command name is in parentheses and may hold spaces: count fields after it.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command name.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// CPU ticks an idle switch with two taps (up, addressed, in namespaces) uses in `window`.
fn idle_cpu(mode: &str, window: Duration) -> u64 {
    let mut lan = Lan::new(2, true, &["--poll", mode]);
    // Let the hosts' own start-up chatter (IPv6 router solicitations and the like) pass.
    std::thread::sleep(Duration::from_millis(500));
    let pid = lan.switch().pid().expect("running");
    let before = cpu_ticks(pid);
    std::thread::sleep(window);
    let used = cpu_ticks(pid) - before;
    // It still forwards after the quiet spell.
    lan.host("a").ping(lan.host("b"), 3);
    let stopped = lan.stop();
    assert_eq!(stopped.status.code(), Some(0), "{}", stopped.stderr);
    let w = &stopped.stats.expect("stats").worker;
    eprintln!("--poll {mode}: {used} ticks in {window:?}; worker {w}");
    used
}

#[test]
fn an_idle_adaptive_switch_costs_a_few_percent_of_a_busy_one() {
    if !require_root("an_idle_adaptive_switch_costs_a_few_percent_of_a_busy_one") {
        return;
    }
    let _serial = serial();
    let window = Duration::from_secs(2);
    let busy = idle_cpu("busy", window);
    let adaptive = idle_cpu("adaptive", window);
    // A busy poller owns its core: close to every tick of the window.
    assert!(
        busy >= 100,
        "busy polling used only {busy} ticks in {window:?}"
    );
    assert!(
        adaptive * 100 <= busy * 3,
        "idle adaptive switch used {adaptive} ticks against busy polling's {busy}"
    );
}

#[test]
fn every_poll_mode_forwards() {
    if !require_root("every_poll_mode_forwards") {
        return;
    }
    let _serial = serial();
    for mode in ["adaptive", "busy", "sleep"] {
        let mut lan = Lan::new(2, true, &["--poll", mode]);
        lan.host("a").ping(lan.host("b"), 5);
        let stopped = lan.stop();
        assert_eq!(stopped.status.code(), Some(0), "{}", stopped.stderr);
        let w = &stopped.stats.expect("stats").worker;
        let (work, poll, sleep) = (
            w["work_ns"].as_u64().unwrap(),
            w["poll_ns"].as_u64().unwrap(),
            w["sleep_ns"].as_u64().unwrap(),
        );
        assert!(work > 0, "--poll {mode}: no work accounted: {w}");
        match mode {
            "busy" => assert_eq!(w["sleeps"], 0, "a busy poller slept: {w}"),
            "sleep" => assert!(sleep > poll, "--poll sleep mostly polled: {w}"),
            _ => assert!(
                w["sleeps"].as_u64().unwrap() > 0,
                "an adaptive poller never slept: {w}"
            ),
        }
    }
}
