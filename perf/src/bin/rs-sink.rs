//! rs-sink: counts probe frames (ethertype 0x88b5, our magic) arriving on one interface
//! through an AF_PACKET socket read with `recvmmsg`, and checks them: per stream, lost,
//! reordered and duplicated sequence numbers (`ringswitch_perf::seqtrack`), and one-way
//! latency from the frame's send timestamp to its receipt (both CLOCK_MONOTONIC, so
//! generator and sink must run on the same host). It stops after --duration seconds, after
//! --idle seconds without a probe, or on SIGINT/SIGTERM, and prints one JSON line.
//!
//! Receive time is read once per `recvmmsg` batch, so under load a frame's latency
//! includes the time it waited in the socket queue behind the rest of its batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ringswitch_perf::batch::RxBatch;
use ringswitch_perf::clock::MonoTime;
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
}

#[derive(Default, serde::Serialize)]
struct Latency {
    min: f64,
    mean: f64,
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
    latency_us: Latency,
}

#[derive(Default)]
struct LatencyAcc {
    n: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl LatencyAcc {
    fn add(&mut self, ns: u64) {
        self.min_ns = if self.n == 0 { ns } else { self.min_ns.min(ns) };
        self.max_ns = self.max_ns.max(ns);
        self.sum_ns += u128::from(ns);
        self.n += 1;
    }

    fn micros(&self) -> Latency {
        if self.n == 0 {
            return Latency::default();
        }
        Latency {
            min: self.min_ns as f64 / 1e3,
            mean: self.sum_ns as f64 / self.n as f64 / 1e3,
            max: self.max_ns as f64 / 1e3,
        }
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
    sock.statistics()?; // reset the kernel counters to this run

    let mut rx = RxBatch::new(usize::from(args.batch), SLOT);
    let mut streams: HashMap<u32, SeqTracker> = HashMap::new();
    let (mut received, mut bytes, mut foreign) = (0u64, 0u64, 0u64);
    let mut latency = LatencyAcc::default();
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
        for f in rx.frames() {
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
            latency.add(now.nanos().saturating_sub(repr.tx_ns));
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
        latency_us: latency.micros(),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
