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

/// Which frames with offload metadata a port takes as they are: a `vnet_hdr` tap takes them
/// all, a vhost-user guest what its driver negotiated (`VIRTIO_NET_F_GUEST_*`); for the rest
/// the engine completes checksums and cuts segments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OffloadSet(pub u8);

impl OffloadSet {
    pub const NONE: OffloadSet = OffloadSet(0);
    /// Partial checksums (NEEDS_CSUM) and DATA_VALID.
    pub const CSUM: OffloadSet = OffloadSet(1);
    pub const TSO4: OffloadSet = OffloadSet(2);
    pub const TSO6: OffloadSet = OffloadSet(4);
    /// TSO segments with the ECN bit.
    pub const ECN: OffloadSet = OffloadSet(8);
    pub const UFO: OffloadSet = OffloadSet(16);
    pub const USO: OffloadSet = OffloadSet(32);
    pub const ALL: OffloadSet = OffloadSet(63);

    #[inline]
    pub fn contains(self, o: OffloadSet) -> bool {
        self.0 & o.0 == o.0
    }

    #[inline]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// What a port must take to be handed `o` unchanged.
    #[inline]
    pub fn needed(o: &Offload) -> OffloadSet {
        let mut n = 0;
        if o.flags & Offload::F_NEEDS_CSUM != 0 {
            n |= OffloadSet::CSUM.0;
        }
        let gso = o.gso_type & !Offload::GSO_ECN;
        n |= match gso {
            Offload::GSO_NONE => 0,
            Offload::GSO_TCPV4 => OffloadSet::TSO4.0 | OffloadSet::CSUM.0,
            Offload::GSO_TCPV6 => OffloadSet::TSO6.0 | OffloadSet::CSUM.0,
            Offload::GSO_UDP => OffloadSet::UFO.0 | OffloadSet::CSUM.0,
            _ => OffloadSet::USO.0 | OffloadSet::CSUM.0,
        };
        if gso != Offload::GSO_NONE && o.gso_type & Offload::GSO_ECN != 0 {
            n |= OffloadSet::ECN.0;
        }
        OffloadSet(n)
    }

    /// Whether a port with these offloads takes `o` unchanged.
    #[inline]
    pub fn takes(self, o: &Offload) -> bool {
        self.contains(OffloadSet::needed(o))
    }
}

impl std::ops::BitOr for OffloadSet {
    type Output = OffloadSet;
    fn bitor(self, o: OffloadSet) -> OffloadSet {
        OffloadSet(self.0 | o.0)
    }
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

    /// Whether the frame needs nothing done to it before a port without offloads sends it
    /// (no segmentation, no checksum left to complete; DATA_VALID alone asks for nothing).
    #[inline]
    pub fn is_plain(&self) -> bool {
        self.flags & Offload::F_NEEDS_CSUM == 0 && self.gso_type & !Offload::GSO_ECN == 0
    }

    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at csum_start + csum_offset is partial.
    pub const F_NEEDS_CSUM: u8 = 1;
    /// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksums were verified.
    pub const F_DATA_VALID: u8 = 2;
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub const GSO_NONE: u8 = 0;
    pub const GSO_TCPV4: u8 = 1;
    pub const GSO_UDP: u8 = 3;
    pub const GSO_TCPV6: u8 = 4;
    pub const GSO_UDP_L4: u8 = 5;
    pub const GSO_ECN: u8 = 0x80;

    /// Bytes of `struct virtio_net_hdr_v1` (VERSION_1 taps, `TUNSETVNETHDRSZ` 12).
    pub const WIRE_LEN: usize = 12;

