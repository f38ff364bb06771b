//! Shared by the crate's integration tests: the privilege check (the project's rule: under
//! `CI=true` a missing privilege fails the test, elsewhere it is skipped with the reason)
//! and the random cases of `gen.rs`.

#![allow(dead_code)]

pub mod gen;
pub mod net;

/// Whether this process may load BPF programs and, with `net`, create network namespaces
/// and taps. Under `CI=true` a test that may not fails (a CI run that silently skips proves
/// nothing); elsewhere it says why on stderr and the caller returns early.
pub fn require_bpf(test: &str, net: bool) -> bool {
    let Some(why) = missing(net) else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root for BPF, but {why} (CI=true)");
    }
    eprintln!("skipping {test}: {why}; run as root to exercise the kernel filter");
    false
}

fn missing(net: bool) -> Option<String> {
    if let Err(why) = ringswitch_bpf::probe() {
        return Some(why);
    }
    if !net {
        return None;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Some(format!("not running as root (euid {euid})"));
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    if std::process::Command::new("ip").arg("-V").output().is_err() {
        return Some("the `ip` tool (iproute2) is not installed".into());
    }
    None
}
