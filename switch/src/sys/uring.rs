//! `Ring`: a worker's io_uring instance together with the buffer pool registered with it.
//!
//! This module is the only place that builds submission entries (the message structures some
//! of them point at are built in `msg.rs`). It owns the pool so the
//! registered region provably outlives every operation the kernel may still have on it (the
//! ring is dropped — cancelling and reaping everything — before the pool), and it owns the
//! provided-buffer rings whose pool buffers multishot receives fill. Features are probed at
//! start-up: SINGLE_ISSUER + DEFER_TASKRUN (run-to-completion workers), registered buffers and
//! files, and multishot receive over a provided-buffer ring (tried on a socket pair), each
//! falling back when the kernel refuses it.

use super::bufring::BufRing;
use crate::ids::{BufGroup, BufIndex};
use crate::pool::{BufferPool, HEADROOM};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// What the kernel accepted at set-up.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RingFeatures {
    pub defer_taskrun: bool,
    pub registered_buffers: bool,
    pub registered_files: bool,
    /// Socket ports receive with one multishot recv over a provided-buffer ring (kernel 6.0+)
    /// instead of keeping a read in flight per buffer.
    pub recv_multishot: bool,
    /// Taps can receive with one multishot read over a provided-buffer ring (kernel 6.7+):
    /// frames complete in the order they arrived, which several plain reads in flight on one
    /// tap do not guarantee at low rates (the kernel hands a read that lost its wake-ups too
    /// often to a worker thread, which then races the others).
    pub read_multishot: bool,
    /// A wait can ask for a batch of completions with a bound on how long it waits for the
    /// batch beyond the first one (IORING_FEAT_MIN_TIMEOUT, kernel 6.12+).
    pub batch_wait: bool,
    /// The ring flags pending completion work (IORING_SETUP_TASKRUN_FLAG), so polling reads
    /// shared memory instead of entering the kernel to find out.
    pub taskrun_flag: bool,
}

/// A completion: the tag given at submission, the kernel's result and its `IORING_CQE_F_*`
/// flags.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// Whether the operation is still armed and will complete again (a multishot receive
    /// that this completion did not end).
    #[inline]
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
}

/// Which buffers a port receives into, and where in them the kernel writes: at `offset`
/// (the pool's headroom, less the bytes of a header the kernel writes in front of the
/// frame, such as a virtio-net header), so the frame itself always starts at `HEADROOM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxBuf {
    pub large: bool,
    pub offset: u16,
}

impl RxBuf {
    /// Small buffers, the frame at the headroom.
    pub const SMALL: RxBuf = RxBuf {
        large: false,
        offset: HEADROOM as u16,
    };

    /// Where in `b` a receive writes, and how many bytes it may write.
    #[inline]
    fn target(self, pool: &mut BufferPool, b: BufIndex) -> (*mut u8, u32) {
        let buf = pool.buf_mut(b);
        let off = (self.offset as usize).min(buf.len());
        let room = buf.len() - off;
        (buf[off..].as_mut_ptr(), room as u32)
    }
}

/// Where an operation's file is: a registered slot or a plain descriptor.
#[derive(Debug, Clone, Copy)]
pub enum FileRef {
    Slot(u32),
    Fd(RawFd),
}

/// Field order matters: `ring` drops before the buffer rings and `pool`, so the kernel is done
/// with the registered memory before it is unmapped.
pub struct Ring {
    pub(super) ring: IoUring<squeue::Entry, cqueue::Entry>,
    /// Provided-buffer rings by group; each holds pool buffers for the kernel.
    buf_rings: Vec<Option<(BufRing, RxBuf)>>,
    pub(super) pool: BufferPool,
    features: RingFeatures,
    file_slots: u32,
}

