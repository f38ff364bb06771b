//! The ports' connections in the controller: what the workers report closed is dropped (the
//! port waits for its next peer), listening ports accept and client ports connect again, and
//! `stream` ports raise QEMU 7.2's NETDEV_STREAM_CONNECTED / _DISCONNECTED.

use super::Controller;
use crate::qmp::event;
use ringswitch_switch::WorkerEvent;
use serde_json::json;
use std::time::Instant;

impl Controller {
    /// Follows the ports' connections: a connection the data plane reported closed is
    /// dropped (the port waits for its next peer), and ports without a peer accept or
    /// connect when they can. Called from the control loop.
    pub fn service_connections(&mut self, now: Instant) {
        let mut changed = false;
        let events: Vec<WorkerEvent> = self
            .workers
            .iter()
            .flat_map(|w| w.link.take_events())
            .collect();
        for ev in events {
            let WorkerEvent::PortClosed { port, fd, reason } = ev;
            let Some(i) = self.ports.iter().position(|p| p.index == port) else {
                continue;
            };
            let p = &mut self.ports[i];
            if p.entry.as_ref().map(|e| e.conn_fd) != Some(fd) {
                continue;
            }
            eprintln!("ringswitch: netdev '{}': {reason}", p.id());
            if !p.opened.is_connection() {
                // The data plane disabled the port for good.
                p.failed = true;
                continue;
            }
            p.opened.lost(now);
            let _ = p.refresh_entry();
            changed = true;
            self.connection_event(i, false);
        }
        self.service_vde(now);
        for i in 0..self.ports.len() {
            let p = &mut self.ports[i];
            if p.opened.poll(now) && p.refresh_entry().is_ok() {
                changed = true;
                self.connection_event(i, true);
            }
        }
        if changed {
            if let Err(e) = self.publish() {
                eprintln!("ringswitch: {}", e.desc);
            }
        }
    }

    /// When the next client connection attempt is due.
    pub fn next_attempt(&self) -> Option<Instant> {
        self.ports
            .iter()
            .filter_map(|p| p.opened.next_attempt())
            .min()
    }

    /// QEMU 7.2's NETDEV_STREAM_CONNECTED / _DISCONNECTED, for `stream` ports.
    pub(super) fn connection_event(&mut self, i: usize, connected: bool) {
        let p = &self.ports[i];
        if p.spec.kind.name() != "stream" {
            return;
        }
        let ev = if connected {
            let addr = match p
                .peer()
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            {
                Some(a) => {
                    json!({"type": "inet", "host": a.ip().to_string(), "port": a.port().to_string(), "ipv4": a.is_ipv4()})
                }
                None => json!({"type": "unix", "path": p.peer().unwrap_or("")}),
            };
            event(
                "NETDEV_STREAM_CONNECTED",
                Some(json!({"netdev-id": p.id(), "addr": addr})),
            )
        } else {
            event(
                "NETDEV_STREAM_DISCONNECTED",
                Some(json!({"netdev-id": p.id()})),
            )
        };
        self.events.push(ev);
    }
}
