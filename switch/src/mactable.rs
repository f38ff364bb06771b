//! `MacTable`: the bounded, ageing table of learned (domain, MAC) → port entries, shared by
//! the workers (each holds an `Arc<MacTable>`; every method takes `&self`).
//!
//! Memory is fixed at construction: an array of buckets of eight slots. A bucket is two cache
//! lines: the eight keys in the first, the eight stamps, eight ports and the bucket's sequence
//! counter in the second. A key hashes (with a per-table random seed, so an attacker cannot aim
//! collisions) to one bucket. Learning a new key takes a free or expired slot of its bucket, or
//! evicts the bucket's least recently seen entry: a flood of random source MACs costs a
//! constant amount of work per frame and never grows memory. Entries older than the ageing time
//! are treated as absent. The table never allocates after `new`, and a lookup takes no lock.
//!
//! # Sharing: a seqlock per bucket
//!
//! A slot is three atomics: its key (`domain << 48 | mac`, or `EMPTY`), its port and its stamp
//! (the second it was last seen). The key and the port are the slot's identity; they change
//! only under the bucket's sequence counter `seq`:
//!
//! - A writer (learning a new key, a station moving, an eviction, `flush_port`, `clear`) takes
//!   the bucket by a compare-and-swap of `seq` from even to odd (acquire, so it sees what the
//!   previous writer wrote; it spins while `seq` is odd: writers to one bucket are rare),
//!   issues a release fence, writes the slots with relaxed stores, and releases the bucket by
//!   storing `seq + 2` with release ordering (or the even value it found, when it wrote
//!   nothing).
//! - A reader (`lookup`, `learn`'s first look, `entries_in`) loads `seq` (acquire), and if it
//!   is even, loads what it needs with relaxed loads, issues an acquire fence, and loads `seq`
//!   again. If both loads agree, no writer touched the bucket in between: had the reader seen
//!   any store of a writer, the writer's release fence and the reader's acquire fence would
//!   make the writer's odd `seq` visible to the second load. Otherwise it tries again, a few
//!   times (`READ_TRIES`), and then gives up: a lookup answers `None`, which the engine handles
//!   by flooding the frame, so a reader never waits for a writer. (A listing, which must not
//!   lose entries, takes the bucket itself after `LIST_TRIES` failed tries; it writes nothing
//!   and puts the same even `seq` back.)
//!
//! A key therefore appears at most once per bucket (every write of a key follows a rescan
//! under the bucket), and a reader never pairs one entry's key with another entry's port.
//!
//! # The stamp: refreshed without the seqlock
//!
//! A station seen again on the port it is known on only needs its stamp moved forward, and
//! that is the common case of `learn` (every received frame). It is a relaxed load of the
//! bucket (as a lookup), then, at most once per second per station, one relaxed store of the
//! stamp; `seq` is not touched, so readers of the bucket are not disturbed. This is safe
//! because the stamp is not part of an entry's identity, and a stamp never makes a reader
//! return a port that was not learned for the key it asked for (key and port are read under
//! `seq`). What a stamp store racing a writer can do:
//!
//! - It lands on the slot after a writer replaced the entry (eviction, a flush, or a flush and
//!   a new entry): the new entry gets the refresher's `now` instead of its own. Both are "now"
//!   on the same clock, so the entry lives a second more or less; if the refresher was
//!   descheduled for long between its look and its store, the stamp is older, and the entry
//!   ages out early and is learned again from its next frame (frames to it are flooded
//!   meanwhile). A stamp store on an emptied slot (key `EMPTY`) is ignored by everyone and
//!   overwritten when the slot is taken again. It never resurrects a flushed entry: the key
//!   and port stay as the writer left them.
//! - The station moved to another port between the refresher's look and its store: the moved
//!   entry gets the refresher's stamp (a second apart, as above); the next frame from the old
//!   port moves it back, as any move does.
//! - A reader sees an old stamp with a new key or the reverse: the same one second, or an
//!   entry treated as aged out early (a flood, and it is learned again).
//! - Two workers refresh one station: each store is whole (an atomic), the later wins.
//!
//! Stamps only move forward: `learn` stores `now` only when it is later than the stamp, and an
//! age is computed as a signed difference, so a stamp a second "in the future" (written by a
//! worker whose pass began after the reader's) reads as age 0, not as expired. All users must
//! pass `now` from one clock (a shared epoch; sampling it at different moments is fine).

