//! `Controller`: the switch's desired state and the commands that change it.
//!
//! It owns every port's configuration, publishes each change to the workers as a new
//! snapshot and returns once every worker applied it (so `netdev_del` returns only when the
//! port's descriptor is no longer used). Each port is served by one worker, chosen when it is
//! added (its `worker=`, else the one serving the fewest ports) and changed by
//! `set-port-worker`. Both the command line and QMP add ports through it, so they
//! share one parser and one code path. Events it raises wait in `events` for the server to
//! send. It runs on the control thread only and never touches frames.

mod announcing;
mod bpf;
mod connections;
mod rx_filter;
mod vde_serve;

pub use rx_filter::DomainFilters;

use crate::announce::AnnounceTimer;
use crate::qmp::QmpError;
use ringswitch_backends::{open, Chardev, NetdevId, NetdevKind, NetdevSpec, OpenedPort};
use ringswitch_switch::mactable::MacEntry;
use ringswitch_switch::uring::RingFeatures;
use ringswitch_switch::{
    BufferStats, Caps, ControlLink, DomainId, PollMode, PortCell, PortCounters, PortEntry, PortId,
    Request, RxFilter, WorkerCounters, WorkerId,
};
use serde_json::Value;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a command waits for the worker to apply a change.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// An event that is sent once, then held back until whoever it informs has looked (QEMU's
/// rule for NIC_RX_FILTER_CHANGED: re-armed by `query-rx-filter` on that port).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OneShot {
    held: bool,
}

impl OneShot {
    /// Whether the event should be sent now; holds back the next ones.
    pub fn fire(&mut self) -> bool {
        !std::mem::replace(&mut self.held, true)
    }

    /// The client looked: the next change sends the event again.
    pub fn rearm(&mut self) {
        self.held = false;
    }
}

/// One port of the switch.
pub struct Port {
    pub spec: NetdevSpec,
    pub index: PortId,
    /// The worker serving it.
    pub worker: WorkerId,
    pub opened: OpenedPort,
    counters: Arc<PortCounters>,
    /// A multiqueue tap's further queues: the worker serving each and its counters (queue
    /// 0's are `worker` and `counters`).
    queues: Vec<(WorkerId, Arc<PortCounters>)>,
    domain: DomainId,
    link_up: bool,
    /// What the data plane serves now: None while a connection port has no peer.
    entry: Option<Arc<PortEntry>>,
    /// The data plane disabled the port (its kernel object failed for good).
    failed: bool,
    /// What the station behind the port accepts, as set (tables fitted to QEMU's capacity).
    rx_filter: Arc<RxFilter>,
    /// QEMU's one-shot rule for NIC_RX_FILTER_CHANGED.
    rx_filter_event: OneShot,
    /// The QEMU NIC whose rx-filter the port follows (`rx-filter-qmp=`, `rx-filter-nic=`),
    /// with the serial its updates carry (a port added again gets a new one).
    follower: Option<(u64, crate::follow::Follower)>,
    /// Its eBPF ingress filter, where one is attached (see `bpf.rs`).
    bpf: Option<bpf::PortBpf>,
    pub added: Instant,
}

impl Port {
    pub fn id(&self) -> &str {
        self.spec.id.as_str()
    }

    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// What the station behind the port accepts now.
    pub fn rx_filter(&self) -> &Arc<RxFilter> {
        &self.rx_filter
    }

    /// The port's counters: of all its queues, added up.
    pub fn stats(&self) -> ringswitch_switch::PortStats {
        let mut s = self.counters.snapshot();
        for (_, c) in &self.queues {
            s.accumulate(&c.snapshot());
        }
        s
    }

    /// The workers serving the port's queues, queue 0 first (one for most ports).
    pub fn queue_workers(&self) -> Vec<WorkerId> {
        std::iter::once(self.worker)
            .chain(self.queues.iter().map(|(w, _)| *w))
            .collect()
    }

    pub fn domain(&self) -> DomainId {
        self.domain
    }

