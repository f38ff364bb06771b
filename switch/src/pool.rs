//! `BufferPool`: a worker's frame buffers, carved out of one anonymous mmap'd region.
//!
//! A frame is a `BufIndex` plus a length. Buffers have a power-of-two size so an index maps to
//! an address with a shift. Each buffer carries a reference count so one received frame can be
//! flooded to several ports without a copy: the buffer returns to the free stack when the last
//! transmission that uses it completes. The pool never allocates after construction; it is owned
//! by exactly one worker and is not `Sync`.

use crate::ids::BufIndex;
use memmap2::{MmapMut, MmapOptions};

/// Why the pool could not be created.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("buffer size {0} is not a power of two between 64 and 65536")]
    BadBufferSize(usize),
    #[error("buffer count {0} is not between 1 and 2^24")]
    BadCount(usize),
    #[error("cannot map {bytes} bytes for the buffer pool: {source}")]
    Map {
        bytes: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Fixed-size frame buffers in one mapping, with a free stack and per-buffer reference counts.
pub struct BufferPool {
    region: MmapMut,
    shift: u32,
    count: u32,
    free: Vec<u32>,
    refs: Vec<u16>,
    huge_pages: bool,
}

impl BufferPool {
    /// Maps `count` buffers of `buf_size` bytes, on huge pages when the system has them.
    pub fn new(count: usize, buf_size: usize) -> Result<BufferPool, PoolError> {
        if !buf_size.is_power_of_two() || !(64..=65536).contains(&buf_size) {
            return Err(PoolError::BadBufferSize(buf_size));
        }
        if count == 0 || count > 1 << 24 {
            return Err(PoolError::BadCount(count));
        }
        let bytes = count * buf_size;
        let (region, huge_pages) = match MmapOptions::new().len(bytes).huge(None).map_anon() {
            Ok(m) => (m, true),
            Err(_) => {
                let m = MmapOptions::new()
                    .len(bytes)
                    .populate()
                    .map_anon()
                    .map_err(|source| PoolError::Map { bytes, source })?;
                (m, false)
            }
        };
        // Free stack popped from the end: hand out low indices first (better locality).
        let free = (0..count as u32).rev().collect();
        Ok(BufferPool {
            region,
            shift: buf_size.trailing_zeros(),
            count: count as u32,
            free,
            refs: vec![0; count],
            huge_pages,
        })
    }

    /// Size of each buffer in bytes.
    #[inline]
    pub fn buf_size(&self) -> usize {
        1 << self.shift
    }

    /// Number of buffers in the pool.
    pub fn capacity(&self) -> usize {
        self.count as usize
    }

    /// Number of buffers on the free stack.
    #[inline]
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Whether the region sits on huge pages.
    pub fn huge_pages(&self) -> bool {
        self.huge_pages
    }

    /// Takes a free buffer; its reference count is 1.
    #[inline]
    pub fn alloc(&mut self) -> Option<BufIndex> {
        let i = self.free.pop()?;
        self.refs[i as usize] = 1;
        Some(BufIndex(i))
    }

    /// Adds `n` references to a buffer that is in use (one per extra transmission).
    #[inline]
    pub fn retain(&mut self, b: BufIndex, n: u16) {
        let r = &mut self.refs[b.index()];
        debug_assert!(*r > 0, "retain of free buffer {b:?}");
        *r += n;
    }

    /// Drops one reference; the buffer returns to the free stack with the last one.
    #[inline]
    pub fn release(&mut self, b: BufIndex) {
        let r = &mut self.refs[b.index()];
        debug_assert!(*r > 0, "double release of buffer {b:?}");
        *r -= 1;
        if *r == 0 {
            self.free.push(b.0);
        }
    }

    /// The whole buffer `b`.
    #[inline]
    pub fn buf(&self, b: BufIndex) -> &[u8] {
        let start = b.index() << self.shift;
        &self.region[start..start + self.buf_size()]
    }

    /// The whole buffer `b`, writable.
    #[inline]
    pub fn buf_mut(&mut self, b: BufIndex) -> &mut [u8] {
        let start = b.index() << self.shift;
        let size = self.buf_size();
        &mut self.region[start..start + size]
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

    /// The whole region as (address, length), for registering it with io_uring.
    pub fn region(&mut self) -> (*mut u8, usize) {
        (self.region.as_mut_ptr(), self.region.len())
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
    fn rejects_bad_geometry() {
        assert!(matches!(
            BufferPool::new(4, 1000),
            Err(PoolError::BadBufferSize(1000))
        ));
        assert!(matches!(
            BufferPool::new(0, 2048),
            Err(PoolError::BadCount(0))
        ));
    }
}
