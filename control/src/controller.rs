//! `Controller`: the switch's desired state and the commands that change it.
//!
//! It owns every port's configuration, publishes each change to the worker as a new snapshot
//! and returns once the worker applied it (so `netdev_del` returns only when the port's
//! descriptor is no longer used). Both the command line and QMP add ports through it, so they
//! share one parser and one code path. Events it raises wait in `events` for the server to
//! send. It runs on the control thread only and never touches frames.

use crate::announce::{rarp_frame, AnnounceParams, AnnounceTimer};
use crate::qmp::{event, QmpError};
use ringswitch_backends::{open, set_carrier, NetdevSpec, OpenedPort};
use ringswitch_switch::mactable::MacEntry;
use ringswitch_switch::{
    BufferStats, ControlLink, DomainId, MacAddr, PortCounters, PortEntry, PortId, Request,
    WorkerCounters,
};
use serde_json::{json, Value};
use std::os::fd::AsFd;
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
    pub entry: Arc<PortEntry>,
    pub opened: OpenedPort,
    /// QEMU's one-shot rule for NIC_RX_FILTER_CHANGED.
    rx_filter_event: OneShot,
    pub added: Instant,
}

impl Port {
    pub fn id(&self) -> &str {
        self.spec.id.as_str()
    }

    pub fn link_up(&self) -> bool {
        self.entry.link_up
    }

    pub fn counters(&self) -> &Arc<PortCounters> {
        &self.entry.counters
    }
}

/// Switch-wide settings the controller needs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub max_ports: usize,
    pub allow_scripts: bool,
    /// The CPU the worker is pinned to, for listings.
    pub worker_cpu: Option<usize>,
}

/// The desired state of the switch.
pub struct Controller {
    link: ControlLink,
    worker: Arc<WorkerCounters>,
    config: ControllerConfig,
    ports: Vec<Port>,
    /// Indices of removed ports the worker had not released when their command returned,
    /// with the generation that removed them.
    retired: Vec<(PortId, u64)>,
    timers: Vec<AnnounceTimer>,
    events: Vec<Value>,
    quit: bool,
}

fn port_error(spec: &NetdevSpec, e: impl std::fmt::Display) -> QmpError {
    QmpError::generic(format!("netdev '{}': {e}", spec.id))
}

impl Controller {
    pub fn new(link: ControlLink, worker: Arc<WorkerCounters>, config: ControllerConfig) -> Self {
        Controller {
            link,
            worker,
            config,
            ports: Vec::new(),
            retired: Vec::new(),
            timers: Vec::new(),
            events: Vec::new(),
            quit: false,
        }
    }

    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    pub fn worker_counters(&self) -> &Arc<WorkerCounters> {
        &self.worker
    }

    fn find(&self, id: &str) -> Option<usize> {
        self.ports.iter().position(|p| p.id() == id)
    }

    /// Publishes the current ports and waits until the worker applied them.
    fn publish(&mut self) -> Result<(), QmpError> {
        let mut table: Vec<Option<Arc<PortEntry>>> = vec![None; self.config.max_ports];
        for p in &self.ports {
            table[p.index.index()] = Some(p.entry.clone());
        }
        let generation = self.link.publish(table);
        self.link
            .wait_applied(generation, APPLY_TIMEOUT)
            .map_err(|e| QmpError::generic(format!("switch did not apply the change: {e}")))
    }

    fn free_index(&mut self) -> Option<PortId> {
        let applied = self.link.applied();
        self.retired.retain(|(_, g)| *g > applied);
        (0..self.config.max_ports)
            .map(|i| PortId(i as u16))
            .find(|i| {
                !self.ports.iter().any(|p| p.index == *i) && !self.retired.iter().any(|r| r.0 == *i)
            })
    }

