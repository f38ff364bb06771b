//! `MacTable`: the bounded, ageing table of learned (domain, MAC) → port entries.
//!
//! Memory is fixed at construction: an array of buckets of eight slots, each 16 bytes, so a
//! bucket is two cache lines. A key hashes (with a per-table random seed, so an attacker cannot
//! aim collisions) to one bucket. Learning a new key takes a free or expired slot of its bucket,
//! or evicts the bucket's least recently seen entry: a flood of random source MACs costs a
//! constant amount of work per frame and never grows memory. Entries older than the ageing time
//! are treated as absent. The table is owned by one worker; it never allocates after `new`.

use crate::ids::{DomainId, PortId};
use crate::mac::MacAddr;

const BUCKET: usize = 8;
const EMPTY: u64 = u64::MAX;

/// Seconds on the worker's coarse clock (wraps after 136 years).
pub type Seconds = u32;

#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Entry {
    key: u64,
    stamp: Seconds,
    port: u16,
}

const EMPTY_SLOT: Entry = Entry {
    key: EMPTY,
    stamp: 0,
    port: 0,
};

/// What learning a source address did, for statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Already known on this port; its age was refreshed.
    Refreshed,
    /// A new entry.
    New,
    /// Known on another port; it moved here.
    Moved,
    /// A new entry that pushed out the least recently seen entry of its bucket.
    Evicted,
}

/// One live entry, for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacEntry {
    pub domain: DomainId,
    pub mac: MacAddr,
    pub port: PortId,
    pub age: Seconds,
}

/// Bounded learning table with ageing.
pub struct MacTable {
    slots: Box<[Entry]>,
    bucket_mask: usize,
    seed: u64,
    ageing: Seconds,
}

#[inline]
fn key(domain: DomainId, mac: MacAddr) -> u64 {
    mac.to_u64() | (domain.0 as u64) << 48
}

impl MacTable {
    /// A table of at least `capacity` entries (rounded up to a power of two, minimum one
    /// bucket) whose entries expire `ageing` seconds after they were last seen.
    pub fn new(capacity: usize, ageing: Seconds) -> MacTable {
        let buckets = capacity.div_ceil(BUCKET).max(1).next_power_of_two();
        MacTable {
            slots: vec![EMPTY_SLOT; buckets * BUCKET].into_boxed_slice(),
            bucket_mask: buckets - 1,
            seed: random_seed(),
            ageing: ageing.max(1),
        }
    }

    /// Number of slots (the bound on live entries).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn ageing(&self) -> Seconds {
        self.ageing
    }

    pub fn set_ageing(&mut self, ageing: Seconds) {
        self.ageing = ageing.max(1);
    }

    #[inline]
    fn bucket(&self, k: u64) -> usize {
        let h = (k ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((h >> 32) as usize & self.bucket_mask) * BUCKET
    }

    #[inline]
    fn live(&self, s: &Entry, now: Seconds) -> bool {
        s.key != EMPTY && now.wrapping_sub(s.stamp) < self.ageing
    }

    /// The port `mac` was last seen on in `domain`, unless it aged out.
    #[inline]
    pub fn lookup(&self, domain: DomainId, mac: MacAddr, now: Seconds) -> Option<PortId> {
        let k = key(domain, mac);
        let b = self.bucket(k);
        for s in &self.slots[b..b + BUCKET] {
            if s.key == k {
                return self.live(s, now).then_some(PortId(s.port));
            }
        }
        None
    }

    /// Records that `mac` was seen as a source on `port` in `domain` at `now`.
    #[inline]
    pub fn learn(&mut self, domain: DomainId, mac: MacAddr, port: PortId, now: Seconds) -> Learned {
        let k = key(domain, mac);
        let b = self.bucket(k);
        let ageing = self.ageing;
        let bucket = &mut self.slots[b..b + BUCKET];
        let mut free: Option<usize> = None;
        let mut oldest = 0usize;
        let mut oldest_age = 0;
        for (i, s) in bucket.iter_mut().enumerate() {
            if s.key == k {
                let alive = now.wrapping_sub(s.stamp) < ageing;
                if s.port == port.0 {
                    if s.stamp != now {
                        s.stamp = now;
                    }
                    return if alive {
                        Learned::Refreshed
                    } else {
                        Learned::New
                    };
                }
                s.port = port.0;
                s.stamp = now;
                return if alive { Learned::Moved } else { Learned::New };
            }
            let age = now.wrapping_sub(s.stamp);
            if free.is_none() && (s.key == EMPTY || age >= ageing) {
                free = Some(i);
            } else if age >= oldest_age {
                oldest_age = age;
                oldest = i;
            }
        }
        let (i, outcome) = match free {
            Some(i) => (i, Learned::New),
            None => (oldest, Learned::Evicted),
        };
        bucket[i] = Entry {
            key: k,
            stamp: now,
            port: port.0,
        };
        outcome
    }

    /// Forgets every entry that points at `port` (the port went away).
    pub fn flush_port(&mut self, port: PortId) -> usize {
        let mut n = 0;
        for s in self.slots.iter_mut() {
            if s.key != EMPTY && s.port == port.0 {
                *s = EMPTY_SLOT;
                n += 1;
            }
        }
        n
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.slots.fill(EMPTY_SLOT);
    }

    /// Live entries at `now`, in table order.
    pub fn entries(&self, now: Seconds) -> impl Iterator<Item = MacEntry> + '_ {
        self.entries_in(0..self.slots.len(), now)
    }

    /// Number of entry slots (a walk over `0..slots()` in pieces sees every entry).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Live entries at `now` among slots `range` (clamped to the table), in table order: a
    /// listing walked in pieces, so no single call takes long.
    pub fn entries_in(
        &self,
        range: std::ops::Range<usize>,
        now: Seconds,
    ) -> impl Iterator<Item = MacEntry> + '_ {
        let end = range.end.min(self.slots.len());
        let start = range.start.min(end);
        self.slots[start..end]
            .iter()
            .filter(move |s| self.live(s, now))
            .map(move |s| MacEntry {
                domain: DomainId((s.key >> 48) as u16),
                mac: MacAddr::from_u64(s.key & 0xffff_ffff_ffff),
                port: PortId(s.port),
                age: now.wrapping_sub(s.stamp),
            })
    }

    /// Number of live entries at `now` (walks the table; not for the hot path).
    pub fn len(&self, now: Seconds) -> usize {
        self.entries(now).count()
    }

    pub fn is_empty(&self, now: Seconds) -> bool {
        self.len(now) == 0
    }
}

