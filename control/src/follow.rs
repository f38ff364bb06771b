//! Follow a QEMU NIC (issue 14): a QMP *client* that tracks the rx-filter of one NIC of a
//! running QEMU and hands each new filter to the switch.
//!
//! A [`Follower`] owns one thread. It connects to QEMU's QMP unix socket, reads the greeting,
//! negotiates, asks `query-rx-filter {"name": NIC}` at once and again after each
//! `NIC_RX_FILTER_CHANGED` for that NIC (QEMU sends that event once and then stays silent
//! until the NIC has been queried, so every query re-arms it). Each answer that differs from
//! the last one handed over goes to the callback given at start. When QEMU is not there yet,
//! goes away or restarts, the thread reconnects with bounded exponential backoff; an error
//! answer (a wrong NIC name) is kept as the state and the query is retried slowly.
//!
//! Bounded everywhere: the connect never blocks, reads wake every `tick` to see `stop`, one
//! JSON value is at most `limits.max_bytes`, the greeting and every answer must come within
//! `answer_timeout`, and nothing is buffered beyond one read's values. It never panics on what
//! the socket sends: bad input ends the connection and is reported as the state.

mod info;

pub use info::{rx_filter_from_info, rx_filter_from_qemu};

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use socket2::{Domain, SockAddr, Socket, Type};

use ringswitch_switch::RxFilter;

use crate::json::{JsonError, JsonStream, Limits};

/// Where to follow which NIC, and the timings. [`FollowConfig::new`] has sensible defaults.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// QEMU's QMP socket (`-qmp unix:PATH,server=on,wait=off`).
    pub qmp: PathBuf,
    /// The NIC's name: the `id` of its `-device` (what `query-rx-filter` and the event call it).
    pub nic: String,
    /// The first wait before connecting again; it doubles after each failure...
    pub backoff_min: Duration,
    /// ...up to this.
    pub backoff_max: Duration,
    /// How long before asking again after QMP answered an error or something unusable.
    pub error_retry: Duration,
    /// The greeting and each answer must come within this, or the connection is dropped.
    pub answer_timeout: Duration,
    /// How often a blocked read wakes to look at `stop`.
    pub tick: Duration,
    /// The largest and deepest JSON value accepted from QMP.
    pub limits: Limits,
    /// Correct QEMU's inverted `broadcast-allowed` ([`rx_filter_from_qemu`]). Leave on for a
    /// real QEMU; switch off only to follow a server that reports the field literally.
    pub qemu_broadcast_quirk: bool,
}

impl FollowConfig {
    pub fn new(qmp: impl Into<PathBuf>, nic: impl Into<String>) -> FollowConfig {
        FollowConfig {
            qmp: qmp.into(),
            nic: nic.into(),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            error_retry: Duration::from_secs(2),
            answer_timeout: Duration::from_secs(10),
            tick: Duration::from_millis(100),
            // An RxFilterInfo listing all 4096 VLAN ids is about 20 KiB.
            limits: Limits {
                max_bytes: 256 << 10,
                max_depth: 16,
            },
            qemu_broadcast_quirk: true,
        }
    }
}

/// Where the follower stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowState {
    /// No usable answer on the current connection yet: QEMU is not there (yet), is
    /// restarting, or the first query is on its way.
    Connecting,
    /// The last answer was handed over; the follower waits for the NIC's next change.
    Following,
    /// QMP answered an error or something unusable; the text says what. Retried slowly.
    Error(String),
}

/// The follower's state and counters, as the controller reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowStatus {
    pub state: FollowState,
    /// Connections that completed QMP negotiation.
    pub connections: u64,
    /// Of those, the ones after the first (QEMU restarted or the connection dropped).
    pub reconnections: u64,
    /// `query-rx-filter` commands sent.
    pub queries: u64,
    /// Filters handed to the callback.
    pub updates: u64,
    /// Why the last connection attempt or connection failed, if one did.
    pub last_error: Option<String>,
}

/// One filter of the followed NIC: QEMU's answer as it came, and the filter it means.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterUpdate {
    /// The NIC's `RxFilterInfo`, as QEMU sent it.
    pub info: Value,
    /// What the NIC accepts (with `broadcast-allowed` corrected, see [`FollowConfig`]).
    pub filter: RxFilter,
}

struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
    status: Mutex<FollowStatus>,
}

impl Shared {
    fn stopped(&self) -> bool {
        *lock(&self.stop)
    }

    /// Sleeps `d` unless stopped first; whether it was stopped.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut stop = lock(&self.stop);
        while !*stop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            stop = match self.wake.wait_timeout(stop, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        *stop
    }

    fn update(&self, f: impl FnOnce(&mut FollowStatus)) {
        f(&mut lock(&self.status));
    }
}

