//! Small index types that cross module boundaries: no bare integers for ports, slots, buffers,
//! workers or bridge domains.
//!
//! Two names for a port on purpose: a `PortId` is its identity in the whole switch (the
//! control plane hands it out; the MAC table and the configuration use it), a `Slot` is where
//! one worker keeps it (its port table, transmit queue, completion tags, registered files and
//! buffer group). A worker maps one to the other; nothing else may assume they are equal.

use std::fmt;

/// A port's identity in the whole switch, stable for the port's life (reused after removal).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PortId(pub u16);

impl PortId {
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port#{}", self.0)
    }
}

/// Where one worker keeps a port: dense, reused after the port is gone from that worker.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Slot(pub u16);

impl Slot {
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot#{}", self.0)
    }
}

/// A worker (and its buffer pool, which is the home of the buffers it allocates).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default, serde::Serialize)]
pub struct WorkerId(pub u8);

impl WorkerId {
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker#{}", self.0)
    }
}

/// A frame buffer: its home pool, its size class and its index in that class.
///
/// Layout of the 32 bits: `home` (8) | `large` (1) | index (23). The home says which pool the
/// buffer returns to when its last reference is dropped, whichever thread drops it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BufIndex(pub u32);

impl BufIndex {
    /// Bits of the index within a class.
    pub const INDEX_BITS: u32 = 23;
    const LARGE: u32 = 1 << Self::INDEX_BITS;
    const INDEX_MASK: u32 = Self::LARGE - 1;

    /// Buffer `index` of the small class of `home`'s pool.
    #[inline]
    pub fn small(home: WorkerId, index: u32) -> BufIndex {
        debug_assert!(index <= Self::INDEX_MASK);
        BufIndex((home.0 as u32) << 24 | index)
    }

    /// Buffer `index` of the large class of `home`'s pool.
    #[inline]
    pub fn large(home: WorkerId, index: u32) -> BufIndex {
        debug_assert!(index <= Self::INDEX_MASK);
        BufIndex((home.0 as u32) << 24 | Self::LARGE | index)
    }

    /// The pool this buffer belongs to.
    #[inline]
    pub fn home(self) -> WorkerId {
        WorkerId((self.0 >> 24) as u8)
    }

    /// Whether it is a large buffer (up to 64 KiB of frame).
    #[inline]
    pub fn is_large(self) -> bool {
        self.0 & Self::LARGE != 0
    }

    /// Index within its class.
    #[inline]
    pub fn index(self) -> usize {
        (self.0 & Self::INDEX_MASK) as usize
    }
}

impl fmt::Debug for BufIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = if self.is_large() { "L" } else { "S" };
        write!(f, "buf({}:{class}{})", self.home().0, self.index())
    }
}

/// A provided-buffer group of a worker's io_uring (the kernel's 16-bit `bgid`): the buffers
/// one multishot receive may fill. A worker gives each port the group of its slot.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct BufGroup(pub u16);

impl BufGroup {
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A bridge domain (QEMU's `hubid`): ports in different domains never exchange frames.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct DomainId(pub u16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_names_keep_home_class_and_index_apart() {
        let s = BufIndex::small(WorkerId(3), 0x7f_ffff);
        assert_eq!(
            (s.home(), s.is_large(), s.index()),
            (WorkerId(3), false, 0x7f_ffff)
        );
        let l = BufIndex::large(WorkerId(255), 5);
        assert_eq!(
            (l.home(), l.is_large(), l.index()),
            (WorkerId(255), true, 5)
        );
        assert_ne!(
            BufIndex::small(WorkerId(0), 5),
            BufIndex::large(WorkerId(0), 5)
        );
    }
}
