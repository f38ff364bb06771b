//! rs-gen: sends probe frames out of one interface as fast as asked, through AF_PACKET
//! sockets with PACKET_QDISC_BYPASS and `sendmmsg` batches, from one or more threads, each
//! optionally pinned to a CPU. Each frame carries a stream id (one per thread), a sequence
//! number and its CLOCK_MONOTONIC send time (see `ringswitch_perf::probe`). At the end it
//! prints one JSON line: `{"sent": N, "errors": N, "seconds": S, "pps": R, "threads": T}`
//! where `sent` counts only frames the kernel accepted and `errors` counts frames it refused
//! (they are skipped, not retried, so the sink sees them as sequence gaps).
//!
//! Flows: `--flows N` cycles the source address through `MacAddr::flow(flow_base + i)`, and
//! `--dst-flows N` the destination through `MacAddr::flow(dst_base + i)`, to stress a
//! switch's MAC table. To teach a learning switch where addresses live, send broadcasts
//! from them on the other side first: `rs-gen --iface B --count N --flows N --flow-base
//! 0x800000 --dst ff:ff:ff:ff:ff:ff`, then `rs-gen --iface A --dst-flows N --dst-base
//! 0x800000 ...`.
//!
//! At a set rate a batch covers about `--pace-us` (default 10 µs) of the schedule, and every
//! frame of a batch is stamped with the batch's send time, so a frame's measured latency
//! includes at most that much of its own batch's sending; the thread's timer slack is set
//! to 1 ns so the pacing sleeps are short and exact.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ringswitch_perf::batch::TxBatch;
use ringswitch_perf::clock::{sleep_until, MonoTime};
use ringswitch_perf::cpu::pin_current_thread;
use ringswitch_perf::ifname::IfName;
use ringswitch_perf::mac::MacAddr;
use ringswitch_perf::packet::{Listen, PacketSocket};
use ringswitch_perf::probe::{Frame, Repr};

/// Largest batch accepted: bounds the memory and the burst one `sendmmsg` makes.
const MAX_BATCH: usize = 1024;
/// Most sending threads.
const MAX_THREADS: usize = 64;
/// Flow indices are 32-bit; a base plus a count must stay below 2^32.
const MAX_FLOWS: u32 = 1 << 24;

#[derive(Parser, Debug)]
#[command(
    name = "rs-gen",
    about = "Send numbered, timestamped probe frames (ethertype 0x88b5) out of an interface",
    after_help = "Stops at --count frames or after --duration seconds, whichever comes first, \
                  or on SIGINT/SIGTERM; prints one JSON line."
)]
struct Args {
    /// Interface to send on (in the current network namespace).
    #[arg(long)]
    iface: IfName,
    /// Frame length in bytes without FCS (60..=1514).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u16).range(60..=1514))]
    size: u16,
    /// Number of frames to try to send (all threads together).
    #[arg(long)]
    count: Option<u64>,
    /// Seconds to send for (fractions allowed).
    #[arg(long)]
    duration: Option<f64>,
    /// Frames per second, all threads together; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Source MAC address (default: the interface's own); ignored when --flows > 1.
    #[arg(long)]
    src: Option<MacAddr>,
    /// Destination MAC address; ignored when --dst-flows > 1.
    #[arg(long, default_value = "ff:ff:ff:ff:ff:ff")]
    dst: MacAddr,
    /// Cycle the source through N addresses MacAddr::flow(flow_base + i).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_FLOWS as i64))]
    flows: u32,
    /// First source flow index (hex with 0x, or decimal).
    #[arg(long, default_value = "0", value_parser = parse_index)]
    flow_base: u32,
    /// Cycle the destination through N addresses MacAddr::flow(dst_base + i).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=MAX_FLOWS as i64))]
    dst_flows: u32,
    /// First destination flow index (hex with 0x, or decimal).
    #[arg(long, default_value = "0x800000", value_parser = parse_index)]
    dst_base: u32,
    /// Sending threads, each with its own socket and stream id.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=MAX_THREADS as i64))]
    threads: u16,
    /// CPUs to pin the threads to, comma-separated; thread i gets the (i mod n)-th.
    #[arg(long, value_delimiter = ',')]
    cpu: Vec<usize>,
    /// Frames per sendmmsg call (1..=1024) when sending as fast as possible.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// At a set rate, microseconds of schedule one batch covers.
    #[arg(long, default_value_t = 10)]
    pace_us: u64,
}

fn parse_index(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("'{s}' is not a flow index: {e}"))
}

#[derive(serde::Serialize)]
struct Report {
    sent: u64,
    errors: u64,
    seconds: f64,
    pps: f64,
    threads: u16,
}

/// What one thread sends: its share of the count and rate.
struct Plan {
    count: u64,
    rate: u64,
    batch_len: usize,
    duration: Option<Duration>,
    stream: u32,
    src: MacAddr,
    cpu: Option<usize>,
}

#[derive(Default)]
struct Sent {
    sent: u64,
    errors: u64,
    seconds: f64,
}

/// Errors after which trying the next frame makes sense: the device queue was full.
fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR)
    )
}

