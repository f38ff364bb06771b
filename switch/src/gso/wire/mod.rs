//! Zero-copy views of the headers segmentation reads and rewrites: 802.1Q/802.1ad tags,
//! IPv4, IPv6, TCP and UDP.
//!
//! Each view wraps a buffer (`T: AsRef<[u8]>`, and `AsMut<[u8]>` for the setters) that starts
//! at its header; a private `field` module names the byte ranges; `new_checked` validates
//! the length and the fields that size the header once, so no accessor can panic afterwards.
//! The `*Repr` types are the parsed, high-level forms with `parse` and `emit`, for tests and
//! for building frames; the hot path reads and writes fields in place and never copies.

pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

pub use ipv4::{Ipv4Packet, Ipv4Repr};
pub use ipv6::{Ipv6Packet, Ipv6Repr};
pub use tcp::{TcpRepr, TcpSegment};
pub use udp::{UdpDatagram, UdpRepr};

/// Ethertypes and IP protocol numbers segmentation knows.
pub mod number {
    pub const ETHERTYPE_IPV4: u16 = 0x0800;
    pub const ETHERTYPE_IPV6: u16 = 0x86dd;
    /// 802.1Q customer tag.
    pub const ETHERTYPE_VLAN: u16 = 0x8100;
    /// 802.1ad service tag (QinQ outer tag).
    pub const ETHERTYPE_QINQ: u16 = 0x88a8;
    pub const PROTO_TCP: u8 = 6;
    pub const PROTO_UDP: u8 = 17;
}

/// Why bytes are not a header of the kind asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer ends before the header does.
    #[error("header needs {need} bytes, {have} present")]
    Truncated { need: usize, have: usize },
    /// A field that sizes or identifies the header has an impossible value.
    #[error("malformed header")]
    Malformed,
}

/// Returns `Truncated` unless `have >= need`.
#[inline]
fn need(need: usize, have: usize) -> Result<(), WireError> {
    if have < need {
        Err(WireError::Truncated { need, have })
    } else {
        Ok(())
    }
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Byte ranges of an 802.1Q/802.1ad tag, counted from the tag control information (the
/// tag protocol identifier before it is the Ethernet header's ethertype).
mod vlan_field {
    use std::ops::Range;
    pub const TCI: Range<usize> = 0..2;
    pub const ETHERTYPE: Range<usize> = 2..4;
    pub const PAYLOAD: usize = 4;
}

/// Bytes a VLAN tag adds to a frame.
pub const VLAN_TAG_LEN: usize = vlan_field::PAYLOAD;

/// A view of a VLAN tag's control information and the ethertype that follows it.
#[derive(Debug, Clone, Copy)]
pub struct VlanHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanHeader<T> {
    /// Wraps `buffer` after checking it holds the tag.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        need(VLAN_TAG_LEN, buffer.as_ref().len())?;
        Ok(VlanHeader { buffer })
    }

    /// Priority (3 bits), drop eligible (1 bit) and VLAN id (12 bits).
    #[inline]
    pub fn tci(&self) -> u16 {
        be16(self.buffer.as_ref(), vlan_field::TCI.start)
    }

    /// The ethertype of what the tag carries.
    #[inline]
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), vlan_field::ETHERTYPE.start)
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[vlan_field::PAYLOAD..]
    }
}

/// The parsed form of a VLAN tag, with the tag protocol identifier that introduced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanRepr {
    pub tpid: u16,
    pub tci: u16,
}

impl VlanRepr {
    /// Writes the tag (TPID and TCI, 4 bytes) at the start of `out`; returns its length.
    ///
    /// # Panics
    /// If `out` is shorter than [`VLAN_TAG_LEN`]; callers size their buffers.
    pub fn emit(&self, out: &mut [u8]) -> usize {
        out[..2].copy_from_slice(&self.tpid.to_be_bytes());
        out[2..4].copy_from_slice(&self.tci.to_be_bytes());
        VLAN_TAG_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_tag_reads_in_place() {
        let b = [0x20, 0x05, 0x08, 0x00, 0xaa];
        let t = VlanHeader::new_checked(&b[..]).unwrap();
        assert_eq!(t.tci(), 0x2005);
        assert_eq!(t.ethertype(), number::ETHERTYPE_IPV4);
        assert_eq!(t.payload(), &[0xaa]);
        assert_eq!(
            VlanHeader::new_checked(&b[..3]).unwrap_err(),
            WireError::Truncated { need: 4, have: 3 }
        );
        let mut out = [0u8; 4];
        let repr = VlanRepr {
            tpid: number::ETHERTYPE_QINQ,
            tci: 0x0123,
        };
        assert_eq!(repr.emit(&mut out), 4);
        assert_eq!(out, [0x88, 0xa8, 0x01, 0x23]);
    }
}
