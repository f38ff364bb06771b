//! rs-urfwd: the hand-written io_uring reference forwarder for tap-to-tap runs, the way a
//! careful C programmer would write one with liburing: two taps, `--depth` reads in flight
//! on each (fixed buffers, registered files), every completed read turned into a write of
//! the same buffer to the other tap, every completed write into a new read; all of a loop's
//! submissions go to the kernel in one `io_uring_enter`. No learning, no copies, no
//! allocation after start. It is what ringswitch's data plane must at least match: the
//! same kernel work per frame, without a switch's decisions.
//!
//! Prints `rs-urfwd: ready` on stderr once both taps are open; on SIGINT/SIGTERM prints
//! one JSON line `{"a_to_b", "b_to_a", "read_errors", "write_errors"}` and exits.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use io_uring::{opcode, types, IoUring};
use ringswitch_perf::cpu::pin_current_thread;
use ringswitch_perf::ifname::IfName;
use ringswitch_perf::tap::Tap;

/// Buffer size: a tap frame of up to MTU 1500 + header fits.
const BUF_LEN: usize = 2048;

#[derive(Parser, Debug)]
#[command(
    name = "rs-urfwd",
    about = "Forward frames between two taps with io_uring: reads in flight, read -> write"
)]
struct Args {
    /// First tap (attached if it exists, created otherwise).
    a: IfName,
    /// Second tap.
    b: IfName,
    /// Pin the forwarding thread to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Reads kept in flight per tap.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    depth: u32,
}

#[derive(serde::Serialize, Default)]
struct Report {
    a_to_b: u64,
    b_to_a: u64,
    read_errors: u64,
    write_errors: u64,
}

const OP_READ: u64 = 0;
const OP_WRITE: u64 = 1;

/// user_data: operation, the tap it runs on (0 = a, 1 = b) and the buffer index.
fn tag(op: u64, tap: u64, buf: u64) -> u64 {
    op << 48 | tap << 32 | buf
}

fn main() -> Result<()> {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("installing signal handler")?;
    }
    if let Some(cpu) = args.cpu {
        pin_current_thread(cpu)?;
    }
    let taps = [Tap::open(&args.a)?, Tap::open(&args.b)?];
    let depth = args.depth as usize;
    let nbufs = 2 * depth;
    let mut region = vec![0u8; nbufs * BUF_LEN].into_boxed_slice();
    let entries = (4 * depth as u32).next_power_of_two();
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_cqsize(2 * entries)
        .build(entries)
        .or_else(|_| IoUring::builder().setup_cqsize(2 * entries).build(entries))
        .context("creating an io_uring")?;
    let iov = [libc::iovec {
        iov_base: region.as_mut_ptr().cast(),
        iov_len: region.len(),
    }];
    // SAFETY: `region` is neither moved nor dropped before `ring` (it is declared first and
    // the process exits from this function), so the registered memory outlives every use.
    unsafe { ring.submitter().register_buffers(&iov) }.context("registering buffers")?;
    ring.submitter()
        .register_files(&[taps[0].as_raw_fd(), taps[1].as_raw_fd()])
        .context("registering files")?;
    let base = region.as_mut_ptr();
    let buf_ptr = |i: u64| {
        // SAFETY: i < nbufs, so the offset stays inside `region`.
        unsafe { base.add(i as usize * BUF_LEN) }
    };
    let read = |tap: u64, i: u64| {
        opcode::ReadFixed::new(types::Fixed(tap as u32), buf_ptr(i), BUF_LEN as u32, 0)
            .build()
            .user_data(tag(OP_READ, tap, i))
    };
    let mut pending: Vec<io_uring::squeue::Entry> = Vec::with_capacity(2 * nbufs);
    // Buffers 0..depth read from a, depth..2*depth from b.
    for i in 0..nbufs as u64 {
        pending.push(read(i / depth as u64, i));
    }
    eprintln!(
        "rs-urfwd: ready ({} <-> {})",
        taps[0].name(),
        taps[1].name()
    );

    let mut report = Report::default();
    let timeout = types::Timespec::new().nsec(100_000_000);
    let wait = types::SubmitArgs::new().timespec(&timeout);
    // Ends on SIGINT/SIGTERM; each pass waits at most 100 ms.
    while !stop.load(Ordering::Relaxed) {
        {
            let mut sq = ring.submission();
            for e in pending.drain(..) {
                // SAFETY: every entry points at a buffer of `region` that no other
                // in-flight operation uses (each buffer has exactly one op at a time).
                if unsafe { sq.push(&e) }.is_err() {
                    bail!("submission queue overflow (cannot happen: it holds every buffer)");
                }
            }
        }
        match ring.submitter().submit_with_args(1, &wait) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => {}
            Err(e) => return Err(e).context("io_uring_enter"),
        }
        for c in ring.completion() {
            let ud = c.user_data();
            let (op, tap, i) = (ud >> 48, (ud >> 32) & 0xffff, ud & 0xffff_ffff);
            let res = c.result();
            match op {
                OP_READ if res > 0 => {
                    let other = 1 - tap;
                    pending.push(
                        opcode::WriteFixed::new(
                            types::Fixed(other as u32),
                            buf_ptr(i),
                            res as u32,
                            0,
                        )
                        .build()
                        .user_data(tag(OP_WRITE, other, i)),
                    );
                }
                OP_READ => {
                    report.read_errors += 1;
                    pending.push(read(tap, i));
                }
                _ => {
                    if res < 0 {
                        report.write_errors += 1;
                    } else if tap == 1 {
                        report.a_to_b += 1;
                    } else {
                        report.b_to_a += 1;
                    }
                    // The buffer goes back to reading from the tap it came from.
                    pending.push(read(1 - tap, i));
                }
            }
        }
    }
    println!("{}", serde_json::to_string(&report)?);
    // Exit without unwinding: the kernel may still hold reads on `region`; process exit
    // tears the ring down before the memory goes.
    std::process::exit(0);
}
