//! Ports' rx-filters on the control side: `set-rx-filter` (an RxFilterInfo object, verbatim
//! as `query-rx-filter` returns it), `query-rx-filter`, QEMU's one-shot NIC_RX_FILTER_CHANGED,
//! and the listing the eBPF maps and a follow mode are built from. A new filter is published
//! like a link change: the workers apply it live, the port is not restarted.

use super::{Controller, Port};
use crate::follow::{FollowConfig, FollowState, Follower};
use crate::qmp::{event, QmpError};
use ringswitch_backends::rxfilter::{rx_filter_from_json, rx_filter_to_json, Name};
use ringswitch_backends::NetdevSpec;
use ringswitch_switch::{DomainId, MacAddr, PortId, RxFilter};
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// One bridge domain's ports with their rx-filters (promiscuous ones included), for whoever
/// mirrors them elsewhere (the eBPF program's maps).
#[derive(Debug, Clone)]
pub struct DomainFilters {
    pub domain: DomainId,
    /// (port, its netdev id, its filter), in port order.
    pub ports: Vec<(PortId, String, Arc<RxFilter>)>,
}

/// A new port's filter: its `rx-filter=` fitted to QEMU's capacity, else promiscuous with the
/// port's `macaddr` (zero without one) as its main address.
pub(super) fn initial(spec: &NetdevSpec) -> RxFilter {
    match &spec.rx_filter {
        Some(f) => {
            let mut f = f.clone();
            f.fit_tables();
            f
        }
        None => RxFilter::promiscuous(spec.macaddr.unwrap_or(MacAddr::ZERO)),
    }
}

impl Port {
    /// For a port that follows a QEMU NIC: where, and how it goes (`query-ports`'
    /// `rx-filter-follow`); None for others.
    pub fn follow_status(&self) -> Option<Value> {
        let (_, f) = self.follower.as_ref()?;
        let spec = self.spec.follow.as_ref()?;
        let s = f.status();
        let (state, error) = match &s.state {
            FollowState::Connecting => ("connecting", None),
            FollowState::Following => ("following", None),
            FollowState::Error(e) => ("error", Some(e.clone())),
        };
        let mut v = json!({
            "qmp": spec.qmp.display().to_string(),
            "nic": spec.nic,
            "state": state,
            "connections": s.connections,
            "reconnections": s.reconnections,
            "updates": s.updates,
        });
        if let Some(e) = error.or(s.last_error) {
            v["last-error"] = Value::String(e);
        }
        Some(v)
    }
}

fn unknown(name: &str) -> QmpError {
    QmpError::generic(format!("invalid net client name: {name}"))
}

impl Controller {
    /// Starts following the QEMU NIC `spec` names (`rx-filter-qmp=`, `rx-filter-nic=`), if
    /// it names one: a thread of its own (`crate::follow`) that hands each new filter of the
    /// NIC to `apply_followed`, tagged with a serial of this port.
    pub(super) fn follow(
        &mut self,
        spec: &NetdevSpec,
    ) -> Result<Option<(u64, Follower)>, QmpError> {
        let Some(f) = &spec.follow else {
            return Ok(None);
        };
        self.follow_serial += 1;
        let serial = self.follow_serial;
        let tx = self.follow_tx.clone();
        let follower = Follower::start(FollowConfig::new(&f.qmp, f.nic.as_str()), move |u| {
            let _ = tx.send((serial, u));
        })
        .map_err(|e| {
            QmpError::generic(format!(
                "netdev '{}': cannot start following NIC '{}' at {}: {e}",
                spec.id,
                f.nic,
                f.qmp.display()
            ))
        })?;
        Ok(Some((serial, follower)))
    }

