//! Opening the ports named on the command line and handing them to the worker.

use crate::cli::Args;
use anyhow::{bail, Context};
use ringswitch_backends::{NetdevKind, NetdevSpec, Script, Tap};
use ringswitch_switch::{
    link, DomainId, PortCounters, PortEntry, Snapshot, Worker, WorkerConfig, WorkerCounters,
    WorkerHandle,
};
use std::os::fd::OwnedFd;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// A port as the binary reports it.
pub struct PortInfo {
    pub id: String,
    pub kind: &'static str,
    pub ifname: String,
    pub counters: Arc<PortCounters>,
    downscript: Script,
}

/// Everything the running switch reports on.
pub struct Running {
    pub ports: Vec<PortInfo>,
    pub worker: Arc<WorkerCounters>,
}

impl Running {
    pub fn len(&self) -> usize {
        self.ports.len()
    }
}

/// A port opened but not yet handed to a worker.
pub struct Opened {
    info: PortInfo,
    fd: OwnedFd,
}

fn run_script(path: &str, ifname: &str) -> anyhow::Result<()> {
    let status = Command::new(path)
        .arg(ifname)
        .status()
        .with_context(|| format!("cannot run network script {path}"))?;
    if !status.success() {
        bail!("network script {path} {ifname} failed with {status}");
    }
    Ok(())
}

fn open_one(spec: &NetdevSpec) -> anyhow::Result<Opened> {
    match &spec.kind {
        NetdevKind::Tap(t) => {
            let tap = match t.fd {
                Some(fd) => Tap::from_inherited(fd),
                None => Tap::open(t.ifname.as_deref()),
            }
            .with_context(|| format!("netdev '{}'", spec.id))?;
            let ifname = tap.name().to_string();
            if let Script::Path(p) = &t.script {
                run_script(p, &ifname).with_context(|| format!("netdev '{}'", spec.id))?;
            }
            Ok(Opened {
                info: PortInfo {
                    id: spec.id.to_string(),
                    kind: spec.kind.name(),
                    ifname,
                    counters: Arc::new(PortCounters::default()),
                    downscript: t.downscript.clone(),
                },
                fd: tap.into_fd(),
            })
        }
    }
}

/// Opens every port; on the first failure the ones already opened are closed again.
pub fn open_all(args: &Args) -> anyhow::Result<Vec<Opened>> {
    let mut out = Vec::with_capacity(args.netdevs.len());
    for spec in &args.netdevs {
        out.push(open_one(spec)?);
    }
    Ok(out)
}

/// Starts the worker over the opened ports and waits until it serves them.
pub fn start(args: &Args, opened: Vec<Opened>) -> anyhow::Result<(WorkerHandle, Running)> {
    let cfg = WorkerConfig {
        max_frame: args.max_frame_size,
        mac_capacity: args.mac_table_size,
        mac_ageing: args.mac_ageing,
        rx_depth: args.rx_depth,
        max_ports: opened.len().max(1),
        cpu: args.worker_cpu,
        ..WorkerConfig::default()
    };
    let mut entries = Vec::with_capacity(opened.len());
    let mut ports = Vec::with_capacity(opened.len());
    for o in opened {
        entries.push(Some(Arc::new(PortEntry {
            name: o.info.id.as_str().into(),
            fd: Arc::new(o.fd),
            domain: DomainId(0),
            link_up: true,
            counters: o.info.counters.clone(),
        })));
        ports.push(o.info);
    }
    let (control, worker_link) = link(Snapshot {
        generation: 1,
        ports: entries,
    })
    .context("creating the control link")?;
    let handle = Worker::spawn(cfg, worker_link).context("starting the worker")?;
    control
        .wait_applied(1, Duration::from_secs(5))
        .context("waiting for the worker to open its ports")?;
    let worker = handle.counters.clone();
    Ok((handle, Running { ports, worker }))
}

/// Runs the down-scripts of ports that have one (their taps are closed by now).
pub fn close_all(_args: &Args, running: &Running) {
    for p in &running.ports {
        if let Script::Path(path) = &p.downscript {
            if let Err(e) = run_script(path, &p.ifname) {
                eprintln!("ringswitch: netdev '{}': {e:#}", p.id);
            }
        }
    }
}
