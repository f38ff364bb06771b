//! The `ringswitch` binary: parses the command line, opens the ports, runs the worker, and on
//! SIGINT/SIGTERM stops it cleanly and reports per-port counters.

mod cli;
mod ports;
mod report;

use anyhow::Context;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args_os()) {
        Ok(a) => a,
        Err(cli::CliExit::Clap(e)) => e.exit(),
        Err(cli::CliExit::Invalid(msg)) => {
            eprintln!("ringswitch: {msg}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringswitch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: cli::Args) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    // Block-free signal handling: the handler only records the signal; this thread polls.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("installing signal handlers")?;
    let opened = ports::open_all(&args)?;
    let (handle, ports) = ports::start(&args, opened)?;
    eprintln!(
        "ringswitch: {} port(s); io_uring: defer_taskrun={} registered buffers={} files={}; huge pages={}",
        ports.len(),
        handle.features.defer_taskrun,
        handle.features.registered_buffers,
        handle.features.registered_files,
        handle.huge_pages
    );
    eprintln!("ringswitch: ready");
    let mut failure = None;
    'wait: loop {
        if let Some(sig) = signals.pending().next() {
            eprintln!("ringswitch: signal {sig}, stopping");
            break 'wait;
        }
        if handle.is_finished() {
            failure = Some(anyhow::anyhow!("worker stopped unexpectedly"));
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let result = handle.stop_and_join();
    let worker_stats = ports.worker.snapshot();
    ports::close_all(&args, &ports);
    report::print_table(&ports, &worker_stats);
    if let Some(path) = &args.stats_json {
        report::write_json(path, &ports, &worker_stats)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    result.context("worker failed")?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