    /// Whether the data plane serves the port now (a connection port has a peer, and the
    /// port did not fail).
    /// A vhost-user port is connected while a frontend has the device running (a guest
    /// whose driver is loaded): down while QEMU is away, rebooting or before the driver starts.
    /// A vde port while its vde_switch holds it.
    pub fn connected(&self) -> bool {
        let frontend = self.opened.vhost.as_ref().is_none_or(|v| {
            v.state.connected.load(std::sync::atomic::Ordering::Acquire) && v.shared.running()
        });
        self.entry.is_some() && !self.failed && frontend && self.opened.peer_up()
    }

    /// The offloads in force: a `vnet_hdr` tap's (TUNSETOFFLOAD), or what a vhost-user
    /// guest's driver negotiated to take (GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN, GUEST_UFO).
    pub fn offload_names(&self) -> Option<Vec<&'static str>> {
        use ringswitch_switch::frame::OffloadSet;
        if let Some(v) = &self.opened.vhost {
            let set = ringswitch_switch::port::vhost_user::guest_offloads(
                v.shared.with_conf(|c| c.features),
            );
            let names: Vec<&'static str> = [
                (OffloadSet::CSUM, "csum"),
                (OffloadSet::TSO4, "tso4"),
                (OffloadSet::TSO6, "tso6"),
                (OffloadSet::ECN, "tso-ecn"),
                (OffloadSet::UFO, "ufo"),
            ]
            .into_iter()
            .filter(|(o, _)| set.contains(*o))
            .map(|(_, n)| n)
            .collect();
            return (!names.is_empty()).then_some(names);
        }
        (self.opened.offloads != 0)
            .then(|| ringswitch_backends::tap::offload_names(self.opened.offloads))
    }

    /// The peer of a connection or datagram port, if known.
    pub fn peer(&self) -> Option<&str> {
        self.opened.conn().and_then(|c| c.peer.as_deref())
    }

    /// What the data plane's port can do, once its worker attached it.
    pub fn caps(&self) -> Option<Caps> {
        self.entry.as_ref().and_then(|e| e.port.caps())
    }

    /// Brings `entry` in line with the port's connection, link and domain; keeps the same
    /// port value (so the data plane sees the same port) while the connection is the same.
    fn refresh_entry(&mut self) -> Result<(), QmpError> {
        let Some(conn) = self.opened.conn() else {
            self.entry = None;
            return Ok(());
        };
        let conn_fd = conn.fd.as_raw_fd();
        let (port, cells) = match &self.entry {
            Some(e) if e.conn_fd == conn_fd => (
                e.port.clone(),
                e.queues.iter().map(|q| q.port.clone()).collect(),
            ),
            _ => {
                let made = self.opened.make_port(self.spec.id.as_str()).map_err(|e| {
                    QmpError::generic(format!(
                        "netdev '{}': cannot duplicate descriptor: {e}",
                        self.spec.id
                    ))
                })?;
                let more = self
                    .opened
                    .make_queue_ports(self.spec.id.as_str())
                    .map_err(|e| {
                        QmpError::generic(format!(
                            "netdev '{}': cannot duplicate a queue's descriptor: {e}",
                            self.spec.id
                        ))
                    })?;
                match made {
                    Some(p) => (
                        PortCell::new(p),
                        more.into_iter().map(PortCell::new).collect::<Vec<_>>(),
                    ),
                    None => {
                        self.entry = None;
                        return Ok(());
                    }
                }
            }
        };
        let queues = cells
            .into_iter()
            .zip(&self.queues)
            .map(|(port, (worker, counters))| ringswitch_switch::QueueEntry {
                worker: *worker,
                port,
                counters: counters.clone(),
            })
            .collect();
        self.entry = Some(Arc::new(PortEntry {
            id: self.index,
            name: self.spec.id.as_str().into(),
            port,
            worker: self.worker,
            domain: self.domain,
            link_up: self.link_up,
            rx_filter: (!self.rx_filter.accepts_all()).then(|| self.rx_filter.clone()),
            counters: self.counters.clone(),
            conn_fd,
            queues,
        }));
        Ok(())
    }
}

