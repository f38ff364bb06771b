//! A guest's split virtqueues as the worker walks them: guest memory resolved to host
//! addresses once per memory table, ring structures once per ring set-up, each descriptor's
//! buffer once per use — no region look-up per byte and no iterator per access.
//!
//! Everything here lies in memory the guest shares and may change at any moment, so nothing
//! read from it is trusted: every index is bounded by the ring size, every buffer checked
//! against the regions, every chain bounded in length, and a broken rule is a [`RingError`]
//! (the port counts it as a frontend fault and stops serving the device). No reference to
//! guest memory is ever made: fields are read with volatile loads and atomics, buffers copied
//! with raw copies, so a guest that writes underneath the switch changes bytes, never the
//! switch's control flow beyond the checks.
//!
//! This module holds the raw-pointer code of the vhost-user data path; the layout is the
//! virtio 1.x split ring: 16-byte descriptors (`addr` u64, `len` u32, `flags` u16, `next`
//! u16); the available ring (`flags` u16, `idx` u16, `ring[size]` u16, `used_event` u16); the
//! used ring (`flags` u16, `idx` u16, `ring[size]` of `{id u32, len u32}`, `avail_event` u16).

use super::vhost_user::{GuestMem, VringConf};
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;
/// The largest split ring (virtio 1.x).
const MAX_SIZE: u16 = 32768;

/// A frontend broke a rule of the ring or of guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingError(pub String);

impl RingError {
    fn new(what: impl Into<String>) -> RingError {
        RingError(what.into())
    }
}

/// One mapped region of guest memory.
#[derive(Debug, Clone, Copy)]
struct HostRegion {
    gpa: u64,
    len: u64,
    host: *mut u8,
}

/// Guest memory with each region's host address resolved once.
pub struct HostMem {
    regions: Vec<HostRegion>,
    /// Keeps the mappings alive as long as pointers into them exist.
    _mem: Arc<GuestMem>,
}

// SAFETY: the raw pointers point into mappings owned by `_mem` (an `Arc<GuestMemoryMmap>`,
// itself `Send + Sync`); `HostMem` adds no thread-affine state, and all access through the
// pointers is bounds-checked and made without references (see the module comment).
unsafe impl Send for HostMem {}
// SAFETY: as above; `&HostMem` only reads the region table.
unsafe impl Sync for HostMem {}

impl HostMem {
    pub fn new(mem: Arc<GuestMem>) -> HostMem {
        let mut regions = Vec::with_capacity(mem.num_regions());
        for r in mem.iter() {
            if let Ok(host) = r.get_host_address(MemoryRegionAddress(0)) {
                regions.push(HostRegion {
                    gpa: r.start_addr().0,
                    len: r.len(),
                    host,
                });
            }
        }
        HostMem { regions, _mem: mem }
    }

    /// The guest memory this resolves.
    pub fn guest(&self) -> &Arc<GuestMem> {
        &self._mem
    }

    /// The host address of guest-physical `gpa` and how many bytes from there lie in the
    /// same region.
    #[inline]
    fn at(&self, gpa: u64) -> Option<(*mut u8, u64)> {
        for r in &self.regions {
            let off = gpa.wrapping_sub(r.gpa);
            if off < r.len {
                // `off < len` of a mapping: the offset stays inside it.
                return Some((r.host.wrapping_add(off as usize), r.len - off));
            }
        }
        None
    }

    /// The host address of `len` bytes at `gpa` that lie in one region.
    #[inline]
    fn span(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        match self.at(gpa) {
            Some((p, room)) if room >= len => Some(p),
            _ => None,
        }
    }

