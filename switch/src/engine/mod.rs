//! `Engine`: the forwarding decision for batches of received frames, with no I/O.
//!
//! The engine holds the MAC table (its own, or one shared with other workers' engines) and
//! owns the port table of one worker. `forward` takes a batch of received frames and appends
//! each to the transmit queues of the ports it must leave by: validate, learn the source, look
//! up the destination, unicast or flood within the bridge domain, never back out of the
//! ingress port. It never blocks and never allocates; the only lock it takes is a MAC table
//! bucket's, for a few stores, when a station is new or moved (lookups and refreshes take
//! none; see `mactable`). It knows ports by their switch-wide `PortId` (what the MAC table
//! learns, what frames and transmit queues name); which worker slot serves a port is the
//! worker's business.
//!
//! Rx-filters: a port may carry an `RxFilter`, what the station behind it accepts. Unicast to
//! a learned port and every flood target are checked against it before the frame is queued
//! (only the Ethernet header is looked at, so an offloaded segment is judged like any frame);
//! a refused frame is not queued, costs the port no write and no wake-up, and is counted on
//! that port as `filtered`. A port of another worker is checked here, by the sender, so a
//! refused frame never crosses. A port without a filter (promiscuous, the default) costs the
//! unicast path one branch, and a domain where no port has one floods as if filters did not
//! exist.
//!
//! Counters: drops decided on receive (runt, oversize, bad source, same port, no destination,
//! link down on ingress) are charged to the ingress port, whose owner this worker is. Drops
//! charged to an egress port (its queue full, its link down, its rx-filter refusing) are
//! tallied in the transmit queues and folded into that port's counters once per batch by its
//! owner (`fold_egress`), so each counter keeps a single writer however ports are spread over
//! workers.
//!
//! Buffer ownership: a received buffer holds one reference. Unicast moves that reference to a
//! transmit queue; a flood to k ports adds k-1 references; a drop releases it. Whoever completes
//! a transmission releases one reference.

use crate::counters::{DropReason, PortCounters, WorkerCounters};
use crate::ethernet::HEADER_LEN;
use crate::frame::Frame;
use crate::ids::{DomainId, PortId};
use crate::mac::MacAddr;
use crate::mactable::{Learned, MacTable, Seconds};
use crate::pool::BufferPool;
use crate::rxfilter::RxFilter;
use crate::txqueue::TxQueues;
use std::sync::Arc;

mod offload;

/// Configuration of one port as the engine sees it.
#[derive(Debug, Clone)]
pub struct PortConf {
    pub domain: DomainId,
    pub link_up: bool,
    /// The frames with offload metadata the port takes as they are (a vnet_hdr tap: all; a
    /// vhost-user guest: what it negotiated); others get them segmented and checksummed.
    pub offloads: crate::frame::OffloadSet,
}

struct PortSlot {
    conf: PortConf,
    /// The port's counters where this engine's worker owns the port (their one writer);
    /// `None` for a port of another worker (whose drops decided here are counted with
    /// `PortCounters::count_remote_drops`, on `remote_counters`).
    counters: Option<Arc<PortCounters>>,
    remote_counters: Option<Arc<PortCounters>>,
    /// A port of another worker: what it takes of offloads, as its owner last said.
    remote: Option<Arc<crate::config::PortCell>>,
    /// What the station behind the port accepts; `None` accepts every frame (promiscuous),
    /// so the common case costs one branch.
    filter: Option<Arc<RxFilter>>,
}

impl PortSlot {
    #[inline]
    fn offloads(&self) -> crate::frame::OffloadSet {
        match &self.remote {
            Some(cell) => cell.offloads(),
            None => self.conf.offloads,
        }
    }

    /// Whether the port's rx-filter refuses `frame`.
    #[inline]
    fn refuses(&self, frame: &[u8]) -> bool {
        match &self.filter {
            None => false,
            Some(flt) => !flt.accepts(frame),
        }
    }
}

/// The flood targets of one bridge domain: its ports whose link is up, and whether any of
/// them has an rx-filter (then each target is checked; otherwise none is).
struct FloodSet {
    domain: DomainId,
    ports: Vec<PortId>,
    filtered: bool,
}

/// Learning-switch forwarding over a port table.
pub struct Engine {
    /// By port id.
    ports: Vec<Option<PortSlot>>,
    /// Per domain, the ports whose link is up (flood targets).
    flood: Vec<FloodSet>,
    table: Arc<MacTable>,
    max_frame: usize,
    stats: Arc<WorkerCounters>,
    /// Scratch space of the offload path (no allocation per frame).
    scratch: offload::Scratch,
}

