//! Small index types that cross module boundaries: no bare integers for ports, buffers or
//! bridge domains.

use std::fmt;

/// Index of a port in a worker's port table (dense, reused after removal).
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

/// Index of a frame buffer in a worker's buffer pool.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct BufIndex(pub u32);

impl BufIndex {
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A provided-buffer group of a worker's io_uring (the kernel's 16-bit `bgid`): the buffers
/// one multishot receive may fill. A worker gives each socket port the group of its index.
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
