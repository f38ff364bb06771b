//! The atomics and cells of the cross-thread protocols (the MAC table shared by workers, the
//! rings between workers), from `std` — or from `loom` when the crate is built with
//! `--cfg ringswitch_loom`, so `tests/loom.rs` can explore every interleaving of the same code
//! (`RUSTFLAGS="--cfg ringswitch_loom" cargo test -p ringswitch-switch --test loom --release`).
//! A cfg of our own, not `loom`, so no dependency changes behaviour under it.

pub mod spsc;

#[cfg(ringswitch_loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicUsize,
};
pub(crate) use std::sync::atomic::Ordering;
#[cfg(not(ringswitch_loom))]
#[allow(unused_imports)]
pub(crate) use std::sync::atomic::{
    fence, AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicUsize,
};

/// A busy-wait hint; under loom a yield, so a spinning thread lets the one it waits for run.
#[cfg(ringswitch_loom)]
pub(crate) use loom::hint::spin_loop;
#[cfg(not(ringswitch_loom))]
pub(crate) use std::hint::spin_loop;

/// A slot written by one thread and read by another, handed over by an atomic index's
/// release/acquire pair (the ring's head and tail); `T: Copy`, so a read is a copy out.
pub(crate) struct Slot<T> {
    #[cfg(not(ringswitch_loom))]
    cell: std::cell::UnsafeCell<std::mem::MaybeUninit<T>>,
    #[cfg(ringswitch_loom)]
    cell: loom::cell::UnsafeCell<std::mem::MaybeUninit<T>>,
}

impl<T: Copy> Slot<T> {
    pub(crate) fn new() -> Slot<T> {
        Slot {
            #[cfg(not(ringswitch_loom))]
            cell: std::cell::UnsafeCell::new(std::mem::MaybeUninit::uninit()),
            #[cfg(ringswitch_loom)]
            cell: loom::cell::UnsafeCell::new(std::mem::MaybeUninit::uninit()),
        }
    }

    /// Writes the slot.
    ///
    /// # Safety
    /// No other thread reads or writes the slot until the writer publishes it (a release
    /// store the reader acquires).
    #[inline(always)]
    pub(crate) unsafe fn write(&self, v: T) {
        #[cfg(not(ringswitch_loom))]
        // SAFETY: exclusive access, as the caller promises.
        unsafe {
            (*self.cell.get()).write(v);
        }
        #[cfg(ringswitch_loom)]
        // SAFETY: exclusive access, as the caller promises (loom checks it).
        self.cell.with_mut(|p| unsafe {
            (*p).write(v);
        });
    }

    /// Reads the slot.
    ///
    /// # Safety
    /// The slot was written and published to this thread (acquired), and no thread writes it
    /// until this reader gives it back.
    #[inline(always)]
    pub(crate) unsafe fn read(&self) -> T {
        #[cfg(not(ringswitch_loom))]
        // SAFETY: initialised and not written concurrently, as the caller promises.
        unsafe {
            (*self.cell.get()).assume_init()
        }
        #[cfg(ringswitch_loom)]
        // SAFETY: initialised and not written concurrently, as the caller promises.
        self.cell.with(|p| unsafe { (*p).assume_init() })
    }
}