use crate::ids::{DomainId, PortId};
use crate::mac::MacAddr;
use crate::sync::{fence, spin_loop, AtomicU16, AtomicU32, AtomicU64, Ordering};

const BUCKET: usize = 8;
const EMPTY: u64 = u64::MAX;
/// Optimistic reads of a bucket before a lookup gives up (answers `None`: flood).
const READ_TRIES: usize = 4;
/// Optimistic reads of a bucket before a listing takes the bucket instead.
const LIST_TRIES: usize = 16;

/// Seconds on the switch's coarse clock (wraps after 136 years; ages are signed differences,
/// so stamps more than 68 years apart are not compared meaningfully).
pub type Seconds = u32;

/// Eight slots and their sequence counter; two cache lines (checked below, outside loom).
#[repr(C, align(64))]
struct Bucket {
    keys: [AtomicU64; BUCKET],
    stamps: [AtomicU32; BUCKET],
    ports: [AtomicU16; BUCKET],
    /// Even: no writer. Odd: a writer holds the bucket.
    seq: AtomicU32,
}

#[cfg(not(ringswitch_loom))]
const _: () = assert!(std::mem::size_of::<Bucket>() == 128);

/// One slot, as read.
#[derive(Clone, Copy)]
struct Slot {
    key: u64,
    stamp: Seconds,
    port: u16,
}

const EMPTY_SLOT: Slot = Slot {
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

/// Bounded learning table with ageing, shared between threads.
pub struct MacTable {
    buckets: Box<[Bucket]>,
    bucket_mask: usize,
    seed: u64,
    ageing: AtomicU32,
}

#[inline]
fn key(domain: DomainId, mac: MacAddr) -> u64 {
    mac.to_u64() | (domain.0 as u64) << 48
}

/// Seconds from `stamp` to `now`; 0 if `stamp` is later (another user's clock read ran ahead).
#[inline(always)]
fn age(now: Seconds, stamp: Seconds) -> Seconds {
    let a = now.wrapping_sub(stamp);
    if (a as i32) < 0 {
        0
    } else {
        a
    }
}

const RELAXED: Ordering = Ordering::Relaxed;

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            keys: std::array::from_fn(|_| AtomicU64::new(EMPTY)),
            stamps: std::array::from_fn(|_| AtomicU32::new(0)),
            ports: std::array::from_fn(|_| AtomicU16::new(0)),
            seq: AtomicU32::new(0),
        }
    }

    #[inline(always)]
    fn find(&self, k: u64) -> Option<usize> {
        self.keys.iter().position(|x| x.load(RELAXED) == k)
    }

    #[inline(always)]
    fn slot(&self, i: usize) -> Slot {
        Slot {
            key: self.keys[i].load(RELAXED),
            stamp: self.stamps[i].load(RELAXED),
            port: self.ports[i].load(RELAXED),
        }
    }

    /// Runs `read` (relaxed loads of this bucket only) inside the seqlock's read section:
    /// its result if no writer intervened, `None` if one did on each of `tries` tries.
    #[inline(always)]
    fn read<R>(&self, tries: usize, read: impl Fn(&Bucket) -> R) -> Option<R> {
        for _ in 0..tries {
            let s = self.seq.load(Ordering::Acquire);
            if s & 1 == 0 {
                let r = read(self);
                fence(Ordering::Acquire);
                if self.seq.load(RELAXED) == s {
                    return Some(r);
                }
            }
            spin_loop();
        }
        None
    }

    /// Takes the bucket for writing; returns the even `seq` it found, for `unlock`.
    #[inline]
    fn lock(&self) -> u32 {
        loop {
            let s = self.seq.load(RELAXED);
            if s & 1 == 0
                && self
                    .seq
                    .compare_exchange(s, s.wrapping_add(1), Ordering::Acquire, RELAXED)
                    .is_ok()
            {
                // Orders the odd `seq` before the slot stores that follow, for a reader
                // whose acquire fence follows its load of one of them.
                fence(Ordering::Release);
                return s;
            }
            spin_loop();
        }
    }

    /// Gives the bucket back: `seq + 2` if the key or port of a slot changed, else the
    /// value `lock` found (readers that overlapped saw nothing change, and need not retry).
    #[inline]
    fn unlock(&self, s: u32, wrote: bool) {
        let next = if wrote { s.wrapping_add(2) } else { s };
        self.seq.store(next, Ordering::Release);
    }

    /// Writes slot `i`; the bucket is held.
    #[inline(always)]
    fn write(&self, i: usize, s: Slot) {
        self.keys[i].store(s.key, RELAXED);
        self.ports[i].store(s.port, RELAXED);
        self.stamps[i].store(s.stamp, RELAXED);
    }

    /// A consistent copy of the bucket: optimistic reads, then the bucket itself.
    fn snapshot(&self) -> [Slot; BUCKET] {
        let all = |b: &Bucket| std::array::from_fn(|i| b.slot(i));
        if let Some(s) = self.read(LIST_TRIES, all) {
            return s;
        }
        let s = self.lock();
        let snap = all(self);
        self.unlock(s, false);
        snap
    }
}