/// One worker as the control plane sees it.
pub struct WorkerRef {
    pub id: WorkerId,
    /// The CPU it is pinned to, for listings.
    pub cpu: Option<usize>,
    /// How it waits for completions.
    pub poll: PollMode,
    /// What its io_uring accepted at start, for listings.
    pub features: RingFeatures,
    pub huge_pages: bool,
    pub counters: Arc<WorkerCounters>,
    pub link: ControlLink,
}

/// Switch-wide settings the controller needs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub max_ports: usize,
    pub allow_scripts: bool,
    /// Filter in the kernel too, with the eBPF ingress filter, where it loads.
    pub rx_filter_bpf: bool,
    /// The MAC table's capacity (the kernel's learned-address maps are as large).
    pub mac_table_size: usize,
}

/// A `hubport` that placed a netdev in a hub.
struct HubPort {
    id: NetdevId,
    netdev: NetdevId,
    hubid: u16,
}

/// The desired state of the switch.
pub struct Controller {
    hubports: Vec<HubPort>,
    workers: Vec<WorkerRef>,
    config: ControllerConfig,
    ports: Vec<Port>,
    /// Indices of removed ports the worker had not released when their command returned,
    /// with the generation that removed them.
    retired: Vec<(PortId, u64)>,
    timers: Vec<AnnounceTimer>,
    events: Vec<Value>,
    quit: bool,
    /// Chardevs (`-chardev`, `chardev-add`): the sockets vhost-user ports speak over.
    chardevs: std::collections::BTreeMap<String, Chardev>,
    /// Directories where ringswitch serves vde2's control protocol (`--vde-serve`).
    vde_servers: Vec<ringswitch_backends::vde_serve::VdeServer>,
    /// Filters of followed QEMU NICs, from their follower threads (see `rx_filter.rs`).
    follow_tx: std::sync::mpsc::Sender<(u64, crate::follow::FilterUpdate)>,
    follow_rx: std::sync::mpsc::Receiver<(u64, crate::follow::FilterUpdate)>,
    follow_serial: u64,
    /// The eBPF ingress filter: off, or one set of maps per domain (see `bpf.rs`).
    bpf: bpf::BpfState,
}

fn port_error(spec: &NetdevSpec, e: impl std::fmt::Display) -> QmpError {
    QmpError::generic(format!("netdev '{}': {e}", spec.id))
}

impl Controller {
    /// A controller of `workers` (at least one).
    pub fn new(workers: Vec<WorkerRef>, config: ControllerConfig) -> Self {
        assert!(!workers.is_empty(), "a switch needs a worker");
        let (follow_tx, follow_rx) = std::sync::mpsc::channel();
        let bpf = bpf::BpfState::new(config.rx_filter_bpf, config.mac_table_size);
        Controller {
            hubports: Vec::new(),
            workers,
            config,
            ports: Vec::new(),
            retired: Vec::new(),
            timers: Vec::new(),
            events: Vec::new(),
            quit: false,
            chardevs: std::collections::BTreeMap::new(),
            vde_servers: Vec::new(),
            follow_tx,
            follow_rx,
            follow_serial: 0,
            bpf,
        }
    }

    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    /// The workers, in id order.
    pub fn workers(&self) -> &[WorkerRef] {
        &self.workers
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.ports.iter().position(|p| p.id() == id)
    }

    fn link_of(&self, worker: WorkerId) -> &ControlLink {
        let w = self.workers.iter().find(|w| w.id == worker);
        &w.unwrap_or(&self.workers[0]).link
    }

    /// The generation every worker has applied.
    fn applied(&self) -> u64 {
        self.workers
            .iter()
            .map(|w| w.link.applied())
            .min()
            .unwrap_or(0)
    }

    /// The generation of the configuration in force.
    fn generation(&self) -> u64 {
        self.workers[0].link.current().generation
    }

