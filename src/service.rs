//! Running under a service manager: systemd's notification protocol (`sd_notify`) spoken
//! directly, without libsystemd, and the bound on how long a stop may take.
//!
//! The protocol is one unix datagram per notification, `KEY=VALUE` lines, sent to the socket
//! that `NOTIFY_SOCKET` names: a path, or `@name` for an abstract address. ringswitch sends
//! `READY=1` (with `STATUS=` and `MAINPID=`) once every port given at start is attached to the
//! worker and forwarding, `STOPPING=1` when a stop begins, and `WATCHDOG=1` every half of
//! `WATCHDOG_USEC` from the control loop when the service manager asks for it. Without
//! `NOTIFY_SOCKET` nothing is sent. A notification that cannot be sent is reported once on
//! stderr and never stops the switch.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The longest a stop may take, from the signal (or QMP `quit`) to the process's exit: the
/// worker's drain of in-flight frames (itself bounded at 2 s), the final report, the
/// downscripts. Past it the process exits anyway, with `STOP_TIMEOUT_STATUS`.
/// `dist/ringswitch.service` sets `TimeoutStopSec=` a little above this.
pub const STOP_BOUND: Duration = Duration::from_secs(5);

/// Exit status when the stop overran `STOP_BOUND` (frames may have been left undelivered, a
/// downscript left running).
pub const STOP_TIMEOUT_STATUS: i32 = 1;

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A socket file.
    Path(PathBuf),
    /// An abstract address (`@name` in `NOTIFY_SOCKET`), without the leading `@`.
    Abstract(Vec<u8>),
}

/// Reads `NOTIFY_SOCKET`: an absolute path or `@abstract-name`. Other forms (`vsock:` of
/// newer systemd, relative paths) are refused with a message.
pub fn parse_target(s: &OsStr) -> Result<Target, String> {
    let b = s.as_bytes();
    match b.first() {
        Some(b'@') if b.len() > 1 => Ok(Target::Abstract(b[1..].to_vec())),
        Some(b'/') => Ok(Target::Path(PathBuf::from(s))),
        _ => Err(format!(
            "NOTIFY_SOCKET={}: neither an absolute path nor an @abstract name; no notifications will be sent",
            s.to_string_lossy()
        )),
    }
}

/// The interval between watchdog pings: half of `WATCHDOG_USEC`, as sd_notify(3) advises,
/// when `WATCHDOG_PID` is unset or names this process (`me`). `Ok(None)`: no watchdog.
pub fn watchdog_interval(
    usec: Option<&str>,
    pid: Option<&str>,
    me: u32,
) -> Result<Option<Duration>, String> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    if let Some(pid) = pid {
        match pid.trim().parse::<u32>() {
            Ok(p) if p == me => {}
            Ok(_) => return Ok(None),
            Err(_) => return Err(format!("WATCHDOG_PID={pid}: not a process id")),
        }
    }
    match usec.trim().parse::<u64>() {
        Ok(0) | Err(_) => Err(format!(
            "WATCHDOG_USEC={usec}: not a positive number of microseconds; no watchdog pings"
        )),
        Ok(u) => Ok(Some(
            Duration::from_micros(u / 2).max(Duration::from_millis(1)),
        )),
    }
}

/// One notification: `KEY=VALUE` lines. A value's newlines would start new keys; they
/// become spaces.
pub fn message(fields: &[(&str, &str)]) -> String {
    let mut m = String::new();
    for (k, v) in fields {
        m.push_str(k);
        m.push('=');
        m.push_str(&v.replace('\n', " "));
        m.push('\n');
    }
    m
}

/// What `READY=1` says in `STATUS=`: how many ports forward, and which still wait for a
/// peer (a stream server without its client, a vhost-user port without its guest).
pub fn ready_status<'a>(ports: impl IntoIterator<Item = (&'a str, bool)>) -> String {
    let mut n = 0;
    let mut waiting = Vec::new();
    for (id, connected) in ports {
        n += 1;
        if !connected {
            waiting.push(id);
        }
    }
    let mut s = format!("forwarding, {n} port(s)");
    if !waiting.is_empty() {
        s.push_str(&format!("; waiting for a peer on {}", waiting.join(", ")));
    }
    s
}

