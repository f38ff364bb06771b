//! The L2TPv3 data header (RFC 3931) as QEMU's `l2tpv3` netdev writes it: in UDP mode a
//! flags/version word (`00 03 00 00`), then the session id, an optional 32- or 64-bit cookie,
//! an optional counter word (a sequence starting at 1, or always 0 with `pincounter`), and
//! `offset` padding bytes; then the Ethernet frame. All big-endian. Over IP (protocol 115) the
//! first word is absent, and a raw IPv4 socket hands up the IPv4 header in front.
//!
//! The codec of `l2tpv3` ports: `decap` checks a received datagram in place and says where
//! its frame starts; `encap` writes the header for a frame to be sent. Neither allocates.

use crate::counters::DropReason;

/// Longest header `encap` writes (first word, session, 64-bit cookie, counter, 256 bytes of
/// offset).
pub const MAX_HEADER: usize = 4 + 4 + 8 + 4 + 256;

/// One port's L2TPv3 session parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2tpv3Codec {
    /// UDP mode: the header starts with the flags/version word.
    pub udp: bool,
    /// Received datagrams start with an IPv4 header (a raw IPv4 socket).
    pub ipv4_header: bool,
    /// 0, 4 or 8.
    pub cookie_len: usize,
    pub counter: bool,
    pub pincounter: bool,
    pub offset: usize,
    pub txsession: u32,
    pub rxsession: u32,
    pub txcookie: u64,
    pub rxcookie: u64,
}

impl L2tpv3Codec {
    /// Bytes of header before the frame (without any IP header).
    pub fn header_len(&self) -> usize {
        (if self.udp { 4 } else { 0 })
            + 4
            + self.cookie_len
            + (if self.counter { 4 } else { 0 })
            + self.offset
    }

    /// Writes the header for frame number `seq` (1, 2, …) into `out`; returns its length.
    ///
    /// # Panics
    /// If `out` is shorter than `header_len()` (callers use `MAX_HEADER`).
    pub fn encap(&self, out: &mut [u8], seq: u32) -> usize {
        let mut i = 0;
        if self.udp {
            out[..4].copy_from_slice(&[0, 3, 0, 0]);
            i = 4;
        }
        out[i..i + 4].copy_from_slice(&self.txsession.to_be_bytes());
        i += 4;
        match self.cookie_len {
            4 => out[i..i + 4].copy_from_slice(&(self.txcookie as u32).to_be_bytes()),
            8 => out[i..i + 8].copy_from_slice(&self.txcookie.to_be_bytes()),
            _ => {}
        }
        i += self.cookie_len;
        if self.counter {
            let c = if self.pincounter { 0 } else { seq };
            out[i..i + 4].copy_from_slice(&c.to_be_bytes());
            i += 4;
        }
        out[i..i + self.offset].fill(0);
        i + self.offset
    }

