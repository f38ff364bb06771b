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

/// A frame buffer: its index in its pool. Which pool — the buffer's home — travels beside
/// it where buffers can cross between workers (`Frame::home`); within one worker, a bare
/// `BufIndex` names a buffer of that worker's pool. The index is dense over both size classes
/// (small buffers first, then large ones); which class it is in, only its pool knows.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BufIndex(pub u32);

impl BufIndex {
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Debug for BufIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "buf{}", self.0)
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