/// Why the engine refused a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("port index {0} is beyond the engine's {1} ports")]
    TooMany(u16, usize),
    #[error("{0} is already in use")]
    InUse(PortId),
    #[error("{0} does not exist")]
    NoSuchPort(PortId),
}

impl Engine {
    /// An engine for up to `max_ports` ports (ids `0..max_ports`), a MAC table of
    /// `mac_capacity` entries ageing after `ageing` seconds, accepting frames up to
    /// `max_frame` bytes.
    pub fn new(
        max_ports: usize,
        mac_capacity: usize,
        ageing: Seconds,
        max_frame: usize,
        stats: Arc<WorkerCounters>,
    ) -> Engine {
        let table = Arc::new(MacTable::new(mac_capacity, ageing));
        Engine::with_table(max_ports, max_frame, stats, table)
    }

    /// An engine for up to `max_ports` ports that learns into, and looks up in, `table`
    /// (which other engines may share), accepting frames up to `max_frame` bytes.
    pub fn with_table(
        max_ports: usize,
        max_frame: usize,
        stats: Arc<WorkerCounters>,
        table: Arc<MacTable>,
    ) -> Engine {
        Engine {
            ports: (0..max_ports).map(|_| None).collect(),
            flood: Vec::new(),
            table,
            max_frame,
            stats,
            scratch: offload::Scratch::new(max_ports),
        }
    }

    pub fn max_ports(&self) -> usize {
        self.ports.len()
    }

    /// Adds the port `id`.
    pub fn add_port(
        &mut self,
        id: PortId,
        conf: PortConf,
        counters: Arc<PortCounters>,
    ) -> Result<(), EngineError> {
        self.insert(
            id,
            PortSlot {
                conf,
                counters: Some(counters),
                remote_counters: None,
                remote: None,
                filter: None,
            },
        )
    }

    fn insert(&mut self, id: PortId, slot: PortSlot) -> Result<(), EngineError> {
        let n = self.ports.len();
        let entry = self
            .ports
            .get_mut(id.index())
            .ok_or(EngineError::TooMany(id.0, n))?;
        if entry.is_some() {
            return Err(EngineError::InUse(id));
        }
        *entry = Some(slot);
        self.rebuild_flood();
        Ok(())
    }

    /// Adds the port `id` of another worker: frames are forwarded to it (the worker hands
    /// them over), none are received from it here, and its counters are not touched here.
    pub fn add_remote_port(
        &mut self,
        id: PortId,
        conf: PortConf,
        cell: Arc<crate::config::PortCell>,
        counters: Arc<PortCounters>,
    ) -> Result<(), EngineError> {
        self.insert(
            id,
            PortSlot {
                conf,
                counters: None,
                remote_counters: Some(counters),
                remote: Some(cell),
                filter: None,
            },
        )
    }

    /// Whether port `id` is one of this engine's worker (not of another worker).
    #[inline]
    pub fn is_local(&self, id: PortId) -> bool {
        matches!(self.ports.get(id.index()), Some(Some(p)) if p.remote.is_none())
    }

    /// Removes a port of another worker; what was learned on it stays (its owner forgets it).
    pub fn forget_remote_port(&mut self, id: PortId) -> Result<(), EngineError> {
        match self.ports.get_mut(id.index()) {
            Some(e @ Some(_)) if e.as_ref().is_some_and(|p| p.remote.is_some()) => {
                *e = None;
                self.rebuild_flood();
                Ok(())
            }
            _ => Err(EngineError::NoSuchPort(id)),
        }
    }

    fn port_mut(&mut self, id: PortId) -> Result<&mut PortSlot, EngineError> {
        self.ports
            .get_mut(id.index())
            .and_then(Option::as_mut)
            .ok_or(EngineError::NoSuchPort(id))
    }

    /// Removes a port and forgets the addresses learned on it.
    pub fn remove_port(&mut self, id: PortId) -> Result<(), EngineError> {
        let entry = self
            .ports
            .get_mut(id.index())
            .ok_or(EngineError::NoSuchPort(id))?;
        if entry.take().is_none() {
            return Err(EngineError::NoSuchPort(id));
        }
        self.table.flush_port(id);
        self.rebuild_flood();
        Ok(())
    }

