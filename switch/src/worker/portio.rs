//! How a worker moves frames for each kind of port: datagram ports (one frame per read and per
//! write), UDP ports with GSO (runs of equal-size frames in one send), L2TPv3 ports (a header
//! in a slot of its own per frame), and stream ports (reassembly on receive, one batched
//! length-prefixed sendmsg in flight). Every buffer the kernel reads or writes lives in a box
//! owned by the port until its completion is reaped; nothing here allocates per frame.

use super::*;

/// Most frames in one GSO send (the kernel allows 64 segments per send here).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one GSO send (a UDP datagram's limit, with room to spare).
const GSO_MAX_BYTES: usize = 65000;
/// GSO sends a port may have in flight.
pub(super) const GSO_SLOTS: usize = 8;

/// The per-port state of its framing.
pub(super) enum PortIo {
    /// One frame per read and per write.
    Datagram,
    Stream(Box<StreamPort>),
    /// One frame per datagram behind an L2TPv3 header.
    Encap(Box<EncapPort>),
    /// One frame per datagram; runs of equal-size frames are sent with UDP GSO.
    Gso(Box<[GsoSlot]>),
}

/// One GSO send in flight: the header, its iovecs (one per frame), the UDP_SEGMENT control
/// message and the frames' buffers, all boxed in the port until the completion.
pub(super) struct GsoSlot {
    pub(super) msg: libc::msghdr,
    pub(super) iovs: [libc::iovec; GSO_MAX_SEGMENTS],
    /// Room for one cmsghdr carrying a u16, 8-byte aligned.
    pub(super) cmsg: [u64; 4],
    pub(super) bufs: [BufIndex; GSO_MAX_SEGMENTS],
    pub(super) n: usize,
    pub(super) bytes: usize,
    pub(super) busy: bool,
}

impl GsoSlot {
    pub(super) fn new() -> GsoSlot {
        GsoSlot {
            // SAFETY: msghdr is plain data for which all-zero is a valid (empty) header.
            msg: unsafe { std::mem::zeroed() },
            iovs: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; GSO_MAX_SEGMENTS],
            cmsg: [0; 4],
            bufs: [BufIndex(0); GSO_MAX_SEGMENTS],
            n: 0,
            bytes: 0,
            busy: false,
        }
    }
}

/// Length of the run of equal-size frames at the start of `frames` that one GSO send may
/// carry.
fn gso_run(frames: &[TxDesc]) -> usize {
    let len = frames[0].len as usize;
    let max = GSO_MAX_SEGMENTS.min(GSO_MAX_BYTES / len.max(1)).max(1);
    frames
        .iter()
        .take(max)
        .take_while(|f| f.len as usize == len)
        .count()
}

/// An L2TPv3 port: received datagrams are checked in place; each frame sent goes out as a
/// writev of its header (in a slot of its own until the write completes) and the frame.
pub(super) struct EncapPort {
    pub(super) codec: Arc<L2tpv3Codec>,
    /// Frames sent so far (the L2TPv3 counter).
    pub(super) seq: u32,
    pub(super) slots: Box<[EncapSlot]>,
    pub(super) next: usize,
}

pub(super) struct EncapSlot {
    pub(super) hdr: [u8; L2TP_MAX_HEADER],
    pub(super) iov: [libc::iovec; 2],
    pub(super) buf: BufIndex,
    pub(super) busy: bool,
}

/// A stream port: one read in flight into its reassembly buffer, one sendmsg in flight that
/// carries a batch of length-prefixed frames (so the stream's framing can never interleave).
pub(super) struct StreamPort {
    pub(super) rx: StreamRx,
    pub(super) reading: bool,
    pub(super) tx: StreamTx,
}

/// The batch a stream port has in flight: per frame a 4-byte prefix and the frame itself.
/// Everything the kernel reads lives here, in boxes that do not move, until the completion.
pub(super) struct StreamTx {
    pub(super) prefixes: Box<[[u8; PREFIX_LEN]]>,
    pub(super) iovs: Box<[libc::iovec]>,
    pub(super) bufs: Box<[BufIndex]>,
    pub(super) n: usize,
    /// Bytes of the whole batch, prefixes included.
    pub(super) bytes: usize,
    pub(super) msg: Box<libc::msghdr>,
    pub(super) busy: bool,
}

