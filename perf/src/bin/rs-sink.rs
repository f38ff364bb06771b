//! rs-sink: counts probe frames (ethertype 0x88b5, our magic) arriving on one interface
//! through an AF_PACKET socket read with `recvmmsg`, and checks them: per stream, lost,
//! reordered and duplicated sequence numbers (`ringswitch_perf::seqtrack`), and one-way
//! latency from the frame's send timestamp to its receipt, in an HDR histogram (3
//! significant digits, 100 ns to 60 s; recording never allocates). It stops after
//! --duration seconds, after --idle seconds without a probe, or on SIGINT/SIGTERM, and
//! prints one JSON line; `--hist FILE` also writes the latency distribution as CSV
//! (`latency_us,percentile`) for CDF plots.
//!
//! Receipt is the kernel's timestamp of the frame (SO_TIMESTAMPNS, taken as the frame
//! reached the interface's receive path), converted from CLOCK_REALTIME to the probes'
//! CLOCK_MONOTONIC, so the sink's own scheduling delay is not counted; generator and
//! sink must run on the same host. Without kernel stamps it falls back to the time of
//! the `recvmmsg` call, and says so (`"kernel_stamps": false`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use ringswitch_perf::batch::RxBatch;
use ringswitch_perf::clock::{realtime_offset_ns, MonoTime};
use ringswitch_perf::cpu::pin_current_thread;
use ringswitch_perf::ifname::IfName;
use ringswitch_perf::packet::{Listen, PacketSocket};
use ringswitch_perf::probe::{self, Frame, Repr};
use ringswitch_perf::seqtrack::{SeqCounts, SeqTracker};

/// Streams tracked separately; probes of further streams are counted as "foreign".
const MAX_STREAMS: usize = 64;
/// How often a blocked receive wakes up to check the clock and the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Receive slot size: frames longer than this are truncated, which keeps the header.
const SLOT: usize = 2048;

#[derive(Parser, Debug)]
#[command(
    name = "rs-sink",
    about = "Count and check probe frames (ethertype 0x88b5) received on an interface"
)]
struct Args {
    /// Interface to listen on (in the current network namespace).
    #[arg(long)]
    iface: IfName,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many seconds without a probe (counted from the start until the
    /// first probe arrives).
    #[arg(long, default_value_t = 2.0)]
    idle: f64,
    /// Pin the receiving thread to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Frames per recvmmsg call.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    batch: u16,
    /// Also write the latency distribution to this CSV file.
    #[arg(long)]
    hist: Option<std::path::PathBuf>,
}

#[derive(Default, serde::Serialize)]
struct Latency {
    min: f64,
    mean: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    p99_9: f64,
    max: f64,
}

#[derive(serde::Serialize)]
struct Report {
    received: u64,
    bytes: u64,
    lost: u64,
    reordered: u64,
    duplicates: u64,
    streams: usize,
    foreign: u64,
    kernel_drops: u64,
    /// Wall time from start to stop, idle wait included.
    seconds: f64,
    /// Received frames per second between the first and the last probe.
    pps: f64,
    /// Whether latencies come from kernel receive stamps (else from the receive call).
    kernel_stamps: bool,
    latency_us: Latency,
}

/// One-way latencies in nanoseconds. Bounds are fixed at start, so recording allocates
/// nothing; values outside them are clamped (and a negative one, from clock reading
/// error, counts as the lowest).
struct LatencyHist(Histogram<u64>);

const HIST_LOW_NS: u64 = 100;
const HIST_HIGH_NS: u64 = 60_000_000_000;

impl LatencyHist {
    fn new() -> LatencyHist {
        LatencyHist(Histogram::new_with_bounds(HIST_LOW_NS, HIST_HIGH_NS, 3).expect("valid bounds"))
    }

    fn add(&mut self, ns: i128) {
        let v = ns.clamp(HIST_LOW_NS as i128, HIST_HIGH_NS as i128) as u64;
        self.0.saturating_record(v);
    }

