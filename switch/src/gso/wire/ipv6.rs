//! IPv6 fixed header view (RFC 8200). Extension headers are not walked: segmentation
//! refuses a packet whose next header is not its transport.

use super::{be16, be32, need, WireError};

mod field {
    use std::ops::Range;
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Range<usize> = 8..24;
    pub const DST_ADDR: Range<usize> = 24..40;
    pub const PAYLOAD: usize = 40;
}

/// Bytes of the fixed header.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// Next-header values that are extension headers (IANA's list: RFC 8200 section 4, ESP, AH,
/// mobility, HIP, shim6).
pub const EXTENSION_HEADERS: [u8; 9] = [0, 43, 44, 50, 51, 60, 135, 139, 140];

/// A view of an IPv6 header and what follows it.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps `buffer` after checking it holds the fixed header with version 6. The payload
    /// length field is not checked (segmentation rewrites it from the frame's length).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        need(HEADER_LEN, b.len())?;
        if b[0] >> 4 != 6 {
            return Err(WireError::Malformed);
        }
        Ok(Ipv6Packet { buffer })
    }

    #[inline]
    fn b(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    #[inline]
    pub fn traffic_class(&self) -> u8 {
        (be32(self.b(), field::VER_TC_FLOW.start) >> 20) as u8
    }

    #[inline]
    pub fn flow_label(&self) -> u32 {
        be32(self.b(), field::VER_TC_FLOW.start) & 0x000f_ffff
    }

    #[inline]
    pub fn payload_len(&self) -> u16 {
        be16(self.b(), field::LENGTH.start)
    }

    #[inline]
    pub fn next_header(&self) -> u8 {
        self.b()[field::NXT_HDR]
    }

    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.b()[field::HOP_LIMIT]
    }

    #[inline]
    pub fn src_addr(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.b()[field::SRC_ADDR]);
        a
    }

    #[inline]
    pub fn dst_addr(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.b()[field::DST_ADDR]);
        a
    }

    /// Everything after the fixed header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.b()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    #[inline]
    pub fn set_payload_len(&mut self, v: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&v.to_be_bytes());
    }
}

/// The parsed form of an IPv6 fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Repr {
    pub traffic_class: u8,
    /// 20 bits.
    pub flow_label: u32,
    pub payload_len: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

impl Ipv6Repr {
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv6Packet<T>) -> Ipv6Repr {
        Ipv6Repr {
            traffic_class: p.traffic_class(),
            flow_label: p.flow_label(),
            payload_len: p.payload_len(),
            next_header: p.next_header(),
            hop_limit: p.hop_limit(),
            src: p.src_addr(),
            dst: p.dst_addr(),
        }
    }

    /// Writes the header at the start of `out`; returns its length.
    ///
    /// # Panics
    /// If `out` is shorter than [`HEADER_LEN`]; callers size their buffers.
    pub fn emit(&self, out: &mut [u8]) -> usize {
        let first =
            (6u32 << 28) | (u32::from(self.traffic_class) << 20) | (self.flow_label & 0x000f_ffff);
        out[field::VER_TC_FLOW].copy_from_slice(&first.to_be_bytes());
        out[field::LENGTH].copy_from_slice(&self.payload_len.to_be_bytes());
        out[field::NXT_HDR] = self.next_header;
        out[field::HOP_LIMIT] = self.hop_limit;
        out[field::SRC_ADDR].copy_from_slice(&self.src);
        out[field::DST_ADDR].copy_from_slice(&self.dst);
        HEADER_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_or_wrong_version_is_refused() {
        let mut h = [0u8; 40];
        h[0] = 0x60;
        assert_eq!(
            Ipv6Packet::new_checked(&h[..39]).unwrap_err(),
            WireError::Truncated { need: 40, have: 39 }
        );
        assert!(Ipv6Packet::new_checked(&h[..]).is_ok());
        h[0] = 0x40;
        assert_eq!(
            Ipv6Packet::new_checked(&h[..]).unwrap_err(),
            WireError::Malformed
        );
    }

    proptest! {
        #[test]
        fn repr_round_trips(traffic_class: u8, flow in 0u32..0x10_0000, payload_len: u16,
                            next_header: u8, hop_limit: u8, src: [u8; 16], dst: [u8; 16]) {
            let repr = Ipv6Repr { traffic_class, flow_label: flow, payload_len, next_header,
                                  hop_limit, src, dst };
            let mut buf = [0u8; 45];
            prop_assert_eq!(repr.emit(&mut buf), HEADER_LEN);
            let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(p.payload().len(), 5);
            prop_assert_eq!(Ipv6Repr::parse(&p), repr);
        }
    }
}
