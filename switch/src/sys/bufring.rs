//! `BufRing`: the memory of one provided-buffer ring (io_uring's `IORING_REGISTER_PBUF_RING`)
//! and the map from the ring's 16-bit buffer ids to pool buffers.
//!
//! The kernel takes receive buffers from the entries between its head and the tail published
//! here, and names the one it filled by its id in the completion. A buffer posted to the ring
//! belongs to it (its single pool reference is held for the kernel) until a completion names
//! its id or the ring is emptied after unregistering. Ids come from a free list and return to
//! it only when their completion is reaped, so an id is never reused while the kernel may
//! still name it, in whatever order it consumes entries; a pool may hold more than 65536
//! buffers because the id is a slot in this map, not the buffer's index. Registration with the
//! kernel is `Ring`'s business (uring.rs). Never allocates after construction; not `Sync`.

use crate::ids::BufIndex;
use memmap2::{MmapMut, MmapOptions};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

/// One entry as the kernel reads it (`struct io_uring_buf`). The first entry's `resv` field
/// is the ring's tail, so entries are written field by field and `resv` never.
#[repr(C)]
struct RawEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(std::mem::size_of::<RawEntry>() == 16);
const _: () = assert!(
    std::mem::size_of::<RawEntry>() == std::mem::size_of::<io_uring::types::BufRingEntry>()
);

/// Byte offset of the tail within the ring (the first entry's `resv`).
const TAIL_OFFSET: usize = 14;

/// An id that holds no buffer.
const FREE: u32 = u32::MAX;

/// Most entries the kernel accepts in one ring.
pub const MAX_ENTRIES: u16 = 32768;

pub(crate) struct BufRing {
    map: MmapMut,
    mask: u16,
    /// The next entry to write; entries before it are published once `publish` runs.
    tail: u16,
    /// Buffer id → the pool buffer posted under it, or `FREE`.
    held: Box<[u32]>,
    /// Ids not holding a buffer.
    free_ids: Vec<u16>,
}