    /// `netdev_add`: opens the port and starts forwarding on it.
    pub fn netdev_add(&mut self, spec: NetdevSpec) -> Result<(), QmpError> {
        if self.find(spec.id.as_str()).is_some() {
            return Err(QmpError::generic(format!("Duplicate ID '{}'", spec.id)));
        }
        let index = self.free_index().ok_or_else(|| {
            QmpError::generic(format!(
                "netdev '{}': the switch has no free port (it serves at most {}; see --max-ports)",
                spec.id, self.config.max_ports
            ))
        })?;
        let opened = open(&spec, self.config.allow_scripts).map_err(|e| port_error(&spec, e))?;
        let fd = opened
            .fd
            .try_clone()
            .map_err(|e| port_error(&spec, format!("cannot duplicate descriptor: {e}")))?;
        let entry = Arc::new(PortEntry {
            name: spec.id.as_str().into(),
            fd: Arc::new(fd),
            domain: DomainId(0),
            link_up: true,
            counters: Arc::new(PortCounters::default()),
        });
        self.ports.push(Port {
            spec,
            index,
            entry,
            opened,
            rx_filter_event: OneShot::default(),
            added: Instant::now(),
        });
        if let Err(e) = self.publish() {
            let p = self.ports.pop().expect("just pushed");
            let _ = self.publish();
            drop(p);
            return Err(e);
        }
        Ok(())
    }

    /// `netdev_del`: stops forwarding on the port and waits until the worker released it,
    /// then runs its downscript (while the interface still exists, as QEMU does) and closes it.
    pub fn netdev_del(&mut self, id: &str) -> Result<(), QmpError> {
        let i = self
            .find(id)
            .ok_or_else(|| QmpError::device_not_found(id))?;
        let port = self.ports.remove(i);
        let result = self.publish();
        if result.is_err() {
            self.retired
                .push((port.index, self.link.current().generation));
        }
        let downscript = port.opened.run_downscript();
        let spec = port.spec.clone();
        drop(port);
        result?;
        downscript.map_err(|e| port_error(&spec, e))
    }

    /// `set_link`: a port whose link is down neither receives nor transmits; a tap also shows
    /// it to its kernel side as carrier.
    pub fn set_link(&mut self, name: &str, up: bool) -> Result<(), QmpError> {
        let i = self
            .find(name)
            .ok_or_else(|| QmpError::device_not_found(name))?;
        let p = &mut self.ports[i];
        if p.entry.link_up != up {
            let e = &p.entry;
            p.entry = Arc::new(PortEntry {
                name: e.name.clone(),
                fd: e.fd.clone(),
                domain: e.domain,
                link_up: up,
                counters: e.counters.clone(),
            });
            if p.opened.has_carrier() {
                set_carrier(p.opened.fd.as_fd(), up).map_err(|e| port_error(&p.spec, e))?;
            }
            self.publish()?;
        }
        Ok(())
    }

    /// `query-rx-filter`: every port accepts every frame until rx-filters become
    /// configurable, and says so. Querying a port re-arms its NIC_RX_FILTER_CHANGED event.
    pub fn query_rx_filter(&mut self, name: Option<&str>) -> Result<Value, QmpError> {
        if let Some(n) = name {
            if self.find(n).is_none() {
                return Err(QmpError::generic(format!("invalid net client name: {n}")));
            }
        }
        let mut out = Vec::new();
        for p in self.ports.iter_mut() {
            if name.is_some_and(|n| n != p.id()) {
                continue;
            }
            p.rx_filter_event.rearm();
            out.push(json!({
                "name": p.id(),
                "promiscuous": true,
                "multicast": "all",
                "unicast": "all",
                "vlan": "all",
                "broadcast-allowed": true,
                "multicast-overflow": false,
                "unicast-overflow": false,
                "main-mac": p.spec.macaddr.unwrap_or(MacAddr::ZERO).to_string(),
                "vlan-table": [],
                "unicast-table": [],
                "multicast-table": [],
            }));
        }
        Ok(Value::Array(out))
    }

