//! `Switch`: the ringswitch binary under test as a child process. Starting it waits (bounded)
//! for its `ringswitch: ready` line; stopping it signals, waits (bounded), and reads back
//! exit status, stdout, stderr and the `--stats-json` counters. Dropping a running `Switch`
//! (a test that panicked) terminates it, and kills it if it does not go.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::unique_name;

const BINARY: &str = env!("CARGO_BIN_EXE_ringswitch");
const READY_LINE: &str = "ringswitch: ready";
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Switch {
    child: Option<Child>,
    stats_path: PathBuf,
    stderr_log: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
    stdout_reader: Option<JoinHandle<String>>,
}

/// A switch that has exited.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The `--stats-json` file, if the switch wrote one.
    pub stats: Option<Stats>,
}

/// The `--stats-json` document (contract of issue 2); fields the tests do not read are
/// ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Stats {
    pub ports: Vec<PortStats>,
    pub worker: serde_json::Value,
    /// Each worker's statistics (`id`, `cpu` when pinned, and `WorkerStats`' fields).
    #[serde(default)]
    pub workers: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PortStats {
    pub id: String,
    pub kind: String,
    pub ifname: Option<String>,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub drops: BTreeMap<String, u64>,
}

impl Stats {
    pub fn port(&self, id: &str) -> &PortStats {
        self.ports
            .iter()
            .find(|p| p.id == id)
            .unwrap_or_else(|| panic!("no port '{id}' in stats: {self:?}"))
    }

    /// Frames dropped by the switch, all reasons, all ports.
    pub fn total_drops(&self) -> u64 {
        self.ports.iter().map(PortStats::total_drops).sum()
    }
}

impl PortStats {
    /// The drop counter for `reason`; a name missing from the JSON is a contract breach.
    pub fn drop_count(&self, reason: &str) -> u64 {
        *self
            .drops
            .get(reason)
            .unwrap_or_else(|| panic!("port '{}' has no drops.{reason}: {:?}", self.id, self.drops))
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.values().sum()
    }
}

impl Switch {
    /// Starts `ringswitch ARGS --stats-json TMP` and waits for its ready line; panics with
    /// its stderr if it exits first or stays silent past the timeout.
    pub fn start(args: &[&str]) -> Switch {
        Switch::start_passing(args, &[])
    }

    /// Like `start`, and the child inherits `fds` (for `fd=N`) under the same numbers.
    pub fn start_passing(args: &[&str], fds: &[BorrowedFd<'_>]) -> Switch {
        let stats_path = std::env::temp_dir().join(format!("{}.json", unique_name("rsst")));
        let mut cmd = Command::new(BINARY);
        cmd.args(args)
            .arg("--stats-json")
            .arg(&stats_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let inherit: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        // SAFETY: the hook runs in the forked child before exec and only calls fcntl,
        // which is async-signal-safe; clearing FD_CLOEXEC there leaves the parent's
        // descriptors close-on-exec, so no other child inherits them.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &inherit {
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BINARY}: {e}"));
        let mut stdout = child.stdout.take().expect("piped stdout");
        let stdout_reader = thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr_log = Arc::new(Mutex::new(String::new()));
        let (lines_tx, lines_rx) = mpsc::channel();
        let log = Arc::clone(&stderr_log);
        let stderr_reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[ringswitch] {line}");
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
                let _ = lines_tx.send(line);
            }
        });
        let mut sw = Switch {
            child: Some(child),
            stats_path,
            stderr_log,
            stderr_reader: Some(stderr_reader),
            stdout_reader: Some(stdout_reader),
        };
        sw.wait_ready(&lines_rx);
        sw
    }

    fn wait_ready(&mut self, lines: &Receiver<String>) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.trim_end() == READY_LINE => return,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "ringswitch not ready after {READY_TIMEOUT:?}; stderr:\n{}",
                        self.stderr()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    panic!(
                        "ringswitch exited before ready ({status:?}); stderr:\n{}",
                        self.stderr()
                    );
                }
            }
        }
    }

    /// The switch's process id (while it runs).
    #[allow(dead_code)]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the switch wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr_log.lock().unwrap().clone()
    }

    /// Stops the switch with SIGTERM.
    pub fn stop(self) -> Stopped {
        self.stop_with(libc::SIGTERM)
    }

    /// Sends `signal`, waits for the exit (bounded) and collects what the switch left.
    pub fn stop_with(mut self, signal: libc::c_int) -> Stopped {
        let mut child = self.child.take().expect("switch still running");
        let status = match terminate(&mut child, signal) {
            Ok(status) => status,
            Err(status) => panic!(
                "ringswitch ignored signal {signal} for {EXIT_TIMEOUT:?} and was killed ({status:?}); stderr:\n{}",
                self.stderr()
            ),
        };
        let stdout = join_bounded(self.stdout_reader.take()).unwrap_or_default();
        join_bounded(self.stderr_reader.take());
        let stats = std::fs::read_to_string(&self.stats_path).ok().map(|json| {
            serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("--stats-json output does not parse ({e}):\n{json}"))
        });
        Stopped {
            status,
            stdout,
            stderr: self.stderr(),
            stats,
        }
    }
}

impl Stopped {
    /// The counters, which a clean stop must have written.
    pub fn stats(&self) -> &Stats {
        self.stats.as_ref().unwrap_or_else(|| {
            panic!(
                "ringswitch wrote no --stats-json ({}); stderr:\n{}",
                self.status, self.stderr
            )
        })
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(status) = terminate(&mut child, libc::SIGTERM) {
                eprintln!("warning: ringswitch ignored SIGTERM and was killed ({status:?})");
            }
        }
        let _ = std::fs::remove_file(&self.stats_path);
    }
}

/// Signals `child` and reaps it within `EXIT_TIMEOUT`; past that it is killed and reaped,
/// and the status comes back as the error.
fn terminate(child: &mut Child, signal: libc::c_int) -> Result<ExitStatus, Option<ExitStatus>> {
    if let Ok(Some(status)) = child.try_wait() {
        return Ok(status);
    }
    // SAFETY: kill(2) on our own child's pid, which is not reaped yet so cannot be reused.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    if let Some(status) = wait_bounded(child, EXIT_TIMEOUT) {
        return Ok(status);
    }
    let _ = child.kill();
    Err(wait_bounded(child, EXIT_TIMEOUT))
}

fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Joins a pipe reader, giving up after two seconds (a leaked grandchild could hold the pipe).
fn join_bounded<T>(handle: Option<JoinHandle<T>>) -> Option<T> {
    let handle = handle?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while !handle.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    if handle.is_finished() {
        handle.join().ok()
    } else {
        None
    }
}

/// Runs the binary to completion (for argument errors, which must exit at once): killed and
/// reported as a panic if it runs longer than `EXIT_TIMEOUT`.
pub fn run_cli(args: &[&str]) -> Output {
    let mut child = Command::new(BINARY)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {BINARY}: {e}"));
    if wait_bounded(&mut child, EXIT_TIMEOUT).is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("ringswitch {args:?} still running after {EXIT_TIMEOUT:?}; killed");
    }
    // The child has exited, so both pipes reach EOF promptly.
    child.wait_with_output().expect("collect output")
}
