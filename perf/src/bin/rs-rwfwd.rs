//! rs-rwfwd: the floor peer for tap-to-tap forwarding. It opens two taps by name
//! (attaching to existing ones or creating them) and runs one thread per direction, each a
//! blocking `read()` of one frame followed by a `write()` of it to the other tap: one
//! kernel crossing per frame per call, no batching, no learning. With --cpu both threads
//! share that one core, like a single-worker switch. It prints `rs-rwfwd: ready` to stderr
//! once both taps are open, and on SIGINT/SIGTERM prints one JSON line with the frames
//! forwarded each way and the errors, then exits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use ringswitch_perf::cpu::pin_current_thread;
use ringswitch_perf::ifname::IfName;
use ringswitch_perf::tap::Tap;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Read buffer: a tap hands over at most MTU + 14 bytes; this covers jumbo MTUs too.
const BUF_LEN: usize = 65536;

#[derive(Parser, Debug)]
#[command(
    name = "rs-rwfwd",
    about = "Forward frames between two taps with one blocking read() and one write() each"
)]
struct Args {
    /// First tap (attached if it exists, created otherwise).
    a: IfName,
    /// Second tap.
    b: IfName,
    /// Pin both forwarding threads to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
}

/// Counters of one direction, written only by its own thread and read at exit.
#[derive(Default)]
struct DirCounters {
    frames: AtomicU64,
    read_errors: AtomicU64,
    write_errors: AtomicU64,
}

#[derive(serde::Serialize)]
struct Report {
    a_to_b: u64,
    b_to_a: u64,
    read_errors: u64,
    write_errors: u64,
}

/// Forwards `from` -> `to` until the process exits; never returns on its own.
fn forward(from: Arc<Tap>, to: Arc<Tap>, counters: Arc<DirCounters>) {
    let mut buf = vec![0u8; BUF_LEN];
    let (mut frames, mut read_errors, mut write_errors) = (0u64, 0u64, 0u64);
    loop {
        match from.read(&mut buf) {
            Ok(n) => match to.write(&buf[..n]) {
                Ok(_) => {
                    frames += 1;
                    // A plain store: this thread is the only writer.
                    counters.frames.store(frames, Ordering::Relaxed);
                }
                Err(_) => {
                    write_errors += 1;
                    counters.write_errors.store(write_errors, Ordering::Relaxed);
                }
            },
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(_) => {
                read_errors += 1;
                counters.read_errors.store(read_errors, Ordering::Relaxed);
                // A tap that keeps failing (e.g. deleted under us) must not spin a core.
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Block-free signal handling: the iterator's handler only writes to a pipe.
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    if let Some(cpu) = args.cpu {
        // Before spawning: the forwarding threads inherit this thread's mask.
        pin_current_thread(cpu)?;
    }
    let a = Arc::new(Tap::open(&args.a)?);
    let b = Arc::new(Tap::open(&args.b)?);
    let ab = Arc::new(DirCounters::default());
    let ba = Arc::new(DirCounters::default());
    for (from, to, c, name) in [(&a, &b, &ab, "a->b"), (&b, &a, &ba, "b->a")] {
        let (from, to, c) = (Arc::clone(from), Arc::clone(to), Arc::clone(c));
        std::thread::Builder::new()
            .name(format!("rwfwd {name}"))
            .spawn(move || forward(from, to, c))
            .context("spawning a forwarding thread")?;
    }
    eprintln!("rs-rwfwd: ready ({} <-> {})", a.name(), b.name());

    // Blocks until the first SIGINT/SIGTERM.
    let _ = signals.forever().next();
    let report = Report {
        a_to_b: ab.frames.load(Ordering::Relaxed),
        b_to_a: ba.frames.load(Ordering::Relaxed),
        read_errors: ab.read_errors.load(Ordering::Relaxed)
            + ba.read_errors.load(Ordering::Relaxed),
        write_errors: ab.write_errors.load(Ordering::Relaxed)
            + ba.write_errors.load(Ordering::Relaxed),
    };
    println!("{}", serde_json::to_string(&report)?);
    // The forwarding threads are blocked in read(); exiting the process ends them and
    // closes the taps (non-persistent ones disappear).
    std::process::exit(0);
}
