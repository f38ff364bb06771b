//! The `ringswitch` binary: parses the command line, starts the workers (one per `--cores`
//! CPU, pinned, sharing a `Fabric`; one unpinned worker without it), adds the ports through
//! the controller (the same path as QMP's `netdev_add`), serves QMP, and on SIGINT/SIGTERM or
//! QMP `quit` stops cleanly and reports per-port counters. `ringswitch qmp …` is a small QMP
//! client for scripts. Under systemd (`NOTIFY_SOCKET`) it reports readiness, the stop and
//! watchdog pings (`service`), and a stop never takes longer than `service::STOP_BOUND`.

mod cli;
mod client;
mod report;
mod service;

use anyhow::{anyhow, Context};
use ringswitch_control::{
    Controller, ControllerConfig, Listener, MetricsServer, Server, WorkerRef,
};
use ringswitch_switch::fabric::{Fabric, CROSS_RING};
use ringswitch_switch::{
    link, ControlLink, PollMode, Snapshot, TapRx, Worker, WorkerConfig, WorkerHandle, WorkerId,
};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).and_then(|a| a.to_str()) == Some("qmp") {
        return client::main(&argv[2..]);
    }
    // Before any thread starts: it takes the variables out of the environment.
    let service_env = service::Env::take();
    let args = match cli::parse(argv) {
        Ok(a) => a,
        Err(cli::CliExit::Clap(e)) => e.exit(),
        Err(cli::CliExit::Invalid(msg)) => {
            eprintln!("ringswitch: {msg}");
            return ExitCode::from(2);
        }
    };
    match run(args, service::Notifier::new(service_env)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringswitch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn listeners(args: &cli::Args) -> anyhow::Result<Vec<Listener>> {
    args.qmp
        .iter()
        .map(|q| match q {
            cli::QmpAddr::Unix(p) => Listener::unix(p),
            cli::QmpAddr::Tcp(a) => Listener::tcp(*a, args.qmp_allow_remote),
        })
        .collect::<Result<_, _>>()
        .context("setting up QMP")
}

fn run(args: cli::Args, mut notifier: service::Notifier) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    // The handler only records the signal; the control loop looks at it between polls.
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("installing signal handlers")?;
    let mut server = Server::new(listeners(&args)?);
    let mut metrics = args
        .metrics
        .map(|a| MetricsServer::bind(a).with_context(|| format!("--metrics: binding {a}")))
        .transpose()?;
    let (handles, links): (Vec<WorkerHandle>, Vec<ControlLink>) =
        spawn_workers(&args)?.into_iter().unzip();
    let cores: Vec<usize> = handles.iter().filter_map(|h| h.cpu).collect();
    if !cores.is_empty() {
        // The control plane (QMP, snapshots, ageing ticks) and every thread it starts stay
        // off the pinned workers' cores: measured on 2 cores, the control thread otherwise took
        // the busy-polling worker's core about 50 times a second, for up to 0.4 ms.
        match ringswitch_switch::affinity::avoid_cpus(&cores) {
            Ok(Some(_)) => {}
            Ok(None) => eprintln!(
                "ringswitch: every CPU this process may use runs a worker ({}); the control thread shares them",
                cpu_list(&cores)
            ),
            Err(e) => eprintln!(
                "ringswitch: keeping the control thread off CPUs {}: {e}",
                cpu_list(&cores)
            ),
        }
    }
    let workers: Vec<WorkerRef> = handles
        .iter()
        .zip(links)
        .map(|(h, link)| WorkerRef {
            id: h.id,
            cpu: h.cpu,
            poll: h.poll,
            features: h.features,
            huge_pages: h.huge_pages,
            counters: h.counters.clone(),
            link,
        })
        .collect();
    let mut ctl = Controller::new(
        workers,
        ControllerConfig {
            max_ports: args.max_ports,
            allow_scripts: args.allow_scripts,
            rx_filter_bpf: args.rx_filter_bpf,
            mac_table_size: args.mac_table_size,
        },
    );
    let mut failure = None;
    for c in &args.chardevs {
        if let Err(e) = ctl.chardev_add(c.clone()) {
            failure = Some(anyhow!("{}", e.desc));
        }
    }
    for spec in &args.netdevs {
        if let Err(e) = ctl.netdev_add(spec.clone()) {
            failure = Some(anyhow!("{}", e.desc));
            break;
        }
    }
    for v in &args.vde_serve {
        if failure.is_some() {
            break;
        }
        match ctl.vde_serve(v.clone()) {
            Ok(()) => eprintln!(
                "ringswitch: serving vde at {} (ports {}.N)",
                v.dir.join("ctl").display(),
                v.name
            ),
            Err(e) => failure = Some(anyhow!("{}", e.desc)),
        }
    }
    if failure.is_none() {
        // Every worker's io_uring is set up alike; the first one's answer stands for all.
        let handle = &handles[0];
        eprintln!(
            "ringswitch: {}; {} port(s); poll={}; io_uring: defer_taskrun={} registered buffers={} files={} socket rx={} tap rx={} batch wait={}; huge pages={}",
            match (handles.len(), cores.is_empty()) {
                (1, true) => "1 worker (unpinned)".to_string(),
                (1, false) => format!("1 worker on CPU {}", cpu_list(&cores)),
                (n, _) => format!("{n} workers on CPUs {}", cpu_list(&cores)),
            },
            ctl.ports().len(),
            match args.poll {
                PollMode::Adaptive => format!("adaptive (up to {} µs)", args.poll_max_us),
                PollMode::Busy => "busy".to_string(),
                PollMode::Sleep => "sleep".to_string(),
            },
            handle.features.defer_taskrun,
            handle.features.registered_buffers,
            handle.features.registered_files,
            if handle.features.recv_multishot {
                "multishot recv + buffer ring"
            } else if args.rx_multishot {
                "reads (multishot recv over a buffer ring unsupported here)"
            } else {
                "reads (--no-rx-multishot)"
            },
            match args.tap_rx {
                TapRx::Polled if handle.features.read_multishot => {
                    "rounds of non-blocking reads under load, a multishot read when idle"
                }
                TapRx::Polled => "rounds of non-blocking reads under load, a poll when idle",
                TapRx::Multishot if handle.features.read_multishot => "multishot read + buffer ring",
                TapRx::Multishot => "reads (multishot read over a buffer ring unsupported here)",
                TapRx::Reads => "reads (--tap-rx reads)",
            },
            handle.features.batch_wait,
            handles.iter().all(|h| h.huge_pages)
        );
        for l in server.listeners() {
            eprintln!("ringswitch: QMP on {}", l.describe());
        }
        if let Some(m) = &metrics {
            match m.local_addr() {
                Ok(a) => eprintln!("ringswitch: metrics on http://{a}/metrics"),
                Err(e) => eprintln!("ringswitch: metrics: {e}"),
            }
        }
        eprintln!("ringswitch: ready");
        // Every port given at start is attached: `netdev_add` returns once the worker has
        // applied the port table that holds it.
        notifier.ready(&service::ready_status(
            ctl.ports().iter().map(|p| (p.id(), p.connected())),
        ));
        failure = serve(
            &mut server,
            metrics.as_mut(),
            &mut ctl,
            &mut signals,
            &handles,
            &mut notifier,
        );
    }
    // From here on the process ends within the bound, whatever hangs.
    service::bound_stop(service::STOP_BOUND);
    notifier.stopping(&match &failure {
        None => "stopping: draining in-flight frames".to_string(),
        Some(e) => format!("stopping: {e:#}"),
    });
    let stopped = stop_workers(handles);
    report::print_table(&ctl);
    if let Some(path) = &args.stats_json {
        report::write_json(path, &ctl).with_context(|| format!("writing {}", path.display()))?;
    }
    ctl.close_all();
    stopped?;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `1,3-5` for CPUs 1, 3, 4, 5 (as `--cores` takes them).
fn cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if j > i + 1 {
            format!("{}-{}", cpus[i], cpus[j])
        } else if j == i + 1 {
            format!("{},{}", cpus[i], cpus[j])
        } else {
            cpus[i].to_string()
        });
        i = j + 1;
    }
    out.join(",")
}