    /// Publishes the current ports and waits until every worker applied them.
    fn publish(&mut self) -> Result<(), QmpError> {
        let mut table: Vec<Option<Arc<PortEntry>>> = vec![None; self.config.max_ports];
        for p in &self.ports {
            table[p.index.index()] = p.entry.clone();
        }
        let generations: Vec<u64> = self
            .workers
            .iter()
            .map(|w| w.link.publish(table.clone()))
            .collect();
        for (w, g) in self.workers.iter().zip(generations) {
            w.link.wait_applied(g, APPLY_TIMEOUT).map_err(|e| {
                QmpError::generic(format!("switch did not apply the change: {} {e}", w.id))
            })?;
        }
        // The kernel-side filter follows (after the workers: a port the kernel newly
        // passes frames for is served by then).
        self.sync_bpf();
        Ok(())
    }

    /// Worker `n` if the switch has it; otherwise a GenericError naming the valid range,
    /// worded for `what` (the option or argument that named it).
    fn worker_at(&self, n: u8, what: &str) -> Result<WorkerId, QmpError> {
        let id = WorkerId(n);
        if self.workers.iter().any(|w| w.id == id) {
            return Ok(id);
        }
        let range = match self.workers.len() {
            1 => "worker 0 only (one worker; start with --cores to run more)".to_string(),
            n => format!("workers 0 to {} (--cores lists {n} CPUs)", n - 1),
        };
        Err(QmpError::generic(format!(
            "{what}: no worker {} in this switch; it has {range}",
            id.0
        )))
    }

    /// The worker that serves a new port: the one its `worker=` names, else the least loaded.
    fn chosen_worker(&self, spec: &NetdevSpec) -> Result<WorkerId, QmpError> {
        match spec.worker {
            Some(n) => self.worker_at(n, &format!("netdev '{}': Parameter 'worker'", spec.id)),
            None => Ok(self.least_loaded()),
        }
    }

    /// The worker with the fewest ports (the lowest id among equals).
    fn least_loaded(&self) -> WorkerId {
        self.workers
            .iter()
            .map(|w| (self.ports.iter().filter(|p| p.worker == w.id).count(), w.id))
            .min()
            .map(|(_, id)| id)
            .unwrap_or_default()
    }

    fn free_index(&mut self) -> Option<PortId> {
        let applied = self.applied();
        self.retired.retain(|(_, g)| *g > applied);
        (0..self.config.max_ports)
            .map(|i| PortId(i as u16))
            .find(|i| {
                !self.ports.iter().any(|p| p.index == *i) && !self.retired.iter().any(|r| r.0 == *i)
            })
    }

    /// `netdev_add`: opens the port and starts forwarding on it.
    pub fn netdev_add(&mut self, spec: NetdevSpec) -> Result<(), QmpError> {
        if self.find(spec.id.as_str()).is_some() || self.hubports.iter().any(|h| h.id == spec.id) {
            return Err(QmpError::generic(format!("Duplicate ID '{}'", spec.id)));
        }
        if let NetdevKind::HubPort { hubid, netdev } = &spec.kind {
            if spec.worker.is_some() {
                return Err(port_error(
                    &spec,
                    "Parameter 'worker': a hubport places a netdev in a hub; give worker= on that netdev",
                ));
            }
            if spec.rx_filter.is_some() || spec.follow.is_some() {
                return Err(port_error(
                    &spec,
                    "Parameter 'rx-filter': a hubport places a netdev in a hub; give rx-filter= (or rx-filter-qmp=, rx-filter-nic=) on that netdev",
                ));
            }
            return self.hubport_add(spec.id.clone(), *hubid, netdev.clone());
        }
        // Before anything is opened.
        self.chosen_worker(&spec)?;
        let index = self.free_index().ok_or_else(|| {
            QmpError::generic(format!(
                "netdev '{}': the switch has no free port (it serves at most {}; see --max-ports)",
                spec.id, self.config.max_ports
            ))
        })?;
        if let Some(fd) = spec.inherited_fd() {
            if let Some(other) = self
                .ports
                .iter()
                .find(|p| p.spec.inherited_fd() == Some(fd))
            {
                return Err(port_error(
                    &spec,
                    format!(
                        "descriptor {fd} is already netdev '{}'; a descriptor serves one port",
                        other.id()
                    ),
                ));
            }
        }
        let chardev =
            match &spec.kind {
                NetdevKind::VhostUser { chardev, .. } => {
                    if let Some(other) = self.ports.iter().find(|p| {
                    matches!(&p.spec.kind, NetdevKind::VhostUser { chardev: c, .. } if c == chardev)
                }) {
                    return Err(port_error(
                        &spec,
                        format!("Chardev '{chardev}' is busy (netdev '{}' uses it)", other.id()),
                    ));
                }
                    Some(self.chardevs.get(chardev).ok_or_else(|| {
                        port_error(&spec, format!("chardev \"{chardev}\" not found"))
                    })?)
                }
                _ => None,
            };
        let opened =
            open(&spec, self.config.allow_scripts, chardev).map_err(|e| port_error(&spec, e))?;
        self.insert(spec, index, opened)
    }