    /// Reads a `virtio_net_hdr_v1` (little-endian, as VERSION_1 has it).
    #[inline]
    pub fn parse(h: &[u8; Offload::WIRE_LEN]) -> Offload {
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        Offload {
            flags: h[0],
            gso_type: h[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }

    /// Writes it as a `virtio_net_hdr_v1` (num_buffers 0).
    #[inline]
    pub fn emit(&self, h: &mut [u8; Offload::WIRE_LEN]) {
        h[0] = self.flags;
        h[1] = self.gso_type;
        h[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        h[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        h[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        h[10..12].fill(0);
    }

    /// Whether the header can describe a frame of `len` bytes: a known GSO type, a segment
    /// size for a GSO frame, and header and checksum offsets inside the data. (Whether it
    /// agrees with the frame's own headers is the segmenter's to check.)
    pub fn fits(&self, len: usize) -> bool {
        let gso = self.gso_type & !Offload::GSO_ECN;
        let known = matches!(
            gso,
            Offload::GSO_NONE
                | Offload::GSO_TCPV4
                | Offload::GSO_UDP
                | Offload::GSO_TCPV6
                | Offload::GSO_UDP_L4
        );
        let csum_ok = self.flags & Offload::F_NEEDS_CSUM == 0
            || self.csum_start as usize + self.csum_offset as usize + 2 <= len;
        known
            && (gso == Offload::GSO_NONE || self.gso_size > 0)
            && self.hdr_len as usize <= len
            && csum_ok
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_takes_a_frame_whole_only_with_every_offload_it_needs() {
        let o = |flags, gso_type| Offload {
            flags,
            gso_type,
            ..Offload::NONE
        };
        let tso4 = OffloadSet::CSUM | OffloadSet::TSO4;
        assert!(OffloadSet::NONE.takes(&Offload::NONE));
        assert!(OffloadSet::NONE.takes(&o(Offload::F_DATA_VALID, 0)));
        assert!(!OffloadSet::NONE.takes(&o(Offload::F_NEEDS_CSUM, 0)));
        assert!(OffloadSet::CSUM.takes(&o(Offload::F_NEEDS_CSUM, 0)));
        assert!(!OffloadSet::CSUM.takes(&o(Offload::F_NEEDS_CSUM, Offload::GSO_TCPV4)));
        assert!(tso4.takes(&o(Offload::F_NEEDS_CSUM, Offload::GSO_TCPV4)));
        assert!(!tso4.takes(&o(Offload::F_NEEDS_CSUM, Offload::GSO_TCPV6)));
        assert!(!tso4.takes(&o(
            Offload::F_NEEDS_CSUM,
            Offload::GSO_TCPV4 | Offload::GSO_ECN
        )));
        assert!((tso4 | OffloadSet::ECN).takes(&o(
            Offload::F_NEEDS_CSUM,
            Offload::GSO_TCPV4 | Offload::GSO_ECN
        )));
        assert!(!tso4.takes(&o(0, Offload::GSO_UDP)));
        assert!(!tso4.takes(&o(0, Offload::GSO_UDP_L4)));
        assert!(OffloadSet::ALL.takes(&o(Offload::F_NEEDS_CSUM, Offload::GSO_UDP_L4)));
    }

    #[test]
    fn the_virtio_header_round_trips_little_endian() {
        let o = Offload {
            flags: Offload::F_NEEDS_CSUM,
            gso_type: Offload::GSO_TCPV6 | Offload::GSO_ECN,
            hdr_len: 74,
            gso_size: 1428,
            csum_start: 54,
            csum_offset: 16,
        };
        let mut h = [0xffu8; 12];
        o.emit(&mut h);
        assert_eq!(h, [1, 0x84, 74, 0, 0x94, 5, 54, 0, 16, 0, 0, 0]);
        assert_eq!(Offload::parse(&h), o);
        assert!(!o.is_plain());
        assert!(Offload {
            flags: Offload::F_DATA_VALID,
            ..Offload::NONE
        }
        .is_plain());
    }

    #[test]
    fn headers_that_cannot_describe_their_frame_are_told() {
        let tso = Offload {
            flags: Offload::F_NEEDS_CSUM,
            gso_type: Offload::GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        assert!(tso.fits(10_000));
        assert!(!Offload { gso_size: 0, ..tso }.fits(10_000));
        assert!(!Offload { gso_type: 2, ..tso }.fits(10_000));
        assert!(!Offload {
            hdr_len: 20_000,
            ..tso
        }
        .fits(10_000));
        assert!(!tso.fits(51), "checksum field beyond the data");
        assert!(Offload::NONE.fits(0));
    }
}
