//! `Frame`: what the data plane passes around for one frame — where its bytes are, which port
//! it came in by, and the offload metadata a virtio-net header carries beside it.
//!
//! The bytes stay in their pool buffer from receive to the last transmission; a `Frame` is a
//! small `Copy` descriptor (16 bytes) that names them: the buffer and its home pool, where the
//! frame lies in it, the ingress port and flags. The same type is a receive batch entry and a
//! transmit queue entry. Its buffer reference is owned by whoever holds the descriptor: the
//! receive batch, then a transmit queue, then the port's write in flight.
//!
//! A frame's offload metadata (the virtio-net header fields, `Offload`) is kept beside its
//! buffer, in the pool (`BufferPool::offload`), not in the descriptor: a flooded frame is one
//! buffer under several descriptors, so the record is written once and never copied, and the
//! descriptors that every queue copies stay small (a 24-byte descriptor carrying the record
//! cost the engine benchmark a few percent). `Frame::OFFLOAD` says whether the record applies.

use crate::ids::{BufIndex, PortId, WorkerId};

/// The offload fields of a virtio-net header (`struct virtio_net_hdr`), in host order: what a
/// `vnet_hdr` tap or a virtio guest says about a frame (a GSO segment to be cut, a checksum
/// left to complete). All zero for a plain frame, which is what every port without offloads
/// produces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offload {
    /// `VIRTIO_NET_HDR_F_*` (NEEDS_CSUM, DATA_VALID, RSC_INFO).
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*` (NONE, TCPV4, UDP, TCPV6, UDP_L4, ECN).
    pub gso_type: u8,
    /// Bytes of Ethernet + IP + transport headers.
    pub hdr_len: u16,
    /// Payload bytes per segment when cut.
    pub gso_size: u16,
    /// Where checksumming starts, and where (from there) the checksum goes.
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl Offload {
    /// A plain frame: no segmentation, no checksum to complete.
    pub const NONE: Offload = Offload {
        flags: 0,
        gso_type: 0,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Whether the frame needs nothing done to it before a port without offloads sends it.
    #[inline]
    pub fn is_plain(&self) -> bool {
        self.flags == 0 && self.gso_type == 0
    }
}

/// One frame in a pool buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The buffer, in its home's pool.
    pub buf: BufIndex,
    /// Bytes of the frame.
    pub len: u32,
    /// Where the frame starts in the buffer (after an encapsulation header, if any).
    pub off: u16,
    /// The port it was received on.
    pub ingress: PortId,
    /// The worker whose pool holds the buffer (its references go back there).
    pub home: WorkerId,
    /// `Frame::OFFLOAD`: the buffer's offload record (`BufferPool::offload`) describes this
    /// frame; without it the frame is plain.
    pub flags: u8,
    spare: u16,
}

const _: () = assert!(std::mem::size_of::<Frame>() == 16);

impl Frame {
    /// The frame carries virtio-net offload metadata.
    pub const OFFLOAD: u8 = 1;

    /// A plain frame of `len` bytes at `off` in buffer `buf` of `home`'s pool, received on
    /// `ingress`.
    #[inline]
    pub fn new(home: WorkerId, ingress: PortId, buf: BufIndex, off: u16, len: u32) -> Frame {
        Frame {
            buf,
            len,
            off,
            ingress,
            home,
            flags: 0,
            spare: 0,
        }
    }

    /// Whether the frame carries offload metadata.
    #[inline]
    pub fn has_offload(&self) -> bool {
        self.flags & Frame::OFFLOAD != 0
    }
}
