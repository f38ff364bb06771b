//! rs-gen: sends probe frames out of one interface as fast as asked, through an AF_PACKET
//! socket with PACKET_QDISC_BYPASS and `sendmmsg` batches, optionally pinned to one CPU.
//! Each frame carries a stream id, a sequence number and its CLOCK_MONOTONIC send time
//! (see `ringswitch_perf::probe`). At the end it prints one JSON line:
//! `{"sent": N, "errors": N, "seconds": S, "pps": R}` where `sent` counts only frames the
//! kernel accepted and `errors` counts frames it refused (they are skipped, not retried,
//! so the sink sees them as sequence gaps).
//!
//! To teach a learning switch where an address lives, send one broadcast from it:
//! `rs-gen --iface B --count 1 --src <B's MAC> --dst ff:ff:ff:ff:ff:ff`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    /// Number of frames to try to send.
    #[arg(long)]
    count: Option<u64>,
    /// Seconds to send for (fractions allowed).
    #[arg(long)]
    duration: Option<f64>,
    /// Frames per second; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Source MAC address (default: the interface's own); ignored when --flows > 1.
    #[arg(long)]
    src: Option<MacAddr>,
    /// Destination MAC address.
    #[arg(long)]
    dst: MacAddr,
    /// Cycle through N source addresses 02:88:xx:xx:xx:xx (flow i has xx = i).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    flows: u32,
    /// Pin the sending thread to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Frames per sendmmsg call (1..=1024).
    #[arg(long, default_value_t = 64)]
    batch: usize,
}

#[derive(serde::Serialize)]
struct Report {
    sent: u64,
    errors: u64,
    seconds: f64,
    pps: f64,
}

/// Errors after which trying the next frame makes sense: the device queue was full.
fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR)
    )
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
    if let Some(cpu) = args.cpu {
        pin_current_thread(cpu)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handler")?;
    }

    let sock = PacketSocket::bind(&args.iface, Listen::Nothing)?;
    sock.set_qdisc_bypass()?;
    let src = match args.src {
        Some(m) => m,
        None => sock.hw_addr()?,
    };

    // At a set rate, a batch covers at most about a millisecond, so pacing stays smooth.
    let batch_len = if args.rate == 0 {
        args.batch
    } else {
        (args.rate / 1000).clamp(1, args.batch as u64) as usize
    };
    let mut batch = TxBatch::new(batch_len, usize::from(args.size));
    let stream = (MonoTime::now().nanos() as u32) ^ std::process::id().rotate_left(16);
    for i in 0..batch_len {
        let mut f = Frame::new_checked(batch.frame_mut(i)).expect("size >= probe header");
        Repr {
            dst: args.dst,
            src,
            stream,
            seq: 0,
            tx_ns: 0,
        }
        .emit(&mut f);
    }
    let limit = args.count.unwrap_or(u64::MAX);
    let start = MonoTime::now();
    let deadline = args
        .duration
        .map(|d| start.plus(Duration::from_secs_f64(d)))
        .unwrap_or(MonoTime(u64::MAX));
    let (mut seq, mut sent, mut errors) = (0u64, 0u64, 0u64);
    let mut fatal = None;

    // Bounded by `limit` frames and by `deadline`; every pass advances `seq` by >= 1.
    while seq < limit && !stop.load(Ordering::Relaxed) {
        let n = (limit - seq).min(batch_len as u64) as usize;
        if args.rate > 0 {
            let due = start.plus(Duration::from_nanos(
                (u128::from(seq) * 1_000_000_000 / u128::from(args.rate)) as u64,
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
                f.set_src_addr(MacAddr::flow((s % u64::from(args.flows)) as u32));
            }
        }
        let mut off = 0;
        while off < n {
            match sock.send_batch(&mut batch, off..n) {
                Ok(k) if k > 0 => {
                    sent += k as u64;
                    off += k;
                }
                Ok(_) => {
                    errors += 1;
                    off += 1;
                }
                Err(e) if is_transient(&e) => {
                    errors += 1;
                    off += 1;
                }
                Err(e) => {
                    fatal = Some(e);
                    break;
                }
            }
        }
        seq += n as u64;
        if fatal.is_some() {
            break;
        }
    }

    let seconds = MonoTime::now().since(start).as_secs_f64();
    let report = Report {
        sent,
        errors,
        seconds,
        pps: if seconds > 0.0 {
            sent as f64 / seconds
        } else {
            0.0
        },
    };
    println!("{}", serde_json::to_string(&report)?);
    if let Some(e) = fatal {
        bail!("sending on '{}' failed: {e}", sock.ifname());
    }
    Ok(())
}
