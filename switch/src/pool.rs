//! `BufferPool`: a worker's frame buffers, carved out of anonymous mmap'd regions, and the
//! path by which buffers come home from other threads.
//!
//! A frame is a `BufIndex` plus a length. Two size classes: small buffers (a power of two, 2 KiB
//! by default, so an index maps to an address with a shift) for every frame a plain port
//! carries, and — only when asked for at construction — large buffers of `LARGE_BUF_SIZE`
//! bytes for 64 KiB segments (offloads). Small frames never pay for the large class beyond one
//! predictable branch.
//!
//! Each buffer carries a reference count so one received frame can be flooded to several
//! ports without a copy: the buffer returns to its free stack when the last transmission that
//! uses it completes. Every buffer has a home, the pool that allocated it (`Frame::home` says
//! which), and only the home's thread touches its reference count. A thread that is done with
//! a reference to a buffer of another home hands it back through that home's return queue (a
//! bounded lock-free queue in the shared `PoolRegistry`, `release_to`); the home folds the
//! queue into its counts in `reclaim`, once per loop. Beside each buffer the pool keeps its
//! frame's offload record (`offload`), written by the port that received it.
//!
//! The pool never allocates after construction on these paths, and it is owned by exactly one
//! worker (not `Sync`). A bare `BufIndex` given to a pool is one of its own.

use crate::frame::Offload;
use crate::ids::{BufIndex, WorkerId};
use crate::sync::spsc::Spsc;
use memmap2::{MmapMut, MmapOptions};
use std::sync::{Arc, Mutex, OnceLock};

/// Size of a large buffer: a 64 KiB segment plus room in front for headers (virtio-net,
/// encapsulations), a whole number of pages.
pub const LARGE_BUF_SIZE: usize = 65536 + 4096;

/// Bytes every port leaves free in front of a frame it receives: a header the kernel hands
/// over with the frame (a virtio-net header) lands there, and a header another port must
/// send in front of the frame (its virtio-net header) is written there, in place.
pub const HEADROOM: usize = 64;

/// Why the pool could not be created.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("buffer size {0} is not a power of two between 64 and 65536")]
    BadBufferSize(usize),
    #[error("buffer count {0} is not between 1 and 2^23")]
    BadCount(usize),
    #[error("large buffer count {0} is above 2^23")]
    BadLargeCount(usize),
    #[error("worker {0} has no return queue in the pool registry")]
    NotRegistered(WorkerId),
    #[error("worker {0} already has a pool in this registry")]
    Taken(WorkerId),
    #[error("cannot map {bytes} bytes for the buffer pool: {source}")]
    Map {
        bytes: usize,
        #[source]
        source: std::io::Error,
    },
}

/// What every pool shares with the others: the return rings by which references to a
/// pool's buffers come home, and where each pool's memory is, so a worker can copy a frame out
/// of a buffer another worker lent it (`remote_frame`).
///
/// One return ring per ordered pair of pools (`returns[from * pools + home]`): each has one
/// producer (the worker `from`) and one consumer (the home), so a give-back is a wait-free
/// push (`Spsc`). A pool that is dropped leaves its mappings here until the registry itself
/// goes, so a frame another worker still copies never points at unmapped memory.
pub struct PoolRegistry {
    pools: usize,
    returns: Box<[Spsc<BufIndex>]>,
    views: Box<[OnceLock<View>]>,
    keep: Mutex<Vec<Region>>,
}

/// Where one pool's buffers lie (addresses as integers: the registry is shared, the memory
/// is read only through `remote_frame`'s contract).
#[derive(Clone, Copy)]
struct View {
    small: usize,
    small_len: usize,
    shift: u32,
    small_count: usize,
    large: usize,
    large_len: usize,
}

