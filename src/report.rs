//! Counter reports at exit: a table for people, JSON for scripts. Both are made from the
//! switch crate's stats types (`PortStats`, `WorkerStats`), whose drop reasons come from its
//! one table.

use ringswitch_control::Controller;
use ringswitch_switch::WorkerStats;
use std::path::Path;

/// Every worker's statistics added up (the maximum for high-water marks).
fn total(ctl: &Controller) -> WorkerStats {
    let mut t = WorkerStats::default();
    for w in ctl.workers() {
        t.accumulate(&w.counters.snapshot());
    }
    t
}

pub fn print_table(ctl: &Controller) {
    println!(
        "{:<12} {:<10} {:<15} {:>12} {:>14} {:>12} {:>14} {:>10}  drops by reason",
        "port", "kind", "ifname", "rx frames", "rx bytes", "tx frames", "tx bytes", "drops"
    );
    for p in ctl.ports() {
        let s = p.stats();
        let reasons: Vec<String> = s
            .drops
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{}={n}", r.name()))
            .collect();
        println!(
            "{:<12} {:<10} {:<15} {:>12} {:>14} {:>12} {:>14} {:>10}  {}",
            p.id(),
            p.spec.kind.name(),
            p.opened.ifname.as_deref().unwrap_or("-"),
            s.rx_frames,
            s.rx_bytes,
            s.tx_frames,
            s.tx_bytes,
            s.drops.total(),
            reasons.join(" ")
        );
    }
    for w in ctl.workers() {
        let s = w.counters.snapshot();
        println!(
            "worker {}{} (poll {:?}): work={}ms poll={}ms sleep={}ms sleeps={} wakeups={} completions={} rx_frames={} tx_submitted={} frames/wakeup={:.1} max_batch={} rx_starved={} rx_ring_empty={} mac learned={} moved={} evicted={} cross tx={} rx={} drops={}",
            w.id.0,
            w.cpu.map_or(String::new(), |c| format!(" on CPU {c}")),
            w.poll,
            s.work_ns / 1_000_000,
            s.poll_ns / 1_000_000,
            s.sleep_ns / 1_000_000,
            s.sleeps,
            s.wakeups,
            s.completions,
            s.rx_frames,
            s.tx_submitted,
            s.frames_per_wakeup(),
            s.max_batch,
            s.rx_starved,
            s.rx_ring_empty,
            s.mac_learned,
            s.mac_moved,
            s.mac_evicted,
            s.cross_tx,
            s.cross_rx,
            s.cross_drops
        );
    }
}

/// `--stats-json`: every port's counters (with the worker serving it at the end), every
/// worker's (with its id and CPU), and the workers' total under `worker`. A port's counters
/// are its own whichever worker served it when; a worker's count what that worker did.
pub fn write_json(path: &Path, ctl: &Controller) -> std::io::Result<()> {
    let ports: Vec<serde_json::Value> = ctl
        .ports()
        .iter()
        .map(|p| {
            let mut v = serde_json::json!({
                "id": p.id(),
                "kind": p.spec.kind.name(),
                "ifname": p.opened.ifname,
                "worker": p.worker.0,
            });
            let stats = serde_json::to_value(p.stats())?;
            if let (Some(m), serde_json::Value::Object(s)) = (v.as_object_mut(), stats) {
                m.extend(s);
            }
            Ok(v)
        })
        .collect::<Result<_, serde_json::Error>>()?;
    let workers: Vec<serde_json::Value> = ctl
        .workers()
        .iter()
        .map(|w| {
            let mut v = serde_json::to_value(w.counters.snapshot()).unwrap_or_default();
            if let Some(m) = v.as_object_mut() {
                m.insert("id".into(), w.id.0.into());
                if let Some(c) = w.cpu {
                    m.insert("cpu".into(), c.into());
                }
            }
            v
        })
        .collect();
    let doc = serde_json::json!({ "ports": ports, "worker": total(ctl), "workers": workers });
    std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
}