    /// Sets a port's link state. A port whose link is down neither receives nor transmits.
    pub fn set_link(&mut self, id: PortId, up: bool) -> Result<(), EngineError> {
        self.port_mut(id)?.conf.link_up = up;
        self.rebuild_flood();
        Ok(())
    }

    /// Sets what the station behind port `id` accepts (its own port or one of another
    /// worker); `None`, or a filter that accepts everything, makes it promiscuous. Applies
    /// from the next frame on; nothing queued is touched.
    pub fn set_rx_filter(
        &mut self,
        id: PortId,
        filter: Option<Arc<RxFilter>>,
    ) -> Result<(), EngineError> {
        self.port_mut(id)?.filter = filter.filter(|f| !f.accepts_all());
        self.rebuild_flood();
        Ok(())
    }

    /// Port `id`'s rx-filter, `None` while it accepts every frame.
    pub fn rx_filter(&self, id: PortId) -> Option<&Arc<RxFilter>> {
        self.ports.get(id.index())?.as_ref()?.filter.as_ref()
    }

    /// What port `id` takes of offloaded frames now (a vhost-user guest negotiates it, and
    /// again after each reset).
    pub fn set_offloads(
        &mut self,
        id: PortId,
        offloads: crate::frame::OffloadSet,
    ) -> Result<(), EngineError> {
        self.port_mut(id)?.conf.offloads = offloads;
        Ok(())
    }

    /// Moves a port to another bridge domain; what was learned on it is forgotten.
    pub fn set_domain(&mut self, id: PortId, domain: DomainId) -> Result<(), EngineError> {
        self.port_mut(id)?.conf.domain = domain;
        self.table.flush_port(id);
        self.rebuild_flood();
        Ok(())
    }

    /// Sends a frame the switch originates (e.g. an announcement) out of every port of
    /// `ingress`'s domain except `ingress`, without learning its source. Takes over the
    /// frame's buffer reference.
    pub fn flood_from(&self, pool: &mut BufferPool, f: Frame, tx: &mut TxQueues) {
        match self.ports.get(f.ingress.index()).and_then(Option::as_ref) {
            Some(p) => self.flood(pool, p.conf.domain, &f, tx),
            None => pool.release(f.buf),
        }
    }

    pub fn port_counters(&self, id: PortId) -> Option<&Arc<PortCounters>> {
        self.ports.get(id.index())?.as_ref()?.counters.as_ref()
    }

    pub fn mac_table(&self) -> &MacTable {
        &self.table
    }

    /// The table itself, to share it with another engine.
    pub fn mac_table_arc(&self) -> &Arc<MacTable> {
        &self.table
    }

    fn rebuild_flood(&mut self) {
        self.flood.clear();
        for (i, slot) in self.ports.iter().enumerate() {
            let Some(s) = slot else { continue };
            if !s.conf.link_up {
                continue;
            }
            let (d, id, filtered) = (s.conf.domain, PortId(i as u16), s.filter.is_some());
            match self.flood.iter_mut().find(|set| set.domain == d) {
                Some(set) => {
                    set.ports.push(id);
                    set.filtered |= filtered;
                }
                None => self.flood.push(FloodSet {
                    domain: d,
                    ports: vec![id],
                    filtered,
                }),
            }
        }
    }

    /// Decides the fate of every frame in `rx`: queue it on `tx` or drop it (releasing its
    /// buffer). `now` is the worker's coarse clock, for learning and ageing. Egress drops are
    /// left tallied in `tx` for `fold_egress`.
    pub fn forward(
        &mut self,
        pool: &mut BufferPool,
        rx: &[Frame],
        tx: &mut TxQueues,
        now: Seconds,
    ) {
        for f in rx {
            self.forward_one(pool, f, tx, now);
        }
    }

    /// Folds the drops charged to egress ports into their counters (once per batch); drops
    /// charged to ports of other workers go to this worker's `cross_drops`.
    #[inline]
    pub fn fold_egress(&self, tx: &mut TxQueues) {
        let (ports, stats) = (&self.ports, &self.stats);
        tx.fold_drops(|id, reason, n| {
            if let Some(Some(p)) = ports.get(id.index()) {
                // A frame its rx-filter refused never tried to cross: not a cross drop.
                let crossing = reason != DropReason::Filtered;
                match (&p.counters, &p.remote_counters) {
                    (Some(c), _) => c.count_drops(reason, n),
                    (None, Some(c)) => {
                        c.count_remote_drops(reason, n);
                        if crossing {
                            stats.cross_drops.add(n);
                        }
                    }
                    (None, None) => stats.cross_drops.add(n),
                }
            }
        });
    }