/// The service manager's variables, read once at start.
#[derive(Debug, Default)]
pub struct Env {
    notify_socket: Option<OsString>,
    watchdog_usec: Option<String>,
    watchdog_pid: Option<String>,
}

impl Env {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` and removes them from the
    /// environment, as libsystemd's `sd_notify(1, …)` does, so that the programs the switch
    /// starts (tap scripts) do not take them for theirs. Call it before any other thread
    /// starts: changing the environment races with threads that read it.
    pub fn take() -> Env {
        let env = Env {
            notify_socket: std::env::var_os("NOTIFY_SOCKET"),
            watchdog_usec: std::env::var("WATCHDOG_USEC").ok(),
            watchdog_pid: std::env::var("WATCHDOG_PID").ok(),
        };
        for k in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(k);
        }
        env
    }
}

/// Sends the notifications (or nothing, without `NOTIFY_SOCKET`).
pub struct Notifier {
    out: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    next_ping: Option<Instant>,
    warned: bool,
}

impl Notifier {
    /// Sets up from what `Env::take` found; a bad value is reported on stderr and turns off
    /// what it concerns.
    pub fn new(env: Env) -> Notifier {
        let mut n = Notifier {
            out: None,
            watchdog: None,
            next_ping: None,
            warned: false,
        };
        let Some(raw) = env.notify_socket else {
            return n;
        };
        let opened = parse_target(&raw).and_then(|t| {
            let addr = match &t {
                Target::Path(p) => SocketAddr::from_pathname(p),
                Target::Abstract(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    SocketAddr::from_abstract_name(name)
                }
            }
            .map_err(|e| format!("NOTIFY_SOCKET={}: {e}", raw.to_string_lossy()))?;
            let sock = UnixDatagram::unbound().map_err(|e| format!("notification socket: {e}"))?;
            // The service manager reads at once; a wedged one must not stall the control
            // loop for long.
            let _ = sock.set_write_timeout(Some(Duration::from_secs(1)));
            Ok((sock, addr))
        });
        match opened {
            Ok(o) => n.out = Some(o),
            Err(e) => {
                eprintln!("ringswitch: {e}");
                return n;
            }
        }
        match watchdog_interval(
            env.watchdog_usec.as_deref(),
            env.watchdog_pid.as_deref(),
            std::process::id(),
        ) {
            Ok(w) => n.watchdog = w,
            Err(e) => eprintln!("ringswitch: {e}"),
        }
        n
    }

    fn send(&mut self, fields: &[(&str, &str)]) {
        let Some((sock, addr)) = &self.out else {
            return;
        };
        let m = message(fields);
        if let Err(e) = sock.send_to_addr(m.as_bytes(), addr) {
            if !self.warned {
                self.warned = true;
                eprintln!("ringswitch: cannot notify the service manager: {e}");
            }
        }
    }

    /// `READY=1`: every port given at start is attached and forwarding. Starts the watchdog
    /// pings (the first goes with it).
    pub fn ready(&mut self, status: &str) {
        let pid = std::process::id().to_string();
        let mut fields = vec![
            ("READY", "1"),
            ("STATUS", status),
            ("MAINPID", pid.as_str()),
        ];
        if let Some(w) = self.watchdog {
            fields.push(("WATCHDOG", "1"));
            self.next_ping = Some(Instant::now() + w);
        }
        self.send(&fields);
    }

    /// `STOPPING=1`: a stop began; pings end.
    pub fn stopping(&mut self, status: &str) {
        self.next_ping = None;
        self.send(&[("STOPPING", "1"), ("STATUS", status)]);
    }

    /// Sends a watchdog ping if one is due; returns when the next one is.
    pub fn tick(&mut self, now: Instant) -> Option<Instant> {
        let (due, every) = (self.next_ping?, self.watchdog?);
        if now < due {
            return Some(due);
        }
        self.send(&[("WATCHDOG", "1")]);
        // Late (a long QMP command): the next ping one interval from now, not in a burst.
        let next = (due + every).max(now + every / 2);
        self.next_ping = Some(next);
        Some(next)
    }
}

/// Makes sure the process ends within `bound` from now, whichever part of the stop hangs (a
/// port that does not drain, a downscript that does not end): a thread sleeps that long, then
/// says so and exits with `STOP_TIMEOUT_STATUS`. A stop that finishes first exits normally
/// and takes the thread with it.
pub fn bound_stop(bound: Duration) {
    let spawned = std::thread::Builder::new()
        .name("rs-stop-bound".into())
        .spawn(move || {
            std::thread::sleep(bound);
            eprintln!(
                "ringswitch: the stop did not finish within {} s (a port still draining, or a downscript still running); exiting now, frames still in flight are lost",
                bound.as_secs_f32()
            );
            std::process::exit(STOP_TIMEOUT_STATUS);
        });
    if let Err(e) = spawned {
        eprintln!("ringswitch: cannot bound the stop ({e}); it may take longer than {bound:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_is_a_path_or_an_abstract_name() {
        assert_eq!(
            parse_target(OsStr::new("/run/systemd/notify")),
            Ok(Target::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse_target(OsStr::new("@/org/freedesktop/systemd1/notify/1")),
            Ok(Target::Abstract(
                b"/org/freedesktop/systemd1/notify/1".to_vec()
            ))
        );
        for bad in ["", "@", "relative/path", "vsock:2:1234"] {
            let e = parse_target(OsStr::new(bad)).unwrap_err();
            assert!(e.contains("NOTIFY_SOCKET="), "{bad}: {e}");
        }
    }

    #[test]
    fn watchdog_pings_at_half_the_interval_for_this_process_only() {
        let me = 4242;
        assert_eq!(watchdog_interval(None, None, me), Ok(None));
        assert_eq!(
            watchdog_interval(Some("30000000"), None, me),
            Ok(Some(Duration::from_secs(15)))
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), Some("4242"), me),
            Ok(Some(Duration::from_secs(15)))
        );
        assert_eq!(watchdog_interval(Some("30000000"), Some("1"), me), Ok(None));
        assert!(watchdog_interval(Some("0"), None, me).is_err());
        assert!(watchdog_interval(Some("soon"), None, me).is_err());
        assert!(watchdog_interval(Some("1000"), Some("x"), me).is_err());
    }

    #[test]
    fn messages_are_lines_and_values_cannot_inject_keys() {
        assert_eq!(
            message(&[("READY", "1"), ("STATUS", "a\nWATCHDOG=trigger")]),
            "READY=1\nSTATUS=a WATCHDOG=trigger\n"
        );
    }

    #[test]
    fn ready_status_names_ports_waiting_for_a_peer() {
        assert_eq!(
            ready_status([("a", true), ("b", true)]),
            "forwarding, 2 port(s)"
        );
        assert_eq!(
            ready_status([("a", true), ("vm", false), ("s", false)]),
            "forwarding, 3 port(s); waiting for a peer on vm, s"
        );
    }

    #[test]
    fn notifications_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ringswitch-unit-test-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut n = Notifier::new(Env {
            notify_socket: Some(format!("@{name}").into()),
            watchdog_usec: Some("2000".into()),
            watchdog_pid: None,
        });
        assert!(n.out.is_some());
        assert_eq!(n.watchdog, Some(Duration::from_millis(1)));
        n.ready("forwarding, 0 port(s)");
        let mut buf = [0u8; 512];
        let len = server.recv(&mut buf).unwrap();
        let m = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(
            m.starts_with("READY=1\nSTATUS=forwarding, 0 port(s)\nMAINPID="),
            "{m}"
        );
        assert!(m.ends_with("WATCHDOG=1\n"), "{m}");
        std::thread::sleep(Duration::from_millis(2));
        assert!(n.tick(Instant::now()).is_some());
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1\n");
        n.stopping("stopping");
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=stopping\n");
        assert_eq!(n.tick(Instant::now()), None, "no pings once stopping");
    }
}