    /// Checks a received datagram; returns the offset of its frame, or why it is dropped.
    pub fn decap(&self, d: &[u8]) -> Result<usize, DropReason> {
        let mut i = 0;
        if self.ipv4_header {
            let ihl = match d.first() {
                Some(b) if b >> 4 == 4 => ((b & 0x0f) as usize) * 4,
                _ => return Err(DropReason::ShortHeader),
            };
            if ihl < 20 || d.len() < ihl {
                return Err(DropReason::ShortHeader);
            }
            i = ihl;
        }
        if d.len() < i + self.header_len() {
            return Err(DropReason::ShortHeader);
        }
        if self.udp {
            // The flags/version word is not checked, as QEMU does not.
            i += 4;
        }
        let session = u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
        if session != self.rxsession {
            return Err(DropReason::BadSession);
        }
        i += 4;
        let cookie_ok = match self.cookie_len {
            4 => d[i..i + 4] == (self.rxcookie as u32).to_be_bytes(),
            8 => d[i..i + 8] == self.rxcookie.to_be_bytes(),
            _ => true,
        };
        if !cookie_ok {
            return Err(DropReason::BadCookie);
        }
        i += self.cookie_len;
        if self.counter {
            i += 4; // The counter is not checked, as QEMU does not.
        }
        Ok(i + self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn codec(udp: bool) -> L2tpv3Codec {
        L2tpv3Codec {
            udp,
            ipv4_header: false,
            cookie_len: 8,
            counter: true,
            pincounter: false,
            offset: 0,
            txsession: 0x1122_3344,
            rxsession: 0x1122_3344,
            txcookie: 0xa1a2_a3a4_a5a6_a7a8,
            rxcookie: 0xa1a2_a3a4_a5a6_a7a8,
        }
    }

    #[test]
    fn header_is_qemus_byte_for_byte() {
        // research/qemu-wire-formats.md: UDP mode, 64-bit cookie, counter on, first frame.
        let mut h = [0u8; MAX_HEADER];
        let n = codec(true).encap(&mut h, 1);
        assert_eq!(
            &h[..n],
            &[
                0, 3, 0, 0, 0x11, 0x22, 0x33, 0x44, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8,
                0, 0, 0, 1
            ]
        );
        let n = codec(false).encap(&mut h, 2);
        assert_eq!(
            &h[..n],
            &[0x11, 0x22, 0x33, 0x44, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0, 0, 0, 2]
        );
        let pinned = L2tpv3Codec {
            pincounter: true,
            ..codec(false)
        };
        let n = pinned.encap(&mut h, 7);
        assert_eq!(&h[n - 4..n], &[0, 0, 0, 0]);
    }

    #[test]
    fn decap_checks_session_and_cookie_and_length() {
        let c = codec(true);
        let mut d = [0u8; MAX_HEADER + 60];
        let n = c.encap(&mut d, 5);
        assert_eq!(c.decap(&d[..n + 60]), Ok(n));
        assert_eq!(c.decap(&d[..n - 1]), Err(DropReason::ShortHeader));
        let mut wrong = d;
        wrong[7] ^= 1;
        assert_eq!(c.decap(&wrong[..n + 60]), Err(DropReason::BadSession));
        let mut wrong = d;
        wrong[15] ^= 1;
        assert_eq!(c.decap(&wrong[..n + 60]), Err(DropReason::BadCookie));
        let mut first = d;
        first[..4].copy_from_slice(&[0xff; 4]);
        assert_eq!(
            c.decap(&first[..n + 60]),
            Ok(n),
            "the first word is not checked"
        );
    }

    #[test]
    fn raw_ipv4_datagrams_skip_the_ip_header() {
        let c = L2tpv3Codec {
            ipv4_header: true,
            ..codec(false)
        };
        let mut d = vec![0x45u8];
        d.extend_from_slice(&[0u8; 19]);
        let mut h = [0u8; MAX_HEADER];
        let n = c.encap(&mut h, 1);
        d.extend_from_slice(&h[..n]);
        d.extend_from_slice(&[0xee; 60]);
        assert_eq!(c.decap(&d), Ok(20 + n));
        assert_eq!(c.decap(&[0x46, 0, 0]), Err(DropReason::ShortHeader));
        assert_eq!(c.decap(&[]), Err(DropReason::ShortHeader));
    }

    proptest! {
        #[test]
        fn round_trip_any_parameters(udp: bool, cookie in prop_oneof![Just(0usize), Just(4), Just(8)], counter: bool,
                                     offset in 0usize..64, session: u32, ck: u64, seq: u32) {
            let c = L2tpv3Codec { udp, ipv4_header: false, cookie_len: cookie, counter, pincounter: false, offset,
                                  txsession: session, rxsession: session, txcookie: ck, rxcookie: if cookie == 4 { ck & 0xffff_ffff } else { ck } };
            let mut h = [0u8; MAX_HEADER];
            let n = c.encap(&mut h, seq);
            prop_assert_eq!(n, c.header_len());
            prop_assert_eq!(c.decap(&h[..n]), Ok(n));
        }

        #[test]
        fn arbitrary_datagrams_never_panic(d in proptest::collection::vec(any::<u8>(), 0..100), ip: bool) {
            let c = L2tpv3Codec { ipv4_header: ip, ..codec(true) };
            if let Ok(off) = c.decap(&d) {
                prop_assert!(off <= d.len());
            }
        }
    }
}