/// Timer slack of 1 ns for this thread, so pacing sleeps end when asked (default 50 µs).
fn exact_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and changes only this thread's slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// One sending thread. Its clock starts when every thread is set up (`ready`), not when it
/// was spawned: on a loaded machine a new thread can wait seconds for its first time slice,
/// and a schedule that began without it would end before it sent anything.
fn send_loop(args: &Args, plan: Plan, stop: &AtomicBool, ready: &Barrier) -> Result<Sent> {
    let setup = (|| -> Result<PacketSocket> {
        if let Some(cpu) = plan.cpu {
            pin_current_thread(cpu)?;
        }
        exact_timers();
        let sock = PacketSocket::bind(&args.iface, Listen::Nothing)?;
        sock.set_qdisc_bypass()?;
        Ok(sock)
    })();
    ready.wait();
    let sock = setup?;
    let start = MonoTime::now();
    let deadline = plan
        .duration
        .map(|d| start.plus(d))
        .unwrap_or(MonoTime(u64::MAX));
    let mut batch = TxBatch::new(plan.batch_len, usize::from(args.size));
    for i in 0..plan.batch_len {
        let mut f = Frame::new_checked(batch.frame_mut(i)).expect("size >= probe header");
        Repr {
            dst: args.dst,
            src: plan.src,
            stream: plan.stream,
            seq: 0,
            tx_ns: 0,
        }
        .emit(&mut f);
    }
    let mut seq = 0u64;
    let mut out = Sent::default();
    // Bounded by `plan.count` frames and by the deadline; every pass advances `seq` by >= 1.
    while seq < plan.count && !stop.load(Ordering::Relaxed) {
        let n = (plan.count - seq).min(plan.batch_len as u64) as usize;
        if plan.rate > 0 {
            let due = start.plus(Duration::from_nanos(
                (u128::from(seq) * 1_000_000_000 / u128::from(plan.rate)) as u64,
            ));
            if due >= deadline {
                break;
            }
            sleep_until(due);
        }
        let now = MonoTime::now();
        if now >= deadline {
            break;
        }
        for i in 0..n {
            let s = seq + i as u64;
            let mut f = Frame::new_checked(batch.frame_mut(i)).expect("size >= probe header");
            f.set_seq(s);
            f.set_tx_ns(now.nanos());
            if args.flows > 1 {
                f.set_src_addr(MacAddr::flow(
                    args.flow_base + (s % u64::from(args.flows)) as u32,
                ));
            }
            if args.dst_flows > 1 {
                f.set_dst_addr(MacAddr::flow(
                    args.dst_base + (s % u64::from(args.dst_flows)) as u32,
                ));
            }
        }
        let mut off = 0;
        while off < n {
            match sock.send_batch(&mut batch, off..n) {
                Ok(k) if k > 0 => {
                    out.sent += k as u64;
                    off += k;
                }
                Ok(_) => {
                    out.errors += 1;
                    off += 1;
                }
                Err(e) if is_transient(&e) => {
                    out.errors += 1;
                    off += 1;
                }
                Err(e) => bail!("sending on '{}' failed: {e}", sock.ifname()),
            }
        }
        seq += n as u64;
    }
    out.seconds = MonoTime::now().since(start).as_secs_f64();
    Ok(out)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.count.is_none() && args.duration.is_none() {
        bail!("give --count N and/or --duration SECS so the run has an end");
    }
    if let Some(d) = args.duration {
        if !(d.is_finite() && d > 0.0) {
            bail!("--duration must be a positive number of seconds, got {d}");
        }
    }
    if !(1..=MAX_BATCH).contains(&args.batch) {
        bail!("--batch must be in 1..={MAX_BATCH}, got {}", args.batch);
    }
    for (base, n, what) in [
        (args.flow_base, args.flows, "--flow-base + --flows"),
        (args.dst_base, args.dst_flows, "--dst-base + --dst-flows"),
    ] {
        if base.checked_add(n).is_none() {
            bail!("{what} overflows the 32-bit flow index");
        }
    }
    if !(1..=100_000).contains(&args.pace_us) {
        bail!("--pace-us must be in 1..=100000, got {}", args.pace_us);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handler")?;
    }
    let threads = u64::from(args.threads);
    let src = match args.src {
        Some(m) => m,
        None => PacketSocket::bind(&args.iface, Listen::Nothing)?.hw_addr()?,
    };
    let limit = args.count.unwrap_or(u64::MAX);
    let base_stream = (MonoTime::now().nanos() as u32) ^ std::process::id().rotate_left(16);
    let plans: Vec<Plan> = (0..threads)
        .map(|t| {
            let share = |total: u64| total / threads + u64::from(t < total % threads);
            let rate = if args.rate == 0 {
                0
            } else {
                share(args.rate).max(1)
            };
            // At a set rate a batch covers about --pace-us of the schedule.
            let batch_len = if rate == 0 {
                args.batch
            } else {
                (rate * args.pace_us / 1_000_000).clamp(1, args.batch as u64) as usize
            };
            Plan {
                count: if limit == u64::MAX {
                    limit
                } else {
                    share(limit)
                },
                rate,
                batch_len,
                duration: args.duration.map(Duration::from_secs_f64),
                stream: base_stream.wrapping_add(t as u32),
                src,
                cpu: (!args.cpu.is_empty()).then(|| args.cpu[t as usize % args.cpu.len()]),
            }
        })
        .collect();

    let ready = Barrier::new(plans.len());
    let results: Vec<Result<Sent>> = std::thread::scope(|s| {
        let handles: Vec<_> = plans
            .into_iter()
            .map(|p| {
                let (a, stop, ready) = (&args, &*stop, &ready);
                s.spawn(move || send_loop(a, p, stop, ready))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a sender panicked")))
            })
            .collect()
    });
    let mut total = Sent::default();
    let mut failure = None;
    for r in results {
        match r {
            Ok(s) => {
                total.sent += s.sent;
                total.errors += s.errors;
                total.seconds = total.seconds.max(s.seconds);
            }
            Err(e) => failure = Some(e),
        }
    }
    let seconds = total.seconds;
    let report = Report {
        sent: total.sent,
        errors: total.errors,
        seconds,
        pps: if seconds > 0.0 {
            total.sent as f64 / seconds
        } else {
            0.0
        },
        threads: args.threads,
    };
    println!("{}", serde_json::to_string(&report)?);
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