impl PoolRegistry {
    /// Return rings between `pools` pools, each holding up to `capacity` references in
    /// transit.
    pub fn new(pools: usize, capacity: usize) -> Arc<PoolRegistry> {
        let pools = pools.max(1);
        Arc::new(PoolRegistry {
            pools,
            returns: (0..pools * pools)
                .map(|_| Spsc::new(capacity.max(2)))
                .collect(),
            views: (0..pools).map(|_| OnceLock::new()).collect(),
            keep: Mutex::new(Vec::new()),
        })
    }

    /// How many pools the registry links.
    pub fn pools(&self) -> usize {
        self.pools
    }

    /// Hands one reference to buffer `b` of `home`'s pool back from pool `from`'s thread;
    /// false if that ring is full (the caller keeps the reference and tries again later).
    #[inline]
    pub fn give_back(&self, from: WorkerId, home: WorkerId, b: BufIndex) -> bool {
        if from.index() >= self.pools || home.index() >= self.pools {
            return false;
        }
        self.returns[from.index() * self.pools + home.index()]
            .push(b)
            .is_ok()
    }

    /// The `len` bytes at `off` in buffer `b` of `home`'s pool, or `None` if that pool is not
    /// registered or the range lies outside the buffer.
    ///
    /// # Safety
    /// The caller holds a reference to `b` (so its home does not reuse it) that was handed to
    /// it with release/acquire ordering after the frame was written (a ring between workers),
    /// and gives it back only after it is done with the slice; the home writes no byte of
    /// `off..off + len` while references are out (it completes checksums in place only while
    /// forwarding, before it lends the buffer).
    #[inline]
    pub unsafe fn remote_frame(
        &self,
        home: WorkerId,
        b: BufIndex,
        off: usize,
        len: usize,
    ) -> Option<&[u8]> {
        let v = self.views.get(home.index())?.get()?;
        let i = b.index();
        let (base, size, region_end, start) = if i < v.small_count {
            (v.small, 1usize << v.shift, v.small_len, i << v.shift)
        } else {
            let start = (i - v.small_count).checked_mul(LARGE_BUF_SIZE)?;
            (v.large, LARGE_BUF_SIZE, v.large_len, start)
        };
        let end = off.checked_add(len)?;
        if base == 0 || end > size || start + size > region_end {
            return None;
        }
        // SAFETY: `start + off .. start + end` lies inside one buffer of a mapping that lives
        // as long as the registry (`keep`); the caller's contract rules out concurrent writes.
        Some(unsafe { std::slice::from_raw_parts((base + start + off) as *const u8, len) })
    }
}

struct Region {
    map: MmapMut,
    huge: bool,
}

/// Maps `bytes` on huge pages when the system has them; otherwise on normal pages, touched
/// up front with `populate` (so the hot path never faults) or left to fault in as used.
fn map_region(bytes: usize, populate: bool) -> Result<Region, PoolError> {
    let huge = if populate {
        MmapOptions::new().len(bytes).huge(None).map_anon().ok()
    } else {
        // Huge pages are committed when mapped: not for a region used sparsely.
        None
    };
    match huge {
        Some(map) => Ok(Region { map, huge: true }),
        None => {
            let mut o = MmapOptions::new();
            o.len(bytes);
            if populate {
                o.populate();
            }
            o.map_anon()
                .map(|map| Region { map, huge: false })
                .map_err(|source| PoolError::Map { bytes, source })
        }
    }
}

/// Fixed-size frame buffers in one or two mappings, with free stacks and per-buffer reference
/// counts. Buffer indices are dense: small buffers are `0..small_count`, large ones follow.
pub struct BufferPool {
    home: WorkerId,
    small: Region,
    shift: u32,
    small_count: u32,
    large: Option<Region>,
    free: Vec<u32>,
    free_large: Vec<u32>,
    /// Reference counts by index.
    refs: Vec<u16>,
    /// Offload records by index.
    offload: Vec<Offload>,
    registry: Arc<PoolRegistry>,
    /// References to other homes' buffers whose return queue was full.
    deferred: Vec<(WorkerId, BufIndex)>,
}