impl StreamTx {
    pub(super) fn new(depth: usize) -> StreamTx {
        // SAFETY: msghdr is plain data for which all-zero is a valid (empty) header.
        let msg: libc::msghdr = unsafe { std::mem::zeroed() };
        StreamTx {
            prefixes: vec![[0u8; PREFIX_LEN]; depth].into_boxed_slice(),
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                2 * depth
            ]
            .into_boxed_slice(),
            bufs: vec![BufIndex(0); depth].into_boxed_slice(),
            n: 0,
            bytes: 0,
            msg: Box::new(msg),
            busy: false,
        }
    }
}

/// UDP_SEGMENT (linux/udp.h), the GSO segment size option.
const UDP_SEGMENT: libc::c_int = 103;

/// CMSG_SPACE of a u16 payload.
fn size_of_cmsg_u16() -> usize {
    // SAFETY: CMSG_SPACE only computes a size.
    unsafe { libc::CMSG_SPACE(2) as usize }
}

impl Worker {
    /// Submits what `port` can take of its queue; returns how many frames it took (they pass
    /// to the kernel, or are released if the port is going away).
    pub(super) fn submit_port(&mut self, port: PortId) -> Result<usize, WorkerError> {
        let frames = self.tx.queue(port);
        let n = frames.len();
        let Some(p) = self.ports[port.index()].as_mut().filter(|p| !p.draining) else {
            for f in frames {
                self.ring.pool_mut().release(f.buf);
            }
            return Ok(n);
        };
        let file = p.tx_file;
        match &mut p.io {
            PortIo::Datagram => {
                for f in frames {
                    // SAFETY: the transmit queue holds a reference on `f.buf`; it passes to
                    // this write and is released when the write's completion is reaped.
                    // Nothing writes a buffer that is queued for transmission.
                    let r = unsafe {
                        self.ring
                            .push_write(file, f.buf, f.off, f.len, tag(TAG_WRITE, port, f.buf))
                    };
                    if let Err(e) = r {
                        return Err(WorkerError::Enter(e));
                    }
                    p.writes += 1;
                }
                self.writes += n as u64;
                self.counters.tx_submitted.add(n as u64);
                Ok(n)
            }
            PortIo::Gso(slots) => {
                let mut taken = 0;
                while taken < n {
                    let run = gso_run(&frames[taken..]);
                    if run == 1 {
                        let f = &frames[taken];
                        // SAFETY: as for a datagram port above.
                        unsafe {
                            self.ring.push_write(
                                file,
                                f.buf,
                                f.off,
                                f.len,
                                tag(TAG_WRITE, port, f.buf),
                            )
                        }
                        .map_err(WorkerError::Enter)?;
                        p.writes += 1;
                        self.writes += 1;
                        self.counters.tx_submitted.inc();
                        taken += 1;
                        continue;
                    }
                    let Some(k) = slots.iter().position(|s| !s.busy) else {
                        break;
                    };
                    let slot = &mut slots[k];
                    let len = frames[taken].len as usize;
                    for (j, f) in frames[taken..taken + run].iter().enumerate() {
                        // SAFETY: the offset stays within the buffer (the frame is stored there).
                        let base = unsafe { self.ring.pool_mut().addr(f.buf).add(f.off as usize) };
                        slot.iovs[j] = libc::iovec {
                            iov_base: base.cast(),
                            iov_len: len,
                        };
                        slot.bufs[j] = f.buf;
                    }
                    slot.n = run;
                    slot.bytes = run * len;
                    let cmsg_space = size_of_cmsg_u16();
                    slot.msg.msg_iov = slot.iovs.as_mut_ptr();
                    slot.msg.msg_iovlen = run;
                    slot.msg.msg_control = slot.cmsg.as_mut_ptr().cast();
                    slot.msg.msg_controllen = cmsg_space;
                    // SAFETY: msg_control points at `cmsg`, 32 bytes, 8-byte aligned, and
                    // msg_controllen (CMSG_SPACE of a u16) fits in it; CMSG_FIRSTHDR therefore
                    // returns a header inside it with room for the u16 written through
                    // CMSG_DATA.
                    unsafe {
                        let c = libc::CMSG_FIRSTHDR(&slot.msg);
                        (*c).cmsg_level = libc::SOL_UDP;
                        (*c).cmsg_type = UDP_SEGMENT;
                        (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), len as u16);
                    }
                    let msg: *const libc::msghdr = &slot.msg;
                    // SAFETY: the slot (header, iovecs, control message) is boxed in the port
                    // and marked busy until this completion is reaped; the frames' buffer
                    // references passed from the queue to this send.
                    unsafe {
                        self.ring.push_sendmsg(
                            file,
                            msg,
                            libc::MSG_NOSIGNAL as u32,
                            tag(TAG_GSO_SEND, port, BufIndex(k as u32)),
                        )
                    }
                    .map_err(WorkerError::Enter)?;
                    slot.busy = true;
                    p.writes += 1;
                    self.writes += 1;
                    self.counters.tx_submitted.add(run as u64);
                    taken += run;
                }
                Ok(taken)
            }
            PortIo::Encap(en) => {
                let mut taken = 0;
                for f in frames {
                    let k = en.next;
                    let slot = &mut en.slots[k];
                    if slot.busy {
                        break;
                    }
                    en.seq = en.seq.wrapping_add(1);
                    let hlen = en.codec.encap(&mut slot.hdr, en.seq);
                    // SAFETY: the offset stays within the buffer (the frame was stored there).
                    let base = unsafe { self.ring.pool_mut().addr(f.buf).add(f.off as usize) };
                    slot.iov = [
                        libc::iovec {
                            iov_base: slot.hdr.as_mut_ptr().cast(),
                            iov_len: hlen,
                        },
                        libc::iovec {
                            iov_base: base.cast(),
                            iov_len: f.len as usize,
                        },
                    ];
                    slot.buf = f.buf;
                    slot.busy = true;
                    let iov = slot.iov.as_ptr();
                    // SAFETY: the slot (header and iovecs) is boxed in the port and marked busy
                    // until this completion is reaped; the frame's buffer reference passed from
                    // the queue to this write.
                    unsafe {
                        self.ring.push_writev(
                            file,
                            iov,
                            2,
                            tag(TAG_ENCAP_WRITE, port, BufIndex(k as u32)),
                        )
                    }
                    .map_err(WorkerError::Enter)?;
                    en.next = (k + 1) % en.slots.len();
                    p.writes += 1;
                    taken += 1;
                }
                self.writes += taken as u64;
                self.counters.tx_submitted.add(taken as u64);
                Ok(taken)
            }
            PortIo::Stream(st) => {
                let tx = &mut st.tx;
                if tx.busy {
                    return Ok(0);
                }
                let n = n.min(tx.bufs.len());
                let mut bytes = 0;
                for (k, f) in frames[..n].iter().enumerate() {
                    tx.prefixes[k] = f.len.to_be_bytes();
                    tx.iovs[2 * k] = libc::iovec {
                        iov_base: tx.prefixes[k].as_mut_ptr().cast(),
                        iov_len: PREFIX_LEN,
                    };
                    // SAFETY: the offset stays within the buffer (the frame was stored there).
                    let base = unsafe { self.ring.pool_mut().addr(f.buf).add(f.off as usize) };
                    tx.iovs[2 * k + 1] = libc::iovec {
                        iov_base: base.cast(),
                        iov_len: f.len as usize,
                    };
                    tx.bufs[k] = f.buf;
                    bytes += PREFIX_LEN + f.len as usize;
                }
                tx.n = n;
                tx.bytes = bytes;
                tx.msg.msg_iov = tx.iovs.as_mut_ptr();
                tx.msg.msg_iovlen = 2 * n;
                let msg: *const libc::msghdr = &*tx.msg;
                // SAFETY: the header, iovecs and prefixes are boxed in the port and the frames
                // are held by references taken over from the queue; all stay untouched until
                // this completion is reaped (`busy`). MSG_WAITALL makes the kernel send the
                // whole batch or fail, so the stream's framing stays whole.
                unsafe {
                    self.ring.push_sendmsg(
                        file,
                        msg,
                        (libc::MSG_WAITALL | libc::MSG_NOSIGNAL) as u32,
                        tag(TAG_STREAM_SEND, port, BufIndex(0)),
                    )
                }
                .map_err(WorkerError::Enter)?;
                tx.busy = true;
                p.writes += 1;
                self.writes += 1;
                self.counters.tx_submitted.add(n as u64);
                Ok(n)
            }
        }
    }

    /// A datagram of `len` bytes arrived in `buf` on a live port: hand its frame to the
    /// batch (after checking its encapsulation, if the port has one). A datagram that filled
    /// the whole buffer may have been cut short (a multishot receive reports the whole
    /// length, more than the buffer): it is oversize, whatever its encapsulation.
    pub(super) fn received(&mut self, port: PortId, buf: BufIndex, len: usize) {
        let Some(p) = &self.ports[port.index()] else {
            return;
        };
        if len >= self.ring.pool().buf_size() {
            let c = &p.entry.counters;
            c.rx_frames.inc();
            c.rx_bytes.add(len as u64);
            c.count_drop(DropReason::Oversize);
            self.ring.pool_mut().release(buf);
            return;
        }
        let PortIo::Encap(en) = &p.io else {
            self.rx.push(RxDesc {
                port,
                buf,
                off: 0,
                len: len as u32,
            });
            return;
        };
        let pool = self.ring.pool_mut();
        let data = &pool.buf(buf)[..len];
        match en.codec.decap(data) {
            Ok(off) => self.rx.push(RxDesc {
                port,
                buf,
                off: off as u16,
                len: (data.len() - off) as u32,
            }),
            Err(reason) => {
                let c = &p.entry.counters;
                c.rx_frames.inc();
                c.rx_bytes.add(len as u64);
                c.count_drop(reason);
                pool.release(buf);
            }
        }
    }

    /// An empty datagram arrived on a live port (a multishot receive completes it without a
    /// buffer): counted as a read of 0 bytes would be.
    pub(super) fn received_empty(&mut self, port: PortId) {
        let Some(p) = &self.ports[port.index()] else {
            return;
        };
        let reason = match &p.io {
            PortIo::Encap(en) => en.codec.decap(&[]).err().unwrap_or(DropReason::ShortHeader),
            _ => DropReason::Runt,
        };
        p.entry.counters.rx_frames.inc();
        p.entry.counters.count_drop(reason);
    }

    /// A read on a stream port completed.
    pub(super) fn stream_read(&mut self, port: PortId, result: i32) {
        let Some(p) = &mut self.ports[port.index()] else {
            return;
        };
        p.reads -= 1;
        let live = !p.draining && !p.failed;
        let counters = p.entry.counters.clone();
        let PortIo::Stream(st) = &mut p.io else {
            return;
        };
        st.reading = false;
        if !live {
            return;
        }
        if result <= 0 {
            if result < 0 && matches!(-result, libc::EINTR | libc::EAGAIN | libc::ENOBUFS) {
                return;
            }
            if st.rx.mid_frame() {
                counters.count_drop(DropReason::Truncated);
            }
            let reason = if result == 0 {
                "the peer closed the connection".to_string()
            } else {
                format!("receive failed: {}", io::Error::from_raw_os_error(-result))
            };
            self.close_port(port, reason);
            return;
        }
        st.rx.commit(result as usize);
        let mut desync = None;
        while let Some(item) = st.rx.next_item(self.max_frame) {
            match item {
                StreamItem::Frame { start, len } => {
                    let pool = self.ring.pool_mut();
                    let Some(b) = pool.alloc() else {
                        self.counters.rx_starved.inc();
                        counters.rx_frames.inc();
                        counters.rx_bytes.add(len as u64);
                        counters.count_drop(DropReason::QueueFull);
                        continue;
                    };
                    pool.buf_mut(b)[..len].copy_from_slice(&st.rx.bytes()[start..start + len]);
                    self.rx.push(RxDesc {
                        port,
                        buf: b,
                        off: 0,
                        len: len as u32,
                    });
                }
                StreamItem::Runt => {
                    counters.rx_frames.inc();
                    counters.count_drop(DropReason::Runt);
                }
                StreamItem::Oversize(len) => {
                    counters.rx_frames.inc();
                    counters.rx_bytes.add(len as u64);
                    counters.count_drop(DropReason::Oversize);
                }
                StreamItem::Desync(len) => {
                    counters.rx_frames.inc();
                    counters.count_drop(DropReason::Oversize);
                    desync = Some(len);
                    break;
                }
            }
        }
        if let Some(len) = desync {
            self.close_port(
                port,
                format!(
                    "frame length {len} in the stream is impossible; the stream is out of step"
                ),
            );
        }
    }

    /// A batch sent on a stream port completed.
    pub(super) fn stream_sent(&mut self, port: PortId, result: i32) {
        self.writes -= 1;
        let Some(p) = &mut self.ports[port.index()] else {
            return;
        };
        p.writes -= 1;
        let counters = p.entry.counters.clone();
        let PortIo::Stream(st) = &mut p.io else {
            return;
        };
        let tx = &mut st.tx;
        tx.busy = false;
        let n = tx.n;
        let whole = result >= 0 && result as usize == tx.bytes;
        if whole {
            counters.tx_frames.add(n as u64);
            counters.tx_bytes.add((tx.bytes - n * PREFIX_LEN) as u64);
        } else if result != -libc::ECANCELED {
            for _ in 0..n {
                counters.count_drop(DropReason::TxError);
            }
        }
        for k in 0..n {
            let b = tx.bufs[k];
            self.ring.pool_mut().release(b);
        }
        tx.n = 0;
        if !whole && result != -libc::ECANCELED {
            let reason = if result < 0 {
                format!("send failed: {}", io::Error::from_raw_os_error(-result))
            } else {
                format!("send cut short ({result} bytes)")
            };
            self.close_port(port, reason);
        }
    }

    /// A GSO send completed.
    pub(super) fn gso_sent(&mut self, port: PortId, slot: usize, result: i32) {
        self.writes -= 1;
        if let Some(p) = &mut self.ports[port.index()] {
            p.writes -= 1;
            let ctr = p.entry.counters.clone();
            if let PortIo::Gso(slots) = &mut p.io {
                let slot = &mut slots[slot];
                slot.busy = false;
                if result >= 0 && result as usize == slot.bytes {
                    ctr.tx_frames.add(slot.n as u64);
                    ctr.tx_bytes.add(slot.bytes as u64);
                } else if result != -libc::ECANCELED {
                    ctr.tx_error.add(slot.n as u64);
                }
                for j in 0..slot.n {
                    let b = slot.bufs[j];
                    self.ring.pool_mut().release(b);
                }
                slot.n = 0;
            }
        }
    }

    /// An L2TPv3 frame's writev completed.
    pub(super) fn encap_sent(&mut self, port: PortId, slot: usize, result: i32) {
        self.writes -= 1;
        if let Some(p) = &mut self.ports[port.index()] {
            p.writes -= 1;
            let ctr = p.entry.counters.clone();
            if let PortIo::Encap(en) = &mut p.io {
                let slot = &mut en.slots[slot];
                slot.busy = false;
                let frame_len = slot.iov[1].iov_len;
                let b = slot.buf;
                if result >= 0 {
                    ctr.tx_frames.inc();
                    ctr.tx_bytes.add(frame_len as u64);
                } else if result != -libc::ECANCELED {
                    ctr.count_drop(DropReason::TxError);
                }
                self.ring.pool_mut().release(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(lens: &[u32]) -> Vec<TxDesc> {
        lens.iter()
            .map(|&len| TxDesc {
                buf: BufIndex(0),
                off: 0,
                len,
            })
            .collect()
    }

    #[test]
    fn gso_runs_take_equal_sizes_within_the_limits() {
        assert_eq!(gso_run(&frames(&[60, 60, 60, 61, 60])), 3);
        assert_eq!(gso_run(&frames(&[60])), 1);
        assert_eq!(gso_run(&frames(&[60; 100])), GSO_MAX_SEGMENTS);
        // 1514-byte frames: at most 42 fit in one send.
        assert_eq!(gso_run(&frames(&[1514; 64])), GSO_MAX_BYTES / 1514);
        assert_eq!(gso_run(&frames(&[1514, 60])), 1);
    }
}