impl MacTable {
    /// A table of at least `capacity` entries (rounded up to a power of two, minimum one
    /// bucket) whose entries expire `ageing` seconds after they were last seen.
    pub fn new(capacity: usize, ageing: Seconds) -> MacTable {
        MacTable::with_seed(capacity, ageing, random_seed())
    }

    /// As `new`, with the hash seed given (tests that need to know which bucket a key takes).
    #[doc(hidden)]
    pub fn with_seed(capacity: usize, ageing: Seconds, seed: u64) -> MacTable {
        let buckets = capacity.div_ceil(BUCKET).max(1).next_power_of_two();
        MacTable {
            buckets: (0..buckets).map(|_| Bucket::new()).collect(),
            bucket_mask: buckets - 1,
            seed,
            ageing: AtomicU32::new(ageing.max(1)),
        }
    }

    /// Number of slots (the bound on live entries).
    pub fn capacity(&self) -> usize {
        self.buckets.len() * BUCKET
    }

    pub fn ageing(&self) -> Seconds {
        self.ageing.load(RELAXED)
    }

    pub fn set_ageing(&self, ageing: Seconds) {
        self.ageing.store(ageing.max(1), RELAXED);
    }

    #[inline]
    fn bucket(&self, k: u64) -> &Bucket {
        let h = (k ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.buckets[(h >> 32) as usize & self.bucket_mask]
    }

    /// The port `mac` was last seen on in `domain`, unless it aged out. `None` too, rarely,
    /// when writers kept the bucket busy through every try (the caller floods).
    #[inline]
    pub fn lookup(&self, domain: DomainId, mac: MacAddr, now: Seconds) -> Option<PortId> {
        let k = key(domain, mac);
        let (port, stamp) = self
            .bucket(k)
            .read(READ_TRIES, |b| {
                b.find(k)
                    .map(|i| (b.ports[i].load(RELAXED), b.stamps[i].load(RELAXED)))
            })
            .flatten()?;
        (age(now, stamp) < self.ageing()).then_some(PortId(port))
    }

    /// Records that `mac` was seen as a source on `port` in `domain` at `now`.
    #[inline]
    pub fn learn(&self, domain: DomainId, mac: MacAddr, port: PortId, now: Seconds) -> Learned {
        let k = key(domain, mac);
        let b = self.bucket(k);
        let ageing = self.ageing();
        // Known on this port (nearly every frame): at most a stamp store, no writer's lock.
        let seen = b.read(READ_TRIES, |b| {
            b.find(k)
                .map(|i| (i, b.ports[i].load(RELAXED), b.stamps[i].load(RELAXED)))
        });
        if let Some(Some((i, p, stamp))) = seen {
            if p == port.0 {
                return refresh(b, i, stamp, now, ageing);
            }
        }
        let s = b.lock();
        let (outcome, wrote) = learn_locked(b, k, port.0, now, ageing);
        b.unlock(s, wrote);
        outcome
    }

    /// Forgets every entry that points at `port` (the port went away).
    pub fn flush_port(&self, port: PortId) -> usize {
        let on_port = |b: &Bucket, i: usize| {
            b.keys[i].load(RELAXED) != EMPTY && b.ports[i].load(RELAXED) == port.0
        };
        let mut n = 0;
        for b in self.buckets.iter() {
            // Buckets seen without an entry of the port are left alone (their readers undisturbed).
            if b.read(READ_TRIES, |b| (0..BUCKET).any(|i| on_port(b, i))) == Some(false) {
                continue;
            }
            let s = b.lock();
            let mut wrote = false;
            for i in 0..BUCKET {
                if on_port(b, i) {
                    b.write(i, EMPTY_SLOT);
                    n += 1;
                    wrote = true;
                }
            }
            b.unlock(s, wrote);
        }
        n
    }

    /// Forgets everything.
    pub fn clear(&self) {
        for b in self.buckets.iter() {
            if b.read(READ_TRIES, |b| {
                b.keys.iter().all(|k| k.load(RELAXED) == EMPTY)
            }) == Some(true)
            {
                continue;
            }
            let s = b.lock();
            for i in 0..BUCKET {
                b.write(i, EMPTY_SLOT);
            }
            b.unlock(s, true);
        }
    }

    /// Live entries at `now`, in table order.
    pub fn entries(&self, now: Seconds) -> impl Iterator<Item = MacEntry> + '_ {
        self.entries_in(0..self.slots(), now)
    }

