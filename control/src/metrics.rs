//! `--metrics`: the switch's counters as Prometheus text (version 0.0.4) or OpenMetrics 1.0,
//! served over HTTP/1.1 on `GET /metrics`.
//!
//! The exposition is made from the same snapshots as `query-ports`, `query-workers` and the
//! exit report (`PortStats`, `WorkerStats`, the drop-reason table). The server runs on the
//! control loop, never on a worker, and never blocks it: every socket is non-blocking, a
//! request may be at most `MAX_REQUEST` bytes, a connection lives at most `DEADLINE` from
//! accept to its last byte written, and at most `MAX_CONNECTIONS` are open (a new one evicts
//! the oldest). Each connection carries one request and is closed after the answer.

use crate::Controller;
use ringswitch_switch::DropReason;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// The most bytes of request line and headers read before the answer is 431.
pub const MAX_REQUEST: usize = 8 * 1024;
/// The longest a connection may stay open, from accept to its answer's last byte.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// Connections open at once.
pub const MAX_CONNECTIONS: usize = 16;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Which exposition format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0 (counter families named without `_total`, `# EOF` at the end).
    OpenMetrics,
}

struct Family<'a> {
    out: &'a mut String,
    format: Format,
}

impl Family<'_> {
    /// Writes `# HELP`/`# TYPE` for `name` (a counter's name ends in `_total`).
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let family = match (self.format, kind) {
            (Format::OpenMetrics, "counter") => name.strip_suffix("_total").unwrap_or(name),
            _ => name,
        };
        let _ = writeln!(self.out, "# HELP {family} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {family} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('"', "\\\"")
}