    /// Starts forwarding on an opened port at `index` (free, from `free_index`).
    fn insert(
        &mut self,
        spec: NetdevSpec,
        index: PortId,
        mut opened: OpenedPort,
    ) -> Result<(), QmpError> {
        let worker = self.chosen_worker(&spec)?;
        // A multiqueue port's queues (a tap's queues, a vhost-user port's instances, one per
        // worker at most) go to the workers after queue 0's, round the ring.
        let n = self.workers.len();
        opened.spread(n);
        let first = self
            .workers
            .iter()
            .position(|w| w.id == worker)
            .unwrap_or(0);
        let queues = (1..opened.queues())
            .map(|k| {
                (
                    self.workers[(first + k) % n].id,
                    Arc::new(PortCounters::default()),
                )
            })
            .collect();
        let rx_filter = Arc::new(rx_filter::initial(&spec));
        let follower = self.follow(&spec)?;
        let mut port = Port {
            spec,
            index,
            worker,
            opened,
            counters: Arc::new(PortCounters::default()),
            queues,
            domain: DomainId(0),
            link_up: true,
            entry: None,
            failed: false,
            rx_filter,
            rx_filter_event: OneShot::default(),
            follower,
            bpf: None,
            added: Instant::now(),
        };
        port.refresh_entry()?;
        let connected = port.connected();
        self.ports.push(port);
        if let Err(e) = self.publish() {
            let p = self.ports.pop().expect("just pushed");
            let _ = self.publish();
            drop(p);
            return Err(e);
        }
        if connected {
            self.connection_event(self.ports.len() - 1, true);
        }
        Ok(())
    }

    /// `netdev_del`: stops forwarding on the port and waits until the worker released it,
    /// then runs its downscript (while the interface still exists, as QEMU does) and closes it.
    /// `-chardev` / `chardev-add`: a socket for vhost-user ports to use.
    pub fn chardev_add(&mut self, c: Chardev) -> Result<(), QmpError> {
        if self.chardevs.contains_key(&c.id) {
            return Err(QmpError::generic(format!(
                "attempt to add duplicate property '{}' to object (type 'container')",
                c.id
            )));
        }
        self.chardevs.insert(c.id.clone(), c);
        Ok(())
    }

    /// `chardev-remove`: refused while a netdev uses it, as in QEMU.
    pub fn chardev_remove(&mut self, id: &str) -> Result<(), QmpError> {
        if !self.chardevs.contains_key(id) {
            return Err(QmpError::generic(format!("Chardev '{id}' not found")));
        }
        if self
            .ports
            .iter()
            .any(|p| matches!(&p.spec.kind, NetdevKind::VhostUser { chardev, .. } if chardev == id))
        {
            return Err(QmpError::generic(format!("Chardev '{id}' is busy")));
        }
        self.chardevs.remove(id);
        Ok(())
    }

