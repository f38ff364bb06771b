//! Counter reports at exit: a table for people, JSON for scripts.

use ringswitch_control::Port;
use ringswitch_switch::WorkerStats;
use std::path::Path;

pub fn print_table(ports: &[Port], w: &WorkerStats) {
    println!(
        "{:<12} {:<7} {:<15} {:>12} {:>14} {:>12} {:>14} {:>10}  drops by reason",
        "port", "kind", "ifname", "rx frames", "rx bytes", "tx frames", "tx bytes", "drops"
    );
    for p in ports {
        let s = p.counters().snapshot();
        let d = s.drops;
        let reasons: Vec<String> = [
            ("runt", d.runt),
            ("oversize", d.oversize),
            ("bad_source", d.bad_source),
            ("filtered", d.filtered),
            ("no_destination", d.no_destination),
            ("link_down", d.link_down),
            ("queue_full", d.queue_full),
            ("tx_error", d.tx_error),
            ("rx_error", d.rx_error),
            ("truncated", d.truncated),
            ("short_header", d.short_header),
            ("bad_session", d.bad_session),
            ("bad_cookie", d.bad_cookie),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
        println!(
            "{:<12} {:<7} {:<15} {:>12} {:>14} {:>12} {:>14} {:>10}  {}",
            p.id(),
            p.spec.kind.name(),
            p.opened.ifname.as_deref().unwrap_or("-"),
            s.rx_frames,
            s.rx_bytes,
            s.tx_frames,
            s.tx_bytes,
            d.total(),
            reasons.join(" ")
        );
    }
    println!(
        "worker: wakeups={} completions={} rx_frames={} tx_submitted={} frames/wakeup={:.1} max_batch={} rx_starved={} rx_ring_empty={} mac learned={} moved={} evicted={}",
        w.wakeups,
        w.completions,
        w.rx_frames,
        w.tx_submitted,
        if w.wakeups > 0 { w.rx_frames as f64 / w.wakeups as f64 } else { 0.0 },
        w.max_batch,
        w.rx_starved,
        w.rx_ring_empty,
        w.mac_learned,
        w.mac_moved,
        w.mac_evicted
    );
}

pub fn write_json(path: &Path, ports: &[Port], w: &WorkerStats) -> std::io::Result<()> {
    let ports: Vec<serde_json::Value> = ports
        .iter()
        .map(|p| {
            let s = p.counters().snapshot();
            serde_json::json!({
                "id": p.id(),
                "kind": p.spec.kind.name(),
                "ifname": p.opened.ifname,
                "rx_frames": s.rx_frames,
                "rx_bytes": s.rx_bytes,
                "tx_frames": s.tx_frames,
                "tx_bytes": s.tx_bytes,
                "drops": s.drops,
            })
        })
        .collect();
    let doc = serde_json::json!({ "ports": ports, "worker": w });
    std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
}