impl BufferPool {
    /// A pool of `count` small buffers of `buf_size` bytes, home 0, with a registry of its own
    /// (a single-threaded pool: tests, benchmarks, the in-memory switch).
    pub fn new(count: usize, buf_size: usize) -> Result<BufferPool, PoolError> {
        Self::with_home(WorkerId(0), count, buf_size, 0, PoolRegistry::new(1, count))
    }

    /// A pool whose buffers belong to `home`: `count` small buffers of `buf_size` bytes and
    /// `large` buffers of `LARGE_BUF_SIZE`, on huge pages when the system has them.
    pub fn with_home(
        home: WorkerId,
        count: usize,
        buf_size: usize,
        large: usize,
        registry: Arc<PoolRegistry>,
    ) -> Result<BufferPool, PoolError> {
        if !buf_size.is_power_of_two() || !(64..=65536).contains(&buf_size) {
            return Err(PoolError::BadBufferSize(buf_size));
        }
        let max = 1usize << 23;
        if count == 0 || count > max {
            return Err(PoolError::BadCount(count));
        }
        if large > max {
            return Err(PoolError::BadLargeCount(large));
        }
        if registry.pools <= home.index() {
            return Err(PoolError::NotRegistered(home));
        }
        let small = map_region(count * buf_size, true)?;
        // Large buffers serve offload ports only: their pages come when first used.
        let large_region = if large > 0 {
            Some(map_region(large * LARGE_BUF_SIZE, false)?)
        } else {
            None
        };
        let n = count as u32;
        let view = View {
            small: small.map.as_ptr() as usize,
            small_len: small.map.len(),
            shift: buf_size.trailing_zeros(),
            small_count: count,
            large: large_region.as_ref().map_or(0, |l| l.map.as_ptr() as usize),
            large_len: large_region.as_ref().map_or(0, |l| l.map.len()),
        };
        if registry.views[home.index()].set(view).is_err() {
            return Err(PoolError::Taken(home));
        }
        // Free stacks popped from the end: hand out low indices first (better locality).
        Ok(BufferPool {
            home,
            small,
            shift: buf_size.trailing_zeros(),
            small_count: n,
            large: large_region,
            free: (0..n).rev().collect(),
            free_large: (n..n + large as u32).rev().collect(),
            refs: vec![0; count + large],
            offload: vec![Offload::NONE; count + large],
            registry,
            deferred: Vec::with_capacity(1024),
        })
    }

    /// The worker whose buffers these are.
    pub fn home(&self) -> WorkerId {
        self.home
    }

    /// Size of each small buffer in bytes.
    #[inline]
    pub fn buf_size(&self) -> usize {
        1 << self.shift
    }

    /// Whether `b` is a large buffer.
    #[inline]
    pub fn is_large(&self, b: BufIndex) -> bool {
        b.index() >= self.small_count as usize
    }

    /// Size of buffer `b` in bytes.
    #[inline]
    pub fn size_of(&self, b: BufIndex) -> usize {
        if self.is_large(b) {
            LARGE_BUF_SIZE
        } else {
            self.buf_size()
        }
    }

    /// Number of small buffers in the pool.
    pub fn capacity(&self) -> usize {
        self.small_count as usize
    }

    /// Number of large buffers in the pool.
    pub fn large_capacity(&self) -> usize {
        self.refs.len() - self.small_count as usize
    }

    /// Number of small buffers on the free stack.
    #[inline]
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Number of large buffers on the free stack.
    pub fn available_large(&self) -> usize {
        self.free_large.len()
    }

    /// Whether the small buffers sit on huge pages.
    pub fn huge_pages(&self) -> bool {
        self.small.huge
    }

    /// Takes a free small buffer; its reference count is 1.
    #[inline]
    pub fn alloc(&mut self) -> Option<BufIndex> {
        let i = self.free.pop()?;
        self.refs[i as usize] = 1;
        Some(BufIndex(i))
    }

    /// Takes a free large buffer; its reference count is 1.
    pub fn alloc_large(&mut self) -> Option<BufIndex> {
        let i = self.free_large.pop()?;
        self.refs[i as usize] = 1;
        Some(BufIndex(i))
    }