    /// Copies guest memory at `gpa` into `dst` (across regions if the buffer spans them).
    #[inline]
    pub fn read(&self, mut gpa: u64, dst: &mut [u8]) -> Result<(), RingError> {
        let mut at = 0;
        while at < dst.len() {
            let (p, room) = self.at(gpa).ok_or_else(|| {
                RingError::new(format!("buffer at {gpa:#x} is not in guest memory"))
            })?;
            let k = (dst.len() - at).min(room as usize);
            // SAFETY: `p .. p + k` lies inside a live mapping (`at` checked `k <= room`), and
            // `dst[at..at + k]` is ours; the two cannot overlap (guest memory is never handed
            // out as a Rust slice). A concurrent guest write only changes the bytes copied.
            unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr().add(at), k) };
            at += k;
            gpa = gpa.wrapping_add(k as u64);
        }
        Ok(())
    }

    /// Copies `src` into guest memory at `gpa` (across regions if the buffer spans them).
    #[inline]
    pub fn write(&self, mut gpa: u64, src: &[u8]) -> Result<(), RingError> {
        let mut at = 0;
        while at < src.len() {
            let (p, room) = self.at(gpa).ok_or_else(|| {
                RingError::new(format!("buffer at {gpa:#x} is not in guest memory"))
            })?;
            let k = (src.len() - at).min(room as usize);
            // SAFETY: as in `read`, the other way: `p .. p + k` is inside a live, writable
            // shared mapping and no Rust reference to it exists.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(at), p, k) };
            at += k;
            gpa = gpa.wrapping_add(k as u64);
        }
        Ok(())
    }
}

/// One descriptor as read from the guest.
#[derive(Debug, Clone, Copy, Default)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    #[inline]
    pub fn write_only(&self) -> bool {
        self.flags & DESC_F_WRITE != 0
    }
}

/// Reads descriptor `i` of a table at host address `table`.
///
/// # Safety
/// `table` must point at a live mapping of at least `(i + 1) * 16` bytes, 8-byte aligned.
#[inline]
unsafe fn read_desc(table: *const u8, i: u16) -> Desc {
    // SAFETY: the caller's promise; volatile because the guest shares it.
    unsafe {
        let p = table.add(usize::from(i) * 16);
        Desc {
            addr: u64::from_le(std::ptr::read_volatile(p as *const u64)),
            len: u32::from_le(std::ptr::read_volatile(p.add(8) as *const u32)),
            flags: u16::from_le(std::ptr::read_volatile(p.add(12) as *const u16)),
            next: u16::from_le(std::ptr::read_volatile(p.add(14) as *const u16)),
        }
    }
}

/// A hint to the CPU to fetch the cache line at `p`; no effect on what the program reads.
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and changes no state a program can observe, whatever
    // the address; callers pass addresses inside guest memory anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A running split ring.
pub struct SplitRing {
    size: u16,
    desc: *const u8,
    avail: *const u8,
    used: *mut u8,
    event_idx: bool,
    next_avail: u16,
    /// Used entries written, not yet published.
    next_used: u16,
    /// The used index the guest last saw.
    published: u16,
    /// Where the frontend put the ring (to tell a moved ring from the same one).
    conf: (u64, u64, u64, u16),
}

// SAFETY: the pointers point into guest memory kept mapped by the `HostMem` the port holds
// next to the ring for as long as the ring exists (the port drops rings before memory);
// a ring is used by one thread at a time (its worker).
unsafe impl Send for SplitRing {}

impl SplitRing {
    /// Sets a ring up as the frontend described it; it must lie in guest memory, aligned.
    pub fn new(mem: &HostMem, v: &VringConf, event_idx: bool) -> Result<SplitRing, RingError> {
        let size = v.size;
        if size == 0 || size > MAX_SIZE || !size.is_power_of_two() {
            return Err(RingError::new(format!(
                "a ring of size {size} (not a power of two up to 32768)"
            )));
        }
        let n = u64::from(size);
        let bad = || {
            RingError::new(format!(
                "a ring of size {} at desc {:#x} avail {:#x} used {:#x} is not in guest memory",
                size, v.desc, v.avail, v.used
            ))
        };
        if v.desc % 16 != 0 || v.avail % 2 != 0 || v.used % 4 != 0 {
            return Err(RingError::new(format!(
                "a ring at desc {:#x} avail {:#x} used {:#x} is misaligned",
                v.desc, v.avail, v.used
            )));
        }
        let desc = mem.span(v.desc, 16 * n).ok_or_else(bad)?;
        let avail = mem.span(v.avail, 6 + 2 * n).ok_or_else(bad)?;
        let used = mem.span(v.used, 6 + 8 * n).ok_or_else(bad)?;
        Ok(SplitRing {
            size,
            desc,
            avail,
            used,
            event_idx,
            next_avail: v.base,
            next_used: v.base,
            published: v.base,
            conf: (v.desc, v.avail, v.used, v.size),
        })
    }

