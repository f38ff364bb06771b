//! UDP header view (RFC 768) over the header and the payload behind it.

use super::{be16, need, WireError};
use crate::gso::checksum::Checksum;

mod field {
    use std::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
    pub const PAYLOAD: usize = 8;
}

/// Bytes of the header.
pub const HEADER_LEN: usize = field::PAYLOAD;
/// Where the checksum sits in the header (virtio's `csum_offset` for UDP).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM.start;

/// A view of a UDP header and its payload.
#[derive(Debug, Clone, Copy)]
pub struct UdpDatagram<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpDatagram<T> {
    /// Wraps `buffer` after checking it holds the header. The length field is not checked:
    /// segmentation rewrites it (USO) or leaves it (UFO) as Linux does.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        need(HEADER_LEN, buffer.as_ref().len())?;
        Ok(UdpDatagram { buffer })
    }

    #[inline]
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.b(), field::SRC_PORT.start)
    }

    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.b(), field::DST_PORT.start)
    }

    #[inline]
    pub fn len(&self) -> u16 {
        be16(self.b(), field::LENGTH.start)
    }

    /// Whether the length field is zero (never so in a valid datagram).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.b(), field::CHECKSUM.start)
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[field::PAYLOAD..]
    }

    /// Whether the checksum over header and payload, with `pseudo`, is right (a zero
    /// checksum, "none", counts as right, as over IPv4).
    #[inline]
    pub fn verify_checksum(&self, pseudo: Checksum) -> bool {
        self.checksum() == 0 || pseudo.add_bytes(self.b()).fold() == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpDatagram<T> {
    #[inline]
    pub fn set_len(&mut self, v: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }

    #[inline]
    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }

    /// Computes the checksum over the header and the whole buffer after it, with `pseudo`,
    /// and writes it (a computed 0 as 0xFFFF).
    #[inline]
    pub fn fill_checksum(&mut self, pseudo: Checksum) {
        self.set_checksum(0);
        let c = pseudo.add_bytes(self.b()).finish();
        self.set_checksum(crate::gso::checksum::mangle_zero(c));
    }
}

/// The parsed form of a UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub len: u16,
    pub checksum: u16,
}

impl UdpRepr {
    pub fn parse<T: AsRef<[u8]>>(d: &UdpDatagram<T>) -> UdpRepr {
        UdpRepr {
            src_port: d.src_port(),
            dst_port: d.dst_port(),
            len: d.len(),
            checksum: d.checksum(),
        }
    }

    /// Writes the header at the start of `out`; returns its length.
    ///
    /// # Panics
    /// If `out` is shorter than [`HEADER_LEN`]; callers size their buffers.
    pub fn emit(&self, out: &mut [u8]) -> usize {
        out[field::SRC_PORT].copy_from_slice(&self.src_port.to_be_bytes());
        out[field::DST_PORT].copy_from_slice(&self.dst_port.to_be_bytes());
        out[field::LENGTH].copy_from_slice(&self.len.to_be_bytes());
        out[field::CHECKSUM].copy_from_slice(&self.checksum.to_be_bytes());
        HEADER_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gso::checksum::pseudo_header_v6;
    use proptest::prelude::*;

    #[test]
    fn short_headers_are_refused() {
        assert_eq!(
            UdpDatagram::new_checked(&[0u8; 7][..]).unwrap_err(),
            WireError::Truncated { need: 8, have: 7 }
        );
        assert!(UdpDatagram::new_checked(&[0u8; 8][..]).is_ok());
    }

    proptest! {
        #[test]
        fn repr_round_trips_and_checksum_verifies(
            src_port: u16, dst_port: u16, src: [u8; 16], dst: [u8; 16],
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let len = (HEADER_LEN + payload.len()) as u16;
            let repr = UdpRepr { src_port, dst_port, len, checksum: 0 };
            let mut buf = vec![0u8; usize::from(len)];
            let n = repr.emit(&mut buf);
            buf[n..].copy_from_slice(&payload);
            let pseudo = pseudo_header_v6(&src, &dst, 17, u32::from(len));
            let mut d = UdpDatagram::new_checked(&mut buf[..]).unwrap();
            d.fill_checksum(pseudo);
            prop_assert!(d.checksum() != 0);
            prop_assert!(d.verify_checksum(pseudo));
            prop_assert_eq!(d.payload(), &payload[..]);
            prop_assert_eq!(UdpRepr { checksum: 0, ..UdpRepr::parse(&d) }, repr);
        }
    }
}