/// Seconds from nanoseconds, as the exposition wants them.
fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The exposition of every port's and every worker's counters.
pub fn render(ctl: &Controller, format: Format) -> String {
    let mut out = String::with_capacity(4096);
    let mut f = Family {
        out: &mut out,
        format,
    };
    let ports: Vec<_> = ctl
        .ports()
        .iter()
        .map(|p| (p.id(), p.spec.kind.name(), p.stats(), p))
        .collect();

    type PortField = fn(&ringswitch_switch::PortStats) -> u64;
    let port_counters: [(&str, &str, PortField); 4] = [
        (
            "ringswitch_port_rx_frames_total",
            "Frames received on the port.",
            |s| s.rx_frames,
        ),
        (
            "ringswitch_port_rx_bytes_total",
            "Bytes received on the port.",
            |s| s.rx_bytes,
        ),
        (
            "ringswitch_port_tx_frames_total",
            "Frames transmitted on the port.",
            |s| s.tx_frames,
        ),
        (
            "ringswitch_port_tx_bytes_total",
            "Bytes transmitted on the port.",
            |s| s.tx_bytes,
        ),
    ];
    for (name, help, get) in port_counters {
        f.header(name, "counter", help);
        for (id, kind, s, _) in &ports {
            f.sample(name, &[("port", id), ("kind", kind)], get(s));
        }
    }
    f.header(
        "ringswitch_port_drops_total",
        "counter",
        "Frames dropped, by the port they are charged to and the reason (the reasons of the exit report and --stats-json).",
    );
    for (id, kind, s, _) in &ports {
        for (r, n) in s.drops.iter() {
            f.sample(
                "ringswitch_port_drops_total",
                &[("port", id), ("kind", kind), ("reason", r.name())],
                n,
            );
        }
    }
    f.header(
        "ringswitch_port_link_up",
        "gauge",
        "1 if the port's link is up, else 0.",
    );
    for (id, kind, _, p) in &ports {
        f.sample(
            "ringswitch_port_link_up",
            &[("port", id), ("kind", kind)],
            u8::from(p.link_up()),
        );
    }
    f.header("ringswitch_ports", "gauge", "Ports the switch serves.");
    f.sample("ringswitch_ports", &[], ports.len());

    let workers: Vec<_> = ctl
        .workers()
        .iter()
        .map(|w| {
            let queue_drops: u64 = ports
                .iter()
                .filter(|(_, _, _, p)| p.worker == w.id)
                .map(|(_, _, s, _)| s.drops.get(DropReason::QueueFull))
                .sum();
            (w.id.0.to_string(), w.counters.snapshot(), queue_drops)
        })
        .collect();
    type WorkerField = fn(&ringswitch_switch::WorkerStats) -> u64;
    let worker_counters: [(&str, &str, WorkerField); 13] = [
        (
            "ringswitch_worker_wakeups_total",
            "Returns from io_uring_enter that waited for completions.",
            |s| s.wakeups,
        ),
        (
            "ringswitch_worker_completions_total",
            "io_uring completions reaped.",
            |s| s.completions,
        ),
        (
            "ringswitch_worker_rx_frames_total",
            "Frames received by the worker (all its ports).",
            |s| s.rx_frames,
        ),
        (
            "ringswitch_worker_tx_submitted_total",
            "Frames handed to the kernel for transmission (all the worker's ports).",
            |s| s.tx_submitted,
        ),
        (
            "ringswitch_worker_sleeps_total",
            "Times the worker went to sleep in the kernel.",
            |s| s.sleeps,
        ),
        (
            "ringswitch_worker_rx_starved_total",
            "Times a port could not get all its receive buffers because the pool was empty.",
            |s| s.rx_starved,
        ),
        (
            "ringswitch_worker_rx_ring_empty_total",
            "Times a port's provided-buffer ring ran dry.",
            |s| s.rx_ring_empty,
        ),
        (
            "ringswitch_worker_mac_learned_total",
            "MAC table entries learned.",
            |s| s.mac_learned,
        ),
        (
            "ringswitch_worker_mac_moved_total",
            "MAC table entries that moved to another port.",
            |s| s.mac_moved,
        ),
        (
            "ringswitch_worker_mac_evicted_total",
            "MAC table entries evicted.",
            |s| s.mac_evicted,
        ),
        (
            "ringswitch_worker_cross_tx_frames_total",
            "Frames this worker received and handed to another worker for a port that one serves.",
            |s| s.cross_tx,
        ),
        (
            "ringswitch_worker_cross_rx_frames_total",
            "Frames other workers handed to this worker for its ports.",
            |s| s.cross_rx,
        ),
        (
            "ringswitch_worker_cross_drops_total",
            "Frames for ports of other workers dropped by this worker: the ring to the port's worker was full, or the port's link was down or its queue full; or, taking in, the port had gone, moved or failed meanwhile.",
            |s| s.cross_drops,
        ),
    ];
    for (name, help, get) in worker_counters {
        f.header(name, "counter", help);
        for (id, s, _) in &workers {
            f.sample(name, &[("worker", id)], get(s));
        }
    }
    let worker_seconds: [(&str, &str, WorkerField); 3] = [
        (
            "ringswitch_worker_busy_seconds_total",
            "Time in passes of the worker loop that had work.",
            |s| s.work_ns,
        ),
        (
            "ringswitch_worker_poll_seconds_total",
            "Time in passes of the worker loop that polled and found no work.",
            |s| s.poll_ns,
        ),
        (
            "ringswitch_worker_sleep_seconds_total",
            "Time the worker slept in io_uring_enter.",
            |s| s.sleep_ns,
        ),
    ];
    for (name, help, get) in worker_seconds {
        f.header(name, "counter", help);
        for (id, s, _) in &workers {
            f.sample(name, &[("worker", id)], seconds(get(s)));
        }
    }
    f.header(
        "ringswitch_worker_queue_drops_total",
        "counter",
        "Frames dropped because a transmit queue was full, on the worker's ports (the queue_full reason of ringswitch_port_drops_total, summed).",
    );
    for (id, _, q) in &workers {
        f.sample("ringswitch_worker_queue_drops_total", &[("worker", id)], q);
    }
    f.header(
        "ringswitch_worker_max_batch",
        "gauge",
        "Largest receive batch seen (frames).",
    );
    for (id, s, _) in &workers {
        f.sample(
            "ringswitch_worker_max_batch",
            &[("worker", id)],
            s.max_batch,
        );
    }
    f.header(
        "ringswitch_worker_frames_per_wakeup",
        "gauge",
        "Mean frames received per wake-up since start.",
    );
    for (id, s, _) in &workers {
        f.sample(
            "ringswitch_worker_frames_per_wakeup",
            &[("worker", id)],
            s.frames_per_wakeup(),
        );
    }
    f.header(
        "ringswitch_worker_poll_budget_microseconds",
        "gauge",
        "How long the adaptive poll goes on after the last work before the worker sleeps.",
    );
    for (id, s, _) in &workers {
        f.sample(
            "ringswitch_worker_poll_budget_microseconds",
            &[("worker", id)],
            s.poll_budget_us,
        );
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

/// One client connection: the request read so far, then the answer being written.
struct Conn {
    stream: TcpStream,
    deadline: Instant,
    request: Vec<u8>,
    answer: Option<(Vec<u8>, usize)>,
}

/// The `--metrics` HTTP server, serviced from the control loop (`service`).
pub struct MetricsServer {
    listener: TcpListener,
    conns: Vec<Conn>,
}

impl MetricsServer {
    /// Listens on `addr` (non-blocking). Whether a non-loopback address is allowed is the
    /// command line's business: it is accepted only when written out.
    pub fn bind(addr: SocketAddr) -> std::io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(MetricsServer {
            listener,
            conns: Vec::new(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.conns.len()
    }

    /// Accepts, reads, answers and closes what it can without blocking.
    pub fn service(&mut self, ctl: &Controller, now: Instant) {
        for _ in 0..MAX_CONNECTIONS {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    if self.conns.len() >= MAX_CONNECTIONS {
                        // The oldest is the nearest its deadline: the likeliest to be idle.
                        self.conns.remove(0);
                    }
                    self.conns.push(Conn {
                        stream,
                        deadline: now + DEADLINE,
                        request: Vec::new(),
                        answer: None,
                    });
                }
                Err(_) => break,
            }
        }
        self.conns.retain_mut(|c| c.step(ctl, now));
    }
}

impl Conn {
    /// Moves the connection on; false when it is done with (answered, failed or too slow).
    fn step(&mut self, ctl: &Controller, now: Instant) -> bool {
        if now >= self.deadline {
            return false;
        }
        if self.answer.is_none() {
            let mut buf = [0u8; 2048];
            loop {
                match self.stream.read(&mut buf) {
                    Ok(0) => return false,
                    Ok(n) => {
                        self.request.extend_from_slice(&buf[..n]);
                        if self.request.len() > MAX_REQUEST {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => return false,
                }
            }
            let end = self.request.windows(4).position(|w| w == b"\r\n\r\n");
            self.answer = match end {
                Some(end) => Some((answer(ctl, &self.request[..end]), 0)),
                None if self.request.len() > MAX_REQUEST => Some((
                    plain(
                        431,
                        "Request Header Fields Too Large",
                        "request too large\n",
                        &[],
                    ),
                    0,
                )),
                None => return true,
            };
        }
        let Some((data, pos)) = &mut self.answer else {
            return true;
        };
        while *pos < data.len() {
            match self.stream.write(&data[*pos..]) {
                Ok(0) => return false,
                Ok(n) => *pos += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        false
    }
}

/// A short answer with a plain-text body.
fn plain(code: u16, reason: &str, body: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    response(code, reason, "text/plain; charset=utf-8", body, extra)
}

fn response(code: u16, reason: &str, ctype: &str, body: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        let _ = write!(r, "{k}: {v}\r\n");
    }
    r.push_str("\r\n");
    let mut v = r.into_bytes();
    v.extend_from_slice(body.as_bytes());
    v
}

/// The answer to one request (its request line and headers, without the blank line).
fn answer(ctl: &Controller, head: &[u8]) -> Vec<u8> {
    let bad = || plain(400, "Bad Request", "bad request\n", &[]);
    let Ok(head) = std::str::from_utf8(head) else {
        return bad();
    };
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad();
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1")
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return bad();
    }
    let mut accept = String::new();
    for h in lines {
        let Some((k, v)) = h.split_once(':') else {
            return bad();
        };
        if k.eq_ignore_ascii_case("accept") {
            accept.push_str(v);
            accept.push(',');
        }
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path != "/metrics" {
        return plain(404, "Not Found", "not found: try /metrics\n", &[]);
    }
    if method != "GET" && method != "HEAD" {
        return plain(
            405,
            "Method Not Allowed",
            "method not allowed\n",
            &[("Allow", "GET, HEAD")],
        );
    }
    let format = if accept.contains("application/openmetrics-text") {
        Format::OpenMetrics
    } else {
        Format::Text
    };
    let body = render(ctl, format);
    let ctype = match format {
        Format::OpenMetrics => OPENMETRICS,
        Format::Text => TEXT,
    };
    let mut r = response(200, "OK", ctype, &body, &[]);
    if method == "HEAD" {
        r.truncate(r.len() - body.len());
    }
    r
}
