//! Harness shared by ringswitch's integration tests: network namespaces, the switch process,
//! raw AF_PACKET sockets and interface counters, each owned by a guard whose `Drop` removes
//! what it created, so a failing test leaves no namespace, tap or process behind.
//!
//! Everything here talks to the real kernel; nothing is mocked. Every wait is bounded in
//! time, and every loop in count or time.

// Each test binary compiles this module separately and uses a different subset of it.
#![allow(dead_code, unused_imports)]

mod dgram;
mod lan;
mod netns;
mod packet;
mod qmp;
mod switch;
mod tap;
mod vde;

pub use dgram::DgramPeer;
pub use lan::{Host, Lan};
pub use netns::{LinkStats, Netns};
pub use packet::{
    carries, ethernet_frame, marked, BurstReport, PacketSocket, ETHERTYPE_IPV4, ETHERTYPE_TEST,
};
pub use qmp::{execute_once, Qmp};
pub use switch::{run_cli, PortStats, Stats, Stopped, Switch};
pub use tap::{open_tap, PersistentTap};
pub use vde::{require_vde, require_vde_tools, Plug2Tap, VdeSwitch};

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub use ringswitch_switch::MacAddr;

/// Whether this process may create taps and namespaces. When it may not: under `CI=true`
/// the test fails (a CI run that silently skips its network tests proves nothing);
/// elsewhere it says why on stderr and the caller returns early, skipping the test.
pub fn require_root(test: &str) -> bool {
    let Some(why) = missing_privilege() else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root for taps and network namespaces, but {why} (CI=true)");
    }
    eprintln!("skipping {test}: {why}; run as root to exercise real taps");
    false
}

fn missing_privilege() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    for (bit, name) in [
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ] {
        if eff & (1 << bit) == 0 {
            return Some(format!("root lacks {name}"));
        }
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("the `ip` tool (iproute2) is not installed".into());
    }
    None
}

/// A name unique to this process and call, short enough for an interface name
/// (IFNAMSIZ - 1 = 15 bytes): `prefix` (at most 6 bytes) + pid + counter, in hex.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    assert!(
        prefix.len() <= 6,
        "prefix '{prefix}' too long for an interface name"
    );
    let n = NEXT.fetch_add(1, Ordering::Relaxed) & 0xff;
    let name = format!("{prefix}{:x}x{n:02x}", std::process::id() & 0x3f_ffff);
    debug_assert!(name.len() <= 15);
    name
}

/// A locally administered unicast MAC, distinct per `host` and per test process, so
/// concurrent test binaries never share an address.
pub fn host_mac(host: u8) -> MacAddr {
    let pid = std::process::id().to_be_bytes();
    MacAddr([0x02, pid[1], pid[2], pid[3], 0x00, host])
}

/// Runs `ip ARGS`, panicking with its stderr when it fails.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether an interface called `name` exists in this (the root) namespace.
pub fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Polls `cond` every `every` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(every);
    }
}

/// Serialises the tests of one binary that move traffic: on a small machine, a burst that
/// shares the CPUs with another test measures the other test. Held for the test's length.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that panicked while holding the lock poisons it; the next one may still run.
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The EtherType of the sequence-numbered test frames (`seq_frame`): IEEE's local
/// experimental one.
pub const SEQ_ETHERTYPE: u16 = 0x88b5;

/// An 80-byte frame from station `src` to station `dst` (0xff: broadcast), stations being
/// `02:00:00:00:00:NN`, carrying `seq` (read back with `seq_of`).
pub fn seq_frame(src: u8, dst: u8, seq: u64) -> Vec<u8> {
    let mut f = vec![0u8; 80];
    f[..6].copy_from_slice(&if dst == 0xff {
        [0xff; 6]
    } else {
        [2, 0, 0, 0, 0, dst]
    });
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, src]);
    f[12..14].copy_from_slice(&SEQ_ETHERTYPE.to_be_bytes());
    f[14..22].copy_from_slice(&seq.to_be_bytes());
    f
}

/// The sequence number a `seq_frame` carries.
pub fn seq_of(f: &[u8]) -> u64 {
    u64::from_be_bytes(f[14..22].try_into().unwrap())
}