    /// Adds `n` references to a buffer of this pool that is in use (one per extra
    /// transmission).
    #[inline]
    pub fn retain(&mut self, b: BufIndex, n: u16) {
        let i = b.index();
        let r = &mut self.refs[i];
        debug_assert!(*r > 0, "retain of free buffer {b:?}");
        *r += n;
    }

    /// Drops one reference to one of this pool's buffers; the buffer returns to its free
    /// stack with the last one.
    #[inline]
    pub fn release(&mut self, b: BufIndex) {
        let i = b.index();
        let r = &mut self.refs[i];
        debug_assert!(*r > 0, "double release of buffer {b:?}");
        *r -= 1;
        if *r == 0 {
            if i < self.small_count as usize {
                self.free.push(i as u32);
            } else {
                self.free_large.push(i as u32);
            }
        }
    }

    /// Drops one reference to buffer `b` of `home`'s pool: here if it is this pool, else
    /// through its home's return queue (never blocking: a full queue is tried again at the
    /// next `reclaim`).
    #[inline]
    pub fn release_to(&mut self, home: WorkerId, b: BufIndex) {
        if home == self.home {
            self.release(b);
        } else {
            self.release_remote(home, b);
        }
    }

    #[cold]
    fn release_remote(&mut self, home: WorkerId, b: BufIndex) {
        if !self.registry.give_back(self.home, home, b) {
            self.deferred.push((home, b));
        }
    }

    /// Folds the references other threads handed back into the counts, and retries the
    /// references this pool could not hand back before. Called once per loop by the owner.
    #[inline]
    pub fn reclaim(&mut self) {
        let (home, n) = (self.home.index(), self.registry.pools);
        for from in 0..n {
            if from == home {
                continue;
            }
            while let Some(b) = self.registry.returns[from * n + home].pop() {
                self.release(b);
            }
        }
        if !self.deferred.is_empty() {
            let mut i = 0;
            while i < self.deferred.len() {
                let (h, b) = self.deferred[i];
                if self.registry.give_back(self.home, h, b) {
                    self.deferred.swap_remove(i);
                } else {
                    i += 1;
                }
            }
        }
    }

    /// The offload record of the frame in buffer `b` (meaningful where the frame's
    /// `Frame::OFFLOAD` flag is set).
    #[inline]
    pub fn offload(&self, b: BufIndex) -> &Offload {
        &self.offload[b.index()]
    }

    /// The offload record of buffer `b`, to change (a checksum completed in place).
    #[inline]
    pub fn offload_mut(&mut self, b: BufIndex) -> &mut Offload {
        &mut self.offload[b.index()]
    }

    /// Buffer `src` to read and a different buffer `dst` to write, at once (copying a frame
    /// from one buffer into another).
    ///
    /// # Panics
    /// If `src` and `dst` are the same buffer.
    pub fn pair_mut(&mut self, src: BufIndex, dst: BufIndex) -> (&[u8], &mut [u8]) {
        assert_ne!(src, dst, "a buffer paired with itself");
        let n = self.small_count as usize;
        let span = |pool: &Self, b: BufIndex| {
            let i = b.index();
            if i < n {
                (false, i << pool.shift, pool.buf_size())
            } else {
                (true, (i - n) * LARGE_BUF_SIZE, LARGE_BUF_SIZE)
            }
        };
        let (sl, ss, sn) = span(self, src);
        let (dl, ds, dn) = span(self, dst);
        let small = &mut self.small.map[..];
        let large = match &mut self.large {
            Some(l) => &mut l.map[..],
            None => &mut [][..],
        };
        match (sl, dl) {
            (false, true) => (&small[ss..ss + sn], &mut large[ds..ds + dn]),
            (true, false) => (&large[ss..ss + sn], &mut small[ds..ds + dn]),
            (false, false) => split_pair(small, (ss, sn), (ds, dn)),
            (true, true) => split_pair(large, (ss, sn), (ds, dn)),
        }
    }