impl BufRing {
    /// Maps a ring of `entries` entries (a power of two, at most 32768), empty.
    pub(crate) fn new(entries: u16) -> io::Result<BufRing> {
        if !entries.is_power_of_two() || entries > MAX_ENTRIES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("buffer ring of {entries} entries: must be a power of two up to 32768"),
            ));
        }
        let n = entries as usize;
        // An anonymous mapping is page-aligned and zero-filled: tail 0, as the kernel expects.
        let map = MmapOptions::new()
            .len(n * std::mem::size_of::<RawEntry>())
            .map_anon()?;
        Ok(BufRing {
            map,
            mask: entries - 1,
            tail: 0,
            held: vec![FREE; n].into_boxed_slice(),
            free_ids: (0..entries).rev().collect(),
        })
    }

    /// Address of the ring memory, for registration.
    pub(crate) fn addr(&self) -> u64 {
        self.map.as_ptr() as u64
    }

    /// Buffers posted and not yet named by a completion.
    #[inline]
    pub(crate) fn held(&self) -> usize {
        self.held.len() - self.free_ids.len()
    }

    /// How many more buffers fit.
    #[inline]
    pub(crate) fn room(&self) -> usize {
        self.free_ids.len()
    }

    /// Writes `buf` (`len` bytes at `addr`) at the tail; the kernel sees it after `publish`.
    /// Returns false, posting nothing, when the ring is full.
    #[inline]
    pub(crate) fn push(&mut self, buf: BufIndex, addr: *mut u8, len: u32) -> bool {
        let Some(bid) = self.free_ids.pop() else {
            return false;
        };
        self.held[bid as usize] = buf.0;
        let slot = (self.tail & self.mask) as usize;
        let base = self.map.as_mut_ptr().cast::<RawEntry>();
        // SAFETY: `slot` is within the mapping's `entries` entries, 16-byte aligned as the
        // mapping is page-aligned. At most `entries` ids are out, so at most `entries` entries
        // lie between the kernel's head and the tail: this slot is not one the kernel may still
        // read. Only addr, len and bid are written; `resv` of slot 0 is the tail.
        unsafe {
            let e = base.add(slot);
            std::ptr::addr_of_mut!((*e).addr).write(addr as u64);
            std::ptr::addr_of_mut!((*e).len).write(len);
            std::ptr::addr_of_mut!((*e).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        true
    }

    /// Makes every entry written so far visible to the kernel.
    #[inline]
    pub(crate) fn publish(&mut self) {
        // SAFETY: the tail is 2 bytes at offset 14 of the page-aligned mapping, so it is
        // aligned for an AtomicU16; the kernel reads it with an acquire load, and nothing here
        // accesses those bytes other than through this atomic.
        let tail = unsafe { AtomicU16::from_ptr(self.map.as_mut_ptr().add(TAIL_OFFSET).cast()) };
        // Release: the entries' fields are written before the kernel can see the new tail.
        tail.store(self.tail, Ordering::Release);
    }

    /// A completion named buffer id `bid`: the buffer passes to the caller, the id is free.
    #[inline]
    pub(crate) fn take(&mut self, bid: u16) -> Option<BufIndex> {
        let slot = self.held.get_mut(bid as usize)?;
        if *slot == FREE {
            return None;
        }
        let buf = BufIndex(*slot);
        *slot = FREE;
        self.free_ids.push(bid);
        Some(buf)
    }

    /// Takes back every posted buffer (the ring must no longer be registered, so nothing can
    /// consume or name them); calls `f` with each.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(BufIndex)) {
        for bid in 0..self.held.len() {
            if self.held[bid] != FREE {
                f(BufIndex(self.held[bid]));
                self.held[bid] = FREE;
                self.free_ids.push(bid as u16);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(r: &BufRing, slot: usize) -> (u64, u32, u16) {
        let b = &r.map[slot * 16..slot * 16 + 16];
        (
            u64::from_ne_bytes(b[0..8].try_into().unwrap()),
            u32::from_ne_bytes(b[8..12].try_into().unwrap()),
            u16::from_ne_bytes(b[12..14].try_into().unwrap()),
        )
    }

    fn published_tail(r: &BufRing) -> u16 {
        u16::from_ne_bytes(r.map[TAIL_OFFSET..TAIL_OFFSET + 2].try_into().unwrap())
    }

    #[test]
    fn ids_name_buffers_beyond_sixteen_bits() {
        let mut r = BufRing::new(4).unwrap();
        let big = BufIndex(70_000);
        assert!(r.push(big, 0x1000 as *mut u8, 2048));
        let (addr, len, bid) = entry(&r, 0);
        assert_eq!((addr, len), (0x1000, 2048));
        assert_eq!(r.take(bid), Some(big));
        assert_eq!(r.take(bid), None, "an id names its buffer once");
        assert_eq!(r.take(9), None, "ids beyond the ring name nothing");
    }

    #[test]
    fn a_full_ring_refuses_and_a_taken_id_makes_room() {
        let mut r = BufRing::new(2).unwrap();
        assert!(r.push(BufIndex(1), std::ptr::null_mut(), 64));
        assert!(r.push(BufIndex(2), std::ptr::null_mut(), 64));
        assert!(!r.push(BufIndex(3), std::ptr::null_mut(), 64));
        assert_eq!((r.held(), r.room()), (2, 0));
        let (_, _, bid) = entry(&r, 1);
        assert_eq!(r.take(bid), Some(BufIndex(2)));
        assert!(r.push(BufIndex(3), std::ptr::null_mut(), 64));
        // Slot 0 again: it carries the free id, not the one still held.
        let (_, _, bid) = entry(&r, 0);
        assert_eq!(r.take(bid), Some(BufIndex(3)));
    }

    #[test]
    fn writing_the_first_entry_leaves_the_published_tail_alone() {
        let mut r = BufRing::new(4).unwrap();
        for i in 0..4 {
            assert!(r.push(BufIndex(i), (0x10_000 + i as usize * 2048) as *mut u8, 2048));
        }
        r.publish();
        assert_eq!(published_tail(&r), 4);
        for slot in 0..4 {
            let (_, _, bid) = entry(&r, slot);
            assert!(r.take(bid).is_some());
        }
        assert!(r.push(BufIndex(7), 0xdead_0000 as *mut u8, 2048));
        assert_eq!(published_tail(&r), 4, "slot 0's entry overwrote the tail");
        r.publish();
        assert_eq!(published_tail(&r), 5);
    }

    #[test]
    fn drain_returns_every_posted_buffer_once() {
        let mut r = BufRing::new(8).unwrap();
        for i in 0..5 {
            assert!(r.push(BufIndex(100 + i), std::ptr::null_mut(), 64));
        }
        let (_, _, bid) = entry(&r, 2);
        assert_eq!(r.take(bid), Some(BufIndex(102)));
        let mut got = Vec::new();
        r.drain(|b| got.push(b.0));
        got.sort();
        assert_eq!(got, [100, 101, 103, 104]);
        assert_eq!((r.held(), r.room()), (0, 8));
    }

    #[test]
    fn sizes_must_be_powers_of_two_the_kernel_takes() {
        assert!(BufRing::new(3).is_err());
        assert!(BufRing::new(0).is_err());
        assert!(BufRing::new(MAX_ENTRIES).is_ok());
    }
}
