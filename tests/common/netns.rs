//! `Netns`: a named network namespace (`ip netns add`) that lives as long as the guard, plus
//! what tests do inside one: run code on a thread that joined it, adopt a tap into it, ping
//! from it and read interface counters.
//!
//! `setns(CLONE_NEWNET)` moves only the calling thread, so code that must run inside the
//! namespace gets a fresh thread; sockets opened there stay in the namespace for good and
//! may be used from any thread afterwards.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::thread;

use super::{ip, unique_name, MacAddr};

/// A network namespace, deleted on drop. Declare it before the `Switch` whose taps move
/// into it, so the switch (and its taps) go first.
pub struct Netns {
    name: String,
}

/// The kernel's counters of one interface, as `ip -s -j link` reports them (IFLA_STATS64).
/// On a tap, "tx" is the kernel handing frames to the userspace reader and "rx" is frames
/// the reader wrote: the reverse of the switch's own "rx"/"tx".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
}

impl Netns {
    /// Creates a namespace with IPv6 off, so the kernel sends no router or neighbour
    /// solicitations of its own that would disturb frame counts.
    pub fn new() -> Netns {
        let ns = Netns {
            name: unique_name("rsn"),
        };
        ip(&["netns", "add", &ns.name]);
        ns.run(|| {
            for conf in ["all", "default"] {
                let knob = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
                // A kernel built without IPv6 has no such file, and nothing to silence.
                let _ = std::fs::write(knob, "1");
            }
        });
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a new thread that has joined this namespace, and returns its result
    /// (a panic in `f` is re-raised here).
    pub fn run<T, F>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        match self.spawn(f).join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Runs `f` on a new thread that has joined this namespace; the caller joins it.
    pub fn spawn<T, F>(&self, f: F) -> thread::JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        thread::Builder::new()
            .name(format!("in-{}", self.name))
            .spawn(move || {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: the fd is a valid namespace file for as long as `file` lives; setns
                // with CLONE_NEWNET changes only this thread, which is ours alone.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .expect("spawn namespace thread")
    }

    /// Moves `ifname` from the root namespace into this one and configures it: MAC,
    /// optional IPv4 address (CIDR), optional MTU, link up.
    pub fn adopt(&self, ifname: &str, mac: MacAddr, ipv4: Option<&str>, mtu: Option<u32>) {
        ip(&["link", "set", "dev", ifname, "netns", &self.name]);
        let n = self.name.as_str();
        ip(&[
            "-n",
            n,
            "link",
            "set",
            "dev",
            ifname,
            "address",
            &mac.to_string(),
        ]);
        if let Some(mtu) = mtu {
            ip(&[
                "-n",
                n,
                "link",
                "set",
                "dev",
                ifname,
                "mtu",
                &mtu.to_string(),
            ]);
        }
        if let Some(addr) = ipv4 {
            ip(&["-n", n, "addr", "add", addr, "dev", ifname]);
        }
        ip(&["-n", n, "link", "set", "dev", ifname, "up"]);
    }

    pub fn set_mtu(&self, ifname: &str, mtu: u32) {
        ip(&[
            "-n",
            &self.name,
            "link",
            "set",
            "dev",
            ifname,
            "mtu",
            &mtu.to_string(),
        ]);
    }

    /// Whether an interface called `ifname` exists in this namespace.
    pub fn has_link(&self, ifname: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", "dev", ifname])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Runs a program inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {} {program}: {e}", self.name))
    }

    /// Pings `dst` `count` times, each reply awaited at most a second and the whole run at
    /// most `count + 5` seconds; panics with ping's output if any reply was missing.
    pub fn ping(&self, dst: &str, count: u32) {
        let deadline = (count + 5).to_string();
        let count = count.to_string();
        let out = self.exec(
            "ping",
            &[
                "-n", "-c", &count, "-i", "0.2", "-W", "1", "-w", &deadline, dst,
            ],
        );
        assert!(
            out.status.success(),
            "ping {dst} from {} failed ({}):\n{}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The interface's kernel counters now.
    pub fn link_stats(&self, ifname: &str) -> LinkStats {
        let json = ip(&["-n", &self.name, "-s", "-j", "link", "show", "dev", ifname]);
        let v: serde_json::Value = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("ip -j link output is not JSON ({e}): {json}"));
        let s = &v[0]["stats64"];
        let get = |dir: &str, field: &str| {
            s[dir][field]
                .as_u64()
                .unwrap_or_else(|| panic!("no stats64.{dir}.{field} for {ifname}: {json}"))
        };
        LinkStats {
            rx_packets: get("rx", "packets"),
            rx_bytes: get("rx", "bytes"),
            rx_dropped: get("rx", "dropped"),
            tx_packets: get("tx", "packets"),
            tx_bytes: get("tx", "bytes"),
            tx_dropped: get("tx", "dropped"),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("warning: ip netns del {}: {e}", self.name),
        }
    }
}