impl Ring {
    /// A ring of `entries` submission slots (completion queue twice that), with `pool`
    /// registered as one fixed buffer and room for `file_slots` registered files. With
    /// `multishot`, probes whether multishot receives over provided-buffer rings work.
    pub fn new(
        entries: u32,
        pool: BufferPool,
        file_slots: u32,
        multishot: bool,
    ) -> io::Result<Ring> {
        let cq = entries.saturating_mul(2);
        let mut features = RingFeatures::default();
        // DEFER_TASKRUN with TASKRUN_FLAG: completion work waits until the worker enters the
        // kernel, and the ring's SQ flags say when some is pending, so a polling worker knows
        // without a system call whether an enter would bring anything.
        let deferred = |taskrun_flag: bool| {
            let mut b = IoUring::builder();
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_submit_all()
                .setup_cqsize(cq);
            if taskrun_flag {
                b.setup_taskrun_flag();
            }
            b.build(entries)
        };
        let ring = match deferred(true) {
            Ok(r) => {
                features.defer_taskrun = true;
                features.taskrun_flag = true;
                r
            }
            Err(_) => match deferred(false) {
                Ok(r) => {
                    features.defer_taskrun = true;
                    r
                }
                Err(_) => IoUring::builder().setup_cqsize(cq).build(entries)?,
            },
        };
        let mut me = Ring {
            ring,
            buf_rings: Vec::new(),
            pool,
            features,
            file_slots: 0,
        };
        // Only the small buffers are registered: registering pins memory, and the large
        // buffers (offload ports only) would then be committed whether used or not. I/O on
        // large buffers uses plain reads and writes.
        let iov: Vec<libc::iovec> = me
            .pool
            .regions()
            .into_iter()
            .take(1)
            .map(|(base, len)| libc::iovec {
                iov_base: base.cast(),
                iov_len: len,
            })
            .collect();
        // SAFETY: the regions belong to `me.pool`, which lives exactly as long as the ring
        // (same struct, dropped after it), so the registered memory stays valid for every
        // operation that uses it. Fixed-buffer index 0 is the small region.
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
        me.features.recv_multishot = multishot && me.probe_multishot(Multi::Recv);
        me.features.read_multishot = multishot && me.probe_multishot(Multi::Read);
        me.features.batch_wait = me.ring.params().is_feature_min_timeout();
        Ok(me)
    }