    pub fn netdev_del(&mut self, id: &str) -> Result<(), QmpError> {
        if let Some(h) = self.hubports.iter().position(|h| h.id.as_str() == id) {
            let hp = self.hubports.remove(h);
            return self.place(hp.netdev.as_str(), DomainId(0));
        }
        let i = self
            .find(id)
            .ok_or_else(|| QmpError::device_not_found(id))?;
        self.hubports.retain(|h| h.netdev.as_str() != id);
        let port = self.ports.remove(i);
        let result = self.publish();
        if result.is_err() {
            let generation = self.generation();
            self.retired.push((port.index, generation));
        }
        let downscript = port.opened.run_downscript();
        let spec = port.spec.clone();
        drop(port);
        result?;
        downscript.map_err(|e| port_error(&spec, e))
    }

    /// `hubport,hubid=N,netdev=ID`: puts port ID in bridge domain N (ports in different hubs
    /// never exchange frames). Without `netdev=` there is nothing to place: a switch has no
    /// NIC to plug into a bare hub port.
    fn hubport_add(
        &mut self,
        id: NetdevId,
        hubid: u16,
        netdev: Option<NetdevId>,
    ) -> Result<(), QmpError> {
        let Some(netdev) = netdev else {
            return Err(QmpError::generic(format!(
                "netdev '{id}': Parameter 'netdev' is missing (a ringswitch hubport places an existing netdev in hub {hubid})"
            )));
        };
        if self.find(netdev.as_str()).is_none() {
            return Err(QmpError::generic(format!(
                "netdev '{id}': Parameter 'netdev': no netdev '{netdev}' (add it first)"
            )));
        }
        if self.hubports.iter().any(|h| h.netdev == netdev) {
            return Err(QmpError::generic(format!(
                "netdev '{id}': netdev '{netdev}' is already in a hub"
            )));
        }
        self.place(netdev.as_str(), DomainId(hubid))?;
        self.hubports.push(HubPort { id, netdev, hubid });
        Ok(())
    }

    /// Moves a port to a bridge domain.
    fn place(&mut self, id: &str, domain: DomainId) -> Result<(), QmpError> {
        let Some(i) = self.find(id) else {
            return Ok(());
        };
        let p = &mut self.ports[i];
        if p.domain != domain {
            p.domain = domain;
            p.refresh_entry()?;
            self.publish()?;
        }
        Ok(())
    }

    /// The hub ports, as (id, hub id, placed netdev).
    pub fn hubports(&self) -> impl Iterator<Item = (&str, u16, &str)> {
        self.hubports
            .iter()
            .map(|h| (h.id.as_str(), h.hubid, h.netdev.as_str()))
    }

    /// `set_link`: a port whose link is down neither receives nor transmits; a tap also shows
    /// it to its kernel side as carrier.
    pub fn set_link(&mut self, name: &str, up: bool) -> Result<(), QmpError> {
        let i = self
            .find(name)
            .ok_or_else(|| QmpError::device_not_found(name))?;
        let p = &mut self.ports[i];
        if p.link_up != up {
            p.link_up = up;
            p.refresh_entry()?;
            p.opened
                .set_carrier(up)
                .map_err(|e| port_error(&p.spec, e))?;
            self.publish()?;
        }
        Ok(())
    }

    /// `set-port-worker`: moves a live port to another worker. The port's entry is published
    /// again with the same `PortCell` and the new worker: the old worker drains the port and
    /// hands it back through the cell, the new one takes it; returns once every worker applied
    /// the change. Frames of other ports are not touched; those the moving port receives meanwhile
    /// wait in its kernel socket or tap.
    pub fn set_port_worker(&mut self, id: &str, worker: i64) -> Result<(), QmpError> {
        let i = self
            .find(id)
            .ok_or_else(|| QmpError::device_not_found(id))?;
        let n = u8::try_from(worker).map_err(|_| {
            QmpError::generic(format!(
                "Parameter 'worker': no worker {worker}; workers are numbered from 0 (query-workers lists them)"
            ))
        })?;
        let to = self.worker_at(n, "Parameter 'worker'")?;
        let p = &mut self.ports[i];
        if p.worker == to {
            return Ok(());
        }
        let from = std::mem::replace(&mut p.worker, to);
        // A multiqueue port keeps one queue per worker: a queue already on `to` trades places
        // with queue 0.
        let swapped: Vec<usize> = (0..p.queues.len())
            .filter(|&k| p.queues[k].0 == to)
            .collect();
        for &k in &swapped {
            p.queues[k].0 = from;
        }
        if let Err(e) = p.refresh_entry() {
            p.worker = from;
            for &k in &swapped {
                p.queues[k].0 = to;
            }
            return Err(e);
        }
        self.publish()
    }

