//! The commands a negotiated client may run, with QEMU's argument checking. Session commands
//! (`qmp_capabilities`, `quit`) are the server's; everything else is here.

use crate::announce::AnnounceParams;
use crate::controller::Controller;
use crate::qmp::{version, Args, QmpError, Request};
use ringswitch_backends::{chardev_from_qmp, netdev_from_qmp, Chardev, NetdevSpec};
use serde_json::{json, Map, Value};

/// Every command the server knows, as `query-commands` lists them: net.json's, QMP's own,
/// and the operator's (documented in control/qapi/ringswitch.json).
pub const COMMANDS: &[&str] = &[
    "qmp_capabilities",
    "query-version",
    "query-commands",
    "quit",
    "netdev_add",
    "netdev_del",
    "chardev-add",
    "chardev-remove",
    "set_link",
    "query-rx-filter",
    "set-rx-filter",
    "announce-self",
    "query-ports",
    "query-mac-table",
    "clear-mac-table",
    "query-workers",
    "set-port-worker",
    "query-vde-serve",
    "hostfwd-add",
    "hostfwd-remove",
    "query-usernet",
];

/// `netdev_add`'s arguments read into a port spec, refused with QMP's error text. The one
/// reader of netdev objects: QMP's `netdev_add` and the `netdevs` of a `--config` file.
pub fn netdev_add_args(args: &Map<String, Value>) -> Result<NetdevSpec, QmpError> {
    netdev_from_qmp(args).map_err(|e| QmpError::generic(e.to_string()))
}

/// `chardev-add`'s arguments read into a chardev, refused with QMP's error text (QMP's
/// `chardev-add` and the `chardevs` of a `--config` file).
pub fn chardev_add_args(args: &Map<String, Value>) -> Result<Chardev, QmpError> {
    chardev_from_qmp(args).map_err(|e| QmpError::generic(e.to_string()))
}