/// A seed that differs per table and per process, without a dependency on a RNG crate.
fn random_seed() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(i: u64) -> MacAddr {
        MacAddr::from_u64(0x0200_0000_0000 | i)
    }
    const D: DomainId = DomainId(0);

    #[test]
    fn learns_and_looks_up() {
        let mut t = MacTable::new(1024, 300);
        assert_eq!(t.lookup(D, mac(1), 0), None);
        assert_eq!(t.learn(D, mac(1), PortId(3), 0), Learned::New);
        assert_eq!(t.lookup(D, mac(1), 5), Some(PortId(3)));
        assert_eq!(t.learn(D, mac(1), PortId(3), 6), Learned::Refreshed);
    }

    #[test]
    fn station_moves_to_new_port() {
        let mut t = MacTable::new(1024, 300);
        t.learn(D, mac(1), PortId(1), 0);
        assert_eq!(t.learn(D, mac(1), PortId(2), 1), Learned::Moved);
        assert_eq!(t.lookup(D, mac(1), 1), Some(PortId(2)));
        assert_eq!(t.len(1), 1, "a move must not leave a stale duplicate");
    }

    #[test]
    fn entries_age_out_and_refresh_extends_life() {
        let mut t = MacTable::new(1024, 10);
        t.learn(D, mac(1), PortId(1), 100);
        t.learn(D, mac(2), PortId(1), 100);
        t.learn(D, mac(2), PortId(1), 105);
        assert_eq!(t.lookup(D, mac(1), 109), Some(PortId(1)));
        assert_eq!(t.lookup(D, mac(1), 110), None, "aged out after 10 s");
        assert_eq!(
            t.lookup(D, mac(2), 114),
            Some(PortId(1)),
            "refreshed at 105"
        );
        assert_eq!(t.lookup(D, mac(2), 115), None);
        assert_eq!(t.learn(D, mac(1), PortId(2), 120), Learned::New);
        assert_eq!(t.lookup(D, mac(1), 120), Some(PortId(2)));
    }

    #[test]
    fn domains_are_separate() {
        let mut t = MacTable::new(1024, 300);
        t.learn(DomainId(1), mac(1), PortId(1), 0);
        assert_eq!(t.lookup(DomainId(2), mac(1), 0), None);
        t.learn(DomainId(2), mac(1), PortId(2), 0);
        assert_eq!(t.lookup(DomainId(1), mac(1), 0), Some(PortId(1)));
        assert_eq!(t.lookup(DomainId(2), mac(1), 0), Some(PortId(2)));
    }

    #[test]
    fn mac_flood_is_bounded_and_recent_stations_survive() {
        let mut t = MacTable::new(4096, 300);
        let cap = t.capacity();
        // A steady station seen every round; a flood of 1M distinct sources around it.
        let station = mac(0xdead);
        let mut evicted = 0;
        for i in 0..1_000_000u64 {
            let now = (i / 10_000) as Seconds;
            if i % 1000 == 0 {
                t.learn(D, station, PortId(7), now);
            }
            if t.learn(D, mac(0x1_0000_0000 + i), PortId(1), now) == Learned::Evicted {
                evicted += 1;
            }
        }
        assert_eq!(t.capacity(), cap, "memory is fixed");
        assert!(t.len(100) <= cap);
        assert!(
            evicted > 900_000,
            "the flood recycles slots ({evicted} evictions)"
        );
        // Same-second entries may evict each other, but a fresh refresh keeps the station
        // reachable right after it is seen.
        t.learn(D, station, PortId(7), 100);
        assert_eq!(t.lookup(D, station, 100), Some(PortId(7)));
    }

    #[test]
    fn flush_port_and_clear() {
        let mut t = MacTable::new(1024, 300);
        for i in 0..100 {
            t.learn(D, mac(i), PortId((i % 2) as u16), 0);
        }
        assert_eq!(t.flush_port(PortId(1)), 50);
        assert_eq!(t.len(0), 50);
        assert!(t.entries(0).all(|e| e.port == PortId(0)));
        t.clear();
        assert!(t.is_empty(0));
    }

    #[test]
    fn entries_report_age() {
        let mut t = MacTable::new(64, 300);
        t.learn(D, mac(9), PortId(4), 10);
        let e: Vec<_> = t.entries(15).collect();
        assert_eq!(
            e,
            vec![MacEntry {
                domain: D,
                mac: mac(9),
                port: PortId(4),
                age: 5
            }]
        );
    }
}