    /// Records the offload metadata of the frame received into buffer `b`.
    #[inline]
    pub fn set_offload(&mut self, b: BufIndex, o: Offload) {
        self.offload[b.index()] = o;
    }

    /// References to other pools' buffers still waiting to be handed back.
    pub fn deferred(&self) -> usize {
        self.deferred.len()
    }

    /// The whole buffer `b`.
    #[inline]
    pub fn buf(&self, b: BufIndex) -> &[u8] {
        let i = b.index();
        let start = i << self.shift;
        // One bounds check tells a small buffer from a large one (whose index lies past the
        // small ones, so its small-sized slot would lie past the small region).
        match self.small.map.get(start..start + self.buf_size()) {
            Some(buf) => buf,
            None => self.large_buf(i),
        }
    }

    #[cold]
    fn large_buf(&self, i: usize) -> &[u8] {
        let start = (i - self.small_count as usize) * LARGE_BUF_SIZE;
        match &self.large {
            Some(l) => &l.map[start..start + LARGE_BUF_SIZE],
            None => panic!("buffer {i} is not in this pool"),
        }
    }

    /// The whole buffer `b`, writable.
    #[inline]
    pub fn buf_mut(&mut self, b: BufIndex) -> &mut [u8] {
        let i = b.index();
        let start = i << self.shift;
        let size = self.buf_size();
        if start + size <= self.small.map.len() {
            &mut self.small.map[start..start + size]
        } else {
            self.large_buf_mut(i)
        }
    }

    #[cold]
    fn large_buf_mut(&mut self, i: usize) -> &mut [u8] {
        let start = (i - self.small_count as usize) * LARGE_BUF_SIZE;
        match &mut self.large {
            Some(l) => &mut l.map[start..start + LARGE_BUF_SIZE],
            None => panic!("buffer {i} is not in this pool"),
        }
    }

    /// The first `len` bytes of buffer `b` (a received frame).
    #[inline]
    pub fn frame(&self, b: BufIndex, len: usize) -> &[u8] {
        &self.buf(b)[..len]
    }

    /// `len` bytes of buffer `b` from offset `off` (a received frame behind a header).
    #[inline]
    pub fn frame_at(&self, b: BufIndex, off: usize, len: usize) -> &[u8] {
        &self.buf(b)[off..off + len]
    }

    /// Start address of buffer `b`, for I/O submitted to the kernel. The address stays valid
    /// for the pool's lifetime; the caller must not hand one buffer to two concurrent reads.
    #[inline]
    pub fn addr(&mut self, b: BufIndex) -> *mut u8 {
        self.buf_mut(b).as_mut_ptr()
    }

    /// Which of `regions()` holds `b` (its io_uring fixed-buffer index).
    #[inline]
    pub fn region_index(&self, b: BufIndex) -> u16 {
        u16::from(self.is_large(b))
    }

    /// The mappings as (address, length), small first, for registering them with io_uring.
    pub fn regions(&mut self) -> Vec<(*mut u8, usize)> {
        let mut v = vec![(self.small.map.as_mut_ptr(), self.small.map.len())];
        if let Some(l) = &mut self.large {
            v.push((l.map.as_mut_ptr(), l.map.len()));
        }
        v
    }
}

impl Drop for BufferPool {
    /// The mappings stay with the registry (other workers may still be copying frames this
    /// pool lent them); they go when the registry does.
    fn drop(&mut self) {
        if self.registry.pools < 2 {
            return;
        }
        let Ok(placeholder) = MmapMut::map_anon(1) else {
            return;
        };
        let small = std::mem::replace(
            &mut self.small,
            Region {
                map: placeholder,
                huge: false,
            },
        );
        if let Ok(mut keep) = self.registry.keep.lock() {
            keep.push(small);
            keep.extend(self.large.take());
        }
    }
}

