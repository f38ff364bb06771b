//! `announce-self` in the controller: QEMU's RARP rounds on their timers, each frame injected
//! into the worker that owns the port it is announced for.

use super::Controller;
use crate::announce::{rarp_frame, AnnounceParams, AnnounceTimer};
use ringswitch_switch::mactable::MacEntry;
use ringswitch_switch::{MacAddr, Request};
use std::time::Instant;

impl Controller {
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
                self.link_of(p.worker).request(Request::Flood {
                    ingress: p.index,
                    frame: rarp_frame(mac).to_vec(),
                });
            }
        }
    }
}