/// Starts one worker per `--cores` CPU, pinned there (one unpinned worker without it), each
/// with its link to the control plane; several share a `Fabric`. If one cannot start, those
/// already started are stopped again.
fn spawn_workers(args: &cli::Args) -> anyhow::Result<Vec<(WorkerHandle, ControlLink)>> {
    let cpus: Vec<Option<usize>> = if args.cores.is_empty() {
        vec![None]
    } else {
        args.cores.iter().copied().map(Some).collect()
    };
    // One worker forwards alone, exactly as before workers could share ports.
    let fabric = (cpus.len() > 1).then(|| Fabric::new(cpus.len(), CROSS_RING));
    let mut out: Vec<(WorkerHandle, ControlLink)> = Vec::with_capacity(cpus.len());
    for (i, cpu) in cpus.into_iter().enumerate() {
        let cfg = WorkerConfig {
            id: WorkerId(i as u8),
            max_frame: args.max_frame_size,
            mac_capacity: args.mac_table_size,
            mac_ageing: args.mac_ageing,
            rx_depth: args.rx_depth,
            rx_multishot: args.rx_multishot,
            tap_rx: args.tap_rx,
            rx_coalesce: Duration::from_micros(args.rx_coalesce_us.into()),
            max_ports: args.max_ports,
            fabric: fabric.clone(),
            cpu,
            poll: args.poll,
            poll_max: Duration::from_micros(args.poll_max_us.into()),
            ..WorkerConfig::default()
        };
        let started = link(Snapshot::default())
            .context("creating the control link")
            .and_then(|(control, worker_link)| {
                Worker::spawn(cfg, worker_link)
                    .map(|h| (h, control))
                    .with_context(|| match cpu {
                        Some(c) => format!("starting worker {i} on CPU {c}"),
                        None => "starting the worker".to_string(),
                    })
            });
        match started {
            Ok(w) => out.push(w),
            Err(e) => {
                let _ = stop_workers(out.into_iter().map(|(h, _)| h).collect());
                return Err(e);
            }
        }
    }
    Ok(out)
}