    #[inline]
    fn forward_one(&mut self, pool: &mut BufferPool, f: &Frame, tx: &mut TxQueues, now: Seconds) {
        let Some(Some(port)) = self.ports.get(f.ingress.index()) else {
            // The port went away while its read was in flight.
            pool.release(f.buf);
            return;
        };
        let Some(c) = port.counters.as_deref() else {
            // It moved to another worker while its read was in flight.
            pool.release(f.buf);
            return;
        };
        let len = f.len as usize;
        c.rx_frames.inc();
        c.rx_bytes.add(len as u64);
        let verdict = if len < HEADER_LEN {
            Err(DropReason::Runt)
        } else if len > self.max_frame && !offload::may_exceed(pool, f) {
            Err(DropReason::Oversize)
        } else if !port.conf.link_up {
            Err(DropReason::LinkDown)
        } else {
            Ok(())
        };
        if let Err(reason) = verdict {
            c.count_drop(reason);
            pool.release(f.buf);
            return;
        }
        let frame = pool.frame_at(f.buf, f.off as usize, len);
        let dst = MacAddr::from_slice(&frame[0..6]);
        let src = MacAddr::from_slice(&frame[6..12]);
        if src.is_multicast() || src == MacAddr::ZERO {
            c.count_drop(DropReason::BadSource);
            pool.release(f.buf);
            return;
        }
        let domain = port.conf.domain;
        match self.table.learn(domain, src, f.ingress, now) {
            Learned::Refreshed => {}
            Learned::New => self.stats.mac_learned.inc(),
            Learned::Moved => self.stats.mac_moved.inc(),
            Learned::Evicted => {
                self.stats.mac_learned.inc();
                self.stats.mac_evicted.inc()
            }
        }
        if f.has_offload() {
            let out = if dst.is_unicast() {
                self.table.lookup(domain, dst, now)
            } else {
                None
            };
            self.forward_offload(pool, f, domain, out, tx);
            return;
        }
        if dst.is_unicast() {
            if let Some(out) = self.table.lookup(domain, dst, now) {
                self.unicast(pool, out, f, tx);
                return;
            }
        }
        self.flood(pool, domain, f, tx);
    }

    #[inline]
    fn unicast(&self, pool: &mut BufferPool, out: PortId, f: &Frame, tx: &mut TxQueues) {
        let dropped = if out == f.ingress {
            self.charge(f.ingress, DropReason::SamePort);
            true
        } else {
            match &self.ports[out.index()] {
                Some(o) if !o.conf.link_up => {
                    tx.charge_link_down(out);
                    true
                }
                Some(o) if o.filter.is_some() && o.refuses(frame_of(pool, f)) => {
                    tx.charge(out, DropReason::Filtered);
                    true
                }
                Some(_) => !tx.push(out, *f),
                None => {
                    // Learned port removed without a flush: treat as unknown.
                    self.charge(f.ingress, DropReason::NoDestination);
                    true
                }
            }
        };
        if dropped {
            pool.release(f.buf);
        }
    }

    #[inline]
    fn flood(&self, pool: &mut BufferPool, domain: DomainId, f: &Frame, tx: &mut TxQueues) {
        let targets = match self.flood.iter().find(|set| set.domain == domain) {
            Some(set) if set.filtered => return self.flood_filtered(pool, &set.ports, f, tx),
            Some(set) => &set.ports[..],
            None => &[][..],
        };
        let ingress = f.ingress;
        let n = targets.iter().filter(|&&p| p != ingress).count();
        if n == 0 {
            self.charge(ingress, DropReason::NoDestination);
            pool.release(f.buf);
            return;
        }
        if n == 1 {
            // Two ports in the domain: the frame has one way out.
            let out = targets.iter().find(|&&p| p != ingress).copied();
            if out.is_some_and(|p| !tx.push(p, *f)) {
                pool.release(f.buf);
            }
            return;
        }
        debug_assert_eq!(f.home, pool.home(), "a flood shares a buffer of this pool");
        pool.retain(f.buf, (n - 1) as u16);
        let refused = tx.push_each(targets, ingress, *f);
        for _ in 0..refused {
            pool.release(f.buf);
        }
    }

