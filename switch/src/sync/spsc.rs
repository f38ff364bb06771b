//! `Spsc`: a bounded single-producer single-consumer ring of `Copy` items, lock-free and
//! wait-free: the producer owns `tail`, the consumer owns `head`, each caches the other's
//! index so that most pushes and pops touch no shared cache line but the slot. One ring per
//! ordered pair of workers carries frames from one to the other (`fabric.rs`), and another
//! carries buffer references back to their home pool; with one producer and one consumer per
//! ring, no compare-and-swap is needed anywhere.
//!
//! A full ring refuses the item (`push` gives it back): the data plane drops and counts, it
//! never waits. The protocol is checked under loom (`tests/loom.rs`).

use super::{AtomicUsize, Ordering, Slot};

#[repr(align(128))]
struct Padded<T>(T);

/// A bounded SPSC ring.
pub struct Spsc<T> {
    slots: Box<[Slot<T>]>,
    mask: usize,
    /// Next slot the consumer reads (written by the consumer only).
    head: Padded<AtomicUsize>,
    /// Next slot the producer writes (written by the producer only).
    tail: Padded<AtomicUsize>,
    /// The producer's last view of `head`, and the consumer's of `tail` (each private to
    /// its side: atomics only so the ring is `Sync`; relaxed, never contended).
    head_cache: Padded<AtomicUsize>,
    tail_cache: Padded<AtomicUsize>,
}

// SAFETY: slots are handed between the two sides only through the release/acquire pair on
// `tail` (producer to consumer) and `head` (consumer back to producer); `T: Send` may cross
// threads. The caller keeps to one producer and one consumer at a time (`Fabric` gives each
// ring to exactly one worker on each side).
unsafe impl<T: Send> Sync for Spsc<T> {}
// SAFETY: as above; the ring owns plain `Copy` items.
unsafe impl<T: Send> Send for Spsc<T> {}

impl<T: Copy> Spsc<T> {
    /// A ring of at least `capacity` items (rounded up to a power of two).
    pub fn new(capacity: usize) -> Spsc<T> {
        let n = capacity.max(2).next_power_of_two();
        Spsc {
            slots: (0..n).map(|_| Slot::new()).collect(),
            mask: n - 1,
            head: Padded(AtomicUsize::new(0)),
            tail: Padded(AtomicUsize::new(0)),
            head_cache: Padded(AtomicUsize::new(0)),
            tail_cache: Padded(AtomicUsize::new(0)),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Producer side: appends `v`, or gives it back when the ring is full.
    #[inline]
    pub fn push(&self, v: T) -> Result<(), T> {
        let tail = self.tail.0.load(Ordering::Relaxed);
        let mut head = self.head_cache.0.load(Ordering::Relaxed);
        if tail.wrapping_sub(head) == self.slots.len() {
            head = self.head.0.load(Ordering::Acquire);
            self.head_cache.0.store(head, Ordering::Relaxed);
            if tail.wrapping_sub(head) == self.slots.len() {
                return Err(v);
            }
        }
        // SAFETY: the slot at `tail` is outside `head..tail`, so the consumer has given it
        // back (its `head` store, acquired above or earlier) and will not read it before the
        // release store of `tail` below.
        unsafe { self.slots[tail & self.mask].write(v) };
        self.tail.0.store(tail.wrapping_add(1), Ordering::Release);
        Ok(())
    }

    /// Consumer side: the index of the oldest item, if there is one. The slot at it was
    /// written before the producer's release store of `tail`, acquired here or earlier.
    #[inline]
    fn oldest(&self) -> Option<usize> {
        let head = self.head.0.load(Ordering::Relaxed);
        let mut tail = self.tail_cache.0.load(Ordering::Relaxed);
        if head == tail {
            tail = self.tail.0.load(Ordering::Acquire);
            self.tail_cache.0.store(tail, Ordering::Relaxed);
            if head == tail {
                return None;
            }
        }
        Some(head)
    }

    /// Consumer side: takes the oldest item, if any.
    #[inline]
    pub fn pop(&self) -> Option<T> {
        let head = self.oldest()?;
        // SAFETY: `head` is inside `head..tail` (`oldest`): the producer wrote the slot
        // before its release store of `tail`, and will not write it again before the
        // release store of `head` below gives it back.
        let v = unsafe { self.slots[head & self.mask].read() };
        self.head.0.store(head.wrapping_add(1), Ordering::Release);
        Some(v)
    }

    /// Consumer side: a copy of the oldest item, left in the ring (the next `pop` takes it).
    #[inline]
    pub fn peek(&self) -> Option<T>
    where
        T: Copy,
    {
        let head = self.oldest()?;
        // SAFETY: as in `pop`: the slot at `head` was written before the release store of
        // `tail` (`oldest`), and the producer cannot write it again before `head` moves past
        // it, which only `pop` (this same consumer) does. `T: Copy`, so reading it leaves the
        // slot's value valid for that `pop`.
        Some(unsafe { self.slots[head & self.mask].read() })
    }

    /// Whether the ring looks empty (from either side; a hint, exact only for the consumer).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head.0.load(Ordering::Acquire) == self.tail.0.load(Ordering::Acquire)
    }

    /// Items in the ring (a hint).
    pub fn len(&self) -> usize {
        self.tail
            .0
            .load(Ordering::Acquire)
            .wrapping_sub(self.head.0.load(Ordering::Acquire))
    }
}

#[cfg(all(test, not(ringswitch_loom)))]
mod tests {
    use super::*;

    #[test]
    fn fifo_bounded_and_wraps() {
        let r = Spsc::new(4);
        for round in 0..10u32 {
            for i in 0..4 {
                r.push(round * 10 + i).unwrap();
            }
            assert_eq!(r.push(99), Err(99), "full");
            assert_eq!(r.len(), 4);
            for i in 0..4 {
                assert_eq!(r.pop(), Some(round * 10 + i));
            }
            assert_eq!(r.pop(), None);
            assert!(r.is_empty());
        }
    }

    #[test]
    fn two_threads_lose_nothing_and_keep_order() {
        let r = std::sync::Arc::new(Spsc::new(64));
        let n = 200_000u64;
        let p = {
            let r = r.clone();
            std::thread::spawn(move || {
                let mut i = 0;
                while i < n {
                    if r.push(i).is_ok() {
                        i += 1;
                    } else {
                        std::hint::spin_loop();
                    }
                }
            })
        };
        let mut next = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while next < n && std::time::Instant::now() < deadline {
            if let Some(v) = r.pop() {
                assert_eq!(v, next);
                next += 1;
            }
        }
        p.join().unwrap();
        assert_eq!(next, n);
    }
}