/// Asks every worker to stop, then waits for each (so they drain at the same time); the
/// first failure, naming its worker, with any others after it.
fn stop_workers(handles: Vec<WorkerHandle>) -> anyhow::Result<()> {
    for h in &handles {
        h.stopper.stop();
    }
    let several = handles.len() > 1;
    let mut failed: Vec<String> = Vec::new();
    for h in handles {
        let id = h.id.0;
        if let Err(e) = h.join() {
            failed.push(match several {
                true => format!("worker {id} failed: {e}"),
                false => format!("worker failed: {e}"),
            });
        }
    }
    match failed.len() {
        0 => Ok(()),
        _ => Err(anyhow!("{}", failed.join("; "))),
    }
}

/// The control loop: QMP, the metrics endpoint, announcement timers, signals. Returns why it ended if that was a
/// failure.
fn serve(
    server: &mut Server,
    mut metrics: Option<&mut MetricsServer>,
    ctl: &mut Controller,
    signals: &mut signal_hook::iterator::Signals,
    handles: &[WorkerHandle],
    notifier: &mut service::Notifier,
) -> Option<anyhow::Error> {
    let mut quit_deadline: Option<Instant> = None;
    loop {
        if let Some(sig) = signals.pending().next() {
            eprintln!("ringswitch: signal {sig}, stopping");
            return None;
        }
        if let Some(h) = handles.iter().find(|h| h.is_finished()) {
            return Some(anyhow!("worker {} stopped unexpectedly", h.id.0));
        }
        if ctl.quit_requested() {
            // Let the answers to `quit` reach the clients (bounded).
            let deadline = *quit_deadline.get_or_insert(Instant::now() + Duration::from_secs(1));
            if server.flushed() || Instant::now() >= deadline {
                eprintln!("ringswitch: QMP quit, stopping");
                return None;
            }
        }
        ctl.service_connections(Instant::now());
        let now = Instant::now();
        let mut wait = Duration::from_millis(20);
        if let Some(m) = metrics.as_deref_mut() {
            m.service(ctl, now);
            if m.open_connections() > 0 {
                // A scrape in progress is answered within a few milliseconds.
                wait = wait.min(Duration::from_millis(2));
            }
        }
        let ping = notifier.tick(now);
        for due in [ctl.next_due(), ctl.next_attempt(), ping]
            .into_iter()
            .flatten()
        {
            wait = wait.min(due.saturating_duration_since(now));
        }
        if let Err(e) = server.poll_once(ctl, wait) {
            return Some(anyhow!("QMP server: {e}"));
        }
        ctl.run_timers(Instant::now());
        ctl.apply_followed();
        ctl.sync_learned(Instant::now());
        server.deliver_events(ctl);
    }
}