    fn micros(&self) -> Latency {
        let h = &self.0;
        if h.is_empty() {
            return Latency::default();
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Latency {
            min: us(h.min()),
            mean: h.mean() / 1e3,
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p99_9: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }

    /// The distribution as `latency_us,percentile` rows, a few per halving of the tail.
    fn write_csv(&self, path: &std::path::Path) -> Result<()> {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        writeln!(out, "latency_us,percentile")?;
        if !self.0.is_empty() {
            for v in self.0.iter_quantiles(4) {
                writeln!(
                    out,
                    "{:.3},{:.6}",
                    v.value_iterated_to() as f64 / 1e3,
                    v.quantile_iterated_to() * 100.0
                )?;
            }
        }
        out.flush()?;
        Ok(())
    }
}

fn positive(name: &str, v: f64) -> Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        bail!("--{name} must be a positive number of seconds, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let duration = positive("duration", args.duration)?;
    let idle = positive("idle", args.idle)?;
    if let Some(cpu) = args.cpu {
        pin_current_thread(cpu)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handler")?;
    }

    let sock = PacketSocket::bind(&args.iface, Listen::Ethertype(probe::ETHERTYPE))?;
    sock.set_ignore_outgoing()?;
    sock.set_recv_buffer(8 << 20)?;
    sock.set_recv_timeout(POLL)?;
    let kernel_stamps = sock.set_timestamps().is_ok();
    let offset = realtime_offset_ns();
    sock.statistics()?; // reset the kernel counters to this run

    let mut rx = RxBatch::new(usize::from(args.batch), SLOT);
    let mut streams: HashMap<u32, SeqTracker> = HashMap::new();
    let (mut received, mut bytes, mut foreign) = (0u64, 0u64, 0u64);
    let mut latency = LatencyHist::new();
    let start = MonoTime::now();
    let end = start.plus(duration);
    let mut last_probe = start;
    let mut first_probe = None;

    // Bounded by `end`: every pass either receives or waits at most POLL.
    loop {
        let now = MonoTime::now();
        if stop.load(Ordering::Relaxed) || now >= end || now.since(last_probe) >= idle {
            break;
        }
        let n = sock.recv_batch(&mut rx).context("receiving")?;
        if n == 0 {
            continue;
        }
        let now = MonoTime::now();
        for (i, f) in rx.frames().enumerate() {
            let repr = match Frame::new_checked(f).and_then(|f| Repr::parse(&f)) {
                Ok(r) => r,
                Err(_) => {
                    foreign += 1;
                    continue;
                }
            };
            if !streams.contains_key(&repr.stream) && streams.len() >= MAX_STREAMS {
                foreign += 1;
                continue;
            }
            streams.entry(repr.stream).or_default().record(repr.seq);
            received += 1;
            bytes += f.len() as u64;
            let rx_ns = match rx.stamp(i) {
                Some(real) => real as i128 - offset,
                None => now.nanos() as i128,
            };
            latency.add(rx_ns - repr.tx_ns as i128);
            last_probe = now;
            first_probe.get_or_insert(now);
        }
    }
    let kernel_drops = u64::from(sock.statistics()?.drops);

    let seconds = MonoTime::now().since(start).as_secs_f64();
    // The rate covers the time frames were arriving, not the idle wait at either end.
    let active = first_probe.map_or(0.0, |f| last_probe.since(f).as_secs_f64());
    let total = streams
        .values()
        .map(SeqTracker::counts)
        .fold(SeqCounts::default(), |a, c| SeqCounts {
            unique: a.unique + c.unique,
            reordered: a.reordered + c.reordered,
            duplicates: a.duplicates + c.duplicates,
            lost: a.lost + c.lost,
            beyond_window: a.beyond_window + c.beyond_window,
        });
    let report = Report {
        received,
        bytes,
        lost: total.lost,
        reordered: total.reordered,
        duplicates: total.duplicates,
        streams: streams.len(),
        foreign,
        kernel_drops,
        seconds,
        pps: if active > 0.0 {
            received as f64 / active
        } else {
            0.0
        },
        kernel_stamps,
        latency_us: latency.micros(),
    };
    if let Some(path) = &args.hist {
        latency.write_csv(path)?;
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
