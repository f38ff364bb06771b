//! The raw kernel interfaces of the data plane, behind safe wrappers: io_uring (the only place
//! submission entries are built), provided-buffer rings, message headers and iovecs, and
//! descriptor helpers. Everything above this module is safe Rust apart from the few calls
//! that hand memory to the kernel, each with the contract it must keep.

pub mod affinity;
pub(crate) mod bufring;
pub(crate) mod fd;
pub(crate) mod msg;
mod probe;
pub mod uring;