/// Runs `req` (not a session command) against the controller.
pub fn dispatch(ctl: &mut Controller, req: &Request) -> Result<Value, QmpError> {
    let map = req.arguments.as_ref();
    match req.execute.as_str() {
        "query-version" => {
            Args::new(map).finish()?;
            Ok(version())
        }
        "query-commands" => {
            Args::new(map).finish()?;
            Ok(COMMANDS.iter().map(|c| json!({"name": c})).collect())
        }
        "netdev_add" => {
            let empty = Map::new();
            let spec = netdev_add_args(map.unwrap_or(&empty))?;
            ctl.netdev_add(spec)?;
            Ok(json!({}))
        }
        "chardev-add" => {
            let empty = Map::new();
            let c = chardev_add_args(map.unwrap_or(&empty))?;
            ctl.chardev_add(c)?;
            // QEMU answers with the pty path for pty backends; a socket has none.
            Ok(json!({}))
        }
        "chardev-remove" => {
            let mut a = Args::new(map);
            let id = a.str("id")?;
            a.finish()?;
            ctl.chardev_remove(id)?;
            Ok(json!({}))
        }
        "netdev_del" => {
            let mut a = Args::new(map);
            let id = a.str("id")?;
            a.finish()?;
            ctl.netdev_del(id)?;
            Ok(json!({}))
        }
        "set_link" => {
            let mut a = Args::new(map);
            let name = a.str("name")?;
            let up = a.bool("up")?;
            a.finish()?;
            ctl.set_link(name, up)?;
            Ok(json!({}))
        }
        "set-port-worker" => {
            let mut a = Args::new(map);
            let id = a.str("id")?;
            let worker = a.int("worker")?;
            a.finish()?;
            ctl.set_port_worker(id, worker)?;
            Ok(json!({}))
        }
        "query-rx-filter" => {
            let mut a = Args::new(map);
            let name = a.opt_str("name")?;
            a.finish()?;
            ctl.query_rx_filter(name)
        }
        "set-rx-filter" => {
            // The arguments are one RxFilterInfo object, as query-rx-filter lists them.
            let empty = Map::new();
            ctl.set_rx_filter(map.unwrap_or(&empty))?;
            Ok(json!({}))
        }
        "announce-self" => {
            let mut a = Args::new(map);
            let initial = a.int("initial")?;
            let max = a.int("max")?;
            let rounds = a.int("rounds")?;
            let step = a.int("step")?;
            let interfaces = a
                .opt_str_list("interfaces")?
                .map(|v| v.into_iter().map(String::from).collect());
            let id = a.opt_str("id")?.unwrap_or("").to_string();
            a.finish()?;
            ctl.announce_self(AnnounceParams {
                initial,
                max,
                rounds,
                step,
                interfaces,
                id,
            });
            Ok(json!({}))
        }
        "query-ports" => {
            let mut a = Args::new(map);
            let name = a.opt_str("name")?;
            a.finish()?;
            query_ports(ctl, name)
        }
        "query-mac-table" => {
            Args::new(map).finish()?;
            let entries = ctl.mac_entries()?;
            Ok(entries
                .iter()
                .map(|e| {
                    json!({
                        "mac": e.mac.to_string(),
                        "port": ctl.port_name(e.port).unwrap_or("?"),
                        "domain": e.domain.0,
                        "age": e.age,
                    })
                })
                .collect())
        }
        "clear-mac-table" => {
            let mut a = Args::new(map);
            let port = a.opt_str("port")?;
            a.finish()?;
            let removed = ctl.clear_mac_table(port)?;
            Ok(json!({"removed": removed}))
        }
        "query-vde-serve" => {
            Args::new(map).finish()?;
            Ok(ctl.query_vde_serve())
        }
        "hostfwd-add" => {
            let mut a = Args::new(map);
            let netdev = a.opt_str("netdev")?;
            let rule = a.str("rule")?;
            a.finish()?;
            ctl.user_port(netdev)?
                .hostfwd_add(rule)
                .map_err(QmpError::generic)?;
            Ok(json!({}))
        }
        "hostfwd-remove" => {
            let mut a = Args::new(map);
            let netdev = a.opt_str("netdev")?;
            let rule = a.str("rule")?;
            a.finish()?;
            match ctl.user_port(netdev)?.hostfwd_remove(rule) {
                Ok(true) => Ok(json!({})),
                Ok(false) => Err(QmpError::generic(format!(
                    "host forwarding rule for {rule} not found"
                ))),
                Err(e) => Err(QmpError::generic(e)),
            }
        }
        "query-usernet" => {
            let mut a = Args::new(map);
            let netdev = a.opt_str("netdev")?;
            a.finish()?;
            let mut out = Vec::new();
            for p in ctl.ports() {
                let Some(u) = &p.opened.user else { continue };
                if netdev.is_some_and(|n| n != p.id()) {
                    continue;
                }
                let c = &u.counters;
                let load =
                    |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
                out.push(json!({
                    "netdev": p.id(),
                    "hub": p.domain().0,
                    "connections": u.info(),
                    "to-slirp": load(&c.to_slirp),
                    "to-slirp-joined": load(&c.to_slirp_joined),
                    "from-slirp-joined": load(&c.from_slirp_joined),
                    "from-slirp": load(&c.from_slirp),
                    "from-slirp-dropped": load(&c.from_slirp_dropped),
                    "guest-errors": load(&c.guest_errors),
                }));
            }
            if let Some(n) = netdev {
                if out.is_empty() {
                    ctl.user_port(Some(n))?;
                }
            }
            Ok(Value::Array(out))
        }
        "query-workers" => {
            Args::new(map).finish()?;
            let mut out = Vec::new();
            for w in ctl.workers() {
                let s = w.counters.snapshot();
                let b = ctl.buffers(w.id)?;
                let f = w.features;
                out.push(without_nulls(json!({
                    "id": w.id.0,
                    "cpu": w.cpu,
                    "poll": w.poll,
                    "poll-budget-us": s.poll_budget_us,
                    "work-ms": s.work_ns / 1_000_000,
                    "poll-ms": s.poll_ns / 1_000_000,
                    "sleep-ms": s.sleep_ns / 1_000_000,
                    "sleeps": s.sleeps,
                    "ports": ctl.ports().iter().filter(|p| p.worker == w.id).count(),
                    "wakeups": s.wakeups,
                    "completions": s.completions,
                    "rx-frames": s.rx_frames,
                    "tx-submitted": s.tx_submitted,
                    "frames-per-wakeup": s.frames_per_wakeup(),
                    "max-batch": s.max_batch,
                    "rx-starved": s.rx_starved,
                    "rx-ring-empty": s.rx_ring_empty,
                    "mac-learned": s.mac_learned,
                    "mac-moved": s.mac_moved,
                    "mac-evicted": s.mac_evicted,
                    "cross-tx": s.cross_tx,
                    "cross-rx": s.cross_rx,
                    "cross-drops": s.cross_drops,
                    "buffers-total": b.total,
                    "buffers-free": b.free,
                    "large-buffers-total": b.large_total,
                    "large-buffers-free": b.large_free,
                    "reads-in-flight": b.reads_in_flight,
                    "writes-in-flight": b.writes_in_flight,
                    "frames-queued": b.queued,
                    "huge-pages": w.huge_pages,
                    "io-uring": {
                        "defer-taskrun": f.defer_taskrun,
                        "registered-buffers": f.registered_buffers,
                        "registered-files": f.registered_files,
                        "recv-multishot": f.recv_multishot,
                        "read-multishot": f.read_multishot,
                        "batch-wait": f.batch_wait,
                        "taskrun-flag": f.taskrun_flag,
                    },
                })));
            }
            Ok(Value::Array(out))
        }
        other => Err(QmpError::command_not_found(format!(
            "The command {other} has not been found"
        ))),
    }
}

