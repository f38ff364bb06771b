//! The engine's path for frames that carry offload metadata (from a `vnet_hdr` tap): a GSO
//! segment of up to 64 KiB, or a frame whose checksum was left partial.
//!
//! Egress decides per port. A port that takes offloads gets the frame as it is. A port that
//! does not gets it plain: a partial checksum is completed in place, once (the buffer's
//! offload record then says DATA_VALID, so every port that sends the frame, with a header or
//! without, sends consistent bytes — no send of the frame has been submitted yet); a GSO
//! segment is cut in software (`crate::gso`), once per frame, into plain frames in buffers of
//! their own, which every such port of a flood shares. A segment that cannot be cut — its
//! header does not match its frame — is dropped as `bad_offload` on its ingress port; one
//! whose pieces would not fit the frame size as `gso_oversize` on each port that needed them
//! cut. Nothing here allocates: the scratch lists are sized at start.

use super::Engine;
use crate::counters::DropReason;
use crate::frame::{Frame, Offload};
use crate::gso::{complete_checksum, GsoError, Segmenter};
use crate::ids::{DomainId, PortId};
use crate::pool::{BufferPool, HEADROOM, LARGE_BUF_SIZE};
use crate::txqueue::TxQueues;

/// Most pieces one segment is cut into (a 64 KiB segment of 64-byte pieces).
const MAX_PIECES: usize = 1024;

/// The largest piece a segment is cut into: a 1500-byte MTU's frame with an 802.1Q tag. A
/// port without offloads cannot say what its other side takes (a tap's MTU is set after the
/// port exists); a standard frame is what every Ethernet station takes.
const PIECE_MAX: usize = 1518;

/// Why a segment was not cut.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// Its header and frame do not allow it.
    Gso(GsoError),
    /// More pieces than `MAX_PIECES` (a tiny segment size): taken as a bad header.
    TooMany,
    /// The pool ran out of buffers for the pieces.
    Starved,
}

/// Scratch lists of the offload path.
pub(super) struct Scratch {
    targets: Vec<PortId>,
    pieces: Vec<Frame>,
}

impl Scratch {
    pub(super) fn new(max_ports: usize) -> Scratch {
        Scratch {
            targets: Vec::with_capacity(max_ports),
            pieces: Vec::with_capacity(MAX_PIECES),
        }
    }
}

/// Whether frame `f` may be longer than the frame size: a GSO segment, cut later for ports
/// that need it (it must still fit a large buffer).
#[inline]
pub(super) fn may_exceed(pool: &BufferPool, f: &Frame) -> bool {
    f.has_offload()
        && pool.offload(f.buf).gso_type & !Offload::GSO_ECN != Offload::GSO_NONE
        && (f.len as usize) <= LARGE_BUF_SIZE - HEADROOM
}