    /// Number of entry slots (a walk over `0..slots()` in pieces sees every entry).
    pub fn slots(&self) -> usize {
        self.capacity()
    }

    /// Live entries at `now` among slots `range` (clamped to the table), in table order: a
    /// listing walked in pieces, so no single call takes long. Each bucket is copied whole
    /// and consistently, so an entry is listed once, with the port it was learned on.
    pub fn entries_in(
        &self,
        range: std::ops::Range<usize>,
        now: Seconds,
    ) -> impl Iterator<Item = MacEntry> + '_ {
        let end = range.end.min(self.slots());
        let start = range.start.min(end);
        let first = start / BUCKET;
        let ageing = self.ageing();
        self.buckets[first..end.div_ceil(BUCKET)]
            .iter()
            .enumerate()
            .flat_map(move |(j, b)| {
                let base = (first + j) * BUCKET;
                let snap = b.snapshot();
                (0..BUCKET)
                    .filter(move |i| (start..end).contains(&(base + i)))
                    .map(move |i| snap[i])
                    .filter(move |s| s.key != EMPTY && age(now, s.stamp) < ageing)
                    .map(move |s| MacEntry {
                        domain: DomainId((s.key >> 48) as u16),
                        mac: MacAddr::from_u64(s.key & 0xffff_ffff_ffff),
                        port: PortId(s.port),
                        age: age(now, s.stamp),
                    })
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

/// The station in slot `i` was seen again on its port: moves its stamp forward (a plain
/// store, outside the seqlock: see the module's documentation).
#[inline(always)]
fn refresh(b: &Bucket, i: usize, stamp: Seconds, now: Seconds, ageing: Seconds) -> Learned {
    let a = age(now, stamp);
    if a > 0 {
        b.stamps[i].store(now, RELAXED);
    }
    if a < ageing {
        Learned::Refreshed
    } else {
        Learned::New
    }
}

/// `learn` with the bucket held: returns the outcome, and whether a key or port was written.
fn learn_locked(b: &Bucket, k: u64, port: u16, now: Seconds, ageing: Seconds) -> (Learned, bool) {
    let mut free: Option<usize> = None;
    let mut oldest = 0usize;
    let mut oldest_age = 0;
    for i in 0..BUCKET {
        let s = b.slot(i);
        let a = age(now, s.stamp);
        if s.key == k {
            if s.port == port {
                // Learned by another thread since our look.
                return (refresh(b, i, s.stamp, now, ageing), false);
            }
            b.ports[i].store(port, RELAXED);
            b.stamps[i].store(now, RELAXED);
            let outcome = if a < ageing {
                Learned::Moved
            } else {
                Learned::New
            };
            return (outcome, true);
        }
        if free.is_none() && (s.key == EMPTY || a >= ageing) {
            free = Some(i);
        } else if a >= oldest_age {
            oldest_age = a;
            oldest = i;
        }
    }
    let (i, outcome) = match free {
        Some(i) => (i, Learned::New),
        None => (oldest, Learned::Evicted),
    };
    b.write(
        i,
        Slot {
            key: k,
            stamp: now,
            port,
        },
    );
    (outcome, true)
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
        let t = MacTable::new(1024, 300);
        assert_eq!(t.lookup(D, mac(1), 0), None);
        assert_eq!(t.learn(D, mac(1), PortId(3), 0), Learned::New);
        assert_eq!(t.lookup(D, mac(1), 5), Some(PortId(3)));
        assert_eq!(t.learn(D, mac(1), PortId(3), 6), Learned::Refreshed);
    }

    #[test]
    fn station_moves_to_new_port() {
        let t = MacTable::new(1024, 300);
        t.learn(D, mac(1), PortId(1), 0);
        assert_eq!(t.learn(D, mac(1), PortId(2), 1), Learned::Moved);
        assert_eq!(t.lookup(D, mac(1), 1), Some(PortId(2)));
        assert_eq!(t.len(1), 1, "a move must not leave a stale duplicate");
    }

    #[test]
    fn entries_age_out_and_refresh_extends_life() {
        let t = MacTable::new(1024, 10);
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
        let t = MacTable::new(1024, 300);
        t.learn(DomainId(1), mac(1), PortId(1), 0);
        assert_eq!(t.lookup(DomainId(2), mac(1), 0), None);
        t.learn(DomainId(2), mac(1), PortId(2), 0);
        assert_eq!(t.lookup(DomainId(1), mac(1), 0), Some(PortId(1)));
        assert_eq!(t.lookup(DomainId(2), mac(1), 0), Some(PortId(2)));
    }

    #[test]
    fn mac_flood_is_bounded_and_recent_stations_survive() {
        let t = MacTable::new(4096, 300);
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
        let t = MacTable::new(1024, 300);
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
        let t = MacTable::new(64, 300);
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

    #[test]
    fn entries_in_pieces_list_each_entry_once() {
        let t = MacTable::new(256, 300);
        for i in 0..100 {
            t.learn(D, mac(i), PortId(1), 0);
        }
        let whole: Vec<_> = t.entries(0).collect();
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < t.slots() {
            pieces.extend(t.entries_in(at..at + 5, 0));
            at += 5;
        }
        assert_eq!(whole.len(), 100);
        assert_eq!(pieces, whole);
        assert_eq!(
            t.entries_in(std::ops::Range { start: 7, end: 3 }, 0)
                .count(),
            0
        );
        assert_eq!(t.entries_in(1000..2000, 0).count(), 0);
    }

    #[test]
    fn a_stamp_ahead_of_the_clock_is_live_and_stamps_only_move_forward() {
        // Users sample one clock at different moments: a stamp a second ahead is age 0.
        let t = MacTable::new(64, 10);
        t.learn(D, mac(1), PortId(1), 101);
        assert_eq!(t.lookup(D, mac(1), 100), Some(PortId(1)));
        assert_eq!(t.entries(100).next().map(|e| e.age), Some(0));
        // A learner behind the clock refreshes without moving the stamp back.
        assert_eq!(t.learn(D, mac(1), PortId(1), 100), Learned::Refreshed);
        assert_eq!(t.lookup(D, mac(1), 110), Some(PortId(1)));
        assert_eq!(t.lookup(D, mac(1), 111), None);
    }

    #[test]
    fn set_ageing_through_a_shared_reference() {
        let t = std::sync::Arc::new(MacTable::new(64, 300));
        t.learn(D, mac(1), PortId(1), 0);
        t.set_ageing(5);
        assert_eq!(t.ageing(), 5);
        assert_eq!(t.lookup(D, mac(1), 5), None);
        t.set_ageing(0);
        assert_eq!(t.ageing(), 1, "at least a second");
    }

    #[test]
    fn the_table_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<MacTable>();
    }

    /// Key `i` is only ever learned on port 2i or 2i+1, so a port that belongs to another
    /// key's entry (a torn read) shows.
    fn ports_of(i: u64) -> [PortId; 2] {
        [PortId((2 * i) as u16), PortId((2 * i + 1) as u16)]
    }

    /// Several threads learn (their own stations and shared ones, which move between ports,
    /// in a table far smaller than the stations so that evictions never stop), flush ports,
    /// and look up any station, for about a second: a lookup answers `None` or a port learned
    /// for that very station, never another's.
    #[test]
    fn concurrent_learners_and_readers_never_see_a_foreign_port() {
        use std::sync::atomic::{AtomicU64 as Count, Ordering::Relaxed};
        use std::sync::Arc;
        use std::time::{Duration, Instant};
        const THREADS: u64 = 4;
        const OWN: u64 = 12;
        const SHARED: u64 = 8;
        const KEYS: u64 = THREADS * OWN + SHARED;
        const MAX_ROUNDS: u64 = 2_000_000;
        let t = Arc::new(MacTable::new(16, 3));
        let start = Instant::now();
        let hits = Arc::new(Count::new(0));
        let workers: Vec<_> = (0..THREADS)
            .map(|th| {
                let t = t.clone();
                let hits = hits.clone();
                std::thread::spawn(move || {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (th + 1);
                    let mut now: Seconds = 0;
                    let mut n = 0u64;
                    let mut found = 0u64;
                    while n < MAX_ROUNDS {
                        if n % 1024 == 0 {
                            let ms = start.elapsed().as_millis();
                            if ms >= 1000 {
                                break;
                            }
                            // A tenth of a second per tick: entries age out after 0.3 s.
                            now = (ms / 100) as Seconds;
                        }
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let i = if x & 1 == 0 {
                            th * OWN + (x >> 8) % OWN
                        } else {
                            THREADS * OWN + (x >> 8) % SHARED
                        };
                        let port = ports_of(i)[(x >> 1) as usize & 1];
                        t.learn(D, mac(i), port, now);
                        let j = (x >> 32) % KEYS;
                        if let Some(p) = t.lookup(D, mac(j), now) {
                            assert!(
                                ports_of(j).contains(&p),
                                "station {j} looked up on {p}, never learned there"
                            );
                            found += 1;
                        }
                        if (x >> 20) & 0x3fff == 0 {
                            t.flush_port(port);
                        }
                        n += 1;
                    }
                    hits.fetch_add(found, Relaxed);
                    n
                })
            })
            .collect();
        let rounds: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
        eprintln!(
            "{rounds} rounds, {} lookups found a port",
            hits.load(Relaxed)
        );
        assert!(start.elapsed() < Duration::from_secs(30));
        assert!(rounds > 0);
        assert!(
            hits.load(Relaxed) > 0,
            "lookups found nothing in {rounds} rounds"
        );
        let now = (start.elapsed().as_millis() / 100) as Seconds;
        let mut seen = std::collections::HashSet::new();
        for e in t.entries(now) {
            let i = e.mac.to_u64() & 0xffff_ffff;
            assert!(ports_of(i).contains(&e.port));
            assert!(seen.insert(i), "station {i} listed twice");
        }
    }
}