/// Two disjoint ranges of one region: `a` to read, `b` to write.
fn split_pair(region: &mut [u8], a: (usize, usize), b: (usize, usize)) -> (&[u8], &mut [u8]) {
    if a.0 < b.0 {
        let (lo, hi) = region.split_at_mut(b.0);
        (&lo[a.0..a.0 + a.1], &mut hi[..b.1])
    } else {
        let (lo, hi) = region.split_at_mut(a.0);
        (&hi[..a.1], &mut lo[b.0..b.0 + b.1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_release_and_refcounts() {
        let mut p = BufferPool::new(4, 2048).unwrap();
        assert_eq!(p.available(), 4);
        let a = p.alloc().unwrap();
        assert_eq!(a, BufIndex(0));
        p.retain(a, 2);
        p.release(a);
        p.release(a);
        assert_eq!(p.available(), 3);
        p.release(a);
        assert_eq!(p.available(), 4);
    }

    #[test]
    fn exhaustion_returns_none() {
        let mut p = BufferPool::new(2, 64).unwrap();
        assert!(p.alloc().is_some() && p.alloc().is_some());
        assert!(p.alloc().is_none());
        assert!(p.alloc_large().is_none(), "no large class unless asked for");
    }

    #[test]
    fn buffers_do_not_overlap() {
        let mut p = BufferPool::new(3, 128).unwrap();
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        p.buf_mut(a).fill(0xaa);
        p.buf_mut(b).fill(0xbb);
        assert!(p.buf(a).iter().all(|&x| x == 0xaa));
        assert!(p.buf(b).iter().all(|&x| x == 0xbb));
        assert_eq!(p.buf(a).len(), 128);
    }

    #[test]
    fn large_buffers_hold_64k_segments_beside_small_ones() {
        let reg = PoolRegistry::new(1, 16);
        let mut p = BufferPool::with_home(WorkerId(0), 4, 2048, 2, reg).unwrap();
        let s = p.alloc().unwrap();
        let l = p.alloc_large().unwrap();
        assert!(p.is_large(l) && !p.is_large(s));
        assert_eq!(p.buf(l).len(), LARGE_BUF_SIZE);
        assert_eq!((p.size_of(s), p.size_of(l)), (2048, LARGE_BUF_SIZE));
        p.buf_mut(l).fill(0x5a);
        p.buf_mut(s).fill(0xa5);
        assert!(p.buf(l).iter().all(|&x| x == 0x5a));
        assert_eq!(p.region_index(l), 1);
        assert_eq!(p.regions().len(), 2);
        p.release(l);
        p.release(s);
        assert_eq!((p.available(), p.available_large()), (4, 2));
    }

    #[test]
    fn references_dropped_on_another_thread_come_home() {
        let reg = PoolRegistry::new(2, 64);
        let mut home = BufferPool::with_home(WorkerId(0), 8, 2048, 0, reg.clone()).unwrap();
        let mut other = BufferPool::with_home(WorkerId(1), 8, 2048, 0, reg).unwrap();
        let b = home.alloc().unwrap();
        // Flooded to a local port and to two ports of the other worker.
        home.retain(b, 2);
        home.release_to(WorkerId(0), b);
        let t = std::thread::spawn(move || {
            other.release_to(WorkerId(0), b);
            other.release_to(WorkerId(0), b);
            assert_eq!(
                other.available(),
                8,
                "the other pool's own buffers are untouched"
            );
            other
        });
        let _other = t.join().unwrap();
        assert_eq!(home.available(), 7, "not home until reclaimed");
        home.reclaim();
        assert_eq!(home.available(), 8);
    }

    #[test]
    fn a_full_return_queue_defers_instead_of_blocking() {
        let reg = PoolRegistry::new(2, 2);
        let mut home = BufferPool::with_home(WorkerId(0), 4, 2048, 0, reg.clone()).unwrap();
        let mut other = BufferPool::with_home(WorkerId(1), 4, 2048, 0, reg).unwrap();
        let bufs: Vec<_> = (0..3).map(|_| home.alloc().unwrap()).collect();
        for b in &bufs {
            other.release_to(WorkerId(0), *b);
        }
        assert_eq!(other.deferred(), 1, "a ring of two holds two");
        home.reclaim();
        other.reclaim();
        assert_eq!(other.deferred(), 0);
        home.reclaim();
        assert_eq!(home.available(), 4);
    }

    #[test]
    fn a_lent_buffer_reads_from_another_pool_even_after_its_home_is_gone() {
        let reg = PoolRegistry::new(2, 16);
        let mut home = BufferPool::with_home(WorkerId(0), 8, 2048, 2, reg.clone()).unwrap();
        let b = home.alloc().unwrap();
        home.buf_mut(b)[64..68].copy_from_slice(b"abcd");
        let l = home.alloc_large().unwrap();
        home.buf_mut(l)[60000..60003].copy_from_slice(b"xyz");
        // SAFETY: the test holds both references and nothing writes the buffers.
        unsafe {
            assert_eq!(reg.remote_frame(WorkerId(0), b, 64, 4), Some(&b"abcd"[..]));
            assert_eq!(
                reg.remote_frame(WorkerId(0), l, 60000, 3),
                Some(&b"xyz"[..])
            );
            assert_eq!(
                reg.remote_frame(WorkerId(0), b, 2040, 9),
                None,
                "past the buffer"
            );
            assert_eq!(reg.remote_frame(WorkerId(1), b, 0, 1), None, "no such pool");
            assert_eq!(reg.remote_frame(WorkerId(0), BufIndex(99), 0, 1), None);
        }
        drop(home);
        // SAFETY: as above; the mapping outlives the pool.
        unsafe {
            assert_eq!(reg.remote_frame(WorkerId(0), b, 64, 4), Some(&b"abcd"[..]));
        }
        assert!(matches!(
            BufferPool::with_home(WorkerId(0), 8, 2048, 0, reg),
            Err(PoolError::Taken(WorkerId(0)))
        ));
    }

    #[test]
    fn pairs_of_buffers_borrow_apart_in_every_combination() {
        let reg = PoolRegistry::new(1, 16);
        let mut p = BufferPool::with_home(WorkerId(0), 4, 2048, 2, reg).unwrap();
        let (s1, s2) = (p.alloc().unwrap(), p.alloc().unwrap());
        let (l1, l2) = (p.alloc_large().unwrap(), p.alloc_large().unwrap());
        for (a, b) in [(s1, s2), (s2, s1), (l1, l2), (l2, l1), (s1, l1), (l2, s2)] {
            p.buf_mut(a).fill(7);
            p.buf_mut(b).fill(0);
            let (src, dst) = p.pair_mut(a, b);
            assert_eq!((src.len(), dst.len()), (p_len(a), p_len(b)));
            dst[..10].copy_from_slice(&src[..10]);
            assert_eq!(p.buf(b)[..10], [7; 10]);
            assert!(p.buf(b)[10..].iter().all(|&x| x == 0));
        }
        fn p_len(b: BufIndex) -> usize {
            if b.index() >= 4 {
                LARGE_BUF_SIZE
            } else {
                2048
            }
        }
    }

    #[test]
    fn offload_records_sit_beside_their_buffers() {
        let mut p = BufferPool::new(4, 2048).unwrap();
        let b = p.alloc().unwrap();
        let o = Offload {
            flags: 1,
            gso_type: 1,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        p.set_offload(b, o);
        assert_eq!(*p.offload(b), o);
        assert_eq!(*p.offload(BufIndex(1)), Offload::NONE);
    }

    #[test]
    fn rejects_bad_geometry() {
        assert!(matches!(
            BufferPool::new(4, 1000),
            Err(PoolError::BadBufferSize(1000))
        ));
        assert!(matches!(
            BufferPool::new(0, 2048),
            Err(PoolError::BadCount(0))
        ));
        let reg = PoolRegistry::new(1, 1);
        assert!(matches!(
            BufferPool::with_home(WorkerId(1), 4, 2048, 0, reg),
            Err(PoolError::NotRegistered(WorkerId(1)))
        ));
    }
}