fn query_ports(ctl: &Controller, name: Option<&str>) -> Result<Value, QmpError> {
    if let Some(n) = name {
        if !ctl.ports().iter().any(|p| p.id() == n) {
            return Err(QmpError::device_not_found(n));
        }
    }
    let mut out = Vec::new();
    for p in ctl.ports() {
        if name.is_some_and(|n| n != p.id()) {
            continue;
        }
        let s = p.stats();
        // A repeated option (a user port's hostfwd=) lists its values in order.
        let mut options: Map<String, Value> = Map::new();
        for (k, v) in &p.spec.options {
            let v = Value::String(v.clone());
            match options.get_mut(k) {
                Some(Value::Array(a)) => a.push(v),
                Some(first) => *first = Value::Array(vec![first.take(), v]),
                None => {
                    options.insert(k.clone(), v);
                }
            }
        }
        out.push(without_nulls(json!({
            "id": p.id(),
            "type": p.spec.kind.name(),
            "options": options,
            "ifname": p.opened.ifname,
            "link-up": p.link_up(),
            "connected": p.connected(),
            "peer": p.peer(),
            "hub": p.domain().0,
            "worker": p.worker.0,
            "queue-workers": (p.queue_workers().len() > 1)
                .then(|| p.queue_workers().iter().map(|w| w.0).collect::<Vec<_>>()),
            "index": p.index.0,
            "uptime-ms": p.added.elapsed().as_millis() as u64,
            "rx-frames": s.rx_frames,
            "rx-bytes": s.rx_bytes,
            "tx-frames": s.tx_frames,
            "tx-bytes": s.tx_bytes,
            "drops": s.drops.qmp(),
            // Where the port's rx-filter is enforced: in the workers, on egress.
            "rx-filter": p.rx_filter_path(),
            "rx-filter-bpf": ctl.bpf_counts(p),
            "rx-filter-follow": p.follow_status(),
            "offloads": p.offload_names(),
            "io": p.caps().map(|c| json!({
                "rx": c.rx,
                "coalesce": c.coalesce,
                "offloads": c.offloads,
                "sends-now": c.sends_now,
            })),
        })));
    }
    Ok(Value::Array(out))
}

/// QAPI leaves an absent optional member out of an object; `null` is not a value of its type.
fn without_nulls(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.retain(|_, member| !member.is_null());
    }
    v
}