    /// Gives the ports that follow a QEMU NIC the filters their followers brought since the
    /// last call (at once, like `set-rx-filter`: live, with NIC_RX_FILTER_CHANGED). Updates
    /// of a port removed since are dropped. Called from the control loop (every few ms).
    pub fn apply_followed(&mut self) {
        while let Ok((serial, update)) = self.follow_rx.try_recv() {
            let Some(i) = self
                .ports
                .iter()
                .position(|p| p.follower.as_ref().is_some_and(|(s, _)| *s == serial))
            else {
                continue;
            };
            if let Err(e) = self.replace_rx_filter(i, update.filter) {
                eprintln!(
                    "ringswitch: netdev '{}': the followed NIC's rx-filter could not be applied: {}",
                    self.ports[i].id(),
                    e.desc
                );
            }
        }
    }

    /// `set-rx-filter`: `args` is one RxFilterInfo object whose `name` is the port's id.
    /// Every member is checked before the port is looked up.
    pub fn set_rx_filter(&mut self, args: &Map<String, Value>) -> Result<(), QmpError> {
        let info = rx_filter_from_json(args, Name::Required)
            .map_err(|e| QmpError::generic(e.to_string()))?;
        let name = info.name.as_deref().unwrap_or_default();
        let i = self.find(name).ok_or_else(|| unknown(name))?;
        self.replace_rx_filter(i, info.filter).map(|_| ())
    }

    /// Applies the RxFilterInfo object `info` (its `name`, if any, is not looked at) to port
    /// `port`, as `set-rx-filter` would; returns whether the filter changed. For a follow
    /// mode that copies a QEMU NIC's filter to the port its guest sits behind.
    pub fn apply_rx_filter(&mut self, port: &str, info: &Value) -> Result<bool, QmpError> {
        let Value::Object(m) = info else {
            return Err(QmpError::generic(
                "an rx-filter must be an RxFilterInfo object",
            ));
        };
        let info =
            rx_filter_from_json(m, Name::Optional).map_err(|e| QmpError::generic(e.to_string()))?;
        let i = self.find(port).ok_or_else(|| unknown(port))?;
        self.replace_rx_filter(i, info.filter)
    }

    /// Gives port `i` `filter` (fitted to QEMU's capacity) and publishes it; an unchanged
    /// filter publishes nothing and raises no event. Returns whether it changed.
    fn replace_rx_filter(&mut self, i: usize, mut filter: RxFilter) -> Result<bool, QmpError> {
        filter.fit_tables();
        let p = &mut self.ports[i];
        if *p.rx_filter == filter {
            return Ok(false);
        }
        let old = std::mem::replace(&mut p.rx_filter, Arc::new(filter));
        let applied = p.refresh_entry().and_then(|()| self.publish());
        if let Err(e) = applied {
            let p = &mut self.ports[i];
            p.rx_filter = old;
            let _ = p.refresh_entry().and_then(|()| self.publish());
            return Err(e);
        }
        self.rx_filter_changed(i);
        Ok(true)
    }

    /// `query-rx-filter`: each port's filter exactly as set. Querying a port re-arms its
    /// NIC_RX_FILTER_CHANGED event.
    pub fn query_rx_filter(&mut self, name: Option<&str>) -> Result<Value, QmpError> {
        if let Some(n) = name {
            if self.find(n).is_none() {
                return Err(unknown(n));
            }
        }
        let mut out = Vec::new();
        for p in self.ports.iter_mut() {
            if name.is_some_and(|n| n != p.id()) {
                continue;
            }
            p.rx_filter_event.rearm();
            out.push(rx_filter_to_json(p.id(), &p.rx_filter));
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

    /// Every bridge domain's ports with their filters, domains in id order.
    pub fn rx_filters_by_domain(&self) -> Vec<DomainFilters> {
        let mut ports: Vec<&Port> = self.ports.iter().collect();
        ports.sort_by_key(|p| (p.domain, p.index));
        let mut out: Vec<DomainFilters> = Vec::new();
        for p in ports {
            let entry = (p.index, p.id().to_string(), p.rx_filter.clone());
            match out.last_mut() {
                Some(d) if d.domain == p.domain => d.ports.push(entry),
                _ => out.push(DomainFilters {
                    domain: p.domain,
                    ports: vec![entry],
                }),
            }
        }
        out
    }
}
