//! `Ring`: a worker's io_uring instance together with the buffer pool registered with it.
//!
//! This module is the only place that builds submission entries. It owns the pool so the
//! registered region provably outlives every operation the kernel may still have on it (the
//! ring is dropped — cancelling and reaping everything — before the pool). Features are probed
//! at start-up: SINGLE_ISSUER + DEFER_TASKRUN (run-to-completion workers) and registered
//! buffers and files, each falling back when the kernel refuses it.

use crate::ids::BufIndex;
use crate::pool::BufferPool;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::RawFd;

/// What the kernel accepted at set-up.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RingFeatures {
    pub defer_taskrun: bool,
    pub registered_buffers: bool,
    pub registered_files: bool,
}

/// A completion: the tag given at submission and the kernel's result.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
}

/// Where an operation's file is: a registered slot or a plain descriptor.
#[derive(Debug, Clone, Copy)]
pub enum FileRef {
    Slot(u32),
    Fd(RawFd),
}

/// Field order matters: `ring` drops before `pool`, so the kernel is done with the registered
/// region before it is unmapped.
pub struct Ring {
    ring: IoUring<squeue::Entry, cqueue::Entry>,
    pool: BufferPool,
    features: RingFeatures,
    file_slots: u32,
}

impl Ring {
    /// A ring of `entries` submission slots (completion queue twice that), with `pool`
    /// registered as one fixed buffer and room for `file_slots` registered files.
    pub fn new(entries: u32, pool: BufferPool, file_slots: u32) -> io::Result<Ring> {
        let cq = entries.saturating_mul(2);
        let mut features = RingFeatures::default();
        let ring = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_submit_all()
            .setup_cqsize(cq)
            .build(entries)
        {
            Ok(r) => {
                features.defer_taskrun = true;
                r
            }
            Err(_) => IoUring::builder().setup_cqsize(cq).build(entries)?,
        };
        let mut me = Ring {
            ring,
            pool,
            features,
            file_slots: 0,
        };
        let (base, len) = me.pool.region();
        let iov = [libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        }];
        // SAFETY: the region belongs to `me.pool`, which lives exactly as long as the ring
        // (same struct, dropped after it), so the registered memory stays valid for every
        // operation that uses it.
        me.features.registered_buffers =
            unsafe { me.ring.submitter().register_buffers(&iov) }.is_ok();
        if file_slots > 0
            && me
                .ring
                .submitter()
                .register_files_sparse(file_slots)
                .is_ok()
        {
            me.features.registered_files = true;
            me.file_slots = file_slots;
        }
        Ok(me)
    }

    pub fn features(&self) -> RingFeatures {
        self.features
    }

    pub fn pool(&self) -> &BufferPool {
        &self.pool
    }

    pub fn pool_mut(&mut self) -> &mut BufferPool {
        &mut self.pool
    }

    /// Puts `fd` in registered slot `slot` (or clears the slot with -1). Returns where later
    /// operations should find the file: the slot, or the plain fd when files are not
    /// registered.
    pub fn register_file(&mut self, slot: u32, fd: RawFd) -> io::Result<FileRef> {
        if self.features.registered_files && slot < self.file_slots {
            self.ring.submitter().register_files_update(slot, &[fd])?;
            Ok(FileRef::Slot(slot))
        } else {
            Ok(FileRef::Fd(fd))
        }
    }

    fn push(&mut self, e: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built in this module points at memory that stays valid until
            // its completion: pool buffers (owned by `self`, reserved by the caller's
            // contract) or caller memory under the same contract.
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                return Ok(());
            }
            // Queue full: hand what is there to the kernel and retry.
            self.ring.submit()?;
        }
    }

    fn fixed_or_plain(&self) -> bool {
        self.features.registered_buffers
    }

    /// Queues a read of up to a whole buffer into `buf`.
    ///
    /// # Safety
    /// `buf` must be allocated from this ring's pool and must not be read, written or released
    /// until this operation's completion has been reaped.
    pub unsafe fn push_read(
        &mut self,
        file: FileRef,
        buf: BufIndex,
        user_data: u64,
    ) -> io::Result<()> {
        let len = self.pool.buf_size() as u32;
        let ptr = self.pool.addr(buf);
        let e = match (file, self.fixed_or_plain()) {
            (FileRef::Slot(s), true) => {
                opcode::ReadFixed::new(types::Fixed(s), ptr, len, 0).build()
            }
            (FileRef::Fd(fd), true) => opcode::ReadFixed::new(types::Fd(fd), ptr, len, 0).build(),
            (FileRef::Slot(s), false) => opcode::Read::new(types::Fixed(s), ptr, len).build(),
            (FileRef::Fd(fd), false) => opcode::Read::new(types::Fd(fd), ptr, len).build(),
        };
        self.push(&e.user_data(user_data))
    }

    /// Queues a write of `len` bytes of `buf` from offset `off`.
    ///
    /// # Safety
    /// `buf` must be allocated from this ring's pool and must not be written or released until
    /// this operation's completion has been reaped.
    pub unsafe fn push_write(
        &mut self,
        file: FileRef,
        buf: BufIndex,
        off: u16,
        len: u32,
        user_data: u64,
    ) -> io::Result<()> {
        let ptr = self.pool.addr(buf).add(off as usize) as *const u8;
        let e = match (file, self.fixed_or_plain()) {
            (FileRef::Slot(s), true) => {
                opcode::WriteFixed::new(types::Fixed(s), ptr, len, 0).build()
            }
            (FileRef::Fd(fd), true) => opcode::WriteFixed::new(types::Fd(fd), ptr, len, 0).build(),
            (FileRef::Slot(s), false) => opcode::Write::new(types::Fixed(s), ptr, len).build(),
            (FileRef::Fd(fd), false) => opcode::Write::new(types::Fd(fd), ptr, len).build(),
        };
        self.push(&e.user_data(user_data))
    }

    /// Queues a read of up to `len` bytes into memory the caller owns.
    ///
    /// # Safety
    /// `ptr..ptr+len` must stay valid, and untouched by the caller, until the completion has
    /// been reaped.
    pub unsafe fn push_read_into(
        &mut self,
        file: FileRef,
        ptr: *mut u8,
        len: u32,
        user_data: u64,
    ) -> io::Result<()> {
        let e = match file {
            FileRef::Slot(s) => opcode::Read::new(types::Fixed(s), ptr, len).build(),
            FileRef::Fd(fd) => opcode::Read::new(types::Fd(fd), ptr, len).build(),
        };
        self.push(&e.user_data(user_data))
    }

    /// Queues a `writev` of `n` iovecs at `iov`.
    ///
    /// # Safety
    /// The iovec array and every buffer it points at must stay valid and unchanged until the
    /// completion has been reaped.
    pub unsafe fn push_writev(
        &mut self,
        file: FileRef,
        iov: *const libc::iovec,
        n: u32,
        user_data: u64,
    ) -> io::Result<()> {
        let e = match file {
            FileRef::Slot(s) => opcode::Writev::new(types::Fixed(s), iov, n).build(),
            FileRef::Fd(fd) => opcode::Writev::new(types::Fd(fd), iov, n).build(),
        };
        self.push(&e.user_data(user_data))
    }

    /// Queues a `sendmsg` of `*msg` with `flags`.
    ///
    /// # Safety
    /// The header, its iovec array and every buffer they point at must stay valid and
    /// unchanged until the completion has been reaped.
    pub unsafe fn push_sendmsg(
        &mut self,
        file: FileRef,
        msg: *const libc::msghdr,
        flags: u32,
        user_data: u64,
    ) -> io::Result<()> {
        let e = match file {
            FileRef::Slot(s) => opcode::SendMsg::new(types::Fixed(s), msg)
                .flags(flags)
                .build(),
            FileRef::Fd(fd) => opcode::SendMsg::new(types::Fd(fd), msg)
                .flags(flags)
                .build(),
        };
        self.push(&e.user_data(user_data))
    }

    /// Queues a read of 8 bytes from an eventfd into `*target`.
    ///
    /// # Safety
    /// `target` must stay valid and unaliased until the completion has been reaped.
    pub unsafe fn push_read_u64(
        &mut self,
        fd: RawFd,
        target: *mut u64,
        user_data: u64,
    ) -> io::Result<()> {
        let e = opcode::Read::new(types::Fd(fd), target.cast(), 8).build();
        self.push(&e.user_data(user_data))
    }

    /// Queues cancellation of every operation on `file`.
    pub fn push_cancel_file(&mut self, file: FileRef, user_data: u64) -> io::Result<()> {
        let builder = match file {
            FileRef::Slot(s) => types::CancelBuilder::fd(types::Fixed(s)),
            FileRef::Fd(fd) => types::CancelBuilder::fd(types::Fd(fd)),
        };
        let e = opcode::AsyncCancel2::new(builder.all()).build();
        self.push(&e.user_data(user_data))
    }

    /// Submits everything queued and waits until at least `want` completions are ready.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        match self.ring.submit_and_wait(want) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(0),
            r => r,
        }
    }

    /// Moves every ready completion into `out` (which the caller sized; it grows only if the
    /// completion queue holds more than its capacity).
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        for c in self.ring.completion() {
            out.push(Completion {
                user_data: c.user_data(),
                result: c.result(),
            });
        }
    }
}