    /// Raises NIC_RX_FILTER_CHANGED for a port, unless one is already waiting for a query.
    pub fn rx_filter_changed(&mut self, index: usize) {
        let p = &mut self.ports[index];
        if !p.rx_filter_event.fire() {
            return;
        }
        let data = json!({"name": p.id(), "path": format!("/ringswitch/ports/{}", p.id())});
        self.events.push(event("NIC_RX_FILTER_CHANGED", Some(data)));
    }

    /// `announce-self`: (re)starts the named timer; the first round goes out at once.
    pub fn announce_self(&mut self, params: AnnounceParams) {
        self.timers.retain(|t| t.params.id != params.id);
        if let Some(t) = AnnounceTimer::start(params, Instant::now()) {
            self.timers.push(t);
        }
        self.run_timers(Instant::now());
    }

    /// When the next timer is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.timers.iter().map(|t| t.due).min()
    }

    /// Sends every announcement round that is due.
    pub fn run_timers(&mut self, now: Instant) {
        let due: Vec<usize> = (0..self.timers.len())
            .filter(|&i| self.timers[i].due <= now)
            .collect();
        if due.is_empty() {
            return;
        }
        let learned = self.mac_entries().unwrap_or_default();
        for &i in &due {
            let interfaces = self.timers[i].params.interfaces.clone();
            self.announce_round(interfaces.as_deref(), &learned);
        }
        for &i in due.iter().rev() {
            if !self.timers[i].advance(now) {
                self.timers.remove(i);
            }
        }
    }

    /// One round: a RARP frame for every MAC behind every (named) port, out of every other
    /// port of its domain.
    fn announce_round(&self, interfaces: Option<&[String]>, learned: &[MacEntry]) {
        for p in &self.ports {
            if interfaces.is_some_and(|names| !names.iter().any(|n| n == p.id())) {
                continue;
            }
            let mut macs: Vec<MacAddr> = p.spec.macaddr.into_iter().collect();
            for e in learned.iter().filter(|e| e.port == p.index) {
                if !macs.contains(&e.mac) {
                    macs.push(e.mac);
                }
            }
            for mac in macs {
                self.link.request(Request::Flood {
                    ingress: p.index,
                    frame: rarp_frame(mac).to_vec(),
                });
            }
        }
    }

    /// The worker's live MAC table.
    pub fn mac_entries(&self) -> Result<Vec<MacEntry>, QmpError> {
        let (tx, rx) = mpsc::channel();
        if !self.link.request(Request::DumpMacs(tx)) {
            return Err(QmpError::generic("the switch has stopped"));
        }
        rx.recv_timeout(APPLY_TIMEOUT)
            .map_err(|_| QmpError::generic("the switch did not answer"))
    }

    /// The worker's buffer pool occupancy.
    pub fn buffers(&self) -> Result<BufferStats, QmpError> {
        let (tx, rx) = mpsc::channel();
        if !self.link.request(Request::Buffers(tx)) {
            return Err(QmpError::generic("the switch has stopped"));
        }
        rx.recv_timeout(APPLY_TIMEOUT)
            .map_err(|_| QmpError::generic("the switch did not answer"))
    }

    /// Forgets learned addresses (all, or behind one port); returns how many.
    pub fn clear_mac_table(&self, port: Option<&str>) -> Result<usize, QmpError> {
        let index = match port {
            Some(n) => {
                Some(self.ports[self.find(n).ok_or_else(|| QmpError::device_not_found(n))?].index)
            }
            None => None,
        };
        let (tx, rx) = mpsc::channel();
        if !self.link.request(Request::FlushMacs(index, tx)) {
            return Err(QmpError::generic("the switch has stopped"));
        }
        rx.recv_timeout(APPLY_TIMEOUT)
            .map_err(|_| QmpError::generic("the switch did not answer"))
    }

    /// The port a MAC table entry points at, by id.
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