    /// Asks `link`'s worker something and waits (bounded) for the answer.
    fn ask<T>(
        link: &ControlLink,
        make: impl FnOnce(mpsc::Sender<T>) -> Request,
    ) -> Result<T, QmpError> {
        let (tx, rx) = mpsc::channel();
        if !link.request(make(tx)) {
            return Err(QmpError::generic("the switch has stopped"));
        }
        rx.recv_timeout(APPLY_TIMEOUT)
            .map_err(|_| QmpError::generic("the switch did not answer"))
    }

    /// The live MAC table (one table, shared by every worker: any worker can list it).
    pub fn mac_entries(&self) -> Result<Vec<MacEntry>, QmpError> {
        Self::ask(&self.workers[0].link, Request::DumpMacs)
    }

    /// A worker's buffer pool occupancy.
    pub fn buffers(&self, worker: WorkerId) -> Result<BufferStats, QmpError> {
        Self::ask(self.link_of(worker), Request::Buffers)
    }

    /// Forgets learned addresses (all, or behind one port); returns how many.
    pub fn clear_mac_table(&self, port: Option<&str>) -> Result<usize, QmpError> {
        let index = match port {
            Some(n) => {
                Some(self.ports[self.find(n).ok_or_else(|| QmpError::device_not_found(n))?].index)
            }
            None => None,
        };
        // One table shared by every worker: one worker flushes it.
        Self::ask(&self.workers[0].link, |tx| Request::FlushMacs(index, tx))
    }

    /// The port a MAC table entry points at, by id.
    /// The libslirp service of user port `id`, or of the first user port when `id` is None
    /// (as QEMU's HMP `hostfwd_add` picks one); errors in HMP's words.
    pub fn user_port(
        &self,
        id: Option<&str>,
    ) -> Result<&ringswitch_backends::user::Service, QmpError> {
        match id {
            Some(id) => {
                let p =
                    self.ports.iter().find(|p| p.id() == id).ok_or_else(|| {
                        QmpError::generic(format!("unrecognized netdev id '{id}'"))
                    })?;
                p.opened
                    .user
                    .as_ref()
                    .ok_or_else(|| QmpError::generic("invalid device specified"))
            }
            None => self
                .ports
                .iter()
                .find_map(|p| p.opened.user.as_ref())
                .ok_or_else(|| QmpError::generic("user mode network stack not in use")),
        }
    }

    pub fn port_name(&self, index: PortId) -> Option<&str> {
        self.ports.iter().find(|p| p.index == index).map(Port::id)
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// Events raised since the last call.
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }

    /// Events raised and not yet taken.
    pub fn peek_events(&self) -> &[Value] {
        &self.events
    }

    pub fn push_event(&mut self, ev: Value) {
        self.events.push(ev);
    }

    pub fn request_quit(&mut self) {
        self.quit = true;
    }

    pub fn quit_requested(&self) -> bool {
        self.quit
    }

    /// After the worker stopped: runs every port's downscript and closes it, in reverse order
    /// of creation.
    pub fn close_all(&mut self) {
        while let Some(p) = self.ports.pop() {
            if let Err(e) = p.opened.run_downscript() {
                eprintln!("ringswitch: netdev '{}': {e}", p.id());
            }
        }
        self.vde_servers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::OneShot;

    #[test]
    fn rx_filter_event_is_sent_once_until_queried() {
        let mut g = OneShot::default();
        assert!(g.fire(), "the first change is announced");
        assert!(!g.fire() && !g.fire(), "later changes are held back");
        g.rearm();
        assert!(g.fire(), "after a query the next change is announced again");
        assert!(!g.fire());
    }
}