    /// A flood in a domain where some port has an rx-filter: each target that refuses the
    /// frame is skipped and counted (`filtered`); the frame's buffer gets one reference per
    /// queue that took it. Out of line: domains without filters never come here.
    #[inline(never)]
    fn flood_filtered(
        &self,
        pool: &mut BufferPool,
        targets: &[PortId],
        f: &Frame,
        tx: &mut TxQueues,
    ) {
        let ingress = f.ingress;
        let frame = frame_of(pool, f);
        let (mut candidates, mut queued) = (0u16, 0u16);
        for &p in targets {
            if p == ingress {
                continue;
            }
            candidates += 1;
            let refused = matches!(&self.ports[p.index()], Some(s) if s.refuses(frame));
            if refused {
                tx.charge(p, DropReason::Filtered);
            } else if tx.push(p, *f) {
                queued += 1;
            }
        }
        if candidates == 0 {
            self.charge(ingress, DropReason::NoDestination);
        }
        // The frame came with one reference; each queue that took it holds one.
        match queued {
            0 => pool.release(f.buf),
            n => {
                debug_assert!(
                    n == 1 || f.home == pool.home(),
                    "a flood shares a buffer of this pool"
                );
                pool.retain(f.buf, n - 1)
            }
        }
    }

    #[cold]
    fn charge(&self, id: PortId, reason: DropReason) {
        if let Some(Some(p)) = self.ports.get(id.index()) {
            match &p.counters {
                Some(c) => c.count_drop(reason),
                None => self.stats.cross_drops.inc(),
            }
        }
    }
}

