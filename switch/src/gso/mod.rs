//! Software segmentation of virtio-net GSO frames, and completion of partial checksums, for
//! ports that cannot take offloaded frames: what Linux's software GSO emits for the same
//! frame, byte for byte (checked against the kernel itself by `tests/gso_kernel.rs`).
//!
//! A frame arrives with its virtio-net header (`Offload`). With `NEEDS_CSUM` its transport
//! checksum is partial: the field at `csum_start + csum_offset` holds the pseudo-header sum,
//! and `complete_checksum` finishes it in place (Linux's `skb_checksum_help`: a result of 0
//! is written as 0xFFFF). With a GSO type the frame is one large TCP segment or UDP datagram
//! to cut, `gso_size` payload bytes at a time; `Segmenter` validates it once and then writes
//! each piece, on demand, into a buffer of the caller's:
//!
//! - TCPV4/TCPV6 (TSO): headers + `gso_size` payload bytes per segment. IPv4 total length,
//!   id (+1 per segment), header checksum; IPv6 payload length; TCP sequence number (+ the
//!   payload before it); FIN and PSH only on the last segment, CWR only on the first; the TCP
//!   checksum complete.
//! - UDP_L4 (USO): every piece a datagram of its own, UDP length and checksum (0 sent as
//!   0xFFFF) complete, IP fields as for TSO; at most 128 pieces (Linux's `UDP_MAX_SEGMENTS`).
//! - UDP (UFO, IPv4 only): IPv4 fragments of the one datagram, same id, fragment offsets and
//!   MF, DF cleared; the UDP header (length as the sender wrote it) with the checksum of the
//!   whole datagram goes in the first. `gso_size` counts UDP header and payload together and
//!   is rounded down to the 8-byte fragment unit (Linux cuts at `gso_size` exactly and so
//!   writes wrong offsets when it is not a multiple of 8).
//!
//! Checksums of pieces are computed from scratch, so the partial sum a sender left is not
//! trusted; for a sender that follows the virtio rules (the pseudo-header over the whole
//! length in the field) the result equals the kernel's incremental update. A GSO frame whose
//! payload fits one segment is sent whole, its checksum completed if partial, nothing else
//! changed, as Linux does ("too small packets are not really GSO ones"). One difference:
//! Linux counts TCP options as payload in that test, so a TCP frame whose payload fits but
//! whose payload and options do not is marked GSO and then dropped (`tcp_gso_segment` finds
//! nothing to cut); here it is sent whole. Ethernet with up to two VLAN tags (0x8100,
//! 0x88a8) in front, IPv4 with options (not already a fragment) or IPv6 without extension
//! headers, TCP with options or UDP: anything else is refused, each case with its own
//! `GsoError`.
//!
//! `hdr_len` is a hint, as in the kernel (`virtio_net_hdr_from_skb` writes the skb's linear
//! length there, which may hold payload or not all of the headers): it must lie inside the
//! frame, and the headers themselves are parsed.
//!
//! Never allocates, never panics, whatever the bytes and the header say
//! (`fuzz/fuzz_targets/gso_segment.rs`).

pub mod checksum;
pub mod wire;