    /// Whether the frontend's description `v` is this ring's.
    pub fn is(&self, v: &VringConf) -> bool {
        self.conf == (v.desc, v.avail, v.used, v.size)
    }

    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    #[inline]
    fn avail_idx(&self) -> u16 {
        // SAFETY: `avail + 2` is inside the mapping checked in `new` and 2-aligned; the
        // atomic load (Acquire) orders the ring entries read after it.
        unsafe { (*(self.avail.add(2) as *const AtomicU16)).load(Ordering::Acquire) }
    }

    /// Takes the head of the next available chain, if any.
    #[inline]
    pub fn pop(&mut self) -> Result<Option<u16>, RingError> {
        let idx = self.avail_idx();
        let pending = idx.wrapping_sub(self.next_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            return Err(RingError::new(format!(
                "the available index moved {pending} entries ahead of a ring of {}",
                self.size
            )));
        }
        let slot = usize::from(self.next_avail & (self.size - 1));
        // SAFETY: `slot < size` and the avail ring holds `size` entries after its 4-byte
        // header (checked in `new`); 2-aligned.
        let head = u16::from_le(unsafe {
            std::ptr::read_volatile(self.avail.add(4 + 2 * slot) as *const u16)
        });
        if head >= self.size {
            return Err(RingError::new(format!(
                "a chain head {head} beyond a ring of {}",
                self.size
            )));
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(Some(head))
    }

    /// Asks the CPU to fetch the descriptors of the next `n` available chains (at most), so
    /// that the cache misses on memory the guest just wrote on another core overlap instead
    /// of stalling the walk one chain at a time. Reads nothing it relies on: a later `pop` and
    /// `walk` check everything again.
    #[inline]
    pub fn prefetch(&self, n: u16) {
        let pending = self
            .avail_idx()
            .wrapping_sub(self.next_avail)
            .min(n)
            .min(self.size);
        for k in 0..pending {
            let slot = usize::from(self.next_avail.wrapping_add(k) & (self.size - 1));
            // SAFETY: `slot < size`, inside the avail ring checked in `new`, 2-aligned.
            let head = u16::from_le(unsafe {
                std::ptr::read_volatile(self.avail.add(4 + 2 * slot) as *const u16)
            });
            if head < self.size {
                // `head < size`: inside the descriptor table checked in `new`.
                prefetch(self.desc.wrapping_add(usize::from(head) * 16));
            }
        }
    }

    /// Gives back the last `n` chains taken (not used after all).
    pub fn unpop(&mut self, n: u16) {
        self.next_avail = self.next_avail.wrapping_sub(n);
    }

    /// Walks the chain at `head` (through an indirect table if it has one), calling `f` with
    /// each descriptor; stops early when `f` says so. A chain that loops, runs past the
    /// ring or its table, or nests tables is an error.
    #[inline]
    pub fn walk(
        &self,
        mem: &HostMem,
        head: u16,
        mut f: impl FnMut(Desc) -> Result<bool, RingError>,
    ) -> Result<(), RingError> {
        // SAFETY: `head < size` (from `pop`), the table holds `size` descriptors.
        let mut d = unsafe { read_desc(self.desc, head) };
        let (table, count) = if d.flags & DESC_F_INDIRECT != 0 {
            if d.flags & DESC_F_NEXT != 0 {
                return Err(RingError::new("an indirect descriptor that also chains on"));
            }
            if d.len == 0 || d.len % 16 != 0 || d.addr % 8 != 0 {
                return Err(RingError::new(format!(
                    "an indirect table of {} bytes at {:#x}",
                    d.len, d.addr
                )));
            }
            let n = d.len / 16;
            if n > u32::from(MAX_SIZE) {
                return Err(RingError::new(format!(
                    "an indirect table of {n} descriptors"
                )));
            }
            let t = mem.span(d.addr, u64::from(d.len)).ok_or_else(|| {
                RingError::new(format!(
                    "an indirect table at {:#x} is not in guest memory",
                    d.addr
                ))
            })?;
            // SAFETY: `t` maps `n` descriptors (checked just now), 8-aligned.
            d = unsafe { read_desc(t, 0) };
            (t as *const u8, n as u16)
        } else {
            (self.desc, self.size)
        };
        let mut seen = 0u16;
        loop {
            if d.flags & DESC_F_INDIRECT != 0 {
                return Err(RingError::new(
                    "a chain with a nested or late indirect table",
                ));
            }
            seen += 1;
            if !f(d)? || d.flags & DESC_F_NEXT == 0 {
                return Ok(());
            }
            if seen >= count || d.next >= count {
                return Err(RingError::new(format!(
                    "a chain that loops or runs past its {count} descriptors"
                )));
            }
            // SAFETY: `next < count`, the number of descriptors `table` maps.
            d = unsafe { read_desc(table, d.next) };
        }
    }

    /// Adds a used entry (published by `publish`).
    #[inline]
    pub fn push_used(&mut self, id: u16, len: u32) {
        let slot = usize::from(self.next_used & (self.size - 1));
        // SAFETY: `slot < size`; the used ring holds `size` 8-byte entries after its 4-byte
        // header (checked in `new`), 4-aligned.
        unsafe {
            let p = self.used.add(4 + 8 * slot);
            std::ptr::write_volatile(p as *mut u32, u32::from(id).to_le());
            std::ptr::write_volatile(p.add(4) as *mut u32, len.to_le());
        }
        self.next_used = self.next_used.wrapping_add(1);
    }

    /// Publishes the used entries added since the last call; true if the guest wants an
    /// interrupt for them.
    #[inline]
    pub fn publish(&mut self) -> bool {
        let old = self.published;
        let new = self.next_used;
        if old == new {
            return false;
        }
        // SAFETY: `used + 2` is in the mapping, 2-aligned; Release orders the entries
        // written before it.
        unsafe { (*(self.used.add(2) as *const AtomicU16)).store(new, Ordering::Release) };
        self.published = new;
        // The guest's interrupt request must be read after the index is visible to it.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let at = 4 + 2 * usize::from(self.size);
            // SAFETY: `used_event` follows the avail ring (checked in `new`), 2-aligned.
            let event =
                u16::from_le(unsafe { std::ptr::read_volatile(self.avail.add(at) as *const u16) });
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            // SAFETY: the avail flags are the ring's first field.
            let flags = u16::from_le(unsafe { std::ptr::read_volatile(self.avail as *const u16) });
            flags & AVAIL_F_NO_INTERRUPT == 0
        }
    }

    /// Tells a guest without `EVENT_IDX` not to kick (`VRING_USED_F_NO_NOTIFY`); with it,
    /// the guest kicks only when its index passes `avail_event`, which a busy-polling port
    /// never moves.
    pub fn no_kicks(&mut self) {
        // SAFETY: the used flags are the used ring's first field (checked in `new`).
        unsafe { std::ptr::write_volatile(self.used as *mut u16, USED_F_NO_NOTIFY.to_le()) };
    }

    /// Asks the guest for a kick at its next available entry (with `EVENT_IDX`), then looks
    /// again: true if entries arrived meanwhile.
    #[inline]
    pub fn enable_notification(&mut self) -> bool {
        if self.event_idx {
            let at = 4 + 8 * usize::from(self.size);
            // SAFETY: `avail_event` follows the used ring (checked in `new`), 2-aligned.
            unsafe {
                std::ptr::write_volatile(self.used.add(at) as *mut u16, self.next_avail.to_le())
            };
        }
        fence(Ordering::SeqCst);
        self.avail_idx() != self.next_avail
    }
}