/// The bytes of a received frame (for an offloaded segment too: its Ethernet header first).
#[inline]
fn frame_of<'p>(pool: &'p BufferPool, f: &Frame) -> &'p [u8] {
    pool.frame_at(f.buf, f.off as usize, f.len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::PortStats;
    use crate::ids::WorkerId;

    const BCAST: MacAddr = MacAddr::BROADCAST;

    fn mac(i: u8) -> MacAddr {
        MacAddr([0x02, 0, 0, 0, 0, i])
    }

    struct Rig {
        engine: Engine,
        pool: BufferPool,
        tx: TxQueues,
        counters: Vec<Arc<PortCounters>>,
    }

    impl Rig {
        /// `domains[i]` is port i's domain.
        fn new(domains: &[u16]) -> Rig {
            let stats = Arc::new(WorkerCounters::default());
            let mut engine = Engine::new(domains.len(), 1024, 300, 1518, stats);
            let mut counters = Vec::new();
            for (i, d) in domains.iter().enumerate() {
                let c = Arc::new(PortCounters::default());
                engine
                    .add_port(
                        PortId(i as u16),
                        PortConf {
                            domain: DomainId(*d),
                            link_up: true,
                            offloads: crate::frame::OffloadSet::NONE,
                        },
                        c.clone(),
                    )
                    .unwrap();
                counters.push(c);
            }
            Rig {
                engine,
                pool: BufferPool::new(256, 2048).unwrap(),
                tx: TxQueues::new(domains.len(), 4),
                counters,
            }
        }

        fn frame(&mut self, port: u16, dst: MacAddr, src: MacAddr, len: usize) -> Frame {
            let b = self.pool.alloc().unwrap();
            let buf = self.pool.buf_mut(b);
            buf[..6].copy_from_slice(&dst.0);
            buf[6..12].copy_from_slice(&src.0);
            Frame::new(WorkerId(0), PortId(port), b, 0, len as u32)
        }

        /// Sends one frame and returns the ports it left by, draining (and completing) them.
        fn send(&mut self, port: u16, dst: MacAddr, src: MacAddr, len: usize) -> Vec<u16> {
            let d = self.frame(port, dst, src, len);
            self.engine.forward(&mut self.pool, &[d], &mut self.tx, 0);
            self.engine.fold_egress(&mut self.tx);
            self.complete()
        }

        fn complete(&mut self) -> Vec<u16> {
            let mut out = Vec::new();
            let pool = &mut self.pool;
            self.tx.drain(|p, frames| {
                for f in frames {
                    out.push(p.0);
                    pool.release(f.buf);
                }
            });
            out.sort();
            out
        }

        fn stats(&self, port: usize) -> PortStats {
            self.counters[port].snapshot()
        }
    }

    #[test]
    fn unicast_goes_only_to_learned_port() {
        let mut r = Rig::new(&[0, 0, 0]);
        assert_eq!(
            r.send(1, BCAST, mac(1), 60),
            vec![0, 2],
            "B announces itself"
        );
        assert_eq!(r.send(0, mac(1), mac(0), 60), vec![1], "A to B: only B");
        assert_eq!(r.send(1, mac(0), mac(1), 60), vec![0], "B to A: only A");
        assert_eq!(r.pool.available(), 256, "every buffer came back");
    }

    #[test]
    fn broadcast_multicast_and_unknown_unicast_flood_to_all_but_ingress() {
        let mut r = Rig::new(&[0, 0, 0, 0]);
        assert_eq!(r.send(2, BCAST, mac(2), 60), vec![0, 1, 3]);
        assert_eq!(
            r.send(2, MacAddr([0x01, 0, 0x5e, 0, 0, 1]), mac(2), 60),
            vec![0, 1, 3]
        );
        assert_eq!(r.send(2, mac(99), mac(2), 60), vec![0, 1, 3]);
        assert_eq!(r.pool.available(), 256);
    }

    #[test]
    fn never_sends_back_out_of_the_ingress_port() {
        let mut r = Rig::new(&[0, 0]);
        r.send(0, BCAST, mac(5), 60);
        assert_eq!(r.send(0, mac(5), mac(6), 60), Vec::<u16>::new());
        assert_eq!(r.stats(0).drops.get(DropReason::SamePort), 1);
    }

    #[test]
    fn runts_oversize_and_bad_sources_are_dropped_and_counted() {
        let mut r = Rig::new(&[0, 0]);
        assert!(r.send(0, BCAST, mac(1), 0).is_empty());
        assert!(r.send(0, BCAST, mac(1), 13).is_empty());
        assert!(r.send(0, BCAST, mac(1), 1519).is_empty());
        assert!(r
            .send(0, BCAST, MacAddr([0x01, 0, 0, 0, 0, 1]), 60)
            .is_empty());
        assert!(r.send(0, BCAST, MacAddr::ZERO, 60).is_empty());
        assert_eq!(
            r.send(0, BCAST, mac(1), 14),
            vec![1],
            "a bare header is a valid frame"
        );
        assert_eq!(
            r.send(0, BCAST, mac(1), 1518),
            vec![1],
            "the maximum size passes"
        );
        let s = r.stats(0);
        assert_eq!(
            (
                s.drops.get(DropReason::Runt),
                s.drops.get(DropReason::Oversize),
                s.drops.get(DropReason::BadSource)
            ),
            (2, 1, 2)
        );
        assert_eq!(s.rx_frames, 7);
        assert_eq!(r.pool.available(), 256);
    }

    #[test]
    fn link_down_port_neither_receives_nor_transmits() {
        let mut r = Rig::new(&[0, 0, 0]);
        r.send(1, BCAST, mac(1), 60);
        r.engine.set_link(PortId(1), false).unwrap();
        assert_eq!(
            r.send(0, BCAST, mac(0), 60),
            vec![2],
            "flood skips the down port"
        );
        assert!(
            r.send(0, mac(1), mac(0), 60).is_empty(),
            "unicast to a down port is dropped"
        );
        assert_eq!(r.stats(1).drops.get(DropReason::LinkDown), 1);
        assert!(
            r.send(1, mac(0), mac(1), 60).is_empty(),
            "a down port does not receive"
        );
        assert_eq!(r.stats(1).drops.get(DropReason::LinkDown), 2);
        r.engine.set_link(PortId(1), true).unwrap();
        assert_eq!(r.send(0, mac(1), mac(0), 60), vec![1]);
    }

    #[test]
    fn full_queues_drop_and_count_without_losing_buffers() {
        let mut r = Rig::new(&[0, 0, 0]);
        let batch: Vec<Frame> = (0..10).map(|_| r.frame(0, BCAST, mac(0), 60)).collect();
        r.engine.forward(&mut r.pool, &batch, &mut r.tx, 0);
        r.engine.fold_egress(&mut r.tx);
        assert_eq!(r.tx.len(), 8, "two queues of depth 4");
        assert_eq!(
            r.stats(1).drops.get(DropReason::QueueFull)
                + r.stats(2).drops.get(DropReason::QueueFull),
            12
        );
        r.complete();
        assert_eq!(r.pool.available(), 256);
    }

    #[test]
    fn domains_never_exchange_frames() {
        let mut r = Rig::new(&[0, 0, 1, 1]);
        assert_eq!(r.send(0, BCAST, mac(0), 60), vec![1]);
        assert_eq!(r.send(2, BCAST, mac(2), 60), vec![3]);
        assert_eq!(
            r.send(2, mac(0), mac(2), 60),
            vec![3],
            "mac(0) is unknown in domain 1"
        );
    }

    #[test]
    fn alone_in_a_domain_counts_no_destination() {
        let mut r = Rig::new(&[0, 1]);
        assert!(r.send(0, BCAST, mac(0), 60).is_empty());
        assert_eq!(r.stats(0).drops.get(DropReason::NoDestination), 1);
    }

    #[test]
    fn a_moved_station_is_followed_and_a_removed_port_forgotten() {
        let mut r = Rig::new(&[0, 0, 0]);
        r.send(1, BCAST, mac(7), 60);
        assert_eq!(r.send(0, mac(7), mac(0), 60), vec![1]);
        r.send(2, BCAST, mac(7), 60);
        assert_eq!(r.send(0, mac(7), mac(0), 60), vec![2]);
        r.engine.remove_port(PortId(2)).unwrap();
        assert_eq!(
            r.send(0, mac(7), mac(0), 60),
            vec![1],
            "unknown again: flooded to the rest"
        );
        assert!(r.engine.remove_port(PortId(2)).is_err());
    }

    /// A filter that takes its own address and broadcast only (a guest with no groups).
    fn station_only(me: MacAddr) -> Arc<RxFilter> {
        let mut f = RxFilter::promiscuous(me);
        f.promiscuous = false;
        f.unicast = crate::rxfilter::RxState::Normal;
        f.multicast = crate::rxfilter::RxState::Normal;
        Arc::new(f)
    }

    const GROUP: MacAddr = MacAddr([0x01, 0, 0x5e, 0, 0, 7]);

    #[test]
    fn floods_go_only_to_the_ports_whose_filter_accepts_the_frame() {
        let mut r = Rig::new(&[0, 0, 0, 0]);
        r.engine
            .set_rx_filter(PortId(3), Some(station_only(mac(3))))
            .unwrap();
        assert_eq!(
            r.send(0, mac(99), mac(0), 60),
            vec![1, 2],
            "unknown unicast"
        );
        assert_eq!(
            r.send(0, GROUP, mac(0), 60),
            vec![1, 2],
            "an unwanted group"
        );
        assert_eq!(
            r.send(0, BCAST, mac(0), 60),
            vec![1, 2, 3],
            "broadcast allowed"
        );
        assert_eq!(
            r.send(0, mac(3), mac(0), 60),
            vec![1, 2, 3],
            "its own address, not learned yet: flooded, and taken"
        );
        assert_eq!(r.stats(3).drops.get(DropReason::Filtered), 2);
        assert_eq!(
            r.stats(3).drops.total(),
            2,
            "charged to the refusing port only"
        );
        assert_eq!(r.stats(0).drops.total(), 0);
        assert_eq!(r.pool.available(), 256, "every buffer came back");
    }

    #[test]
    fn unicast_to_a_learned_port_is_refused_by_its_filter_and_counted() {
        let mut r = Rig::new(&[0, 0, 0]);
        r.send(1, BCAST, mac(7), 60); // mac(7) is learned behind port 1
        r.engine
            .set_rx_filter(PortId(1), Some(station_only(mac(1))))
            .unwrap();
        assert!(r.send(0, mac(7), mac(0), 60).is_empty());
        assert_eq!(r.stats(1).drops.get(DropReason::Filtered), 1);
        assert_eq!(
            r.send(0, mac(1), mac(0), 60),
            vec![1, 2],
            "its main address"
        );
        // A port whose every target refuses: nothing sent, nothing left held.
        let mut two = Rig::new(&[0, 0]);
        two.engine
            .set_rx_filter(PortId(1), Some(station_only(mac(1))))
            .unwrap();
        assert!(two.send(0, GROUP, mac(0), 60).is_empty());
        assert_eq!(two.stats(1).drops.get(DropReason::Filtered), 1);
        assert_eq!(two.stats(0).drops.get(DropReason::NoDestination), 0);
        assert_eq!(two.pool.available(), 256);
        assert_eq!(r.pool.available(), 256);
    }

    #[test]
    fn promiscuous_filters_change_nothing_and_a_filter_can_be_lifted() {
        let mut r = Rig::new(&[0, 0, 0]);
        r.engine
            .set_rx_filter(PortId(2), Some(Arc::new(RxFilter::promiscuous(mac(2)))))
            .unwrap();
        assert!(
            r.engine.rx_filter(PortId(2)).is_none(),
            "stored as accept-all"
        );
        assert_eq!(r.send(0, mac(99), mac(0), 60), vec![1, 2]);
        r.engine
            .set_rx_filter(PortId(2), Some(station_only(mac(2))))
            .unwrap();
        assert_eq!(r.send(0, mac(99), mac(0), 60), vec![1]);
        r.engine.set_rx_filter(PortId(2), None).unwrap();
        assert_eq!(r.send(0, mac(99), mac(0), 60), vec![1, 2]);
        assert_eq!(r.stats(2).drops.get(DropReason::Filtered), 1);
        assert!(r.engine.set_rx_filter(PortId(9), None).is_err());
    }

    #[test]
    fn a_remote_ports_filter_is_checked_by_the_sender_and_counted_as_remote() {
        let stats = Arc::new(WorkerCounters::default());
        let mut engine = Engine::new(3, 1024, 300, 1518, stats.clone());
        let conf = || PortConf {
            domain: DomainId(0),
            link_up: true,
            offloads: crate::frame::OffloadSet::NONE,
        };
        let local: Vec<Arc<PortCounters>> = (0..2).map(|_| Arc::default()).collect();
        for (i, c) in local.iter().enumerate() {
            engine
                .add_port(PortId(i as u16), conf(), c.clone())
                .unwrap();
        }
        let remote = Arc::new(PortCounters::default());
        engine
            .add_remote_port(
                PortId(2),
                conf(),
                crate::config::PortCell::empty(),
                remote.clone(),
            )
            .unwrap();
        engine
            .set_rx_filter(PortId(2), Some(station_only(mac(2))))
            .unwrap();
        let mut r = Rig {
            engine,
            pool: BufferPool::new(256, 2048).unwrap(),
            tx: TxQueues::new(3, 4),
            counters: local,
        };
        assert_eq!(r.send(0, mac(99), mac(0), 60), vec![1], "no crossing");
        assert_eq!(
            r.send(0, mac(2), mac(0), 60),
            vec![1, 2],
            "its own address crosses"
        );
        assert_eq!(remote.snapshot().drops.get(DropReason::Filtered), 1);
        assert_eq!(
            stats.cross_drops.get(),
            0,
            "a refused frame is not a cross drop"
        );
        assert_eq!(r.pool.available(), 256);
    }

    #[test]
    fn frames_with_offload_records_are_filtered_by_their_ethernet_header() {
        let mut r = Rig::new(&[0, 0, 0]);
        r.engine
            .set_rx_filter(PortId(2), Some(station_only(mac(2))))
            .unwrap();
        let send_offloaded = |r: &mut Rig, dst: MacAddr| {
            let mut f = r.frame(0, dst, mac(0), 60);
            f.flags |= Frame::OFFLOAD;
            let o = crate::frame::Offload {
                flags: crate::frame::Offload::F_DATA_VALID,
                ..crate::frame::Offload::NONE
            };
            r.pool.set_offload(f.buf, o);
            r.engine.forward(&mut r.pool, &[f], &mut r.tx, 0);
            r.engine.fold_egress(&mut r.tx);
            r.complete()
        };
        assert_eq!(
            send_offloaded(&mut r, mac(99)),
            vec![1],
            "flooded past the filter"
        );
        assert_eq!(
            send_offloaded(&mut r, mac(2)),
            vec![1, 2],
            "its own address"
        );
        r.send(2, BCAST, mac(2), 60); // mac(2) learned behind port 2
        r.send(1, BCAST, mac(7), 60);
        r.engine
            .set_rx_filter(PortId(1), Some(station_only(mac(1))))
            .unwrap();
        assert!(
            send_offloaded(&mut r, mac(7)).is_empty(),
            "learned, refused"
        );
        assert!(
            send_offloaded(&mut r, GROUP).is_empty(),
            "nobody takes the group"
        );
        assert_eq!(r.stats(2).drops.get(DropReason::Filtered), 2);
        assert_eq!(r.stats(1).drops.get(DropReason::Filtered), 2);
        assert_eq!(r.stats(0).drops.total(), 0);
        assert_eq!(r.pool.available(), 256);
    }
}