use crate::ethernet::{EthernetFrame, HEADER_LEN as ETHERNET_HEADER_LEN};
use crate::frame::Offload;
use checksum::{mangle_zero, pseudo_header_v4, pseudo_header_v6, Checksum};
use wire::number::{
    ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_QINQ, ETHERTYPE_VLAN, PROTO_TCP, PROTO_UDP,
};
use wire::{
    tcp, udp, Ipv4Packet, Ipv6Packet, TcpSegment, UdpDatagram, VlanHeader, WireError, VLAN_TAG_LEN,
};

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksums were verified (nothing to do here).
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_*`.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
/// Flag: the sender set ECN bits (allowed with TCPV4, TCPV6 and UDP, as in Linux).
pub const GSO_ECN: u8 = 0x80;

/// Most pieces a UDP_L4 frame may be cut into (Linux's `UDP_MAX_SEGMENTS`).
pub const MAX_USO_SEGMENTS: usize = 128;
/// Most VLAN tags before the IP header.
pub const MAX_VLAN_TAGS: usize = 2;
/// Largest IPv4 fragment offset, in bytes.
const MAX_FRAG_OFFSET: usize = 0x1fff << 3;

/// Why a frame cannot be cut or its checksum completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GsoError {
    #[error("unknown gso_type {0:#04x} (valid: NONE 0, TCPV4 1, UDP 3, TCPV6 4, UDP_L4 5; the ECN flag 0x80 with TCPV4, TCPV6 or UDP)")]
    UnknownType(u8),
    #[error("gso_size is 0 in a GSO frame")]
    ZeroGsoSize,
    #[error("hdr_len {hdr_len} is beyond the {len}-byte frame")]
    HeaderBeyondData { hdr_len: u16, len: usize },
    #[error("the checksum at csum_start {csum_start} + csum_offset {csum_offset} ends beyond the {len}-byte frame")]
    CsumBeyondData {
        csum_start: u16,
        csum_offset: u16,
        len: usize,
    },
    #[error("the {len}-byte frame ends inside its {layer} header ({need} bytes needed)")]
    Truncated {
        layer: &'static str,
        need: usize,
        len: usize,
    },
    #[error("malformed {0} header")]
    BadHeader(&'static str),
    #[error("ethertype {0:#06x} (after any VLAN tags) is neither IPv4 nor IPv6")]
    NotIp(u16),
    #[error("gso_type {gso_type:#04x} does not go with ethertype {ethertype:#06x}")]
    IpVersionMismatch { gso_type: u8, ethertype: u16 },
    #[error("IPv6 extension header {0} before the transport header (not supported)")]
    Ipv6ExtensionHeader(u8),
    #[error("the IPv4 packet is already a fragment")]
    Fragment,
    #[error("IP protocol {0} is not TCP")]
    NotTcp(u8),
    #[error("IP protocol {0} is not UDP")]
    NotUdp(u8),
    #[error("csum_start {csum_start} / csum_offset {csum_offset} do not point at the transport checksum (expected {expected_start} / {expected_offset})")]
    CsumMismatch {
        csum_start: u16,
        csum_offset: u16,
        expected_start: usize,
        expected_offset: usize,
    },
    #[error("UFO (gso_type UDP) over IPv6 is not supported")]
    UfoOverIpv6,
    #[error("UFO gso_size {0} is below the 8-byte fragment unit")]
    FragmentTooSmall(u16),
    #[error("a {0}-byte datagram needs fragment offsets beyond IPv4's 65528")]
    DatagramTooLong(usize),
    #[error("a {need}-byte segment exceeds the limit of {max} bytes")]
    SegmentTooLarge { need: usize, max: usize },
    #[error("more than {MAX_USO_SEGMENTS} UDP_L4 segments")]
    TooManySegments,
}

/// Completes the checksum a NEEDS_CSUM frame leaves partial (csum_start/csum_offset), in
/// place: the sum from `csum_start` to the end of the frame, the partial sum in the field
/// included, written at `csum_start + csum_offset` (0 as 0xFFFF). Does nothing to a frame
/// without NEEDS_CSUM. For a frame sent whole; `Segmenter` completes its pieces itself.
pub fn complete_checksum(frame: &mut [u8], o: &Offload) -> Result<(), GsoError> {
    if let Some((start, field)) = csum_place(o, frame.len())? {
        complete(frame, start, field);
    }
    Ok(())
}

/// Where the partial checksum starts and where it goes, checked against the frame length.
fn csum_place(o: &Offload, len: usize) -> Result<Option<(usize, usize)>, GsoError> {
    if o.flags & F_NEEDS_CSUM == 0 {
        return Ok(None);
    }
    let start = usize::from(o.csum_start);
    let field = start + usize::from(o.csum_offset);
    if field + 2 > len {
        return Err(GsoError::CsumBeyondData {
            csum_start: o.csum_start,
            csum_offset: o.csum_offset,
            len,
        });
    }
    Ok(Some((start, field)))
}

/// Sums `buf[start..]` and writes the checksum at `field` (both inside `buf`).
fn complete(buf: &mut [u8], start: usize, field: usize) {
    let Some(covered) = buf.get(start..) else {
        return;
    };
    let c = mangle_zero(Checksum::new().add_bytes(covered).finish());
    if let Some(f) = buf.get_mut(field..field + 2) {
        f.copy_from_slice(&c.to_be_bytes());
    }
}

/// How the pieces are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One piece: the frame itself, its checksum completed if partial.
    Whole,
    /// TCP segments.
    Tcp,
    /// UDP datagrams (USO).
    Udp,
    /// IPv4 fragments of one UDP datagram (UFO).
    Ufo,
}

/// A GSO frame validated for cutting into segments that each fit `max_frame` bytes.
///
/// Holds offsets and sizes only (no reference to the frame), so it is `Copy` and lives on
/// the stack; `write` is given the same bytes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segmenter {
    kind: Kind,
    ipv6: bool,
    /// Bytes of the frame.
    len: usize,
    /// Where the IP header starts (after Ethernet and VLAN tags).
    l3: usize,
    /// Where the transport header starts.
    l4: usize,
    /// Bytes at the front of the frame that every piece repeats.
    head: usize,
    /// Bytes of the rest of the frame each piece carries (the last may carry fewer).
    step: usize,
    count: usize,
    /// `Whole` with NEEDS_CSUM: where the sum starts and where the checksum goes.
    csum: Option<(usize, usize)>,
    /// UFO: the whole datagram's UDP checksum, for the first fragment.
    ufo_check: u16,
}

/// Where the headers of a frame lie.
struct Headers {
    l3: usize,
    l4: usize,
    l4_end: usize,
    ipv6: bool,
}

impl Segmenter {
    /// Validates `frame` and its offload header for cutting into pieces of at most
    /// `max_frame` bytes (Ethernet frame length without FCS, VLAN tags included).
    pub fn new(frame: &[u8], o: &Offload, max_frame: usize) -> Result<Segmenter, GsoError> {
        let len = frame.len();
        let gso = o.gso_type & !GSO_ECN;
        let ecn = o.gso_type & GSO_ECN != 0;
        match gso {
            GSO_TCPV4 | GSO_TCPV6 | GSO_UDP => {}
            GSO_NONE | GSO_UDP_L4 if !ecn => {}
            _ => return Err(GsoError::UnknownType(o.gso_type)),
        }
        if gso != GSO_NONE && o.gso_size == 0 {
            return Err(GsoError::ZeroGsoSize);
        }
        if usize::from(o.hdr_len) > len {
            return Err(GsoError::HeaderBeyondData {
                hdr_len: o.hdr_len,
                len,
            });
        }
        let csum = csum_place(o, len)?;
        if gso == GSO_NONE {
            return Segmenter::whole(len, csum, max_frame);
        }
        let h = parse(frame, gso)?;
        let tcp = matches!(gso, GSO_TCPV4 | GSO_TCPV6);
        if let Some((start, field)) = csum {
            let offset = if tcp {
                tcp::CHECKSUM_OFFSET
            } else {
                udp::CHECKSUM_OFFSET
            };
            if start != h.l4 || field - start != offset {
                return Err(GsoError::CsumMismatch {
                    csum_start: o.csum_start,
                    csum_offset: o.csum_offset,
                    expected_start: h.l4,
                    expected_offset: offset,
                });
            }
        }
        let (kind, head) = match gso {
            GSO_UDP => (Kind::Ufo, h.l4),
            GSO_UDP_L4 => (Kind::Udp, h.l4_end),
            _ => (Kind::Tcp, h.l4_end),
        };
        let rest = len - head;
        let mss = usize::from(o.gso_size);
        if rest <= mss {
            return Segmenter::whole(len, csum, max_frame);
        }
        let step = if kind == Kind::Ufo { mss & !7 } else { mss };
        if step == 0 {
            return Err(GsoError::FragmentTooSmall(o.gso_size));
        }
        let count = rest.div_ceil(step);
        if kind == Kind::Udp && count > MAX_USO_SEGMENTS {
            return Err(GsoError::TooManySegments);
        }
        if kind == Kind::Ufo && (count - 1) * step > MAX_FRAG_OFFSET {
            return Err(GsoError::DatagramTooLong(rest));
        }
        // The first piece is a full one, the largest.
        let need = head + step;
        let ip_max = h.l3 + usize::from(u16::MAX);
        if need > ip_max {
            return Err(GsoError::SegmentTooLarge { need, max: ip_max });
        }
        if need > max_frame {
            return Err(GsoError::SegmentTooLarge {
                need,
                max: max_frame,
            });
        }
        let ufo_check = if kind == Kind::Ufo {
            ufo_checksum(frame, &h)?
        } else {
            0
        };
        Ok(Segmenter {
            kind,
            ipv6: h.ipv6,
            len,
            l3: h.l3,
            l4: h.l4,
            head,
            step,
            count,
            csum: None,
            ufo_check,
        })
    }

    /// A frame sent as it is, its checksum completed if partial.
    fn whole(
        len: usize,
        csum: Option<(usize, usize)>,
        max_frame: usize,
    ) -> Result<Segmenter, GsoError> {
        if len > max_frame {
            return Err(GsoError::SegmentTooLarge {
                need: len,
                max: max_frame,
            });
        }
        Ok(Segmenter {
            kind: Kind::Whole,
            ipv6: false,
            len,
            l3: 0,
            l4: 0,
            head: len,
            step: 0,
            count: 1,
            csum,
            ufo_check: 0,
        })
    }

    /// Number of segments (at least 1).
    #[inline]
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether the frame goes out whole (one segment, the frame's own bytes but for a
    /// completed checksum).
    #[inline]
    pub fn is_whole(&self) -> bool {
        self.kind == Kind::Whole
    }

    /// Bytes of segment `i` (0 for `i >= count()`).
    #[inline]
    pub fn segment_len(&self, i: usize) -> usize {
        if i >= self.count {
            0
        } else if self.kind == Kind::Whole {
            self.len
        } else {
            let rest = self.len - self.head;
            self.head + (rest - i * self.step).min(self.step)
        }
    }

    /// Writes segment `i` of `frame` (the same bytes given to `new`) into `out` (at least
    /// `segment_len(i)` bytes), with every header fixed up and every checksum complete;
    /// returns its length. Returns 0, writing nothing useful, when `i` is out of range, `out`
    /// is too short, or `frame` is not the frame `new` validated.
    pub fn write(&self, frame: &[u8], i: usize, out: &mut [u8]) -> usize {
        let n = self.segment_len(i);
        if n == 0 || frame.len() != self.len || out.len() < n {
            return 0;
        }
        let out = &mut out[..n];
        if self.kind == Kind::Whole {
            out.copy_from_slice(frame);
            if let Some((start, field)) = self.csum {
                complete(out, start, field);
            }
            return n;
        }
        let from = self.head + i * self.step;
        out[..self.head].copy_from_slice(&frame[..self.head]);
        out[self.head..].copy_from_slice(&frame[from..from + n - self.head]);
        match self.fix(out, i) {
            Ok(()) => n,
            Err(_) => 0,
        }
    }

    /// Rewrites the IP and transport headers of piece `i`, which `seg` holds whole.
    fn fix(&self, seg: &mut [u8], i: usize) -> Result<(), WireError> {
        let ip_len = seg.len() - self.l3;
        let (front, l4) = seg.split_at_mut(self.l4);
        let ip = &mut front[self.l3..];
        let l4_len = l4.len() as u32;
        let last = i + 1 == self.count;
        let proto = if self.kind == Kind::Tcp {
            PROTO_TCP
        } else {
            PROTO_UDP
        };
        let pseudo = if self.ipv6 {
            let mut p = Ipv6Packet::new_checked(ip)?;
            p.set_payload_len((ip_len - wire::ipv6::HEADER_LEN) as u16);
            pseudo_header_v6(&p.src_addr(), &p.dst_addr(), proto, l4_len)
        } else {
            let mut p = Ipv4Packet::new_checked(ip)?;
            p.set_total_len(ip_len as u16);
            if self.kind == Kind::Ufo {
                p.set_fragment(!last, (i * self.step) as u16);
            } else {
                // Linux numbers the segments from the frame's id on (no TCP "fixed id" here:
                // virtio cannot ask for it).
                p.set_ident(p.ident().wrapping_add(i as u16));
            }
            p.fill_checksum();
            pseudo_header_v4(p.src_addr(), p.dst_addr(), proto, l4_len)
        };
        match self.kind {
            Kind::Tcp => {
                let mut t = TcpSegment::new_checked(l4)?;
                t.set_seq_number(t.seq_number().wrapping_add((i * self.step) as u32));
                let mut flags = t.flags();
                if !last {
                    flags &= !(tcp::flags::FIN | tcp::flags::PSH);
                }
                if i != 0 {
                    flags &= !tcp::flags::CWR;
                }
                t.set_flags(flags);
                t.fill_checksum(pseudo);
            }
            Kind::Udp => {
                let mut u = UdpDatagram::new_checked(l4)?;
                u.set_len(l4_len as u16);
                u.fill_checksum(pseudo);
            }
            Kind::Ufo if i == 0 => UdpDatagram::new_checked(l4)?.set_checksum(self.ufo_check),
            Kind::Ufo | Kind::Whole => {}
        }
        Ok(())
    }
}

/// Finds the IP and transport headers of a GSO frame of type `gso` (not NONE).
fn parse(frame: &[u8], gso: u8) -> Result<Headers, GsoError> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| GsoError::Truncated {
        layer: "Ethernet",
        need: ETHERNET_HEADER_LEN,
        len: frame.len(),
    })?;
    let mut ethertype = eth.ethertype();
    let mut l3 = ETHERNET_HEADER_LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !matches!(ethertype, ETHERTYPE_VLAN | ETHERTYPE_QINQ) {
            break;
        }
        let tag = VlanHeader::new_checked(&frame[l3..]).map_err(|e| wire_error("VLAN", l3, e))?;
        ethertype = tag.ethertype();
        l3 += VLAN_TAG_LEN;
    }
    let (ipv6, protocol, l4) = match ethertype {
        ETHERTYPE_IPV4 => {
            let ip =
                Ipv4Packet::new_checked(&frame[l3..]).map_err(|e| wire_error("IPv4", l3, e))?;
            if ip.is_fragment() {
                return Err(GsoError::Fragment);
            }
            (false, ip.protocol(), l3 + ip.header_len())
        }
        ETHERTYPE_IPV6 => {
            let ip =
                Ipv6Packet::new_checked(&frame[l3..]).map_err(|e| wire_error("IPv6", l3, e))?;
            (true, ip.next_header(), l3 + wire::ipv6::HEADER_LEN)
        }
        other => return Err(GsoError::NotIp(other)),
    };
    match (gso, ipv6) {
        (GSO_TCPV4, true) | (GSO_TCPV6, false) => {
            return Err(GsoError::IpVersionMismatch {
                gso_type: gso,
                ethertype,
            })
        }
        (GSO_UDP, true) => return Err(GsoError::UfoOverIpv6),
        _ => {}
    }
    let is_tcp = matches!(gso, GSO_TCPV4 | GSO_TCPV6);
    let want = if is_tcp { PROTO_TCP } else { PROTO_UDP };
    if protocol != want {
        if ipv6 && wire::ipv6::EXTENSION_HEADERS.contains(&protocol) {
            return Err(GsoError::Ipv6ExtensionHeader(protocol));
        }
        return Err(if is_tcp {
            GsoError::NotTcp(protocol)
        } else {
            GsoError::NotUdp(protocol)
        });
    }
    let l4_end = if is_tcp {
        let t = TcpSegment::new_checked(&frame[l4..]).map_err(|e| wire_error("TCP", l4, e))?;
        l4 + t.header_len()
    } else {
        UdpDatagram::new_checked(&frame[l4..]).map_err(|e| wire_error("UDP", l4, e))?;
        l4 + udp::HEADER_LEN
    };
    Ok(Headers {
        l3,
        l4,
        l4_end,
        ipv6,
    })
}

/// A view's complaint about the header at `at`, in frame terms.
fn wire_error(layer: &'static str, at: usize, e: WireError) -> GsoError {
    match e {
        WireError::Truncated { need, have } => GsoError::Truncated {
            layer,
            need: at + need,
            len: at + have,
        },
        WireError::Malformed => GsoError::BadHeader(layer),
    }
}

/// The UDP checksum of the whole datagram of a UFO frame (IPv4), as its first fragment
/// carries it: over the pseudo-header, the UDP header with its length field as sent, and
/// the payload.
fn ufo_checksum(frame: &[u8], h: &Headers) -> Result<u16, GsoError> {
    let ip = Ipv4Packet::new_checked(&frame[h.l3..]).map_err(|e| wire_error("IPv4", h.l3, e))?;
    let datagram = &frame[h.l4..];
    let pseudo = pseudo_header_v4(
        ip.src_addr(),
        ip.dst_addr(),
        PROTO_UDP,
        datagram.len() as u32,
    );
    let (before, after) = match (datagram.get(..6), datagram.get(8..)) {
        (Some(b), Some(a)) => (b, a),
        _ => {
            return Err(GsoError::Truncated {
                layer: "UDP",
                need: h.l4 + udp::HEADER_LEN,
                len: frame.len(),
            })
        }
    };
    Ok(mangle_zero(
        pseudo.add_bytes(before).add_bytes(after).finish(),
    ))
}

#[cfg(test)]
mod tests;