/// A poisoned lock only means a callback panicked elsewhere; the data is still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Follows one NIC in its own thread until [`Follower::stop`] (or drop).
pub struct Follower {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Follower {
    /// Starts following. `on_update` runs on the follower's thread with each new filter: an
    /// answer equal to the last one handed over is not handed over again, even when it comes
    /// from a restarted QEMU (read [`Follower::status`] to see the connection come and go).
    /// It must not block for long (an `mpsc::Sender::send` is fine), or `stop` waits for it.
    pub fn start(
        config: FollowConfig,
        on_update: impl FnMut(FilterUpdate) + Send + 'static,
    ) -> io::Result<Follower> {
        let shared = Arc::new(Shared {
            stop: Mutex::new(false),
            wake: Condvar::new(),
            status: Mutex::new(FollowStatus {
                state: FollowState::Connecting,
                connections: 0,
                reconnections: 0,
                queries: 0,
                updates: 0,
                last_error: None,
            }),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("rs-follow-{}", config.nic))
            .spawn(move || run(config, &thread_shared, on_update))?;
        Ok(Follower {
            shared,
            thread: Some(thread),
        })
    }

    pub fn status(&self) -> FollowStatus {
        lock(&self.shared.status).clone()
    }

    /// Ends the thread (within about `tick` plus a write timeout) and joins it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        *lock(&self.shared.stop) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.halt();
    }
}

/// How a connection ended.
enum Ended {
    Stopped,
    /// The socket could not be connected: QEMU is not (yet) there.
    Unreachable(String),
    /// The connection closed or failed: QEMU went away.
    Lost(String),
    /// QMP broke the protocol or went silent; the text says how.
    Broken(String),
}

fn run(cfg: FollowConfig, shared: &Shared, mut on_update: impl FnMut(FilterUpdate)) {
    let mut last_sent: Option<Value> = None;
    let mut backoff = cfg.backoff_min;
    loop {
        let mut followed = false;
        let ended = session(&cfg, shared, &mut last_sent, &mut on_update, &mut followed);
        if followed {
            backoff = cfg.backoff_min;
        }
        match ended {
            Ended::Stopped => return,
            Ended::Unreachable(why) | Ended::Lost(why) => shared.update(|s| {
                s.state = FollowState::Connecting;
                s.last_error = Some(why);
            }),
            Ended::Broken(why) => shared.update(|s| {
                s.state = FollowState::Error(why.clone());
                s.last_error = Some(why);
            }),
        }
        if shared.sleep(backoff) {
            return;
        }
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

/// One connection, from connect to its end. `followed`: an answer was handed over.
fn session(
    cfg: &FollowConfig,
    shared: &Shared,
    last_sent: &mut Option<Value>,
    on_update: &mut impl FnMut(FilterUpdate),
    followed: &mut bool,
) -> Ended {
    let mut conn = match Conn::open(cfg) {
        Ok(c) => c,
        Err(e) => {
            return Ended::Unreachable(format!("cannot connect to {}: {e}", cfg.qmp.display()))
        }
    };
    let greeting = match conn.await_value(shared, cfg.answer_timeout, "a QMP greeting") {
        Ok(v) => v,
        Err(e) => return e,
    };
    if greeting.get("QMP").is_none() {
        return Ended::Broken(format!("not a QMP greeting: {}", clip(&greeting)));
    }
    const CAPS_ID: &str = "rs-follow-caps";
    if let Err(e) = conn.send(&json!({"execute": "qmp_capabilities", "id": CAPS_ID})) {
        return e;
    }
    loop {
        let v = match conn.await_value(shared, cfg.answer_timeout, "the qmp_capabilities answer") {
            Ok(v) => v,
            Err(e) => return e,
        };
        if v.get("id").and_then(Value::as_str) != Some(CAPS_ID) {
            continue;
        }
        if v.get("return").is_some() {
            break;
        }
        return Ended::Broken(format!("qmp_capabilities refused: {}", error_text(&v)));
    }
    shared.update(|s| {
        s.connections += 1;
        if s.connections > 1 {
            s.reconnections += 1;
        }
    });

    let mut next_id: u64 = 0;
    // The query on its way (its id and when it left), and when to send the next one.
    let mut pending: Option<(u64, Instant)> = None;
    let mut query_at: Option<Instant> = Some(Instant::now());
    loop {
        let now = Instant::now();
        if pending.is_none() && query_at.is_some_and(|t| now >= t) {
            next_id += 1;
            let cmd = json!({"execute": "query-rx-filter", "arguments": {"name": cfg.nic}, "id": next_id});
            if let Err(e) = conn.send(&cmd) {
                return e;
            }
            shared.update(|s| s.queries += 1);
            pending = Some((next_id, now));
            query_at = None;
        }
        let v = match conn.next(shared) {
            Ok(Some(v)) => v,
            Ok(None) => {
                if pending.is_some_and(|(_, sent)| sent.elapsed() > cfg.answer_timeout) {
                    return Ended::Broken(format!(
                        "no answer to query-rx-filter within {:?}",
                        cfg.answer_timeout
                    ));
                }
                continue;
            }
            Err(e) => return e,
        };
        if is_our_event(&v, &cfg.nic) {
            // Changes made before the pending query was answered are in its answer, but one
            // query more is cheap and re-arms the event for sure.
            query_at = Some(Instant::now());
            continue;
        }
        let Some((id, _)) = pending else { continue };
        if v.get("id").and_then(Value::as_u64) != Some(id) {
            continue;
        }
        pending = None;
        match read_answer(&v, cfg) {
            Ok((info, filter)) => {
                *followed = true;
                let new = last_sent.as_ref() != Some(&info);
                // The status first: whoever gets the update may look at it at once.
                shared.update(|s| {
                    s.state = FollowState::Following;
                    s.updates += u64::from(new);
                });
                if new {
                    *last_sent = Some(info.clone());
                    on_update(FilterUpdate { info, filter });
                }
            }
            Err(why) => {
                shared.update(|s| {
                    s.state = FollowState::Error(why.clone());
                    s.last_error = Some(why);
                });
                query_at = Some(Instant::now() + cfg.error_retry);
            }
        }
    }
}

fn is_our_event(v: &Value, nic: &str) -> bool {
    v.get("event").and_then(Value::as_str) == Some("NIC_RX_FILTER_CHANGED")
        && v.pointer("/data/name").and_then(Value::as_str) == Some(nic)
}

/// The NIC's `RxFilterInfo` and its filter from a `query-rx-filter` answer, or what was wrong.
fn read_answer(v: &Value, cfg: &FollowConfig) -> Result<(Value, RxFilter), String> {
    let nic = &cfg.nic;
    let Some(ret) = v.get("return") else {
        return Err(format!("query-rx-filter for '{nic}': {}", error_text(v)));
    };
    let info = ret
        .as_array()
        .and_then(|list| {
            list.iter()
                .find(|i| i.get("name").and_then(Value::as_str) == Some(nic))
        })
        .ok_or_else(|| {
            format!(
                "query-rx-filter answered no RxFilterInfo for '{nic}': {}",
                clip(ret)
            )
        })?;
    let filter = if cfg.qemu_broadcast_quirk {
        rx_filter_from_qemu(info)
    } else {
        rx_filter_from_info(info)
    };
    filter
        .map(|f| (info.clone(), f))
        .map_err(|e| format!("query-rx-filter for '{nic}': {e}"))
}

/// `CLASS: desc` of an error answer, or the answer itself when it is not one.
fn error_text(v: &Value) -> String {
    match (v.pointer("/error/class"), v.pointer("/error/desc")) {
        (Some(Value::String(c)), Some(Value::String(d))) => format!("{c}: {d}"),
        _ => format!("unexpected answer {}", clip(v)),
    }
}

/// A value for a message, cut to a readable length.
fn clip(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// One QMP connection: the socket, the JSON splitter and the values of the last read.
struct Conn {
    stream: UnixStream,
    json: JsonStream,
    ready: VecDeque<Result<Value, JsonError>>,
}

impl Conn {
    /// Connects without blocking: a QEMU whose listen backlog is full (another client holds
    /// its monitor) answers EAGAIN at once instead of holding the thread.
    fn open(cfg: &FollowConfig) -> io::Result<Conn> {
        let sock = Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None)?;
        sock.connect(&SockAddr::unix(&cfg.qmp)?)?;
        sock.set_nonblocking(false)?;
        let stream: UnixStream = sock.into();
        stream.set_read_timeout(Some(cfg.tick))?;
        stream.set_write_timeout(Some(Duration::from_millis(500)))?;
        Ok(Conn {
            stream,
            json: JsonStream::new(cfg.limits),
            ready: VecDeque::new(),
        })
    }

    fn send(&mut self, v: &Value) -> Result<(), Ended> {
        let mut line = v.to_string().into_bytes();
        line.push(b'\n');
        self.stream
            .write_all(&line)
            .map_err(|e| Ended::Lost(format!("writing to QMP: {e}")))
    }

    /// The next value, or `None` when a read timed out empty (a `tick` passed).
    fn next(&mut self, shared: &Shared) -> Result<Option<Value>, Ended> {
        if let Some(r) = self.ready.pop_front() {
            return r
                .map(Some)
                .map_err(|e| Ended::Broken(format!("bad JSON from QMP: {e}")));
        }
        if shared.stopped() {
            return Err(Ended::Stopped);
        }
        let mut buf = [0u8; 4096];
        match self.stream.read(&mut buf) {
            Ok(0) => Err(Ended::Lost("QMP closed the connection".into())),
            Ok(n) => {
                let ready = &mut self.ready;
                self.json.feed(&buf[..n], |r| ready.push_back(r));
                Ok(None)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(Ended::Lost(format!("reading from QMP: {e}"))),
        }
    }

    /// The next value within `timeout`; `what` names it in the error.
    fn await_value(
        &mut self,
        shared: &Shared,
        timeout: Duration,
        what: &str,
    ) -> Result<Value, Ended> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.next(shared)? {
                return Ok(v);
            }
            if self.ready.is_empty() && Instant::now() > deadline {
                return Err(Ended::Broken(format!("no {what} within {timeout:?}")));
            }
        }
    }
}

#[cfg(test)]
mod tests;
