//! Zero-copy view of an Ethernet II header over frame bytes, and its parsed `Repr`.
//!
//! `EthernetFrame::new_checked` validates the length once, so every accessor after it is
//! infallible; the hot path reads the addresses in place and never copies the frame.

use crate::mac::MacAddr;

/// Byte ranges of the Ethernet header.
mod field {
    use std::ops::Range;
    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: usize = 14;
}

/// Length of the Ethernet II header (no 802.1Q tag, no FCS).
pub const HEADER_LEN: usize = field::PAYLOAD;

/// Ethertypes the switch itself originates or inspects.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const RARP: u16 = 0x8035;
    pub const VLAN: u16 = 0x8100;
}

/// Length of the frame QEMU sends (60 bytes: the Ethernet minimum without FCS).
pub const RARP_FRAME_LEN: usize = 60;

/// QEMU's gratuitous RARP announcement (`announce-self`, and what a vhost-user backend sends
/// for a guest on `VHOST_USER_SEND_RARP`): broadcast, EtherType 0x8035, a "reverse request"
/// whose sender and target hardware addresses are the announced MAC, padded to 60 bytes.
pub fn rarp_frame(mac: MacAddr) -> [u8; RARP_FRAME_LEN] {
    let mut f = [0u8; RARP_FRAME_LEN];
    EthernetRepr {
        dst: MacAddr::BROADCAST,
        src: mac,
        ethertype: ethertype::RARP,
    }
    .emit(&mut f);
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    f[16..18].copy_from_slice(&ethertype::IPV4.to_be_bytes()); // protocol type: IPv4
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&3u16.to_be_bytes()); // opcode: reverse request
    f[22..28].copy_from_slice(&mac.0); // sender hardware address; sender IP stays 0
    f[32..38].copy_from_slice(&mac.0); // target hardware address; target IP stays 0
    f
}

/// Why a buffer is not an Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frame of {0} bytes is shorter than the 14-byte Ethernet header")]
pub struct Truncated(pub usize);

/// A read-only view over a buffer that holds at least an Ethernet header.
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` after checking it holds a whole header.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Truncated> {
        let len = buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Truncated(len));
        }
        Ok(EthernetFrame { buffer })
    }

    #[inline]
    pub fn dst(&self) -> MacAddr {
        MacAddr::from_slice(&self.buffer.as_ref()[field::DESTINATION])
    }

    #[inline]
    pub fn src(&self) -> MacAddr {
        MacAddr::from_slice(&self.buffer.as_ref()[field::SOURCE])
    }

    #[inline]
    pub fn ethertype(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        u16::from_be_bytes([b[0], b[1]])
    }

    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

/// The parsed form of an Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    pub dst: MacAddr,
    pub src: MacAddr,
    pub ethertype: u16,
}

impl EthernetRepr {
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> EthernetRepr {
        EthernetRepr {
            dst: frame.dst(),
            src: frame.src(),
            ethertype: frame.ethertype(),
        }
    }

    /// Writes the header into the first 14 bytes of `out`; returns the header length.
    ///
    /// # Panics
    /// If `out` is shorter than [`HEADER_LEN`]; callers size their buffers.
    pub fn emit(&self, out: &mut [u8]) -> usize {
        out[field::DESTINATION].copy_from_slice(&self.dst.0);
        out[field::SOURCE].copy_from_slice(&self.src.0);
        out[field::ETHERTYPE].copy_from_slice(&self.ethertype.to_be_bytes());
        HEADER_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_buffers_are_rejected() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&[0u8; 20][..n]).unwrap_err(),
                Truncated(n)
            );
        }
        assert!(EthernetFrame::new_checked(&[0u8; HEADER_LEN][..]).is_ok());
    }

    proptest! {
        #[test]
        fn repr_round_trips(dst in any::<[u8; 6]>(), src in any::<[u8; 6]>(), et in any::<u16>(),
                            payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let repr = EthernetRepr { dst: MacAddr(dst), src: MacAddr(src), ethertype: et };
            let mut buf = vec![0u8; HEADER_LEN + payload.len()];
            let n = repr.emit(&mut buf);
            buf[n..].copy_from_slice(&payload);
            let frame = EthernetFrame::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(EthernetRepr::parse(&frame), repr);
            prop_assert_eq!(frame.payload(), &payload[..]);
        }

        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(f) = EthernetFrame::new_checked(&bytes[..]) {
                let _ = (f.dst(), f.src(), f.ethertype(), f.payload().len());
            }
        }
    }
}