    /// Registers an empty provided-buffer ring of `entries` buffers (a power of two, at most
    /// 32768) as `group`; `refill_buf_ring` fills it from the pool with buffers of `kind`.
    pub fn open_buf_ring(&mut self, group: BufGroup, entries: u16, kind: RxBuf) -> io::Result<()> {
        if matches!(self.buf_rings.get(group.index()), Some(Some(_))) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("buffer group {} is in use", group.0),
            ));
        }
        let r = BufRing::new(entries)?;
        // SAFETY: the ring memory belongs to `r`, kept in `self.buf_rings` until the group is
        // unregistered (`close_buf_ring`) or the io_uring is gone (`ring` drops first).
        unsafe {
            self.ring
                .submitter()
                .register_buf_ring_with_flags(r.addr(), entries, group.0, 0)?;
        }
        if self.buf_rings.len() <= group.index() {
            self.buf_rings.resize_with(group.index() + 1, || None);
        }
        self.buf_rings[group.index()] = Some((r, kind));
        Ok(())
    }

    /// Tops `group`'s ring up with buffers from the free stack, in one batch made visible to
    /// the kernel at once. Returns false if the pool ran out before the ring was full.
    #[inline]
    pub fn refill_buf_ring(&mut self, group: BufGroup) -> bool {
        let Some(Some((r, kind))) = self.buf_rings.get_mut(group.index()) else {
            return true;
        };
        let room = r.room();
        if room == 0 {
            return true;
        }
        let mut posted = 0;
        while posted < room {
            let b = if kind.large {
                self.pool.alloc_large()
            } else {
                self.pool.alloc()
            };
            let Some(b) = b else {
                break;
            };
            let (addr, len) = kind.target(&mut self.pool, b);
            r.push(b, addr, len);
            posted += 1;
        }
        if posted > 0 {
            r.publish();
        }
        posted == room
    }

    /// Buffers posted in `group`'s ring that no completion has named yet (the kernel's).
    #[inline]
    pub fn buf_ring_held(&self, group: BufGroup) -> usize {
        match self.buf_rings.get(group.index()) {
            Some(Some((r, _))) => r.held(),
            _ => 0,
        }
    }

    /// The buffer a receive completion on `group` filled, if it names one. It passes to the
    /// caller with one reference, as if just allocated.
    #[inline]
    pub fn take_provided(&mut self, group: BufGroup, c: &Completion) -> Option<BufIndex> {
        let bid = cqueue::buffer_select(c.flags)?;
        let buf = match self.buf_rings.get_mut(group.index()) {
            Some(Some((r, _))) => r.take(bid),
            _ => None,
        };
        debug_assert!(
            buf.is_some(),
            "completion names buffer {bid} not posted in {group:?}"
        );
        buf
    }

    /// Unregisters `group`'s ring and returns every buffer still posted in it to the pool. No
    /// ring under `group`: nothing to do. If the kernel refuses, the ring and its buffers stay.
    ///
    /// # Safety
    /// No receive selecting from `group` may be in flight (its completion without F_MORE has
    /// been reaped): the kernel could otherwise fill a buffer it took after the buffer went
    /// back to the pool.
    pub unsafe fn close_buf_ring(&mut self, group: BufGroup) -> io::Result<()> {
        let Some(slot) = self.buf_rings.get_mut(group.index()) else {
            return Ok(());
        };
        if slot.is_none() {
            return Ok(());
        }
        self.ring.submitter().unregister_buf_ring(group.0)?;
        let (mut r, _) = slot.take().expect("checked above");
        let pool = &mut self.pool;
        r.drain(|b| pool.release(b));
        Ok(())
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

    pub(super) fn push(&mut self, e: &squeue::Entry) -> io::Result<()> {
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

    /// Room in the submission queue for `want` entries, handing what is queued to the kernel
    /// first if there is less; returns the room (at most the queue's size), so that a chain
    /// of linked entries can be pushed whole and reach the kernel in one submission.
    pub fn sq_room(&mut self, want: usize) -> io::Result<usize> {
        let free = |r: &mut IoUring<squeue::Entry, cqueue::Entry>| {
            let sq = r.submission();
            sq.capacity() - sq.len()
        };
        if free(&mut self.ring) < want {
            self.ring.submit()?;
        }
        Ok(free(&mut self.ring))
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
        kind: RxBuf,
        user_data: u64,
    ) -> io::Result<()> {
        // SAFETY: the caller's contract is this function's.
        unsafe { self.push_read_flags(file, buf, kind, 0, user_data) }
    }

    /// Queues a read like `push_read` that never waits in the kernel: with nothing to read
    /// it completes at once with -EAGAIN (RWF_NOWAIT; io_uring would arm a poll and retry
    /// even on an O_NONBLOCK descriptor that supports non-blocking reads).
    ///
    /// # Safety
    /// As `push_read`.
    pub unsafe fn push_read_nowait(
        &mut self,
        file: FileRef,
        buf: BufIndex,
        kind: RxBuf,
        user_data: u64,
    ) -> io::Result<()> {
        // SAFETY: the caller's contract is this function's.
        unsafe { self.push_read_flags(file, buf, kind, libc::RWF_NOWAIT, user_data) }
    }

    /// # Safety
    /// As `push_read`.
    unsafe fn push_read_flags(
        &mut self,
        file: FileRef,
        buf: BufIndex,
        kind: RxBuf,
        rw_flags: i32,
        user_data: u64,
    ) -> io::Result<()> {
        let (ptr, len) = kind.target(&mut self.pool, buf);
        let idx = self.pool.region_index(buf);
        let e = match (file, self.fixed_or_plain() && idx == 0) {
            (FileRef::Slot(s), true) => opcode::ReadFixed::new(types::Fixed(s), ptr, len, idx)
                .rw_flags(rw_flags)
                .build(),
            (FileRef::Fd(fd), true) => opcode::ReadFixed::new(types::Fd(fd), ptr, len, idx)
                .rw_flags(rw_flags)
                .build(),
            (FileRef::Slot(s), false) => opcode::Read::new(types::Fixed(s), ptr, len)
                .rw_flags(rw_flags)
                .build(),
            (FileRef::Fd(fd), false) => opcode::Read::new(types::Fd(fd), ptr, len)
                .rw_flags(rw_flags)
                .build(),
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
        debug_assert!(off as usize + len as usize <= self.pool.size_of(buf));
        // SAFETY: the frame lies within the buffer (checked above in debug builds; the
        // caller stored it there), so the offset stays inside the pool's mapping.
        let ptr = unsafe { self.pool.addr(buf).add(off as usize) } as *const u8;
        let idx = self.pool.region_index(buf);
        let e = match (file, self.fixed_or_plain() && idx == 0) {
            (FileRef::Slot(s), true) => {
                opcode::WriteFixed::new(types::Fixed(s), ptr, len, idx).build()
            }
            (FileRef::Fd(fd), true) => {
                opcode::WriteFixed::new(types::Fd(fd), ptr, len, idx).build()
            }
            (FileRef::Slot(s), false) => opcode::Write::new(types::Fixed(s), ptr, len).build(),
            (FileRef::Fd(fd), false) => opcode::Write::new(types::Fd(fd), ptr, len).build(),
        };
        self.push(&e.user_data(user_data))
    }

    /// Queues a multishot receive on `file` filling buffers of `group`'s ring: one completion
    /// per datagram naming its buffer, while F_MORE says the receive stays armed. A datagram
    /// longer than a buffer completes with its whole length (MSG_TRUNC), more than it holds.
    /// With `Multi::Read` (taps) it is a multishot read instead: one frame per completion,
    /// truncated to the buffer (a whole-buffer frame counts as oversize, as for reads).
    pub fn push_multi(
        &mut self,
        op: Multi,
        file: FileRef,
        group: BufGroup,
        user_data: u64,
    ) -> io::Result<()> {
        let e = match (op, file) {
            (Multi::Recv, FileRef::Slot(s)) => opcode::RecvMulti::new(types::Fixed(s), group.0)
                .flags(libc::MSG_TRUNC)
                .build(),
            (Multi::Recv, FileRef::Fd(fd)) => opcode::RecvMulti::new(types::Fd(fd), group.0)
                .flags(libc::MSG_TRUNC)
                .build(),
            (Multi::Read, FileRef::Slot(s)) => {
                opcode::ReadMulti::new(types::Fixed(s), 0, group.0).build()
            }
            (Multi::Read, FileRef::Fd(fd)) => {
                opcode::ReadMulti::new(types::Fd(fd), 0, group.0).build()
            }
        };
        // The kernel writes only into buffers posted in `group`'s ring, which this ring owns
        // until a completion hands them out or the group is closed after the receive ended.
        self.push(&e.user_data(user_data))
    }

    /// Queues a one-shot poll for `file` becoming readable.
    pub fn push_poll_in(&mut self, file: FileRef, user_data: u64) -> io::Result<()> {
        self.push_poll(file, libc::POLLIN as u32, user_data)
    }

    /// Queues a one-shot poll for `file` having room to write (or an error to report).
    pub fn push_poll_out(&mut self, file: FileRef, user_data: u64) -> io::Result<()> {
        self.push_poll(file, libc::POLLOUT as u32, user_data)
    }

    fn push_poll(&mut self, file: FileRef, mask: u32, user_data: u64) -> io::Result<()> {
        let e = match file {
            FileRef::Slot(s) => opcode::PollAdd::new(types::Fixed(s), mask).build(),
            FileRef::Fd(fd) => opcode::PollAdd::new(types::Fd(fd), mask).build(),
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

    /// Queues cancellation of the operation submitted with `target` as its user data.
    pub fn push_cancel(&mut self, target: u64, user_data: u64) -> io::Result<()> {
        let e = opcode::AsyncCancel::new(target).build();
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

    /// Submits everything queued and waits until `want` completions are ready, or `min_wait`
    /// has passed since the wait began and at least one is (or, with none, until the first
    /// one: an idle ring sleeps, and wakes at once for the first completion). Without the
    /// kernel feature it waits for one completion.
    pub fn submit_and_wait_batch(
        &mut self,
        want: usize,
        min_wait: Duration,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        if !self.features.batch_wait || want <= 1 || min_wait.is_zero() {
            return match timeout {
                Some(t) => self.submit_and_wait_for(t),
                None => self.submit_and_wait(1),
            };
        }
        // The overall timeout only makes the kernel keep waiting for a first completion once
        // `min_wait` is over (without one, `min_wait` would end the wait); it ends a wait
        // that saw nothing at all after `timeout` (a second without one), which costs one
        // extra loop.
        let ts = types::Timespec::from(timeout.unwrap_or(Duration::from_secs(1)).max(min_wait));
        let args = types::SubmitArgs::new()
            .min_wait_usec(min_wait.as_micros().min(u32::MAX as u128) as u32)
            .timespec(&ts);
        match self.ring.submitter().submit_with_args(want, &args) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => Ok(0),
            r => r,
        }
    }

    /// Whether a non-waiting `poll` would bring or do anything: completions ready,
    /// submissions queued, or completion work pending in the kernel. Reads shared memory
    /// only (without the TASKRUN flag it cannot tell, and says yes).
    #[inline]
    pub fn has_work(&mut self) -> bool {
        if !self.ring.completion().is_empty() || !self.ring.submission().is_empty() {
            return true;
        }
        !self.features.taskrun_flag || self.ring.submission().taskrun()
    }

    /// Submits everything queued and runs pending completion work, without waiting.
    pub fn poll(&mut self) -> io::Result<usize> {
        let to_submit = self.ring.submission().len() as u32;
        let getevents = io_uring::EnterFlags::GETEVENTS.bits();
        // SAFETY: io_uring_enter with no argument structure (`None`): the kernel reads no
        // memory of ours beyond the rings, which this ring owns; entries it consumes were
        // pushed under their own contracts.
        let r = unsafe {
            self.ring
                .submitter()
                .enter::<libc::sigset_t>(to_submit, 0, getevents, None)
        };
        match r {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => Ok(0),
            r => r,
        }
    }

    /// Submits everything queued and waits for one completion, at most `timeout` (where the
    /// kernel takes a timeout with the wait, IORING_FEAT_EXT_ARG, 5.11+; elsewhere without
    /// bound). Returns 0 when the time ran out.
    pub fn submit_and_wait_for(&mut self, timeout: Duration) -> io::Result<usize> {
        if !self.ring.params().is_feature_ext_arg() {
            return self.submit_and_wait(1);
        }
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => Ok(0),
            r => r,
        }
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
                flags: c.flags(),
            });
        }
    }
}

/// Which multishot receive: `recv` on a socket, `read` on anything pollable (a tap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Multi {
    Recv,
    Read,
}