impl Engine {
    /// Forwards `f` (which has offload metadata) to `out`, or floods it in `domain`. Kept out
    /// of line: inlined into the plain path it cost the engine benchmark about 15%.
    #[cold]
    #[inline(never)]
    pub(super) fn forward_offload(
        &mut self,
        pool: &mut BufferPool,
        f: &Frame,
        domain: DomainId,
        out: Option<PortId>,
        tx: &mut TxQueues,
    ) {
        let ingress = f.ingress;
        // Where it goes, as the fast path decides it.
        self.scratch.targets.clear();
        match out {
            Some(o) if o == ingress => {
                self.charge(ingress, DropReason::SamePort);
                pool.release(f.buf);
                return;
            }
            Some(o) => match &self.ports[o.index()] {
                Some(p) if !p.conf.link_up => {
                    tx.charge(o, DropReason::LinkDown);
                    pool.release(f.buf);
                    return;
                }
                Some(p) if p.refuses(super::frame_of(pool, f)) => {
                    tx.charge(o, DropReason::Filtered);
                    pool.release(f.buf);
                    return;
                }
                Some(_) => self.scratch.targets.push(o),
                None => {}
            },
            None => {
                if let Some(set) = self.flood.iter().find(|set| set.domain == domain) {
                    // Rx-filters look at the Ethernet header only, which a segment starts
                    // with like any frame: the ports that refuse it are left out here.
                    let (ports, frame) = (&self.ports, super::frame_of(pool, f));
                    let mut candidates = 0;
                    for &p in set.ports.iter().filter(|&&p| p != ingress) {
                        candidates += 1;
                        if matches!(&ports[p.index()], Some(s) if s.refuses(frame)) {
                            tx.charge(p, DropReason::Filtered);
                        } else {
                            self.scratch.targets.push(p);
                        }
                    }
                    if candidates > 0 && self.scratch.targets.is_empty() {
                        pool.release(f.buf);
                        return;
                    }
                }
            }
        }
        if self.scratch.targets.is_empty() {
            self.charge(ingress, DropReason::NoDestination);
            pool.release(f.buf);
            return;
        }
        let o = *pool.offload(f.buf);
        let gso = o.gso_type & !Offload::GSO_ECN != Offload::GSO_NONE;
        let plain_wanted = self
            .scratch
            .targets
            .iter()
            .any(|&p| !self.takes_offloads(p, &o));
        if plain_wanted && !gso && o.flags & Offload::F_NEEDS_CSUM != 0 {
            // Complete the checksum for everyone: the frame becomes plain.
            let at = f.off as usize;
            let frame = &mut pool.buf_mut(f.buf)[at..at + f.len as usize];
            if complete_checksum(frame, &o).is_err() {
                self.charge(ingress, DropReason::BadOffload);
                pool.release(f.buf);
                return;
            }
            let r = pool.offload_mut(f.buf);
            r.flags = (r.flags & !Offload::F_NEEDS_CSUM) | Offload::F_DATA_VALID;
        }
        // Cut the segment once, if some port needs it cut.
        self.scratch.pieces.clear();
        let mut cut_failed = None;
        if plain_wanted && gso {
            cut_failed = self.cut(pool, f, &o).err();
        }
        // Hand each port the frame or its pieces; count the references each needs.
        let (mut whole, mut cut) = (0u16, 0u16);
        for i in 0..self.scratch.targets.len() {
            let p = self.scratch.targets[i];
            if !gso || self.takes_offloads(p, &o) {
                if tx.push(p, *f) {
                    whole += 1;
                }
                continue;
            }
            match cut_failed {
                Some(Cut::Gso(GsoError::SegmentTooLarge { .. })) => {
                    tx.charge(p, DropReason::GsoOversize)
                }
                Some(Cut::Starved) => tx.charge(p, DropReason::QueueFull),
                Some(Cut::Gso(_) | Cut::TooMany) => {}
                None => {
                    // All pieces or none: a port whose queue cannot take them all gets none.
                    if tx.room(p) < self.scratch.pieces.len() {
                        tx.charge(p, DropReason::QueueFull);
                        continue;
                    }
                    for &piece in &self.scratch.pieces {
                        tx.push(p, piece);
                    }
                    cut += 1;
                }
            }
        }
        match cut_failed {
            Some(Cut::Gso(GsoError::SegmentTooLarge { .. }) | Cut::Starved) | None => {}
            Some(Cut::Gso(_) | Cut::TooMany) => self.charge(ingress, DropReason::BadOffload),
        }
        // The frame came with one reference; each queue that took it holds one.
        match whole {
            0 => pool.release(f.buf),
            n => pool.retain(f.buf, n - 1),
        }
        for &piece in &self.scratch.pieces {
            match cut {
                0 => pool.release(piece.buf),
                n => pool.retain(piece.buf, n - 1),
            }
        }
    }

    fn takes_offloads(&self, p: PortId, o: &Offload) -> bool {
        matches!(&self.ports[p.index()], Some(s) if s.offloads().takes(o))
    }

    /// Cuts `f` into plain frames in buffers of their own (one reference each), into
    /// `scratch.pieces`.
    fn cut(&mut self, pool: &mut BufferPool, f: &Frame, o: &Offload) -> Result<(), Cut> {
        let (at, len) = (f.off as usize, f.len as usize);
        let seg = {
            let frame = &pool.buf(f.buf)[at..at + len];
            Segmenter::new(frame, o, self.max_frame.min(PIECE_MAX)).map_err(Cut::Gso)?
        };
        if seg.count() > MAX_PIECES {
            return Err(Cut::TooMany);
        }
        for i in 0..seg.count() {
            let n = seg.segment_len(i);
            let b = if HEADROOM + n < pool.buf_size() {
                pool.alloc()
            } else {
                pool.alloc_large()
            };
            let Some(b) = b else {
                // Out of buffers: what was cut so far goes back.
                for piece in self.scratch.pieces.drain(..) {
                    pool.release(piece.buf);
                }
                self.stats.rx_starved.inc();
                return Err(Cut::Starved);
            };
            let (src, dst) = pool.pair_mut(f.buf, b);
            let written = seg.write(&src[at..at + len], i, &mut dst[HEADROOM..]);
            if written == 0 {
                // The segmenter refused to write it (no room, or not the frame it checked).
                pool.release(b);
                for piece in self.scratch.pieces.drain(..) {
                    pool.release(piece.buf);
                }
                return Err(Cut::TooMany);
            }
            self.scratch.pieces.push(Frame::new(
                pool.home(),
                f.ingress,
                b,
                HEADROOM as u16,
                written as u32,
            ));
        }
        Ok(())
    }
}
